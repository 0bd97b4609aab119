"""hw1.bench runs and writes its results; no timing is asserted (speeds depend on the machine)."""
import json
import math

import pytest
import torch
from torch import nn

import train_cls
from hw1 import runtime
from helpers import cli_error
from hw1.bench.cli import QUICK_BATCH, default_out, main, parse_args
from hw1.bench.data import DATA_BATCH, p1_train_folder
from hw1.bench.models import RUNTIME_CONFIGS, config_names, default_config_name, model_setup
from hw1.bench.reference import reference_densenet
from hw1.bench.timing import count_flops, matmul_peak, time_fn
from hw1.cli import run
from hw1.models import build_model
from hw1.runtime import channels_last_default

pytestmark = pytest.mark.usefixtures("cls_one_thread")

TINY = ["--models", "densenet", "--depth", "10", "--growth-rate", "4", "--configs", "fp32", "channels_last+bf16",
        "--batch-size", "4", "--steps", "1", "--warmup", "1", "--repeats", "1", "--workers", "0",
        "--data-batches", "1", "--e2e-steps", "1", "--e2e-batch-size", "8", "--e2e-workers", "0",
        "--matmul-size", "64", "--device", "cpu"]


def _strict_json(path):
    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_a_tiny_run_writes_every_part(cls_tiny_data, tmp_path, capsys):
    out = tmp_path / "bench.json"
    main([*TINY, "--data-dir", str(cls_tiny_data), "--out", str(out)])
    results = _strict_json(out)
    table = capsys.readouterr().out
    assert "densenet" in table and "channels_last+bf16" in table and str(out) in table

    assert {"cpu", "cores", "torch", "device", "date", "command", "commit"} <= set(results["machine"])
    assert results["machine"]["cpu_kind"] in ("amx", "avx512_bf16", "fp32")
    assert isinstance(results["machine"]["cpu_flags"], list)
    assert results["machine"]["command"].startswith("python -m hw1.bench --models densenet")
    peak = results["peak_flop_s"]
    assert _positive(peak["bf16"]) and _positive(peak["fp32"]) and peak[peak["best"]] == max(peak["bf16"], peak["fp32"])

    model = results["models"]["densenet"]
    assert model["input"] == [3, 32, 32] and model["batch_size"] == 4
    assert _positive(model["forward_flops_per_img"])
    assert model["train_flops_per_img"] == 3 * model["forward_flops_per_img"]
    assert list(model["configs"]) == ["fp32", "channels_last+bf16"]
    for name, r in model["configs"].items():
        assert "error" not in r, r
        for key in ("train_img_s", "infer_img_s", "train_vs_fp32", "infer_vs_fp32", "train_flop_s", "frac_bf16_peak", "frac_peak",
                    "train_first_call_s", "infer_first_call_s"):
            assert _positive(r[key]), (name, key, r[key])
    assert model["configs"]["fp32"]["train_vs_fp32"] == 1.0
    default = model["configs"]["channels_last+bf16"]
    assert (default["channels_last"], default["amp"], default["compile"]) == (True, "bf16", False)

    data = results["data"]
    assert data["images"] == "real" and data["count"] == 36 and _positive(data["decode_once_s"])
    assert list(data["workers"]) == ["0"]
    assert _positive(data["workers"]["0"]["img_s"]) and _positive(data["workers"]["0"]["vs_densenet_step"])

    ref = results["reference"]
    assert ref["params"]["ours"] == ref["params"]["reference"]
    assert ref["forward_flops_per_img"]["ours"] == ref["forward_flops_per_img"]["reference"]
    for key in ("ours_img_s", "reference_img_s", "ratio"):
        assert _positive(ref["model_step"][key])
    assert ref["e2e"]["steps"] == 1
    for key in ("ours_steps_s", "reference_steps_s", "ratio"):
        assert _positive(ref["e2e"][key])


def test_generated_images_stand_in_for_missing_data(tmp_path):
    folder, source = p1_train_folder(tmp_path / "missing", tmp_path / "generated")
    assert source == "generated" and folder.is_dir() and any(folder.glob("*_*.png"))


@pytest.mark.reliability
def test_a_data_dir_named_but_missing_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no course data here, and nothing may be written
    missing = tmp_path / "missing"
    with pytest.raises(SystemExit) as info:
        run(main, [*TINY, "--parts", "data", "--data-dir", str(missing)])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {missing}: expected train_50/ here") and err.count("\n") == 1
    assert info.value.code == 2 and list(tmp_path.iterdir()) == []
    # without --data-dir the course data's place is the default, and generated digits stand in where it is absent
    assert parse_args([]).data_dir == "hw1_data/p1_data"


def test_time_fn_is_the_median_after_warmup():
    calls = []
    seconds = time_fn(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and 0 <= seconds < 1


def test_count_flops_of_a_convolution():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    flops = count_flops(conv, torch.zeros(2, 3, 16, 16))
    assert flops == 2 * (2 * 16 * 16) * 8 * 3 * 9  # 2 per multiply-add, per output element
    assert conv.weight.device.type == "cpu"  # the model is left as it was


def test_matmul_peak_is_positive():
    assert _positive(matmul_peak(torch.float32, device=torch.device("cpu"), n=64, repeats=1))


@pytest.mark.parametrize("stem_pool", [False, True])
def test_reference_densenet_matches_ours_layer_for_layer(stem_pool):
    ours = build_model("densenet", depth=16, growth_rate=6, num_classes=50, stem_pool=stem_pool)
    ref = reference_densenet(depth=16, growth_rate=6, stem_pool=stem_pool)
    x = torch.zeros(1, 3, 32, 32)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]
    assert count_flops(ours, x) == count_flops(ref, x)
    assert ref(x).shape == (1, 50)


def test_stem_pool_reaches_the_benched_model():
    args = parse_args(["--depth", "16", "--growth-rate", "6", "--stem-pool"])
    config, shape, classes, _ = model_setup("densenet", args)
    assert config["stem_pool"] is True and shape == (3, 32, 32) and classes == 50
    assert model_setup("densenet", parse_args([]))[0]["stem_pool"] is False


@pytest.mark.reliability
def test_a_hyperparameter_no_benched_model_takes_is_refused(capsys):
    # --depth with convnext alone was silently ignored
    err = cli_error(capsys, main, ["--models", "convnext", "--depth", "10"])
    assert err == "error: --depth: none of the benched models (convnext) takes it\n"
    assert parse_args(["--models", "convnext", "densenet", "--depth", "10"]).hyperparameters["depth"] == 10
    assert parse_args(["--models", "convnext", "--quick"]).models == ["convnext"]  # --quick's depth is no flag typed


def test_defaults_follow_the_training_script():
    from hw1.trainer import start_run
    from hw1.tasks.cls import TASK as CLS

    train = start_run(train_cls.get_args_parser(), [], CLS)
    args = parse_args([])
    assert model_setup("densenet", args)[0] == {**train.model_config, "weights": "none"}
    assert DATA_BATCH == train.batch_size
    assert args.e2e_workers == train.workers
    cpu = torch.device("cpu")
    for name in ("densenet", "convnext"):
        assert RUNTIME_CONFIGS[default_config_name(cpu, name)].channels_last == channels_last_default(
            train.channels_last, name, cpu)


def test_batch_sizes_per_model_and_for_all():
    assert parse_args(["--batch-size", "3", "convnext=5"]).batch_size == {
        "densenet": 3, "convnext": 5, "vgg16_fcn32s": 3, "vgg16_fcn8s": 3, "resnet101_fcn": 3}
    quick = parse_args(["--quick", "--batch-size", "densenet=7"])
    assert quick.batch_size == {**QUICK_BATCH, "densenet": 7} and quick.hyperparameters["depth"] == 40
    # explicit flags win over the preset
    assert parse_args(["--quick", "--depth", "100"]).hyperparameters["depth"] == 100
    with pytest.raises(SystemExit):
        parse_args(["--batch-size", "alexnet=2"])


def test_default_is_each_models_training_configuration_and_micro_batches_split_only_larger_batches(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_kind", lambda: "avx512_bf16")
    assert config_names(["default"], cpu, "densenet", 128) == ["fp32", "bf16+mb64"]
    assert config_names(["default"], cpu, "convnext", 8) == ["fp32", "channels_last+bf16"]
    monkeypatch.setattr(runtime, "cpu_kind", lambda: "fp32")
    assert config_names(["default", "compile"], cpu, "densenet", 128) == ["fp32", "channels_last+mb64", "compile"]
    assert config_names(["channels_last+mb64", "channels_last"], cpu, "densenet", 64) == ["fp32", "channels_last"]


@pytest.mark.reliability
def test_default_out_is_a_new_file_never_a_record_already_there(tmp_path, monkeypatch):
    import datetime

    monkeypatch.setattr("hw1.bench.cli.cpu_kind", lambda: "amx")
    day = datetime.date(2026, 12, 2)
    cpu = torch.device("cpu")
    first = default_out(cpu, tmp_path, day)
    assert first == str(tmp_path / "bench_amx_2026-12-02.json")
    (tmp_path / "bench_amx_2026-12-02.json").write_text("{}")
    assert default_out(cpu, tmp_path, day) == str(tmp_path / "bench_amx_2026-12-02_2.json")
    (tmp_path / "bench_amx_2026-12-02_2.json").write_text("{}")
    assert default_out(cpu, tmp_path, day) == str(tmp_path / "bench_amx_2026-12-02_3.json")
    assert (tmp_path / "bench_amx_2026-12-02.json").read_text() == "{}"


def test_recipes_and_predict_parts_time_the_shipped_pipelines(tmp_path, capsys):
    # one step of each CPU recipe through each pipeline, and the course's two commands, on course-layout data
    from conftest import make_cls_tiny
    from hw1.data.scenes import make_seg_demo
    from hw1.tasks.seg import LAYOUT as SEG_LAYOUT

    p1 = make_cls_tiny(tmp_path / "p1", train_per_class=128, val_per_class=2)  # 384: 2 warm-up batches + 1
    p2 = make_seg_demo(tmp_path / "p2", SEG_LAYOUT, n_train=48, n_val=2, size=64)
    out = tmp_path / "bench.json"
    main(["--parts", "recipes", "predict", "--data-dir", str(p1), "--p2-data-dir", str(p2), "--recipe-steps", "1",
          "--predict-repeats", "1", "--matmul-size", "64", "--device", "cpu", "--out", str(out)])
    results = _strict_json(out)
    from hw1.recipes import DENSENET, VGG16_FCN8S

    for task, batch in (("cls", DENSENET["cpu"]["batch_size"]), ("seg", VGG16_FCN8S["cpu"]["batch_size"])):
        r = results["recipes"][task]
        assert r["batch_size"] == batch and r["images"] == batch
        assert list(r["pipelines"]) == ["batched", "workers", "reference"]
        for p in r["pipelines"].values():
            assert p["steps"] == 1 and _positive(p["img_s"]) and math.isfinite(p["loss"])
        assert r["pipelines"]["workers"]["workers"] > 0 and r["pipelines"]["batched"]["workers"] == 0
        assert r["pipelines"]["reference"]["amp"] == "none" and not r["pipelines"]["reference"]["channels_last"]
        for key in ("batched_vs_workers", "batched_vs_reference", "workers_vs_reference"):
            assert _positive(r[key])
    assert set(results["predict"]) == {"predict_cls", "hw1_2.sh"}
    assert all(_positive(r["seconds"]) for r in results["predict"].values())
    table = capsys.readouterr().out
    assert "train_seg.py --recipe cpu" in table and "hw1_2.sh" in table
