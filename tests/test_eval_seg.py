"""P2 scoring on tiny generated data: seg_confusion_from_dirs and eval.py --task seg, from mask folders
(--pred/--gt) and from a checkpoint (--checkpoint/--data-dir), which agrees with hw1.predict + --pred.

Everything runs on the CPU with one torch thread; the models are the tiny VGG16-FCN32s runs of
conftest.py (``seg_run``, ``varied_checkpoint``, ``scaled_checkpoint``, ``seg_checkpoint``).
"""
import json

import numpy as np
import pytest
from PIL import Image

import eval as eval_script
from helpers import decode_palette, save_classes, write_pairs
from hw1.data.masks import NUM_CLASSES, PALETTE, write_mask
from hw1.errors import UserError
from hw1.metrics import mean_iou
from hw1.predict import predict_seg
from hw1.scoring import seg_confusion_from_dirs

pytestmark = pytest.mark.usefixtures("cls_one_thread")  # one torch thread (conftest.py)


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
@pytest.mark.parametrize("suffix", ["_sat.png", "_mask.png", ".png"])
def test_eval_scores_masks_named_after_their_images(suffix, tmp_path, capsys):
    # name.replace(".jpg", ".png") gives 0010_sat.png: the course's evaluator reads every .png of
    # both folders (in sorted order), and so does eval.py, pairing them by id
    rng = np.random.default_rng(6)
    pred_dir, gt_dir, pairs = make_mask_folders(tmp_path, rng, [(8, 8), (5, 7), (6, 6)])
    for p in list(pred_dir.iterdir()):
        p.rename(p.with_name(p.stem + suffix))
    summary = eval_script.main(["--task", "seg", "--pred", str(pred_dir), "--gt", str(gt_dir)])
    assert summary["miou"] == pytest.approx(brute_miou(pairs), abs=1e-12)
    assert f"mIoU: {brute_miou(pairs):.4f}" in capsys.readouterr().out


@pytest.mark.reliability
def test_eval_says_how_masks_pair_when_no_name_does(tmp_path):
    pred_dir, gt_dir, _ = make_mask_folders(tmp_path, np.random.default_rng(7), [(8, 8), (5, 7)])
    for p in list(pred_dir.iterdir()):
        p.rename(p.with_name("pred_" + p.name))
    with pytest.raises(UserError) as e:
        seg_confusion_from_dirs(pred_dir, gt_dir)
    assert str(e.value) == (f"{pred_dir}: mask ids differ from {gt_dir} (a mask's id is its name without _mask, "
                            "_sat and .png: xxxx_mask.png, xxxx_sat.png and xxxx.png are all xxxx): missing 2 "
                            "(e.g. 0010); extra 2 (e.g. pred_0010)")


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


def test_seg_confusion_reads_uppercase_png(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    classes = np.array([[0, 1], [2, 3]])
    save_classes(classes, pred_dir / "0000.PNG")
    save_classes(classes, gt_dir / "0000_mask.png")
    cm = seg_confusion_from_dirs(pred_dir, gt_dir)
    assert cm.trace().item() == cm.sum().item() == 4


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
def test_masks_of_class_indices_are_scored_as_the_course_does_with_a_warning(tmp_path, caplog):
    rng = np.random.default_rng(3)
    classes = rng.integers(0, 6, size=(2, 8, 8))
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    for i, c in enumerate(classes):
        write_mask(c, gt_dir / f"{i:04d}_mask.png")
        Image.fromarray(c.astype(np.uint8)).save(pred_dir / f"{i:04d}.png")  # grey levels 0-5, not colours
    cm = seg_confusion_from_dirs(pred_dir, gt_dir)
    assert cm[:, 6].sum() == classes.size  # every pixel read as unknown, as the course's thresholds read it
    assert f"{pred_dir}: 2 of 2 predicted masks (0000.png first) hold only the values 0-6" in caplog.text
    caplog.clear()
    seg_confusion_from_dirs(gt_dir, gt_dir)  # colour masks: no warning
    assert "class indices" not in caplog.text


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


def test_eval_checkpoint_of_a_scaled_run_scores_full_size_masks_as_predict_then_eval(
        scaled_checkpoint, seg_data, tmp_path, fp32_inference):
    by_checkpoint, by_masks = eval_checkpoint_vs_predicted_masks(scaled_checkpoint, seg_data / "validation",
                                                                 tmp_path / "pred")
    assert by_checkpoint["miou"] == by_masks["miou"] and by_checkpoint["pixel_acc"] == by_masks["pixel_acc"]
    with Image.open(tmp_path / "pred" / "0000_mask.png") as im:
        assert im.size == (64, 64)  # the ground truth's size, not the model's 32


@pytest.mark.reliability
def test_eval_checkpoint_of_a_scaled_run_on_oblong_pairs_scores_as_predict_then_eval(scaled_checkpoint, tmp_path,
                                                                                     fp32_inference):
    # the model sees each 30x50 image squeezed to its 32x32; its logits go back to 30x50, in both routes
    val_dir = write_pairs(tmp_path / "val", [(30, 50)] * 3)
    by_checkpoint, by_masks = eval_checkpoint_vs_predicted_masks(scaled_checkpoint, val_dir, tmp_path / "pred")
    assert by_checkpoint["miou"] == by_masks["miou"] and by_checkpoint["pixel_acc"] == by_masks["pixel_acc"]


@pytest.mark.reliability
def test_eval_checkpoint_on_pairs_of_an_odd_size(seg_checkpoint, tmp_path, capsys):
    # 36x52 is no multiple of the network's stride of 32: the model pads, and every pixel is scored.
    folder = write_pairs(tmp_path / "val", [(36, 52)] * 3)
    summary = eval_script.main(["--task", "seg", "--checkpoint", str(seg_checkpoint), "--data-dir", str(folder),
                            "--device", "cpu"])
    assert f"(classes 0-5, {3 * 36 * 52} pixels)" in capsys.readouterr().out
    assert 0 <= summary["pixel_acc"] <= 1
