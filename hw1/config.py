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

from hw1.rules import ABOVE_0, AT_LEAST_0, AT_LEAST_1, between
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


DATA, OPTIMISATION, RUNTIME = "data and output", "optimisation", "runtime"
TASK_GROUP = None  # the task's own flags, listed first


def knob(default=None, help="", *, group=OPTIMISATION, must=(), required=False, **flag):
    """A field of the training config that is also a flag of the training scripts, declared once:
    its default (a callable: a factory), its ``--help`` (``%(default)s`` shows the default, or each
    model's recipe value where the default is None), the rules its value must pass (``must``:
    ``(test, what the value must be)`` pairs, checked in order; None passes unless ``required``)
    and argparse's own arguments (``choices``, or a function that gives them when the parser is
    made, ``metavar``, ``nargs``, ``action``, ``type``).
    :func:`hw1.flags.add_training_args` makes the flags, :meth:`TrainConfig.problems` checks the
    rules. A subclass may change a knob's default with a plain value; its flag stays."""
    kind = {"default_factory": default} if callable(default) else {"default": default}
    rules = [must] if must and callable(must[0]) else list(must)
    return field(**kind, metadata={"help": help, "group": group, "must": rules, "required": required,
                                   "flag": flag})


def knobs(config_cls):
    """``{field name: its knob's metadata}`` of ``config_cls``, in the dataclass's order; a field that a
    subclass redeclared with a plain default keeps the knob of the class that declared it."""
    out = {}
    for f in dataclasses.fields(config_cls):
        for klass in config_cls.__mro__:
            declared = getattr(klass, "__dataclass_fields__", {}).get(f.name)
            if declared is not None and "flag" in declared.metadata:
                out[f.name] = declared.metadata
                break
    return out


@dataclass
class TrainConfig:
    """What both training scripts take. None means "the model's recipe" or "chosen at run time"."""
    model: str | None = None
    model_config: dict = field(default_factory=dict)
    epochs: int | None = knob(None, "(default: %(default)s)", must=AT_LEAST_1, required=True)
    weights: str | None = None
    data_dir: str = knob("", "the extracted course data (default: %(default)s)", group=DATA)
    out_dir: str | None = knob(None, "run folder (default: runs/<model>; with --resume, the checkpoint's folder)",
                               group=DATA)
    overwrite: bool = knob(False, "clear a run folder that already holds a run (otherwise such a folder is "
                                  "refused)", group=DATA)
    loader: str = knob("batched", "batched: whole batches augmented in this process from the decoded tensors; "
                                  "workers: a DataLoader whose --workers processes augment image by image "
                                  "(default: %(default)s)", group=DATA, choices=LOADERS)
    workers: int = knob(2, "DataLoader worker processes of --loader workers (default: %(default)s)", group=DATA,
                        must=between(0, MAX_WORKERS))
    save_epochs: list | None = knob(None, "epochs whose checkpoint is kept as epoch_NNN.pth (default: first, "
                                          "middle, last)", group=DATA, type=int, nargs="*")
    recipe: str | None = knob(None, "a named recipe of the model, e.g. densenet's or vgg16_fcn8s's cpu: defaults "
                                    "for its flags and hyperparameters; typed flags still win")
    batch_size: int = knob(1, "(default: %(default)s)", must=AT_LEAST_1)
    opt: str | None = knob(None, "(default: %(default)s)", choices=("sgd", "adamw"))
    lr: float | None = knob(None, "peak learning rate (default: %(default)s)", required=True,
                            must=[ABOVE_0, (lambda v: v <= MAX_LR, f"at most {MAX_LR:g}")])
    momentum: float = knob(0.9, "SGD momentum (default: %(default)s)", must=between(0, 1, open_hi=True))
    nesterov: bool = knob(False, "Nesterov momentum for SGD")
    weight_decay: float | None = knob(None, "(default: %(default)s)", must=AT_LEAST_0)
    no_wd_norm: bool = knob(False, "no weight decay on norm layers and biases")
    bn_bias_lr: float = knob(1.0, "batch-norm biases train at K x the lr (the CIFAR-10 speed runs use 64) "
                                  "(default: %(default)s)", metavar="K",
                             must=between(0, MAX_BN_BIAS_LR, open_lo=True))
    warmup_epochs: float = knob(0.0, "linear warm-up length (default: %(default)s)", must=AT_LEAST_0)
    min_lr: float = knob(0.0, "lr at the end of the cosine (default: %(default)s)")
    grad_clip: float | None = knob(None, "clip the gradient norm to this value", must=ABOVE_0)
    ema: float | None = knob(None, "evaluate and ship an exponential moving average of the weights (decay per "
                                   "step, e.g. 0.999; 0 turns off a recipe's average)", metavar="DECAY",
                             must=between(0, 1, open_hi=True, note=" (0: no average)"))
    device: str = knob("auto", "auto, cpu, cuda, cuda:N (default: %(default)s)", group=RUNTIME)
    amp: str = knob("auto", "autocast dtype; auto = bf16 where the hardware has it, fp16 on older GPUs "
                            "(default: %(default)s)", group=RUNTIME, choices=("auto", "bf16", "fp16", "none"))
    channels_last: bool | None = knob(None, "NHWC memory format (default: on, except DenseNet on the CPU, which "
                                            "trains faster in NCHW)", group=RUNTIME)
    micro_batch: int | None = knob(None, "run each batch's forward/backward in chunks of this many images, one "
                                         "optimizer step per batch (batch-norm statistics per chunk); 0 = whole "
                                         "batches (default: 64 for DenseNet on the CPU, faster per image there; "
                                         "else whole batches)", group=RUNTIME,
                                   must=(lambda v: v >= 0, "0 (whole batches) or more"))
    compile: bool = knob(False, "torch.compile the model", group=RUNTIME)
    seed: int = knob(0, "(default: %(default)s)", group=RUNTIME, must=(lambda v: 0 <= v < SEED_LIMIT, "in [0, 2**62)"))
    resume: str | None = knob(None, "continue from this checkpoint (e.g. runs/densenet/last.pth) under this "
                                    "command's flags; see docs/training.md, Resume, on what may change",
                              group=RUNTIME)
    no_progress: bool = knob(False, "no progress bars", group=RUNTIME)
    debug: bool = knob(False, "show full tracebacks", group=RUNTIME)
    demo: bool = False
    # records of the run, filled when it starts
    command: str | None = None
    device_name: str | None = None
    torch_version: str | None = None
    world_size: int | None = None
    # where each value came from (resolve), for the run's first log lines; not saved
    origins: dict | None = field(default=None, compare=False, repr=False)

    task = None  # the name of its task (hw1.tasks), set by the subclasses
    demo_dirs = None  # (generated data, run folder) of --demo, set by the subclasses

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
        for name, k in knobs(type(self)).items():
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            if value is None:
                if k["required"]:
                    p.append((flag, value, k["must"][0][1] if k["must"] else "given"))
                continue
            for v in value if isinstance(value, list) else [value]:
                broken = next((must for ok, must in k["must"] if not ok(v)), None)
                if broken is not None:
                    p.append((flag, v, broken))
                    break
        if self.min_lr < 0 or (self.lr and self.min_lr > self.lr):
            p.append(("--min-lr", self.min_lr, "in [0, --lr]"))
        if self.loader not in LOADERS:
            p.append(("--loader", self.loader, " or ".join(LOADERS)))
        if self.save_epochs and self.epochs and self.epochs >= 1:
            outside = [e for e in self.save_epochs if not 1 <= e <= self.epochs]
            if outside:
                p.append(("--save-epochs", outside[0], f"an epoch in 1..{self.epochs}"))
        return p

    def spec(self):
        from hw1.models import get_spec

        return get_spec(self.model)

    def validate(self):
        """Raise a one-line :class:`UserError` for the first invalid value, or for a device that cannot run.

        ``model_config`` becomes the builder's arguments with the defaults filled in (and those
        derived from this config, e.g. the auxiliary head of ``--aux-weight``), so that args.json
        and the checkpoints say exactly what was built.
        """
        from hw1.models import hyperparameter_names
        from hw1.models.spec import ArgError

        try:
            self.model_config = self.spec().model_config(self.model_config, self)
        except ArgError as e:
            raise UserError(e.as_flag(hyperparameter_names())) from None
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
    chosen = dict(spec.recipes[name]) if name else {}
    if name == "demo" and config_cls.demo_dirs:  # the task's generated data and its run folder
        chosen = {"data_dir": config_cls.demo_dirs[0], "out_dir": config_cls.demo_dirs[1], **chosen}
    recipe = {**spec.recipes.get("default", {}), **chosen}
    fields = {f.name for f in dataclasses.fields(config_cls)}
    params = spec.hyperparameters()
    values = {**{k: v for k, v in recipe.items() if k in fields}, **typed}
    model_config = {**{k: v for k, v in recipe.items() if k in params}, **(hyperparameters or {})}
    out_dir = values.get("out_dir") or (str(run_folder_of(values["resume"])) if values.get("resume")
                                        else f"runs/{spec.name}")

    def origin(key, given):
        if key in given:
            return "flag"
        if name and key in chosen:
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

