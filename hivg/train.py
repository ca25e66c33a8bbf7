"""Train HiVG (warm-up, Hi LoRA stages 1-3, mixup pre-training) with the official flags and defaults.

    python hivg/train.py --dataset unc --batch_size 80 --lr 2.5e-4 --epochs 60 --lr_scheduler cosine \
        --aug_crop --aug_scale --aug_translate --normalize_before --enable_adaptive_weights \
        --use_contrastive_loss --use_rtcc_constrain_loss --use_mask_loss --clip_dir CLIP --output_dir OUT
    python -m torch.distributed.launch --nproc_per_node=7 --use_env hivg/train.py ...     (or torchrun)

Stage hand-over is one file: ``--hi_lora_retrain <previous phase>/best_checkpoint.pth`` (our format holds the
whole model: CLIP + the single LoRA adapter set + bridges + heads), where the official code needs three.
See hivg/README.md for the recipes and scripts/hivg/ for every table row.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python hivg/train.py`: make the repository importable, not hivg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from hivg.common import (add_model_args, build_data, build_hivg, load_pretrained, make_accumulators,
                         make_postprocess, model_config_from_args)
from hivg.loss import HiVGCriterion
from vgcore import cli, dist
from vgcore.engine import Logger, build_grad_scaler, evaluate
from vgcore.optim import build_optimizer, build_param_groups, build_scheduler_from_args
from vgcore.trainer import fit, save_model


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("HiVG training", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    g = p.add_argument_group("HiVG training")
    g.add_argument("--retrain", default="", help="start from these model weights (fresh optimizer, epoch 0); "
                   "from a --warmup (no bridge) model only the bridge parameters may be missing")
    g.add_argument("--hi_lora_retrain", default="",
                   help="previous phase's best_checkpoint.pth (the whole model): validated and saved as "
                        "best_checkpoint.pth (epoch -1) before training this stage")
    g.add_argument("--hi_lora_clip", default="", help="official clip_lora_stage_with_bridge.pth (optional, "
                   "official-format hand-over; not needed with --hi_lora_retrain from our runs)")
    g.add_argument("--save_hilora_clip", action="store_true",
                   help="also write clip_lora_stage_with_bridge.pth (CLIP + LoRA + bridges) in the official key layout")
    g.add_argument("--use_contrastive_loss", action="store_true", help="CLIP contrastive term (weight 1)")
    g.add_argument("--use_rtcc_constrain_loss", action="store_true", help="alignment focal x20 + dice x2")
    g.add_argument("--use_mask_loss", action="store_true", help="segmentation focal x20 + dice x2")
    g.add_argument("--aug_crop", action="store_true")
    g.add_argument("--aug_scale", action="store_true")
    g.add_argument("--aug_translate", action="store_true")
    g.add_argument("--aug_blur", action="store_true")
    g.add_argument("--sup_type", default="full", choices=["full", "un"], help="full: <split>; un: <split>_pseudo")
    g.add_argument("--lr_exponential", type=float, default=0.9, help="accepted for compatibility (unused)")
    g.add_argument("--stop_after_steps", type=int, default=None,
                   help="stop the run after this many batches in total (checkpointed; resume with --resume)")
    g = p.add_argument_group("HiVG loss weights (official hard-coded constants; change them only for from-scratch "
                             "recipes such as the tiny quickstart)")
    for name, value in HiVGCriterion.DEFAULTS.items():
        if name.endswith("_coef"):
            g.add_argument(f"--{name}", type=float, default=value, help="weight of the term")
    cli.add_optim_args(p, lr=1e-4, weight_decay=1e-4, epochs=90, lr_scheduler="step", lr_drop=60)
    cli.add_dist_args(p)
    cli.add_logging_args(p, output_dir="./outputs", seed=13)
    return p


def main(args: argparse.Namespace) -> dict:
    info = dist.init_distributed(backend=args.dist_backend, device=args.device)
    dist.seed_everything(args.seed, info.rank)
    device = info.device
    logger = Logger(args.output_dir, tensorboard=args.tensorboard)
    logger.info("args: " + json.dumps(vars(args), default=str))

    model = build_hivg(args)
    load_pretrained(model, args, logger)
    model.to(device)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f"HiVG {model.cfg.backbone}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
                f"{n_train / 1e6:.2f} M trainable (Hi LoRA stage {model.cfg.hi_lora_stage})")

    train_split = args.train_split if args.sup_type == "full" else f"{args.train_split}_pseudo"
    train_set, train_loader, collate = build_data(args, train_split, train=True)
    dist.configure_cpu_threads(device, train_loader.num_workers)
    _, val_loader, _ = build_data(args, args.val_split, train=False)
    logger.info(f"train: {len(train_set)} samples, {len(train_loader)} batches/epoch per process")

    criterion = HiVGCriterion(args)
    groups = build_param_groups(model, args.lr, args.weight_decay)  # official: one group, wd on everything
    optimizer = build_optimizer(args.optimizer, groups, args.lr, args.weight_decay)
    scheduler = build_scheduler_from_args(optimizer, args, iters_per_epoch=max(len(train_loader) // args.accum_steps, 1))
    scaler = build_grad_scaler(args.amp, device)

    ddp = model
    if info.distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)

    config = model_config_from_args(args, model)
    postprocess = make_postprocess()
    initial_best = None
    if args.hi_lora_retrain and not args.resume:
        # official "prevent negative optimization": the previous stage's model is this stage's first best
        m = evaluate(ddp, val_loader, device, postprocess=postprocess, accumulators=make_accumulators(),
                     amp=args.amp, desc="val (hand-over)")
        initial_best = m.get("acc@0.5")
        save_model(Path(args.output_dir) / "best_checkpoint.pth", model, config, m, {"epoch": -1})
        logger.info(f"hand-over from {args.hi_lora_retrain}: val acc@0.5 {initial_best:.4f}")

    summary = fit(args=args, model=ddp, criterion=criterion, optimizer=optimizer, scheduler=scheduler,
                  train_loader=train_loader, val_loader=val_loader, device=device, postprocess=postprocess,
                  make_accumulators=make_accumulators, metric="acc@0.5", scaler=scaler, model_config=config,
                  logger=logger, initial_best=initial_best)
    if args.save_hilora_clip:
        logger.info("--save_hilora_clip: not needed here, best_checkpoint.pth already holds CLIP + LoRA + bridges")
    logger.info(f"done: best val acc@0.5 {summary['best']}")
    logger.close()
    dist.destroy()
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())
