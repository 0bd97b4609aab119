"""Self-describing checkpoints: model name + config + args as plain data, loadable with weights_only.

A checkpoint holds ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``best``,
``rng``, ``model_name``, ``model_config``, ``task``, ``args`` (a dict) and ``metrics`` (the
epoch's record). Everything is tensors, numbers, strings, lists and dicts, so ``torch.load(...,
weights_only=True)`` reads it and a file that would run code when unpickled is refused.
"""
import random
from pathlib import Path

import torch

from hw1.errors import UserError
from hw1.io import atomic_torch_save, load_torch_file
from hw1.outputs import Kind, check_output
from hw1.models import REGISTRY, build_model, current_name, get_spec

REQUIRED = ("model", "model_name", "model_config")


def plain(value):
    """Convert argparse values (Paths, tuples) into types ``weights_only`` loading accepts."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)  # Paths, and str subclasses such as torch.__version__, as plain str


def rng_state():
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def check_rng_state(state, path):
    """One line, not torch's RuntimeError at resume, for an RNG state that is not one this code saves."""
    own = torch.get_rng_state()
    torch_state = state.get("torch") if isinstance(state, dict) else None
    if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == own.dtype
            and torch_state.shape == own.shape and isinstance(state.get("python"), (list, tuple))):
        raise UserError(f"{path}: its RNG state is damaged or not torch's (resume needs the one a run saved)")


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state, path):
    """Write ``state`` atomically: a crash while saving leaves the previous file intact."""
    atomic_torch_save(state, path)


def load_checkpoint(path, *, task=None):
    """Load an hw1 checkpoint on the CPU, refusing anything that is not one (or is of the other task)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    ckpt = load_torch_file(path)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED):
        raise UserError(f"{path}: not an hw1 checkpoint (needs keys {', '.join(REQUIRED)})")
    for key, kind in (("model", dict), ("model_name", str), ("model_config", dict)):
        if not isinstance(ckpt[key], kind):
            raise UserError(f"{path}: not an hw1 checkpoint ({key!r} is a {type(ckpt[key]).__name__}, "
                            f"not a {kind.__name__})")
    ckpt = _under_current_name(ckpt, path)
    if ckpt["model_name"] not in REGISTRY:
        raise UserError(f"{path}: unknown model {ckpt['model_name']!r}")
    spec = get_spec(ckpt["model_name"])
    if task is not None and spec.task != task:
        raise UserError(f"{path}: a {spec.task} checkpoint ({ckpt['model_name']}), not a {task} one")
    # a model of another class count would predict classes the task does not have (scored as others)
    classes = ckpt["model_config"].get("num_classes", spec.num_classes)
    if classes != spec.num_classes or isinstance(classes, bool):
        raise UserError(f"{path}: a {ckpt['model_name']} checkpoint with num_classes {classes!r}; its task "
                        f"({spec.task}) has {spec.num_classes} classes")
    _check_fields(ckpt, path, spec)
    return ckpt


def _under_current_name(ckpt, path):
    """``ckpt`` with its model's name and config (and its run's, in ``args``) under today's registry
    names: a checkpoint saved before a model was renamed loads, resumes and predicts as it did."""
    old_name, old_config = ckpt["model_name"], ckpt["model_config"]
    try:
        name, config = current_name(old_name, old_config)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    if (name, config) == (old_name, old_config):
        return ckpt
    ckpt = {**ckpt, "model_name": name, "model_config": config}
    args = ckpt.get("args")
    if isinstance(args, dict) and args.get("model") == old_name:
        # the run's args go under the new name too; older runs kept the hyperparameters as fields
        # of their own, so the ones the renaming dropped (skips) go from there as well
        dropped = set(old_config) - set(config)
        ckpt["args"] = {**{k: v for k, v in args.items() if k not in dropped}, "model": name}
        if "model_config" in args:
            ckpt["args"]["model_config"] = config
    return ckpt


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return _is_int(value) or isinstance(value, float)


def _check_fields(ckpt, path, spec):
    """The fields that rebuild and run the model hold what their flags would: a hand-edited or foreign
    value is one line here, not a traceback (or a model too large to build) later."""
    from hw1.config import SIDE_RANGES
    from hw1.models.spec import ArgError

    try:  # the model's ranges, as its flags have them (a depth of 120004 would exhaust memory)
        spec.model_config(ckpt["model_config"])
    except ArgError as e:
        raise UserError(f"{path}: model_config {e.name}={e.value!r}: {e.must}") from None
    args = ckpt.get("args", {})
    if not isinstance(args, dict):
        raise UserError(f"{path}: 'args' is a {type(args).__name__}, not a dict")
    for name, (ok, must) in SIDE_RANGES.items():
        value = args.get(name)
        if value is not None and not (_is_int(value) and ok(value)):
            raise UserError(f"{path}: args.{name} {value!r}: must be an integer {must}")
    inference = ckpt.get("inference", {})
    from hw1.engine import tta_mode

    try:  # the one rule of what names a TTA mode (bools from before "d4" included)
        ok = isinstance(inference, dict) and isinstance(tta_mode(inference.get("tta", False)), str)
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"{path}: 'inference' must be a dict such as {{'tta': 'flip'}} (none, flip, d4, crops or a bool), "
                        f"not {inference!r}")
    if "epoch" in ckpt and not (_is_int(ckpt["epoch"]) and ckpt["epoch"] >= 0):
        raise UserError(f"{path}: 'epoch' {ckpt['epoch']!r}: must be an integer, 0 or more")
    if "best" in ckpt and ckpt["best"] is not None and not _is_number(ckpt["best"]):
        raise UserError(f"{path}: 'best' {ckpt['best']!r}: must be a number")


def model_from_checkpoint(ckpt, path="checkpoint"):
    """Rebuild the model a checkpoint describes and load its weights (no pretrained download)."""
    config = dict(ckpt["model_config"], weights="none")
    try:
        model = build_model(ckpt["model_name"], **config)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        # load_state_dict puts its first missing / unexpected key on the second line.
        detail = " ".join(line.strip() for line in str(e).strip().splitlines())
        raise UserError(f"{path}: weights do not fit {ckpt['model_name']} {ckpt['model_config']} "
                        f"({detail[:200]})") from None
    return model


# What inference needs, and what a reader of a shipped file wants to know about it. Training state
# (the optimizer's momentum, the raw weights beside an EMA, RNG states) is left out: for model A
# it is two thirds of the file, and nothing that loads a shipped model uses it.
EXPORT_KEYS = ("model", "model_name", "model_config", "task", "args", "metrics", "epoch", "best")


def is_training_checkpoint(path):
    """Whether ``path`` holds an hw1 checkpoint with its training state (what ``--resume`` needs)."""
    try:
        return "optimizer" in load_checkpoint(path)
    except UserError:
        return False


# What an export writes (hw1.outputs' rule): it may replace any .pth but a training checkpoint
EXPORT = Kind("checkpoint", (".pth", ".pt"), lambda p: not is_training_checkpoint(p),
              "a training checkpoint, which --resume needs")


def export_checkpoint(src, dst, *, tta=None, half=False, overwrite=False):
    """Write the inference part of checkpoint ``src`` to ``dst`` (atomically); returns the exported dict.

    ``tta`` records the test-time augmentation the model is to be used with (``flip``, ``d4``; True
    is flip; ``none`` or False none): hw1.predict and eval.py then use it unless told otherwise (a
    choice made on the validation set, not on the data scored). None keeps ``src``'s own (an
    export of an export keeps its TTA).
    ``half`` stores the floating-point weights in fp16, half the file; ``load_state_dict`` copies
    them back into the model's fp32 tensors, so loading is unchanged. A weight beyond fp16's range
    would become infinite: such a checkpoint is refused.

    The result is still an hw1 checkpoint: predict, eval and viz load it as they load ``src``
    (``model`` is what they load, the EMA where the run kept one); only ``--resume`` needs the original.
    """
    # an export in place of a training checkpoint would lose what --resume needs, silently
    check_output(dst, EXPORT, inputs=[("SRC", src)], overwrite=overwrite)
    ckpt = load_checkpoint(src)
    exported = {k: ckpt[k] for k in EXPORT_KEYS if k in ckpt}
    exported["exported_from"] = str(src)
    from hw1.engine import tta_mode

    mode = tta_mode(ckpt.get("inference", {}).get("tta", False) if tta is None else tta)
    if mode != "none":
        exported["inference"] = {"tta": mode}
    if half:
        fp16_max = torch.finfo(torch.float16).max
        for k, v in exported["model"].items():
            big = v[v.isfinite() & (v.abs() > fp16_max)] if v.is_floating_point() else v[:0]
            if big.numel():
                raise UserError(f"{src}: --half: {k} holds values up to {big.abs().max().item():.4g}, beyond fp16's "
                                f"{fp16_max:.0f}: they would be stored as inf; export it without --half")
        exported["model"] = {k: v.half() if v.is_floating_point() else v for k, v in exported["model"].items()}
    save_checkpoint(exported, dst)
    return exported


def main(argv=None):
    import argparse

    from hw1.flags import add_tta_args

    p = argparse.ArgumentParser(prog="python -m hw1.checkpoint",
                                description="Export a checkpoint for inference: weights, model, config and "
                                            "the run's args and metrics, without the training state.")
    p.add_argument("src", help="an hw1 checkpoint, e.g. runs/densenet/best.pth")
    p.add_argument("dst", help="the file to write, e.g. checkpoints/p1_densenet.pth")
    add_tta_args(p, "SRC's own: predict and eval use it with the export by default")
    p.add_argument("--half", action="store_true", help="store the weights in fp16 (they load back into fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace DST even if it is the source or a training checkpoint")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    exported = export_checkpoint(args.src, args.dst, tta=args.tta, half=args.half, overwrite=args.overwrite)
    size = Path(args.dst).stat().st_size
    tta = exported.get("inference", {}).get("tta")
    print(f"wrote {args.dst}: {exported['model_name']} {exported['model_config']}, {size / 1e6:.1f} MB"
          + (", fp16 weights" if args.half else "") + (f", {tta} TTA by default" if tta else ""))


if __name__ == "__main__":
    from hw1.cli import run

    run(main)
