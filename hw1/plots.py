"""Every figure of the report, as pure functions: arrays, matrices and rows in, matplotlib figures out.

``viz.py`` is the command line over this module; the features, predicted masks, confusion
matrices and model stages the figures show come from the caller (:mod:`hw1.predict`,
:mod:`hw1.scoring`, :mod:`hw1.models.introspect`). Figures are
:class:`matplotlib.figure.Figure` objects made without pyplot, so no backend is selected and no
figure is held open anywhere; each is drawn at a fixed size, so a figure of ``figsize`` inches
saved at ``dpi`` is exactly ``figsize * dpi`` pixels (no ``bbox_inches="tight"``);
:func:`save_figure` writes them atomically.
"""
import math
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

from hw1 import metrics
from hw1.data.masks import CLASS_NAMES, NUM_CLASSES, PALETTE
from hw1.io import atomic_path
from hw1.models.introspect import format_params, format_shape

MASK_COLORS = PALETTE / 255.0
# Mask panels show white (barren) and black (unknown) classes: a thin grey frame separates them
# from the page without touching the panel's pixels.
_FRAME = "0.6"


# --- saving ---------------------------------------------------------------------------------------

def save_figure(fig, path, *, dpi=120, pdf=False):
    """Write ``fig`` to ``path`` (PNG) and, with ``pdf``, beside it as ``.pdf``; return the paths."""
    path = Path(path)
    written = []
    for p, fmt in [(path, "png")] + ([(path.with_suffix(".pdf"), "pdf")] if pdf else []):
        with atomic_path(p) as tmp:
            # The temporary name ends in .tmp, so the format must be given.
            fig.savefig(tmp, format=fmt, dpi=dpi)
        written.append(p)
    return written


# --- features: PCA and t-SNE ---------------------------------------------------------------------

def class_colors(num_classes):
    """``num_classes`` distinguishable RGBA colours: tab20, tab20b and tab20c give 60 (tab10 when <= 10)."""
    if num_classes <= 10:
        return matplotlib.colormaps["tab10"].colors[:num_classes]
    # tab20b/tab20c come in groups of 4 shades of a hue; interleaving the three maps keeps
    # neighbouring class ids apart in hue.
    colours = [*matplotlib.colormaps["tab20"].colors, *matplotlib.colormaps["tab20b"].colors,
               *matplotlib.colormaps["tab20c"].colors]
    if num_classes > len(colours):
        colours = [matplotlib.colormaps["hsv"](i / num_classes) for i in range(num_classes)]
    return colours[:num_classes]


def embed_pca(features, seed=0):
    """(N, 2) PCA projection and the explained variance ratio of the two components (scikit-learn)."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=seed)
    return pca.fit_transform(features), pca.explained_variance_ratio_


# PCA to two components needs two samples; t-SNE with its perplexity capped at (N - 1) / 3 needs three.
MIN_EMBED_IMAGES = 3


def embed_tsne(features, *, perplexity=30.0, seed=0):
    """(N, 2) t-SNE embedding (scikit-learn, PCA initialisation); perplexity is capped below N."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < MIN_EMBED_IMAGES:
        raise ValueError(f"t-SNE needs at least {MIN_EMBED_IMAGES} samples, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def draw_embedding(ax, xy, labels, num_classes, title):
    """Scatter ``xy`` coloured by class, with each class id written at its median point."""
    cmap = ListedColormap(class_colors(num_classes))
    norm = BoundaryNorm(np.arange(num_classes + 1) - 0.5, num_classes)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap=cmap, norm=norm, s=6, alpha=0.8, linewidths=0)
    for c in np.unique(labels):
        cx, cy = np.median(xy[labels == c], axis=0)
        colour = cmap(int(c))
        # a label in the class colour; light colours get black text, dark ones white
        dark = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] < 0.55
        ax.text(cx, cy, str(int(c)), fontsize=6.5, fontweight="bold", ha="center", va="center",
                color="white" if dark else "black",
                bbox={"boxstyle": "round,pad=0.15", "facecolor": colour, "edgecolor": "0.2", "linewidth": 0.5})
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return sc


def _class_colorbar(fig, mappable, axes, num_classes):
    cbar = fig.colorbar(mappable, ax=axes, fraction=0.04, pad=0.02, aspect=40)
    step = 1 if num_classes <= 20 else 5
    cbar.set_ticks(range(0, num_classes, step))
    cbar.set_label("class id (also written at each cluster's median)")
    cbar.ax.tick_params(labelsize=7)
    cbar.solids.set_alpha(1)
    return cbar


def pca_figure(features, labels, *, num_classes, title):
    """One panel: 2-D PCA of (N, D) ``features`` coloured by class."""
    xy, ratio = embed_pca(features)
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    sc = draw_embedding(ax, xy, labels, num_classes, title)
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.1f} % of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.1f} % of variance)")
    _class_colorbar(fig, sc, ax, num_classes)
    return fig


def tsne_figure(features_list, labels, *, num_classes, titles, suptitle, perplexity=30.0):
    """One t-SNE panel per (N, D) feature array (e.g. the first, middle and last epoch)."""
    k = len(features_list)
    fig = Figure(figsize=(5.5 * k + 1, 5.8), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False)[0]
    for ax, feats, title in zip(axes, features_list, titles):
        sc = draw_embedding(ax, embed_tsne(feats, perplexity=perplexity), labels, num_classes, title)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
    _class_colorbar(fig, sc, list(axes), num_classes)
    fig.suptitle(suptitle)
    return fig


# --- P2 masks ---------------------------------------------------------------------------------------

def class_edges(mask):
    """(H, W) bool: pixels whose right or lower neighbour has another class."""
    edges = np.zeros(mask.shape, bool)
    edges[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edges[:-1, :] |= mask[:-1, :] != mask[1:, :]
    return edges


def overlay(image, mask, alpha=0.5):
    """(H, W, 3) uint8: the palette colours of ``mask`` blended over ``image``, class edges in black."""
    out = (1 - alpha) * image.astype(np.float32) + alpha * PALETTE[mask].astype(np.float32)
    out[class_edges(mask)] = 0
    return out.round().astype(np.uint8)


def mask_grid(images, gts, preds, *, ids, pred_titles, overlay_alpha=None, panel=2.6):
    """Rows: satellite image, ground truth, then each prediction (``preds[j][i]`` for column j, row i).

    ``images`` are (H, W, 3) uint8, masks (H, W) class indices. Mask panels show exact
    ``PALETTE`` colours (nearest-neighbour, no resampling between colours) unless
    ``overlay_alpha`` blends them over the image with class edges drawn. The figure is
    ``panel * (2 + len(preds))`` by ``panel * rows + 0.65 + 0.25 * legend_rows`` inches, where the
    class legend takes one row from 5 columns on (two below); its mask axes are listed in
    ``fig.mask_axes`` (for tests that read the panels' pixels). Each prediction's title gives that
    image's mIoU over classes 0-5 (:func:`hw1.metrics.image_miou`).
    """
    rows, cols = len(images), 2 + len(preds)
    # the class legend below the grid: as many entries a row as fit the figure's width
    ncol = min(len(CLASS_NAMES), max(1, int(panel * cols / 1.45)))
    legend_rows = math.ceil(len(CLASS_NAMES) / ncol)
    top, bottom = 0.35, 0.2 + 0.25 * legend_rows + 0.1
    height = panel * rows + top + bottom
    fig = Figure(figsize=(panel * cols, height))
    axes = fig.subplots(rows, cols, squeeze=False,
                        gridspec_kw={"left": 0.04, "right": 0.99, "top": 1 - top / height,
                                     "bottom": bottom / height, "wspace": 0.04, "hspace": 0.16})
    fig.mask_axes = []

    def show_mask(ax, image, mask):
        shown = PALETTE[mask] if overlay_alpha is None else overlay(image, mask, overlay_alpha)
        ax.imshow(shown, interpolation="nearest", resample=False)
        fig.mask_axes.append(ax)

    for i, (image, gt) in enumerate(zip(images, gts)):
        axes[i, 0].imshow(image, interpolation="antialiased")
        axes[i, 0].set_title(f"{ids[i]}_sat.jpg", fontsize=9)
        show_mask(axes[i, 1], image, gt)
        axes[i, 1].set_title("ground truth", fontsize=9)
        for j, (pred_rows, title) in enumerate(zip(preds, pred_titles)):
            show_mask(axes[i, 2 + j], image, pred_rows[i])
            miou = metrics.image_miou(torch.from_numpy(np.array(gt)), torch.from_numpy(np.array(pred_rows[i])),
                                      NUM_CLASSES)
            axes[i, 2 + j].set_title(f"{title}: mIoU {miou:.3f}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(_FRAME)
    handles = [Patch(facecolor=c, edgecolor="0.3", label=f"{i} {n}")
               for i, (c, n) in enumerate(zip(MASK_COLORS, CLASS_NAMES))]
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    return fig


# --- training curves ---------------------------------------------------------------------------------

def _series(records, key):
    points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
    return ([e for e, _ in points], [v for _, v in points]) if points else None


def curves_figure(runs):
    """Loss, accuracy / mIoU and learning rate per epoch; ``runs`` is ``[(name, records), ...]``.

    Solid lines are validation (training for the lr), dashed lines training; one colour per run.
    The figure is 15 x 4.6 inches.
    """
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_loss, ax_metric, ax_lr = fig.subplots(1, 3)
    colours = matplotlib.colormaps["tab10"].colors
    metric_names = set()
    for k, (name, records) in enumerate(runs):
        c = colours[k % len(colours)]
        for key, ax, style, label in [
            ("val_loss", ax_loss, "-", f"{name} val"), ("train_loss", ax_loss, "--", f"{name} train"),
            ("val_acc", ax_metric, "-", f"{name} val accuracy"), ("val_miou", ax_metric, "-", f"{name} val mIoU"),
            ("train_acc", ax_metric, "--", f"{name} train accuracy" if "val_miou" not in records[0]
             else f"{name} train pixel accuracy"),
            ("lr", ax_lr, "-", name),
        ]:
            s = _series(records, key)
            if s is None:
                continue
            ax.plot(*s, style, color=c, marker="o", markersize=3, label=label)
            if key in ("val_acc", "val_miou"):
                metric_names.add("mIoU, pixel accuracy" if key == "val_miou" else "accuracy")
    ax_loss.set_title("loss")
    ax_loss.set_ylabel("cross-entropy")
    # segmentation runs record mIoU on validation but pixel accuracy on training
    ax_metric.set_title(" / ".join(sorted(metric_names)) or "accuracy")
    ax_metric.set_ylabel(" / ".join(sorted(metric_names)) or "accuracy")
    ax_lr.set_title("learning rate (first step of the epoch)")
    ax_lr.set_ylabel("lr")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in (ax_loss, ax_metric, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.lines:
            ax.legend(fontsize=8)
    return fig


# --- confusion matrix ------------------------------------------------------------------------------

def confusion_figure(cm, *, task, title):
    """Row-normalised confusion matrix (rows: truth) and the bars of the :class:`~hw1.tasks.base.Task`
    ``task``'s per-class metric (P1 accuracy, P2 IoU), its headline score as a line.

    ``cm`` is a (C, C) count matrix; the figure is 16 x 7 inches for 50 classes, 13 x 5.2 for 7.
    """
    cm = torch.as_tensor(cm)
    c = cm.shape[0]
    rows = cm.double().sum(1, keepdim=True)
    norm = (cm.double() / rows.clamp(min=1)).numpy()
    big = c > 10
    fig = Figure(figsize=(16, 7) if big else (13, 5.2), layout="constrained")
    ax_cm, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.15] if big else [1, 1.1]})
    im = ax_cm.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    names = [f"{i} {n}" for i, n in enumerate(task.class_names[:c])] if task.class_names else [str(i) for i in range(c)]
    ticks = range(0, c, 5) if big else range(c)
    ax_cm.set_xticks(list(ticks), [names[i] for i in ticks], rotation=0 if big else 45, ha="center" if big else "right")
    ax_cm.set_yticks(list(ticks), [names[i] for i in ticks])
    ax_cm.set_xlabel("predicted class")
    ax_cm.set_ylabel("true class")
    ax_cm.set_title("confusion matrix, each row normalised to 1")
    if not big:
        for i in range(c):
            for j in range(c):
                ax_cm.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                           color="white" if norm[i, j] > 0.6 else "black")
    fig.colorbar(im, ax=ax_cm, fraction=0.046, pad=0.02, label="fraction of the true class")

    summary = task.summarize(cm)
    values = np.array(summary[task.per_class], dtype=float)[:c]
    overall, label = summary[task.metric], task.per_class_label
    colours = np.array(task.palette[:c]) / 255.0 if task.palette else class_colors(c)
    x = np.arange(len(values))
    ax_bar.bar(x, np.nan_to_num(values), color=colours, edgecolor="0.3", linewidth=0.5)
    ax_bar.axhline(overall, color="crimson", linestyle="--", linewidth=1, label=task.describe(cm)[0])
    if big:
        ax_bar.set_xticks(list(range(0, c, 5)))
        ax_bar.set_xlim(-1, c)
    else:
        ax_bar.set_xticks(list(x), names, rotation=45, ha="right")
        for xi, v in zip(x, values):
            ax_bar.text(xi, (0 if math.isnan(v) else v) + 0.01, "n/a" if math.isnan(v) else f"{v:.2f}",
                        ha="center", va="bottom", fontsize=8)
        for i in range(task.averaged or c, c):  # shown, not averaged (P2's unknown)
            ax_bar.get_xticklabels()[i].set_color("0.5")
    ax_bar.set_ylim(0, 1.05)
    ax_bar.set_xlabel("class")
    ax_bar.set_ylabel(f"per-class {label}")
    ax_bar.set_title(f"per-class {label}")
    ax_bar.grid(axis="y", alpha=0.3)
    ax_bar.legend(loc="upper right", fontsize=9)
    fig.suptitle(title)
    return fig


# --- architecture --------------------------------------------------------------------------------

def arch_figure(rows, total, *, title, input_size):
    """A block diagram, top to bottom: one box per stage (width grows with its channels), its
    output shape and parameter count beside it; ``rows`` and ``total`` as
    :func:`hw1.models.introspect.model_summary` returns them. The figure is 10 x (0.62 * boxes + 1.3) inches."""
    boxes = [("input", "RGB image", (3, input_size, input_size), 0)] + list(rows)
    n = len(boxes)
    height = 0.62 * n + 1.3
    fig = Figure(figsize=(10, height))
    ax = fig.add_axes([0, 0, 1, 1 - 0.6 / height])
    ax.set_xlim(0, 10)
    ax.set_ylim(n - 0.4, -0.9)
    ax.axis("off")
    channels = [s[0] if s else 1 for _, _, s, _ in boxes]
    max_log = math.log2(max(channels))
    ax.text(3.0, -0.55, "stage", ha="center", fontsize=9, fontweight="bold", color="0.3")
    ax.text(6.85, -0.55, "output shape", ha="center", fontsize=9, fontweight="bold", color="0.3")
    ax.text(8.95, -0.55, "params", ha="center", fontsize=9, fontweight="bold", color="0.3")
    cmap = matplotlib.colormaps["viridis"]
    for i, (name, desc, shape, params) in enumerate(boxes):
        frac = math.log2(max(channels[i], 1)) / max_log if max_log else 1
        w = 3.2 + 2.3 * frac
        colour = cmap(0.25 + 0.6 * frac)
        ax.add_patch(Rectangle((3.0 - w / 2, i - 0.3), w, 0.6, facecolor=(*colour[:3], 0.35),
                               edgecolor=colour, linewidth=1.2))
        ax.text(3.0, i - 0.08, name, ha="center", va="center", fontsize=9, fontweight="bold")
        ax.text(3.0, i + 0.16, desc, ha="center", va="center", fontsize=7.5, color="0.15")
        ax.text(6.85, i, format_shape(shape), ha="center", va="center", fontsize=9, family="monospace")
        ax.text(8.95, i, format_params(params) if params else "", ha="center", va="center", fontsize=9)
        if i:
            ax.add_patch(FancyArrowPatch((3.0, i - 0.7), (3.0, i - 0.3), arrowstyle="-|>", mutation_scale=10,
                                         color="0.35", linewidth=1))
    # wrapped to the figure's width: a model's title with its config can be longer than one line
    heading = f"{title}: {format_params(total)} parameters, input 3 x {input_size} x {input_size}"
    fig.suptitle(textwrap.fill(heading, width=110), fontsize=11, y=1 - 0.2 / height, va="center")
    return fig
