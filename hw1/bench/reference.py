"""The reference: torchvision's DenseNet fed by per-access PNG decoding, "what one would write instead".

Our default training configuration against it: model steps on the same synthetic batch, and whole
training loops (loader + steps) over the same images.
"""
import time

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from hw1.bench.models import (BASELINE, RUNTIME_CONFIGS, batch_size_of, default_config_name, measure, model_setup, set_up,
                              synthetic_batch, train_epoch)
from hw1.bench.timing import count_flops, sync
from hw1.data.cls import NUM_CLASSES as CLS_CLASSES
from hw1.data.cls import cls_train_transform, label_from_name, list_images
from hw1.errors import UserError
from hw1.models import build_model
from hw1.trainer import make_loader

REFERENCE_NOTE = (
    "torchvision.models.DenseNet(growth_rate=k, block_config=(n, n, n), num_init_features=2k, bn_size=4, "
    "drop_rate=0) with depth = 6n + 4 as ours; its ImageNet stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 "
    "max-pool) is replaced by ours (one 3x3 stride-1 conv; norm0, relu0 and pool0 become Identity), so every "
    "dense layer, transition (compression 0.5, 2x2 average pool) and the head (BN, ReLU, global pool, linear) "
    "match hw1's DenseNet-BC layer for layer (equal parameter and FLOP counts, below). What remains different "
    "is how the code runs it: torchvision concatenates a layer's inputs inside the layer. It runs in fp32, NCHW, "
    "eager, and its dataset decodes a PNG at every access.")


def reference_densenet(*, depth, growth_rate, stem_pool=False, num_classes=CLS_CLASSES):
    """torchvision's DenseNet with the blocks of our DenseNet-BC ``depth`` / ``growth_rate`` (see REFERENCE_NOTE);
    ``stem_pool`` keeps its BN-ReLU and puts our 2x2 max-pool in place of its 3x3 stride-2 one."""
    n = (depth - 4) // 6
    net = torchvision.models.DenseNet(growth_rate=growth_rate, block_config=(n, n, n),
                                      num_init_features=2 * growth_rate, bn_size=4, num_classes=num_classes)
    net.features.conv0 = nn.Conv2d(3, 2 * growth_rate, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(net.features.conv0.weight)
    if stem_pool:
        net.features.pool0 = nn.MaxPool2d(2)
    else:
        for name in ("norm0", "relu0", "pool0"):
            setattr(net.features, name, nn.Identity())
    return net


class PNGFolder(torch.utils.data.Dataset):
    """``{label}_{id}.png`` files opened and decoded with PIL at every access, then ``transform``-ed."""

    def __init__(self, folder, transform):
        self.files = list_images(folder)
        self.labels = [label_from_name(p) for p in self.files]
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            image = im.convert("RGB")
        return self.transform(image), self.labels[i]


def loop_steps_s(setup, dataset, indices, *, criterion, batch_size, workers, device):
    """Steps/s of the whole training loop (DataLoader with ``workers`` + steps) over ``indices``.

    Two untimed steps first warm the kernels; the timed epoch includes the workers' start-up, as
    every training epoch does.
    """
    warm = make_loader(torch.utils.data.Subset(dataset, indices[:2 * batch_size]), batch_size=batch_size,
                       shuffle=False, workers=workers, device=device)
    train_epoch(setup, warm, criterion=criterion, device=device)
    loader = make_loader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=True,
                         workers=workers, device=device, drop_last=True)
    start = time.perf_counter()
    train_epoch(setup, loader, criterion=criterion, device=device)
    sync(device)
    return len(loader) / (time.perf_counter() - start)


def bench_reference(ours_dataset, folder, args, device, models):
    """Our default training configuration against the reference: model steps and whole training loops."""
    ours_name = default_config_name(device)
    ours_cfg, ref_cfg = RUNTIME_CONFIGS[ours_name], RUNTIME_CONFIGS[BASELINE]
    config, shape, num_classes, criterion = model_setup("densenet", args)
    ours = build_model("densenet", **config)
    ref = reference_densenet(depth=config["depth"], growth_rate=config["growth_rate"], stem_pool=config["stem_pool"])
    batch = batch_size_of("densenet", args, device)
    images, targets = synthetic_batch(shape, num_classes, batch, task="cls", device=device)
    timing = dict(criterion=criterion, images=images, targets=targets, device=device, steps=args.steps,
                  warmup=args.warmup, repeats=args.repeats)
    measured = models.get("densenet", {}).get("configs", {}).get(ours_name, {})
    ours_step = measured.get("train_img_s") or measure(ours, ours_cfg, **timing)["train_img_s"]
    ref_step = measure(ref, ref_cfg, **timing)["train_img_s"]

    png = PNGFolder(folder, v2.Compose([v2.PILToTensor(), cls_train_transform("seed")]))
    assert png.files and [p.name for p in png.files] == ours_dataset.files
    g = torch.Generator().manual_seed(0)
    n = min(args.e2e_steps * args.e2e_batch_size, len(png) // args.e2e_batch_size * args.e2e_batch_size)
    if n == 0:
        raise UserError(f"{folder}: {len(png)} images are fewer than one --e2e-batch-size {args.e2e_batch_size}")
    indices = torch.randperm(len(png), generator=g)[:n].tolist()
    loop = dict(criterion=criterion, batch_size=args.e2e_batch_size, workers=args.e2e_workers, device=device)
    # ours as train_cls.py runs it, micro-batches included
    micro = ours_cfg.micro_batch
    ours_loop = loop_steps_s(set_up(ours, ours_cfg, device), ours_dataset, indices, **loop)
    ref_loop = loop_steps_s(set_up(ref, ref_cfg, device), png, indices, **loop)
    return {
        "description": REFERENCE_NOTE,
        "params": {"ours": sum(p.numel() for p in ours.parameters()),
                   "reference": sum(p.numel() for p in ref.parameters())},
        "forward_flops_per_img": {"ours": count_flops(ours, images[:1]), "reference": count_flops(ref, images[:1])},
        "model_step": {"ours_config": ours_name, "reference_config": BASELINE, "batch_size": batch,
                       "ours_img_s": ours_step, "reference_img_s": ref_step, "ratio": ours_step / ref_step},
        "e2e": {"steps": len(indices) // args.e2e_batch_size, "batch_size": args.e2e_batch_size,
                "workers": args.e2e_workers, "ours_micro_batch": micro,
                "ours": f"decode-once cache + {ours_name}" + (f" in micro-batches of {micro}" if micro else ""),
                "reference": "PNG decoded at every access + fp32 NCHW",
                "ours_steps_s": ours_loop, "reference_steps_s": ref_loop, "ratio": ours_loop / ref_loop},
    }
