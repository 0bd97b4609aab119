"""hw1.predict (cls): the grading CSV, the CLI's exit codes, TTA, features, failed runs that keep the
previous output, odd file names.

The model is the tiny DenseNet trained once per session (``cls_tiny_checkpoint`` in conftest.py).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_py
from helpers import assert_one_line_error, cli_error, contents, noise
from helpers import read_csv_rows as _read_csv
from hw1.checkpoint import load_checkpoint, model_from_checkpoint
from hw1.data.cls import cls_eval_transform, load_cls_split, read_labels_csv
from hw1.errors import UserError
from hw1.data.images import normalize
from hw1.predict import extract_features, load_model
from hw1.predict import main as predict_main
from hw1.predict import predict_cls, predict_seg

pytestmark = pytest.mark.usefixtures("cls_one_thread")

REPO = Path(__file__).resolve().parents[1]


def _subprocess(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # see cls_one_torch_thread in conftest.py
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


# --- predict ------------------------------------------------------------------------------------


def _decisive(checkpoint, path):
    """``checkpoint`` with its classifier scaled 100x: the same argmax, margins far above bf16's rounding.

    A 4-epoch tiny model's top two logits differ by a few hundredths, on noise images even less:
    too close for predictions under bf16 autocast to be compared with fp32 ones.
    """
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key in ("classifier.weight", "classifier.bias"):
        ckpt["model"][key] = ckpt["model"][key] * 100
    torch.save(ckpt, path)
    return path


def test_predict_cls_writes_the_grading_csv(cls_tiny_checkpoint, odd_folder, tmp_path):
    out = tmp_path / "sub" / "pred.csv"
    checkpoint = _decisive(cls_tiny_checkpoint, tmp_path / "decisive.pth")
    rows = predict_cls(odd_folder, out, checkpoint=checkpoint, device="cpu")
    images = sorted(p.name for p in odd_folder.iterdir() if p.suffix in (".png", ".jpg"))
    assert [name for name, _ in rows] == images
    assert all(isinstance(label, int) and 0 <= label < 50 for _, label in rows)
    text = out.read_text()
    assert text.splitlines()[0] == "filename,label"
    assert text.endswith("\n") and "\r" not in text
    assert _read_csv(out)[1:] == [[name, str(label)] for name, label in rows]
    assert [p.name for p in out.parent.iterdir()] == ["pred.csv"]  # no temporary file left behind

    # The same labels as the checkpoint's model applied to the decoded images by hand.
    model = model_from_checkpoint(load_checkpoint(checkpoint)).eval()
    ds = load_cls_split(odd_folder, transform=cls_eval_transform())
    assert ds.files == images
    with torch.no_grad():
        logits = model(torch.stack([ds[i][0] for i in range(len(ds))]))
    top2 = logits.topk(2, dim=1).values
    clear = [(a - b) > 1.0 for a, b in top2.tolist()]  # predict may run under bf16 autocast
    assert sum(clear) >= len(rows) - 1, top2
    for (name, label), expected, is_clear in zip(rows, logits.argmax(1).tolist(), clear):
        if is_clear:
            assert label == expected, name


def test_predict_main_returns_rows(cls_tiny_checkpoint, cls_tiny_data, tmp_path, capsys):
    out = tmp_path / "p.csv"
    rows = predict_main(["cls", str(cls_tiny_data / "val_50"), str(out), "--checkpoint", str(cls_tiny_checkpoint),
                         "--device", "cpu"])
    assert len(rows) == len(list((cls_tiny_data / "val_50").glob("*.png")))
    assert f"wrote {len(rows)} predictions" in capsys.readouterr().out
    assert _read_csv(out)[1:] == [[n, str(c)] for n, c in rows]


def test_predict_cli_subprocess(cls_tiny_checkpoint, odd_folder, tmp_path):
    reference = tmp_path / "ref.csv"
    predict_cls(odd_folder, reference, checkpoint=cls_tiny_checkpoint, device="cpu")
    out = tmp_path / "cli.csv"
    result = _subprocess("-m", "hw1.predict", "cls", str(odd_folder), str(out), "--checkpoint",
                         str(cls_tiny_checkpoint), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert out.read_text() == reference.read_text()


@pytest.mark.reliability
def test_predict_cli_missing_folder(cls_tiny_checkpoint, tmp_path):
    missing = tmp_path / "no_such_folder"
    out = tmp_path / "out.csv"
    result = _subprocess("-m", "hw1.predict", "cls", str(missing), str(out), "--checkpoint",
                         str(cls_tiny_checkpoint), "--device", "cpu")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0], result.stderr
    assert not out.exists()


def test_predict_missing_checkpoint(odd_folder, tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError, match="not found") as info:
        predict_cls(odd_folder, tmp_path / "o.csv", checkpoint=missing, device="cpu")
    assert str(missing) in str(info.value)


def test_tta_predictions_are_the_mirror_averaged_argmax_in_predict_and_eval(cls_tiny_checkpoint, cls_tiny_data,
                                                                             tmp_path, monkeypatch):
    import hw1.predict
    from hw1 import engine

    # the tiny model's argmax rarely changes under mirroring, so the flag's path is also checked
    asked, real = [], engine.probabilities
    monkeypatch.setattr(hw1.predict, "probabilities", lambda m, x, tta=False, **kw: asked.append(tta) or real(m, x, tta=tta, **kw))
    monkeypatch.setattr(engine, "probabilities", hw1.predict.probabilities)
    val_dir, gt = cls_tiny_data / "val_50", cls_tiny_data / "val_gt.csv"
    rows = predict_main(["cls", str(val_dir), str(tmp_path / "pred.csv"), "--checkpoint", str(cls_tiny_checkpoint),
                         "--device", "cpu", "--tta"])
    model = model_from_checkpoint(load_checkpoint(cls_tiny_checkpoint)).eval()
    val = load_cls_split(val_dir, labels_csv=gt, transform=cls_eval_transform())
    x = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)).argmax(1).tolist()
    by_name = dict(zip(val.files, expected))
    assert len(rows) == len(by_name) and all(label == by_name[name] for name, label in rows)
    truth = {name: int(label) for name, label in _read_csv(gt)[1:]}
    acc = sum(truth[name] == label for name, label in rows) / len(truth)
    scored = eval_py.main(["--task", "cls", "--checkpoint", str(cls_tiny_checkpoint), "--data-dir", str(val_dir),
                           "--device", "cpu", "--tta"])
    assert scored["acc"] == pytest.approx(acc)
    assert asked and all(asked)


def test_extract_features_are_the_classifier_input_in_fp32(cls_tiny_checkpoint):
    model = load_model(cls_tiny_checkpoint, "cls", torch.device("cpu"))
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    feats = extract_features(model, images, batch_size=3)
    net = model.module
    assert feats.shape == (7, net.num_features) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    # the classifier's fp32 logits, even where the model's inference plan is bf16 autocast
    with torch.no_grad():
        logits = net(normalize(images)).numpy()
    np.testing.assert_allclose(feats @ net.classifier.weight.detach().numpy().T
                               + net.classifier.bias.detach().numpy(), logits, rtol=1e-4, atol=1e-4)


def three_images(data, folder):
    """``folder`` holding copies of three validation images of ``data``."""
    folder.mkdir()
    for p in sorted((data / "val_50").iterdir())[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


@pytest.mark.reliability
def test_predict_cls_never_writes_its_csv_over_an_image(cls_tiny_checkpoint, cls_tiny_data, tmp_path):
    folder = three_images(cls_tiny_data, tmp_path / "val")
    target = sorted(folder.iterdir())[0]
    before = target.read_bytes()
    with pytest.raises(UserError, match=f"{target}: would replace a file of the input folder"):
        predict_cls(folder, target, checkpoint=cls_tiny_checkpoint, device="cpu")
    assert target.read_bytes() == before


@pytest.mark.reliability
def test_predict_cls_again_into_its_image_folder_replaces_its_own_csv(cls_tiny_checkpoint, cls_tiny_data, tmp_path):
    """``hw1_1.sh IMGS IMGS/pred.csv`` twice: the CSV of the first run is no input; the second replaces it."""
    folder = three_images(cls_tiny_data, tmp_path / "val")
    out = folder / "pred.csv"
    predict_cls(folder, out, checkpoint=cls_tiny_checkpoint, device="cpu")
    first = out.read_text()
    out.write_text(first.replace("filename", "stale", 1))
    predict_cls(folder, out, checkpoint=cls_tiny_checkpoint, device="cpu")
    assert out.read_text() == first and len(first.splitlines()) == 4  # the header and the 3 images


# --- failed runs keep the previous output; odd file names -----------------------------------------


@pytest.mark.reliability
def test_cli_corrupt_png_keeps_the_previous_csv(cli_runs):
    result, paths = cli_runs["corrupt_png"]
    assert_one_line_error(result, paths["bad"], "cannot read image")
    assert contents(paths["out"]) == paths["before"]
    assert [p.name for p in paths["out"].parent.glob(".pred.csv.*")] == []  # no temporary file left


@pytest.mark.reliability
def test_predict_empty_folder_keeps_the_previous_csv(cls_one_epoch_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "pred.csv"
    out.write_text("filename,label\nold.png,1\n")
    err = cli_error(capsys, predict_main, ["cls", str(empty), str(out), "--checkpoint",
                                           str(cls_one_epoch_run / "last.pth"), "--device", "cpu"])
    assert f"{empty}: no .png/.jpg images" in err
    assert out.read_text() == "filename,label\nold.png,1\n"


@pytest.mark.reliability
def test_names_that_are_not_utf8_are_one_line_for_a_csv_and_kept_for_masks(cli_runs, seg_checkpoint, tmp_path):
    result, paths = cli_runs["non_utf8_name"]
    assert_one_line_error(result, "caf\\xe9.png: file name is not UTF-8 text")
    assert not paths["out"].exists()
    # Masks need no CSV: the mask of such an image keeps its name's bytes.
    folder = tmp_path / "in"
    folder.mkdir()
    noise(np.random.default_rng(0), 8, 8).save(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png"), format="PNG")
    written = predict_seg(folder, tmp_path / "masks", checkpoint=seg_checkpoint, device="cpu")
    assert [os.fsencode(p.name) for p in written] == [b"caf\xe9.png"] and written[0].is_file()


@pytest.mark.reliability
def test_file_names_keep_their_leading_spaces(cls_one_epoch_run, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for name in (" 1_a.png", "1_a.png"):
        noise(rng, 32, 32).save(folder / name)
    rows = predict_cls(folder, tmp_path / "pred.csv", checkpoint=cls_one_epoch_run / "last.pth", device="cpu")
    assert [name for name, _ in rows] == [" 1_a.png", "1_a.png"]
    assert read_labels_csv(tmp_path / "pred.csv") == dict(rows)  # the CSV names both files as they are
    gt = tmp_path / "gt.csv"
    gt.write_text("filename,label\n 1_a.png,3\n1_a.png, 4\n")  # a space before a label is still allowed
    assert read_labels_csv(gt) == {" 1_a.png": 3, "1_a.png": 4}
    assert load_cls_split(folder, labels_csv=gt).labels.tolist() == [3, 4]
