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
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python hivg/train.py`: make the repository importable, not hivg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hivg import method
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.train_parser(method, add_help)


def main(args: argparse.Namespace):
    return protocol.train(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
