"""hw1.checkpoint: what a load accepts (bad, corrupt, code-running and foreign checkpoints refused), no
checkpoint or state dict of the package and scripts read any way but ``torch.load(..., weights_only=True)``,
and exported checkpoints (``python -m hw1.checkpoint``).

The model is the tiny DenseNet trained once per session (``cls_tiny_checkpoint`` in conftest.py).
"""
import ast
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_py
from conftest import REPO
from helpers import cli_error, save_code_running_checkpoint, write_pairs
from hw1.checkpoint import load_checkpoint, model_from_checkpoint
from hw1.errors import UserError
from hw1.models import build_model
from hw1.predict import load_model
from hw1.predict import main as predict_main
from hw1.predict import predict_cls

pytestmark = pytest.mark.usefixtures("cls_one_thread")


# --- what a load accepts --------------------------------------------------------------------------


@pytest.mark.reliability
@pytest.mark.parametrize("change", [{"model": [1.0]}, {"model": torch.zeros(2)}, {"model_name": ["densenet"]},
                                    {"model_config": [10, 4]}], ids=["model-list", "model-tensor", "name-list",
                                                                     "config-list"])
def test_checkpoint_fields_of_the_wrong_type(tmp_path, change):
    path = tmp_path / "odd.pth"
    torch.save({"model": {}, "model_name": "densenet", "model_config": {}, **change}, path)
    key = next(iter(change))
    with pytest.raises(UserError, match=f"not an hw1 checkpoint \\('{key}' is a ") as info:
        load_checkpoint(path)
    assert str(info.value).startswith(str(path))


@pytest.mark.reliability
@pytest.mark.parametrize("change, message", [
    ({"inference": "yes"}, "'inference' must be a dict such as {'tta': 'flip'} (none, flip, d4, crops or a bool), not 'yes'"),
    ({"inference": {"tta": "no"}}, "'inference' must be a dict"),
    ({"args": {"size": float("inf")}}, "args.size inf: must be an integer in [1, 4096]"),
    ({"args": {"size": 30000}}, "args.size 30000: must be an integer in [1, 4096]"),
    ({"args": "x"}, "'args' is a str, not a dict"),
    ({"model_config": {"depth": 120004}}, "model_config depth=120004: must be 6n+4 in [10, 400]"),
    ({"model_config": {"growth_rate": 257}}, "model_config growth_rate=257: must be in [1, 256]"),
    ({"best": "x"}, "'best' 'x': must be a number"),
    ({"epoch": "3"}, "'epoch' '3': must be an integer, 0 or more"),
], ids=["tta-word", "tta-string", "size-inf", "size-huge", "args-str", "depth-huge", "growth-huge", "best-str",
        "epoch-str"])
def test_checkpoint_values_out_of_their_flags_ranges_are_one_line(tmp_path, change, message):
    # caught at load, before a model is built or an epoch trained (they were AttributeError,
    # OverflowError, memory exhaustion and a TypeError after a whole epoch)
    path = tmp_path / "odd.pth"
    ckpt = {"model": {}, "model_name": "densenet", "model_config": {"depth": 10, "growth_rate": 4}}
    torch.save({**ckpt, **change}, path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: {message}")


@pytest.mark.reliability
def test_resume_from_a_checkpoint_with_a_damaged_rng_state_is_one_line(cls_tiny_run, tmp_path):
    from hw1.tasks.cls import ClsConfig
    from hw1.trainer import load_resume

    ckpt = torch.load(cls_tiny_run[0] / "last.pth", weights_only=True)
    ckpt["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)
    torch.save(ckpt, tmp_path / "last.pth")
    config = ClsConfig(model="densenet", epochs=8, resume=str(tmp_path / "last.pth"))
    with pytest.raises(UserError, match="its RNG state is damaged or not torch's"):
        load_resume(config, model_name="densenet", model_config=ckpt["model_config"])


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


@pytest.mark.reliability
def test_a_raw_pickle_is_named_as_such_without_torchs_warning(tmp_path, recwarn):
    """A pickle that torch.save did not write (here one that would run code): one line saying what the
    file is, after no warning about its pickle protocol ("corrupt", after torch's 2-line warning, before)."""
    path = save_code_running_checkpoint(tmp_path / "raw.pth", tmp_path / "ran", raw=True)
    with pytest.raises(UserError) as error:
        load_checkpoint(path)
    assert str(error.value) == (f"{path}: a raw pickle (pickle.dump), not a file that torch.save wrote; "
                                "save checkpoints and state dicts with torch.save")
    assert not recwarn.list and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("skips, name", [("none", "vgg16_fcn32s"), ("8s", "vgg16_fcn8s")])
def test_a_checkpoint_saved_before_fcn8s_had_its_name_loads_under_it(skips, name, tmp_path):
    """Checkpoints of vgg16_fcn32s with a skips argument (the shipped P2 model was one) load,
    resume and predict as the model they hold: FCN-32s or FCN-8s, the same weights."""
    from hw1.models.fcn import VGG16FCN32s

    torch.manual_seed(0)
    old = VGG16FCN32s(fc_channels=16, batch_norm=True, width=0.125, skips=skips).eval()
    torch.nn.init.normal_(old.score.weight)
    config = {"fc_channels": 16, "batch_norm": True, "width": 0.125, "skips": skips, "num_classes": 7}
    path = tmp_path / "old.pth"
    torch.save({"model": old.state_dict(), "model_name": "vgg16_fcn32s", "model_config": config, "task": "seg",
                "args": {"model": "vgg16_fcn32s", "model_config": config, "epochs": 3}}, path)
    ckpt = load_checkpoint(path, task="seg")
    current = {k: v for k, v in config.items() if k != "skips"}
    assert (ckpt["model_name"], ckpt["model_config"]) == (name, current)
    assert ckpt["args"] == {"model": name, "model_config": current, "epochs": 3}
    # older runs' args kept the hyperparameters as fields of their own: skips goes from there too
    torch.save({"model": old.state_dict(), "model_name": "vgg16_fcn32s", "model_config": config, "task": "seg",
                "args": {"model": "vgg16_fcn32s", "skips": skips, "fc_channels": 16, "epochs": 3}}, path)
    assert load_checkpoint(path, task="seg")["args"] == {"model": name, "fc_channels": 16, "epochs": 3}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model_from_checkpoint(ckpt).eval()(x)["out"], old(x)["out"])


def test_an_fcn16s_checkpoint_is_refused_with_what_to_do(tmp_path, capsys):
    path = tmp_path / "fcn16s.pth"
    torch.save({"model": {}, "model_name": "vgg16_fcn32s", "model_config": {"skips": "16s"}, "task": "seg"}, path)
    pairs = write_pairs(tmp_path / "pairs", [(32, 32)])
    err = cli_error(capsys, eval_py.main, ["--task", "seg", "--checkpoint", str(path), "--data-dir", str(pairs)])
    assert err.startswith(f"error: {path}: an FCN-16s") and "train vgg16_fcn8s or vgg16_fcn32s" in err
    assert err.count("\n") == 1


@pytest.mark.reliability
def test_checkpoint_of_another_class_count_is_refused(tmp_path, capsys):
    # a 10-class segmenter that predicts class 9 everywhere: counted, 7 * t + 9 lands in other cells
    config = {"fc_channels": 16, "batch_norm": True, "width": 0.25, "num_classes": 10}
    model = build_model("vgg16_fcn32s", **config, weights="none")
    state = model.state_dict()
    state["score.bias"][9] = 100.0
    seg = tmp_path / "seg10.pth"
    torch.save({"model": state, "model_name": "vgg16_fcn32s", "model_config": config, "task": "seg"}, seg)
    pairs = write_pairs(tmp_path / "pairs", [(32, 32)])
    err = cli_error(capsys, eval_py.main, ["--task", "seg", "--checkpoint", str(seg), "--data-dir", str(pairs)])
    assert err == f"error: {seg}: a vgg16_fcn32s checkpoint with num_classes 10; its task (seg) has 7 classes\n"
    # a 100-class classifier: no label 77 in a prediction CSV
    cls = tmp_path / "cls100.pth"
    config = {"depth": 10, "growth_rate": 4, "num_classes": 100}
    torch.save({"model": build_model("densenet", **config).state_dict(), "model_name": "densenet",
                "model_config": config, "task": "cls"}, cls)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "0_0.png")
    err = cli_error(capsys, predict_main, ["cls", str(images), str(tmp_path / "pred.csv"), "--checkpoint", str(cls)])
    assert err == f"error: {cls}: a densenet checkpoint with num_classes 100; its task (cls) has 50 classes\n"
    assert not (tmp_path / "pred.csv").exists()


def test_checkpoint_whose_weights_do_not_fit(cls_tiny_checkpoint, tmp_path):
    ckpt = torch.load(cls_tiny_checkpoint, weights_only=True)
    ckpt["model_config"] = dict(ckpt["model_config"], growth_rate=6)
    path = tmp_path / "mismatch.pth"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="do not fit") as info:
        model_from_checkpoint(load_checkpoint(path), path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)



# --- every unpickling is weights_only -------------------------------------------------------------


SOURCES = sorted([*(REPO / "hw1").rglob("*.py"), *REPO.glob("*.py")])


@functools.cache
def syntax_tree(path):
    return ast.parse(path.read_text(), str(path))


def calls_named(*names):
    """``(path, ast.Call)`` of every call ``x.name(...)`` or ``name(...)`` in the package and scripts."""
    for path in SOURCES:
        for node in ast.walk(syntax_tree(path)):
            if isinstance(node, ast.Call):
                func = node.func
                if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) in names:
                    yield path, node


def passes_weights_only(call):
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def where(path, call):
    return f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)}"


@pytest.mark.reliability
def test_every_torch_load_is_weights_only():
    loads = [(p, c) for p, c in calls_named("load", "loads") if ast.unparse(c.func) == "torch.load"]
    # one place reads every torch file (hw1.io.load_torch_file); the scan does find it
    assert [p.relative_to(REPO).as_posix() for p, _ in loads] == ["hw1/io.py"]
    assert [where(p, c) for p, c in loads if not passes_weights_only(c)] == []
    # Nothing unpickles any other way.
    unpickling = [where(p, c) for p, c in calls_named("load", "loads", "Unpickler")
                  if ast.unparse(c.func).split(".")[0] in ("pickle", "dill", "joblib", "Unpickler")]
    imports = [f"{p.relative_to(REPO)}: from torch import load" for p in SOURCES
               if re.search(r"^\s*from torch import .*\bload\b", p.read_text(), re.M)]
    assert unpickling == [] and imports == []


@pytest.mark.reliability
def test_pretrained_weights_from_the_hub_cache_load_weights_only():
    calls = list(calls_named("get_state_dict", "load_state_dict_from_url"))
    assert calls
    assert [where(p, c) for p, c in calls if not passes_weights_only(c)] == []


# --- export (python -m hw1.checkpoint) ----------------------------------------------------------


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


@pytest.mark.reliability
def test_an_export_of_an_export_keeps_its_tta_unless_told(cls_tiny_checkpoint, tmp_path, capsys):
    from hw1.checkpoint import main as checkpoint_main

    first, again, off, d4 = (tmp_path / f"{n}.pth" for n in ("first", "again", "off", "d4"))
    checkpoint_main([str(cls_tiny_checkpoint), str(first), "--tta"])
    checkpoint_main([str(first), str(again)])
    assert capsys.readouterr().out.splitlines()[-1].endswith(", flip TTA by default")
    checkpoint_main([str(first), str(off), "--no-tta"])
    checkpoint_main([str(first), str(d4), "--tta", "d4"])
    tta = [load_checkpoint(p).get("inference") for p in (again, off, d4)]
    assert tta == [{"tta": "flip"}, None, {"tta": "d4"}]


@pytest.mark.reliability
def test_half_refuses_weights_beyond_fp16s_range(cls_tiny_checkpoint, tmp_path, capsys):
    from hw1.checkpoint import main as checkpoint_main

    ckpt = torch.load(cls_tiny_checkpoint, weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = ckpt["model"][name].clone().fill_(1e6)
    big = tmp_path / "big.pth"
    torch.save(ckpt, big)
    err = cli_error(capsys, checkpoint_main, [str(big), str(tmp_path / "out.pth"), "--half"])
    assert err == (f"error: {big}: --half: {name} holds values up to 1e+06, beyond fp16's 65504: they would be "
                   "stored as inf; export it without --half\n")
    assert not (tmp_path / "out.pth").exists()


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
    assert export_checkpoint(cls_tiny_checkpoint, shipped, tta=True)["inference"] == {"tta": "flip"}
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
    assert with_tta[1] == {"flip"} and plain[1] == {"none"}  # a checkpoint that says nothing: off
    assert predict(shipped) == with_tta
    assert predict(shipped, "--no-tta") == plain
    assert score(shipped) == score(cls_tiny_checkpoint, "--tta") and score(shipped)[1] == {"flip"}
    assert predict(cls_tiny_checkpoint, "--tta", "d4")[1] == {"d4"}
    crops = tmp_path / "crops.pth"
    export_checkpoint(cls_tiny_checkpoint, crops, tta="crops")
    assert predict(crops)[1] == {"crops"} and score(crops)[1] == {"crops"}
    # without TTA the evaluation takes the logits' argmax and never asks for probabilities
    assert score(shipped, "--no-tta") == score(cls_tiny_checkpoint) and score(cls_tiny_checkpoint)[1] == set()


def test_the_inference_model_carries_its_checkpoints_plan(cls_tiny_checkpoint, tmp_path):
    from hw1.checkpoint import export_checkpoint
    from hw1.predict import InferenceModel
    from hw1.runtime import amp_dtype, channels_last_default

    cpu = torch.device("cpu")
    export_checkpoint(cls_tiny_checkpoint, tmp_path / "shipped.pth", tta=True)
    plain, shipped = load_model(cls_tiny_checkpoint, "cls", cpu), load_model(tmp_path / "shipped.pth", "cls", cpu)
    assert (plain.tta, shipped.tta, shipped.size, shipped.name) == ("none", "flip", None, "densenet")
    # checkpoints exported before d4 say {"tta": True}: flip
    ckpt = torch.load(tmp_path / "shipped.pth", weights_only=True)
    torch.save({**ckpt, "inference": {"tta": True}}, tmp_path / "old.pth")
    assert load_model(tmp_path / "old.pth", "cls", cpu).tta == "flip"
    torch.save({**ckpt, "inference": {"tta": "d8"}}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="'inference' must be"):
        load_model(tmp_path / "bad.pth", "cls", cpu)
    assert shipped.amp == amp_dtype("auto", cpu, "densenet", use="infer") and not shipped.module.training
    assert shipped.channels_last == channels_last_default(None, "densenet", cpu, use="infer")
    # --tta / --no-tta override the checkpoint's choice; not given, it stands
    assert shipped.with_tta(None) is shipped and shipped.with_tta(False).tta == "none"
    assert plain.with_tta(True).tta == "flip" and plain.with_tta("d4").tta == "d4"
    # a model built otherwise: the device's defaults for an unknown model
    bare = InferenceModel.of(plain.module, cpu)
    assert (bare.amp, bare.channels_last, bare.tta, bare.size) == (amp_dtype("auto", cpu), True, "none", None)


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
