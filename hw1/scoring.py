"""Scoring files against ground truth as the course does: prediction CSVs (P1) and mask folders (P2)."""
import torch

from hw1 import metrics
from hw1.data.cls import read_labels_csv
from hw1.errors import UserError


def cls_confusion_from_csv(pred_csv, gt_csv, num_classes):
    """Confusion matrix of a ``filename,label`` prediction CSV against a ground-truth CSV.

    Both must list the same file names: a missing or extra file is an error, not silently skipped.
    """
    pred, gt = read_labels_csv(pred_csv), read_labels_csv(gt_csv)
    missing, extra = sorted(set(gt) - set(pred)), sorted(set(pred) - set(gt))
    if missing or extra:
        detail = "; ".join(f"{what} {len(names)} (e.g. {names[0]})"
                           for what, names in (("missing", missing), ("extra", extra)) if names)
        raise UserError(f"{pred_csv}: file names differ from {gt_csv}: {detail}")
    bad = [(n, v) for n, v in {**pred, **gt}.items() if not 0 <= v < num_classes]
    if bad:
        raise UserError(f"{pred_csv if bad[0][0] in pred else gt_csv}: label {bad[0][1]} of {bad[0][0]} "
                        f"is outside 0..{num_classes - 1}")
    names = sorted(gt)
    return metrics.confusion_matrix(torch.tensor([gt[n] for n in names]), torch.tensor([pred[n] for n in names]),
                                    num_classes)
