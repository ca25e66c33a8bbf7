"""ResVG training criterion (VLTVG's box loss on every decoder stage; no matching, no auxiliary losses).

For each stage s (the last one is ``pred_boxes``, stages 0..S-2 the ``aux_outputs``), with predicted and
ground-truth boxes as normalised (cx, cy, w, h) on the padded input, every query compared with its sample's box:

    l1    = sum over samples, queries and the 4 coordinates of |b_hat - b|  / num_pos
    giou  = sum over samples and queries of (1 - GIoU(xyxy(b_hat), xyxy(b)))  / num_pos

num_pos = B * Q averaged over the processes (all-reduce sum / world size), at least 1.
Returned terms (unweighted, the official log names): ``l1``, ``giou`` for the last stage and ``l1_{s}``,
``giou_{s}`` for stage s = 0..S-2 (only with ``aux_loss``); ``loss`` = sum over the stages of
``weight_l1 * l1 + weight_giou * giou`` (official weights 5 and 2).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vgcore.boxes import box_cxcywh_to_xyxy, generalized_box_iou_elementwise

__all__ = ["ResVGLossConfig", "ResVGCriterion", "box_terms", "num_pos_all_ranks"]


@dataclass
class ResVGLossConfig:
    weight_l1: float = 5.0      # official bbox_loss_coef
    weight_giou: float = 2.0    # official giou_loss_coef
    aux_loss: bool = True


def num_pos_all_ranks(n: int, device) -> float:
    """The official normaliser: n averaged over the processes, clamped to >= 1."""
    t = torch.tensor(float(n), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
        t = t / dist.get_world_size()
    return max(float(t.item()), 1.0)


def box_terms(pred: torch.Tensor, target: torch.Tensor, num_pos: float) -> Dict[str, torch.Tensor]:
    """pred [B,Q,4], target [B,4] (normalised cxcywh) -> {"l1", "giou"} summed and divided by num_pos."""
    tgt = target[:, None].to(pred.dtype).expand_as(pred)
    l1 = F.l1_loss(pred, tgt, reduction="sum") / num_pos
    giou = (1 - generalized_box_iou_elementwise(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt))).sum() / num_pos
    return {"l1": l1, "giou": giou}


def _config(args: Any) -> ResVGLossConfig:
    if isinstance(args, ResVGLossConfig):
        return args
    names = {f.name for f in fields(ResVGLossConfig)}
    aliases = {"bbox_loss_coef": "weight_l1", "giou_loss_coef": "weight_giou"}
    if args is None:
        d, strict = {}, True
    elif isinstance(args, dict):
        d, strict = dict(args), True
    else:
        d, strict = dict(vars(args)), False
    for a, n in aliases.items():
        if d.get(a) is not None and d.get(n) is None:
            d[n] = d.pop(a)
        else:
            d.pop(a, None)
    unknown = sorted(k for k in d if k not in names)
    if strict and unknown:
        raise KeyError(f"unknown ResVG loss keys {unknown}; valid: {sorted(names)} (or {sorted(aliases)})")
    return ResVGLossConfig(**{k: v for k, v in d.items() if k in names and v is not None})


class ResVGCriterion(nn.Module):
    """``ResVGCriterion(args)(outputs, batch) -> dict`` (see the module docstring).

    ``args``: dict / Namespace / `ResVGLossConfig` (``weight_l1``, ``weight_giou``, ``aux_loss``; the official
    ``bbox_loss_coef`` / ``giou_loss_coef`` are accepted).  ``outputs``: `ResVG.forward` output (``pred_boxes``
    and ``aux_outputs``).  ``batch``: a Batch (uses ``boxes`` [B,4]) or the [B,4] target tensor itself."""

    def __init__(self, args: Any = None):
        super().__init__()
        self.cfg = _config(args)

    def forward(self, outputs: Dict[str, Any], batch) -> Dict[str, torch.Tensor]:
        target = batch.boxes if hasattr(batch, "boxes") else batch
        pred = outputs["pred_boxes"]
        B, Q = pred.shape[:2]
        if target.shape != (B, 4):
            raise ValueError(f"ResVGCriterion: targets {tuple(target.shape)} for predictions {tuple(pred.shape)}")
        num_pos = num_pos_all_ranks(B * Q, pred.device)
        c = self.cfg
        terms = box_terms(pred, target, num_pos)
        if c.aux_loss:
            for s, aux in enumerate(outputs.get("aux_outputs", [])):
                terms.update({f"{k}_{s}": v for k, v in box_terms(aux["pred_boxes"], target, num_pos).items()})
        total = sum(c.weight_l1 * v for k, v in terms.items() if k.startswith("l1")) + \
            sum(c.weight_giou * v for k, v in terms.items() if k.startswith("giou"))
        terms["loss"] = total
        return terms
