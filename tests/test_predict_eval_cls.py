"""hw1.predict (cls) and eval.py (cls): the grading CSV, the CLI's exit codes, scoring, unsafe checkpoints.

The model is the tiny DenseNet trained once per session (``cls_tiny_checkpoint`` in conftest.py).
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_py
from helpers import assert_one_line_error, cli_error, contents, noise
from hw1.checkpoint import load_checkpoint, model_from_checkpoint
from hw1.data.cls import cls_eval_transform, load_cls_split, read_labels_csv
from hw1.errors import UserError
from hw1.data.images import normalize
from hw1.predict import extract_features, load_model
from hw1.predict import main as predict_main
from hw1.predict import predict_cls, predict_seg

pytestmark = pytest.mark.usefixtures("cls_one_thread")

REPO = Path(__file__).resolve().parents[1]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _subprocess(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # see cls_one_torch_thread in conftest.py
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, cls_tiny_data):
    """Images the grader might send: course PNGs plus grayscale, RGBA, palette, 64x48 and JPEG files.

    Names start with a class digit so ``load_cls_split`` can read the folder too.
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


# --- predict ------------------------------------------------------------------------------------


def test_predict_cls_writes_the_grading_csv(cls_tiny_checkpoint, odd_folder, tmp_path):
    out = tmp_path / "sub" / "pred.csv"
    rows = predict_cls(odd_folder, out, checkpoint=cls_tiny_checkpoint, device="cpu")
    images = sorted(p.name for p in odd_folder.iterdir() if p.suffix in (".png", ".jpg"))
    assert [name for name, _ in rows] == images
    assert all(isinstance(label, int) and 0 <= label < 50 for _, label in rows)
    text = out.read_text()
    assert text.splitlines()[0] == "filename,label"
    assert text.endswith("\n") and "\r" not in text
    assert _read_csv(out)[1:] == [[name, str(label)] for name, label in rows]
    assert [p.name for p in out.parent.iterdir()] == ["pred.csv"]  # no temporary file left behind

    # The same labels as the checkpoint's model applied to the decoded images by hand.
    model = model_from_checkpoint(load_checkpoint(cls_tiny_checkpoint)).eval()
    ds = load_cls_split(odd_folder, transform=cls_eval_transform())
    assert ds.files == images
    with torch.no_grad():
        logits = model(torch.stack([ds[i][0] for i in range(len(ds))]))
    top2 = logits.topk(2, dim=1).values
    clear = [(a - b) > 0.05 for a, b in top2.tolist()]  # predict may run under bf16 autocast
    assert sum(clear) >= len(rows) // 2, top2
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


# --- eval ---------------------------------------------------------------------------------------


def test_eval_checkpoint_and_csv_agree(cls_tiny_checkpoint, cls_tiny_data, tmp_path, capsys):
    val_dir, gt = cls_tiny_data / "val_50", cls_tiny_data / "val_gt.csv"
    pred = tmp_path / "pred.csv"
    rows = predict_cls(val_dir, pred, checkpoint=cls_tiny_checkpoint, device="cpu")
    truth = {name: int(label) for name, label in _read_csv(gt)[1:]}
    expected = sum(truth[name] == label for name, label in rows) / len(truth)

    from_csv = eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt)])
    out = capsys.readouterr().out
    from_ckpt = eval_py.main(["--task", "cls", "--checkpoint", str(cls_tiny_checkpoint), "--data-dir", str(val_dir),
                              "--labels", str(gt), "--device", "cpu", "--batch-size", "5"])
    # Labels from the file names (no --labels) are the same on this data.
    from_names = eval_py.main(["--task", "cls", "--checkpoint", str(cls_tiny_checkpoint), "--data-dir",
                               str(val_dir), "--device", "cpu"])
    assert from_csv["acc"] == pytest.approx(expected)
    assert from_ckpt["acc"] == pytest.approx(expected)
    assert from_names["acc"] == pytest.approx(expected)
    # And the run's own record of its best epoch.
    best = torch.load(cls_tiny_checkpoint, weights_only=True)
    assert best["metrics"]["val_acc"] == pytest.approx(expected)

    assert f"accuracy: {expected:.4f} ({round(expected * len(truth))}/{len(truth)} images)" in out
    per_class = from_csv["per_class_acc"]
    assert len(per_class) == 50 and all(np.isnan(per_class[3:]))
    for c in range(3):
        names = [n for n, label in truth.items() if label == c]
        assert per_class[c] == pytest.approx(sum(dict(rows)[n] == c for n in names) / len(names))
        assert f"class {c:2d}: {per_class[c]:.4f}" in out
    assert "class  3" not in out  # absent classes are not printed


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


def label_csvs(tmp_path, gt_text, pred_text):
    """(gt.csv, pred.csv) in ``tmp_path`` holding the two texts."""
    gt, pred = tmp_path / "gt.csv", tmp_path / "pred.csv"
    gt.write_text(gt_text)
    pred.write_text(pred_text)
    return gt, pred


def test_eval_writes_json(tmp_path):
    gt, pred = label_csvs(tmp_path, "filename,label\na.png,1\nb.png,2\nc.png,2\nd.png,0\n",
                          "filename,label\nd.png,0\nc.png,1\nb.png,2\na.png,1\n")
    out = tmp_path / "m.json"
    summary = eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt), "--json", str(out)])
    assert summary["acc"] == 0.75
    written = json.loads(out.read_text())
    assert written["acc"] == 0.75 and written["per_class_acc"][:3] == [1.0, 1.0, 0.5]


def test_eval_json_is_strict_json(tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("filename,label\na.png,1\nb.png,2\n")
    out = tmp_path / "m.json"
    eval_py.main(["--task", "cls", "--pred", str(gt), "--gt", str(gt), "--json", str(out)])
    def strict(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    json.loads(out.read_text(), parse_constant=strict)


def test_eval_pred_missing_a_file(tmp_path):
    gt, pred = label_csvs(tmp_path, "filename,label\na.png,1\nb.png,2\n", "filename,label\na.png,1\n")
    with pytest.raises(UserError, match="missing 1 \\(e.g. b.png\\)") as info:
        eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt)])
    assert str(pred) in str(info.value)
    extra = tmp_path / "extra.csv"
    extra.write_text("filename,label\na.png,1\nb.png,2\nz.png,0\n")
    with pytest.raises(UserError, match="extra 1 \\(e.g. z.png\\)") as info:
        eval_py.main(["--task", "cls", "--pred", str(extra), "--gt", str(gt)])
    assert str(extra) in str(info.value)


@pytest.mark.reliability
@pytest.mark.parametrize("gt_label, pred_label", [(0, 51), (49, 50), (3, -1)])
def test_eval_pred_label_out_of_range(tmp_path, gt_label, pred_label):
    gt, pred = label_csvs(tmp_path, f"filename,label\na.png,{gt_label}\nb.png,3\n",
                          f"filename,label\na.png,{pred_label}\nb.png,3\n")
    with pytest.raises(UserError, match="outside 0..49") as info:
        eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt)])
    assert str(pred) in str(info.value)


def test_eval_gt_label_out_of_range_names_the_gt_csv(tmp_path):
    gt, pred = label_csvs(tmp_path, "filename,label\na.png,50\n", "filename,label\na.png,1\n")
    with pytest.raises(UserError, match="outside 0..49") as info:
        eval_py.main(["--task", "cls", "--pred", str(pred), "--gt", str(gt)])
    assert str(info.value).startswith(str(gt))


@pytest.mark.reliability
def test_eval_argument_errors(cls_tiny_checkpoint, capsys):
    with pytest.raises(UserError, match="--data-dir"):
        eval_py.main(["--task", "cls", "--checkpoint", str(cls_tiny_checkpoint)])
    with pytest.raises(UserError, match="--pred and --gt"):
        eval_py.main(["--task", "cls", "--pred", "x.csv"])
    with pytest.raises(UserError, match="not a seg one"):
        eval_py.main(["--task", "seg", "--checkpoint", str(cls_tiny_checkpoint), "--data-dir", "x"])
    with pytest.raises(SystemExit) as info:
        eval_py.run(eval_py.main, ["--task", "cls"])
    assert info.value.code == 2 and capsys.readouterr().err.startswith("error: give either")


# --- bad checkpoints ----------------------------------------------------------------------------


class _MakesADirectoryWhenUnpickled:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.reliability
def test_checkpoint_that_runs_code_is_refused(odd_folder, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": _MakesADirectoryWhenUnpickled(marker), "model_name": "densenet", "model_config": {}}, evil)
    with pytest.raises(UserError, match="refused") as info:
        load_checkpoint(evil)
    assert str(evil) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="refused"):
        predict_cls(odd_folder, tmp_path / "p.csv", checkpoint=evil, device="cpu")
    with pytest.raises(UserError, match="refused"):
        eval_py.main(["--task", "cls", "--checkpoint", str(evil), "--data-dir", str(odd_folder)])
    assert not marker.exists()
    assert not (tmp_path / "p.csv").exists()
    # The payload is real: an unsafe load does run it.
    torch.load(evil, weights_only=False)
    assert marker.is_dir()


@pytest.mark.reliability
def test_truncated_checkpoint_is_corrupt(cls_tiny_checkpoint, tmp_path):
    data = cls_tiny_checkpoint.read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.reliability
@pytest.mark.parametrize("content", [
    pytest.param(b"", id="empty"),
    pytest.param(b"not a checkpoint at all" * 10, id="text"),
    pytest.param(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes(), id="random"),
    pytest.param(b"this is not a checkpoint at all " * 8, id="text-indexerror"),
    pytest.param(b"hello world\n", id="text-keyerror"),
])
def test_garbage_checkpoint_is_a_user_error(odd_folder, tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        predict_cls(odd_folder, tmp_path / "p.csv", checkpoint=path, device="cpu")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"not a checkpoint at all" * 10,
                                     np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes()],
                         ids=["text", "random"])
def test_garbage_checkpoint_is_called_corrupt(tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(path)


@pytest.mark.reliability
def test_checkpoints_that_are_not_hw1_ones(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(UserError, match="not an hw1 checkpoint") as info:
        load_checkpoint(plain)
    assert str(plain) in str(info.value)
    seg = tmp_path / "seg.pth"
    torch.save({"model": {}, "model_name": "vgg16_fcn32s", "model_config": {}}, seg)
    with pytest.raises(UserError, match="not a cls one"):
        load_checkpoint(seg, task="cls")
    unknown = tmp_path / "unknown.pth"
    torch.save({"model": {}, "model_name": "resnet18", "model_config": {}}, unknown)
    with pytest.raises(UserError, match="unknown model"):
        load_checkpoint(unknown)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")


def test_checkpoint_whose_weights_do_not_fit(cls_tiny_checkpoint, tmp_path):
    ckpt = torch.load(cls_tiny_checkpoint, weights_only=True)
    ckpt["model_config"] = dict(ckpt["model_config"], growth_rate=6)
    path = tmp_path / "mismatch.pth"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="do not fit") as info:
        model_from_checkpoint(load_checkpoint(path), path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_exported_checkpoint_predicts_the_same_without_the_training_state(cls_tiny_checkpoint, cls_tiny_data,
                                                                          tmp_path, capsys):
    from hw1.checkpoint import main as checkpoint_main

    out = tmp_path / "ship" / "p1.pth"
    out.parent.mkdir()
    checkpoint_main([str(cls_tiny_checkpoint), str(out)])
    assert capsys.readouterr().out.startswith(f"wrote {out}: densenet ")
    assert [p.name for p in out.parent.iterdir()] == ["p1.pth"]  # written in place of a temporary file
    full, slim = load_checkpoint(cls_tiny_checkpoint), load_checkpoint(out, task="cls")
    assert "optimizer" in full and "optimizer" not in slim and "rng" not in slim
    assert slim["model_config"] == full["model_config"] and slim["args"] == full["args"]
    assert slim["metrics"] == full["metrics"] and slim["exported_from"] == str(cls_tiny_checkpoint)
    for name, value in full["model"].items():
        assert torch.equal(slim["model"][name], value), name
    assert out.stat().st_size < cls_tiny_checkpoint.stat().st_size
    val = cls_tiny_data / "val_50"
    assert predict_cls(val, tmp_path / "a.csv", checkpoint=out, device="cpu") == \
        predict_cls(val, tmp_path / "b.csv", checkpoint=cls_tiny_checkpoint, device="cpu")


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hw1.checkpoint", str(tmp_path / "no.pth"), str(tmp_path / "o.pth")],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2 and result.stderr == f"error: {tmp_path / 'no.pth'}: checkpoint not found\n"
    assert not (tmp_path / "o.pth").exists()


def test_a_checkpoint_exported_with_tta_is_used_with_it_unless_told_not_to(cls_tiny_checkpoint, cls_tiny_data,
                                                                           tmp_path, monkeypatch):
    import hw1.predict
    from hw1 import engine
    from hw1.checkpoint import export_checkpoint

    shipped = tmp_path / "shipped.pth"
    assert export_checkpoint(cls_tiny_checkpoint, shipped, tta=True)["inference"] == {"tta": True}
    asked, real = [], engine.probabilities
    monkeypatch.setattr(hw1.predict, "probabilities", lambda m, x, tta=False, **kw: asked.append(tta) or real(m, x, tta=tta, **kw))
    monkeypatch.setattr(engine, "probabilities", hw1.predict.probabilities)
    val_dir = cls_tiny_data / "val_50"

    def predict(checkpoint, *flags):
        asked.clear()
        rows = predict_main(["cls", str(val_dir), str(tmp_path / "p.csv"), "--checkpoint", str(checkpoint),
                             "--device", "cpu", *flags])
        return rows, set(asked)

    def score(checkpoint, *flags):
        asked.clear()
        acc = eval_py.main(["--task", "cls", "--checkpoint", str(checkpoint), "--data-dir", str(val_dir),
                            "--device", "cpu", *flags])["acc"]
        return acc, set(asked)

    with_tta, plain = predict(cls_tiny_checkpoint, "--tta"), predict(cls_tiny_checkpoint)
    assert with_tta[1] == {True} and plain[1] == {False}  # a checkpoint that says nothing: off
    assert predict(shipped) == with_tta
    assert predict(shipped, "--no-tta") == plain
    assert score(shipped) == score(cls_tiny_checkpoint, "--tta") and score(shipped)[1] == {True}
    # without TTA the evaluation takes the logits' argmax and never asks for probabilities
    assert score(shipped, "--no-tta") == score(cls_tiny_checkpoint) and score(cls_tiny_checkpoint)[1] == set()


def test_the_inference_model_carries_its_checkpoints_plan(cls_tiny_checkpoint, tmp_path):
    from hw1.checkpoint import export_checkpoint
    from hw1.predict import InferenceModel
    from hw1.runtime import amp_dtype, channels_last_default

    cpu = torch.device("cpu")
    export_checkpoint(cls_tiny_checkpoint, tmp_path / "shipped.pth", tta=True)
    plain, shipped = load_model(cls_tiny_checkpoint, "cls", cpu), load_model(tmp_path / "shipped.pth", "cls", cpu)
    assert (plain.tta, shipped.tta, shipped.size, shipped.name) == (False, True, None, "densenet")
    assert shipped.amp == amp_dtype("auto", cpu, "densenet", use="infer") and not shipped.module.training
    assert shipped.channels_last == channels_last_default(None, "densenet", cpu, use="infer")
    # --tta / --no-tta override the checkpoint's choice; not given, it stands
    assert shipped.with_tta(None) is shipped and not shipped.with_tta(False).tta and plain.with_tta(True).tta
    # a model built otherwise: the device's defaults for an unknown model
    bare = InferenceModel.of(plain.module, cpu)
    assert (bare.amp, bare.channels_last, bare.tta, bare.size) == (amp_dtype("auto", cpu), True, False, None)


@pytest.mark.reliability
def test_export_never_replaces_a_training_checkpoint_unless_told(cls_tiny_checkpoint, tmp_path):
    from hw1.checkpoint import export_checkpoint

    train = tmp_path / "last.pth"
    train.write_bytes(cls_tiny_checkpoint.read_bytes())
    with pytest.raises(UserError, match="is an input of this command"):
        export_checkpoint(train, train)
    other = tmp_path / "other.pth"
    other.write_bytes(cls_tiny_checkpoint.read_bytes())
    with pytest.raises(UserError, match="holds a training checkpoint, which --resume needs"):
        export_checkpoint(train, other)
    assert other.read_bytes() == cls_tiny_checkpoint.read_bytes()
    export_checkpoint(train, other, overwrite=True)
    assert "optimizer" not in load_checkpoint(other)
    export_checkpoint(train, other)  # an earlier export is replaced as asked
    assert train.read_bytes() == cls_tiny_checkpoint.read_bytes()


@pytest.mark.reliability
def test_predict_cls_never_writes_its_csv_over_an_image(cls_tiny_checkpoint, cls_tiny_data, tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    for p in sorted((cls_tiny_data / "val_50").iterdir())[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    target = sorted(folder.iterdir())[0]
    before = target.read_bytes()
    with pytest.raises(UserError, match=f"{target}: would replace a file of the input folder"):
        predict_cls(folder, target, checkpoint=cls_tiny_checkpoint, device="cpu")
    assert target.read_bytes() == before


# --- failed runs keep the previous output; odd file names -----------------------------------------


@pytest.mark.reliability
def test_cli_corrupt_png_keeps_the_previous_csv(cli_runs):
    result, paths = cli_runs["corrupt_png"]
    assert_one_line_error(result, paths["bad"], "cannot read image")
    assert contents(paths["out"]) == paths["before"]
    assert [p.name for p in paths["out"].parent.glob(".pred.csv.*")] == []  # no temporary file left


@pytest.mark.reliability
def test_cli_malformed_gt_csv_keeps_the_previous_json(cli_runs):
    result, paths = cli_runs["malformed_csv"]
    assert_one_line_error(result, paths["bad"], "line 4: a.png is listed twice (first on line 2)")
    assert contents(paths["out"]) == paths["before"]


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
