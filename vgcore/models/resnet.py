"""A torchvision ResNet trunk with frozen BatchNorm, as DETR and its descendants (TransVG, VLTVG, ResVG) use it.

``ResNetBackbone(name)`` builds ``torchvision.models.<name>`` (resnet18/34/50/101/152) with
``torchvision.ops.FrozenBatchNorm2d`` as the norm layer and no classifier, and returns the last stage
(stride 32, or 16 with ``dilation``) together with the pixel padding mask resized to that grid.

Parameter names are torchvision's under ``body.`` (``body.conv1.weight``, ``body.bn1.running_var``,
``body.layer4.2.conv3.weight``, ...); a DETR checkpoint's ``backbone.0.body.X`` is ``body.X`` here.
FrozenBatchNorm2d keeps weight / bias / running_mean / running_var as buffers (no ``num_batches_tracked``)
and computes ``x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps))``.

Trainable parameters follow DETR's rule: only the stages named in ``train_layers`` (default layer2..layer4)
may ever train; ``conv1`` and ``layer1`` stay frozen for good (`permanently_frozen` lists them).
No ImageNet weights are downloaded: the trunk is meant to be filled from a checkpoint.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["ResNetBackbone", "resnet_channels"]

_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}


def resnet_channels(name: str) -> int:
    """Channels of the last stage of torchvision's ``name``."""
    if name not in _CHANNELS:
        raise ValueError(f"unknown ResNet {name!r}; choose from {sorted(_CHANNELS)}")
    return _CHANNELS[name]


class ResNetBackbone(nn.Module):
    """``forward(images [B,3,H,W], pixel_mask [B,H,W] bool True = pad or None) -> (features [B,C,h,w], mask)``.

    ``mask`` is the pixel mask nearest-resized to the feature grid (None when ``pixel_mask`` is None).
    ``bn_eps`` is FrozenBatchNorm2d's eps (1e-5 as DETR).  ``train_layers``: stage names whose parameters may
    train; an empty tuple freezes the whole trunk (DETR with ``lr_backbone = 0``)."""

    def __init__(self, name: str = "resnet50", dilation: bool = False, bn_eps: float = 1e-5,
                 train_layers: Sequence[str] = ("layer2", "layer3", "layer4")):
        super().__init__()
        self.num_channels = resnet_channels(name)
        norm = functools.partial(FrozenBatchNorm2d, eps=bn_eps)
        net = getattr(torchvision.models, name)(weights=None, norm_layer=norm,
                                                replace_stride_with_dilation=[False, False, dilation])
        del net.fc, net.avgpool
        self.body = net
        self.stride = 16 if dilation else 32
        self.train_layers = tuple(train_layers)
        for n, p in self.body.named_parameters():
            if n.split(".")[0] not in self.train_layers:
                p.requires_grad_(False)

    def permanently_frozen(self) -> Tuple[str, ...]:
        """Names (relative to this module) of the parameters that never train."""
        return tuple("body." + n for n, _ in self.body.named_parameters() if n.split(".")[0] not in self.train_layers)

    def forward(self, images: torch.Tensor, pixel_mask: Optional[torch.Tensor] = None):
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        mask = None
        if pixel_mask is not None:
            mask = F.interpolate(pixel_mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
        return x, mask
