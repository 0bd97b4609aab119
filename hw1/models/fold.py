"""Batch norm folded into the convolution that feeds it, for inference.

In eval mode a ``BatchNorm2d`` is a per-channel affine map, so after a convolution whose output
nothing else reads it can be folded into that convolution's weights and bias
(``torch.nn.utils.fusion.fuse_conv_bn_eval``): one pass over the feature map instead of two. On
2 CPU cores the batch norms of a VGG16-BN-FCN at 256x256 were half of its forward time (they are
memory-bound, the convolutions are not). Only inference does this (:class:`hw1.predict.InferenceModel`);
training checkpoints keep their batch norms.

Which convolution feeds which batch norm is read off one forward pass (module hooks), not off
module names; a pair is folded only when the batch norm's input is the very tensor the
convolution returned, unmodified (an in-place operation in between bumps its version), and each
module ran once. Uses hooks cannot see (a functional ``x + conv(x)`` beside the batch norm) would
change the result: the folded model's output is compared with the original's on the same input,
and a model that differs is returned unfolded.
"""
import copy
import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)


def _outputs(out):
    """The tensors of a model's output (a tensor, or a dict/list/tuple of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    values = out.values() if isinstance(out, dict) else out
    return [t for v in values for t in _outputs(v)]


def conv_bn_pairs(model, example):
    """``[(conv name, batch-norm name)]`` of ``model`` (in eval mode) whose batch norm reads exactly
    the convolution's output, found by running ``model`` once on ``example``."""
    names = {m: n for n, m in model.named_modules()}
    calls, produced, pairs = {}, {}, []

    def conv_hook(module, inputs, output):
        calls[module] = calls.get(module, 0) + 1
        produced[id(output)] = (module, output, output._version)

    def bn_hook(module, inputs, output):
        calls[module] = calls.get(module, 0) + 1
        source = produced.get(id(inputs[0]))
        if source is not None and source[1] is inputs[0] and source[2] == inputs[0]._version:
            pairs.append((source[0], module))

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else bn_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        with torch.no_grad():  # not inference mode: its tensors keep no version counter
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return [(names[c], names[b]) for c, b in pairs if calls[c] == 1 and calls[b] == 1]


def _set(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fold_batch_norms(model, example, *, atol=1e-4, rtol=1e-4):
    """``model`` (in eval mode) with every batch norm that follows a convolution folded into it, or
    ``model`` itself where nothing folds or the folded model's output on ``example`` differs.

    Returns ``(model, folded)``: the model to infer with and the number of batch norms folded.
    The folded model is a copy: ``model``'s own modules and state dict are left as they were.
    """
    if model.training:
        raise ValueError("fold_batch_norms needs a model in eval mode (its batch norms use running statistics)")
    pairs = conv_bn_pairs(model, example)
    if not pairs:
        return model, 0
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        _set(folded, conv_name, fuse_conv_bn_eval(conv, bn))
        _set(folded, bn_name, nn.Identity())
    with torch.no_grad():
        expected, got = _outputs(model(example)), _outputs(folded(example))
    if len(expected) != len(got) or not all(torch.allclose(e.float(), g.float(), atol=atol, rtol=rtol)
                                            for e, g in zip(expected, got)):
        log.warning("%s: folding its batch norms changed its output; inferring with them unfolded",
                    type(model).__name__)
        return model, 0
    return folded, len(pairs)
