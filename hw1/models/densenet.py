"""DenseNet-BC (Huang et al., 2017) for 32x32 inputs, written out layer by layer.

Differences from torchvision's ImageNet DenseNet: a single 3x3 stem convolution with no
max-pool (a 32x32 image has no resolution to spare), three dense blocks of equal length derived
from ``depth`` as in the paper's CIFAR models, and a ``features()`` method returning the pooled
penultimate features used for the PCA / t-SNE figures.
"""
import torch
import torch.nn.functional as F
from torch import nn

from hw1.data.cls import IMG_SIZE, NUM_CLASSES
from hw1.models.spec import SEED_RECIPE, ModelSpec
from hw1.runtime import BF16_NHWC, FP32_NHWC, Fastest


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

    def __init__(self, *, depth=100, growth_rate=12, compression=0.5, bn_size=4, drop_rate=0.0, num_classes=50,
                 stem_pool=False):
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


# ``--recipe cpu``: model A within about 2 hours on 2 CPU cores. Each value's measurement is in
# docs/results.md "Model A on a CPU budget" (results/p1_densenet_cpu_pilots.json):
CPU_RECIPE = {
    # BC-52 k=24 with the pooled stem (1.05 M parameters): 12 epochs of it beat 7 of the wide BC-40 k=48
    # in the same 20 minutes (0.672 against 0.597); BC-76 could not do 30 epochs in 2 hours
    "depth": 52, "growth_rate": 24, "stem_pool": True,
    # crop + flip: AutoAugment + RandomErasing cost 12.5 points in an 8-epoch pilot
    "aug": "light",
    # each image mirrored on alternate epochs (the CIFAR-10 speed runs' trick): +0.5 in an 8-epoch pilot
    "flip": "alternate",
    # batch 64 at the same lr: twice the steps, +3.9 points in an 8-epoch pilot (0.641 against 0.602)
    "batch_size": 64,
    # 50 epochs, not 30: the 30-epoch run was still gaining a point every 3 epochs at its end
    "epochs": 50,
    "lr": 0.2,  # above 0.1: +3.6 in the 8-epoch pilots of a small proxy
    "weight_decay": 5e-4,  # above the seed's 2e-5: +2.3 there
    "ema": 0.998,
    # NHWC: BC-52 k=24 pooled trained 1.19x faster than NCHW in bf16 on an AMX Xeon (311 against 261 img/s)
    "channels_last": True,
    "workers": 1,
}

# --demo: a small DenseNet on generated digits, sized to finish within 90 s on 2 cores of any kind. 12
# epochs, not 15: with oneDNN capped to AVX2 (fp32, the slowest kind) the whole command took 66 s
# and predicted 0.944 of the validation digits, against 82 s and 0.975 (10 epochs: 62 s, 0.905);
# docs/performance.md. A demo run replaces a previous demo run, never another run (without --overwrite).
DEMO_RECIPE = {"data_dir": "hw1_data/demo_cls", "out_dir": "runs/demo_cls", "depth": 22, "growth_rate": 12,
               "epochs": 12, "batch_size": 64, "aug": "none"}

# (training, inference) per kind of CPU, each chosen from `python -m hw1.bench` runs on such a CPU
# (2 cores); a kind without a measurement of its own for a model takes the nearest kind's choice.
# DenseNet's choices differ the most between kinds: its per-layer channel concatenations are strided
# copies in NHWC, which bf16 training on AVX512-BF16 and AMX pays for (bf16 NCHW 24.0 vs NHWC 19.4
# img/s, results/bench_cpu.json), while in fp32 on AVX2 NHWC's faster convolutions win (6.60 vs 4.66
# img/s, results/bench_cpu_avx2_densenet.json). Its micro-batches of 64 keep the concatenated feature
# maps in the caches. Inference has no backward pass, and NHWC wins it on the bf16 CPUs. On AMX,
# DenseNet-BC-100 (k 12, batch 128) trained at 31.8 img/s in bf16 NCHW against 10.0 in NHWC and
# inferred at 184 img/s in bf16 NHWC against 15.9 in NCHW.
FASTEST = {"amx": (Fastest("bf16", False, 64), BF16_NHWC), "avx512_bf16": (Fastest("bf16", False, 64), BF16_NHWC),
           "fp32": (Fastest("none", True, 64), FP32_NHWC)}

SPEC = ModelSpec(
    name="densenet", task="cls", slot="A", builder=densenet, num_classes=NUM_CLASSES, input_size=IMG_SIZE,
    recipes={"default": {**SEED_RECIPE, "epochs": 50, "weights": "none"}, "cpu": CPU_RECIPE, "demo": DEMO_RECIPE},
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
    fastest=FASTEST, bench_batch={"cuda": 128, "cpu": 128}, stages=stages)
