"""The run around the loop: optimizer, schedule, resume, checkpoints and ``metrics.jsonl``.

Both training scripts make their config (:func:`start_run`), then :func:`train` builds the model,
datasets and loss and calls :func:`fit`.
"""
import contextlib
import logging
import time
import warnings

import torch
from torch.nn.parallel import DistributedDataParallel

from hw1 import distributed as dist
from hw1 import engine
from hw1.checkpoint import check_rng_state, load_checkpoint, plain, rng_state, set_rng_state
from hw1.cli import command_line
from hw1.config import describe, resolve
from hw1.errors import UserError
from hw1.io import atomic_copy, json_safe
from hw1.flags import split_hyperparameters
from hw1.models import get_spec, model_names
from hw1.run_dir import RunDir, run_folder_of
from hw1.runtime import (amp_dtype, channels_last_default, device_name, get_device, micro_batch_default,
                         seed_everything, setup_logging)
from hw1.tasks import get_task
from hw1.train_state import RESUME_KEYS as TRAIN_KEYS
from hw1.train_state import TrainState

log = logging.getLogger(__name__)


def default_save_epochs(epochs):
    return sorted({1, (epochs + 1) // 2, epochs})


def make_loader(dataset, *, batch_size, shuffle, workers, device, drop_last=False, sampler=None):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler, num_workers=workers,
        drop_last=drop_last, pin_memory=device.type == "cuda",  # pinned memory only pays off for host-to-GPU copies
    )


def make_loaders(train_set, val_set, args, device):
    """Train and validation batches; under torchrun, ``--batch-size`` is the global batch split over ranks.

    Keeping the global batch fixed keeps the recipe (lr, steps per epoch) the same at any scale.
    The train shards come from DistributedSampler (shuffled by ``--seed`` and the epoch); the
    validation shards from :class:`hw1.distributed.ShardSampler`, which repeats no sample.
    ``--loader batched`` indexes the batches out of the decoded tensors and augments them whole
    in this process (:class:`hw1.data.batches.BatchStream`, ``args.batch_transform()``); ``workers``
    is a DataLoader whose ``--workers`` processes run the datasets' per-image transforms. The
    samplers, and so the order of the samples, are the same for both.
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
    drop_last = len(train_set) // world > batch
    if args.loader == "batched":
        from hw1.data.batches import BatchStream, eval_batch

        sampler = torch.utils.data.BatchSampler
        train = sampler(train_sampler or torch.utils.data.RandomSampler(train_set), batch, drop_last)
        val = sampler(val_sampler or torch.utils.data.SequentialSampler(val_set), batch, False)
        return (BatchStream(train_set, train, transform=args.batch_transform(), device=device),
                BatchStream(val_set, val, transform=eval_batch, device=device))
    train_loader = make_loader(train_set, batch_size=batch, shuffle=True, workers=args.workers, device=device,
                               drop_last=drop_last, sampler=train_sampler)
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


# what --resume needs beyond the weights: the training state's keys and the RNG streams
RESUME_KEYS = (*TRAIN_KEYS, "rng")
RESUME_FLAGS = ("opt", "no_wd_norm", "bn_bias_lr")  # what shapes the optimizer state


def load_resume(config, *, model_name, model_config):
    """The ``--resume`` checkpoint, checked to fit this run, or None without ``--resume``.

    Called before any data is decoded, so a wrong path fails in a second, not after the minute it
    takes to decode P2.
    """
    if not config.resume:
        return None
    path = config.resume
    ckpt = load_checkpoint(path, task=config.task)
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path}: cannot resume from it: it has no {', '.join(missing)} (weights only?); "
                        "pass it as --weights to start a new run from its weights")
    for state in ckpt.get("rng_ranks") or [ckpt["rng"]]:
        check_rng_state(state, path)
    saved = ckpt.get("args") or {}
    # both filled in with the builder's defaults: a checkpoint that left a default out compares equal
    if ckpt["model_name"] != model_name or filled(ckpt) != model_config:
        recipe = saved.get("recipe")
        hint = f"; the run was made with --recipe {recipe}, resume with it" if recipe and recipe != config.recipe else ""
        raise UserError(f"{path}: checkpoint is {ckpt['model_name']} {ckpt['model_config']}, "
                        f"not {model_name} {model_config}{hint}")
    for flag in RESUME_FLAGS:
        if flag in saved and saved[flag] != getattr(config, flag):
            raise UserError(f"{path}: written with --{flag.replace('_', '-')} {saved[flag]}, this run has "
                            f"{getattr(config, flag)}: resume with the same optimizer flags")
    if "train_model" in ckpt and not config.ema:
        # the average would be dropped and val_* would change from its scores to the raw weights'
        raise UserError(f"{path}: an EMA run (--ema {saved.get('ema')}); resume it with --ema to continue the average")
    if ckpt["epoch"] > config.epochs:
        raise UserError(f"{path}: checkpoint of epoch {ckpt['epoch']}, past --epochs {config.epochs}; "
                        f"resume with --epochs {ckpt['epoch']} or more")
    # the history the run continues (read again by fit): a damaged line is an error now, not after decoding
    RunDir(run_folder_of(path)).read_metrics(upto_epoch=ckpt["epoch"], required=False)
    return ckpt


def filled(ckpt):
    """The checkpoint's ``model_config`` with its builder's defaults filled in, or as it is when
    it does not fit the builder (the comparison with this run's then fails and says so)."""
    from hw1.models.spec import ArgError

    try:
        return get_spec(ckpt["model_name"]).model_config(ckpt["model_config"])
    except (ArgError, ValueError):
        return ckpt["model_config"]


def check_buildable(spec, model_config, size):
    """Build the model on the meta device and run it on one ``size`` x ``size`` input, which costs no
    memory and no time: a configuration that passes every range check yet cannot build or run (no
    channels left after a transition, a feature map shrunk below a kernel) is a one-line error
    before any file is written or data decoded, not a traceback in the first step."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # init of zero-element tensors, said again by the error below
            spec.build(**model_config, weights="none").eval()(torch.zeros(1, 3, size, size))
    except (RuntimeError, ValueError, TypeError, ZeroDivisionError) as e:
        shown = ", ".join(f"{k}={v}" for k, v in model_config.items() if k != "num_classes")
        raise UserError(f"--model {spec.name} ({shown}): cannot be built and run on {size}x{size} inputs "
                        f"({str(e).splitlines()[0][:160]})") from None


def start_run(parser, argv, task):
    """The first steps of ``task``'s training script (a :class:`hw1.tasks.base.Task`); returns its
    validated config (a ``task.config``).

    The typed flags, over the model's recipes, become the config (:func:`hw1.config.resolve`),
    and every value is checked before anything is written or decoded; the config carries each
    value's origin, which the run logs once it starts (``--print-config``: printed here, and the
    script ends there). Under torchrun the process
    group is joined before anything is written, so that with ``--demo`` rank 0 alone writes the
    demo data (``task.make_demo(data_dir)``) and the other ranks then find it.
    """
    typed = vars(parser.parse_args(argv))
    print_config = typed.pop("print_config", False)
    typed, hyper = split_hyperparameters(typed, [get_spec(n) for n in model_names(task.name)])
    config = resolve(task.config, typed, hyper, command=command_line(task.script, argv)).validate()
    if print_config:
        device, spec = get_device(config.device), config.spec()
        chosen = resolved(config, spec, device, amp_dtype(config.amp, device, spec.name))
        print("\n".join(describe(config, chosen, device)))
        raise SystemExit(0)
    dist.setup(config.device)
    if config.demo:
        with dist.main_first():
            task.make_demo(config.data_dir)
    return config


def train(config, load_splits):
    """A training script's run once its config is checked: the resumed checkpoint, the run folder,
    the model, the data (``load_splits(config)`` -> train and validation sets), then :func:`fit`.

    Everything that can refuse the run (the checkpoint, a folder holding another run or held by a
    running one) is checked before the data is decoded.
    """
    spec = get_spec(config.model)
    setup_logging()
    seed_everything(config.seed)
    model_config = config.model_config  # the builder's arguments, defaults filled in (validate)
    check_buildable(spec, model_config, config.input_size())
    resume = load_resume(config, model_name=spec.name, model_config=model_config)
    if resume is not None and resume["epoch"] == config.epochs:
        # nothing to write and no data to decode: the run folder stays as it is
        log.info("%s is at epoch %d of %d: nothing left to train", config.resume, resume["epoch"], config.epochs)
        return resume.get("metrics")
    run_dir = RunDir(config.out_dir)
    # a demo replaces only a demo run (its own earlier one), never a real run without --overwrite
    overwrite = config.overwrite or (config.demo and run_dir.holds_demo())
    replace = dist.is_main() and run_dir.check_new_run(overwrite=overwrite, resume=config.resume)
    with run_dir.lock() if dist.is_main() else contextlib.nullcontext():
        # a resumed run takes every weight from its checkpoint: no pretrained download
        model = spec.build(**model_config, weights=config.weights if resume is None else "none")
        train_set, val_set = load_splits(config)
        return fit(model=model, spec=spec, model_config=model_config, train_set=train_set, val_set=val_set,
                   config=config, run_dir=run_dir, resume=resume, replace=replace)


def wrapped(model, config, device, distributed):
    """(the module that trains, the module that evaluates) of ``model``.

    DDP and compiling wrap the module; checkpoints always save the plain module's state_dict.
    Evaluation runs the plain module under DDP: ranks hold unequal validation shards, and DDP's
    forward would expect every rank to take part in each step.
    """
    step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if distributed else model
    if config.compile:
        step_model = torch.compile(step_model)
    return step_model, model if distributed or not config.compile else step_model


def resolved(config, spec, device, amp):
    """``config`` with what the run chooses at run time filled in, so that args.json says how it ran
    (``--amp auto`` as the dtype it chose, ``amp``)."""
    amp_name = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]
    return config.replace(amp=amp_name, channels_last=channels_last_default(config.channels_last, spec.name, device),
                          micro_batch=micro_batch_default(config.micro_batch, spec.name, device),
                          device_name=device_name(device), torch_version=str(torch.__version__),
                          world_size=dist.world_size())


def fit(*, model, spec, model_config, train_set, val_set, config, run_dir, resume=None, replace=False):
    """Train ``model`` for ``config.epochs`` into ``run_dir`` and return the last epoch's record.

    ``best.pth`` is the best validation accuracy (P1) or mIoU (P2). ``resume`` is the checkpoint
    :func:`load_resume` returned for ``config.resume``; ``replace`` clears the run the folder held.
    """
    task = get_task(spec.task)
    metric = task.metric  # what picks best.pth
    device = dist.setup(config.device)
    distributed, main = dist.world_size() > 1, dist.is_main()
    amp = amp_dtype(config.amp, device, spec.name)
    asked, config = config, resolved(config, spec, device, amp)
    if distributed:
        # The model was built with the same seed on every rank (and DDP broadcasts rank 0's weights
        # anyway); from here each rank draws its own augmentations.
        seed_everything(config.seed + dist.rank())
    save_epochs = set(config.save_epochs if config.save_epochs is not None else default_save_epochs(config.epochs))

    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    train_loader, val_loader = make_loaders(train_set, val_set, config, device)
    steps = len(train_loader)
    state = TrainState.create(model, config, steps_per_epoch=steps, amp=amp, device=device)
    records = []
    if resume is not None:
        state.load(resume, config.resume, steps_per_epoch=steps)
        restore_rng(resume, config.seed)
        # the history it continues, from the checkpoint's own folder (a new --out-dir gets a copy)
        records = RunDir(run_folder_of(config.resume)).read_metrics(upto_epoch=resume["epoch"], required=False)
        log.info("resumed from %s at epoch %d (lr %.4g)", config.resume, state.epoch + 1,
                 state.optimizer.param_groups[0]["lr"])
    args = plain(config.to_dict())
    if main:  # only now, so that a run refused above leaves the folder as it was
        if replace:
            run_dir.clear()
        run_dir.start(records, args)
        if resume is not None:
            scored = [r for r in records if r.get(f"val_{metric}") is not None]
            best_epoch = max(scored, key=lambda r: r[f"val_{metric}"])["epoch"] if scored else resume["epoch"]
            if not run_dir.branch(config.resume, resume["epoch"], best_epoch):
                log.warning("%s: the checkpoint of epoch %d, the best up to epoch %d, was not kept; best.pth "
                            "will be the best epoch from here on", run_dir.path, best_epoch, resume["epoch"])
                state.best = float("-inf")
            kept = run_dir.epoch_file(resume["epoch"])
            if resume["epoch"] in save_epochs and not kept.is_file():
                # a run stopped between last.pth and its copy: the resumed checkpoint is that epoch's
                log.info("%s: the copy of epoch %d's checkpoint was not made; making it from %s",
                         kept, resume["epoch"], config.resume)
                atomic_copy(config.resume, kept)

    if main and asked.origins:  # the run is on: its values, and where each came from
        from hw1.config import describe

        log.info("config (value and where it comes from):\n  %s", "\n  ".join(describe(asked, config, device)))
    ema = state.ema
    step_model, eval_model = wrapped(model, config, device, distributed)
    log.info("training %s on %s x %d (amp=%s, channels_last=%s, micro_batch=%s): %d train / %d val samples, "
             "%d steps per epoch", spec.name, device, dist.world_size(), amp, config.channels_last,
             config.micro_batch, len(train_set), len(val_set), steps)
    criterion = config.criterion(train_set)
    if getattr(criterion, "weight", None) is not None:
        log.info("class weights %s", [round(w, 3) for w in criterion.weight.tolist()])
    record = records[-1] if records else None
    # the run's wall time so far, training and evaluation, carried over a resume (data decoding aside)
    started, wall_before = time.perf_counter(), (record or {}).get("wall_seconds", 0.0)
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if distributed:
            train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        if hasattr(train_loader, "set_epoch"):  # the batched stream: epoch-dependent augmentation
            train_loader.set_epoch(epoch)
        lr = state.optimizer.param_groups[0]["lr"]  # the epoch's first step's
        train = engine.train_one_epoch(
            step_model, train_loader, state, criterion=criterion, device=device, amp_dtype=amp,
            channels_last=config.channels_last, grad_clip=config.grad_clip, epoch=epoch,
            progress=main and not config.no_progress, distributed=distributed, micro_batch=config.micro_batch)
        dist.broadcast_buffers(model)
        evaluated = {"": ema.module if ema else eval_model, **({"raw_": eval_model} if ema else {})}
        record = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train.items()}}
        for prefix, m in evaluated.items():  # with --ema, val_* are the average's and val_raw_* the weights'
            val = engine.evaluate(m, val_loader, num_classes=spec.num_classes, summarize=task.summarize,
                                  criterion=criterion, device=device, amp_dtype=amp,
                                  channels_last=config.channels_last, distributed=distributed)
            val.pop("cm")
            record.update({f"val_{prefix}{k}": json_safe(v) for k, v in val.items()})
        record["wall_seconds"] = round(wall_before + time.perf_counter() - started, 1)
        is_best = record[f"val_{metric}"] > state.best
        state.epoch, state.best = epoch, max(state.best, record[f"val_{metric}"])
        rng_ranks = dist.gather(rng_state())  # a collective: every rank takes part, rank 0 writes
        if main:
            run_dir.save_epoch(record, {
                **state.state_dict(), "rng": rng_ranks[0], **({"rng_ranks": rng_ranks} if distributed else {}),
                "model_name": spec.name, "model_config": model_config, "task": task.name, "args": args,
                "metrics": record,
            }, is_best=is_best, keep=epoch in save_epochs)
        log.info("epoch %d/%d  loss %.4f  train_acc %.4f  val_%s %.4f%s  (%.0f img/s, %.1f s)", epoch,
                 config.epochs, train["loss"], train["acc"], metric, record[f"val_{metric}"],
                 "  *best*" if is_best else "", train["img_s"], train["seconds"])
    return record
