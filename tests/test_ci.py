""".ci/run: the suite must leave the checkout as it found it.

``.ci/run`` is run in a small git repository holding it, with a stand-in for the cached venv's
Python whose ``-m pytest -q`` writes the file it is told to, so that no real suite runs.
"""
import hashlib
import os
import shutil
import subprocess

import pytest

from conftest import REPO

STUB = """#!/bin/sh
# a stand-in for the venv's python: imports succeed, "-m pytest -q" leaves $STRAY and exits $RC
if [ "$1" = "-m" ]; then
    [ -z "$STRAY" ] || { mkdir -p "$(dirname "$STRAY")"; echo x > "$STRAY"; }
    exit "${RC:-0}"
fi
exit 0
"""


@pytest.fixture
def ci_checkout(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    for name in (".ci/run", "requirements.txt", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "ci"], cwd=repo, check=True)
    cache = tmp_path / "cache"
    digest = hashlib.sha256((repo / "requirements.txt").read_bytes()).hexdigest()[:16]
    python = cache / "hw1-ci" / f"venv-{digest}" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STUB)
    python.chmod(0o755)
    (repo / "hw1_data" / "p1_data").mkdir(parents=True)  # course data extracted before: not the suite's
    (repo / "hw1_data" / "p1_data" / "val_gt.csv").write_text("filename,label\n")

    def ci(stray=None, rc=0):
        env = {**os.environ, "XDG_CACHE_HOME": str(cache), "RC": str(rc), "STRAY": stray or ""}
        return subprocess.run(["bash", ".ci/run"], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    return ci


@pytest.mark.reliability
def test_ci_fails_when_the_suite_leaves_files_in_the_checkout(ci_checkout):
    clean = ci_checkout()
    assert clean.returncode == 0, clean.stderr
    stray = ci_checkout(stray="hw1_data/demo_cls/train_50/0_0.png")  # inside an ignored folder
    assert stray.returncode == 1
    assert "the test suite changed the checkout" in stray.stderr
    assert "+ !! hw1_data/demo_cls/train_50/0_0.png" in stray.stderr
    assert "p1_data" not in stray.stderr and ".venv" not in stray.stderr
    untracked = ci_checkout(stray="notes.txt", rc=0)
    assert untracked.returncode == 1 and "+ ?? notes.txt" in untracked.stderr
    failed = ci_checkout(rc=3)  # the suite's own status is kept
    assert failed.returncode == 3
