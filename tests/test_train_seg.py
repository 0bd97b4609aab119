"""train_seg.py on tiny generated data: the run folder, its checkpoints, resume refusals, bad data.

Everything runs on the CPU with one torch thread, 64x64 scenes and a VGG16-FCN32s whose fc6/fc7
are 32 channels wide instead of 4096 (``seg_run`` in conftest.py), so a training epoch takes about a second.
"""
import json

import numpy as np
import pytest
import torch

import train_seg
from conftest import FC, TINY_RUNTIME_ARGS, TINY_VGG_ARGS
from helpers import cli_error, save_cls_checkpoint, write_pairs
from hw1.checkpoint import model_from_checkpoint
from hw1.data.masks import NUM_CLASSES
from hw1.errors import UserError

pytestmark = pytest.mark.usefixtures("cls_one_thread")  # one torch thread (conftest.py)


# --- train_seg.py -------------------------------------------------------------------------------

def test_train_seg_writes_run_folder(seg_run):
    out_dir, record = seg_run
    assert {"last.pth", "best.pth", "metrics.jsonl", "args.json"} <= {p.name for p in out_dir.iterdir()}
    assert not list(out_dir.glob("epoch_*.pth"))  # --save-epochs with no values keeps none
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines[-1] == record
    for r in lines:
        assert isinstance(r["val_miou"], float) and 0.0 <= r["val_miou"] <= 1.0
        assert len(r["val_iou"]) == NUM_CLASSES
        # val_miou is the mean of the logged IoUs of classes 0-5 that are defined (null = absent)
        defined = [v for v in r["val_iou"][:6] if v is not None]
        assert r["val_miou"] == pytest.approx(sum(defined) / len(defined))
        assert np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"])


def test_train_seg_checkpoints_load_weights_only(seg_run):
    out_dir, _ = seg_run
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    last = torch.load(out_dir / "last.pth", map_location="cpu", weights_only=True)
    best = torch.load(out_dir / "best.pth", map_location="cpu", weights_only=True)
    for ckpt in (last, best):
        assert ckpt["model_name"] == "vgg16_fcn32s" and ckpt["task"] == "seg"
        assert ckpt["model_config"] == {"num_classes": NUM_CLASSES, "fc_channels": FC, "batch_norm": False,
                                        "width": 1.0, "fc_batch_norm": False, "dropout": 0.5}
        assert ckpt["args"]["model_config"] == ckpt["model_config"] and ckpt["args"]["model"] == "vgg16_fcn32s"
        assert ckpt["model"]["fc6.weight"].shape == (FC, 512, 7, 7)
        assert ckpt["model"]["score.weight"].shape == (NUM_CLASSES, FC, 1, 1)
    assert last["epoch"] == 2
    # best.pth is the first epoch with the highest validation mIoU (ties keep the earlier one)
    mious = [r["val_miou"] for r in lines]
    assert best["epoch"] == 1 + mious.index(max(mious))
    assert best["best"] == last["best"] == max(mious)
    assert best["metrics"] == lines[best["epoch"] - 1]
    # and the weights rebuild into a working model
    model = model_from_checkpoint(last).eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 40, 50))["out"].shape == (1, NUM_CLASSES, 40, 50)


def test_train_seg_with_pyramid_pooling_and_the_lovasz_term(seg_data, tmp_path):
    out_dir = tmp_path / "run"
    record = train_seg.main(["--model", "vgg16_fcn8s", "--weights", "none", "--width", "0.125", "--fc-channels", "16",
                             "--batch-norm", "--fc-batch-norm", "--context", "ppm", "--lovasz", "0.5",
                             *TINY_RUNTIME_ARGS, "--data-dir", str(seg_data), "--out-dir", str(out_dir),
                             "--epochs", "1", "--save-epochs"])
    assert np.isfinite(record["train_loss"])
    ckpt = torch.load(out_dir / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["model_config"]["context"] == "ppm" and ckpt["args"]["lovasz"] == 0.5
    assert any(k.startswith("context.branches.0.") for k in ckpt["model"])
    with pytest.raises(UserError, match="--lovasz"):
        train_seg.main([*TINY_VGG_ARGS, *TINY_RUNTIME_ARGS, "--data-dir", str(seg_data),
                        "--out-dir", str(tmp_path / "bad"), "--epochs", "1", "--lovasz", "-1"])


def test_train_seg_resnet101_fcn_one_epoch(seg_data, tmp_path):
    # ~8 s on one busy core at 64x64; the aux head exercises SegLoss's "aux" path in training.
    out_dir = tmp_path / "run"
    record = train_seg.main(["--model", "resnet101_fcn", "--weights", "none", "--aux-weight", "0.5",
                             *TINY_RUNTIME_ARGS, "--data-dir", str(seg_data), "--out-dir", str(out_dir),
                             "--epochs", "1", "--save-epochs"])
    assert record["epoch"] == 1 and np.isfinite(record["train_loss"]) and len(record["val_iou"]) == NUM_CLASSES
    ckpt = torch.load(out_dir / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["model_name"] == "resnet101_fcn"
    assert ckpt["model_config"] == {"num_classes": NUM_CLASSES, "aux_loss": True}
    assert "aux_head.weight" in ckpt["model"] and "fcn.aux_classifier.4.weight" in ckpt["model"]
    # the zero-initialised heads moved: the (aux) loss reached them
    assert ckpt["model"]["head.weight"].abs().sum() > 0
    assert ckpt["model"]["aux_head.weight"].abs().sum() > 0
    for name in ("last.pth", "best.pth"):  # 400 MB each: not worth keeping in pytest's kept tmp folders
        (out_dir / name).unlink()


def test_train_seg_missing_data_dir(tmp_path):
    missing = tmp_path / "no_such_data"
    with pytest.raises(UserError) as e:
        train_seg.main([*TINY_VGG_ARGS, *TINY_RUNTIME_ARGS, "--data-dir", str(missing),
                        "--out-dir", str(tmp_path / "run"), "--epochs", "1"])
    assert str(missing) in str(e.value) and "train/" in str(e.value)


@pytest.mark.reliability
def test_train_seg_refuses_to_resume_a_cls_checkpoint(seg_data, tmp_path):
    cls_ckpt = save_cls_checkpoint(tmp_path / "cls.pth")
    with pytest.raises(UserError) as e:
        train_seg.main([*TINY_VGG_ARGS, *TINY_RUNTIME_ARGS, "--data-dir", str(seg_data),
                        "--out-dir", str(tmp_path / "run"), "--epochs", "1", "--resume", str(cls_ckpt)])
    assert str(cls_ckpt) in str(e.value) and "cls checkpoint" in str(e.value)


def test_train_seg_refuses_to_resume_another_config(seg_run, seg_data, tmp_path):
    with pytest.raises(UserError) as e:
        train_seg.main(["--model", "vgg16_fcn32s", "--weights", "none", "--fc-channels", "16", *TINY_RUNTIME_ARGS,
                        "--data-dir", str(seg_data), "--out-dir", str(tmp_path / "run"), "--epochs", "3",
                        "--resume", str(seg_run[0] / "last.pth")])
    assert "fc_channels" in str(e.value) and "16" in str(e.value)


@pytest.mark.reliability
def test_train_seg_with_an_unpaired_image_exits_2(tmp_path, capsys):
    root = tmp_path / "data"
    write_pairs(root / "train", [(8, 8)])
    write_pairs(root / "validation", [(8, 8)])
    (root / "train" / "0000_mask.png").rename(root / "train" / "0001_mask.png")
    err = cli_error(capsys, train_seg.main, [
        "--model", "vgg16_fcn32s", "--weights", "none", "--fc-channels", "8", "--data-dir", str(root),
        "--out-dir", str(tmp_path / "run"), "--device", "cpu", "--workers", "0", "--no-progress"])
    assert f"{root / 'train'}: 2 file(s) without their _sat.jpg/_mask.png partner: 0000_sat.jpg, 0001_mask.png" in err
