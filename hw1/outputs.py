"""Where a command may write: the one rule that every command writing a file follows.

A command writes what it was asked to write and nothing else. Before any work, each of its output
paths is checked (:func:`check_output`, :func:`check_outputs`), and refused in one line (exit 2)
unless the user passed ``--overwrite``, when it

* is one of the command's inputs, or would replace a file inside an input folder;
* is a file of a training run (``args.json``, ``metrics.jsonl``, ``last.pth``, ... of a run folder);
* holds a file of another kind than the one written: an image, a checkpoint or a JSON file where a
  CSV or a figure would go; a mask or a CSV of the course's data (ground truth) where predictions
  would go; a training checkpoint where an export would go.

A file of the kind written, that the command could have written itself (a figure, a mask hw1
wrote, an earlier export), is replaced: running a command again is not an error. A parent folder
that does not exist is created when the file is written; one that cannot be (a file in the way, no
permission) is refused here, before the work. Run folders follow their own rule (one run a
folder, :meth:`hw1.run_dir.RunDir.check_new_run`); the staging and atomic writes are
:mod:`hw1.io`'s.
"""
import os
from pathlib import Path

from PIL import Image

from hw1.data.images import IMG_EXTS
from hw1.errors import UserError
from hw1.tasks import TASKS

# The tEXt mark of the PNGs hw1 writes as predictions, which tells them from ground truth.
MASK_MARK = ("Software", "hw1.predict")
# Folders and files of the course's data layout (a folder holding one is data, not output).
DATA_FOLDERS = tuple(d for task in TASKS.values() for d in (task.layout.train, task.layout.val))


def _png_software(path):
    try:
        with Image.open(path) as im:
            return str(im.info.get("Software", ""))
    except (OSError, ValueError):
        return ""


def is_figure(path):
    """A PNG that matplotlib drew (its ``Software`` text), or a PDF / SVG (what figures are saved as)."""
    path = Path(path)
    return path.suffix.lower() != ".png" or _png_software(path).lower().startswith("matplotlib")


def is_hw1_mask(path):
    """A mask that ``hw1.predict`` wrote (:data:`MASK_MARK`), not ground truth."""
    return _png_software(path) == MASK_MARK[1]


def is_data_folder(folder):
    """A folder of the course's data: one holding its split folders or images (not predicted masks)."""
    folder = Path(folder)
    if any((folder / d).is_dir() for d in DATA_FOLDERS):
        return True
    return any(p.suffix.lower() in IMG_EXTS and p.is_file() and not is_hw1_mask(p)
               for p in folder.iterdir()) if folder.is_dir() else False


def _is_training_checkpoint(path):
    from hw1.checkpoint import is_training_checkpoint

    return is_training_checkpoint(path)


class Kind:
    """What a command writes: its file suffixes and which existing files of them it may replace."""

    def __init__(self, name, suffixes, replaceable=None, why=""):
        self.name, self.suffixes, self.replaceable, self.why = name, suffixes, replaceable, why


KINDS = {
    "csv": Kind("CSV", (".csv",), lambda p: not is_data_folder(p.parent), "a CSV of the course's data (ground truth?)"),
    "json": Kind("JSON", (".json",)),
    "markdown": Kind("Markdown", (".md",)),
    "figure": Kind("figure", (".png", ".pdf", ".svg"), is_figure, "an image that is not a figure"),
    "mask": Kind("mask", (".png",), is_hw1_mask, "a mask that hw1.predict did not write (ground truth?)"),
    "checkpoint": Kind("checkpoint", (".pth", ".pt"), lambda p: not _is_training_checkpoint(p),
                       "a training checkpoint, which --resume needs"),
}


def _same(a, b):
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False


def _is_run_file(path):
    from hw1.run_dir import RunDir

    run = RunDir(path.parent)
    return run.holds_run() and path in run.run_files()


def problem(path, kind, inputs=()):
    """Why writing a ``kind`` file at ``path`` would replace what it should not, or None."""
    path, kind = Path(path), KINDS[kind]
    for name, given in inputs:
        if given is None:
            continue
        if _same(path, given):
            return f"is an input of this command ({name})"
        if Path(given).is_dir() and _same(path.parent, given) and path.exists():
            return f"would replace a file of the input folder {given} ({name})"
    if not path.exists():
        return None
    if _is_run_file(path):
        return f"is a file of the training run in {path.parent}"
    if path.suffix.lower() not in kind.suffixes:
        return f"holds a {path.suffix or 'suffix-less'} file, which a {kind.name} would replace"
    if kind.replaceable is not None and not kind.replaceable(path):
        return f"holds {kind.why}"
    return None


def _check_parent(path):
    """Refuse now a file whose folder cannot be made: a file in the way, no permission."""
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{path}: cannot write it, {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot write it, {parent} is not writable")


def check_output(path, kind, *, inputs=(), overwrite=False):
    """``path`` if a ``kind`` file (a key of :data:`KINDS`) may be written there, else a one-line
    :class:`UserError`. ``inputs`` are the command's ``(flag, path)`` pairs (files or folders)."""
    if Path(path).is_dir():  # --overwrite could not help: a folder is never replaced by a file
        raise UserError(f"{path}: is a folder; write the {KINDS[kind].name} to a file path")
    found = None if overwrite else problem(path, kind, inputs)
    if found:
        raise UserError(f"{path}: {found}; pass --overwrite to replace it, or write to another path")
    _check_parent(path)
    return Path(path)


def check_outputs(folder, names, kind, *, inputs=(), overwrite=False):
    """:func:`check_output` for each file ``names`` of ``folder`` (a folder of outputs); returns their paths."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder")
    if not overwrite:
        for name, given in inputs:
            if given is not None and _same(folder, given) and any((folder / n).exists() for n in names):
                raise UserError(f"{folder}: is the input {name}; the outputs would replace its files "
                                "(pass --overwrite to replace them, or write to another folder)")
    return [check_output(folder / n, kind, inputs=inputs, overwrite=overwrite) for n in names]
