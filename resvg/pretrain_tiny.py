"""Pretrain the tiny preset's visual side and BERT on synthetic tags: the stand-in for DETR-R50 and bert-base.

ResVG starts from a DETR-R50 checkpoint (ResNet-50, input_proj, the 6-layer DETR encoder) and from
bert-base-uncased.  None of those weights exist offline, and from random initialisation the tiny network does
not learn the synthetic scenes within a CPU budget (resvg/README.md, "Tiny preset").  This script trains the
same modules of the tiny preset with `vgcore.synthetic.tagpretrain` on scenes and expressions of another seed
(``--scene_seed``, default 1; the grounding data uses 0) and writes them in the official layouts, so that the
grounding run loads them exactly as it loads the real weights:

    python resvg/pretrain_tiny.py --vocab DATA/tokenizers/vocab.txt --out_dir OUT/pretrained
    python resvg/train.py --model_preset tiny --load_weights_path OUT/pretrained/detr_tiny.pth \
        --bert_model OUT/pretrained/bert_tiny.pth --bert_token_mode DATA/tokenizers/vocab.txt ...

* visual phase (``--steps``): the tiny ResNet (built with ordinary BatchNorm, every layer training, then saved
  as the frozen-BN buffers the model uses, as a DETR trunk holds its ImageNet statistics), input_proj and the
  visual encoder learn per-cell tags of the scenes seen through ResVG's evaluation transform: kind, colour and
  size of the shape covering the cell, and the cell's own grid row and column (``--fields``; without position
  tags the encoder output hardly says where it is, and the decoder's image values are that output), read off
  input_proj and the encoder output (one linear head per field shared by both);
* text phase (``--text_steps``): the tiny BERT learns what a synthetic expression says (head noun phrase,
  expression type, direction, ordinal, anchor: `vgcore.synthetic.tagpretrain.program_tags`) from the masked mean
  of the layers ResVG reads (the mean of the last ``bert_output_layers``).

Outputs in ``--out_dir``: ``detr_tiny.pth`` (``{"model": ...}`` with DETR's key names: ``backbone.0.body.*``,
``input_proj.*``, ``transformer.encoder.layers.*``) and ``bert_tiny.pth`` (``bert.*`` keys), plus
``pretrain_tiny.json`` (held-out tag accuracies, times).  The vocabulary is the synthetic corpus' WordPiece
``vocab.txt`` (``--vocab``), which the grounding run must use too (``--bert_token_mode``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python resvg/pretrain_tiny.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from resvg.config import PRESETS, config_from_args
from resvg.convert import official_key
from resvg.model import build_model
from vgcore import dist
from vgcore.checkpoint import atomic_save
from vgcore.data.transforms import build_transforms
from vgcore.models.bert import bert_layer_mean
from vgcore.models.position import sine_position_2d
from vgcore.models.resnet import ResNetBackbone, frozen_bn_state_dict
from vgcore.synthetic.tagpretrain import (ExpressionTagDataset, SceneTagDataset, make_records, make_scenes,
                                          pretrain_tags, pretrain_text_tags, tag_accuracy)
from vgcore.text import build_tokenizer

__all__ = ["get_args_parser", "main", "detr_layout", "bert_layout"]

ALL_STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("ResVG tiny-preset tag pretraining", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_preset", default="tiny", choices=["tiny"], help="the preset whose modules are pretrained")
    p.add_argument("--vocab", required=True, help="WordPiece vocab.txt of the synthetic corpus (DATA/tokenizers)")
    p.add_argument("--out_dir", required=True, help="writes detr_tiny.pth, bert_tiny.pth, pretrain_tiny.json")
    g = p.add_argument_group("scenes (vgcore.synthetic options)")
    g.add_argument("--scene_seed", type=int, default=1, help="synthetic seed (the grounding data uses 0)")
    g.add_argument("--min_objects", "--min-objects", type=int, default=3)
    g.add_argument("--max_objects", "--max-objects", type=int, default=8)
    g.add_argument("--object_scale", "--object-scale", type=float, default=1.0)
    g = p.add_argument_group("visual phase (ResNet + input_proj + visual encoder)")
    g.add_argument("--steps", type=int, default=1500)
    g.add_argument("--num_scenes", type=int, default=4000, help="training scenes (kept in memory, float16)")
    g.add_argument("--val_scenes", type=int, default=300, help="held-out scenes for the reported accuracy")
    g.add_argument("--fields", default="kind,color,size,row,col", help="comma list of kind,color,size,row,col")
    g.add_argument("--batch_size", type=int, default=16)
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--background_weight", type=float, default=0.1, help="cross-entropy weight of background cells")
    g.add_argument("--min_fraction", type=float, default=0.3, help="share of a cell a shape must cover to label it")
    g = p.add_argument_group("text phase (BERT)")
    g.add_argument("--text_steps", type=int, default=400, help="0 leaves BERT at its initialisation")
    g.add_argument("--text_records", type=int, default=6000, help="training expressions")
    g.add_argument("--text_batch_size", type=int, default=64)
    g.add_argument("--text_lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cpu")
    p.add_argument("--log_every", type=int, default=200)
    return p


def detr_layout(model) -> dict:
    """The backbone, input_proj and visual encoder of ``model`` under DETR's checkpoint names (what
    `resvg.convert` maps back: ``backbone.0.body.*``, ``input_proj.*``, ``transformer.encoder.layers.*``)."""
    out = {}
    for name, module in (("backbone", model.backbone), ("input_proj", model.input_proj),
                         ("visual_encoder", model.visual_encoder)):
        for k, v in module.state_dict().items():
            key = official_key(f"{name}.{k}")
            out[key.replace("trans_encoder.encoder.", "transformer.encoder.", 1)] = v.detach().cpu().clone()
    return out


def bert_layout(model) -> dict:
    """The BERT tower under the released names (``bert.*``)."""
    return {f"bert.{k}": v.detach().cpu().clone() for k, v in model.bert.state_dict().items()}


def _visual(model, args, opts, device) -> dict:
    """Visual phase (module doc).  Swaps in a BatchNorm trunk, trains, then loads its state as frozen BN."""
    cfg = model.cfg
    trunk = ResNetBackbone(cfg.backbone, cfg.dilation, bn_eps=1e-5 if cfg.frozen_bn_eps else 0.0,
                           train_layers=ALL_STAGES, frozen_bn=False).to(device)
    frozen_trunk, model.backbone = model.backbone, trunk
    params = [p for m in (trunk, model.input_proj, model.visual_encoder) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    transform = build_transforms("resvg", train=False, imsize=cfg.img_size, compat=True)
    patch = trunk.stride
    recs, imgs = make_scenes(args.num_scenes, seed=args.scene_seed, split="train", **opts)
    vrecs, vimgs = make_scenes(args.val_scenes, seed=args.scene_seed, split="val", **opts)
    train_set = SceneTagDataset(recs, imgs, transform, patch, fields, args.min_fraction)
    val_set = SceneTagDataset(vrecs, vimgs, transform, patch, fields, args.min_fraction)

    def features(img):
        feat, _ = trunk(img)
        B, _, h, w = feat.shape
        pos = sine_position_2d(torch.zeros(B, h, w, dtype=torch.bool, device=img.device),
                               num_pos_feats=cfg.hidden_dim // 2).to(feat.dtype).flatten(2).transpose(1, 2)
        src = model.input_proj(feat).flatten(2).transpose(1, 2)
        return [src, model.visual_encoder(src, pos)]

    for m in (trunk, model.input_proj, model.visual_encoder):
        m.train()
    res = pretrain_tags(features, params, train_set, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        background_weight=args.background_weight, seed=args.seed, device=device, log=print,
                        log_every=args.log_every)
    for m in (trunk, model.input_proj, model.visual_encoder):
        m.eval()
    res["val"] = tag_accuracy(features, res["heads"], val_set, fields, device=device)
    frozen_trunk.load_state_dict(frozen_bn_state_dict(trunk))  # BatchNorm statistics -> frozen buffers
    model.backbone = frozen_trunk
    print("visual tags on held-out scenes: " + ", ".join(f"{k} {v:.3f}" for k, v in res["val"].items()))
    return {"val": res["val"], "seconds": round(res["seconds"], 1), "fields": fields, "scenes": len(train_set)}


def _text(model, args, opts, device) -> dict:
    """Text phase (module doc)."""
    cfg = model.cfg
    bert = model.bert.to(device).train()
    params = [p for n, p in bert.named_parameters() if not n.startswith("pooler.")]
    for p in params:
        p.requires_grad_(True)
    tok = build_tokenizer("bert", max_len=cfg.max_query_len, vocab_file=args.vocab)
    recs, _ = make_records(args.text_records, seed=args.scene_seed, split="train", **opts)
    vrecs, _ = make_records(max(args.val_scenes, 1), seed=args.scene_seed, split="val", **opts)
    train_set, val_set = ExpressionTagDataset(recs, tok), ExpressionTagDataset(vrecs, tok)
    layers = cfg.bert_output_layers if cfg.bert_last4_mean else 1

    def encode(ids, mask):
        h = bert_layer_mean(bert, ids, mask, layers)
        m = mask.to(h.dtype)[..., None]
        return (h * m).sum(1) / m.sum(1).clamp_min(1)

    res = pretrain_text_tags(encode, params, train_set, steps=args.text_steps, batch_size=args.text_batch_size,
                             lr=args.text_lr, seed=args.seed, device=device, val_dataset=val_set, log=print,
                             log_every=args.log_every)
    bert.eval()
    print("text tags on held-out expressions: " + ", ".join(f"{k} {v:.3f}" for k, v in res["val"].items()))
    return {"val": res["val"], "seconds": round(res["seconds"], 1), "records": len(train_set)}


def main(args: argparse.Namespace) -> dict:
    t0 = time.time()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dist.configure_cpu_threads(device, 0)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(config_from_args({"model_preset": args.model_preset})).to(device)
    opts = dict(min_objects=args.min_objects, max_objects=args.max_objects, object_scale=args.object_scale)
    summary = {"preset": args.model_preset, "preset_config": PRESETS[args.model_preset], "scene_seed": args.scene_seed,
               "scene_options": opts, "steps": args.steps, "text_steps": args.text_steps}
    if args.steps > 0:
        summary["visual"] = _visual(model, args, opts, device)
    if args.text_steps > 0:
        summary["text"] = _text(model, args, opts, device)
    model.cpu()
    atomic_save({"model": detr_layout(model), "extra": {"kind": "resvg tiny visual side (tag-pretrained)",
                                                        **summary}}, out / "detr_tiny.pth")
    atomic_save(bert_layout(model), out / "bert_tiny.pth")
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "pretrain_tiny.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())
