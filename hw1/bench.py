"""Throughput benchmark: how fast each model trains and infers here, and what it is compared with.

    python -m hw1.bench --quick                      # about a minute on 2 CPU cores
    python -m hw1.bench                              # all models and configurations
    python -m hw1.bench --models densenet --configs fp32 channels_last+bf16 --threads 2

Four parts, every ratio taken between numbers of the same run:

* models: train-step img/s (hw1.engine.train_one_epoch over synthetic batches: forward, the
  project's loss, backward, SGD step) and inference img/s of each model at its training resolution,
  in each configuration (fp32 NCHW eager is the baseline; channels_last, bf16 / fp16 autocast,
  torch.compile), with forward FLOPs per image (``FlopCounterMode``), the achieved train FLOP/s
  and its fraction of this machine's matmul peak (bf16's, or fp32's where bf16 is emulated and
  slower), measured in the same run;
* data: img/s of the P1 training pipeline (decode-once cache + the seed augmentations) through a
  DataLoader with N workers, and its ratio to DenseNet's train-step img/s (the loader should be
  several times faster than the model, or the model waits);
* reference: torchvision's own DenseNet built with our DenseNet-BC's blocks, fp32 NCHW, fed by a
  dataset that decodes each PNG at every access, "what one would write instead": the ratio of
  our default training configuration's step to its step, and of whole training loops (loader +
  step) over the same images.

Medians over ``--repeats`` timed calls after ``--warmup`` untimed ones (whose first call, which
includes compilation, is reported too). The results go to a JSON file and a table on stdout.
"""
import argparse
import copy
import json
import logging
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

from hw1 import engine
from hw1.cli import AT_LEAST_1, check_numbers, run
from hw1.config import CONFIGS as TRAIN_CONFIGS
from hw1.config import ClsConfig, SegConfig
from hw1.data.cls import NUM_CLASSES as CLS_CLASSES
from hw1.data.cls import cls_train_transform, label_from_name, list_images, load_cls_split
from hw1.data.demo import make_cls_demo
from hw1.errors import UserError
from hw1.io import atomic_write_text, json_safe
from hw1.models import build_model, get_spec, model_names
from hw1.runtime import (amp_dtype, autocast, channels_last_default, cpu_cores, cpu_flags, cpu_has_fast_bf16,
                         cpu_kind, cpu_model, device_name, get_device, micro_batch_default, setup_logging)
from hw1.schedule import CosineSchedule
from hw1.summary import git_commit
from hw1.trainer import make_loader

log = logging.getLogger(__name__)

DATA_BATCH = ClsConfig.batch_size  # train_cls.py's default batch
# the flags of this bench that set a model's training config (the rest are train_cls/seg defaults)
MODEL_FLAGS = ("depth", "growth_rate", "stem_pool", "variant", "img_size", "crop_size", "width", "fc_channels",
               "batch_norm", "fc_batch_norm", "skips")


class Config(NamedTuple):
    channels_last: bool
    amp: str  # an --amp mode, resolved by hw1.runtime.amp_dtype
    compile: bool
    micro_batch: int | None = None  # train each batch in chunks of this many (--micro-batch)


MICRO = 64  # the micro-batch the "+mb64" configurations train in
BASELINE = "fp32"
BEST = "compile+best"  # the fastest eager configuration of each model (by train img/s), compiled
DEFAULT = "default"  # each model's training defaults on this device, whichever configuration that is
CONFIGS = {
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
PARTS = ("models", "data", "reference")
# --quick: every part once, small, in about a minute on 2 CPU cores: the baseline against each
# model's training defaults on this machine, DenseNet-BC 40 (k = 12) as trained on the CPU, P2
# crops of 128. Explicit flags win.
QUICK = {"configs": [BASELINE, DEFAULT], "depth": 40, "growth_rate": 12, "crop_size": 128,
         "steps": 1, "warmup": 1, "repeats": 2, "workers": [0, 2], "data_batches": 4, "e2e_steps": 4,
         "e2e_batch_size": 32}
QUICK_BATCH = {"densenet": 32, "convnext": 2, "vgg16_fcn32s": 1, "resnet101_fcn": 1}
TRAIN_FLOPS_NOTE = ("train FLOPs = 3 x forward (backward ~ 2 x forward); FlopCounterMode's "
                    "convolution_backward ignores groups and would overcount ConvNeXt's depthwise convs ~100x")
REFERENCE_NOTE = (
    "torchvision.models.DenseNet(growth_rate=k, block_config=(n, n, n), num_init_features=2k, bn_size=4, "
    "drop_rate=0) with depth = 6n + 4 as ours; its ImageNet stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 "
    "max-pool) is replaced by ours (one 3x3 stride-1 conv; norm0, relu0 and pool0 become Identity), so every "
    "dense layer, transition (compression 0.5, 2x2 average pool) and the head (BN, ReLU, global pool, linear) "
    "match hw1's DenseNet-BC layer for layer (equal parameter and FLOP counts, below). What remains different "
    "is how the code runs it: torchvision concatenates a layer's inputs inside the layer. It runs in fp32, NCHW, "
    "eager, and its dataset decodes a PNG at every access.")


# --- timing and FLOPs ----------------------------------------------------------------------------

def _sync(device):
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn, *, warmup=1, repeats=5, device=None):
    """Seconds of each of the ``warmup + repeats`` calls of ``fn()``, in order (CUDA synchronised)."""
    times = []
    for _ in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_fn(fn, *, warmup=1, repeats=5, device=None):
    """Median seconds of one call of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    return statistics.median(time_runs(fn, warmup=warmup, repeats=repeats, device=device)[warmup:])


def count_flops(model, example):
    """Forward FLOPs of ``model(example)`` for the whole batch (a multiply-add counts 2).

    Runs on meta tensors of the model's shapes, so it costs no compute and leaves the model as it was.
    It runs in eval mode: a batch norm in training mode refuses one image whose map is down to 1x1.
    """
    meta = {k: torch.empty_like(v, device="meta") for k, v in [*model.named_parameters(), *model.named_buffers()]}
    training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            torch.func.functional_call(model, meta, (example.to("meta"),))
    finally:
        model.train(training)
    return counter.get_total_flops()


def matmul_peak(dtype, *, device, n=2048, repeats=5):
    """FLOP/s of an (n, n) @ (n, n) matmul in ``dtype``: the median of ``repeats`` timed loops."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    out = torch.empty_like(a)
    inner = 20 if device.type == "cuda" else 1  # a GPU matmul takes ~1 ms: loop so launch gaps do not count
    seconds = time_fn(lambda: [torch.mm(a, b, out=out) for _ in range(inner)], warmup=2, repeats=repeats,
                      device=device)
    return 2 * n ** 3 * inner / seconds


# --- models --------------------------------------------------------------------------------------

def model_setup(name, args):
    """(build config, input (C, H, W), number of classes, loss) of ``name`` as training uses it by default.

    The model's spec and the training config with this bench's model flags give them: P1 models
    take their spec's input size (ConvNeXt upsamples inside the model to ``--img-size``), P2 models
    the training crop ``--crop-size``.
    """
    spec = get_spec(name)
    train = TRAIN_CONFIGS[spec.task].from_dict({"model": name, **{k: getattr(args, k) for k in MODEL_FLAGS}})
    config = {**spec.model_config(train), "weights": "none"}
    side = spec.input_size if spec.task == "cls" else args.crop_size
    # train_seg.py's default: no auxiliary head, so SegLoss is plain cross-entropy over labelled pixels
    return config, (3, side, side), spec.num_classes, train.criterion()


def synthetic_batch(shape, num_classes, batch_size, *, task, device, seed=0):
    """Random normalised images (N, C, H, W) and labels: (N,) for cls, (N, H, W) for seg."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, *shape, generator=g)
    target_shape = (batch_size,) if task == "cls" else (batch_size, *shape[1:])
    targets = torch.randint(num_classes, target_shape, generator=g)
    return images.to(device), targets.to(device)


class Setup(NamedTuple):
    """A private copy of a model set up for one configuration, with its optimizer."""
    model: nn.Module  # what runs: the compiled wrapper under compile
    amp: torch.dtype | None
    channels_last: bool
    optimizer: torch.optim.Optimizer
    scheduler: CosineSchedule
    scaler: torch.amp.GradScaler
    micro_batch: int | None = None


def set_up(model, config, device, *, lr=1e-4):
    """Copy ``model`` to ``device`` in ``config``'s memory format, compiled if asked, with an SGD optimizer.

    The learning rate is small and constant: a benchmark's random batches must not make the loss diverge.
    """
    model = copy.deepcopy(model).to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    amp = amp_dtype(config.amp, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return Setup(model=torch.compile(model) if config.compile else model, amp=amp,
                 channels_last=config.channels_last, optimizer=optimizer,
                 scheduler=CosineSchedule(optimizer, base_lr=lr, total_steps=1 << 62),
                 scaler=torch.amp.GradScaler(device.type, enabled=amp is torch.float16),
                 micro_batch=config.micro_batch)


def train_epoch(setup, loader, *, criterion, device):
    """The training loop itself (:func:`hw1.engine.train_one_epoch`) over ``loader``."""
    return engine.train_one_epoch(setup.model, loader, criterion=criterion, optimizer=setup.optimizer,
                                  scheduler=setup.scheduler, scaler=setup.scaler, device=device,
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
            "train_spread": _spread(train[warmup:]), "infer_spread": _spread(test[warmup:])}


def _spread(times):
    """(max - min) / median of the timed calls: how noisy the median is."""
    return (max(times) - min(times)) / statistics.median(times)


def trainer_defaults():
    """The training scripts' runtime defaults (--amp, --channels-last, --compile, --workers)."""
    return ClsConfig()


def default_config_name(device, model_name="densenet"):
    """The configuration train_cls.py / train_seg.py train ``model_name`` in by default on ``device``."""
    d = trainer_defaults()
    wanted = (channels_last_default(d.channels_last, model_name, device), d.compile,
              micro_batch_default(d.micro_batch, model_name, device), amp_dtype(d.amp, device, model_name))
    for name, c in CONFIGS.items():
        if c and (c.channels_last, c.compile, c.micro_batch, amp_dtype(c.amp, device)) == wanted:
            return name
    raise AssertionError(f"no benchmark configuration matches the training defaults of {model_name}: {wanted}")


def config_names(requested, device, model_name="densenet", batch=None):
    """``requested`` in table order, with the baseline first, ``default`` resolved to ``model_name``'s
    training configuration, fp16 only where it runs (CUDA) and micro-batches only where they split ``batch``."""
    requested = {default_config_name(device, model_name) if n == DEFAULT else n for n in requested}
    names = [BASELINE, *(n for n in CONFIGS if n in requested and n != BASELINE)]
    return [n for n in names if (n != "fp16" or device.type == "cuda")
            and not (CONFIGS[n] and CONFIGS[n].micro_batch and batch and batch <= CONFIGS[n].micro_batch)]


def best_eager(configs):
    """(name, Config) of the fastest measured eager configuration by train img/s."""
    eager = {n: r for n, r in configs.items() if "train_img_s" in r and not CONFIGS[n].compile}
    if not eager:
        return None, None
    name = max(eager, key=lambda n: eager[n]["train_img_s"])
    return name, CONFIGS[name]._replace(compile=True)


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
        cfg = CONFIGS[cname]
        if cname == BEST:
            best, cfg = best_eager(out["configs"])
            if cfg is None:
                out["configs"][cname] = {"error": "no eager configuration ran"}
                continue
            if cfg == CONFIGS["compile"] and "compile" in out["configs"]:
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


# --- the P1 data pipeline ------------------------------------------------------------------------

def p1_train_folder(data_dir, workdir):
    """(folder, source): the real P1 training images, else generated digits written under ``workdir``."""
    folder = Path(data_dir) / "train_50"
    if folder.is_dir():
        return folder, "real"
    return make_cls_demo(workdir) / "train_50", "generated"


def _forever(loader):
    while True:
        yield from loader


def loader_img_s(dataset, *, batch_size, workers, batches, device):
    """img/s of the training DataLoader over ``batches`` batches after its first (worker start-up excluded)."""
    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, workers=workers, device=device,
                         drop_last=len(dataset) > batch_size)
    stream = _forever(loader)
    start = time.perf_counter()
    first = next(stream)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    seconds = time.perf_counter() - start
    stream.close()
    return {"img_s": batches * len(first[0]) / seconds, "first_batch_s": first_s}


def bench_data(dataset, *, workers, batches, device):
    return {str(w): loader_img_s(dataset, batch_size=DATA_BATCH, workers=w, batches=batches, device=device)
            for w in workers}


# --- the reference: torchvision's DenseNet fed by per-access PNG decoding -----------------------

def reference_densenet(*, depth, growth_rate, stem_pool=False, num_classes=CLS_CLASSES):
    """torchvision's DenseNet with the blocks of our DenseNet-BC ``depth`` / ``growth_rate`` (see REFERENCE_NOTE);
    ``stem_pool`` keeps its BN-ReLU and puts our 2x2 max-pool in place of its 3x3 stride-2 one."""
    n = (depth - 4) // 6
    net = torchvision.models.DenseNet(growth_rate=growth_rate, block_config=(n, n, n),
                                      num_init_features=2 * growth_rate, bn_size=4, num_classes=num_classes)
    net.features.conv0 = nn.Conv2d(3, 2 * growth_rate, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(net.features.conv0.weight)
    if stem_pool:
        net.features.pool0 = nn.MaxPool2d(2)
    else:
        for name in ("norm0", "relu0", "pool0"):
            setattr(net.features, name, nn.Identity())
    return net


class PNGFolder(torch.utils.data.Dataset):
    """``{label}_{id}.png`` files opened and decoded with PIL at every access, then ``transform``-ed."""

    def __init__(self, folder, transform):
        self.files = list_images(folder)
        self.labels = [label_from_name(p) for p in self.files]
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            image = im.convert("RGB")
        return self.transform(image), self.labels[i]


def loop_steps_s(setup, dataset, indices, *, criterion, batch_size, workers, device):
    """Steps/s of the whole training loop (DataLoader with ``workers`` + steps) over ``indices``.

    Two untimed steps first warm the kernels; the timed epoch includes the workers' start-up, as
    every training epoch does.
    """
    warm = make_loader(torch.utils.data.Subset(dataset, indices[:2 * batch_size]), batch_size=batch_size,
                       shuffle=False, workers=workers, device=device)
    train_epoch(setup, warm, criterion=criterion, device=device)
    loader = make_loader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=True,
                         workers=workers, device=device, drop_last=True)
    start = time.perf_counter()
    train_epoch(setup, loader, criterion=criterion, device=device)
    _sync(device)
    return len(loader) / (time.perf_counter() - start)


def bench_reference(ours_dataset, folder, args, device, models):
    """Our default training configuration against the reference: model steps and whole training loops."""
    ours_name = default_config_name(device)
    ours_cfg, ref_cfg = CONFIGS[ours_name], CONFIGS[BASELINE]
    config, shape, num_classes, criterion = model_setup("densenet", args)
    ours = build_model("densenet", **config)
    ref = reference_densenet(depth=args.depth, growth_rate=args.growth_rate, stem_pool=args.stem_pool)
    batch = batch_size_of("densenet", args, device)
    images, targets = synthetic_batch(shape, num_classes, batch, task="cls", device=device)
    timing = dict(criterion=criterion, images=images, targets=targets, device=device, steps=args.steps,
                  warmup=args.warmup, repeats=args.repeats)
    measured = models.get("densenet", {}).get("configs", {}).get(ours_name, {})
    ours_step = measured.get("train_img_s") or measure(ours, ours_cfg, **timing)["train_img_s"]
    ref_step = measure(ref, ref_cfg, **timing)["train_img_s"]

    png = PNGFolder(folder, v2.Compose([v2.PILToTensor(), cls_train_transform("seed")]))
    assert png.files and [p.name for p in png.files] == ours_dataset.files
    g = torch.Generator().manual_seed(0)
    n = min(args.e2e_steps * args.e2e_batch_size, len(png) // args.e2e_batch_size * args.e2e_batch_size)
    if n == 0:
        raise UserError(f"{folder}: {len(png)} images are fewer than one --e2e-batch-size {args.e2e_batch_size}")
    indices = torch.randperm(len(png), generator=g)[:n].tolist()
    loop = dict(criterion=criterion, batch_size=args.e2e_batch_size, workers=args.e2e_workers, device=device)
    # ours as train_cls.py runs it, micro-batches included
    micro = ours_cfg.micro_batch
    ours_loop = loop_steps_s(set_up(ours, ours_cfg, device), ours_dataset, indices, **loop)
    ref_loop = loop_steps_s(set_up(ref, ref_cfg, device), png, indices, **loop)
    return {
        "description": REFERENCE_NOTE,
        "params": {"ours": sum(p.numel() for p in ours.parameters()),
                   "reference": sum(p.numel() for p in ref.parameters())},
        "forward_flops_per_img": {"ours": count_flops(ours, images[:1]), "reference": count_flops(ref, images[:1])},
        "model_step": {"ours_config": ours_name, "reference_config": BASELINE, "batch_size": batch,
                       "ours_img_s": ours_step, "reference_img_s": ref_step, "ratio": ours_step / ref_step},
        "e2e": {"steps": len(indices) // args.e2e_batch_size, "batch_size": args.e2e_batch_size,
                "workers": args.e2e_workers, "ours_micro_batch": micro,
                "ours": f"decode-once cache + {ours_name}" + (f" in micro-batches of {micro}" if micro else ""),
                "reference": "PNG decoded at every access + fp32 NCHW",
                "ours_steps_s": ours_loop, "reference_steps_s": ref_loop, "ratio": ours_loop / ref_loop},
    }


def densenet_step_img_s(results, device):
    """DenseNet's train-step img/s in the default configuration, from whichever part measured it."""
    if "reference" in results:
        return results["reference"]["model_step"]["ours_img_s"]
    measured = results.get("models", {}).get("densenet", {}).get("configs", {})
    return measured.get(default_config_name(device), {}).get("train_img_s")


# --- the run -------------------------------------------------------------------------------------

def machine_info(device, argv):
    return {"cpu": cpu_model(), "cpu_kind": cpu_kind(), "cpu_flags": cpu_flags(), "cores": cpu_cores(),
            "torch_threads": torch.get_num_threads(), "cpu_fast_bf16": cpu_has_fast_bf16(),
            "device": device_name(device), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", "-m", "hw1.bench", *argv]), "commit": git_commit()}


def run_parts(args, device, argv):
    """Run the requested parts; return the whole result (what the JSON file holds)."""
    results = {"machine": machine_info(device, argv),
               "settings": {k: v for k, v in vars(args).items() if k not in ("out", "debug")}}
    peak = {}
    if "models" in args.parts:
        # Without bf16 instructions oneDNN emulates bf16 at about 1 GFLOP/s on 2 cores: a 512^2
        # matmul measures that in a second, where 2048^2 would take minutes.
        bf16_size = args.matmul_size if device.type == "cuda" or cpu_has_fast_bf16() else min(args.matmul_size, 512)
        peak = {"bf16": matmul_peak(torch.bfloat16, device=device, n=bf16_size),
                "fp32": matmul_peak(torch.float32, device=device, n=args.matmul_size), "size": args.matmul_size,
                "bf16_size": bf16_size}
        peak["best"] = max(("bf16", "fp32"), key=peak.get)
        log.info("matmul peak: bf16 %.1f GFLOP/s, fp32 %.1f GFLOP/s", peak["bf16"] / 1e9, peak["fp32"] / 1e9)
        results["peak_flop_s"] = peak
        results["flops_note"] = TRAIN_FLOPS_NOTE
        results["models"] = {name: bench_model(name, args, device, peak) for name in args.models}
    if "data" in args.parts or "reference" in args.parts:
        with tempfile.TemporaryDirectory(prefix="hw1_bench_") as workdir:
            folder, kind = p1_train_folder(args.data_dir, workdir)
            start = time.perf_counter()
            dataset = load_cls_split(folder, transform=cls_train_transform("seed"))
            p1 = {"images": kind, "folder": str(folder) if kind == "real" else "hw1.data.demo digits, temporary",
                  "count": len(dataset), "decode_once_s": time.perf_counter() - start}
            if "data" in args.parts:
                results["data"] = {**p1, "batch_size": DATA_BATCH, "transform": "seed",
                                   "workers": bench_data(dataset, workers=args.workers, batches=args.data_batches,
                                                         device=device)}
            if "reference" in args.parts:
                results["reference"] = {"data": p1,
                                        **bench_reference(dataset, folder, args, device, results.get("models", {}))}
    step = densenet_step_img_s(results, device)
    if "data" in results and step:
        results["data"]["densenet_step_img_s"] = step
        results["data"]["densenet"] = {"depth": args.depth, "growth_rate": args.growth_rate, "stem_pool": args.stem_pool,
                                       "config": default_config_name(device)}
        results["data"]["goal_ratio"] = 5
        for r in results["data"]["workers"].values():
            r["vs_densenet_step"] = r["img_s"] / step
    return results


def _rate(x):
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def format_table(results):
    """The results as aligned text lines."""
    lines = []
    peak = results.get("peak_flop_s")
    if peak:
        lines.append(f"matmul peak: bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s ({peak['bf16_size']}^2), "
                     f"fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s ({peak['size']}^2); % of the {peak['best']} peak below")
        lines.append(f"{'model':<14} {'config':<26} {'train img/s':>11} {'x fp32':>6} {'infer img/s':>11} "
                     f"{'x fp32':>6} {'GFLOP/s':>8} {'%peak':>6}")
    for name, m in results.get("models", {}).items():
        for cname, r in m["configs"].items():
            if "train_img_s" not in r:
                lines.append(f"{name:<14} {cname:<26} {r.get('error') or 'same as ' + r.get('same_as', '?')}")
                continue
            lines.append(f"{name:<14} {cname:<26} {_rate(r['train_img_s']):>11} {r['train_vs_fp32']:>6.2f} "
                         f"{_rate(r['infer_img_s']):>11} {r['infer_vs_fp32']:>6.2f} {r['train_flop_s'] / 1e9:>8.1f} "
                         f"{100 * r['frac_peak']:>5.1f}%")
    data = results.get("data")
    if data:
        for w, r in data["workers"].items():
            ratio = f", {r['vs_densenet_step']:.1f}x densenet's step (goal >= 5x)" if "vs_densenet_step" in r else ""
            lines.append(f"P1 data ({data['images']}, decode-once + seed aug), {w} workers: {r['img_s']:.0f} img/s"
                         + ratio)
    ref = results.get("reference")
    if ref:
        s, e = ref["model_step"], ref["e2e"]
        lines.append(f"vs torchvision DenseNet, model step: ours ({s['ours_config']}) {s['ours_img_s']:.1f} img/s, "
                     f"reference (fp32) {s['reference_img_s']:.1f} img/s: {s['ratio']:.2f}x")
        lines.append(f"vs torchvision DenseNet + PNG decoding, {e['steps']} training steps of {e['batch_size']} "
                     f"with {e['workers']} workers: ours {e['ours_steps_s']:.3f} steps/s, reference "
                     f"{e['reference_steps_s']:.3f} steps/s: {e['ratio']:.2f}x")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------

def batch_sizes(text):
    """``--batch-size`` items: ``N`` (every model) or ``MODEL=N``; parsed to a ``{model or "": N}`` dict."""
    name, _, value = text.rpartition("=")
    if name and name not in model_names():
        raise argparse.ArgumentTypeError(f"unknown model {name!r}")
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or MODEL=N with N >= 1")
    return {name: int(value)}


def get_args_parser():
    p = argparse.ArgumentParser(prog="python -m hw1.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="(default: all)")
    p.add_argument("--models", nargs="+", choices=model_names(), default=model_names(), help="(default: all)")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                   help="fp32 (NCHW, eager) is always run as the baseline; fp16 only on CUDA (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="every part, small: fp32 against each model's training defaults, DenseNet-BC 40 (k 12), P2 "
                        "crops of 128, small batches, few steps; explicit flags win (about a minute on 2 cores)")
    p.add_argument("--batch-size", nargs="+", type=batch_sizes, default=[], metavar="N|MODEL=N",
                   help="N or MODEL=N (default: the training batches on CUDA and for densenet; convnext=8 and 2 "
                        "for the segmenters on the CPU)")
    p.add_argument("--steps", type=int, default=3, help="train steps per timed call (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls; the median is reported (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="JSON results (default: a new results/bench_<cpu kind|cuda>_<date>.json; "
                                              "never a file already there unless named here)")
    p.add_argument("--matmul-size", type=int, default=None, help="n of the peak matmul (default: 2048 CPU, 8192 CUDA)")
    g = p.add_argument_group("models (the training scripts' defaults)")
    g.add_argument("--depth", type=int, default=ClsConfig.depth, help="DenseNet-BC depth, 6n+4 (default: %(default)s)")
    g.add_argument("--growth-rate", type=int, default=ClsConfig.growth_rate, help="DenseNet growth rate (default: %(default)s)")
    g.add_argument("--stem-pool", action="store_true", help="DenseNet with the pooled stem (train_cls.py --stem-pool)")
    g.add_argument("--variant", default=ClsConfig.variant, help="(default: %(default)s)")
    g.add_argument("--img-size", type=int, default=ClsConfig.img_size, help="ConvNeXt's internal resolution (default: %(default)s)")
    g.add_argument("--crop-size", type=int, default=SegConfig.crop_size, help="P2 training crop (default: %(default)s)")
    g.add_argument("--width", type=float, default=SegConfig.width,
                   help="VGG16-FCN's trunk channel multiplier (train_seg.py --width; default: %(default)s)")
    g.add_argument("--fc-channels", type=int, default=SegConfig.fc_channels, help="VGG16-FCN's fc6/fc7 width "
                   "(default: %(default)s)")
    g.add_argument("--batch-norm", action="store_true", help="VGG16-FCN with VGG16-BN's trunk")
    g.add_argument("--fc-batch-norm", action="store_true", help="VGG16-FCN with batch norm after fc6/fc7")
    g.add_argument("--skips", choices=["none", "16s", "8s"], default=SegConfig.skips,
                   help="VGG16-FCN's skip heads (default: %(default)s)")
    g = p.add_argument_group("P1 data pipeline and the reference")
    g.add_argument("--data-dir", default="hw1_data/p1_data",
                   help="P1 data; generated digits are used when it has no train_50/ (default: %(default)s)")
    g.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to time (default: 0 2)")
    g.add_argument("--data-batches", type=int, default=20, help="batches of 128 timed per worker count "
                                                                "(default: %(default)s)")
    g.add_argument("--e2e-steps", type=int, default=20, help="training steps of each whole loop (default: %(default)s)")
    g.add_argument("--e2e-batch-size", type=int, default=128, help="(default: %(default)s, as train_cls.py)")
    g.add_argument("--e2e-workers", type=int, default=trainer_defaults().workers,
                   help="DataLoader workers of both loops (default: %(default)s, as the training scripts)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


# numeric flags checked once parsed (the --quick preset included), before anything runs
ARG_RULES = {
    "steps": AT_LEAST_1, "repeats": AT_LEAST_1, "warmup": (lambda v: v >= 0, "0 or more"),
    "depth": (lambda v: v >= 10 and (v - 4) % 6 == 0, "6n+4 with n >= 1 (10, 16, 22, ..., 100)"),
    "growth_rate": AT_LEAST_1, "img_size": AT_LEAST_1, "crop_size": AT_LEAST_1,
    "width": (lambda v: 0 < v <= 4, "in (0, 4]"), "fc_channels": AT_LEAST_1, "threads": AT_LEAST_1,
    "matmul_size": AT_LEAST_1, "data_batches": AT_LEAST_1, "e2e_steps": AT_LEAST_1, "e2e_batch_size": AT_LEAST_1,
}


def parse_args(argv):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.quick:  # parse again over the preset, so explicit flags still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    check_numbers(args, ARG_RULES)
    given = {k: v for item in args.batch_size for k, v in item.items()}
    everyone = given.pop("", None)
    # per model: MODEL=N, else N, else the --quick preset; models left out get their spec's bench_batch
    preset = QUICK_BATCH if args.quick else {}
    args.batch_size = {m: given.get(m, everyone or preset.get(m)) for m in model_names()
                       if given.get(m, everyone or preset.get(m))}
    return args


def default_out(device, folder="results", day=None):
    """A new file for a bench run without ``--out``: ``bench_<cpu kind|cuda>_<date>.json`` in ``folder``,
    ``_2``, ``_3``, ... when that exists. Never a file already there: the committed records are
    written only when ``--out`` names them."""
    kind = cpu_kind() if device.type == "cpu" else device.type
    stem = Path(folder) / f"bench_{kind}_{(day or datetime.now().date()).isoformat()}"
    path, n = stem.with_suffix(".json"), 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}_{n}.json")
    return str(path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    setup_logging()
    device = get_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    args.out = args.out or default_out(device)
    torch.manual_seed(0)
    results = run_parts(args, device, argv)
    atomic_write_text(json.dumps(json_safe(results), indent=2) + "\n", args.out)
    print(format_table(results))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    run(main)
