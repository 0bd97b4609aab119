"""eval.py --task cls: scoring a prediction CSV or a checkpoint, the --json file, label and argument errors.

The model is the tiny DenseNet trained once per session (``cls_tiny_checkpoint`` in conftest.py).
"""
import json
import shutil

import numpy as np
import pytest
import torch

import eval as eval_py
from helpers import assert_one_line_error, contents
from helpers import read_csv_rows as _read_csv
from hw1.errors import UserError
from hw1.predict import predict_cls

pytestmark = pytest.mark.usefixtures("cls_one_thread")


# --- eval ---------------------------------------------------------------------------------------


def test_eval_checkpoint_and_csv_agree(cls_tiny_checkpoint, cls_tiny_data, tmp_path, capsys):
    val_dir, gt = cls_tiny_data / "val_50", cls_tiny_data / "val_gt.csv"
    pred = tmp_path / "pred.csv"
    rows = predict_cls(val_dir, pred, checkpoint=cls_tiny_checkpoint, device="cpu")
    truth = {name: int(label) for name, label in _read_csv(gt)[1:]}
    expected = sum(truth[name] == label for name, label in rows) / len(truth)

    from_csv = eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt)])
    out = capsys.readouterr().out
    from_ckpt = eval_py.main(["--task", "cls", "--checkpoint", str(cls_tiny_checkpoint), "--data-dir", str(val_dir),
                              "--labels", str(gt), "--device", "cpu", "--batch-size", "5"])
    # Labels from the file names (no --labels) are the same on this data.
    from_names = eval_py.main(["--task", "cls", "--checkpoint", str(cls_tiny_checkpoint), "--data-dir",
                               str(val_dir), "--device", "cpu"])
    assert from_csv["acc"] == pytest.approx(expected)
    assert from_ckpt["acc"] == pytest.approx(expected)
    assert from_names["acc"] == pytest.approx(expected)
    # And the run's own record of its best epoch.
    best = torch.load(cls_tiny_checkpoint, weights_only=True)
    assert best["metrics"]["val_acc"] == pytest.approx(expected)

    assert f"accuracy: {expected:.4f} ({round(expected * len(truth))}/{len(truth)} images)" in out
    per_class = from_csv["per_class_acc"]
    assert len(per_class) == 50 and all(np.isnan(per_class[3:]))
    for c in range(3):
        names = [n for n, label in truth.items() if label == c]
        assert per_class[c] == pytest.approx(sum(dict(rows)[n] == c for n in names) / len(names))
        assert f"class {c:2d}: {per_class[c]:.4f}" in out
    assert "class  3" not in out  # absent classes are not printed


def label_csvs(tmp_path, gt_text, pred_text):
    """(gt.csv, pred.csv) in ``tmp_path`` holding the two texts."""
    gt, pred = tmp_path / "gt.csv", tmp_path / "pred.csv"
    gt.write_text(gt_text)
    pred.write_text(pred_text)
    return gt, pred


def test_eval_writes_json(tmp_path):
    gt, pred = label_csvs(tmp_path, "filename,label\na.png,1\nb.png,2\nc.png,2\nd.png,0\n",
                          "filename,label\nd.png,0\nc.png,1\nb.png,2\na.png,1\n")
    out = tmp_path / "m.json"
    summary = eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt), "--json", str(out)])
    assert summary["acc"] == 0.75
    written = json.loads(out.read_text())
    assert written["acc"] == 0.75 and written["per_class_acc"][:3] == [1.0, 1.0, 0.5]


def test_eval_json_is_strict_json(tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("filename,label\na.png,1\nb.png,2\n")
    pred = shutil.copy(gt, tmp_path / "pred.csv")
    out = tmp_path / "m.json"
    eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt), "--json", str(out)])
    def strict(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    json.loads(out.read_text(), parse_constant=strict)


def test_eval_pred_missing_a_file(tmp_path):
    gt, pred = label_csvs(tmp_path, "filename,label\na.png,1\nb.png,2\n", "filename,label\na.png,1\n")
    with pytest.raises(UserError, match="missing 1 \\(e.g. b.png\\)") as info:
        eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt)])
    assert str(pred) in str(info.value)
    extra = tmp_path / "extra.csv"
    extra.write_text("filename,label\na.png,1\nb.png,2\nz.png,0\n")
    with pytest.raises(UserError, match="extra 1 \\(e.g. z.png\\)") as info:
        eval_py.main(["--task", "cls", "--pred", str(extra), "--gt", str(gt)])
    assert str(extra) in str(info.value)


@pytest.mark.reliability
def test_names_that_differ_only_in_unseen_characters_are_shown_quoted(tmp_path):
    # a NUL or a trailing space printed as is gave "missing 1 (e.g. b.png); extra 1 (e.g. b.png)"
    for odd in ("b.png\x00", "b.png "):
        gt, pred = label_csvs(tmp_path, "filename,label\na.png,1\nb.png,2\n", f"filename,label\na.png,1\n{odd},2\n")
        with pytest.raises(UserError) as info:
            eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt)])
        assert str(info.value).endswith(f"missing 1 (e.g. b.png); extra 1 (e.g. {odd!r})")


@pytest.mark.reliability
@pytest.mark.parametrize("gt_label, pred_label", [(0, 51), (49, 50), (3, -1)])
def test_eval_pred_label_out_of_range(tmp_path, gt_label, pred_label):
    gt, pred = label_csvs(tmp_path, f"filename,label\na.png,{gt_label}\nb.png,3\n",
                          f"filename,label\na.png,{pred_label}\nb.png,3\n")
    with pytest.raises(UserError, match="outside 0..49") as info:
        eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt)])
    assert str(pred) in str(info.value)


def test_eval_gt_label_out_of_range_names_the_gt_csv(tmp_path):
    gt, pred = label_csvs(tmp_path, "filename,label\na.png,50\n", "filename,label\na.png,1\n")
    with pytest.raises(UserError, match="outside 0..49") as info:
        eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt)])
    assert str(info.value).startswith(str(gt))


@pytest.mark.reliability
def test_eval_argument_errors(cls_tiny_checkpoint, capsys):
    with pytest.raises(UserError, match="--data-dir"):
        eval_py.main(["--task", "cls", "--checkpoint", str(cls_tiny_checkpoint)])
    with pytest.raises(UserError, match="--pred and --gt"):
        eval_py.main(["--task", "cls", "--pred", "x.csv"])
    with pytest.raises(UserError, match="not a seg one"):
        eval_py.main(["--task", "seg", "--checkpoint", str(cls_tiny_checkpoint), "--data-dir", "x"])
    with pytest.raises(SystemExit) as info:
        eval_py.run(eval_py.main, ["--task", "cls"])
    assert info.value.code == 2 and capsys.readouterr().err.startswith("error: give either")


@pytest.mark.reliability
def test_eval_refuses_the_ground_truth_as_its_own_prediction(cls_tiny_data, tmp_path):
    gt = cls_tiny_data / "val_gt.csv"
    (tmp_path / "link.csv").symlink_to(gt)
    for pred, what in ((gt, "file"), (tmp_path / "link.csv", "file"), (cls_tiny_data, "folder")):
        with pytest.raises(UserError) as info:
            eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt if what == "file" else cls_tiny_data)])
        assert str(info.value).endswith(f": the same {what}; --pred is the predictions to score against it")


@pytest.mark.reliability
def test_cli_malformed_gt_csv_keeps_the_previous_json(cli_runs):
    result, paths = cli_runs["malformed_csv"]
    assert_one_line_error(result, paths["bad"], "line 4: a.png is listed twice (first on line 2)")
    assert contents(paths["out"]) == paths["before"]

