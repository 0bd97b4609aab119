"""Reading images the same way everywhere: RGB uint8, any PIL mode converted, errors naming the file."""
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from hw1.errors import UserError

log = logging.getLogger(__name__)

IMG_EXTS = (".png", ".jpg", ".jpeg")
# ImageNet statistics: ConvNeXt's pretrained weights expect them, and they suit DenseNet too.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def list_images(folder):
    """Sorted image files of ``folder``; other files are skipped with a warning."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found")
    files, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            (files if p.suffix.lower() in IMG_EXTS else skipped).append(p)
    if skipped:
        log.warning("%s: skipped %d non-image file(s), e.g. %s", folder, len(skipped), skipped[0].name)
    if not files:
        raise UserError(f"{folder}: no .png/.jpg images in this folder")
    return files


def read_rgb(path, size=None):
    """HxWx3 uint8 array of an image file, converted to RGB, optionally resized to ``size`` x ``size``.

    Grayscale, palette and RGBA images are converted rather than rejected (alpha is dropped).
    """
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.array(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: cannot read image ({e})".splitlines()[0]) from None
