"""P2 end to end on tiny generated data: scoring mask folders, train_seg.py, eval.py and hw1.predict.

Everything runs on the CPU with one torch thread, 64x64 scenes and a VGG16-FCN32s whose fc6/fc7
are 32 channels wide instead of 4096, so a training epoch takes about a second.
"""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the top-level scripts (train_seg.py, eval.py) are imported as modules
    sys.path.insert(0, str(REPO))

import eval as eval_script  # noqa: E402
import hw1.runtime  # noqa: E402
import train_seg  # noqa: E402
from helpers import (assert_one_line_error, cli_error, contents, noise, save_code_running_checkpoint,  # noqa: E402
                     write_pairs)
from hw1.checkpoint import model_from_checkpoint  # noqa: E402
from hw1.data.images import MEAN, STD  # noqa: E402
from hw1.data.masks import NUM_CLASSES, PALETTE, write_mask  # noqa: E402
from hw1.data.scenes import make_seg_demo  # noqa: E402
from hw1.data.seg import load_seg_split, seg_eval_transform  # noqa: E402
from hw1.errors import UserError  # noqa: E402
from hw1.metrics import mean_iou  # noqa: E402
from hw1.models import build_model  # noqa: E402
from hw1.predict import mask_name, predict_seg  # noqa: E402
from hw1.scoring import seg_confusion_from_dirs  # noqa: E402

FC = 32  # fc6/fc7 width of the tiny VGG16-FCN32s
TINY_VGG_ARGS = ["--model", "vgg16_fcn32s", "--weights", "none", "--fc-channels", str(FC)]
TINY_RUNTIME_ARGS = ["--device", "cpu", "--amp", "none", "--workers", "0", "--no-progress",
                     "--batch-size", "2", "--crop-size", "64"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # The tests share two cores with a training job; one intra-op thread is several times faster
    # than two threads fighting it for them (results are the same).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fp32_inference(monkeypatch):
    """Make ``--amp auto`` (eval.py, hw1.predict) pick full fp32 on this CPU, whatever its bf16 support."""
    monkeypatch.setattr(hw1.runtime, "cpu_kind", lambda: "fp32")


# --- brute-force reference --------------------------------------------------------------------

def brute_miou(pairs):
    """The course's mIoU over classes 0-5 of ``[(gt, pred), ...]`` class maps, pixels pooled.

    A class absent from both ground truth and prediction is left out of the mean (hw1's choice,
    see hw1.metrics.mean_iou); the course's validation set has every class.
    """
    gt = np.concatenate([g.ravel() for g, _ in pairs])
    pred = np.concatenate([p.ravel() for _, p in pairs])
    ious = []
    for c in range(6):
        tp = np.sum((pred == c) & (gt == c))
        fp = np.sum((pred == c) & (gt != c))
        fn = np.sum((pred != c) & (gt == c))
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    return float(np.mean(ious))


def decode_palette(path):
    """(H, W) class indices of a mask file whose every pixel is exactly one of the 7 palette colours."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    match = (rgb[:, :, None, :] == PALETTE[None, None]).all(-1)  # (H, W, 7)
    assert match.any(-1).all(), f"{path}: pixels outside the palette"
    return match.argmax(-1)


def save_classes(classes, path):
    """Write a class map as an RGB PNG with plain PIL (independent of hw1.data.masks.write_mask)."""
    Image.fromarray(PALETTE[classes]).save(path)


# --- scoring mask folders (seg_confusion_from_dirs, eval --pred/--gt) -------------------------

def make_mask_folders(root, rng, shapes):
    """``root/pred/{id}.png`` and ``root/gt/{id}_mask.png`` (+ a ``_sat.jpg``) for each shape; returns the pairs."""
    pred_dir, gt_dir = root / "pred", root / "gt"
    pred_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    pairs = []
    for k, shape in enumerate(shapes):
        i = f"{10 + 3 * k:04d}"
        gt = rng.choice(NUM_CLASSES, size=shape, p=[0.15, 0.35, 0.1, 0.1, 0.1, 0.1, 0.1])
        pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, 6, size=shape))
        save_classes(gt, gt_dir / f"{i}_mask.png")
        save_classes(pred, pred_dir / f"{i}.png")
        # the course's validation folder holds the satellite images too: not masks, so not scored
        Image.fromarray(rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)).save(gt_dir / f"{i}_sat.jpg")
        pairs.append((gt, pred))
    return pred_dir, gt_dir, pairs


def test_seg_confusion_pairs_by_id(tmp_path):
    rng = np.random.default_rng(0)
    pred_dir, gt_dir, pairs = make_mask_folders(tmp_path, rng, [(20, 30), (17, 9), (32, 32)])
    cm = seg_confusion_from_dirs(pred_dir, gt_dir)
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES) and cm.sum().item() == sum(g.size for g, _ in pairs)
    expected = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for gt, pred in pairs:
        np.add.at(expected, (gt.ravel(), pred.ravel()), 1)
    np.testing.assert_array_equal(cm.numpy(), expected)
    assert mean_iou(cm) == pytest.approx(brute_miou(pairs), abs=1e-12)


def test_seg_confusion_accepts_course_style_names_on_both_sides(tmp_path):
    # predict_seg writes xxxx_mask.png, as the course's ground truth is named: both pair as xxxx
    rng = np.random.default_rng(1)
    pred_dir, gt_dir, pairs = make_mask_folders(tmp_path, rng, [(8, 8), (5, 7)])
    for p in list(pred_dir.iterdir()):
        p.rename(p.with_name(p.stem + "_mask.png"))
    assert mean_iou(seg_confusion_from_dirs(pred_dir, gt_dir)) == pytest.approx(brute_miou(pairs), abs=1e-12)


@pytest.mark.reliability
@pytest.mark.parametrize("change", ["missing", "extra"])
def test_seg_confusion_different_ids_name_the_pred_folder(tmp_path, change):
    rng = np.random.default_rng(2)
    pred_dir, gt_dir, _ = make_mask_folders(tmp_path, rng, [(8, 8), (5, 7)])
    if change == "missing":
        (pred_dir / "0013.png").unlink()
    else:
        save_classes(np.zeros((8, 8), np.int64), pred_dir / "0099.png")
    with pytest.raises(UserError) as e:
        seg_confusion_from_dirs(pred_dir, gt_dir)
    message = str(e.value)
    assert str(pred_dir) in message and change in message
    assert ("0013" if change == "missing" else "0099") in message


def test_seg_confusion_size_mismatch_names_the_file(tmp_path):
    rng = np.random.default_rng(3)
    pred_dir, gt_dir, _ = make_mask_folders(tmp_path, rng, [(8, 8), (5, 7)])
    save_classes(np.zeros((7, 5), np.int64), pred_dir / "0013.png")  # transposed
    with pytest.raises(UserError) as e:
        seg_confusion_from_dirs(pred_dir, gt_dir)
    assert str(pred_dir / "0013.png") in str(e.value) and "0013_mask.png" in str(e.value)


def test_seg_confusion_missing_or_empty_folder(tmp_path):
    rng = np.random.default_rng(4)
    pred_dir, gt_dir, _ = make_mask_folders(tmp_path, rng, [(4, 4)])
    with pytest.raises(UserError, match="folder not found") as e:
        seg_confusion_from_dirs(tmp_path / "nope", gt_dir)
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .png masks") as e:
        seg_confusion_from_dirs(tmp_path / "empty", gt_dir)
    assert str(tmp_path / "empty") in str(e.value)


def test_eval_pred_gt_equals_brute_force(tmp_path, capsys):
    rng = np.random.default_rng(5)
    pred_dir, gt_dir, pairs = make_mask_folders(tmp_path, rng, [(20, 30), (17, 9), (32, 32), (3, 50)])
    out_json = tmp_path / "metrics.json"
    summary = eval_script.main(["--task", "seg", "--pred", str(pred_dir), "--gt", str(gt_dir),
                                "--json", str(out_json)])
    expected = brute_miou(pairs)
    assert summary["miou"] == pytest.approx(expected, abs=1e-12)
    assert len(summary["iou"]) == NUM_CLASSES
    assert json.loads(out_json.read_text())["miou"] == pytest.approx(expected, abs=1e-12)
    assert f"mIoU: {expected:.4f}" in capsys.readouterr().out


def test_eval_json_is_strict_json(tmp_path):
    # An undefined IoU (class 6 here, absent from truth and prediction) is written as null, not NaN.
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    classes = np.array([[0, 1], [2, 3]])  # no unknown pixels anywhere: IoU of class 6 is undefined
    save_classes(classes, pred_dir / "0000.png")
    save_classes(classes, gt_dir / "0000_mask.png")
    out_json = tmp_path / "metrics.json"
    eval_script.main(["--task", "seg", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(out_json)])

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    saved = json.loads(out_json.read_text(), parse_constant=refuse)
    assert saved["iou"][6] is None and saved["miou"] == 1.0


@pytest.mark.reliability
def test_eval_needs_pred_and_gt_or_checkpoint(tmp_path):
    with pytest.raises(UserError, match="--pred and --gt"):
        eval_script.main(["--task", "seg", "--pred", str(tmp_path)])
    with pytest.raises(UserError, match="--data-dir"):
        eval_script.main(["--task", "seg", "--checkpoint", str(tmp_path / "x.pth")])
    # a flag the chosen way of scoring would ignore is refused, not ignored
    pred = ["--task", "seg", "--pred", str(tmp_path), "--gt", str(tmp_path)]
    with pytest.raises(UserError, match="--tta: not used with --pred"):
        eval_script.main([*pred, "--tta"])
    with pytest.raises(UserError, match="--pred: not used with --checkpoint"):
        eval_script.main([*pred, "--checkpoint", "x.pth", "--data-dir", str(tmp_path)])


# --- train_seg.py -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    """Tiny demo scenes: 4 train / 3 validation pairs at 64x64. Read-only."""
    return make_seg_demo(tmp_path_factory.mktemp("seg_tiny_data"), n_train=4, n_val=3, size=64)


@pytest.fixture(scope="module")
def seg_run(seg_data, tmp_path_factory):
    """(run folder, last record) of a 2-epoch tiny VGG16-FCN32s run. Read-only."""
    out_dir = tmp_path_factory.mktemp("seg_tiny_run")
    record = train_seg.main([*TINY_VGG_ARGS, *TINY_RUNTIME_ARGS, "--data-dir", str(seg_data),
                             "--out-dir", str(out_dir), "--epochs", "2", "--lr", "1e-3", "--save-epochs"])
    return out_dir, record


@pytest.fixture(scope="module")
def varied_checkpoint(seg_run, seg_data, tmp_path_factory):
    """The tiny run's last.pth with a random class scorer that splits each image into several classes.

    A from-scratch model after 4 steps predicts one class everywhere, which would make every
    comparison of predictions trivially equal. The scorer's weights are made orthogonal to the
    mean fc7 feature, so the classes depend on how a location differs from the average one.
    """
    return vary(seg_run[0] / "last.pth", seg_data, tmp_path_factory.mktemp("seg_varied") / "varied.pth")


def vary(src, seg_data, path):
    """Write ``src`` with the class scorer that :func:`varied_checkpoint` describes to ``path``."""
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
                                        "width": 1.0, "fc_batch_norm": False, "skips": "none", "dropout": 0.5}
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


def save_cls_checkpoint(path):
    """A tiny DenseNet in the hw1 checkpoint format, as train_cls.py writes it."""
    config = {"depth": 10, "growth_rate": 4, "num_classes": 50}
    model = build_model("densenet", **config, weights="none")
    torch.save({"model": model.state_dict(), "model_name": "densenet", "model_config": config,
                "task": "cls", "epoch": 1, "args": {"model": "densenet"}}, path)
    return path


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


# --- eval --checkpoint vs predict + eval --pred ------------------------------------------------

def eval_checkpoint_vs_predicted_masks(checkpoint, val_dir, pred_dir):
    by_checkpoint = eval_script.main(["--task", "seg", "--checkpoint", str(checkpoint), "--data-dir", str(val_dir),
                                      "--device", "cpu"])
    written = predict_seg(val_dir, pred_dir, checkpoint=checkpoint, device="cpu")
    assert sorted(p.name for p in written) == ["0000_mask.png", "0001_mask.png", "0002_mask.png"]
    by_masks = eval_script.main(["--task", "seg", "--pred", str(pred_dir), "--gt", str(val_dir)])
    return by_checkpoint, by_masks


@pytest.mark.parametrize("which", ["trained", "varied"])
def test_eval_checkpoint_equals_predict_then_eval_in_fp32(which, seg_run, varied_checkpoint, seg_data, tmp_path,
                                                          fp32_inference):
    checkpoint = seg_run[0] / "last.pth" if which == "trained" else varied_checkpoint
    val_dir = seg_data / "validation"
    by_checkpoint, by_masks = eval_checkpoint_vs_predicted_masks(checkpoint, val_dir, tmp_path / "pred")
    # exactly: same pixels, same pooled confusion matrix (assert_array_equal treats NaN as equal)
    assert by_checkpoint["miou"] == by_masks["miou"] and by_checkpoint["pixel_acc"] == by_masks["pixel_acc"]
    np.testing.assert_array_equal(by_checkpoint["iou"], by_masks["iou"])
    # and both are the course's mIoU of the written masks against the ground truth
    pairs = [(decode_palette(val_dir / f"{i:04d}_mask.png"), decode_palette(tmp_path / "pred" / f"{i:04d}_mask.png"))
             for i in range(3)]
    assert by_masks["miou"] == pytest.approx(brute_miou(pairs), abs=1e-12)
    if which == "varied":
        assert len(np.unique(np.concatenate([p.ravel() for _, p in pairs]))) >= 3


def test_eval_checkpoint_equals_predict_then_eval_default_amp(varied_checkpoint, seg_data, tmp_path):
    # Under bf16 autocast (--amp auto on a CPU with AVX512-BF16, as here, and on GPUs) NCHW and
    # channels_last kernels round differently: with this checkpoint's smooth logits a few % of the
    # pixels flip. The two routes agree only because both run the model in channels_last.
    by_checkpoint, by_masks = eval_checkpoint_vs_predicted_masks(varied_checkpoint, seg_data / "validation",
                                                                 tmp_path / "pred")
    assert by_checkpoint["miou"] == by_masks["miou"]


# --- hw1.predict (seg) ----------------------------------------------------------------------------

def test_mask_name():
    assert mask_name("0001_sat.jpg") == "0001_mask.png"
    assert mask_name(Path("/x/y/0001_sat.png")) == "0001_mask.png"
    assert mask_name("foo.png") == "foo.png"
    assert mask_name("bar.jpg") == "bar.png"
    assert mask_name("sat.jpg") == "sat.png"


@pytest.fixture(scope="module")
def predict_inputs(tmp_path_factory):
    """A folder with images of two sizes and three naming styles, plus a ground-truth mask to skip."""
    folder = tmp_path_factory.mktemp("predict_in")
    rng = np.random.default_rng(0)
    sizes = {"0001_sat.jpg": (64, 64), "foo.png": (45, 77), "bar.jpg": (77, 45)}  # (H, W)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(folder / name)
    save_classes(np.zeros((64, 64), np.int64), folder / "0001_mask.png")
    (folder / "notes.txt").write_text("not an image")
    return folder, sizes


def expected_classes(model, path, tta):
    """Argmax of the model on one image, preprocessed by hand (fp32, NCHW)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    x = torch.from_numpy((rgb - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        prob = model(x)["out"].softmax(1)
        if tta:
            prob = prob + model(x.flip(-1))["out"].softmax(1).flip(-1)
    return prob[0].argmax(0).numpy()


@pytest.mark.reliability
@pytest.mark.parametrize("tta", [False, True])
def test_predict_seg_outputs(tta, predict_inputs, varied_checkpoint, tmp_path, fp32_inference):
    folder, sizes = predict_inputs
    out_dir = tmp_path / "masks"
    written = predict_seg(folder, out_dir, checkpoint=varied_checkpoint, device="cpu", tta=tta)
    expected_names = {"0001_sat.jpg": "0001_mask.png", "foo.png": "foo.png", "bar.jpg": "bar.png"}
    assert sorted(written) == sorted(out_dir / n for n in expected_names.values())
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(expected_names.values())  # no temporary files left
    # the ground truth in the input folder is neither predicted nor touched
    assert (decode_palette(folder / "0001_mask.png") == 0).all()
    model = model_from_checkpoint(torch.load(varied_checkpoint, weights_only=True)).eval()
    colours = set()
    for src, dst in expected_names.items():
        with Image.open(out_dir / dst) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert (im.height, im.width) == sizes[src]
            rgb = np.asarray(im)
        colours |= {tuple(c) for c in rgb.reshape(-1, 3)}
        classes = decode_palette(out_dir / dst)  # asserts every pixel is a palette colour
        np.testing.assert_array_equal(classes, expected_classes(model, folder / src, tta))
    assert colours <= {tuple(c) for c in PALETTE} and len(colours) >= 2


def test_predict_seg_tta_averages_with_the_flip(predict_inputs, varied_checkpoint, tmp_path, fp32_inference):
    # The mirrored image, segmented with TTA, gives exactly the mirrored masks: TTA is flip-symmetric.
    folder, _ = predict_inputs
    mirrored = tmp_path / "mirrored"
    mirrored.mkdir()
    for name in ("foo.png", "bar.jpg"):
        with Image.open(folder / name) as im:
            # PNG keeps the mirrored pixels exact (a JPEG would be re-encoded)
            im.transpose(Image.FLIP_LEFT_RIGHT).save(mirrored / (Path(name).stem + ".png"))
    plain_dir, mirror_dir = tmp_path / "out_plain", tmp_path / "out_mirror"
    predict_seg(folder, plain_dir, checkpoint=varied_checkpoint, device="cpu", tta=True)
    predict_seg(mirrored, mirror_dir, checkpoint=varied_checkpoint, device="cpu", tta=True)
    for name in ("foo.png", "bar.png"):
        a, b = decode_palette(plain_dir / name), decode_palette(mirror_dir / name)
        # ties between the two probability maps could break differently; none expected here
        assert np.mean(a == b[:, ::-1]) == 1.0


def test_predict_seg_cli(predict_inputs, varied_checkpoint, tmp_path):
    folder, sizes = predict_inputs
    out_dir = tmp_path / "cli_masks"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "hw1.predict", "seg", str(folder), str(out_dir),
                             "--checkpoint", str(varied_checkpoint), "--device", "cpu"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"wrote 3 masks to {out_dir}" in result.stdout
    assert sorted(p.name for p in out_dir.iterdir()) == ["0001_mask.png", "bar.png", "foo.png"]
    with Image.open(out_dir / "foo.png") as im:
        assert (im.height, im.width) == sizes["foo.png"]


def test_predict_seg_without_a_checkpoint_uses_the_shipped_one(predict_inputs, varied_checkpoint, tmp_path,
                                                                 monkeypatch):
    import dataclasses

    from hw1.tasks import TASKS

    def shipped(path):
        monkeypatch.setitem(TASKS, "seg", dataclasses.replace(TASKS["seg"], default_checkpoint=path))

    shipped(tmp_path / "missing.pth")
    with pytest.raises(UserError, match="missing.pth: checkpoint not found"):
        predict_seg(predict_inputs[0], tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()
    shipped(varied_checkpoint)
    by_default = predict_seg(predict_inputs[0], tmp_path / "out", device="cpu")
    named = predict_seg(predict_inputs[0], tmp_path / "named", checkpoint=varied_checkpoint, device="cpu")
    for a, b in zip(by_default, named):
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.reliability
def test_predict_seg_refuses_a_cls_checkpoint(predict_inputs, tmp_path):
    cls_ckpt = save_cls_checkpoint(tmp_path / "cls.pth")
    with pytest.raises(UserError) as e:
        predict_seg(predict_inputs[0], tmp_path / "out", checkpoint=cls_ckpt, device="cpu")
    assert str(cls_ckpt) in str(e.value) and "cls checkpoint" in str(e.value)


def test_predict_seg_folder_of_only_masks(varied_checkpoint, tmp_path):
    folder = tmp_path / "gt_only"
    folder.mkdir()
    save_classes(np.zeros((4, 4), np.int64), folder / "0000_mask.png")
    with pytest.raises(UserError, match="only \\*_mask.png") as e:
        predict_seg(folder, tmp_path / "out", checkpoint=varied_checkpoint, device="cpu")
    assert str(folder) in str(e.value)


def test_predicted_masks_follow_the_umask(predict_inputs, varied_checkpoint, tmp_path):
    # atomic writes go through a mkstemp file (mode 0600): the mask must still get the usual mode
    umask = os.umask(0o022)
    try:
        written = predict_seg(predict_inputs[0], tmp_path / "out", checkpoint=varied_checkpoint, device="cpu")
    finally:
        os.umask(umask)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in written)


def test_predict_seg_refuses_two_inputs_with_one_output_name(varied_checkpoint, tmp_path):
    folder = tmp_path / "clash"
    folder.mkdir()
    for name in ("foo.png", "foo.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    with pytest.raises(UserError, match="same foo.png"):
        predict_seg(folder, tmp_path / "out", checkpoint=varied_checkpoint, device="cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.reliability
def test_predict_seg_refuses_to_write_over_its_input(predict_inputs, varied_checkpoint):
    folder = predict_inputs[0]
    before = (folder / "0001_mask.png").read_bytes()
    with pytest.raises(UserError, match="is the input IMAGE_DIR; the outputs would replace its files"):
        predict_seg(folder, folder, checkpoint=varied_checkpoint, device="cpu")
    assert (folder / "0001_mask.png").read_bytes() == before


@pytest.mark.reliability
def test_predict_seg_never_replaces_ground_truth_masks(seg_data, varied_checkpoint, tmp_path):
    """OUT a copy of validation/: its masks are ground truth, which predictions replace only when told."""
    val = seg_data / "validation"
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in val.glob("*_mask.png"):
        (copy / p.name).write_bytes(p.read_bytes())
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    with pytest.raises(UserError, match="holds a mask that hw1.predict did not write"):
        predict_seg(val, copy, checkpoint=varied_checkpoint, device="cpu")
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    # predictions hw1 wrote are replaced by the next run without --overwrite; told to, ground truth too
    out = tmp_path / "out"
    for _ in range(2):
        assert len(predict_seg(val, out, checkpoint=varied_checkpoint, device="cpu")) == len(before)
    predict_seg(val, copy, checkpoint=varied_checkpoint, device="cpu", overwrite=True)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == {p.name: p.read_bytes() for p in out.iterdir()}


def test_seg_confusion_reads_uppercase_png(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    classes = np.array([[0, 1], [2, 3]])
    save_classes(classes, pred_dir / "0000.PNG")
    save_classes(classes, gt_dir / "0000_mask.png")
    cm = seg_confusion_from_dirs(pred_dir, gt_dir)
    assert cm.trace().item() == cm.sum().item() == 4


# --- a model trained at a smaller scale (--size) predicts at it, at each image's own size ----------

@pytest.fixture(scope="module")
def scaled_checkpoint(seg_data, tmp_path_factory):
    """A tiny run on the 64x64 scenes resized to 32x32 (``--size 32``), with a varied scorer."""
    out_dir = tmp_path_factory.mktemp("seg_scaled_run")
    args = [a if a != "64" else "32" for a in TINY_RUNTIME_ARGS]  # --crop-size 32
    train_seg.main([*TINY_VGG_ARGS, *args, "--data-dir", str(seg_data), "--out-dir", str(out_dir),
                    "--epochs", "1", "--lr", "1e-3", "--size", "32", "--skips", "8s", "--save-epochs"])
    path = vary(out_dir / "last.pth", seg_data, tmp_path_factory.mktemp("seg_scaled") / "varied.pth")
    # at 32x32 the stride-32 scores are one cell: a random pool3 scorer (stride 8, 4x4 cells) varies the classes
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["score_pool3.weight"] = torch.randn(NUM_CLASSES, 256, 1, 1, generator=torch.Generator().manual_seed(3))
    torch.save(ckpt, path)
    return path


def expected_scaled_classes(model, path, scale):
    """By hand: PIL's bilinear resize to ``scale``, the model in fp32, logits bilinearly upsampled back."""
    with Image.open(path) as im:
        own = (im.height, im.width)
        small = np.asarray(im.convert("RGB").resize((scale, scale), Image.BILINEAR), dtype=np.float32) / 255
    x = torch.from_numpy((small - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        logits = model(x)["out"]
    assert logits.shape[-2:] == (scale, scale)
    return torch.nn.functional.interpolate(logits, size=own, mode="bilinear", align_corners=False)[0].argmax(0).numpy()


def test_scaled_checkpoint_predicts_at_its_scale_and_writes_each_images_size(
        scaled_checkpoint, predict_inputs, tmp_path, fp32_inference):
    folder, sizes = predict_inputs
    ckpt = torch.load(scaled_checkpoint, weights_only=True)
    assert ckpt["args"]["size"] == 32 and ckpt["model_config"]["skips"] == "8s"
    written = predict_seg(folder, tmp_path / "masks", checkpoint=scaled_checkpoint, device="cpu", tta=False)
    model = model_from_checkpoint(ckpt).eval()
    classes = set()
    for path in written:
        src = next(n for n in sizes if mask_name(n) == path.name)
        got = decode_palette(path)
        assert got.shape == sizes[src]
        np.testing.assert_array_equal(got, expected_scaled_classes(model, folder / src, 32))
        classes |= set(np.unique(got).tolist())
    assert len(classes) >= 2  # the comparison is not between two constant maps


def test_eval_checkpoint_of_a_scaled_run_scores_full_size_masks_as_predict_then_eval(
        scaled_checkpoint, seg_data, tmp_path, fp32_inference):
    by_checkpoint, by_masks = eval_checkpoint_vs_predicted_masks(scaled_checkpoint, seg_data / "validation",
                                                                 tmp_path / "pred")
    assert by_checkpoint["miou"] == by_masks["miou"] and by_checkpoint["pixel_acc"] == by_masks["pixel_acc"]
    with Image.open(tmp_path / "pred" / "0000_mask.png") as im:
        assert im.size == (64, 64)  # the ground truth's size, not the model's 32


def test_export_with_half_weights_loads_back_to_fp32_and_predicts_alike(scaled_checkpoint, seg_data, tmp_path,
                                                                       fp32_inference):
    from hw1.checkpoint import export_checkpoint, load_checkpoint

    export_checkpoint(scaled_checkpoint, tmp_path / "half.pth", half=True)
    export_checkpoint(scaled_checkpoint, tmp_path / "full.pth")
    half = load_checkpoint(tmp_path / "half.pth", task="seg")
    assert half["model"]["fc6.weight"].dtype == torch.float16 and half["args"]["size"] == 32
    assert (tmp_path / "half.pth").stat().st_size < 0.6 * (tmp_path / "full.pth").stat().st_size
    model = model_from_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    val = seg_data / "validation"
    scores = [eval_script.main(["--task", "seg", "--checkpoint", str(p), "--data-dir", str(val), "--device", "cpu"])
              for p in (tmp_path / "half.pth", tmp_path / "full.pth")]
    assert abs(scores[0]["miou"] - scores[1]["miou"]) < 0.01


@pytest.mark.reliability
@pytest.mark.parametrize("side", ["pred", "gt"])
def test_seg_confusion_refuses_two_masks_of_one_id(side, tmp_path):
    pred_dir, gt_dir, _ = make_mask_folders(tmp_path, np.random.default_rng(5), [(8, 8), (8, 8)])
    folder = pred_dir if side == "pred" else gt_dir
    existing = sorted(folder.glob("*.png"))[0]
    twin = folder / (existing.stem.removesuffix("_mask") + ("_mask.png" if side == "pred" else ".png"))
    twin.write_bytes(existing.read_bytes())
    with pytest.raises(UserError, match=rf"{folder}: .* and .* are both masks of {existing.stem[:4]}; keep one"):
        seg_confusion_from_dirs(pred_dir, gt_dir)


# --- bad input and unsafe checkpoints -------------------------------------------------------------


@pytest.mark.reliability
def test_cli_truncated_jpeg_keeps_the_previous_masks(cli_runs):
    result, paths = cli_runs["truncated_jpeg"]
    assert_one_line_error(result, paths["bad"], "cannot read image")
    # Neither the first image's new mask nor a staging folder: the folder is as it was.
    assert contents(paths["out"]) == paths["before"]
    assert [p.name for p in paths["out"].iterdir()] == ["0000_mask.png"]


@pytest.mark.reliability
def test_predict_seg_error_creates_no_output_folder(seg_checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    noise(np.random.default_rng(0), 24, 24).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(UserError, match="b.png: cannot read image"):
        predict_seg(folder, tmp_path / "out" / "masks", checkpoint=seg_checkpoint, device="cpu")
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no masks folder, no staging folder


@pytest.mark.reliability
def test_predict_seg_converts_modes_and_keeps_sizes(seg_checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "in"
    folder.mkdir()
    sizes = {"gray.png": (37, 50), "rgba.png": (20, 20), "palette.png": (33, 65), "cmyk.jpg": (50, 37)}
    for (name, (h, w)), mode in zip(sizes.items(), ("L", "RGBA", "P", "CMYK")):
        noise(rng, h, w, mode).save(folder / name)
    written = predict_seg(folder, tmp_path / "out", checkpoint=seg_checkpoint, device="cpu")
    assert sorted(p.name for p in written) == ["cmyk.png", "gray.png", "palette.png", "rgba.png"]
    palette = {tuple(c) for c in PALETTE}
    for name, (h, w) in sizes.items():
        with Image.open(tmp_path / "out" / (Path(name).stem + ".png")) as im:
            assert im.mode == "RGB" and (im.height, im.width) == (h, w)
            assert {tuple(c) for c in np.asarray(im).reshape(-1, 3)} <= palette


@pytest.mark.reliability
def test_eval_checkpoint_on_pairs_of_an_odd_size(seg_checkpoint, tmp_path, capsys):
    # 36x52 is no multiple of the network's stride of 32: the model pads, and every pixel is scored.
    folder = write_pairs(tmp_path / "val", [(36, 52)] * 3)
    summary = eval_script.main(["--task", "seg", "--checkpoint", str(seg_checkpoint), "--data-dir", str(folder),
                            "--device", "cpu"])
    assert f"(classes 0-5, {3 * 36 * 52} pixels)" in capsys.readouterr().out
    assert 0 <= summary["pixel_acc"] <= 1


@pytest.mark.reliability
def test_eval_reads_off_palette_masks_by_thresholding(tmp_path):
    rng = np.random.default_rng(2)
    classes = rng.integers(0, 7, size=(16, 16))
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    write_mask(classes, pred_dir / "0000.png")
    # Ground truth drawn in off-palette colours: each channel moved up to 100 towards the middle.
    jitter = rng.integers(0, 101, size=(16, 16, 3))
    shaded = np.where(PALETTE[classes] > 127, PALETTE[classes] - jitter, PALETTE[classes] + jitter)
    shaded[0, 0] = (255, 0, 0)  # pure red is no class: read as unknown (6)
    gt_dir.mkdir()
    Image.fromarray(shaded.astype(np.uint8)).save(gt_dir / "0000_mask.png")
    cm = seg_confusion_from_dirs(pred_dir, gt_dir)
    expected = np.zeros((7, 7), np.int64)
    truth = classes.copy()
    truth[0, 0] = 6
    np.add.at(expected, (truth.ravel(), classes.ravel()), 1)
    np.testing.assert_array_equal(cm.numpy(), expected)


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


@pytest.mark.reliability
def test_predict_seg_refuses_a_checkpoint_that_runs_code(tmp_path):
    marker = tmp_path / "MARKER"
    evil = save_code_running_checkpoint(tmp_path / "evil.pth", marker)
    folder = write_pairs(tmp_path / "in", [(8, 8)])
    with pytest.raises(UserError, match="refused to load") as info:
        predict_seg(folder, tmp_path / "out", checkpoint=evil, device="cpu")
    assert str(info.value).startswith(str(evil))
    assert not marker.exists() and not (tmp_path / "out").exists()
