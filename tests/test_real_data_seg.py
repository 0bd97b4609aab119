"""The shipped P2 model on the course's validation set, when the data is extracted at hw1_data/p2_data.

The course's own route: ``bash hw1_2.sh`` with no checkpoint named (the shipped one), then
``eval.py --pred --gt``; and eval.py's direct route on the same checkpoint. Both must give the
score recorded for the shipped model (up to the rounding differences of another CPU's kernels).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VAL = REPO / "hw1_data" / "p2_data" / "validation"
SHIPPED = REPO / "checkpoints" / "p2_vgg16_fcn8s.pth"
RECORD = REPO / "results" / "p2_vgg16_fcn8s_cpu.json"

pytestmark = pytest.mark.skipif(not VAL.is_dir(), reason=f"{VAL} not extracted")


def eval_json(tmp_path, name, *args):
    out = tmp_path / f"{name}.json"
    subprocess.run([sys.executable, str(REPO / "eval.py"), "--task", "seg", *args, "--json", str(out)], check=True,
                   capture_output=True, text=True, cwd=REPO, timeout=600)
    return json.loads(out.read_text())


def test_hw1_2_sh_writes_every_mask_and_scores_what_is_recorded(tmp_path):
    out = tmp_path / "masks"
    # the repository's .venv/bin/python, as the course runs it (CI links its venv there)
    result = subprocess.run(["bash", str(REPO / "hw1_2.sh"), str(VAL), str(out)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"checkpoint {SHIPPED}" in result.stderr
    masks = sorted(p.name for p in out.iterdir())
    assert len(masks) == 257 and masks == sorted(p.name for p in VAL.glob("*_mask.png"))
    by_masks = eval_json(tmp_path, "pred", "--pred", str(out), "--gt", str(VAL))
    by_checkpoint = eval_json(tmp_path, "ckpt", "--checkpoint", str(SHIPPED), "--data-dir", str(VAL))
    recorded = json.loads(RECORD.read_text())["shipped"]["val_miou"]
    assert by_masks["miou"] == pytest.approx(by_checkpoint["miou"], abs=1e-9)
    assert by_masks["miou"] == pytest.approx(recorded, abs=0.005)
    assert by_masks["miou"] >= 0.62 and min(by_masks["iou"][:6]) >= 0.25
