"""Train VG-LAW (multi-task REC + RES, or one task) with the official flags and the released recipe as defaults.

    python -m torch.distributed.launch --nproc_per_node=4 --use_env vglaw/train.py --dataset refcoco \
        --splitBy unc --batch_size 8 --batch_sum 256 --law_type svd --img_size 448 --vit_model vitdet_b_mrcnn \
        --vit_model_path model_final_61ccd1.pkl --bert_model bert-base-uncased/ --translate \
        --lr_scheduler step --max_epochs 20 --drop_epochs 10 --use_mask --split_root data --data_root data \
        --output_dir OUT                                              (or torchrun, or plain python)

Gradients accumulate over ``--batch_sum`` / (``--batch_size`` x processes) batches; AdamW over three groups
(``--lr_visual`` ViTDet, ``--lr_lang`` BERT, ``--lr_base`` the rest); linear warm-up from 0.01 x lr over
``--warmup_steps`` batches, then x ``--drop_rate`` at each of ``--drop_epochs`` (``--compat_constant_lr``:
the MindSpore port's constant rates); clipping at ``--clip_max_norm``.  ``--task rec|res|both`` (default
both with ``--use_mask``) selects the heads.  Model selection: ``score`` on ``--val_split`` (REC Prec@0.5;
RES-only models: mIoU).  Outputs in ``--output_dir``: ``checkpoint.pth`` (exact resume with ``--resume``),
``best_checkpoint.pth`` (model + config + val metrics), ``log.txt``, ``log.jsonl``.  See vglaw/README.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python vglaw/train.py`: make the repository importable, not vglaw/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vglaw import method
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.train_parser(method, add_help)


def main(args: argparse.Namespace):
    return protocol.train(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
