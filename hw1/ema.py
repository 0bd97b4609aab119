"""An exponential moving average of a model's weights, the model that is evaluated and shipped.

With a short schedule the last epochs' weights still move a lot from step to step; their average
over the last few hundred steps generalises better (Polyak averaging, as timm's ModelEmaV2 and
torchvision's classification reference keep it). Batch-norm statistics are averaged the same way.
"""
import copy

import torch


class EMA:
    """``module``: a frozen copy of ``source`` that :meth:`update` moves towards it after each step.

    ``decay`` is per optimizer step. Early on the decay is ``(1 + n) / (10 + n)`` after ``n``
    updates when that is smaller, so that the average is not dominated by the random init.
    """

    def __init__(self, source, decay):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.source, self.decay, self.updates = source, decay, 0
        self.module = copy.deepcopy(source).eval().requires_grad_(False)

    def current_decay(self):
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self):
        self.updates += 1
        d = self.current_decay()
        pairs = [(e, s) for e, s in zip(self.module.state_dict().values(), self.source.state_dict().values())]
        floats = [(e, s) for e, s in pairs if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [s for _, s in floats], 1 - d)
        for e, s in pairs:
            if not e.is_floating_point():  # batch counters: the source's
                e.copy_(s)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state, updates):
        self.module.load_state_dict(state)
        self.updates = updates
