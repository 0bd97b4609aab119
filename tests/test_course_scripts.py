"""The course's scripts: hw1_1.sh and hw1_2.sh predict with the checkpoint they are given or their
default one, hw1_download.sh writes only files whose SHA-256 matches. Real processes."""
import hashlib
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import REPO
from helpers import script_env, write_pairs
from hw1.predict import predict_cls

pytestmark = pytest.mark.usefixtures("cls_one_thread")


def course_script(name, *args, cwd, env=None):
    return subprocess.Popen(["bash", str(REPO / name), *map(str, args)], cwd=cwd, env={**script_env(), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.reliability
def test_course_scripts_predict_with_the_checkpoint_they_are_given(cls_one_epoch_run, cls_tiny_data, seg_checkpoint,
                                                                   tmp_path):
    shutil.copytree(cls_tiny_data / "val_50", tmp_path / "images")
    write_pairs(tmp_path / "sat", [(16, 16)] * 2)
    # Paths relative to the caller's folder, as the course's grader passes them; a name that starts
    # with "-" is a path, not a flag.
    p1 = course_script("hw1_1.sh", "images", "-pred.csv", cwd=tmp_path,
                       env={"HW1_P1_CHECKPOINT": str(cls_one_epoch_run / "last.pth")})
    p2 = course_script("hw1_2.sh", "sat", "-masks", cwd=tmp_path, env={"HW1_P2_CHECKPOINT": str(seg_checkpoint)})
    for proc in (p1, p2):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    expected = predict_cls(tmp_path / "images", tmp_path / "again.csv", checkpoint=cls_one_epoch_run / "last.pth",
                           device="cpu")
    assert (tmp_path / "-pred.csv").read_text() == (tmp_path / "again.csv").read_text() and len(expected) == 12
    assert sorted(p.name for p in (tmp_path / "-masks").iterdir()) == ["0000_mask.png", "0001_mask.png"]


@pytest.mark.reliability
@pytest.mark.parametrize("args, empty", [(("sat", ""), "<output_dir>"), (("", "masks"), "<image_dir>")])
def test_course_scripts_refuse_an_empty_argument(args, empty, tmp_path):
    # Python would take "" for the current folder
    proc = course_script("hw1_2.sh", *args, cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err == f"error: hw1_2.sh: empty {empty} argument\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.reliability
def test_course_scripts_find_python_and_their_default_checkpoints(tmp_path):
    # A copy of the scripts without a venv, and a python3 on the PATH that records how it was called.
    clone = tmp_path / "clone"
    (clone / "checkpoints").mkdir(parents=True)
    for name in ("hw1_1.sh", "hw1_2.sh", "hw1_predict.sh"):
        shutil.copy(REPO / name, clone / name)
    (clone / "checkpoints" / "p1_densenet.pth").write_bytes(b"")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text('#!/bin/sh\nprintf "%s\\n" "$PYTHONPATH" "$@" > "$CALLED"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLED": str(tmp_path / "called"), "PYTHONPATH": ""}

    def call(script):
        result = subprocess.run(["bash", str(clone / script), "in", "out"], cwd=tmp_path, env={**os.environ, **env},
                                capture_output=True, text=True, timeout=60)
        return result, (tmp_path / "called").read_text().splitlines() if result.returncode == 0 else None

    result, called = call("hw1_1.sh")
    assert called == [str(clone), "-m", "hw1.predict", "cls", "--checkpoint",
                      str(clone / "checkpoints" / "p1_densenet.pth"), "--", "in", "out"]  # the shipped model A
    assert result.stderr == f"hw1_1.sh: checkpoint {clone / 'checkpoints' / 'p1_densenet.pth'}\n"
    (clone / "checkpoints" / "p1.pth").write_bytes(b"")
    assert call("hw1_1.sh")[1][5] == str(clone / "checkpoints" / "p1.pth")  # the downloaded one comes first
    shipped = clone / "checkpoints" / "p2_vgg16_fcn8s.pth"
    result, _ = call("hw1_2.sh")  # neither a downloaded nor the shipped P2 checkpoint
    assert result.returncode == 2 and result.stderr == (
        f"error: {shipped}: checkpoint not found; run 'bash hw1_download.sh' first or set HW1_P2_CHECKPOINT\n")
    shipped.write_bytes(b"")
    result, called = call("hw1_2.sh")
    assert called == [str(clone), "-m", "hw1.predict", "seg", "--checkpoint", str(shipped), "--", "in", "out"]
    assert result.stderr == f"hw1_2.sh: checkpoint {shipped}\n"
    (clone / "checkpoints" / "p2.pth").write_bytes(b"")
    assert call("hw1_2.sh")[1][5] == str(clone / "checkpoints" / "p2.pth")  # the downloaded one comes first


@pytest.mark.reliability
def test_download_template_writes_only_verified_files(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "p2.pth").write_bytes(np.random.default_rng(6).bytes(300_000))
    good = hashlib.sha256((served / "p2.pth").read_bytes()).hexdigest()
    url = (served / "p2.pth").as_uri()  # file://, as urllib fetches any URL
    dest = tmp_path / "checkpoints"
    shipped = (REPO / "hw1_download.sh").read_text()
    assert len(re.findall(r'^CHECKPOINTS="\n.*?\n"$', shipped, re.S | re.M)) == 1

    def download(entries=None):
        script = tmp_path / "hw1_download.sh"
        script.write_text(shipped if entries is None else
                          re.sub(r'^CHECKPOINTS="\n.*?\n"$', lambda m: f'CHECKPOINTS="\n{entries}\n"', shipped,
                                 flags=re.S | re.M))
        return subprocess.run(["bash", str(script)], env={**os.environ, "HW1_CHECKPOINT_DIR": str(dest)},
                              capture_output=True, text=True, timeout=60)

    result = download()  # the template as shipped
    assert result.returncode == 1 and "fill in CHECKPOINTS" in result.stderr and not dest.exists()
    result = download(f"p2.pth  {url}  {good}")
    assert result.returncode == 0 and result.stdout == f"{dest / 'p2.pth'}: downloaded, SHA-256 matches\n"
    assert (dest / "p2.pth").read_bytes() == (served / "p2.pth").read_bytes()
    assert download(f"p2.pth  {url}  {good}").stdout == f"{dest / 'p2.pth'}: already there, SHA-256 matches\n"
    # A hash that does not match, a URL that serves nothing: errors, and what was there stays as it was.
    result = download(f"p2.pth  {url}  {'0' * 64}\np1.pth  {(served / 'none.pth').as_uri()}  {good}")
    assert result.returncode == 1
    assert f"SHA-256 is {good}, expected {'0' * 64}; {dest / 'p2.pth'} not written" in result.stderr
    assert f"error: {(served / 'none.pth').as_uri()}: " in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(dest) == ["p2.pth"] and (dest / "p2.pth").read_bytes() == (served / "p2.pth").read_bytes()
    # A damaged file is replaced by a verified download.
    (dest / "p2.pth").write_bytes(b"damaged")
    assert download(f"p2.pth  {url}  {good}").returncode == 0
    assert (dest / "p2.pth").read_bytes() == (served / "p2.pth").read_bytes()


@pytest.mark.reliability
def test_course_scripts_without_torch_say_how_to_install(tmp_path):
    """No .venv and a python3 without torch: one line saying how to set up, exit 2, no traceback."""
    clone = tmp_path / "clone"
    (clone / "checkpoints").mkdir(parents=True)
    for name in ("hw1_1.sh", "hw1_predict.sh"):
        shutil.copy(REPO / name, clone / name)
    (clone / "checkpoints" / "p1_densenet.pth").write_bytes(b"")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a python3 that finds no packages (isolated mode, no site-packages)
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {shutil.which("python3")} -I -S "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    result = subprocess.run(["bash", str(clone / "hw1_1.sh"), "in", "out.csv"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: python3 lacks torch") and "pip install -r" in result.stderr
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.reliability
def test_ctrl_c_in_the_download_is_one_line_and_leaves_no_temporary_file(tmp_path):
    import signal
    import time

    served = tmp_path / "slow.pth"
    os.mkfifo(served)  # a download that blocks until we stop it
    dest = tmp_path / "checkpoints"
    shipped = (REPO / "hw1_download.sh").read_text()
    script = tmp_path / "hw1_download.sh"
    script.write_text(re.sub(r'^CHECKPOINTS="\n.*?\n"$', f'CHECKPOINTS="\np2.pth  {served.as_uri()}  {"0" * 64}\n"',
                             shipped, flags=re.S | re.M))
    proc = subprocess.Popen(["bash", str(script)], env={**os.environ, "HW1_CHECKPOINT_DIR": str(dest)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and not (dest.is_dir() and any(dest.iterdir())):
        time.sleep(0.05)  # until its temporary file exists: the download has started
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err == "interrupted\n"
    assert list(dest.iterdir()) == []
