"""SimVG's side of the method protocol (`vgcore.method`): flags and recipe presets, model + loss, data (incl.
the multi-source sets), metrics of both branches, optimisation."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List, Optional

from simvg import convert as _convert
from simvg import evaluation
from simvg.loss import SimVGCriterion
from simvg.model import SimVG, build_model
from simvg.recipes import (add_arch_args, add_eval_args, add_selection_args, add_train_args, build_tok,
                           compat_switches, model_config_from_args, resolve_preset)
from simvg.weights import compat_of, load_weights_into, read_weights
from vgcore import dist
from vgcore import cli
from vgcore.data.build import SKIP_HINT, box_options, load_split, split_file, target_policy
from vgcore.data.checks import require_single_target
from vgcore.data.transforms import build_transforms
from vgcore.ema import ModelEMA
from vgcore.optim import build_optimizer as _build_optimizer, build_param_groups, build_scheduler
from vgcore.trainer import LoopConfig

NAME = "SimVG"
COCOALL_SOURCES = ("refcoco", "refcocoplus", "refcocog")
MIXED_VAL = ("val_refcoco_unc", "val_refcocoplus_unc", "val_refcocog_umd", "val_referitgame_berkeley",
             "val_flickr30k")


def add_args(parser: argparse.ArgumentParser, mode: str) -> None:
    add_selection_args(parser)
    add_arch_args(parser)
    if mode == "train":
        add_train_args(parser)
    else:
        add_eval_args(parser, mode)
    cli.add_speed_args(parser, only=None if mode == "train" else ("compile",))


def prepare(args) -> None:
    """Every hyperparameter flag left unset takes the value of the official recipe (`simvg.recipes.RECIPES`)."""
    resolve_preset(args)


def build(args, logger):
    """The model (branches: both when the token / distillation weights are on, else the decoder's), its initial
    weights (official precedence: --resume > --finetune_from > --load_from > --beit3_ckpt), and the loss."""
    token_on = bool(args.token_weight) or bool(args.distill_weight)
    cfg = model_config_from_args(args, vocab_size=build_tok(args).vocab_size)
    cfg["default_branch"] = "both" if token_on else "decoder"
    model = build_model(cfg)
    if args.resume:
        pass  # everything comes from the checkpoint (vgcore.trainer.fit)
    elif args.finetune_from or args.load_from:
        load_weights_into(model, args.finetune_from or args.load_from, logger, trust_pickle=args.trust_pickle)
    elif args.backbone == "tiny" and args.beit3_ckpt:  # simvg/pretrain_tiny.py output (official layout)
        if not os.path.isfile(args.beit3_ckpt):
            raise FileNotFoundError(f"--beit3_ckpt {args.beit3_ckpt} does not exist")
        rep = model.load_pretrained_backbone(args.beit3_ckpt, trust_pickle=args.trust_pickle)
        logger.info(f"tiny BEiT-3 weights from {args.beit3_ckpt} (strict): {rep}")
    elif args.backbone != "tiny":
        ckpt = args.beit3_ckpt or f"./checkpoints/beit3/{args.backbone}_patch16_224.pth"
        if os.path.isfile(ckpt):
            rep = model.load_pretrained_backbone(ckpt, trust_pickle=args.trust_pickle)
            logger.info(f"BEiT-3 weights from {ckpt}: {rep if isinstance(rep, dict) else ''}")
        elif args.beit3_ckpt:
            raise FileNotFoundError(f"--beit3_ckpt {ckpt} does not exist")
        else:
            logger.info(f"WARNING: {ckpt} not found: BEiT-3 is randomly initialised")
    model.set_compat(**{k: v or getattr(model.cfg, k) for k, v in compat_switches(args).items()})
    logger.info(f"SimVG {args.backbone} ({args.preset}, {args.dataset}): branches {model.cfg.default_branch}; "
                f"compat {compat_of(model)}")
    criterion = SimVGCriterion(dict(lambda_decoder=args.decoder_weight, lambda_token=args.token_weight,
                                    lambda_distill=args.distill_weight))
    return model, criterion


def load(args) -> SimVG:
    """Model from --load_from (its stored config when present, else the flags), strictly loaded; compat
    switches = stored config OR flags; ``--branch`` the branches it runs."""
    if not args.load_from:
        raise SystemExit("simvg: --load_from is required")
    sd, cfg, kind = read_weights(args.load_from, use_ema=args.use_ema, trust_pickle=args.trust_pickle)
    if not cfg:
        cfg = model_config_from_args(args)
    cfg = {k: v for k, v in cfg.items() if k not in ("preset", "model_preset")} if "backbone" in cfg else cfg
    model = build_model(cfg)
    _convert.load_into(model, _convert.adapt_img_size(sd, model.cfg))
    model.set_compat(**{k: bool(v) or bool(getattr(model.cfg, k)) for k, v in compat_switches(args).items()})
    if args.use_ema and kind == "ours":
        print(f"note: {args.load_from} is one of our files; an EMA run's det_best.pth already holds the EMA weights")
    model.cfg.default_branch = args.branch
    return model


def _split_root(args) -> str:
    return args.split_root or (str(Path(args.data_root) / "annotations") if args.format == "seqtr" else args.data_root)


def sources(dataset: str, split: str, train: bool) -> List[tuple]:
    """(dataset key, split) pairs a (dataset, split) reads: cocoall = RefCOCO/+/g(umd) union; mixed val = 5 sets."""
    if dataset == "cocoall":
        return [(d, split) for d in COCOALL_SOURCES]
    if dataset == "mixed" and not train and split == "val":
        return [("mixed", s) for s in MIXED_VAL]
    return [(dataset, split)]


def is_multi_source(dataset: str, split: str = "val") -> bool:
    return len(sources(dataset, split, train=False)) > 1


def records(args, split: str, train: bool) -> list:
    """The records of every source of (--dataset, split); several sources are tagged ``extra['source']``.  Outside
    grefcoco a sample without exactly one target box is an error (``--skip_bad_targets``: dropped, warned)."""
    return read_records(args, split, train, NAME)


def read_records(args, split: str, train: bool, method_name: str) -> list:
    """`records` of a method built on SimVG's data handling (``method_name`` names it in errors)."""
    parts = sources(args.dataset, split, train)
    recs = []
    for ds, sp in parts:
        kw = {"clip": True} if args.format == "seqtr" else {}
        part = load_split(args.format, ds, sp, split_root=_split_root(args), data_root=args.data_root,
                          image_root=args.image_root or None, layout="seqtr", **box_options(args), **kw)
        if args.dataset != "grefcoco":  # REC: one box per expression; gRefCOCO has no- and multi-target samples
            part = require_single_target(part, split_file(args.format, ds, sp, _split_root(args)), target_policy(args),
                                         needed_by=f"{method_name} on {args.dataset} (REC)", hint=SKIP_HINT)
        if len(parts) > 1:
            part = [r.replace(extra=dict(r.extra or {}, source=f"{ds}/{sp}")) for r in part]
        recs.extend(part)
    if not recs:
        raise ValueError(f"no samples in {args.format} split {split!r} of {args.dataset} under {_split_root(args)}")
    return recs


def pipeline(args, model: SimVG, train: bool):
    transform = build_transforms("simvg", train=train, imsize=model.cfg.img_size,
                                 **({"lsj": bool(args.lsj)} if train else {}))
    return transform, build_tok(args, model.cfg)


def make_postprocess(args, model: SimVG, split: str):
    return evaluation.make_postprocess(model.cfg.img_size, is_multi_source(args.dataset, split))


def make_accumulators(args) -> evaluation.SimVGMetrics:
    return evaluation.make_accumulators(args.dataset == "grefcoco", args.batch_mean_metric or args.official_compat)


def build_optimizer(args, model: SimVG, iters_per_epoch: int):
    """Adam amsgrad, betas (0.9, 0.98), eps 1e-9; BEiT-3 at lr x --lr_vis_enc_mult (0 freezes it: not an
    official setting, the tiny synthetic recipes use it); per-epoch warm-up (e+1)/(W+1) and x --decay_ratio at
    each of --decay_steps; EMA of the whole state with --ema."""
    optimizer, scheduler = build_adam_step(args, model)
    ema = ModelEMA(model, decay=args.ema_factor, warmup="ratio") if args.ema else None
    return optimizer, scheduler, ema


def build_adam_step(args, model):
    """The official optimiser and schedule: Adam amsgrad, betas (0.9, 0.98), eps 1e-9; BEiT-3 (``beit3.*``) at
    lr x --lr_vis_enc_mult (0 freezes it); per-epoch warm-up (e+1)/(W+1) and x --decay_ratio at each of
    --decay_steps.  Returns (optimizer, scheduler)."""
    freeze = [r"^beit3\."] if args.lr_vis_enc_mult == 0 else []
    groups = build_param_groups(model, args.lr, args.weight_decay, rules=[(r"^beit3\.", {"lr_mult": args.lr_vis_enc_mult})],
                                freeze=freeze)
    optimizer = _build_optimizer("adam", groups, args.lr, args.weight_decay, betas=(0.9, 0.98), eps=1e-9, amsgrad=True)
    W = args.warmup_epochs
    scheduler = build_scheduler(optimizer, "step", epochs=args.epochs, interval="epoch",
                                milestones=[d - 1 for d in args.decay_steps], gamma=args.decay_ratio,
                                warmup_epochs=W, warmup_start_factor=1.0 / (W + 1) if W else 0.0)
    return optimizer, scheduler


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
        except OSError:  # filesystems without symlinks: the vgcore names stay the reference
            pass


def before_fit(args, model, validate, logger) -> Optional[float]:
    """The official file names as links: latest.pth -> checkpoint.pth, det_best.pth -> best_checkpoint.pth."""
    if dist.is_main_process():
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        _link(out, "latest.pth", "checkpoint.pth")
        _link(out, "det_best.pth", "best_checkpoint.pth")
    return None


def predictions(args, model: SimVG, outputs: dict, batch) -> List[dict]:
    """The ``--branch`` prediction (``both``: the decoder's): best box and score; multi-query models also every
    query whose score is >= --score_thresh (``boxes_xyxy``, ``scores``)."""
    preds = evaluation.branch_predictions(outputs, batch, model.cfg.img_size)
    name = args.branch if args.branch in preds else ("decoder" if "decoder" in preds else "token")
    p = preds[name]
    res = []
    for i in range(len(batch.records)):
        best = int(p["best"][i])
        r = {"branch": name, "box_xyxy": p["best_xyxy"][i].cpu().numpy(), "score": float(p["scores"][i, best])}
        if p["all_xyxy"].shape[1] > 1:
            sel = p["keep"][i] & (p["scores"][i] >= args.score_thresh)
            r.update(boxes_xyxy=p["all_xyxy"][i][sel].cpu().numpy(), scores=p["scores"][i][sel].cpu().numpy())
        res.append(r)
    return res


def format_metrics(args, split: str, m: dict) -> str:
    return evaluation.format_metrics(args.dataset, split, m, args.dataset == "grefcoco")


def convert(argv=None) -> int:
    """Official SimVG / BEiT-3 checkpoints -> ours (``python -m simvg.convert --help``)."""
    return _convert.main(argv)
