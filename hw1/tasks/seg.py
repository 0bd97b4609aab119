"""P2, segmentation: 7-class satellite land cover at 512x512. Everything of the problem that is not
a model: its course data, training config and flags, splits, scorer and summary, prediction writer."""
from dataclasses import dataclass

from hw1 import metrics
from hw1.config import SIDE_RANGES, TASK_GROUP, TrainConfig, knob
from hw1.data.batches import SegBatchTransform
from hw1.data.masks import CLASS_NAMES, NUM_CLASSES, PALETTE, UNKNOWN
from hw1.data.layouts import P2
from hw1.data.scenes import make_seg_demo
from hw1.data.seg import load_seg_split, seg_eval_transform, seg_train_transform
from hw1.losses import CLASS_WEIGHTS, SegLoss, class_weights
from hw1.models import model_names
from hw1.rules import AT_LEAST_0, between
from hw1.scoring import seg_confusion_from_dirs
from hw1.tasks.base import CHECKPOINTS, Task

LAYOUT = P2


@dataclass
class SegConfig(TrainConfig):
    """train_seg.py: P2 segmentation."""
    data_dir: str = LAYOUT.root
    batch_size: int = 8
    model: str = knob("vgg16_fcn32s", "(default: %(default)s)", group=TASK_GROUP, choices=lambda: model_names("seg"))
    weights: str | None = knob(None, "vgg16_fcn32s, vgg16_fcn8s: imagenet|none|PATH (default imagenet); "
                                     "resnet101_fcn: coco|imagenet-backbone|none|PATH (default coco)",
                               group=TASK_GROUP)
    crop_size: int = knob(512, "training crop (default: %(default)s)", group=TASK_GROUP,
                          must=SIDE_RANGES["crop_size"])
    min_scale: float = knob(0.25, "smallest crop area fraction before resizing to --crop-size (default: "
                                  "%(default)s)", group=TASK_GROUP, must=between(0, 1, open_lo=True))
    aux_weight: float = knob(0.0, "resnet101_fcn: weight of the auxiliary head's loss; 0 builds no aux head "
                                  "(default: 0)", group=TASK_GROUP, must=AT_LEAST_0)
    class_weights: str = knob("none", "weight the loss per class by its share of the training pixels: enet = "
                                      "1/ln(1.02 + share), inv-sqrt = 1/sqrt(share), milder (default: %(default)s)",
                              group=TASK_GROUP, choices=CLASS_WEIGHTS)
    lovasz: float = knob(0.0, "add W x the Lovász-softmax loss, a surrogate of each class's IoU, to the "
                              "cross-entropy (default: %(default)s)", group=TASK_GROUP, metavar="W", must=AT_LEAST_0)
    size: int | None = knob(None, "resize every image and mask to this on load; the checkpoint records it and "
                                  "prediction resizes to it, then upsamples the logits to each image's own size",
                            group=TASK_GROUP, must=SIDE_RANGES["size"])
    demo: bool = knob(False, "train a small run on generated scenes (no course data): vgg16_fcn32s's recipe 'demo'",
                      group=TASK_GROUP)

    task = "seg"
    # --demo's generated scenes (which only --demo writes, and rewrites) and its run (which a demo replaces)
    demo_dirs = ("hw1_data/demo_seg", "runs/demo_seg")

    def problems(self):
        p = super().problems()
        if self.aux_weight > 0 and "aux_loss" not in self.spec().hidden:
            p.append(("--aux-weight", self.aux_weight, f"0: {self.model} has no auxiliary head"))
        if self.class_weights not in CLASS_WEIGHTS:  # an args.json's value: the flag has its choices
            p.append(("--class-weights", self.class_weights, ", ".join(CLASS_WEIGHTS)))
        return p

    def input_size(self):
        """Side of a training input: the crop, of the images at ``--size`` (512 when not resized)."""
        return min(self.crop_size, self.size or 512)

    def criterion(self, train_set=None):
        """The loss; with ``--class-weights`` its weights come from ``train_set``'s masks."""
        weight = None
        if self.class_weights != "none":
            if train_set is None:
                raise ValueError("class weights need the training set")
            weight = class_weights(train_set.masks, self.class_weights, num_classes=NUM_CLASSES)
        return SegLoss(aux_weight=self.aux_weight, weight=weight, lovasz=self.lovasz)

    def batch_transform(self):
        """The training crops, flips and turns on whole batches, for ``--loader batched``."""
        return SegBatchTransform(self.crop_size, scale=(self.min_scale, 1.0))


def load_splits(config):
    root = LAYOUT.require(config.data_dir)
    train_set = load_seg_split(root / LAYOUT.train, size=config.size,
                               transform=seg_train_transform(config.crop_size, scale=(config.min_scale, 1.0)))
    val_set = load_seg_split(root / LAYOUT.val, size=config.size, transform=seg_eval_transform())
    return train_set, val_set


def eval_dataset(folder, *, labels_csv=None, size=None, model_size=None):
    """The image + mask pairs of ``folder``, optionally resized to ``size``, to score a model on.

    A model trained at a smaller scale (``model_size``) gets its images at that scale and the masks
    stay at their own size (or the asked one): its logits are upsampled to them, as hw1.predict does.
    """
    return load_seg_split(folder, size=model_size or size, transform=seg_eval_transform(),
                          mask_size=size if model_size else "image")


def make_demo(root):
    return make_seg_demo(root, LAYOUT)


def write_predictions(image_dir, output_dir, **kwargs):
    """:func:`hw1.predict.predict_seg`, imported on use: hw1.predict loads the model stack and asks
    this registry for the shipped checkpoints."""
    from hw1.predict import predict_seg

    return predict_seg(image_dir, output_dir, **kwargs)


TASK = Task(
    name="seg", problem="P2", script="train_seg.py", metric="miou", metric_label="mIoU", per_class="iou",
    layout=LAYOUT, num_classes=NUM_CLASSES,
    # P2's shipped model: VGG16-FCN8s at a quarter of VGG16's width, trained on a CPU budget (the
    # full-width models are hundreds of MB and come through hw1_download.sh)
    default_checkpoint=CHECKPOINTS / "p2_vgg16_fcn8s.pth", shipped_model="vgg16_fcn8s",
    eval_batch=4, config=SegConfig, load_splits=load_splits, eval_dataset=eval_dataset,
    make_demo=make_demo, score=seg_confusion_from_dirs, summarize=metrics.seg_summary, describe=metrics.seg_lines,
    write_predictions=write_predictions, predict_help="P2: folder of satellite images -> folder of colour masks",
    output_name="output_dir", output_noun="masks", dense=True, averaged=UNKNOWN, class_names=CLASS_NAMES,
    palette=tuple(map(tuple, PALETTE.tolist())), per_class_label="IoU",
    metric_help=f"mIoU over classes 0-{UNKNOWN - 1} (the course's metric: one confusion matrix pooled over "
                "all pixels)")
