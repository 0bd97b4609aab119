"""Train a P2 segmenter: the hand-written VGG16-FCN32s (model A) or torchvision's FCN-ResNet101 (model B).

    python train_seg.py --model vgg16_fcn32s                 # ImageNet VGG16 weights (see README)
    python train_seg.py --model resnet101_fcn                # COCO-VOC weights + 1x1 conv 21->7
    python train_seg.py --model vgg16_fcn32s --weights none  # from scratch
    python train_seg.py --demo                               # a few minutes on generated scenes
"""
import argparse

from hw1.cli import add_training_args, require_layout, run, start_run
from hw1.data.masks import NUM_CLASSES
from hw1.data.scenes import make_seg_demo
from hw1.data.seg import load_seg_split, seg_eval_transform, seg_train_transform
from hw1.losses import SegLoss
from hw1.models import build_model
from hw1.runtime import seed_everything, setup_logging
from hw1.trainer import fit, load_resume

# Per-model recipes (flags override): VGG without batch norm wants Adam's per-weight steps;
# the ResNet follows torchvision's segmentation reference (SGD, lr 0.02 at batch 16 -> 0.01 at 8).
RECIPES = {
    "vgg16_fcn32s": {"opt": "adamw", "lr": 1e-4, "weight_decay": 1e-4, "epochs": 30, "weights": "imagenet"},
    "resnet101_fcn": {"opt": "sgd", "lr": 0.01, "weight_decay": 1e-4, "epochs": 30, "weights": "coco"},
}
# The demo trains from scratch on 2 CPU cores in a few minutes: VGG16-BN (plain VGG barely moves in
# so few steps) with narrow fc6/fc7, on 64 generated 128x128 scenes.
DEMO_DEFAULTS = {"data_dir": "hw1_data/demo_seg", "out_dir": "runs/demo_seg", "model": "vgg16_fcn32s",
                 "weights": "none", "batch_norm": True, "fc_channels": 512, "epochs": 20, "batch_size": 8,
                 "crop_size": 128, "lr": 1e-3}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(RECIPES), default="vgg16_fcn32s")
    p.add_argument("--epochs", type=int, default=None, help="default: the model's recipe (30)")
    p.add_argument("--weights", default=None,
                   help="vgg16_fcn32s: imagenet|none|PATH (default imagenet); "
                        "resnet101_fcn: coco|imagenet-backbone|none|PATH (default coco)")
    p.add_argument("--crop-size", type=int, default=512, help="training crop (default: %(default)s)")
    p.add_argument("--min-scale", type=float, default=0.25,
                   help="smallest crop area fraction before resizing to --crop-size (default: %(default)s)")
    p.add_argument("--aux-weight", type=float, default=0.0,
                   help="resnet101_fcn: weight of the auxiliary head's loss; 0 builds no aux head (default: 0)")
    p.add_argument("--fc-channels", type=int, default=4096,
                   help="vgg16_fcn32s: width of fc6/fc7; the ImageNet weights need 4096 (default: %(default)s)")
    p.add_argument("--batch-norm", action="store_true",
                   help="vgg16_fcn32s: VGG16-BN trunk (trains far better from scratch; imagenet = vgg16_bn weights)")
    p.add_argument("--size", type=int, default=None, help="resize every image and mask to this on load (quick runs)")
    p.add_argument("--demo", action="store_true", help="train a small run on generated scenes (no course data)")
    # lr, weight decay and the optimizer default to the model's recipe (None = recipe)
    return add_training_args(p, data_dir="hw1_data/p2_data", lr=None, batch_size=8, weight_decay=None, opt=None)


def load_splits(args):
    root = require_layout(args.data_dir, ("train", "validation"), "p2_data.tar.gz")
    train = load_seg_split(root / "train", size=args.size,
                           transform=seg_train_transform(args.crop_size, scale=(args.min_scale, 1.0)))
    val = load_seg_split(root / "validation", size=args.size, transform=seg_eval_transform())
    return train, val


def main(argv=None):
    args = start_run("train_seg.py", get_args_parser(), argv, DEMO_DEFAULTS, make_seg_demo)
    for key, value in RECIPES[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out_dir = args.out_dir or f"runs/{args.model}"
    setup_logging()
    seed_everything(args.seed)
    config = {"num_classes": NUM_CLASSES}
    if args.model == "resnet101_fcn":
        config["aux_loss"] = args.aux_weight > 0
    else:
        config.update(fc_channels=args.fc_channels, batch_norm=args.batch_norm)
    resume = load_resume(args, task="seg", model_name=args.model, model_config=config)
    # a resumed run takes every weight from its checkpoint: no pretrained download
    model = build_model(args.model, **config, weights=args.weights if resume is None else "none")
    train_set, val_set = load_splits(args)
    return fit(model=model, model_name=args.model, model_config=config, task="seg", num_classes=NUM_CLASSES,
               train_set=train_set, val_set=val_set, args=args, metric="miou", resume=resume,
               criterion=SegLoss(aux_weight=args.aux_weight))


if __name__ == "__main__":
    run(main)
