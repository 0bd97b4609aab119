"""python -m hw1.predict seg on tiny generated data: the masks, their names and sizes, TTA, a model
trained at a smaller scale (--size), what the output folder may replace, bad input and unsafe checkpoints.

Everything runs on the CPU with one torch thread; the models are the tiny VGG16-FCN32s runs of
conftest.py (``varied_checkpoint``, ``scaled_checkpoint``, ``seg_checkpoint``).
"""
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_script
from conftest import REPO
from helpers import (assert_one_line_error, contents, decode_palette, noise, save_classes,
                     save_cls_checkpoint, save_code_running_checkpoint, write_pairs)
from hw1.checkpoint import model_from_checkpoint
from hw1.data.images import MEAN, STD
from hw1.data.masks import PALETTE
from hw1.errors import UserError
from hw1.predict import mask_name, predict_seg

pytestmark = pytest.mark.usefixtures("cls_one_thread")  # one torch thread (conftest.py)


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
def test_an_image_named_like_a_mask_is_segmented(varied_checkpoint, tmp_path):
    """Only the course's mask name (``*_mask.png``) marks a mask to skip; ``road_mask.jpg`` is an image
    (it was skipped silently)."""
    folder = tmp_path / "in"
    folder.mkdir()
    noise(np.random.default_rng(4), 16, 16).save(folder / "road_mask.jpg")
    save_classes(np.zeros((16, 16), np.int64), folder / "0001_mask.png")
    written = predict_seg(folder, tmp_path / "out", checkpoint=varied_checkpoint, device="cpu")
    assert written == [tmp_path / "out" / "road_mask.png"]


@pytest.mark.reliability
def test_predict_seg_into_its_own_image_folder_twice(varied_checkpoint, tmp_path):
    """A folder of satellite images that is its own OUT: the second run replaces the masks of the
    first (no input of the folder's), and neither reads them as images."""
    folder = tmp_path / "sat"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        noise(rng, 32, 32).save(folder / f"{i:04d}_sat.jpg")
    predict_seg(folder, folder, checkpoint=varied_checkpoint, device="cpu")
    first = contents(folder)
    (folder / "0000_mask.png").write_bytes((folder / "0001_mask.png").read_bytes())  # made stale
    predict_seg(folder, folder, checkpoint=varied_checkpoint, device="cpu")
    assert contents(folder) == first
    assert sorted(first) == ["0000_mask.png", "0000_sat.jpg", "0001_mask.png", "0001_sat.jpg"]


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


# --- a model trained at a smaller scale (--size) predicts at it, at each image's own size ----------

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
    assert ckpt["args"]["size"] == 32 and ckpt["model_name"] == "vgg16_fcn8s"
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
def test_predict_seg_refuses_a_checkpoint_that_runs_code(tmp_path):
    marker = tmp_path / "MARKER"
    evil = save_code_running_checkpoint(tmp_path / "evil.pth", marker)
    folder = write_pairs(tmp_path / "in", [(8, 8)])
    with pytest.raises(UserError, match="refused to load") as info:
        predict_seg(folder, tmp_path / "out", checkpoint=evil, device="cpu")
    assert str(info.value).startswith(str(evil))
    assert not marker.exists() and not (tmp_path / "out").exists()
