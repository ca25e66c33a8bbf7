"""ALVG's side of the method protocol (`vgcore.method`): flags and recipe presets, model + loss, data (masks
carried into the pipeline when the run uses them), REC / RES / GREC metrics, optimisation."""
from __future__ import annotations

import argparse
import os
from typing import List

from alvg import convert as _convert
from alvg import evaluation
from alvg.data import carry_masks, decode_masks_first
from alvg.loss import ALVGCriterion
from alvg.model import ALVG, build_model
from alvg.recipes import (add_arch_args, add_eval_args, add_selection_args, add_train_args, build_tok,
                          compat_switches, model_config_from_args, resolve_preset, uses_masks)
from alvg.weights import load_weights_into, read_weights
from simvg.method import before_fit, build_adam_step, loop_config, read_records  # noqa: F401 (protocol)
from vgcore import cli
from vgcore.data.transforms import build_transforms

NAME = "ALVG"


def add_args(parser: argparse.ArgumentParser, mode: str) -> None:
    add_selection_args(parser)
    add_arch_args(parser)
    if mode == "train":
        add_train_args(parser)
    else:
        add_eval_args(parser, mode)
    cli.add_speed_args(parser, only=None if mode == "train" else ("compile",))


def prepare(args) -> None:
    """Every hyperparameter flag left unset takes the value of the official recipe (`alvg.recipes.RECIPES`)."""
    resolve_preset(args)
    if getattr(args, "no_attn_loss", False):
        args.score_attn_loss_weight = args.decoder_attn_loss_weight = 0.0


def _backbone_init(args, model: ALVG, logger) -> None:
    if args.backbone == "tiny":
        if args.beit3_ckpt:
            if not os.path.isfile(args.beit3_ckpt):
                raise FileNotFoundError(f"--beit3_ckpt {args.beit3_ckpt} does not exist")
            rep = model.load_pretrained_backbone(args.beit3_ckpt, trust_pickle=args.trust_pickle)
            logger.info(f"tiny BEiT-3 weights from {args.beit3_ckpt} (strict): {rep}")
        return
    size = args.backbone.split("_")[-1]
    ckpt = args.beit3_ckpt or f"./checkpoints/beit3/beit3_{size}_indomain_patch16_224.pth"
    if os.path.isfile(ckpt):
        rep = model.load_pretrained_backbone(ckpt, trust_pickle=args.trust_pickle)
        logger.info(f"BEiT-3 weights from {ckpt}: {rep}")
    elif args.beit3_ckpt:
        raise FileNotFoundError(f"--beit3_ckpt {ckpt} does not exist")
    else:
        logger.info(f"WARNING: {ckpt} not found: BEiT-3 is randomly initialised")


def build(args, logger):
    """The model, its initial weights (precedence: --resume > --finetune_from / --load_from > --beit3_ckpt) and
    the loss (its compat switches from the model's config)."""
    model = build_model(model_config_from_args(args, vocab_size=build_tok(args).vocab_size))
    if args.resume:
        pass  # everything comes from the checkpoint (vgcore.trainer.fit)
    elif args.finetune_from or args.load_from:
        load_weights_into(model, args.finetune_from or args.load_from, logger, trust_pickle=args.trust_pickle)
    else:
        _backbone_init(args, model, logger)
    model.set_compat(**{k: v or getattr(model.cfg, k) for k, v in compat_switches(args).items()})
    masks = uses_masks(args)
    criterion = ALVGCriterion(dict(score_attn_loss_weight=args.score_attn_loss_weight,
                                   decoder_attn_loss_weight=args.decoder_attn_loss_weight, use_masks=masks),
                              model.cfg.compat())
    logger.info(f"ALVG {args.backbone} ({args.preset}, {args.dataset}): {model.cfg.num_queries} queries, masks "
                f"{'on' if masks else 'off (box attention targets)'}, score / decoder attention loss weights "
                f"{args.score_attn_loss_weight} / {args.decoder_attn_loss_weight}; compat {model.cfg.compat()}")
    return model, criterion


def load(args) -> ALVG:
    """Model from --load_from (its stored config when present, else the flags), strictly loaded; compat switches =
    stored config OR flags."""
    if not args.load_from:
        raise SystemExit("alvg: --load_from is required")
    sd, cfg, kind = read_weights(args.load_from, trust_pickle=args.trust_pickle)
    if not cfg:
        cfg = model_config_from_args(args)
    cfg = {k: v for k, v in cfg.items() if k not in ("preset", "model_preset")} if "backbone" in cfg else cfg
    model = build_model(cfg)
    _convert.load_into(model, _convert.adapt_img_size(sd, model.cfg), what=args.load_from)
    model.set_compat(**{k: bool(v) or bool(getattr(model.cfg, k)) for k, v in compat_switches(args).items()})
    return model


def records(args, split: str, train: bool) -> list:
    """The records of every source of (--dataset, split) (SimVG's, `simvg.method.read_records`: outside grefcoco a
    sample without exactly one target box is an error, ``--skip_bad_targets`` drops it with a warning); with
    masks every targeted sample must have one, and the masks travel with the expressions (`alvg.data`)."""
    recs = read_records(args, split, train, NAME)
    if uses_masks(args):
        missing = [r.key() for r in recs if r.mask is None and r.num_targets > 0]
        if missing:
            raise ValueError(f"--masks: {len(missing)} samples of {args.dataset} {split} have no mask, e.g. "
                             f"{missing[0]} (use --masks off for box targets)")
        recs = carry_masks(recs)
    return recs


def pipeline(args, model: ALVG, train: bool):
    """The official ALVG pipeline (mmcv stretch to the square input, no augmentation); with masks the records'
    masks are decoded first (`alvg.data`)."""
    transform = build_transforms("alvg", train=train, imsize=model.cfg.img_size)
    if uses_masks(args):
        transform = decode_masks_first(transform)
    return transform, build_tok(args, model.cfg)


def make_postprocess(args, model: ALVG, split: str):
    return evaluation.make_postprocess(model.cfg.img_size, res=uses_masks(args) and model.cfg.mask_head,
                                       grec=args.dataset == "grefcoco", batch_mean=_batch_mean(args),
                                       mask_thresh=getattr(args, "mask_thresh", 0.5))


def _batch_mean(args) -> bool:
    return bool(getattr(args, "batch_mean_metric", False) or args.official_compat)


def make_accumulators(args) -> evaluation.ALVGMetrics:
    return evaluation.ALVGMetrics(grec=args.dataset == "grefcoco", res=uses_masks(args), batch_mean=_batch_mean(args))


def build_optimizer(args, model: ALVG, iters_per_epoch: int):
    """Adam amsgrad, betas (0.9, 0.98), eps 1e-9; BEiT-3 at lr x --lr_vis_enc_mult (0 freezes it); per-epoch
    warm-up (e+1)/(W+1) and x --decay_ratio at each of --decay_steps (SimVG's, `simvg.method.build_adam_step`);
    no EMA (off in every ALVG config).  ``loop_config`` and ``before_fit`` (the official file names as links)
    are SimVG's too."""
    optimizer, scheduler = build_adam_step(args, model)
    return optimizer, scheduler, None


def predictions(args, model: ALVG, outputs: dict, batch) -> List[dict]:
    return evaluation.predictions(outputs, batch, model.cfg.img_size, args.score_thresh,
                                  getattr(args, "mask_thresh", 0.5))


def format_metrics(args, split: str, m: dict) -> str:
    return evaluation.format_metrics(args.dataset, split, m, args.dataset == "grefcoco")


def convert(argv=None) -> int:
    """Official ALVG / BEiT-3 checkpoints -> ours (``python -m alvg.convert --help``)."""
    return _convert.main(argv)
