"""Evaluation metrics for REC, GREC and RES as summed-count accumulators.

Every accumulator follows one life cycle::

    acc = RECAccumulator()
    for batch in loader:          # on every rank
        acc.update(...)
    acc.all_reduce()              # sums counts over torch.distributed ranks (no-op when not initialised)
    report = acc.compute()        # plain dict of python floats

State is a handful of float64 counters (a tensor per accumulator, plus per-group rows for REC), summed --
never a mean of batch means -- so results do not depend on batch size or world size.  The one deliberate
exception is ``GRECAccumulator(batch_averaged=True)``, which reproduces SimVG's per-batch averaging.

* ``all_reduce()`` is idempotent: updates go to local counts and the reduction always recomputes the global
  counts from them, so calling it twice (on every rank) does not double count.  It is a collective call:
  every rank must call it.  Works with gloo (CPU) and nccl (counts are moved to the current CUDA device).
* ``state_dict()`` / ``load_state_dict()`` / ``merge(other)`` let a caller combine accumulators by hand
  (e.g. results gathered from separate processes without a process group).
* ``reset()`` clears everything.

Boxes are xyxy in one common frame for prediction and ground truth (original image pixels by design;
IoU is invariant to per-axis scale + shift, so any affine-consistent frame gives the same value up to
clamping).  Fractions are returned in [0, 1] (multiply by 100 for papers' percentages).
The definitions are those of the official evaluators: REC Acc@tau with IoU >= tau counted per sample;
gRefCOCO's Pr@(F1=1, IoU>=0.5) / N-acc / T-acc; LAVT's mIoU / oIoU / Pr@t for masks.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import dist as _dist
from .boxes import box_iou_elementwise, generalized_box_iou_elementwise

__all__ = [
    "iou_xyxy", "giou_xyxy", "RECAccumulator", "GRECAccumulator", "RESAccumulator", "PointingAccumulator",
    "argmax_cell_in_box", "GREC_MAIN_KEY", "dist_is_active", "all_reduce_sum", "all_gather_objects",
    "BREAKDOWNS", "record_groups", "format_breakdown",
]

iou_xyxy = box_iou_elementwise
"""Elementwise IoU of xyxy boxes [..., 4] x [..., 4] -> [...] (alias of `vgcore.boxes.box_iou_elementwise`)."""
giou_xyxy = generalized_box_iou_elementwise
"""Elementwise GIoU of xyxy boxes (alias of `vgcore.boxes.generalized_box_iou_elementwise`)."""

GREC_MAIN_KEY = "pr@(F1=1,IoU>=0.5)"


# ------------------------------------------------------------------------------------------------ distributed

def dist_is_active() -> bool:
    return _dist.is_dist()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a float64 tensor over ranks (returns a new CPU tensor); identity when not distributed.
    NCCL reduces on the current CUDA device, gloo on the CPU (`vgcore.dist.all_reduce_sum` does the collective)."""
    t = t.detach().to(torch.float64).cpu().clone()
    if not _dist.is_dist() or _dist.get_world_size() == 1:
        return t
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else t.device
    return _dist.all_reduce_sum(t.to(dev)).cpu()


def all_gather_objects(obj) -> list:
    """List of ``obj`` from every rank (rank order); ``[obj]`` when not distributed."""
    return _dist.all_gather_object(obj)


# ------------------------------------------------------------------------------------------------ helpers

def _as_tensor(x, dtype=None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    x = torch.as_tensor(x)
    return x.to(dtype) if dtype is not None else x


def _valid_mask(valid, n: int, device) -> torch.Tensor:
    if valid is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    v = _as_tensor(valid).to(device=device).bool().reshape(-1)
    if v.numel() != n:
        raise ValueError(f"valid mask has {v.numel()} entries for a batch of {n}")
    return v


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b > 0 else 0.0


def _fmt(t: float) -> str:
    return f"{t:g}"


class _Base:
    """Shared plumbing: local counts tensor + optional globally reduced copy."""

    kind = "base"

    def _cfg(self) -> dict:  # configuration that must match when merging
        raise NotImplementedError

    def _zero(self) -> torch.Tensor:
        raise NotImplementedError

    def reset(self):
        self._local = self._zero()
        self._global = None
        return self

    def _dirty(self):
        self._global = None

    @property
    def counts(self) -> torch.Tensor:
        """The counts `compute` uses: the all-reduced ones if `all_reduce` ran since the last update."""
        return self._global if self._global is not None else self._local

    def all_reduce(self):
        self._global = all_reduce_sum(self._local)
        return self

    def state_dict(self) -> dict:
        return {"kind": self.kind, "config": self._cfg(), "counts": self._local.clone()}

    def load_state_dict(self, sd: dict):
        self._check_compat(sd)
        self._local = sd["counts"].clone().to(torch.float64)
        self._global = None
        return self

    def _check_compat(self, sd: dict):
        if sd.get("kind") != self.kind or sd.get("config") != self._cfg():
            raise ValueError(f"cannot merge {sd.get('kind')} {sd.get('config')} into {self.kind} {self._cfg()}")

    def merge(self, other):
        """Add another accumulator's (or state_dict's) local counts to ours."""
        sd = other.state_dict() if isinstance(other, _Base) else other
        self._check_compat(sd)
        self._local = self._local + sd["counts"].to(torch.float64)
        self._dirty()
        return self


# ------------------------------------------------------------------------------------------------ REC

class RECAccumulator(_Base):
    """Single-box referring expression comprehension: Acc@t and mean IoU.

    A sample is correct at threshold t if IoU >= t (``strict=False``, TransVG / CLIP-VG / HiVG / VG-LAW /
    SimVG) or IoU > t (``strict=True``, ResVG).  Counts per threshold, plus optional per-group counts
    (``group=`` labels such as expression-length buckets; labels are turned into strings).

    Counts layout (float64): [n, iou_sum, correct@t for t in thresholds].
    compute() -> {"n", "miou", "acc@0.5", ..., and for each group g: "n/g", "miou/g", "acc@0.5/g", ...}.
    """

    kind = "rec"

    def __init__(self, thresholds: Sequence[float] = (0.5,), strict: bool = False):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.strict = bool(strict)
        self.reset()

    def _cfg(self):
        return {"thresholds": list(self.thresholds), "strict": self.strict}

    def _zero(self):
        return torch.zeros(2 + len(self.thresholds), dtype=torch.float64)

    def reset(self):
        super().reset()
        self._groups: Dict[str, torch.Tensor] = {}
        self._groups_global: Optional[Dict[str, torch.Tensor]] = None
        return self

    def _dirty(self):
        super()._dirty()
        self._groups_global = None

    def _rows(self, iou: torch.Tensor) -> torch.Tensor:
        """Per-sample count rows [B, 2+T] (float64)."""
        iou = iou.detach().to(torch.float64).cpu()
        thr = torch.tensor(self.thresholds, dtype=torch.float64)
        hit = (iou[:, None] > thr) if self.strict else (iou[:, None] >= thr)
        return torch.cat([torch.ones_like(iou)[:, None], iou[:, None], hit.to(torch.float64)], 1)

    def update(self, pred_xyxy, gt_xyxy, group: Optional[Sequence] = None, valid=None):
        """pred_xyxy, gt_xyxy: [B, 4] xyxy in the same frame; group: B labels or None; valid: [B] bool mask
        (False = skip, e.g. samples repeated by DistributedSampler padding)."""
        pred, gt = _as_tensor(pred_xyxy), _as_tensor(gt_xyxy)
        if pred.shape != gt.shape or pred.dim() != 2 or pred.shape[-1] != 4:
            raise ValueError(f"RECAccumulator.update: expected pred and gt [B,4], got {tuple(pred.shape)} "
                             f"and {tuple(gt.shape)}")
        return self.update_iou(box_iou_elementwise(pred, gt), group=group, valid=valid)

    def update_iou(self, iou, group: Optional[Sequence] = None, valid=None):
        """Same as `update` with precomputed per-sample IoUs [B]."""
        iou = _as_tensor(iou).reshape(-1)
        if not torch.isfinite(iou).all():  # e.g. NaN predicted boxes: count as misses, say so
            warnings.warn(f"RECAccumulator: {int((~torch.isfinite(iou)).sum())} non-finite IoU value(s) "
                          f"counted as IoU 0", RuntimeWarning, stacklevel=2)
            iou = torch.nan_to_num(iou.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
        keep = _valid_mask(valid, iou.numel(), iou.device).cpu()
        rows = self._rows(iou)[keep]
        self._local += rows.sum(0)
        if group is not None:
            labels = np.asarray([str(g) for g in group], dtype=object)
            if labels.shape[0] != iou.numel():
                raise ValueError(f"RECAccumulator: {labels.shape[0]} group labels for a batch of {iou.numel()}")
            labels = labels[keep.numpy()]
            if labels.size:
                uniq, inv = np.unique(labels.astype(str), return_inverse=True)
                sums = torch.zeros(len(uniq), rows.shape[1], dtype=torch.float64)
                sums.index_add_(0, torch.from_numpy(inv.reshape(-1)).long(), rows)
                for name, row in zip(uniq.tolist(), sums):
                    self._groups[name] = self._groups.get(name, self._zero()) + row
        self._dirty()
        return self

    def all_reduce(self):
        super().all_reduce()
        names = sorted(set().union(*[set(n) for n in all_gather_objects(sorted(self._groups))]))
        if names:
            local = torch.stack([self._groups.get(n, self._zero()) for n in names])
            red = all_reduce_sum(local)
            self._groups_global = {n: red[i] for i, n in enumerate(names)}
        else:
            self._groups_global = {}
        return self

    def _summ(self, c: torch.Tensor, suffix: str = "") -> dict:
        n = float(c[0])
        out = {f"n{suffix}": n, f"miou{suffix}": _ratio(c[1], n)}
        for i, t in enumerate(self.thresholds):
            out[f"acc@{_fmt(t)}{suffix}"] = _ratio(c[2 + i], n)
        return out

    def compute(self) -> dict:
        out = self._summ(self.counts)
        groups = self._groups_global if self._groups_global is not None else self._groups
        for name in sorted(groups):
            out.update(self._summ(groups[name], "/" + name))
        return out

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["groups"] = {k: v.clone() for k, v in self._groups.items()}
        return sd

    def load_state_dict(self, sd: dict):
        super().load_state_dict(sd)
        self._groups = {k: v.clone().to(torch.float64) for k, v in sd.get("groups", {}).items()}
        self._groups_global = None
        return self

    def merge(self, other):
        sd = other.state_dict() if isinstance(other, _Base) else other
        super().merge(sd)
        for k, v in sd.get("groups", {}).items():
            self._groups[k] = self._groups.get(k, self._zero()) + v.to(torch.float64)
        return self


# ------------------------------------------------------------------------------------------------ pointing


def argmax_cell_in_box(scores: torch.Tensor, boxes_xyxy: torch.Tensor,
                       ignore: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pointing-game hits of a patch score map: does the best-scoring cell overlap the box?

    scores [B, h, w] (or [B, h*w] for a square grid); boxes_xyxy [B, 4] in the map's frame, normalised to
    [0, 1] (x over the width, y over the height); ignore [B, h*w] or [B, h, w] bool, True = never the
    argmax (e.g. letterbox padding).  A hit is a cell whose area shares a positive-area part with the box,
    so a small box that falls between cell centres still counts.  Returns [B] bool."""
    if scores.dim() == 2:
        g = int(round(scores.shape[1] ** 0.5))
        if g * g != scores.shape[1]:
            raise ValueError(f"argmax_cell_in_box: {scores.shape[1]} scores is not a square grid; pass [B, h, w]")
        scores = scores.reshape(-1, g, g)
    if scores.dim() != 3:
        raise ValueError(f"argmax_cell_in_box: scores must be [B, h, w] or [B, h*w], got {tuple(scores.shape)}")
    B, h, w = scores.shape
    flat = scores.detach().float().reshape(B, h * w)
    if ignore is not None:
        flat = flat.masked_fill(ignore.reshape(B, h * w).to(flat.device).bool(), float("-inf"))
    idx = flat.argmax(1)
    row, col = (idx // w).to(torch.float64), (idx % w).to(torch.float64)
    b = _as_tensor(boxes_xyxy, torch.float64).to(idx.device).reshape(B, 4)
    inter_x = torch.minimum((col + 1) / w, b[:, 2]) - torch.maximum(col / w, b[:, 0])
    inter_y = torch.minimum((row + 1) / h, b[:, 3]) - torch.maximum(row / h, b[:, 1])
    return (inter_x > 0) & (inter_y > 0)


class PointingAccumulator(_Base):
    """Share of samples whose score map points at the target (a diagnostic, e.g. HiVG's alignment map).

    ``update(hit, valid=None)`` with hit [B] bool (see `argmax_cell_in_box`); compute() -> {name: hits / n}.
    Counts layout (float64): [n, hits]."""

    kind = "pointing"

    def __init__(self, name: str = "pointing"):
        self.name = str(name)
        self.reset()

    def _cfg(self):
        return {"name": self.name}

    def _zero(self):
        return torch.zeros(2, dtype=torch.float64)

    def update(self, hit, valid=None):
        hit = _as_tensor(hit).reshape(-1).to(torch.float64).cpu()
        keep = _valid_mask(valid, hit.numel(), hit.device).cpu()
        self._local += torch.stack([keep.sum().to(torch.float64), hit[keep].sum()])
        self._dirty()
        return self

    def compute(self) -> dict:
        c = self.counts
        return {self.name: _ratio(c[1], float(c[0]))}


# ------------------------------------------------------------------------------------------------ GREC

class GRECAccumulator(_Base):
    """Generalised REC (gRefCOCO): Pr@(F1=1, IoU>=0.5), N-acc and T-acc, as gRefCOCO's official
    `RefExpEvaluator.summarize` defines them.

    Per sample: predictions are sorted by score (descending) and those with score >= ``score_thresh`` kept.
    * No-target sample (0 GT boxes): correct iff nothing is kept; counted TP (nothing kept) / FN (something
      kept) -- "no-target" is the positive class of these counters.
    * Targeted sample: counted TN (something kept) / FP (nothing kept).  Greedy matching: repeatedly take the
      global maximum of the GIoU (``use_giou=True``, as the official code) or IoU matrix kept-preds x GT;
      stop when it is < ``iou_thresh``, else match that pair and remove its row and column.
      F1 = 2TP / (2TP + FP + FN) with FP = #kept - matches, FN = #GT - matches; correct iff F1 >= f1_thresh.
    Reported (dataset level): ``GREC_MAIN_KEY`` = correct / #samples, ``n_acc`` = TP / (TP + FN) over
    no-target samples, ``t_acc`` = TN / (TN + FP) over targeted samples, plus ``mean_f1`` and the counts.

    Deviation (documented): matched rows/columns are removed (set to -inf) rather than set to 0 as in the
    official code; identical for any iou_thresh > 0.  Ties in score keep input order (the official code breaks
    them by comparing box coordinates), which can only matter for exactly tied scores.

    ``batch_averaged=True`` reproduces SimVG's `grec_evaluate_f1_nacc` aggregation instead: each `update`
    call is one batch; per batch F1score = correct / #samples and N_acc = TP / (TP + FN) if TP > 0 else 0
    (even when the batch holds no no-target sample); the reported values are the means over batches (SimVG
    additionally `reduce_mean`s each batch over GPUs -- with equal batch counts per rank that equals the mean
    over all ranks' batches, which is what `all_reduce` computes).  SimVG reports no T-acc; in this mode
    ``t_acc`` and the counts stay dataset-level.

    Counts layout (float64): [n, correct, nt_TP, nt_FN, t_TN, t_FP, f1_sum, matched, n_pred_kept, n_gt].
    """

    kind = "grec"

    def __init__(self, score_thresh: float = 0.7, iou_thresh: float = 0.5, f1_thresh: float = 1.0,
                 use_giou: bool = True, batch_averaged: bool = False):
        self.score_thresh = float(score_thresh)
        self.iou_thresh = float(iou_thresh)
        self.f1_thresh = float(f1_thresh)
        self.use_giou = bool(use_giou)
        self.batch_averaged = bool(batch_averaged)
        self.reset()

    def _cfg(self):
        return {"score_thresh": self.score_thresh, "iou_thresh": self.iou_thresh, "f1_thresh": self.f1_thresh,
                "use_giou": self.use_giou, "batch_averaged": self.batch_averaged}

    def _zero(self):
        return torch.zeros(10, dtype=torch.float64)

    def reset(self):
        super().reset()
        self._batches: List[List[float]] = []  # per batch [f1score, n_acc] (batch_averaged mode)
        self._batches_global: Optional[List[List[float]]] = None
        return self

    def _dirty(self):
        super()._dirty()
        self._batches_global = None

    @torch.no_grad()
    def match(self, pred_boxes: Sequence, pred_scores: Sequence, gt_boxes: Sequence) -> dict:
        """Per-sample results (no accumulation): dict of [B] tensors n_kept, n_gt, matched, f1, correct."""
        B = len(gt_boxes)
        if len(pred_boxes) != B or len(pred_scores) != B:
            raise ValueError(f"GRECAccumulator: {len(pred_boxes)} pred box lists, {len(pred_scores)} score lists, "
                             f"{B} GT lists; expected equal lengths")
        preds = [_as_tensor(p, torch.float64).detach().cpu().reshape(-1, 4) for p in pred_boxes]
        scores = [_as_tensor(s, torch.float64).detach().cpu().reshape(-1) for s in pred_scores]
        gts = [_as_tensor(g, torch.float64).detach().cpu().reshape(-1, 4) for g in gt_boxes]
        for i, (p, s) in enumerate(zip(preds, scores)):
            if p.shape[0] != s.shape[0]:
                raise ValueError(f"GRECAccumulator: sample {i} has {p.shape[0]} boxes but {s.shape[0]} scores")
        n_gt = torch.tensor([g.shape[0] for g in gts], dtype=torch.long)
        # keep, sort by score (descending, stable), pad to [B, Qmax, 4]
        kept = []
        for p, s in zip(preds, scores):
            order = torch.sort(s, descending=True, stable=True).indices
            p, s = p[order], s[order]
            kept.append(p[s >= self.score_thresh])
        n_kept = torch.tensor([k.shape[0] for k in kept], dtype=torch.long)
        Q, N = int(n_kept.max()) if B else 0, int(n_gt.max()) if B else 0
        matched = torch.zeros(B, dtype=torch.long)
        if Q > 0 and N > 0:
            P = torch.nn.utils.rnn.pad_sequence(kept, batch_first=True)  # [B, Q, 4], zero padded
            G = torch.nn.utils.rnn.pad_sequence(gts, batch_first=True)  # [B, N, 4]
            fn = generalized_box_iou_elementwise if self.use_giou else box_iou_elementwise
            sim = fn(P[:, :, None, :], G[:, None, :, :])  # [B, Q, N]
            valid = (torch.arange(Q)[None, :, None] < n_kept[:, None, None]) & \
                    (torch.arange(N)[None, None, :] < n_gt[:, None, None])
            sim = sim.masked_fill(~valid, -math.inf)
            flat = sim.reshape(B, Q * N)
            rows = torch.arange(B)
            for _ in range(min(Q, N)):
                best, idx = flat.max(1)
                ok = best >= self.iou_thresh
                if not ok.any():
                    break
                matched += ok.long()
                q, n = idx // N, idx % N
                s3 = flat.view(B, Q, N)
                r = rows[ok]
                s3[r, q[ok], :] = -math.inf
                s3[r, :, n[ok]] = -math.inf
        no_target = n_gt == 0
        fp = n_kept - matched
        fn_ = n_gt - matched
        denom = (2 * matched + fp + fn_).to(torch.float64)
        f1 = torch.where(denom > 0, 2 * matched / denom.clamp(min=1), torch.zeros((), dtype=torch.float64))
        f1 = torch.where(no_target, (n_kept == 0).to(torch.float64), f1)
        return {"n_kept": n_kept, "n_gt": n_gt, "matched": matched, "f1": f1, "correct": f1 >= self.f1_thresh,
                "no_target": no_target}

    def update(self, pred_boxes: Sequence, pred_scores: Sequence, gt_boxes: Sequence, valid=None):
        """pred_boxes: B tensors [Q_i, 4] xyxy (original pixels); pred_scores: B tensors [Q_i]; gt_boxes: B
        tensors [N_i, 4] xyxy (N_i == 0: no-target); valid: optional [B] bool mask of samples to count."""
        r = self.match(pred_boxes, pred_scores, gt_boxes)
        keep = _valid_mask(valid, len(gt_boxes), torch.device("cpu"))
        nt, has = r["no_target"][keep], (r["n_kept"] > 0)[keep]
        correct = r["correct"][keep].to(torch.float64)
        row = torch.stack([
            torch.tensor(float(keep.sum()), dtype=torch.float64), correct.sum(),
            (nt & ~has).sum().to(torch.float64), (nt & has).sum().to(torch.float64),
            (~nt & has).sum().to(torch.float64), (~nt & ~has).sum().to(torch.float64),
            r["f1"][keep].sum(), r["matched"][keep].sum().to(torch.float64),
            r["n_kept"][keep].sum().to(torch.float64), r["n_gt"][keep].sum().to(torch.float64)])
        self._local += row
        if self.batch_averaged and float(row[0]) > 0:
            tp, fn_ = float(row[2]), float(row[3])
            self._batches.append([_ratio(row[1], row[0]), tp / (tp + fn_) if tp != 0 else 0.0])
        self._dirty()
        return self

    def all_reduce(self):
        super().all_reduce()
        if self.batch_averaged:
            self._batches_global = [b for part in all_gather_objects(list(self._batches)) for b in part]
        return self

    def compute(self) -> dict:
        c = self.counts.tolist()
        n, correct, tp, fn_, tn, fp = c[:6]
        out = {GREC_MAIN_KEY: _ratio(correct, n), "n_acc": _ratio(tp, tp + fn_), "t_acc": _ratio(tn, tn + fp),
               "mean_f1": _ratio(c[6], n), "n": n, "n_no_target": tp + fn_, "n_target": tn + fp,
               "nt_tp": tp, "nt_fn": fn_, "t_tn": tn, "t_fp": fp}
        if self.batch_averaged:
            batches = self._batches_global if self._batches_global is not None else self._batches
            nb = len(batches)
            out[GREC_MAIN_KEY] = sum(b[0] for b in batches) / nb if nb else 0.0
            out["n_acc"] = sum(b[1] for b in batches) / nb if nb else 0.0
            out["n_batches"] = float(nb)
        return out

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["batches"] = [list(b) for b in self._batches]
        return sd

    def load_state_dict(self, sd: dict):
        super().load_state_dict(sd)
        self._batches = [list(b) for b in sd.get("batches", [])]
        self._batches_global = None
        return self

    def merge(self, other):
        sd = other.state_dict() if isinstance(other, _Base) else other
        super().merge(sd)
        self._batches.extend(list(b) for b in sd.get("batches", []))
        return self


# ------------------------------------------------------------------------------------------------ RES

class RESAccumulator(_Base):
    """Referring segmentation: mIoU (mean per-sample IoU), oIoU (sum I / sum U, a.k.a. cIoU) and Pr@t
    (fraction of samples with IoU >= t), LAVT's definitions.  A sample whose
    prediction and GT are both empty (U = 0) has IoU 0, as in LAVT.

    Counts layout (float64): [n, iou_sum, I_sum, U_sum, hits@t for t in thresholds].
    compute() -> {"n", "miou", "oiou", "pr@0.5", ...}.
    """

    kind = "res"

    def __init__(self, thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9)):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.reset()

    def _cfg(self):
        return {"thresholds": list(self.thresholds)}

    def _zero(self):
        return torch.zeros(4 + len(self.thresholds), dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred_masks, gt_masks, valid=None):
        """pred_masks, gt_masks: bool (or 0/1) [B, H, W] in the same frame; valid: optional [B] bool."""
        p, g = _as_tensor(pred_masks).bool(), _as_tensor(gt_masks).bool()
        if p.shape != g.shape or p.dim() < 2:
            raise ValueError(f"RESAccumulator.update: pred {tuple(p.shape)} and gt {tuple(g.shape)} must be equal "
                             f"[B, H, W]")
        if p.dim() == 2:
            p, g = p[None], g[None]
        inter = (p & g).flatten(1).sum(1)
        union = (p | g).flatten(1).sum(1)
        return self.update_counts(inter, union, valid=valid)

    def update_counts(self, inter, union, valid=None):
        """Update from per-sample pixel counts I [B] and U [B] (e.g. computed on RLEs)."""
        inter = _as_tensor(inter).to(torch.float64).cpu().reshape(-1)
        union = _as_tensor(union).to(torch.float64).cpu().reshape(-1)
        keep = _valid_mask(valid, inter.numel(), torch.device("cpu"))
        inter, union = inter[keep], union[keep]
        iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
        thr = torch.tensor(self.thresholds, dtype=torch.float64)
        hits = (iou[:, None] >= thr).to(torch.float64).sum(0)
        self._local += torch.cat([torch.tensor([float(inter.numel())], dtype=torch.float64),
                                  iou.sum()[None], inter.sum()[None], union.sum()[None], hits])
        self._dirty()
        return self

    def compute(self) -> dict:
        c = self.counts.tolist()
        n = c[0]
        out = {"n": n, "miou": _ratio(c[1], n), "oiou": _ratio(c[2], c[3])}
        for i, t in enumerate(self.thresholds):
            out[f"pr@{_fmt(t)}"] = _ratio(c[4 + i], n)
        return out


# ------------------------------------------------------------------------------------------ breakdowns
def _expr_type(record) -> str:
    from .synthetic.scenes import expression_type
    return expression_type(record)


def _expr_words(record) -> str:
    n = len(str(record.expression).split())
    return "words<=3" if n <= 3 else "words4-6" if n <= 6 else "words>=7"


BREAKDOWNS = {  # name -> (record -> group label), for RECAccumulator's per-group counts
    "expr_type": _expr_type,    # synthetic data: the expression's program type (attr / extreme / ordinal / rel)
    "expr_words": _expr_words,  # any data: expression length in words (<=3, 4-6, >=7)
}


def record_groups(records: Sequence, by: Optional[str]) -> Optional[List[str]]:
    """Group labels of ``records`` for ``RECAccumulator.update(..., group=)``: ``by`` names a `BREAKDOWNS`
    entry; None / "" / "none" gives None (no breakdown)."""
    if not by or by == "none":
        return None
    if by not in BREAKDOWNS:
        raise ValueError(f"unknown breakdown {by!r}; choose from {sorted(BREAKDOWNS)}")
    return [BREAKDOWNS[by](r) for r in records]


def format_breakdown(m: Dict[str, float], keys: Sequence[str] = ("acc@0.5",)) -> List[str]:
    """One line per group of a computed REC report (its ``n/<group>`` entries): count and ``keys`` in %."""
    lines = []
    for g in sorted(k[2:] for k in m if k.startswith("n/")):
        vals = "  ".join(f"{k} {100 * m[f'{k}/{g}']:.2f}" for k in keys if f"{k}/{g}" in m)
        lines.append(f"{g}: n={int(m[f'n/{g}'])}  {vals}")
    return lines
