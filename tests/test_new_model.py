"""Adding a model is its file plus one registry line.

The file below is a model hw1 does not know: torchvision's ResNet-18 with a 50-class head, a
hyperparameter of its own (dropout before the head: a keyword-only argument of its builder, its
default there) and a spec that gives only what a spec must (no architecture stages, no runtime
hints). Registered with one line, it trains (train_cls.py, where ``--head-dropout`` is a flag
made from the builder), predicts (hw1.predict), draws its architecture figure (viz.py arch, from
the model's top-level children) and benchmarks (python -m hw1.bench).
"""
import json
import textwrap

import pytest

import train_cls
import viz
from hw1 import models
from hw1.bench.cli import main as bench_main
from hw1.errors import UserError
from hw1.predict import predict_cls

pytestmark = pytest.mark.usefixtures("cls_one_thread")

MODEL_FILE = '''
"""torchvision's ResNet-18 for P1, trained from scratch."""
import torchvision
from torch import nn

from hw1.models.spec import ModelSpec
from hw1.recipes import SEED


def resnet18(*, head_dropout: float = 0.0, num_classes=50, weights="none"):
    model = torchvision.models.resnet18(num_classes=num_classes)
    if head_dropout:
        model.fc = nn.Sequential(nn.Dropout(head_dropout), model.fc)
    return model


SPEC = ModelSpec(name="resnet18", task="cls", builder=resnet18, num_classes=50, input_size=32,
                 recipes={"default": {**SEED, "epochs": 10, "weights": "none"}},
                 ranges={"head_dropout": (lambda v: 0 <= v < 1, "in [0, 1)")})
'''


@pytest.fixture
def resnet18(tmp_path, monkeypatch):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "toy_resnet.py").write_text(textwrap.dedent(MODEL_FILE))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setitem(models.REGISTRY, "resnet18", "toy_resnet:SPEC")  # the one registry line
    return "resnet18"


def test_a_registered_model_trains_predicts_draws_and_benchmarks(resnet18, cls_tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    # one step: the 36 training images in one batch
    record = train_cls.main(["--model", resnet18, "--data-dir", str(cls_tiny_data), "--out-dir", str(out),
                             "--epochs", "1", "--batch-size", "36", "--aug", "none", "--device", "cpu",
                             "--amp", "none", "--workers", "0", "--no-progress", "--head-dropout", "0.3"])
    assert record["epoch"] == 1 and len(record["val_per_class_acc"]) == 50
    args = json.loads((out / "args.json").read_text())
    assert args["model"] == "resnet18" and args["lr"] == 0.1 and args["channels_last"] is True  # recipe, defaults
    assert args["model_config"] == {"head_dropout": 0.3, "num_classes": 50}
    with pytest.raises(UserError, match="--head-dropout 1.5: must be in"):
        train_cls.main(["--model", resnet18, "--head-dropout", "1.5", "--data-dir", str(cls_tiny_data)])
    rows = predict_cls(cls_tiny_data / "val_50", tmp_path / "pred.csv", checkpoint=out / "last.pth", device="cpu")
    assert len(rows) == 12 and all(0 <= label < 50 for _, label in rows)

    (figure,) = viz.main(["arch", "--model", resnet18, "--model-config", "head_dropout=0.3", "--out-dir",
                          str(tmp_path / "fig"), "--dpi", "30"])
    table = capsys.readouterr().out
    assert figure.name == "arch_resnet18.png" and figure.is_file()
    assert "layer4" in table and "512 x 1 x 1" in table and "11.2" in table  # 11.2 M parameters

    results = bench_main(["--models", resnet18, "--parts", "models", "--configs", "fp32", "--batch-size", "2",
                          "--steps", "1", "--warmup", "0", "--repeats", "1", "--matmul-size", "64",
                          "--device", "cpu", "--out", str(tmp_path / "bench.json"), "--head-dropout", "0.3"])
    result = results["models"][resnet18]
    assert result["input"] == [3, 32, 32]
    assert result["model_config"] == {"head_dropout": 0.3, "num_classes": 50, "weights": "none"}
    assert result["configs"]["fp32"]["train_img_s"] > 0 and result["forward_flops_per_img"] > 0


def test_unknown_models_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown model 'resnet18'"):
        models.get_spec("resnet18")
