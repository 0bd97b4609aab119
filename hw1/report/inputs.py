"""Checkpoints and data made ready for the figures: what viz.py's ``features``, ``masks`` and
``confusion`` subcommands share with the report."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from hw1 import plots
from hw1.checkpoint import load_checkpoint
from hw1.errors import UserError
from hw1.predict import extract_features, inference_model


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
        feats.append(extract_features(model, images, device=device))
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
