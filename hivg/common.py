"""What hivg/train.py, eval.py and predict.py share: model flags, model building and weight loading,
data (records -> loader), and the evaluation post-processing.

Evaluation protocol (hivg.md §9, data-and-metrics.md §2.1): the predicted (cx, cy, w, h) on the padded
canvas is mapped back to original-image pixels through the recorded transform and compared with the
annotation box; a hit is IoU >= 0.5; counts are summed over ranks, every sample exactly once (the official
DistributedSampler pads the split with duplicates).  IoU is invariant to the letterbox map, so this equals the
official canvas IoU except that we clamp to the image instead of to the canvas.  Accuracy by expression length
uses the paper's buckets (Fig. 4c): 1-5, 6-7, 8-10, 11+ words.  A diagnostic rides along: ``align_pointing``,
how often the alignment map's best patch overlaps the target box (`make_accumulators`).
"""
from __future__ import annotations

import argparse
from typing import Optional

import numpy as np
import torch

from hivg import convert
from hivg.model import HiVG, build_model
from vgcore import cli
from vgcore.boxes import box_cxcywh_to_xyxy
from vgcore.checkpoint import load_model_file, load_strict
from vgcore.data.build import default_workers, load_split
from vgcore.data.dataset import Collate, GroundingDataset
from vgcore.data.transforms import build_transforms
from vgcore.dist import build_loader
from vgcore.metrics import PointingAccumulator, RECAccumulator, argmax_cell_in_box
from vgcore.text import build_tokenizer

MODELS = ("ViT-B/16", "ViT-L/14", "tiny")
LENGTH_BUCKETS = ((1, 5, "len1-5"), (6, 7, "len6-7"), (8, 10, "len8-10"), (11, 10 ** 9, "len11+"))


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model + data flags shared by train.py / eval.py (official names and defaults, hivg.md §8-9)."""
    g = p.add_argument_group("HiVG model")
    g.add_argument("--model", default="ViT-B/16", choices=MODELS,
                   help="CLIP backbone; 'tiny' = small random-init CLIP with the same architecture (synthetic runs)")
    g.add_argument("--vl_hidden_dim", type=int, default=512, help="fusion width = CLIP projection dim (768 for ViT-L/14)")
    g.add_argument("--vl_nheads", type=int, default=8)
    g.add_argument("--vl_dim_feedforward", type=int, default=2048)
    g.add_argument("--vl_enc_layers", type=int, default=6)
    g.add_argument("--vl_dropout", type=float, default=0.1)
    g.add_argument("--normalize_before", action="store_true", help="pre-norm fusion encoder (every official script)")
    g.add_argument("--enable_adaptive_weights", action="store_true",
                   help="adaptive weights on the bridge's multi-layer text features (all non-mixup runs)")
    g.add_argument("--warmup", action="store_true", help="no bridge (HiVG-L first warm-up phase)")
    g.add_argument("--mixup_pretrain", action="store_true",
                   help="bridge text = condition_text_proj(projected last layer) (dataset-mixed pre-training)")
    g.add_argument("--hi_lora_stage", type=int, default=0, choices=[0, 1, 2, 3],
                   help="0 warm-up; k = Hi LoRA stage k (vision LoRA of blocks <5/<8/<12 + text LoRA trainable)")
    g.add_argument("--bridge_batch_mixing", action="store_true",
                   help="compat (hivg.md §12.1): the official bridge's cross-sample key/value mixing; on for "
                        "released checkpoints, off (per-sample attention) for new training")
    g.add_argument("--clip_dir", default="", help="plain CLIP weights: HF folder (clip-vit-base-patch16), "
                   "OpenAI/open_clip/HF state dict file, or a folder holding one of them")
    g.add_argument("--clip_model", default="", help="debiased CLIP file (clip_b_ml_cascade_maskrcnn_model_224.pth); "
                   "loaded after --clip_dir, first phase only")
    g.add_argument("--train_clip", nargs="?", const="all", default="none", choices=["none", "text", "vision", "all"],
                   help="train CLIP tower base weights too (the official recipe freezes them and trains bridges + "
                        "LoRA + heads): 'all' (also plain --train_clip) both towers, for from-scratch presets such "
                        "as --model tiny; 'text' only the text tower, e.g. over a tag-pretrained tiny image tower "
                        "(hivg/pretrain_tiny.py); LoRA adapters keep the trainable set of --hi_lora_stage")
    g.add_argument("--trust_pickle", action="store_true",
                   help="read checkpoint files that a weights-only load refuses (e.g. OpenAI's TorchScript CLIP "
                        "archives) with full unpickling, which can run code stored in the file: trusted files only")
    g.add_argument("--image_root", default="", help="one image folder for every source (overrides --data_root's layout)")
    g.add_argument("--box_int_truncate", action="store_true",
                   help="compat: truncate the stored x, y, w, h to int before xywh->xyxy, as the official loader does")
    cli.add_data_args(p, data_root="./data/image_data/", split_root="./data/pseudo_samples/", dataset="referit",
                      format="transvg", imsize=224, max_query_len=77, num_workers=None, batch_size=8)


def model_config_from_args(args, model: Optional[HiVG] = None) -> dict:
    if model is not None:
        return model.cfg.to_dict()
    d = dict(dataset=args.dataset, hi_lora_stage=args.hi_lora_stage, warmup=args.warmup,
             mixup_pretrain=args.mixup_pretrain, enable_adaptive_weights=args.enable_adaptive_weights,
             imsize=args.imsize, max_query_len=args.max_query_len, vl_nheads=args.vl_nheads,
             vl_dim_feedforward=args.vl_dim_feedforward, vl_enc_layers=args.vl_enc_layers,
             vl_dropout=args.vl_dropout, normalize_before=args.normalize_before,
             compat_batch_mixing=args.bridge_batch_mixing)
    if args.model == "tiny":
        d["preset"] = "hivg-tiny"
        d.pop("vl_nheads"), d.pop("vl_dim_feedforward"), d.pop("vl_enc_layers")  # the preset's small fusion
    else:
        d["model"] = args.model
        d["vl_hidden_dim"] = args.vl_hidden_dim
    return d


def build_hivg(args) -> HiVG:
    return build_model(model_config_from_args(args))


def _load_whole(model: HiVG, path: str, allow_missing=(), trust_pickle: bool = False) -> dict:
    """Our model file or an official HiVG checkpoint (converted) -> ``model``, strictly; the file is read once,
    weights-only unless ``trust_pickle``.  Returns `load_model_file`'s dict plus ``missing`` (allowed keys)."""
    obj = load_model_file(path, trust_pickle=trust_pickle)
    sd = obj["model"]
    if not any(k.startswith(("fusion.", "bbox_head.")) for k in sd):  # an official checkpoint: convert first
        sd, info = convert.convert_official(obj["raw"], mixup=model.cfg.mixup_pretrain)
    missing, _ = load_strict(model, sd, allow_missing=allow_missing, what=path)
    obj["missing"] = missing
    return obj


_TRAIN_CLIP_PREFIXES = {"none": (), "text": ("text.", "text_projection"), "vision": ("vision.", "visual_projection"),
                        "all": ("",)}  # "" prefixes every name: with the stage's trainable set, everything


def _train_clip_mode(v) -> str:
    """--train_clip value; True / False from older callers (a store_true flag) mean all / none."""
    if v is True:
        return "all"
    if v in (False, None):
        return "none"
    if v not in _TRAIN_CLIP_PREFIXES:
        raise ValueError(f"--train_clip must be one of {sorted(_TRAIN_CLIP_PREFIXES)}, got {v!r}")
    return v


def load_pretrained(model: HiVG, args, logger=None) -> None:
    """--clip_dir / --clip_model (CLIP towers), then --retrain or --hi_lora_retrain (whole model)."""
    say = logger.info if logger is not None else print
    trust = bool(getattr(args, "trust_pickle", False))
    for path in (args.clip_dir, args.clip_model):
        if path:
            sd, info = convert.convert_clip(path, trust_pickle=trust)
            convert.load_clip_into(model, sd)
            say(f"loaded CLIP weights from {path} ({info.get('source')}, {len(sd)} tensors)")
    if args.retrain:
        # a --warmup model has no bridge: exactly the bridge (and adaptive-weight) parameters may be missing
        got = _load_whole(model, args.retrain, allow_missing=(r"\.bridge\.", r"adaptive", r"cross_gate"),
                          trust_pickle=trust)
        say(f"retrain: weights from {args.retrain}"
            + (f"; {len(got['missing'])} bridge parameters start from their initialisation (a --warmup model)"
               if got["missing"] else ""))
    if args.hi_lora_retrain:
        _load_whole(model, args.hi_lora_retrain, trust_pickle=trust)
        model.set_hilora_stage(args.hi_lora_stage)
        say(f"Hi LoRA stage {args.hi_lora_stage}: model from {args.hi_lora_retrain}")
    if args.hi_lora_clip:
        sd, _ = convert.convert_clip(args.hi_lora_clip, mixup=model.cfg.mixup_pretrain, trust_pickle=trust)
        convert.load_clip_into(model, sd, reinit_ml_projection=False)
        say(f"CLIP + LoRA + bridges from {args.hi_lora_clip}")
    model.compat_batch_mixing = bool(args.bridge_batch_mixing)
    towers = _TRAIN_CLIP_PREFIXES[_train_clip_mode(getattr(args, "train_clip", "none"))]
    if towers:  # the tower weights train too; LoRA keeps its stage's rule
        for name, p in model.named_parameters():
            if name != "logit_scale" and ".lora_" not in name and name.startswith(towers):
                p.requires_grad_(True)
    if not (args.clip_dir or args.clip_model or args.retrain or args.hi_lora_retrain or args.model == "tiny"
            or getattr(args, "eval_model", "")):
        say("WARNING: no --clip_dir / --clip_model / --retrain given: the CLIP towers are randomly initialised")


def build_data(args, split: str, train: bool):
    records = load_split(args.format, args.dataset, split, split_root=args.split_root, data_root=args.data_root,
                         image_root=args.image_root or None, layout="hivg",
                         **({"int_truncate": True} if args.box_int_truncate and args.format == "transvg" else {}))
    if not records:
        raise ValueError(f"no samples in {args.format} split {split!r} of {args.dataset} under {args.split_root}")
    flags = dict(aug_crop=getattr(args, "aug_crop", False), aug_scale=getattr(args, "aug_scale", False),
                 aug_translate=getattr(args, "aug_translate", False), aug_blur=getattr(args, "aug_blur", False)) if train else {}
    transform = build_transforms("hivg", train=train, imsize=args.imsize, **flags)
    tokenizer = build_tokenizer("clip", max_len=args.max_query_len)
    dataset = GroundingDataset(records, transform, tokenizer=tokenizer, load_masks=False,
                               on_error="raise")
    collate = Collate(tokenizer)
    bs = args.batch_size if train else (args.eval_batch_size or args.batch_size)
    loader = build_loader(dataset, bs, train=train, seed=args.seed, num_workers=default_workers(args.num_workers),
                          collate_fn=collate, drop_last=True if train else False,
                          pin_memory=torch.cuda.is_available())
    return dataset, loader, collate


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

