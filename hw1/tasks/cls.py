"""P1, classification: 50 classes of 32x32 photos. Everything of the problem that is not a model:
its course data, training config and flags, splits, scorer and summary, prediction writer."""
from dataclasses import dataclass

from hw1 import metrics
from hw1.config import TASK_GROUP, TrainConfig, knob
from hw1.data.batches import ClsBatchTransform
from hw1.data.cls import (AUGMENTATIONS, IMG_SIZE, NUM_CLASSES, cls_eval_transform, cls_train_transform,
                          load_cls_split)
from hw1.data.demo import make_cls_demo
from hw1.data.layouts import P1
from hw1.models import model_names
from hw1.rules import between
from hw1.scoring import cls_confusion_from_csv
from hw1.tasks.base import CHECKPOINTS, Task

# Beta(alpha, alpha) is U-shaped below 1, uniform at 1, peaked at 0.5 above; past 100 it is a
# constant half-and-half mix
MAX_MIX_ALPHA = 100

LAYOUT = P1


@dataclass
class ClsConfig(TrainConfig):
    """train_cls.py: P1 classification."""
    data_dir: str = LAYOUT.root
    batch_size: int = 128
    model: str = knob("densenet", "(default: %(default)s)", group=TASK_GROUP, choices=lambda: model_names("cls"))
    weights: str | None = knob(None, "imagenet, none or a state-dict path (default: the model's recipe: imagenet "
                                     "for convnext, none for densenet)", group=TASK_GROUP)
    label_smoothing: float = knob(0.1, "(default: %(default)s)", group=TASK_GROUP,
                                  must=between(0, 1, open_hi=True))
    aug: str = knob("seed", "seed: crop+flip, AutoAugment, RandomErasing; light: crop+flip (default: %(default)s)",
                    group=TASK_GROUP, choices=AUGMENTATIONS)
    flip: str = knob("random", "the training crops' left-right flip: random, or alternate (each image mirrored on "
                               "every other epoch, as the CIFAR-10 speed runs do; --loader batched) (default: "
                               "%(default)s)", group=TASK_GROUP, choices=ClsBatchTransform.FLIPS)
    cutout: int = knob(0, "zero one N x N square of each training image (Cutout; --loader batched; the CIFAR-10 "
                          "speed runs use 12); 0: none (default: %(default)s)", group=TASK_GROUP, metavar="N")
    mixup: float = knob(0.0, "Mixup: each training image blended with the batch's previous one, by a share drawn "
                             "from Beta(ALPHA, ALPHA), the label likewise (--loader batched); 0: none (default: "
                             "%(default)s)", group=TASK_GROUP, metavar="ALPHA",
                        must=between(0, MAX_MIX_ALPHA, note=" (0: none)"))
    cutmix: float = knob(0.0, "CutMix: a box of the batch's previous image pasted into each training image, the "
                              "labels weighted by area, the share drawn from Beta(ALPHA, ALPHA); with --mixup too, "
                              "each batch takes one of the two at random (--loader batched); 0: none (default: "
                              "%(default)s)", group=TASK_GROUP, metavar="ALPHA",
                         must=between(0, MAX_MIX_ALPHA, note=" (0: none)"))
    mix_prob: float = knob(1.0, "the share of training batches that --mixup / --cutmix mix, the others left as "
                                "they are (the CutMix paper's CIFAR runs: 0.5) (default: %(default)s)",
                           group=TASK_GROUP, metavar="P", must=between(0, 1))
    demo: bool = knob(False, "train a small DenseNet on generated digits (no course data), then predict and score: "
                             "densenet's recipe 'demo'", group=TASK_GROUP)

    task = "cls"
    # --demo's digits (which only --demo writes, and rewrites) and its run (which a demo replaces)
    demo_dirs = ("hw1_data/demo_cls", "runs/demo_cls")

    def problems(self):
        p = super().problems()
        if not 0 <= self.cutout <= self.input_size():
            p.append(("--cutout", self.cutout, f"in [0, {self.input_size()}] (0: none)"))
        if self.loader != "batched":  # these run on whole batches
            p += [(flag, value, f"{off} with --loader workers (it needs --loader batched)")
                  for flag, value, off in (("--cutout", self.cutout, 0), ("--mixup", self.mixup, 0),
                                           ("--cutmix", self.cutmix, 0), ("--flip", self.flip, "random"))
                  if value != off]
        return p

    def input_size(self):
        """Side of a training input (the images' own: 32)."""
        return IMG_SIZE

    def criterion(self, train_set=None):
        from torch import nn

        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    def batch_transform(self):
        """``--aug`` on whole batches, for ``--loader batched``."""
        return ClsBatchTransform(self.aug, flip=self.flip, seed=self.seed, cutout=self.cutout, mixup=self.mixup,
                                 cutmix=self.cutmix, mix_prob=self.mix_prob)


def load_splits(config):
    root = LAYOUT.require(config.data_dir)
    csv = root / LAYOUT.labels
    train_set = load_cls_split(root / LAYOUT.train, transform=cls_train_transform(config.aug))
    val_set = load_cls_split(root / LAYOUT.val, labels_csv=csv if csv.is_file() else None,
                             transform=cls_eval_transform())
    return train_set, val_set


def eval_dataset(folder, *, labels_csv=None, size=None, model_size=None):
    """The images of ``folder`` named ``{label}_{id}`` (or labelled by ``labels_csv``), to score a model on."""
    return load_cls_split(folder, labels_csv=labels_csv, transform=cls_eval_transform())


def make_demo(root):
    return make_cls_demo(root, LAYOUT)


def write_predictions(image_dir, output_csv, **kwargs):
    """:func:`hw1.predict.predict_cls`, imported on use: hw1.predict loads the model stack and asks
    this registry for the shipped checkpoints."""
    from hw1.predict import predict_cls

    return predict_cls(image_dir, output_csv, **kwargs)


TASK = Task(
    name="cls", problem="P1", script="train_cls.py", metric="acc", metric_label="accuracy", per_class="per_class_acc",
    layout=LAYOUT, num_classes=NUM_CLASSES, default_checkpoint=CHECKPOINTS / "p1_densenet.pth",
    shipped_model="densenet",
    eval_batch=500, config=ClsConfig, load_splits=load_splits, eval_dataset=eval_dataset,
    make_demo=make_demo, score=cls_confusion_from_csv, summarize=metrics.cls_summary, describe=metrics.cls_lines,
    write_predictions=write_predictions, predict_help="P1: folder of images -> filename,label CSV",
    output_name="output_csv", output_noun="predictions", metric_help="accuracy over all validation images")
