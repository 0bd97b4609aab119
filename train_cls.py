"""Train a P1 classifier: the hand-written DenseNet (model A) or torchvision's ConvNeXt (model B).

    python train_cls.py --model densenet                    # seed recipe, 50 epochs
    python train_cls.py --model convnext --weights imagenet # 20 epochs from ImageNet weights
    python train_cls.py --demo                              # 1-minute run on bundled digits
"""
import argparse
import logging
from pathlib import Path

from torch import nn

from hw1 import distributed as dist
from hw1.cli import add_training_args, require_layout, run, start_run
from hw1.data.cls import AUGMENTATIONS, cls_eval_transform, cls_train_transform, load_cls_split
from hw1.data.demo import make_cls_demo
from hw1.models import build_model
from hw1.runtime import seed_everything, setup_logging
from hw1.trainer import fit, load_resume

log = logging.getLogger("train_cls")
EPOCHS = {"densenet": 50, "convnext": 20}
NUM_CLASSES = 50


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(EPOCHS), default="densenet")
    p.add_argument("--epochs", type=int, default=None, help="default: 50 for densenet, 20 for convnext")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="(default: %(default)s)")
    p.add_argument("--aug", choices=AUGMENTATIONS, default="seed",
                   help="seed: crop+flip, AutoAugment, RandomErasing; light: crop+flip (default: %(default)s)")
    p.add_argument("--demo", action="store_true",
                   help="train a small DenseNet on generated digits (no course data), then predict and score")
    g = p.add_argument_group("densenet")
    g.add_argument("--depth", type=int, default=100, help="DenseNet-BC depth, 6n+4 (default: %(default)s)")
    g.add_argument("--growth-rate", type=int, default=24, help="(default: %(default)s)")
    g.add_argument("--compression", type=float, default=0.5, help="(default: %(default)s)")
    g.add_argument("--drop-rate", type=float, default=0.0, help="(default: %(default)s)")
    g = p.add_argument_group("convnext")
    g.add_argument("--variant", default="convnext_tiny", help="(default: %(default)s)")
    g.add_argument("--img-size", type=int, default=224, help="input is upsampled to this (default: %(default)s)")
    g.add_argument("--weights", default=None, help="imagenet, none or a state-dict path (default: imagenet for "
                                                   "convnext, none for densenet)")
    return add_training_args(p, data_dir="hw1_data/p1_data", lr=0.1, batch_size=128, weight_decay=2e-5)


# The demo: generated digits and a small DenseNet, sized to finish in about a minute on 2 cores.
# Explicit flags still win over these (they are parser defaults, not overrides).
DEMO_DEFAULTS = {"data_dir": "hw1_data/demo_cls", "out_dir": "runs/demo_cls", "depth": 22, "growth_rate": 12,
                 "epochs": 15, "batch_size": 64, "aug": "none"}


def model_config(args):
    if args.model == "densenet":
        return {"depth": args.depth, "growth_rate": args.growth_rate, "compression": args.compression,
                "drop_rate": args.drop_rate, "num_classes": NUM_CLASSES}
    return {"variant": args.variant, "img_size": args.img_size, "num_classes": NUM_CLASSES}


def load_splits(data_dir, aug):
    root = require_layout(data_dir, ("train_50", "val_50"), "p1_data.tar.gz")
    csv = root / "val_gt.csv"
    train = load_cls_split(root / "train_50", transform=cls_train_transform(aug))
    val = load_cls_split(root / "val_50", labels_csv=csv if csv.is_file() else None, transform=cls_eval_transform())
    return train, val


def main(argv=None):
    args = start_run("train_cls.py", get_args_parser(), argv, DEMO_DEFAULTS, make_cls_demo)
    setup_logging()
    args.epochs = args.epochs or EPOCHS[args.model]
    args.out_dir = args.out_dir or f"runs/{args.model}"
    if args.weights is None:
        args.weights = "imagenet" if args.model == "convnext" else "none"
    seed_everything(args.seed)
    config = model_config(args)
    resume = load_resume(args, task="cls", model_name=args.model, model_config=config)
    train_set, val_set = load_splits(args.data_dir, args.aug)
    # a resumed run takes every weight from its checkpoint: no pretrained download
    model = build_model(args.model, **config, weights=args.weights if resume is None else "none")
    record = fit(model=model, model_name=args.model, model_config=config, task="cls", num_classes=NUM_CLASSES,
                 train_set=train_set, val_set=val_set, args=args, metric="acc", resume=resume,
                 criterion=nn.CrossEntropyLoss(label_smoothing=args.label_smoothing))
    if args.demo and dist.is_main():
        from hw1.metrics import accuracy
        from hw1.predict import predict_cls
        from hw1.scoring import cls_confusion_from_csv

        root = Path(args.data_dir)
        rows = predict_cls(root / "val_50", Path(args.out_dir) / "val_pred.csv",
                           checkpoint=Path(args.out_dir) / "best.pth", device=args.device)
        acc = accuracy(cls_confusion_from_csv(Path(args.out_dir) / "val_pred.csv", root / "val_gt.csv", NUM_CLASSES))
        print(f"demo: wrote {args.out_dir}/best.pth and {args.out_dir}/val_pred.csv; "
              f"val accuracy of the predictions {acc:.4f} on {len(rows)} images")
    return record


if __name__ == "__main__":
    run(main)
