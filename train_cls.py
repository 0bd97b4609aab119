"""Train a P1 classifier: the hand-written DenseNet (model A) or torchvision's ConvNeXt (model B).

    python train_cls.py --model densenet                    # seed recipe, 50 epochs
    python train_cls.py --model convnext --weights imagenet # 20 epochs from ImageNet weights
    python train_cls.py --demo                              # 1-minute run on bundled digits
"""
import argparse
import logging
from pathlib import Path

from hw1 import distributed as dist
from hw1.cli import run
from hw1.flags import add_training_args
from hw1.run_dir import RunDir
from hw1.tasks.cls import TASK
from hw1.trainer import start_run, train

log = logging.getLogger("train_cls")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_training_args(p, TASK.config)


def main(argv=None):
    config = start_run(get_args_parser(), argv, TASK)
    TASK.layout.require(config.data_dir)  # a missing data folder is refused before a model is built or a file written
    record = train(config, TASK.load_splits)
    if config.demo and dist.is_main():
        from hw1.metrics import accuracy

        root, out, layout = Path(config.data_dir), RunDir(config.out_dir), TASK.layout
        rows = TASK.write_predictions(root / layout.val, out.path / "val_pred.csv", checkpoint=out.best,
                                      device=config.device)
        acc = accuracy(TASK.score(out.path / "val_pred.csv", root / layout.labels))
        print(f"demo: wrote {out.best} and {out.path / 'val_pred.csv'}; "
              f"val accuracy of the predictions {acc:.4f} on {len(rows)} images")
    return record


if __name__ == "__main__":
    run(main)
