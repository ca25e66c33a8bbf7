"""Train SimVG (one-stage, two-stage, pre-training, fine-tuning, distillation) with the official recipes.

    python -m torch.distributed.launch --nproc_per_node=1 --use_env simvg/train.py --preset onestage \
        --dataset refcoco --backbone beit3_base --beit3_ckpt CKPT/beit3_base_patch16_224.pth \
        --beit3_spm CKPT/beit3.spm --data_root data/seqtr --output_dir OUT      (or torchrun, or python)

``--preset`` + ``--dataset`` + ``--backbone`` (+ ``--pretrain_from``) select the official config; every
hyperparameter flag left unset takes the config value (simvg/common.py `recipe`), a flag given wins.
Optimizer (simvg.md §8): Adam amsgrad, betas (0.9, 0.98), eps 1e-9, weight decay 0; BEiT-3 at
lr x ``--lr_vis_enc_mult``; per-epoch schedule (e+1)/(W+1) warm-up and x ``--decay_ratio`` when e+1 >= each
of ``--decay_steps``; gradient clipping ``--grad_norm_clip``; EMA of the whole state (decay
min(ema_factor, (n+1)/(n+10))) with ``--ema``, used for validation and ``det_best.pth``.
Initialisation precedence (official): ``--resume`` (exact: model, optimizer, schedule, EMA, data position)
> ``--finetune_from`` > ``--load_from`` (weights only, position table resized, e.g. 512 -> 640) >
``--beit3_ckpt`` (BEiT-3 only).  DB-only presets (token/distill weights 0) do not run the token branch.

Outputs in ``--output_dir``: ``checkpoint.pth`` (full state; ``latest.pth`` links to it), ``best_checkpoint.pth``
(``det_best.pth`` links to it; model + config + val metrics of the best ``score``), ``log.txt``, ``log.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python simvg/train.py`: make the repository importable, not simvg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from simvg.common import (add_arch_args, add_selection_args, build_data, build_tok, compat_of,
                          is_multi_source, load_weights_into, make_accumulators_factory, make_postprocess,
                          model_config_from_args, resolve_preset)
from simvg.loss import SimVGCriterion
from simvg.model import build_model
from vgcore import dist
from vgcore.ema import ModelEMA
from vgcore.engine import Logger, build_grad_scaler
from vgcore.optim import build_optimizer, build_param_groups, build_scheduler, describe_param_groups
from vgcore.trainer import fit


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("SimVG training", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_selection_args(p)
    g = p.add_argument_group("initialisation")
    g.add_argument("--beit3_ckpt", default="", help="BEiT-3 pretrained weights (default ./checkpoints/beit3/"
                   "beit3_{base,large}_patch16_224.pth; --backbone tiny: none unless given, e.g. the output of "
                   "simvg/pretrain_tiny.py)")
    g.add_argument("--load_from", default="", help="model weights only (twostage_2: the stage-1 det_best.pth)")
    g.add_argument("--finetune_from", default="", help="model weights only, best reset (finetune / distill)")
    g.add_argument("--resume", default="", help="exact resume from <output_dir>/latest.pth (checkpoint.pth)")
    add_arch_args(p)
    g = p.add_argument_group("optimisation (None = preset)")
    g.add_argument("--lr", type=float, default=None, help="head lr")
    g.add_argument("--lr_vis_enc_mult", type=float, default=None, help="BEiT-3 lr = lr x this (0.1; 0 freezes BEiT-3)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--warmup_epochs", type=int, default=None, help="factor (e+1)/(W+1) for epochs e < W")
    g.add_argument("--decay_steps", type=int, nargs="+", default=None, help="lr x decay_ratio when e+1 >= each")
    g.add_argument("--decay_ratio", type=float, default=None)
    g.add_argument("--weight_decay", type=float, default=None)
    g.add_argument("--grad_norm_clip", type=float, default=None, help="0 = off (official 0.15)")
    g.add_argument("--ema", action="store_true", default=None, help="EMA of the whole state dict")
    g.add_argument("--ema_factor", type=float, default=None)
    g.add_argument("--lsj", dest="lsj", action="store_true", default=None, help="LargeScaleJitter(0.3, 1.4)")
    g.add_argument("--no_lsj", dest="lsj", action="store_false")
    g.add_argument("--decoder_weight", type=float, default=None)
    g.add_argument("--token_weight", type=float, default=None, help="0 (with --distill_weight 0) = TB off")
    g.add_argument("--distill_weight", type=float, default=None)
    g.add_argument("--head_lr_mult", type=float, default=1.0, help=argparse.SUPPRESS)
    g.add_argument("--accum_steps", type=int, default=1)
    g = p.add_argument_group("schedule of evaluation / logging")
    g.add_argument("--evaluate_interval", type=int, default=None, help="epochs between validations")
    g.add_argument("--start_evaluate_epoch", type=int, default=None, help="no validation before this epoch")
    g.add_argument("--val_split", default="val")
    g.add_argument("--train_split", default="train")
    g.add_argument("--eval_batch_size", type=int, default=None, help="default = --batch_size")
    g.add_argument("--log_every", type=int, default=50)
    g.add_argument("--checkpoint_every_steps", type=int, default=0, help="mid-epoch checkpoints (optimizer steps)")
    g.add_argument("--max_steps", type=int, default=None, help="batches per epoch (debug)")
    g.add_argument("--stop_after_steps", type=int, default=None,
                   help="stop the run after this many batches in total (checkpointed; continue with --resume)")
    g.add_argument("--tensorboard", type=int, default=1, choices=(0, 1))
    return p


class _GatedLoader:
    """Validation loader that yields nothing before ``start_epoch`` (official ``start_evaluate_epoch``)."""

    def __init__(self, loader, start_epoch: int):
        self.loader, self.start_epoch, self.epoch = loader, start_epoch, 0
        self.dataset, self.collate_fn = loader.dataset, loader.collate_fn

    def __iter__(self):
        return iter(self.loader) if self.epoch >= self.start_epoch else iter(())

    def __len__(self):
        return len(self.loader) if self.epoch >= self.start_epoch else 0


def _link(out: Path, name: str, target: str) -> None:
    p = out / name
    if not os.path.lexists(p):
        try:
            os.symlink(target, p)
        except OSError:  # filesystems without symlinks: the vgcore names stay the reference
            pass


def main(args: argparse.Namespace) -> dict:
    resolve_preset(args)
    info = dist.init_distributed(backend=args.dist_backend, device=args.device)
    dist.seed_everything(args.seed, info.rank)
    device = info.device
    out = Path(args.output_dir)
    if dist.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        _link(out, "latest.pth", "checkpoint.pth")
        _link(out, "det_best.pth", "best_checkpoint.pth")
    logger = Logger(args.output_dir, tensorboard=bool(args.tensorboard))
    logger.info("args: " + json.dumps(vars(args), default=str))

    token_on = bool(args.token_weight) or bool(args.distill_weight)
    tokenizer = build_tok(args)
    cfg = model_config_from_args(args, vocab_size=tokenizer.vocab_size)
    cfg["default_branch"] = "both" if token_on else "decoder"
    model = build_model(cfg)
    if args.resume:
        pass  # everything comes from the checkpoint (fit)
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
    model.set_compat(**{k: v or getattr(model.cfg, k) for k, v in
                        {"text_maxpool_int64_mask": args.text_pool_compat or args.official_compat,
                         "text_pos_embed_1d_degenerate": args.text_pos_compat or args.official_compat}.items()})
    model.to(device)
    logger.info(f"SimVG {args.backbone} ({args.preset}, {args.dataset}): "
                f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; branches "
                f"{model.cfg.default_branch}; compat {compat_of(model)}")

    train_set, train_loader = build_data(args, args.train_split, True, tokenizer, args.img_size)
    _, val_loader = build_data(args, args.val_split, False, tokenizer, args.img_size,
                               batch_size=args.eval_batch_size or args.batch_size)
    logger.info(f"train: {len(train_set)} samples, {len(train_loader)} batches/epoch per process")

    criterion = SimVGCriterion(dict(lambda_decoder=args.decoder_weight, lambda_token=args.token_weight,
                                    lambda_distill=args.distill_weight))
    rules = [(r"^beit3\.", {"lr_mult": args.lr_vis_enc_mult})]
    if args.head_lr_mult != 1.0:
        rules.append((r"^head\.", {"lr_mult": args.head_lr_mult}))
    # --lr_vis_enc_mult 0 freezes BEiT-3 (not an official setting: the tiny synthetic recipes use it)
    freeze = [r"^beit3\."] if args.lr_vis_enc_mult == 0 else []
    groups = build_param_groups(model, args.lr, args.weight_decay, rules=rules, freeze=freeze)
    logger.info(describe_param_groups(groups))
    optimizer = build_optimizer("adam", groups, args.lr, args.weight_decay, betas=(0.9, 0.98), eps=1e-9,
                                amsgrad=True)
    W = args.warmup_epochs
    scheduler = build_scheduler(optimizer, "step", epochs=args.epochs, interval="epoch",
                                milestones=[d - 1 for d in args.decay_steps], gamma=args.decay_ratio,
                                warmup_epochs=W, warmup_start_factor=1.0 / (W + 1) if W else 0.0)
    scaler = build_grad_scaler(args.amp, device)
    ema = ModelEMA(model, decay=args.ema_factor, warmup="ratio") if args.ema else None

    ddp = model
    if info.distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=not token_on)

    gated = _GatedLoader(val_loader, args.start_evaluate_epoch)
    set_epoch = train_loader.set_epoch

    def _set_epoch(e, s=0):
        gated.epoch = e
        set_epoch(e, s)
    train_loader.set_epoch = _set_epoch

    # fields vgcore.trainer.fit reads
    args.clip_max_norm = args.grad_norm_clip
    args.eval_every = args.evaluate_interval
    grec = args.dataset == "grefcoco"
    summary = fit(args=args, model=ddp, criterion=criterion, optimizer=optimizer, scheduler=scheduler,
                  train_loader=train_loader, val_loader=gated, device=device,
                  postprocess=make_postprocess(args.img_size, is_multi_source(args.dataset, args.val_split)),
                  make_accumulators=make_accumulators_factory(grec), metric="score", ema=ema, scaler=scaler,
                  model_config=model.cfg.to_dict(), logger=logger)
    logger.info(f"done: best val score {summary['best']}")
    logger.close()
    dist.destroy()
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())
