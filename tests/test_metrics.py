"""hw1.metrics (classification part): the confusion matrix against brute force, accuracy, and the
label-smoothed loss the training uses, checked against a hand computation."""
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from hw1 import metrics


def brute_force_cm(target, pred, n):
    cm = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(target, pred):
        if 0 <= t < n:
            cm[t, p] += 1
    return cm


@pytest.mark.parametrize("seed, n, size", [(0, 5, 200), (1, 50, 1000), (2, 7, (3, 11, 13))])
def test_confusion_matrix_vs_brute_force(seed, n, size):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, n, size=size)
    pred = rng.integers(0, n, size=size)
    cm = metrics.confusion_matrix(torch.from_numpy(target), torch.from_numpy(pred), n)
    assert cm.shape == (n, n) and cm.dtype == torch.int64
    np.testing.assert_array_equal(cm.numpy(), brute_force_cm(target.ravel(), pred.ravel(), n))
    assert cm.sum() == target.size


def test_confusion_matrix_rows_are_truth():
    target = torch.tensor([0, 0, 1, 2])
    pred = torch.tensor([1, 1, 1, 0])
    cm = metrics.confusion_matrix(target, pred, 3)
    np.testing.assert_array_equal(cm.numpy(), brute_force_cm(target.tolist(), pred.tolist(), 3))
    assert cm[0, 1] == 2 and cm.sum() == 4


@pytest.mark.reliability
@pytest.mark.parametrize("target, pred, message", [
    ([0, 1, 2], [9, 1, 2], "prediction 9 is outside the classes 0..6"),  # 7 * 0 + 9 would count as (1, 2)
    ([0, 1, 2], [0, -1, 2], "prediction -1 is outside the classes 0..6"),
    ([0, 255, 2], [0, 1, 2], "target 255 is outside the classes 0..6"),
    ([-1, 1, 2], [0, 1, 2], "target -1 is outside the classes 0..6"),
])
def test_confusion_matrix_refuses_values_outside_the_classes(target, pred, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        metrics.confusion_matrix(torch.tensor(target), torch.tensor(pred), 7)


def test_accuracy_and_per_class():
    rng = np.random.default_rng(3)
    n = 6
    target = rng.integers(0, n - 1, size=300)  # class n-1 never occurs in the ground truth
    pred = np.where(rng.random(300) < 0.6, target, rng.integers(0, n, size=300))
    cm = metrics.confusion_matrix(torch.from_numpy(target), torch.from_numpy(pred), n)
    assert metrics.accuracy(cm) == pytest.approx(float(np.mean(target == pred)))
    per_class = metrics.per_class_accuracy(cm)
    assert len(per_class) == n
    for c in range(n - 1):
        assert per_class[c] == pytest.approx(float(np.mean(pred[target == c] == c))), c
    assert math.isnan(per_class[n - 1])
    summary = metrics.cls_summary(cm)
    assert summary["acc"] == metrics.accuracy(cm)
    assert summary["per_class_acc"][:n - 1] == per_class[:n - 1] and math.isnan(summary["per_class_acc"][-1])


def test_accuracy_edge_cases():
    assert metrics.accuracy(torch.zeros(4, 4, dtype=torch.int64)) == 0.0
    cm = metrics.confusion_matrix(torch.tensor([2, 2, 1]), torch.tensor([2, 2, 1]), 4)
    assert metrics.accuracy(cm) == 1.0
    pc = metrics.per_class_accuracy(cm)
    assert pc[1] == pc[2] == 1.0 and math.isnan(pc[0]) and math.isnan(pc[3])


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothed_cross_entropy_matches_manual(eps):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 50, generator=g) * 3
    target = torch.randint(0, 50, (16,), generator=g)
    logp = torch.log_softmax(logits.double(), dim=1)
    nll = -logp[torch.arange(16), target]
    manual = ((1 - eps) * nll + eps * (-logp).mean(1)).mean()
    loss = nn.CrossEntropyLoss(label_smoothing=eps)(logits, target)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
