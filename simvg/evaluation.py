"""SimVG evaluation: post-processing of both branches and their metrics.

The official REC post-processing (`simvg.model.postprocess_rec`: boxes clipped to the input frame, argmax of
the object score over the non-empty queries) gives a box in input pixels, mapped back to original-image pixels
through the recorded affine and compared with the annotation box (IoU >= 0.5 is a hit).  IoU is invariant to
the per-axis stretch, so this equals the official 640-frame IoU up to clipping.  Counts are summed over ranks,
every sample exactly once (dataset level).  The decoder branch (DB) and the token branch (TB) are scored
separately; ``--batch_mean_metric`` also reports the official mean of per-batch accuracies.
GREC: Pr@(F1=1, IoU>=0.5), N-acc and T-acc at score threshold 0.7 with GIoU matching
(`vgcore.metrics.GRECAccumulator`), dataset level, and batch-averaged as SimVG's code with the flag.

Metric keys (fractions in [0, 1]): ``decoder/acc@0.5`` (official ``decoderDet@.5``), ``token/acc@0.5``
(``tokenDet@.5``), ``decoder/miou``, ``n``; grefcoco: ``decoder/pr@(F1=1,IoU>=0.5)``, ``decoder/n_acc``,
``decoder/t_acc`` (same for ``token/``); ``.../batch_mean/...`` with ``--batch_mean_metric``; per source
``decoder/acc@0.5/<source>`` for multi-source validation (mixed, cocoall).  ``score`` = the official
checkpoint-selection score: mean over sources of mean(DB, TB), a branch that did not run counting 0.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from simvg.model import postprocess_rec
from vgcore.data.sample import affine_invert_boxes
from vgcore.metrics import GREC_MAIN_KEY, GRECAccumulator, RECAccumulator, all_gather_objects

GREC_SCORE_THRESH = 0.7


class SimVGMetrics:
    """Accumulator for both branches (the `vgcore.engine.evaluate` protocol: update / all_reduce / compute).

    ``update(branches={name: dict(best_xyxy [B,4], all_xyxy [B,Q,4], scores [B,Q], keep [B,Q])}, gt=list of
    [N_i,4], group=list|None)``; all boxes in original pixels.  REC (``grec=False``) scores ``best_xyxy``
    against the single GT box; GREC scores every kept query above 0.7 against all GT boxes."""

    def __init__(self, grec: bool = False, batch_mean: bool = False, branches=("decoder", "token")):
        self.grec, self.batch_mean, self.names = grec, batch_mean, tuple(branches)
        mk = (lambda: GRECAccumulator(GREC_SCORE_THRESH, 0.5)) if grec else (lambda: RECAccumulator((0.5,)))
        self.acc = {b: mk() for b in self.names}
        self.bm = {b: GRECAccumulator(GREC_SCORE_THRESH, 0.5, batch_averaged=True) for b in self.names} \
            if (grec and batch_mean) else {}
        self.batch_acc: Dict[str, list] = {b: [] for b in self.names}  # REC per-batch accuracies
        self.batch_acc_global: Optional[Dict[str, list]] = None
        self.seen = set()

    def update(self, branches: dict, gt: list, group=None):
        for name, o in branches.items():
            self.seen.add(name)
            if self.grec:
                preds = [o["all_xyxy"][i][o["keep"][i]] for i in range(len(gt))]
                scores = [o["scores"][i][o["keep"][i]] for i in range(len(gt))]
                self.acc[name].update(preds, scores, gt)
                if self.bm:
                    self.bm[name].update(preds, scores, gt)
            else:
                g = torch.stack([torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)[0] for b in gt]).to(
                    o["best_xyxy"].device)
                before = self.acc[name].counts.clone() if self.batch_mean else None
                self.acc[name].update(o["best_xyxy"].float(), g, group=group)
                if self.batch_mean:
                    d = self.acc[name].counts - before
                    self.batch_acc[name].append(float(d[2] / d[0]) if d[0] > 0 else 0.0)
        return self

    def all_reduce(self):
        for a in list(self.acc.values()) + list(self.bm.values()):
            a.all_reduce()
        seen = all_gather_objects(sorted(self.seen))
        self.seen = set().union(*map(set, seen))
        if self.batch_mean and not self.grec:
            parts = all_gather_objects(self.batch_acc)
            self.batch_acc_global = {b: [x for p in parts for x in p.get(b, [])] for b in self.names}
        return self

    def compute(self) -> dict:
        out: Dict[str, float] = {}
        per_branch = {}
        for name in self.names:
            if name not in self.seen:
                continue
            r = self.acc[name].compute()
            if self.grec:
                for k in (GREC_MAIN_KEY, "n_acc", "t_acc", "mean_f1"):
                    out[f"{name}/{k}"] = r[k]
                out["n"], out["n_no_target"] = r["n"], r["n_no_target"]
                per_branch[name] = {"": r[GREC_MAIN_KEY]}
                if self.bm:
                    rb = self.bm[name].compute()
                    out[f"{name}/batch_mean/{GREC_MAIN_KEY}"] = rb[GREC_MAIN_KEY]
                    out[f"{name}/batch_mean/n_acc"] = rb["n_acc"]
            else:
                out["n"] = r["n"]
                for k, v in r.items():
                    if k.startswith(("acc@", "miou")):
                        out[f"{name}/{k}"] = v
                    elif k.startswith("n/"):
                        out[k] = v
                groups = {k[len("acc@0.5/"):]: v for k, v in r.items() if k.startswith("acc@0.5/")}
                per_branch[name] = groups or {"": r["acc@0.5"]}
                if self.batch_mean:
                    bl = (self.batch_acc_global or self.batch_acc)[name]
                    out[f"{name}/batch_mean/acc@0.5"] = float(np.mean(bl)) if bl else 0.0
        groups = sorted({g for v in per_branch.values() for g in v}) or [""]
        out["score"] = float(np.mean([np.mean([per_branch.get(b, {}).get(g, 0.0) for b in self.names])
                                      for g in groups]))
        return out


def make_accumulators(grec: bool, batch_mean: bool = False) -> SimVGMetrics:
    return SimVGMetrics(grec=grec, batch_mean=batch_mean)


def _to_original(xyxy: torch.Tensor, batch) -> torch.Tensor:
    """xyxy input-frame pixels [B,4] or [B,Q,4] -> original pixels, clamped to the image."""
    aff = batch.affine.to(xyxy.device, torch.float32)
    size = batch.orig_size.to(xyxy.device, torch.float32)
    if xyxy.dim() == 3:
        aff, size = aff[:, None], size[:, None]
    out = affine_invert_boxes(xyxy.float(), aff)
    wh = torch.stack([size[..., 1], size[..., 0], size[..., 1], size[..., 0]], -1)
    return torch.minimum(out.clamp(min=0), wh)


def branch_predictions(outputs: dict, batch, img_size: int) -> dict:
    """{'decoder'|'token': dict(best_xyxy, all_xyxy, scores, keep, best)} in original pixels for the branches
    that ran.  ``img_size`` = the stretched image side (the official ``img_shape``; padding excluded)."""
    res = {}
    for name, lk, bk in (("decoder", "decoder_logits", "decoder_boxes"), ("token", "token_logits", "token_boxes")):
        if lk not in outputs:
            continue
        logits, boxes = outputs[lk], outputs[bk]
        if logits.dim() == 4:  # decoder: every layer; the last one is the prediction
            logits, boxes = logits[-1], boxes[-1]
        p = postprocess_rec(logits, boxes, (img_size, img_size))
        res[name] = {"best_xyxy": _to_original(p["boxes_xyxy"], batch), "all_xyxy": _to_original(p["boxes_xyxy_all"], batch),
                     "scores": p["scores"], "keep": p["keep"], "best": p["best"]}
    return res


def make_postprocess(img_size: int, multi_source: bool = False):
    """``postprocess(outputs, batch) -> SimVGMetrics.update kwargs``; ``multi_source`` also groups by source."""
    def postprocess(outputs: dict, batch) -> dict:
        gt = [torch.from_numpy(r.boxes) for r in batch.records]
        group = [r.extra.get("source", "") for r in batch.records] if multi_source else None
        return {"branches": branch_predictions(outputs, batch, img_size), "gt": gt, "group": group}
    return postprocess


def format_metrics(dataset: str, split: str, m: dict, grec: bool) -> str:
    lines = [f"{dataset} {split} (n={int(m.get('n', 0))}):"]
    for b, official in (("decoder", "decoderDet@.5"), ("token", "tokenDet@.5")):
        if grec and f"{b}/{GREC_MAIN_KEY}" in m:
            s = (f"  {b:>7}: Pr@(F1=1,IoU>=0.5) {100 * m[f'{b}/{GREC_MAIN_KEY}']:.2f}  N-acc "
                 f"{100 * m[f'{b}/n_acc']:.2f}  T-acc {100 * m[f'{b}/t_acc']:.2f}")
            if f"{b}/batch_mean/{GREC_MAIN_KEY}" in m:
                s += (f"  | batch-averaged (official): F1score {100 * m[f'{b}/batch_mean/{GREC_MAIN_KEY}']:.2f}"
                      f"  N-acc {100 * m[f'{b}/batch_mean/n_acc']:.2f}")
            lines.append(s)
        elif f"{b}/acc@0.5" in m:
            s = f"  {b:>7} ({official}): Acc@0.5 {100 * m[f'{b}/acc@0.5']:.2f}  mIoU {m[f'{b}/miou']:.4f}"
            if f"{b}/batch_mean/acc@0.5" in m:
                s += f"  | batch-mean (official) {100 * m[f'{b}/batch_mean/acc@0.5']:.2f}"
            lines.append(s)
    lines.append(f"  score (selection) {100 * m['score']:.2f}")
    return "\n".join(lines)
