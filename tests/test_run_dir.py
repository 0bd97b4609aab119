"""The run folder (hw1.run_dir) and what --resume does with changed flags.

Run folder: one metrics.jsonl reader (a torn last line is dropped with a warning), a new run is
refused in a folder that holds one unless --overwrite (which clears it), two runs cannot write
into one folder at once, --resume continues in the checkpoint's own folder.

Resume semantics: weights, optimizer moments, step count and RNG come from the checkpoint; the
hyperparameters are the command's. The cosine is rebuilt from this command's --lr / --epochs /
--warmup-epochs / --min-lr and continued at the step after the checkpoint's epoch, and --lr,
--weight-decay, --momentum apply from the first resumed step. --opt and --no-wd-norm must not
change (test_resume_into_a_run_it_does_not_fit below); --epochs below the checkpoint's epoch is
refused.
"""
import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_cls
from conftest import REPO
from helpers import cli_error, script_env, tree
from hw1.cli import run
from hw1.errors import UserError
from hw1.run_dir import RunDir

pytestmark = pytest.mark.usefixtures("cls_one_thread")


def cosine(base, step, total):
    return base * 0.5 * (1 + math.cos(math.pi * step / total))


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def steps_per_epoch(data, batch_size=8):
    return len(list((data / "train_50").glob("*.png"))) // batch_size


@pytest.fixture(scope="module")
def two_epoch_run(cls_tiny_data, cls_tiny_train_argv, tmp_path_factory):
    """A finished 2-epoch tiny run (epochs 1 and 2 kept). Read-only: tests copy it."""
    out = tmp_path_factory.mktemp("two_epochs") / "run"
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, out, "--save-epochs", "1", "2", epochs=2))
    return out


def copy_run(src, dst):
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def error_of(capsys, argv):
    with pytest.raises(SystemExit) as info:
        run(train_cls.main, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


# --- metrics.jsonl -------------------------------------------------------------------------------

@pytest.mark.reliability
def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    folder = RunDir(tmp_path)
    lines = [json.dumps({"epoch": 1, "lr": 0.1}), json.dumps({"epoch": 2, "lr": 0.05})]
    folder.metrics.write_text("\n".join(lines) + "\n" + '{"epoch": 3, "lr": 0.0')
    with caplog.at_level(logging.WARNING):
        assert [r["epoch"] for r in folder.read_metrics()] == [1, 2]
    assert "line 3 is cut short" in caplog.text
    assert [r["epoch"] for r in folder.read_metrics(upto_epoch=1)] == [1]
    # a newline after the torn line (added by a tool or by hand) does not make it an error that
    # would block every resume; a broken line before the last one is damage, and an error
    folder.metrics.write_text(lines[0] + "\n" + '{"epoch": 2\n\n')
    assert [r["epoch"] for r in folder.read_metrics()] == [1]
    folder.metrics.write_text('{"epoch": 1\n' + lines[1] + "\n")
    with pytest.raises(UserError, match="line 1 is not JSON"):
        folder.read_metrics()
    folder.metrics.write_text(lines[0] + "\n" + '{"lr": 1}\n')
    with pytest.raises(UserError, match="line 2 has no 'epoch'"):
        folder.read_metrics()
    assert RunDir(tmp_path / "none").read_metrics(required=False) == []
    with pytest.raises(UserError, match="not found"):
        RunDir(tmp_path / "none").read_metrics()


@pytest.mark.reliability
def test_overwrite_leaves_files_of_names_a_run_never_writes(tmp_path):
    folder = RunDir(tmp_path)
    for name in ("epoch_005.pth", "epoch_5.pth", "epoch_0005.pth", "last.pth"):
        (tmp_path / name).write_bytes(b"x")
    assert set(folder.epoch_files()) == {5}
    folder.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0005.pth", "epoch_5.pth"]


@pytest.mark.reliability
def test_resume_after_a_crash_while_appending(two_epoch_run, cls_tiny_data, cls_tiny_train_argv, tmp_path):
    run_dir = copy_run(two_epoch_run, tmp_path / "run")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "lr": 0.0')  # killed half-way through epoch 3's line
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume", str(run_dir / "last.pth"), epochs=3))
    assert [r["epoch"] for r in records(run_dir)] == [1, 2, 3]


# --- one run per folder --------------------------------------------------------------------------

def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.reliability
def test_a_new_run_into_a_folder_holding_one_is_refused(two_epoch_run, cls_tiny_data, cls_tiny_train_argv,
                                                         tmp_path, capsys):
    run_dir = copy_run(two_epoch_run, tmp_path / "run")
    before = snapshot(run_dir)
    err = error_of(capsys, cls_tiny_train_argv(cls_tiny_data, run_dir, epochs=1))
    assert err.startswith(f"error: {run_dir}: already holds a run (") and "--overwrite" in err
    assert snapshot(run_dir) == before
    # --overwrite replaces it: nothing of the old run is left
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, run_dir, "--overwrite", "--save-epochs", "1", epochs=1))
    assert sorted(p.name for p in run_dir.iterdir()) == ["args.json", "best.pth", "epoch_001.pth", "last.pth",
                                                         "metrics.jsonl"]
    assert [r["epoch"] for r in records(run_dir)] == [1]
    assert json.loads((run_dir / "args.json").read_text())["epochs"] == 1


def test_a_folder_without_a_recorded_epoch_is_no_run(cls_tiny_data, cls_tiny_train_argv, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "args.json").write_text("{}")  # a run that failed before its first epoch
    (run_dir / "metrics.jsonl").write_text("")
    (run_dir / "notes.txt").write_text("mine")
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, run_dir, epochs=1))
    assert [r["epoch"] for r in records(run_dir)] == [1] and (run_dir / "notes.txt").read_text() == "mine"


@pytest.mark.reliability
def test_two_runs_cannot_write_into_one_folder(cls_tiny_data, cls_tiny_train_argv, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with RunDir(run_dir).lock():
        assert (run_dir / ".lock").is_file()
        err = error_of(capsys, cls_tiny_train_argv(cls_tiny_data, run_dir, epochs=1))
        assert err == f"error: {run_dir}: another run is writing to this folder; wait for it or pass another --out-dir\n"
        assert [p.name for p in run_dir.iterdir()] == [".lock"]
    assert not run_dir.exists()  # the lock made the folder; with nothing in it, it goes again
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, run_dir, epochs=1))
    assert not (run_dir / ".lock").exists()


def test_a_killed_run_leaves_no_lock_behind(tmp_path):
    code = ("import sys, time; from hw1.run_dir import RunDir\n"
            "with RunDir(sys.argv[1]).lock():\n    print('locked', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match="another run is writing"):
            with RunDir(tmp_path).lock():
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (tmp_path / ".lock").exists()  # left behind by the killed process, but no longer held
    with RunDir(tmp_path).lock():
        pass
    assert not (tmp_path / ".lock").exists()


# --- resume --------------------------------------------------------------------------------------

def test_resume_with_more_epochs_extends_the_cosine(two_epoch_run, cls_tiny_data, cls_tiny_train_argv, tmp_path):
    run_dir = copy_run(two_epoch_run, tmp_path / "run")
    first = records(run_dir)
    # --out-dir left out: the run continues in the checkpoint's own folder
    argv = cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume", str(run_dir / "last.pth"), epochs=4)
    argv = argv[:argv.index("--out-dir")] + argv[argv.index("--out-dir") + 2:]
    train_cls.main(argv)
    steps = steps_per_epoch(cls_tiny_data)
    after = records(run_dir)
    assert [r["epoch"] for r in after] == [1, 2, 3, 4] and after[:2] == first
    # the 2-epoch run logged its own cosine; epochs 3 and 4 follow the 4-epoch cosine from step 2 * steps
    assert [r["lr"] for r in first] == pytest.approx([cosine(0.05, 0, 2 * steps), cosine(0.05, steps, 2 * steps)])
    assert [r["lr"] for r in after[2:]] == pytest.approx([cosine(0.05, 2 * steps, 4 * steps),
                                                          cosine(0.05, 3 * steps, 4 * steps)])
    assert after[2]["lr"] == pytest.approx(0.025)  # not 0: the schedule was extended, not run past its end
    last = torch.load(run_dir / "last.pth", weights_only=True)
    assert last["epoch"] == 4 and last["scheduler"]["total_steps"] == 4 * steps
    assert last["scheduler"]["last_step"] == 4 * steps
    assert json.loads((run_dir / "args.json").read_text())["epochs"] == 4


@pytest.mark.reliability
def test_resume_applies_a_changed_lr_and_weight_decay(two_epoch_run, cls_tiny_data, cls_tiny_train_argv, tmp_path):
    steps = steps_per_epoch(cls_tiny_data)
    out = tmp_path / "changed"
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, out, "--resume", str(two_epoch_run / "epoch_001.pth"),
                                       "--weight-decay", "0.003", epochs=2, lr=0.01))
    # a new folder gets the history it continues (epoch 1, as the checkpoint's folder has it), then epoch 2
    assert records(out)[0] == records(two_epoch_run)[0]
    record = records(out)[1]
    assert record["epoch"] == 2 and record["lr"] == pytest.approx(cosine(0.01, steps, 2 * steps))
    ckpt = torch.load(out / "last.pth", weights_only=True)
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.003] and groups[0]["lr"] == pytest.approx(0.0)
    assert ckpt["args"]["lr"] == 0.01 and ckpt["args"]["weight_decay"] == 0.003  # what args.json says, ran
    # the same flags as the run: the same lr as the run's epoch 2
    same = tmp_path / "same"
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, same, "--resume", str(two_epoch_run / "epoch_001.pth"),
                                       epochs=2))
    assert records(same)[1]["lr"] == records(two_epoch_run)[1]["lr"]
    assert torch.load(same / "last.pth", weights_only=True)["optimizer"]["param_groups"][0]["weight_decay"] == 2e-5


def test_bn_bias_lr_is_a_group_of_the_optimizer_that_a_resume_keeps(cls_tiny_data, cls_tiny_train_argv, tmp_path):
    out = tmp_path / "fast"
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, out, "--bn-bias-lr", "64", epochs=2))
    ckpt = torch.load(out / "epoch_001.pth", weights_only=True)
    *_, fast = ckpt["optimizer"]["param_groups"]
    assert fast["lr_scale"] == 64.0 and ckpt["args"]["bn_bias_lr"] == 64.0
    assert fast["lr"] == pytest.approx(64 * ckpt["optimizer"]["param_groups"][0]["lr"]) and fast["lr"] > 0
    with pytest.raises(UserError, match="written with --bn-bias-lr 64.0, this run has 1.0"):
        train_cls.main(cls_tiny_train_argv(cls_tiny_data, tmp_path / "other", "--resume", str(out / "epoch_001.pth"),
                                           epochs=2))


def test_resume_with_fewer_epochs_than_done_is_refused(two_epoch_run, cls_tiny_data, cls_tiny_train_argv, tmp_path,
                                                       capsys):
    ckpt = two_epoch_run / "last.pth"
    err = error_of(capsys, cls_tiny_train_argv(cls_tiny_data, tmp_path / "x", "--resume", str(ckpt), epochs=1))
    assert err == f"error: {ckpt}: checkpoint of epoch 2, past --epochs 1; resume with --epochs 2 or more\n"
    assert not (tmp_path / "x").exists()


@pytest.mark.reliability
def test_resume_into_a_folder_holding_another_run_is_refused(two_epoch_run, cls_tiny_data, cls_tiny_train_argv,
                                                             tmp_path, capsys):
    other = copy_run(two_epoch_run, tmp_path / "other")
    (other / "args.json").write_text('{"note": "another run"}\n')
    before = snapshot(other)
    ckpt = two_epoch_run / "epoch_001.pth"
    err = error_of(capsys, cls_tiny_train_argv(cls_tiny_data, other, "--resume", str(ckpt), epochs=2))
    assert err.startswith(f"error: {other}: holds another run (") and f"--resume {ckpt} continues its own run" in err
    assert snapshot(other) == before  # not a byte changed: no checkpoint, args.json or spliced history
    # --overwrite replaces that run with the continued one, history included
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, other, "--resume", str(ckpt), "--overwrite", epochs=2))
    assert [r["epoch"] for r in records(other)] == [1, 2] and records(other)[0] == records(two_epoch_run)[0]
    assert json.loads((other / "args.json").read_text())["resume"] == str(ckpt)


@pytest.mark.reliability
def test_demo_never_replaces_a_real_run_but_replaces_a_demo_run(two_epoch_run, tmp_path, capsys):
    real = copy_run(two_epoch_run, tmp_path / "real")
    before = snapshot(real)
    demo = ["--demo", "--data-dir", str(tmp_path / "digits"), "--depth", "10", "--growth-rate", "4", "--epochs", "1",
            "--device", "cpu", "--amp", "none", "--workers", "0", "--no-progress"]
    err = error_of(capsys, [*demo, "--out-dir", str(real)])
    assert err.startswith(f"error: {real}: already holds a run (") and snapshot(real) == before
    # a demo run's folder (its args.json says demo) is the demo's to replace
    train_cls.main([*demo, "--out-dir", str(tmp_path / "mine")])
    train_cls.main([*demo, "--out-dir", str(tmp_path / "mine")])
    assert [r["epoch"] for r in records(tmp_path / "mine")] == [1]


@pytest.mark.reliability
@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_an_out_dir_that_cannot_be_created_is_one_line(where, cls_tiny_data, cls_tiny_train_argv, tmp_path, capsys):
    if where == "under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "sub"
    else:
        out = Path("/proc/hw1_run")
    err = error_of(capsys, cls_tiny_train_argv(cls_tiny_data, out, epochs=1))
    assert err.startswith(f"error: {out}: cannot create the run folder (")


# --- a resume that does not fit; a full disk at the metrics append --------------------------------


@pytest.mark.reliability
@pytest.mark.parametrize("flags,problem", [
    (["--no-wd-norm"], "written with --no-wd-norm False, this run has True"),
    (["--opt", "adamw"], "written with --opt sgd, this run has adamw"),
    (["drop-optimizer"], "cannot resume from it: it has no optimizer"),
])
def test_resume_into_a_run_it_does_not_fit(cls_one_epoch_run, cls_tiny_data, cls_tiny_train_argv, tmp_path, capsys,
                                          flags, problem):
    ckpt_path = cls_one_epoch_run / "last.pth"
    if flags == ["drop-optimizer"]:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        del ckpt["optimizer"]
        ckpt_path, flags = tmp_path / "weights_only.pth", []
        torch.save(ckpt, ckpt_path)
    out = tmp_path / "new_run"
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, out, "--resume", str(ckpt_path),
                                                                *flags, epochs=2))
    assert err == f"error: {ckpt_path}: {problem}" + (": resume with the same optimizer flags\n" if "this run" in problem
                                                       else " (weights only?); pass it as --weights to start a new "
                                                            "run from its weights\n")
    assert not out.exists()  # refused before anything was written


@pytest.mark.reliability
def test_full_disk_at_the_metrics_append_is_one_line(cls_tiny_run, cls_tiny_data, cls_tiny_train_argv, tmp_path):
    run_dir = copy_run(cls_tiny_run[0], tmp_path / "run")  # 4 epochs: metrics.jsonl is longer than args.json
    before = tree(run_dir)
    limit = (run_dir / "metrics.jsonl").stat().st_size + 50

    def small_disk():  # files may grow to ``limit`` bytes: room to rewrite metrics.jsonl, not to add a line
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    argv = cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume", run_dir / "last.pth", epochs=6)
    result = subprocess.run([sys.executable, "train_cls.py", *map(str, argv)], cwd=REPO, env=script_env(),
                            preexec_fn=small_disk, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = result.stderr.splitlines()[-1]
    assert error.startswith(f"error: {run_dir / 'metrics.jsonl'}: cannot write (is the disk full? ")
    after = tree(run_dir)
    assert after.pop("args.json") and after == {k: v for k, v in before.items() if k != "args.json"}  # no half line
