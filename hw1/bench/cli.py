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
import json
import logging
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision

from hw1.bench.data import DATA_BATCH, bench_data, p1_train_folder
from hw1.bench.models import (BASELINE, RUNTIME_CONFIGS, DEFAULT, TRAIN_FLOPS_NOTE, bench_model, default_config_name,
                              model_config_of, trainer_defaults)
from hw1.bench.recipes import PIPELINES, bench_predict, bench_recipe
from hw1.bench.reference import bench_reference
from hw1.bench.timing import matmul_peak
from hw1.flags import add_model_args, check_numbers, split_hyperparameters
from hw1.rules import AT_LEAST_1, between
from hw1.config import MAX_WORKERS, SIDE_RANGES
from hw1.data.cls import cls_train_transform, load_cls_split
from hw1.errors import UserError
from hw1.io import atomic_write_text, json_safe
from hw1.models import get_spec, hyperparameter_names, model_names
from hw1.models.spec import ArgError
from hw1.outputs import check_output
from hw1.runtime import (cpu_cores, cpu_flags, cpu_has_fast_bf16, cpu_kind, cpu_model, device_name, get_device,
                         setup_logging)
from hw1.summary import git_commit
from hw1.tasks import get_task
from hw1.tasks.cls import TASK as CLS
from hw1.tasks.seg import TASK as SEG

log = logging.getLogger(__name__)

PARTS = ("models", "data", "reference")
# on the course data only, so asked for by name: whole epochs of the CPU recipes, and the course's commands
DATA_PARTS = ("recipes", "predict")
# --quick: every part once, small, in about a minute on 2 CPU cores: the baseline against each
# model's training defaults on this machine, DenseNet-BC 40 (k = 12) as trained on the CPU, P2
# crops of 128. Explicit flags win.
QUICK = {"configs": [BASELINE, DEFAULT], "depth": 40, "growth_rate": 12, "crop_size": 128,
         "steps": 1, "warmup": 1, "repeats": 2, "workers": [0, 2], "data_batches": 4, "e2e_steps": 4,
         "e2e_batch_size": 32}
QUICK_BATCH = {"densenet": 32, "convnext": 2, "vgg16_fcn32s": 1, "vgg16_fcn8s": 1, "resnet101_fcn": 1}


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
    if "recipes" in args.parts:
        results["recipes"] = {task: bench_recipe(task, args, device) for task in args.recipe_tasks}
    if "predict" in args.parts:
        results["predict"] = bench_predict(args)
    step = densenet_step_img_s(results, device)
    if "data" in results and step:
        results["data"]["densenet_step_img_s"] = step
        densenet = model_config_of("densenet", args)
        results["data"]["densenet"] = {**{k: densenet[k] for k in ("depth", "growth_rate", "stem_pool")},
                                       "config": default_config_name(device)}
        results["data"]["goal_ratio"] = 5
        for r in results["data"]["workers"].values():
            r["vs_densenet_step"] = r["img_s"] / step
    return results


def densenet_step_img_s(results, device):
    """DenseNet's train-step img/s in the default configuration, from whichever part measured it."""
    if "reference" in results:
        return results["reference"]["model_step"]["ours_img_s"]
    measured = results.get("models", {}).get("densenet", {}).get("configs", {})
    return measured.get(default_config_name(device), {}).get("train_img_s")


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
    for task, r in results.get("recipes", {}).items():
        shown = ", ".join(f"{name} {p['img_s']:.1f} img/s ({p['seconds']:.1f} s)" for name, p in r["pipelines"].items())
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in r.items() if k.endswith(("_vs_workers", "_vs_reference")))
        lines.append(f"{r['recipe']}, {r['images']} images: {shown}; {ratios}")
    for name, r in results.get("predict", {}).items():
        lines.append(f"{r['command']}: {r['seconds']:.1f} s (median of {len(r['all_seconds'])})")
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
    p.add_argument("--parts", nargs="+", choices=PARTS + DATA_PARTS, default=list(PARTS),
                   help="recipes: an epoch of each --recipe cpu, batched loader vs workers vs reference; predict: "
                        "whole-process time of hw1.predict cls and hw1_2.sh on the validation folders (both need "
                        "the course data) (default: %(default)s)")
    p.add_argument("--models", nargs="+", choices=model_names(), default=model_names(), help="(default: all)")
    p.add_argument("--configs", nargs="+", choices=list(RUNTIME_CONFIGS), default=list(RUNTIME_CONFIGS),
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
    p.add_argument("--overwrite", action="store_true", help="let --out replace a file that is not a JSON output")
    p.add_argument("--matmul-size", type=int, default=None, help="n of the peak matmul (default: 2048 CPU, 8192 CUDA)")
    p.add_argument("--crop-size", type=int, default=SEG.config.crop_size, help="P2 training crop (default: %(default)s)")
    add_model_args(p, [get_spec(n) for n in model_names()])  # each model takes the hyperparameters it has
    g = p.add_argument_group("P1 data pipeline and the reference")
    g.add_argument("--data-dir", help=f"P1 data, a folder with train_50/ in it (default: {CLS.config.data_dir}, or "
                                      "generated digits where that has no train_50/)")
    g.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to time (default: 0 2)")
    g.add_argument("--data-batches", type=int, default=20, help="batches of 128 timed per worker count "
                                                                "(default: %(default)s)")
    g.add_argument("--e2e-steps", type=int, default=20, help="training steps of each whole loop (default: %(default)s)")
    g.add_argument("--e2e-batch-size", type=int, default=128, help="(default: %(default)s, as train_cls.py)")
    g.add_argument("--e2e-workers", type=int, default=trainer_defaults().workers,
                   help="DataLoader workers of both loops (default: %(default)s, as the training scripts)")
    g = p.add_argument_group("the CPU recipes' epochs and the course's commands (--parts recipes predict)")
    g.add_argument("--p2-data-dir", default=SEG.config.data_dir, help="P2 data (default: %(default)s)")
    g.add_argument("--recipe-tasks", nargs="+", choices=[CLS.name, SEG.name], default=[CLS.name, SEG.name],
                   help="(default: both)")
    g.add_argument("--recipe-steps", type=int, default=40, help="training steps timed per pipeline (default: "
                                                                "%(default)s)")
    g.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES), help="(default: all)")
    g.add_argument("--predict-repeats", type=int, default=3, help="(default: %(default)s)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


# numeric flags checked once parsed (the --quick preset included), before anything runs
ARG_RULES = {
    "steps": AT_LEAST_1, "repeats": AT_LEAST_1, "warmup": (lambda v: v >= 0, "0 or more"),
    "crop_size": SIDE_RANGES["crop_size"],
    "threads": between(1, 1024), "matmul_size": between(1, 32768), "workers": between(0, MAX_WORKERS),
    "data_batches": AT_LEAST_1, "e2e_steps": AT_LEAST_1, "e2e_batch_size": AT_LEAST_1,
    "e2e_workers": between(0, MAX_WORKERS), "recipe_steps": between(1, 100_000), "predict_repeats": between(1, 100),
}


def parse_args(argv):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    specs = [get_spec(n) for n in model_names()]
    _, typed = split_hyperparameters(dict(vars(args)), specs)  # before --quick's preset: what the user typed
    if args.quick:  # parse again over the preset, so explicit flags still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    check_numbers(args, ARG_RULES)
    _, args.hyperparameters = split_hyperparameters(dict(vars(args)), specs)
    for name in typed:  # a flag that no benched model takes would be silently ignored
        if not any(name in get_spec(m).hyperparameters() for m in args.models):
            raise UserError(f"--{name.replace('_', '-')}: none of the benched models ({', '.join(args.models)}) "
                            "takes it")
    for name in args.models:  # a value out of a model's range is a one-line error before anything runs
        try:
            model_config_of(name, args)
        except ArgError as e:
            raise UserError(e.as_flag(hyperparameter_names())) from None
    if set(args.parts) & set(DATA_PARTS):  # real data only: the recipes' epochs are of the course's images
        args.data_dirs = {CLS.name: args.data_dir or CLS.config.data_dir, SEG.name: args.p2_data_dir}
        for task, folder in args.data_dirs.items():
            get_task(task).layout.require(folder)
    if args.data_dir is None:  # train_cls.py's default; p1_train_folder generates digits where it has no data
        args.data_dir = CLS.config.data_dir
    else:  # a folder named on the command line must hold the data: no silent stand-in for a mistyped path
        layout = CLS.layout
        layout.require(args.data_dir, (layout.train,))
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
    check_output(args.out, "json", inputs=[("--data-dir", args.data_dir)], overwrite=args.overwrite)
    torch.manual_seed(0)
    results = run_parts(args, device, argv)
    atomic_write_text(json.dumps(json_safe(results), indent=2) + "\n", args.out)
    print(format_table(results))
    print(f"wrote {args.out}")
    return results

