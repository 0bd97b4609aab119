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


def test_figures_and_tables_take_the_task_s_classes(tmp_path):
    """The confusion figure and the report's score table name, colour and average the classes as the
    task says, whatever its name: here a 4-class task whose metric averages the first 3."""
    import torch
    from matplotlib.colors import to_hex

    from hw1 import plots
    from hw1.report import sections
    from hw1.report.blocks import Table

    p3 = dataclasses.replace(TASKS["cls"], name="p3", num_classes=4, class_names=("sea", "sand", "rock", "fog"),
                             averaged=3, palette=((255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)),
                             per_class_label="recall", metric_label="top-1", metric_help="top-1 of 4 classes")
    cm = torch.tensor([[3, 1, 0, 0], [0, 2, 0, 0], [0, 0, 4, 0], [0, 0, 1, 1]])
    fig = plots.confusion_figure(cm, task=p3, title="t")
    bars = fig.axes[1]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["0 sea", "1 sand", "2 rock", "3 fog"]
    assert [to_hex(t.get_color()) for t in bars.get_xticklabels()][2:] == ["#000000", "#808080"]  # fog: not averaged
    assert [to_hex(p.get_facecolor()) for p in bars.patches] == ["#ff0000", "#00ff00", "#0000ff", "#090909"]
    assert bars.get_ylabel() == "per-class recall"
    assert bars.get_legend_handles_labels()[1] == [p3.describe(cm)[0]]
    section = sections.scores("s", p3, [Run(task="cls", slot="A", model_name="net")], [[]], evaluate=False, notes=[])
    table = next(b for b in section.blocks if isinstance(b, Table))
    assert table.header == ["model", "source", "top-1", "sea", "sand", "rock"]
    assert table.rows == [["A: net", "no result", "-", "-", "-", "-"]]
    assert "top-1 of 4 classes" in section.blocks[0].text
