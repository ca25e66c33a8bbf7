"""Evaluate an ALVG checkpoint at dataset level on each of ``--eval_sets``: REC Acc@0.5, RES mIoU / oIoU /
Pr@t at original resolution (runs with masks), gRefCOCO Pr@(F1=1, IoU>=0.5), N-acc, T-acc and the masks' gIoU /
cIoU.

    python -m torch.distributed.launch --nproc_per_node=1 --use_env alvg/eval.py --dataset refcoco \
        --backbone beit3_base --beit3_spm CKPT/beit3.spm --data_root data/seqtr --load_from OUT/det_best.pth \
        --eval_sets val testA testB --batch_size 32 --output_dir OUT

``--load_from`` is the checkpoint evaluated: ours (its stored config builds the model; architecture flags are
then ignored), an `alvg.convert` payload, or an official checkpoint (converted on the fly; both turn the compat
switches on).  ``--batch_mean_metric`` (on with ``--official_compat``) also prints the official batch-averaged
numbers.  Writes ``<output_dir>/eval_<dataset>_<split>.json`` per split; ``--vis N`` draws the first N
predictions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python alvg/eval.py`: make the repository importable, not alvg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alvg import method
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.eval_parser(method, add_help)


def main(args: argparse.Namespace):
    return protocol.evaluate(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
