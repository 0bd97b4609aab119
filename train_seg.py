"""Train a P2 segmenter: the hand-written VGG16-FCN32s (model A) or VGG16-FCN8s, or torchvision's
FCN-ResNet101 (model B).

    python train_seg.py --model vgg16_fcn32s                 # ImageNet VGG16 weights (README: Pretrained weights)
    python train_seg.py --model resnet101_fcn                # COCO-VOC weights + 1x1 conv 21->7
    python train_seg.py --model vgg16_fcn8s --recipe cpu     # the shipped model, from scratch on 2 CPU cores
    python train_seg.py --demo                               # a few minutes on generated scenes
"""
import argparse

from hw1.cli import run
from hw1.flags import add_training_args
from hw1.tasks.seg import TASK
from hw1.trainer import start_run, train


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_training_args(p, TASK.config)


def main(argv=None):
    config = start_run(get_args_parser(), argv, TASK)
    TASK.layout.require(config.data_dir)  # a missing data folder is refused before a model is built or a file written
    return train(config, TASK.load_splits)


if __name__ == "__main__":
    run(main)
