"""Shared fixtures. P1 (classification): a tiny generated data set in the course layout and a tiny
DenseNet trained on it once per session (its run folder is reused by the predict / eval tests).
"""
import contextlib
import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the top-level scripts (train_cls.py, eval.py) are imported as modules
    sys.path.insert(0, str(REPO))

# --- P1: one intra-op thread ----------------------------------------------------------------------
# The tests share 2 cores with a training job; two OpenMP threads spinning against it make these
# tiny models ~50x slower than one thread does (results are the same).


@contextlib.contextmanager
def cls_one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cls_one_thread():
    """Run a module's tests with one torch thread (use: ``pytestmark = pytest.mark.usefixtures(...)``)."""
    with cls_one_torch_thread():
        yield


# --- P1: tiny classification data ---------------------------------------------------------------

CLS_TINY_CLASSES = 3
CLS_TINY_TRAIN_PER_CLASS = 12
CLS_TINY_VAL_PER_CLASS = 4
# A DenseNet small enough that a whole epoch on the tiny set takes a fraction of a second.
CLS_TINY_MODEL_ARGS = ["--model", "densenet", "--depth", "10", "--growth-rate", "4"]
CLS_TINY_RUNTIME_ARGS = ["--device", "cpu", "--amp", "none", "--workers", "0", "--no-progress"]


def cls_tiny_image(label, rng):
    """32x32 RGB uint8 image whose class shows as a bright channel and a stripe, plus noise."""
    pixels = rng.normal(90, 25, size=(32, 32, 3))
    pixels[..., label % 3] += 100
    pixels[4 * label: 4 * label + 6, :, :] += 60
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_cls_tiny(root, *, classes=CLS_TINY_CLASSES, train_per_class=CLS_TINY_TRAIN_PER_CLASS,
                  val_per_class=CLS_TINY_VAL_PER_CLASS, seed=0):
    """Write ``root/train_50/{label}_{id}.png``, ``root/val_50/{label}_{id}.png`` and ``root/val_gt.csv``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for split, per_class in (("train_50", train_per_class), ("val_50", val_per_class)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for label in range(classes):
            for i in range(per_class):
                name = f"{label}_{i}.png"
                Image.fromarray(cls_tiny_image(label, rng)).save(root / split / name)
                if split == "val_50":
                    rows.append((name, label))
    with open(root / "val_gt.csv", "w", newline="") as f:
        csv.writer(f).writerows([("filename", "label"), *rows])
    return root


@pytest.fixture(scope="session")
def cls_tiny_data(tmp_path_factory):
    """Root of a tiny P1 data set (3 classes, 36 train / 12 val images). Read-only: tests must not modify it."""
    return make_cls_tiny(tmp_path_factory.mktemp("cls_tiny_data"))


def _cls_tiny_train_argv(data_dir, out_dir, *extra, epochs=4, lr=0.05, batch_size=8):
    return [*CLS_TINY_MODEL_ARGS, "--data-dir", str(data_dir), "--out-dir", str(out_dir),
            "--epochs", str(epochs), "--aug", "none", "--lr", str(lr), "--batch-size", str(batch_size),
            *CLS_TINY_RUNTIME_ARGS, *extra]


@pytest.fixture(scope="session")
def cls_tiny_train_argv():
    """``f(data_dir, out_dir, *extra, epochs=4, lr=0.05, batch_size=8)``: the ``train_cls.main`` command
    line of a short CPU run of the tiny DenseNet (depth 10, growth 4, no augmentation, fp32)."""
    return _cls_tiny_train_argv


@pytest.fixture(scope="session")
def cls_tiny_run(cls_tiny_data, tmp_path_factory):
    """(run folder, last record) of a 4-epoch tiny DenseNet run, trained once per session. Read-only."""
    import train_cls

    out_dir = tmp_path_factory.mktemp("cls_tiny_run")
    with cls_one_torch_thread():
        record = train_cls.main(_cls_tiny_train_argv(cls_tiny_data, out_dir))
    return out_dir, record


@pytest.fixture(scope="session")
def cls_tiny_checkpoint(cls_tiny_run):
    """Path of the tiny run's ``best.pth``."""
    return cls_tiny_run[0] / "best.pth"
