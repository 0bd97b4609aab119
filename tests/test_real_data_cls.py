"""The course's P1 data, when it is extracted at hw1_data/p1_data: both splits load as expected."""
from pathlib import Path

import pytest
import torch

from hw1.data.cls import label_from_name, load_cls_split, read_labels_csv

REAL_P1 = Path(__file__).resolve().parents[1] / "hw1_data" / "p1_data"

pytestmark = [
    pytest.mark.skipif(not REAL_P1.is_dir(), reason=f"{REAL_P1} not extracted"),
    pytest.mark.usefixtures("cls_one_thread"),
]


def _check(ds, n, per_class):
    assert len(ds) == n
    assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.files == sorted(ds.files)
    assert torch.equal(torch.bincount(ds.labels, minlength=50), torch.full((50,), per_class))
    assert ds.labels.min() == 0 and ds.labels.max() == 49
    # Not a blank decode: real photos have spread in every split.
    assert ds.images.float().std() > 20


def test_train_split_from_names():
    ds = load_cls_split(REAL_P1 / "train_50")
    _check(ds, 22_500, 450)


def test_val_split_from_csv():
    ds = load_cls_split(REAL_P1 / "val_50", labels_csv=REAL_P1 / "val_gt.csv")
    _check(ds, 2_500, 50)
    assert ds.labels.tolist() == [label_from_name(f) for f in ds.files]
    table = read_labels_csv(REAL_P1 / "val_gt.csv")
    assert sorted(table) == ds.files


def test_the_shipped_model_scores_what_is_recorded(tmp_path):
    """hw1_1.sh's default (the shipped model A, with the TTA its export records) on val_50, scored as the course does,
    gives the accuracy results/p1_densenet_cpu.json records (up to another CPU's rounding)."""
    import json

    from hw1.metrics import accuracy
    from hw1.predict import predict_cls
    from hw1.scoring import cls_confusion_from_csv

    recorded = json.loads((REAL_P1.parents[1] / "results" / "p1_densenet_cpu.json").read_text())["val_acc_tta"]
    rows = predict_cls(REAL_P1 / "val_50", tmp_path / "pred.csv", device="cpu")
    assert len(rows) == 2500
    cm = cls_confusion_from_csv(tmp_path / "pred.csv", REAL_P1 / "val_gt.csv")
    assert accuracy(cm) == pytest.approx(recorded, abs=0.003)
