"""Segmentation models for P2: the hand-written VGG16-FCN32s and VGG16-FCN8s (torchvision's
FCN-ResNet101 is in :mod:`hw1.models.fcn_resnet101`).

Both return ``{"out": logits}`` with logits of shape (N, num_classes, H, W) for an (N, 3, H, W)
input of any size, as torchvision's segmentation models do.
"""
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hw1 import recipes
from hw1.data.masks import NUM_CLASSES
from hw1.models.spec import ModelSpec
from hw1.models.weights import hub_file, load_matching, resolve_state_dict
from hw1.runtime import autocast

# torchvision's vgg16 "D" configuration; the resulting nn.Sequential has torchvision's indices,
# so ``features.<i>.weight`` keys of a torchvision state dict load unchanged.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_STRIDE = 32  # total stride of the five pools


def _scaled(channels, width):
    """``channels`` x ``width``, rounded, at least 8."""
    return max(8, round(channels * width))


def _vgg16_features(batch_norm=False, width=1.0):
    """torchvision's ``vgg16`` (or, with ``batch_norm``, ``vgg16_bn``) feature layers, same indices;
    ``width`` scales every convolution's channels (1.0 is torchvision's, which the ImageNet weights need)."""
    layers, in_channels = [], 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            v = _scaled(v, width)
            layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            in_channels = v
    return nn.Sequential(*layers)


def _bilinear_kernel(channels, size):
    """(channels, channels, size, size) ConvTranspose2d weight: per-channel bilinear upsampling."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    weight = torch.zeros(channels, channels, size, size, dtype=torch.float64)
    weight[range(channels), range(channels)] = torch.outer(filt1d, filt1d)
    return weight.float()


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module (Zhao et al., CVPR 2017): the map average-pooled to 1x1,
    2x2, 3x3 and 6x6 cells, each reduced by a 1x1 conv-BN-ReLU to a quarter of the channels and
    upsampled back, concatenated with the map and fused by a 3x3 conv-BN-ReLU to ``channels``.

    The 1x1 branch gives every pixel the whole image's average: a tile's land-cover mix is
    evidence for each of its pixels (rangeland, told apart from forest and farmland by its
    surroundings). On the stride-32 map it costs little (8x8 cells at 256x256).
    """

    BINS = (1, 2, 3, 6)

    def __init__(self, channels):
        super().__init__()
        reduced = max(1, channels // len(self.BINS))
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(channels, reduced, 1, bias=False),
                          nn.BatchNorm2d(reduced), nn.ReLU(inplace=True))
            for b in self.BINS)
        self.fuse = nn.Sequential(nn.Conv2d(channels + reduced * len(self.BINS), channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def forward(self, x):
        size = x.shape[-2:]
        pooled = [F.interpolate(b(x), size=size, mode="bilinear", align_corners=False) for b in self.branches]
        return self.fuse(torch.cat([x, *pooled], 1))


class VGG16FCN32s(nn.Module):
    """FCN-32s (Long et al., 2015) on a VGG16 trunk, optionally with the FCN-16s/8s skip heads.

    Instead of the Caffe model's ``padding=100`` on conv1_1 (which nearly doubles the work at
    512x512) the input is zero-padded (the mean colour, once normalised) on the bottom/right to a
    multiple of 32, fc6 gets padding 3 so the stride-32 map keeps its size, and the score map is
    edge-replicated by one cell before the fixed bilinear ``upscore``. Cropping at ``_CROP`` then
    puts each stride-32 cell's centre exactly where ``F.interpolate(..., align_corners=False)``
    would, borders included, so every output pixel is a proper interpolation (no fade-out towards
    the image edge).

    ``skips`` adds the paper's finer heads: ``16s`` a 1x1 scorer on pool4 whose scores are added to
    the stride-32 scores upsampled x2, ``8s`` also one on pool3 (x2 again); the stride-16/8 sum is
    then upsampled to the input with ``F.interpolate`` (bilinear, align_corners=False), which puts
    cell centres where ``upscore`` would. The skip scorers start at zero (as in the paper), so a
    fresh 16s/8s model computes what its 32s trunk does.

    ``context="ppm"`` puts a :class:`PyramidPooling` module between fc7 and the scorer.
    """

    # Score cell i of the replicate-padded map lands at 32 * i + 31.5 in the upscore output; the
    # unpadded cell i - 1 belongs at 32 * (i - 1) + 15.5 in the image, hence 32 + 16.
    _CROP = _STRIDE + _STRIDE // 2
    SKIPS = ("none", "16s", "8s")
    CONTEXTS = ("none", "ppm")

    def __init__(self, num_classes=7, dropout=0.5, fc_channels=4096, batch_norm=False, width=1.0,
                 fc_batch_norm=False, skips="none", context="none"):
        super().__init__()
        if skips not in self.SKIPS:
            raise ValueError(f"skips must be one of {self.SKIPS}, got {skips!r}")
        if context not in self.CONTEXTS:
            raise ValueError(f"context must be one of {self.CONTEXTS}, got {context!r}")
        # batch_norm (VGG16-BN) is for training from scratch, where plain VGG16 learns very slowly;
        # width < 1 (and a narrow fc) for from-scratch runs on a CPU budget
        self.features = _vgg16_features(batch_norm, width)
        trunk = _scaled(512, width)
        # fc6/fc7 are torchvision's classifier[0] / classifier[3] as convolutions
        # (fc_channels < 4096 only for small from-scratch runs: the ImageNet weights need 4096);
        # fc_batch_norm puts a BatchNorm after each, as after every trunk conv of VGG16-BN
        self.fc6 = nn.Conv2d(trunk, fc_channels, kernel_size=7, padding=3)
        self.bn6 = nn.BatchNorm2d(fc_channels) if fc_batch_norm else nn.Identity()
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, kernel_size=1)
        self.bn7 = nn.BatchNorm2d(fc_channels) if fc_batch_norm else nn.Identity()
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(dropout)
        self.context = PyramidPooling(fc_channels) if context == "ppm" else None
        self.score = nn.Conv2d(fc_channels, num_classes, kernel_size=1)
        self.upscore = nn.ConvTranspose2d(
            num_classes, num_classes, kernel_size=2 * _STRIDE, stride=_STRIDE, bias=False
        )
        self.skips = skips
        # features[:pool3], features[pool3:pool4], features[pool4:]: the taps of the skip heads
        pools = [i + 1 for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self._taps = (pools[2], pools[3])
        self.score_pool4 = nn.Conv2d(trunk, num_classes, 1) if skips != "none" else None
        self.score_pool3 = nn.Conv2d(_scaled(256, width), num_classes, 1) if skips == "8s" else None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # As in the paper: zero-initialised class scorers (random init gave neither better
        # accuracy nor faster convergence there) and a final upsampling fixed to bilinear
        # interpolation. Frozen, the upscore weight never gets a grad, so optimisers skip it.
        for m in (self.score, self.score_pool4, self.score_pool3):
            if m is not None:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.upscore.weight.copy_(_bilinear_kernel(num_classes, 2 * _STRIDE))
        self.upscore.weight.requires_grad_(False)

    def forward(self, x):
        """x: (N, 3, H, W) -> {"out": (N, num_classes, H, W)}."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % _STRIDE, 0, -h % _STRIDE))
        padded = x.shape[-2:]
        p3, p4 = self._taps
        pool3 = self.features[:p3](x)
        pool4 = self.features[p3:p4](pool3)
        x = self.features[p4:](pool4)
        x = self.drop6(self.relu6(self.bn6(self.fc6(x))))
        x = self.drop7(self.relu7(self.bn7(self.fc7(x))))
        if self.context is not None:
            x = self.context(x)
        # The scorers and the upsampling always run in fp32. Under bf16 autocast on CPUs with AMX,
        # oneDNN 3.12 (torch 2.14) corrupts the heap in the backward-weights pass of a convolution
        # with a bias, < 16 output and > 2048 input channels: this scorer (fc_channels -> num_classes).
        # fp32 costs little here (1x1 convolutions with a handful of outputs) and bf16's
        # ConvTranspose2d(7, 7, 64, stride 32) was the slower of the two on those CPUs anyway.
        # (runtime.autocast is a no-op on the meta tensors that trace the architecture figure's shapes)
        with autocast(x.device, None):
            score = self.score(x.float())
            if self.skips == "none":
                return {"out": self.upsample(score, (h, w))}
            score = self._up(score, pool4) + self.score_pool4(pool4.float())
            if self.skips == "8s":
                score = self._up(score, pool3) + self.score_pool3(pool3.float())
            out = F.interpolate(score, size=padded, mode="bilinear", align_corners=False)
            return {"out": out[..., :h, :w]}

    @staticmethod
    def _up(score, like):
        # a coarse map's cells onto a finer one's, centres aligned (each pool halves exactly: the
        # input is a multiple of 32)
        return F.interpolate(score, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def upsample(self, score, size):
        """(N, C, h, w) stride-32 scores -> (N, C, *size), size <= 32 * (h, w), top-left aligned."""
        x = self.upscore(F.pad(score, (1, 1, 1, 1), mode="replicate"))
        return x[..., self._CROP : self._CROP + size[0], self._CROP : self._CROP + size[1]]


def _vgg16_to_fcn(state_dict):
    """Rename a torchvision vgg16 state dict to VGG16FCN32s keys; drops the 1000-class head."""
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("classifier.6."):
            continue
        if key.startswith("classifier.0."):
            key = "fc6." + key.removeprefix("classifier.0.")
            if value.shape == (4096, 512 * 7 * 7):
                value = value.reshape(4096, 512, 7, 7)
        elif key.startswith("classifier.3."):
            key = "fc7." + key.removeprefix("classifier.3.")
            if value.shape == (4096, 4096):
                value = value.reshape(4096, 4096, 1, 1)
        renamed[key] = value  # anything else (wrong shapes included) is left for load_matching to report
    return renamed


def _vgg16_fcn(*, skips, context, fc_channels, batch_norm, width, fc_batch_norm, dropout, num_classes, weights):
    """A :class:`VGG16FCN32s` of these arguments; ``weights``: ``imagenet``, ``none`` or a PATH.

    A PATH holds a torchvision vgg16 (vgg16_bn with ``batch_norm``) state dict (``features.*``,
    ``classifier.*``; the scorers stay freshly initialised) or a VGG16FCN32s one, e.g. an hw1
    checkpoint (loaded whole).
    """
    # weights by name (hw1.models.weights.weights_enum): no torchvision import for a model built without them
    keywords = {"imagenet": "VGG16_BN_Weights.IMAGENET1K_V1" if batch_norm else "VGG16_Weights.IMAGENET1K_V1"}
    state_dict = resolve_state_dict(weights, keywords)
    model = VGG16FCN32s(num_classes=num_classes, dropout=dropout, fc_channels=fc_channels, batch_norm=batch_norm,
                        width=width, fc_batch_norm=fc_batch_norm, skips=skips, context=context)
    if state_dict is not None:
        source = hub_file(keywords[weights]) if weights in keywords else weights
        if "fc6.weight" in state_dict:
            load_matching(model, state_dict, source=source)
        else:
            load_matching(model, _vgg16_to_fcn(state_dict), source=source,
                          skip_prefixes=("score.", "upscore.", "score_pool", "bn6.", "bn7.", "context."))
    return model


def vgg16_fcn32s(*, fc_channels: int = 4096, batch_norm: bool = False, width: float = 1.0,
                 fc_batch_norm: bool = False, dropout: float = 0.5, num_classes=7, weights="none"):
    """The homework's model A: VGG16-FCN32s, one scorer on fc7 upsampled x32 (see :func:`_vgg16_fcn`)."""
    return _vgg16_fcn(skips="none", context="none", fc_channels=fc_channels, batch_norm=batch_norm, width=width,
                      fc_batch_norm=fc_batch_norm, dropout=dropout, num_classes=num_classes, weights=weights)


def vgg16_fcn8s(*, fc_channels: int = 4096, batch_norm: bool = False, width: float = 1.0,
                fc_batch_norm: bool = False, context: Literal[VGG16FCN32s.CONTEXTS] = "none", dropout: float = 0.5,
                num_classes=7, weights="none"):
    """VGG16-FCN8s: the FCN-32s plus the paper's scorers on pool4 and pool3, optionally PSPNet's
    pyramid pooling between fc7 and the scorer (``context="ppm"``); see :func:`_vgg16_fcn`."""
    return _vgg16_fcn(skips="8s", context=context, fc_channels=fc_channels, batch_norm=batch_norm, width=width,
                      fc_batch_norm=fc_batch_norm, dropout=dropout, num_classes=num_classes, weights=weights)


def renamed_vgg16_fcn(name, model_config):
    """``(name, model_config)`` of a checkpoint saved before FCN-8s had its own name: ``vgg16_fcn32s``
    with a ``skips`` argument (``none`` or ``8s``) becomes ``vgg16_fcn32s`` or ``vgg16_fcn8s`` without it.
    Anything else is returned as it is; an FCN-16s (no registered model builds it) is a ValueError."""
    if name != "vgg16_fcn32s" or "skips" not in model_config:
        return name, model_config
    config = {k: v for k, v in model_config.items() if k != "skips"}
    skips = model_config["skips"]
    if skips == "none":
        return "vgg16_fcn32s", config
    if skips == "8s":
        return "vgg16_fcn8s", config
    raise ValueError(f"an FCN-{skips} (vgg16_fcn32s with skips={skips!r}), which no registered model builds: "
                     "train vgg16_fcn8s or vgg16_fcn32s instead")


# --- specs ---------------------------------------------------------------------------------------

def vgg16_fcn32s_stages(model):
    """The five conv blocks (each ending in its pool), fc6, fc7, the scorer, the upsampling."""
    rows, block, convs = [], [], 0
    for m in model.features:
        block.append(m)
        convs += isinstance(m, nn.Conv2d)
        if isinstance(m, nn.MaxPool2d):
            bn = "-BN" if any(isinstance(b, nn.BatchNorm2d) for b in block) else ""
            rows.append((f"conv{len(rows) + 1}", f"{convs} x conv3x3{bn}-ReLU, maxpool 2x2", block))
            block, convs = [], 0
    bn = "-BN" if isinstance(model.bn6, nn.BatchNorm2d) else ""
    rows += [
        ("fc6", f"conv 7x7{bn}, ReLU, dropout", [model.fc6, model.bn6]),
        ("fc7", f"conv 1x1{bn}, ReLU, dropout", [model.fc7, model.bn7]),
    ]
    if model.context is not None:
        rows.append(("ppm", "pyramid pooling 1/2/3/6, conv 1x1-BN-ReLU each, concat, conv 3x3-BN-ReLU",
                     [model.context]))
    rows += [
        ("score", "conv 1x1 to classes", [model.score]),
    ]
    if model.skips == "none":
        return rows + [("upscore", "bilinear transposed conv x32 (fixed), crop", [model.upscore])]
    heads = [model.score_pool4] + ([model.score_pool3] if model.score_pool3 is not None else [])
    pools = "pool4" if len(heads) == 1 else "pool4, pool3"
    return rows + [
        (f"skips ({model.skips})", f"conv 1x1 on {pools}, each + the x2 bilinear scores", heads),
        # the fixed x32 upscore is kept (same state_dict for every variant) but not run
        ("upsample", f"bilinear x{16 if len(heads) == 1 else 8} (interpolate), crop; upscore unused", [model.upscore]),
    ]


_VGG16_RANGES = {"fc_channels": (lambda v: 1 <= v <= 65536, "in [1, 65536]"),
                 "width": (lambda v: 0 < v <= 4, "in (0, 4]"),
                 "dropout": (lambda v: 0 <= v < 1, "in [0, 1)")}
_VGG16_HELP = {"fc_channels": "width of fc6/fc7; the ImageNet weights need 4096",
               "batch_norm": "VGG16-BN trunk (trains far better from scratch; imagenet = vgg16_bn weights)",
               "width": "channel multiplier of the 13 trunk convolutions; the ImageNet weights need 1",
               "fc_batch_norm": "batch norm after fc6 and fc7",
               "context": "ppm: PSPNet's pyramid pooling between fc7 and the scorer",
               "dropout": "dropout after fc6 and fc7"}
VGG16_FCN32S = ModelSpec(
    name="vgg16_fcn32s", task="seg", slot="A", builder=vgg16_fcn32s, num_classes=NUM_CLASSES, input_size=512,
    recipes=recipes.VGG16_FCN32S,
    ranges=_VGG16_RANGES, help=_VGG16_HELP,
    bench_batch={"cuda": 8, "cpu": 2}, stages=vgg16_fcn32s_stages, renamed=renamed_vgg16_fcn)
VGG16_FCN8S = ModelSpec(
    name="vgg16_fcn8s", task="seg", builder=vgg16_fcn8s, num_classes=NUM_CLASSES, input_size=512,
    recipes=recipes.VGG16_FCN8S,
    ranges=_VGG16_RANGES, help=_VGG16_HELP,
    bench_batch={"cuda": 8, "cpu": 2}, stages=vgg16_fcn32s_stages)
