"""One training loop and one evaluation for both tasks.

Classifiers return logits (N, C); segmenters return ``{"out": (N, C, H, W)}`` like torchvision.
:func:`logits_of` is the only place that tells them apart; metrics come from one confusion
matrix (:mod:`hw1.metrics`), whose shape is the same for both.
"""
import contextlib
import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hw1 import distributed as dist
from hw1 import metrics
from hw1.errors import UserError
from hw1.runtime import autocast

log = logging.getLogger(__name__)


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite: continuing would only corrupt the weights."""


def logits_of(output):
    return output["out"] if isinstance(output, dict) else output


def hard_labels(targets):
    """Class indices of ``targets``: themselves, or the most probable class of each row of class
    probabilities (Mixup's and CutMix's labels), which the training accuracy counts against."""
    return targets if not targets.is_floating_point() else top_class(targets)


def top_class(scores):
    """Index of the largest score along dim 1, the first on ties (what ``argmax(1)`` returns).

    ``max(1).indices`` is the same reduction, but on CPU tensors of (N, C, H, W) maps torch's
    ``argmax`` runs 7x slower (0.17 s against 0.025 s on 8 P2 probability maps, AVX512 EPYC):
    most of ``hw1_2.sh``'s post-processing and a share of every P2 training step.
    """
    return scores.max(1).indices


def upsampled(logits, size):
    """A segmenter's (N, C, h, w) logits bilinearly resized to ``size`` (fp32), unchanged when they have it.

    A model trained at a smaller scale than the masks it is scored on predicts at that scale; its
    logits, not its classes, are interpolated, so the boundaries fall between cells.
    """
    if size is None or tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)


# Test-time augmentation, as views of the input that a segmenter's maps are turned back from:
# "flip" mirrors left-right; "d4" is the 8 symmetries of a square (4 turns, each also mirrored),
# all valid for overhead imagery, which has no up or left; "crops" is the CIFAR-10 speed runs'
# multi-crop TTA (airbench): the image and its mirror, half the weight, and both moved one pixel
# up-left and one down-right within a reflect padding (as the training crops pad), a quarter each.
TTA_MODES = ("none", "flip", "d4", "crops")


@dataclass(frozen=True)
class View:
    """One view of a TTA mode: the input moved ``shift`` pixels up and left (negative: down and
    right), then mirrored left-right, then turned ``turns`` quarter turns; ``weight`` its share of the mean."""
    turns: int = 0
    mirrored: bool = False
    shift: int = 0
    weight: float = 1.0


def tta_mode(tta):
    """The TTA mode ``tta`` names: one of :data:`TTA_MODES`; False/None and True are "none" and
    "flip", as checkpoints and callers from before "d4" say."""
    if tta is None or tta is False:
        return "none"
    if tta is True:
        return "flip"
    if tta in TTA_MODES:
        return tta
    raise ValueError(f"test-time augmentation must be one of {', '.join(TTA_MODES)}, got {tta!r}")


def tta_views(tta):
    """The :class:`View` s of mode ``tta``, the plain image first; their weights sum to 1."""
    mode = tta_mode(tta)
    if mode == "none":
        return [View()]
    if mode == "flip":
        return [View(mirrored=m, weight=0.5) for m in (False, True)]
    if mode == "crops":
        return [View(mirrored=m, shift=s, weight=0.25 if s == 0 else 0.125) for s in (0, -1, 1) for m in (False, True)]
    return [View(turns=k, mirrored=m, weight=0.125) for k in range(4) for m in (False, True)]


def _shifted(x, shift, mode):
    """``x`` moved ``shift`` pixels along both spatial axes, its border filled by ``mode`` padding."""
    if not shift:
        return x
    h, w = x.shape[-2:]
    n = abs(shift)
    return F.pad(x, (n,) * 4, mode=mode)[..., n + shift:n + shift + h, n + shift:n + shift + w]


def _view(x, v):
    x = _shifted(x, v.shift, "reflect")
    x = x.flip(-1) if v.mirrored else x
    return torch.rot90(x, v.turns, (-2, -1)) if v.turns else x


def _unview(y, v):
    y = torch.rot90(y, -v.turns, (-2, -1)) if v.turns else y
    y = y.flip(-1) if v.mirrored else y
    # a map's pixel (i, j) came from the input's pixel (i + shift, j + shift): moved back, its
    # border (the padding's) repeats its neighbours
    return _shifted(y, -v.shift, "replicate")


def probabilities(model, x, *, tta=False, size=None, output=None):
    """Class probabilities of a batch, (N, C) or (N, C, H, W) in fp32; with ``tta`` (a mode of
    :data:`TTA_MODES`, or True for "flip") the weighted mean over its views, a segmenter's maps
    turned, mirrored and moved back. ``size``: a segmenter's logits are upsampled to it first
    (:func:`upsampled`). ``output``: the model's output for ``x`` when the caller has it already,
    so that only the other views run."""
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    views = tta_views(tta)
    total = None
    for v in views:
        if v == views[0] and output is not None:
            out = output
        else:
            xv = _view(x, v)
            out = model(xv.contiguous(memory_format=torch.channels_last) if nhwc and (v.turns or v.shift) else xv)
        logits = logits_of(out)
        if logits.dim() == 4 and v.shift:
            # logits moved back by the input's pixel, at the input's scale, before any resizing to ``size``
            prob = upsampled(_unview(upsampled(logits, tuple(x.shape[-2:])), v), size).float().softmax(1)
        elif logits.dim() == 4:  # a segmenter's map: upsampled in the view's orientation, then turned back
            view_size = None if size is None else (tuple(size)[::-1] if v.turns % 2 else tuple(size))
            prob = _unview(upsampled(logits, view_size).float().softmax(1), v)
        else:
            prob = logits.float().softmax(1)
        total = prob * v.weight if total is None else total + prob * v.weight
    return total


def to_device(images, targets, device, channels_last):
    # non_blocking pairs with pin_memory on CUDA; on the CPU it is a no-op.
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def progress_bar(loader, *, desc, progress):
    """``loader`` in a tqdm bar when ``progress`` and stderr is a terminal; else (``bar.disable``) no bar.

    Off a terminal (CI, nohup, ``> log 2>&1``) a bar's every refresh would land in the log as a
    carriage-return line; there :func:`train_one_epoch` logs plain lines instead.
    """
    return tqdm(loader, desc=desc, disable=True if not progress else None, leave=False, dynamic_ncols=True)


def train_one_epoch(model, loader, state, *, criterion, device, amp_dtype=None, channels_last=False, grad_clip=None,
                    epoch=0, log_every=20, progress=True, distributed=False, micro_batch=None, line_every=100):
    """Train for one pass over ``loader``; return averaged ``loss``, ``acc``, ``img_s`` and ``seconds``.

    ``model`` is what runs the steps (``state.model``, or its DDP / compiled wrapper); ``state`` a
    :class:`hw1.train_state.TrainState` whose optimizer, schedule, scaler and weight average step.

    ``progress``: a bar on a terminal; elsewhere one log line every ``line_every`` steps (checked
    at the ``log_every`` steps), as the epoch's own summary line is the caller's.

    With ``distributed`` the figures are summed over all ranks (``img_s`` is the whole world's).
    With ``micro_batch`` each batch runs forward and backward in chunks of at most that many
    images whose gradients add up (each chunk's mean loss weighted by its share of the batch), then
    takes one optimizer step: the batch's gradient, with batch-norm statistics per chunk.

    Step order: zero_grad -> forward under autocast -> scaled backward (per chunk) -> (unscale,
    clip) -> optimizer step through the scaler -> scale update -> lr schedule step (per iteration)
    -> ``state.ema.update()`` (with a weight average).
    """
    optimizer, scheduler, scaler, ema = state.optimizer, state.scheduler, state.scaler, state.ema
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = counted = 0
    start = time.perf_counter()
    bar = progress_bar(loader, desc=f"epoch {epoch}", progress=progress)
    lines = progress and bar.disable
    for step, (images, targets) in enumerate(bar):
        images, targets = to_device(images, targets, device, channels_last)
        optimizer.zero_grad(set_to_none=True)
        chunks = list(zip(images.split(micro_batch or len(images)), targets.split(micro_batch or len(images))))
        for i, (x, y) in enumerate(chunks):
            # DDP all-reduces gradients in the last chunk's backward only.
            last = i + 1 == len(chunks)
            with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
                with autocast(device, amp_dtype):
                    output = model(x)
                    loss = criterion(output, y)
                scaler.scale(loss * (len(x) / len(images))).backward()
            loss_sum += loss.detach().double() * len(x)
            correct += (top_class(logits_of(output).detach()) == hard_labels(y)).sum()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update()

        seen += images.shape[0]
        counted += hard_labels(targets).numel()
        # Reading the loss forces a device sync, so it is checked every ``log_every`` steps, not each.
        if (step + 1) % log_every == 0 or step + 1 == len(loader):
            # Summed over ranks so that all stop together: a rank raising alone would leave the
            # others waiting in their next all-reduce.
            total_loss, total_seen = _totals([loss_sum, seen], device=device, distributed=distributed)
            mean_loss = total_loss / total_seen
            if not math.isfinite(mean_loss):
                raise NonFiniteLoss(
                    f"loss became {mean_loss} at epoch {epoch}, step {step + 1}: stopping; the last good "
                    "checkpoint is the previous epoch's last.pth (try a lower --lr or --grad-clip)"
                )
            img_s = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{scheduler.get_last_lr():.4g}", img_s=f"{img_s:.0f}")
            if lines and (step + 1) % line_every == 0 and step + 1 < len(loader):
                log.info("epoch %d  step %d/%d  loss %.4f  lr %.4g  (%.0f img/s)", epoch, step + 1, len(loader),
                         mean_loss, scheduler.get_last_lr(), img_s)
    seconds = time.perf_counter() - start
    loss_sum, correct, seen, counted = _totals([loss_sum, correct, seen, counted], device=device,
                                               distributed=distributed)
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(counted, 1), "img_s": seen / seconds,
            "seconds": seconds}


def _totals(values, *, device, distributed):
    """``values`` (tensors or numbers) as Python floats, each summed over all ranks with ``distributed``."""
    totals = torch.stack([torch.as_tensor(v, device=device).double() for v in values])
    return (dist.sum_(totals) if distributed else totals).tolist()


@torch.inference_mode()
def evaluate(model, loader, *, num_classes, summarize, criterion=None, device, amp_dtype=None, channels_last=False,
             progress=False, distributed=False, tta=False):
    """Pooled confusion matrix over ``loader`` and its ``summarize(cm)`` (a task's, e.g.
    :func:`hw1.metrics.cls_summary`).

    With ``tta`` (a mode of :data:`TTA_MODES`) the predictions average the class probabilities of
    each image's views (:func:`probabilities`); the loss stays the plain forward's.

    Returns ``{"loss"?, <task metrics>, "samples", "cm": (C, C) int64 tensor on the CPU, "img_s"}``.
    With ``distributed`` each rank holds a disjoint shard (:class:`hw1.distributed.ShardSampler`) and
    the confusion matrix and loss are summed over ranks: every sample counted exactly once.
    """
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    seen = 0
    start = time.perf_counter()
    for images, targets in progress_bar(loader, desc="eval", progress=progress):
        images, targets = to_device(images, targets, device, channels_last)
        with autocast(device, amp_dtype):
            output = model(images)
            if criterion is not None:
                loss_sum += criterion(output, targets).double() * images.shape[0]
            # masks larger than the model's input (a model trained at a smaller scale): logits upsampled
            size = targets.shape[-2:] if targets.dim() == 3 else None
            pred = top_class(probabilities(model, images, tta=tta, size=size, output=output)
                             if tta_mode(tta) != "none" else upsampled(logits_of(output), size))
        cm += metrics.confusion_matrix(targets, pred, num_classes)
        seen += images.shape[0]
    seconds = time.perf_counter() - start
    if distributed:
        dist.sum_(cm)
    loss_sum, seen = _totals([loss_sum, seen], device=device, distributed=distributed)
    cm = cm.cpu()
    result = summarize(cm)
    if criterion is not None:
        result["loss"] = loss_sum / max(seen, 1)
    result["samples"] = int(seen)
    result["cm"] = cm
    result["img_s"] = seen / seconds
    return result
