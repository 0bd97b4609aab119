"""Model registry: every model is built by name from a plain dict, so checkpoints can rebuild it.

The builders are imported when first used: the torchvision-backed models pull in
``torchvision.models``, about a second of start-up that predicting with the DenseNet never needs.
"""
import importlib

CLS_MODELS = {"densenet": "hw1.models.densenet", "convnext": "hw1.models.convnext"}
SEG_MODELS = {"vgg16_fcn32s": "hw1.models.fcn", "resnet101_fcn": "hw1.models.fcn"}
MODELS = {**CLS_MODELS, **SEG_MODELS}  # name -> module defining a builder function of that name
TASK_OF = {**{name: "cls" for name in CLS_MODELS}, **{name: "seg" for name in SEG_MODELS}}


def build_model(name, **config):
    """Build model ``name`` with keyword ``config`` (e.g. ``depth=100``, ``weights="none"``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return getattr(importlib.import_module(MODELS[name]), name)(**config)
