"""Train SimVG (one-stage, two-stage, pre-training, fine-tuning, distillation) with the official recipes.

    python -m torch.distributed.launch --nproc_per_node=1 --use_env simvg/train.py --preset onestage \
        --dataset refcoco --backbone beit3_base --beit3_ckpt CKPT/beit3_base_patch16_224.pth \
        --beit3_spm CKPT/beit3.spm --data_root data/seqtr --output_dir OUT      (or torchrun, or python)

``--preset`` + ``--dataset`` + ``--backbone`` (+ ``--pretrain_from``) select the official config; every
hyperparameter flag left unset takes the config value (the table `simvg.recipes.RECIPES`), a flag given wins.
Optimizer: Adam amsgrad, betas (0.9, 0.98), eps 1e-9, weight decay 0; BEiT-3 at
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
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python simvg/train.py`: make the repository importable, not simvg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simvg import method
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.train_parser(method, add_help)


def main(args: argparse.Namespace):
    return protocol.train(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
