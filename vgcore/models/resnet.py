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

Small trunks for CPU runs (`TINY_RESNETS`): ``resnet_tiny`` is torchvision's ResNet layout (7x7 stem, max-pool,
four stages of torchvision ``BasicBlock``) with one block per stage and narrow widths (32, 64, 128, 256); its
parameter names are those of the torchvision ResNets, so every rule above applies.  With ``dilation`` its last
stage keeps stride 1 (stride 16 overall): with one block per stage this is exactly DC5 (the first block of a
dilated stage keeps the previous dilation, 1).

``frozen_bn=False`` builds the trunk with ordinary ``BatchNorm2d`` (e.g. to pretrain it from scratch);
`frozen_bn_state_dict` turns such a trunk's state into FrozenBatchNorm2d buffers (statistics and affine
parameters as they are, ``num_batches_tracked`` dropped), the layout a frozen-BN trunk loads.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["ResNetBackbone", "resnet_channels", "TINY_RESNETS", "frozen_bn_state_dict"]

_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}
# name -> (blocks per stage, stage widths); torchvision BasicBlocks
TINY_RESNETS = {"resnet_tiny": ((1, 1, 1, 1), (32, 64, 128, 256))}


def resnet_channels(name: str) -> int:
    """Channels of the last stage of ``name`` (torchvision's, or a `TINY_RESNETS` trunk)."""
    if name in TINY_RESNETS:
        return TINY_RESNETS[name][1][-1]
    if name not in _CHANNELS:
        raise ValueError(f"unknown ResNet {name!r}; choose from {sorted(_CHANNELS) + sorted(TINY_RESNETS)}")
    return _CHANNELS[name]


def _tiny_resnet(name: str, norm, dilation: bool) -> nn.Module:
    """`TINY_RESNETS` trunk with torchvision's module names (conv1, bn1, relu, maxpool, layer1..4)."""
    from torchvision.models.resnet import BasicBlock

    blocks, widths = TINY_RESNETS[name]
    net = nn.Module()
    net.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = norm(widths[0])
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    inplanes = widths[0]
    for i, (n, width) in enumerate(zip(blocks, widths)):
        stride = 1 if i == 0 or (i == 3 and dilation) else 2
        layers = []
        for j in range(n):
            down = None
            if j == 0 and (stride != 1 or inplanes != width):
                down = nn.Sequential(nn.Conv2d(inplanes, width, kernel_size=1, stride=stride, bias=False), norm(width))
            layers.append(BasicBlock(inplanes, width, stride if j == 0 else 1, down, norm_layer=norm))
            inplanes = width
        setattr(net, f"layer{i + 1}", nn.Sequential(*layers))
    for m in net.modules():  # torchvision's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def frozen_bn_state_dict(module: nn.Module) -> dict:
    """State dict of a trunk built with ``frozen_bn=False`` in the FrozenBatchNorm2d layout: BatchNorm weight,
    bias, running_mean and running_var kept, ``num_batches_tracked`` dropped."""
    return {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


class ResNetBackbone(nn.Module):
    """``forward(images [B,3,H,W], pixel_mask [B,H,W] bool True = pad or None) -> (features [B,C,h,w], mask)``.

    ``mask`` is the pixel mask nearest-resized to the feature grid (None when ``pixel_mask`` is None).
    ``bn_eps`` is FrozenBatchNorm2d's eps (1e-5 as DETR).  ``train_layers``: stage names whose parameters may
    train; an empty tuple freezes the whole trunk (DETR with ``lr_backbone = 0``).  ``frozen_bn=False``:
    ordinary BatchNorm2d layers (see the module doc)."""

    def __init__(self, name: str = "resnet50", dilation: bool = False, bn_eps: float = 1e-5,
                 train_layers: Sequence[str] = ("layer2", "layer3", "layer4"), frozen_bn: bool = True):
        super().__init__()
        self.num_channels = resnet_channels(name)
        norm = functools.partial(FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d, eps=bn_eps)
        if name in TINY_RESNETS:
            net = _tiny_resnet(name, norm, dilation)
        else:
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
