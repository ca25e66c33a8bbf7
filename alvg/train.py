"""Train ALVG with the official recipes (single dataset, mixed / RefCOCO-all pre-training, fine-tuning).

    python -m torch.distributed.launch --nproc_per_node=1 --use_env alvg/train.py --preset single \
        --dataset refcoco --backbone beit3_base --beit3_ckpt CKPT/beit3_base_indomain_patch16_224.pth \
        --beit3_spm CKPT/beit3.spm --data_root data/seqtr --output_dir OUT      (or torchrun, or python)

``--preset`` + ``--dataset`` + ``--backbone`` select the official config; every hyperparameter flag left unset
takes the config value (the table `alvg.recipes.RECIPES`), a flag given wins.  Loss: Hungarian detection loss
on every decoder layer, mask focal + dice (with masks), TIE score-map loss x ``--score_attn_loss_weight`` and
decoder-attention loss x ``--decoder_attn_loss_weight`` with mask targets when the data has masks
(``--masks auto``) and box targets otherwise.  Optimizer: Adam amsgrad, betas (0.9, 0.98), eps 1e-9, BEiT-3 at
lr x ``--lr_vis_enc_mult``; per-epoch schedule (e+1)/(W+1) warm-up and x ``--decay_ratio`` when e+1 >= each
of ``--decay_steps``; gradient clipping ``--grad_norm_clip``.  Initialisation: ``--resume`` (exact: model,
optimizer, schedule, data position) > ``--finetune_from`` / ``--load_from`` (weights only) > ``--beit3_ckpt``.
``--official_compat`` turns on every official quirk (alvg/README.md, "Compat switches").

Outputs in ``--output_dir``: ``checkpoint.pth`` (full state; ``latest.pth`` links to it), ``best_checkpoint.pth``
(``det_best.pth`` links to it; model + config + val metrics of the best ``score``), ``log.txt``, ``log.jsonl``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python alvg/train.py`: make the repository importable, not alvg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alvg import method
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.train_parser(method, add_help)


def main(args: argparse.Namespace):
    return protocol.train(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
