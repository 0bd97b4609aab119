"""What the rest of hw1 knows about a model, in one object per model (:class:`ModelSpec`).

The training scripts take the task, class count, recipe and builder arguments from it; the bench
its input and batch sizes; viz.py and the report its architecture stages; predict and eval its
task. A model's file defines its builder and its spec; ``hw1.models.REGISTRY`` names it.
"""
from dataclasses import dataclass, field
from typing import Callable


def no_builder_args(cfg):
    return {}


@dataclass(frozen=True)
class ModelSpec:
    """One model: how to build it, train it and draw it.

    Attributes:
        name: the registry name (``--model``, ``model_name`` of checkpoints).
        task: ``cls`` (P1, logits) or ``seg`` (P2, ``{"out": logits}``).
        builder: ``builder(**model_config, weights=...)`` returns the ``nn.Module``.
        num_classes: outputs of the model (50 for P1, 7 for P2).
        input_size: side of a training input, the default of the architecture figure and the bench.
        recipe: training-config fields this model fills when no flag sets them (e.g. ``epochs``).
        presets: named sets of flag defaults (``--recipe NAME``), e.g. a recipe tuned for a CPU budget.
        builder_args: ``builder_args(config)`` -> the builder's arguments from a training config,
            without ``num_classes`` and ``weights``.
        bench_batch: the bench's default batch per device type (``cuda``, ``cpu``).
        stages: ``stages(model)`` -> ``[(name, description, [modules]), ...]`` in forward order for
            the architecture figure; None uses the model's top-level children.
    """
    name: str
    task: str
    builder: Callable
    num_classes: int
    input_size: int
    recipe: dict = field(default_factory=dict)
    presets: dict = field(default_factory=dict)
    builder_args: Callable = no_builder_args
    bench_batch: dict = field(default_factory=lambda: {"cuda": 8, "cpu": 2})
    stages: Callable | None = None

    def model_config(self, config):
        """The plain dict a checkpoint records to rebuild the model (``weights`` aside)."""
        return {**self.builder_args(config), "num_classes": self.num_classes}

    def build(self, **model_config):
        return self.builder(**model_config)


def generic_stages(model):
    """Each top-level child of ``model`` as a stage, named and described by its type (a fallback)."""
    return [(name, type(m).__name__, [m]) for name, m in model.named_children()]


# The P1 seed recipe's optimiser, shared by the P1 models (each adds its epochs and weights).
SEED_RECIPE = {"opt": "sgd", "lr": 0.1, "weight_decay": 2e-5}
