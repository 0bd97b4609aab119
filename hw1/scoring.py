"""Scoring against ground truth as the course does: prediction CSVs (P1), mask folders (P2), or a model."""
import logging
from pathlib import Path

import torch

from hw1 import metrics
from hw1.data.cls import read_labels_csv
from hw1.data.cls import NUM_CLASSES as CLS_CLASSES
from hw1.data.images import folder_files
from hw1.data.masks import NUM_CLASSES, UNKNOWN, holds_class_indices, read_mask
from hw1.data.seg import MASK_SUFFIX, SAT_SUFFIX
from hw1.errors import UserError
from hw1.io import unfinished_moves

log = logging.getLogger(__name__)


def require_same_keys(pred, gt, message):
    """Raise ``message: missing N (e.g. x); extra M (e.g. y)`` unless ``pred`` and ``gt`` have the same keys."""
    missing, extra = sorted(gt.keys() - pred.keys()), sorted(pred.keys() - gt.keys())
    if missing or extra:
        # a name with a control character (a NUL, a tab) or an edge space is quoted, escapes shown:
        # "missing a.png, extra a.png" would not say what differs
        def shown(key):
            return repr(key) if not key.isprintable() or key != key.strip() else key

        detail = "; ".join(f"{what} {len(keys)} (e.g. {shown(keys[0])})"
                           for what, keys in (("missing", missing), ("extra", extra)) if keys)
        raise UserError(f"{message}: {detail}")


def cls_confusion_from_csv(pred_csv, gt_csv, num_classes=CLS_CLASSES):
    """Confusion matrix of a ``filename,label`` prediction CSV against a ground-truth CSV.

    Both must list the same file names: a missing or extra file is an error, not silently skipped.
    """
    pred, gt = read_labels_csv(pred_csv), read_labels_csv(gt_csv)
    require_same_keys(pred, gt, f"{pred_csv}: file names differ from {gt_csv}")
    for path, table in ((gt_csv, gt), (pred_csv, pred)):
        bad = [(n, v) for n, v in table.items() if not 0 <= v < num_classes]
        if bad:
            raise UserError(f"{path}: label {bad[0][1]} of {bad[0][0]} is outside 0..{num_classes - 1}")
    names = sorted(gt)
    return metrics.confusion_matrix(torch.tensor([gt[n] for n in names]), torch.tensor([pred[n] for n in names]),
                                    num_classes)


def mask_id(path):
    """Pairing key of a mask file: its stem without a ``_mask`` or ``_sat`` suffix (``0013_mask.png`` -> ``0013``)."""
    stem = path.stem
    for suffix in (Path(MASK_SUFFIX).stem, Path(SAT_SUFFIX).stem):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def list_masks(folder):
    """``{id: path}`` of the ``.png`` masks of ``folder``: every ``.png``, as the course's evaluator
    reads them, whatever its name (``0013_mask.png``, ``0013.png``, ``0013_sat.png``: the mask of
    ``0013`` written under its image's name).

    JPEGs (the course's validation folder holds the ``_sat.jpg`` images beside the masks) and hidden
    files are skipped silently, any other file and links that lead nowhere with a warning.
    """
    folder = Path(folder)
    moving = unfinished_moves(folder)
    if moving:
        raise UserError(f"{folder}: holds part of two sets of masks ({moving[0].name} is still moving in, or its run "
                        "was stopped while it did); run the command that wrote them again")
    found, skipped = {}, []
    for p in folder_files(folder):
        if p.suffix.lower() == ".png":
            # two files of one id (0013.png beside 0013_mask.png): either could be the one meant
            other = found.setdefault(mask_id(p), p)
            if other != p:
                first, second = sorted([other.name, p.name])
                raise UserError(f"{folder}: {first} and {second} are both masks of {mask_id(p)}; keep one "
                                "(every .png of a mask folder is a mask, as the course's evaluator reads it)")
        elif p.suffix.lower() not in (".jpg", ".jpeg"):
            skipped.append(p.name)
    if skipped:
        log.warning("%s: skipped %d file(s) that are not .png masks, e.g. %s", folder, len(skipped), skipped[0])
    if not found:
        raise UserError(f"{folder}: no .png masks in this folder")
    return found


def seg_confusion_from_dirs(pred_dir, gt_dir, num_classes=NUM_CLASSES):
    """Pooled confusion matrix of the ``.png`` masks of ``pred_dir`` against those of ``gt_dir``.

    Files pair by id (``0013.png``, ``0013_mask.png`` and ``0013_sat.png`` are all ``0013``); a
    mask without its partner, or of another size, is an error rather than a silently wrong score.
    """
    pred, gt = list_masks(pred_dir), list_masks(gt_dir)
    require_same_keys(pred, gt, f"{pred_dir}: mask ids differ from {gt_dir} (a mask's id is its name without "
                                "_mask, _sat and .png: xxxx_mask.png, xxxx_sat.png and xxxx.png are all xxxx)")
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    indices = []
    for i in sorted(gt):
        (p, rgb), g = read_mask(pred[i], with_rgb=True), read_mask(gt[i])
        if p.shape != g.shape:
            raise UserError(f"{pred[i]}: mask is {p.shape[1]}x{p.shape[0]} but {gt[i].name} is {g.shape[1]}x{g.shape[0]}")
        indices += [pred[i]] if holds_class_indices(rgb) else []
        cm += metrics.confusion_matrix(torch.from_numpy(g), torch.from_numpy(p), num_classes)
    if indices:
        log.warning("%s: %d of %d predicted masks (%s first) hold only the values 0-%d: class indices, not the "
                    "course's colours? Scored as the course scores them: unknown everywhere", pred_dir, len(indices),
                    len(gt), indices[0].name, UNKNOWN)
    return cm


def model_confusion(model, data_dir, *, task, labels_csv=None, size=None, batch_size=None, tta=None):
    """Pooled (C, C) confusion matrix of a :class:`hw1.predict.InferenceModel` on a labelled folder of
    ``task`` (a :class:`hw1.tasks.base.Task`; its ``eval_dataset``).

    cls: images named ``{label}_{id}`` (or labelled by ``labels_csv``); seg: image + mask pairs,
    optionally resized to ``size``; a model trained at a smaller scale (``model.size``) gets the
    images at that scale and its logits are upsampled to the masks, as ``hw1.predict`` does.
    Autocast and memory format as its plan says, as in ``hw1.predict``, so both routes score alike;
    ``tta`` as its ``--tta`` (class probabilities averaged over the views of a mode of
    :data:`hw1.engine.TTA_MODES`; None: the plan's choice).
    """
    from hw1.engine import evaluate

    dataset = task.eval_dataset(data_dir, labels_csv=labels_csv, size=size, model_size=model.size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size or task.eval_batch)
    model = model.with_tta(tta)
    return evaluate(model.module, loader, num_classes=task.num_classes, summarize=task.summarize, device=model.device,
                    amp_dtype=model.amp, channels_last=model.channels_last, tta=model.tta)["cm"]
