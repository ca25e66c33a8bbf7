"""VG-LAW losses: one box and one mask per expression (no matching), all weights 1 in the official recipe.

    L = w_l1 * L1 + w_giou * GIoU + w_focal * Focal + w_dice * Dice

* L1: sum over the 4 normalised (cx, cy, w, h) coordinates of |b_hat - b|, averaged over the batch
  (official ``L1Loss(reduction='sum') / B``).
* GIoU: mean over the batch of 1 - GIoU(b_hat, b) on corner boxes.
* Focal: sigmoid focal loss (alpha 0.25, gamma 2) averaged over every pixel of the batch:
  ``alpha_t (1 - p_t)^gamma BCE(z, y)``, ``p_t = p y + (1 - p)(1 - y)``, ``alpha_t = alpha y + (1 - alpha)(1 - y)``.
* Dice: per sample ``1 - (2 sum sigma(z) y + 1) / (sum sigma(z) + sum y + 1)``, averaged over the batch.
Mask losses use the full-resolution logits on the padded canvas, padding included.  REC-only / RES-only
models get only their terms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from vgcore.boxes import box_cxcywh_to_xyxy, generalized_box_iou_elementwise

__all__ = ["VGLAWLossConfig", "VGLAWCriterion", "sigmoid_focal_loss", "dice_loss"]


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Mean over all elements of the sigmoid focal loss."""
    targets = targets.to(logits.dtype)
    p = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * bce).mean()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over samples (dim 0) of 1 - (2 |P . Y| + s) / (|P| + |Y| + s), P = sigmoid(logits)."""
    p = logits.sigmoid().flatten(1)
    y = targets.to(p.dtype).flatten(1)
    return (1 - (2 * (p * y).sum(1) + smooth) / (p.sum(1) + y.sum(1) + smooth)).mean()


@dataclass
class VGLAWLossConfig:
    weight_l1: float = 1.0
    weight_giou: float = 1.0
    weight_focal: float = 1.0
    weight_dice: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    dice_smooth: float = 1.0


class VGLAWCriterion(nn.Module):
    """``criterion(outputs, boxes, masks=None)``: outputs from `VGLAW` (``pred_box`` and/or ``logit_mask``),
    boxes [B, 4] normalised cxcywh, masks [B, H, W] or [B, 1, H, W] binary; or ``criterion(outputs, batch)``
    with a `vgcore.data.sample.Batch` (its ``boxes`` and ``masks``).  Returns the named terms and
    ``loss`` (their weighted sum)."""

    def __init__(self, cfg: VGLAWLossConfig = None):
        super().__init__()
        self.cfg = cfg or VGLAWLossConfig()

    def forward(self, outputs: Dict[str, torch.Tensor], boxes: torch.Tensor = None,
                masks: torch.Tensor = None) -> Dict[str, torch.Tensor]:
        if hasattr(boxes, "target_boxes"):  # a vgcore Batch
            boxes, masks = boxes.boxes, boxes.masks
        c = self.cfg
        terms: Dict[str, torch.Tensor] = {}
        total = 0.0
        if "pred_box" in outputs:
            if boxes is None:
                raise ValueError("the model predicts boxes: target boxes are required")
            pred = outputs["pred_box"]
            boxes = boxes.to(pred.dtype)
            terms["loss_l1"] = (pred - boxes).abs().sum() / pred.shape[0]
            giou = generalized_box_iou_elementwise(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(boxes))
            terms["loss_giou"] = (1 - giou).mean()
            total = total + c.weight_l1 * terms["loss_l1"] + c.weight_giou * terms["loss_giou"]
        if "logit_mask" in outputs:
            if masks is None:
                raise ValueError("the model predicts masks: target masks are required")
            logits = outputs["logit_mask"].flatten(1)
            y = (masks.reshape(masks.shape[0], -1) > 0).to(logits.dtype)
            terms["loss_focal"] = sigmoid_focal_loss(logits, y, c.focal_alpha, c.focal_gamma)
            terms["loss_dice"] = dice_loss(logits, y, c.dice_smooth)
            total = total + c.weight_focal * terms["loss_focal"] + c.weight_dice * terms["loss_dice"]
        if not terms:
            raise ValueError("outputs hold neither 'pred_box' nor 'logit_mask'")
        terms["loss"] = total
        return terms
