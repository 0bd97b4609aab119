"""What a training step changes and a checkpoint holds, as one object: :class:`TrainState`.

The model, its weight average, the optimizer, the lr schedule, the gradient scaler, the epoch and
the best score save together (:meth:`TrainState.state_dict`) and load together
(:meth:`TrainState.load`): the checkpoint's training keys are written and read here only.
"""
import logging
from dataclasses import dataclass

import torch
from torch import nn

from hw1.ema import EMA
from hw1.errors import UserError
from hw1.schedule import CosineSchedule

log = logging.getLogger(__name__)

# what a checkpoint needs beyond its weights to continue a run (the RNG streams are the trainer's)
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "epoch", "best")


def param_groups(model, weight_decay, no_wd_norm, bn_bias_lr=1.0):
    """One group, or two with no decay on 1-d tensors (norm weights, biases) as nanoGPT does; with
    ``bn_bias_lr`` other than 1, the batch norms' biases in a group of their own whose ``lr_scale``
    the schedule multiplies the lr by (airbench's 64x for them: the shift of each feature moves
    fast while the convolutions' weights, normalised anyway, move at the base lr)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    fast = set()
    if bn_bias_lr != 1.0:
        fast = {id(m.bias) for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None and m.bias.requires_grad}
    rest = [p for p in trainable if id(p) not in fast]
    if not no_wd_norm:
        groups = [{"params": rest, "weight_decay": weight_decay}]
    else:
        groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    if fast:
        groups.append({"params": [p for p in trainable if id(p) in fast], "lr_scale": bn_bias_lr,
                       "weight_decay": 0.0 if no_wd_norm else weight_decay})
    return groups


def build_optimizer(model, args):
    groups = param_groups(model, args.weight_decay, args.no_wd_norm, args.bn_bias_lr)
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov)
    return torch.optim.AdamW(groups, lr=args.lr)


@dataclass
class TrainState:
    """The objects one training step changes.

    ``model`` is the plain module (a checkpoint never holds a DDP or compiled wrapper's names);
    with ``ema``, a checkpoint's ``model`` is the average (what is evaluated and shipped) and
    ``train_model`` the weights that train.
    """
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: CosineSchedule
    scaler: torch.amp.GradScaler
    ema: EMA | None = None
    epoch: int = 0
    best: float = float("-inf")

    @classmethod
    def create(cls, model, config, *, steps_per_epoch, amp, device):
        """A fresh state for ``model`` under a training config: its optimizer, the cosine over
        ``config.epochs`` epochs of ``steps_per_epoch`` steps, an fp16 gradient scaler (enabled
        for ``amp`` fp16 only) and, with ``config.ema``, the weight average."""
        optimizer = build_optimizer(model, config)
        scheduler = CosineSchedule(optimizer, base_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
                                   warmup_steps=round(config.warmup_epochs * steps_per_epoch), min_lr=config.min_lr)
        scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
        return cls(model, optimizer, scheduler, scaler, ema=EMA(model, config.ema) if config.ema else None)

    def state_dict(self):
        """The checkpoint's entries of this state (the caller adds the RNG streams and the records)."""
        weights = {"model": self.ema.state_dict(), "train_model": self.model.state_dict(),
                   "ema_updates": self.ema.updates} if self.ema else {"model": self.model.state_dict()}
        return {**weights, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "best": self.best}

    def load(self, ckpt, path, *, steps_per_epoch):
        """Continue from a checked ``--resume`` checkpoint ``ckpt`` (read from ``path``).

        Weights, optimizer moments, scaler, the step count, the epoch and the best score come from
        the checkpoint; the hyperparameters (lr schedule, weight decay, momentum) stay this run's:
        the cosine is this run's ``--lr`` / ``--epochs`` / ``--warmup-epochs`` / ``--min-lr`` one,
        continued at the first step after the checkpoint's epoch.
        """
        self.model.load_state_dict(ckpt.get("train_model", ckpt["model"]))
        if self.ema is not None and "train_model" in ckpt:
            self.ema.load_state_dict(ckpt["model"], ckpt["ema_updates"])
        elif self.ema is not None:  # a run that gains --ema here averages from the resumed weights on
            self.ema = EMA(self.model, self.ema.decay)
        flags = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        schedule = self.scheduler.state_dict()
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt["scaler"] or not self.scaler.is_enabled():
                self.scaler.load_state_dict(ckpt["scaler"])
            else:
                # A bf16 or fp32 run has no scaler state (a bf16 run on an H100 continued with fp16 on
                # a T4): fp16 starts a fresh scaler, which settles its scale within a few steps.
                log.warning("%s: written without fp16's gradient scaler (--amp %s); this run's fp16 starts a "
                            "fresh one", path, (ckpt.get("args") or {}).get("amp", "?"))
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise UserError(f"{path}: its optimizer, schedule or scaler state does not fit this run "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''})") from None
        for group, values in zip(self.optimizer.param_groups, flags):
            group.update(values)  # load_state_dict brought the checkpoint's hyperparameters back
        self.scheduler.load_state_dict({**schedule, "last_step": ckpt["epoch"] * steps_per_epoch})
        self.epoch, self.best = ckpt["epoch"], ckpt["best"]
        return self
