"""hw1.data.cls and hw1.data.demo: file names, label CSVs, decoding odd images, transforms, demo data."""
import csv
import json
import logging
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import train_cls
import train_seg
from helpers import cli_error, noise, tree, write_pairs
from hw1.data.cls import (IMG_SIZE, MEAN, STD, cls_eval_transform, cls_train_transform, label_from_name,
                          list_images, load_cls_split, read_labels_csv, read_rgb)
from hw1.data.demo import make_cls_demo
from hw1.tasks.cls import LAYOUT as CLS_LAYOUT
from hw1.errors import UserError

pytestmark = pytest.mark.usefixtures("cls_one_thread")


def _solid(mode, size, colour):
    return Image.new(mode, size, colour)


# --- names and label CSVs -----------------------------------------------------------------------


@pytest.mark.parametrize("name, label", [("0_0.png", 0), ("49_449.png", 49), ("7_12_extra.png", 7),
                                         ("dir/13_5.jpg", 13)])
def test_label_from_name(name, label):
    assert label_from_name(name) == label


@pytest.mark.parametrize("name", ["abc_1.png", "_3.png", "x.png", "-1_2.png"])
def test_label_from_bad_name(name):
    with pytest.raises(UserError) as info:
        label_from_name(name)
    assert name in str(info.value)


@pytest.mark.reliability
def test_eval_cls_on_a_p2_folder_says_it_is_one(cls_tiny_checkpoint, tmp_path, capsys):
    import eval as eval_py
    from helpers import cli_error, write_pairs

    # 0000_mask.png reads as {label}_{id}.png with label 0: without the check, masks scored as photos
    pairs = write_pairs(tmp_path / "validation", [(32, 32)] * 2)
    err = cli_error(capsys, eval_py.main, ["--task", "cls", "--checkpoint", str(cls_tiny_checkpoint),
                                           "--data-dir", str(pairs), "--device", "cpu"])
    assert err.startswith(f"error: {pairs / '0000_mask.png'}: a P2 satellite image or mask")
    assert err.endswith("P2 folders are scored with --task seg\n")


def test_read_labels_csv(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text("filename,label\n3_1.png,3\nb.png, 17\n\na.jpg,0\n")
    assert read_labels_csv(path) == {"3_1.png": 3, "b.png": 17, "a.jpg": 0}
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(b"filename,label\r\nx.png,4\r\n")
    assert read_labels_csv(crlf) == {"x.png": 4}


@pytest.mark.reliability
@pytest.mark.parametrize("text, match", [
    ("name,label\na.png,1\n", "header"),
    ("a.png,1\nb.png,2\n", "header"),
    ("", "header"),
    ("filename,label\na.png,1\nb.png\n", "line 3"),
    ("filename,label\na.png,cat\n", "line 2"),
    ("filename,label\na.png,1,2\n", "line 2"),
])
def test_read_labels_csv_errors_name_the_file(tmp_path, text, match):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=match) as info:
        read_labels_csv(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_labels_csv_missing(tmp_path):
    with pytest.raises(UserError, match="not found") as info:
        read_labels_csv(tmp_path / "nope.csv")
    assert "nope.csv" in str(info.value)


# --- loading a split ----------------------------------------------------------------------------


def test_load_split_from_names(cls_tiny_data):
    ds = load_cls_split(cls_tiny_data / "train_50")
    n = len(list((cls_tiny_data / "train_50").glob("*.png")))
    assert len(ds) == n
    assert ds.images.shape == (n, 3, IMG_SIZE, IMG_SIZE) and ds.images.dtype == torch.uint8
    assert ds.files == sorted(ds.files)
    assert ds.labels.tolist() == [int(f.split("_")[0]) for f in ds.files]
    assert sorted(set(ds.labels.tolist())) == [0, 1, 2]
    # Pixels are the file's own, channel-first.
    i = ds.files.index("1_3.png")
    expected = np.array(Image.open(cls_tiny_data / "train_50" / "1_3.png").convert("RGB"))
    assert torch.equal(ds.images[i], torch.from_numpy(expected).permute(2, 0, 1))
    image, label = ds[i]
    assert torch.equal(image, ds.images[i]) and label == 1


def test_load_split_from_csv(cls_tiny_data, tmp_path):
    # File names that carry no label: the CSV is the only source, and it disagrees with the digits.
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    table = {}
    for i, name in enumerate(["zeta.png", "alpha.png", "9_mid.png", "beta.jpg"]):
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(folder / name)
        table[name] = (i * 7) % 50
    with open(tmp_path / "gt.csv", "w", newline="") as f:
        csv.writer(f).writerows([("filename", "label"), *table.items(), ("not_here.png", 3)])
    ds = load_cls_split(folder, labels_csv=tmp_path / "gt.csv", transform=cls_eval_transform())
    assert ds.files == sorted(table)
    assert ds.labels.tolist() == [table[f] for f in ds.files]
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32) and label == table[ds.files[0]]

    val = load_cls_split(cls_tiny_data / "val_50", labels_csv=cls_tiny_data / "val_gt.csv")
    assert len(val) == len(list((cls_tiny_data / "val_50").glob("*.png"))) > 0
    assert val.labels.tolist() == [label_from_name(f) for f in val.files]


def test_load_split_csv_missing_a_file(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        _solid("RGB", (32, 32), (1, 2, 3)).save(folder / name)
    (tmp_path / "gt.csv").write_text("filename,label\na.png,1\n")
    with pytest.raises(UserError, match="b.png") as info:
        load_cls_split(folder, labels_csv=tmp_path / "gt.csv")
    assert "gt.csv" in str(info.value)


@pytest.mark.reliability
def test_odd_images_are_converted_and_resized(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    _solid("RGB", (64, 48), (200, 10, 30)).save(folder / "0_big.png")
    _solid("L", (32, 32), 77).save(folder / "1_gray.png")
    _solid("RGBA", (32, 32), (10, 220, 40, 0)).save(folder / "2_rgba.png")  # alpha dropped, colour kept
    _solid("RGB", (17, 33), (5, 6, 250)).convert("P", palette=Image.ADAPTIVE, colors=4).save(folder / "3_pal.png")
    _solid("RGB", (40, 40), (120, 60, 200)).save(folder / "4_photo.jpg", quality=95)
    _solid("LA", (8, 8), (150, 255)).save(folder / "5_la.png")
    ds = load_cls_split(folder)
    assert ds.images.shape == (6, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 1, 2, 3, 4, 5]
    expected = [(200, 10, 30), (77, 77, 77), (10, 220, 40), (5, 6, 250), (120, 60, 200), (150, 150, 150)]
    for image, colour in zip(ds.images, expected):
        mean = image.float().mean((1, 2))
        assert torch.allclose(mean, torch.tensor(colour, dtype=torch.float32), atol=3), (mean, colour)
        assert image.float().std((1, 2)).max() < 3  # a solid colour stays solid after resizing


def test_read_rgb_keeps_size_without_resize(tmp_path):
    path = tmp_path / "x.png"
    _solid("L", (20, 10), 9).save(path)
    arr = read_rgb(path)
    assert arr.shape == (10, 20, 3) and arr.dtype == np.uint8
    assert read_rgb(path, size=32).shape == (32, 32, 3)


@pytest.mark.reliability
def test_non_image_files_are_skipped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "mixed"
    folder.mkdir()
    _solid("RGB", (32, 32), (0, 0, 0)).save(folder / "2_a.png")
    _solid("RGB", (32, 32), (0, 0, 0)).save(folder / "3_b.PNG")  # extensions are case-insensitive
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\0")
    (folder / "sub").mkdir()
    with caplog.at_level(logging.WARNING, logger="hw1.data.cls"):
        ds = load_cls_split(folder)
    assert ds.files == ["2_a.png", "3_b.PNG"] and ds.labels.tolist() == [2, 3]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "notes.txt" in warnings[0].getMessage()
    assert "1 non-image" in warnings[0].getMessage()


@pytest.mark.reliability
def test_entries_named_like_images_that_are_not_files_are_skipped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "odd"
    folder.mkdir()
    _solid("RGB", (32, 32), (0, 0, 0)).save(folder / "2_a.png")
    (folder / "3_dir.png").mkdir()
    os.mkfifo(folder / "4_fifo.png")
    with caplog.at_level(logging.WARNING):
        assert load_cls_split(folder).files == ["2_a.png"]
    assert "skipped 2 name(s) of an image that are not files" in caplog.text and "3_dir.png" in caplog.text


@pytest.mark.reliability
def test_a_very_large_image_warns_naming_the_file_and_a_larger_one_is_an_error(tmp_path, caplog, monkeypatch):
    from hw1.data.images import read_rgb

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL warns past this and refuses past twice it
    _solid("RGB", (12, 12), (1, 2, 3)).save(tmp_path / "big.png")
    _solid("RGB", (15, 15), (1, 2, 3)).save(tmp_path / "huge.png")
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's own warning, without the file's name, is not shown
        assert read_rgb(tmp_path / "big.png").shape == (12, 12, 3)
    assert f"{tmp_path / 'big.png'}: a very large image" in caplog.text
    with pytest.raises(UserError, match=r"huge.png: cannot read image \(Image size"):
        read_rgb(tmp_path / "huge.png")


@pytest.mark.reliability
def test_very_large_images_decoded_on_threads_each_warn_with_their_own_name(tmp_path, caplog, monkeypatch):
    """P2 decodes on threads: each very large image's warning names that image, never another one
    decoded at the same time, and PIL's warning without a name never gets through."""
    from concurrent.futures import ThreadPoolExecutor

    from hw1.data.images import read_rgb

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    paths = []
    for i in range(24):
        path = tmp_path / f"{'big' if i % 2 else 'small'}{i}.png"
        _solid("RGB", (12, 12) if i % 2 else (8, 8), (i, 2, 3)).save(path)
        paths.append(path)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")
        with ThreadPoolExecutor(8) as pool:
            for _ in range(5):
                assert [a.shape for a in pool.map(read_rgb, paths)] == [(12, 12, 3) if i % 2 else (8, 8, 3)
                                                                      for i in range(24)]
    named = [r.getMessage().split(":")[0] for r in caplog.records if "a very large image" in r.getMessage()]
    assert sorted(set(named)) == sorted(str(p) for p in paths if p.name.startswith("big"))
    assert len(named) == 5 * 12


@pytest.mark.reliability
def test_exif_orientation_is_not_applied(tmp_path):
    """Pixels are read as stored: the course's masks are aligned to the stored pixels, not to a
    camera's orientation tag (the course's images have none)."""
    from hw1.data.images import read_rgb

    image = np.zeros((4, 8, 3), np.uint8)
    image[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(image).save(tmp_path / "tagged.png", exif=exif)
    assert Image.open(tmp_path / "tagged.png").getexif()[0x0112] == 6
    assert (read_rgb(tmp_path / "tagged.png") == image).all()


@pytest.mark.reliability
def test_empty_and_missing_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(UserError, match="no .png/.jpg images") as info:
        load_cls_split(empty)
    assert str(empty) in str(info.value)
    missing = tmp_path / "missing"
    with pytest.raises(UserError, match="not found") as info:
        list_images(missing)
    assert str(missing) in str(info.value)


@pytest.mark.reliability
@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, b"", b"hello"])
def test_corrupt_image_names_the_file(tmp_path, content):
    folder = tmp_path / "bad"
    folder.mkdir()
    _solid("RGB", (32, 32), (0, 0, 0)).save(folder / "0_ok.png")
    (folder / "1_bad.png").write_bytes(content)
    with pytest.raises(UserError, match="cannot read image") as info:
        load_cls_split(folder)
    assert str(folder / "1_bad.png") in str(info.value) and "\n" not in str(info.value)


def test_truncated_png_names_the_file(tmp_path):
    folder = tmp_path / "trunc"
    folder.mkdir()
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    (folder / "4_t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as info:
        load_cls_split(folder)
    assert str(folder / "4_t.png") in str(info.value)


# --- transforms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("aug", ["seed", "light"])
def test_train_transform_is_random(aug):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    t = cls_train_transform(aug)
    outs = [t(image) for _ in range(6)]
    for out in outs:
        assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert image.dtype == torch.uint8  # the cached uint8 tensor is not modified in place


def test_eval_and_none_transforms_normalise():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    expected = (image.float() / 255 - mean) / std
    torch.testing.assert_close(cls_eval_transform()(image), expected)
    torch.testing.assert_close(cls_train_transform("none")(image), expected)
    with pytest.raises(ValueError):
        cls_train_transform("heavy")


# --- demo data ----------------------------------------------------------------------------------


def test_make_cls_demo(tmp_path):
    root = make_cls_demo(tmp_path / "demo", CLS_LAYOUT)
    train = sorted((root / "train_50").iterdir())
    val = sorted((root / "val_50").iterdir())
    assert len(train) + len(val) == 1797  # scikit-learn's digits
    assert 0.1 * 1797 < len(val) < 0.3 * 1797
    with open(root / "val_gt.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "label"]
    assert sorted(r[0] for r in rows[1:]) == sorted(p.name for p in val)
    assert all(int(r[1]) == label_from_name(r[0]) for r in rows[1:])
    assert {label_from_name(p) for p in train} == set(range(10))
    with Image.open(train[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    # Second call: nothing is rewritten.
    stamp = (root / "val_gt.csv").stat().st_mtime_ns
    (root / "train_50" / train[0].name).unlink()
    assert make_cls_demo(root, CLS_LAYOUT) == root
    assert (root / "val_gt.csv").stat().st_mtime_ns == stamp
    assert not (root / "train_50" / train[0].name).exists()


# --- label CSVs and labels that are not clean -----------------------------------------------------


@pytest.mark.reliability
@pytest.mark.parametrize("content, problem", [
    pytest.param(b"\xff\xfe\x00\x01\x89PNG", "not a UTF-8 text file", id="binary"),
    pytest.param("filename,label\ncaf\xe9.png,1\n".encode("latin-1"), "not a UTF-8 text file", id="latin-1"),
    pytest.param(b"filename,label\na.png,1\na.png,1\n", "line 3: a.png is listed twice", id="duplicate"),
    pytest.param(b"filename,label\n" + b"x" * 200_000 + b",1\n", "not a readable CSV", id="huge-field"),
    pytest.param(b"filename,label\na.png,\xc2\xb2\n", "line 2: expected", id="unicode-digit"),
    pytest.param(None, "not a file", id="folder"),
])
def test_label_csv_that_is_not_a_clean_table(tmp_path, content, problem):
    path = tmp_path / "gt.csv"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=problem) as info:
        read_labels_csv(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert len(str(info.value)) < 200


@pytest.mark.reliability
def test_label_csv_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_bytes("\ufefffilename,label\r\na.png,1\r\n".encode())  # as spreadsheet programs save it
    assert read_labels_csv(path) == {"a.png": 1}


@pytest.mark.reliability
def test_a_label_of_thousands_of_digits(tmp_path):
    # int() of more than 4300 digits raises ValueError; no label that long is one of the classes
    csv = tmp_path / "pred.csv"
    csv.write_text(f"filename,label\n0_a.png,{'7' * 5000}\n")
    with pytest.raises(UserError, match=r"line 2: expected '<filename>,<integer label>', got '0_a.png,777") as info:
        read_labels_csv(csv)
    assert str(info.value).startswith(str(csv)) and str(info.value).endswith("...")  # the row is cut short


@pytest.mark.reliability
def test_label_outside_the_50_classes(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in ("0_a.png", "50_b.png"):
        noise(rng, 32, 32).save(folder / name)
    with pytest.raises(UserError, match="label 50 is outside 0..49") as info:
        load_cls_split(folder)
    assert str(info.value).startswith(str(folder / "50_b.png"))
    csv = tmp_path / "gt.csv"
    csv.write_text("filename,label\n0_a.png,-1\n50_b.png,3\n")
    with pytest.raises(UserError, match="label of 0_a.png -1 is outside 0..49") as info:
        load_cls_split(folder, labels_csv=csv)
    assert str(info.value).startswith(str(csv))



# --- demo data never replaces other data ----------------------------------------------------------


@pytest.mark.reliability
@pytest.mark.parametrize("task", ["cls", "seg"])
def test_demo_refuses_a_folder_of_other_data(task, cls_tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    if task == "cls":  # real-looking P1 images without val_gt.csv, a layout training accepts
        shutil.copytree(cls_tiny_data, data)
        (data / "val_gt.csv").unlink()
        main = train_cls.main
    else:
        write_pairs(data / "train", [(8, 8)] * 2)
        write_pairs(data / "validation", [(8, 8)])
        main = train_seg.main
    before = tree(data)
    err = cli_error(capsys, main, ["--demo", "--data-dir", str(data), "--out-dir", str(tmp_path / "run"),
                                   "--device", "cpu", "--workers", "0", "--no-progress"])
    first = "train/0000_mask.png" if task == "seg" else "train_50/0_0.png"
    assert err.startswith(f"error: {data}: holds files the demo did not write ({first}, ")
    assert tree(data) == before and not (tmp_path / "run").exists()


@pytest.mark.reliability
def test_demo_writes_into_an_empty_folder_and_redoes_only_its_own(tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    make_cls_demo(root, CLS_LAYOUT)
    assert json.loads((root / ".cls_demo.json").read_text()) == {"val_fraction": 0.2, "seed": 0, "complete": True}
    first = {p.name for p in (root / "val_50").iterdir()}
    # Its own folder, asked for other data (as an interrupted demo, whose marker is not complete,
    # is): the demo rewrites it, and no file of the first one is left over.
    make_cls_demo(root, CLS_LAYOUT, val_fraction=0.5, seed=1)
    val_names = {line.split(",")[0] for line in (root / "val_gt.csv").read_text().splitlines()[1:]}
    assert {p.name for p in (root / "val_50").iterdir()} == val_names != first
    assert len(list((root / "train_50").iterdir())) + len(val_names) == 1797
    assert json.loads((root / ".cls_demo.json").read_text()) == {"val_fraction": 0.5, "seed": 1, "complete": True}
