"""P2 data: the course's ``xxxx_sat.jpg`` + ``xxxx_mask.png`` folders and their paired transforms.

Every pair is decoded once per run into uint8 tensors (the 2,000 train pairs at 512x512 are
1.6 GB of images and 0.5 GB of masks), so an epoch never touches a JPEG again. The transforms
are torchvision v2 ones applied to a ``tv_tensors.Image`` and a ``tv_tensors.Mask`` in one call,
which draws one set of random parameters for both and resizes masks with nearest neighbours.
"""
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from hw1.data.images import MEAN, STD, folder_files, image_size, read_rgb
from hw1.data.layouts import P2
from hw1.data.masks import read_mask
from hw1.errors import UserError

log = logging.getLogger(__name__)

# the course's pairs: xxxx_sat.jpg and its mask xxxx_mask.png
SAT_SUFFIX, MASK_SUFFIX = P2.image_suffix, P2.mask_suffix


def scan_pairs(folder):
    """Sorted ``[(id, sat_path, mask_path), ...]`` of a folder of ``{id}_sat.jpg`` + ``{id}_mask.png``.

    Other files and links that lead nowhere are skipped with a warning (hidden ones silently); a
    satellite image without its mask (or the reverse) is an error.
    """
    folder = Path(folder)
    sats, masks, skipped = {}, {}, []
    # Hidden names, left out, include macOS's "._0000_sat.jpg" resource forks, which are not images.
    for p in folder_files(folder):
        if p.name.endswith(SAT_SUFFIX):
            sats[p.name[:-len(SAT_SUFFIX)]] = p
        elif p.name.endswith(MASK_SUFFIX):
            masks[p.name[:-len(MASK_SUFFIX)]] = p
        else:
            skipped.append(p.name)
    if skipped:
        log.warning("%s: skipped %d file(s) not named xxxx%s or xxxx%s, e.g. %s",
                    folder, len(skipped), SAT_SUFFIX, MASK_SUFFIX, skipped[0])
    unpaired = sorted([sats[i].name for i in sats.keys() - masks.keys()]
                      + [masks[i].name for i in masks.keys() - sats.keys()])
    if unpaired:
        shown = ", ".join(unpaired[:3]) + (", ..." if len(unpaired) > 3 else "")
        raise UserError(f"{folder}: {len(unpaired)} file(s) without their "
                        f"{SAT_SUFFIX}/{MASK_SUFFIX} partner: {shown}")
    if not sats:
        raise UserError(f"{folder}: no xxxx{SAT_SUFFIX} + xxxx{MASK_SUFFIX} pairs in this folder")
    return [(i, sats[i], masks[i]) for i in sorted(sats)]


def _hw(size):
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def _default_workers():
    from hw1.runtime import cpu_cores

    return min(16, cpu_cores())


class SegDataset(torch.utils.data.Dataset):
    """In-memory pairs: ``images`` (N, 3, H, W) uint8, ``masks`` (N, H, W) uint8 class indices.

    ``transform(image, mask)`` receives a ``tv_tensors.Image`` and a ``tv_tensors.Mask`` and
    should return them as float (3, H, W) and int64 (H, W), as ``seg_train_transform`` and
    ``seg_eval_transform`` do; items come back as plain tensors. Without a transform the stored
    uint8 tensors are returned.
    """

    def __init__(self, images, masks, ids, transform=None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
        # masks may be of another size, even another shape: scoring a model that runs at its own
        # scale (square, --size) keeps the ground truth as it is (the model's logits are upsampled to
        # it), as hw1.predict does for a 500x300 image
        if masks.dtype != torch.uint8 or masks.ndim != 3 or len(masks) != len(images):
            raise ValueError(f"masks must be (N, H, W) uint8 matching images, got {tuple(masks.shape)} {masks.dtype}")
        if len(ids) != len(images):
            raise ValueError(f"{len(ids)} ids for {len(images)} images")
        self.images, self.masks, self.ids = images, masks, list(ids)
        self.transform = transform

    @property
    def targets(self):
        """The masks: what :class:`hw1.data.batches.BatchStream` indexes beside the images."""
        return self.masks

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image, mask = self.images[i], self.masks[i]
        if self.transform is None:
            return image, mask
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        # Plain tensors collate and pickle (DataLoader workers) without tv_tensor surprises.
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def load_seg_split(folder, *, size=None, workers=None, transform=None, mask_size="image"):
    """Decode every pair of ``folder`` once into a ``SegDataset``.

    ``size`` (an int or ``(H, W)``) resizes images bilinearly (:func:`hw1.data.images.resize_rgb`,
    as inference does); without it every image must have the first one's size. ``mask_size``:
    ``"image"`` puts the masks at the images' size, an int or ``(H, W)`` at that one (nearest
    neighbour either way), None keeps their own (all must have the first one's). Decoding runs on a
    thread pool (``workers`` threads, default: the usable CPUs up to 16) because PIL releases the
    GIL while decoding.
    """
    pairs = scan_pairs(folder)
    size = _hw(size)
    workers = workers or _default_workers()
    if size is None:
        first = pairs[0][1]
        size = image_size(first)
        resize = False
    else:
        resize = True
    h, w = size
    mh, mw = size if mask_size == "image" else _hw(mask_size) or image_size(pairs[0][2])
    n = len(pairs)
    images = torch.empty((n, 3, h, w), dtype=torch.uint8)
    masks = torch.empty((n, mh, mw), dtype=torch.uint8)
    # Filled in place through numpy views: no per-image tensors and no final stack, so the peak
    # memory is the dataset itself.
    images_np, masks_np = images.numpy(), masks.numpy()

    def load(i):
        _, sat_path, mask_path = pairs[i]
        # No JPEG draft decoding: inference resizes the fully decoded image (resize_rgb), and a
        # model must see the same pixels in both
        rgb, (h0, w0) = read_rgb(sat_path, size if resize else None, with_size=True)
        mask = read_mask(mask_path)
        if mask.shape != (h0, w0):
            raise UserError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but "
                            f"{sat_path.name} is {w0}x{h0}")
        if rgb.shape[:2] != size:
            raise UserError(f"{sat_path}: image is {w0}x{h0}, but {pairs[0][1].name} is {w}x{h} "
                            "(pass a size to resize them all)")
        if mask_size is not None and mask.shape != (mh, mw):
            mask = np.asarray(Image.fromarray(mask).resize((mw, mh), Image.NEAREST))
        if mask.shape != (mh, mw):
            raise UserError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, but "
                            f"{pairs[0][2].name} is {mw}x{mh}")
        images_np[i] = rgb.transpose(2, 0, 1)
        masks_np[i] = mask

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            list(pool.map(load, range(n)))
        except BaseException:
            # Fail on the first bad file instead of decoding the rest of the folder first.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    log.info("%s: decoded %d pairs at %dx%d in %.1f s", folder, n, w, h, time.perf_counter() - start)
    return SegDataset(images, masks, [p[0] for p in pairs], transform)


class RandomRot90(v2.Transform):
    """Rotate images and masks by the same random multiple of 90 degrees (exact, no resampling).

    Satellite tiles have no "up", so all four orientations are equally plausible.
    """

    def make_params(self, flat_inputs):
        return {"k": int(torch.randint(4, ()))}

    def transform(self, inpt, params):
        if not isinstance(inpt, torch.Tensor) or (
                isinstance(inpt, tv_tensors.TVTensor)
                and not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask, tv_tensors.Video))):
            raise TypeError(f"RandomRot90 handles image, mask and video tensors, not {type(inpt).__name__}")
        if params["k"] == 0:
            return inpt
        out = torch.rot90(inpt, params["k"], dims=(-2, -1))
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


def _to_model_input():
    # Only the image is scaled to [0, 1] and normalised; Normalize passes masks through.
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                   scale=True),
        v2.Normalize(MEAN, STD),
    ]


def seg_train_transform(crop_size, *, scale=(0.25, 1.0)):
    """Random scale/crop to ``crop_size``, flips and 90-degree turns, then dtype + normalise.

    The crop runs first so the flips and turns work on the smaller tensors; the result has the
    same distribution as in the other order because the crop's distribution is symmetric.
    """
    return v2.Compose([
        v2.RandomResizedCrop(crop_size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        RandomRot90(),
        *_to_model_input(),
    ])


def seg_eval_transform():
    """uint8 image -> normalised float32; uint8 mask -> int64."""
    return v2.Compose(_to_model_input())
