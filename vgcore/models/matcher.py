"""Hungarian matching and the DETR set criterion (CE with eos_coef, L1, GIoU), generic over methods.

Conventions
-----------
* Predictions: ``pred_logits`` [B, Q, C+1] (last class = "no-object"), ``pred_boxes`` [B, Q, 4]
  **normalised cxcywh**.
* Targets: list of B dicts ``{"labels": long [N_i], "boxes": float [N_i, 4] normalised cxcywh}``;
  N_i = 0 is allowed (every query is then "no-object").  `pad_targets` stacks them into [B, N] / [B, N, 4]
  (N = max N_i) so costs and losses are computed for the whole batch at once.
* Matching cost of query q and target g of the same image:
  C[q, g] = cost_bbox * |box_q - box_g|_1 (cxcywh) - cost_class * softmax(logits_q)[label_g]
  - cost_giou * GIoU(box_q, box_g) (xyxy),
  built as one [B, Q, N] tensor; image i's assignment minimises the sum of C over its [Q, N_i] block
  (``scipy.optimize.linear_sum_assignment``).
* `SetCriterion` returns **unweighted** terms ``loss_class``, ``loss_bbox``, ``loss_giou`` (plus ``_{i}``
  copies for ``aux_outputs[i]``, each matched on its own) and `weighted_sum` applies ``weight_dict``.
  ``loss_class`` = cross-entropy over all B * Q queries, the class of an unmatched query being "no-object",
  with class weights [1, ..., 1, eos_coef] (weighted mean: sum w_y * CE / sum w_y); ``loss_bbox`` = sum L1 /
  num_boxes; ``loss_giou`` = sum (1 - GIoU) / num_boxes, where num_boxes = total target count averaged over
  ranks, at least 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from vgcore import dist
from vgcore.boxes import box_cxcywh_to_xyxy, generalized_box_iou_elementwise
from vgcore.models.losses import l1_giou_losses

__all__ = ["HungarianMatcher", "SetCriterion", "SetLossConfig", "weighted_sum", "num_boxes_all_ranks",
           "pad_targets", "flatten_matches"]

Match = Tuple[torch.Tensor, torch.Tensor]


def pad_targets(targets: Sequence[dict], device) -> Tuple[torch.Tensor, torch.Tensor]:
    """B target dicts -> (labels long [B, N], boxes float32 [B, N, 4]), N = max N_i; padding rows are 0."""
    labels = pad_sequence([t["labels"].reshape(-1).long() for t in targets], batch_first=True)
    boxes = pad_sequence([t["boxes"].reshape(-1, 4).float() for t in targets], batch_first=True)
    return labels.to(device), boxes.to(device)


def flatten_matches(indices: Sequence[Match]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (pred_idx, tgt_idx) pairs -> flat long tensors (image, pred_idx, tgt_idx) over the batch."""
    if not indices:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty, empty
    counts = torch.tensor([len(p) for p, _ in indices], dtype=torch.int64)
    image = torch.arange(len(indices)).repeat_interleave(counts)
    preds, tgts = zip(*indices)
    return image, torch.cat(preds).long().cpu(), torch.cat(tgts).long().cpu()


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets (see module docstring for the cost)."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def cost(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor, tgt_labels: torch.Tensor,
             tgt_boxes: torch.Tensor) -> torch.Tensor:
        """[B, Q, C+1], [B, Q, 4] predictions against padded [B, N], [B, N, 4] targets -> cost [B, Q, N]."""
        prob = pred_logits.float().softmax(-1)
        Q = prob.shape[1]
        p_class = prob.gather(2, tgt_labels[:, None, :].expand(-1, Q, -1))
        pred, tgt = pred_boxes.float()[:, :, None, :], tgt_boxes[:, None, :, :]
        l1 = (pred - tgt).abs().sum(-1)
        giou = generalized_box_iou_elementwise(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt))
        return self.cost_bbox * l1 - self.cost_class * p_class - self.cost_giou * giou

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], targets: Sequence[dict]) -> List[Match]:
        """-> list of B (pred_idx long [K], tgt_idx long [K]), K = min(Q, N_i), pred_idx ascending."""
        logits = outputs["pred_logits"]
        labels, boxes = pad_targets(targets, logits.device)
        cost = self.cost(logits, outputs["pred_boxes"], labels, boxes).cpu()
        result = []
        for c, t in zip(cost, targets):
            rows, cols = linear_sum_assignment(c[:, :len(t["boxes"])].numpy())
            result.append((torch.from_numpy(rows).long(), torch.from_numpy(cols).long()))
        return result


def num_boxes_all_ranks(targets: Sequence[dict], device) -> float:
    """Total target count averaged over distributed ranks, at least 1 (the set-loss normaliser)."""
    count = torch.tensor(float(sum(len(t["boxes"]) for t in targets)), device=device)
    return max(dist.all_reduce_mean(count).item(), 1.0)


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
        class_weight = torch.ones(num_classes + 1)
        class_weight[num_classes] = eos_coef
        self.register_buffer("class_weight", class_weight, persistent=False)

    def single(self, outputs, targets, num_boxes, indices=None) -> Dict[str, torch.Tensor]:
        """The three terms for one prediction set (matched here unless ``indices`` is given)."""
        if indices is None:
            indices = self.matcher(outputs, targets)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        dev = logits.device
        labels, tgt_boxes = pad_targets(targets, dev)
        image, pred, tgt = (i.to(dev) for i in flatten_matches(indices))
        # every query is "no-object" unless matched, then it takes its target's class
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=dev)
        classes[image, pred] = labels[image, tgt]
        loss_class = F.cross_entropy(logits.float().flatten(0, 1), classes.flatten(), self.class_weight.to(dev))
        loss_bbox, loss_giou = l1_giou_losses(boxes[image, pred].float(), tgt_boxes[image, tgt], num_boxes)
        return {"loss_class": loss_class, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(self, outputs, targets, num_boxes: Optional[float] = None) -> Dict[str, torch.Tensor]:
        if num_boxes is None:
            num_boxes = num_boxes_all_ranks(targets, outputs["pred_logits"].device)
        losses = self.single(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            losses.update({f"{k}_{i}": v for k, v in self.single(aux, targets, num_boxes).items()})
        return losses


@dataclass
class SetLossConfig:
    """The DETR set loss's settings (DETR / SimVG values: costs class 1 / L1 5 / GIoU 2, the same loss weights,
    no-object weight 0.1, auxiliary losses on); methods extend it with their own fields."""
    num_classes: int = 1
    eos_coef: float = 0.1
    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    weight_class: float = 1.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    aux_loss: bool = True

    def build(self) -> Tuple[HungarianMatcher, Dict[str, float], SetCriterion]:
        """(matcher, weight_dict of loss_class / loss_bbox / loss_giou, SetCriterion)."""
        matcher = HungarianMatcher(self.cost_class, self.cost_bbox, self.cost_giou)
        weights = {"loss_class": self.weight_class, "loss_bbox": self.weight_bbox, "loss_giou": self.weight_giou}
        return matcher, weights, SetCriterion(self.num_classes, matcher, weights, self.eos_coef)


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
