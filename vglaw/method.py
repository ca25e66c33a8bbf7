"""VG-LAW's side of the method protocol (`vgcore.method`): official flags, model + loss, refer-layout data with
masks, dataset-level REC / RES metrics, the three-group AdamW with its warm-up + step schedule."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from vgcore import cli, dist
from vgcore.checkpoint import load_model_file
from vgcore.optim import Schedule, ScheduleFactor, build_optimizer as _build_optimizer, build_param_groups
from vgcore.text import build_tokenizer
from vgcore.trainer import LoopConfig
from vglaw import convert as _convert
from vglaw import data, evaluation
from vglaw.loss import VGLAWCriterion, VGLAWLossConfig
from vglaw.model import VGLAW, build_model
from vglaw.recipes import add_eval_args, add_model_args, add_train_args, prepare_args, task_of

NAME = "VG-LAW"
BERT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def add_args(parser: argparse.ArgumentParser, mode: str) -> None:
    add_model_args(parser, mode)
    if mode == "train":
        add_train_args(parser)
    else:
        add_eval_args(parser, mode)
    cli.add_speed_args(parser, only=None if mode == "train" else ("compile",))


def prepare(args) -> None:
    prepare_args(args)


def tokenizer(args, max_len: int):
    if not args.bert_model:
        raise SystemExit("vglaw: --bert_model is required (a folder with BERT's vocab.txt)")
    return build_tokenizer("bert", max_len=max_len, vocab_file=args.bert_model)


def model_config(args, vocab_size: int) -> dict:
    """`build_model` config from the flags (``--preset`` first, then the flags that are set)."""
    cfg = dict(preset=args.preset, task=task_of(args), law_type=args.law_type, groups=args.groups,
               use_activation=args.use_activation, max_len=args.max_len, mask_threshold=args.mask_threshold,
               vocab_size=vocab_size)
    if args.img_size:
        cfg["img_size"] = args.img_size
    if args.text_encoder_layer:
        cfg["bert_layers"] = args.text_encoder_layer
    if args.official_compat:
        cfg.update(_convert.OFFICIAL_COMPAT)
    return cfg


def _read_model(path: str, trust_pickle: bool) -> tuple:
    """(state dict in our names, config dict) of an official .ckpt, a `vglaw.convert` output or our checkpoint."""
    if Path(path).suffix == ".ckpt":
        official = _convert.read_mindspore_ckpt(path)
        sd, report = _convert.convert_vglaw_state_dict(official)
        if report["unmapped"]:
            raise KeyError(f"{path}: unmapped keys {report['unmapped']}")
        cfg = dict(_convert.config_from_state_dict(official), **report["compat"])
        return sd, cfg
    obj = load_model_file(path, trust_pickle=trust_pickle)
    if not isinstance(obj.get("config"), dict):
        raise ValueError(f"{path}: no model config stored (expected a vglaw.convert output or one of our checkpoints)")
    return obj["model"], dict(obj["config"])


def build(args, logger):
    """The model from the flags and its initial weights: ``--resume`` (everything from the checkpoint) >
    ``--pretrained_path`` (a whole VG-LAW model, strict) > ``--vit_model_path`` (ViTDet) + the BERT weights in
    ``--bert_model`` (each part strict); the loss with the four ``--*_loss_coef``."""
    tok = tokenizer(args, args.max_len)
    cfg = model_config(args, tok.vocab_size)
    sd = None
    if args.pretrained_path and not args.resume:
        sd, stored = _read_model(args.pretrained_path, args.trust_pickle)
        for k in _convert.OFFICIAL_COMPAT:  # the starting point's compat switches stay on (official .ckpt: all)
            cfg[k] = bool(cfg.get(k)) or bool(stored.get(k))
    model = build_model(cfg)
    if args.resume:
        pass
    elif sd is not None:
        _convert.load_into(model, sd)
        logger.info(f"VG-LAW weights from {args.pretrained_path}")
    else:
        bert = next((Path(args.bert_model) / n for n in BERT_WEIGHT_FILES if (Path(args.bert_model) / n).is_file()),
                    None)
        rep = _convert.load_pretrained(model, vitdet=args.vit_model_path or None, bert=bert)
        for part, src in (("vitdet", args.vit_model_path), ("bert", bert)):
            logger.info(f"{part}: " + (f"{src} ({len(rep[part]['dropped'])} keys dropped)" if part in rep
                                       else "WARNING: no pretrained weights, randomly initialised"))
    logger.info(f"VG-LAW {args.preset}: task {model.cfg.task}, law {model.cfg.law_type}, {model.cfg.img_size} px")
    loss = VGLAWLossConfig(weight_l1=args.bbox_loss_coef, weight_giou=args.xiou_loss_coef,
                           weight_focal=args.focal_loss_coef, weight_dice=args.dice_loss_coef)
    return model, VGLAWCriterion(loss)


def load(args) -> VGLAW:
    """The model of ``--pretrained_path`` (its stored config; official .ckpt: inferred, compat on), strictly
    loaded; ``--official_compat`` turns the compat switches on.  Sets ``args.task`` to the model's task."""
    if not args.pretrained_path:
        raise SystemExit("vglaw: --pretrained_path is required")
    sd, cfg = _read_model(args.pretrained_path, args.trust_pickle)
    if args.official_compat:
        cfg.update(_convert.OFFICIAL_COMPAT)
    model = build_model(cfg)
    _convert.load_into(model, sd)
    args.task = model.cfg.task
    return model


def records(args, split: str, train: bool) -> list:
    return data.records(args, split, need_masks=load_masks(args, train))


def load_masks(args, train: bool) -> bool:
    """Masks in every batch (training loss, canvas metrics) when the model has the RES head."""
    return task_of(args) in ("both", "res")


def pipeline(args, model: VGLAW, train: bool):
    flags = dict(translate=args.translate, multi_scale=args.multi_scale) if train else {}
    return (data.pipeline_transform(model.cfg.img_size, train, compat=args.official_compat, **flags),
            tokenizer(args, model.cfg.max_len))


def make_postprocess(args, model: VGLAW, split: str):
    return evaluation.make_postprocess(args.mask_threshold, canvas=getattr(args, "canvas_metrics", False))


def make_accumulators(args) -> evaluation.VGLAWMetrics:
    task = task_of(args)
    return evaluation.VGLAWMetrics(rec=task in ("both", "rec"), res=task in ("both", "res"),
                                   iou_threshold=args.iou_threshold, canvas=getattr(args, "canvas_metrics", False))


def accumulation(args) -> int:
    """Batches per optimizer step: ``--batch_sum`` / (``--batch_size`` x processes), a whole number."""
    per_step = args.batch_size * dist.get_world_size()
    if args.batch_sum % per_step:
        raise SystemExit(f"vglaw: --batch_sum {args.batch_sum} is not a multiple of --batch_size x processes "
                         f"= {per_step}")
    return args.batch_sum // per_step


def build_optimizer(args, model: VGLAW, iters_per_epoch: int):
    """AdamW (eps 1e-6, ``--weight_decay`` on every parameter) over three groups: ``visual_encoder.*`` at
    ``--lr_visual``, ``text_encoder.*`` at ``--lr_lang``, the rest at ``--lr_base``.  Schedule per optimizer step:
    linear warm-up from 0.01 x lr over ``--warmup_steps`` batches (``--warmup_steps`` / accumulation optimizer
    steps), then x ``--drop_rate`` at each of ``--drop_epochs`` (step), or poly / cosine to ``--max_epochs``;
    ``--compat_constant_lr``: constant rates (what the MindSpore port runs)."""
    groups = build_param_groups(model, args.lr_base, args.weight_decay,
                                rules=[(r"^visual_encoder\.", {"lr": args.lr_visual}),
                                       (r"^text_encoder\.", {"lr": args.lr_lang})])
    optimizer = _build_optimizer("adamw", groups, args.lr_base, args.weight_decay, eps=1e-6)
    if args.compat_constant_lr:
        factor = ScheduleFactor("constant")
    else:
        factor = ScheduleFactor(args.lr_scheduler, total=args.max_epochs * iters_per_epoch,
                                milestones=[d * iters_per_epoch for d in args.drop_epochs], gamma=args.drop_rate,
                                power=args.poly_power, warmup=args.warmup_steps / accumulation(args),
                                warmup_start_factor=0.01)
    return optimizer, Schedule(optimizer, factor, interval="step"), None


def loop_config(args) -> LoopConfig:
    return LoopConfig(epochs=args.max_epochs, output_dir=args.output_dir, resume=args.resume,
                      eval_every=args.eval_step, clip_max_norm=args.clip_max_norm, accum_steps=accumulation(args),
                      amp=args.amp, log_every=args.log_freq, checkpoint_every_steps=args.checkpoint_every_steps,
                      max_steps=args.max_steps, stop_after_steps=args.stop_after_steps,
                      tensorboard=bool(args.tensorboard), metric="score", mode="max")


def predictions(args, model: VGLAW, outputs: dict, batch) -> List[dict]:
    return evaluation.predictions(outputs, batch, args.mask_threshold)


def format_metrics(args, split: str, m: dict) -> str:
    return evaluation.format_metrics(args.dataset, split, m)


def convert(argv=None) -> int:
    """Official VG-LAW (.ckpt) / ViTDet (.pkl) / BERT checkpoints -> ours (``python -m vglaw.convert --help``)."""
    return _convert.main(argv)
