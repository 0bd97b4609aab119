"""P2 data: mask codec, pair scanning, decoding, paired transforms, demo scenes, real data."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from helpers import write_pairs
from hw1.data.masks import (CLASS_NAMES, NUM_CLASSES, PALETTE, UNKNOWN, class_to_rgb, read_mask,
                            rgb_to_class, write_mask)
from hw1.data.scenes import make_seg_demo
from hw1.tasks.seg import LAYOUT as SEG_LAYOUT
from hw1.data.seg import (MEAN, STD, RandomRot90, SegDataset, load_seg_split, scan_pairs,
                          seg_eval_transform, seg_train_transform)
from hw1.errors import UserError
from hw1.scoring import list_masks

REAL_P2 = Path(__file__).resolve().parents[1] / "hw1_data" / "p2_data"


def _write_pair(folder, i, image, mask, image_format="JPEG"):
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / f"{i:04d}_sat.jpg", format=image_format)
    write_mask(mask, folder / f"{i:04d}_mask.png")


# --- mask codec -------------------------------------------------------------------------------

def test_codec_round_trip_all_classes():
    assert len(CLASS_NAMES) == NUM_CLASSES == 7 and CLASS_NAMES[UNKNOWN] == "unknown"
    assert PALETTE.shape == (7, 3) and PALETTE.dtype == np.uint8 and set(np.unique(PALETTE)) == {0, 255}
    idx = np.tile(np.arange(7, dtype=np.uint8), (3, 2))
    rgb = class_to_rgb(idx)
    assert rgb.shape == (3, 14, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb_to_class(rgb), idx)
    np.testing.assert_array_equal(class_to_rgb(np.arange(7).reshape(1, 7))[0], PALETTE)


def test_course_colours():
    expected = {0: (0, 255, 255), 1: (255, 255, 0), 2: (255, 0, 255), 3: (0, 255, 0),
                4: (0, 0, 255), 5: (255, 255, 255), 6: (0, 0, 0)}
    for cls, colour in expected.items():
        assert rgb_to_class(np.array([[colour]], dtype=np.uint8))[0, 0] == cls


@pytest.mark.reliability
def test_threshold_at_128():
    # 128 counts as "on" and 127 as "off", channel by channel.
    rgb = np.array([[[128, 255, 255], [127, 255, 255], [0, 128, 0], [0, 127, 0],
                     [127, 127, 128], [128, 128, 128], [127, 127, 127]]], dtype=np.uint8)
    assert rgb_to_class(rgb).tolist() == [[5, 0, 3, 6, 4, 5, 6]]


@pytest.mark.reliability
def test_red_is_unknown():
    rgb = np.array([[[255, 0, 0], [200, 30, 90], [128, 127, 127]]], dtype=np.uint8)
    assert rgb_to_class(rgb).tolist() == [[UNKNOWN] * 3]


@pytest.mark.reliability
def test_near_colours():
    rgb = np.array([[[250, 3, 252], [5, 240, 8], [20, 200, 230], [240, 230, 10],
                     [10, 20, 140], [140, 135, 200], [60, 70, 90]]], dtype=np.uint8)
    assert rgb_to_class(rgb).tolist() == [[2, 3, 0, 1, 4, 5, 6]]


def test_write_read_mask(tmp_path):
    idx = np.random.default_rng(0).integers(0, 7, size=(9, 11)).astype(np.uint8)
    path = write_mask(idx, tmp_path / "sub" / "0001_mask.png")
    assert sorted(p.name for p in path.parent.iterdir()) == ["0001_mask.png"]  # no temp file left
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
    np.testing.assert_array_equal(read_mask(path), idx)


def test_read_mask_converts_palette_and_rgba(tmp_path):
    idx = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    rgb = Image.fromarray(class_to_rgb(idx))
    rgb.convert("RGBA").save(tmp_path / "rgba.png")
    rgb.quantize(colors=8).save(tmp_path / "p.png")
    for name in ("rgba.png", "p.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / name), idx)


def test_read_mask_corrupt(tmp_path):
    bad = tmp_path / "0003_mask.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match="0003_mask.png"):
        read_mask(bad)


# --- scan_pairs ---------------------------------------------------------------------------------

def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_scan_pairs_sorted_and_ignores_others(tmp_path):
    _touch(tmp_path, "0002_sat.jpg", "0002_mask.png", "0000_sat.jpg", "0000_mask.png", "notes.txt",
           "._0005_sat.jpg")
    pairs = scan_pairs(tmp_path)
    assert [p[0] for p in pairs] == ["0000", "0002"]
    assert pairs[1] == ("0002", tmp_path / "0002_sat.jpg", tmp_path / "0002_mask.png")


@pytest.mark.reliability
def test_scan_pairs_unpaired(tmp_path):
    _touch(tmp_path, "0000_sat.jpg", "0000_mask.png", "0001_sat.jpg", "0007_mask.png")
    with pytest.raises(UserError, match=r"2 file\(s\).*0001_sat.jpg, 0007_mask.png"):
        scan_pairs(tmp_path)


def test_scan_pairs_many_unpaired_shows_a_few(tmp_path):
    _touch(tmp_path, *[f"{i:04d}_sat.jpg" for i in range(10)])
    with pytest.raises(UserError, match=r"10 file\(s\).*0000_sat.jpg, 0001_sat.jpg, 0002_sat.jpg, \.\.\.$"):
        scan_pairs(tmp_path)


@pytest.mark.reliability
def test_scan_pairs_empty_and_missing(tmp_path):
    _touch(tmp_path / "empty", "readme.txt")
    with pytest.raises(UserError, match="empty: no xxxx_sat.jpg"):
        scan_pairs(tmp_path / "empty")
    with pytest.raises(UserError, match="nowhere: folder not found"):
        scan_pairs(tmp_path / "nowhere")


# --- load_seg_split -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_seg_demo(tmp_path_factory.mktemp("p2"), SEG_LAYOUT, n_train=6, n_val=3, size=32)


def test_load_seg_split_shapes(demo):
    ds = load_seg_split(demo / "train", workers=2)
    assert len(ds) == 6 and ds.ids == [f"{i:04d}" for i in range(6)]
    assert ds.images.shape == (6, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.masks.shape == (6, 32, 32) and ds.masks.dtype == torch.uint8
    assert int(ds.masks.max()) <= UNKNOWN
    np.testing.assert_array_equal(ds.masks[4].numpy(), read_mask(demo / "train" / "0004_mask.png"))
    with Image.open(demo / "train" / "0004_sat.jpg") as im:
        np.testing.assert_array_equal(ds.images[4].permute(1, 2, 0).numpy(), np.asarray(im))

    image, mask = ds[0]  # no transform: the stored tensors
    assert image.dtype == torch.uint8 and mask.dtype == torch.uint8
    ds.transform = seg_eval_transform()
    image, mask = ds[0]
    assert type(image) is torch.Tensor and type(mask) is torch.Tensor
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    expected = (ds.images[0].float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(image, expected)
    torch.testing.assert_close(mask, ds.masks[0].long())

    ds.transform = seg_train_transform(24)
    images, masks = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.float32
    assert masks.shape == (4, 24, 24) and masks.dtype == torch.int64


def test_load_seg_split_resize(demo):
    full = load_seg_split(demo / "validation")
    small = load_seg_split(demo / "validation", size=(16, 8), workers=1)
    assert small.images.shape == (3, 3, 16, 8) and small.masks.shape == (3, 16, 8)
    # Nearest-neighbour: every resized mask value is a class of the original mask.
    for a, b in zip(full.masks, small.masks):
        assert set(b.unique().tolist()) <= set(a.unique().tolist())


def test_load_seg_split_can_keep_masks_at_full_size(demo):
    """Scoring a model trained at a smaller scale: images resized as inference resizes them, masks as they are."""
    from hw1.data.images import read_rgb, resize_rgb

    full = load_seg_split(demo / "validation")
    small = load_seg_split(demo / "validation", size=12, mask_size=None, workers=1)
    assert small.images.shape == (3, 3, 12, 12) and torch.equal(small.masks, full.masks)
    first = sorted((demo / "validation").glob("*_sat.*"))[0]
    assert np.array_equal(small.images[0].permute(1, 2, 0).numpy(), resize_rgb(read_rgb(first), 12))


@pytest.mark.reliability
def test_load_converts_grayscale_rgba_palette(tmp_path):
    mask = np.zeros((8, 8), dtype=np.uint8)
    _write_pair(tmp_path, 0, Image.new("L", (8, 8), 100), mask)
    # The loader goes by content, not by extension, so PNG bytes behind a .jpg name are fine.
    _write_pair(tmp_path, 1, Image.new("RGBA", (8, 8), (10, 200, 30, 0)), mask, "PNG")
    _write_pair(tmp_path, 2, Image.new("RGB", (8, 8), (250, 0, 0)).quantize(colors=4), mask, "PNG")
    ds = load_seg_split(tmp_path)
    assert ds.images.shape == (3, 3, 8, 8)
    assert (ds.images[0].int() - 100).abs().max() <= 2  # JPEG-lossy grey, replicated to 3 channels
    assert ds.images[1, :, 0, 0].tolist() == [10, 200, 30]
    assert ds.images[2, :, 0, 0].tolist() == [250, 0, 0]


@pytest.mark.reliability
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_load_corrupt_image(tmp_path, damage):
    mask = np.zeros((64, 64), dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    for i in range(3):
        _write_pair(tmp_path, i, Image.fromarray(noise), mask)
    bad = tmp_path / "0001_sat.jpg"
    data = bad.read_bytes()
    bad.write_bytes(b"\x00garbage" * 10 if damage == "garbage" else data[:len(data) // 2])
    with pytest.raises(UserError, match=r"0001_sat\.jpg: cannot read image"):
        load_seg_split(tmp_path, workers=2)


def test_load_corrupt_mask(tmp_path):
    for i in range(2):
        _write_pair(tmp_path, i, Image.new("RGB", (8, 8)), np.zeros((8, 8), dtype=np.uint8))
    (tmp_path / "0001_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(UserError, match=r"0001_mask\.png: cannot read mask"):
        load_seg_split(tmp_path)


@pytest.mark.reliability
def test_load_size_mismatches(tmp_path):
    _write_pair(tmp_path, 0, Image.new("RGB", (8, 8)), np.zeros((8, 8), dtype=np.uint8))
    _write_pair(tmp_path, 1, Image.new("RGB", (8, 6)), np.zeros((6, 8), dtype=np.uint8))
    with pytest.raises(UserError, match=r"0001_sat\.jpg: image is 8x6, but 0000_sat.jpg is 8x8"):
        load_seg_split(tmp_path)
    assert load_seg_split(tmp_path, size=4).images.shape == (2, 3, 4, 4)
    write_mask(np.zeros((8, 8), dtype=np.uint8), tmp_path / "0001_mask.png")
    with pytest.raises(UserError, match=r"0001_mask\.png: mask is 8x8 but 0001_sat.jpg is 8x6"):
        load_seg_split(tmp_path, size=4)


def test_dataset_rejects_bad_tensors():
    with pytest.raises(ValueError, match="images"):
        SegDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.uint8), ["a", "b"])
    with pytest.raises(ValueError, match="masks"):
        SegDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, 4, 4, dtype=torch.uint8), ["a", "b"])
    with pytest.raises(ValueError, match="masks"):
        SegDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, 4, 4), ["a", "b"])
    # masks of another shape than the images are the ground truth of a model run at its own square scale
    assert len(SegDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, 4, 5, dtype=torch.uint8),
                          ["a", "b"])) == 2


# --- paired transforms --------------------------------------------------------------------------

def test_train_transform_keeps_image_and_mask_aligned():
    # An image whose colour is its class: after any crop/resize/flip/turn, every pixel that is
    # still a pure palette colour (not blended across a class edge) must sit on its own class.
    rng = np.random.default_rng(0)
    classes = np.kron(rng.integers(0, 7, size=(8, 8)), np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
    classes[:8, :8] = 0  # an asymmetric corner, so a missed flip or turn cannot hide by symmetry
    image = torch.from_numpy(class_to_rgb(classes)).permute(2, 0, 1).contiguous()
    ds = SegDataset(image[None], torch.from_numpy(classes)[None], ["x"], seg_train_transform(48))
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    torch.manual_seed(0)
    pure_total, seen = 0, set()
    for _ in range(200):
        x, y = ds[0]
        assert x.shape == (3, 48, 48) and y.shape == (48, 48) and y.dtype == torch.int64
        rgb = ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        pure = np.isin(rgb, (0, 255)).all(-1)
        decoded = rgb_to_class(rgb)
        assert (decoded[pure] == y.numpy()[pure]).all()
        pure_total += pure.sum()
        seen.add(y.numpy().tobytes())
    assert pure_total > 0.5 * 200 * 48 * 48
    assert len(seen) > 100  # the transform is random


def test_random_rot90_same_turn_for_both():
    image = tv_tensors.Image(torch.arange(2 * 3 * 4).reshape(2, 3, 4))
    mask = tv_tensors.Mask(torch.arange(3 * 4).reshape(3, 4))
    rot = RandomRot90()
    torch.manual_seed(0)
    turns = set()
    for _ in range(40):
        out_image, out_mask = rot(image, mask)
        assert isinstance(out_image, tv_tensors.Image) and isinstance(out_mask, tv_tensors.Mask)
        k = next(k for k in range(4) if torch.equal(out_mask, torch.rot90(mask, k, dims=(-2, -1))))
        assert torch.equal(out_image, torch.rot90(image, k, dims=(-2, -1)))
        turns.add(k)
    assert turns == {0, 1, 2, 3}
    with pytest.raises(TypeError):
        rot(image, tv_tensors.BoundingBoxes([[0, 0, 1, 1]], format="XYXY", canvas_size=(3, 4)))


# --- demo scenes --------------------------------------------------------------------------------

def test_make_seg_demo_layout_and_determinism(tmp_path):
    root = make_seg_demo(tmp_path / "a", SEG_LAYOUT, n_train=3, n_val=2, size=24, seed=1)
    assert [p[0] for p in scan_pairs(root / "train")] == ["0000", "0001", "0002"]
    assert [p[0] for p in scan_pairs(root / "validation")] == ["0000", "0001"]
    with Image.open(root / "train" / "0000_sat.jpg") as im:
        assert im.format == "JPEG" and im.size == (24, 24) and im.mode == "RGB"
    other = make_seg_demo(tmp_path / "b", SEG_LAYOUT, n_train=3, n_val=2, size=24, seed=1)
    for split in ("train", "validation"):
        for p in (root / split).iterdir():
            assert p.read_bytes() == (other / split / p.name).read_bytes()
    assert (root / "train" / "0000_sat.jpg").read_bytes() != \
        (make_seg_demo(tmp_path / "c", SEG_LAYOUT, n_train=1, n_val=0, size=24, seed=2) / "train" / "0000_sat.jpg").read_bytes()


def test_make_seg_demo_idempotent_and_safe(tmp_path):
    root = make_seg_demo(tmp_path, SEG_LAYOUT, n_train=4, n_val=1, size=16)
    stamp = (root / "train" / "0000_sat.jpg").stat().st_mtime_ns
    make_seg_demo(tmp_path, SEG_LAYOUT, n_train=4, n_val=1, size=16)
    assert (root / "train" / "0000_sat.jpg").stat().st_mtime_ns == stamp
    assert json.loads((root / ".seg_demo.json").read_text())["complete"] is True
    # Other counts regenerate and drop the pairs that no longer belong.
    make_seg_demo(tmp_path, SEG_LAYOUT, n_train=2, n_val=1, size=16)
    assert len(scan_pairs(root / "train")) == 2
    # A folder with someone else's pairs is never overwritten.
    foreign = tmp_path / "foreign"
    _touch(foreign / "train", "0100_sat.jpg", "0100_mask.png")
    with pytest.raises(UserError, match="0100_mask.png"):
        make_seg_demo(foreign, SEG_LAYOUT)


def test_demo_scenes_use_every_class(tmp_path):
    ds = load_seg_split(make_seg_demo(tmp_path, SEG_LAYOUT, n_train=40, n_val=0, size=32) / "train")
    shares = torch.bincount(ds.masks.flatten(), minlength=7).double() / ds.masks.numel()
    assert (shares[:6] > 0.02).all() and 0 < shares[UNKNOWN] < 0.1


# --- real course data ---------------------------------------------------------------------------

@pytest.mark.skipif(not REAL_P2.is_dir(), reason="course data not extracted at hw1_data/p2_data")
def test_real_p2_data():
    train, val = scan_pairs(REAL_P2 / "train"), scan_pairs(REAL_P2 / "validation")
    assert len(train) == 2000 and len(val) == 257
    ds = load_seg_split(REAL_P2 / "validation")
    assert ds.images.shape == (257, 3, 512, 512) and ds.masks.shape == (257, 512, 512)
    assert int(ds.masks.max()) <= UNKNOWN
    # The red pixels of the validation masks are decoded as unknown.
    red_masks = 0
    for i, (_, _, mask_path) in enumerate(val):
        with Image.open(mask_path) as im:
            bits = np.asarray(im.convert("RGB")) >> 7
        red = (bits[..., 0] == 1) & (bits[..., 1] == 0) & (bits[..., 2] == 0)
        if red.any():
            red_masks += 1
            assert (ds.masks[i].numpy()[red] == UNKNOWN).all()
    assert red_masks >= 1
    for _, sat_path, mask_path in train[::40]:
        with Image.open(sat_path) as im:
            assert im.size == (512, 512) and im.mode == "RGB"
        mask = read_mask(mask_path)
        assert mask.shape == (512, 512) and mask.max() <= UNKNOWN


# --- other files in pair and mask folders ---------------------------------------------------------


@pytest.mark.reliability
@pytest.mark.usefixtures("cls_one_thread")
def test_other_files_in_p2_folders_are_skipped_with_a_warning(tmp_path, caplog):
    folder = write_pairs(tmp_path / "pairs", [(8, 8)])
    (folder / "notes.txt").write_text("not an image")
    (folder / "0000_sat.png").write_bytes(b"")  # a satellite image with the wrong extension
    (folder / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level("WARNING"):
        assert [i for i, _, _ in scan_pairs(folder)] == ["0000"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{folder}: skipped 2 file(s) not named xxxx_sat.jpg or xxxx_mask.png, e.g. 0000_sat.png"]
    caplog.clear()
    # Scoring mask folders: the satellite JPEGs beside the masks are expected, other files are not;
    # every .png is a mask there, as the course's evaluator reads them (0000_sat.png would be a second one).
    (folder / "0000_sat.png").unlink()
    with caplog.at_level("WARNING"):
        assert list(list_masks(folder)) == ["0000"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{folder}: skipped 1 file(s) that are not .png masks, e.g. notes.txt"]
