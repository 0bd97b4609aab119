"""The training configuration: one typed object from the command line to args.json.

argparse fills it (its defaults are the dataclass's), the model's recipe fills the fields left
None (:meth:`TrainConfig.with_recipe`), :meth:`TrainConfig.validate` checks every value before any
data is decoded or written, and it is saved as it is (``args.json``, a checkpoint's ``args``) and
read back as fields (:meth:`TrainConfig.from_dict`).
"""
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from hw1.errors import UserError

def between(lo, hi):
    """A :func:`hw1.cli.check_numbers` rule: ``lo <= value <= hi``."""
    return (lambda v: lo <= v <= hi, f"in [{lo}, {hi}]")


# The ranges of the architecture flags, which the training configs and the bench check alike. The
# upper bounds are far past any model that trains here; past them a model could not even be built
# for the check that it runs (a DenseNet of depth 10**12 has 10**11 layers).
ARCH_RANGES = {
    "depth": (lambda v: 10 <= v <= 400 and (v - 4) % 6 == 0, "6n+4 in [10, 400] (10, 16, 22, ..., 100)"),
    "growth_rate": between(1, 256),
    "img_size": between(1, 1024),
    "crop_size": between(1, 4096),
    "size": between(1, 4096),
    "fc_channels": between(1, 65536),
    "width": (lambda v: 0 < v <= 4, "in (0, 4]"),
}
MAX_WORKERS = 256

# fields that record how a run ran rather than flags of the training scripts
RECORDS = ("command", "device_name", "torch_version", "world_size")
# torch.manual_seed takes 64 bits, and the run adds the rank and 1000 x the epoch to the seed
SEED_LIMIT = 2 ** 62


@dataclass
class TrainConfig:
    """What both training scripts take. None means "the model's recipe" or "chosen at run time"."""
    model: str | None = None
    epochs: int | None = None
    weights: str | None = None
    data_dir: str = ""
    out_dir: str | None = None
    overwrite: bool = False
    workers: int = 2
    save_epochs: list | None = None
    recipe: str | None = None
    batch_size: int = 1
    opt: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float | None = None
    no_wd_norm: bool = False
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    grad_clip: float | None = None
    ema: float | None = None
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None
    micro_batch: int | None = None
    compile: bool = False
    seed: int = 0
    resume: str | None = None
    no_progress: bool = False
    debug: bool = False
    demo: bool = False
    # records of the run, filled when it starts
    command: str | None = None
    device_name: str | None = None
    torch_version: str | None = None
    world_size: int | None = None

    task = None  # "cls" or "seg", set by the subclasses

    @classmethod
    def flag_defaults(cls):
        """``{field: default}`` of the command-line flags (what ``parser.set_defaults`` takes)."""
        return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(cls) if f.name not in RECORDS}

    @classmethod
    def from_dict(cls, values):
        """A config from a parsed Namespace's ``vars`` or a saved ``args.json``; unknown keys are ignored
        (so that an older or newer args.json still reads)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self):
        """Plain data, as args.json and checkpoints hold it."""
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def with_recipe(self, recipe):
        """Fields left None taken from ``recipe``; the run folder resolved (the resumed checkpoint's own
        folder with ``--resume``, else ``runs/<model>``)."""
        filled = {k: v for k, v in recipe.items() if getattr(self, k, 0) is None}
        out_dir = self.out_dir or (str(Path(self.resume).parent) if self.resume else f"runs/{self.model}")
        return self.replace(**filled, out_dir=out_dir)

    def problems(self):
        """``[(flag, value, what it must be)]`` of invalid values; the subclasses add their own."""
        p = []
        # nan and inf pass most range checks (nan compares false both ways, inf is "above 0") and
        # fail only later, in the schedule or the optimizer: every float flag must be finite first
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                p.append(("--" + f.name.replace("_", "-"), value, "a finite number"))
        if not 0 <= self.seed < SEED_LIMIT:
            p.append(("--seed", self.seed, "in [0, 2**62)"))
        if self.epochs is None or self.epochs < 1:
            p.append(("--epochs", self.epochs, "at least 1"))
        if self.lr is None or not self.lr > 0:
            p.append(("--lr", self.lr, "above 0"))
        if self.batch_size < 1:
            p.append(("--batch-size", self.batch_size, "at least 1"))
        if not 0 <= self.workers <= MAX_WORKERS:
            p.append(("--workers", self.workers, f"in [0, {MAX_WORKERS}]"))
        if not 0 <= self.momentum < 1:
            p.append(("--momentum", self.momentum, "in [0, 1)"))
        if self.weight_decay is not None and self.weight_decay < 0:
            p.append(("--weight-decay", self.weight_decay, "0 or more"))
        if self.warmup_epochs < 0:
            p.append(("--warmup-epochs", self.warmup_epochs, "0 or more"))
        if self.min_lr < 0 or (self.lr and self.min_lr > self.lr):
            p.append(("--min-lr", self.min_lr, "in [0, --lr]"))
        if self.grad_clip is not None and not self.grad_clip > 0:
            p.append(("--grad-clip", self.grad_clip, "above 0"))
        if self.ema is not None and not 0 <= self.ema < 1:
            p.append(("--ema", self.ema, "in [0, 1) (0: no average)"))
        if self.micro_batch is not None and self.micro_batch < 0:
            p.append(("--micro-batch", self.micro_batch, "0 (whole batches) or more"))
        if self.save_epochs and self.epochs and self.epochs >= 1:
            outside = [e for e in self.save_epochs if not 1 <= e <= self.epochs]
            if outside:
                p.append(("--save-epochs", outside[0], f"an epoch in 1..{self.epochs}"))
        return p

    def range_problems(self, names):
        """The problems of the fields ``names`` under :data:`ARCH_RANGES` (None: unset, passes)."""
        return [("--" + n.replace("_", "-"), getattr(self, n), ARCH_RANGES[n][1]) for n in names
                if getattr(self, n) is not None and not ARCH_RANGES[n][0](getattr(self, n))]

    def validate(self):
        """Raise a one-line :class:`UserError` for the first invalid value, or for a device that cannot run."""
        problems = self.problems()
        if problems:
            flag, value, must = problems[0]
            raise UserError(f"{flag} {value}: must be {must}")
        from hw1.runtime import get_device

        get_device(self.device)
        return self

    def flags(self):
        """The training script's flags that reproduce this config (records, resume and unset values left out)."""
        tokens = []
        for key, value in self.to_dict().items():
            if key in RECORDS or key in ("demo", "debug", "resume") or value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            tokens += [flag] if value is True else [flag, *map(str, value)] if isinstance(value, list) \
                else [flag, str(value)]
        return tokens


@dataclass
class ClsConfig(TrainConfig):
    """train_cls.py: P1 classification."""
    data_dir: str = "hw1_data/p1_data"
    batch_size: int = 128
    label_smoothing: float = 0.1
    aug: str = "seed"
    # densenet
    depth: int = 100
    growth_rate: int = 24
    compression: float = 0.5
    drop_rate: float = 0.0
    stem_pool: bool = False
    # convnext
    variant: str = "convnext_tiny"
    img_size: int = 224

    task = "cls"

    def problems(self):
        p = super().problems()
        if not 0 <= self.label_smoothing < 1:
            p.append(("--label-smoothing", self.label_smoothing, "in [0, 1)"))
        if not 0 <= self.drop_rate < 1:
            p.append(("--drop-rate", self.drop_rate, "in [0, 1)"))
        p += self.range_problems(("depth", "growth_rate", "img_size"))
        if not 0 < self.compression <= 1:
            p.append(("--compression", self.compression, "in (0, 1]"))
        return p

    def input_size(self):
        """Side of a training input (the images' own: 32)."""
        from hw1.data.cls import IMG_SIZE

        return IMG_SIZE

    def criterion(self, train_set=None):
        from torch import nn

        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)


@dataclass
class SegConfig(TrainConfig):
    """train_seg.py: P2 segmentation."""
    data_dir: str = "hw1_data/p2_data"
    batch_size: int = 8
    crop_size: int = 512
    min_scale: float = 0.25
    aux_weight: float = 0.0
    fc_channels: int = 4096
    batch_norm: bool = False
    width: float = 1.0
    fc_batch_norm: bool = False
    skips: str = "none"
    dropout: float = 0.5
    class_weights: str = "none"
    size: int | None = None

    task = "seg"

    def problems(self):
        p = super().problems()
        p += self.range_problems(("crop_size", "size", "fc_channels", "width"))
        if not 0 < self.min_scale <= 1:
            p.append(("--min-scale", self.min_scale, "in (0, 1]"))
        if self.aux_weight < 0:
            p.append(("--aux-weight", self.aux_weight, "0 or more"))
        if not 0 <= self.dropout < 1:
            p.append(("--dropout", self.dropout, "in [0, 1)"))
        if self.skips not in ("none", "16s", "8s"):
            p.append(("--skips", self.skips, "none, 16s or 8s"))
        if self.class_weights not in ("none", "enet", "inv-sqrt"):
            p.append(("--class-weights", self.class_weights, "none, enet or inv-sqrt"))
        return p

    def input_size(self):
        """Side of a training input: the crop, of the images at ``--size`` (512 when not resized)."""
        return min(self.crop_size, self.size or 512)

    def criterion(self, train_set=None):
        """The loss; with ``--class-weights`` its weights come from ``train_set``'s masks."""
        from hw1.data.masks import NUM_CLASSES
        from hw1.losses import SegLoss, class_weights

        weight = None
        if self.class_weights != "none":
            if train_set is None:
                raise ValueError("class weights need the training set")
            weight = class_weights(train_set.masks, self.class_weights, num_classes=NUM_CLASSES)
        return SegLoss(aux_weight=self.aux_weight, weight=weight)


CONFIGS = {"cls": ClsConfig, "seg": SegConfig}


def config_of(task, values):
    """The saved config ``values`` (an args.json dict) of a ``task`` run, or None when there are none."""
    return CONFIGS[task].from_dict(values) if values else None
