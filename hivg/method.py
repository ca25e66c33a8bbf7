"""HiVG's side of the method protocol (`vgcore.method`): flags, model + loss, data, metrics, optimisation."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from hivg import convert as _convert
from hivg import evaluation
from hivg.loss import HiVGCriterion
from hivg.model import HiVG, build_model
from hivg.recipes import add_eval_args, add_model_args, add_train_args, build_hivg, model_config_from_args
from hivg.weights import load_pretrained
from vgcore.checkpoint import load_strict
from vgcore import cli
from vgcore.data.build import SKIP_HINT, box_options, load_split, split_file, target_policy
from vgcore.data.checks import require_single_target
from vgcore.data.transforms import build_transforms
from vgcore.optim import build_optimizer as _build_optimizer, build_param_groups, build_scheduler_from_args
from vgcore.text import build_tokenizer
from vgcore.checkpoint import load_model_file, save_model
from vgcore.dist import is_main_process
from vgcore.trainer import LoopConfig

NAME = "HiVG"


def add_args(parser: argparse.ArgumentParser, mode: str) -> None:
    add_model_args(parser)
    if mode == "train":
        add_train_args(parser)
    else:
        add_eval_args(parser)
    cli.add_speed_args(parser, only=None if mode == "train" else ("compile",))


def build(args, logger):
    model = build_hivg(args)
    load_pretrained(model, args, logger)
    logger.info(f"HiVG {model.cfg.backbone}, Hi LoRA stage {model.cfg.hi_lora_stage}")
    return model, HiVGCriterion(args)


def load(args) -> HiVG:
    """Model from --eval_model (its stored config when present, else the flags), strictly loaded."""
    if not args.eval_model:
        raise SystemExit("hivg: --eval_model is required")
    obj = load_model_file(args.eval_model, trust_pickle=args.trust_pickle)
    cfg = obj.get("config")
    if isinstance(cfg, dict) and "backbone" in cfg:
        cfg = dict(cfg, compat_batch_mixing=bool(args.bridge_batch_mixing))
        model = build_model(cfg)
        load_strict(model, obj["model"], what=args.eval_model)
    else:  # official checkpoint (or a bare state dict): model from the official flags
        model = build_model(model_config_from_args(args))
        sd = obj["model"]
        if any(k.startswith("clip.") for k in sd):
            sd, _ = _convert.convert_official(obj["raw"], mixup=args.mixup_pretrain)
        load_strict(model, sd, what=args.eval_model)
    model.compat_batch_mixing = bool(args.bridge_batch_mixing)
    if getattr(args, "save_hilora_clip", False) and is_main_process():
        print(f"wrote {_convert.save_hilora_clip(model, args.output_dir)}")
    if args.merge_lora:
        model.merge_lora()
    return model


def records(args, split: str, train: bool) -> list:
    """``--sup_type un`` trains on ``<split>_pseudo``; ``--box_int_truncate``: the official int() of the boxes;
    a sample without exactly one target box is an error (``--skip_bad_targets``: dropped with a warning)."""
    if train and args.sup_type == "un":
        split = f"{split}_pseudo"
    recs = load_split(args.format, args.dataset, split, split_root=args.split_root, data_root=args.data_root,
                      image_root=args.image_root or None, layout="hivg", **box_options(args))
    recs = require_single_target(recs, split_file(args.format, args.dataset, split, args.split_root),
                                 target_policy(args), needed_by="HiVG (one box per expression)", hint=SKIP_HINT)
    if not recs:
        raise ValueError(f"no samples in {args.format} split {split!r} of {args.dataset} under {args.split_root}")
    return recs


def pipeline(args, model: HiVG, train: bool):
    flags = dict(aug_crop=args.aug_crop, aug_scale=args.aug_scale, aug_translate=args.aug_translate,
                 aug_blur=args.aug_blur) if train else {}
    return (build_transforms("hivg", train=train, imsize=model.cfg.image_size, **flags),
            build_tokenizer("clip", max_len=model.cfg.context_length))


def make_postprocess(args, model: HiVG, split: str):
    return evaluation.make_postprocess()


def make_accumulators(args) -> dict:
    return evaluation.make_accumulators()


def build_optimizer(args, model: HiVG, iters_per_epoch: int):
    groups = build_param_groups(model, args.lr, args.weight_decay)  # official: one group, wd on everything
    optimizer = _build_optimizer(args.optimizer, groups, args.lr, args.weight_decay)
    return optimizer, build_scheduler_from_args(optimizer, args, iters_per_epoch=iters_per_epoch), None


def loop_config(args) -> LoopConfig:
    return LoopConfig.from_cli(args, metric="acc@0.5", mode="max")


def before_fit(args, model: HiVG, validate, logger) -> Optional[float]:
    """Official "prevent negative optimization": the previous stage's model (--hi_lora_retrain) is this stage's
    first best, validated and saved as best_checkpoint.pth (epoch -1)."""
    if not args.hi_lora_retrain or args.resume:
        return None
    m = validate()
    save_model(Path(args.output_dir) / "best_checkpoint.pth", model, model.cfg.to_dict(), m, {"epoch": -1})
    logger.info(f"hand-over from {args.hi_lora_retrain}: val acc@0.5 {m['acc@0.5']:.4f}")
    return m.get("acc@0.5")


def predictions(args, model: HiVG, outputs: dict, batch) -> List[dict]:
    pred = batch.boxes_to_original(outputs["pred_boxes"]).cpu().numpy()
    return [{"box_xyxy": p} for p in pred]


def format_metrics(args, split: str, m: dict) -> str:
    lines = [f"{args.dataset} {split}: Acc@0.5 {100 * m['acc@0.5']:.2f} (n={int(m['n'])}, mIoU {m['miou']:.4f}; "
             f"alignment map on target {100 * m['align_pointing']:.1f}%)"]
    for k in sorted(m):
        if k.startswith("acc@0.5/"):
            lines.append(f"  {k[8:]:>8}: {100 * m[k]:.2f} (n={int(m['n/' + k[8:]])})")
    return "\n".join(lines)


def convert(argv=None) -> int:
    """Official HiVG / CLIP checkpoints -> ours (``python -m hivg.convert --help``)."""
    return _convert.main(argv)
