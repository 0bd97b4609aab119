"""The implementation-details table of a run, generated from its config (``args.json``) and what its
checkpoints and metrics add. Each row is one declared entry (setting, how to read it), so a new
config field shows in the report by adding an entry here."""
from dataclasses import dataclass, field

from hw1.data.masks import CLASS_NAMES, UNKNOWN
from hw1.models.introspect import format_params
from hw1.tasks import CHECKPOINTS
from hw1.report.blocks import config_text, fmt


@dataclass
class RunFacts:
    """What the table reads of a run beside its config."""
    run: object  # hw1.report.runs.Run
    parameters: int | None = None  # of its model; None: unknown
    summary: dict | None = None  # hw1.summary.summarize_run of it; None: not readable
    exports: list = field(default_factory=list)  # hw1.report.evidence.Export of each checkpoint shipped from it


def transform_names(compose):
    """Names of a v2.Compose's augmentation steps (dtype conversion and normalisation left out)."""
    return [type(t).__name__ for t in compose.transforms if type(t).__name__ not in ("ToDtype", "Normalize")]


def minutes(seconds):
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def shown(path):
    """``path`` relative to the repository when it is inside it (checkpoints/p1_densenet.pth)."""
    return path.relative_to(CHECKPOINTS.parent) if path.is_relative_to(CHECKPOINTS.parent) else path


# Readers take (config, RunFacts) and return the row's text, or None to leave the row out.

def parameters(c, x):
    return None if x.parameters is None else f"{format_params(x.parameters)} ({x.parameters:,})"


def optimizer(c, x):
    if c.opt == "sgd":
        opt = f"SGD, momentum {c.momentum}" + (", Nesterov" if c.nesterov else "")
    else:
        opt = {"adamw": "AdamW"}.get(c.opt, c.opt or "-")
    return (opt + f", weight decay {c.weight_decay}" + (" (not on norms and biases)" if c.no_wd_norm else "")
            + (f", batch-norm biases at {c.bn_bias_lr:g} x the lr" if c.bn_bias_lr != 1 else ""))


def learning_rate(c, x):
    warm = c.warmup_epochs or 0
    return (f"{c.lr} peak, cosine stepped every iteration down to {c.min_lr}; "
            + (f"linear warm-up of {warm} epochs" if warm else "no warm-up"))


def ema(c, x):
    if not c.ema:
        return "none: the checkpoints hold the trained weights, and the validation scores are theirs"
    raw = x.summary.get("best_raw") if x.summary else None
    own = "the trained weights'" + (f", best {fmt(raw)}" if raw is not None else "")
    return (f"decay {c.ema} per optimizer step: the checkpoints hold the average, and the validation scores "
            f"are the average's (metrics.jsonl's val_raw_* are {own})")


def epochs(c, x):
    done = x.run.records[-1]["epoch"] if x.run.records else 0
    return f"{done} of {c.epochs} epochs, batch {c.batch_size}"


def cls_augmentation(c, x):
    from hw1.data.cls import AUGMENTATIONS, cls_train_transform

    steps = transform_names(cls_train_transform(c.aug)) if c.aug in AUGMENTATIONS else []
    extra = "; the flip alternates: each image mirrored on every other epoch" if c.flip == "alternate" else ""
    extra = (extra if c.aug != "none" else "") + (f"; cutout {c.cutout}x{c.cutout}" if c.cutout else "")
    mixes = [f"{name} alpha {a:g}" for name, a in (("Mixup", c.mixup), ("CutMix", c.cutmix)) if a]
    extra += f"; {' or '.join(mixes)} (one per batch)" if len(mixes) == 2 else f"; {mixes[0]}" if mixes else ""
    extra += f", on {c.mix_prob:g} of the batches" if mixes and c.mix_prob < 1 else ""
    return (f"{c.aug}: {', '.join(steps)}" if steps else f"{c.aug or '-'}") + extra


def seg_augmentation(c, x):
    from hw1.data.seg import seg_train_transform

    if not c.crop_size:
        return None
    steps = transform_names(seg_train_transform(c.crop_size, scale=(c.min_scale, 1.0)))
    return f"{', '.join(steps)}; crop {c.crop_size}, area {c.min_scale}-1 of the image"


def seg_loss(c, x):
    aux = c.aux_weight or 0
    weighted = c.class_weights != "none"
    return (f"pixel-wise cross-entropy, class {UNKNOWN} ({CLASS_NAMES[UNKNOWN]}) ignored"
            + (f", classes weighted by their share of the training pixels ({c.class_weights})" if weighted else "")
            + (f", + {aux} x the auxiliary head's loss" if aux else "")
            + (f", + {c.lovasz:g} x the Lovász-softmax loss (a surrogate of each class's IoU)"
               if c.lovasz else ""))


def tta(c, x):
    if not x.exports:
        return (f"none: no checkpoint in {shown(CHECKPOINTS)}/ is exported from this run "
                f"(python -m hw1.checkpoint --tta exports one that predicts with flip TTA)")
    how = {"none": "without it",
           "flip": "with flip TTA: each image's class probabilities averaged with its mirror image's",
           "d4": "with d4 TTA: each image's class probabilities averaged over its 4 turns, each also mirrored",
           "crops": "with crops TTA: each image's class probabilities averaged with its mirror image's (half the "
                    "weight) and with both moved one pixel up-left and one down-right (a quarter each)"}
    shipped = "; ".join(f"{shown(e.path)} (exported from {e.source.name}) predicts {how[e.tta]}" for e in x.exports)
    return shipped + (". The validation scores of metrics.jsonl and the fresh evaluation of the run's best.pth are "
                      "without it; the fresh evaluation of an export, with it.")


def runtime(c, x):
    return (f"autocast {c.amp}, channels_last {c.channels_last}, torch.compile {c.compile}, "
            f"gradient clipping {c.grad_clip or 'none'}, seed {c.seed}")


def device(c, x):
    parts = [c.device_name or "", f"torch {c.torch_version}" if c.torch_version else ""]
    return ", ".join(d for d in parts if d) or "not recorded by the run"


def training_time(c, x):
    s = x.summary
    if not s:
        return None
    return f"{minutes(s['train_seconds'])} for {s['epochs']} epochs, {s['train_img_s']:.0f} img/s on average"


# (setting, how to read it) of the model the checkpoints hold; shown for a run without args.json too
MODEL_ROWS = (
    ("model", lambda c, x: x.run.model_name or (c.model if c else None) or "-"),
    ("model config", lambda c, x: config_text(x.run.model_config)),
    ("parameters", parameters),
)
# (setting, the task it is of or None for both, how to read it) of the training config
CONFIG_ROWS = (
    ("initial weights", None, lambda c, x: c.weights),
    ("optimizer", None, optimizer),
    ("learning rate", None, learning_rate),
    ("weight average (EMA)", None, ema),
    ("epochs, batch", None, epochs),
    ("augmentation", "cls", cls_augmentation),
    ("augmentation", "seg", seg_augmentation),
    ("image size", "seg", lambda c, x: f"resized to {c.size}x{c.size} on load" if c.size else "as stored (512x512)"),
    ("loss", "cls", lambda c, x: f"cross-entropy, label smoothing {c.label_smoothing}"),
    ("loss", "seg", seg_loss),
    ("test-time augmentation", None, tta),
    ("runtime", None, runtime),
    ("device", None, device),
    ("training time", None, training_time),
)


def details(facts):
    """``[(setting, value)]`` of a run (:class:`RunFacts`), in the order of the declarations."""
    c = facts.run.config
    rows = [(label, read(c, facts)) for label, read in MODEL_ROWS]
    if c is None:
        rows.append(("settings", "not recorded by the run (no args.json)"))
    else:
        rows += [(label, read(c, facts)) for label, task, read in CONFIG_ROWS if task in (None, c.task)]
    return [(label, value) for label, value in rows if value is not None]
