"""What a problem of the homework is to the rest of hw1: a :class:`~hw1.data.layouts.Layout` of its
course data and a :class:`Task` of direct references to its pieces (each problem's module, ``hw1/tasks/<name>.py``,
makes one)."""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hw1.data.layouts import Layout  # noqa: F401 (a task module names its layout by it)

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


@dataclass(frozen=True)
class Task:
    """One problem: its names and numbers, then the functions and classes that make it, by reference."""
    name: str  # "cls" / "seg": checkpoints' "task", ModelSpec.task
    problem: str  # "P1" / "P2"
    script: str  # the training script
    metric: str  # val_<metric> in metrics.jsonl, what picks best.pth (higher is better)
    metric_label: str  # its name in messages and the report
    per_class: str  # the per-class list of metrics.jsonl: val_<per_class>
    layout: Layout
    num_classes: int
    default_checkpoint: Path  # the shipped model, the default of hw1.predict
    shipped_model: str  # its model, trained by the script's --recipe cpu
    eval_batch: int  # images per batch when scoring a checkpoint
    config: type  # its hw1.config.TrainConfig subclass
    load_splits: Callable  # (config) -> (train set, validation set) of the course data
    eval_dataset: Callable  # (folder, *, labels_csv, size, model_size) -> a labelled dataset to score a model on
    make_demo: Callable  # (root) -> writes the demo's generated data there
    score: Callable  # (pred, gt) -> pooled confusion matrix of a prediction file or folder (eval.py --pred)
    summarize: Callable  # (cm) -> {metric: value, ...} as plain floats and lists, what metrics.jsonl logs
    describe: Callable  # (cm) -> lines that say the score, the headline first (eval.py's print)
    write_predictions: Callable  # (image_dir, output, checkpoint=, device=, tta=, overwrite=) -> what it wrote
    predict_help: str  # python -m hw1.predict NAME: what it does
    output_name: str  # its output argument (output_csv)
    output_noun: str  # what it writes, counted (predictions)
    dense: bool = False  # one label per pixel: targets (N, H, W), inputs at the training crop, --size resizes
    averaged: int | None = None  # the classes its metric averages, 0..averaged-1 (None: all)
    class_names: tuple | None = None  # names for figures and tables (None: numbered)
    palette: tuple | None = None  # an (R, G, B) 0-255 colour per class for figures (None: a colour map's)
    per_class_label: str = "accuracy"  # what val_<per_class> holds, in figures
    metric_help: str = ""  # the metric in one phrase, for the report

    def course_model(self, slot):
        """The model of the course's ``slot`` (A or B) of this problem, as the models' specs say."""
        from hw1.models import get_spec, model_names

        return next(n for n in model_names(self.name) if get_spec(n).slot == slot)
