"""Every step of the report that reads checkpoints or runs a model: features, masks and scores
measured on the data, shapes and parameter counts of the architectures, the inference settings of
a run's exported checkpoints. What it returns is plain data (numbers, arrays, paths) that the
sections and viz.py's ``features``, ``masks`` and ``confusion`` subcommands draw and describe.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from hw1 import plots
from hw1.checkpoint import load_checkpoint
from hw1.engine import tta_mode
from hw1.errors import UserError
from hw1.io import load_torch_file
from hw1.models import build_model, get_spec
from hw1.models.introspect import model_summary
from hw1.predict import InferenceModel, extract_features, segment
from hw1.scoring import model_confusion
from hw1.tasks import CHECKPOINTS, get_task


def checkpoint_model(path, task, device):
    """(:class:`hw1.predict.InferenceModel` on ``device``, ``epoch N`` or the file name) of a checkpoint.

    The file is read once (P2 checkpoints with optimizer state are hundreds of MB); the model is
    prepared as :func:`hw1.predict.load_model` prepares it.
    """
    ckpt = load_checkpoint(path, task=task)
    title = f"epoch {ckpt['epoch']}" if isinstance(ckpt.get("epoch"), int) else Path(path).name
    return InferenceModel.from_checkpoint(ckpt, path, device), title


# --- the architectures: shapes and counts on the meta device, nothing allocated or computed ---------

@dataclass
class Architecture:
    name: str
    config: dict  # the builder arguments given (its defaults for the rest)
    rows: list  # (name, description, output shape, params) per stage (hw1.models.introspect.model_summary)
    total: int  # parameters
    input_size: int


def architecture(name, config):
    """The stages of model ``name`` built with ``config`` (its builder's defaults for the rest)."""
    spec = get_spec(name)
    with torch.device("meta"):  # a forward pass of shapes only, no arithmetic (model_summary)
        model = spec.build(**config, weights="none")
    rows, total = model_summary(model, spec.input_size, spec)
    return Architecture(name, config, rows, total, spec.input_size)


def parameter_count(name, config):
    with torch.device("meta"):  # shapes and counts only: nothing is allocated or initialised
        model = build_model(name, **config, weights="none")
    return sum(p.numel() for p in model.parameters())


# --- how a run's model is shipped ----------------------------------------------------------------------

@dataclass
class Export:
    path: Path  # the exported checkpoint (python -m hw1.checkpoint SRC DST)
    source: Path  # the run's checkpoint it was exported from
    tta: str  # the TTA hw1.predict and eval.py predict with by default (its "inference" entry): none, flip, d4, crops


def exports(run_path, folder=CHECKPOINTS):
    """The checkpoints in ``folder`` (the shipped ones by default) exported from a file of the run folder
    ``run_path``, by their ``exported_from``."""
    run_path = Path(run_path).resolve()
    found = []
    for path in sorted(Path(folder).glob("*.pth")):
        try:
            # mmap: only the entries beside the weights are read, even of a checkpoint of hundreds of MB
            ckpt = load_torch_file(path, mmap=True)
        except Exception:  # a partial download or a foreign file: not an export of this run either way
            continue
        source = ckpt.get("exported_from") if isinstance(ckpt, dict) else None
        if not isinstance(source, str):
            continue
        # exported_from is as the export was given it: relative to where it ran, the repository as a rule
        if any((base / source).resolve().parent == run_path for base in (Path.cwd(), CHECKPOINTS.parent)):
            found.append(Export(path, Path(source), tta_mode(ckpt.get("inference", {}).get("tta", False))))
    return found


# --- scores measured afresh ---------------------------------------------------------------------------

@dataclass
class FreshScore:
    checkpoint: Path
    epoch: str  # "epoch N", or the file name of a checkpoint without one
    data: Path
    result: dict  # the task's summarize: acc (P1), miou and iou (P2)
    tta: str = "none"  # what it predicted with: its own "inference" entry, as hw1.predict
    exported_from: Path | None = None  # a shipped export: the run's checkpoint it came from


def fresh_score(checkpoint, task, folder, labels_csv, device, *, exported_from=None):
    """The checkpoint scored on the labelled ``folder`` (P2 at full size), as hw1.predict would predict
    (with the TTA the checkpoint says)."""
    model, epoch = checkpoint_model(checkpoint, task, device)
    cm = model_confusion(model, folder, task=get_task(task), labels_csv=labels_csv)
    return FreshScore(Path(checkpoint), epoch, Path(folder), get_task(task).summarize(cm), model.tta, exported_from)


# --- P1: penultimate features -------------------------------------------------------------------------

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


@dataclass
class Features:
    arrays: list  # (N, D) float32 per checkpoint
    titles: list  # "epoch N (epoch_NNN.pth)" per checkpoint
    model_name: str  # of the last checkpoint
    labels: np.ndarray  # (N,)
    data: Path  # the image folder


def checkpoint_features(checkpoints, images, labels, *, data, device):
    """The penultimate features of ``images`` under each checkpoint."""
    arrays, titles = [], []
    for path in checkpoints:
        model, title = checkpoint_model(path, "cls", device)
        arrays.append(extract_features(model, images))
        titles.append(f"{title} ({Path(path).name})")
    return Features(arrays, titles, model.name, labels, Path(data))


# --- P2: predicted masks ------------------------------------------------------------------------------

def read_pair(folder, image_id, size):
    """(H, W, 3) uint8 image and (H, W) class mask of ``{image_id}_sat.jpg`` + ``_mask.png``, resized to ``size``."""
    from hw1.data.images import read_rgb
    from hw1.data.masks import read_mask

    layout = get_task("seg").layout
    sat, mask = Path(folder) / f"{image_id}{layout.image_suffix}", Path(folder) / f"{image_id}{layout.mask_suffix}"
    for p in (sat, mask):
        if not p.is_file():
            raise UserError(f"{p}: not found (--ids names xxxx of xxxx{layout.image_suffix} + "
                            f"xxxx{layout.mask_suffix} in --data-dir)")
    image, gt = read_rgb(sat, size), read_mask(mask)
    if size is not None and gt.shape != (size, size):
        gt = np.asarray(PILImage.fromarray(gt).resize((size, size), PILImage.NEAREST))
    if gt.shape != image.shape[:2]:
        raise UserError(f"{mask}: mask is {gt.shape[1]}x{gt.shape[0]} but {sat.name} is "
                        f"{image.shape[1]}x{image.shape[0]}")
    return image, gt


@dataclass
class Masks:
    ids: list
    images: list  # (H, W, 3) uint8 per id
    truths: list  # (H, W) classes per id
    preds: list  # per checkpoint, (H, W) classes per id
    titles: list  # "epoch N" per checkpoint


def predicted_masks(checkpoints, folder, ids, *, size, device):
    """Images ``ids`` of ``folder`` (resized to ``size``), their ground truth and each checkpoint's prediction."""
    pairs = [read_pair(folder, i, size) for i in ids]
    images = [p[0] for p in pairs]
    preds, titles = [], []
    for path in checkpoints:
        model, title = checkpoint_model(path, "seg", device)
        preds.append([segment(model, torch.from_numpy(im).permute(2, 0, 1)).numpy() for im in images])
        titles.append(title)
    return Masks(list(ids), images, [p[1] for p in pairs], preds, titles)
