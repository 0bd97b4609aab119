"""hw1.tasks: what differs between P1 and P2, in one place that the rest of hw1 asks.

A new problem is one module of ``hw1/tasks/`` (its :class:`~hw1.tasks.base.Task`) and one line of
the registry: the tests below add one that reuses P1's pieces under another name (eval.py scores
with it, hw1.predict predicts with it, the report names it, the training config and the data
checks follow its layout), one whose classes the figures and tables show as it says, and one in a
file of its own, with a model of its own, that trains, predicts, scores and benchmarks.
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


TASK_FILE = '''
"""P3: P1's 32x32 photos as a problem of its own, with a model of its own."""
import dataclasses
from dataclasses import dataclass

from hw1.config import TASK_GROUP, knob
from hw1.models import model_names
from hw1.models.densenet import densenet
from hw1.models.spec import ModelSpec
from hw1.recipes import SEED
from hw1.tasks import cls


@dataclass
class P3Config(cls.ClsConfig):
    """train_p3.py"""
    model: str = knob("p3net", "(default: %(default)s)", group=TASK_GROUP, choices=lambda: model_names("p3"))
    task = "p3"


def write_predictions(image_dir, output_csv, **kwargs):
    from hw1.predict import predict_cls

    return predict_cls(image_dir, output_csv, task="p3", **kwargs)


SPEC = ModelSpec(name="p3net", task="p3", slot="A", builder=densenet, num_classes=50, input_size=32,
                 recipes={"default": {**SEED, "epochs": 1, "weights": "none"}})
TASK = dataclasses.replace(cls.TASK, name="p3", problem="P3", script="train_p3.py", config=P3Config,
                           shipped_model="p3net", write_predictions=write_predictions, output_noun="labels")
'''


def test_a_third_task_in_one_file_trains_predicts_scores_and_benchmarks(monkeypatch, cls_tiny_data, tmp_path,
                                                                          capsys):
    import argparse
    import json
    import textwrap

    from hw1 import models
    from hw1.bench.cli import main as bench_main
    from hw1.flags import add_training_args
    from hw1.trainer import start_run, train

    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "p3_task.py").write_text(textwrap.dedent(TASK_FILE))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setitem(models.REGISTRY, "p3net", "p3_task:SPEC")  # its model's registry line
    import p3_task

    monkeypatch.setitem(TASKS, "p3", p3_task.TASK)  # the task's registry line
    # trains, as a train_p3.py of two calls would
    out = tmp_path / "run"
    parser = add_training_args(argparse.ArgumentParser(), p3_task.P3Config)
    config = start_run(parser, ["--data-dir", str(cls_tiny_data), "--out-dir", str(out), "--depth", "10",
                                "--growth-rate", "4", "--batch-size", "36", "--aug", "none", "--device", "cpu",
                                "--amp", "none", "--no-progress"], p3_task.TASK)
    record = train(config, p3_task.TASK.load_splits)
    assert record["epoch"] == 1 and 0 <= record["val_acc"] <= 1
    assert json.loads((out / "args.json").read_text())["model"] == "p3net"
    # predicts with its writer, which takes its checkpoints (and refuses P1's)
    pred = tmp_path / "p3.csv"
    rows = predict.main(["p3", str(cls_tiny_data / "val_50"), str(pred), "--checkpoint", str(out / "best.pth")])
    assert len(rows) == 12 and f"wrote 12 labels to {pred}" in capsys.readouterr().out
    with pytest.raises(UserError, match="p3"):
        predict.main(["cls", str(cls_tiny_data / "val_50"), str(tmp_path / "x.csv"), "--checkpoint",
                      str(out / "best.pth")])
    # scores its predictions and its checkpoint, alike
    gt = str(cls_tiny_data / "val_gt.csv")
    by_pred = eval_script.main(["--task", "p3", "--pred", str(pred), "--gt", gt])
    by_checkpoint = eval_script.main(["--task", "p3", "--checkpoint", str(out / "best.pth"), "--data-dir",
                                      str(cls_tiny_data / "val_50"), "--labels", gt, "--no-tta"])
    assert by_pred["acc"] == by_checkpoint["acc"]
    # and its model benchmarks
    results = bench_main(["--models", "p3net", "--parts", "models", "--configs", "fp32", "--batch-size", "2",
                          "--steps", "1", "--warmup", "0", "--repeats", "1", "--matmul-size", "64",
                          "--device", "cpu", "--out", str(tmp_path / "bench.json"), "--depth", "10",
                          "--growth-rate", "4"])
    result = results["models"]["p3net"]
    assert result["input"] == [3, 32, 32] and result["configs"]["fp32"]["train_img_s"] > 0
