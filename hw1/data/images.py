"""Reading images the same way everywhere: RGB uint8, any PIL mode and bit depth converted, errors naming the file."""
import contextlib
import logging
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hw1.errors import UserError

log = logging.getLogger(__name__)
_OPEN_LOCK = threading.Lock()

IMG_EXTS = (".png", ".jpg", ".jpeg")
# ImageNet statistics: ConvNeXt's pretrained weights expect them, and they suit DenseNet too.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def folder_files(folder):
    """Sorted files of ``folder`` (links followed), hidden names and subfolders left out.

    A link that leads nowhere (a missing target, or a loop) and anything named like an image that
    is not a file (a folder ``x.png``, a FIFO) are skipped with a warning naming them: each would
    otherwise be an input silently missing from the output.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found")
    files, broken, odd = [], [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file():
            files.append(p)
        elif p.is_symlink() and not p.exists():
            broken.append(p.name)
        elif p.suffix.lower() in IMG_EXTS:
            odd.append(p.name)
    if broken:
        log.warning("%s: skipped %d link(s) that lead nowhere (missing target or a loop), e.g. %s",
                    folder, len(broken), broken[0])
    if odd:
        log.warning("%s: skipped %d name(s) of an image that are not files (a folder, a FIFO), e.g. %s",
                    folder, len(odd), odd[0])
    return files


@contextlib.contextmanager
def open_image(path, what="image"):
    """``Image.open(path)``, its errors and warnings naming ``path`` (a ``what``).

    PIL warns about an image of more than ~89 M pixels (a possible decompression bomb) through
    ``warnings`` without saying which file; the warning is logged with the file's name instead.
    Past twice that PIL refuses the image, which is the one-line error here. EXIF orientation is
    not applied: pixels are read as stored, as the course's masks are aligned to them.
    """
    try:
        # PIL's size check runs in Image.open (the header only). catch_warnings swaps process-wide
        # state, so with images decoded on threads one call could record (or lose) another's
        # warning: the open is serialised, the decoding that follows is not.
        with _OPEN_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: cannot read {what} ({e})".splitlines()[0]) from None
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            log.warning("%s: a very large %s (%s)", path, what, str(w.message).splitlines()[0])
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    try:
        with im:
            yield im
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read {what} ({e})".splitlines()[0]) from None


def list_images(folder):
    """Sorted image files of ``folder``; other files are skipped with a warning."""
    files, skipped = [], []
    for p in folder_files(folder):
        (files if p.suffix.lower() in IMG_EXTS else skipped).append(p)
    if skipped:
        log.warning("%s: skipped %d non-image file(s), e.g. %s", folder, len(skipped), skipped[0].name)
    if not files:
        raise UserError(f"{folder}: no .png/.jpg images in this folder")
    return files


# PIL modes of 16-bit samples. A 16-bit grayscale PNG opens as "I;16" ("I" in older Pillow), and
# Image.convert clips such samples at 255 instead of scaling them, which turns almost every pixel
# white. 16-bit RGB and RGBA PNGs open as 8-bit modes holding each sample's high byte; 16-bit gray
# is read the same way, so a picture reads alike in every bit depth.
_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(im, path):
    """An open PIL image as 8-bit RGB: every mode converted, 16-bit samples scaled to 0..255 (alpha dropped).

    Float images and integers beyond 16 bits have no agreed range and are refused.
    """
    if im.mode in _16_BIT_MODES:
        values = np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UserError(f"{path}: {im.mode} samples outside 0..65535; save it with 8 or 16 bits per channel")
        im = Image.fromarray((values >> 8).astype(np.uint8), "L")
    elif im.mode == "F":
        raise UserError(f"{path}: a floating-point image; save it with 8 or 16 bits per channel")
    return im.convert("RGB")


def _bilinear(im, hw):
    """A PIL image resized to ``hw`` (H, W) with PIL's antialiased bilinear filter: the one resize of
    P1/P2 loading and of P2 inference, so that both see the same pixels."""
    return im if im.size == (hw[1], hw[0]) else im.resize((hw[1], hw[0]), Image.BILINEAR)


def resize_rgb(image, size):
    """(H, W, 3) uint8 array resized (PIL's antialiased bilinear) to ``size`` (a side or (H, W)).

    The resize of :func:`read_rgb`, for images already decoded: a P2 model sees at inference
    exactly the pixels its training images had.
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if image.shape[:2] == hw:
        return image
    return np.array(_bilinear(Image.fromarray(image, "RGB"), hw))


def read_rgb(path, size=None, *, draft=False, with_size=False):
    """HxWx3 uint8 array of an image file, converted to RGB, optionally resized (bilinear) to ``size``.

    ``size`` is a side (a square) or (H, W). Grayscale, palette, RGBA and 16-bit images are
    converted rather than rejected (:func:`to_rgb`). With ``draft``, a JPEG resized down decodes at
    1/2, 1/4 or 1/8 scale first, for a fraction of the cost (a no-op for other formats). With
    ``with_size``, returns (array, the file's own (H, W)).
    """
    hw = (size, size) if isinstance(size, int) else size
    with open_image(path) as im:
        own = (im.height, im.width)
        if hw is not None and draft:
            # draft keeps the decoded image at least as large as asked
            im.draft(None, (hw[1], hw[0]))
        im = to_rgb(im, path)
        if hw is not None:
            im = _bilinear(im, hw)
        image = np.array(im, dtype=np.uint8)
    return (image, own) if with_size else image


def image_size(path):
    """(H, W) of an image file, read from its header."""
    with open_image(path) as im:
        return im.height, im.width


def normalize(images):
    """uint8 (N, 3, H, W) -> float, scaled and normalised as in training, on the images' device.

    The operations and their order are torchvision's ``ToDtype(scale=True)`` then ``Normalize``
    (multiply by 1/255, subtract, divide), so a batch normalised here equals, bit for bit, the
    same images through the DataLoader path's transforms: evaluation does not depend on the loader.
    """
    mean = torch.tensor(MEAN, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    return images.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)
