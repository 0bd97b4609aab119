"""The training config: flags -> config -> recipe -> validation, and the config saved as it is.

Every invalid value is one line and exit status 2 before any data is read or written: the data
folder of these runs does not exist (so a run that got that far would fail on it instead), and
``--demo`` would write its data first.
"""
import json

import pytest

import train_cls
import train_seg
from hw1.cli import run, start_run
from hw1.config import ClsConfig, SegConfig, config_of
from hw1.data.demo import make_cls_demo
from hw1.runtime import channels_last_default, micro_batch_default

pytestmark = pytest.mark.usefixtures("cls_one_thread")

CLS_INVALID = [
    (["--lr", "0"], "--lr 0.0: must be above 0"),
    (["--lr", "-0.1"], "--lr -0.1: must be above 0"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--workers", "-1"], "--workers -1: must be in [0, 256]"),
    (["--momentum", "1"], "--momentum 1.0: must be in [0, 1)"),
    (["--momentum", "-0.5"], "--momentum -0.5: must be in [0, 1)"),
    (["--label-smoothing", "1"], "--label-smoothing 1.0: must be in [0, 1)"),
    (["--label-smoothing", "-0.1"], "--label-smoothing -0.1: must be in [0, 1)"),
    (["--drop-rate", "1"], "--drop-rate 1.0: must be in [0, 1)"),
    (["--depth", "40", "--depth", "11"], "--depth 11: must be 6n+4 in [10, 400] (10, 16, 22, ..., 100)"),
    (["--depth", "4"], "--depth 4: must be 6n+4 in [10, 400] (10, 16, 22, ..., 100)"),
    (["--micro-batch", "-1"], "--micro-batch -1: must be 0 (whole batches) or more"),
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--epochs", "-3"], "--epochs -3: must be at least 1"),
    (["--epochs", "4", "--save-epochs", "0", "2"], "--save-epochs 0: must be an epoch in 1..4"),
    (["--epochs", "4", "--save-epochs", "2", "5"], "--save-epochs 5: must be an epoch in 1..4"),
    (["--device", "mps"], "--device mps: hw1 runs on cpu or cuda (cuda:N), not mps"),
    (["--device", "tpu"], "--device tpu: not a device name (try cpu, cuda or cuda:1)"),
    (["--lr", "inf"], "--lr inf: must be a finite number"),
    (["--lr", "nan"], "--lr nan: must be a finite number"),
    (["--warmup-epochs", "nan"], "--warmup-epochs nan: must be a finite number"),
    (["--warmup-epochs", "inf"], "--warmup-epochs inf: must be a finite number"),
    (["--weight-decay", "nan"], "--weight-decay nan: must be a finite number"),
    (["--weight-decay", "inf"], "--weight-decay inf: must be a finite number"),
    (["--min-lr", "nan"], "--min-lr nan: must be a finite number"),
    (["--momentum", "nan"], "--momentum nan: must be a finite number"),
    (["--grad-clip", "inf"], "--grad-clip inf: must be a finite number"),
    (["--seed", "99999999999999999999"], "--seed 99999999999999999999: must be in [0, 2**62)"),
    (["--seed", "-1"], "--seed -1: must be in [0, 2**62)"),
]


@pytest.mark.reliability
@pytest.mark.parametrize("flags,message", CLS_INVALID, ids=[" ".join(f) for f, _ in CLS_INVALID])
def test_invalid_values_are_one_line_before_any_data(flags, message, tmp_path, capsys):
    data = tmp_path / "demo_data"
    argv = ["--demo", "--data-dir", str(data), "--out-dir", str(tmp_path / "run"), "--no-progress", *flags]
    with pytest.raises(SystemExit) as info:
        run(train_cls.main, argv)
    assert info.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == []  # no demo data, no run folder


SEG_INVALID = [
    (["--crop-size", "0"], "--crop-size 0: must be in [1, 4096]"),
    (["--size", "0"], "--size 0: must be in [1, 4096]"),
    (["--min-scale", "0"], "--min-scale 0.0: must be in (0, 1]"),
    (["--model", "resnet101_fcn", "--lr", "0"], "--lr 0.0: must be above 0"),
    (["--width", "nan"], "--width nan: must be a finite number"),
    (["--width", "0"], "--width 0.0: must be in (0, 4]"),
    (["--dropout", "1"], "--dropout 1.0: must be in [0, 1)"),
    (["--min-scale", "inf"], "--min-scale inf: must be a finite number"),
]


@pytest.mark.reliability
@pytest.mark.parametrize("flags,message", SEG_INVALID, ids=[" ".join(f) for f, _ in SEG_INVALID])
def test_invalid_seg_values(flags, message, tmp_path, capsys):
    argv = ["--data-dir", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "run"), *flags]
    with pytest.raises(SystemExit) as info:
        run(train_seg.main, argv)
    assert info.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == []


def _config(script, argv, config_cls):
    return start_run(f"{script.__name__}.py", script.get_args_parser(), argv, script.DEMO_DEFAULTS,
                     make_cls_demo, config_cls)


def test_the_recipe_fills_what_no_flag_sets():
    vgg = _config(train_seg, [], SegConfig)
    assert (vgg.opt, vgg.lr, vgg.weight_decay, vgg.epochs, vgg.weights) == ("adamw", 1e-4, 1e-4, 30, "imagenet")
    resnet = _config(train_seg, ["--model", "resnet101_fcn", "--lr", "0.5"], SegConfig)
    assert (resnet.opt, resnet.lr, resnet.weights) == ("sgd", 0.5, "coco")  # the flag wins
    convnext = _config(train_cls, ["--model", "convnext"], ClsConfig)
    assert (convnext.epochs, convnext.weights, convnext.lr, convnext.opt) == (20, "imagenet", 0.1, "sgd")
    densenet = _config(train_cls, [], ClsConfig)
    assert (densenet.epochs, densenet.weights, densenet.out_dir) == (50, "none", "runs/densenet")
    assert densenet.command == "python train_cls.py"
    # --resume without --out-dir continues in the checkpoint's folder
    resumed = _config(train_cls, ["--resume", "runs/x/epoch_003.pth"], ClsConfig)
    assert resumed.out_dir == "runs/x"
    assert _config(train_cls, ["--resume", "runs/x/last.pth", "--out-dir", "y"], ClsConfig).out_dir == "y"


def test_parser_defaults_are_the_config_defaults():
    parsed = vars(train_cls.get_args_parser().parse_args([]))
    defaults = ClsConfig.flag_defaults()
    assert {k: parsed[k] for k in defaults} == {**defaults, "model": "densenet"}
    assert set(parsed) == set(defaults)  # every flag is a field of the config and the other way round
    assert set(vars(train_seg.get_args_parser().parse_args([]))) == set(SegConfig.flag_defaults())


def test_config_is_saved_as_it_is(cls_tiny_run):
    import torch

    run_dir, _ = cls_tiny_run
    saved = json.loads((run_dir / "args.json").read_text())
    config = config_of("cls", saved)
    assert isinstance(config, ClsConfig) and config.to_dict() == saved
    assert config.depth == 10 and config.epochs == 4 and config.device_name.startswith("CPU")
    cpu = torch.device("cpu")  # resolved as the run ran: this CPU's defaults for DenseNet
    assert config.channels_last == channels_last_default(None, "densenet", cpu) is not None
    assert config.micro_batch == micro_batch_default(None, "densenet", cpu)
    ckpt = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["args"] == saved
    # an args.json of another version still reads: unknown keys are ignored, missing ones default
    assert config_of("cls", {**saved, "renamed_flag": 1}).to_dict() == saved
    assert config_of("cls", {"model": "densenet"}).depth == 100
    assert config_of("seg", {}) is None
