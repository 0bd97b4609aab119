"""The training config: flags -> config -> recipe -> validation, and the config saved as it is.

Every invalid value is one line and exit status 2 before any data is read or written: the data
folder of these runs does not exist (so a run that got that far would fail on it instead), and
``--demo`` would write its data first.
"""
import dataclasses
import json
from pathlib import Path

import pytest

import train_cls
import train_seg
from hw1.cli import run
from hw1.errors import UserError
from hw1.runtime import amp_dtype, channels_last_default, micro_batch_default
from hw1.tasks import config_of
from hw1.tasks.cls import ClsConfig
from hw1.tasks.seg import SegConfig
from hw1.trainer import start_run

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
    (["--lr", "1e39"], "--lr 1e+39: must be at most 1e+06"),
    (["--lr", "1e308"], "--lr 1e+308: must be at most 1e+06"),
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
    """The config ``script`` would run with; ``--demo`` data is not written (it would go into the
    working directory's hw1_data/), only asked for in the config's data folder."""
    demos = []
    task = dataclasses.replace(script.TASK, make_demo=demos.append)
    assert task.config is config_cls
    config = start_run(script.get_args_parser(), argv, task)
    assert demos == ([config.data_dir] if config.demo else [])
    return config


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


@pytest.mark.reliability
def test_resuming_through_a_link_continues_the_run_it_points_into(tmp_path):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "links"
    run_dir.mkdir()
    elsewhere.mkdir()
    (run_dir / "last.pth").write_bytes(b"")
    (elsewhere / "latest.pth").symlink_to(run_dir / "last.pth")
    config = _config(train_cls, ["--resume", str(elsewhere / "latest.pth")], ClsConfig)
    assert Path(config.out_dir) == run_dir.resolve()


@pytest.mark.reliability
def test_flags_turn_off_what_a_recipe_turns_on():
    cpu = _config(train_cls, ["--recipe", "cpu"], ClsConfig)
    assert cpu.ema == 0.998 and cpu.model_config["stem_pool"]
    off = _config(train_cls, ["--recipe", "cpu", "--ema", "0", "--no-stem-pool"], ClsConfig)
    assert off.ema == 0 and not off.model_config["stem_pool"] and off.model_config["depth"] == 52


@pytest.mark.reliability
def test_resuming_a_recipe_run_without_its_recipe_says_so(cls_tiny_run, tmp_path):
    import torch

    from hw1.errors import UserError
    from hw1.trainer import load_resume

    ckpt = torch.load(cls_tiny_run[0] / "last.pth", weights_only=True)
    ckpt["args"]["recipe"], ckpt["model_config"]["depth"] = "cpu", 52
    torch.save(ckpt, tmp_path / "last.pth")
    config = ClsConfig(model="densenet", epochs=4, resume=str(tmp_path / "last.pth"))
    with pytest.raises(UserError, match="the run was made with --recipe cpu, resume with it"):
        load_resume(config, model_name="densenet", model_config={**ckpt["model_config"], "depth": 10})


def test_one_overlay_defaults_then_recipes_then_typed_flags():
    """No flag has a parser default: what is not typed comes from the dataclass, then the model's
    recipes, in one pass; the hyperparameters from the builder's signature."""
    assert vars(train_cls.get_args_parser().parse_args([])) == {}
    assert vars(train_seg.get_args_parser().parse_args(["--context", "ppm"])) == {"context": "ppm"}
    plain = _config(train_cls, [], ClsConfig)
    assert plain.model_config == {"depth": 100, "growth_rate": 24, "compression": 0.5, "bn_size": 4,
                                  "drop_rate": 0.0, "stem_pool": False, "num_classes": 50}
    assert (plain.batch_size, plain.lr, plain.aug) == (ClsConfig.batch_size, 0.1, "seed")
    cpu = _config(train_cls, ["--recipe", "cpu", "--epochs", "3", "--depth", "40"], ClsConfig)
    assert (cpu.epochs, cpu.lr, cpu.model_config["depth"], cpu.model_config["stem_pool"]) == (3, 0.2, 40, True)
    demo = _config(train_cls, ["--demo", "--epochs", "3"], ClsConfig)
    assert (demo.epochs, demo.model_config["depth"], demo.aug, demo.out_dir) == (3, 22, "none", "runs/demo_cls")
    seg_demo = _config(train_seg, ["--demo", "--lr", "0.5"], SegConfig)
    assert seg_demo.lr == 0.5 and seg_demo.model_config["batch_norm"] and seg_demo.crop_size == 128
    # --model-config and a flag of the model's own say the same
    assert _config(train_cls, ["--model-config", "depth=40", "stem_pool=True"], ClsConfig).model_config == \
        _config(train_cls, ["--depth", "40", "--stem-pool"], ClsConfig).model_config
    # repeated --model-config flags add up; a value said twice alike is no conflict
    repeated = _config(train_cls, ["--model-config", "depth=10", "--model-config", "growth_rate=4", "--depth", "10"],
                       ClsConfig).model_config
    assert (repeated["depth"], repeated["growth_rate"]) == (10, 4)


def test_every_value_shows_where_it_comes_from(tmp_path, capsys):
    """--print-config: each value with its origin, in the dataclass's order, then the model's
    hyperparameters; what --amp auto and the unset layout flags become on this CPU; nothing written."""
    from hw1.runtime import cpu_kind

    out = tmp_path / "never"
    argv = ["--recipe", "cpu", "--lr", "0.3", "--depth", "40", "--out-dir", str(out), "--device", "cpu",
            "--print-config"]
    with pytest.raises(SystemExit) as stopped:
        train_cls.main(argv)
    assert stopped.value.code == 0 and not out.exists()
    lines = capsys.readouterr().out.splitlines()
    shown = {line.split()[0]: (line.split()[1], line.split("(", 1)[1].rstrip(")")) for line in lines}
    assert shown["lr"] == ("0.3", "flag") and shown["model_config.depth"] == ("40", "flag")
    assert shown["epochs"] == ("50", "recipe cpu") and shown["model_config.growth_rate"] == ("24", "recipe cpu")
    assert shown["opt"] == ("'sgd'", "densenet's default recipe") and shown["momentum"] == ("0.9", "default")
    assert shown["model_config.bn_size"] == ("4", "builder default")
    assert shown["amp"][1] == f"auto: measured fastest on {cpu_kind()} CPUs"
    assert shown["micro_batch"] == ("64", f"measured fastest on {cpu_kind()} CPUs")
    assert shown["channels_last"] == ("True", "recipe cpu")  # the recipe sets it: no table
    names = list(shown)
    assert names.index("model") < names.index("epochs") < names.index("model_config.depth")
    assert "command" not in shown and "device_name" not in shown
    # the demo's own values say so; the seg script's the same way
    with pytest.raises(SystemExit):
        train_seg.main(["--demo", "--data-dir", str(tmp_path / "d"), "--print-config"])
    seg = {line.split()[0]: line.split("(", 1)[1].rstrip(")") for line in capsys.readouterr().out.splitlines()}
    assert seg["crop_size"] == "--demo" and seg["opt"] == "vgg16_fcn32s's default recipe"
    assert not (tmp_path / "d").exists()  # --print-config writes no demo data either


def test_a_run_logs_its_values_and_their_origins_once_it_starts(cls_tiny_data, cls_tiny_train_argv, tmp_path,
                                                                caplog):
    import logging

    with caplog.at_level(logging.INFO):
        train_cls.main(cls_tiny_train_argv(cls_tiny_data, tmp_path / "r", "--recipe", "cpu", epochs=1))
    block = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("config (value and where"))
    lines = {line.split()[0]: line for line in block.splitlines()[1:]}
    assert lines["epochs"].endswith("(flag)") and lines["flip"].endswith("(recipe cpu)")
    assert lines["model_config.depth"].split()[1] == "10" and lines["momentum"].endswith("(default)")
    # once, by the run: the config saved with it holds no origins
    assert sum(r.getMessage().startswith("config (value") for r in caplog.records) == 1
    assert "origins" not in json.loads((tmp_path / "r" / "args.json").read_text())


def test_help_gives_each_models_own_default():
    help_text = " ".join(train_cls.get_args_parser().format_help().split())
    assert "--epochs EPOCHS (default: densenet 50, convnext 20 (its recipe's))" in help_text


@pytest.mark.parametrize("argv, message", [
    (["--model", "convnext", "--stem-pool"], "--stem-pool True: convnext takes no stem_pool (it takes variant, "
                                              "img_size)"),
    (["--model-config", "depth=11"], "--depth 11: must be 6n+4"),
    (["--model-config", "depth=40.5"], "--depth 40.5: must be an integer"),
    # a name no model has a flag for is shown as it was given, not as a flag that does not exist
    (["--model-config", "colour=red"], "--model-config colour=red: densenet takes no colour"),
    (["--model-config", "Depth=10"], "--model-config Depth=10: densenet takes no Depth"),
    (["--recipe", "gpu"], "--recipe gpu: densenet has the recipes cpu, demo"),
    (["--demo", "--recipe", "cpu"], "--demo and --recipe cpu: choose one"),
    # a setting given twice with two values has no silent winner, in either order
    (["--model-config", "depth=16", "--depth", "22"], "--depth 22 and --model-config depth=16 disagree; give one"),
    (["--depth", "22", "--model-config", "depth=16"], "--depth 22 and --model-config depth=16 disagree; give one"),
    (["--model-config", "depth=10", "--model-config", "depth=16"], "--model-config: depth given twice, 10 and 16"),
])
@pytest.mark.reliability
def test_hyperparameters_the_model_does_not_take_are_refused(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(train_cls.main, [*argv, "--data-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path / "run")])
    assert capsys.readouterr().err.startswith(f"error: {message}")
    assert not (tmp_path / "run").exists()


@pytest.mark.reliability
def test_densenet_with_imagenet_weights_is_refused_as_such():
    """DenseNet has no published weights: ``--weights imagenet`` is refused as a keyword it does not
    take ("imagenet: weights file not found" before)."""
    from hw1.models import build_model

    with pytest.raises(UserError, match="^--weights imagenet: expected one of none or a file path$"):
        build_model("densenet", depth=10, growth_rate=4, weights="imagenet")


@pytest.mark.reliability
def test_aux_weight_needs_a_model_with_an_auxiliary_head(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(train_seg.main, ["--aux-weight", "0.4", "--data-dir", str(tmp_path), "--weights", "none"])
    assert "--aux-weight 0.4: must be 0: vgg16_fcn32s has no auxiliary head" in capsys.readouterr().err
    resnet = _config(train_seg, ["--model", "resnet101_fcn", "--aux-weight", "0.4"], SegConfig)
    assert resnet.model_config == {"aux_loss": True, "num_classes": 7}


@pytest.mark.reliability
def test_weights_with_resume_is_refused_not_ignored(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run(train_cls.main, ["--resume", str(tmp_path / "last.pth"), "--weights", "w.pth",
                             "--data-dir", str(tmp_path / "none")])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("error: --weights w.pth and --resume: a resumed run continues from its "
                                       "checkpoint's weights; drop --weights (or start a new run from them "
                                       "without --resume)\n")


def test_alternating_flip_needs_the_batched_loader(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run(train_cls.main, ["--flip", "alternate", "--loader", "workers", "--data-dir", str(tmp_path / "none")])
    assert info.value.code == 2 and "--flip alternate: must be random with --loader workers" in capsys.readouterr().err
    assert _config(train_cls, ["--flip", "alternate"], ClsConfig).batch_transform().wants_indices


@pytest.mark.parametrize("argv, message", [(["--cutout", "33"], "--cutout 33: must be in [0, 32] (0: none)"),
                                           (["--cutout", "12", "--loader", "workers"],
                                            "--cutout 12: must be 0 with --loader workers"),
                                           (["--mixup", "101"], "--mixup 101.0: must be in [0, 100] (0: none)"),
                                           (["--cutmix", "-0.5"], "--cutmix -0.5: must be in [0, 100] (0: none)"),
                                           (["--cutmix", "1", "--loader", "workers"],
                                            "--cutmix 1.0: must be 0 with --loader workers")])
def test_batch_augmentations_are_bounded_and_need_the_batched_loader(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run(train_cls.main, [*argv, "--data-dir", str(tmp_path / "none")])
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.reliability
@pytest.mark.parametrize("script", [train_cls, train_seg])
def test_recipe_demo_points_to_demo(script, tmp_path, capsys):
    # it trained on hw1_data/demo_*, which only --demo writes, then suggested extracting course data there
    with pytest.raises(SystemExit) as info:
        run(script.main, ["--recipe", "demo", "--out-dir", str(tmp_path / "run")])
    assert info.value.code == 2 and capsys.readouterr().err == (
        "error: --recipe demo: use --demo, which writes the generated data the demo recipe trains on\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.reliability
@pytest.mark.parametrize("script, example", [(train_cls, "depth=100 growth_rate=24"),
                                             (train_seg, "fc_channels=4096 batch_norm=False")])
def test_model_config_help_gives_an_example_of_the_scripts_own_models(script, example):
    assert example in " ".join(script.get_args_parser().format_help().split())


def test_config_is_saved_as_it_is(cls_tiny_run):
    import torch

    run_dir, _ = cls_tiny_run
    saved = json.loads((run_dir / "args.json").read_text())
    config = config_of("cls", saved)
    assert isinstance(config, ClsConfig) and config.to_dict() == saved
    assert config.model_config["depth"] == 10 and config.epochs == 4 and config.device_name.startswith("CPU")
    cpu = torch.device("cpu")  # resolved as the run ran: this CPU's defaults for DenseNet
    assert config.channels_last == channels_last_default(None, "densenet", cpu) is not None
    assert config.micro_batch == micro_batch_default(None, "densenet", cpu)
    # --amp auto is recorded as the dtype it chose
    from hw1.models import get_spec
    from hw1.trainer import resolved

    auto = amp_dtype("auto", cpu, "densenet")
    chosen = resolved(ClsConfig(model="densenet"), get_spec("densenet"), cpu, auto).amp
    assert chosen == {None: "none", torch.bfloat16: "bf16"}[auto] and config.amp == "none"  # as the run typed
    ckpt = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["args"] == saved
    # an args.json of another version still reads: unknown keys are ignored, missing ones default
    assert config_of("cls", {**saved, "renamed_flag": 1}).to_dict() == saved
    assert config_of("cls", {"model": "densenet"}).model_config == {}
    # an args.json from when the hyperparameters were fields of their own
    assert config_of("cls", {"model": "densenet", "depth": 52, "stem_pool": True}).model_config == \
        {"depth": 52, "stem_pool": True}
    assert config_of("seg", {}) is None


def test_a_training_knob_is_one_line_that_makes_its_flag_help_and_rule():
    import argparse

    from hw1.config import knob
    from hw1.flags import add_training_args
    from hw1.rules import between

    @dataclasses.dataclass
    class Warm(ClsConfig):
        warmth: float = knob(0.5, "how warm (default: %(default)s)", must=between(0, 1))
        label_smoothing: float = 0.3  # a knob's default changed with a plain value keeps its flag and rule

    parser = add_training_args(argparse.ArgumentParser(), Warm)
    help_text = " ".join(parser.format_help().split())
    assert "--warmth WARMTH how warm (default: 0.5)" in help_text
    assert "--label-smoothing LABEL_SMOOTHING (default: 0.3)" in help_text
    assert vars(parser.parse_args(["--warmth", "0.25"])) == {"warmth": 0.25}  # typed from the annotation
    config = Warm(model="densenet", epochs=1, lr=0.1, warmth=2.0, label_smoothing=1.5)
    assert config.problems() == [("--label-smoothing", 1.5, "in [0, 1)"), ("--warmth", 2.0, "in [0, 1]")]
    assert Warm(model="densenet", epochs=1, lr=0.1).problems() == []
