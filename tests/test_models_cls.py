"""hw1.models (P1): DenseNet-BC shapes, gradients, state dicts; ConvNeXt head, resizing and weights.

Pretrained weights can't be downloaded here: the "pretrained" ConvNeXt file is a randomly
initialised torchvision model saved by the test, and the offline path is forced by monkeypatching.
"""
import re

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import ConvNeXt_Tiny_Weights

from helpers import save_code_running_checkpoint
from hw1.errors import UserError
from hw1.models import build_model, get_spec, model_names
from hw1.models.convnext import HEAD, ConvNeXtClassifier, convnext
from hw1.models.densenet import DenseNet, densenet
from hw1.models.weights import hub_file, load_matching, resolve_state_dict

pytestmark = pytest.mark.usefixtures("cls_one_thread")

TINY = dict(depth=10, growth_rate=4)


def _tiny_densenet(**kwargs):
    torch.manual_seed(0)
    return densenet(**TINY, **kwargs)


def _assert_grads_reach_all(model):
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --- DenseNet -----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, growth_rate, compression", [(10, 4, 0.5), (16, 6, 1.0), (22, 4, 0.5)])
def test_densenet_shapes(depth, growth_rate, compression):
    model = densenet(depth=depth, growth_rate=growth_rate, compression=compression).eval()
    # Channels as the paper counts them: 2k stem, each layer adds k, transitions keep theta.
    layers, channels = (depth - 4) // 6, 2 * growth_rate
    for block in range(3):
        channels += layers * growth_rate
        if block < 2:
            channels = int(channels * compression)
    assert model.num_features == channels
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        out, feats = model(x), model.features(x)
    assert out.shape == (5, 50)
    assert feats.shape == (5, model.num_features)
    assert (feats >= 0).all()  # pooled after the final ReLU
    torch.testing.assert_close(out, model.classifier(feats))


def test_densenet_layers_per_block():
    model = densenet(depth=16, growth_rate=4)
    for b in (1, 2, 3):
        assert len(getattr(model.trunk, f"denseblock{b}")) == 2  # (16 - 4) / 6
    assert not hasattr(model.trunk, "transition3")


def test_densenet_num_classes():
    with torch.inference_mode():
        assert _tiny_densenet(num_classes=7).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("depth", [4, 8, 11, 15, 101])
def test_densenet_bad_depth(depth):
    with pytest.raises(ValueError, match="6n\\+4"):
        densenet(depth=depth)


@pytest.mark.parametrize("compression", [0.0, -0.5, 1.5])
def test_densenet_bad_compression(compression):
    with pytest.raises(ValueError, match="compression"):
        densenet(**TINY, compression=compression)


def test_densenet_backward_reaches_every_parameter():
    model = _tiny_densenet().train()
    out = model(torch.randn(4, 3, 32, 32))
    loss = nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    _assert_grads_reach_all(model)


def test_densenet_state_dict_round_trip(tmp_path):
    model = _tiny_densenet(drop_rate=0.2).train()
    with torch.no_grad():  # move the BN running statistics away from their initial values
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32) * 2 + 1)
    path = tmp_path / "densenet.pth"
    torch.save(model.state_dict(), path)
    torch.manual_seed(123)
    fresh = densenet(**TINY, drop_rate=0.2)
    fresh.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()
    fresh.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), fresh(x))
        assert torch.equal(model.features(x), fresh.features(x))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_densenet_weights_from_file(tmp_path):
    model = _tiny_densenet()
    path = tmp_path / "best.pth"
    torch.save({"model": model.state_dict(), "epoch": 1}, path)  # an hw1 checkpoint also works
    torch.manual_seed(1)
    loaded = densenet(**TINY, weights=str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(UserError, match="does not match"):
        densenet(depth=16, growth_rate=4, weights=str(path))


def test_densenet_eval_is_deterministic_and_batch_independent():
    model = _tiny_densenet().eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.inference_mode():
        full = model(x)
        torch.testing.assert_close(model(x[:2]), full[:2])


# --- registry -----------------------------------------------------------------------------------


def test_build_model_registry():
    assert set(model_names("cls")) == {"densenet", "convnext"}
    assert get_spec("densenet").task == get_spec("convnext").task == "cls"
    model = build_model("densenet", **TINY, num_classes=9)
    assert isinstance(model, DenseNet) and model.classifier.out_features == 9
    assert len(model.trunk.denseblock1) == 1
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet18")


# --- ConvNeXt -----------------------------------------------------------------------------------
# Building convnext_tiny (28M parameters) takes seconds on a loaded CPU, so tests share builds.


@pytest.fixture(scope="module")
def small_convnext(cls_one_thread):
    torch.manual_seed(0)
    model = build_model("convnext", weights="none", num_classes=7, img_size=32)
    assert isinstance(model, ConvNeXtClassifier) and model.img_size == 32
    return model


@pytest.fixture(scope="module")
def tv_convnext_file(tmp_path_factory, cls_one_thread):
    """(state dict, path) of a random torchvision convnext_tiny with its 1000-class head."""
    torch.manual_seed(0)
    reference = torchvision.models.convnext_tiny(weights=None)
    path = tmp_path_factory.mktemp("convnext") / "convnext_tiny.pth"
    torch.save(reference.state_dict(), path)
    return reference.state_dict(), path


def test_convnext_head_replaced(small_convnext):
    head = small_convnext.net.classifier[2]
    assert isinstance(head, nn.Linear) and head.out_features == 7 and head.in_features == 768
    assert torch.count_nonzero(head.bias) == 0
    assert [k for k in small_convnext.state_dict() if k.startswith("net." + HEAD)] == \
        ["net.classifier.2.weight", "net.classifier.2.bias"]


def test_convnext_upsamples_input_to_img_size(small_convnext):
    small_convnext.eval()
    seen = []
    handle = small_convnext.net.features.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        with torch.inference_mode():
            out = small_convnext(torch.randn(2, 3, 16, 16))
            feats = small_convnext.features(torch.randn(1, 3, 20, 24))
            same = small_convnext(torch.randn(1, 3, 32, 32))
    finally:
        handle.remove()
    assert out.shape == (2, 7) and same.shape == (1, 7)
    assert feats.shape == (1, 768)
    assert [tuple(s) for s in seen] == [(2, 3, 32, 32), (1, 3, 32, 32), (1, 3, 32, 32)]


def test_convnext_backward_reaches_every_parameter(small_convnext):
    model = small_convnext.train()
    try:
        out = model(torch.randn(2, 3, 32, 32))
        nn.functional.cross_entropy(out, torch.tensor([1, 3])).backward()
        _assert_grads_reach_all(model)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_convnext_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        convnext(variant="convnext_huge", weights="none")


def test_convnext_loads_torchvision_state_dict(tv_convnext_file):
    expected, path = tv_convnext_file
    model = convnext(weights=str(path), num_classes=50, img_size=32)
    loaded = model.net.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        if key.startswith(HEAD):
            assert loaded[key].shape[0] == 50, key  # our head, not the 1000-class one
        else:
            assert torch.equal(loaded[key], value), key


def test_convnext_mismatching_file(tv_convnext_file, tmp_path):
    expected, _ = tv_convnext_file
    cut = dict(expected)
    del cut["features.0.0.weight"]
    path = tmp_path / "cut.pth"
    torch.save(cut, path)
    with pytest.raises(UserError, match="missing") as info:
        convnext(weights=str(path), img_size=32)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_weights_argument_errors(tmp_path):
    """The errors every ``--weights`` value can hit, checked without building a ConvNeXt each time."""
    keywords = {"imagenet": ConvNeXt_Tiny_Weights.IMAGENET1K_V1}
    assert resolve_state_dict("none", keywords) is None
    assert resolve_state_dict(None, keywords) is None
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError, match="not found") as info:
        resolve_state_dict(str(missing), keywords)
    assert str(missing) in str(info.value)
    with pytest.raises(UserError, match="imagenet1k"):
        resolve_state_dict("imagenet1k", keywords)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a state dict" * 10)
    with pytest.raises(UserError) as info:
        resolve_state_dict(str(garbage), keywords)
    assert str(garbage) in str(info.value) and "\n" not in str(info.value)
    not_tensors = tmp_path / "numbers.pth"
    torch.save({"a": 1, "b": [2]}, not_tensors)
    with pytest.raises(UserError, match="not a state dict") as info:
        resolve_state_dict(str(not_tensors), keywords)
    assert str(not_tensors) in str(info.value)
    dense = tmp_path / "densenet.pth"
    torch.save(_tiny_densenet().state_dict(), dense)
    with pytest.raises(UserError, match="does not match") as info:
        load_matching(torchvision.models.mobilenet_v3_small(), resolve_state_dict(str(dense), keywords),
                      skip_prefixes=("classifier.",), source=str(dense))
    assert str(dense) in str(info.value)


def test_convnext_imagenet_keyword_offline_names_the_hub_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = hub_file(ConvNeXt_Tiny_Weights.IMAGENET1K_V1)
    assert str(target).startswith(str(tmp_path))
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as info:
        convnext(weights="imagenet", img_size=32)
    message = str(info.value)
    assert calls, "the download was never attempted"
    assert str(target) in message and "\n" not in message, message
    assert ConvNeXt_Tiny_Weights.IMAGENET1K_V1.url in message


# --- a code-running file in the hub cache ---------------------------------------------------------


@pytest.mark.reliability
def test_code_running_file_in_the_hub_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = hub_file(ConvNeXt_Tiny_Weights.IMAGENET1K_V1)
    cached.parent.mkdir(parents=True)
    marker = tmp_path / "ran"
    save_code_running_checkpoint(cached, marker)
    with pytest.raises(UserError, match=rf"{re.escape(str(cached))}: refused to load: it holds Python objects"):
        build_model("convnext", weights="imagenet")
    assert not marker.exists()
