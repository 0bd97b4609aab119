"""DenseNet-BC (Huang et al., 2017) for 32x32 inputs, written out layer by layer.

Differences from torchvision's ImageNet DenseNet: a single 3x3 stem convolution with no
max-pool (a 32x32 image has no resolution to spare), three dense blocks of equal length derived
from ``depth`` as in the paper's CIFAR models, and a ``features()`` method returning the pooled
penultimate features used for the PCA / t-SNE figures.
"""
import torch
import torch.nn.functional as F
from torch import nn

from hw1 import recipes
from hw1.data.cls import IMG_SIZE, NUM_CLASSES
from hw1.models.spec import ModelSpec


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (bottleneck to ``bn_size * growth_rate``) then BN-ReLU-Conv3x3 (``growth_rate``)."""

    def __init__(self, in_channels, growth_rate, bn_size, drop_rate):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x):
        # In-place ReLUs: each acts on a fresh batch-norm output that nothing else reads, which
        # saves an allocation and a pass over memory per layer (most of DenseNet's time on a CPU
        # goes to such memory-bound passes, not to its small convolutions).
        out = self.conv1(F.relu(self.norm1(x), inplace=True))
        out = self.conv2(F.relu(self.norm2(out), inplace=True))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class _DenseBlock(nn.ModuleDict):
    """Each layer sees the concatenation of the block input and every earlier layer's output."""

    def __init__(self, num_layers, in_channels, growth_rate, bn_size, drop_rate):
        super().__init__()
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = _DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size, drop_rate)

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 (compression) then 2x2 average pooling."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)


class DenseNet(nn.Module):
    """DenseNet-BC: ``depth = 6 * layers_per_block + 4`` (3 blocks of bottleneck layers, 2 transitions).

    Args:
        depth: total depth as in the paper (100 -> 16 layers per block).
        growth_rate: channels each layer adds (``k``).
        compression: fraction of channels a transition keeps (``theta``).
        bn_size: bottleneck width as a multiple of ``growth_rate`` (4 in the paper).
        drop_rate: dropout after each 3x3 convolution.
        num_classes: outputs of the final linear layer.
        stem_pool: BN-ReLU-maxpool 2x2 after the stem convolution (blocks at 16x16 and below).
    """

    # no defaults: the builder, densenet(), is their one home (and the flags' and checkpoints' source)
    def __init__(self, *, depth, growth_rate, compression, bn_size, drop_rate, num_classes, stem_pool):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n+4 with n >= 1, got {depth}")
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        layers = (depth - 4) // 6
        channels = 2 * growth_rate
        self.trunk = nn.Sequential()
        self.trunk.add_module("conv0", nn.Conv2d(3, channels, 3, padding=1, bias=False))
        if stem_pool:
            # As ImageNet DenseNets do (there by 4): the blocks run at 16, 8 and 4 pixels, a quarter of
            # the FLOPs and activation memory, which on a CPU buys a wider or deeper net per second.
            self.trunk.add_module("norm0", nn.BatchNorm2d(channels))
            self.trunk.add_module("relu0", nn.ReLU(inplace=True))
            self.trunk.add_module("pool0", nn.MaxPool2d(2))
        for b in range(3):
            self.trunk.add_module(f"denseblock{b + 1}", _DenseBlock(layers, channels, growth_rate, bn_size, drop_rate))
            channels += layers * growth_rate
            if b < 2:
                out = int(channels * compression)
                self.trunk.add_module(f"transition{b + 1}", _Transition(channels, out))
                channels = out
        self.trunk.add_module("norm_final", nn.BatchNorm2d(channels))
        self.num_features = channels
        self.classifier = nn.Linear(channels, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def features(self, x):
        """Penultimate features: (N, num_features) after the final BN-ReLU and global average pool."""
        x = F.relu(self.trunk(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x):
        return self.classifier(self.features(x))


def densenet(*, depth: int = 100, growth_rate: int = 24, compression: float = 0.5, bn_size: int = 4,
             drop_rate: float = 0.0, stem_pool: bool = False, num_classes=50, weights="none"):
    """DenseNet-BC trained from scratch (``weights`` accepts only ``none`` or a local state dict)."""
    model = DenseNet(depth=depth, growth_rate=growth_rate, compression=compression, bn_size=bn_size,
                     drop_rate=drop_rate, num_classes=num_classes, stem_pool=stem_pool)
    if weights not in (None, "none"):
        from hw1.models.weights import load_matching, resolve_state_dict

        # no keywords: there are no published weights of this model (--weights imagenet is refused as such)
        load_matching(model, resolve_state_dict(weights, {}), source=str(weights))
    return model


def stages(model):
    """The architecture figure's stages: the stem, each dense block and transition, the head."""
    rows = []
    for name, m in model.trunk.named_children():
        if isinstance(m, _DenseBlock):
            desc = f"{len(m)} x BN-ReLU-conv1x1-BN-ReLU-conv3x3, concat"
        elif isinstance(m, _Transition):
            desc = "BN-ReLU-conv1x1, avgpool 2x2"
        elif isinstance(m, nn.Conv2d):
            desc = f"conv {m.kernel_size[0]}x{m.kernel_size[0]}"
        else:
            desc = type(m).__name__
        rows.append((name, desc, [m]))
    return rows + [("classifier", "ReLU, global avgpool, linear", [model.classifier])]


SPEC = ModelSpec(
    name="densenet", task="cls", slot="A", builder=densenet, num_classes=NUM_CLASSES, input_size=IMG_SIZE,
    recipes=recipes.DENSENET,
    ranges={
        # the upper bounds are far past any model that trains here; past them a model could not even
        # be built for the check that it runs (a DenseNet of depth 10**12 has 10**11 layers)
        "depth": (lambda v: 10 <= v <= 400 and (v - 4) % 6 == 0, "6n+4 in [10, 400] (10, 16, 22, ..., 100)"),
        "growth_rate": (lambda v: 1 <= v <= 256, "in [1, 256]"),
        "compression": (lambda v: 0 < v <= 1, "in (0, 1]"),
        "bn_size": (lambda v: 1 <= v <= 16, "in [1, 16]"),
        "drop_rate": (lambda v: 0 <= v < 1, "in [0, 1)"),
    },
    help={"depth": "DenseNet-BC depth, 6n+4", "growth_rate": "channels each dense layer adds",
          "compression": "channel factor of each transition", "bn_size": "bottleneck width, in growth rates",
          "drop_rate": "dropout after each dense layer",
          "stem_pool": "BN-ReLU-maxpool after the stem: dense blocks at 16x16 and below, a quarter of the FLOPs"},
    bench_batch={"cuda": 128, "cpu": 128}, stages=stages)
