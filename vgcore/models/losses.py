"""Loss functions shared by the method criteria.

* `sigmoid_focal_loss(logits, targets, num)`: the RetinaNet focal loss (Lin et al. 2017) per element,
  FL = -alpha_t (1 - p_t)^gamma log(p_t) with p = sigmoid(logits), computed by torchvision; averaged over
  each row's elements, summed over rows, divided by ``num``.
* `dice_loss(logits, targets, num)`: 1 - (2 |P ∩ T| + s) / (|P| + |T| + s) per row with soft P = sigmoid(logits)
  and smoothing s = 1, summed over rows, divided by ``num``.
* `l1_giou_losses(pred, target, num)`: the two box-regression terms on matched pairs of normalised cxcywh
  boxes: sum of absolute coordinate differences and sum of (1 - GIoU) on xyxy, each divided by ``num``.

Rows are the leading dimension (one image or one query each); every other dimension is flattened into it.
``num`` is the normaliser (batch size, or the number of target boxes over all ranks for the set loss).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as _elementwise_focal

from vgcore.boxes import box_cxcywh_to_xyxy, generalized_box_iou_elementwise

__all__ = ["sigmoid_focal_loss", "dice_loss", "l1_giou_losses"]


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, num: float, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """[R, ...] logits and {0, 1} targets -> scalar: per-row mean of the focal loss, summed, / num."""
    per_element = _elementwise_focal(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    return per_element.flatten(1).mean(1).sum() / num


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num: float, smooth: float = 1.0) -> torch.Tensor:
    """[R, ...] logits and {0, 1} targets -> scalar: sum over rows of the soft dice loss, / num."""
    p, t = logits.sigmoid().flatten(1), targets.flatten(1)
    score = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return (1 - score).sum() / num


def l1_giou_losses(pred: torch.Tensor, target: torch.Tensor, num: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Aligned [K, 4] normalised cxcywh boxes -> (sum |pred - target| / num, sum (1 - GIoU) / num)."""
    l1 = F.l1_loss(pred, target, reduction="sum") / num
    giou = generalized_box_iou_elementwise(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
    return l1, (1 - giou).sum() / num
