"""EMA of the weights (``--ema``), flip test-time augmentation and named recipes (``--recipe``)."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import train_cls
from hw1 import engine
from hw1.checkpoint import load_checkpoint, model_from_checkpoint
from hw1.ema import EMA
from hw1.errors import UserError
from hw1.models.densenet import densenet as build_densenet
from hw1.run_dir import RunDir
from hw1.summary import summarize_run

pytestmark = pytest.mark.usefixtures("cls_one_thread")


def test_ema_update_is_the_moving_average_with_its_early_ramp():
    source = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMA(source, decay=0.9)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    source[1].num_batches_tracked += 5
    ema.update()
    d = min(0.9, 2 / 11)  # the ramp (1 + n) / (10 + n) at n = 1 is below 0.9
    for k, v in ema.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, d * start[k] + (1 - d) * source.state_dict()[k])
    assert ema.state_dict()["1.num_batches_tracked"] == 5  # counters are copied, not averaged
    for _ in range(200):
        ema.update()
    assert ema.current_decay() == 0.9
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_rejects_a_decay_outside_0_1():
    with pytest.raises(ValueError):
        EMA(nn.Linear(1, 1), decay=1.0)


@pytest.mark.reliability
def test_ema_run_ships_the_average_and_resumes_exactly(cls_tiny_data, cls_tiny_train_argv, tmp_path, monkeypatch):
    argv = cls_tiny_train_argv(cls_tiny_data, tmp_path / "ema", "--ema", "0.8", epochs=3)
    reference = train_cls.main(argv)
    ckpt = load_checkpoint(tmp_path / "ema" / "last.pth", task="cls")
    assert set(ckpt["model"]) == set(ckpt["train_model"])
    assert ckpt["ema_updates"] == 3 * (36 // 8)  # one update per step: 36 images, batches of 8, the last dropped
    assert any(not torch.equal(ckpt["model"][k], ckpt["train_model"][k]) for k in ckpt["model"])
    # val_acc is the average's (what predict loads), val_raw_acc the trained weights'
    model = model_from_checkpoint(ckpt).eval()
    torch.testing.assert_close(model.state_dict(), ckpt["model"])
    assert {"val_acc", "val_raw_acc", "val_raw_loss"} <= set(reference)
    # the summary reports both, so that a pilot table shows what the average bought
    records = RunDir(tmp_path / "ema").read_metrics()
    summary = summarize_run(tmp_path / "ema")
    assert summary["best_raw"] == max(r["val_raw_acc"] for r in records)
    assert summary["last_raw"] == records[-1]["val_raw_acc"] and summary["last"] == records[-1]["val_acc"]

    # interrupted after epoch 2, resumed: the same weights and average as the uninterrupted run
    real = engine.train_one_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    argv_b = cls_tiny_train_argv(cls_tiny_data, tmp_path / "b", "--ema", "0.8", epochs=3)
    with monkeypatch.context() as m:
        m.setattr(engine, "train_one_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_cls.main(argv_b)
    resumed = train_cls.main([*argv_b, "--resume", str(tmp_path / "b" / "last.pth")])
    again = load_checkpoint(tmp_path / "b" / "last.pth", task="cls")
    for key in ("model", "train_model"):
        for name, value in ckpt[key].items():
            assert torch.equal(again[key][name], value), (key, name)
    assert again["ema_updates"] == ckpt["ema_updates"]
    assert resumed["val_acc"] == reference["val_acc"]
    # resumed without --ema, the average would be dropped and val_acc would change meaning: refused
    before = (tmp_path / "ema" / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match=r"an EMA run \(--ema 0.8\); resume it with --ema"):
        train_cls.main(cls_tiny_train_argv(cls_tiny_data, tmp_path / "ema", "--resume",
                                           str(tmp_path / "ema" / "epoch_002.pth"), epochs=3))
    assert (tmp_path / "ema" / "metrics.jsonl").read_text() == before


def test_flip_tta_averages_the_mirrored_probabilities():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        plain = engine.probabilities(model, x)
        both = engine.probabilities(model, x, tta=True)
        mirrored = model(x.flip(-1)).softmax(1)
    torch.testing.assert_close(plain, model(x).softmax(1))
    torch.testing.assert_close(both, (plain + mirrored) / 2)
    assert not torch.allclose(both, plain)


class _PerPixel(nn.Module):
    """A segmenter whose output at a pixel depends on that pixel only: mirroring commutes with it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 7, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_tta_turns_and_mirrors_segmentation_maps_back(tta):
    # a per-pixel model commutes with every view: each view's map, turned back, is the plain one
    torch.manual_seed(0)
    model, x = _PerPixel().eval(), torch.randn(1, 3, 6, 9)
    with torch.no_grad():
        torch.testing.assert_close(engine.probabilities(model, x, tta=tta), engine.probabilities(model, x))
        torch.testing.assert_close(engine.probabilities(model, x, tta=tta, size=(12, 18)),
                                   engine.probabilities(model, x, size=(12, 18)))


def test_d4_tta_averages_the_eight_turned_and_mirrored_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 7, 3, padding=1), nn.ReLU(), nn.Conv2d(7, 7, 3, padding=1)).eval()
    seg = lambda t: {"out": model(t)}  # noqa: E731
    x = torch.randn(2, 3, 5, 8)
    with torch.no_grad():
        expected = []
        for k in range(4):
            for mirrored in (False, True):
                v = torch.rot90(x.flip(-1) if mirrored else x, k, (-2, -1))
                back = torch.rot90(model(v).softmax(1), -k, (-2, -1))
                expected.append(back.flip(-1) if mirrored else back)
        got = engine.probabilities(seg, x, tta="d4")
    torch.testing.assert_close(got, torch.stack(expected).mean(0))
    assert not torch.allclose(got, engine.probabilities(seg, x, tta="flip"))
    with pytest.raises(ValueError, match="none, flip, d4, crops"):
        engine.probabilities(seg, x, tta="d8")


def test_crops_tta_weighs_the_plain_and_mirrored_image_and_both_moved_a_pixel_each_way():
    # airbench's multi-crop TTA: 0.5 x mean(image, mirror) + 0.25 x each of the same moved one
    # pixel up-left and down-right within a reflect padding
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)).eval()
    x = torch.randn(3, 3, 7, 7)
    with torch.no_grad():
        model(x)
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        moved = {0: x, -1: padded[..., :7, :7], 1: padded[..., 2:, 2:]}
        pair = {s: (model(v).softmax(1) + model(v.flip(-1)).softmax(1)) / 2 for s, v in moved.items()}
        expected = 0.5 * pair[0] + 0.25 * pair[-1] + 0.25 * pair[1]
        got = engine.probabilities(model, x, tta="crops")
        torch.testing.assert_close(got, expected)
        assert not torch.allclose(got, engine.probabilities(model, x, tta="flip"))
        # the caller's plain output stands in for the first view
        torch.testing.assert_close(engine.probabilities(model, x, tta="crops", output=model(x)), got)
    assert [v.weight for v in engine.tta_views("crops")] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]


def test_crops_tta_moves_segmentation_maps_back_to_their_pixels():
    # a per-pixel model commutes with a move everywhere but the moved-in border row and column
    torch.manual_seed(0)
    model, x = _PerPixel().eval(), torch.randn(2, 3, 6, 9)
    with torch.no_grad():
        plain, got = engine.probabilities(model, x), engine.probabilities(model, x, tta="crops")
        torch.testing.assert_close(got[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1])
        assert not torch.allclose(got, plain)  # at the border, moved-in pixels are neighbours'
        # resized to the masks' size after the move: the same as the plain maps' resizing inside
        big = engine.probabilities(model, x, tta="crops", size=(12, 18))
        assert big.shape == (2, 7, 12, 18)
        torch.testing.assert_close(big[..., 3:-3, 3:-3], engine.probabilities(model, x, size=(12, 18))[..., 3:-3, 3:-3])


def test_stem_pool_runs_the_blocks_at_half_the_side():
    plain, pooled = build_densenet(depth=10, growth_rate=4), build_densenet(depth=10, growth_rate=4, stem_pool=True)
    x = torch.randn(2, 3, 32, 32)
    assert plain.trunk.denseblock1(plain.trunk.conv0(x)).shape[-1] == 32
    stem = nn.Sequential(*list(pooled.trunk.children())[:4])  # conv0, norm0, relu0, pool0
    assert stem(x).shape[-1] == 16
    assert pooled(x).shape == plain(x).shape == (2, 50)


def test_recipe_fills_defaults_and_explicit_flags_win(monkeypatch):
    from hw1.trainer import start_run
    from hw1.tasks.cls import TASK as CLS
    from hw1.models import densenet

    def config(*argv):
        return start_run(train_cls.get_args_parser(), list(argv), CLS)

    recipe = config("--recipe", "cpu")
    for key, value in densenet.SPEC.recipes["cpu"].items():
        assert recipe.model_config.get(key, getattr(recipe, key, None)) == value, key
    assert config("--recipe", "cpu", "--epochs", "3").epochs == 3
    with pytest.raises(UserError, match="--recipe gpu: densenet has the recipes cpu"):
        config("--recipe", "gpu")


def test_recipe_is_recorded_in_args_json(cls_tiny_data, cls_tiny_train_argv, tmp_path):
    # the tiny model's flags override the preset's architecture; the rest of the preset applies
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, tmp_path / "r", "--recipe", "cpu", "--stem-pool",
                                       "--ema", "0.5", epochs=1))
    args = json.loads((tmp_path / "r" / "args.json").read_text())
    assert args["recipe"] == "cpu" and args["model_config"]["depth"] == 10 and args["epochs"] == 1
