"""hw1.models.fold: batch norms folded into the convolutions that feed them, for inference only."""
import pytest
import torch
from torch import nn

from hw1.checkpoint import load_checkpoint
from hw1.models import build_model
from hw1.models.fold import conv_bn_pairs, fold_batch_norms
from hw1.predict import InferenceModel

pytestmark = pytest.mark.usefixtures("cls_one_thread")


def _randomise_norms(model, seed=0):
    """Running statistics and affine parameters away from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


SEG_CONFIG = {"width": 0.125, "fc_channels": 16, "batch_norm": True, "fc_batch_norm": True}  # of vgg16_fcn8s


def _save_seg(model, path):
    """``model`` (a VGG16-FCN of :data:`SEG_CONFIG`) as an hw1 checkpoint at ``path``."""
    torch.save({"model": model.state_dict(), "model_name": "vgg16_fcn8s", "model_config": SEG_CONFIG, "task": "seg"},
               path)
    return path


def _norms(model):
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("stem_pool", [False, True])
def test_densenet_folds_each_bottleneck_norm_and_keeps_its_output(stem_pool):
    # pre-activation: norm1 reads a concatenation (no conv of its own), norm2 reads conv1's output
    model = _randomise_norms(build_model("densenet", depth=16, growth_rate=8, stem_pool=stem_pool))
    x = torch.randn(4, 3, 32, 32)
    folded, count = fold_batch_norms(model, x[:1])
    layers = 3 * 2
    assert count == layers + stem_pool
    assert _norms(folded) == _norms(model) - count
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(folded.features(x), model.features(x), atol=1e-5, rtol=1e-5)
    assert _norms(model) == 2 * layers + 2 + 1 + stem_pool  # the original is left as it was


@pytest.mark.parametrize("context, norms", [("none", 15), ("ppm", 20)])
def test_vgg16_fcn_folds_every_norm(context, norms):
    # 13 trunk convolutions, fc6, fc7; the pyramid's four branches and its fusion
    model = _randomise_norms(build_model("vgg16_fcn8s", **SEG_CONFIG, context=context))
    x = torch.randn(2, 3, 64, 96)
    folded, count = fold_batch_norms(model, x[:1, :, :64, :64])
    assert count == norms and _norms(folded) == 0
    with torch.no_grad():
        torch.testing.assert_close(folded(x)["out"], model(x)["out"], atol=1e-4, rtol=1e-4)
    assert set(folded.state_dict()) != set(model.state_dict())
    assert _norms(model) == norms


class ConvReluNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.norm(torch.relu_(self.conv(x)))  # in place between them: the tensor is the same object


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y  # the convolution's output is read twice


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.norm(self.conv(x)) + self.conv(x)  # one convolution run twice


@pytest.mark.parametrize("module", [ConvReluNorm, Residual, Shared])
def test_what_cannot_fold_is_left_as_it_is(module):
    model = _randomise_norms(module())
    x = torch.randn(2, 3, 8, 8)
    folded, count = fold_batch_norms(model, x)
    assert count == 0 and folded is model
    if module is ConvReluNorm:
        assert conv_bn_pairs(model, x) == []


def test_folding_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)), torch.randn(1, 3, 4, 4))


def test_inference_model_folds_and_predicts_as_before(tmp_path, fp32_inference):
    # fp32: folding changes a class only where two classes tie to rounding
    from hw1.predict import segment, segment_batch

    torch.manual_seed(0)
    model = _randomise_norms(build_model("vgg16_fcn8s", **SEG_CONFIG))
    with torch.no_grad():  # the scorers start at zero: random ones, so that the classes vary
        for scorer in (model.score, model.score_pool4, model.score_pool3):
            scorer.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    path = _save_seg(model, tmp_path / "seg.pth")
    ckpt = load_checkpoint(path, task="seg")
    plain = InferenceModel.from_checkpoint(ckpt, path, torch.device("cpu"), fold=False)
    folded = InferenceModel.from_checkpoint(ckpt, path, torch.device("cpu"))
    assert _norms(plain.module) == 15 and _norms(folded.module) == 0
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        prob = plain.module(plain.prepare(images))["out"].softmax(1)
    top2 = prob.topk(2, dim=1).values
    tie = (top2[:, 0] - top2[:, 1]) < 1e-4

    def differs_only_at_ties(a, b):
        return ((a != b) <= tie).all()

    a, b = segment_batch(plain, images), segment_batch(folded, images)
    assert len(a.unique()) > 1 and differs_only_at_ties(a, b)
    # a batch predicts what its images do one by one
    assert differs_only_at_ties(torch.stack([segment(folded, image) for image in images]), b)
    # the checkpoint's own weights keep their batch norms
    assert any("running_mean" in k for k in load_checkpoint(path, task="seg")["model"])


def test_bf16_inference_keeps_its_norms(tmp_path, monkeypatch):
    # under bf16 autocast folding is no faster and moves classes by bf16 rounding: only fp32 plans fold
    import hw1.runtime

    monkeypatch.setattr(hw1.runtime, "cpu_kind", lambda: "avx512_bf16")
    model = build_model("vgg16_fcn8s", **SEG_CONFIG)
    path = _save_seg(model, tmp_path / "seg.pth")
    plan = InferenceModel.from_checkpoint(load_checkpoint(path, task="seg"), path, torch.device("cpu"))
    assert plan.amp == torch.bfloat16 and _norms(plan.module) == 15
