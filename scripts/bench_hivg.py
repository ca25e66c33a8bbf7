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
    from vgcore.bench import Case
    from vgcore.data.sample import Batch

    model = build_model(_config(a)).to(device)
    B, S = a.batch, model.cfg.image_size
    ids = torch.zeros(B, 77, dtype=torch.long)
    ids[:, 0], ids[:, 1:9], ids[:, 9] = 49406, torch.randint(300, 40000, (B, 8)), 49407
    boxes = torch.rand(B, 4) * 0.4 + 0.3
    batch = Batch(images=torch.randn(B, 3, S, S), pixel_mask=torch.zeros(B, S, S, dtype=torch.bool), text_ids=ids,
                  text_mask=ids != 0, boxes=boxes, target_boxes=[b[None] for b in boxes],
                  num_targets=torch.ones(B, dtype=torch.long), affine=torch.tensor([[1.0, 0, 1, 0]] * B),
                  orig_size=torch.tensor([[S, S]] * B), texts=["x"] * B, records=[None] * B).to(device)
    args = _train_args()
    crit = HiVGCriterion(args)
    return Case(model=model, batch=batch, images=B, forward=lambda m, b: m(b),
                loss=lambda out, b: crit(out, b)["loss"],
                optimizer=lambda m: method.build_optimizer(args, m, 1)[0], clip_max_norm=args.clip_max_norm,
                label=f"HiVG {a.model} {S}px stage {a.stage}")


def make_loader(a):
    import shutil
    import tempfile
    from types import SimpleNamespace

    import hivg.method as method
    from vgcore.bench import LoaderCase
    from vgcore.data.dataset import Collate, GroundingDataset
    from vgcore.synthetic.scenes import generate

    tmp = tempfile.mkdtemp(prefix="bench_hivg_data_")
    n = max(a.batch * a.loader_batches, a.batch)
    generate(tmp, num_train=n, num_val=1, num_test=1, formats=("transvg",), image_format="jpg", verbose=False,
             tokenizers=False)
    args = _train_args(["--split_root", f"{tmp}/split/data", "--image_root", f"{tmp}/images", "--dataset", "unc",
                        "--imsize", str(_imsize(a)), "--aug_crop", "--aug_scale", "--aug_translate"])
    stub = SimpleNamespace(cfg=_config(a))
    transform, tokenizer = method.pipeline(args, stub, True)
    ds = GroundingDataset(method.records(args, "train", True), transform, tokenizer=tokenizer)
    return LoaderCase(ds, Collate(tokenizer), a.batch, label=f"HiVG train pipeline {_imsize(a)}px, synthetic JPEG",
                      cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True))


def main(argv=None):
    from vgcore import bench
    return bench.main("hivg", make_case, MODES, argv, make_loader=make_loader, add_args=add_args,
                      description=__doc__.split("\n")[0], defaults={"batch": 8}, script=__file__)


if __name__ == "__main__":
    main()
