"""Learning-rate schedule: a pure function of the step, wrapped so a checkpoint can restore it."""
import math


def cosine_lr(step, *, base_lr, total_steps, warmup_steps=0, min_lr=0.0):
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, then cosine annealing to ``min_lr``.

    Step ``warmup_steps - 1`` is the first at ``base_lr`` (warm-up starts at ``base_lr /
    warmup_steps``, never at 0, so no step is wasted); the cosine reaches ``min_lr`` at
    ``total_steps`` and stays there.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class CosineSchedule:
    """Sets every param group's lr from :func:`cosine_lr` (times the group's ``lr_scale``, if it has
    one); call :meth:`step` once per iteration."""

    def __init__(self, optimizer, *, base_lr, total_steps, warmup_steps=0, min_lr=0.0):
        self.optimizer = optimizer
        self.kwargs = dict(base_lr=base_lr, total_steps=total_steps, warmup_steps=warmup_steps, min_lr=min_lr)
        self.last_step = 0
        self._apply()

    def _apply(self):
        lr = cosine_lr(self.last_step, **self.kwargs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # a group's own multiple (--bn-bias-lr)

    def get_last_lr(self):
        return cosine_lr(self.last_step, **self.kwargs)

    def step(self):
        self.last_step += 1
        self._apply()

    def state_dict(self):
        return {"last_step": self.last_step, **self.kwargs}

    def load_state_dict(self, state):
        self.kwargs = {k: state[k] for k in self.kwargs}
        self.last_step = state["last_step"]
        self._apply()
