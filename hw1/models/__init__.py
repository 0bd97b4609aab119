"""Model registry: one :class:`~hw1.models.spec.ModelSpec` per model, found by name.

Adding a model is its file (a builder and a ``ModelSpec``) plus one line in ``REGISTRY``. The
files are imported when first asked for: the torchvision-backed models pull in
``torchvision.models``, about a second of start-up that predicting with the DenseNet never needs.
"""
import importlib

# name -> "module:attribute" of its ModelSpec
REGISTRY = {
    "densenet": "hw1.models.densenet:SPEC",
    "convnext": "hw1.models.convnext:SPEC",
    "vgg16_fcn32s": "hw1.models.fcn:VGG16_FCN32S",
    "vgg16_fcn8s": "hw1.models.fcn:VGG16_FCN8S",
    "resnet101_fcn": "hw1.models.fcn_resnet101:RESNET101_FCN",
}


def get_spec(name):
    """The :class:`ModelSpec` of model ``name`` (ValueError for a name not in ``REGISTRY``)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(REGISTRY)}")
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def current_name(name, model_config):
    """``(name, model_config)`` under today's registry names of a checkpoint saved under older ones
    (``vgg16_fcn32s`` with a ``skips`` argument, before FCN-8s was ``vgg16_fcn8s``); ValueError for
    an old model that no registered one builds."""
    spec = get_spec(name) if name in REGISTRY else None
    return spec.renamed(name, model_config) if spec is not None and spec.renamed else (name, model_config)


def hyperparameter_names():
    """The hyperparameters of every registered model: the names that have a training flag."""
    return {n for name in REGISTRY for n in get_spec(name).hyperparameters()}


def model_names(task=None):
    """Registered model names, in registry order; with ``task``, only that task's."""
    return [n for n in REGISTRY if task is None or get_spec(n).task == task]


def build_model(name, **config):
    """Build model ``name`` with keyword ``config`` (e.g. ``depth=100``, ``weights="none"``)."""
    return get_spec(name).build(**config)
