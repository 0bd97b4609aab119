"""The report's figures, written as PNG (and PDF with --pdf) into --out-dir.

    python viz.py features --checkpoints E1 EMID ELAST --data-dir hw1_data/p1_data/val_50
    python viz.py masks --checkpoints EARLY MID FINAL --data-dir hw1_data/p2_data/validation --ids 0013 0062 0104
    python viz.py curves runs/densenet [runs/convnext ...]
    python viz.py confusion --checkpoint runs/densenet/best.pth --data-dir hw1_data/p1_data/val_50
    python viz.py arch --model densenet --config depth=40 growth_rate=12
"""
import argparse
import ast
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hw1 import plots
from hw1.checkpoint import load_checkpoint
from hw1.cli import run
from hw1.errors import UserError
from hw1.models import TASK_OF, build_model
from hw1.predict import inference_model
from hw1.runtime import get_device
from hw1.scoring import model_confusion


def load(path, task, device):
    """(model in eval mode on ``device``, ``epoch N`` or the file name, model name) of a checkpoint.

    The file is read once (P2 checkpoints with optimizer state are hundreds of MB); the model is
    prepared as :func:`hw1.predict.load_model` prepares it.
    """
    ckpt = load_checkpoint(path, task=task)
    model = inference_model(ckpt, path, device)
    title = f"epoch {ckpt['epoch']}" if isinstance(ckpt.get("epoch"), int) else Path(path).name
    return model, title, ckpt["model_name"]


def cmd_features(args, device):
    from hw1.data.cls import load_cls_split

    data = load_cls_split(args.data_dir, labels_csv=args.labels)
    images, labels = data.images, data.labels.numpy()
    if args.per_class:
        # the first --per-class images of each class, in file order: the same subset every run
        keep = np.concatenate([np.flatnonzero(labels == c)[:args.per_class] for c in np.unique(labels)])
        images, labels = images[keep], labels[keep]
    feats, titles = [], []
    for path in args.checkpoints:
        model, title, name = load(path, "cls", device)
        feats.append(plots.extract_features(model, images, device=device))
        titles.append(f"{title} ({Path(path).name})")
    desc = f"{name} penultimate features ({feats[-1].shape[1]}-d), {len(labels)} images of {Path(args.data_dir).name}"
    out = Path(args.out_dir)
    written = plots.save_figure(
        plots.pca_figure(feats[-1], labels, num_classes=args.num_classes, title=f"PCA: {desc}, {titles[-1]}"),
        out / f"{args.name}_pca.png", dpi=args.dpi, pdf=args.pdf)
    written += plots.save_figure(
        plots.tsne_figure(feats, labels, num_classes=args.num_classes, titles=titles,
                          suptitle=f"t-SNE: {desc}", perplexity=args.perplexity),
        out / f"{args.name}_tsne.png", dpi=args.dpi, pdf=args.pdf)
    return written


def read_pair(folder, image_id, size):
    from hw1.data.images import read_rgb
    from hw1.data.masks import read_mask

    sat, mask = Path(folder) / f"{image_id}_sat.jpg", Path(folder) / f"{image_id}_mask.png"
    for p in (sat, mask):
        if not p.is_file():
            raise UserError(f"{p}: not found (--ids names xxxx of xxxx_sat.jpg + xxxx_mask.png in --data-dir)")
    image, gt = read_rgb(sat, size), read_mask(mask)
    if size is not None and gt.shape != (size, size):
        gt = np.asarray(Image.fromarray(gt).resize((size, size), Image.NEAREST))
    if gt.shape != image.shape[:2]:
        raise UserError(f"{mask}: mask is {gt.shape[1]}x{gt.shape[0]} but {sat.name} is "
                        f"{image.shape[1]}x{image.shape[0]}")
    return image, gt


def cmd_masks(args, device):
    from hw1.predict import segment

    if not Path(args.data_dir).is_dir():
        raise UserError(f"{args.data_dir}: folder not found")
    pairs = [read_pair(args.data_dir, i, args.size) for i in args.ids]
    images, gts = [p[0] for p in pairs], [p[1] for p in pairs]
    preds, titles = [], []
    for path in args.checkpoints:
        model, title, _ = load(path, "seg", device)
        preds.append([segment(model, torch.from_numpy(im).permute(2, 0, 1), device=device).numpy() for im in images])
        titles.append(title)
    fig = plots.mask_grid(images, gts, preds, ids=args.ids, pred_titles=titles,
                          overlay_alpha=args.alpha if args.overlay else None)
    return plots.save_figure(fig, Path(args.out_dir) / f"{args.name}.png", dpi=args.dpi, pdf=args.pdf)


def cmd_curves(args, device):
    names = args.labels or [Path(d).name for d in args.run_dirs]
    if len(names) != len(args.run_dirs):
        raise UserError(f"--labels: {len(names)} names for {len(args.run_dirs)} run folders")
    runs = [(n, plots.read_metrics(d)) for n, d in zip(names, args.run_dirs)]
    return plots.save_figure(plots.curves_figure(runs), Path(args.out_dir) / f"{args.name}.png",
                             dpi=args.dpi, pdf=args.pdf)


def cmd_confusion(args, device):
    model, epoch, name = load(args.checkpoint, None, device)
    task = TASK_OF[name]
    cm = model_confusion(model, args.data_dir, task=task, device=device, labels_csv=args.labels, size=args.size,
                         batch_size=args.batch_size)
    size = f", resized to {args.size}x{args.size}" if task == "seg" and args.size else ""
    title = f"{name} {epoch} ({Path(args.checkpoint).name}) on {Path(args.data_dir).name}{size}"
    return plots.save_figure(plots.confusion_figure(cm, task=task, title=title),
                             Path(args.out_dir) / f"{args.name}.png", dpi=args.dpi, pdf=args.pdf)


def parse_config(items):
    config = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--config {item}: expected KEY=VALUE, e.g. depth=40")
        try:
            config[key.replace("-", "_")] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            config[key.replace("-", "_")] = value  # a bare word such as variant=convnext_small
    return config


def cmd_arch(args, device):
    config = parse_config(args.config)
    try:
        model = build_model(args.model, **config, weights="none")
    except (TypeError, ValueError) as e:
        raise UserError(f"--model {args.model} --config {' '.join(args.config)}: {e}") from None
    size = args.input_size or (32 if TASK_OF[args.model] == "cls" else 512)
    rows, total = plots.model_summary(model, size)
    print(plots.summary_table(rows, total, size))
    shown = ", ".join(f"{k}={v}" for k, v in config.items())
    title = f"{args.model}" + (f" ({shown})" if shown else "")
    return plots.save_figure(plots.arch_figure(rows, total, title=title, input_size=size),
                             Path(args.out_dir) / f"{args.name or 'arch_' + args.model}.png",
                             dpi=args.dpi, pdf=args.pdf)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, help, default_name):
        s = sub.add_parser(name, help=help)
        s.add_argument("--out-dir", default="figures", help="(default: %(default)s)")
        s.add_argument("--name", default=default_name, help="output file stem (default: %(default)s)")
        s.add_argument("--pdf", action="store_true", help="also write a PDF beside each PNG")
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
    s.add_argument("--num-classes", type=int, default=50, help="(default: %(default)s)")

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
    s.add_argument("--model", required=True, choices=sorted(TASK_OF))
    s.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                   help="builder arguments, e.g. depth=40 growth_rate=12 or batch_norm=True")
    s.add_argument("--input-size", type=int, default=None, help="(default: 32 for P1 models, 512 for P2)")
    return p


COMMANDS = {"features": cmd_features, "masks": cmd_masks, "curves": cmd_curves, "confusion": cmd_confusion,
            "arch": cmd_arch}


def main(argv=None):
    """Run one subcommand; return the paths it wrote."""
    args = get_args_parser().parse_args(argv)
    device = get_device(args.device)
    written = COMMANDS[args.command](args, device)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    run(main)
