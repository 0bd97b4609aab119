"""Batches straight from the in-memory uint8 tensors, augmented a whole batch at a time.

Both training sets are decoded once into uint8 tensors (:mod:`hw1.data.cls`, :mod:`hw1.data.seg`).
A :class:`BatchStream` indexes a batch out of them, moves it to the device and augments it there
with a handful of tensor operations, in the process that trains: no worker processes, no
per-sample collation. On 2 CPU cores that matters more than the augmentation's own cost: a worker
process takes a core from torch's two threads, which then wait on each other at every parallel
region (results/ and docs/performance.md have the measurements).

Every random draw comes from torch's global generator on the CPU, which checkpoints save and
``--resume`` restores (:func:`hw1.checkpoint.rng_state`), so a resumed run draws what an
uninterrupted one would. The distributions are torchvision's (``RandomCrop(padding, "reflect")``,
``RandomHorizontalFlip``, ``RandomErasing``, ``RandomResizedCrop``, flips and 90-degree turns):
the tests compare each one with torchvision's transform.
"""
import math

import torch
import torch.nn.functional as F

from hw1.data.images import normalize


# --- the augmentations, each on a whole batch ---------------------------------------------------

def _coin(n, device, p=0.5):
    """(n,) bool on ``device``: each True with probability ``p``, drawn on the CPU generator."""
    return (torch.rand(n) < p).to(device)


def crop(images, top, left, height, width):
    """(N, C, height, width) windows of (N, C, H, W) ``images``, window i at (``top[i]``, ``left[i]``).

    One gather for the whole batch: each output row and column indexes its image's own window.
    """
    n, c = images.shape[:2]
    rows = (top.to(images.device)[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
    cols = (left.to(images.device)[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
    return images[torch.arange(n, device=images.device)[:, None, None, None],
                  torch.arange(c, device=images.device)[None, :, None, None], rows, cols]


def random_crop(images, padding):
    """torchvision's ``RandomCrop((H, W), padding, padding_mode="reflect")`` of every image: a window
    of the images' own size at a uniform offset into the reflect-padded batch."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    top = torch.randint(0, 2 * padding + 1, (n,))
    left = torch.randint(0, 2 * padding + 1, (n,))
    return crop(padded, top, left, h, w)


def random_hflip(*tensors):
    """The same random half of every tensor's batch mirrored left-right (``RandomHorizontalFlip``)."""
    flip = _coin(len(tensors[0]), tensors[0].device)
    return tuple(torch.where(flip.view(-1, *[1] * (t.dim() - 1)), t.flip(-1), t) for t in tensors)


def alternating_hflip(images, indices, epoch, seed=0):
    """Each image mirrored on every other epoch: image ``i`` is flipped in epoch ``e`` when a fixed
    pseudo-random bit of ``(seed, i)`` differs from ``e``'s parity, so over any two epochs it is seen
    once each way (airbench's alternating flip; a random flip repeats or skips a view by chance).
    ``indices``: the images' places in the data set; a function of them and ``epoch`` only, so a
    resumed run flips as an uninterrupted one."""
    bits = ((indices.long() * 2654435761 + seed * 40503) >> 16) & 1  # Knuth's multiplicative hash
    flip = (bits ^ (epoch % 2)).bool().to(images.device)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def random_vflip(*tensors):
    flip = _coin(len(tensors[0]), tensors[0].device)
    return tuple(torch.where(flip.view(-1, *[1] * (t.dim() - 1)), t.flip(-2), t) for t in tensors)


def random_rot90(*tensors):
    """Each sample turned by its own random multiple of 90 degrees, the same for every tensor (square maps)."""
    k = torch.randint(4, (len(tensors[0]),))
    out = [t.clone() for t in tensors]
    for turns in (1, 2, 3):
        idx = (k == turns).nonzero().flatten().to(tensors[0].device)
        if len(idx):
            for o, t in zip(out, tensors):
                o[idx] = torch.rot90(t[idx], turns, dims=(-2, -1))
    return tuple(out)


def random_cutout(images, size):
    """Cutout (DeVries and Taylor, 2017) of float ``images`` (N, C, H, W): in each image one
    ``size`` x ``size`` square at a uniform position wholly inside it set to 0 (the mean colour,
    once normalised)."""
    n, _, h, w = images.shape
    top = torch.randint(h - size + 1, (n, 1))
    left = torch.randint(w - size + 1, (n, 1))
    rows = (torch.arange(h) >= top) & (torch.arange(h) < top + size)  # (n, h)
    cols = (torch.arange(w) >= left) & (torch.arange(w) < left + size)  # (n, w)
    keep = ~(rows[:, :, None] & cols[:, None, :])
    return images * keep[:, None].to(images.device, images.dtype)


def _beta(alpha):
    """One draw of Beta(alpha, alpha) from the CPU generator (as a float)."""
    a = torch.tensor(float(alpha))
    return torch.distributions.Beta(a, a).sample().item()


def mix_batch(images, labels, num_classes, *, mixup=0.0, cutmix=0.0):
    """Mixup (Zhang et al., 2018) or CutMix (Yun et al., 2019) of float ``images`` (N, C, H, W) with
    the batch rolled by one, as torchvision's ``v2.MixUp`` / ``v2.CutMix`` pair them; ``labels`` (N,)
    become class probabilities (N, num_classes) weighted by each image's share. ``mixup`` and
    ``cutmix`` are the alphas of the Beta that draws the share (0: off); with both on, each batch
    takes one of the two at random."""
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()).item() < 0.5)
    lam = _beta(cutmix if use_cutmix else mixup)
    other = images.roll(1, 0)
    if use_cutmix:  # a box of about (1 - lam) of the area, centred uniformly, clipped to the image
        h, w = images.shape[-2:]
        cy, cx = torch.randint(h, ()).item(), torch.randint(w, ()).item()
        rh, rw = round(h * math.sqrt(1 - lam) / 2), round(w * math.sqrt(1 - lam) / 2)
        y0, y1, x0, x1 = max(cy - rh, 0), min(cy + rh, h), max(cx - rw, 0), min(cx + rw, w)
        images = images.clone()
        images[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the share the box really left
    else:
        images = images * lam + other * (1 - lam)
    one_hot = F.one_hot(labels, num_classes).to(images.dtype)
    return images, one_hot * lam + one_hot.roll(1, 0) * (1 - lam)


def random_erasing(images, *, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), attempts=10):
    """torchvision's ``RandomErasing()`` (value 0) of float ``images`` (N, C, H, W), drawn for all at once.

    As torchvision: with probability ``p`` an image gets a box of a uniform share ``scale`` of its
    area and a log-uniform aspect ``ratio``, the first of ``attempts`` draws that fits inside the
    image, at a uniform position; an image whose draws all miss keeps every pixel.
    """
    n, _, h, w = images.shape
    erase = torch.rand(n) < p
    area = h * w * torch.empty(n, attempts).uniform_(*scale)
    aspect = torch.exp(torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    bh = torch.sqrt(area * aspect).round().long()
    bw = torch.sqrt(area / aspect).round().long()
    fits = (bh < h) & (bw < w)
    first = fits.long().argmax(1)  # the first attempt that fits (0 when none does: masked out below)
    erase &= fits.any(1)
    bh, bw = bh.gather(1, first[:, None])[:, 0], bw.gather(1, first[:, None])[:, 0]
    top = (torch.rand(n) * (h - bh + 1)).long()
    left = (torch.rand(n) * (w - bw + 1)).long()
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    box = ((ys >= top[:, None, None]) & (ys < (top + bh)[:, None, None])
           & (xs >= left[:, None, None]) & (xs < (left + bw)[:, None, None]) & erase[:, None, None])
    return images.masked_fill(box[:, None].to(images.device), 0)


def random_resized_crop(images, masks, size, scale, ratio=(3 / 4, 4 / 3)):
    """torchvision's ``RandomResizedCrop(size, scale, ratio, antialias=True)`` of image/mask pairs,
    the image bilinear and the mask nearest; pairs whose crop is already ``size`` are not resampled
    (at ``scale=(1, 1)`` and ``size`` the images' side that is all of them: a copy-free pass)."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    t = v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)
    out_images, out_masks = [], []
    for image, mask in zip(images, masks):
        params = t.make_params([image])
        top, left, h, w = (params[k] for k in ("top", "left", "height", "width"))
        if (h, w) == (size, size):
            out_images.append(image[:, top:top + h, left:left + w])
            out_masks.append(mask[top:top + h, left:left + w])
        else:
            out_images.append(TF.resized_crop_image(image, top, left, h, w, [size, size], antialias=True))
            out_masks.append(TF.resized_crop_mask(mask[None], top, left, h, w, [size, size])[0])
    return torch.stack(out_images), torch.stack(out_masks)


# --- a task's batch transforms -------------------------------------------------------------------

class ClsBatchTransform:
    """P1's training transform (:func:`hw1.data.cls.cls_train_transform`) on whole batches.

    ``light``: reflect-padded random crop and horizontal flip; ``seed`` adds, as the seed recipe,
    AutoAugment's CIFAR-10 policy (per image: its operations differ from image to image) and
    RandomErasing; ``none``: normalisation only; then ``cutout``, and ``mixup`` / ``cutmix``
    (:func:`mix_batch`, whose labels are class probabilities) on a ``mix_prob`` share of the
    batches. ``(uint8 images, labels) -> (float images, labels)``.
    """

    FLIPS = ("random", "alternate")

    def __init__(self, aug="seed", padding=4, flip="random", seed=0, cutout=0, mixup=0.0, cutmix=0.0, mix_prob=1.0):
        from hw1.data.cls import AUGMENTATIONS, NUM_CLASSES

        if aug not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {aug!r}")
        if flip not in self.FLIPS:
            raise ValueError(f"flip must be one of {self.FLIPS}, got {flip!r}")
        self.aug, self.padding, self.flip, self.seed, self.cutout = aug, padding, flip, seed, cutout
        self.mixup, self.cutmix, self.mix_prob, self.num_classes = mixup, cutmix, mix_prob, NUM_CLASSES
        # the stream passes each batch's indices and the epoch to a transform that asks for them
        self.wants_indices = flip == "alternate"
        self._autoaugment = None
        if aug == "seed":
            from torchvision.transforms import v2

            self._autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)

    def __call__(self, images, labels, indices=None, epoch=0):
        if self.aug != "none":
            images = random_crop(images, self.padding)
            images = (alternating_hflip(images, indices, epoch, self.seed) if self.flip == "alternate"
                      else random_hflip(images)[0])
        if self._autoaugment is not None:
            images = torch.stack([self._autoaugment(image) for image in images])
        images = normalize(images)
        if self.aug == "seed":
            images = random_erasing(images)
        if self.cutout:
            images = random_cutout(images, self.cutout)
        # a draw for every batch when mixing is on (a resumed run draws as an uninterrupted one); an
        # unmixed batch keeps its class indices, which the loss and the accuracy take as well
        if (self.mixup > 0 or self.cutmix > 0) and torch.rand(()).item() < self.mix_prob:
            images, labels = mix_batch(images, labels, self.num_classes, mixup=self.mixup, cutmix=self.cutmix)
        return images, labels


class SegBatchTransform:
    """P2's training transform (:func:`hw1.data.seg.seg_train_transform`) on whole batches: random
    resized crop to ``crop_size``, horizontal and vertical flips, 90-degree turns, then the image
    normalised and the mask as int64 classes."""

    def __init__(self, crop_size, scale=(0.25, 1.0)):
        self.crop_size, self.scale = crop_size, tuple(scale)

    def __call__(self, images, masks):
        images, masks = random_resized_crop(images, masks, self.crop_size, self.scale)
        images, masks = random_rot90(*random_vflip(*random_hflip(images, masks)))
        return normalize(images), masks.long()


def eval_batch(images, targets):
    """Validation batches: images normalised, targets as int64 (labels, or masks of class indices)."""
    return normalize(images), targets.long()


# --- the stream ----------------------------------------------------------------------------------

class BatchStream:
    """Batches of ``dataset`` (its ``images`` uint8 (N, 3, H, W) and ``targets``) in the order of
    ``batch_sampler``, each moved to ``device`` and passed through ``transform(images, targets)``.

    It stands where a DataLoader would: ``len()`` is the number of batches, ``sampler`` is the
    batch sampler's (``set_epoch`` of a DistributedSampler), and each iteration is one epoch.
    """

    def __init__(self, dataset, batch_sampler, *, transform, device):
        self.dataset, self.batch_sampler = dataset, batch_sampler
        self.sampler = batch_sampler.sampler
        self.transform, self.device = transform, device
        self.epoch = 0

    def set_epoch(self, epoch):
        """The epoch the next pass is (for a transform that varies with it, e.g. an alternating flip)."""
        self.epoch = epoch

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        images, targets = self.dataset.images, self.dataset.targets
        extra = getattr(self.transform, "wants_indices", False)
        for indices in self.batch_sampler:
            idx = torch.as_tensor(indices)
            batch = (images[idx].to(self.device, non_blocking=True), targets[idx].to(self.device, non_blocking=True))
            yield self.transform(*batch, idx, self.epoch) if extra else self.transform(*batch)
