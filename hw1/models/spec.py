"""What the rest of hw1 knows about a model, in one object per model (:class:`ModelSpec`).

The training scripts take the task, class count, recipes and hyperparameters (the builder's
keyword-only arguments) from it; the bench its input and batch sizes; viz.py and the report its
architecture stages; predict and eval its task. A model's file defines its builder and its spec;
``hw1.models.REGISTRY`` names it.
"""
import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Callable

# builder arguments that are not hyperparameters: the task fixes one, the run's --weights the other
NOT_HYPERPARAMETERS = ("num_classes", "weights")


class ArgError(ValueError):
    """A builder argument that the model does not take, or out of its range."""

    def __init__(self, name, value, must):
        super().__init__(f"{name}={value!r}: {must}")
        self.name, self.value, self.must = name, value, must

    def as_flag(self, flagged):
        """The error as the command line gave it: ``--depth 11: ...`` for a hyperparameter that has a
        flag (``flagged``: the names of those, :func:`hw1.models.hyperparameter_names`),
        ``--model-config Depth=10: ...`` for a name that no flag has."""
        if self.name in flagged:
            return f"--{self.name.replace('_', '-')} {self.value}: {self.must}"
        return f"--model-config {self.name}={self.value}: {self.must}"


@dataclass(frozen=True)
class ModelSpec:
    """One model: how to build it, train it and draw it.

    Attributes:
        name: the registry name (``--model``, ``model_name`` of checkpoints).
        task: ``cls`` (P1, logits) or ``seg`` (P2, ``{"out": logits}``).
        builder: ``builder(*, <hyperparameters>, num_classes, weights)`` returns the ``nn.Module``.
            Its keyword-only arguments are the model's hyperparameters, with their defaults there
            and only there: the training scripts' and the bench's flags, the checkpoint's
            ``model_config`` and the figures all come from its signature (:meth:`hyperparameters`).
        num_classes: outputs of the model (50 for P1, 7 for P2).
        input_size: side of a training input, the default of the architecture figure and the bench.
        recipes: named sets of training-config fields and hyperparameters: ``default`` fills what
            the dataclass leaves open (``lr``, ``epochs``, ``weights``), ``--recipe NAME`` lays
            another over it (``cpu``: a recipe tuned for a CPU budget), ``--demo`` is ``demo``;
            the shipped models' are in :mod:`hw1.recipes`, with their reasons.
        ranges: ``{hyperparameter: (test, what it must be)}``, checked by :meth:`model_config`.
        help: ``{hyperparameter: text}`` for its flag.
        hidden: builder arguments that are no flags, because the run derives them (:attr:`derived`).
        derived: ``derived(config)`` -> those builder arguments, from the training config.
        slot: the course's slot of the model in its problem (``A``: from scratch, ``B``: pretrained).
        bench_batch: the bench's default batch per device type (``cuda``, ``cpu``).
        renamed: ``renamed(name, model_config)`` -> today's ``(name, model_config)`` of a checkpoint
            saved under this model's name by an older version (:func:`hw1.models.current_name`).
        stages: ``stages(model)`` -> ``[(name, description, [modules]), ...]`` in forward order for
            the architecture figure; None uses the model's top-level children.
    """
    name: str
    task: str
    builder: Callable
    num_classes: int
    input_size: int
    recipes: dict = field(default_factory=dict)
    ranges: dict = field(default_factory=dict)
    help: dict = field(default_factory=dict)
    hidden: tuple = ()
    derived: Callable = lambda config: {}  # noqa: E731
    slot: str | None = None
    bench_batch: dict = field(default_factory=lambda: {"cuda": 8, "cpu": 2})
    stages: Callable | None = None
    renamed: Callable | None = None

    def hyperparameters(self):
        """``{name: inspect.Parameter}`` of the builder's keyword-only arguments that are flags."""
        return {name: p for name, p in inspect.signature(self.builder).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name not in NOT_HYPERPARAMETERS + self.hidden}

    def model_config(self, given=None, config=None):
        """The builder's arguments (``weights`` aside) with the defaults filled in: what a checkpoint
        records to rebuild the model, so that two configs compare like with like.

        ``given`` are hyperparameters (flags, a recipe, a checkpoint's ``model_config``), ``config``
        the training config the :attr:`derived` arguments come from. An argument the model does not
        take, a value of the wrong type, or one out of its range is an :class:`ArgError`.
        """
        params = self.hyperparameters()
        given = {k: v for k, v in (given or {}).items() if k != "num_classes"}
        signature = inspect.signature(self.builder).parameters
        hidden = {k: given.pop(k, signature[k].default) for k in self.hidden}
        for name, value in given.items():
            if name not in params:
                raise ArgError(name, value, f"{self.name} takes no {name} (it takes {', '.join(params) or 'none'})")
            _check_type(name, value, params[name])
            if name in self.ranges and not self.ranges[name][0](value):
                raise ArgError(name, value, f"must be {self.ranges[name][1]}")
        defaults = {name: p.default for name, p in params.items()}
        derived = self.derived(config) if config is not None else hidden
        return {**defaults, **given, **derived, "num_classes": self.num_classes}

    def build(self, **model_config):
        return self.builder(**model_config)


def _check_type(name, value, param):
    """``value`` one of ``param``'s ``Literal`` choices, or of the type of its default (an int
    where a float goes; a float must be finite)."""
    choices = choices_of(param)
    if choices:
        if value not in choices:
            raise ArgError(name, value, f"must be one of {', '.join(map(str, choices))}")
        return
    default, number = param.default, not isinstance(value, bool) and isinstance(value, (int, float))
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "True or False"
    elif isinstance(default, int):
        ok, kind = number and isinstance(value, int), "an integer"
    elif isinstance(default, float):
        ok, kind = number and math.isfinite(value), "a finite number"
    else:
        ok, kind = not isinstance(default, str) or isinstance(value, str), "text"
    if not ok:
        raise ArgError(name, value, f"must be {kind}")


def choices_of(param):
    """The allowed values of a hyperparameter annotated ``Literal[...]``, or None."""
    return typing.get_args(param.annotation) if typing.get_origin(param.annotation) is typing.Literal else None


def generic_stages(model):
    """Each top-level child of ``model`` as a stage, named and described by its type (a fallback)."""
    return [(name, type(m).__name__, [m]) for name, m in model.named_children()]

