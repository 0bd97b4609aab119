"""Train a P2 segmenter: the hand-written VGG16-FCN32s (model A) or VGG16-FCN8s, or torchvision's
FCN-ResNet101 (model B).

    python train_seg.py --model vgg16_fcn32s                 # ImageNet VGG16 weights (README: Pretrained weights)
    python train_seg.py --model resnet101_fcn                # COCO-VOC weights + 1x1 conv 21->7
    python train_seg.py --model vgg16_fcn8s --recipe cpu     # the shipped model, from scratch on 2 CPU cores
    python train_seg.py --demo                               # a few minutes on generated scenes
"""
import argparse

from hw1.cli import add_training_args, run, start_run
from hw1.config import SegConfig
from hw1.data.scenes import make_seg_demo
from hw1.data.seg import load_seg_split, seg_eval_transform, seg_train_transform
from hw1.losses import CLASS_WEIGHTS
from hw1.models import model_names
from hw1.tasks import get_task
from hw1.trainer import train

def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=model_names("seg"), help="(default: %(default)s)")
    p.add_argument("--weights",
                   help="vgg16_fcn32s, vgg16_fcn8s: imagenet|none|PATH (default imagenet); "
                        "resnet101_fcn: coco|imagenet-backbone|none|PATH (default coco)")
    p.add_argument("--crop-size", type=int, help="training crop (default: %(default)s)")
    p.add_argument("--min-scale", type=float,
                   help="smallest crop area fraction before resizing to --crop-size (default: %(default)s)")
    p.add_argument("--aux-weight", type=float,
                   help="resnet101_fcn: weight of the auxiliary head's loss; 0 builds no aux head (default: 0)")
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS,
                   help="weight the loss per class by its share of the training pixels: enet = 1/ln(1.02 + share), "
                        "inv-sqrt = 1/sqrt(share), milder (default: %(default)s)")
    p.add_argument("--lovasz", type=float, metavar="W",
                   help="add W x the Lovász-softmax loss, a surrogate of each class's IoU, to the "
                        "cross-entropy (default: %(default)s)")
    p.add_argument("--size", type=int,
                   help="resize every image and mask to this on load; the checkpoint records it and "
                        "prediction resizes to it, then upsamples the logits to each image's own size")
    p.add_argument("--demo", action="store_true",
                   help="train a small run on generated scenes (no course data): vgg16_fcn32s's recipe 'demo'")
    return add_training_args(p, SegConfig)


LAYOUT = get_task("seg").layout


def load_splits(config):
    root = LAYOUT.require(config.data_dir)
    train_set = load_seg_split(root / LAYOUT.train, size=config.size,
                               transform=seg_train_transform(config.crop_size, scale=(config.min_scale, 1.0)))
    val_set = load_seg_split(root / LAYOUT.val, size=config.size, transform=seg_eval_transform())
    return train_set, val_set


def main(argv=None):
    config = start_run("train_seg.py", get_args_parser(), argv, make_seg_demo, SegConfig)
    LAYOUT.require(config.data_dir)  # a missing data folder is refused before a model is built or a file written
    return train(config, load_splits)


if __name__ == "__main__":
    run(main)
