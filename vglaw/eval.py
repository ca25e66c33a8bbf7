"""Evaluate a VG-LAW model at dataset level on each of ``--eval_sets`` (default: the official splits, e.g. val
testA testB for RefCOCO): REC Prec@0.5 in original-image pixels; RES mIoU, oIoU and Pr@0.5..0.9 at original
resolution (``--canvas_metrics`` adds the official 448-canvas numbers).

    python -m torch.distributed.launch --nproc_per_node=4 --use_env vglaw/eval.py --dataset refcoco \
        --pretrained_path OUT/best_checkpoint.pth --bert_model bert-base-uncased/ --split_root data \
        --data_root data --output_dir OUT

``--pretrained_path`` takes our checkpoints, `python -m vglaw.convert` outputs or an official MindSpore
``.ckpt`` (converted on the fly, compat switches on).  Writes ``<output_dir>/eval_<dataset>_<split>.json``;
``--vis N`` draws the first N predictions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python vglaw/eval.py`: make the repository importable, not vglaw/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vglaw import method
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.eval_parser(method, add_help)


def main(args: argparse.Namespace):
    return protocol.evaluate(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
