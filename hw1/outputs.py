"""Where a command may write: the one rule that every command writing a file follows.

A command writes what it was asked to write and nothing else. Before any work, each of its output
paths is checked (:func:`check_output`, :func:`check_outputs`), and refused in one line (exit 2)
unless the user passed ``--overwrite``, when it

* is one of the command's inputs, or would replace a file inside an input folder (other than an
  earlier output of the kind written, which the command does not read);
* is a file of a training run (``args.json``, ``metrics.jsonl``, ``last.pth``, ... of a run folder);
* is a file of a git repository (tracked: a committed record, the shipped models, the README);
* holds a file of another kind than the one written: an image, a checkpoint or a JSON file where a
  CSV or a figure would go; a mask or a CSV of the course's data (ground truth) where predictions
  would go; a training checkpoint where an export would go; a JSON, Markdown, PDF or SVG file that
  the command does not write (told by its content: the keys of its JSON, the report's mark,
  matplotlib's mark in a figure).

A file of the kind written, that the command could have written itself (a figure, a mask hw1
wrote, an earlier export, its own JSON), is replaced: running a command again is not an error. A parent folder
that does not exist is created when the file is written; one that cannot be (a file in the way, no
permission) is refused here, before the work. Run folders follow their own rule (one run a
folder, :meth:`hw1.run_dir.RunDir.check_new_run`); the staging and atomic writes are
:mod:`hw1.io`'s.
"""
import json
import os
import subprocess
from pathlib import Path

from PIL import Image

from hw1.data.layouts import COURSE
from hw1.errors import UserError

# The tEXt mark of the PNGs hw1 writes as predictions, which tells them from ground truth.
MASK_MARK = ("Software", "hw1.predict")
# The first line of the Markdown of a report (viz.py report), which tells it from other Markdown.
REPORT_MARK = "<!-- written by viz.py report (hw1.report) -->"
# Folders and files of the course's data layout (a folder holding one is data, not output).
DATA_FOLDERS = tuple(d for layout in COURSE for d in (layout.train, layout.val))
# The course's label CSVs (val_gt.csv): ground truth by its name, wherever a copy of it lies.
LABEL_FILES = tuple(layout.labels for layout in COURSE if layout.labels)


def _png_software(path):
    try:
        with Image.open(path) as im:
            return str(im.info.get("Software", ""))
    except (OSError, ValueError):
        return ""


def _read(path, limit=None):
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


def is_figure(path):
    """A figure matplotlib drew: a PNG with its ``Software`` text, a PDF or SVG with its creator mark
    (``Matplotlib pdf backend`` in a PDF's info, ``Created with matplotlib`` / ``Matplotlib v`` in
    an SVG's first lines)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        return _png_software(path).lower().startswith("matplotlib")
    if suffix == ".pdf":  # the info dictionary is near the end of the file; figures are small
        return b"/Producer (Matplotlib pdf backend" in _read(path)
    head = _read(path, 4096).lower()
    return b"created with matplotlib" in head or b"matplotlib v" in head


def _json(path):
    try:
        return json.loads(_read(path).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _summary_keys():
    """The key sets of eval.py's JSON: one problem's metrics of a confusion matrix."""
    import torch

    from hw1 import metrics
    from hw1.data.cls import NUM_CLASSES as P1_CLASSES
    from hw1.data.masks import NUM_CLASSES as P2_CLASSES

    return [set(summary(torch.zeros(n, n, dtype=torch.int64)))
            for summary, n in ((metrics.cls_summary, P1_CLASSES), (metrics.seg_summary, P2_CLASSES))]


def is_metrics_json(path):
    """A JSON file that ``eval.py --json`` writes: an object of exactly one task's metrics."""
    data = _json(path)
    return isinstance(data, dict) and set(data) in _summary_keys()


RUN_SUMMARY_KEYS = {"model", "metric", "best", "best_epoch", "epochs", "command"}


def is_run_summary_json(path):
    """A JSON file that ``hw1.summary --out`` writes: a run's summary, or a list of them."""
    data = _json(path)
    runs = data if isinstance(data, list) else [data]
    return bool(runs) and all(isinstance(r, dict) and RUN_SUMMARY_KEYS <= set(r) for r in runs)


def is_bench_json(path):
    """A JSON file that ``hw1.bench --out`` writes: its ``machine`` record names the bench's command."""
    data = _json(path)
    machine = data.get("machine") if isinstance(data, dict) else None
    return isinstance(machine, dict) and str(machine.get("command", "")).startswith("python -m hw1.bench")


def is_report_markdown(path):
    """The Markdown of a report that ``viz.py report`` wrote (its first line is :data:`REPORT_MARK`)."""
    return _read(path, len(REPORT_MARK) + 2).decode("utf-8", "replace").splitlines()[:1] == [REPORT_MARK]


def is_hw1_mask(path):
    """A mask that ``hw1.predict`` wrote (:data:`MASK_MARK`), not ground truth."""
    return _png_software(path) == MASK_MARK[1]


def holds_course_layout(folder):
    """A folder holding the course's split folders (``train_50/``, ``validation/``, ...): its data's root."""
    return any((Path(folder) / d).is_dir() for d in DATA_FOLDERS)




class Kind:
    """What a command writes: its file suffixes and which existing files of them it may replace.

    The kinds below are named by a string; a module that owns a kind's test of its files declares
    its own and passes the object (:data:`hw1.checkpoint.EXPORT`: whether a .pth holds a training state).
    """

    def __init__(self, name, suffixes, replaceable=None, why=""):
        self.name, self.suffixes, self.replaceable, self.why = name, suffixes, replaceable, why


KINDS = {
    # ground truth is the course's label file by its name, or any CSV at the root of its layout; a
    # CSV in a folder that merely holds an image (hw1_1.sh run twice from such a folder) is output
    "csv": Kind("CSV", (".csv",), lambda p: p.name not in LABEL_FILES and not holds_course_layout(p.parent),
                "a CSV of the course's data (ground truth?)"),
    "metrics-json": Kind("JSON", (".json",), is_metrics_json, "a JSON file that is not eval.py's metrics"),
    "summary-json": Kind("JSON", (".json",), is_run_summary_json, "a JSON file that is not a run summary"),
    "bench-json": Kind("JSON", (".json",), is_bench_json, "a JSON file that is not a bench result"),
    # any of the three (a command that does not say which it writes)
    "json": Kind("JSON", (".json",), lambda p: is_metrics_json(p) or is_run_summary_json(p) or is_bench_json(p),
                 "a JSON file that no hw1 command writes"),
    "markdown": Kind("Markdown", (".md",), is_report_markdown, "Markdown that is not a report viz.py wrote"),
    "figure": Kind("figure", (".png", ".pdf", ".svg"), is_figure, "a file that is not a figure matplotlib drew"),
    "mask": Kind("mask", (".png",), is_hw1_mask, "a mask that hw1.predict did not write (ground truth?)"),
}


def kind_of(kind):
    """The :class:`Kind` ``kind`` names (or ``kind`` itself)."""
    return KINDS[kind] if isinstance(kind, str) else kind


def _same(a, b):
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False


def _is_run_file(path):
    from hw1.run_dir import RunDir

    run = RunDir(path.parent)
    return run.holds_run() and path in run.run_files()


def tracked_names(folder):
    """Names of the files directly in ``folder`` that its git repository tracks (none outside one, or without git)."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "ls-files", "-z", "--", "."], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return set()
    return {n for n in os.fsdecode(out.stdout).split("\0") if n and "/" not in n} if out.returncode == 0 else set()


def _own_kind(path, kind):
    """``path`` holds a file of ``kind`` that the command could have written itself (see the rule above)."""
    return path.suffix.lower() in kind.suffixes and (kind.replaceable is None or kind.replaceable(path))


def problem(path, kind, inputs=(), tracked=None):
    """Why writing a ``kind`` file at ``path`` would replace what it should not, or None.

    ``tracked``: the :func:`tracked_names` of its folder, when the caller has them already."""
    path, kind = Path(path), kind_of(kind)
    for name, given in inputs:
        if given is None:
            continue
        if _same(path, given):
            return f"is an input of this command ({name})"
        # an input folder's own files are refused; an earlier output of this kind that lies there
        # (hw1_1.sh IMGS IMGS/pred.csv, predict seg SAT SAT run again) is no input and is replaced
        if Path(given).is_dir() and _same(path.parent, given) and path.exists() and not _own_kind(path, kind):
            return f"would replace a file of the input folder {given} ({name})"
    if not path.exists():
        return None
    if _is_run_file(path):
        return f"is a file of the training run in {path.parent}"
    if path.name in (tracked_names(path.parent) if tracked is None else tracked):
        return "is a file of the git repository (tracked)"
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


def _check_link(path):
    """Refuse now an output path that is a link to nothing: the write at the end of the work would
    fail (a folder) or replace the link (a file)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise UserError(f"{path}: is a link to {os.readlink(path)}, which does not exist; "
                        "write to the link's target or to another path")


def check_output(path, kind, *, inputs=(), overwrite=False, tracked=None):
    """``path`` if a ``kind`` file (a key of :data:`KINDS`) may be written there, else a one-line
    :class:`UserError`. ``inputs`` are the command's ``(flag, path)`` pairs (files or folders)."""
    _check_link(path)
    if Path(path).is_dir():  # --overwrite could not help: a folder is never replaced by a file
        raise UserError(f"{path}: is a folder; write the {kind_of(kind).name} to a file path")
    found = None if overwrite else problem(path, kind, inputs, tracked)
    if found:
        raise UserError(f"{path}: {found}; pass --overwrite to replace it, or write to another path")
    _check_parent(path)
    return Path(path)


def check_outputs(folder, names, kind, *, inputs=(), overwrite=False):
    """:func:`check_output` for each file ``names`` of ``folder`` (a folder of outputs); returns their paths."""
    folder = Path(folder)
    _check_link(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder")
    if not overwrite:
        for name, given in inputs:
            if given is not None and _same(folder, given) and any(
                    (folder / n).exists() and not _own_kind(folder / n, kind_of(kind)) for n in names):
                raise UserError(f"{folder}: is the input {name}; the outputs would replace its files "
                                "(pass --overwrite to replace them, or write to another folder)")
    tracked = tracked_names(folder) if folder.is_dir() and not overwrite else set()  # one git call for the folder
    return [check_output(folder / n, kind, inputs=inputs, overwrite=overwrite, tracked=tracked) for n in names]
