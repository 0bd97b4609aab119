"""One JSON summary of a training run, read from what the run wrote (metrics.jsonl, args.json).

    python -m hw1.summary runs/densenet --out results/p1_densenet.json
    python -m hw1.summary runs/pilots/* --out results/pilots.json      # several runs: a list

Every number comes from the run folder; the commit is the repository's HEAD when it is a git
checkout (the code that produced a committed result is the code of that commit or earlier).
"""
import argparse
import json
import subprocess
from pathlib import Path

from hw1.cli import run
from hw1.errors import UserError
from hw1.io import atomic_write_text, json_safe
from hw1.models import REGISTRY, get_spec
from hw1.outputs import check_output
from hw1.run_dir import RunDir
from hw1.tasks import config_of, get_task


def git_commit(repo=Path(__file__).resolve().parents[1]):
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def check_records(path, records, keys):
    """Every record of ``path`` (metrics.jsonl) holds ``keys`` as numbers: a hand-edited or foreign
    file is one line naming the line and the key, not a KeyError (an empty file is
    :meth:`RunDir.read_metrics`'s error already)."""
    for line, record in enumerate(records, 1):
        for key in keys:
            value = record.get(key) if isinstance(record, dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{path}: line {line}: {key} is {'missing' if value is None else repr(value)}, "
                                "not a number")


def summarize_run(run_dir):
    folder = RunDir(run_dir)
    args = folder.read_args()
    if args is None:
        raise UserError(f"{run_dir}: not a run folder with args.json and metrics.jsonl (no readable {folder.args.name})")
    records = folder.read_metrics()
    try:
        task = get_task(get_spec(args.get("model")).task)
    except ValueError:
        raise UserError(f"{folder.args}: model {args.get('model')!r} is none of {', '.join(REGISTRY)}") from None
    config = config_of(task.name, args)
    metric, per_class = f"val_{task.metric}", f"val_{task.per_class}"
    check_records(folder.metrics, records, ("epoch", metric, "train_seconds", "train_img_s"))
    best = max(records, key=lambda r: r[metric])
    raw = f"val_raw_{task.metric}"  # with --ema: the trained weights' own score beside the average's
    # a run that gained --ema at a resume has the raw score from that epoch on only
    with_raw = [r[raw] for r in records if raw in r]
    raw_best = {"best_raw": max(with_raw), "last_raw": records[-1][raw]} if raw in records[-1] else {}
    return json_safe({
        "model": config.model,
        "metric": metric.removeprefix("val_"),
        "best": best[metric], "best_epoch": best["epoch"], "last": records[-1][metric], **raw_best,
        "per_class_at_best": best.get(per_class),
        "epochs": records[-1]["epoch"], "planned_epochs": config.epochs,
        "train_seconds": round(sum(r["train_seconds"] for r in records), 1),
        "wall_seconds": records[-1].get("wall_seconds"),
        "train_img_s": round(sum(r["train_img_s"] for r in records) / len(records), 1),
        "device": config.device_name, "torch": config.torch_version,
        "command": config.command, "commit": git_commit(),
    })


def get_args_parser():
    p = argparse.ArgumentParser(prog="python -m hw1.summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="+", help="a run folder; several give a list of summaries")
    p.add_argument("--out", help="write the summary here (default: print it)")
    p.add_argument("--overwrite", action="store_true", help="let --out replace a file that is not a JSON output")
    p.add_argument("--debug", action="store_true")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.out:
        check_output(args.out, "summary-json", inputs=[("RUN_DIR", d) for d in args.run_dir], overwrite=args.overwrite)
    summaries = [summarize_run(d) for d in args.run_dir]
    text = json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2) + "\n"
    if args.out:
        atomic_write_text(text, args.out)
    print(text, end="")


if __name__ == "__main__":
    run(main)
