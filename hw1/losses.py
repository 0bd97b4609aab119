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


class SegLoss(nn.Module):
    """Pixel-wise cross-entropy on ``output["out"]`` (+ ``aux_weight`` x the same on ``output["aux"]``).

    Unknown pixels (class 6, 0.06% of the training pixels) carry no land-cover label, so they are
    ignored rather than learnt as a class.
    """

    def __init__(self, *, aux_weight=0.5, ignore_index=UNKNOWN, label_smoothing=0.0, weight=None):
        super().__init__()
        self.aux_weight, self.ignore_index, self.label_smoothing = aux_weight, ignore_index, label_smoothing
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
        return loss
