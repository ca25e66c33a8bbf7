"""HiVG training criterion (the official `utils/loss_utils.py::trans_vg_loss`).

Terms (each summed over the batch and divided by the per-GPU batch size B; no Hungarian matching):
  loss_bbox          2.0 * L1 over the 4 normalised cxcywh coordinates (plain L1, not smooth-L1)
  loss_giou          2.0 * (1 - GIoU) on xyxy
  loss_contrastive   1.0 * CLIP symmetric CE on logits_per_text [B,B]          (use_contrastive_loss)
  loss_algin_focal  20.0 * sigmoid focal (alpha .25, gamma 2, mean over patches) on visu_token_similarity vs
                           the object mask downsampled to the patch grid (nearest, > 0.5)   (use_rtcc_constrain_loss)
  loss_align_dice    2.0 * dice on the same                                                 (use_rtcc_constrain_loss)
  loss_seg_focal    20.0 * focal on seg_mask upsampled (bilinear) to the mask size vs the mask  (use_mask_loss)
  loss_seg_dice      2.0 * dice on the same                                                 (use_mask_loss)
'loss' = plain sum.  The official key name 'loss_algin_focal' (sic) is kept.

Targets: ``batch.boxes`` [B,4] normalised cxcywh of the padded input; ``batch.masks`` [B,H,W] object masks at
input size, or None -> box masks rasterised from ``boxes`` (pixel centres inside the box), which is what the
official pipeline uses by default (``--use_seg_mask`` off: a box-shaped mask).
"""
from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vgcore.boxes import box_cxcywh_to_xyxy
from vgcore.models.losses import dice_loss, l1_giou_losses, sigmoid_focal_loss

__all__ = ["HiVGCriterion", "box_masks_from_boxes", "clip_loss"]


def clip_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    labels = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.t(), labels)) / 2


def box_masks_from_boxes(boxes_cxcywh: torch.Tensor, size: tuple) -> torch.Tensor:
    """[B,4] normalised cxcywh -> [B,H,W] float {0,1}: pixels whose centre lies inside the box."""
    H, W = size
    xyxy = box_cxcywh_to_xyxy(boxes_cxcywh.float()) * boxes_cxcywh.new_tensor([W, H, W, H]).float()
    ys = torch.arange(H, device=boxes_cxcywh.device, dtype=torch.float32) + 0.5
    xs = torch.arange(W, device=boxes_cxcywh.device, dtype=torch.float32) + 0.5
    iny = (ys[None] >= xyxy[:, 1:2]) & (ys[None] < xyxy[:, 3:4])
    inx = (xs[None] >= xyxy[:, 0:1]) & (xs[None] < xyxy[:, 2:3])
    return (iny[:, :, None] & inx[:, None, :]).float()


def _get(batch: Any, name: str):
    if isinstance(batch, dict):
        return batch.get(name)
    return getattr(batch, name, None)


class HiVGCriterion(nn.Module):
    """``HiVGCriterion(args)(outputs, batch) -> dict`` of weighted terms plus 'loss'.

    ``args`` (Namespace or dict, all optional): ``use_contrastive_loss``, ``use_rtcc_constrain_loss``,
    ``use_mask_loss`` (default True each: every official training script sets all three), and the weights
    ``bbox_loss_coef`` 2, ``giou_loss_coef`` 2, ``contrastive_loss_coef`` 1, ``align_focal_coef`` 20,
    ``align_dice_coef`` 2, ``seg_focal_coef`` 20, ``seg_dice_coef`` 2 (the hard-coded official values).
    """

    DEFAULTS = dict(use_contrastive_loss=True, use_rtcc_constrain_loss=True, use_mask_loss=True,
                    bbox_loss_coef=2.0, giou_loss_coef=2.0, contrastive_loss_coef=1.0, align_focal_coef=20.0,
                    align_dice_coef=2.0, seg_focal_coef=20.0, seg_dice_coef=2.0)

    def __init__(self, args: Any = None, **kw):
        super().__init__()
        given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        given.update(kw)
        cfg = dict(self.DEFAULTS)
        for k in cfg:
            if given.get(k) is not None:
                cfg[k] = type(cfg[k])(given[k])
        self.cfg = cfg

    def forward(self, outputs: dict, batch: Any) -> dict:
        c = self.cfg
        pred = outputs["pred_boxes"].float()
        tgt = _get(batch, "boxes").to(pred)
        B = pred.shape[0]
        l1, giou = l1_giou_losses(pred, tgt, B)
        losses = {"loss_bbox": c["bbox_loss_coef"] * l1, "loss_giou": c["giou_loss_coef"] * giou}
        if c["use_contrastive_loss"]:
            losses["loss_contrastive"] = c["contrastive_loss_coef"] * clip_loss(outputs["logits_per_text"].float())
        if c["use_rtcc_constrain_loss"] or c["use_mask_loss"]:
            masks = _get(batch, "masks")
            if masks is None:
                pm = _get(batch, "pixel_mask")
                images = _get(batch, "images")
                size = tuple(pm.shape[-2:]) if pm is not None else tuple(images.shape[-2:])
                masks = box_masks_from_boxes(tgt, size)
            masks = masks.to(pred.device).float()
            if masks.dim() == 4:  # [B,1,H,W]
                masks = masks[:, 0]
            if c["use_rtcc_constrain_loss"]:
                sim = outputs["visu_token_similarity"].float().flatten(1)
                g = int(round(sim.shape[1] ** 0.5))
                obj = (F.interpolate(masks[:, None], size=(g, g), mode="nearest")[:, 0] > 0.5).flatten(1).float()
                losses["loss_algin_focal"] = c["align_focal_coef"] * sigmoid_focal_loss(sim, obj, B)
                losses["loss_align_dice"] = c["align_dice_coef"] * dice_loss(sim, obj, B)
            if c["use_mask_loss"]:
                seg = F.interpolate(outputs["seg_mask"].float(), size=masks.shape[-2:], mode="bilinear",
                                    align_corners=False).flatten(1)
                tm = masks.flatten(1)
                losses["loss_seg_focal"] = c["seg_focal_coef"] * sigmoid_focal_loss(seg, tm, B)
                losses["loss_seg_dice"] = c["seg_dice_coef"] * dice_loss(seg, tm, B)
        losses["loss"] = sum(losses.values())
        return losses
