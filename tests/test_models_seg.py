"""hw1.models.fcn: shapes, the bilinear upsampling, weight mapping from torchvision, bad files, grads.

Pretrained weights can't be downloaded here, so every "pretrained" file is a randomly initialised
torchvision model saved by the test; keyword weights are served from a TORCH_HOME the test fills.
"""
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import ResNet101_Weights, VGG16_Weights
from torchvision.models.segmentation import FCN_ResNet101_Weights

from hw1.errors import UserError
from hw1.models.fcn import VGG16FCN32s, vgg16_fcn8s, vgg16_fcn32s
from hw1.models.fcn_resnet101 import resnet101_fcn
from hw1.models.weights import hub_file

SIZES = [(512, 512), (45, 77), (20, 13)]


def _randomise_batchnorm(model):
    """Non-default BN statistics and affine params, so loading them is actually checked."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if t is m.weight else 0.0))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture(scope="module")
def vgg():
    return vgg16_fcn32s().eval()


@pytest.fixture(scope="module")
def resnet():
    return resnet101_fcn(aux_loss=True).eval()


@pytest.fixture(scope="module")
def tv_vgg16(tmp_path_factory):
    """(model, path): a random torchvision vgg16 in eval mode and its saved state dict."""
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def tv_fcn(tmp_path_factory):
    """(model, path): a random torchvision fcn_resnet101 in the COCO format (21 classes + aux)."""
    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet101(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    )
    _randomise_batchnorm(model)
    model.eval()
    path = tmp_path_factory.mktemp("fcn") / "fcn_resnet101_coco.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _cache(monkeypatch, tmp_path, weights_enum, source=None):
    """Point torch hub at tmp_path and put ``source`` where ``weights_enum``'s download would go."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = hub_file(weights_enum)
    assert str(target).startswith(str(tmp_path))
    if source is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source, target)
    return target


# --- shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_vgg_output_size_equals_input_size(vgg, size):
    with torch.inference_mode():
        out = vgg(torch.randn(1, 3, *size))
    assert list(out) == ["out"]
    assert out["out"].shape == (1, 7, *size)


@pytest.mark.parametrize("size", SIZES)
def test_resnet_output_size_equals_input_size(resnet, size):
    with torch.inference_mode():
        out = resnet(torch.randn(1, 3, *size))
    assert list(out) == ["out", "aux"]
    assert out["out"].shape == out["aux"].shape == (1, 7, *size)


# --- the fixed bilinear upsampling -------------------------------------------------------------


def test_upscore_is_frozen_bilinear(vgg):
    assert not vgg.upscore.weight.requires_grad
    # the raw transposed conv maps a constant map to the same constant away from the border
    values = torch.arange(1.0, 8.0).view(1, 7, 1, 1)
    up = vgg.upscore(values.expand(1, 7, 4, 5))
    assert up.shape == (1, 7, 32 * 3 + 64, 32 * 4 + 64)
    torch.testing.assert_close(up[..., 32:-32, 32:-32], values.expand(1, 7, 32 * 3, 32 * 4))


def test_upsample_matches_interpolate_everywhere(vgg):
    # With the replicate pad and crop, the stride-32 cells land where F.interpolate puts them,
    # borders included; that is the alignment the forward relies on.
    with torch.inference_mode():
        constant = vgg.upsample(torch.full((1, 7, 3, 4), 2.5), (96, 128))
        torch.testing.assert_close(constant, torch.full((1, 7, 96, 128), 2.5))
        score = torch.randn(2, 7, 3, 4)
        expected = F.interpolate(score, scale_factor=32, mode="bilinear", align_corners=False)
        torch.testing.assert_close(vgg.upsample(score, (96, 128)), expected)
        torch.testing.assert_close(vgg.upsample(score, (70, 101)), expected[..., :70, :101])


# --- weight mapping from torchvision ------------------------------------------------------------


def _check_vgg_mapping(model, reference):
    ours, theirs = model.state_dict(), reference.state_dict()
    for key, value in theirs.items():
        if key.startswith("features."):
            assert torch.equal(ours[key], value), key
    assert torch.equal(ours["score.weight"], torch.zeros_like(ours["score.weight"]))  # not loaded
    x = torch.randn(2, 512, 7, 7)
    with torch.inference_mode():
        # fc6 -> relu -> fc7 -> relu at the centre of a 7x7 map sees the whole map, like the MLP
        y = model.relu7(model.fc7(model.relu6(model.fc6(x))))[:, :, 3, 3]
        expected = reference.classifier[:5](torch.flatten(x, 1))
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


def test_vgg_loads_torchvision_state_dict(tv_vgg16):
    reference, path = tv_vgg16
    _check_vgg_mapping(vgg16_fcn32s(weights=str(path)).eval(), reference)


def test_vgg_imagenet_keyword_reads_the_hub_cache(tv_vgg16, tmp_path, monkeypatch):
    reference, path = tv_vgg16
    _cache(monkeypatch, tmp_path, VGG16_Weights.IMAGENET1K_V1, source=path)
    _check_vgg_mapping(vgg16_fcn32s(weights="imagenet").eval(), reference)


def test_resnet_loads_coco_state_dict(tv_fcn):
    reference, path = tv_fcn
    model = resnet101_fcn(weights=str(path), aux_loss=True).eval()
    inner = {}
    model.fcn.register_forward_hook(lambda module, args, output: inner.update(output))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        out, expected = model(x), reference(x)
        for key in ("out", "aux"):
            torch.testing.assert_close(inner[key], expected[key])  # the 21 VOC logits
        torch.testing.assert_close(out["out"], model.head(expected["out"]))
        torch.testing.assert_close(out["aux"], model.aux_head(expected["aux"]))


def test_resnet_coco_keyword_without_aux_skips_aux_classifier(tv_fcn, tmp_path, monkeypatch):
    reference, path = tv_fcn
    _cache(monkeypatch, tmp_path, FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1, source=path)
    model = resnet101_fcn(num_classes=5, weights="coco").eval()
    loaded = model.fcn.state_dict()
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("aux_classifier.")}
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    assert not any(k.startswith("aux_head.") for k in model.state_dict())
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 45, 77))
    assert list(out) == ["out"] and out["out"].shape == (1, 5, 45, 77)


def test_resnet_imagenet_backbone(tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = torchvision.models.resnet101(weights=None)
    _randomise_batchnorm(reference)
    path = tmp_path / "resnet101.pth"
    torch.save(reference.state_dict(), path)
    _cache(monkeypatch, tmp_path, ResNet101_Weights.IMAGENET1K_V1, source=path)
    model = resnet101_fcn(weights="imagenet-backbone")
    backbone = model.fcn.backbone.state_dict()
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert backbone.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(backbone[key], value), key


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_own_checkpoint_round_trip(name, request, tmp_path):
    model = request.getfixturevalue(name)
    state_dict = dict(model.state_dict())
    head = "score.weight" if name == "vgg" else "head.weight"
    state_dict[head] = torch.randn_like(state_dict[head])  # the heads start at zero
    path = tmp_path / "best.pth"
    torch.save({"model": state_dict, "epoch": 3}, path)  # an hw1 checkpoint
    build = vgg16_fcn32s if name == "vgg" else functools.partial(resnet101_fcn, aux_loss=True)
    loaded = build(weights=str(path)).state_dict()
    assert loaded.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert torch.equal(loaded[key], value), key


# --- bad weights --------------------------------------------------------------------------------


def _assert_user_error(build, weights, name):
    with pytest.raises(UserError) as info:
        build(weights=weights)
    message = str(info.value)
    assert name in message and "\n" not in message, message


def test_wrong_files_raise_user_error(tv_fcn, tmp_path):
    _, fcn_path = tv_fcn
    _assert_user_error(vgg16_fcn32s, str(fcn_path), str(fcn_path))  # another model's file
    tiny = tmp_path / "tiny.pth"
    torch.save({"features.0.weight": torch.zeros(32, 3, 3, 3)}, tiny)  # missing keys + wrong shape
    _assert_user_error(vgg16_fcn32s, str(tiny), str(tiny))
    _assert_user_error(resnet101_fcn, str(tiny), str(tiny))
    missing = tmp_path / "nope.pth"
    _assert_user_error(vgg16_fcn32s, str(missing), str(missing))
    _assert_user_error(resnet101_fcn, str(missing), str(missing))
    _assert_user_error(vgg16_fcn32s, "imagenet1k", "imagenet1k")


@pytest.mark.parametrize(
    "build, weights_enum, keyword",
    [
        (vgg16_fcn32s, VGG16_Weights.IMAGENET1K_V1, "imagenet"),
        (resnet101_fcn, FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1, "coco"),
        (resnet101_fcn, ResNet101_Weights.IMAGENET1K_V1, "imagenet-backbone"),
    ],
)
def test_offline_keyword_names_the_hub_file(build, weights_enum, keyword, tmp_path, monkeypatch):
    target = _cache(monkeypatch, tmp_path, weights_enum)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    _assert_user_error(build, keyword, str(target))


# --- gradients ----------------------------------------------------------------------------------


def _assert_grads_reach_all(model, out):
    sum(v.sum() for v in out.values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_vgg_backward_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    model = vgg16_fcn32s().train()
    with torch.no_grad():
        nn.init.normal_(model.score.weight, std=0.01)  # zero-init would zero every upstream grad
    _assert_grads_reach_all(model, model(torch.randn(1, 3, 64, 64)))
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["upscore.weight"]


def test_resnet_backward_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    model = resnet101_fcn(aux_loss=True).train()
    with torch.no_grad():
        nn.init.normal_(model.head.weight, std=0.01)
        nn.init.normal_(model.aux_head.weight, std=0.01)
    _assert_grads_reach_all(model, model(torch.randn(1, 3, 64, 64)))


# --- the CPU-budget variants: width, fc batch norm, FCN-16s/8s skips ------------------------------

def _small(**kw):
    torch.manual_seed(0)
    return VGG16FCN32s(batch_norm=True, fc_batch_norm=True, width=0.25, fc_channels=32, **kw)


@pytest.mark.parametrize("skips", ["none", "16s", "8s"])
@pytest.mark.parametrize("size", [(64, 64), (45, 77)])
def test_small_vgg_output_size_equals_input_size(skips, size):
    model = _small(skips=skips).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))["out"]
    assert out.shape == (2, 7, *size)


def test_width_scales_every_trunk_convolution():
    convs = [m for m in _small().features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    model = _small()
    assert model.fc6.in_channels == 128 and isinstance(model.bn6, nn.BatchNorm2d)
    assert isinstance(vgg16_fcn32s().bn6, nn.Identity)  # the ImageNet layout has no fc batch norm


def test_skip_heads_start_at_zero_so_8s_starts_from_its_stride_32_scores():
    """Zero-initialised skip scorers (as in the paper): a fresh 8s model's output is its stride-32
    scores carried up by the x2, x2 and final bilinear steps, the pool3/pool4 heads adding nothing."""
    model = _small(skips="8s").eval()
    assert model.score_pool4.weight.abs().sum() == 0 and model.score_pool3.weight.abs().sum() == 0
    with torch.no_grad():
        model.score.weight.normal_(generator=torch.Generator().manual_seed(1))  # non-zero scores to follow
        seen = {}
        model.score.register_forward_hook(lambda m, i, o: seen.setdefault("score", o))
        x = torch.randn(1, 3, 96, 64)
        out = model(x)["out"]
    up = lambda t, hw: F.interpolate(t, size=hw, mode="bilinear", align_corners=False)
    expected = up(up(up(seen["score"], (6, 4)), (12, 8)), (96, 64))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("skips", ["16s", "8s"])
def test_skip_heads_get_gradients(skips):
    model = _small(skips=skips).train()
    F.cross_entropy(model(torch.randn(2, 3, 64, 64))["out"], torch.randint(7, (2, 64, 64))).backward()
    # the scorers start at zero, so the trunk below them gets a gradient from the second step on;
    # the skip scorers themselves get one at once
    for head in ("score", "score_pool4") + (("score_pool3",) if skips == "8s" else ()):
        assert getattr(model, head).weight.grad.abs().sum() > 0, head


def test_unknown_skips_is_an_error():
    with pytest.raises(ValueError, match="skips"):
        VGG16FCN32s(skips="4s")
    with pytest.raises(ValueError, match="context"):
        VGG16FCN32s(context="aspp")


@pytest.mark.parametrize("context", ["none", "ppm"])
def test_pyramid_pooling_gives_every_pixel_the_whole_tile(context):
    """With the pyramid's global cell, a pixel's score depends on the far corner of a 512x512
    tile; without it the stride-32 cell's receptive field (under 512 pixels) does not reach it."""
    model = _small(skips="8s", context=context).eval()
    with torch.no_grad():
        for m in model.modules():  # non-zero scorers, so that the trunk's output shows
            if isinstance(m, nn.Conv2d) and m.weight.abs().sum() == 0:
                m.weight.normal_(generator=torch.Generator().manual_seed(2))
        x = torch.randn(1, 3, 512, 512)
        y = x.clone()
        y[..., 448:, 448:] += 5.0
        a, b = model(x)["out"][..., :16, :16], model(y)["out"][..., :16, :16]
    assert (not torch.equal(a, b)) == (context == "ppm")


def test_pyramid_pooling_gets_gradients_and_changes_the_state_dict_only_by_its_own_keys():
    plain, ppm = _small(skips="8s"), _small(skips="8s", context="ppm").train()
    extra = set(ppm.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("context.") for k in extra) and set(plain.state_dict()) <= set(ppm.state_dict())
    with torch.no_grad():
        ppm.score.weight.normal_()
    F.cross_entropy(ppm(torch.randn(2, 3, 64, 64))["out"], torch.randint(7, (2, 64, 64))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ppm.context.parameters())


def test_small_vgg_checkpoint_round_trip(tmp_path):
    model = _small(skips="8s").eval()
    _randomise_batchnorm(model)
    torch.save({"m": model.state_dict()}, tmp_path / "w.pth")
    again = _small(skips="8s").eval()
    again.load_state_dict(torch.load(tmp_path / "w.pth", weights_only=True)["m"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x)["out"], model(x)["out"])


def test_vgg_bn_imagenet_file_loads_into_the_fc_batch_norm_layout(tmp_path):
    """A torchvision vgg16_bn file has no fc batch norm and no skip scorers: those stay fresh."""
    torch.manual_seed(0)
    tv = torchvision.models.vgg16_bn(weights=None)
    torch.save(tv.state_dict(), tmp_path / "vgg16_bn.pth")
    model = vgg16_fcn8s(weights=str(tmp_path / "vgg16_bn.pth"), batch_norm=True, fc_batch_norm=True, context="ppm")
    torch.testing.assert_close(model.features[0].weight, tv.features[0].weight)
    torch.testing.assert_close(model.fc7.weight, tv.classifier[3].weight.reshape(4096, 4096, 1, 1))


@pytest.mark.parametrize("skips, context", [("none", "none"), ("16s", "none"), ("8s", "none"), ("8s", "ppm")])
def test_architecture_stages_hold_every_parameter_of_each_variant(skips, context):
    from hw1.models import get_spec
    from hw1.models.introspect import model_summary

    model = _small(skips=skips, context=context)
    rows, total = model_summary(model, 64, get_spec("vgg16_fcn32s"))  # asserts every parameter is counted
    names = [r[0] for r in rows]
    assert names[-1] == "output" and rows[-1][2] == (7, 64, 64)
    assert ("upscore" in names) == (skips == "none") and any(n.startswith("skips") for n in names) == (skips != "none")
    assert ("ppm" in names) == (context == "ppm")


def test_the_vgg16_fcn_builds_without_importing_torchvision():
    # torchvision.models costs about a second of hw1_2.sh's start-up; only its own models need it
    code = ("import sys; from hw1.models import build_model; build_model('vgg16_fcn32s', width=0.125, fc_channels=16);"
            "print(sorted(m for m in sys.modules if m.startswith('torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout
