"""The course report of both problems: one multi-page PDF and the same content as Markdown + PNGs.

    python viz.py report --cls-runs RUN_A RUN_B --seg-runs RUN_A RUN_B --data-dir hw1_data --out report.pdf

Sections follow the course's report order. P1: architecture of model A, accuracy of A and B,
implementation details of A, how B differs, PCA and t-SNE of A's penultimate features, training
curves. P2: architectures of A and B, mIoU with per-class IoU, implementation details, masks of
0013 / 0062 / 0104 at the early, middle and final epoch, training curves. Every number is read
from the run folders (``metrics.jsonl``, ``args.json``, checkpoints) or measured by a fresh
evaluation on the data; a piece that cannot be made (no run, no middle-epoch checkpoint, no data)
becomes a note that says what is missing and the command that makes it.

The first part of this module holds the checkpoint-and-data steps that viz.py's ``features``,
``masks`` and ``confusion`` subcommands share with the report.
"""
import functools
import math
import os
import shlex
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from PIL import Image as PILImage

from hw1 import metrics, plots
from hw1.checkpoint import load_checkpoint
from hw1.config import config_of
from hw1.data.masks import CLASS_NAMES, UNKNOWN
from hw1.errors import UserError
from hw1.io import atomic_path, atomic_write_text
from hw1.models import REGISTRY, build_model, get_spec
from hw1.predict import inference_model
from hw1.run_dir import RunDir
from hw1.scoring import model_confusion
from hw1.summary import summarize_run

plt = plots.plt  # pyplot with the headless backend plots.py selects


# --- checkpoints and data (shared with viz.py) -------------------------------------------------------

def checkpoint_model(path, task, device):
    """(model in eval mode on ``device``, ``epoch N`` or the file name, model name) of a checkpoint.

    The file is read once (P2 checkpoints with optimizer state are hundreds of MB); the model is
    prepared as :func:`hw1.predict.load_model` prepares it.
    """
    ckpt = load_checkpoint(path, task=task)
    model = inference_model(ckpt, path, device)
    title = f"epoch {ckpt['epoch']}" if isinstance(ckpt.get("epoch"), int) else Path(path).name
    return model, title, ckpt["model_name"]


def cls_images(folder, *, labels_csv=None, per_class=None):
    """(uint8 images (N, 3, 32, 32), int labels (N,)) of a P1 folder for the feature figures; with
    ``per_class``, only the first ``per_class`` images of each class in file order, so every run
    draws the same subset. Fewer images than PCA and t-SNE need is a one-line error."""
    from hw1.data.cls import load_cls_split

    data = load_cls_split(folder, labels_csv=labels_csv)
    images, labels = data.images, data.labels.numpy()
    if per_class:
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
        images, labels = images[keep], labels[keep]
    if len(labels) < plots.MIN_EMBED_IMAGES:
        subset = f" with --per-class {per_class}" if per_class else ""
        raise UserError(f"{folder}: {len(labels)} image(s){subset}; PCA and t-SNE need at least "
                        f"{plots.MIN_EMBED_IMAGES}")
    return images, labels


def feature_figures(checkpoints, images, labels, *, data_name, num_classes, perplexity, device):
    """(PCA figure of the last checkpoint's penultimate features, t-SNE figure of every checkpoint's)."""
    feats, titles = [], []
    for path in checkpoints:
        model, title, name = checkpoint_model(path, "cls", device)
        feats.append(plots.extract_features(model, images, device=device))
        titles.append(f"{title} ({Path(path).name})")
    desc = f"{name} penultimate features ({feats[-1].shape[1]}-d), {len(labels)} images of {data_name}"
    pca = plots.pca_figure(feats[-1], labels, num_classes=num_classes, title=f"PCA: {desc}, {titles[-1]}")
    tsne = plots.tsne_figure(feats, labels, num_classes=num_classes, titles=titles, suptitle=f"t-SNE: {desc}",
                             perplexity=perplexity)
    return pca, tsne


def read_pair(folder, image_id, size):
    """(H, W, 3) uint8 image and (H, W) class mask of ``{image_id}_sat.jpg`` + ``_mask.png``, resized to ``size``."""
    from hw1.data.images import read_rgb
    from hw1.data.masks import read_mask

    sat, mask = Path(folder) / f"{image_id}_sat.jpg", Path(folder) / f"{image_id}_mask.png"
    for p in (sat, mask):
        if not p.is_file():
            raise UserError(f"{p}: not found (--ids names xxxx of xxxx_sat.jpg + xxxx_mask.png in --data-dir)")
    image, gt = read_rgb(sat, size), read_mask(mask)
    if size is not None and gt.shape != (size, size):
        gt = np.asarray(PILImage.fromarray(gt).resize((size, size), PILImage.NEAREST))
    if gt.shape != image.shape[:2]:
        raise UserError(f"{mask}: mask is {gt.shape[1]}x{gt.shape[0]} but {sat.name} is "
                        f"{image.shape[1]}x{image.shape[0]}")
    return image, gt


def masks_figure(checkpoints, images, gts, *, ids, device, overlay_alpha=None):
    """Image, ground truth and each checkpoint's predicted mask, one row per image (:func:`plots.mask_grid`)."""
    from hw1.predict import segment

    preds, titles = [], []
    for path in checkpoints:
        model, title, _ = checkpoint_model(path, "seg", device)
        preds.append([segment(model, torch.from_numpy(im).permute(2, 0, 1), device=device).numpy() for im in images])
        titles.append(title)
    return plots.mask_grid(images, gts, preds, ids=ids, pred_titles=titles, overlay_alpha=overlay_alpha)


# --- runs ----------------------------------------------------------------------------------------------

SCRIPT = {"cls": "train_cls.py", "seg": "train_seg.py"}
PART = {"cls": "P1", "seg": "P2"}
METRIC = {"cls": "acc", "seg": "miou"}
# The course's plan for each slot, used to say which run to make when one is missing.
COURSE_MODEL = {("cls", "A"): "densenet", ("cls", "B"): "convnext",
                ("seg", "A"): "vgg16_fcn32s", ("seg", "B"): "resnet101_fcn"}
DATA = {"cls": ("p1_data", "val_50", "p1_data.tar.gz"), "seg": ("p2_data", "validation", "p2_data.tar.gz")}


@dataclass
class Run:
    """What a run folder holds; ``path`` is None for a run given as ``-``."""
    task: str
    slot: str
    path: Path | None = None
    config: object = None  # the run's hw1.config.TrainConfig (args.json, else the checkpoint's), or None
    records: list = field(default_factory=list)
    problem: str | None = None  # why there are no records
    epochs: dict = field(default_factory=dict)  # {epoch: epoch_NNN.pth}
    model_name: str | None = None
    model_config: dict | None = None

    @property
    def name(self):
        return f"{PART[self.task]} model {self.slot}"

    @property
    def label(self):
        return f"{self.slot}: {self.model_name or COURSE_MODEL[self.task, self.slot]}"

    def file(self, *names):
        """The first of ``names`` that exists in the run folder (epoch files by number), or None."""
        for n in names:
            if isinstance(n, int):
                if n in self.epochs:
                    return self.epochs[n]
            elif self.path is not None and (self.path / n).is_file():
                return self.path / n
        return None

    def newest_checkpoint(self):
        return self.file("last.pth", max(self.epochs, default=-1), "best.pth")

    def best_checkpoint(self):
        return self.file("best.pth", "last.pth", max(self.epochs, default=-1))


def open_run(spec, task, slot):
    """Read a run folder; ``-`` is no run. A path that is not a run folder is a :class:`UserError`."""
    run = Run(task, slot)
    if spec == "-":
        return run
    path = Path(spec)
    flag = f"--{task}-runs"
    if not path.exists():
        raise UserError(f"{spec}: run folder not found ({flag} takes run folders, or - for a run you do not have)")
    if not path.is_dir():
        raise UserError(f"{spec}: not a folder ({flag} takes run folders written by {SCRIPT[task]})")
    run.path = path
    folder = RunDir(path)
    run.epochs = folder.epoch_files()
    if not (folder.args.is_file() or folder.metrics.is_file() or run.newest_checkpoint()):
        raise UserError(f"{spec}: not a run folder (no args.json, metrics.jsonl or checkpoint; "
                        f"{SCRIPT[task]} writes them)")
    args = folder.read_args()
    try:
        run.records = folder.read_metrics()
    except UserError as e:
        run.problem = str(e)
    ckpt_path = run.newest_checkpoint()
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        run.model_name, run.model_config = ckpt["model_name"], ckpt["model_config"]
        args = args or ckpt.get("args")
    else:
        run.model_name = (args or {}).get("model")
    if run.model_name in REGISTRY and get_spec(run.model_name).task != task:
        other = get_spec(run.model_name).task
        raise UserError(f"{spec}: a {other} run ({run.model_name}); pass it to --{other}-runs, not {flag}")
    run.config = config_of(task, args)
    return run


def train_command(run, data_dir="hw1_data"):
    """The command that made the run (as recorded, or rebuilt from args.json), or the one that would make it."""
    if run.path is None:
        model = COURSE_MODEL[run.task, run.slot]
        data = [] if Path(data_dir) == Path("hw1_data") else ["--data-dir", str(Path(data_dir) / DATA[run.task][0])]
        return shlex.join(["python", SCRIPT[run.task], "--model", model, *data, "--out-dir", f"runs/{model}"])
    if run.config is not None and run.config.command:
        return run.config.command
    return shlex.join(["python", SCRIPT[run.task], *(run.config.flags() if run.config is not None else [])])


def with_flag(command, flag, values):
    """``command`` with ``flag`` (and the values after it) replaced by ``flag values``."""
    tokens, out, skipping = shlex.split(command), [], False
    for t in tokens:
        if t == flag:
            skipping = True
            continue
        if skipping and not t.startswith("--"):
            continue
        skipping = False
        out.append(t)
    return shlex.join([*out, flag, *map(str, values)])


def planned_epochs(run):
    return (run.config and run.config.epochs) or (run.records[-1]["epoch"] if run.records else None)


def stage_checkpoints(run):
    """``[(stage, epoch, epoch_NNN.pth)]`` of the first, middle and last saved epoch, and a Missing note or None.

    The middle is the saved epoch nearest the midpoint of the first and last; a run that saved
    fewer than three epochs yields fewer stages.
    """
    from hw1.trainer import default_save_epochs

    found = sorted(run.epochs)
    picks = []
    if found:
        picks.append(("first", found[0]))
        inner = found[1:-1]
        if inner:
            mid = (found[0] + found[-1]) / 2
            picks.append(("middle", min(inner, key=lambda e: (abs(e - mid), e))))
        if len(found) > 1:
            picks.append(("last", found[-1]))
    missing = None
    if len(picks) < 3:
        planned = planned_epochs(run)
        wanted = default_save_epochs(planned) if planned else [1, "MID", "LAST"]
        have = ", ".join(str(e) for e in found) or "none"
        missing = Missing(f"{run.name} ({run.path}) saved epoch_NNN.pth for {len(found)} epoch(s) ({have}); "
                          f"this figure wants the first, middle and last epoch ({', '.join(map(str, wanted))}). "
                          f"Train it again keeping those checkpoints:",
                          with_flag(train_command(run), "--save-epochs", wanted))
    return [(stage, e, run.epochs[e]) for stage, e in picks], missing


# --- content: what each page holds --------------------------------------------------------------------

@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list
    rows: list


@dataclass
class Code:
    text: str


@dataclass
class Missing:
    what: str
    command: str | None = None


@dataclass
class Figure:
    path: Path  # the PNG, written when the section is made
    caption: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)
    heading_size: float = 15

    def missing(self):
        return [b for b in self.blocks if isinstance(b, Missing)]


def fmt(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def config_text(config):
    return ", ".join(f"{k}={v}" for k, v in config.items() if k != "num_classes") if config else "-"


def transform_names(compose):
    """Names of a v2.Compose's augmentation steps (dtype conversion and normalisation left out)."""
    return [type(t).__name__ for t in compose.transforms if type(t).__name__ not in ("ToDtype", "Normalize")]


def minutes(seconds):
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def details(run, summary):
    """``[(setting, value)]`` of a run, every value read from its config / checkpoint / metrics."""
    c = run.config
    rows = [("model", run.model_name or (c.model if c else None) or "-"),
            ("model config", config_text(run.model_config))]
    if run.model_name and run.model_config is not None:
        with torch.device("meta"):  # shapes and counts only: nothing is allocated or initialised
            model = build_model(run.model_name, **run.model_config, weights="none")
        total = sum(p.numel() for p in model.parameters())
        rows.append(("parameters", f"{plots.format_params(total)} ({total:,})"))
    if c is None:
        return rows + [("settings", "not recorded by the run (no args.json)")]
    rows.append(("initial weights", c.weights))
    if c.opt == "sgd":
        opt = f"SGD, momentum {c.momentum}" + (", Nesterov" if c.nesterov else "")
    else:
        opt = {"adamw": "AdamW"}.get(c.opt, c.opt or "-")
    opt += f", weight decay {c.weight_decay}" + (" (not on norms and biases)" if c.no_wd_norm else "")
    rows.append(("optimizer", opt))
    warm = c.warmup_epochs or 0
    rows.append(("learning rate", f"{c.lr} peak, cosine stepped every iteration down to "
                                  f"{c.min_lr}; " + (f"linear warm-up of {warm} epochs" if warm else "no warm-up")))
    done = run.records[-1]["epoch"] if run.records else 0
    rows.append(("epochs, batch", f"{done} of {c.epochs} epochs, batch {c.batch_size}"))
    if run.task == "cls":
        from hw1.data.cls import AUGMENTATIONS, cls_train_transform

        steps = transform_names(cls_train_transform(c.aug)) if c.aug in AUGMENTATIONS else []
        rows.append(("augmentation", f"{c.aug}: {', '.join(steps)}" if steps else f"{c.aug or '-'}"))
        rows.append(("loss", f"cross-entropy, label smoothing {c.label_smoothing}"))
    else:
        from hw1.data.seg import seg_train_transform

        if c.crop_size:
            steps = transform_names(seg_train_transform(c.crop_size, scale=(c.min_scale, 1.0)))
            rows.append(("augmentation", f"{', '.join(steps)}; crop {c.crop_size}, "
                                         f"area {c.min_scale}-1 of the image"))
        rows.append(("image size", f"resized to {c.size}x{c.size} on load" if c.size else "as stored (512x512)"))
        aux = c.aux_weight or 0
        rows.append(("loss", f"pixel-wise cross-entropy, class {UNKNOWN} ({CLASS_NAMES[UNKNOWN]}) ignored"
                     + (f", + {aux} x the auxiliary head's loss" if aux else "")))
    rows.append(("runtime", f"autocast {c.amp}, channels_last {c.channels_last}, "
                            f"torch.compile {c.compile}, gradient clipping {c.grad_clip or 'none'}, "
                            f"seed {c.seed}"))
    device = [f"torch {c.torch_version}" if c.torch_version else "", c.device_name or ""]
    rows.append(("device", ", ".join(d for d in device[::-1] if d) or "not recorded by the run"))
    if summary:
        rows.append(("training time", f"{minutes(summary['train_seconds'])} for {summary['epochs']} epochs, "
                                      f"{summary['train_img_s']:.0f} img/s on average"))
    return rows


class ReportBuilder:
    """Collects the sections; figures are written as PNGs into ``files_dir`` as they are made."""

    def __init__(self, *, cls_runs, seg_runs, data_dir, files_dir, per_class, perplexity, mask_ids, evaluate,
                 dpi, device):
        self.runs = {"cls": cls_runs, "seg": seg_runs}
        self.data_dir = Path(data_dir) if data_dir else None
        self.files_dir = Path(files_dir)
        self.per_class, self.perplexity, self.mask_ids = per_class, perplexity, list(mask_ids)
        self.evaluate, self.dpi, self.device = evaluate, dpi, device
        self.sections, self.written = [], []
        self._summary = {}

    # helpers
    def section(self, task, title):
        s = Section(f"{PART[task]}.{sum(x.title.startswith(PART[task]) for x in self.sections) + 1}  {title}")
        self.sections.append(s)
        return s

    def figure(self, section, fig, caption):
        """Write ``fig`` as the section's PNG (``P1.3`` -> ``p1_3.png``) and return its block."""
        path = self.files_dir / (section.title.split()[0].lower().replace(".", "_") + ".png")
        self.written += plots.save_figure(fig, path, dpi=self.dpi)
        return Figure(path, caption)

    def summary(self, run):
        if run.path not in self._summary:
            try:
                self._summary[run.path] = summarize_run(run.path)
            except UserError:
                self._summary[run.path] = None
        return self._summary[run.path]

    def command(self, run):
        return train_command(run, self.data_dir or "hw1_data")

    def no_run(self, run):
        return Missing(f"No {run.name} run given (the course's model {run.slot} is "
                       f"{COURSE_MODEL[run.task, run.slot]}). Train it, then pass its folder in "
                       f"--{run.task}-runs:", self.command(run))

    def no_records(self, run):
        if run.path is None:
            return self.no_run(run)
        last = run.file("last.pth")
        command = self.command(run)
        return Missing(f"{run.name}: {run.problem}. " + ("Continue the run:" if last else "Start (or restart) it:"),
                       with_flag(command, "--resume", [last]) if last else command)

    def unfinished(self, run):
        planned = run.config.epochs if run.config else None
        if run.records and planned and run.records[-1]["epoch"] < planned and run.file("last.pth"):
            return Missing(f"{run.name} ({run.path}) stopped after epoch {run.records[-1]['epoch']} of {planned}. "
                           f"Continue it:", with_flag(train_command(run), "--resume",
                                                      [run.file("last.pth")]))
        return None

    def data(self, task):
        """(validation folder, labels CSV or None) of ``task``, or a Missing note."""
        part, split, archive = DATA[task]
        if self.data_dir is None:
            return Missing(f"No --data-dir given: this needs {part}/{split}. Extract the course data and pass "
                           f"--data-dir hw1_data:", f"mkdir -p hw1_data && tar xzf {archive} -C hw1_data")
        folder = self.data_dir / part / split
        if not folder.is_dir():
            return Missing(f"{folder}: not found. Extract the course data:",
                           f"mkdir -p {self.data_dir} && tar xzf {archive} -C {self.data_dir}")
        csv = self.data_dir / part / "val_gt.csv"
        return folder, (csv if task == "cls" and csv.is_file() else None)

    # sections
    def architecture(self, task, run, title):
        s = self.section(task, title)
        name, config = run.model_name, run.model_config
        notes = [self.no_run(run)] if run.path is None else []
        if name is None or config is None:
            if run.path is not None:
                notes.append(Missing(f"{run.name} ({run.path}) has no checkpoint to read the model from. "
                                     f"Train it:", self.command(run)))
            name, config = COURSE_MODEL[task, run.slot], {}
            source = f"drawn with the builder's defaults of {name} (no run gives its configuration)"
        else:
            source = f"drawn from the model_name and model_config of {run.newest_checkpoint()}"
        spec = get_spec(name)
        with torch.device("meta"):  # a forward pass of shapes only, no arithmetic (plots.model_summary)
            model = spec.build(**config, weights="none")
        size = spec.input_size
        rows, total = plots.model_summary(model, size, spec)
        shown = config_text(config)
        fig = plots.arch_figure(rows, total, title=name + (f" ({shown})" if config else ""), input_size=size)
        arch = shlex.join(["python", "viz.py", "arch", "--model", name]
                          + (["--config", *(f"{k}={v}" for k, v in config.items())] if config else []))
        s.blocks.append(self.figure(s, fig, f"{run.label}: {source}; output shapes for a {size}x{size} input. "
                                         f"The same as a table: {arch}"))
        s.blocks += notes

    def scores(self, task, runs, title):
        s = self.section(task, title)
        seg = task == "seg"
        header = ["model", "source", "mIoU" if seg else "accuracy"] + (list(CLASS_NAMES[:6]) if seg else [])
        rows, notes = [], []
        data = self.data(task) if self.evaluate else None
        for run in runs:
            if not run.records:
                rows.append([run.label, "no result", "-"] + ["-"] * 6 * seg)
                notes.append(self.no_records(run))
                continue
            key = f"val_{METRIC[task]}"
            best = max(run.records, key=lambda r: -math.inf if r.get(key) is None else r[key])
            last = run.records[-1]
            size = f", images resized to {run.config.size}" if seg and run.config and run.config.size else ""
            for r, which in [(best, "best")] + ([(last, "last")] if last is not best else []):
                per_class = [fmt(v) for v in (r.get("val_iou") or [])[:6]] if seg else []
                rows.append([run.label, f"metrics.jsonl, epoch {r['epoch']} of {last['epoch']} ({which}{size})",
                             fmt(r.get(key)), *per_class])
            if (u := self.unfinished(run)) is not None:
                notes.append(u)
            if isinstance(data, Missing):
                continue
            if data is not None and (ckpt := run.best_checkpoint()) is not None:
                model, epoch, _ = checkpoint_model(ckpt, task, self.device)
                cm = model_confusion(model, data[0], task=task, device=self.device, labels_csv=data[1])
                result = metrics.summarize(cm, task)
                per_class = [fmt(v) for v in result["iou"][:6]] if seg else []
                rows.append([run.label, f"fresh evaluation of {ckpt.name} ({epoch}) on {data[0]}"
                             + (" at full size" if seg else ""), fmt(result[METRIC[task]]), *per_class])
        what = "mIoU over classes 0-5 (the course's metric: one confusion matrix pooled over all pixels)" if seg \
            else "accuracy over all validation images"
        s.blocks.append(Paragraph(f"Validation {what}. 'metrics.jsonl' rows are what the training run measured "
                                  f"after that epoch; " + ("'fresh evaluation' rows score the checkpoint again on "
                                                           "the data given to this report." if self.evaluate else
                                                           "add --evaluate to score each run's best.pth afresh on "
                                                           "--data-dir.")))
        s.blocks.append(Table(header, rows))
        if isinstance(data, Missing):
            notes.append(data)
        s.blocks += notes

    def implementation(self, task, runs, title, *, only_differences=False):
        s = self.section(task, title)
        have = [r for r in runs if r.path is not None and (r.config or r.model_name)]
        notes = [self.no_run(r) if r.path is None else self.no_records(r) for r in runs if r not in have]
        if not have or (only_differences and len(have) < 2):
            s.blocks += notes
            return
        table = [details(r, self.summary(r)) for r in have]
        keys = [k for k, _ in table[0]] + [k for t in table[1:] for k, _ in t if k not in dict(table[0])]
        values = [dict(t) for t in table]
        rows = [[k, *(v.get(k, "-") for v in values)] for k in keys]
        if only_differences:
            same = [r[0] for r in rows if r[1] == r[2]]
            rows = [r for r in rows if r[1] != r[2]]
            s.blocks.append(Paragraph(f"Settings in which {have[1].label} differs from {have[0].label} "
                                      f"(the same in both: {', '.join(same) or 'none'})."))
        s.blocks.append(Table(["setting", *(r.label for r in have)], rows))
        for r in have[1:] if only_differences else have:
            how = "" if r.config and r.config.command else ", rebuilt from its args.json (the run did not record its command)"
            s.blocks.append(Paragraph(f"{r.label} was trained with ({r.path}{how}):"))
            s.blocks.append(Code(self.command(r)))
        s.blocks += notes

    def features(self, run):
        pca = self.section("cls", "PCA of model A's penultimate features")
        tsne = self.section("cls", "t-SNE of model A's penultimate features: first, middle and last epoch")
        if run.path is None:
            for s in (pca, tsne):
                s.blocks.append(self.no_run(run))
            return
        stages, missing = stage_checkpoints(run)
        data = self.data("cls")
        if isinstance(data, Missing) or not stages:
            for s in (pca, tsne):
                s.blocks += [m for m in (missing, data) if isinstance(m, Missing)]
            return
        folder, csv = data
        images, labels = cls_images(folder, labels_csv=csv, per_class=self.per_class)
        subset = f"the first {self.per_class} images of each class" if self.per_class else "all images"
        pca_fig, tsne_fig = feature_figures([p for _, _, p in stages], images, labels, data_name=folder.name,
                                            num_classes=get_spec(run.model_name).num_classes,
                                            perplexity=self.perplexity, device=self.device)
        stage_text = ", ".join(f"{stage} = epoch {e}" for stage, e, _ in stages)
        pca.blocks.append(self.figure(pca, pca_fig, f"{run.label} ({run.path}), {stages[-1][2].name}: the two "
                                               f"principal components of the penultimate features of {subset} of "
                                               f"{folder} ({len(labels)} images), coloured by class."))
        tsne.blocks.append(self.figure(tsne, tsne_fig, f"{run.label} ({run.path}): {stage_text}; {subset} of {folder} "
                                                 f"({len(labels)} images), perplexity {self.perplexity:g}."))
        if missing:
            tsne.blocks.append(missing)

    def masks(self, run, title):
        s = self.section("seg", title)
        if run.path is None:
            s.blocks.append(self.no_run(run))
            return
        stages, missing = stage_checkpoints(run)
        data = self.data("seg")
        if isinstance(data, Missing):
            s.blocks += [data] + ([missing] if missing else [])
            return
        folder = data[0]
        ids = [i for i in self.mask_ids if (folder / f"{i}_sat.jpg").is_file() and (folder / f"{i}_mask.png").is_file()]
        absent = [i for i in self.mask_ids if i not in ids]
        if stages and ids:
            size = run.config.size if run.config else None
            pairs = [read_pair(folder, i, size) for i in ids]
            fig = masks_figure([p for _, _, p in stages], [p[0] for p in pairs], [p[1] for p in pairs], ids=ids,
                               device=self.device)
            at = f", predicted at {size}x{size} (the size the run trained at)" if size else ""
            stage_text = ", ".join(f"{stage} = epoch {e}" for stage, e, _ in stages)
            s.blocks.append(self.figure(s, fig, f"{run.label} ({run.path}): {stage_text}{at}. Each prediction's "
                                             f"title gives that image's mIoU over classes 0-5."))
        if absent:
            s.blocks.append(Missing(f"{folder} has no {', '.join(f'{i}_sat.jpg + {i}_mask.png' for i in absent)}; "
                                    f"--mask-ids names images of that folder."))
        if missing:
            s.blocks.append(missing)

    def curves(self, task, runs):
        s = self.section(task, "Training curves")
        have = [r for r in runs if r.records]
        if have:
            fig = plots.curves_figure([(f"{r.label} ({r.path.name})", r.records) for r in have])
            key, name = f"val_{METRIC[task]}", {"cls": "accuracy", "seg": "mIoU"}[task]
            lines = [f"{r.label}: validation {name} {fmt(r.records[0][key])} after epoch {r.records[0]['epoch']}, "
                     f"{fmt(r.records[-1][key])} after epoch {r.records[-1]['epoch']}." for r in have]
            s.blocks.append(self.figure(s, fig, "From each run's metrics.jsonl. " + " ".join(lines)))
        s.blocks += [self.no_records(r) for r in runs if not r.records]

    def build(self):
        """The sections of both problems, in the course's order."""
        a, b = self.runs["cls"]
        self.architecture("cls", a, "Architecture of model A")
        self.scores("cls", [a, b], "Accuracy of models A and B on the validation set")
        self.implementation("cls", [a], "Implementation details of model A")
        self.implementation("cls", [a, b], "Model B and how it differs from model A", only_differences=True)
        self.features(a)
        self.curves("cls", [a, b])
        a, b = self.runs["seg"]
        self.architecture("seg", a, "Architecture of model A")
        self.architecture("seg", b, "Architecture of model B")
        self.scores("seg", [a, b], "mIoU of models A and B on the validation set")
        self.implementation("seg", [a, b], "Implementation details of models A and B")
        self.masks(b, "Predicted masks during training: model B (the course asks for the improved model)")
        self.masks(a, "Predicted masks during training: model A")
        self.curves("seg", [a, b])
        return self.sections


def title_section(title, notes, command, runs, sections):
    """The first page: notes, how the report was made, the runs it reads and what each section holds."""
    s = Section(title, heading_size=20)
    if notes:
        s.blocks.append(Paragraph(notes))
    s.blocks.append(Paragraph(f"Made on {date.today().isoformat()} with the command below. Every number is read from "
                              f"the run folders (metrics.jsonl, args.json, checkpoints) or measured afresh on the "
                              f"data; what could not be made is a note with the command that makes it."))
    s.blocks.append(Code(command))
    rows = []
    for run in runs:
        c = run.config
        done = f"{run.records[-1]['epoch']} of {c.epochs if c else '?'}" if run.records else "-"
        rows.append([run.name, str(run.path) if run.path else "none given", run.model_name or "-", done,
                     (c and c.device_name) or ("not recorded" if run.path else "-")])
    s.blocks.append(Table(["run", "folder", "model", "epochs", "device"], rows))
    s.blocks.append(Table(["section", "status"],
                          [[x.title, f"{len(x.missing())} note(s) on what is missing" if x.missing() else "complete"]
                           for x in sections]))
    return s


# --- layout: sections onto A4 landscape pages ------------------------------------------------------------

PAGE_W, PAGE_H, MARGIN = 11.69, 8.27, 0.5  # inches
WIDTH = PAGE_W - 2 * MARGIN
BODY, SMALL, MONO = 10, 8.5, 8  # font sizes (points)
LEADING = 1.25  # line height / font size
GAP = 0.12  # between blocks
MIN_FIGURE = 3.0  # a figure shrunk below this height goes to the next page instead
FOOTER = 0.3
MEASURE_DPI = 720  # fine enough that whole-pixel glyph advances do not add up to a visible error


@functools.lru_cache(maxsize=1)
def _renderer():
    return RendererAgg(1, 1, MEASURE_DPI)


def text_width(text, size, **font):
    """Width in inches of ``text`` set in ``size`` points (``font``: FontProperties arguments)."""
    width, _, _ = _renderer().get_text_width_height_descent(text, FontProperties(size=size, **font), ismath=False)
    return width / MEASURE_DPI


def line_height(size):
    return size * LEADING / 72


def wrap(text, width, size, **font):
    """Lines of ``text`` no wider than ``width`` inches, broken at spaces (inside a word that is wider)."""
    lines = []
    for para in str(text).split("\n"):
        line = ""
        for word in para.split(" "):
            trial = f"{line} {word}" if line else word
            if text_width(trial, size, **font) <= width:
                line = trial
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and text_width(word, size, **font) > width:
                cut = max(1, int(len(word) * width / text_width(word, size, **font)))
                while cut > 1 and text_width(word[:cut], size, **font) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def wrap_command(command, width_chars):
    """A shell command folded at spaces into lines of at most ``width_chars``, continued with `` \\``."""
    lines, line = [], ""
    for word in command.split(" "):
        if line and len(line) + 1 + len(word) + 2 > width_chars:
            lines.append(line + " \\")
            line = "    " + word
        else:
            line = f"{line} {word}" if line else word
    return lines + [line]


def _code_lines(text, width):
    # 6 % to spare: rasterised at a low dpi, hinting rounds each glyph's advance up to whole pixels
    chars = int(0.94 * width / text_width("M", MONO, family="monospace"))
    return [line for cmd in text.split("\n") for line in wrap_command(cmd, chars)]


def fit_widths(natural, total):
    """Column widths: each column its natural width if all fit, else the narrow ones theirs and the rest an equal share."""
    if sum(natural) <= total:
        return list(natural)
    widths, remaining = list(natural), total
    order = sorted(range(len(natural)), key=lambda i: natural[i])
    for k, i in enumerate(order):
        widths[i] = min(natural[i], remaining / (len(order) - k))
        remaining -= widths[i]
    return widths


# A laid-out block is (height, ops): ops are drawing steps at positions relative to the block's top left,
# in inches: ("text", x, y, string, size, font), ("rect", x, y, w, h, face, edge), ("line", x, y, w, lw),
# ("image", x, y, w, h, path).

def layout_text(lines, size, x=0.0, y=0.0, **font):
    return [("text", x, y + i * line_height(size), line, size, font) for i, line in enumerate(lines)]


def layout_block(block, width):
    if isinstance(block, Paragraph):
        lines = wrap(block.text, width, BODY)
        return len(lines) * line_height(BODY), layout_text(lines, BODY)
    if isinstance(block, Code):
        lines, pad = _code_lines(block.text, width - 0.2), 0.07
        h = len(lines) * line_height(MONO) + 2 * pad
        return h, [("rect", 0, 0, width, h, "0.95", "0.85"),
                   *layout_text(lines, MONO, 0.1, pad, family="monospace")]
    if isinstance(block, Missing):
        pad = 0.1
        what = wrap(block.what, width - 2 * pad, BODY)
        ops = [*layout_text(["Missing"], BODY, pad, pad, weight="bold"),
               *layout_text(what, BODY, pad, pad + line_height(BODY))]
        y = pad + (1 + len(what)) * line_height(BODY)
        if block.command:
            lines = _code_lines(block.command, width - 2 * pad)
            ops += layout_text(lines, MONO, pad + 0.1, y + 0.05, family="monospace")
            y += 0.05 + len(lines) * line_height(MONO)
        return y + pad, [("rect", 0, 0, width, y + pad, "#fff3e0", "#e69500"), *ops]
    if isinstance(block, Table):
        return layout_table(block, width)
    raise TypeError(f"no layout for {type(block).__name__}")


def layout_table(table, width):
    pad, rows = 0.03, [table.header, *table.rows]
    cells = [[str(c) for c in r] for r in rows]
    bold = [{"weight": "bold"} if i == 0 else {} for i in range(len(cells))]
    # (+ 0.01: a cell exactly as wide as its column must not wrap on a rounding error)
    natural = [max(text_width(r[c], SMALL, **bold[i]) for i, r in enumerate(cells)) + 2 * pad + 0.01
               for c in range(len(table.header))]
    widths = fit_widths(natural, width)
    total_w, y, ops = sum(widths), 0.0, []
    for i, row in enumerate(cells):
        wrapped = [wrap(cell, widths[c] - 2 * pad, SMALL, **bold[i]) for c, cell in enumerate(row)]
        h = max(len(lines) for lines in wrapped) * line_height(SMALL) + 2 * pad
        if i == 0:
            ops.append(("rect", 0, y, total_w, h, "0.9", "none"))
        x = 0.0
        for c, lines in enumerate(wrapped):
            ops += layout_text(lines, SMALL, x + pad, y + pad, **bold[i])
            x += widths[c]
        y += h
        ops.append(("line", 0, y, total_w, 0.8 if i in (0, len(cells) - 1) else 0.3))
    return y, ops


def image_size(path):
    with PILImage.open(path) as im:
        return im.size


def layout_figure(block, width, max_height):
    """The figure as large as fits ``width`` x ``max_height`` (never above its own size), caption below."""
    caption = wrap(block.caption, width, SMALL, style="italic")
    cap_h = len(caption) * line_height(SMALL) + 0.05
    px_w, px_h = image_size(block.path)
    w = width
    h = w * px_h / px_w
    if h > max_height - cap_h:
        h = max(max_height - cap_h, 0.5)
        w = h * px_w / px_h
    x = (width - w) / 2
    return h + cap_h, [("image", x, 0.0, w, h, block.path),
                       *layout_text(caption, SMALL, 0.0, h + 0.05, style="italic")]


def natural_figure_height(block, width):
    return layout_figure(block, width, float("inf"))[0]


def paginate(section, avail):
    """The section's blocks laid out on one page or more: ``[[(y, ops), ...], ...]``."""
    fixed = {id(b): layout_block(b, WIDTH) for b in section.blocks if not isinstance(b, Figure)}
    figures = [b for b in section.blocks if isinstance(b, Figure)]
    fixed_h = sum(h + GAP for h, _ in fixed.values())
    natural = {id(f): natural_figure_height(f, WIDTH) for f in figures}
    if fixed_h + sum(min(natural[id(f)], MIN_FIGURE) + GAP for f in figures) <= avail:
        # one page: the figures share what the other blocks leave, in proportion to their size
        space = avail - fixed_h - GAP * len(figures)
        scale = min(1.0, space / sum(natural.values())) if figures else 1.0
        placed, y = [], 0.0
        for b in section.blocks:
            h, ops = layout_figure(b, WIDTH, natural[id(b)] * scale) if isinstance(b, Figure) else fixed[id(b)]
            placed.append((y, ops))
            y += h + GAP
        return [placed]
    pages, placed, y = [], [], 0.0
    for b in section.blocks:
        if isinstance(b, Figure):
            if placed and avail - y < min(natural[id(b)], MIN_FIGURE):
                pages.append(placed)
                placed, y = [], 0.0
            h, ops = layout_figure(b, WIDTH, avail - y)
        else:
            h, ops = fixed[id(b)]
            if placed and y + h > avail:
                pages.append(placed)
                placed, y = [], 0.0
        placed.append((y, ops))
        y += h + GAP
    return pages + [placed]


def page_figures(sections, *, footer, interpolation="none"):
    """One matplotlib figure per page (A4 landscape); ``interpolation`` of the embedded figure images
    ("none" puts their pixels into a PDF as they are)."""
    laid = []
    for s in sections:
        head_h = line_height(s.heading_size) + 0.15
        avail = PAGE_H - 2 * MARGIN - head_h - FOOTER
        for k, page in enumerate(paginate(s, avail)):
            laid.append((s, k, head_h, page))
    for n, (s, k, head_h, page) in enumerate(laid, start=1):
        fig = plt.figure(figsize=(PAGE_W, PAGE_H))
        heading = s.title + (" (continued)" if k else "")
        fig.text(MARGIN / PAGE_W, 1 - MARGIN / PAGE_H, heading, fontsize=s.heading_size, weight="bold",
                 va="top", parse_math=False)
        fig.text(0.5, 0.35 * MARGIN / PAGE_H, f"{footer}  ·  page {n} of {len(laid)}", fontsize=8, color="0.4",
                 ha="center", va="bottom", parse_math=False)
        for y, ops in page:
            draw(fig, ops, MARGIN, MARGIN + head_h + y, interpolation)
        yield fig


def draw(fig, ops, x0, y0, interpolation):
    def box(x, y, w, h):  # inches from the top left -> figure fraction from the bottom left
        return [(x0 + x) / PAGE_W, 1 - (y0 + y + h) / PAGE_H, w / PAGE_W, h / PAGE_H]

    for op in ops:
        kind = op[0]
        if kind == "text":
            _, x, y, text, size, font = op
            fig.text((x0 + x) / PAGE_W, 1 - (y0 + y) / PAGE_H, text, fontsize=size, va="top", ha="left",
                     parse_math=False, **font)
        elif kind == "rect":
            _, x, y, w, h, face, edge = op
            left, bottom, fw, fh = box(x, y, w, h)
            fig.add_artist(Rectangle((left, bottom), fw, fh, transform=fig.transFigure, facecolor=face,
                                     edgecolor=edge, linewidth=0.8, zorder=-1))
        elif kind == "line":
            _, x, y, w, lw = op
            yy = 1 - (y0 + y) / PAGE_H
            fig.add_artist(Line2D([(x0 + x) / PAGE_W, (x0 + x + w) / PAGE_W], [yy, yy], color="0.3", linewidth=lw,
                                  transform=fig.transFigure))
        else:
            _, x, y, w, h, path = op
            ax = fig.add_axes(box(x, y, w, h))
            with PILImage.open(path) as im:
                ax.imshow(np.asarray(im.convert("RGB")), interpolation=interpolation, aspect="auto")
            ax.set_axis_off()


# --- writing ---------------------------------------------------------------------------------------------

def write_pdf(sections, path, *, title):
    """Write the pages to ``path`` atomically; return how many there are."""
    pages = 0
    with atomic_path(path) as tmp:
        with PdfPages(tmp, metadata={"Title": title}) as pdf:
            for fig in page_figures(sections, footer=title):
                pdf.savefig(fig)
                plt.close(fig)
                pages += 1
    return pages


def markdown(sections, base):
    """The sections as Markdown; figure paths relative to the folder ``base`` of the Markdown file."""
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = []
    for i, s in enumerate(sections):
        out.append(("# " if i == 0 else "## ") + s.title)
        for b in s.blocks:
            if isinstance(b, Paragraph):
                out.append(b.text)
            elif isinstance(b, Code):
                out.append(f"```bash\n{b.text}\n```")  # unfolded: a Markdown viewer scrolls, and it copies as is
            elif isinstance(b, Table):
                lines = ["| " + " | ".join(cell(c) for c in b.header) + " |",
                         "|" + "---|" * len(b.header)]
                lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in b.rows]
                out.append("\n".join(lines))
            elif isinstance(b, Missing):
                text = f"> **Missing:** {b.what}"
                if b.command:
                    text += f"\n>\n> ```bash\n> {b.command}\n> ```"
                out.append(text)
            else:
                rel = Path(os.path.relpath(b.path, base)).as_posix()
                out.append(f"![{cell(s.title)}]({rel})\n\n*{b.caption}*")
    return "\n\n".join(out) + "\n"


TITLE = "DLCV 2022 hw1 report"
MASK_IDS = ("0013", "0062", "0104")


def write_report(*, cls_runs=("-", "-"), seg_runs=("-", "-"), data_dir="hw1_data", out="report.pdf", per_class=20,
                 perplexity=30.0, mask_ids=MASK_IDS, evaluate=False, title=TITLE, notes="", dpi=100, device,
                 command="python viz.py report"):
    """Write ``out`` (PDF), the Markdown beside it and its PNGs in ``<stem>_files/``.

    ``cls_runs`` / ``seg_runs`` are run folders of models A and B (``-`` or left out: none).
    Returns ``{"pdf", "markdown", "figures", "pages", "sections"}``.
    """
    out = Path(out)
    if out.suffix.lower() != ".pdf":
        raise UserError(f"--out {out}: expected a .pdf path (the .md and its figures are written beside it)")
    runs = {}
    for task, specs in (("cls", cls_runs), ("seg", seg_runs)):
        specs = list(specs)
        if len(specs) > 2:
            raise UserError(f"--{task}-runs: at most two run folders (model A, model B), got {len(specs)}")
        runs[task] = [open_run(spec, task, slot) for spec, slot in zip(specs + ["-"] * (2 - len(specs)), "AB")]
    files_dir = out.parent / f"{out.stem}_files"
    builder = ReportBuilder(cls_runs=runs["cls"], seg_runs=runs["seg"], data_dir=data_dir, files_dir=files_dir,
                            per_class=per_class, perplexity=perplexity, mask_ids=mask_ids, evaluate=evaluate,
                            dpi=dpi, device=device)
    sections = builder.build()
    sections.insert(0, title_section(title, notes, command, runs["cls"] + runs["seg"], sections))
    pages = write_pdf(sections, out, title=title)
    md = out.with_suffix(".md")
    atomic_write_text(markdown(sections, md.parent), md)
    # figures of an earlier report with other sections would otherwise linger beside the new ones
    for stale in set(files_dir.glob("p[12]_*.png")) - set(builder.written):
        stale.unlink()
    return {"pdf": out, "markdown": md, "figures": builder.written, "pages": pages, "sections": sections}
