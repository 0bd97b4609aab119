"""hw1.io: a checkpoint save is atomic (a kill or a failed write leaves the previous file whole), and
staging folders left by stopped runs are removed by the next run."""
import multiprocessing
import os
import random
import re
import resource
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from helpers import write_pairs
from hw1.checkpoint import load_checkpoint, save_checkpoint
from hw1.data.masks import write_mask
from hw1.errors import UserError
from hw1.predict import predict_seg

pytestmark = pytest.mark.usefixtures("cls_one_thread")


# --- atomic saves ---------------------------------------------------------------------------------


CRASH_NUMEL = 2_000_000  # 8 MB of weights: a save takes long enough to be killed in the middle


def numbered_checkpoint(n):
    """A checkpoint in the hw1 format whose weights and epoch are both ``n``."""
    return {"model": {"weight": torch.full((CRASH_NUMEL,), float(n))}, "model_name": "densenet",
            "model_config": {}, "epoch": n}


def save_forever(path, done):
    """Save checkpoints done+1, done+2, ... over ``path`` until killed; ``done`` holds the last saved."""
    n = done.value
    while True:
        n += 1
        save_checkpoint(numbered_checkpoint(n), path)
        done.value = n


@pytest.mark.reliability
def test_sigkill_while_saving_keeps_a_loadable_checkpoint(tmp_path):
    ctx = multiprocessing.get_context("fork")
    done = ctx.Value("q", 0, lock=False)  # no lock: a lock held by a killed writer would never be freed
    path = tmp_path / "last.pth"
    rng = random.Random(0)
    kills_mid_write = rounds = 0
    while kills_mid_write < 3:
        rounds += 1
        assert rounds <= 30, "no kill landed inside a save"
        temps_before = len(list(tmp_path.glob(".last.pth.*.tmp")))
        writer = ctx.Process(target=save_forever, args=(path, done), daemon=True)
        writer.start()
        while done.value == 0:  # the first round needs one finished save to protect
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
        writer.kill()  # SIGKILL: no finally block, no cleanup
        writer.join()
        assert writer.exitcode == -signal.SIGKILL
        kills_mid_write += len(list(tmp_path.glob(".last.pth.*.tmp"))) > temps_before

        ckpt = load_checkpoint(path)  # weights_only
        # The last finished save, or the one whose rename landed just before the kill.
        assert ckpt["epoch"] in (done.value, done.value + 1)
        assert bool((ckpt["model"]["weight"] == ckpt["epoch"]).all())
        done.value = ckpt["epoch"]
        # A killed save leaves a hidden .tmp file that no *.pth listing picks up.
        assert [p.name for p in tmp_path.glob("*.pth")] == ["last.pth"]
        assert all(re.fullmatch(r"\.last\.pth\.\w+\.tmp", p.name) for p in tmp_path.iterdir() if p != path)


def save_over_the_limit(path, conn):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    try:
        save_checkpoint(numbered_checkpoint(2), path)
        conn.send("saved")
    except UserError as e:
        conn.send(str(e))


@pytest.mark.reliability
def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(numbered_checkpoint(1), path)
    before = path.read_bytes()
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    writer = ctx.Process(target=save_over_the_limit, args=(path, child))
    writer.start()
    message = parent.recv()
    writer.join()
    assert message.startswith(f"{path}: cannot write (is the disk full?") and "\n" not in message
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # the partial file was removed



# --- staged output folders ------------------------------------------------------------------------


@pytest.mark.reliability
def test_staging_folders_of_stopped_runs_are_swept(seg_checkpoint, tmp_path):
    folder = write_pairs(tmp_path / "in", [(8, 8)])
    proc = subprocess.Popen(["true"])
    proc.wait()
    dead, alive = proc.pid, os.getpid()  # the id of a process that has ended, and of one that runs
    out = tmp_path / "masks"
    stale = [tmp_path / f".masks.{dead}.k2j4.tmp", out / f".staged.{dead}.q8z1.tmp"]
    running = [tmp_path / f".masks.{alive}.a1b2.tmp", out / f".staged.{alive}.c3d4.tmp"]
    for p in stale + running:
        write_mask(np.zeros((8, 8), np.int64), p / "0000_mask.png")
    predict_seg(folder, out, checkpoint=seg_checkpoint, device="cpu")
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in running)  # another run may still be writing those
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["0000_mask.png"]


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.reliability
def test_a_run_killed_while_its_masks_moved_in_is_finished_by_the_next(seg_checkpoint, tmp_path, caplog):
    """SIGKILL between the per-file moves into an existing folder: the folder holds part of the new
    set; readers refuse it, and the next run into it moves the rest of that set in before it writes."""
    from hw1.scoring import list_masks

    folder = write_pairs(tmp_path / "in", [(8, 8), (8, 8)])
    out = tmp_path / "masks"
    old = {f"000{i}_mask.png": np.full((8, 8), 1) for i in range(2)}
    new = {f"000{i}_mask.png": np.full((8, 8), 2) for i in range(2)}
    for name, classes in old.items():
        write_mask(classes, out / name)
    # the stopped run had written its set and moved 0000_mask.png in when it was killed
    stage = out / f".staged.{dead_pid()}.k2j4.moving"
    for name, classes in new.items():
        write_mask(classes, (stage if name != "0000_mask.png" else out) / name)
    with pytest.raises(UserError, match=f"{out}: holds part of two sets of masks \\({stage.name} is still moving"):
        list_masks(out)
    # the next run finishes those moves (said so), then writes its own set over them
    predict_seg(folder, out, checkpoint=seg_checkpoint, device="cpu", overwrite=True)
    assert not stage.exists() and sorted(p.name for p in out.iterdir()) == ["0000_mask.png", "0001_mask.png"]
    assert "a stopped run had moved part of its 1 output file(s) in; moved the rest" in caplog.text
    assert set(list_masks(out)) == {"0000", "0001"}


@pytest.mark.reliability
def test_a_stop_during_the_moves_finishes_them(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM between the per-file moves (the signal's exception raised from a move):
    the few renames left are done before the exception goes on, so no mix of two sets is left."""
    import hw1.io as io

    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (out / name).write_text("old")
    real, calls = os.replace, []

    def interrupted_after_one(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(io.os, "replace", interrupted_after_one)
    with pytest.raises(KeyboardInterrupt):
        with io.staged_folder(out) as stage:
            for name in ("a.txt", "b.txt", "c.txt"):
                (stage / name).write_text("new")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.txt": "new", "b.txt": "new", "c.txt": "new"}


@pytest.mark.reliability
def test_a_failed_write_in_a_staged_folder_names_the_output_not_the_staging_folder(tmp_path, monkeypatch):
    """A full disk while masks are written: the one-line error names OUT/name and the reason, not the
    hidden staging folder (which is removed) or the temporary file."""
    from pathlib import Path

    import errno
    from hw1.io import atomic_write_text, staged_folder

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    out = tmp_path / "masks"
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError) as error:
        with staged_folder(out) as stage:
            atomic_write_text("x", stage / "0000_mask.png")
    assert str(error.value) == f"{out / '0000_mask.png'}: cannot write (No space left on device)"
    assert list(tmp_path.iterdir()) == []
