"""Demo classification data in the course's layout, made from scikit-learn's bundled digits.

No download and no course data needed: 1,797 8x8 digits become 32x32 colour images (dark ink on
a light background, random hues and noise, so colour carries no label information).
"""
import csv
from pathlib import Path

import numpy as np
from PIL import Image


def make_cls_demo(root, *, val_fraction=0.2, seed=0):
    """Write ``root/train_50``, ``root/val_50`` and ``root/val_gt.csv``; return ``root``.

    Skips the work if ``val_gt.csv`` already exists (it is written last).
    """
    from sklearn.datasets import load_digits

    root = Path(root)
    if (root / "val_gt.csv").is_file():
        return root
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for split in ("train_50", "val_50"):
        (root / split).mkdir(parents=True, exist_ok=True)
    counts, val_rows = {}, []
    for image, label in zip(digits.images, digits.target):
        idx = counts[label] = counts.get(label, -1) + 1
        # 8x8 in [0, 16] -> 32x32 ink mask with a one-pixel jitter of the glyph inside the frame.
        ink = np.kron(image / 16.0, np.ones((4, 4)))
        ink = np.roll(ink, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))[..., None]
        # Dark ink on a light background, each of a random hue: colour says nothing about the label.
        fg, bg = rng.uniform(0, 110, size=(1, 1, 3)), rng.uniform(150, 255, size=(1, 1, 3))
        pixels = ink * fg + (1 - ink) * bg + rng.normal(0, 12, size=(32, 32, 3))
        split = "val_50" if rng.random() < val_fraction else "train_50"
        name = f"{label}_{idx}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / split / name)
        if split == "val_50":
            val_rows.append((name, int(label)))
    with open(root / "val_gt.csv", "w", newline="") as f:
        csv.writer(f).writerows([("filename", "label"), *val_rows])
    return root
