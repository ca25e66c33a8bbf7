"""ALVG's side of the method protocol (`vgcore.method`): flags and recipe presets, model + loss, data (masks
carried into the pipeline when the run uses them), REC / RES / GREC metrics, optimisation."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List

from alvg import convert as _convert
from alvg import evaluation
from alvg.data import carry_masks, decode_masks_first
from alvg.loss import ALVGCriterion
from alvg.model import ALVG, build_model
from alvg.recipes import (add_arch_args, add_eval_args, add_selection_args, add_train_args, build_tok,
                          compat_switches, model_config_from_args, resolve_preset, uses_masks)
from alvg.weights import load_weights_into, read_weights
from simvg.method import sources
from vgcore import cli, dist
from vgcore.data.build import SKIP_HINT, box_options, load_split, split_file, target_policy
from vgcore.data.checks import require_single_target
from vgcore.data.transforms import build_transforms
from vgcore.optim import build_optimizer as _build_optimizer, build_param_groups, build_scheduler
from vgcore.trainer import LoopConfig

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


def _split_root(args) -> str:
    return args.split_root or (str(Path(args.data_root) / "annotations") if args.format == "seqtr" else args.data_root)


def records(args, split: str, train: bool) -> list:
    """The records of every source of (--dataset, split); outside grefcoco a sample without exactly one target
    box is an error (``--skip_bad_targets``: dropped, warned)."""
    parts = sources(args.dataset, split, train)
    recs = []
    for ds, sp in parts:
        kw = {"clip": True} if args.format == "seqtr" else {}
        part = load_split(args.format, ds, sp, split_root=_split_root(args), data_root=args.data_root,
                          image_root=args.image_root or None, layout="seqtr", **box_options(args), **kw)
        if args.dataset != "grefcoco":
            part = require_single_target(part, split_file(args.format, ds, sp, _split_root(args)), target_policy(args),
                                         needed_by=f"ALVG on {args.dataset} (REC)", hint=SKIP_HINT)
        if len(parts) > 1:
            part = [r.replace(extra=dict(r.extra or {}, source=f"{ds}/{sp}")) for r in part]
        recs.extend(part)
    if not recs:
        raise ValueError(f"no samples in {args.format} split {split!r} of {args.dataset} under {_split_root(args)}")
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
    warm-up (e+1)/(W+1) and x --decay_ratio at each of --decay_steps; no EMA (off in every ALVG config)."""
    freeze = [r"^beit3\."] if args.lr_vis_enc_mult == 0 else []
    groups = build_param_groups(model, args.lr, args.weight_decay, rules=[(r"^beit3\.", {"lr_mult": args.lr_vis_enc_mult})],
                                freeze=freeze)
    optimizer = _build_optimizer("adam", groups, args.lr, args.weight_decay, betas=(0.9, 0.98), eps=1e-9, amsgrad=True)
    W = args.warmup_epochs
    scheduler = build_scheduler(optimizer, "step", epochs=args.epochs, interval="epoch",
                                milestones=[d - 1 for d in args.decay_steps], gamma=args.decay_ratio,
                                warmup_epochs=W, warmup_start_factor=1.0 / (W + 1) if W else 0.0)
    return optimizer, scheduler, None


def loop_config(args) -> LoopConfig:
    return LoopConfig(epochs=args.epochs, output_dir=args.output_dir, resume=args.resume,
                      eval_every=args.evaluate_interval, eval_start_epoch=args.start_evaluate_epoch,
                      clip_max_norm=args.grad_norm_clip, accum_steps=args.accum_steps, amp=args.amp,
                      log_every=args.log_every, checkpoint_every_steps=args.checkpoint_every_steps,
                      max_steps=args.max_steps, stop_after_steps=args.stop_after_steps,
                      tensorboard=bool(args.tensorboard), metric="score", mode="max")


def _link(out: Path, name: str, target: str) -> None:
    p = out / name
    if not os.path.lexists(p):
        try:
            os.symlink(target, p)
        except OSError:
            pass


def before_fit(args, model: ALVG, validate, logger):
    """The official file names as links: latest.pth -> checkpoint.pth, det_best.pth -> best_checkpoint.pth."""
    if dist.is_main_process():
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        _link(out, "latest.pth", "checkpoint.pth")
        _link(out, "det_best.pth", "best_checkpoint.pth")
    return None


def predictions(args, model: ALVG, outputs: dict, batch) -> List[dict]:
    return evaluation.predictions(outputs, batch, model.cfg.img_size, args.score_thresh,
                                  getattr(args, "mask_thresh", 0.5))


def format_metrics(args, split: str, m: dict) -> str:
    return evaluation.format_metrics(args.dataset, split, m, args.dataset == "grefcoco")


def convert(argv=None) -> int:
    """Official ALVG / BEiT-3 checkpoints -> ours (``python -m alvg.convert --help``)."""
    return _convert.main(argv)
