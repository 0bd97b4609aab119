"""Model B of P1: torchvision's ConvNeXt with a 50-class head, fine-tuned from ImageNet weights.

The 32x32 images are upsampled inside the model to ``img_size`` (224, the pretrained resolution)
so the data pipeline stays at 32x32 and the resize runs batched on the device.
"""
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from hw1.data.cls import IMG_SIZE, NUM_CLASSES
from hw1 import recipes
from hw1.models.spec import ModelSpec
from hw1.models.weights import load_matching, resolve_state_dict

VARIANTS = {
    "convnext_tiny": (tvm.convnext_tiny, tvm.ConvNeXt_Tiny_Weights.IMAGENET1K_V1),
    "convnext_small": (tvm.convnext_small, tvm.ConvNeXt_Small_Weights.IMAGENET1K_V1),
    "convnext_base": (tvm.convnext_base, tvm.ConvNeXt_Base_Weights.IMAGENET1K_V1),
    "convnext_large": (tvm.convnext_large, tvm.ConvNeXt_Large_Weights.IMAGENET1K_V1),
}
HEAD = "classifier.2."  # torchvision's final Linear, replaced for our classes


class ConvNeXtClassifier(nn.Module):
    def __init__(self, net, img_size):
        super().__init__()
        self.net = net
        self.img_size = img_size

    def _resize(self, x):
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return x

    def features(self, x):
        """Penultimate features: (N, C) after pooling and the head's LayerNorm."""
        x = self.net.avgpool(self.net.features(self._resize(x)))
        return self.net.classifier[1](self.net.classifier[0](x))

    def forward(self, x):
        return self.net.classifier[2](self.features(x))


def convnext(*, variant: Literal[tuple(VARIANTS)] = "convnext_tiny", img_size: int = 224, num_classes=50,
             weights="imagenet"):
    """ConvNeXt ``variant`` with a ``num_classes`` head.

    ``weights``: ``imagenet`` (torchvision's IMAGENET1K_V1 from the torch hub cache, downloaded
    when online), ``none`` (random init), or a path to a torchvision-format state dict.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown ConvNeXt variant {variant!r}; choose from {', '.join(VARIANTS)}")
    builder, enum = VARIANTS[variant]
    net = builder(weights=None)
    state = resolve_state_dict(weights, {"imagenet": enum})
    if state is not None:
        load_matching(net, state, skip_prefixes=(HEAD,), source=str(weights))
    old = net.classifier[2]
    net.classifier[2] = nn.Linear(old.in_features, num_classes)
    nn.init.trunc_normal_(net.classifier[2].weight, std=0.02)
    nn.init.zeros_(net.classifier[2].bias)
    return ConvNeXtClassifier(net, img_size)


def stages(model):
    """The stem (with the resize), each stage and downsampling layer, pooling, the head."""
    from torchvision.models.convnext import CNBlock

    rows, net = [], model.net
    for i, m in enumerate(net.features):
        if any(isinstance(b, CNBlock) for b in m):
            rows.append((f"stage{(i + 1) // 2}", f"{len(m)} x ConvNeXt block (dw7x7, LN, MLP)", [m]))
        elif i == 0:
            rows.append(("stem", f"bilinear resize to {model.img_size}, conv 4x4/4, LN", [m]))
        else:
            rows.append((f"downsample{i // 2}", "LN, conv 2x2/2", [m]))
    return rows + [("avgpool", "global average pool", [net.avgpool]),
                   # features() calls the head's parts one by one, so hook its last part
                   ("classifier", "LN, flatten, linear", list(net.classifier))]


SPEC = ModelSpec(
    name="convnext", task="cls", slot="B", builder=convnext, num_classes=NUM_CLASSES, input_size=IMG_SIZE,
    recipes=recipes.CONVNEXT,
    ranges={"img_size": (lambda v: 1 <= v <= 1024, "in [1, 1024]")},
    help={"variant": "torchvision's ConvNeXt size", "img_size": "inputs are upsampled to this inside the model"},
    bench_batch={"cuda": 128, "cpu": 8}, stages=stages)
