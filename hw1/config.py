"""The training configuration: one typed object from the command line to args.json.

:func:`resolve` makes it in one pass: the dataclass's defaults, then the model's recipes (its
``default``, then the one ``--recipe`` or ``--demo`` names), then the flags the user typed. The
model's hyperparameters are no fields here: they are the builder's keyword-only arguments
(:mod:`hw1.models.spec`), held as ``model_config`` with every default filled in.
:meth:`TrainConfig.validate` checks every value before any data is decoded or written; the config
is saved as it is (``args.json``, a checkpoint's ``args``) and read back (:meth:`TrainConfig.from_dict`).
"""
import dataclasses
import math
from dataclasses import dataclass, field

from hw1.flags import between
from hw1.errors import UserError
from hw1.run_dir import run_folder_of


# The ranges of the data flags that set an input's side, which the training configs and the bench
# check alike (a model's own hyperparameters have theirs in its spec).
SIDE_RANGES = {
    "crop_size": between(1, 4096),
    "size": between(1, 4096),
}
MAX_WORKERS = 256
# batched: whole batches indexed from the decoded tensors and augmented in the training process
# (hw1.data.batches); workers: a DataLoader whose --workers processes augment image by image
LOADERS = ("batched", "workers")

# fields and builder arguments that are no flags of the training scripts
NOT_FLAGS = ("demo", "debug", "resume", "num_classes")
# fields that record how a run ran rather than flags of the training scripts
RECORDS = ("command", "device_name", "torch_version", "world_size")
# torch.manual_seed takes 64 bits, and the run adds the rank and 1000 x the epoch to the seed
SEED_LIMIT = 2 ** 62
# Far above any recipe: up to it a diverging run stops at its first non-finite loss; far above it
# (1e39) the optimizer's first step fails converting the rate to fp32.
MAX_LR = 1e6
MAX_BN_BIAS_LR = 1000  # the speed runs use 64


@dataclass
class TrainConfig:
    """What both training scripts take. None means "the model's recipe" or "chosen at run time"."""
    model: str | None = None
    model_config: dict = field(default_factory=dict)
    epochs: int | None = None
    weights: str | None = None
    data_dir: str = ""
    out_dir: str | None = None
    overwrite: bool = False
    loader: str = "batched"
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
    bn_bias_lr: float = 1.0
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
    # where each value came from (resolve), for the run's first log lines; not saved
    origins: dict | None = field(default=None, compare=False, repr=False)

    task = None  # the name of its task (hw1.tasks), set by the subclasses

    @classmethod
    def from_dict(cls, values):
        """A config from a saved ``args.json`` (or a checkpoint's ``args``); unknown keys are ignored
        (so that an older or newer args.json still reads). An args.json written when the
        hyperparameters were fields of their own (``depth``, ``skips``) has them gathered into
        ``model_config``; one of a model since renamed reads under today's name
        (:func:`hw1.models.current_name`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in values.items() if k in names}
        if "model_config" not in values and values.get("model"):
            from hw1.models import get_spec

            try:
                params = get_spec(values["model"]).hyperparameters()
            except ValueError:  # a model of another version
                params = {}
            # skips: a vgg16_fcn32s argument then, which current_name turns into the model it built
            fields["model_config"] = {k: v for k, v in values.items() if k in params or k == "skips"}
        if fields.get("model") and isinstance(fields.get("model_config"), dict):
            from hw1.models import current_name

            try:
                fields["model"], fields["model_config"] = current_name(fields["model"], fields["model_config"])
            except ValueError:  # a model no registered one builds: left for the caller to refuse
                pass
        return cls(**fields)

    def to_dict(self):
        """Plain data, as args.json and checkpoints hold it (without :attr:`origins`)."""
        values = dataclasses.asdict(self)
        del values["origins"]
        return values

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

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
        elif self.lr > MAX_LR:
            p.append(("--lr", self.lr, f"at most {MAX_LR:g}"))
        if self.batch_size < 1:
            p.append(("--batch-size", self.batch_size, "at least 1"))
        if self.loader not in LOADERS:
            p.append(("--loader", self.loader, " or ".join(LOADERS)))
        if not 0 <= self.workers <= MAX_WORKERS:
            p.append(("--workers", self.workers, f"in [0, {MAX_WORKERS}]"))
        if not 0 <= self.momentum < 1:
            p.append(("--momentum", self.momentum, "in [0, 1)"))
        if self.weight_decay is not None and self.weight_decay < 0:
            p.append(("--weight-decay", self.weight_decay, "0 or more"))
        if not 0 < self.bn_bias_lr <= MAX_BN_BIAS_LR:
            p.append(("--bn-bias-lr", self.bn_bias_lr, f"in (0, {MAX_BN_BIAS_LR}]"))
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
        """The problems of the fields ``names`` under :data:`SIDE_RANGES` (None: unset, passes)."""
        return [("--" + n.replace("_", "-"), getattr(self, n), SIDE_RANGES[n][1]) for n in names
                if getattr(self, n) is not None and not SIDE_RANGES[n][0](getattr(self, n))]

    def spec(self):
        from hw1.models import get_spec

        return get_spec(self.model)

    def validate(self):
        """Raise a one-line :class:`UserError` for the first invalid value, or for a device that cannot run.

        ``model_config`` becomes the builder's arguments with the defaults filled in (and those
        derived from this config, e.g. the auxiliary head of ``--aux-weight``), so that args.json
        and the checkpoints say exactly what was built.
        """
        from hw1.models.spec import ArgError

        try:
            self.model_config = self.spec().model_config(self.model_config, self)
        except ArgError as e:
            raise UserError(e.as_flag()) from None
        problems = self.problems()
        if problems:
            flag, value, must = problems[0]
            raise UserError(f"{flag} {value}: must be {must}")
        from hw1.runtime import get_device

        get_device(self.device)
        return self

    def flags(self):
        """The training script's flags that reproduce this config (records, resume and unset values
        left out; the hyperparameters that differ from the builder's defaults)."""
        values = {k: v for k, v in self.to_dict().items() if k not in ("model_config", "recipe")}
        hidden = set(NOT_FLAGS)
        if self.model:
            spec = self.spec()
            hidden |= set(spec.hidden)
            defaults = spec.model_config()
            values.update({k: v for k, v in self.model_config.items() if defaults.get(k) != v})
        tokens = []
        for key, value in values.items():
            if key in RECORDS or key in hidden or value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            tokens += [flag] if value is True else [flag, *map(str, value)] if isinstance(value, list) \
                else [flag, str(value)]
        return tokens


def resolve(config_cls, typed, hyperparameters=None, *, command=None):
    """The run's config from the flags the user ``typed`` (``{field: value}``, only those given):
    the dataclass's defaults, then the model's ``default`` recipe, then the recipe that ``--recipe``
    (or ``--demo``: the recipe ``demo``) names, then the typed flags, in that order and once.

    ``hyperparameters`` are the model's builder arguments the user typed; a recipe's go under
    them. The result is not validated yet (:meth:`TrainConfig.validate`). Its ``origins`` say where
    each value came from: "flag", "recipe NAME" ("--demo" for the demo's), "MODEL's default recipe"
    or "default" (the dataclass's); the model's hyperparameters as ``model_config.NAME``, "builder
    default" where nothing else set them.
    """
    from hw1.models import get_spec

    typed = dict(typed)
    spec = get_spec(typed.get("model") or config_cls.model)
    name = "demo" if typed.get("demo") else typed.get("recipe")
    if typed.get("resume") and typed.get("weights") not in (None, "none"):  # weights that would be ignored
        raise UserError(f"--weights {typed['weights']} and --resume: a resumed run continues from its checkpoint's "
                        "weights; drop --weights (or start a new run from them without --resume)")
    if typed.get("demo") and typed.get("recipe"):
        raise UserError(f"--demo and --recipe {typed['recipe']}: choose one (--demo is the recipe 'demo' on "
                        "generated data)")
    if typed.get("recipe") == "demo" and "demo" in spec.recipes:
        # the demo recipe trains on the generated data that only --demo writes
        raise UserError("--recipe demo: use --demo, which writes the generated data the demo recipe trains on")
    named = sorted(r for r in spec.recipes if r != "default")
    if name is not None and name not in named:
        raise UserError(f"--{'demo' if name == 'demo' else 'recipe ' + name}: {spec.name} has "
                        + (f"the recipes {', '.join(named)}" if named else "no named recipes"))
    recipe = {**spec.recipes.get("default", {}), **(spec.recipes[name] if name else {})}
    fields = {f.name for f in dataclasses.fields(config_cls)}
    params = spec.hyperparameters()
    values = {**{k: v for k, v in recipe.items() if k in fields}, **typed}
    model_config = {**{k: v for k, v in recipe.items() if k in params}, **(hyperparameters or {})}
    out_dir = values.get("out_dir") or (str(run_folder_of(values["resume"])) if values.get("resume")
                                        else f"runs/{spec.name}")

    def origin(key, given):
        if key in given:
            return "flag"
        if name and key in spec.recipes[name]:
            return "--demo" if name == "demo" else f"recipe {name}"
        return f"{spec.name}'s default recipe" if key in spec.recipes.get("default", {}) else None

    origins = {f.name: origin(f.name, typed) or "default" for f in dataclasses.fields(config_cls)
               if f.name not in (*RECORDS, "model_config", "origins")}  # the dataclass's order
    if "out_dir" not in values:
        origins["out_dir"] = "the resumed checkpoint's folder" if values.get("resume") else "default"
    origins.update({f"model_config.{k}": origin(k, hyperparameters or {}) or "builder default" for k in params})
    return config_cls(**{**values, "model": spec.name, "out_dir": out_dir, "command": command,
                         "model_config": model_config, "origins": origins})


def describe(config, chosen=None, device=None):
    """Lines ``key  value  (origin)`` of every value of ``config`` (its ``origins``, from
    :func:`resolve`), the builder's defaults filled into the model's hyperparameters. ``chosen``:
    the config as the run on ``device`` resolved it (:func:`hw1.trainer.resolved`), whose values
    stand where ``config`` left the choice to the CPU kind's measured fastest (``--amp auto``, no
    ``--channels-last`` or ``--micro-batch``)."""
    spec = config.spec()
    values, full = config.to_dict(), spec.model_config(given=config.model_config, config=config)
    shown = {}
    for key, where in config.origins.items():
        model_key = key.removeprefix("model_config.")
        shown[key] = (full[model_key] if model_key != key else values[key], where)
    if chosen is not None:
        from hw1.runtime import cpu_kind

        table = f"measured fastest on {cpu_kind()} CPUs" if device.type == "cpu" else "CUDA default"
        if config.amp == "auto":
            shown["amp"] = (chosen.amp, f"auto: {table}")
        if config.channels_last is None:
            shown["channels_last"] = (chosen.channels_last, table)
        if config.micro_batch is None:
            shown["micro_batch"] = (chosen.micro_batch or 0, table)
    width = max(len(k) for k in shown)
    return [f"{key:<{width}}  {value!r}  ({where})" for key, (value, where) in shown.items()]

