"""Train a P1 classifier: the hand-written DenseNet (model A) or torchvision's ConvNeXt (model B).

    python train_cls.py --model densenet                    # seed recipe, 50 epochs
    python train_cls.py --model convnext --weights imagenet # 20 epochs from ImageNet weights
    python train_cls.py --demo                              # 1-minute run on bundled digits
"""
import argparse
import logging
from pathlib import Path

from hw1 import distributed as dist
from hw1.cli import add_training_args, run, start_run
from hw1.config import ClsConfig
from hw1.data.batches import ClsBatchTransform
from hw1.data.cls import AUGMENTATIONS, cls_eval_transform, cls_train_transform, load_cls_split
from hw1.data.demo import make_cls_demo
from hw1.models import model_names
from hw1.run_dir import RunDir
from hw1.tasks import get_task
from hw1.trainer import train

log = logging.getLogger("train_cls")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=model_names("cls"), help="(default: %(default)s)")
    p.add_argument("--weights", help="imagenet, none or a state-dict path (default: the model's recipe: imagenet for "
                                     "convnext, none for densenet)")
    p.add_argument("--label-smoothing", type=float, help="(default: %(default)s)")
    p.add_argument("--aug", choices=AUGMENTATIONS,
                   help="seed: crop+flip, AutoAugment, RandomErasing; light: crop+flip (default: %(default)s)")
    p.add_argument("--flip", choices=ClsBatchTransform.FLIPS,
                   help="the training crops' left-right flip: random, or alternate (each image mirrored on every "
                        "other epoch, as the CIFAR-10 speed runs do; --loader batched) (default: %(default)s)")
    p.add_argument("--cutout", type=int, metavar="N",
                   help="zero one N x N square of each training image (Cutout; --loader batched; the CIFAR-10 "
                        "speed runs use 12); 0: none (default: %(default)s)")
    p.add_argument("--demo", action="store_true",
                   help="train a small DenseNet on generated digits (no course data), then predict and score: "
                        "densenet's recipe 'demo'")
    return add_training_args(p, ClsConfig)


LAYOUT = get_task("cls").layout


def load_splits(config):
    root = LAYOUT.require(config.data_dir)
    csv = root / LAYOUT.labels
    train_set = load_cls_split(root / LAYOUT.train, transform=cls_train_transform(config.aug))
    val_set = load_cls_split(root / LAYOUT.val, labels_csv=csv if csv.is_file() else None,
                             transform=cls_eval_transform())
    return train_set, val_set


def main(argv=None):
    config = start_run("train_cls.py", get_args_parser(), argv, make_cls_demo, ClsConfig)
    LAYOUT.require(config.data_dir)  # a missing data folder is refused before a model is built or a file written
    record = train(config, load_splits)
    if config.demo and dist.is_main():
        from hw1.metrics import accuracy
        from hw1.predict import predict_cls
        from hw1.scoring import cls_confusion_from_csv

        root, out = Path(config.data_dir), RunDir(config.out_dir)
        rows = predict_cls(root / LAYOUT.val, out.path / "val_pred.csv", checkpoint=out.best, device=config.device)
        acc = accuracy(cls_confusion_from_csv(out.path / "val_pred.csv", root / LAYOUT.labels))
        print(f"demo: wrote {out.best} and {out.path / 'val_pred.csv'}; "
              f"val accuracy of the predictions {acc:.4f} on {len(rows)} images")
    return record


if __name__ == "__main__":
    run(main)
