"""P2 mask colour codec: the course's RGB masks <-> class indices 0-6.

A mask pixel is read as three bits, one per channel (a channel >= 128 is 1), and the 3-bit code
``4R + 2G + B`` picks the class through an 8-entry table, so JPEG-ish off-by-a-few colours still
land on the right class and the whole decode is two numpy ops.
"""
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from hw1.data.images import open_image, to_rgb
from hw1.io import atomic_path

CLASS_NAMES = ("urban", "agriculture", "rangeland", "forest", "water", "barren", "unknown")
NUM_CLASSES = 7
UNKNOWN = 6

# Canonical colour of each class, row i = class i.
PALETTE = np.array([
    [0, 255, 255],    # urban: cyan
    [255, 255, 0],    # agriculture: yellow
    [255, 0, 255],    # rangeland: magenta
    [0, 255, 0],      # forest: green
    [0, 0, 255],      # water: blue
    [255, 255, 255],  # barren: white
    [0, 0, 0],        # unknown: black
], dtype=np.uint8)

# Class of each 3-bit code 4R + 2G + B. Code 4 (pure red) is in no class, yet a few pixels of 11
# train masks and 1 validation mask have it: mapping it to "unknown" keeps those pixels out of the
# loss (unknown is the ignore index) and out of the metric (mIoU is over classes 0-5).
_CODE_TO_CLASS = np.array([6, 4, 3, 0, 6, 2, 1, 5], dtype=np.uint8)


def rgb_to_class(rgb):
    """(H, W, 3) uint8 RGB mask -> (H, W) uint8 class indices in 0..6."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    bits = rgb >> 7  # 1 where the channel is >= 128
    return _CODE_TO_CLASS[(bits[..., 0] << 2) | (bits[..., 1] << 1) | bits[..., 2]]


def class_to_rgb(idx):
    """(H, W) integer class indices in 0..6 -> (H, W, 3) uint8 canonical colours."""
    idx = np.asarray(idx)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"expected an (H, W) integer array, got {idx.shape} {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= NUM_CLASSES):
        raise ValueError(f"class indices must be in 0..{NUM_CLASSES - 1}, got {idx.min()}..{idx.max()}")
    return PALETTE[idx]


def read_mask(path, *, with_rgb=False):
    """(H, W) uint8 class indices of a mask image (any mode and bit depth, :func:`hw1.data.images.to_rgb`);
    with ``with_rgb``, ``(classes, rgb)``."""
    with open_image(path, "mask") as im:
        rgb = np.asarray(to_rgb(im, path))
    return (rgb_to_class(rgb), rgb) if with_rgb else rgb_to_class(rgb)


def holds_class_indices(rgb):
    """Whether a mask's pixels are all 0-6 and not all 0: class indices written as grey levels
    (``Image.fromarray(classes)``), which the course's colour thresholds read as unknown everywhere."""
    top = int(rgb.max()) if rgb.size else 0
    return 0 < top <= UNKNOWN


def write_mask(idx, path, *, text=None):
    """Write (H, W) class indices as the course's RGB PNG, atomically; return the path.

    ``text`` ``(key, value)`` is stored as a PNG text chunk (predictions carry a mark that tells
    them from ground truth, :data:`hw1.outputs.MASK_MARK`); readers of the colours ignore it.
    """
    path = Path(path)
    image = Image.fromarray(class_to_rgb(idx))
    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text(*text)
    with atomic_path(path) as tmp:
        # The temporary name ends in .tmp, so the format cannot be guessed from it.
        image.save(tmp, format="PNG", pnginfo=info)
    return path
