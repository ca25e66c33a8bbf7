"""One image and one expression in; the box (and, with a mask head, the mask as COCO RLE) in original pixels
out, and a PNG with both drawn.

    python vglaw/predict.py --pretrained_path OUT/best_checkpoint.pth --bert_model bert-base-uncased/ \
        --image photo.jpg --text "the man on the left" --out pred.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python vglaw/predict.py`: make the repository importable, not vglaw/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vglaw import method
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.predict_parser(method, add_help)


def main(args: argparse.Namespace):
    return protocol.predict(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
