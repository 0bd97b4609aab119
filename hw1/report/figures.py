"""Figures drawn from the evidence (:mod:`hw1.report.evidence`), for the report and for viz.py's
``features`` and ``masks`` subcommands alike."""
from hw1 import plots


def feature_figures(features, *, num_classes, perplexity):
    """(PCA figure of the last checkpoint's features, t-SNE figure of every checkpoint's) of
    :class:`~hw1.report.evidence.Features`."""
    f = features
    desc = (f"{f.model_name} penultimate features ({f.arrays[-1].shape[1]}-d), {len(f.labels)} images of "
            f"{f.data.name}")
    pca = plots.pca_figure(f.arrays[-1], f.labels, num_classes=num_classes, title=f"PCA: {desc}, {f.titles[-1]}")
    tsne = plots.tsne_figure(f.arrays, f.labels, num_classes=num_classes, titles=f.titles, suptitle=f"t-SNE: {desc}",
                             perplexity=perplexity)
    return pca, tsne


def masks_figure(masks, *, overlay_alpha=None):
    """Image, ground truth and each checkpoint's mask, one row per image, of :class:`~hw1.report.evidence.Masks`."""
    return plots.mask_grid(masks.images, masks.truths, masks.preds, ids=masks.ids, pred_titles=masks.titles,
                           overlay_alpha=overlay_alpha)
