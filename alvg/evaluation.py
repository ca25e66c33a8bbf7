"""ALVG evaluation at dataset level: REC Acc@0.5, RES mIoU / oIoU at original resolution, GREC with its RES metrics.

Predictions: the last decoder layer's boxes through the official post-processing (`simvg.model.postprocess_rec`:
clipped to the input frame, argmax of the object score over the non-empty queries), mapped back to original
pixels through the recorded affine; the mask (one per image) is the mask head's probability map sampled onto
every original pixel (`alvg.data.masks_to_original`, bilinear) and thresholded at ``mask_thresh`` (0.5).

* REC: Acc@0.5 = share of samples whose box has IoU >= 0.5 with the annotation box (``acc@0.5``, also ``miou``
  of the boxes).
* RES (runs with masks): against the annotation mask decoded at original resolution, mIoU (mean per-sample
  IoU), oIoU (sum I / sum U) and Pr@0.5..0.9 (`vgcore.metrics.RESAccumulator`).
* GREC (gRefCOCO, several queries): Pr@(F1=1, IoU>=0.5), N-acc and T-acc at score 0.7 with GIoU matching
  (`vgcore.metrics.GRECAccumulator`, SimVG's rule), and the masks' gIoU (mean per-sample IoU; a no-target sample
  counts 1 when its predicted mask is empty, else 0) and cIoU (sum I / sum U over the dataset).
Counts are summed over ranks, every sample exactly once, so the numbers do not depend on batch size or the
number of processes.

``batch_mean=True`` (``--batch_mean_metric`` / ``--official_compat``) adds the official numbers under
``batch_mean/``: the mean over batches of each batch's Acc@0.5 and mask mIoU measured on the input canvas
(the official code evaluates masks at 640 x 640 after resizing), and for GREC the batch-averaged F1 score /
N-acc (SimVG's aggregation) and the mean over batches of each batch's cIoU and gIoU on the canvas.  They depend
on the batch size.

Keys (fractions in [0, 1]): ``acc@0.5``, ``box_miou``, ``res/miou``, ``res/oiou``, ``res/pr@t``; GREC:
``pr@(F1=1,IoU>=0.5)``, ``n_acc``, ``t_acc``, ``res/giou``, ``res/ciou``; ``n``; ``score`` = the selection
metric (REC Acc@0.5; GREC Pr@(F1=1)).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from alvg.data import canvas_iou_counts, gt_masks_original, masks_to_original
from simvg.evaluation import branch_predictions
from vgcore.boxes import box_cxcywh_to_xyxy, box_iou_elementwise
from vgcore.data.masks import encode_mask
from vgcore.metrics import GREC_MAIN_KEY, GRECAccumulator, RECAccumulator, RESAccumulator, all_gather_objects, \
    all_reduce_sum

__all__ = ["ALVGMetrics", "make_postprocess", "predictions", "format_metrics", "GREC_SCORE_THRESH", "PR_THRESHOLDS"]

GREC_SCORE_THRESH = 0.7
PR_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


class _Sums:
    """Dataset-level GREC mask counts [n, iou_sum (no-target empty = 1), I_sum, U_sum], summed over ranks."""

    def __init__(self):
        self.local = torch.zeros(4, dtype=torch.float64)
        self.glob = None

    def update(self, inter: torch.Tensor, union: torch.Tensor):
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
        self.local += torch.stack([torch.tensor(float(inter.numel()), dtype=torch.float64), iou.sum(),
                                   inter.sum(), union.sum()])
        self.glob = None

    def all_reduce(self):
        self.glob = all_reduce_sum(self.local)

    def compute(self) -> dict:
        c = (self.glob if self.glob is not None else self.local).tolist()
        return {"giou": c[1] / c[0] if c[0] else 0.0, "ciou": c[2] / c[3] if c[3] else 0.0}


class ALVGMetrics:
    """Accumulator (the `vgcore.engine.evaluate` protocol) of the metrics in the module docstring.

    ``update(pred=dict(best_xyxy, all_xyxy, scores, keep), gt=[N_i,4] list, masks=dict(inter, union) | None,
    canvas=dict(hit [B], inter [B], union [B]) | None)``; boxes in original pixels."""

    def __init__(self, grec: bool, res: bool, batch_mean: bool = False):
        self.grec, self.res, self.batch_mean = grec, res, batch_mean
        self.det = GRECAccumulator(GREC_SCORE_THRESH, 0.5) if grec else RECAccumulator((0.5,))
        self.det_bm = GRECAccumulator(GREC_SCORE_THRESH, 0.5, batch_averaged=True) if (grec and batch_mean) else None
        self.masks = (_Sums() if grec else RESAccumulator(PR_THRESHOLDS)) if res else None
        self.batches: List[dict] = []          # per batch, official canvas numbers (batch_mean)
        self.batches_all: Optional[List[dict]] = None

    def update(self, pred: dict, gt: list, masks: Optional[dict] = None, canvas: Optional[dict] = None):
        if self.grec:
            n = len(gt)
            boxes = [pred["all_xyxy"][i][pred["keep"][i]] for i in range(n)]
            scores = [pred["scores"][i][pred["keep"][i]] for i in range(n)]
            self.det.update(boxes, scores, gt)
            if self.det_bm is not None:
                self.det_bm.update(boxes, scores, gt)
        else:
            g = torch.stack([torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)[0] for b in gt])
            self.det.update(pred["best_xyxy"].float().cpu(), g)
        if self.masks is not None and masks is not None:
            if self.grec:
                self.masks.update(masks["inter"], masks["union"])
            else:
                self.masks.update_counts(masks["inter"], masks["union"])
        if self.batch_mean and canvas is not None:
            row = {}
            if "hit" in canvas:
                row["acc@0.5"] = float(canvas["hit"].float().mean())
            if "inter" in canvas:
                i, u = canvas["inter"], canvas["union"]
                empty_ok = 1.0 if self.grec else 0.0
                row["miou"] = float(torch.where(u > 0, i / u.clamp(min=1), torch.full_like(i, empty_ok)).mean())
                row["ciou"] = float(i.sum() / u.sum()) if float(u.sum()) > 0 else 0.0
            self.batches.append(row)
        return self

    def all_reduce(self):
        self.det.all_reduce()
        if self.det_bm is not None:
            self.det_bm.all_reduce()
        if self.masks is not None:
            self.masks.all_reduce()
        if self.batch_mean:
            self.batches_all = [b for part in all_gather_objects(list(self.batches)) for b in part]
        return self

    def compute(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        r = self.det.compute()
        out["n"] = r["n"]
        if self.grec:
            for k in (GREC_MAIN_KEY, "n_acc", "t_acc", "mean_f1", "n_no_target"):
                out[k] = r[k]
            out["score"] = r[GREC_MAIN_KEY]
        else:
            out["acc@0.5"], out["box_miou"] = r["acc@0.5"], r["miou"]
            out["score"] = r["acc@0.5"]
        if self.masks is not None:
            m = self.masks.compute()
            if self.grec:
                out["res/giou"], out["res/ciou"] = m["giou"], m["ciou"]
            else:
                out.update({f"res/{k}": v for k, v in m.items() if k.startswith(("miou", "oiou", "pr@"))})
        if self.batch_mean:
            rows = self.batches_all if self.batches_all is not None else self.batches
            for key in ("acc@0.5", "miou", "ciou"):
                vals = [b[key] for b in rows if key in b]
                if vals and not (self.grec and key == "acc@0.5") and not (not self.grec and key == "ciou"):
                    name = {"miou": "res/giou" if self.grec else "res/miou", "ciou": "res/ciou"}.get(key, key)
                    out[f"batch_mean/{name}"] = float(np.mean(vals))
            if self.det_bm is not None:
                rb = self.det_bm.compute()
                out[f"batch_mean/{GREC_MAIN_KEY}"] = rb[GREC_MAIN_KEY]
                out["batch_mean/n_acc"] = rb["n_acc"]
        return out


def _canvas_masks(probs: torch.Tensor, hw, thresh: float) -> torch.Tensor:
    up = F.interpolate(probs[:, None].float(), size=tuple(hw), mode="bilinear", align_corners=False)[:, 0]
    return up >= thresh


def make_postprocess(img_size: int, res: bool, grec: bool, batch_mean: bool, mask_thresh: float = 0.5):
    """``postprocess(outputs, batch) -> ALVGMetrics.update kwargs``."""
    def postprocess(outputs: dict, batch) -> dict:
        pred = branch_predictions(outputs, batch, img_size)["decoder"]
        post = {"pred": pred, "gt": [torch.from_numpy(r.boxes) for r in batch.records]}
        probs = outputs.get("mask_probs")
        if res and probs is not None:
            vals, valid = masks_to_original(probs, batch)
            p = ((vals > mask_thresh) & valid).cpu()
            inter, union = canvas_iou_counts(p, gt_masks_original(batch, p.shape[-2:]))
            post["masks"] = {"inter": inter, "union": union}
        if batch_mean:
            canvas = {}
            if not grec:
                H, W = batch.input_size
                scale = batch.boxes.new_tensor([W, H, W, H]).float()
                gt = box_cxcywh_to_xyxy(batch.boxes.float()) * scale
                pb = box_cxcywh_to_xyxy(outputs["pred_boxes"].float()) * scale
                best = pred["best"].to(pb.device)
                pb = pb[torch.arange(pb.shape[0], device=pb.device), best]
                pb = torch.minimum(pb.clamp(min=0), scale)
                canvas["hit"] = (box_iou_elementwise(pb, gt.to(pb.device)) >= 0.5).cpu()
            if res and probs is not None and batch.masks is not None:
                pm = _canvas_masks(probs, batch.input_size, mask_thresh)
                canvas["inter"], canvas["union"] = canvas_iou_counts(pm.cpu(), (batch.masks > 0).cpu())
            post["canvas"] = canvas
        return post
    return postprocess


def predictions(outputs: dict, batch, img_size: int, score_thresh: float, mask_thresh: float = 0.5) -> List[dict]:
    """Per sample, original pixels: ``box_xyxy`` [4] and ``score`` of the best query; with several queries also
    ``boxes_xyxy`` / ``scores`` of the kept queries above ``score_thresh``; with a mask head ``mask_rle``
    (compressed COCO RLE) and ``mask_area``."""
    p = branch_predictions(outputs, batch, img_size)["decoder"]
    masks = None
    if outputs.get("mask_probs") is not None:
        vals, valid = masks_to_original(outputs["mask_probs"], batch)
        masks = ((vals > mask_thresh) & valid).cpu()
    res = []
    for i in range(len(batch.records)):
        best = int(p["best"][i])
        r = {"box_xyxy": p["best_xyxy"][i].cpu().numpy(), "score": float(p["scores"][i, best])}
        if p["all_xyxy"].shape[1] > 1:
            sel = p["keep"][i] & (p["scores"][i] >= score_thresh)
            r.update(boxes_xyxy=p["all_xyxy"][i][sel].cpu().numpy(), scores=p["scores"][i][sel].cpu().numpy())
        if masks is not None:
            h, w = int(batch.orig_size[i, 0]), int(batch.orig_size[i, 1])
            m = masks[i, :h, :w].numpy().astype(np.uint8)
            r.update(mask_rle=encode_mask(m), mask_area=float(m.sum()))
        res.append(r)
    return res


def format_metrics(dataset: str, split: str, m: dict, grec: bool) -> str:
    lines = [f"{dataset} {split} (n={int(m.get('n', 0))}):"]
    if grec:
        s = (f"  GREC: Pr@(F1=1,IoU>=0.5) {100 * m[GREC_MAIN_KEY]:.2f}  N-acc {100 * m['n_acc']:.2f}  "
             f"T-acc {100 * m['t_acc']:.2f}")
        if "res/giou" in m:
            s += f"  | masks gIoU {100 * m['res/giou']:.2f}  cIoU {100 * m['res/ciou']:.2f}"
    else:
        s = f"  REC Acc@0.5 {100 * m['acc@0.5']:.2f}"
        if "res/miou" in m:
            prs = " ".join(f"{k[4:]} {100 * v:.2f}" for k, v in m.items() if k.startswith("res/pr@"))
            s += f"  | RES mIoU {100 * m['res/miou']:.2f}  oIoU {100 * m['res/oiou']:.2f}  {prs}"
    lines.append(s)
    bm = {k[len("batch_mean/"):]: v for k, v in m.items() if k.startswith("batch_mean/")}
    if bm:
        lines.append("  batch-averaged (official, input canvas): " + "  ".join(f"{k} {100 * v:.2f}" for k, v in bm.items()))
    return "\n".join(lines)
