"""ResVG evaluation: boxes back to original pixels, the official strict accuracy, the report line.

The final-stage box (normalised cx, cy, w, h on the padded input) becomes xyxy in the original image: times the
input size, minus the paste offset, clamped at 0, divided by the per-axis resize ratio, then capped at the
original width / height (`vgcore.data.sample.Batch.boxes_to_original` with the letterbox's per-axis map; the
same steps as the official PostProcess, `resvg.model.boxes_to_original`).  IoU with the annotation box in
continuous pixels; a sample is correct at t when IoU > t (strict), t = 0.50, 0.55, ..., 0.90; mean IoU too.
Counts are summed over processes with every sample counted once (the official DistributedSampler repeats up to
world_size - 1 samples).  ``--breakdown expr_type`` (or ``expr_words``) adds the same figures per group of
samples (`vgcore.metrics.record_groups`: ``acc@0.5/<group>``, ``n/<group>``, ...), e.g. per expression type of
the synthetic data.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from vgcore.metrics import format_breakdown, record_groups

from resvg.model import ACC_THRESHOLDS, make_accumulator

__all__ = ["make_postprocess", "make_accumulators", "format_metrics", "gt_boxes_original"]


def gt_boxes_original(batch) -> torch.Tensor:
    """[B, 4] xyxy of each record's target box in original pixels (float32, untruncated)."""
    return torch.from_numpy(np.stack([r.boxes[0] for r in batch.records])).to(batch.images.device, torch.float32)


def make_postprocess(breakdown: Optional[str] = None):
    """``fn(outputs, batch)`` -> the accumulator's update arguments; with ``breakdown`` (a
    `vgcore.metrics.BREAKDOWNS` name) also each sample's group label."""
    def postprocess(outputs: dict, batch) -> dict:
        out = {"pred_xyxy": batch.boxes_to_original(outputs["pred_boxes"][:, 0]), "gt_xyxy": gt_boxes_original(batch)}
        groups = record_groups(batch.records, breakdown)
        if groups is not None:
            out["group"] = groups
        return out
    return postprocess


def make_accumulators():
    return make_accumulator()


def format_metrics(dataset: str, split: str, m: dict) -> str:
    accs = "  ".join(f"Acc@{t:.2f} {100 * m[f'acc@{t:g}']:.2f}" for t in ACC_THRESHOLDS if f"acc@{t:g}" in m)
    lines = [f"{dataset} {split}: Acc@0.5 (IoU > 0.5) {100 * m['acc@0.5']:.2f} (n={int(m['n'])}, mIoU {m['miou']:.4f})",
             f"  {accs}"]
    return "\n".join(lines + [f"  {line}" for line in format_breakdown(m)])
