"""VG-LAW evaluation at dataset level: REC Prec@0.5 and RES mIoU / oIoU / Pr@0.5..0.9 at original resolution.

* REC: the predicted normalised (cx, cy, w, h) on the padded canvas is mapped back to original-image pixels
  through the batch's affine (`vgcore.data.sample.Batch.boxes_to_original`) and compared with the annotation
  box; a hit is IoU >= ``iou_threshold`` (0.5).  IoU is invariant to the resize + paste, so this equals the
  official canvas IoU up to clamping to the image.
* RES: the canvas logits are sampled back onto every original pixel (`vgcore.data.masks.masks_to_original`:
  bilinear, each original pixel centre mapped through the affine), binarised at sigmoid > ``mask_threshold`` (0.35) and
  compared with the annotation's mask decoded at original resolution: mIoU (mean per-sample IoU), oIoU
  (sum I / sum U) and Pr@t (share of samples with IoU >= t), LAVT's definitions (`vgcore.metrics.RESAccumulator`).
  The official code measures mIoU on the 448 canvas instead (padding pixels predicted as object count as false
  positives, an empty prediction of an empty mask counts 1) and has no oIoU / Pr@t.
* ``canvas=True`` adds the official canvas numbers under ``canvas/``: box IoU of the normalised boxes, mask IoU
  against the pasted ground truth on the whole canvas (here an empty-vs-empty sample counts 0, officially 1).

Counts are summed over ranks, every sample exactly once.  Keys: ``n``, ``rec/acc@0.5``, ``rec/miou``,
``res/miou``, ``res/oiou``, ``res/pr@0.5`` ... ``res/pr@0.9`` (by task), ``canvas/...``; ``score`` = the
selection metric (``rec/acc@0.5`` when the model has the REC head, else ``res/miou``).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch

from vgcore.boxes import box_cxcywh_to_xyxy
from vgcore.data.masks import encode_mask, gt_masks_original, masks_to_original
from vgcore.metrics import RECAccumulator, RESAccumulator

__all__ = ["VGLAWMetrics", "make_postprocess", "predictions", "format_metrics", "PR_THRESHOLDS"]

PR_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


class VGLAWMetrics:
    """Accumulator (the `vgcore.engine.evaluate` protocol) of the REC and / or RES metrics of the module doc.
    ``update(rec=dict(pred_xyxy, gt_xyxy) | None, res=dict(pred, gt) | None, canvas=dict(...) | None)``."""

    def __init__(self, rec: bool, res: bool, iou_threshold: float = 0.5, canvas: bool = False):
        self.rec = RECAccumulator((iou_threshold,)) if rec else None
        self.res = RESAccumulator(PR_THRESHOLDS) if res else None
        self.canvas_rec = RECAccumulator((iou_threshold,)) if (rec and canvas) else None
        self.canvas_res = RESAccumulator((0.5,)) if (res and canvas) else None

    def _accs(self):
        return [("rec", self.rec), ("res", self.res), ("canvas/rec", self.canvas_rec), ("canvas/res", self.canvas_res)]

    def update(self, rec=None, res=None, canvas=None):
        if self.rec is not None:
            self.rec.update(rec["pred_xyxy"], rec["gt_xyxy"])
        if self.res is not None:
            self.res.update(res["pred"], res["gt"])
        if canvas is not None:
            if self.canvas_rec is not None:
                self.canvas_rec.update(canvas["pred_xyxy"], canvas["gt_xyxy"])
            if self.canvas_res is not None:
                self.canvas_res.update(canvas["pred_mask"], canvas["gt_mask"])
        return self

    def all_reduce(self):
        for _, a in self._accs():
            if a is not None:
                a.all_reduce()
        return self

    def compute(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for name, a in self._accs():
            if a is None:
                continue
            r = a.compute()
            out["n"] = r["n"]
            keep = ("miou", "acc@") if name.endswith("rec") else ("miou", "oiou", "pr@")
            out.update({f"{name}/{k}": v for k, v in r.items() if k.startswith(keep)})
        out["score"] = out["rec/acc@0.5"] if self.rec is not None else out["res/miou"]
        return out


def _gt_boxes(batch) -> torch.Tensor:
    return torch.from_numpy(np.stack([r.boxes[0] for r in batch.records])).to(batch.images.device, torch.float32)


def make_postprocess(mask_threshold: float, canvas: bool = False):
    """``postprocess(outputs, batch) -> VGLAWMetrics.update kwargs``."""
    def postprocess(outputs: dict, batch) -> dict:
        post: dict = {}
        if "pred_box" in outputs:
            post["rec"] = {"pred_xyxy": batch.boxes_to_original(outputs["pred_box"]), "gt_xyxy": _gt_boxes(batch)}
        if "logit_mask" in outputs:
            logits, valid = masks_to_original(outputs["logit_mask"], batch)
            pred = (logits.sigmoid() > mask_threshold) & valid
            post["res"] = {"pred": pred.cpu(), "gt": gt_masks_original(batch, pred.shape[-2:])}
        if canvas:
            c: dict = {}
            if "pred_box" in outputs:
                c.update(pred_xyxy=box_cxcywh_to_xyxy(outputs["pred_box"].float()),
                         gt_xyxy=box_cxcywh_to_xyxy(batch.boxes.float()))
            if "logit_mask" in outputs:
                c.update(pred_mask=(outputs["logit_mask"][:, 0].sigmoid() > mask_threshold).cpu(),
                         gt_mask=(batch.masks > 0).cpu())
            post["canvas"] = c
        return post
    return postprocess


def predictions(outputs: dict, batch, mask_threshold: float) -> List[dict]:
    """Per sample, original pixels: ``box_xyxy`` (RES-only models: the predicted mask's bounding box, the whole
    image when empty) and, with a mask head, ``mask_rle`` (compressed COCO RLE, JSON-able) and ``mask_area``."""
    n = len(batch.records)
    boxes = batch.boxes_to_original(outputs["pred_box"]).cpu().numpy() if "pred_box" in outputs else None
    masks: Optional[torch.Tensor] = None
    if "logit_mask" in outputs:
        logits, valid = masks_to_original(outputs["logit_mask"], batch)
        masks = ((logits.sigmoid() > mask_threshold) & valid).cpu()
    res = []
    for i in range(n):
        h, w = int(batch.orig_size[i, 0]), int(batch.orig_size[i, 1])
        r: dict = {}
        if masks is not None:
            m = masks[i, :h, :w].numpy().astype(np.uint8)
            r.update(mask_rle=encode_mask(m), mask_area=float(m.sum()))
        if boxes is not None:
            r["box_xyxy"] = boxes[i]
        else:
            ys, xs = np.nonzero(masks[i, :h, :w].numpy())
            r["box_xyxy"] = (np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32) if xs.size
                             else np.array([0, 0, w, h], np.float32))
        res.append(r)
    return res


def format_metrics(dataset: str, split: str, m: dict) -> str:
    parts = []
    if "rec/acc@0.5" in m:
        parts.append(f"REC Prec@0.5 {100 * m['rec/acc@0.5']:.2f} (box mIoU {m['rec/miou']:.4f})")
    if "res/miou" in m:
        prs = " ".join(f"{k[4:]} {100 * v:.2f}" for k, v in m.items() if k.startswith("res/pr@"))
        parts.append(f"RES mIoU {100 * m['res/miou']:.2f} oIoU {100 * m['res/oiou']:.2f} {prs}")
    line = f"{dataset} {split} (n={int(m.get('n', 0))}): " + " | ".join(parts)
    canv = [f"{k} {100 * v:.2f}" for k, v in m.items() if k.startswith("canvas/")]
    return line + ("\n  padded canvas (official protocol): " + ", ".join(canv) if canv else "")
