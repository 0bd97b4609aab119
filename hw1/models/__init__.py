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
    "resnet101_fcn": "hw1.models.fcn:RESNET101_FCN",
}


def get_spec(name):
    """The :class:`ModelSpec` of model ``name`` (ValueError for a name not in ``REGISTRY``)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(REGISTRY)}")
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def model_names(task=None):
    """Registered model names, in registry order; with ``task``, only that task's."""
    return [n for n in REGISTRY if task is None or get_spec(n).task == task]


def build_model(name, **config):
    """Build model ``name`` with keyword ``config`` (e.g. ``depth=100``, ``weights="none"``)."""
    return get_spec(name).build(**config)
