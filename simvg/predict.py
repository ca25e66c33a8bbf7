"""One image and one expression in; the box in original pixels (and its object score) out, and a PNG with it drawn.

    python simvg/predict.py --load_from OUT/det_best.pth --beit3_spm CKPT/beit3.spm --image photo.jpg \
        --text "the man on the left" --out pred.png [--branch token]

``--branch decoder`` (default when the model has a trained DB) takes the DB's best query; ``--branch token``
runs the TB-only fast path (the image decoder is skipped).  With several queries (gRefCOCO models) every query
whose score is >= ``--score_thresh`` is returned too (``boxes``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python simvg/predict.py`: make the repository importable, not simvg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simvg import method
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.predict_parser(method, add_help)


def main(args: argparse.Namespace):
    return protocol.predict(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
