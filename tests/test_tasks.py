"""hw1.tasks: what differs between P1 and P2, in one place that the rest of hw1 asks.

A new problem is one module of ``hw1/tasks/`` (its :class:`~hw1.tasks.base.Task`) and one line of
the registry: the test below adds one that reuses P1's pieces under another name, and eval.py
scores with it, hw1.predict predicts with it, the report names it, and the training config and the
data checks follow its layout.
"""
import dataclasses
import shutil

import pytest

import eval as eval_script
from hw1 import predict
from hw1.errors import UserError
from hw1.metrics import accuracy
from hw1.models import get_spec, model_names
from hw1.report.runs import Run
from hw1.tasks import TASKS, get_task


def test_each_task_names_its_models_config_and_layout():
    for name, task in TASKS.items():
        assert task.name == name and task.config.task == name
        assert [get_spec(task.course_model(slot)).task for slot in "AB"] == [name, name]
        assert all(get_spec(m).num_classes == task.num_classes for m in model_names(name))
        assert task.default_checkpoint.is_file()
        assert task.config.data_dir == task.layout.root
    with pytest.raises(ValueError, match="unknown task 'p3'"):
        get_task("p3")


def test_the_data_follows_the_layout(cls_tiny_data, tmp_path):
    layout = get_task("cls").layout
    assert layout.require(cls_tiny_data) == cls_tiny_data and (cls_tiny_data / layout.labels).is_file()
    with pytest.raises(UserError, match=f"expected {layout.train}/ and {layout.val}/ here"):
        layout.require(tmp_path)


def test_a_new_task_is_one_entry(monkeypatch, cls_tiny_data, cls_tiny_checkpoint, capsys, tmp_path):
    monkeypatch.setitem(TASKS, "p3", dataclasses.replace(TASKS["cls"], name="p3", problem="P3",
                                                         metric_label="top-1", output_noun="labels"))
    gt = cls_tiny_data / TASKS["p3"].layout.labels
    pred = shutil.copy(gt, tmp_path / "pred.csv")
    summary = eval_script.main(["--task", "p3", "--pred", str(pred), "--gt", str(gt)])  # its scorer
    assert summary["acc"] == 1.0 and "accuracy: 1.0000" in capsys.readouterr().out
    # hw1.predict has a subcommand for it, which writes with its writer and says so in its words
    out = tmp_path / "p3.csv"
    rows = predict.main(["p3", str(cls_tiny_data / "val_50"), str(out), "--checkpoint", str(cls_tiny_checkpoint)])
    assert f"wrote {len(rows)} labels to {out}" in capsys.readouterr().out
    assert eval_script.main(["--task", "p3", "--pred", str(out), "--gt", str(gt)])["acc"] == \
        accuracy(TASKS["cls"].score(out, gt))
    assert Run(task="p3", slot="A").name == "P3 model A"  # the report's name of it
