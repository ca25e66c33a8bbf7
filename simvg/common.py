"""What simvg/train.py, eval.py and predict.py share: flags and recipe presets, model building and weight
loading, data (records -> loader) and the evaluation post-processing / metrics.

Presets (simvg_flags.md §5, simvg.md §8): every hyperparameter flag defaults to ``None``; `resolve_preset`
fills the ``None``s from the (``--preset``, ``--dataset``, ``--backbone``, ``--pretrain_from``) recipe table,
so a flag given on the command line always wins.  ``--backbone tiny`` = `simvg.model.PRESETS["tiny"]` (a small
random-init BEiT-3, 128 px) with the vocabulary size of ``--beit3_spm`` (synthetic runs, tests).

Evaluation protocol (simvg.md §9, data-and-metrics.md §2): the official REC post-processing
(`simvg.model.postprocess_rec`: boxes clipped to the input frame, argmax of the object score over the
non-empty queries) gives a box in input pixels, mapped back to original-image pixels through the recorded
affine and compared with the annotation box (IoU >= 0.5 is a hit).  IoU is invariant to the per-axis
stretch, so this equals the official 640-frame IoU up to clipping.  Counts are summed over ranks, every
sample exactly once (dataset level).  The decoder branch (DB) and the token branch (TB) are scored
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

import argparse
import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from simvg import convert
from simvg.model import SimVG, postprocess_rec
from vgcore.checkpoint import ConversionError, group_keys, torch_load, unwrap
from vgcore.data.build import load_split
from vgcore.data.dataset import Collate, GroundingDataset
from vgcore.data.sample import affine_invert_boxes
from vgcore.data.transforms import build_transforms
from vgcore.dist import build_loader
from vgcore.metrics import GREC_MAIN_KEY, GRECAccumulator, RECAccumulator, all_gather_objects
from vgcore.text import build_tokenizer

PRESET_NAMES = ("onestage", "twostage_1", "twostage_2", "pretrain_mixed", "pretrain_cocoall", "finetune", "distill")
DATASETS = ("refcoco", "refcocoplus", "refcocog", "refcocoggoogle", "referit", "flickr30k", "grefcoco", "mixed",
            "cocoall")
BACKBONES = ("beit3_base", "beit3_large", "tiny")
MODEL_PRESET = {"beit3_base": "vitb", "beit3_large": "vitl", "tiny": "tiny"}
COCOALL_SOURCES = ("refcoco", "refcocoplus", "refcocog")
MIXED_VAL = ("val_refcoco_unc", "val_refcocoplus_unc", "val_refcocog_umd", "val_referitgame_berkeley",
             "val_flickr30k")
GREC_SCORE_THRESH = 0.7


# ------------------------------------------------------------------------------------------------ flags
def add_selection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SimVG recipe selection")
    g.add_argument("--preset", default="onestage", choices=PRESET_NAMES,
                   help="official config family; fills every hyperparameter flag left unset")
    g.add_argument("--dataset", default="refcoco", choices=DATASETS)
    g.add_argument("--backbone", default="beit3_base", choices=BACKBONES,
                   help="BEiT-3 base / large (patch 32); 'tiny' = small random-init model for synthetic runs")
    g.add_argument("--pretrain_from", default="cocoall", choices=("mixed", "cocoall"),
                   help="finetune/distill presets: which pre-training recipe they follow")
    g = p.add_argument_group("SimVG paths")
    g.add_argument("--data_root", default="./data", help="SeqTR layout: annotations/<name>/instances.json + images/")
    g.add_argument("--image_root", default="", help="one image folder for every source (overrides --data_root's)")
    g.add_argument("--split_root", default="", help="annotation root (default <data_root>/annotations)")
    g.add_argument("--format", default="seqtr", choices=("seqtr", "refer", "transvg"), help="annotation format")
    g.add_argument("--beit3_spm", default="./checkpoints/beit3/beit3.spm", help="XLM-R sentencepiece model")
    g.add_argument("--output_dir", default="./outputs")


def add_arch_args(p: argparse.ArgumentParser) -> None:
    """Architecture flags (train and eval); None = preset value."""
    g = p.add_argument_group("SimVG architecture (None = preset)")
    g.add_argument("--img_size", type=int, default=None, help="square input (640; pretrain_cocoall 512; tiny 128)")
    g.add_argument("--max_token", type=int, default=None, help="text tokens incl. <s> </s> (20)")
    g.add_argument("--num_queries", type=int, default=None, help="1 (grefcoco 10)")
    g.add_argument("--num_decoder_layers", type=int, default=None, help="DB decoder layers (3)")
    g.add_argument("--num_tgqg_layers", type=int, default=None, help="text-guided query generation layers (2)")
    g.add_argument("--drop_path_rate", type=float, default=None, help="base 0.1, large 0.0 (official typo)")
    g = p.add_argument_group("compat switches (official numerics)")
    g.add_argument("--official_compat", action="store_true",
                   help="= --text_pool_compat --text_pos_compat (+ --batch_mean_metric at eval)")
    g.add_argument("--text_pool_compat", action="store_true",
                   help="§12.1: text max-pool = max of projected tokens 18/19 (int64-mask indexing)")
    g.add_argument("--text_pos_compat", action="store_true",
                   help="§12.4: degenerate 1-D sine text position encoding")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    g.add_argument("--dist_backend", default=None, help="nccl | gloo (default by device)")
    g.add_argument("--num_workers", type=int, default=None, help="loader workers per process (8, capped by CPUs)")
    g.add_argument("--batch_size", type=int, default=None, help="per process")
    g.add_argument("--seed", type=int, default=6666)
    g.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="official: fp32")
    g.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    g.add_argument("--trust_pickle", action="store_true",
                   help="read checkpoints that a weights-only load refuses with full unpickling (it can run code "
                        "stored in the file): only for files you trust")


def compat_switches(args) -> dict:
    on = bool(getattr(args, "official_compat", False))
    return {"text_maxpool_int64_mask": on or bool(getattr(args, "text_pool_compat", False)),
            "text_pos_embed_1d_degenerate": on or bool(getattr(args, "text_pos_compat", False))}


# ------------------------------------------------------------------------------------------------ presets
def recipe(preset: str, dataset: str, backbone: str, pretrain_from: str = "cocoall") -> dict:
    """The official config values of one (preset, dataset, backbone) (simvg_flags.md §5)."""
    large = backbone == "beit3_large"
    grec = dataset == "grefcoco"
    r = dict(lr=5e-4, batch_size=32, epochs=30, warmup_epochs=3, decay_steps=[25], token_weight=2.0,
             distill_weight=1.0, ema=False, img_size=640, num_queries=10 if grec else 1, lsj=not grec,
             evaluate_interval=2 if grec else 1, start_evaluate_epoch=50 if grec else 0)
    if preset == "onestage":
        if large:
            r.update(batch_size=4, token_weight=1.0, distill_weight=0.4)
            if dataset == "referit":
                r.update(token_weight=2.0, distill_weight=1.0)
            if dataset == "refcocoggoogle":
                r.update(warmup_epochs=0)
        if grec:
            r.update(epochs=200, decay_steps=[180])
    elif preset == "twostage_1":
        r.update(token_weight=0.0, distill_weight=0.0)
        if large:
            r.update(batch_size=4, decay_steps=[21, 27])
        elif dataset in ("refcoco", "refcocoplus", "refcocog", "refcocoggoogle"):
            r.update(batch_size=16, ema=True)
        if grec:
            r.update(epochs=200, decay_steps=[180])
    elif preset == "twostage_2":
        r.update(lr=3e-4, epochs=20, decay_steps=[15])
        if large:
            r.update(lr=1e-4, batch_size=4, epochs=10, warmup_epochs=0, decay_steps=[7], token_weight=1.0,
                     distill_weight=0.4)
            if dataset == "referit":
                r.update(token_weight=2.0, distill_weight=1.0)
        if grec:
            r.update(lr=5e-4, epochs=100, decay_steps=[90])
    elif preset in ("pretrain_mixed", "pretrain_cocoall"):
        r.update(decay_steps=[21, 27], token_weight=0.0, distill_weight=0.0, lsj=False,
                 img_size=512 if preset == "pretrain_cocoall" else 640)
        if large:
            r.update(batch_size=4)
    elif preset == "finetune":
        r.update(lr=2e-4 if (pretrain_from == "cocoall" and dataset == "refcoco") else 1e-4, epochs=10,
                 decay_steps=[8], token_weight=0.0, distill_weight=0.0)
        if large:
            r.update(batch_size=4)
    elif preset == "distill":
        r.update(lr=3e-4)
        if pretrain_from == "mixed":
            r.update(epochs=15, decay_steps=[10], token_weight=2.0, distill_weight=1.0)
        else:
            r.update(epochs=20, decay_steps=[15], token_weight=1.0, distill_weight=0.4)
        if large:
            r.update(batch_size=4)
    else:
        raise ValueError(f"unknown SimVG preset {preset!r}; choose from {PRESET_NAMES}")
    r.update(lr_vis_enc_mult=0.1, decay_ratio=0.1, weight_decay=0.0, grad_norm_clip=0.15, ema_factor=0.999,
             max_token=20, num_decoder_layers=3, num_tgqg_layers=2, decoder_weight=1.0,
             drop_path_rate=0.1 if backbone == "beit3_base" else 0.0)
    if backbone == "tiny":
        r.update(img_size=128)
    return r


def resolve_preset(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every ``None`` flag from `recipe`; returns ``args`` (modified in place)."""
    r = recipe(args.preset, args.dataset, args.backbone, getattr(args, "pretrain_from", "cocoall"))
    for k, v in r.items():
        if hasattr(args, k) and getattr(args, k) is None:
            setattr(args, k, v)
    if getattr(args, "num_workers", 0) is None:
        args.num_workers = max(0, min(8, (os.cpu_count() or 1) - 1))
    return args


# ------------------------------------------------------------------------------------------------ model
def build_tok(args, model_cfg=None):
    max_len = model_cfg.max_text_len if model_cfg is not None else args.max_token
    kw = {"min_vocab": 1} if (args.backbone == "tiny" or (model_cfg is not None and model_cfg.backbone == "tiny")) else {}
    return build_tokenizer("beit3", max_len=max_len, vocab_file=args.beit3_spm, **kw)


def model_config_from_args(args, vocab_size: Optional[int] = None) -> dict:
    d = dict(preset=MODEL_PRESET[args.backbone], img_size=args.img_size, num_queries=args.num_queries,
             num_decoder_layers=args.num_decoder_layers, num_tgqg_layers=args.num_tgqg_layers,
             drop_path_rate=args.drop_path_rate, max_text_len=args.max_token, **compat_switches(args))
    if args.backbone == "tiny":
        if vocab_size is None:
            vocab_size = build_tok(args).vocab_size
        d["vocab_size"] = int(vocab_size)
    return {k: v for k, v in d.items() if v is not None}


def read_weights(path: str, use_ema: bool = False, *, trust_pickle: bool = False):
    """(state dict in our layout, stored config or None, 'ours' | 'converted' | 'official') from any SimVG file
    (read once, weights-only unless ``trust_pickle``): our `save_model` file or training checkpoint
    (``use_ema``: its ``ema`` shadow), a `simvg.convert` payload, or an official det_best.pth (``use_ema``: its
    ``ema_state_dict``; a ``module.`` prefix is stripped)."""
    raw = torch_load(path, trust_pickle=trust_pickle)
    cfg = None
    if isinstance(raw, dict) and ("state_dict" in raw or "ema_state_dict" in raw) and "model" not in raw:
        sd = convert.read_simvg_checkpoint(raw, use_ema=use_ema)
    elif isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        cfg = raw.get("config")
        if cfg is None and isinstance(raw.get("extra"), dict):
            cfg = raw["extra"].get("config")
        sd = raw["model"]
        if use_ema and isinstance(raw.get("ema"), dict) and "shadow" in raw["ema"]:
            sd = raw["ema"]["shadow"]  # a training checkpoint of an --ema run
    else:
        sd = unwrap(raw)
    sd = unwrap(sd)
    if not any(k.startswith("vis_enc.") for k in sd):
        kind = "converted" if isinstance(raw, dict) and "compat" in raw else "ours"
        if kind == "converted" and isinstance(cfg, dict):
            cfg = dict(cfg, **raw["compat"])
        return sd, cfg if isinstance(cfg, dict) else None, kind
    cfg = convert.config_from_state_dict(sd)
    sd, rep = convert.convert_simvg_state_dict(sd)
    if rep["unmapped"]:
        raise ConversionError(f"{path}: official SimVG checkpoint with keys no rule maps:\n  "
                              + "\n  ".join(group_keys(rep["unmapped"])))
    cfg.update(rep["compat"])
    return sd, cfg, "official"


def load_weights_into(model: SimVG, path: str, logger=None, use_ema: bool = False, *,
                      trust_pickle: bool = False) -> str:
    """Weights only (``--load_from`` / ``--finetune_from``): strict, the vision position table resized to the
    model's grid (512 -> 640 px).  An official / converted checkpoint turns the compat switches on."""
    sd, cfg, kind = read_weights(path, use_ema=use_ema, trust_pickle=trust_pickle)
    sd = convert.adapt_img_size(sd, model.cfg)
    convert.load_into(model, sd, what=path)
    if kind in ("official", "converted") and cfg:
        model.set_compat(**{k: bool(cfg.get(k, False)) or getattr(model.cfg, k)
                            for k in ("text_maxpool_int64_mask", "text_pos_embed_1d_degenerate")})
    if logger is not None:
        logger.info(f"weights from {path} ({kind}; compat {compat_of(model)})")
    return kind


def compat_of(model: SimVG) -> dict:
    return {k: bool(getattr(model.cfg, k)) for k in ("text_maxpool_int64_mask", "text_pos_embed_1d_degenerate")}


# ------------------------------------------------------------------------------------------------ data
def _split_root(args) -> str:
    return args.split_root or (str(Path(args.data_root) / "annotations") if args.format == "seqtr" else args.data_root)


def sources(dataset: str, split: str, train: bool) -> List[tuple]:
    """(dataset key, split) pairs a (dataset, split) reads: cocoall = RefCOCO/+/g(umd) union; mixed val = 5 sets."""
    if dataset == "cocoall":
        return [(d, split) for d in COCOALL_SOURCES]
    if dataset == "mixed" and not train and split == "val":
        return [("mixed", s) for s in MIXED_VAL]
    return [(dataset, split)]


def load_records(args, split: str, train: bool) -> list:
    recs = []
    for ds, sp in sources(args.dataset, split, train):
        kw = {"clip": True} if args.format == "seqtr" else {}
        part = load_split(args.format, ds, sp, split_root=_split_root(args), data_root=args.data_root,
                          image_root=args.image_root or None, layout="seqtr", **kw)
        if len(sources(args.dataset, split, train)) > 1:
            part = [r.replace(extra=dict(r.extra or {}, source=f"{ds}/{sp}")) for r in part]
        recs.extend(part)
    if not recs:
        raise ValueError(f"no samples in {args.format} split {split!r} of {args.dataset} under {_split_root(args)}")
    return recs


def build_data(args, split: str, train: bool, tokenizer, img_size: int, batch_size: Optional[int] = None):
    records = load_records(args, split, train)
    transform = build_transforms("simvg", train=train, imsize=img_size, **({"lsj": bool(args.lsj)} if train else {}))
    dataset = GroundingDataset(records, transform, tokenizer=tokenizer, load_masks=False, on_error="raise")
    collate = Collate(tokenizer)
    loader = build_loader(dataset, batch_size or args.batch_size, train=train, seed=args.seed,
                          num_workers=args.num_workers, collate_fn=collate, drop_last=True if train else False,
                          pin_memory=torch.cuda.is_available())
    return dataset, loader


# ------------------------------------------------------------------------------------------------ evaluation
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


def make_accumulators_factory(grec: bool, batch_mean: bool = False):
    return lambda: SimVGMetrics(grec=grec, batch_mean=batch_mean)


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
    def postprocess(outputs: dict, batch) -> dict:
        gt = [torch.from_numpy(r.boxes) for r in batch.records]
        group = [r.extra.get("source", "") for r in batch.records] if multi_source else None
        return {"branches": branch_predictions(outputs, batch, img_size), "gt": gt, "group": group}
    return postprocess


def is_multi_source(dataset: str, split: str = "val") -> bool:
    return len(sources(dataset, split, train=False)) > 1
