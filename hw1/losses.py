"""Losses that take the model's raw output, so the engine never needs to know the task."""
import torch
import torch.nn.functional as F
from torch import nn

from hw1.data.masks import UNKNOWN

CLASS_WEIGHTS = ("none", "enet", "inv-sqrt")


def class_weights(masks, kind, *, num_classes, ignore_index=UNKNOWN):
    """Per-class loss weights from the pixel shares of ``masks`` (uint8 class indices, any shape).

    ``enet`` is ENet's ``1 / ln(1.02 + share)`` (Paszke et al., 2016): about 1.5 for agriculture's
    58 % of the pixels and 20 for water's 3 %, bounded (at 1 / ln 1.02 = 50) for a class that never
    occurs. ``inv-sqrt`` is ``1 / sqrt(share)`` scaled to a pixel-weighted mean of 1, a milder
    balance (water 4.3x agriculture where ENet's is 9.5x); a class that never occurs gets 0.
    The ignored class gets 0 (its pixels are not in the loss anyway). ``none`` is None.
    """
    if kind == "none":
        return None
    if kind not in CLASS_WEIGHTS:
        raise ValueError(f"class weights must be one of {CLASS_WEIGHTS}, got {kind!r}")
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for chunk in masks.reshape(len(masks), -1).split(64):  # bincount of int64 copies, a slice at a time
        counts += torch.bincount(chunk.reshape(-1).long(), minlength=num_classes)[:num_classes].double()
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        counts[ignore_index] = 0
    share = counts / counts.sum().clamp(min=1)
    if kind == "enet":
        weights = 1.0 / torch.log(1.02 + share)
    else:
        weights = torch.where(share > 0, share.clamp(min=1e-12).rsqrt(), torch.zeros_like(share))
        weights /= (weights * share).sum()
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        weights[ignore_index] = 0.0
    return weights.float()


def _lovasz_grad(fg_sorted):
    """The Lovász extension's gradient of the Jaccard loss at errors sorted in decreasing order:
    ``fg_sorted`` (C, P) holds 1 where the pixel belongs to the class (Berman et al., 2018, Alg. 1)."""
    gts = fg_sorted.sum(1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(1)
    union = gts + (1 - fg_sorted).cumsum(1)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], 1)


def lovasz_softmax(logits, target, *, ignore_index=UNKNOWN, classes=None):
    """Lovász-softmax loss (Berman, Triki and Blaschko, CVPR 2018): a convex surrogate of
    1 - IoU per class, on the softmax of ``logits`` (N, C, H, W), pixels pooled over the batch
    (the course's mIoU pools them over all images), averaged over the classes present in
    ``target`` (N, H, W). ``classes``: the classes scored (default: all but ``ignore_index``).

    Sorting every pixel's error once per class is its cost: one sort of (classes, pixels).
    """
    num_classes = logits.shape[1]
    classes = [c for c in range(num_classes) if c != ignore_index] if classes is None else list(classes)
    probs = logits.softmax(1, dtype=torch.promote_types(logits.dtype, torch.float32)).transpose(0, 1).reshape(num_classes, -1)[classes]
    target = target.reshape(-1)
    labelled = target != ignore_index
    probs, target = probs[:, labelled], target[labelled]
    fg = (target[None, :] == torch.tensor(classes, device=target.device)[:, None]).to(probs.dtype)
    present = fg.sum(1) > 0
    if not present.any():
        return probs.sum() * 0.0  # no labelled pixel: no loss, and a graph for backward
    fg, probs = fg[present], probs[present]
    errors, order = (fg - probs).abs().sort(1, descending=True)
    return (errors * _lovasz_grad(fg.gather(1, order))).sum(1).mean()


class SegLoss(nn.Module):
    """Pixel-wise cross-entropy on ``output["out"]`` (+ ``aux_weight`` x the same on ``output["aux"]``),
    plus ``lovasz`` x the Lovász-softmax loss on ``output["out"]``, which optimises the IoU of each
    class directly where cross-entropy optimises each pixel's likelihood.

    Unknown pixels (class 6, 0.06% of the training pixels) carry no land-cover label, so they are
    ignored rather than learnt as a class.
    """

    # The Lovász term scores every 4th row and column of the logits (from the 3rd): its sort of all
    # pixels cost 2x a training step of the CPU recipe (16 x 256 x 256 pixels, 0.85 s on one EPYC
    # core) and a 16th of them 0.03 s. The FCN's logits are bilinear upsamplings of stride-8 scores,
    # so that grid still sees every score cell twice over.
    LOVASZ_STRIDE = 4

    def __init__(self, *, aux_weight=0.5, ignore_index=UNKNOWN, label_smoothing=0.0, weight=None, lovasz=0.0):
        super().__init__()
        self.aux_weight, self.ignore_index, self.label_smoothing = aux_weight, ignore_index, label_smoothing
        self.lovasz = lovasz
        # per-class weights (class_weights()), a buffer so that it follows the model's device
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def _ce(self, logits, target):
        # A sum over the labelled pixels divided by their count, or with class weights by the sum of
        # their weights (at least 1 pixel's worth): the mean that cross_entropy would give, except
        # that a batch with no labelled pixel costs 0, not NaN.
        weight = None if self.weight is None else self.weight.to(logits.device, logits.dtype)
        total = F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index, reduction="sum",
                                label_smoothing=self.label_smoothing)
        labelled = target != self.ignore_index
        if weight is None:
            return total / labelled.sum().clamp(min=1)
        return total / weight[target[labelled]].sum().clamp(min=torch.finfo(total.dtype).tiny)

    def forward(self, output, target):
        loss = self._ce(output["out"], target)
        if "aux" in output and self.aux_weight:
            loss = loss + self.aux_weight * self._ce(output["aux"], target)
        if self.lovasz:
            s = self.LOVASZ_STRIDE
            grid = (..., slice(s // 2, None, s), slice(s // 2, None, s))
            loss = loss + self.lovasz * lovasz_softmax(output["out"][grid], target[grid],
                                                       ignore_index=self.ignore_index)
        return loss
