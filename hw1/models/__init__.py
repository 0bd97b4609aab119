"""Model registry: every model is built by name from a plain dict, so checkpoints can rebuild it."""
from hw1.models.convnext import convnext
from hw1.models.densenet import densenet
from hw1.models.fcn import resnet101_fcn, vgg16_fcn32s

CLS_MODELS = {"densenet": densenet, "convnext": convnext}
SEG_MODELS = {"vgg16_fcn32s": vgg16_fcn32s, "resnet101_fcn": resnet101_fcn}
MODELS = {**CLS_MODELS, **SEG_MODELS}
TASK_OF = {**{name: "cls" for name in CLS_MODELS}, **{name: "seg" for name in SEG_MODELS}}


def build_model(name, **config):
    """Build model ``name`` with keyword ``config`` (e.g. ``depth=100``, ``weights="none"``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](**config)
