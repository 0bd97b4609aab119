"""Score P1 or P2 results as the course does.

    python eval.py --task cls --pred pred.csv --gt hw1_data/p1_data/val_gt.csv
    python eval.py --task cls --checkpoint runs/densenet/best.pth --data-dir hw1_data/p1_data/val_50
    python eval.py --task seg --pred pred_masks/ --gt hw1_data/p2_data/validation
    python eval.py --task seg --checkpoint runs/vgg16_fcn8s/best.pth --data-dir hw1_data/p2_data/validation
"""
import argparse
import json
import os
from pathlib import Path

from hw1.cli import run
from hw1.errors import UserError
from hw1.flags import add_tta_args, check_numbers
from hw1.rules import AT_LEAST_1
from hw1.io import atomic_write_text, json_safe
from hw1.outputs import check_output
from hw1.predict import load_model
from hw1.runtime import get_device
from hw1.scoring import model_confusion
from hw1.tasks import TASKS, get_task


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=list(TASKS), required=True)
    p.add_argument("--pred", help="cls: prediction CSV; seg: folder of predicted masks")
    p.add_argument("--gt", help="cls: ground-truth CSV (filename,label); seg: folder of ground-truth masks")
    p.add_argument("--checkpoint", help="evaluate this checkpoint directly instead of --pred")
    p.add_argument("--data-dir", help="with --checkpoint: the image folder (cls) or image+mask folder (seg)")
    p.add_argument("--labels", help="cls with --checkpoint: labels CSV (default: from the file names)")
    add_tta_args(p, "with --checkpoint, as the checkpoint says, as hw1.predict does")
    p.add_argument("--batch-size", type=int, default=None, help="(default: 500 for cls, 4 for seg)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="let --json replace a file that is not a JSON output")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def checkpoint_confusion(args):
    # the same loading (and inference plan) as hw1.predict, so both routes score identically
    model = load_model(args.checkpoint, args.task, get_device(args.device))
    return model_confusion(model, args.data_dir, task=get_task(args.task), labels_csv=args.labels, batch_size=args.batch_size,
                           tta=args.tta)


# flags that only one of the two ways of scoring reads: given with the other, they would be ignored
CHECKPOINT_ONLY = ("checkpoint", "data_dir", "labels", "tta", "batch_size", "device")
PRED_ONLY = ("pred", "gt")


def check_args(args):
    """Exactly one way of scoring, with no flag that it would ignore, and an output that may be written."""
    args = check_numbers(args, {"batch_size": AT_LEAST_1})

    def given(names):
        return [n for n in names if getattr(args, n) not in (None, "auto")]

    if args.checkpoint or args.data_dir:
        if not (args.checkpoint and args.data_dir):
            raise UserError("--checkpoint and --data-dir go together (the checkpoint, the folder to evaluate on)")
        ignored = given(PRED_ONLY)
    elif args.pred and args.gt:
        ignored = given(CHECKPOINT_ONLY)
    else:
        raise UserError("give either --pred and --gt, or --checkpoint and --data-dir")
    if ignored:
        mode = "--checkpoint" if args.checkpoint else "--pred"
        raise UserError(f"--{ignored[0].replace('_', '-')}: not used with {mode}; leave it out")
    if args.pred:
        pred, gt = Path(args.pred), Path(args.gt)
        if pred.exists() and gt.exists() and os.path.samefile(pred, gt):  # a slip that would score a perfect 1.0
            raise UserError(f"--pred {pred} and --gt {gt}: the same {'folder' if gt.is_dir() else 'file'}; "
                            "--pred is the predictions to score against it")
    if args.json:
        check_output(args.json, "metrics-json", overwrite=args.overwrite, inputs=[
            (f"--{n.replace('_', '-')}", getattr(args, n)) for n in ("pred", "gt", "checkpoint", "data_dir", "labels")])
    return args


def main(argv=None):
    args = check_args(get_args_parser().parse_args(argv))
    cm = checkpoint_confusion(args) if args.checkpoint else get_task(args.task).score(args.pred, args.gt)
    summary = get_task(args.task).summarize(cm)
    # the file first: a reader of stdout that has gone (| true) must not cost the file
    if args.json:
        atomic_write_text(json.dumps(json_safe(summary), indent=2) + "\n", Path(args.json))
    print("\n".join(get_task(args.task).describe(cm)))
    return summary


if __name__ == "__main__":
    run(main)
