"""Train ResVG with the official recipe (AdamW, lr 1e-4 / 1e-5 for ResNet, DETR encoder and BERT, StepLR at 60 of
90 epochs, the four encoders frozen for the first 10 epochs, clipping 0.1, batch 16 per process).

    python -m torch.distributed.launch --nproc_per_node=4 --use_env resvg/train.py --dataset unc \
        --split_root data --data_root ln_data --load_weights_path checkpoints/detr-r50-unc.pth \
        --bert_model checkpoints/bert-base-uncased --output_dir OUT        (or torchrun, or python)

Reads ``<split_root>/<dataset>/<dataset>_new_train.pth`` and ``new_train_fea.pth`` (``--train_split``) and
validates on ``--val_split`` / ``--test_split`` (with its ``<split>_fea.pth``) after every epoch.  No config
file: the flag defaults are the official config values.  Outputs in ``--output_dir``: ``checkpoint.pth``
(exact resume with ``--resume``), ``best_checkpoint.pth`` (best val Acc@0.5), ``log.txt``, ``log.jsonl``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python resvg/train.py`: make the repository importable, not resvg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resvg import method
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.train_parser(method, add_help)


def main(args: argparse.Namespace):
    return protocol.train(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
