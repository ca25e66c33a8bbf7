"""Tag pretraining of VG-LAW's tiny towers on synthetic scenes: the stand-in for ViTDet and BERT.

VG-LAW starts from a detection-pretrained ViTDet ViT-B and a pretrained BERT; neither exists for the tiny preset
offline, and the grounding losses alone do not teach a random tiny ViT the shape kinds within a CPU budget (the
same finding as HiVG's and SimVG's tiny presets).  This script trains (`vgcore.synthetic.tagpretrain`):

* the tiny ViT (no language: the adaptive weights are off) on per-patch tags of synthetic scenes seen through
  VG-LAW's evaluation transform: what covers the patch (kind / colour) and where the patch is (grid row /
  column, which keeps the absolute positions in the features that the box head pools), read off the backbone's
  output feature map, the one the heads consume;
* the tiny BERT on what a synthetic expression says (head noun phrase, type, direction, ordinal, anchor:
  `vgcore.synthetic.tagpretrain.program_tags`), read off the [CLS] last hidden state, the query of both
  VG-LAW heads and the input of the weight generator.

Outputs in ``--out_dir``: ``vit_tiny.pth`` (detectron2-style ``{"model": {"backbone.net.<name>": tensor}}``, for
``vglaw/train.py --vit_model_path``) and ``bert/`` (``vocab.txt`` copied from ``--bert_model`` and
``pytorch_model.bin`` in HF BERT names, for ``vglaw/train.py --bert_model``), plus ``summary.json``.  Scenes and
expressions come from ``--scene_seed`` (default 1), not the grounding data's seed 0.

    python vglaw/pretrain_tiny.py --bert_model DATA/tokenizers --out_dir OUT/pretrained --object-scale 1.8 \
        --max-objects 5
    python vglaw/train.py --preset tiny --vit_model_path OUT/pretrained/vit_tiny.pth \
        --bert_model OUT/pretrained/bert ...
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python vglaw/pretrain_tiny.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from vgcore import dist
from vgcore.checkpoint import atomic_save
from vgcore.data.transforms import build_transforms
from vgcore.synthetic.tagpretrain import (ExpressionTagDataset, SceneTagDataset, make_records, make_scenes,
                                          pretrain_tags, pretrain_text_tags, tag_accuracy, text_tag_accuracy)
from vgcore.text import build_tokenizer
from vglaw.model import build_model

__all__ = ["get_args_parser", "main"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("VG-LAW tiny ViT / BERT tag pretraining", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bert_model", required=True,
                   help="folder with the tiny vocabulary's vocab.txt (DATA/tokenizers of the synthetic data)")
    p.add_argument("--out_dir", required=True, help="writes vit_tiny.pth, bert/ and summary.json here")
    p.add_argument("--preset", default="tiny", choices=["tiny"])
    p.add_argument("--max_len", type=int, default=40)
    p.add_argument("--steps", type=int, default=3000, help="image-phase steps (0: the ViT keeps its init)")
    p.add_argument("--num_scenes", type=int, default=4000, help="training scenes (held in memory, float16)")
    p.add_argument("--val_scenes", type=int, default=300, help="held-out scenes / expressions for the report")
    p.add_argument("--scene_seed", type=int, default=1, help="synthetic seed of the scenes (grounding data: 0)")
    p.add_argument("--min_objects", "--min-objects", type=int, default=3)
    p.add_argument("--max_objects", "--max-objects", type=int, default=8)
    p.add_argument("--object_scale", "--object-scale", type=float, default=1.0)
    p.add_argument("--fields", default="kind,color,row,col",
                   help="comma list of kind,color,size (what covers the patch) and row,col (where it is)")
    p.add_argument("--pretrain_batch_size", type=int, default=16)
    p.add_argument("--pretrain_lr", type=float, default=6e-3,
                   help="image phase (measured on the quickstart scenes: 1,500 steps at 3e-3 give kind 33%%, 3,000 at "
                        "6e-3 97%%; the grounding then reaches 45%% / 82%% Prec@0.5)")
    p.add_argument("--warmup_steps", type=int, default=300, help="linear warm-up steps of the image phase")
    p.add_argument("--background_weight", type=float, default=0.1, help="cross-entropy weight of background patches")
    p.add_argument("--min_fraction", type=float, default=0.3, help="share of a patch a shape must cover to label it")
    p.add_argument("--text_steps", type=int, default=400, help="text-phase steps (0: BERT keeps its init)")
    p.add_argument("--text_records", type=int, default=6000)
    p.add_argument("--text_batch_size", type=int, default=64)
    p.add_argument("--text_lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--device", default="cpu")
    p.add_argument("--log_every", type=int, default=250)
    return p


def main(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dist.configure_cpu_threads(device, 0)
    vocab = Path(args.bert_model) / "vocab.txt"
    if not vocab.is_file():
        raise SystemExit(f"vglaw/pretrain_tiny.py: no vocab.txt in {args.bert_model}")
    tokenizer = build_tokenizer("bert", max_len=args.max_len, vocab_file=args.bert_model)
    model = build_model({"preset": args.preset, "vocab_size": tokenizer.vocab_size, "max_len": args.max_len})
    opts = dict(min_objects=args.min_objects, max_objects=args.max_objects, object_scale=args.object_scale)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"preset": args.preset, "scene_seed": args.scene_seed, "scene_options": opts}

    vit = model.visual_encoder.to(device)
    if args.steps > 0:
        fields = [f.strip() for f in args.fields.split(",") if f.strip()]
        transform = build_transforms("vglaw", train=False, imsize=model.cfg.img_size)
        recs, imgs = make_scenes(args.num_scenes, seed=args.scene_seed, split="train", **opts)
        vrecs, vimgs = make_scenes(args.val_scenes, seed=args.scene_seed, split="val", **opts)
        patch = model.cfg.patch_size
        train_set = SceneTagDataset(recs, imgs, transform, patch, fields, args.min_fraction)
        val_set = SceneTagDataset(vrecs, vimgs, transform, patch, fields, args.min_fraction)

        def features(img):
            return vit(img).flatten(2).transpose(1, 2)  # [B, h*w, C], row-major like the tag grid

        vit.train()
        res = pretrain_tags(features, vit.parameters(), train_set, steps=args.steps,
                            batch_size=args.pretrain_batch_size, lr=args.pretrain_lr,
                            background_weight=args.background_weight, seed=args.seed, device=device,
                            warmup_steps=args.warmup_steps, log=print, log_every=args.log_every)
        vit.eval()
        acc = tag_accuracy(features, res["heads"], val_set, fields, device=device)
        print("image tags on held-out scenes: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
        summary.update(steps=args.steps, fields=fields, val_tag_accuracy=acc, seconds=round(res["seconds"], 1))
    sd = {f"backbone.net.{k}": v.detach().cpu().clone() for k, v in vit.state_dict().items()}
    atomic_save({"model": sd}, out / "vit_tiny.pth")

    bert = model.text_encoder.to(device)
    if args.text_steps > 0:
        trecs, _ = make_records(args.text_records, seed=args.scene_seed, split="train", **opts)
        vtrecs, _ = make_records(max(args.val_scenes, 1), seed=args.scene_seed, split="val", **opts)
        train_t, val_t = ExpressionTagDataset(trecs, tokenizer), ExpressionTagDataset(vtrecs, tokenizer)

        def encode(ids, mask):
            return bert(input_ids=ids.long(), attention_mask=mask.long(),
                        token_type_ids=torch.zeros_like(ids).long()).last_hidden_state[:, 0]

        bert.train()
        res = pretrain_text_tags(encode, bert.parameters(), train_t, steps=args.text_steps,
                                 batch_size=args.text_batch_size, lr=args.text_lr, seed=args.seed, device=device,
                                 log=print, log_every=args.log_every)
        bert.eval()
        tacc = text_tag_accuracy(encode, res["heads"], val_t, device=device)
        print("text tags on held-out expressions: " + ", ".join(f"{k} {v:.3f}" for k, v in tacc.items()), flush=True)
        summary.update(text_steps=args.text_steps, val_text_tag_accuracy=tacc, text_seconds=round(res["seconds"], 1))
    bdir = out / "bert"
    bdir.mkdir(exist_ok=True)
    shutil.copyfile(vocab, bdir / "vocab.txt")
    atomic_save({k: v.detach().cpu().clone() for k, v in bert.state_dict().items()}, bdir / "pytorch_model.bin")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())
