"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""
import contextlib
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary file lives in the same folder so ``os.replace`` is a rename on one file system,
    which POSIX makes atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the mode an ordinary open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_torch_save(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_copy(src, dst):
    """Copy ``src`` to ``dst`` atomically (a copy of a saved checkpoint costs no second serialisation)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def atomic_write_text(text, path):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_safe(value):
    """NaN (e.g. the metric of a class with no samples) becomes null: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value
