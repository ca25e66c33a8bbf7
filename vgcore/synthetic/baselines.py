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

GREC baselines (`grec_baselines`, every record of a gRefCOCO-style split, scored by
`vgcore.metrics.GRECAccumulator` -- the evaluation's own code: GIoU matching, Pr@(F1=1, IoU>=0.5), N-acc, T-acc):
  always_no_target  predicts nothing: right on every no-target record (N-acc 1 by construction, T-acc 0).
  largest_object    one box, the largest object, at score 1: right only on single-target records whose target
                    it is (N-acc 0, T-acc 1).
  random_object     one box, a uniformly random object, at score 1; exact expectation over the choice.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["iou_xyxy", "trivial_baselines", "noun_only_baseline", "grec_baselines"]


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


def _box_area(o) -> float:
    return float(o.get("area", (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1])))


def grec_baselines(records: Sequence, score_thresh: float = 0.7, iou_thresh: float = 0.5) -> dict:
    """{'always_no_target', 'largest_object', 'random_object'} -> {GREC main key, 'n_acc', 't_acc'} over every
    record (no-, single- and multi-target), computed with `vgcore.metrics.GRECAccumulator`."""
    import torch

    from ..metrics import GREC_MAIN_KEY, GRECAccumulator
    recs = list(records)
    if not recs:
        raise ValueError("no records to score")
    gts = [torch.as_tensor(np.asarray(r.boxes, np.float64).reshape(-1, 4)) for r in recs]
    none = torch.zeros(0, 4, dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)

    def score(choice) -> dict:
        acc = GRECAccumulator(score_thresh, iou_thresh)
        acc.update([none if b is None else b for b in choice], [torch.zeros(0) if b is None else one for b in choice],
                   gts)
        r = acc.compute()
        return {GREC_MAIN_KEY: r[GREC_MAIN_KEY], "n_acc": r["n_acc"], "t_acc": r["t_acc"]}

    boxes = [np.array([o["box"] for o in _objects(r)], np.float64) for r in recs]
    largest = [torch.as_tensor(b[int(np.argmax([_box_area(o) for o in _objects(r)]))][None])
               for r, b in zip(recs, boxes)]
    out = {"always_no_target": score([None] * len(recs)), "largest_object": score(largest)}
    # random object: exact expectation = the mean over object slots k of each record's score with object k
    per = GRECAccumulator(score_thresh, iou_thresh)
    exp_correct = np.zeros(len(recs))
    for i, (b, g) in enumerate(zip(boxes, gts)):
        res = per.match([torch.as_tensor(x[None]) for x in b], [one] * len(b), [g] * len(b))
        exp_correct[i] = res["correct"].double().mean().item()
    nt = np.array([g.shape[0] == 0 for g in gts])
    out["random_object"] = {GREC_MAIN_KEY: float(exp_correct.mean()), "n_acc": 0.0, "t_acc": 1.0 if (~nt).any() else 0.0}
    return out
