"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""
import contextlib
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from hw1.errors import UserError

log = logging.getLogger(__name__)


def _cannot_write(path, error):
    # an OSError's own text names the temporary file it failed on; the reason is what the user needs
    if isinstance(error, OSError) and error.strerror:
        error = error.strerror
    return UserError(f"{path}: cannot write ({error})".splitlines()[0])


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary file lives in the same folder so ``os.replace`` is a rename on one file system,
    which POSIX makes atomic. Its name is hidden and ends in ``.tmp`` (``.last.pth.k2j4.tmp``), so
    nothing that lists checkpoints, images or masks mistakes one left by a killed process for
    the real file. A failed write (no space, no permission, a folder in the way) is a
    :class:`UserError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            # mkstemp makes the file private (0600); give it the mode an ordinary open() would.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as e:
            raise _cannot_write(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_torch_save(obj, path):
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            # torch's zip writer reports a failed write (a full disk, a file size limit) this way.
            raise _cannot_write(path, f"is the disk full? torch.save: {e}") from None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


# The suffix a staging folder inside an existing folder takes once all of its files are written, just
# before they move in one rename each: a folder holding one holds a mix of two sets until it is gone.
MOVING = ".moving"


def _stage_pattern(name):
    return re.compile(rf"\.{re.escape(name)}\.(\d+)\.\w+(\.tmp|{re.escape(MOVING)})")


def _move_all(stage, folder):
    """Move every file of ``stage`` into ``folder`` (one rename each), then remove ``stage``; return their count."""
    names = sorted(p.name for p in stage.iterdir())
    for name in names:
        os.replace(stage / name, folder / name)
    stage.rmdir()
    return len(names)


def _finish_moves(stage, folder):
    """Move the files left in ``stage`` (a stopped run's complete set) into ``folder``."""
    moved = _move_all(stage, folder)
    log.warning("%s: a stopped run had moved part of its %d output file(s) in; moved the rest, so the "
                "folder holds that run's whole set before this one writes", folder, moved)


def _sweep_stages(parent, name):
    """Clear the staging folders for ``name`` in ``parent`` that no running process owns.

    A killed run (SIGKILL, a power cut) cannot clean up its staging folder; its name holds the
    process id, so a later run can tell a stale one from one that is still being written. One
    killed while it was writing (``.tmp``) is removed; one killed while its complete set was moving
    into the folder (``.moving``) has its remaining files moved in, so that no mix of two sets is left.
    """
    pattern = _stage_pattern(name)
    for p in sorted(parent.iterdir()) if parent.is_dir() else ():
        match = pattern.fullmatch(p.name)
        if not match or not p.is_dir() or p.is_symlink() or _alive(int(match[1])):
            continue
        if match[2] == MOVING:
            _finish_moves(p, parent)
        else:
            log.info("%s: removing the unfinished output of a stopped run", p)
            shutil.rmtree(p, ignore_errors=True)


def unfinished_moves(folder):
    """The staging folders in ``folder`` whose files are moving in, or were when their run stopped:
    while one is there, ``folder`` holds part of one set of outputs and part of another."""
    pattern = _stage_pattern("staged")
    return sorted(p for p in Path(folder).iterdir() if pattern.fullmatch(p.name) and p.name.endswith(MOVING)) \
        if Path(folder).is_dir() else []


@contextlib.contextmanager
def staged_folder(folder):
    """Yield a hidden temporary folder; if the block succeeds, its files move into ``folder``.

    An error in the block leaves ``folder`` as it was: not created if it did not exist, and no
    file in it added or replaced. A new ``folder`` appears in one rename. Into an existing one the
    files move one rename each, after the staging folder is renamed to end in :data:`MOVING`: a
    run killed during those moves leaves that mark, and the next run into ``folder`` moves the rest
    in before it starts (readers refuse the folder meanwhile, :func:`unfinished_moves`). Staging
    folders of killed runs are cleared first.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder")
    try:
        _sweep_stages(folder, "staged")
        _sweep_stages(folder.parent, folder.name)
        # Staged inside an existing folder (hidden, so never listed as output), else beside it.
        parent, name = (folder, "staged") if folder.is_dir() else (folder.parent, folder.name)
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise _cannot_write(folder, e) from None
    try:
        try:
            yield stage
        except UserError as e:
            # a failed write names the output folder the user gave, not the staging folder it was in
            raise UserError(str(e).replace(str(stage), str(folder))) from None
        try:
            if folder.is_dir():
                moving = stage.with_name(stage.name[: -len(".tmp")] + MOVING)
                os.rename(stage, moving)
                stage = moving
                _move_all(stage, folder)
            else:
                os.chmod(stage, 0o777 & ~_umask())  # mkdtemp's folder is private (0700)
                os.rename(stage, folder)
        except OSError as e:
            raise _cannot_write(folder, e) from None
    finally:
        if stage.name.endswith(MOVING):
            # stopped during the moves (Ctrl-C, SIGTERM): finish them, a few renames; one that fails
            # leaves the mark for readers and for the next run
            if stage.exists():
                with contextlib.suppress(OSError):
                    _move_all(stage, folder)
        else:
            shutil.rmtree(stage, ignore_errors=True)


def atomic_copy(src, dst):
    """Copy ``src`` to ``dst`` atomically (a copy of a saved checkpoint costs no second serialisation)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def atomic_write_text(text, path):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def append_text(text, path):
    """Append ``text`` to ``path``; a failed write (a full disk) is a :class:`UserError` naming ``path``.

    What part of ``text`` made it before the failure is cut off again, so the file never ends in
    half a line (a ``metrics.jsonl`` that a resume could not read).
    """
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        size = os.fstat(fd).st_size
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise _cannot_write(path, f"is the disk full? {e}") from None
    finally:
        os.close(fd)


def json_safe(value):
    """NaN (e.g. the metric of a class with no samples) becomes null: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _read_head(path, size):
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def load_torch_file(path, *, mmap=False):
    """``torch.load(path, weights_only=True)`` on the CPU; a file that is not one it reads is a one-line
    :class:`UserError` saying which kind of file it is.

    weights_only refuses any class or function a pickle names (a ``GLOBAL``): a file that would run
    code when unpickled. A file that ``torch.save`` did not write (a raw pickle) fails on the pickle
    opcodes the weights-only reader does not take, after a warning about its protocol that is kept
    off the screen: the one line says what the file is instead.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        unsafe = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        if unsafe:
            raise UserError(f"{path}: refused to load: it holds Python objects beyond tensors and plain data, "
                            f"which could run code ({unsafe[0]})") from None
        if _read_head(path, 1) == b"\x80" and not zipfile.is_zipfile(path):  # pickle's PROTO opcode
            raise UserError(f"{path}: a raw pickle (pickle.dump), not a file that torch.save wrote; "
                            "save checkpoints and state dicts with torch.save") from None
        raise UserError(f"{path}: corrupt or not a PyTorch checkpoint (unreadable pickle data)") from None
    except Exception as e:  # zip, EOF, key and index errors from a damaged or foreign file
        raise UserError(f"{path}: corrupt or not a PyTorch checkpoint ({type(e).__name__})") from None
