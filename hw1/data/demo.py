"""Demo data: the folder rule both demos follow, and the P1 demo made from scikit-learn's bundled digits.

No download and no course data needed: 1,797 8x8 digits become 32x32 colour images (dark ink on
a light background, random hues and noise, so colour carries no label information).

A demo writes only into a folder that is missing, empty, or marked by its hidden marker file as
demo data it wrote before: ``--demo --data-dir`` pointed at real data is refused, never written
over (:func:`claim_demo_folder`).
"""
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from hw1.errors import UserError
from hw1.io import atomic_write_text

CLS_MARKER = ".cls_demo.json"


def _read_marker(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _some_files(root, limit=3):
    """Up to ``limit`` paths of files under ``root`` (relative, in sorted walk order), to name in a message."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found += [os.path.relpath(os.path.join(folder, f), root) for f in sorted(files)][:limit - len(found)]
        if len(found) == limit:
            break
    return found or sorted(os.listdir(root))[:limit]


def claim_demo_folder(root, marker, params):
    """True if ``root`` already holds the complete demo made with ``params``; else claim ``root`` for it.

    Claiming succeeds only for a folder that is missing, empty, or holds ``marker`` (the demo's
    own, from an earlier call, with any ``params``): there the demo may write and replace its
    files. Any other folder is refused with a one-line error, so a demo never changes a file it
    did not create. The marker is written, marked incomplete, before the first data file, and
    :func:`finish_demo_folder` completes it after the last, so an interrupted demo is redone.
    """
    root = Path(root)
    old = _read_marker(root / marker)
    if old == {**params, "complete": True}:
        return True
    if old is None and root.exists():
        if not root.is_dir():
            raise UserError(f"{root}: not a folder; the demo writes its data into a new or empty folder")
        if any(root.iterdir()):
            raise UserError(f"{root}: holds files the demo did not write ({', '.join(_some_files(root))}); "
                            "the demo writes only into a new or empty folder (pass another --data-dir)")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps({**params, "complete": False}), root / marker)
    return False


def finish_demo_folder(root, marker, params):
    atomic_write_text(json.dumps({**params, "complete": True}), Path(root) / marker)


def _digit_images(splits, val_fraction, seed):
    """``[(split, name, (32, 32, 3) uint8 image, label), ...]`` for the 1,797 digits, deterministic for a seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts, out = {}, []
    for image, label in zip(digits.images, digits.target):
        idx = counts[label] = counts.get(label, -1) + 1
        # 8x8 in [0, 16] -> 32x32 ink mask with a one-pixel jitter of the glyph inside the frame.
        ink = np.kron(image / 16.0, np.ones((4, 4)))
        ink = np.roll(ink, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))[..., None]
        # Dark ink on a light background, each of a random hue: colour says nothing about the label.
        fg, bg = rng.uniform(0, 110, size=(1, 1, 3)), rng.uniform(150, 255, size=(1, 1, 3))
        pixels = ink * fg + (1 - ink) * bg + rng.normal(0, 12, size=(32, 32, 3))
        split = splits[1] if rng.random() < val_fraction else splits[0]
        out.append((split, f"{label}_{idx}.png", np.clip(pixels, 0, 255).astype(np.uint8), int(label)))
    return out


def make_cls_demo(root, layout, *, val_fraction=0.2, seed=0):
    """Write the split folders and the labels CSV of P1's ``layout`` (:class:`hw1.tasks.base.Layout`:
    ``root/train_50``, ``root/val_50`` and ``root/val_gt.csv``); return ``root``.

    A folder already complete for the same arguments is left as is; one holding anything but the
    demo's own data is refused (:func:`claim_demo_folder`, marker ``.cls_demo.json``).
    """
    root = Path(root)
    params = {"val_fraction": val_fraction, "seed": seed}
    if claim_demo_folder(root, CLS_MARKER, params):
        return root
    images = _digit_images((layout.train, layout.val), val_fraction, seed)
    expected = {(split, name) for split, name, _, _ in images}
    for split in (layout.train, layout.val):
        folder = root / split
        folder.mkdir(exist_ok=True)
        for p in folder.glob("*.png"):  # the demo's own files of other arguments
            if (split, p.name) not in expected:
                p.unlink()
    for split, name, pixels, _ in images:
        Image.fromarray(pixels).save(root / split / name)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(
        [("filename", "label"), *((name, label) for split, name, _, label in images if split == layout.val)])
    atomic_write_text(buf.getvalue(), root / layout.labels)
    finish_demo_folder(root, CLS_MARKER, params)
    return root
