"""The homework's two problems, one :class:`Task` each: what differs between P1 and P2 lives here.

A task's training script, metric (its key in ``metrics.jsonl``, its name; higher is better for
both), class count, training config, data layout (the course's folder and file names), scorer of
a prediction file or folder, prediction writer and shipped checkpoint. The
rest of hw1 asks the task (:func:`get_task`) instead of branching on its name, so a third problem
is one more entry here plus its config class, data loading and scorer.
"""
import importlib
from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def _load(target):
    """The object ``"module:attribute"`` names, imported when first needed (torch-heavy modules
    stay unimported for a command that never uses them)."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Layout:
    """The course's files of one problem, as extracted into ``hw1_data/``."""
    folder: str  # under hw1_data/: p1_data
    archive: str  # the course's archive of it: p1_data.tar.gz
    train: str  # the split folders in it
    val: str
    labels: str | None = None  # a filename,label CSV of the validation split beside them (P1)
    image_suffix: str | None = None  # P2's pairs: xxxx_sat.jpg + xxxx_mask.png
    mask_suffix: str | None = None

    @property
    def root(self):
        return f"hw1_data/{self.folder}"

    def require(self, data_dir):
        """``data_dir`` holding both split folders, or a one-line error saying how to make it."""
        from hw1.cli import require_layout

        return require_layout(data_dir, (self.train, self.val), self.archive)


@dataclass(frozen=True)
class Task:
    name: str  # "cls" / "seg": checkpoints' "task", ModelSpec.task
    problem: str  # "P1" / "P2"
    script: str  # the training script
    metric: str  # val_<metric> in metrics.jsonl, what picks best.pth (higher is better)
    metric_label: str  # its name in messages and the report
    per_class: str  # the per-class list of metrics.jsonl: val_<per_class>
    layout: Layout
    default_checkpoint: Path  # the shipped model, the default of hw1.predict
    shipped_model: str  # its model, trained by the script's --recipe cpu
    eval_batch: int  # images per batch when scoring a checkpoint
    classes: str  # "module:attribute" of its class count
    scorer: str  # "module:attribute" of score(pred, gt) -> confusion matrix, for eval.py --pred
    writer: str  # "module:attribute" of write(image_dir, output, ...), hw1.predict's
    summary: str  # "module:attribute" of summary(cm) -> {metric: value}, what metrics.jsonl logs
    lines: str  # "module:attribute" of lines(cm) -> what eval.py prints

    @property
    def num_classes(self):
        return _load(self.classes)

    @property
    def config(self):
        """Its :class:`hw1.config.TrainConfig` subclass (the one whose ``task`` is this task's name)."""
        from hw1.config import TRAIN_CONFIGS

        return TRAIN_CONFIGS[self.name]

    def score(self, pred, gt):
        """The pooled confusion matrix of predictions ``pred`` against ground truth ``gt`` (files or folders)."""
        return _load(self.scorer)(pred, gt)

    def course_model(self, slot):
        """The model of the course's ``slot`` (A or B) of this problem, as the models' specs say."""
        from hw1.models import get_spec, model_names

        return next(n for n in model_names(self.name) if get_spec(n).slot == slot)

    def write_predictions(self, image_dir, output, **kwargs):
        return _load(self.writer)(image_dir, output, **kwargs)

    def summarize(self, cm):
        """The task's metrics of a confusion matrix, as plain floats and lists (``metric`` among them)."""
        return _load(self.summary)(cm)

    def describe(self, cm):
        """Lines that say the score of a confusion matrix, the headline first."""
        return _load(self.lines)(cm)


TASKS = {
    "cls": Task(
        name="cls", problem="P1", script="train_cls.py", metric="acc", metric_label="accuracy",
        per_class="per_class_acc",
        layout=Layout(folder="p1_data", archive="p1_data.tar.gz", train="train_50", val="val_50", labels="val_gt.csv"),
        default_checkpoint=CHECKPOINTS / "p1_densenet.pth", shipped_model="densenet", eval_batch=500,
        classes="hw1.data.cls:NUM_CLASSES",
        scorer="hw1.scoring:cls_confusion_from_csv", writer="hw1.predict:predict_cls",
        summary="hw1.metrics:cls_summary", lines="hw1.metrics:cls_lines"),
    "seg": Task(
        name="seg", problem="P2", script="train_seg.py", metric="miou", metric_label="mIoU", per_class="iou",
        layout=Layout(folder="p2_data", archive="p2_data.tar.gz", train="train", val="validation",
                      image_suffix="_sat.jpg", mask_suffix="_mask.png"),
        # P2's shipped model: VGG16-FCN8s at a quarter of VGG16's width, trained on a CPU budget (the
        # full-width models are hundreds of MB and come through hw1_download.sh)
        default_checkpoint=CHECKPOINTS / "p2_vgg16_fcn8s.pth", shipped_model="vgg16_fcn8s", eval_batch=4,
        classes="hw1.data.masks:NUM_CLASSES",
        scorer="hw1.scoring:seg_confusion_from_dirs", writer="hw1.predict:predict_seg",
        summary="hw1.metrics:seg_summary", lines="hw1.metrics:seg_lines"),
}


def get_task(name):
    """The :class:`Task` named ``name`` (``cls`` or ``seg``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]
