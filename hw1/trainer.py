"""The run around the loop: optimizer, schedule, resume, checkpoints and ``metrics.jsonl``.

Both training scripts build a model, datasets and a loss, then call :func:`fit`.
"""
import json
import logging
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from hw1 import distributed as dist
from hw1 import engine
from hw1.checkpoint import load_checkpoint, plain, rng_state, save_checkpoint, set_rng_state
from hw1.errors import UserError
from hw1.io import append_text, atomic_copy, atomic_write_text, json_safe
from hw1.runtime import amp_dtype, channels_last_default, micro_batch_default, seed_everything
from hw1.schedule import CosineSchedule
from hw1.summary import device_name

log = logging.getLogger(__name__)


def param_groups(model, weight_decay, no_wd_norm):
    """One group, or two with no decay on 1-d tensors (norm weights, biases) as nanoGPT does."""
    if not no_wd_norm:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, args):
    groups = param_groups(model, args.weight_decay, args.no_wd_norm)
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov)
    return torch.optim.AdamW(groups, lr=args.lr)


def default_save_epochs(epochs):
    return sorted({1, (epochs + 1) // 2, epochs})


def make_loader(dataset, *, batch_size, shuffle, workers, device, drop_last=False, sampler=None):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler, num_workers=workers,
        drop_last=drop_last, pin_memory=device.type == "cuda",  # pinned memory only pays off for host-to-GPU copies
    )


def make_loaders(train_set, val_set, args, device):
    """Train and validation loaders; under torchrun, ``--batch-size`` is the global batch split over ranks.

    Keeping the global batch fixed keeps the recipe (lr, steps per epoch) the same at any scale.
    The train shards come from DistributedSampler (shuffled by ``--seed`` and the epoch); the
    validation shards from :class:`hw1.distributed.ShardSampler`, which repeats no sample.
    """
    world, rank = dist.world_size(), dist.rank()
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} does not split over {world} processes; "
                        f"give a multiple of {world}")
    batch = args.batch_size // world
    train_sampler = val_sampler = None
    if world > 1:
        train_sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                                            seed=args.seed)
        val_sampler = dist.ShardSampler(len(val_set), rank, world)
    train_loader = make_loader(train_set, batch_size=batch, shuffle=True, workers=args.workers, device=device,
                               drop_last=len(train_set) // world > batch, sampler=train_sampler)
    val_loader = make_loader(val_set, batch_size=batch, shuffle=False, workers=args.workers, device=device,
                             sampler=val_sampler)
    return train_loader, val_loader


def restore_rng(ckpt, seed):
    """Each rank continues its own random streams; a different number of processes re-seeds them."""
    states = ckpt.get("rng_ranks") or [ckpt["rng"]]
    if len(states) == dist.world_size():
        set_rng_state(states[dist.rank()])
    else:
        log.warning("checkpoint was written by %d processes, this run has %d: the data order follows --seed and "
                    "the epoch, augmentation randomness is re-seeded", len(states), dist.world_size())
        seed_everything(seed + dist.rank() + 1000 * ckpt["epoch"])


def read_records(path, upto_epoch):
    """Lines of ``metrics.jsonl`` up to ``upto_epoch``: a resumed run rewrites the ones after it."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["epoch"] <= upto_epoch]


RESUME_KEYS = ("optimizer", "scheduler", "scaler", "epoch", "best", "rng")
RESUME_FLAGS = ("opt", "no_wd_norm")  # what shapes the optimizer state


def load_resume(args, *, task, model_name, model_config):
    """The ``--resume`` checkpoint, checked to fit this run, or None without ``--resume``.

    The scripts call this before decoding any data, so a wrong path fails in a second, not after
    the minute it takes to decode P2.
    """
    if not args.resume:
        return None
    path = args.resume
    ckpt = load_checkpoint(path, task=task)
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path}: cannot resume from it: it has no {', '.join(missing)} (weights only?); "
                        "pass it as --weights to start a new run from its weights")
    if ckpt["model_name"] != model_name or ckpt["model_config"] != model_config:
        raise UserError(f"{path}: checkpoint is {ckpt['model_name']} {ckpt['model_config']}, "
                        f"not {model_name} {model_config}")
    saved = ckpt.get("args") or {}
    for flag in RESUME_FLAGS:
        if flag in saved and saved[flag] != getattr(args, flag):
            raise UserError(f"{path}: written with --{flag.replace('_', '-')} {saved[flag]}, this run has "
                            f"{getattr(args, flag)}: resume with the same optimizer flags")
    return ckpt


def restore(ckpt, path, *, model, optimizer, scheduler, scaler, seed):
    """Load a checked ``--resume`` checkpoint into the run's objects; return (next epoch, best)."""
    model.load_state_dict(ckpt["model"])
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"] or not scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        else:
            # A bf16 or fp32 run has no scaler state (a bf16 run on an H100 continued with fp16 on
            # a T4): fp16 starts a fresh scaler, which settles its scale within a few steps.
            log.warning("%s: written without fp16's gradient scaler (--amp %s); this run's fp16 starts a fresh one",
                        path, (ckpt.get("args") or {}).get("amp", "?"))
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise UserError(f"{path}: its optimizer, schedule or scaler state does not fit this run "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''})") from None
    restore_rng(ckpt, seed)
    return ckpt["epoch"] + 1, ckpt["best"]


def save_epoch(out_dir, record, state, *, is_best, keep):
    """Append the epoch's record, then write ``last.pth`` and its copies ``best.pth`` and ``epoch_NNN.pth``.

    metrics.jsonl is written before the checkpoint, and a resume drops lines past the
    checkpoint's epoch, so a crash in between never leaves a line without its checkpoint. A full
    disk is a one-line error, and last.pth stays the previous epoch's.
    """
    append_text(json.dumps(record) + "\n", out_dir / "metrics.jsonl")
    save_checkpoint(state, out_dir / "last.pth")
    if is_best:
        atomic_copy(out_dir / "last.pth", out_dir / "best.pth")
    if keep:
        atomic_copy(out_dir / "last.pth", out_dir / f"epoch_{state['epoch']:03d}.pth")


def fit(*, model, model_name, model_config, task, num_classes, train_set, val_set, criterion, args,
        metric="acc", resume=None):
    """Train ``model`` for ``args.epochs`` and return the last epoch's record.

    ``metric`` (``acc`` or ``miou``) picks ``best.pth``; it is measured on the validation set only.
    ``resume`` is the checkpoint :func:`load_resume` returned for ``args.resume``.
    """
    device = dist.setup(args.device)
    distributed, main = dist.world_size() > 1, dist.is_main()
    amp = amp_dtype(args.amp, device)
    # recorded as resolved, so args.json says how the run ran
    args.channels_last = channels_last_default(args.channels_last, model_name, device)
    args.micro_batch = micro_batch_default(args.micro_batch, model_name, device)
    out_dir = Path(args.out_dir)
    if distributed:
        # The model was built with the same seed on every rank (and DDP broadcasts rank 0's weights
        # anyway); from here each rank draws its own augmentations.
        seed_everything(args.seed + dist.rank())
    save_epochs = set(args.save_epochs if args.save_epochs is not None else default_save_epochs(args.epochs))

    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    train_loader, val_loader = make_loaders(train_set, val_set, args, device)
    optimizer = build_optimizer(model, args)
    steps = len(train_loader)
    scheduler = CosineSchedule(optimizer, base_lr=args.lr, total_steps=args.epochs * steps,
                               warmup_steps=round(args.warmup_epochs * steps), min_lr=args.min_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    start_epoch, best = 1, float("-inf")
    records = []
    if resume is not None:
        start_epoch, best = restore(resume, args.resume, model=model, optimizer=optimizer, scheduler=scheduler,
                                    scaler=scaler, seed=args.seed)
        records = read_records(out_dir / "metrics.jsonl", resume["epoch"])
        log.info("resumed from %s at epoch %d", args.resume, start_epoch)
    args.device_name, args.torch_version, args.world_size = device_name(device), torch.__version__, dist.world_size()
    if main:  # only now, so that a run refused above leaves no empty folder behind
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text("".join(json.dumps(r) + "\n" for r in records), out_dir / "metrics.jsonl")
        atomic_write_text(json.dumps(plain(vars(args)), indent=2) + "\n", out_dir / "args.json")

    # DDP and compiling wrap the module; checkpoints always save the plain module's state_dict.
    # Evaluation runs the plain module: ranks hold unequal validation shards, and DDP's forward
    # would expect every rank to take part in each step.
    step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if distributed else model
    if args.compile:
        step_model = torch.compile(step_model)
    eval_model = model if distributed or not args.compile else step_model
    log.info("training %s on %s x %d (amp=%s, channels_last=%s, micro_batch=%s): %d train / %d val samples, "
             "%d steps per epoch", model_name, device, dist.world_size(), amp, args.channels_last, args.micro_batch,
             len(train_set), len(val_set), steps)
    record = records[-1] if records else None
    for epoch in range(start_epoch, args.epochs + 1):
        if distributed:
            train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        train = engine.train_one_epoch(
            step_model, train_loader, criterion=criterion, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            device=device, amp_dtype=amp, channels_last=args.channels_last, grad_clip=args.grad_clip, epoch=epoch,
            progress=main and not args.no_progress, distributed=distributed, micro_batch=args.micro_batch)
        dist.broadcast_buffers(model)
        val = engine.evaluate(eval_model, val_loader, num_classes=num_classes, task=task, criterion=criterion,
                              device=device, amp_dtype=amp, channels_last=args.channels_last, distributed=distributed)
        val.pop("cm")
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                  **{f"train_{k}": v for k, v in train.items()},
                  **{f"val_{k}": json_safe(v) for k, v in val.items()}}
        is_best = record[f"val_{metric}"] > best
        best = max(best, record[f"val_{metric}"])
        rng_ranks = dist.gather(rng_state())  # a collective: every rank takes part, rank 0 writes
        if main:
            save_epoch(out_dir, record, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch, "best": best,
                "rng": rng_ranks[0], **({"rng_ranks": rng_ranks} if distributed else {}),
                "model_name": model_name, "model_config": model_config, "task": task, "args": plain(vars(args)),
                "metrics": record,
            }, is_best=is_best, keep=epoch in save_epochs)
        log.info("epoch %d/%d  loss %.4f  train_acc %.4f  val_%s %.4f%s  (%.0f img/s, %.1f s)", epoch, args.epochs,
                 train["loss"], train["acc"], metric, record[f"val_{metric}"], "  *best*" if is_best else "",
                 train["img_s"], train["seconds"])
    return record
