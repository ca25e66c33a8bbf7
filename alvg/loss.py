"""ALVG losses, as the official ``TextGuidedQuerySelectKDDETRHead.forward_train`` / ``calc_loss`` /
``calc_attn_loss`` and its ``SetCriterion`` compute them (plus the training loop's sum).

Detection (every decoder layer, each Hungarian-matched on its own; costs class 1 / L1 5 / GIoU 2, class cost
-softmax[target]): CE over all queries with class weights [1, eos_coef = 0.1]; L1 and 1 - GIoU on matched pairs
divided by the (all-reduced) number of targets; weights class 1, bbox 5, giou 2; layers 0..n-2 add the same
terms with suffixes ``_0``, ``_1``, ... (``vgcore.models.matcher.SetCriterion``).

Mask (last layer's image only, one mask per image = the union of the targets): focal (alpha 0.25, gamma 2;
per-image pixel mean, summed, / number of targets) x 15 and dice (+1 smoothing, summed, / number of targets)
x 6.  Without ground-truth masks (box-only data: ReferIt, Flickr30k, mixed pre-training) both terms are float
zeros -- the official code crashes there (an int64 zero scaled in place by 15.0).

Attention supervision at the patch grid (h, w), from the region of each target k:
* region: the ground-truth mask when the data has masks (one target: the union mask; several: the union mask
  inside the target's box); otherwise the box rasterised on the input canvas
  (rows floor(y1) .. ceil(y2), columns floor(x1) .. ceil(x2));
* coverage M_k = area-average of the region over each patch (fraction covered, in [0, 1]).
Score loss (TIE score map s): overlap map O = max_k(M_k / sum M_k) / K; cells with O = 0 get
-1 / (h w - #positive); a sample with no target has O = -1 / (h w) everywhere; L = -sum(O s) / B.
Decoder loss (cross-attention maps A [n, B, Q, h, w], focus map F_k = 1[M_k > 0] for masks, M_k for boxes):
per (layer, matched query q, target k): (sum A - sum A F_k) / (sum A F_k + 0.001), summed and divided by the
(all-reduced) number of such pairs; queries are matched once, on the last layer, and every layer reuses it.
Weights ``score_attn_loss_weight`` (λ_s) and ``decoder_attn_loss_weight`` (λ_d).

Total: L = L_det + 15 focal + 6 dice + λ_s L_score + λ_d L_dec.

Compat switches (from the model config, ON for official checkpoints):
* ``mask_loss_double_sigmoid``: focal and dice apply a sigmoid to the mask head's output even when it is
  already a probability (``mask_head_sigmoid_output``); off: they see the logits (logit of the probability).
* ``mask_target_bilinear_int``: mask target = union mask bilinearly resized to the mask head's size, then
  truncated to int (only pixels whose value is exactly 1 stay 1); off: thresholded at 0.5.
* ``attn_targets_mask_vs_box``: box regions end inclusively (rows floor(y1) .. ceil(y2) + 1 exclusive) and the
  box focus map stays fractional; off: ends exclusive and the focus map is binarised like the mask one.
  (The official box canvas is a hard-coded 640 x 640; here it is the input canvas, identical at 640.)
* ``decoder_attn_loss_layer_summed_ratio``: with one query, A is first summed over the layers and the loss is
  sum_b (S_b - I_b) / (I_b + 0.001) / (B n); off: the per-(layer, pair) ratio above, for every query count.

Box coordinates come from the normalised cxcywh targets; floor / ceil absorb 1e-3 px of float rounding.

Non-finite model outputs: checked before the Hungarian matcher (`vgcore.engine.assert_finite`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from simvg.loss import targets_from_boxes
from vgcore import dist
from vgcore.boxes import box_cxcywh_to_xyxy
from vgcore.engine import assert_finite
from vgcore.models.losses import dice_loss, sigmoid_focal_loss
from vgcore.models.matcher import SetLossConfig, flatten_matches, num_boxes_all_ranks

__all__ = ["ALVGLossConfig", "ALVGCriterion", "LOSS_SWITCHES", "mask_target", "attention_targets",
           "score_loss", "decoder_attention_loss", "box_coverage"]

LOSS_SWITCHES = ("mask_loss_double_sigmoid", "mask_target_bilinear_int", "attn_targets_mask_vs_box",
                 "decoder_attn_loss_layer_summed_ratio")
RATIO_EPS = 0.001


@dataclass
class ALVGLossConfig(SetLossConfig):   # + the DETR set loss's fields (`vgcore.models.matcher.SetLossConfig`)
    weight_mask: float = 15.0            # focal
    weight_dice: float = 6.0
    score_attn_loss_weight: float = 40.0
    decoder_attn_loss_weight: float = 1.0
    use_masks: Optional[bool] = None      # None: the mask loss / mask attention targets whenever the batch has masks
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def _config(args: Any) -> ALVGLossConfig:
    if isinstance(args, ALVGLossConfig):
        return args
    names = {f.name for f in fields(ALVGLossConfig)}
    if args is None:
        return ALVGLossConfig()
    d = dict(args) if isinstance(args, dict) else dict(vars(args))
    if isinstance(args, dict):
        unknown = sorted(set(d) - names)
        if unknown:
            raise KeyError(f"unknown ALVG loss keys {unknown}; valid: {sorted(names)}")
    return ALVGLossConfig(**{k: v for k, v in d.items() if k in names and v is not None})


# ------------------------------------------------------------------------------------------------ targets
def mask_target(masks: torch.Tensor, size, bilinear_int: bool) -> torch.Tensor:
    """Union masks [B,H,W] (0/1) at the input canvas -> float [B,*size] target of the mask head."""
    m = F.interpolate(masks[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return m.int().float() if bilinear_int else (m >= 0.5).float()


def _px_bounds(lo: torch.Tensor, hi: torch.Tensor, inclusive: bool):
    """Integer pixel interval [a, b) of a box side (floor / ceil with 1e-3 px of slack for float rounding)."""
    a = torch.floor(lo + 1e-3)
    b = torch.ceil(hi - 1e-3) + (1 if inclusive else 0)
    return a, b


def box_coverage(boxes_xyxy: torch.Tensor, canvas_hw, grid_hw, inclusive: bool) -> torch.Tensor:
    """[K,4] xyxy canvas pixels -> [K,h,w] fraction of each patch the rasterised box covers (exactly the area
    average of the 0/1 raster when the canvas is a multiple of the grid)."""
    H, W = canvas_hw
    h, w = grid_hw
    dev = boxes_xyxy.device
    x1, x2 = _px_bounds(boxes_xyxy[:, 0], boxes_xyxy[:, 2], inclusive)
    y1, y2 = _px_bounds(boxes_xyxy[:, 1], boxes_xyxy[:, 3], inclusive)
    x1, x2 = x1.clamp(0, W), x2.clamp(0, W)
    y1, y2 = y1.clamp(0, H), y2.clamp(0, H)
    if H % h == 0 and W % w == 0:
        ph, pw = H // h, W // w
        cx = torch.arange(w, device=dev, dtype=torch.float64) * pw
        cy = torch.arange(h, device=dev, dtype=torch.float64) * ph
        ox = (torch.minimum(x2[:, None].double(), cx + pw) - torch.maximum(x1[:, None].double(), cx)).clamp(min=0)
        oy = (torch.minimum(y2[:, None].double(), cy + ph) - torch.maximum(y1[:, None].double(), cy)).clamp(min=0)
        return (oy[:, :, None] * ox[:, None, :] / (ph * pw)).float()
    xs = torch.arange(W, device=dev)[None, None, :]
    ys = torch.arange(H, device=dev)[None, :, None]
    r = ((xs >= x1[:, None, None]) & (xs < x2[:, None, None]) & (ys >= y1[:, None, None]) & (ys < y2[:, None, None]))
    return F.adaptive_avg_pool2d(r[:, None].float(), (h, w))[:, 0]


def _box_raster(boxes_xyxy: torch.Tensor, canvas_hw, inclusive: bool) -> torch.Tensor:
    H, W = canvas_hw
    x1, x2 = _px_bounds(boxes_xyxy[:, 0], boxes_xyxy[:, 2], inclusive)
    y1, y2 = _px_bounds(boxes_xyxy[:, 1], boxes_xyxy[:, 3], inclusive)
    xs = torch.arange(W, device=boxes_xyxy.device)[None, None, :]
    ys = torch.arange(H, device=boxes_xyxy.device)[None, :, None]
    return ((xs >= x1[:, None, None]) & (xs < x2[:, None, None]) & (ys >= y1[:, None, None]) &
            (ys < y2[:, None, None]))


def attention_targets(boxes_cxcywh: Sequence[torch.Tensor], masks: Optional[torch.Tensor], canvas_hw, grid_hw,
                      box_compat: bool) -> Dict[str, Any]:
    """The targets of both attention losses (vectorised over the batch and the targets).

    boxes_cxcywh: B tensors [K_b,4] normalised cxcywh; masks: [B,H,W] union masks at the canvas, or None (box
    regions).  Returns ``coverage`` and ``focus`` [B,K,h,w] (K = max K_b; rows past K_b are zero),
    ``num_targets`` [B] long and ``overlap`` [B,h,w] (the score-loss target O)."""
    H, W = canvas_hw
    h, w = grid_hw
    B = len(boxes_cxcywh)
    counts = [int(b.reshape(-1, 4).shape[0]) for b in boxes_cxcywh]
    K = max(counts, default=0)
    dev = boxes_cxcywh[0].device if B else torch.device("cpu")
    cov = torch.zeros(B, max(K, 1), h, w, device=dev)
    num = torch.tensor(counts, dtype=torch.long, device=dev)
    if K > 0:
        img = torch.repeat_interleave(torch.arange(B, device=dev), num)            # image of each target
        slot = torch.cat([torch.arange(c, device=dev) for c in counts])            # its index in the image
        allb = torch.cat([b.reshape(-1, 4) for b in boxes_cxcywh]).to(dev)
        xyxy = box_cxcywh_to_xyxy(allb.double()) * torch.tensor([W, H, W, H], dtype=torch.float64, device=dev)
        if masks is not None:
            m = masks.to(dev).bool()
            single = num[img] == 1
            region = m[img]                                                        # one target: the union mask
            if not bool(single.all()):                                             # several: inside each box
                multi = ~single
                region[multi] = region[multi] & _box_raster(xyxy[multi], canvas_hw, inclusive=False)
            c = F.adaptive_avg_pool2d(region[:, None].float(), (h, w))[:, 0]
        else:
            c = box_coverage(xyxy, canvas_hw, grid_hw, inclusive=box_compat)
        cov[img, slot] = c.to(cov.dtype)
    focus = cov if (masks is None and box_compat) else (cov > 0).to(cov.dtype)
    HW = h * w
    area = cov.sum((2, 3), keepdim=True)
    norm = torch.where(area > 0, cov / area.clamp(min=1e-12), torch.zeros_like(cov))
    p = norm.amax(1) / num.clamp(min=1)[:, None, None].to(cov.dtype)
    npos = (p != 0).sum((1, 2), keepdim=True)
    neg = torch.where(npos < HW, -1.0 / (HW - npos).clamp(min=1).to(cov.dtype), torch.zeros_like(npos, dtype=cov.dtype))
    overlap = torch.where(p == 0, neg.expand_as(p), p)
    overlap = torch.where((num == 0)[:, None, None], torch.full_like(overlap, -1.0 / HW), overlap)
    return {"coverage": cov[:, :K], "focus": focus[:, :K], "overlap": overlap, "num_targets": num}


# ------------------------------------------------------------------------------------------------ terms
def score_loss(score_map: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
    """-sum(O s) / B."""
    return -(overlap.to(score_map.dtype) * score_map).sum() / score_map.shape[0]


def decoder_attention_loss(attn_maps: torch.Tensor, focus: torch.Tensor, num_targets: torch.Tensor, indices=None,
                           layer_summed: bool = False) -> torch.Tensor:
    """attn_maps [n,B,Q,h,w]; focus [B,K,h,w] and num_targets [B] (`attention_targets`); indices: last-layer
    matches [(query idx, target idx)] per sample (needed unless ``layer_summed`` with one query)."""
    n, B, Q = attn_maps.shape[:3]
    dev = attn_maps.device
    if layer_summed and Q == 1:
        A = attn_maps.sum(0)[:, 0]                                         # [B,h,w]
        valid = num_targets.to(dev) > 0
        F0 = (focus[:, 0] if focus.shape[1] else torch.zeros_like(A)).to(A.dtype)
        S = A.sum((1, 2))
        inside = (A * F0).sum((1, 2))
        ratio = torch.where(valid, (S - inside) / (inside + RATIO_EPS), torch.zeros_like(S))
        return ratio.sum() / (B * n)
    image, query, tgt = (i.to(dev) for i in flatten_matches(indices))
    pairs = torch.tensor(float(n * image.numel()), device=dev)
    norm = max(dist.all_reduce_mean(pairs).item(), 1.0)
    if image.numel() == 0:
        return attn_maps.sum() * 0.0
    Fm = focus.to(dev)[image, tgt].to(attn_maps.dtype)
    A = attn_maps[:, image, query]                                         # [n,P,h,w]
    S = A.sum((2, 3))
    inside = (A * Fm[None]).sum((2, 3))
    return ((S - inside) / (inside + RATIO_EPS)).sum() / norm


class ALVGCriterion(nn.Module):
    """``ALVGCriterion(args, compat)(outputs, batch) -> dict``: 'loss' (the total to back-propagate), 'loss_dgt'
    (weighted detection sum), 'loss_mask' (15 focal + 6 dice), 'score_attention_loss' and
    'decoder_attention_loss' (weighted), and detached per-term logs ``raw_<term>``.

    ``args``: dict / Namespace / `ALVGLossConfig`; ``compat``: the model config's switches (`ALVGConfig.compat()`;
    the four loss switches and ``mask_head_sigmoid_output`` are read).  ``outputs``: `alvg.model.ALVG.forward` output.  ``batch``: anything
    with ``target_boxes`` (B tensors [N_i,4] normalised cxcywh) and ``masks`` ([B,H,W] union masks at the input
    canvas, or None).  `compute` returns every raw term, its weight, the official composite values and the
    targets (for tests and diagnostics)."""

    def __init__(self, args: Any = None, compat: Optional[Dict[str, bool]] = None):
        super().__init__()
        self.cfg = _config(args)
        self.compat = {k: bool((compat or {}).get(k, False)) for k in LOSS_SWITCHES}
        self.mask_head_probs = bool((compat or {}).get("mask_head_sigmoid_output", False))
        self.matcher, self.det_weights, self.set_criterion = self.cfg.build()

    def weight_of(self, term: str) -> float:
        base = term.rsplit("_", 1)[0] if term.rsplit("_", 1)[-1].isdigit() else term
        c = self.cfg
        table = dict(self.det_weights, loss_mask=c.weight_mask, loss_dice=c.weight_dice,
                     score_attention_loss=c.score_attn_loss_weight, decoder_attention_loss=c.decoder_attn_loss_weight)
        return float(table[base])

    def _mask_terms(self, pred: torch.Tensor, target: torch.Tensor, num: float):
        head_probs = self.mask_head_probs
        if self.compat["mask_loss_double_sigmoid"]:
            x = pred if head_probs else pred.sigmoid()
        else:
            x = torch.logit(pred.float(), eps=1e-6) if head_probs else pred
        x = x.float()
        return (sigmoid_focal_loss(x, target, num, self.cfg.focal_alpha, self.cfg.focal_gamma),
                dice_loss(x, target, num))

    def compute(self, outputs: Dict[str, Any], batch) -> dict:
        c = self.cfg
        dl, db = outputs["decoder_logits"], outputs["decoder_boxes"]
        ref = dl
        boxes = batch.target_boxes if hasattr(batch, "target_boxes") else batch["target_boxes"]
        masks = getattr(batch, "masks", None) if not isinstance(batch, dict) else batch.get("masks")
        use_masks = (masks is not None) if c.use_masks is None else bool(c.use_masks)
        if use_masks and masks is None:
            raise ValueError("ALVGCriterion: use_masks is on but the batch carries no masks")
        if not use_masks:
            masks = None
        targets = targets_from_boxes(boxes, ref.device)
        if len(targets) != dl.shape[1]:
            raise ValueError(f"ALVGCriterion: {len(targets)} target lists for a batch of {dl.shape[1]}")
        assert_finite({"decoder_logits": dl, "decoder_boxes": db}, "ALVG outputs (before the Hungarian matcher)")
        n_gt = num_boxes_all_ranks(targets, ref.device)
        raw: Dict[str, torch.Tensor] = {}
        last = {"pred_logits": dl[-1], "pred_boxes": db[-1]}
        last_idx = self.matcher(last, targets)
        raw.update(self.set_criterion.single(last, targets, n_gt, indices=last_idx))
        if c.aux_loss:
            for i in range(dl.shape[0] - 1):
                t = self.set_criterion.single({"pred_logits": dl[i], "pred_boxes": db[i]}, targets, n_gt)
                raw.update({f"{k}_{i}": v for k, v in t.items()})
        tg: Dict[str, Any] = {"boxes_cxcywh": [t["boxes"] for t in targets]}
        pred_masks = outputs.get("pred_masks")
        zero = dl.new_zeros(()).float()
        if pred_masks is not None and masks is not None:
            mt = mask_target(masks.to(pred_masks.device), pred_masks.shape[-2:], self.compat["mask_target_bilinear_int"])
            raw["loss_mask"], raw["loss_dice"] = self._mask_terms(pred_masks, mt, n_gt)
            tg["mask_target"] = mt
        else:  # box-only data: float zeros (the official int64 zeros crash the in-place weighting)
            raw["loss_mask"], raw["loss_dice"] = zero, zero
        lam_s, lam_d = c.score_attn_loss_weight, c.decoder_attn_loss_weight
        if lam_s or lam_d:
            attn = outputs["attn_maps"]
            at = attention_targets([t["boxes"] for t in targets], masks, outputs.get("input_hw", (0, 0)),
                                   attn.shape[-2:], self.compat["attn_targets_mask_vs_box"])
            tg.update(overlap=at["overlap"], focus=at["focus"], coverage=at["coverage"])
            score = outputs.get("score_map")
            raw["score_attention_loss"] = score_loss(score, at["overlap"].to(score.device)) if score is not None else zero
            raw["decoder_attention_loss"] = decoder_attention_loss(
                attn, at["focus"].to(attn.device), at["num_targets"], last_idx,
                self.compat["decoder_attn_loss_layer_summed_ratio"])
        else:
            raw["score_attention_loss"], raw["decoder_attention_loss"] = zero, zero
        weighted = {k: self.weight_of(k) * v for k, v in raw.items()}
        det = [k for k in raw if k.startswith(("loss_class", "loss_bbox", "loss_giou"))]
        official = {"loss_dgt": sum(weighted[k] for k in det), "loss_mask": weighted["loss_mask"] + weighted["loss_dice"],
                    "score_attention_loss": weighted["score_attention_loss"],
                    "decoder_attention_loss": weighted["decoder_attention_loss"]}
        official["loss_total"] = official["loss_dgt"] + official["score_attention_loss"] + official["decoder_attention_loss"]
        official["train_loop_total"] = official["loss_total"] + official["loss_mask"]
        return {"raw": raw, "weighted": weighted, "official": official, "targets": tg, "indices": last_idx}

    def forward(self, outputs: Dict[str, Any], batch) -> Dict[str, torch.Tensor]:
        r = self.compute(outputs, batch)
        o = r["official"]
        out = {"loss": o["train_loop_total"], "loss_dgt": o["loss_dgt"], "loss_mask": o["loss_mask"],
               "score_attention_loss": o["score_attention_loss"], "decoder_attention_loss": o["decoder_attention_loss"]}
        out.update({f"raw_{k}": v.detach() for k, v in r["raw"].items()
                    if not k[-1].isdigit() and k not in ("score_attention_loss", "decoder_attention_loss")})
        return out
