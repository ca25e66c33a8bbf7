"""ResVG-R50 speed and memory: training steps during the frozen epochs and after the unfreeze, and inference,
fp32 eager and every fast path, in one run.

    python scripts/bench_resvg.py [--preset r50] [--batch 8] [--device cpu|cuda] [--json] [--quick]

The official network (ResNet-50 + 6-layer DETR encoder, BERT-base, discriminative encoder, 6-stage decoder, the
semantic-prior MLP), random weights (speed does not depend on their values), random inputs of the official
shapes (640 x 640, 40 query tokens of which 12 real, a 512-d prior per sample).  Modes:

* ``train_frozen``: a step of the first ``--freeze_epochs`` epochs (ResNet, input_proj, DETR encoder and BERT
  frozen: the backward pass stops at the fusion);
* ``train``: a step after the unfreeze (ResNet layer2-4, encoder and BERT train too);
* ``infer``: the forward pass in eval mode without gradients.

A training step is forward + loss (6 stages x (5 L1 + 2 GIoU)) + backward + clipping (--clip_max_norm) + the
AdamW of resvg/train.py (four parameter groups).  Figures (vgcore.bench): fp32 eager (the reference), bf16
autocast, torch.compile, both, and activation checkpointing of the DETR encoder layers for training (the only
checkpointed part: ``--grad_ckpt``); ms/step, images/s, peak memory of a step; and the data loader's images/s per
worker for the training pipeline at 640 px (multi-scale resize 448-640, the official augmentations) on synthetic
JPEG scenes scaled x4 to COCO-like sizes (448-768 px).  ``--json``: one JSON line per figure.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("train_frozen", "train", "infer")


def add_args(p):
    p.add_argument("--preset", default="r50", choices=["r50", "vltvg_r50", "tiny"],
                   help="resvg model preset (tiny: the CPU test preset, a smoke test of the benchmark itself)")


def _train_args(a, extra=()):
    import resvg.method as method
    from vgcore.method import train_parser
    return train_parser(method).parse_args(["--model_preset", a.preset, "--prior_missing", "zeros", *extra])


def make_case(mode, device, a):
    import torch

    import resvg.method as method
    from resvg.args import model_config_from_args
    from resvg.loss import ResVGCriterion
    from resvg.model import build_model
    from vgcore.bench import method_case, random_tokens

    args = _train_args(a)
    model = build_model(model_config_from_args(args)).to(device)
    B, S, L = a.batch, model.cfg.img_size, model.cfg.max_query_len
    images = torch.randn(B, 3, S, S)
    # BERT: [CLS], 10 words, [SEP]
    ids, mask = random_tokens(B, L, 1000, 30000 if a.preset != "tiny" else 2000, real=12, start=101, end=102)
    prior = torch.randn(B, model.cfg.prior_dim)
    target = torch.rand(B, 4) * 0.3 + torch.tensor([0.35, 0.35, 0.2, 0.2])
    batch = tuple(t.to(device) for t in (images, ids, mask, prior, target))
    crit = ResVGCriterion(dict(weight_l1=5.0, weight_giou=2.0, aux_loss=True))
    if mode == "train_frozen":
        model.schedule_epoch = 0  # train() freezes cfg.freeze_modules, as in the first epochs
    elif mode == "train":
        model.schedule_epoch = model.cfg.freeze_epochs
    # optimizer: method.build_optimizer's groups, built here after train() froze the modules, so in train_frozen
    # they hold the trainable parameters only; train.py's also hold the frozen ones, which get no gradient and
    # so cost AdamW nothing: the same work per step
    return method_case(method, args, model, batch, lambda out, b: crit(out, b[4]), args.clip_max_norm,
                       f"ResVG {a.preset} {S}px", forward=lambda m, b: m.forward_tensors(b[0], None, b[1], b[2], b[3]),
                       images=B)


def make_loader(a):
    from types import SimpleNamespace

    import resvg.method as method
    from resvg.args import model_config_from_args
    from vgcore.bench import grounding_loader, synthetic_folder, upscale_records

    tmp, cleanup = synthetic_folder("resvg", "transvg", a)
    args = _train_args(a, ["--split_root", f"{tmp}/split/data", "--image_root", f"{tmp}/images", "--dataset", "unc",
                           "--train_split", "train", "--bert_token_mode", f"{tmp}/tokenizers/vocab.txt"])
    cfg = model_config_from_args(args)
    args.model_config = cfg.to_dict()
    transform, tokenizer = method.pipeline(args, SimpleNamespace(cfg=cfg), True)
    return grounding_loader(upscale_records(method.records(args, "train", True)), transform, tokenizer, a.batch,
                            f"ResVG train pipeline {cfg.img_size}px, synthetic JPEG 448-768 px", cleanup)


def main(argv=None):
    from vgcore import bench
    return bench.main("resvg", make_case, MODES, argv, make_loader=make_loader, add_args=add_args,
                      description=__doc__.split("\n")[0], defaults={"batch": 8}, script=__file__)


if __name__ == "__main__":
    main()
