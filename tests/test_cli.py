"""The shared command-line helpers: demo defaults, the course folder check, error reporting."""
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train_cls
import train_seg
from conftest import REPO
from helpers import noise, script_env
from hw1.cli import command_line, run
from hw1.data.cls import read_labels_csv
from hw1.errors import UserError
from hw1.tasks.seg import LAYOUT as SEG_LAYOUT


def test_require_layout_names_the_folder_and_the_archive(tmp_path):
    (tmp_path / "train").mkdir()
    assert SEG_LAYOUT.require(tmp_path, ("train",)) == tmp_path  # the splits asked for
    with pytest.raises(UserError) as e:
        SEG_LAYOUT.require(tmp_path)
    assert str(tmp_path) in str(e.value) and "p2_data.tar.gz" in str(e.value)
    (tmp_path / "validation").mkdir()
    assert SEG_LAYOUT.require(tmp_path) == tmp_path


def test_command_line_quotes_arguments():
    assert command_line("train_cls.py", ["--out-dir", "a b"]) == "python train_cls.py --out-dir 'a b'"


@pytest.mark.reliability
def test_run_turns_user_errors_into_one_line_and_status_2(capsys):
    def main(argv):
        raise UserError("x.png: broken")

    with pytest.raises(SystemExit) as e:
        run(main, [])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: x.png: broken\n"
    with pytest.raises(UserError):
        run(main, ["--debug"])


NUMERIC_FLAG_ERRORS = [
    ("eval", ["--task", "seg", "--batch-size", "-5"], "--batch-size -5: must be at least 1"),
    ("viz", ["curves", "runs/x", "--dpi", "0"], "--dpi 0: must be in [1, 1200]"),
    ("viz", ["curves", "runs/x", "--dpi", "-5"], "--dpi -5: must be in [1, 1200]"),
    ("viz", ["features", "--checkpoints", "a.pth", "--data-dir", "d", "--perplexity", "0"],
     "--perplexity 0.0: must be above 0"),
    ("viz", ["features", "--checkpoints", "a.pth", "--data-dir", "d", "--perplexity", "nan"],
     "--perplexity nan: must be above 0"),
    ("viz", ["features", "--checkpoints", "a.pth", "--data-dir", "d", "--num-classes", "0"],
     "--num-classes 0: must be in [1, 1000]"),
    ("viz", ["arch", "--model", "densenet", "--input-size", "1"], "--input-size 1: must be in [32, 4096]"),
    ("viz", ["confusion", "--checkpoint", "a.pth", "--data-dir", "d", "--batch-size", "-1"],
     "--batch-size -1: must be at least 1"),
    ("viz", ["masks", "--checkpoints", "a.pth", "--data-dir", "d", "--ids", "0013", "--alpha", "2"],
     "--alpha 2.0: must be in [0, 1]"),
    ("bench", ["--steps", "0"], "--steps 0: must be at least 1"),
    ("bench", ["--repeats", "0"], "--repeats 0: must be at least 1"),
    ("bench", ["--depth", "11"], "--depth 11: must be 6n+4 in [10, 400] (10, 16, 22, ..., 100)"),
    ("bench", ["--width", "inf"], "--width inf: must be a finite number"),
]


@pytest.mark.reliability
@pytest.mark.parametrize("command,argv,message", NUMERIC_FLAG_ERRORS,
                         ids=[f"{c} {' '.join(a)}" for c, a, _ in NUMERIC_FLAG_ERRORS])
def test_numeric_flags_out_of_range_are_one_line_exit_2(command, argv, message, tmp_path, capsys, monkeypatch):
    import eval as eval_script
    import viz
    from hw1.bench.cli import main as bench_main
    from hw1.cli import run

    monkeypatch.chdir(tmp_path)  # nothing may be written: the check comes before any output
    main = {"eval": eval_script.main, "viz": viz.main, "bench": bench_main}[command]
    with pytest.raises(SystemExit) as info:
        run(main, argv)
    assert info.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == []


# --- every numeric flag of every command: nan, inf, negative, 0 and huge values ----------------------

HUGE = str(10 ** 12)
VALUES = ("nan", "inf", "-1", "0", HUGE)
# (flag, value) that the commands take: they then stop at the missing input of the base command line,
# not at the flag. A huge --weight-decay is taken: the run then stops at its first non-finite loss
# (an --lr above 1e6 is refused: far above it the optimizer's step overflows fp32 before any loss).
ACCEPTED = {
    "train": {("--workers", "0"), ("--warmup-epochs", "0"), ("--min-lr", "0"), ("--weight-decay", "0"),
              ("--momentum", "0"), ("--seed", "0"), ("--ema", "0"), ("--micro-batch", "0"), ("--label-smoothing", "0"),
              ("--drop-rate", "0"), ("--aux-weight", "0"), ("--dropout", "0"), ("--lovasz", "0"), ("--lovasz", HUGE), ("--cutout", "0"),
              ("--mixup", "0"), ("--cutmix", "0"), ("--mix-prob", "0"),
              ("--warmup-epochs", HUGE),
              ("--epochs", HUGE), ("--micro-batch", HUGE), ("--seed", HUGE),
              ("--batch-size", HUGE), ("--weight-decay", HUGE), ("--grad-clip", HUGE)},
    "eval": {("--batch-size", HUGE)},
    "viz": {("--per-class", "0"), ("--alpha", "0"), ("--per-class", HUGE), ("--batch-size", HUGE),
            ("--perplexity", HUGE)},
    "bench": {("--drop-rate", "0"), ("--dropout", "0"), ("--warmup", "0"), ("--warmup", HUGE), ("--workers", "0"), ("--steps", HUGE), ("--repeats", HUGE),
              ("--data-batches", HUGE), ("--e2e-workers", "0"), ("--e2e-steps", HUGE), ("--e2e-batch-size", HUGE)},
}


def numeric_flags(parser, prefix=()):
    """``(argv prefix, flag)`` of every int or float option of ``parser`` and of its subcommands."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from numeric_flags(sub, (*prefix, name))
        elif action.type in (int, float) and action.option_strings:
            yield prefix, action.option_strings[0]


def numeric_cases():
    import eval as eval_script
    import viz
    from hw1.bench import cli as bench_cli

    # each command with a base command line that stops, after the flags are checked, at a missing input
    commands = [
        ("train", "train_cls.py", train_cls.main, train_cls.get_args_parser(),
         lambda d: ["--data-dir", f"{d}/none", "--out-dir", f"{d}/run"]),
        ("train", "train_seg.py", train_seg.main, train_seg.get_args_parser(),
         lambda d: ["--data-dir", f"{d}/none", "--out-dir", f"{d}/run", "--weights", "none"]),
        ("eval", "eval.py", eval_script.main, eval_script.get_args_parser(),
         lambda d: ["--task", "cls", "--checkpoint", f"{d}/none.pth", "--data-dir", f"{d}/none"]),
        ("viz", "viz.py", viz.main, viz.get_args_parser(), None),
        ("bench", "hw1.bench", bench_cli.main, bench_cli.get_args_parser(), lambda d: ["--data-dir", f"{d}/none"]),
    ]
    return [pytest.param(kind, main, prefix, base, flag, value, id=f"{script} {' '.join(prefix)} {flag} {value}")
            for kind, script, main, parser, base in commands
            for prefix, flag in numeric_flags(parser) for value in VALUES]


VIZ_BASE = {
    "features": ["--checkpoints", "none.pth", "--data-dir", "none"],
    "masks": ["--checkpoints", "none.pth", "--data-dir", "none", "--ids", "0013"],
    "curves": ["none"], "confusion": ["--checkpoint", "none.pth", "--data-dir", "none"],
    "arch": ["--model", "densenet"],
}


@pytest.mark.reliability
@pytest.mark.parametrize("kind, main, prefix, base, flag, value", numeric_cases())
def test_every_numeric_flag_is_checked_before_any_work(kind, main, prefix, base, flag, value, tmp_path, capsys,
                                                       monkeypatch):
    """nan, inf, -1, 0 and 10**12 in every numeric flag: a one-line error naming the flag, exit 2,
    before anything is read or written; or, where ACCEPTED says the value is valid, the command
    goes on to its first missing input."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    if kind == "viz":
        out = ["--out", "file/report.pdf"] if prefix == ("report",) else ["--out-dir", "file"]
        argv = [*prefix, *VIZ_BASE.get(prefix[0], []), *out]
    else:
        argv = base(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run(main, [*argv, flag, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") or ": error: " in last, err  # ours, or argparse's for an int flag given nan
    if (flag, value) in ACCEPTED[kind]:
        assert flag not in last, err
    else:
        assert flag in last or "invalid int value" in last, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written


# --- signals and a closed stdout, in real processes -----------------------------------------------


@pytest.mark.reliability
@pytest.mark.usefixtures("cls_one_thread")
def test_closed_stdout_ends_quietly_after_the_csv_is_written(cls_one_epoch_run, cls_tiny_data, tmp_path):
    out = tmp_path / "pred.csv"
    proc = subprocess.Popen([sys.executable, "-m", "hw1.predict", "cls", str(cls_tiny_data / "val_50"), str(out),
                             "--checkpoint", str(cls_one_epoch_run / "last.pth"), "--device", "cpu"],
                            cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # as `| head` that has exited before the process prints
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE
    assert err == ""
    assert len(read_labels_csv(out)) == 12


@pytest.mark.reliability
@pytest.mark.parametrize("stdout", ["closed", "full", "reader gone"])
def test_eval_writes_its_json_whatever_becomes_of_stdout(stdout, cls_tiny_data, tmp_path):
    """stdout closed (``>&-``), on a full disk (``> /dev/full``) or read by a process that has exited
    (``| true``): the JSON is written first; then a quiet end, one line and exit 2, or SIGPIPE's status."""
    gt, out = cls_tiny_data / "val_gt.csv", tmp_path / "m.json"
    pred = shutil.copy(gt, tmp_path / "pred.csv")
    argv = [sys.executable, "eval.py", "--task", "cls", "--pred", str(pred), "--gt", str(gt), "--json", str(out)]
    env = {**script_env(), "PYTHONUNBUFFERED": "1"}
    if stdout == "reader gone":
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.close()
        err, code = proc.stderr.read(), proc.wait(timeout=120)
        expected = (128 + signal.SIGPIPE, "")
    else:
        redirect = {"closed": ">&-", "full": "> /dev/full"}[stdout]
        result = subprocess.run(f"{shlex.join(argv)} {redirect}", shell=True, cwd=REPO, env=env,
                                stderr=subprocess.PIPE, text=True, timeout=120)
        err, code = result.stderr, result.returncode
        expected = (0, "") if stdout == "closed" else (2, "error: stdout: cannot write (No space left on device)\n")
    assert (code, err) == expected
    assert json.loads(out.read_text())["acc"] == 1.0


@pytest.mark.reliability
def test_an_error_keeps_its_exit_status_when_stderr_cannot_be_written(tmp_path):
    """``2> /dev/full``: the one-line error is lost, its status 2 is not (1 and a traceback of the
    failed print before)."""
    argv = [sys.executable, "eval.py", "--task", "cls", "--pred", str(tmp_path / "none.csv"),
            "--gt", str(tmp_path / "gt.csv")]
    result = subprocess.run(f"{shlex.join(argv)} 2> /dev/full", shell=True, cwd=REPO, env=script_env(),
                            stdout=subprocess.PIPE, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (2, "")


@pytest.mark.reliability
@pytest.mark.usefixtures("cls_one_thread")
def test_sigterm_during_predict_seg_leaves_no_staged_masks(seg_checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(300):
        noise(rng, 64, 64).save(images / f"{i:04d}_sat.jpg")
    out = tmp_path / "masks"
    proc = subprocess.Popen([sys.executable, "-m", "hw1.predict", "seg", str(images), str(out),
                             "--checkpoint", str(seg_checkpoint), "--device", "cpu"],
                            cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(next(p.iterdir(), None) for p in tmp_path.glob(".masks.*.tmp")):  # a first mask is staged
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.terminate()  # SIGTERM, as `timeout` sends
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and err == "terminated\n", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no masks folder, no staging folder


@pytest.mark.parametrize("text, stopped", [
    ("DataLoader worker (pid 4242) is killed by signal: Terminated. ", ("terminated", 128 + signal.SIGTERM)),
    ("DataLoader worker (pid 4242) is killed by signal: Interrupt. ", ("interrupted", 130)),
    ("DataLoader worker (pid 4242) is killed by signal: Killed. ", None),  # the OOM killer: its traceback stays
    ("CUDA error: out of memory", None),
])
@pytest.mark.reliability
def test_a_worker_ended_by_the_groups_signal_is_that_stop(text, stopped):
    from hw1.cli import _stopped_worker

    assert _stopped_worker(RuntimeError(text)) == stopped

