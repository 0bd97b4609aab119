"""P2 metrics against a brute-force numpy version of the course's mIoU, and the segmentation loss.

The reference is ``mean_iou_evaluate.py``: for each class 0-5, over the pixels of all images
pooled, ``TP / (TP + FP + FN)`` with ``FP = (pred == c) & (gt != c)`` -- so ground-truth unknown
pixels (class 6) predicted as ``c`` are false positives of ``c`` -- then the mean over the classes.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hw1.data.masks import NUM_CLASSES, UNKNOWN
from hw1.losses import SegLoss, class_weights, lovasz_softmax
from hw1.metrics import confusion_matrix, image_miou, iou_per_class, mean_iou, seg_summary

SCORED = range(6)  # the course averages classes 0-5; 6 (unknown) is not scored


def brute_iou(gt, pred, c):
    """IoU of class ``c`` pixel by pixel, or None when ``c`` is in neither ``gt`` nor ``pred``."""
    tp = int(np.sum((pred == c) & (gt == c)))
    fp = int(np.sum((pred == c) & (gt != c)))
    fn = int(np.sum((pred != c) & (gt == c)))
    return None if tp + fp + fn == 0 else tp / (tp + fp + fn)


def brute_miou(gt, pred):
    """The course's mIoU over classes 0-5, leaving out classes absent from both (see ``mean_iou``)."""
    ious = [v for v in (brute_iou(gt, pred, c) for c in SCORED) if v is not None]
    return sum(ious) / len(ious)


def pooled_cm(pairs):
    """Sum of the per-image confusion matrices of ``[(gt, pred), ...]`` numpy masks."""
    return sum(confusion_matrix(torch.from_numpy(g), torch.from_numpy(p), NUM_CLASSES) for g, p in pairs)


def concat(pairs):
    """All pixels of all images as two flat arrays: the brute force pools by concatenation."""
    return np.concatenate([g.ravel() for g, _ in pairs]), np.concatenate([p.ravel() for _, p in pairs])


def random_pairs(rng, n, *, p_gt, p_pred, agree=0.5):
    """``n`` (gt, pred) masks of random sizes; ``pred`` copies ``gt`` on about ``agree`` of the pixels."""
    pairs = []
    for _ in range(n):
        shape = tuple(rng.integers(3, 40, size=2))
        gt = rng.choice(NUM_CLASSES, size=shape, p=p_gt).astype(np.uint8)
        pred = rng.choice(NUM_CLASSES, size=shape, p=p_pred).astype(np.uint8)
        pred = np.where(rng.random(shape) < agree, gt, pred).astype(np.uint8)
        pairs.append((gt, pred))
    return pairs


UNIFORM = np.full(NUM_CLASSES, 1 / NUM_CLASSES)
# Skewed like the course data, with unknown pixels in the ground truth but (as from a model trained
# with unknown as the ignore index) rarely predicted.
SKEWED_GT = np.array([0.12, 0.45, 0.08, 0.1, 0.06, 0.09, 0.1])
SKEWED_PRED = np.array([0.15, 0.5, 0.1, 0.1, 0.05, 0.09, 0.01])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p_gt, p_pred", [(UNIFORM, UNIFORM), (SKEWED_GT, SKEWED_PRED)])
def test_mean_iou_matches_brute_force_pooled_over_images(seed, p_gt, p_pred):
    rng = np.random.default_rng(seed)
    pairs = random_pairs(rng, int(rng.integers(1, 6)), p_gt=p_gt, p_pred=p_pred, agree=rng.uniform(0, 0.9))
    cm = pooled_cm(pairs)
    gt, pred = concat(pairs)
    assert cm.sum().item() == gt.size
    ious = iou_per_class(cm)
    assert len(ious) == NUM_CLASSES
    for c in range(NUM_CLASSES):
        expected = brute_iou(gt, pred, c)
        if expected is None:
            assert math.isnan(ious[c])
        else:
            assert ious[c] == pytest.approx(expected, abs=1e-12)
    assert mean_iou(cm) == pytest.approx(brute_miou(gt, pred), abs=1e-12)


def test_pooled_is_not_the_mean_of_per_image_scores():
    # Image 1 is large and mostly right, image 2 tiny and all wrong: the pooled mIoU weights
    # pixels, not images, so it is far from the average of the two per-image mIoUs.
    big_gt = np.zeros((20, 20), np.uint8)
    big_gt[:, 10:] = 1
    big_pred = big_gt.copy()
    big_pred[0, 0] = 1
    small_gt = np.array([[0, 1]], np.uint8)
    small_pred = np.array([[1, 0]], np.uint8)
    pairs = [(big_gt, big_pred), (small_gt, small_pred)]
    pooled = mean_iou(pooled_cm(pairs))
    assert pooled == pytest.approx(brute_miou(*concat(pairs)), abs=1e-12)
    per_image = np.mean([brute_miou(g, p) for g, p in pairs])
    assert abs(pooled - per_image) > 0.3


@pytest.mark.parametrize("seed", range(3))
def test_image_miou_is_the_brute_force_of_that_image_alone(seed):
    (gt, pred), = random_pairs(np.random.default_rng(seed), 1, p_gt=SKEWED_GT, p_pred=SKEWED_PRED)
    miou = image_miou(torch.from_numpy(gt), torch.from_numpy(pred), NUM_CLASSES)
    assert miou == pytest.approx(brute_miou(gt, pred), abs=1e-12)


def test_unknown_ground_truth_counts_as_false_positive_of_the_predicted_class():
    gt = np.array([[0, 0, UNKNOWN, UNKNOWN]], np.uint8)
    pred = np.array([[0, 0, 0, 1]], np.uint8)
    ious = iou_per_class(pooled_cm([(gt, pred)]))
    # class 0: TP 2, FP 1 (the unknown pixel predicted 0); class 1: TP 0, FP 1 -> IoU 0, and counted
    assert ious[0] == pytest.approx(brute_iou(gt, pred, 0)) == pytest.approx(2 / 3)
    assert ious[1] == 0.0
    assert mean_iou(pooled_cm([(gt, pred)])) == pytest.approx(brute_miou(gt, pred)) == pytest.approx(1 / 3)


def test_predicting_unknown_is_a_false_negative():
    gt = np.array([[2, 2, 2, 2]], np.uint8)
    pred = np.array([[2, 2, UNKNOWN, UNKNOWN]], np.uint8)
    cm = pooled_cm([(gt, pred)])
    assert iou_per_class(cm)[2] == pytest.approx(0.5)
    # classes 0, 1, 3, 4, 5 appear nowhere; unknown is not scored even though it was predicted
    assert mean_iou(cm) == pytest.approx(0.5)


def test_class_absent_from_truth_and_prediction_is_left_out_of_the_mean():
    gt = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 0, 1, 0]], np.uint8)
    cm = pooled_cm([(gt, pred)])
    ious = iou_per_class(cm)
    assert all(math.isnan(ious[c]) for c in (2, 3, 4, 5, 6))
    # mean over the present classes 0 and 1 only (not over all six, which would give a sixth of it)
    expected = (brute_iou(gt, pred, 0) + brute_iou(gt, pred, 1)) / 2
    assert mean_iou(cm) == pytest.approx(expected) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert not math.isnan(mean_iou(cm))


def test_class_in_truth_but_never_predicted_scores_zero_and_counts():
    gt = np.array([[0, 0, 3, 3]], np.uint8)
    pred = np.array([[0, 0, 0, 0]], np.uint8)
    cm = pooled_cm([(gt, pred)])
    assert iou_per_class(cm)[3] == 0.0
    assert mean_iou(cm) == pytest.approx((0.5 + 0.0) / 2)


def test_class_predicted_but_absent_from_truth_scores_zero_and_counts():
    gt = np.array([[0, 0, 0, 0]], np.uint8)
    pred = np.array([[0, 0, 5, 0]], np.uint8)
    cm = pooled_cm([(gt, pred)])
    assert iou_per_class(cm)[5] == 0.0
    assert mean_iou(cm) == pytest.approx((0.75 + 0.0) / 2)


def test_only_unknown_everywhere_is_nan():
    gt = np.full((2, 2), UNKNOWN, np.uint8)
    assert math.isnan(mean_iou(pooled_cm([(gt, gt.copy())])))


def test_perfect_prediction_is_one():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, NUM_CLASSES, size=(16, 16)).astype(np.uint8)
    assert mean_iou(pooled_cm([(gt, gt.copy())])) == 1.0


def test_summarize_seg():
    rng = np.random.default_rng(1)
    pairs = random_pairs(rng, 3, p_gt=SKEWED_GT, p_pred=SKEWED_PRED)
    cm = pooled_cm(pairs)
    gt, pred = concat(pairs)
    s = seg_summary(cm)
    assert set(s) == {"miou", "iou", "pixel_acc"}
    assert isinstance(s["miou"], float) and isinstance(s["pixel_acc"], float)
    assert isinstance(s["iou"], list) and len(s["iou"]) == NUM_CLASSES
    assert s["miou"] == pytest.approx(brute_miou(gt, pred), abs=1e-12)
    assert s["iou"][:6] == pytest.approx([brute_iou(gt, pred, c) for c in SCORED], abs=1e-12)
    # pixel accuracy is over every pixel, unknown ground truth included
    assert s["pixel_acc"] == pytest.approx(np.mean(gt == pred), abs=1e-12)


# --- SegLoss ----------------------------------------------------------------------------------

def manual_ce(logits, target, ignore=UNKNOWN):
    """Mean over non-ignored pixels of -log softmax(logits)[target], written out by hand."""
    logp = logits - logits.logsumexp(1, keepdim=True)
    n, _, h, w = logits.shape
    total, count = 0.0, 0
    for b in range(n):
        for y in range(h):
            for x in range(w):
                t = int(target[b, y, x])
                if t != ignore:
                    total -= float(logp[b, t, y, x])
                    count += 1
    return total / count


def test_seg_loss_ignores_unknown_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 3, 4, dtype=torch.float64)
    target = torch.full((2, 3, 4), UNKNOWN, dtype=torch.int64)
    target[1, 2, 1] = 4
    loss = SegLoss()({"out": logits}, target)
    expected = -(logits[1, :, 2, 1].log_softmax(0)[4]).item()
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    # the logits at unknown pixels get no gradient
    logits.requires_grad_(True)
    SegLoss()({"out": logits}, target).backward()
    grad = logits.grad.abs().sum(1)
    assert grad[1, 2, 1] > 0 and grad.sum() == grad[1, 2, 1]


def test_seg_loss_mixed_targets_match_manual_ce():
    torch.manual_seed(1)
    logits = torch.randn(2, NUM_CLASSES, 4, 5, dtype=torch.float64)
    target = torch.randint(0, NUM_CLASSES, (2, 4, 5))
    assert (target == UNKNOWN).any() and (target != UNKNOWN).any()
    assert SegLoss()({"out": logits}, target).item() == pytest.approx(manual_ce(logits, target), rel=1e-10)


@pytest.mark.parametrize("aux_weight", [0.5, 0.25])
def test_seg_loss_adds_weighted_aux(aux_weight):
    torch.manual_seed(2)
    out = torch.randn(2, NUM_CLASSES, 4, 5, dtype=torch.float64)
    aux = torch.randn(2, NUM_CLASSES, 4, 5, dtype=torch.float64)
    target = torch.randint(0, NUM_CLASSES, (2, 4, 5))
    loss = SegLoss(aux_weight=aux_weight)({"out": out, "aux": aux}, target)
    expected = manual_ce(out, target) + aux_weight * manual_ce(aux, target)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    # without "aux" in the output, or with weight 0, only the main head counts
    assert SegLoss(aux_weight=aux_weight)({"out": out}, target).item() == pytest.approx(manual_ce(out, target))
    assert SegLoss(aux_weight=0.0)({"out": out, "aux": aux}, target).item() == pytest.approx(manual_ce(out, target))


def test_seg_loss_is_cross_entropy_of_the_engine_logits():
    # The loss of a perfect, confident prediction is ~0 and of a uniform one log(7).
    target = torch.tensor([[[0, 1], [5, UNKNOWN]]])
    confident = F.one_hot(target.clamp(max=5), NUM_CLASSES).permute(0, 3, 1, 2).double() * 50
    assert SegLoss()({"out": confident}, target).item() == pytest.approx(0.0, abs=1e-12)
    uniform = torch.zeros(1, NUM_CLASSES, 2, 2, dtype=torch.float64)
    assert SegLoss()({"out": uniform}, target).item() == pytest.approx(math.log(NUM_CLASSES))


def test_seg_loss_is_zero_not_nan_without_labelled_pixels():
    logits = torch.randn(2, NUM_CLASSES, 3, 3, requires_grad=True)
    target = torch.full((2, 3, 3), UNKNOWN)
    loss = SegLoss()({"out": logits}, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


# --- Lovász-softmax (--lovasz) ------------------------------------------------------------------

def brute_lovasz(probs, target, ignore=UNKNOWN):
    """The Lovász extension of each present class's Jaccard loss, from its definition: errors
    sorted in decreasing order, each weighted by how much adding its pixel to the mispredicted set
    M raises Delta_J(M) = |M| / |fg u M|; averaged over the classes present in the target."""
    p = probs.permute(1, 0, 2, 3).reshape(probs.shape[1], -1).tolist()
    t = target.reshape(-1).tolist()
    pixels = [i for i, v in enumerate(t) if v != ignore]
    losses = []
    for c in range(probs.shape[1]):
        fg = {i for i in pixels if t[i] == c}
        if c == ignore or not fg:
            continue
        errors = {i: abs((t[i] == c) - p[c][i]) for i in pixels}
        order = sorted(pixels, key=lambda i: -errors[i])
        total, prev, m = 0.0, 0.0, set()
        for i in order:
            m.add(i)
            delta = len(m) / len(fg | m)
            total += errors[i] * (delta - prev)
            prev = delta
        losses.append(total)
    return sum(losses) / len(losses)


def test_lovasz_softmax_is_the_lovasz_extension_of_the_jaccard_loss():
    torch.manual_seed(3)
    logits = torch.randn(2, NUM_CLASSES, 3, 4, dtype=torch.float64)
    target = torch.randint(0, NUM_CLASSES, (2, 3, 4))
    target[0, 0, 0] = UNKNOWN
    expected = brute_lovasz(logits.softmax(1), target)
    assert lovasz_softmax(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_lovasz_softmax_of_hard_predictions_is_one_minus_the_iou():
    # at 0/1 errors the extension equals the set function: mean over present classes of 1 - IoU
    torch.manual_seed(4)
    target = torch.randint(0, 6, (2, 5, 6))
    pred = torch.where(torch.rand(2, 5, 6) < 0.6, target, torch.randint(0, 6, (2, 5, 6)))
    logits = F.one_hot(pred, NUM_CLASSES).permute(0, 3, 1, 2).double() * 100
    gt, pr = target.numpy(), pred.numpy()
    expected = np.mean([1 - brute_iou(gt, pr, c) for c in SCORED if (gt == c).any()])
    assert lovasz_softmax(logits, target).item() == pytest.approx(expected, abs=1e-9)


def test_lovasz_term_scores_a_grid_of_the_logits_and_ignores_unknown():
    torch.manual_seed(5)
    logits = torch.randn(2, NUM_CLASSES, 16, 16, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, NUM_CLASSES, (2, 16, 16))
    loss = SegLoss(lovasz=0.5)({"out": logits}, target)
    s = SegLoss.LOVASZ_STRIDE
    grid = (..., slice(s // 2, None, s), slice(s // 2, None, s))
    expected = manual_ce(logits.detach(), target) + 0.5 * brute_lovasz(logits.detach()[grid].softmax(1), target[grid])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # only cross-entropy reaches the pixels off the grid; no term reaches the unknown ones
    loss.backward()
    grad = logits.grad.abs().sum(1)
    assert (grad[target == UNKNOWN] == 0).all()
    ce_only = logits.detach().clone().requires_grad_(True)
    SegLoss()({"out": ce_only}, target).backward()
    off_grid = torch.ones_like(target, dtype=torch.bool)
    off_grid[grid] = False
    assert torch.equal(logits.grad.permute(0, 2, 3, 1)[off_grid], ce_only.grad.permute(0, 2, 3, 1)[off_grid])
    assert not torch.allclose(logits.grad[grid], ce_only.grad[grid])


def test_lovasz_softmax_without_labelled_pixels_is_zero_with_a_graph():
    logits = torch.randn(1, NUM_CLASSES, 4, 4, requires_grad=True)
    loss = lovasz_softmax(logits, torch.full((1, 4, 4), UNKNOWN))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


# --- class-weighted loss (--class-weights enet) ---------------------------------------------------

def test_enet_class_weights_follow_the_formula_from_pixel_shares():
    # 60 % class 1, 30 % class 0, 10 % class 4, a few unknown pixels (ignored), other classes absent
    masks = torch.tensor([1] * 60 + [0] * 30 + [4] * 10 + [UNKNOWN] * 7, dtype=torch.uint8).reshape(1, 107)
    w = class_weights(masks, "enet", num_classes=NUM_CLASSES)
    share = {0: 0.3, 1: 0.6, 2: 0.0, 3: 0.0, 4: 0.1, 5: 0.0}
    for c, p in share.items():
        assert w[c].item() == pytest.approx(1 / math.log(1.02 + p), rel=1e-6)
    assert w[UNKNOWN] == 0
    mild = class_weights(masks, "inv-sqrt", num_classes=NUM_CLASSES)
    norm = 0.3 / math.sqrt(0.3) + 0.6 / math.sqrt(0.6) + 0.1 / math.sqrt(0.1)  # a pixel-weighted mean of 1
    for c, p in share.items():
        assert mild[c].item() == pytest.approx(1 / math.sqrt(p) / norm if p else 0.0, rel=1e-6)
    assert mild[UNKNOWN] == 0
    assert class_weights(masks, "none", num_classes=NUM_CLASSES) is None
    with pytest.raises(ValueError, match="class weights"):
        class_weights(masks, "median", num_classes=NUM_CLASSES)


def test_weighted_seg_loss_is_the_weighted_mean_over_labelled_pixels():
    torch.manual_seed(2)
    logits = torch.randn(2, NUM_CLASSES, 4, 5, dtype=torch.float64)
    target = torch.randint(0, NUM_CLASSES, (2, 4, 5))
    target[0, 0, 0] = UNKNOWN
    weight = torch.tensor([2.0, 0.5, 3.0, 1.0, 4.0, 1.5, 0.0])
    loss = SegLoss(weight=weight)({"out": logits}, target).item()
    # by hand: sum of w[t] * -log p_t over labelled pixels / sum of w[t]
    logp = logits.log_softmax(1)
    num = den = 0.0
    for b, y, x in np.ndindex(*target.shape):
        t = int(target[b, y, x])
        if t != UNKNOWN:
            num -= float(weight[t]) * float(logp[b, t, y, x])
            den += float(weight[t])
    assert loss == pytest.approx(num / den, rel=1e-6)
    # and it is what cross_entropy's own weighted mean gives
    expected = F.cross_entropy(logits, target, weight=weight.double(), ignore_index=UNKNOWN)
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    # a batch of unknown pixels only still costs 0, not NaN
    assert SegLoss(weight=weight)({"out": logits}, torch.full_like(target, UNKNOWN)).item() == 0
