"""Metrics for both tasks from one pooled confusion matrix, as the course computes them.

Rows are ground truth, columns predictions (torchvision's ``ConfusionMatrix`` convention).
Classification accuracy is ``trace / total``; segmentation mIoU is the course's
``mean_iou_evaluate.py``: per class ``TP / (TP + FP + FN)`` over pixels pooled across all images,
averaged over classes 0-5. The unknown class (6) is not averaged, but its ground-truth pixels
still count as false positives of whatever class is predicted there.
"""
import math

import torch


def confusion_matrix(target, pred, num_classes):
    """(num_classes, num_classes) int64 counts; ``target`` and ``pred`` are integer tensors of one shape.

    A value outside ``[0, num_classes)`` on either side is a ValueError naming it: counted, it would
    land in another cell (``num_classes * t + p``) and the score would be wrong without a sign.
    """
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    if target.numel():
        # one read of all four bounds: bincount waits for the device anyway
        bounds = torch.stack([target.min(), target.max(), pred.min(), pred.max()]).tolist()
        for what, value in zip(("target", "target", "prediction", "prediction"), bounds):
            if not 0 <= value < num_classes:
                raise ValueError(f"{what} {value} is outside the classes 0..{num_classes - 1}")
    idx = num_classes * target + pred
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy(cm):
    total = cm.sum().item()
    return cm.diag().sum().item() / total if total else 0.0


def per_class_accuracy(cm):
    """Recall of each class; NaN for a class with no samples (so it cannot pose as 0% or 100%)."""
    support = cm.sum(1).double()
    return (cm.diag().double() / support).masked_fill(support == 0, float("nan")).tolist()


def iou_per_class(cm):
    """TP / (TP + FP + FN) for every class; NaN where a class is absent from both truth and prediction."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return (tp / union).masked_fill(union == 0, float("nan")).tolist()


def mean_iou(cm, classes=range(6)):
    """Mean IoU over ``classes`` (the course's 0-5).

    A class absent from both ground truth and prediction has no defined IoU; it is left out of the
    mean rather than counted as 0 (which would punish a correct "nothing here") or as 1. The
    course's evaluator divides 0 by 0 there; on its validation set every class is present, so the
    two agree on the real data.
    """
    ious = [iou_per_class(cm)[c] for c in classes]
    present = [v for v in ious if v == v]
    return sum(present) / len(present) if present else float("nan")


def image_miou(target, pred, num_classes):
    """:func:`mean_iou` of one image's (H, W) class masks alone, e.g. to title a predicted mask.

    Not the course's score of a set, which pools the pixels of all images into one matrix first.
    """
    return mean_iou(confusion_matrix(target, pred, num_classes))


def cls_summary(cm):
    return {"acc": accuracy(cm), "per_class_acc": per_class_accuracy(cm)}


def seg_summary(cm):
    return {"miou": mean_iou(cm), "iou": iou_per_class(cm), "pixel_acc": accuracy(cm)}


def cls_lines(cm):
    """What eval.py prints of a P1 score: the accuracy, then one line per class."""
    n = cm.sum().item()
    lines = [f"accuracy: {accuracy(cm):.4f} ({cm.diag().sum().item()}/{n} images)", "per class:"]
    support = cm.sum(1).tolist()
    return lines + [f"  class {c:2d}: {a:.4f} ({support[c]} images)"
                    for c, a in enumerate(per_class_accuracy(cm)) if not math.isnan(a)]


def seg_lines(cm):
    """What eval.py prints of a P2 score: the mIoU, then the IoU of each class it averages."""
    from hw1.data.masks import CLASS_NAMES

    lines = [f"mIoU: {mean_iou(cm):.4f} (classes 0-5, {cm.sum().item()} pixels)", "per class IoU:"]
    return lines + [f"  {c} {CLASS_NAMES[c]:<11s} {iou:.4f}" for c, iou in enumerate(iou_per_class(cm)[:6])]
