"""HiVG evaluation: post-processing and metrics.

The predicted (cx, cy, w, h) on the padded canvas is mapped back to original-image pixels through the recorded
transform and compared with the annotation box; a hit is IoU >= 0.5; counts are summed over ranks, every
sample exactly once (the official DistributedSampler pads the split with duplicates).  IoU is invariant to the
letterbox map, so this equals the official canvas IoU except that we clamp to the image instead of to the
canvas.  Accuracy by expression length uses the paper's buckets (Fig. 4c): 1-5, 6-7, 8-10, 11+ words.  A
diagnostic rides along: ``align_pointing``, how often the alignment map's best patch overlaps the target box
(`make_accumulators`).
"""
from __future__ import annotations

import numpy as np
import torch

from vgcore.boxes import box_cxcywh_to_xyxy
from vgcore.metrics import PointingAccumulator, RECAccumulator, argmax_cell_in_box

LENGTH_BUCKETS = ((1, 5, "len1-5"), (6, 7, "len6-7"), (8, 10, "len8-10"), (11, 10 ** 9, "len11+"))


def length_bucket(text: str) -> str:
    n = len(text.split())
    for lo, hi, name in LENGTH_BUCKETS:
        if lo <= n <= hi:
            return name
    return "len0"


def make_accumulators() -> dict:
    """REC metrics (Acc@0.5, mIoU, by length) and ``align_pointing``: the share of samples whose alignment map
    (``visu_token_similarity``, letterbox patches excluded) peaks on a patch overlapping the target box.  The
    second is a diagnostic, not a paper metric: it tells a map that finds the target from a box that does not
    follow it (hivg/README.md, "Learning diagnosis")."""
    return {"rec": RECAccumulator(thresholds=(0.5,)), "map": PointingAccumulator("align_pointing")}


def gt_boxes_original(batch) -> torch.Tensor:
    """[B, 4] xyxy of each record's (single) target in original pixels."""
    return torch.from_numpy(np.stack([r.boxes[0] for r in batch.records])).to(batch.images.device, torch.float32)


def make_postprocess():
    def postprocess(outputs: dict, batch) -> dict:
        pred = batch.boxes_to_original(outputs["pred_boxes"])
        rec = {"pred_xyxy": pred, "gt_xyxy": gt_boxes_original(batch),
               "group": [length_bucket(r.expression) for r in batch.records]}
        hit = argmax_cell_in_box(outputs["visu_token_similarity"], box_cxcywh_to_xyxy(batch.boxes.float()),
                                 ignore=outputs.get("visu_mask"))
        return {"rec": rec, "map": {"hit": hit}}
    return postprocess

