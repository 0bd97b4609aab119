"""Shared fixtures. P1 (classification): a tiny generated data set in the course layout and a tiny
DenseNet trained on it once per session (its run folder is reused by the predict / eval tests), a folder
of odd images. P2: tiny generated scenes, a tiny VGG16-FCN32s trained on them once per session (and
variants of its checkpoint), an untrained one. Failing command lines of several modules, run side by
side as real processes. The ``reliability`` marker.
"""
import contextlib
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the top-level scripts (train_cls.py, eval.py) are imported as modules
    sys.path.insert(0, str(REPO))


def pytest_configure(config):
    # `pytest -m reliability` runs exactly the cases that docs/reliability.md lists.
    config.addinivalue_line("markers", "reliability: a failure case listed in docs/reliability.md")


# --- one intra-op thread (P1 and P2 test modules) ----------------------------------------------
# The tests share 2 cores with a training job; two OpenMP threads spinning against it make these
# tiny models ~50x slower than one thread does (results are the same).


@contextlib.contextmanager
def cls_one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cls_one_thread():
    """Run a module's tests with one torch thread (use: ``pytestmark = pytest.mark.usefixtures(...)``)."""
    with cls_one_torch_thread():
        yield


# --- P1: tiny classification data ---------------------------------------------------------------

CLS_TINY_CLASSES = 3
CLS_TINY_TRAIN_PER_CLASS = 12
CLS_TINY_VAL_PER_CLASS = 4
# A DenseNet small enough that a whole epoch on the tiny set takes a fraction of a second.
CLS_TINY_MODEL_ARGS = ["--model", "densenet", "--depth", "10", "--growth-rate", "4"]
CLS_TINY_RUNTIME_ARGS = ["--device", "cpu", "--amp", "none", "--workers", "0", "--no-progress"]


def cls_tiny_image(label, rng):
    """32x32 RGB uint8 image whose class shows as a bright channel and a stripe, plus noise."""
    pixels = rng.normal(90, 25, size=(32, 32, 3))
    pixels[..., label % 3] += 100
    pixels[4 * label: 4 * label + 6, :, :] += 60
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_cls_tiny(root, *, classes=CLS_TINY_CLASSES, train_per_class=CLS_TINY_TRAIN_PER_CLASS,
                  val_per_class=CLS_TINY_VAL_PER_CLASS, seed=0):
    """Write ``root/train_50/{label}_{id}.png``, ``root/val_50/{label}_{id}.png`` and ``root/val_gt.csv``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for split, per_class in (("train_50", train_per_class), ("val_50", val_per_class)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for label in range(classes):
            for i in range(per_class):
                name = f"{label}_{i}.png"
                Image.fromarray(cls_tiny_image(label, rng)).save(root / split / name)
                if split == "val_50":
                    rows.append((name, label))
    with open(root / "val_gt.csv", "w", newline="") as f:
        csv.writer(f).writerows([("filename", "label"), *rows])
    return root


@pytest.fixture(scope="session")
def cls_tiny_data(tmp_path_factory):
    """Root of a tiny P1 data set (3 classes, 36 train / 12 val images). Read-only: tests must not modify it."""
    return make_cls_tiny(tmp_path_factory.mktemp("cls_tiny_data"))


def _cls_tiny_train_argv(data_dir, out_dir, *extra, epochs=4, lr=0.05, batch_size=8):
    return [*CLS_TINY_MODEL_ARGS, "--data-dir", str(data_dir), "--out-dir", str(out_dir),
            "--epochs", str(epochs), "--aug", "none", "--lr", str(lr), "--batch-size", str(batch_size),
            *CLS_TINY_RUNTIME_ARGS, *extra]


@pytest.fixture(scope="session")
def cls_tiny_train_argv():
    """``f(data_dir, out_dir, *extra, epochs=4, lr=0.05, batch_size=8)``: the ``train_cls.main`` command
    line of a short CPU run of the tiny DenseNet (depth 10, growth 4, no augmentation, fp32)."""
    return _cls_tiny_train_argv


@pytest.fixture(scope="session")
def cls_tiny_run(cls_tiny_data, tmp_path_factory):
    """(run folder, last record) of a 4-epoch tiny DenseNet run, trained once per session. Read-only."""
    import train_cls

    out_dir = tmp_path_factory.mktemp("cls_tiny_run")
    with cls_one_torch_thread():
        record = train_cls.main(_cls_tiny_train_argv(cls_tiny_data, out_dir))
    return out_dir, record


@pytest.fixture(scope="session")
def cls_tiny_checkpoint(cls_tiny_run):
    """Path of the tiny run's ``best.pth``."""
    return cls_tiny_run[0] / "best.pth"


@pytest.fixture(scope="session")
def odd_folder(tmp_path_factory, cls_tiny_data):
    """Images the grader might send: course PNGs plus grayscale, RGBA, palette, 64x48 and JPEG files.

    Names start with a class digit so ``load_cls_split`` can read the folder too. Read-only.
    """
    folder = tmp_path_factory.mktemp("odd_images")
    rng = np.random.default_rng(1)
    for name in ("0_1.png", "1_2.png", "2_3.png"):
        (folder / name).write_bytes((cls_tiny_data / "val_50" / name).read_bytes())
    rgb = Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    rgb.convert("L").save(folder / "3_gray.png")
    rgb.convert("RGBA").save(folder / "4_rgba.png")
    rgb.convert("P", palette=Image.ADAPTIVE).save(folder / "5_palette.png")
    Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)).save(folder / "6_wide.png")
    rgb.save(folder / "7_photo.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


# --- P2: tiny scenes and a tiny VGG16-FCN32s trained on them ------------------------------------------

FC = 32  # fc6/fc7 width of the tiny VGG16-FCN32s
TINY_VGG_ARGS = ["--model", "vgg16_fcn32s", "--weights", "none", "--fc-channels", str(FC)]
TINY_RUNTIME_ARGS = ["--device", "cpu", "--amp", "none", "--workers", "0", "--no-progress",
                     "--batch-size", "2", "--crop-size", "64"]


@pytest.fixture
def fp32_inference(monkeypatch):
    """Make ``--amp auto`` (eval.py, hw1.predict) pick full fp32 on this CPU, whatever its bf16 support."""
    import hw1.runtime

    monkeypatch.setattr(hw1.runtime, "cpu_kind", lambda: "fp32")


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory):
    """Tiny demo scenes: 4 train / 3 validation pairs at 64x64. Read-only."""
    from hw1.data.scenes import make_seg_demo
    from hw1.tasks.seg import LAYOUT as SEG_LAYOUT

    return make_seg_demo(tmp_path_factory.mktemp("seg_tiny_data"), SEG_LAYOUT, n_train=4, n_val=3, size=64)


@pytest.fixture(scope="session")
def seg_run(seg_data, tmp_path_factory):
    """(run folder, last record) of a 2-epoch tiny VGG16-FCN32s run. Read-only."""
    import train_seg

    out_dir = tmp_path_factory.mktemp("seg_tiny_run")
    with cls_one_torch_thread():
        record = train_seg.main([*TINY_VGG_ARGS, *TINY_RUNTIME_ARGS, "--data-dir", str(seg_data),
                                 "--out-dir", str(out_dir), "--epochs", "2", "--lr", "1e-3", "--save-epochs"])
    return out_dir, record


@pytest.fixture(scope="session")
def varied_checkpoint(seg_run, seg_data, tmp_path_factory):
    """The tiny run's last.pth with a random class scorer that splits each image into several classes.

    A from-scratch model after 4 steps predicts one class everywhere, which would make every
    comparison of predictions trivially equal. The scorer's weights are made orthogonal to the
    mean fc7 feature, so the classes depend on how a location differs from the average one.
    """
    with cls_one_torch_thread():
        return vary(seg_run[0] / "last.pth", seg_data, tmp_path_factory.mktemp("seg_varied") / "varied.pth")


def vary(src, seg_data, path):
    """Write ``src`` with the class scorer that :func:`varied_checkpoint` describes to ``path``."""
    from hw1.checkpoint import model_from_checkpoint
    from hw1.data.masks import NUM_CLASSES
    from hw1.data.seg import load_seg_split, seg_eval_transform

    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    model = model_from_checkpoint(ckpt).eval()
    val = load_seg_split(seg_data / "validation", transform=seg_eval_transform())
    with torch.inference_mode():
        x = torch.stack([val[i][0] for i in range(len(val))])
        f = model.drop7(model.relu7(model.fc7(model.relu6(model.fc6(model.features(x))))))
    mu = f.mean((0, 2, 3))
    w = torch.randn(NUM_CLASSES, FC, generator=torch.Generator().manual_seed(0))
    w -= (w @ mu)[:, None] * mu / (mu @ mu)
    ckpt["model"]["score.weight"] = (w / f.std())[:, :, None, None]
    ckpt["model"]["score.bias"] = torch.zeros(NUM_CLASSES)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="session")
def scaled_checkpoint(seg_data, tmp_path_factory):
    """A tiny run on the 64x64 scenes resized to 32x32 (``--size 32``), with a varied scorer. Read-only."""
    import train_seg
    from hw1.data.masks import NUM_CLASSES

    out_dir = tmp_path_factory.mktemp("seg_scaled_run")
    args = [a if a != "64" else "32" for a in TINY_RUNTIME_ARGS]  # --crop-size 32
    with cls_one_torch_thread():
        train_seg.main(["--model", "vgg16_fcn8s", *TINY_VGG_ARGS[2:], *args, "--data-dir", str(seg_data),
                        "--out-dir", str(out_dir), "--epochs", "1", "--lr", "1e-3", "--size", "32", "--save-epochs"])
        path = vary(out_dir / "last.pth", seg_data, tmp_path_factory.mktemp("seg_scaled") / "varied.pth")
    # at 32x32 the stride-32 scores are one cell: a random pool3 scorer (stride 8, 4x4 cells) varies the classes
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["score_pool3.weight"] = torch.randn(NUM_CLASSES, 256, 1, 1, generator=torch.Generator().manual_seed(3))
    torch.save(ckpt, path)
    return path


# --- P1 and P2: a one-epoch run, an untrained segmenter, failing command lines ----------------------

SEG_CONFIG = {"num_classes": 7, "fc_channels": 8, "batch_norm": False}


@pytest.fixture(scope="session")
def seg_checkpoint(tmp_path_factory):
    """An untrained VGG16-FCN32s (fc6/fc7 8 channels wide) in the hw1 checkpoint format."""
    from hw1.models import build_model

    model = build_model("vgg16_fcn32s", **SEG_CONFIG, weights="none")
    path = tmp_path_factory.mktemp("seg_ckpt") / "seg.pth"
    torch.save({"model": model.state_dict(), "model_name": "vgg16_fcn32s", "model_config": SEG_CONFIG,
                "task": "seg"}, path)
    return path


@pytest.fixture(scope="session")
def cls_one_epoch_run(cls_tiny_data, cls_tiny_train_argv, tmp_path_factory):
    """Run folder of a 1-epoch tiny DenseNet run (no epoch_NNN.pth). Read-only: copy it to change it."""
    import train_cls

    out = tmp_path_factory.mktemp("one_epoch")
    with cls_one_torch_thread():
        train_cls.main(cls_tiny_train_argv(cls_tiny_data, out, "--save-epochs", epochs=1))
    return out


@pytest.fixture(scope="session")
def cli_runs(tmp_path_factory, cls_tiny_data, cls_one_epoch_run, seg_checkpoint):
    """Failing command lines of several test modules, run as real processes at once;
    ``{case: (CompletedProcess, paths)}``. Cases: ``corrupt_png`` and ``non_utf8_name``
    (test_predict_cls.py), ``malformed_csv`` (test_eval_cls.py), ``truncated_jpeg`` (test_predict_seg.py),
    ``features_of_one_image`` (test_viz.py).

    Each starts Python and imports torch (seconds), so they run in parallel, once per session.
    """
    from helpers import contents, noise, script_env, truncate
    from hw1.data.masks import write_mask
    from hw1.outputs import MASK_MARK

    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    cases = {}

    # P1 prediction over a folder with a corrupt PNG, where an earlier prediction CSV exists.
    images = root / "cls_images"
    images.mkdir()
    shutil.copy(cls_tiny_data / "val_50" / "0_0.png", images / "0_0.png")
    (images / "1_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    csv_out = root / "pred.csv"
    csv_out.write_text("filename,label\nold.png,1\n")
    cases["corrupt_png"] = ([sys.executable, "-m", "hw1.predict", "cls", images, csv_out,
                             "--checkpoint", cls_one_epoch_run / "last.pth", "--device", "cpu"],
                            {"bad": images / "1_bad.png", "out": csv_out})

    # P2 prediction where the second image is a truncated JPEG and the output folder has old masks.
    sats = root / "sat_images"
    sats.mkdir()
    for i in range(2):
        noise(rng, 40, 40).save(sats / f"000{i}_sat.jpg", quality=90)
    truncate(sats / "0001_sat.jpg")
    masks_out = root / "masks"
    write_mask(np.zeros((40, 40), np.int64), masks_out / "0000_mask.png", text=MASK_MARK)  # an earlier prediction
    cases["truncated_jpeg"] = ([sys.executable, "-m", "hw1.predict", "seg", sats, masks_out,
                                "--checkpoint", seg_checkpoint, "--device", "cpu"],
                               {"bad": sats / "0001_sat.jpg", "out": masks_out})

    # Scoring against a ground-truth CSV that lists a file twice, where an earlier --json exists.
    gt = root / "gt.csv"
    gt.write_text("filename,label\na.png,1\nb.png,2\na.png,3\n")
    pred = root / "p.csv"
    pred.write_text("filename,label\na.png,1\nb.png,2\n")
    json_out = root / "metrics.json"
    json_out.write_text('{"acc": 0.5, "per_class_acc": [0.5]}\n')  # an earlier eval.py --json
    cases["malformed_csv"] = ([sys.executable, "eval.py", "--task", "cls", "--pred", pred, "--gt", gt,
                               "--json", json_out], {"bad": gt, "out": json_out})

    # P1 prediction over a folder with a file name that is not UTF-8 (a CSV cannot hold it).
    odd = root / "odd_names"
    odd.mkdir()
    shutil.copy(cls_tiny_data / "val_50" / "0_0.png", odd / "0_0.png")
    shutil.copy(cls_tiny_data / "val_50" / "0_1.png", os.fsdecode(os.fsencode(odd) + b"/caf\xe9.png"))
    cases["non_utf8_name"] = ([sys.executable, "-m", "hw1.predict", "cls", odd, root / "odd.csv",
                               "--checkpoint", cls_one_epoch_run / "last.pth", "--device", "cpu"],
                              {"out": root / "odd.csv"})

    # PCA and t-SNE of the features of a single image.
    one = root / "one_image"
    one.mkdir()
    shutil.copy(cls_tiny_data / "val_50" / "0_0.png", one / "0_0.png")
    cases["features_of_one_image"] = ([sys.executable, "viz.py", "features", "--checkpoints",
                                       cls_one_epoch_run / "last.pth", "--data-dir", one, "--out-dir", root / "fig",
                                       "--device", "cpu"], {"bad": one, "out": root / "fig"})

    before = {name: contents(paths.get("out")) for name, (_, paths) in cases.items()}
    procs = {name: subprocess.Popen([str(a) for a in argv], cwd=REPO, env=script_env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (argv, _) in cases.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        completed = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        results[name] = (completed, {**cases[name][1], "before": before[name]})
    return results
