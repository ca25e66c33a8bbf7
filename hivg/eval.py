"""Evaluate a HiVG checkpoint on one or more splits (``--eval_set testA [testB ...]``): Acc@0.5 over each split (each sample once, no sampler
padding), mean IoU, and the accuracy by expression length (1-5 / 6-7 / 8-10 / 11+ words).

    python hivg/eval.py --dataset unc --eval_set testA --eval_model OUT/best_checkpoint.pth \
        --normalize_before --enable_adaptive_weights --hi_lora_stage 3 --batch_size 60 --output_dir OUT
    python -m torch.distributed.launch --nproc_per_node=7 --use_env hivg/eval.py ...

``--eval_model`` takes our checkpoints (``best_checkpoint.pth``, which carries the model config, so the model
flags may be omitted) or an official HiVG checkpoint (converted on the fly; pass the official model flags and
``--bridge_batch_mixing`` to reproduce the released numbers).  Writes ``<output_dir>/eval_<dataset>_<set>.json`` per split.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python hivg/eval.py`: make the repository importable, not hivg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hivg import method
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.eval_parser(method, add_help)


def main(args: argparse.Namespace):
    return protocol.evaluate(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
