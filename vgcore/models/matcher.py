"""Hungarian matching and the DETR set criterion (CE with eos_coef, L1, GIoU), generic over methods.

Conventions
-----------
* Predictions: ``pred_logits`` [B, Q, C+1] (last class = "no-object"), ``pred_boxes`` [B, Q, 4]
  **normalised cxcywh**.
* Targets: list of B dicts ``{"labels": long [N_i], "boxes": float [N_i, 4] normalised cxcywh}``;
  N_i = 0 is allowed (every query is then "no-object").
* Matching cost (detrex ``HungarianMatcher`` with ``ce_cost``):
  C = cost_bbox * L1(cxcywh) - cost_class * softmax(logits)[target class] - cost_giou * GIoU(xyxy),
  solved per sample with ``scipy.optimize.linear_sum_assignment``.
* `SetCriterion` returns **unweighted** terms ``loss_class``, ``loss_bbox``, ``loss_giou`` (plus ``_{i}``
  copies for ``aux_outputs[i]``, each matched on its own) and `weighted_sum` applies ``weight_dict``.
  ``loss_class`` = F.cross_entropy over all queries with class weights [1, ..., 1, eos_coef] (PyTorch's
  weighted mean); ``loss_bbox`` = sum L1 / num_boxes; ``loss_giou`` = sum (1 - GIoU) / num_boxes, where
  num_boxes = total target count, all-reduced and averaged over ranks, clamped at >= 1.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from vgcore.boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh  # noqa: F401 (re-exported)

__all__ = ["box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "box_iou", "generalized_box_iou", "HungarianMatcher",
           "SetCriterion", "weighted_sum", "num_boxes_all_ranks"]


def _area(b):
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of xyxy boxes a [N,4], b [M,4] -> (iou [N,M], union [N,M]) (no eps, as DETR)."""
    area_a, area_b = _area(a), _area(b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union, union


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of xyxy boxes a [N,4], b [M,4] -> [N,M]."""
    iou, union = box_iou(a, b)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull


def _elementwise_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of aligned xyxy boxes a [N,4], b [N,4] -> [N] (= diag of the pairwise matrix)."""
    area_a, area_b = _area(a), _area(b)
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area_a + area_b - inter
    iou = inter / union
    lt2 = torch.min(a[:, :2], b[:, :2])
    rb2 = torch.max(a[:, 2:], b[:, 2:])
    wh2 = (rb2 - lt2).clamp(min=0)
    hull = wh2[:, 0] * wh2[:, 1]
    return iou - (hull - union) / hull


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets (see module docstring for the cost)."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], targets: Sequence[dict]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """-> list of B (pred_idx long [K], tgt_idx long [K]), K = min(Q, N_i), pred_idx ascending."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        B, Q = logits.shape[:2]
        sizes = [int(t["boxes"].shape[0]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(B)]
        prob = logits.flatten(0, 1).float().softmax(-1)
        out_bbox = boxes.flatten(0, 1).float()
        tgt_ids = torch.cat([t["labels"] for t in targets]).to(logits.device)
        tgt_bbox = torch.cat([t["boxes"] for t in targets]).to(out_bbox)
        cost = (self.cost_bbox * torch.cdist(out_bbox, tgt_bbox, p=1)
                - self.cost_class * prob[:, tgt_ids]
                - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox)))
        cost = cost.view(B, Q, -1).cpu()
        result = []
        for i, c in enumerate(cost.split(sizes, -1)):
            if sizes[i] == 0:
                result.append((empty, empty))
                continue
            r, col = linear_sum_assignment(c[i].numpy())
            result.append((torch.as_tensor(r, dtype=torch.int64), torch.as_tensor(col, dtype=torch.int64)))
        return result


def num_boxes_all_ranks(targets: Sequence[dict], device) -> float:
    """Total target count averaged over distributed ranks, clamped at >= 1 (DETR's normaliser)."""
    n = torch.as_tensor([float(sum(int(t["boxes"].shape[0]) for t in targets))], device=device)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(n)
        world = torch.distributed.get_world_size()
    return float(torch.clamp(n / world, min=1).item())


class SetCriterion(nn.Module):
    """DETR set loss with CE classification (``eos_coef`` on the no-object class), L1 and GIoU.

    ``forward(outputs, targets)`` -> dict of unweighted terms (see module docstring); outputs may carry
    ``aux_outputs`` (list of dicts with the same keys), each matched separately with the same normaliser.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: Optional[Dict[str, float]] = None,
                 eos_coef: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict or {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})
        self.eos_coef = eos_coef
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    @staticmethod
    def _src_idx(indices):
        batch = torch.cat([torch.full_like(s, i) for i, (s, _) in enumerate(indices)])
        src = torch.cat([s for s, _ in indices])
        return batch, src

    def loss_labels(self, outputs, targets, indices) -> Dict[str, torch.Tensor]:
        logits = outputs["pred_logits"]
        b, s = self._src_idx(indices)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        if b.numel():
            tc = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
            target_classes[b.to(logits.device), s.to(logits.device)] = tc
        loss = F.cross_entropy(logits.transpose(1, 2).float(), target_classes, self.empty_weight.to(logits.device))
        return {"loss_class": loss}

    def loss_boxes(self, outputs, targets, indices, num_boxes) -> Dict[str, torch.Tensor]:
        boxes = outputs["pred_boxes"]
        b, s = self._src_idx(indices)
        src = boxes[b.to(boxes.device), s.to(boxes.device)].float()
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src) if b.numel() else src.new_zeros(0, 4)
        l1 = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        giou = (1 - _elementwise_giou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))).sum() / num_boxes
        return {"loss_bbox": l1, "loss_giou": giou}

    def single(self, outputs, targets, num_boxes, indices=None) -> Dict[str, torch.Tensor]:
        if indices is None:
            indices = self.matcher(outputs, targets)
        out = self.loss_labels(outputs, targets, indices)
        out.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        return out

    def forward(self, outputs, targets, num_boxes: Optional[float] = None) -> Dict[str, torch.Tensor]:
        if num_boxes is None:
            num_boxes = num_boxes_all_ranks(targets, outputs["pred_logits"].device)
        losses = self.single(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            losses.update({f"{k}_{i}": v for k, v in self.single(aux, targets, num_boxes).items()})
        return losses


def weighted_sum(losses: Dict[str, torch.Tensor], weight_dict: Dict[str, float]) -> torch.Tensor:
    """sum_k w[k] * losses[k]; aux copies ``name_{i}`` take the weight of ``name``."""
    total = None
    for k, v in losses.items():
        base = k.rsplit("_", 1)[0] if k.rsplit("_", 1)[-1].isdigit() else k
        if base not in weight_dict:
            raise KeyError(f"weighted_sum: no weight for loss term {k!r} (weights: {sorted(weight_dict)})")
        term = weight_dict[base] * v
        total = term if total is None else total + term
    return total
