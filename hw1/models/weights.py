"""Pretrained-weight loading shared by every model: torchvision's hub cache or a local file.

``weights`` arguments across hw1 take a keyword (resolved to a torchvision weights enum), ``none``,
or a path to a local state dict. Offline, the hub download fails; we then say exactly which file
to place in the cache instead of printing a network traceback.
"""
import os
from pathlib import Path

import torch

from hw1.errors import UserError
from hw1.io import load_torch_file


def weights_enum(weights):
    """A torchvision weights enum, given as itself or by its name (``"VGG16_Weights.IMAGENET1K_V1"``).

    A name lets a model file declare its keywords without importing ``torchvision.models``: about a
    second of start-up that inference with ``weights="none"`` (``hw1_2.sh``) never needs.
    """
    if isinstance(weights, str):
        from torchvision.models import get_weight

        return get_weight(weights)
    return weights


def hub_file(weights):
    """Where torchvision keeps (or would download) the file of a weights enum (or its name)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights_enum(weights).url)


def torchvision_state_dict(weights):
    """State dict of a torchvision weights enum (or its name): the cached file, else a download into the cache.

    Both paths load with ``weights_only=True``: a file in the cache that would run code when
    unpickled is refused (torchvision's own ``get_state_dict`` would unpickle it in full).
    """
    enum = weights_enum(weights)
    target = hub_file(enum)
    if target.is_file():
        return local_state_dict(target)
    try:
        return enum.get_state_dict(progress=False, check_hash=False, weights_only=True)
    except Exception as e:  # urllib, socket and SSL errors all mean the same thing to the user
        raise UserError(
            f"{target}: pretrained weights {enum} not in the torch hub cache and the "
            f"download failed ({type(e).__name__}); download {enum.url} and place it there "
            f"(or set TORCH_HOME), or pass --weights PATH"
        ) from None


def local_state_dict(path):
    """A state dict saved with ``torch.save``; also accepts an hw1 checkpoint (takes its model)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    obj = load_torch_file(path)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return obj


def resolve_state_dict(weights, keywords):
    """Turn a ``--weights`` value into a state dict, or None for ``none``.

    ``keywords`` maps the accepted keywords (e.g. ``imagenet``) to torchvision weights enums or their names.
    """
    if weights in (None, "none"):
        return None
    if weights in keywords:
        return torchvision_state_dict(keywords[weights])
    if os.sep in str(weights) or Path(weights).suffix or Path(weights).exists():
        return local_state_dict(weights)
    raise UserError(f"--weights {weights}: expected one of {', '.join(['none', *keywords])} or a file path")


def load_matching(module, state_dict, *, skip_prefixes=(), source="weights"):
    """Load ``state_dict`` into ``module`` strictly, except keys under ``skip_prefixes``.

    The skipped keys are the heads we replace (50 or 7 classes instead of 1000 or 21); every other
    key must be present with the same shape, so a wrong file fails loudly instead of half-loading.
    """
    own = module.state_dict()
    kept = {k: v for k, v in state_dict.items() if not k.startswith(tuple(skip_prefixes))}
    missing = [k for k in own if k not in kept and not k.startswith(tuple(skip_prefixes))]
    unexpected = [k for k in kept if k not in own]
    wrong = [k for k in kept if k in own and kept[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{name}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
            if keys
        )
        raise UserError(f"{source}: does not match the model ({detail})")
    module.load_state_dict(kept, strict=False)
