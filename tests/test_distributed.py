"""torchrun with 2 gloo processes on the CPU: exact evaluation, a checkpoint one process loads, exact resume."""
import json
import os
import re
import subprocess
import sys
import traceback

import pytest
import torch
from torch import nn

from conftest import CLS_TINY_MODEL_ARGS, REPO, make_cls_tiny
from hw1 import engine, metrics
from hw1.checkpoint import load_checkpoint, model_from_checkpoint
from hw1.data.cls import cls_eval_transform, load_cls_split
from hw1.data.scenes import make_seg_demo
from hw1.tasks.seg import LAYOUT as SEG_LAYOUT
from hw1.data.seg import load_seg_split, seg_eval_transform
from hw1.distributed import ShardSampler
from hw1.errors import UserError
from hw1.losses import SegLoss
from hw1.runtime import get_device

pytestmark = pytest.mark.usefixtures("cls_one_thread")

TIMING_KEYS = {"train_img_s", "train_seconds", "val_img_s", "wall_seconds"}
RUNTIME = ["--device", "cpu", "--amp", "none", "--workers", "0", "--no-progress"]


def torchrun(script, *args, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           script, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


OUR_SOURCES = {p.resolve() for p in [*(REPO / "hw1").rglob("*.py"), *REPO.glob("*.py")]}


def frames_of_our_code(stderr):
    """The traceback frame lines (``  File "PATH", line N, in f``) of stderr whose file is one of this
    repository's modules or scripts. Only a frame says that a traceback comes from our code: torchrun
    prints a traceback of its own, and the venv's or the checkout's path may contain any name."""
    frames = re.findall(r'^\s*File "([^"]+)", line \d+', stderr, re.M)
    return [f for f in frames if (REPO / f).resolve() in OUR_SOURCES]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


@pytest.mark.parametrize("length,world", [(9, 2), (10, 2), (7, 3), (2, 4)])
def test_shard_sampler_counts_every_sample_once(length, world):
    shards = [list(ShardSampler(length, rank, world)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(length))
    assert [len(ShardSampler(length, rank, world)) for rank in range(world)] == [len(s) for s in shards]


@pytest.fixture(scope="module")
def odd_cls_data(tmp_path_factory):
    # 9 validation images: 2 ranks get 5 and 4, where DistributedSampler would repeat one.
    return make_cls_tiny(tmp_path_factory.mktemp("ddp_cls_data"), val_per_class=3)


def cls_argv(data, out, *extra):
    # micro-batches of 2 in per-rank batches of 4: DDP syncs gradients in the last chunk only (no_sync)
    return [*CLS_TINY_MODEL_ARGS, "--data-dir", data, "--out-dir", out, "--aug", "light", "--lr", "0.05",
            "--batch-size", "8", "--micro-batch", "2", "--epochs", "2", *RUNTIME, *extra]


@pytest.fixture(scope="module")
def ddp_cls_run(odd_cls_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_cls_run")
    result = torchrun("train_cls.py", *cls_argv(odd_cls_data, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_two_process_validation_equals_one_process_evaluation_of_the_checkpoint(ddp_cls_run, odd_cls_data):
    out, _ = ddp_cls_run
    last = records(out)[-1]
    ckpt = load_checkpoint(out / "last.pth", task="cls")  # what rank 0 wrote loads in one process
    assert ckpt["args"]["world_size"] == 2 and ckpt["args"]["command"].startswith("torchrun ")
    model = model_from_checkpoint(ckpt, out / "last.pth")
    val = load_cls_split(odd_cls_data / "val_50", labels_csv=odd_cls_data / "val_gt.csv", transform=cls_eval_transform())
    one = engine.evaluate(model, torch.utils.data.DataLoader(val, batch_size=4), num_classes=50, summarize=metrics.cls_summary,
                          criterion=nn.CrossEntropyLoss(label_smoothing=0.1), device=torch.device("cpu"))
    assert last["val_samples"] == one["samples"] == 9
    assert last["val_acc"] == one["acc"]
    assert last["val_per_class_acc"][:3] == one["per_class_acc"][:3]
    assert last["val_loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_only_rank_0_writes_and_logs(ddp_cls_run):
    out, result = ddp_cls_run
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "best.pth", "epoch_001.pth", "epoch_002.pth",
                                                     "last.pth", "metrics.jsonl"]
    assert [r["epoch"] for r in records(out)] == [1, 2]  # one line per epoch, not one per rank
    assert result.stderr.count("epoch 2/2") == 1
    ckpt = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert len(ckpt["rng_ranks"]) == 2
    # each rank draws its own augmentations: their random streams differ
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])


def test_two_process_resume_is_exact(ddp_cls_run, odd_cls_data, tmp_path):
    out, _ = ddp_cls_run
    resumed = tmp_path / "resumed"  # a new folder: it gets the history up to epoch 1 from the checkpoint's
    result = torchrun("train_cls.py", *cls_argv(odd_cls_data, resumed, "--resume", out / "epoch_001.pth"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert without_timing(records(resumed)) == without_timing(records(out))


@pytest.mark.reliability
def test_batch_that_does_not_split_is_a_one_line_error(odd_cls_data, tmp_path):
    result = torchrun("train_cls.py", *cls_argv(odd_cls_data, tmp_path / "run", "--batch-size", "7"))
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert "error: --batch-size 7 does not split over 2 processes; give a multiple of 2" in lines
    assert "[rank 1] error: --batch-size 7 does not split over 2 processes; give a multiple of 2" in lines
    # torchrun itself reports the failed processes with its own traceback; ours print none
    assert frames_of_our_code(result.stderr) == []
    try:  # the check does see a traceback of our code
        get_device("not-a-device")
    except UserError:
        assert frames_of_our_code(traceback.format_exc())
    assert not (tmp_path / "run" / "last.pth").exists()


def test_two_process_segmentation_matches_one_process_evaluation(tmp_path):
    data = make_seg_demo(tmp_path / "seg", SEG_LAYOUT, n_train=4, n_val=3, size=64)
    out = tmp_path / "run"
    result = torchrun("train_seg.py", "--model", "vgg16_fcn32s", "--weights", "none", "--fc-channels", "16",
                      "--batch-norm", "--crop-size", "64", "--batch-size", "2", "--epochs", "1", "--lr", "1e-3",
                      "--data-dir", data, "--out-dir", out, *RUNTIME)
    assert result.returncode == 0, result.stderr[-3000:]
    last = records(out)[-1]
    model = model_from_checkpoint(load_checkpoint(out / "last.pth", task="seg"))
    val = load_seg_split(data / "validation", transform=seg_eval_transform())
    # An untrained segmenter's classes nearly tie on many pixels, and a convolution's last bits
    # depend on the batch size and the thread count: each rank ran one thread (torchrun's
    # OMP_NUM_THREADS=1) on batches of one image, and so does this evaluation.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = engine.evaluate(model, torch.utils.data.DataLoader(val, batch_size=1), num_classes=7, summarize=metrics.seg_summary,
                              criterion=SegLoss(), device=torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert last["val_samples"] == one["samples"] == 3
    assert last["val_iou"] == [None if v != v else v for v in one["iou"]]
    assert last["val_loss"] == pytest.approx(one["loss"], rel=1e-5)
