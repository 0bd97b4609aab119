"""A training run's folder: the names of its files, its one ``metrics.jsonl`` reader, its lock.

    runs/densenet/
      args.json        the run's config (hw1.config), as it ran
      metrics.jsonl    one JSON line per epoch
      last.pth         the newest checkpoint; best.pth the best on validation; epoch_NNN.pth kept ones
      .lock            while a run writes here (removed when it ends)

One folder holds one run: a new run into a folder that holds one is refused unless it is told to
replace it (``--overwrite``), and a second process cannot write into a folder a running one holds.
"""
import contextlib
import fcntl
import json
import logging
import os
import re
from pathlib import Path

from hw1.errors import UserError
from hw1.io import append_text, atomic_copy, atomic_torch_save, atomic_write_text, load_torch_file

log = logging.getLogger(__name__)

ARGS, METRICS, LAST, BEST, LOCK = "args.json", "metrics.jsonl", "last.pth", "best.pth", ".lock"
EPOCH = re.compile(r"epoch_(\d+)\.pth")


def run_folder_of(checkpoint):
    """The run folder a checkpoint belongs to: its folder, or a link's target's (``latest.pth`` linked
    from elsewhere continues the run it points into, not a new run beside the link)."""
    path = Path(checkpoint)
    return path.resolve().parent if path.is_symlink() else path.parent


def epoch_name(epoch):
    return f"epoch_{epoch:03d}.pth"


class RunDir:
    """The run folder at ``path`` (which need not exist yet)."""

    def __init__(self, path):
        self.path = Path(path)
        self.args = self.path / ARGS
        self.metrics = self.path / METRICS
        self.last = self.path / LAST
        self.best = self.path / BEST

    def epoch_file(self, epoch):
        return self.path / epoch_name(epoch)

    def epoch_files(self):
        """``{epoch: path}`` of the kept ``epoch_NNN.pth`` checkpoints."""
        if not self.path.is_dir():
            return {}
        found = {}
        for p in sorted(self.path.glob("epoch_*.pth")):
            m = EPOCH.fullmatch(p.name)
            # only the names a run writes: a user's epoch_5.pth is not one (--overwrite leaves it)
            if m and p.name == epoch_name(int(m.group(1))):
                found[int(m.group(1))] = p
        return found

    def run_files(self):
        """The files of a run in this folder (what ``--overwrite`` removes)."""
        return [p for p in (self.args, self.metrics, self.last, self.best) if p.is_file()] + \
            list(self.epoch_files().values())

    def holds_run(self):
        """Whether a run recorded an epoch here (a run that failed before its first epoch did not)."""
        return any(p.suffix == ".pth" for p in self.run_files()) or (
            self.metrics.is_file() and self.metrics.stat().st_size > 0)

    def holds_demo(self):
        """Whether the run here is a ``--demo`` run (its args.json says so)."""
        return bool((self.read_args() or {}).get("demo"))

    def read_args(self):
        """The saved config as a dict, or None when args.json is missing or unreadable."""
        try:
            args = json.loads(self.args.read_text())
        except (OSError, ValueError):
            return None
        return args if isinstance(args, dict) else None

    def read_metrics(self, *, upto_epoch=None, required=True):
        """The records of metrics.jsonl (one dict per epoch), in order; with ``upto_epoch``, those up to it.

        A last line cut short (a run killed while appending it) is dropped with a warning; any other
        line that is not a JSON record with an ``epoch`` is a :class:`UserError`. With ``required``, a
        missing file or one with no records is a :class:`UserError`; without, it reads as no records.
        """
        path = self.metrics
        if not path.is_file():
            if not required:
                return []
            raise UserError(f"{path}: not found (a run folder written by train_cls.py / train_seg.py has one)")
        lines = path.read_text().splitlines()
        last = max((n for n, line in enumerate(lines, start=1) if line.strip()), default=0)
        records = []
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # the last line alone can be cut short: by a run stopped while appending it (a
                # newline may follow it, added by hand or by a tool); one before it is damage
                if n == last:
                    log.warning("%s: line %d is cut short (a run stopped while writing it); ignoring it", path, n)
                    continue
                raise UserError(f"{path}: line {n} is not JSON") from None
            if not isinstance(record, dict) or "epoch" not in record:
                raise UserError(f"{path}: line {n} has no 'epoch'")
            records.append(record)
        if required and not records:
            raise UserError(f"{path}: no epochs recorded yet")
        return [r for r in records if upto_epoch is None or r["epoch"] <= upto_epoch]

    def check_new_run(self, *, overwrite, resume=None):
        """Refuse to start a run here if the folder holds another run (unless ``overwrite``).

        Returns whether the run here must be cleared first (:meth:`clear`). A resumed run continues
        only the run of its checkpoint: in the checkpoint's own folder, or in a new or empty one
        (which then gets the history it continues, :meth:`start`); a folder holding another run is
        refused as for a new run.
        """
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: not a folder (--out-dir takes a run folder)")
        if resume is not None and self.path.resolve() == Path(resume).resolve().parent:
            return False
        if self.holds_run() and not overwrite:
            held = ", ".join(p.name for p in self.run_files()[:3])
            if resume is not None:
                raise UserError(f"{self.path}: holds another run ({held}); --resume {resume} continues its own run, "
                                f"in {Path(resume).parent} or a new --out-dir (--overwrite replaces the run here)")
            raise UserError(f"{self.path}: already holds a run ({held}); "
                            "pass --overwrite to replace it, --resume to continue it, or another --out-dir")
        return self.holds_run()

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder for one run: a second run into it meanwhile is a :class:`UserError`.

        The lock is an ``flock`` on ``.lock``, which the kernel releases if the process dies, so a
        killed run never leaves the folder locked. A folder this call had to create is removed again
        if the run leaves nothing in it.
        """
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file where a parent folder should be, /proc, a read-only disk
            raise UserError(f"{self.path}: cannot create the run folder ({e.strerror or type(e).__name__})") from None
        path = self.path / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(f"{self.path}: another run is writing to this folder; wait for it or pass "
                                "another --out-dir") from None
            # The holder before us may have removed the file between our open and flock: then
            # this lock is on a file nobody else sees, so take the one now at the path instead.
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            yield self
        finally:
            os.unlink(path)
            os.close(fd)
            if created:
                with contextlib.suppress(OSError):
                    self.path.rmdir()  # only if empty

    def clear(self):
        """Remove the files of the run this folder holds (``--overwrite``)."""
        for p in self.run_files():
            p.unlink()

    def start(self, records, args):
        """Write the records a run continues from and its config, replacing what was there."""
        atomic_write_text("".join(json.dumps(r) + "\n" for r in records), self.metrics)
        atomic_write_text(json.dumps(args, indent=2) + "\n", self.args)

    def branch(self, resumed, epoch, best_epoch):
        """Set this folder's checkpoints to those of a run resumed from ``resumed`` (of ``epoch``).

        The files of later epochs belong to the branch the resumed run abandons (``--resume
        runs/x/epoch_001.pth`` in a folder that went on to epoch 3): ``epoch_NNN.pth`` past ``epoch``
        are removed, ``last.pth`` becomes the resumed checkpoint, and ``best.pth`` the checkpoint of
        ``best_epoch`` (the best of the epochs kept), from this folder or the resumed one's. Returns
        whether ``best.pth`` holds it; when no file of that epoch was kept, it is removed (False).
        """
        resumed = Path(resumed)
        source = RunDir(run_folder_of(resumed))
        for e, p in self.epoch_files().items():
            if e > epoch:
                p.unlink()
        if not _same_file(resumed, self.last) and checkpoint_epoch(self.last) != epoch:
            atomic_copy(resumed, self.last)
        if checkpoint_epoch(self.best) == best_epoch:
            return True
        candidates = [resumed] if best_epoch == epoch else []
        candidates += [self.epoch_file(best_epoch), source.epoch_file(best_epoch), source.best]
        found = next((p for p in candidates if checkpoint_epoch(p) == best_epoch), None)
        if found is None:
            if self.best.is_file():
                self.best.unlink()
            return False
        atomic_copy(found, self.best)
        return True

    def save_epoch(self, record, state, *, is_best, keep):
        """Append the epoch's record, then write ``last.pth`` and its copies ``best.pth`` and ``epoch_NNN.pth``.

        metrics.jsonl is written before the checkpoint, and a resume drops lines past the
        checkpoint's epoch, so a crash in between never leaves a line without its checkpoint. A full
        disk is a one-line error, and last.pth stays the previous epoch's.
        """
        append_text(json.dumps(record) + "\n", self.metrics)
        atomic_torch_save(state, self.last)
        if is_best:
            atomic_copy(self.last, self.best)
        if keep:
            atomic_copy(self.last, self.epoch_file(state["epoch"]))


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def checkpoint_epoch(path):
    """The epoch of the checkpoint at ``path``, or None when there is none (read through a memory
    map: only the small ``epoch`` entry is loaded, not the weights)."""
    try:
        ckpt = load_torch_file(path, mmap=True)
    except Exception:  # missing, not a checkpoint, cut short: no epoch to compare
        return None
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    return epoch if isinstance(epoch, int) else None
