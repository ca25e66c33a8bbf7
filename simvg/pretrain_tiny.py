"""Dense-tag pretraining of SimVG's tiny BEiT-3 on synthetic scenes: the stand-in for BEiT-3 pretraining.

SimVG starts from BEiT-3 weights pretrained on web data; none are available offline, and the tiny preset
trained from random initialisation by the box and class losses alone stays at the constant-box plateau within
a CPU budget (simvg/README.md).  This script trains the tiny multiway backbone the way `hivg/pretrain_tiny.py`
trains HiVG's tiny CLIP (`vgcore.synthetic.tagpretrain`), after re-drawing the position tables at N(0, 0.02)
(``--position_std``; the official N(0, 1) init drowns the token embeddings of a width-128 model):

* image phase: the vision path (patch embedding, CLS, vision position table, every expert ``A``) on per-patch
  kind / colour tags of synthetic scenes and on each patch's grid row / column (``--fields``; the position tags
  keep the position table in the features, which the DETR decoder needs: simvg/README.md, "Tiny preset"),
  image-only (every token goes through expert A), read off the residual stream after the last two layers
  (``--tag_layers``: the kinds must be readable before the last layer, where the object token picks its target);
* text phase (``--text_steps``): the text path (token embedding, text position table, every expert ``B``) on
  what a synthetic expression says (`vgcore.synthetic.tagpretrain.program_tags`), text-only, read off the mean of the
  text tokens;
* joint phase (``--joint_steps``), image-text pairs, only the attention blocks and the CLS token train
  (``--joint_params``): the image CLS, SimVG's object token, must say what the paired expression says (read
  after the second-to-last layer and at the output, ``--joint_cls_layers``) and, at the output, what the
  object it describes looks like and which grid cell it is in (``--joint_referent_weight``;
  `vgcore.synthetic.tagpretrain.pretrain_joint_tags`).  This is a grounded objective on a separate corpus, the stand-in
  for the web-scale image-text pretraining whose object token SimVG's token branch reads: without it the CLS
  never learns to select its target within a CPU budget and the TB stays at a third of the DB (simvg/README.md,
  "Tiny preset").  ``--joint_objective mlm`` is masked language modelling instead (BEiT-3's vision-language
  objective, optional image-text matching ``--joint_itm_weight``), measured slower for the grounding.

The image and text paths share no parameter (every Linear and LayerNorm of BEiT-3 is multiway), so those
phases do not interfere.  The output is an official-layout
BEiT-3 checkpoint (``{"model": {"beit3.<name>": tensor}}``) that ``simvg/train.py --backbone tiny
--beit3_ckpt FILE`` loads strictly, like the released ``beit3_base_patch16_224.pth``.  The tiny vocabulary is
the synthetic corpus' sentencepiece model (``--beit3_spm``, from ``python -m vgcore.synthetic``), and the
grounding run must use the same one.  Scenes and expressions come from ``--scene_seed`` (default 1), not the
grounding data's seed 0.

    python simvg/pretrain_tiny.py --beit3_spm DATA/tokenizers/spm.model --out tiny_beit3.pth
    python simvg/train.py --backbone tiny --beit3_ckpt tiny_beit3.pth --beit3_spm DATA/tokenizers/spm.model ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python simvg/pretrain_tiny.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from simvg.model import build_model
from vgcore import dist
from vgcore.checkpoint import atomic_save
from vgcore.data.transforms import build_transforms
from vgcore.synthetic.tagpretrain import (ExpressionTagDataset, ImageTextDataset, SceneTagDataset, described_present,
                                make_records, make_scenes, pretrain_joint_tags, pretrain_masked_text, pretrain_tags,
                                pretrain_text_tags, tag_accuracy)
from vgcore.text import build_tokenizer


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("SimVG tiny-BEiT-3 tag pretraining", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--beit3_spm", required=True, help="sentencepiece model of the tiny vocabulary "
                   "(DATA/tokenizers/spm.model of the synthetic data; the grounding run uses the same)")
    p.add_argument("--out", required=True, help="output BEiT-3 checkpoint (.pth), for simvg/train.py --beit3_ckpt")
    p.add_argument("--img_size", type=int, default=128)
    p.add_argument("--max_token", type=int, default=20)
    p.add_argument("--steps", type=int, default=3000, help="image-phase steps")
    p.add_argument("--num_scenes", type=int, default=6000, help="training scenes (held in memory, float16)")
    p.add_argument("--val_scenes", type=int, default=300, help="held-out scenes / expressions for the report")
    p.add_argument("--scene_seed", type=int, default=1, help="synthetic seed of the scenes (grounding data: 0)")
    p.add_argument("--min_objects", "--min-objects", type=int, default=3)
    p.add_argument("--max_objects", "--max-objects", type=int, default=8)
    p.add_argument("--object_scale", "--object-scale", type=float, default=1.0)
    p.add_argument("--fields", default="kind,color,row,col",
                   help="comma list of kind,color,size (what covers the patch) and row,col (where the patch is: "
                        "keeps the position table in the features, simvg/README.md 'Tiny preset')")
    p.add_argument("--pretrain_batch_size", type=int, default=16)
    p.add_argument("--pretrain_lr", type=float, default=6e-3)
    p.add_argument("--background_weight", type=float, default=0.1, help="cross-entropy weight of background patches")
    p.add_argument("--min_fraction", type=float, default=0.3, help="share of a patch a shape must cover to label it")
    p.add_argument("--warmup_steps", type=int, default=500,
                   help="linear warm-up steps of the image phase (simvg/README.md, 'Tiny preset')")
    p.add_argument("--position_std", type=float, default=0.02,
                   help="re-draw both position tables N(0, std) before pretraining; <= 0 keeps the official N(0, 1), "
                        "which at width 128 is ~11x the token embeddings (N(0, D^-0.5)) and drowns them: 150 text steps "
                        "give kind 33.5%% with it, 99.5%% at 0.02 (simvg/README.md)")
    p.add_argument("--tag_features", choices=["residual", "output"], default="residual",
                   help="image phase: read the patch features off the residual stream after the last layer "
                        "('residual', as hivg/pretrain_tiny.py reads CLIP before ln_post; the final LayerNorm then keeps "
                        "its init) or after the final multiway LayerNorm ('output', what SimVG consumes).  Measured "
                        "(simvg/README.md): 'output' stalls the kinds at chance")
    p.add_argument("--tag_layers", default="-2,-1",
                   help="comma list of the layers whose patch outputs the image tags supervise (-1 = the last; with "
                        "'residual' features).  Earlier layers make the kinds readable before the last layer, where "
                        "the object token selects its target (simvg/README.md, 'Tiny preset')")
    p.add_argument("--text_steps", type=int, default=400, help="text-phase steps (0: the text path keeps its init)")
    p.add_argument("--text_records", type=int, default=6000)
    p.add_argument("--text_batch_size", type=int, default=64)
    p.add_argument("--text_lr", type=float, default=1e-3)
    p.add_argument("--joint_steps", type=int, default=2000, help="joint-phase steps on image-text pairs (0: none)")
    p.add_argument("--joint_objective", choices=["cls_tags", "mlm"], default="cls_tags",
                   help="'cls_tags': the image CLS of the joint forward (SimVG's object token) says what the "
                        "expression says; 'mlm': masked language modelling, BEiT-3's vision-language objective "
                        "(simvg/README.md, 'Tiny preset')")
    p.add_argument("--joint_params", choices=["attention", "all"], default="attention",
                   help="weights the joint phase trains: the attention blocks of every layer and the CLS token, or "
                        "all (measured slower for the grounding, simvg/README.md)")
    p.add_argument("--joint_cls_layers", default="-2,output",
                   help="cls_tags: comma list of where the CLS is read: 'output' (after the final LayerNorm, what "
                        "SimVG's heads consume) and/or layer indices of the residual stream (-2 = before the last "
                        "layer: the CLS must have read the text while the last layer can still select the target)")
    p.add_argument("--joint_referent_weight", type=float, default=1.0,
                   help="cls_tags: weight of the referent tags, the output CLS also says what the described object "
                        "looks like and where it is (kind / colour / size / grid cell; single-target expressions)")
    p.add_argument("--joint_records", type=int, default=6000)
    p.add_argument("--joint_batch_size", type=int, default=32)
    p.add_argument("--joint_lr", type=float, default=1e-3)
    p.add_argument("--joint_mask_prob", type=float, default=0.5, help="share of text tokens masked (BEiT-3: 50%%)")
    p.add_argument("--joint_itm_weight", type=float, default=0.0,
                   help="mlm joint phase: weight of image-text matching on the image CLS (SimVG's object token)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--device", default="cpu")
    p.add_argument("--log_every", type=int, default=100)
    p.add_argument("--val_every", type=int, default=0, help="also report the held-out tag accuracy every N steps")
    return p


def _train_only(model: torch.nn.Module, keep) -> list:
    params = []
    for name, p in model.named_parameters():
        on = bool(keep(name)) and name != "vision_embed.mask_token"
        p.requires_grad_(on)
        if on:
            params.append(p)
    return params


def vision_parameter(name: str) -> bool:
    """Parameters of BEiT-3's vision path (image-only forward): vision embedding, vision positions, experts A."""
    return name.startswith("vision_embed.") or ".A." in f".{name}."


def text_parameter(name: str) -> bool:
    """Parameters of BEiT-3's text path (text-only forward): token embedding, text positions, experts B."""
    return name.startswith("text_embed.") or ".B." in f".{name}."


def attention_parameter(name: str) -> bool:
    """What the 'attention' joint phase trains: every layer's attention block (q / k / v / out projections and the
    sub-LN inside, both experts) and the image CLS token."""
    return ".self_attn." in f".{name}" or name == "vision_embed.cls_token"


def main(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dist.configure_cpu_threads(device, 0)
    tokenizer = build_tokenizer("beit3", max_len=args.max_token, vocab_file=args.beit3_spm, min_vocab=1)
    model = build_model(dict(model_preset="tiny", img_size=args.img_size, vocab_size=tokenizer.vocab_size,
                             max_text_len=args.max_token))
    beit3 = model.beit3.to(device).train()
    if args.position_std > 0:
        with torch.no_grad():
            for table in (beit3.encoder.embed_positions.A, beit3.encoder.embed_positions.B):
                table.weight.normal_(0.0, args.position_std)
    opts = dict(min_objects=args.min_objects, max_objects=args.max_objects, object_scale=args.object_scale)
    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    transform = build_transforms("simvg", train=False, imsize=args.img_size)
    patch = beit3.cfg.patch_size
    recs, imgs = make_scenes(args.num_scenes, seed=args.scene_seed, split="train", **opts)
    vrecs, vimgs = make_scenes(args.val_scenes, seed=args.scene_seed, split="val", **opts)
    train_set = SceneTagDataset(recs, imgs, transform, patch, fields, args.min_fraction)
    val_set = SceneTagDataset(vrecs, vimgs, transform, patch, fields, args.min_fraction)

    tag_layers = [int(x) for x in str(args.tag_layers).split(",") if x.strip()]
    if args.tag_features == "output" and tag_layers != [-1]:
        raise SystemExit("simvg/pretrain_tiny.py: --tag_layers other than -1 needs --tag_features residual")

    def features(img):
        if args.tag_features == "output":
            return beit3(image=img)["img_tokens"]
        hidden = beit3(image=img, return_hidden=True)["hidden"]
        feats = [hidden[i][:, 1:] for i in tag_layers]
        return feats if len(feats) > 1 else feats[0]

    # with 'residual' the final LayerNorm gets no gradient, so the optimizer leaves it at its init
    res = pretrain_tags(features, _train_only(beit3, vision_parameter), train_set, steps=args.steps,
                        batch_size=args.pretrain_batch_size, lr=args.pretrain_lr,
                        background_weight=args.background_weight, seed=args.seed, device=device,
                        warmup_steps=args.warmup_steps, val_dataset=val_set if args.val_every else None,
                        val_every=args.val_every, log=print, log_every=args.log_every)
    beit3.eval()
    res["val"] = tag_accuracy(features, res["heads"], val_set, fields, device=device)
    print("image tags on held-out scenes: " + ", ".join(f"{k} {v:.3f}" for k, v in res["val"].items()))
    summary = {"steps": args.steps, "scenes": len(train_set), "fields": fields, "val_tag_accuracy": res["val"],
               "seconds": round(res["seconds"], 1), "scene_options": opts, "scene_seed": args.scene_seed,
               "text_steps": args.text_steps, "vocab_size": tokenizer.vocab_size, "position_std": args.position_std,
               "tag_features": args.tag_features, "tag_layers": tag_layers}

    made = {}

    def records(num, split):  # the text and joint phases draw the same stream: generate each (num, split) once
        if (num, split) not in made:
            made[num, split] = make_records(num, seed=args.scene_seed, split=split, **opts)
        return made[num, split]

    if args.text_steps > 0:
        beit3.train()
        trecs, _ = records(args.text_records, "train")
        tvrecs, _ = records(max(args.val_scenes, 1), "val")
        ttrain, tval = ExpressionTagDataset(trecs, tokenizer), ExpressionTagDataset(tvrecs, tokenizer)

        def encode(ids, mask):  # mask: True = token
            m = mask.to(device).bool()
            tokens = beit3(text_ids=ids.to(device), text_padding_mask=~m)["text_tokens"]
            w = m.unsqueeze(-1).to(tokens.dtype)
            return (tokens * w).sum(1) / w.sum(1).clamp_min(1)

        tres = pretrain_text_tags(encode, _train_only(beit3, text_parameter), ttrain, steps=args.text_steps,
                                  batch_size=args.text_batch_size, lr=args.text_lr, seed=args.seed, device=device,
                                  val_dataset=tval, log=print, log_every=args.log_every)
        beit3.eval()
        print("text tags on held-out expressions: " + ", ".join(f"{k} {v:.3f}" for k, v in tres["val"].items()))
        summary.update(val_text_tag_accuracy=tres["val"], text_seconds=round(tres["seconds"], 1))

    if args.joint_steps > 0:
        beit3.train()
        jrecs, jimgs = records(args.joint_records, "train")
        jvrecs, jvimgs = records(max(args.val_scenes, 1), "val")
        jtrain = ImageTextDataset(jrecs, jimgs, transform, tokenizer, match=described_present(jrecs))
        jval = ImageTextDataset(jvrecs, jvimgs, transform, tokenizer, match=described_present(jvrecs))

        params = _train_only(beit3, attention_parameter if args.joint_params == "attention" else lambda name: True)
        lr = args.joint_lr

        def joint(img, ids, mask):  # mask: True = token; the text outputs and the image CLS of the joint forward
            out = beit3(image=img, text_ids=ids, text_padding_mask=~mask.bool())
            return out["text_tokens"], out["cls"]

        common = dict(steps=args.joint_steps, batch_size=args.joint_batch_size, lr=lr, seed=args.seed, device=device,
                      val_dataset=jval, log=print, log_every=args.log_every)
        if args.joint_objective == "cls_tags":
            where = [w.strip() for w in str(args.joint_cls_layers).split(",") if w.strip()]

            def cls_reads(img, ids, mask):
                out = beit3(image=img, text_ids=ids, text_padding_mask=~mask.bool(), return_hidden=True)
                feats = [out["cls"] if w == "output" else out["hidden"][int(w)][:, 0] for w in where]
                return feats if len(feats) > 1 else feats[0]

            jres = pretrain_joint_tags(cls_reads, params, jtrain, referent_weight=args.joint_referent_weight,
                                       grid=args.img_size // patch, **common)
            print("image CLS on held-out pairs: " + ", ".join(f"{k} {v:.3f}" for k, v in jres["val"].items()))
            summary.update(val_joint_tag_accuracy=jres["val"], joint_referent_weight=args.joint_referent_weight)
        else:
            jres = pretrain_masked_text(joint, params, jtrain, vocab_size=tokenizer.vocab_size,
                                        mask_id=tokenizer.vocab_size - 1, mask_prob=args.joint_mask_prob,
                                        itm_weight=args.joint_itm_weight, **common)
            print(f"masked text tokens on held-out pairs: {jres['val']:.3f} ({jres['val_shuffled_images']:.3f} "
                  f"with the images shuffled)")
            if "val_itm" in jres:
                print(f"image-text matching on held-out pairs: {jres['val_itm']:.3f}")
                summary.update(val_itm_accuracy=jres["val_itm"])
            summary.update(val_masked_text_accuracy=jres["val"],
                           val_masked_text_accuracy_shuffled_images=jres["val_shuffled_images"])
        beit3.eval()
        summary.update(joint_steps=args.joint_steps, joint_objective=args.joint_objective,
                       joint_cls_layers=args.joint_cls_layers,
                       joint_params=args.joint_params, joint_lr=lr, joint_seconds=round(jres["seconds"], 1))

    for p in beit3.parameters():
        p.requires_grad_(False)
    state = {f"beit3.{k}": v.detach().cpu().clone() for k, v in beit3.state_dict().items()}
    atomic_save({"model": state, "args": {"kind": "simvg-tiny-beit3 (tag-pretrained)", **summary,
                                          "config": beit3.cfg.to_dict()}}, args.out)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())
