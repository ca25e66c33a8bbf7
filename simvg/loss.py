"""SimVG losses: the DETR set loss on the decoder branch (DB) and Dynamic Weight-Balance Distillation (DWBD)
of the token branch (TB), as the official ``TextGuidedQuerySelectKDDETRHead.forward_train`` computes them.

Set loss (``vgcore.models.matcher.SetCriterion``): Hungarian matching with costs class 1 / L1 5 / GIoU 2
(class cost -softmax[target]); CE over all queries with class weights [1, eos_coef = 0.1]; L1 and 1 - GIoU on
matched pairs divided by the (all-reduced) number of targets; weights class 1, bbox 5, giou 2; the DB's
intermediate layers add the same terms (matched on their own) when ``aux_loss``.

Total (``lambda_token`` = λ_t, ``lambda_distill`` = λ_d; both 0 = stage-1 / pre-training, TB not trained):

    L = λ_dec · L_set(DB, GT) + λ_t · (1 - W) · L_set(TB, GT) + λ_d · W · L_set(TB, DB pseudo-boxes)

W = mean over every matched (query q, GT g) pair of the batch of softmax(DB logits_q)[0] · IoU(DB box_q, g),
where the DB's last layer is matched to the GT with the same matcher (all detached); the pseudo-targets are
those matched DB boxes (detached, label 0); each TB loss matches the TB afresh against its target set.
W is a scalar per process (not all-reduced, as official).  Deviation: when the batch has no GT box at all
(gRefCOCO no-target batch) the official W = mean(empty) = NaN; here W = 0.

Non-finite model outputs: the criterion first checks the predictions it is about to match (one fused
``isfinite`` reduction, `vgcore.engine.assert_finite`, placed where the matcher synchronises with the host
anyway) and raises `vgcore.engine.NonFiniteError` naming them -- the Hungarian matcher never sees NaN / inf.

Targets: ``batch.target_boxes`` (list of [N_i, 4] normalised cxcywh, N_i = 0 for no-target), label 0 each.
Official presets: ViT-B single-dataset one-stage / two-stage-2: (λ_dec, λ_t, λ_d) = (1, 2, 1); ViT-L and the
coco-all two-stage distillation: (1, 1, 0.4); stage-1 / pre-training / fine-tuning: (1, 0, 0).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, List, Sequence

import torch
from torch import nn

from vgcore.boxes import box_cxcywh_to_xyxy, box_iou_elementwise
from vgcore.engine import assert_finite
from vgcore.models.matcher import (HungarianMatcher, SetLossConfig, flatten_matches, num_boxes_all_ranks,
                                   pad_targets, weighted_sum)

_MATCHED = ("decoder_logits", "decoder_boxes", "token_logits", "token_boxes")

__all__ = ["SimVGLossConfig", "SimVGCriterion", "LOSS_PRESETS", "targets_from_boxes", "distill_targets"]

LOSS_PRESETS = {
    "vitb_distill": dict(lambda_decoder=1.0, lambda_token=2.0, lambda_distill=1.0),
    "vitl_distill": dict(lambda_decoder=1.0, lambda_token=1.0, lambda_distill=0.4),
    "decoder_only": dict(lambda_decoder=1.0, lambda_token=0.0, lambda_distill=0.0),
}


@dataclass
class SimVGLossConfig(SetLossConfig):
    lambda_decoder: float = 1.0
    lambda_token: float = 2.0
    lambda_distill: float = 1.0

    @property
    def token_branch_on(self) -> bool:
        return bool(self.lambda_token) or bool(self.lambda_distill)


_ALIASES = {"decoder_weight": "lambda_decoder", "token_weight": "lambda_token", "distill_weight": "lambda_distill"}


def _config(args: Any) -> SimVGLossConfig:
    if isinstance(args, SimVGLossConfig):
        return args
    names = {f.name for f in fields(SimVGLossConfig)}
    if args is None:
        d, strict = {}, True
    elif isinstance(args, dict):
        d, strict = dict(args), True
    else:
        d, strict = dict(vars(args)), False
    kw = {}
    preset = d.get("loss_preset")
    if preset:
        if preset not in LOSS_PRESETS:
            raise KeyError(f"unknown SimVG loss preset {preset!r}; choose from {sorted(LOSS_PRESETS)}")
        kw.update(LOSS_PRESETS[preset])
    unknown = sorted(k for k in d if k not in names and k != "loss_preset" and k not in _ALIASES)
    if strict and unknown:
        raise KeyError(f"unknown SimVG loss keys {unknown}; valid: {sorted(names)} and 'loss_preset'")
    for alias, name in _ALIASES.items():  # the official / command-line names of the branch weights
        if d.get(alias) is not None and d.get(name) is None:
            d[name] = d[alias]
    kw.update({k: v for k, v in d.items() if k in names and v is not None})
    return SimVGLossConfig(**kw)


def targets_from_boxes(target_boxes: Sequence[torch.Tensor], device) -> List[dict]:
    """list of [N_i, 4] normalised cxcywh -> DETR targets (label 0 = object)."""
    out = []
    for b in target_boxes:
        b = torch.as_tensor(b, dtype=torch.float32, device=device).reshape(-1, 4)
        out.append({"labels": torch.zeros(b.shape[0], dtype=torch.int64, device=device), "boxes": b})
    return out


@torch.no_grad()
def distill_targets(matcher: HungarianMatcher, dec_logits: torch.Tensor, dec_boxes: torch.Tensor,
                    targets: Sequence[dict]):
    """DWBD teacher side: match the DB (last layer) to the GT; return (W scalar tensor, pseudo targets,
    per-pair weights [K]).  W = 0 when there is no matched pair."""
    dec_logits, dec_boxes = dec_logits.detach(), dec_boxes.detach()
    indices = matcher({"pred_logits": dec_logits, "pred_boxes": dec_boxes}, targets)
    dev = dec_boxes.device
    image, query, gt = (i.to(dev) for i in flatten_matches(indices))
    _, gt_boxes = pad_targets(targets, dev)
    pred = dec_boxes[image, query].float()
    confidence = dec_logits[image, query].float().softmax(-1)[:, 0]
    weights = confidence * box_iou_elementwise(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(gt_boxes[image, gt]))
    W = weights.mean() if weights.numel() else pred.new_zeros(())
    pseudo = [{"labels": torch.zeros(len(q), dtype=torch.int64, device=dev), "boxes": dec_boxes[i, q.to(dev)].float()}
              for i, (q, _) in enumerate(indices)]
    return W, pseudo, weights


class SimVGCriterion(nn.Module):
    """``SimVGCriterion(args)(outputs, batch) -> dict`` with 'loss' (the total to back-propagate), the branch
    terms 'loss_dgt', 'loss_tgt', 'loss_kd', the distillation weight 'distill_w', and detached per-term logs
    ('dgt_loss_class', 'dgt_loss_bbox_0', 'tgt_loss_giou', 'kd_loss_bbox', ...).

    ``args``: a dict / Namespace / `SimVGLossConfig` (keys = its fields, optional 'loss_preset' from
    `LOSS_PRESETS`; 'decoder_weight' / 'token_weight' / 'distill_weight' are accepted for the lambdas).
    ``outputs``: `SimVG.forward` output (needs decoder_logits/boxes, and token_logits/boxes when the TB is
    trained).  ``batch``: a Batch (uses ``target_boxes``) or the list of target boxes itself.
    """

    def __init__(self, args: Any = None):
        super().__init__()
        self.cfg = _config(args)
        c = self.cfg
        self.matcher, self.weight_dict, self.set_criterion = c.build()

    def forward(self, outputs: Dict[str, Any], batch) -> Dict[str, torch.Tensor]:
        c = self.cfg
        boxes = batch.target_boxes if hasattr(batch, "target_boxes") else batch
        ref = outputs["pred_logits"]
        targets = targets_from_boxes(boxes, ref.device)
        if len(targets) != ref.shape[0]:
            raise ValueError(f"SimVGCriterion: {len(targets)} target lists for a batch of {ref.shape[0]}")
        matched = {}
        for k in _MATCHED:
            v = outputs.get(k)
            if isinstance(v, (list, tuple)):
                matched.update({f"{k}[{i}]": t for i, t in enumerate(v)})
            elif v is not None:
                matched[k] = v
        assert_finite(matched, "SimVG outputs (before the Hungarian matcher)")
        n_gt = num_boxes_all_ranks(targets, ref.device)
        out: Dict[str, torch.Tensor] = {}
        total = ref.new_zeros(())

        if c.lambda_decoder:
            if "decoder_logits" not in outputs:
                raise KeyError("SimVGCriterion: lambda_decoder > 0 but the decoder branch did not run")
            dl, db = outputs["decoder_logits"], outputs["decoder_boxes"]
            dec = {"pred_logits": dl[-1], "pred_boxes": db[-1]}
            if c.aux_loss:
                dec["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(dl[:-1], db[:-1])]
            terms = self.set_criterion(dec, targets, n_gt)
            out["loss_dgt"] = c.lambda_decoder * weighted_sum(terms, self.weight_dict)
            total = total + out["loss_dgt"]
            out.update({f"dgt_{k}": v.detach() for k, v in terms.items()})

        if c.token_branch_on:
            if "token_logits" not in outputs or "decoder_logits" not in outputs:
                raise KeyError("SimVGCriterion: distillation needs both branches (run the model with branch='both')")
            W, pseudo, _ = distill_targets(self.matcher, outputs["decoder_logits"][-1],
                                           outputs["decoder_boxes"][-1], targets)
            tok = {"pred_logits": outputs["token_logits"], "pred_boxes": outputs["token_boxes"]}
            t_gt = self.set_criterion(tok, targets, n_gt)
            t_kd = self.set_criterion(tok, pseudo, num_boxes_all_ranks(pseudo, ref.device))
            out["loss_tgt"] = c.lambda_token * (1 - W) * weighted_sum(t_gt, self.weight_dict)
            out["loss_kd"] = c.lambda_distill * W * weighted_sum(t_kd, self.weight_dict)
            out["distill_w"] = W.detach()
            total = total + out["loss_tgt"] + out["loss_kd"]
            out.update({f"tgt_{k}": v.detach() for k, v in t_gt.items()})
            out.update({f"kd_{k}": v.detach() for k, v in t_kd.items()})
        out["loss"] = total
        return out
