"""ALVG speed and memory beside SimVG at the same settings (BEiT-3 base, random init, 640 px, patch 32, one
query, batch 8): training step and inference, fp32 eager and every fast path, in one run.

    python scripts/bench_alvg.py [--methods alvg simvg] [--batch 8] [--device cpu|cuda] [--json] [--quick]

Figures (vgcore.bench), for ALVG and then SimVG: fp32 eager (the reference), bf16 autocast, torch.compile,
both, and activation checkpointing of BEiT-3 for training (``--grad_ckpt``); ms/step, images/s, peak memory of
a step; and each method's data loader images/s per worker for its training pipeline at 640 px on synthetic JPEG
scenes scaled x4 to COCO-like sizes (448-768 px; ALVG: the official stretch to 640 x 640 with the masks decoded,
SimVG: LargeScaleJitter).  Modes:

* ``train``: forward, the method's full loss, backward, clipping 0.15 and the fused Adam amsgrad of its
  train.py.  ALVG: detection loss on the 3 decoder layers, mask focal + dice, TIE score-map and
  decoder-attention losses (mask targets); SimVG: decoder branch + token branch with distillation.
* ``infer``: the forward pass under ``torch.no_grad`` (ALVG: boxes, mask and attention maps; SimVG: the decoder
  branch).

Random weights and inputs (12 real text tokens of 20, a box and its rectangular mask).  ``--json``: one JSON
line per figure (method = alvg | simvg).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

MODES = ("train", "infer")
METHODS = ("alvg", "simvg")


def add_args(p):
    p.add_argument("--backbone", default="base", choices=["base", "tiny"],
                   help="BEiT-3 size of both methods (tiny: the CPU test preset, a smoke test of the benchmark)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="what to measure")
    p.add_argument("--bench_method", default="alvg", choices=METHODS, help=argparse.SUPPRESS)


def _train_args(a, extra=()):
    import alvg.method as method
    from vgcore.method import train_parser
    args = train_parser(method).parse_args(["--dataset", "refcoco", "--backbone",
                                            {"base": "beit3_base", "tiny": "tiny"}[a.backbone], *extra])
    method.prepare(args)
    return args


def _alvg_case(mode, device, a):
    import torch

    import alvg.method as method
    from alvg.loss import ALVGCriterion
    from alvg.model import build_model
    from alvg.recipes import model_config_from_args, uses_masks
    from vgcore.bench import method_case, random_batch, random_tokens

    args = _train_args(a)
    model = build_model(model_config_from_args(args, vocab_size=64010 if a.backbone == "base" else 100)).to(device)
    B, L, S = a.batch, model.cfg.max_text_len, model.cfg.img_size
    ids, mask = random_tokens(B, L, 4, min(64000, model.beit3.cfg.vocab_size), real=12)
    masks = torch.zeros(B, S, S, dtype=torch.uint8)  # the box's rectangle
    masks[:, int(0.3 * S):int(0.7 * S), int(0.35 * S):int(0.65 * S)] = 1
    batch = random_batch(B, S, device, ids, mask, boxes=torch.tensor([[0.5, 0.5, 0.3, 0.4]]).repeat(B, 1),
                         masks=masks)
    crit = ALVGCriterion(dict(score_attn_loss_weight=args.score_attn_loss_weight,
                              decoder_attn_loss_weight=args.decoder_attn_loss_weight, use_masks=uses_masks(args)),
                         model.cfg.compat())
    return method_case(method, args, model, batch, crit, args.grad_norm_clip, f"ALVG BEiT-3 {a.backbone} {S}px")


def make_case(mode, device, a):
    if a.bench_method == "simvg":
        import bench_simvg
        return bench_simvg.make_case({"train": "train", "infer": "infer_decoder"}[mode], device, a)
    return _alvg_case(mode, device, a)


def _alvg_loader(a):
    import alvg.method as method
    from alvg.data import decode_masks_first
    from alvg.model import config_from_args
    from alvg.recipes import model_config_from_args, uses_masks
    from vgcore.bench import grounding_loader, synthetic_folder, upscale_records
    from vgcore.data.transforms import build_transforms
    from vgcore.text import build_tokenizer

    tmp, cleanup = synthetic_folder("alvg", "seqtr", a)
    args = _train_args(a, ["--data_root", f"{tmp}/seqtr", "--image_root", f"{tmp}/images",
                           "--beit3_spm", f"{tmp}/tokenizers/spm.model"])
    cfg = config_from_args(model_config_from_args(args, vocab_size=100))
    transform = build_transforms("alvg", train=True, imsize=cfg.img_size)  # alvg.method.pipeline's
    if uses_masks(args):
        transform = decode_masks_first(transform)
    # the synthetic sentencepiece model is small: the tokenizer's XLM-R vocabulary-size check is relaxed
    tokenizer = build_tokenizer("beit3", max_len=cfg.max_text_len, vocab_file=args.beit3_spm, min_vocab=1)
    return grounding_loader(upscale_records(method.records(args, "train", True)), transform, tokenizer, a.batch,
                            f"ALVG train pipeline {cfg.img_size}px, masks {'on' if uses_masks(args) else 'off'}, "
                            "synthetic JPEG 448-768 px", cleanup)


def make_loader(a):
    if a.bench_method == "simvg":
        import bench_simvg
        return bench_simvg.make_loader(a)
    return _alvg_loader(a)


def main(argv=None):
    from vgcore import bench
    description = __doc__.split("\n")[0]
    a, argv = bench.parse_args(description, MODES, argv, add_args, {"batch": 8})
    out = []
    for method in ([a.bench_method] if a._worker else a.methods):
        out += bench.main(method, make_case, MODES, [*argv, "--bench_method", method], make_loader=make_loader,
                          add_args=add_args, description=description, defaults={"batch": 8}, script=__file__)
    return out


if __name__ == "__main__":
    main()
