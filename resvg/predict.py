"""One image and one expression in; the box in original pixels out (printed as JSON), and a PNG with it drawn.

    python resvg/predict.py --checkpoint OUT/best_checkpoint.pth --bert_token_mode VOCAB --image photo.jpg \
        --text "the man on the left" --generator stable-diffusion-v1-5/ --encoder ViT-B-16 \
        --encoder_weights open_clip_vit_b16.bin --out pred.png

The model needs the query's semantic-prior feature.  Its sources, in this order:

* ``--generator`` (a local diffusers text-to-image folder) with ``--encoder`` / ``--encoder_weights``: computed
  now from ``--text``, exactly as ``python -m resvg.prior_gen`` computes the rows of a split (same flags, same
  seed rule, so the same settings give the same feature), and saved to ``--save_prior`` for reuse;
* ``--prior_file``: a saved feature, a [prior_dim] vector (or [N, prior_dim] rows with ``--prior_row``);
* neither: an all-zero prior feature (``--prior_missing zeros``, the default here), which the script states; a
  model trained with real priors then sees an input it never saw, so expect lower accuracy.
  ``--prior_missing error`` stops instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python resvg/predict.py`: make the repository importable, not resvg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from resvg import method
from resvg.prior_gen import PriorGenerator, add_generation_args, settings_from_args
from vgcore import method as protocol


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = protocol.predict_parser(method, add_help)
    add_generation_args(p)
    p.add_argument("--save_prior", default="", help="where the computed prior feature is saved (default: next to "
                   "--out, <out>_prior.pth); reuse it with --prior_file")
    return p


def compute_prior(args: argparse.Namespace) -> str:
    """The prior feature of ``--text`` from ``--generator`` + ``--encoder``, saved; returns the file."""
    settings = settings_from_args(args)
    device = torch.device(args.device or "cpu")
    gen = PriorGenerator(settings, device, batch_size=1, allow_random_encoder=args.random_encoder,
                         encoder_trust_pickle=args.encoder_trust_pickle)
    prompt = settings.prompt(args.text)
    if not args.truncate_long_prompts:
        gen.check_prompts([prompt], lambda i: f"--text {args.text!r}")
    feature = gen.features([prompt])[0]
    path = args.save_prior or os.path.splitext(args.out)[0] + "_prior.pth"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(feature, path)
    print(f"resvg predict: prior feature of {prompt!r} computed with {gen.describe()}; saved to {path}", flush=True)
    return path


def main(args: argparse.Namespace):
    if args.generator:
        if args.prior_file:
            raise SystemExit("resvg predict: give --generator (compute the prior now) or --prior_file (a saved "
                             "one), not both")
        args.prior_file, args.prior_row = compute_prior(args), 0
    elif not args.prior_file and args.prior_missing == "zeros":
        print("resvg predict: no --generator and no --prior_file: the semantic prior of this query is not "
              "computed; the model gets an all-zero prior feature instead (its target query becomes the prior MLP "
              "of zeros, unlike training), so expect lower accuracy.  Pass --generator DIR --encoder NAME "
              "--encoder_weights FILE to compute it, or --prior_file FILE.", flush=True)
    return protocol.predict(method, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
