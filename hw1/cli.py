"""How every hw1 command runs as a process: one-line errors, Ctrl-C and SIGTERM, a closed stdout, and the
command line it records (the flags are :mod:`hw1.flags`)."""
import logging
import os
import select
import shlex
import signal
import sys
import threading

from hw1.errors import UserError

log = logging.getLogger(__name__)


def command_line(script, argv):
    """The command that started a run, for its records (``argv`` None means this process's own)."""
    launcher = ["python"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
        launcher = ["torchrun", f"--nnodes={os.environ.get('GROUP_WORLD_SIZE', '1')}",
                    f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', '1')}"]
    return shlex.join([*launcher, script, *(sys.argv[1:] if argv is None else argv)])


class Terminated(BaseException):
    """SIGTERM (``timeout``, ``kill``, a job scheduler) raised in the main thread, so that cleanup
    (``finally`` blocks: staged output folders, temporary files) runs as it does for Ctrl-C."""


def _terminate_handler(owner):
    def handler(signum, frame):
        if os.getpid() != owner:  # a forked child (a DataLoader worker) inherited it: end as by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated()
    return handler


def _expect_worker_deaths():
    """On the way out after Ctrl-C or SIGTERM: the DataLoader's SIGCHLD handler would raise again,
    as a traceback "Exception ignored in ... __del__", when the loader shuts down workers that the
    same signal ended. Their deaths are expected now: the default SIGCHLD disposition."""
    if hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _stopped_worker(error):
    """``(message, exit status)`` when ``error`` is a DataLoader's report of a worker ended by SIGTERM or
    SIGINT (``DataLoader worker (pid 123) is killed by signal: Terminated.``), else None."""
    text = str(error)
    if not text.startswith("DataLoader worker (pid"):
        return None
    if "signal: Terminated" in text:
        return "terminated", 128 + signal.SIGTERM
    if "signal: Interrupt" in text:
        return "interrupted", 130
    return None


def _stdout_reader_gone():
    """True when stdout is a pipe or socket whose reading end has closed (``... | head`` that has exited)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _reopen_closed_streams():
    """A stream the caller closed (``>&-``) is None in Python: give it /dev/null, so that printing
    is a no-op rather than an ``AttributeError`` after the work is done."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))


class StdoutFailed(Exception):
    """Writing to stdout failed for a reason other than a closed pipe (a full disk, /dev/full)."""


class _CheckedStdout:
    """sys.stdout, whose failed writes say that it was stdout that failed (an ``OSError`` alone
    could be any file's)."""

    def __init__(self, stream):
        self._stream = stream

    def _checked(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:  # a reader that has gone: handled as such by run()
            raise
        except OSError as e:
            raise StdoutFailed(e.strerror or str(e)) from None

    def write(self, text):
        return self._checked(self._stream.write, text)

    def flush(self):
        return self._checked(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _discard_stdout():
    """Point stdout at /dev/null, so that the interpreter's last flush of what is left in its
    buffer does not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _say(line):
    """Print ``line`` on stderr; a stderr that cannot be written (``2>/dev/full``) loses the line but
    not the exit status that the line explains."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def run(main, argv=None):
    """Call ``main(argv)``; a :class:`UserError` becomes ``error: ...`` on stderr and exit status 2.

    Under torchrun every rank that fails says so, ranks other than 0 with a ``[rank N]`` prefix.
    Ctrl-C and SIGTERM (outside torchrun) unwind the same way (exit status 130 and 143), so no
    staged output or temporary file is left behind; a closed stdout (``| head``) ends the process
    quietly.
    """
    argv = sys.argv[1:] if argv is None else argv
    rank = int(os.environ.get("RANK", "0"))
    # Not under torchrun: a rank waiting in a collective would run the handler only when the wait
    # ends, so a SIGTERM from torchrun (another rank failed) would leave it hanging until SIGKILL.
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    catch_term = threading.current_thread() is threading.main_thread() and not under_torchrun
    previous = signal.signal(signal.SIGTERM, _terminate_handler(os.getpid())) if catch_term else None
    _reopen_closed_streams()
    stdout, sys.stdout = sys.stdout, _CheckedStdout(sys.stdout)
    try:
        result = main(argv)
        sys.stdout.flush()  # a closed pipe shows here rather than in the interpreter's last flush
        return result
    except UserError as e:
        if "--debug" in argv:
            raise
        logging.getLogger().handlers.clear()
        _say(f"{f'[rank {rank}] ' if rank else ''}error: {e}")
        sys.exit(2)
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise
        # Whoever read stdout has gone: only messages are lost. End quietly, with the status of a
        # process killed by SIGPIPE.
        _discard_stdout()
        sys.exit(128 + signal.SIGPIPE)
    except StdoutFailed as e:
        # stdout on a full disk (/dev/full) or a dead device: the command's files are written
        # (every command writes them before it prints), only its messages are lost
        _discard_stdout()
        _say(f"error: stdout: cannot write ({e})")
        sys.exit(2)
    except KeyboardInterrupt:
        _expect_worker_deaths()
        _say("interrupted")
        sys.exit(130)
    except Terminated:
        _expect_worker_deaths()
        _say("terminated")
        sys.exit(128 + signal.SIGTERM)
    except RuntimeError as e:
        # Ctrl-C or SIGTERM to the process group reaches DataLoader workers too, and the loader may
        # report their deaths before this process's own signal is handled: the same stop, said so
        stopped = _stopped_worker(e)
        if stopped is None:
            raise
        _expect_worker_deaths()
        _say(stopped[0])
        sys.exit(stopped[1])
    finally:
        sys.stdout = stdout
        if "torch.distributed" in sys.modules:  # leave torchrun's process group cleanly
            from hw1.distributed import cleanup
            cleanup()
        if catch_term:
            signal.signal(signal.SIGTERM, previous)
