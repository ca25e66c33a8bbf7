"""SimVG speed and memory (BEiT-3 base, 640 px, patch 32, 1 query): training step, decoder-branch (DB) and
token-branch-only (TB) inference, fp32 eager and every fast path, in one run.

    python scripts/bench_simvg.py [--backbone base] [--batch 8] [--device cpu|cuda] [--json] [--quick]

Figures (vgcore.bench): fp32 eager (the reference), bf16 autocast, torch.compile, both, and activation
checkpointing for training; ms/step, images/s, peak memory of a step; and the data loader's images/s per
worker for the training pipeline at 640 px (LargeScaleJitter on, as the official single-dataset recipes) on
synthetic JPEG scenes.  Training: DB + TB with distillation (lambda 1 / 2 / 1), Hungarian matching, gradient
clipping 0.15 and the optimizer of simvg/train.py (fused Adam amsgrad, BEiT-3 at 0.1 x lr); random weights and
inputs of the right shapes (12 real text tokens of 20).  ``--json``: one JSON line per figure.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("train", "infer_decoder", "infer_token")
_BACKBONE = {"base": "beit3_base", "large": "beit3_large", "tiny": "tiny"}
_PRESET = {"base": "vitb", "large": "vitl", "tiny": "tiny"}


def add_args(p):
    p.add_argument("--backbone", default="base", choices=sorted(_BACKBONE), help="BEiT-3 size (tiny: the CPU test preset, a smoke test of the benchmark itself)")


def _train_args(a, extra=()):
    import simvg.method as method
    from vgcore.method import train_parser
    args = train_parser(method).parse_args(["--dataset", "refcoco", "--backbone", _BACKBONE[a.backbone], *extra])
    method.prepare(args)
    return args


def make_case(mode, device, a):
    import torch

    import simvg.method as method
    from simvg.loss import SimVGCriterion
    from simvg.model import build_model
    from vgcore.bench import method_case, random_batch, random_tokens

    args = _train_args(a)
    over = {} if a.backbone == "tiny" else {"img_size": args.img_size}
    model = build_model({"preset": _PRESET[a.backbone], **over}).to(device)
    B, L, S = a.batch, args.max_token, model.cfg.img_size
    ids, mask = random_tokens(B, L, 4, model.cfg.vocab_size, real=12)
    batch = random_batch(B, S, device, ids, mask, boxes=torch.tensor([[0.5, 0.5, 0.3, 0.4]]).repeat(B, 1))
    branch = {"train": "both", "infer_decoder": "decoder", "infer_token": "token"}[mode]
    crit = SimVGCriterion(dict(lambda_decoder=1.0, lambda_token=2.0, lambda_distill=1.0))
    return method_case(method, args, model, batch, crit, args.grad_norm_clip, f"SimVG BEiT-3 {a.backbone} {S}px",
                       forward=lambda m, b: m(b, branch=branch))


def make_loader(a):
    import simvg.method as method
    from simvg.model import config_from_args
    from vgcore.bench import grounding_loader, synthetic_folder
    from vgcore.data.transforms import build_transforms
    from vgcore.text import build_tokenizer

    tmp, cleanup = synthetic_folder("simvg", "seqtr", a)
    args = _train_args(a, ["--data_root", f"{tmp}/seqtr", "--image_root", f"{tmp}/images",
                           "--beit3_spm", f"{tmp}/tokenizers/spm.model"])
    over = {} if a.backbone == "tiny" else {"img_size": args.img_size}
    cfg = config_from_args({"preset": _PRESET[a.backbone], "max_text_len": args.max_token, **over})
    transform = build_transforms("simvg", train=True, imsize=cfg.img_size, lsj=bool(args.lsj))  # method.pipeline's
    # the synthetic sentencepiece model is small: the tokenizer's XLM-R vocabulary-size check is relaxed
    tokenizer = build_tokenizer("beit3", max_len=args.max_token, vocab_file=args.beit3_spm, min_vocab=1)
    return grounding_loader(method.records(args, "train", True), transform, tokenizer, a.batch,
                            f"SimVG train pipeline {cfg.img_size}px, LSJ {'on' if args.lsj else 'off'}, synthetic JPEG",
                            cleanup)


def main(argv=None):
    from vgcore import bench
    return bench.main("simvg", make_case, MODES, argv, make_loader=make_loader, add_args=add_args,
                      description=__doc__.split("\n")[0], defaults={"batch": 8}, script=__file__)


if __name__ == "__main__":
    main()
