"""HiVG speed and memory: training step and inference, fp32 eager and every fast path, in one run.

    python scripts/bench_hivg.py [--model ViT-B/16] [--batch 8] [--stage 0] [--device cpu|cuda] [--json] [--quick]

Figures (vgcore.bench): fp32 eager (the reference), bf16 autocast, torch.compile, both, and activation
checkpointing for training; ms/step, images/s, peak memory of a step; and the data loader's images/s per
worker for the training pipeline at 224 px (the official augmentations: --aug_crop --aug_scale --aug_translate)
on synthetic JPEG scenes.  Training: the official warm-up trainable set (Hi LoRA stage 0: CLIP frozen, bridges
and heads trained), every loss term on, the optimizer of hivg/train.py (fused AdamW), random weights (speed does
not depend on their values) and random inputs of the right shapes.  ``--json``: one JSON line per figure.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("train", "infer")


def add_args(p):
    p.add_argument("--model", default="ViT-B/16", choices=["ViT-B/16", "ViT-L/14", "tiny"],
                   help="tiny: the CPU test preset (a smoke test of the benchmark itself)")
    p.add_argument("--imsize", type=int, default=None, help="default: the model's (224; tiny 128)")
    p.add_argument("--stage", type=int, default=0, help="Hi LoRA stage (trainable set)")


def _config(a):
    from hivg.config import config_from_any
    if a.model == "tiny":
        return config_from_any("hivg-tiny", hi_lora_stage=a.stage)
    return config_from_any({"model": a.model, "dataset": "unc", "enable_adaptive_weights": True,
                            "normalize_before": True, "imsize": _imsize(a), "hi_lora_stage": a.stage})


def _imsize(a) -> int:
    return a.imsize or (128 if a.model == "tiny" else 224)


def _train_args(extra=()):
    import hivg.method as method
    from vgcore.method import train_parser
    return train_parser(method).parse_args(list(extra))


def make_case(mode, device, a):
    import torch

    import hivg.method as method
    from hivg.loss import HiVGCriterion
    from hivg.model import build_model
    from vgcore.bench import method_case, random_batch, random_tokens

    model = build_model(_config(a)).to(device)
    B, S = a.batch, model.cfg.image_size
    ids, mask = random_tokens(B, 77, 300, 40000, real=10, start=49406, end=49407)  # CLIP: SOT, 8 words, EOT
    batch = random_batch(B, S, device, ids, mask, boxes=torch.rand(B, 4) * 0.4 + 0.3)
    args = _train_args()
    return method_case(method, args, model, batch, HiVGCriterion(args), args.clip_max_norm,
                       f"HiVG {a.model} {S}px stage {a.stage}")


def make_loader(a):
    from types import SimpleNamespace

    import hivg.method as method
    from vgcore.bench import grounding_loader, synthetic_folder

    tmp, cleanup = synthetic_folder("hivg", "transvg", a, tokenizers=False)
    args = _train_args(["--split_root", f"{tmp}/split/data", "--image_root", f"{tmp}/images", "--dataset", "unc",
                        "--imsize", str(_imsize(a)), "--aug_crop", "--aug_scale", "--aug_translate"])
    transform, tokenizer = method.pipeline(args, SimpleNamespace(cfg=_config(a)), True)
    return grounding_loader(method.records(args, "train", True), transform, tokenizer, a.batch,
                            f"HiVG train pipeline {_imsize(a)}px, synthetic JPEG", cleanup)


def main(argv=None):
    from vgcore import bench
    return bench.main("hivg", make_case, MODES, argv, make_loader=make_loader, add_args=add_args,
                      description=__doc__.split("\n")[0], defaults={"batch": 8}, script=__file__)


if __name__ == "__main__":
    main()
