"""train_cls.py + hw1.trainer on tiny generated data: what a run writes, resume equivalence, failures.

The 4-epoch run of the session fixture ``cls_tiny_run`` (tests/conftest.py) is the reference run.
"""
import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

import train_cls
from helpers import cli_error, save_code_running_checkpoint, snapshot, truncate
from hw1 import engine, metrics
from hw1.checkpoint import load_checkpoint, model_from_checkpoint
from hw1.cli import run
from hw1.data.cls import cls_eval_transform, load_cls_split
from hw1.errors import UserError
from hw1.run_dir import RunDir

pytestmark = pytest.mark.usefixtures("cls_one_thread")

TIMING_KEYS = {"train_img_s", "train_seconds", "val_img_s", "wall_seconds"}


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()

    def strict(constant):  # NaN / Infinity are not JSON; the trainer must write null instead
        raise AssertionError(f"non-standard JSON constant {constant} in metrics.jsonl")

    return [json.loads(line, parse_constant=strict) for line in lines]


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_run_writes_the_expected_files(cls_tiny_run):
    run_dir, _ = cls_tiny_run
    names = {p.name for p in run_dir.iterdir()}
    # default --save-epochs for 4 epochs: first, middle, last
    assert names == {"last.pth", "best.pth", "epoch_001.pth", "epoch_002.pth", "epoch_004.pth",
                     "metrics.jsonl", "args.json"}


def test_metrics_jsonl(cls_tiny_run, cls_tiny_data):
    run_dir, last = cls_tiny_run
    records = _records(run_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1] == last  # main returns the last epoch's record
    for r in records:
        assert set(r) == {"epoch", "lr", "train_loss", "train_acc", "train_img_s", "train_seconds",
                          "val_loss", "val_acc", "val_per_class_acc", "val_samples", "val_img_s", "wall_seconds"}
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1
        assert r["train_img_s"] > 0 and r["train_seconds"] > 0 and r["val_img_s"] > 0
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
        per_class = r["val_per_class_acc"]
        assert len(per_class) == 50
        assert all(v is not None for v in per_class[:3]) and all(v is None for v in per_class[3:])
        assert sum(per_class[:3]) / 3 == pytest.approx(r["val_acc"])  # equal support per class
    # The training loss falls on this easy problem.
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.3
    # lr of each epoch's first step: cosine over 4 epochs x (36 // 8) steps, no warm-up.
    steps = len(list((cls_tiny_data / "train_50").glob("*.png"))) // 8
    for r in records:
        progress = (r["epoch"] - 1) * steps / (4 * steps)
        assert r["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * progress)), abs=1e-12)


def test_args_json(cls_tiny_run, cls_tiny_data):
    run_dir, _ = cls_tiny_run
    args = json.loads((run_dir / "args.json").read_text())
    assert args["model"] == "densenet" and args["model_config"]["depth"] == 10
    assert args["model_config"] == torch.load(run_dir / "last.pth", weights_only=True)["model_config"]
    assert args["epochs"] == 4 and args["lr"] == 0.05 and args["batch_size"] == 8 and args["aug"] == "none"
    assert args["data_dir"] == str(cls_tiny_data) and args["out_dir"] == str(run_dir)
    assert args["weights"] == "none" and args["resume"] is None


def test_checkpoints(cls_tiny_run, cls_tiny_data):
    run_dir, _ = cls_tiny_run
    steps = len(list((cls_tiny_data / "train_50").glob("*.png"))) // 8
    records = _records(run_dir)
    last = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "best", "rng", "model_name", "model_config",
            "args", "task", "metrics"} <= set(last)
    assert last["model_name"] == "densenet" and last["task"] == "cls"
    # the builder's arguments with its defaults filled in
    assert last["model_config"] == {"depth": 10, "growth_rate": 4, "compression": 0.5, "bn_size": 4, "drop_rate": 0.0,
                                    "stem_pool": False, "num_classes": 50}
    assert isinstance(last["args"], dict) and last["args"]["epochs"] == 4
    assert last["epoch"] == 4 and last["metrics"] == records[-1]
    assert last["scheduler"]["last_step"] == 4 * steps
    assert last["best"] == max(r["val_acc"] for r in records)
    for epoch in (1, 2, 4):
        ckpt = torch.load(run_dir / f"epoch_{epoch:03d}.pth", map_location="cpu", weights_only=True)
        assert ckpt["epoch"] == epoch and ckpt["metrics"] == records[epoch - 1]
    # best.pth: the first epoch reaching the highest validation accuracy.
    best = torch.load(run_dir / "best.pth", map_location="cpu", weights_only=True)
    accs = [r["val_acc"] for r in records]
    assert best["epoch"] == accs.index(max(accs)) + 1
    # last.pth and epoch_004.pth hold the same weights.
    final = torch.load(run_dir / "epoch_004.pth", map_location="cpu", weights_only=True)
    for key, value in last["model"].items():
        assert torch.equal(final["model"][key], value), key


def test_checkpoint_rebuilds_the_model_and_its_val_accuracy(cls_tiny_run, cls_tiny_data):
    run_dir, last = cls_tiny_run
    ckpt = load_checkpoint(run_dir / "last.pth", task="cls")
    model = model_from_checkpoint(ckpt).eval()
    val = load_cls_split(cls_tiny_data / "val_50", labels_csv=cls_tiny_data / "val_gt.csv",
                         transform=cls_eval_transform())
    loader = torch.utils.data.DataLoader(val, batch_size=5)
    result = engine.evaluate(model, loader, num_classes=50, summarize=metrics.cls_summary, device=torch.device("cpu"),
                             criterion=torch.nn.CrossEntropyLoss(label_smoothing=0.1))
    assert result["acc"] == pytest.approx(last["val_acc"])
    assert result["loss"] == pytest.approx(last["val_loss"], rel=1e-4)
    assert result["cm"].sum() == len(val)


@pytest.mark.reliability
def test_resume_is_equivalent_to_an_uninterrupted_run(cls_tiny_run, cls_tiny_data, cls_tiny_train_argv, tmp_path,
                                                      monkeypatch):
    reference_dir, _ = cls_tiny_run
    run_dir = tmp_path / "b"
    argv = cls_tiny_train_argv(cls_tiny_data, run_dir, "--save-epochs", "1", "3")
    real_train_one_epoch = engine.train_one_epoch
    calls = []

    def interrupted_after_two_epochs(*args, **kwargs):
        calls.append(kwargs["epoch"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train_one_epoch(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(engine, "train_one_epoch", interrupted_after_two_epochs)
        with pytest.raises(KeyboardInterrupt):
            train_cls.main(argv)
    assert calls == [1, 2, 3]
    assert [r["epoch"] for r in _records(run_dir)] == [1, 2]
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 2

    record = train_cls.main([*argv, "--resume", str(run_dir / "last.pth")])
    reference = _records(reference_dir)
    resumed = _records(run_dir)
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    assert _without_timing(resumed) == _without_timing(reference)
    assert record == resumed[-1]
    ref_model = torch.load(reference_dir / "last.pth", weights_only=True)["model"]
    new_model = torch.load(run_dir / "last.pth", weights_only=True)["model"]
    for key, value in ref_model.items():
        assert torch.equal(new_model[key], value), key
    assert {p.name for p in run_dir.glob("epoch_*.pth")} == {"epoch_001.pth", "epoch_003.pth"}

    # Resuming from an earlier checkpoint drops the later lines of metrics.jsonl and redoes them.
    train_cls.main([*argv, "--resume", str(run_dir / "epoch_001.pth")])
    again = _records(run_dir)
    assert [r["epoch"] for r in again] == [1, 2, 3, 4]
    assert _without_timing(again) == _without_timing(reference)


@pytest.mark.reliability
def test_branching_from_an_earlier_epoch_leaves_no_file_of_the_abandoned_epochs(cls_tiny_run, cls_tiny_data,
                                                                                  cls_tiny_train_argv, tmp_path):
    """--resume epoch_001.pth --epochs 2 in a folder that went on to epoch 4: epochs 3-4 are gone."""
    run_dir = tmp_path / "run"
    shutil.copytree(cls_tiny_run[0], run_dir)
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume", str(run_dir / "epoch_001.pth"),
                                       epochs=2))
    assert [r["epoch"] for r in _records(run_dir)] == [1, 2]
    assert sorted(p.name for p in run_dir.glob("epoch_*.pth")) == ["epoch_001.pth", "epoch_002.pth"]
    for name in ("last.pth", "best.pth"):
        assert load_checkpoint(run_dir / name)["epoch"] <= 2, name
    best = max(_records(run_dir), key=lambda r: r["val_acc"])
    assert load_checkpoint(run_dir / "best.pth")["metrics"]["val_acc"] == best["val_acc"]


@pytest.mark.reliability
def test_branch_keeps_the_best_of_the_kept_epochs(cls_tiny_run, tmp_path):
    """RunDir.branch: best.pth becomes the kept checkpoint of the best epoch up to the branch point."""
    run = RunDir(shutil.copytree(cls_tiny_run[0], tmp_path / "run"))
    first = run.epoch_file(1)
    assert run.branch(first, 1, best_epoch=1) and load_checkpoint(run.best)["epoch"] == 1
    assert load_checkpoint(run.last)["epoch"] == 1 and set(run.epoch_files()) == {1}
    # the best epoch's checkpoint was not kept anywhere: no best.pth rather than a wrong one
    assert not run.branch(first, 1, best_epoch=0) and not run.best.exists()


@pytest.mark.reliability
def test_resume_with_nothing_left_to_train_writes_nothing(cls_tiny_run, cls_tiny_data, cls_tiny_train_argv,
                                                          tmp_path, monkeypatch):
    run_dir = shutil.copytree(cls_tiny_run[0], tmp_path / "run")
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    task = dataclasses.replace(train_cls.TASK, load_splits=lambda config: pytest.fail("decoded the data"))
    monkeypatch.setattr(train_cls, "TASK", task)
    record = train_cls.main(cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume", str(run_dir / "last.pth")))
    assert record == _records(run_dir)[-1]
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


@pytest.mark.parametrize("flags, message", [
    (["--model", "convnext", "--img-size", "16", "--weights", "none"], "cannot be built and run on 32x32"),
    (["--growth-rate", "1", "--compression", "0.01"], "cannot be built and run on 32x32"),
])
@pytest.mark.reliability
def test_a_model_that_cannot_build_or_run_is_refused_before_any_work(flags, message, cls_tiny_data, tmp_path):
    argv = ["--data-dir", str(cls_tiny_data), "--out-dir", str(tmp_path / "run"), *flags]
    with pytest.raises(UserError, match=message):
        train_cls.main(argv)
    assert not (tmp_path / "run").exists()


def test_resume_with_another_model_config_is_refused(cls_tiny_run, cls_tiny_data, cls_tiny_train_argv, tmp_path):
    run_dir, _ = cls_tiny_run
    argv = cls_tiny_train_argv(cls_tiny_data, tmp_path / "c", "--resume", str(run_dir / "last.pth"))
    argv[argv.index("--depth") + 1] = "16"
    with pytest.raises(UserError, match="densenet") as info:
        train_cls.main(argv)
    assert str(run_dir / "last.pth") in str(info.value)


def test_missing_data_dir(tmp_path, cls_tiny_train_argv, capsys):
    missing = tmp_path / "no_data_here"
    argv = cls_tiny_train_argv(missing, tmp_path / "out")
    with pytest.raises(UserError, match="train_50") as info:
        train_cls.main(argv)
    assert str(missing) in str(info.value)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(train_cls.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and err.count("\n") == 1


def test_missing_val_folder(tmp_path, cls_tiny_data, cls_tiny_train_argv):
    root = tmp_path / "half"
    (root / "train_50").mkdir(parents=True)
    with pytest.raises(UserError, match="val_50") as info:
        train_cls.main(cls_tiny_train_argv(root, tmp_path / "out"))
    assert str(root) in str(info.value)


@pytest.mark.reliability
def test_non_finite_loss_stops_the_run(cls_tiny_data, cls_tiny_train_argv, tmp_path, capsys):
    out = tmp_path / "diverged"
    argv = cls_tiny_train_argv(cls_tiny_data, out, epochs=3, lr=1e6)
    with pytest.raises(engine.NonFiniteLoss) as info:
        train_cls.main(argv)
    match = re.match(r"loss became (nan|-?inf) at epoch (\d), step (\d+): ", str(info.value))
    assert match, str(info.value)
    failed_epoch = int(match.group(2))
    # Nothing is recorded or checkpointed for the failed epoch; earlier ones are kept.
    assert [r["epoch"] for r in _records(out)] == list(range(1, failed_epoch))
    assert (out / "last.pth").exists() == (failed_epoch > 1)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(train_cls.main, [*argv, "--overwrite"])  # the same run again, in place of the first
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: loss became") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.reliability
def test_non_finite_loss_from_the_criterion(cls_tiny_data, cls_tiny_train_argv, tmp_path, monkeypatch):
    """Independent of how the optimiser diverges: one NaN loss in a later epoch stops the run there."""
    real = torch.nn.CrossEntropyLoss
    calls = []

    class NaNAfterSixSteps(real):
        def forward(self, input, target):
            loss = super().forward(input, target)
            calls.append(self.training)
            return loss * float("nan") if len(calls) == 7 else loss

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", NaNAfterSixSteps)
    out = tmp_path / "nan"
    # 4 train steps per epoch + 2 val batches: call 7 is the first step of epoch 2.
    with pytest.raises(engine.NonFiniteLoss, match="epoch 2"):
        train_cls.main(cls_tiny_train_argv(cls_tiny_data, out, epochs=2))
    assert [r["epoch"] for r in _records(out)] == [1]
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1


# --- resume: checkpoints that do not fit, a failure after it, workers, another --amp --------------


def copy_run(run_dir, tmp_path):
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


@pytest.mark.reliability
def test_train_cls_refuses_to_resume_a_seg_checkpoint(seg_checkpoint, cls_tiny_data, cls_tiny_train_argv, tmp_path,
                                                      capsys):
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, tmp_path / "run", "--resume",
                                                                str(seg_checkpoint)))
    assert f"{seg_checkpoint}: a seg checkpoint (vgg16_fcn32s), not a cls one" in err


@pytest.mark.reliability
def test_resume_from_a_corrupt_checkpoint_leaves_the_run_untouched(cls_one_epoch_run, cls_tiny_data,
                                                                   cls_tiny_train_argv, tmp_path, capsys):
    run_dir = copy_run(cls_one_epoch_run, tmp_path)
    corrupt = tmp_path / "corrupt.pth"
    shutil.copy(run_dir / "last.pth", corrupt)
    truncate(corrupt)
    before = snapshot(run_dir)
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume", str(corrupt),
                                                                epochs=2))
    assert f"{corrupt}: corrupt or not a PyTorch checkpoint" in err
    assert snapshot(run_dir) == before


@pytest.mark.reliability
def test_a_damaged_line_of_the_history_is_found_before_the_data_is_decoded(cls_tiny_run, cls_tiny_data,
                                                                          cls_tiny_train_argv, tmp_path, capsys,
                                                                          monkeypatch):
    run_dir = copy_run(cls_tiny_run[0], tmp_path)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text("".join([lines[0], lines[1][:20] + "\n", *lines[2:]]))
    before = snapshot(run_dir)
    task = dataclasses.replace(train_cls.TASK, load_splits=lambda config: pytest.fail("the data was decoded"))
    monkeypatch.setattr(train_cls, "TASK", task)
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume",
                                                                str(run_dir / "last.pth"), epochs=5))
    assert err == f"error: {run_dir / 'metrics.jsonl'}: line 2 is not JSON\n"
    assert snapshot(run_dir) == before


@pytest.mark.reliability
def test_a_kept_epoch_copy_that_a_stop_prevented_is_made_on_resume(cls_tiny_data, cls_tiny_train_argv, tmp_path):
    """Killed after last.pth of a kept epoch but before its epoch_NNN.pth copy: the resume makes it
    from the resumed checkpoint (it was missing for good, with no word)."""
    run_dir = tmp_path / "run"
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, run_dir, "--save-epochs", "1", "2", epochs=2))
    expected = (run_dir / "epoch_002.pth").read_bytes()
    (run_dir / "epoch_002.pth").unlink()
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, run_dir, "--save-epochs", "1", "2", "--resume",
                                       str(run_dir / "last.pth"), epochs=3))
    assert (run_dir / "epoch_002.pth").read_bytes() == expected
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 3


@pytest.mark.reliability
def test_resume_from_nothing(cls_one_epoch_run, cls_tiny_data, cls_tiny_train_argv, tmp_path, capsys):
    run_dir = copy_run(cls_one_epoch_run, tmp_path)
    before = snapshot(run_dir)
    missing = run_dir / "epoch_009.pth"
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume", str(missing),
                                                                epochs=2))
    assert err == f"error: {missing}: checkpoint not found\n"
    assert snapshot(run_dir) == before


@pytest.mark.reliability
def test_resume_of_a_checkpoint_that_runs_code(cls_tiny_data, cls_tiny_train_argv, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    evil = save_code_running_checkpoint(tmp_path / "evil.pth", marker)
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, tmp_path / "run", "--resume",
                                                                str(evil)))
    assert err.startswith(f"error: {evil}: refused to load")
    assert not marker.exists()


@pytest.mark.reliability
def test_non_finite_loss_after_resume_keeps_the_checkpoint(cls_one_epoch_run, cls_tiny_data, cls_tiny_train_argv,
                                                           tmp_path, monkeypatch, capsys):
    run_dir = copy_run(cls_one_epoch_run, tmp_path)
    before = {name: (run_dir / name).read_bytes() for name in ("last.pth", "best.pth")}

    class AlwaysNaN(torch.nn.CrossEntropyLoss):
        def forward(self, input, target):
            return super().forward(input, target) * float("nan")

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", AlwaysNaN)
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume",
                                                                str(run_dir / "last.pth"), epochs=2))
    assert err.startswith("error: loss became nan at epoch 2, step ")
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 1
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]


@pytest.mark.reliability
@pytest.mark.parametrize("loader", [("--loader", "workers", "--workers", "1", "--aug", "light"),
                                    ("--loader", "batched", "--aug", "light"), ("--loader", "batched", "--aug", "seed"),
                                    ("--loader", "batched", "--aug", "light", "--flip", "alternate", "--cutout", "8"),
                                    ("--loader", "batched", "--aug", "light", "--mixup", "0.4", "--cutmix", "1", "--mix-prob", "0.5")],
                         ids=["workers", "batched-light", "batched-seed", "batched-alternate-flip-cutout",
                              "batched-mixup-cutmix"])
def test_resume_with_random_augmentation_is_exact(loader, cls_tiny_data, cls_tiny_train_argv, tmp_path):
    # Random crops and flips (AutoAugment and erasing too): a worker's RNG stream derives from the
    # main process's torch RNG, and the batched loader draws from that RNG itself; the checkpoint
    # restores it.
    extra = (*loader, "--save-epochs", "1")
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, tmp_path / "whole", *extra, epochs=3))
    # Epochs 2 and 3 again, from the checkpoint of epoch 1, into a new folder.
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, tmp_path / "resumed", *extra, "--resume",
                                       str(tmp_path / "whole" / "epoch_001.pth"), epochs=3))

    def records(run_dir):
        timing = {"train_img_s", "train_seconds", "val_img_s", "wall_seconds"}
        return [{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    whole, resumed = records(tmp_path / "whole"), records(tmp_path / "resumed")
    # the new folder gets epoch 1's record from the checkpoint's folder, then its own epochs 2 and 3
    assert [r["epoch"] for r in whole] == [1, 2, 3] and [r["epoch"] for r in resumed] == [1, 2, 3]
    assert resumed == whole
    a = load_checkpoint(tmp_path / "whole" / "last.pth")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.reliability
def test_resume_of_a_bf16_checkpoint_with_fp16(cls_tiny_data, cls_tiny_train_argv, tmp_path, caplog):
    # A bf16 run (e.g. on an H100) continued with fp16 (e.g. on a T4), which needs a gradient scaler.
    run_dir = tmp_path / "run"
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, run_dir, "--amp", "bf16", epochs=1))
    assert load_checkpoint(run_dir / "last.pth")["scaler"] == {}  # bf16 has no scaler state
    with caplog.at_level("WARNING"):
        record = train_cls.main(cls_tiny_train_argv(cls_tiny_data, run_dir, "--amp", "fp16", "--resume",
                                                    str(run_dir / "last.pth"), epochs=2))
    assert record["epoch"] == 2
    assert f"{run_dir / 'last.pth'}: written without fp16's gradient scaler (--amp bf16); this run's fp16 " \
           "starts a fresh one" in caplog.messages
    ckpt = load_checkpoint(run_dir / "last.pth")
    assert ckpt["args"]["amp"] == "fp16" and ckpt["scaler"]["scale"] > 0
