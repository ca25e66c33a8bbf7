"""One image and one expression in; the box in original pixels out (printed as JSON), and a PNG with it drawn.

    python resvg/predict.py --checkpoint OUT/best_checkpoint.pth --bert_token_mode VOCAB --image photo.jpg \
        --text "the man on the left" --prior_file query_fea.pth --out pred.png

The model needs the query's semantic-prior feature (from text-to-image generation, computed offline):
``--prior_file`` holds it as a [prior_dim] vector (or [N, prior_dim] rows with ``--prior_row``); without it the
prior is zeros, and the script says so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python resvg/predict.py`: make the repository importable, not resvg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resvg import method
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.predict_parser(method, add_help)


def main(args: argparse.Namespace):
    return protocol.predict(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
