"""Each model's speed: train-step and inference img/s of every configuration, on synthetic batches.

A configuration is a memory format, an autocast dtype, ``torch.compile`` or not, and a micro-batch
(:data:`RUNTIME_CONFIGS`); ``fp32`` (NCHW, eager) is the baseline every ratio is taken against.
"""
import copy
import logging
import statistics
from typing import NamedTuple

import torch
from torch import nn

from hw1 import engine
from hw1.bench.timing import count_flops, spread, time_runs
from hw1.models import build_model, get_spec
from hw1.runtime import amp_dtype, autocast, channels_last_default, micro_batch_default
from hw1.tasks import get_task
from hw1.train_state import TrainState

log = logging.getLogger(__name__)

class Config(NamedTuple):
    channels_last: bool
    amp: str  # an --amp mode, resolved by hw1.runtime.amp_dtype
    compile: bool
    micro_batch: int | None = None  # train each batch in chunks of this many (--micro-batch)


MICRO = 64  # the micro-batch the "+mb64" configurations train in
BASELINE = "fp32"
BEST = "compile+best"  # the fastest eager configuration of each model (by train img/s), compiled
DEFAULT = "default"  # each model's training defaults on this device, whichever configuration that is
RUNTIME_CONFIGS = {
    "fp32": Config(False, "none", False),
    "channels_last": Config(True, "none", False),
    "bf16": Config(False, "bf16", False),
    "fp16": Config(False, "fp16", False),
    "channels_last+bf16": Config(True, "bf16", False),
    f"fp32+mb{MICRO}": Config(False, "none", False, MICRO),
    f"channels_last+mb{MICRO}": Config(True, "none", False, MICRO),
    f"bf16+mb{MICRO}": Config(False, "bf16", False, MICRO),
    f"channels_last+bf16+mb{MICRO}": Config(True, "bf16", False, MICRO),
    "compile": Config(False, "none", True),
    BEST: None,
    DEFAULT: None,
}
TRAIN_FLOPS_NOTE = ("train FLOPs = 3 x forward (backward ~ 2 x forward); FlopCounterMode's "
                    "convolution_backward ignores groups and would overcount ConvNeXt's depthwise convs ~100x")


def model_setup(name, args):
    """(build config, input (C, H, W), number of classes, loss) of ``name`` as training uses it by default.

    The model's spec and this bench's hyperparameter flags (``args.hyperparameters``, those the
    model takes) give them: P1 models take their spec's input size (ConvNeXt upsamples inside the
    model to ``--img-size``), P2 models the training crop ``--crop-size``.
    """
    spec = get_spec(name)
    train = get_task(spec.task).config(model=name)
    config = {**model_config_of(name, args), "weights": "none"}
    side = args.crop_size if get_task(spec.task).dense else spec.input_size
    # train_seg.py's default: no auxiliary head, so SegLoss is plain cross-entropy over labelled pixels
    return config, (3, side, side), spec.num_classes, train.criterion()


def model_config_of(name, args):
    """The builder arguments of model ``name`` under this bench's hyperparameter flags (those it takes)."""
    spec = get_spec(name)
    params = spec.hyperparameters()
    return spec.model_config({k: v for k, v in args.hyperparameters.items() if k in params})


def synthetic_batch(shape, num_classes, batch_size, *, task, device, seed=0):
    """Random normalised images (N, C, H, W) and labels of ``task`` (a name): (N,), or (N, H, W) for
    a task that labels every pixel."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, *shape, generator=g)
    target_shape = (batch_size, *shape[1:]) if get_task(task).dense else (batch_size,)
    targets = torch.randint(num_classes, target_shape, generator=g)
    return images.to(device), targets.to(device)


class Setup(NamedTuple):
    """A private copy of a model set up for one configuration, with its training state."""
    model: nn.Module  # what runs: the compiled wrapper under compile
    amp: torch.dtype | None
    channels_last: bool
    state: TrainState  # the plain model, its optimizer, schedule and scaler, as training has them
    micro_batch: int | None = None


def set_up(model, config, device, *, lr=1e-4):
    """Copy ``model`` to ``device`` in ``config``'s memory format, compiled if asked, with an SGD optimizer.

    The learning rate is small and constant: a benchmark's random batches must not make the loss diverge.
    """
    model = copy.deepcopy(model).to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    amp = amp_dtype(config.amp, device)
    # plain SGD with momentum, no weight decay, an lr schedule too long to move
    training = get_task("cls").config(opt="sgd", lr=lr, weight_decay=0.0, epochs=1)
    state = TrainState.create(model, training, steps_per_epoch=1 << 62, amp=amp, device=device)
    return Setup(model=torch.compile(model) if config.compile else model, amp=amp,
                 channels_last=config.channels_last, state=state, micro_batch=config.micro_batch)


def train_epoch(setup, loader, *, criterion, device):
    """The training loop itself (:func:`hw1.engine.train_one_epoch`) over ``loader``."""
    return engine.train_one_epoch(setup.model, loader, setup.state, criterion=criterion, device=device,
                                  amp_dtype=setup.amp, channels_last=setup.channels_last, progress=False,
                                  micro_batch=setup.micro_batch)


def infer(setup, images, device):
    with torch.inference_mode(), autocast(device, setup.amp):
        return setup.model(images)


def measure(model, config, *, criterion, images, targets, device, steps, warmup, repeats):
    """Train-step and inference img/s of ``model`` in ``config`` (``model`` itself is left unchanged).

    A timed train call runs ``steps`` steps on the same batch; an inference call one forward.
    """
    setup = set_up(model, config, device)
    batches = [(images, targets)] * steps
    train = time_runs(lambda: train_epoch(setup, batches, criterion=criterion, device=device),
                      warmup=warmup, repeats=repeats, device=device)
    x, _ = engine.to_device(images, targets, device, setup.channels_last)
    setup.model.eval()
    test = time_runs(lambda: infer(setup, x, device), warmup=warmup, repeats=repeats, device=device)
    n = len(images)
    return {"train_img_s": steps * n / statistics.median(train[warmup:]),
            "infer_img_s": n / statistics.median(test[warmup:]),
            "train_first_call_s": train[0], "infer_first_call_s": test[0],
            "train_spread": spread(train[warmup:]), "infer_spread": spread(test[warmup:])}


def trainer_defaults():
    """The training scripts' runtime defaults (--amp, --channels-last, --compile, --workers)."""
    return get_task("cls").config()


def default_config_name(device, model_name="densenet"):
    """The configuration train_cls.py / train_seg.py train ``model_name`` in by default on ``device``."""
    d = trainer_defaults()
    wanted = (channels_last_default(d.channels_last, model_name, device), d.compile,
              micro_batch_default(d.micro_batch, model_name, device), amp_dtype(d.amp, device, model_name))
    for name, c in RUNTIME_CONFIGS.items():
        if c and (c.channels_last, c.compile, c.micro_batch, amp_dtype(c.amp, device)) == wanted:
            return name
    raise AssertionError(f"no benchmark configuration matches the training defaults of {model_name}: {wanted}")


def config_names(requested, device, model_name="densenet", batch=None):
    """``requested`` in table order, with the baseline first, ``default`` resolved to ``model_name``'s
    training configuration, fp16 only where it runs (CUDA) and micro-batches only where they split ``batch``."""
    requested = {default_config_name(device, model_name) if n == DEFAULT else n for n in requested}
    names = [BASELINE, *(n for n in RUNTIME_CONFIGS if n in requested and n != BASELINE)]
    return [n for n in names if (n != "fp16" or device.type == "cuda")
            and not (RUNTIME_CONFIGS[n] and RUNTIME_CONFIGS[n].micro_batch and batch and batch <= RUNTIME_CONFIGS[n].micro_batch)]


def best_eager(configs):
    """(name, Config) of the fastest measured eager configuration by train img/s."""
    eager = {n: r for n, r in configs.items() if "train_img_s" in r and not RUNTIME_CONFIGS[n].compile}
    if not eager:
        return None, None
    name = max(eager, key=lambda n: eager[n]["train_img_s"])
    return name, RUNTIME_CONFIGS[name]._replace(compile=True)


def batch_size_of(name, args, device):
    # the spec's: training batches on CUDA and for DenseNet (whose micro-batch configurations chunk
    # them); smaller for the others on the CPU, where img/s hardly grows past a few images per core
    return args.batch_size.get(name) or get_spec(name).bench_batch["cuda" if device.type == "cuda" else "cpu"]


def _error(e):
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def bench_model(name, args, device, peak):
    """Every requested configuration of model ``name``, with its FLOPs and ratios to the baseline."""
    config, shape, num_classes, criterion = model_setup(name, args)
    model = build_model(name, **config)
    batch = batch_size_of(name, args, device)
    images, targets = synthetic_batch(shape, num_classes, batch, task=get_spec(name).task, device=device)
    forward = count_flops(model, images[:1])
    out = {"model_config": config, "input": list(shape), "batch_size": batch,
           "params": sum(p.numel() for p in model.parameters()),
           "forward_flops_per_img": forward, "train_flops_per_img": 3 * forward,
           "default_config": default_config_name(device, name), "configs": {}}
    for cname in config_names(args.configs, device, name, batch):
        cfg = RUNTIME_CONFIGS[cname]
        if cname == BEST:
            best, cfg = best_eager(out["configs"])
            if cfg is None:
                out["configs"][cname] = {"error": "no eager configuration ran"}
                continue
            if cfg == RUNTIME_CONFIGS["compile"] and "compile" in out["configs"]:
                out["configs"][cname] = {"same_as": "compile"}
                continue
        try:
            result = measure(model, cfg, criterion=criterion, images=images, targets=targets, device=device,
                             steps=args.steps, warmup=args.warmup, repeats=args.repeats)
        except Exception as e:  # one failing configuration (e.g. a compiler error) must not lose the others
            log.warning("%s %s failed: %s", name, cname, e)
            result = {"error": _error(e)}
        result.update(channels_last=cfg.channels_last, amp=cfg.amp, compile=cfg.compile)
        if cname == BEST:
            result["compiles"] = best
        out["configs"][cname] = result
        if "train_img_s" in result:
            result["train_flop_s"] = out["train_flops_per_img"] * result["train_img_s"]
            result["frac_bf16_peak"] = result["train_flop_s"] / peak["bf16"]
            result["frac_peak"] = result["train_flop_s"] / peak[peak["best"]]
            log.info("%s %s: train %.1f img/s, inference %.1f img/s", name, cname, result["train_img_s"],
                     result["infer_img_s"])
    base = out["configs"][BASELINE]
    for result in out["configs"].values():
        for key in ("train_img_s", "infer_img_s"):
            if key in result and key in base:
                result[key.replace("img_s", "vs_fp32")] = result[key] / base[key]
    return out
