"""Trivial REC baselines (Acc@0.5) computed from records, to show a dataset is not solvable without looking
at the expression (or the image).

Every baseline is scored on the single-target records only (multi-/no-target records are skipped) and
needs the scene's object list in ``record.extra["objects"]``: dicts with ``category`` and ``box`` (xyxy
pixels; optional ``area`` in pixels), or ``(category, xyxy)`` tuples -- the synthetic generator stores
them, and `vgcore.synthetic.scenes.load_synthetic` re-attaches them from ``scenes.json``.

Definitions (a "hit" is IoU >= 0.5 with the target box, the reference codes' Acc@0.5 rule):
  center_box      a box centred in the image whose width/height are the mean *relative* target width/height
                  (w/W, h/H) over ``train_records`` (over the evaluated records when not given).
  largest_object  the object with the largest area (mask area if given, else box area).
  random_object   a uniformly random object of the scene; the exact expectation mean(#hits / #objects).
  noun_only       a uniformly random object of the kind the expression names (``extra["noun"]``, else
                  ``record.category``; a noun of None = "shape" means every object); exact expectation
                  mean(#hits among that kind / #objects of that kind).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["iou_xyxy", "trivial_baselines", "noun_only_baseline"]


def iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes a [N, 4] and b [M, 4] -> [N, M] (continuous coordinates, no +1)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _objects(r) -> list:
    objs = r.extra.get("objects") if isinstance(r.extra, dict) else None
    if not objs:
        raise ValueError(f"record {r.key()} has no extra['objects'] (the scene's object list); baselines need it")
    return [o if isinstance(o, dict) else {"category": o[0], "box": list(o[1])} for o in objs]


def _single(records) -> list:
    recs = [r for r in records if r.num_targets == 1]
    if not recs:
        raise ValueError("no single-target records to score")
    return recs


def _size(r):
    if r.width is None or r.height is None:
        raise ValueError(f"record {r.key()} lacks width/height")
    return float(r.width), float(r.height)


def trivial_baselines(records: Sequence, train_records: Optional[Sequence] = None, thresh: float = 0.5) -> dict:
    """{'center_box', 'largest_object', 'random_object'} -> Acc@thresh over the single-target records."""
    recs = _single(records)
    ref = _single(train_records) if train_records else recs
    rel = np.array([[(r.box[2] - r.box[0]) / _size(r)[0], (r.box[3] - r.box[1]) / _size(r)[1]] for r in ref])
    rw, rh = rel.mean(0)
    center = largest = rand = 0.0
    for r in recs:
        W, H = _size(r)
        tgt = r.box[None]
        cb = np.array([[W * (1 - rw) / 2, H * (1 - rh) / 2, W * (1 + rw) / 2, H * (1 + rh) / 2]])
        center += float(iou_xyxy(cb, tgt)[0, 0] >= thresh)
        objs = _objects(r)
        boxes = np.array([o["box"] for o in objs], np.float64)
        hits = iou_xyxy(boxes, tgt)[:, 0] >= thresh
        areas = np.array([o.get("area", (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1])) for o in objs])
        largest += float(hits[int(np.argmax(areas))])
        rand += float(hits.mean())
    n = len(recs)
    return {"center_box": center / n, "largest_object": largest / n, "random_object": rand / n}


def noun_only_baseline(records: Sequence, thresh: float = 0.5) -> float:
    """Exact expected Acc@thresh of picking a random object of the kind the expression names."""
    recs = _single(records)
    total = 0.0
    for r in recs:
        noun = r.extra.get("noun", r.category) if isinstance(r.extra, dict) else r.category
        objs = _objects(r)
        pool = [o for o in objs if noun is None or o["category"] == noun]
        if not pool:
            continue  # names a kind absent from the scene: the baseline has nothing to pick
        boxes = np.array([o["box"] for o in pool], np.float64)
        total += float((iou_xyxy(boxes, r.box[None])[:, 0] >= thresh).mean())
    return total / len(recs)
