"""Evaluate a ResVG checkpoint at dataset level: Acc@0.5 with the official strict rule (IoU > 0.5), Acc@0.55..0.90
and mean IoU, boxes compared in original-image pixels, on each of ``--eval_sets`` (alias ``--test_split``).

    python resvg/eval.py --dataset unc --checkpoint OUT/best_checkpoint.pth --eval_sets val testA testB \
        --bert_token_mode checkpoints/bert-base-uncased --split_root data --data_root ln_data

``--checkpoint`` takes our checkpoints, `resvg.convert` outputs or an official ResVG file (``--trust_pickle``:
it stores its args as a pickled Namespace).  Each split needs its ``<split>_fea.pth`` prior file.
Writes ``<output_dir>/eval_<dataset>_<split>.json``; ``--vis N`` draws the first N predictions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python resvg/eval.py`: make the repository importable, not resvg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resvg import method
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.eval_parser(method, add_help)


def main(args: argparse.Namespace):
    return protocol.evaluate(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
