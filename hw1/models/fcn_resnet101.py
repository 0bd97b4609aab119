"""P2's model B: torchvision's FCN-ResNet101 with COCO-VOC weights, plus a 1x1 conv 21 -> 7.

It returns ``{"out": logits}`` (and ``"aux"`` with the auxiliary head) with logits of shape
(N, num_classes, H, W) for an (N, 3, H, W) input of any size, as torchvision's segmentation models do.
"""
from torch import nn

from hw1 import recipes
from hw1.data.masks import NUM_CLASSES
from hw1.models.spec import ModelSpec
from hw1.models.weights import hub_file, load_matching, resolve_state_dict


class ResNet101FCN(nn.Module):
    """torchvision's FCN-ResNet101 (21 VOC classes) followed by a 1x1 conv to ``num_classes``.

    Keeping torchvision's 21-class classifier intact lets the COCO weights load whole; the added
    ``head`` (and ``aux_head``) maps those 21 logits to ours.
    """

    def __init__(self, num_classes=7, aux_loss=False):
        super().__init__()
        from torchvision.models.segmentation import fcn_resnet101  # here: VGG16-FCN never needs torchvision.models

        self.fcn = fcn_resnet101(weights=None, weights_backbone=None, num_classes=21, aux_loss=aux_loss)
        self.head = nn.Conv2d(21, num_classes, kernel_size=1)
        self.aux_head = nn.Conv2d(21, num_classes, kernel_size=1) if aux_loss else None
        # Zero-init like the FCN scorer: the model starts from uniform predictions and the
        # (possibly pretrained) network below receives gradients from the second step on.
        for m in (self.head, self.aux_head):
            if m is not None:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        """x: (N, 3, H, W) -> {"out": (N, num_classes, H, W)} (+ "aux" when built with aux_loss)."""
        result = self.fcn(x)
        out = {"out": self.head(result["out"])}
        if self.aux_head is not None:
            out["aux"] = self.aux_head(result["aux"])
        return out


def resnet101_fcn(*, aux_loss: bool = False, num_classes=7, weights="none"):
    """FCN-ResNet101; ``weights``: ``coco``, ``imagenet-backbone``, ``none`` or a PATH.

    A PATH holds a torchvision fcn_resnet101 state dict (COCO format: ``backbone.*``,
    ``classifier.*``, ``aux_classifier.*``; our heads stay freshly initialised) or a
    ResNet101FCN one, e.g. an hw1 checkpoint (loaded whole).
    """
    keywords = {
        "coco": "FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
        "imagenet-backbone": "ResNet101_Weights.IMAGENET1K_V1",
    }
    state_dict = resolve_state_dict(weights, keywords)
    model = ResNet101FCN(num_classes=num_classes, aux_loss=aux_loss)
    if state_dict is None:
        return model
    source = hub_file(keywords[weights]) if weights in keywords else weights
    if weights == "imagenet-backbone":
        # IntermediateLayerGetter keeps the ResNet's children up to layer4, dropping avgpool/fc
        load_matching(model.fcn.backbone, state_dict, skip_prefixes=("fc.",), source=source)
    elif any(k.startswith(("fcn.", "head.")) for k in state_dict):
        load_matching(model, state_dict, source=source)
    else:
        # the COCO file always has an aux classifier; without aux_loss the model has none
        skip = () if aux_loss else ("aux_classifier.",)
        load_matching(model.fcn, state_dict, skip_prefixes=skip, source=source)
    return model


def resnet101_fcn_stages(model):
    """The ResNet stem and layers, torchvision's FCN head(s), our 1x1 head(s)."""
    bb = model.fcn.backbone
    rows = [("stem", "conv 7x7/2, BN, ReLU, maxpool 3x3/2", [bb.conv1, bb.bn1, bb.relu, bb.maxpool])]
    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(bb, name)
        dilated = " (dilated)" if name in ("layer3", "layer4") else ""
        rows.append((name, f"{len(layer)} x bottleneck block{dilated}", [layer]))
    rows.append(("fcn head", "conv3x3-BN-ReLU, dropout, conv1x1 to 21", [model.fcn.classifier]))
    if model.fcn.aux_classifier is not None:
        rows.append(("aux head", "FCN head on layer3 (training only)", [model.fcn.aux_classifier]))
    rows.append(("head", "bilinear upsample x8 (torchvision), conv 1x1 21 to classes", [model.head]
                 + ([model.aux_head] if model.aux_head is not None else [])))
    return rows


RESNET101_FCN = ModelSpec(
    name="resnet101_fcn", task="seg", slot="B", builder=resnet101_fcn, num_classes=NUM_CLASSES, input_size=512,
    recipes=recipes.RESNET101_FCN,
    # the auxiliary head is built when its loss has a weight (train_seg.py --aux-weight)
    hidden=("aux_loss",), derived=lambda config: {"aux_loss": config.aux_weight > 0},
    bench_batch={"cuda": 8, "cpu": 2}, stages=resnet101_fcn_stages)
