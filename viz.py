"""The report's figures, written as PNG (and PDF with --pdf) into --out-dir.

    python viz.py features --checkpoints E1 EMID ELAST --data-dir hw1_data/p1_data/val_50
    python viz.py masks --checkpoints EARLY MID FINAL --data-dir hw1_data/p2_data/validation --ids 0013 0062 0104
    python viz.py curves runs/densenet [runs/convnext ...]
    python viz.py confusion --checkpoint runs/densenet/best.pth --data-dir hw1_data/p1_data/val_50
    python viz.py arch --model densenet --model-config depth=40 growth_rate=12
    python viz.py report --cls-runs RUN_A RUN_B --seg-runs RUN_A RUN_B --data-dir hw1_data --out report.pdf
"""
import argparse
from pathlib import Path

from hw1 import plots
from hw1.cli import command_line, run
from hw1.flags import check_numbers, parse_key_values
from hw1.rules import ABOVE_0, AT_LEAST_1, between
from hw1.config import SIDE_RANGES
from hw1.data.cls import NUM_CLASSES
from hw1.errors import UserError
from hw1.models import get_spec, model_names
from hw1.models.introspect import model_summary, summary_table
from hw1.outputs import check_output
from hw1.report import MASK_IDS, TITLE, check_report_outputs, write_report
from hw1.report.evidence import checkpoint_features, checkpoint_model, cls_images, predicted_masks
from hw1.report.figures import feature_figures, masks_figure
from hw1.runtime import get_device
from hw1.run_dir import RunDir
from hw1.scoring import model_confusion
from hw1.tasks import TASKS, get_task


def cmd_features(args, device):
    images, labels = cls_images(args.data_dir, labels_csv=args.labels, per_class=args.per_class)
    features = checkpoint_features(args.checkpoints, images, labels, data=args.data_dir, device=device)
    pca, tsne = feature_figures(features, num_classes=args.num_classes, perplexity=args.perplexity)
    return (plots.save_figure(pca, args.paths[0], dpi=args.dpi, pdf=args.pdf)
            + plots.save_figure(tsne, args.paths[1], dpi=args.dpi, pdf=args.pdf))


def cmd_masks(args, device):
    if not Path(args.data_dir).is_dir():
        raise UserError(f"{args.data_dir}: folder not found")
    masks = predicted_masks(args.checkpoints, args.data_dir, args.ids, size=args.size, device=device)
    fig = masks_figure(masks, overlay_alpha=args.alpha if args.overlay else None)
    return plots.save_figure(fig, args.paths[0], dpi=args.dpi, pdf=args.pdf)


def cmd_curves(args, device):
    names = args.labels or [Path(d).name for d in args.run_dirs]
    if len(names) != len(args.run_dirs):
        raise UserError(f"--labels: {len(names)} names for {len(args.run_dirs)} run folders")
    runs = [(n, RunDir(d).read_metrics()) for n, d in zip(names, args.run_dirs)]
    return plots.save_figure(plots.curves_figure(runs), args.paths[0], dpi=args.dpi, pdf=args.pdf)


def cmd_confusion(args, device):
    model, epoch = checkpoint_model(args.checkpoint, None, device)
    task = get_task(get_spec(model.name).task)
    cm = model_confusion(model, args.data_dir, task=task, labels_csv=args.labels, size=args.size,
                         batch_size=args.batch_size)
    size = f", resized to {args.size}x{args.size}" if task.dense and args.size else ""
    title = f"{model.name} {epoch} ({Path(args.checkpoint).name}) on {Path(args.data_dir).name}{size}"
    return plots.save_figure(plots.confusion_figure(cm, task=task, title=title), args.paths[0], dpi=args.dpi,
                             pdf=args.pdf)


def cmd_arch(args, device):
    config = parse_key_values(args.model_config, "--model-config")
    spec = get_spec(args.model)
    try:
        # the builder's defaults fill what --model-config leaves out: the figure shows what training builds
        model = spec.build(**spec.model_config(config), weights="none")
    except (TypeError, ValueError) as e:
        raise UserError(f"--model {args.model} --model-config {' '.join(args.model_config)}: {e}") from None
    size = args.input_size or spec.input_size
    rows, total = model_summary(model, size, spec)
    print(summary_table(rows, total, size))
    shown = ", ".join(f"{k}={v}" for k, v in config.items())
    title = f"{args.model}" + (f" ({shown})" if shown else "")
    return plots.save_figure(plots.arch_figure(rows, total, title=title, input_size=size), args.paths[0],
                             dpi=args.dpi, pdf=args.pdf)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, help, default_name):
        s = sub.add_parser(name, help=help)
        s.add_argument("--out-dir", default="figures", help="(default: %(default)s)")
        s.add_argument("--name", default=default_name, help="output file stem (default: %(default)s)")
        s.add_argument("--pdf", action="store_true", help="also write a PDF beside each PNG")
        s.add_argument("--overwrite", action="store_true", help="replace an output even if it is not a figure")
        s.add_argument("--dpi", type=int, default=120, help="(default: %(default)s)")
        s.add_argument("--device", default="auto", help="auto, cpu, cuda (default: %(default)s)")
        s.add_argument("--debug", action="store_true", help="show full tracebacks")
        return s

    s = add("features", "P1: PCA and t-SNE of the penultimate features", "features")
    s.add_argument("--checkpoints", nargs="+", required=True,
                   help="e.g. first, middle and last epoch; PCA uses the last")
    s.add_argument("--data-dir", required=True, help="P1 image folder, e.g. hw1_data/p1_data/val_50")
    s.add_argument("--labels", help="filename,label CSV (default: labels from the file names)")
    s.add_argument("--per-class", type=int, default=None, help="use only the first N images of each class")
    s.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default: %(default)s)")
    s.add_argument("--num-classes", type=int, default=NUM_CLASSES, help="(default: %(default)s)")

    s = add("masks", "P2: image, ground truth and each checkpoint's prediction", "masks")
    s.add_argument("--checkpoints", nargs="+", required=True)
    s.add_argument("--data-dir", required=True, help="folder of xxxx_sat.jpg + xxxx_mask.png")
    s.add_argument("--ids", nargs="+", required=True, help="e.g. 0013 0062 0104")
    s.add_argument("--size", type=int, default=None,
                   help="resize images (bilinear) and masks (nearest) to SIZE x SIZE first, e.g. a run's --size")
    s.add_argument("--overlay", action="store_true", help="blend masks over the image, class edges in black")
    s.add_argument("--alpha", type=float, default=0.45, help="overlay opacity (default: %(default)s)")

    s = add("curves", "loss, accuracy / mIoU and lr per epoch of one or more runs", "curves")
    s.add_argument("run_dirs", nargs="+", help="run folders holding metrics.jsonl")
    s.add_argument("--labels", nargs="+", help="legend names (default: the folder names)")

    s = add("confusion", "normalised confusion matrix and per-class accuracy / IoU", "confusion")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data-dir", required=True, help="P1 image folder or P2 image+mask folder")
    s.add_argument("--labels", help="P1: filename,label CSV (default: labels from the file names)")
    s.add_argument("--size", type=int, default=None, help="P2: resize to SIZE x SIZE first (e.g. a run's --size)")
    s.add_argument("--batch-size", type=int, default=None, help="(default: 500 for P1, 4 for P2)")

    s = add("arch", "block diagram and table of a model's stages", None)
    s.add_argument("--model", required=True, choices=model_names())
    # --model-config as the training scripts name it; --config, its former name here, still reads
    s.add_argument("--model-config", "--config", nargs="*", default=[], metavar="KEY=VALUE", dest="model_config",
                   help="builder arguments, e.g. depth=40 growth_rate=12 or batch_norm=True")
    s.add_argument("--input-size", type=int, default=None, help="(default: 32 for P1 models, 512 for P2)")

    s = sub.add_parser("report", help="the course report of P1 and P2: a PDF, and Markdown + PNGs beside it")
    s.add_argument("--cls-runs", nargs="+", default=["-"], metavar=("RUN_A", "RUN_B"),
                   help="P1 run folders of model A and model B; - for one you do not have (default: none)")
    s.add_argument("--seg-runs", nargs="+", default=["-"], metavar=("RUN_A", "RUN_B"), help="the same for P2")
    s.add_argument("--data-dir", default="hw1_data",
                   help="holds p1_data/val_50 (+ val_gt.csv) and p2_data/validation (default: %(default)s)")
    s.add_argument("--out", default="report.pdf",
                   help="the PDF; NAME.md and NAME_files/ (its PNGs) go beside it (default: %(default)s)")
    s.add_argument("--title", default=TITLE, help="first page's heading (default: %(default)s)")
    s.add_argument("--notes", default="", help="a paragraph for the first page, e.g. how the runs were made")
    s.add_argument("--per-class", type=int, default=20,
                   help="PCA / t-SNE on the first N validation images of each class; 0 = all 2,500 (default: "
                        "%(default)s, 1,000 points: t-SNE of all of them takes minutes on a CPU)")
    s.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default: %(default)s)")
    s.add_argument("--mask-ids", nargs="+", default=list(MASK_IDS), help="P2 images to show (default: %(default)s)")
    s.add_argument("--problems", nargs="+", choices=["p1", "p2"], default=["p1", "p2"],
                   help="the parts to write, e.g. p2 alone for a report of a P2 run (default: both)")
    s.add_argument("--evaluate", action="store_true",
                   help="also score each run's best.pth afresh on --data-dir (P2 at full size: minutes on a CPU)")
    s.add_argument("--dpi", type=int, default=100, help="of the figures (default: %(default)s)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda (default: %(default)s)")
    s.add_argument("--overwrite", action="store_true", help="replace outputs even if they are not the report's")
    s.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def figure_paths(args):
    """The PNGs a figure subcommand writes (a PDF beside each with --pdf)."""
    if args.command == "features":
        stems = [f"{args.name}_pca", f"{args.name}_tsne"]
    else:
        stems = [args.name or f"arch_{args.model}"]
    return [Path(args.out_dir) / f"{stem}.png" for stem in stems]


def inputs(args):
    """``(flag, path)`` of what a subcommand reads, which its outputs must not replace."""
    # (curves' --labels are legend names, not a file)
    pairs = [(f"--{k.replace('_', '-')}", getattr(args, k, None)) for k in ("data_dir", "labels", "checkpoint")
             if isinstance(getattr(args, k, None), str)]
    for flag, dest in (("--checkpoints", "checkpoints"), ("RUN_DIR", "run_dirs"), ("--cls-runs", "cls_runs"),
                       ("--seg-runs", "seg_runs")):
        pairs += [(flag, p) for p in getattr(args, dest, None) or () if p != "-"]
    return pairs


def check_paths(args):
    """Refuse, before any work, outputs that would replace what they should not (:mod:`hw1.outputs`)."""
    given = inputs(args)
    if args.command == "report":
        check_report_outputs(args.out, inputs=given, overwrite=args.overwrite)
        return
    args.paths = figure_paths(args)
    for path in args.paths:
        for p in [path] + ([path.with_suffix(".pdf")] if args.pdf else []):
            check_output(p, "figure", inputs=given, overwrite=args.overwrite)


def task_of_problem(problem):
    """The task of the course's problem ``problem`` ("p1": "cls")."""
    return next(name for name, task in TASKS.items() if task.problem.lower() == problem)


def cmd_report(args, device):
    result = write_report(cls_runs=args.cls_runs, seg_runs=args.seg_runs, data_dir=args.data_dir, out=args.out,
                          per_class=args.per_class, perplexity=args.perplexity, mask_ids=args.mask_ids,
                          evaluate=args.evaluate, title=args.title, notes=args.notes, dpi=args.dpi, device=device,
                          command=args.invocation, problems=[task_of_problem(p) for p in args.problems])
    print(f"{result['pages']} pages, {len(result['figures'])} figures")
    return [result["pdf"], result["markdown"], *result["figures"]]


COMMANDS = {"features": cmd_features, "masks": cmd_masks, "curves": cmd_curves, "confusion": cmd_confusion,
            "arch": cmd_arch, "report": cmd_report}


def main(argv=None):
    """Run one subcommand; return the paths it wrote."""
    # the upper bounds keep a typo from asking for a figure or an input of terabytes
    args = check_numbers(get_args_parser().parse_args(argv), {
        "dpi": between(1, 1200), "perplexity": ABOVE_0, "num_classes": between(1, 1000), "batch_size": AT_LEAST_1,
        "per_class": (lambda v: v >= 0, "0 (all) or more"), "input_size": between(32, 4096),
        "size": SIDE_RANGES["size"], "alpha": (lambda v: 0 <= v <= 1, "in [0, 1]")})
    args.invocation = command_line("viz.py", argv)
    check_paths(args)
    device = get_device(args.device)
    written = COMMANDS[args.command](args, device)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    run(main)
