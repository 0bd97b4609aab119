"""hw1.summary reads a run folder and reports what the run measured."""
import json

import pytest

from hw1.errors import UserError
from hw1.summary import main, summarize_run


def test_summary_of_a_training_run(cls_tiny_run, tmp_path):
    run_dir = cls_tiny_run[0]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    args = json.loads((run_dir / "args.json").read_text())
    out = tmp_path / "s.json"
    main([str(run_dir), "--out", str(out)])
    summary = json.loads(out.read_text())
    assert summary == summarize_run(run_dir)
    best = max(records, key=lambda r: r["val_acc"])
    assert summary["metric"] == "acc" and summary["best"] == best["val_acc"] and summary["best_epoch"] == best["epoch"]
    assert summary["epochs"] == len(records) == args["epochs"]
    assert summary["train_seconds"] == pytest.approx(sum(r["train_seconds"] for r in records), abs=0.1)
    # wall time grows each epoch and covers training and evaluation
    walls = [r["wall_seconds"] for r in records]
    assert walls == sorted(walls) and summary["wall_seconds"] == walls[-1] >= summary["train_seconds"] - 0.1
    assert summary["command"].startswith("python train_cls.py ") and "--epochs" in summary["command"]
    assert summary["device"].startswith("CPU") and summary["torch"] == args["torch_version"]


def test_summary_of_several_runs_is_a_list(cls_tiny_run, tmp_path, capsys):
    main([str(cls_tiny_run[0]), str(cls_tiny_run[0]), "--out", str(tmp_path / "s.json")])
    assert json.loads((tmp_path / "s.json").read_text()) == [summarize_run(cls_tiny_run[0])] * 2


def test_summary_of_a_folder_without_a_run(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        summarize_run(tmp_path)


@pytest.mark.reliability
def test_summary_of_a_run_that_gained_ema_at_a_resume(cls_tiny_run, tmp_path):
    """Epochs before the resume have no val_raw_acc: the raw best is over the epochs that have one."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "args.json").write_text((cls_tiny_run[0] / "args.json").read_text())
    records = [json.loads(line) for line in (cls_tiny_run[0] / "metrics.jsonl").read_text().splitlines()]
    for i, r in enumerate(records):
        if i >= 2:
            r["val_raw_acc"] = 0.1 * i
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summarize_run(run_dir)
    assert summary["best_raw"] == pytest.approx(0.1 * (len(records) - 1)) == summary["last_raw"]


@pytest.mark.reliability
@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("val_acc"), "line 2: val_acc is missing, not a number"),
    (lambda r: r.update(train_seconds="12 s"), "line 2: train_seconds is '12 s', not a number"),
])
def test_summary_of_a_hand_edited_run_is_one_line(edit, message, cls_tiny_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "args.json").write_text((cls_tiny_run[0] / "args.json").read_text())
    records = [json.loads(line) for line in (cls_tiny_run[0] / "metrics.jsonl").read_text().splitlines()]
    edit(records[1])
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    from helpers import cli_error

    assert cli_error(capsys, main, [str(run_dir)]) == f"error: {run_dir / 'metrics.jsonl'}: {message}\n"
