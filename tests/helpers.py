"""Helpers of several test modules: one-line errors, folder contents, generated images and pairs, damaged
files, a checkpoint that would run code, the environment of a script run as a real process, CSV rows,
P2 class maps written and read with plain PIL, a tiny P1 checkpoint."""
import csv
import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hw1.cli import run
from hw1.data.masks import PALETTE, write_mask
from hw1.models import build_model


def cli_error(capsys, main, argv):
    """Run ``main`` as a script does (through ``hw1.cli.run``); return its one-line stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run(main, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0]


def snapshot(folder):
    """``{name: bytes}`` of every file in ``folder``, hidden ones included."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def contents(path):
    """What is at ``path`` now: a folder's :func:`snapshot`, a file's bytes, or None."""
    if path is None or not path.exists():
        return None
    return snapshot(path) if path.is_dir() else path.read_bytes()


def tree(folder):
    """``{relative path: bytes}`` of every file under ``folder``, hidden ones included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def noise(rng, h, w, mode="RGB"):
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).convert(mode)


def write_pairs(folder, sizes, seed=0):
    """``{i:04d}_sat.jpg`` + ``_mask.png`` of random pixels and classes, one pair per (H, W) in ``sizes``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        noise(rng, h, w).save(folder / f"{i:04d}_sat.jpg")
        write_mask(rng.integers(0, 7, size=(h, w)), folder / f"{i:04d}_mask.png")
    return folder


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _RunsAShellCommandWhenUnpickled:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def save_code_running_checkpoint(path, marker, *, raw=False):
    """An hw1-looking checkpoint whose unpickling would create ``marker``; ``raw``: written by
    ``pickle.dump`` (protocol 4), not ``torch.save``."""
    payload = {"model": _RunsAShellCommandWhenUnpickled(f"touch {shlex.quote(str(marker))}"),
               "model_name": "densenet", "model_config": {}}
    if raw:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=4)
    else:
        torch.save(payload, path)
    return path


def script_env():
    return dict(os.environ, OMP_NUM_THREADS="1")  # see cls_one_torch_thread in conftest.py


def read_csv_rows(path):
    """Every row of a CSV file, header included, as lists of strings."""
    with open(path, newline="") as f:
        return list(csv.reader(f))


def decode_palette(path):
    """(H, W) class indices of a mask file whose every pixel is exactly one of the 7 palette colours."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    match = (rgb[:, :, None, :] == PALETTE[None, None]).all(-1)  # (H, W, 7)
    assert match.any(-1).all(), f"{path}: pixels outside the palette"
    return match.argmax(-1)


def save_classes(classes, path):
    """Write a class map as an RGB PNG with plain PIL (independent of hw1.data.masks.write_mask)."""
    Image.fromarray(PALETTE[classes]).save(path)


def save_cls_checkpoint(path):
    """A tiny DenseNet in the hw1 checkpoint format, as train_cls.py writes it."""
    config = {"depth": 10, "growth_rate": 4, "num_classes": 50}
    model = build_model("densenet", **config, weights="none")
    torch.save({"model": model.state_dict(), "model_name": "densenet", "model_config": config,
                "task": "cls", "epoch": 1, "args": {"model": "densenet"}}, path)
    return path
