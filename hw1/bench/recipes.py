"""Training epochs of the shipped CPU recipes, data included: the batched loader, the DataLoader it
replaced, and a reference.

Each pipeline trains the recipe's model (``train_cls.py --recipe cpu``, ``train_seg.py --recipe cpu``:
its config, optimizer, weight average, autocast and micro-batches) from the same initial weights
over the same real training images, through :func:`hw1.trainer.make_loaders` and
:func:`hw1.engine.train_one_epoch`, the code a training run uses; the time includes building the
loader (the workers' start-up, which every epoch pays) and every batch. Pipelines:

* ``batched``: ``--loader batched``, the default (:mod:`hw1.data.batches`);
* ``workers``: ``--loader workers`` with the recipe's ``--workers``: the DataLoader whose worker
  processes run the per-image transforms, the pipeline before the batched one;
* ``reference``: what one would write without this package: fp32, NCHW, whole batches, each image
  decoded from its file at every access through a DataLoader with the recipe's workers; P1's model
  is torchvision's DenseNet with the same blocks (:mod:`hw1.bench.reference`), P2's the recipe's
  own model (torchvision has no VGG16-FCN).
"""
import logging
import time
from pathlib import Path

import numpy as np
import torch

from hw1 import engine
from hw1.config import resolve
from hw1.data.cls import cls_train_transform, load_cls_split
from hw1.data.images import read_rgb
from hw1.data.masks import read_mask
from hw1.data.seg import load_seg_split, scan_pairs, seg_train_transform
from hw1.models import get_spec
from hw1.runtime import amp_dtype, channels_last_default, micro_batch_default
from hw1.tasks import get_task
from hw1.train_state import TrainState
from hw1.trainer import make_loaders

log = logging.getLogger(__name__)

PIPELINES = ("batched", "workers", "reference")


def recipe_config(task, data_dir, **changes):
    """The validated config of ``--recipe cpu`` of ``task``'s shipped model, with ``changes`` laid over it."""
    config = resolve(get_task(task).config, {"model": get_task(task).shipped_model, "recipe": "cpu", "data_dir": str(data_dir)},
                     command="hw1.bench").validate()
    return config.replace(**changes)


class PairFolder(torch.utils.data.Dataset):
    """P2 pairs decoded (and resized to ``size``) from their files at every access, then ``transform``-ed."""

    def __init__(self, pairs, size, transform):
        self.pairs, self.size, self.transform = pairs, size, transform

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        from PIL import Image
        from torchvision import tv_tensors

        _, sat, mask_path = self.pairs[i]
        image = torch.from_numpy(read_rgb(sat, self.size)).permute(2, 0, 1)
        mask = read_mask(mask_path)
        if self.size:
            mask = Image.fromarray(mask).resize((self.size, self.size), Image.NEAREST)
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(torch.as_tensor(np.array(mask))))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def _cls_sets(config, images):
    """P1: the first ``images`` training images in memory, and as PNGs decoded at every access."""
    from torchvision.transforms import v2

    from hw1.bench.reference import PNGFolder

    folder = Path(config.data_dir) / get_task("cls").layout.train
    data = load_cls_split(folder, transform=cls_train_transform(config.aug))
    keep = torch.arange(min(images, len(data)))
    data.images, data.labels, data.files = data.images[keep], data.labels[keep], data.files[:len(keep)]
    png = PNGFolder(folder, v2.Compose([v2.PILToTensor(), cls_train_transform(config.aug)]))
    png.files, png.labels = png.files[:len(keep)], png.labels[:len(keep)]
    return data, png


def _seg_sets(config, images):
    """P2: the first ``images`` training pairs in memory, and decoded from their files at every access."""
    pairs = scan_pairs(Path(config.data_dir) / get_task("seg").layout.train)[:images]
    transform = seg_train_transform(config.crop_size, scale=(config.min_scale, 1.0))
    with _linked(pairs) as subset:
        data = load_seg_split(subset, size=config.size, transform=transform)
    return data, PairFolder(pairs, config.size, transform)


# each task's (in-memory dataset, per-access dataset) of its first N training images
TRAINING_SETS = {"cls": _cls_sets, "seg": _seg_sets}


def training_sets(task, config, images):
    """(in-memory dataset, per-access dataset) of the first ``images`` training images of ``task``."""
    return TRAINING_SETS[task](config, images)


class _linked:
    """A temporary folder of links to ``pairs``' files: load_seg_split of a subset of a folder."""

    def __init__(self, pairs):
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="hw1_bench_pairs_")
        for _, sat, mask in pairs:
            for p in (sat, mask):
                (Path(self._tmp.name) / p.name).symlink_to(p.resolve())

    def __enter__(self):
        return Path(self._tmp.name)

    def __exit__(self, *exc):
        self._tmp.cleanup()


def _epoch(model, dataset, config, device, criterion):
    """Seconds and img/s of one training epoch of ``model`` over ``dataset`` under ``config``."""
    spec = get_spec(config.model)
    amp = amp_dtype(config.amp, device, spec.name)
    channels_last = channels_last_default(config.channels_last, spec.name, device)
    micro = micro_batch_default(config.micro_batch, spec.name, device)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    start = time.perf_counter()
    loader, _ = make_loaders(dataset, dataset, config, device)
    state = TrainState.create(model, config, steps_per_epoch=len(loader), amp=amp, device=device)
    out = engine.train_one_epoch(model, loader, state, criterion=criterion, device=device, amp_dtype=amp,
                                 channels_last=channels_last, micro_batch=micro, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "img_s": len(loader) * config.batch_size / seconds, "steps": len(loader),
            "loss": out["loss"],
            "amp": str(amp).replace("torch.", "") if amp else "none", "channels_last": channels_last,
            "micro_batch": micro, "workers": config.workers if config.loader == "workers" else 0}


def bench_recipe(task, args, device):
    """Each of ``args.pipelines`` training one epoch of ``args.recipe_steps`` steps of ``task``'s CPU recipe."""
    config = recipe_config(task, args.data_dirs[task])
    n = args.recipe_steps * config.batch_size
    data, per_access = training_sets(task, config, n + 2 * config.batch_size)
    warm = _subset(data, slice(0, 2 * config.batch_size))
    spec = get_spec(config.model)
    out = {"recipe": f"{get_task(task).script} --recipe cpu",
           "model": spec.name, "model_config": config.model_config, "batch_size": config.batch_size,
           "images": len(data) - 2 * config.batch_size, "pipelines": {}}
    timed = _subset(data, slice(2 * config.batch_size, None))
    criterion = config.criterion(data)  # P2's class weights from the masks, the same for every pipeline
    for name in args.pipelines:
        torch.manual_seed(0)
        if name == "reference":
            model = _reference_model(config)
            cfg = config.replace(loader="workers", amp="none", channels_last=False, micro_batch=0, ema=None)
            dataset = torch.utils.data.Subset(per_access, range(2 * config.batch_size, len(per_access)))
            warm_set = torch.utils.data.Subset(per_access, range(2 * config.batch_size))
        else:
            model = spec.build(**config.model_config, weights="none")
            cfg = config.replace(loader=name)
            dataset, warm_set = timed, warm
        _epoch(model, warm_set, cfg, device, criterion)  # kernels warmed on other images, as after epoch 1
        out["pipelines"][name] = _epoch(model, dataset, cfg, device, criterion)
        log.info("%s %s: %.1f img/s", task, name, out["pipelines"][name]["img_s"])
    p = out["pipelines"]
    if "batched" in p and "workers" in p:
        out["batched_vs_workers"] = p["batched"]["img_s"] / p["workers"]["img_s"]
    if "reference" in p:
        for name in ("batched", "workers"):
            if name in p:
                out[f"{name}_vs_reference"] = p[name]["img_s"] / p["reference"]["img_s"]
    return out


def _subset(data, rows):
    """The in-memory dataset ``data`` (P1's or P2's) restricted to ``rows`` (a slice)."""
    if hasattr(data, "masks"):
        return type(data)(data.images[rows], data.masks[rows], data.ids[rows], data.transform)
    return type(data)(data.images[rows], data.labels[rows], data.files[rows], data.transform)


def _torchvision_densenet(mc):
    from hw1.bench.reference import reference_densenet

    return reference_densenet(depth=mc["depth"], growth_rate=mc["growth_rate"], stem_pool=mc["stem_pool"])


# what one would write without this package, by model: torchvision's own where it has the model
REFERENCE_MODELS = {"densenet": _torchvision_densenet}


def _reference_model(config):
    make = REFERENCE_MODELS.get(config.model)
    return make(config.model_config) if make else get_spec(config.model).build(**config.model_config, weights="none")


def bench_predict(args):
    """Whole-process seconds (median of ``args.predict_repeats``) of the course's two commands on the
    validation folders: ``python -m hw1.predict cls`` on val_50 and ``bash hw1_2.sh`` on the P2 tiles,
    each with its shipped model A, as a grader runs them (``import torch`` and loading included)."""
    import statistics
    import subprocess
    import sys
    import tempfile

    repo = Path(__file__).resolve().parents[2]
    cls_val = Path(args.data_dirs["cls"]) / get_task("cls").layout.val
    seg_val = Path(args.data_dirs["seg"]) / get_task("seg").layout.val
    out = {}
    with tempfile.TemporaryDirectory(prefix="hw1_bench_predict_") as tmp:
        commands = {"predict_cls": [sys.executable, "-m", "hw1.predict", "cls", str(cls_val), f"{tmp}/pred.csv"],
                    "hw1_2.sh": ["bash", str(repo / "hw1_2.sh"), str(seg_val), f"{tmp}/masks"]}
        for name, command in commands.items():
            times = []
            for _ in range(args.predict_repeats):
                start = time.perf_counter()
                subprocess.run(command, check=True, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times.append(time.perf_counter() - start)
            out[name] = {"command": " ".join(command[1:] if command[0] == sys.executable else command),
                         "seconds": statistics.median(times), "all_seconds": times}
            log.info("%s: %.1f s", name, out[name]["seconds"])
    return out
