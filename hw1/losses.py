"""Losses that take the model's raw output, so the engine never needs to know the task."""
import torch.nn.functional as F
from torch import nn

from hw1.data.masks import UNKNOWN


class SegLoss(nn.Module):
    """Pixel-wise cross-entropy on ``output["out"]`` (+ ``aux_weight`` x the same on ``output["aux"]``).

    Unknown pixels (class 6, 0.06% of the training pixels) carry no land-cover label, so they are
    ignored rather than learnt as a class.
    """

    def __init__(self, *, aux_weight=0.5, ignore_index=UNKNOWN, label_smoothing=0.0):
        super().__init__()
        self.aux_weight, self.ignore_index, self.label_smoothing = aux_weight, ignore_index, label_smoothing

    def _ce(self, logits, target):
        # A sum over the labelled pixels divided by their count (at least 1): the mean that
        # cross_entropy would give, except that a batch with no labelled pixel costs 0, not NaN.
        total = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum",
                                label_smoothing=self.label_smoothing)
        return total / (target != self.ignore_index).sum().clamp(min=1)

    def forward(self, output, target):
        loss = self._ce(output["out"], target)
        if "aux" in output and self.aux_weight:
            loss = loss + self.aux_weight * self._ce(output["aux"], target)
        return loss
