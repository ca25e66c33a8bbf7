"""Official ALVG / BEiT-3 checkpoints -> our `alvg.model.ALVG` state dict.

Official ALVG checkpoint (``alvg/utils/checkpoint.py::save_checkpoint``): a dict with ``state_dict`` (and
``ema_state_dict`` when EMA was on -- off in every ALVG config); keys carry ``module.`` after DDP training.
The rule table `RULES` (official -> ours, applied by `vgcore.checkpoint.convert_state_dict`):

* ``vis_enc.beit3.X``                                    -> ``beit3.X`` (torchscale names kept)
* ``head.transformer.img_enhance.``                      -> ``head.enhance.`` (TIE: ``text_proj``, ``img_proj``)
* ``head.transformer.decoder.layers.i.``                 -> ``head.decoder.layers.i.``: ``self_attn`` /
  ``cross_attn`` (packed in_proj kept), ``linear1`` / ``linear2`` -> ``ffn.linear1`` / ``ffn.linear2``,
  ``norm1`` -> ``norm1``, ``norm3`` (after cross-attention) -> ``norm2``, ``norm2`` (after the FFN) -> ``norm3``
* ``head.text_guided_query_generation_transformer.``     -> ``head.tgqg.`` (detrex layer names as in SimVG:
  ``attentions.0/1.attn`` -> ``self_attn`` / ``cross_attn``, ``ffns.0.layers.0.0`` / ``ffns.0.layers.1`` ->
  ``ffn.linear1`` / ``ffn.linear2``, ``norms.j`` -> ``norm{j+1}``, ``post_norm_layer`` -> ``post_norm``)
* ``head.class_embed_decoder.`` / ``head.bbox_embed_decoder.`` -> ``head.class_embed.`` / ``head.bbox_embed.``
* ``head.input_proj``, ``head.input_text_proj``, ``head.query_embed``, ``head.mask_head.refine`` /
  ``upsample`` keep their names
* dropped, listed in the report under ``unused``: modules the official model builds but never runs --
  ``head.class_embed_token.*``, ``head.bbox_embed_token.*`` (SimVG's token branch), ``head.mask_head.cross_attn.*``,
  ``head.mask_head.norm.*``; and the loss buffer ``head.criterion.empty_weight`` (its value, the CE class
  weights [1, eos_coef], is reported as ``eos_coef``).

Every official ALVG checkpoint was trained with the official numerics, so conversion implies
`OFFICIAL_COMPAT` (every compat switch of `alvg.model.COMPAT_SWITCHES` ON).

Official BEiT-3 pretrained checkpoint (unilm ``beit3_{base,large}_indomain_patch16_224.pth``, the files the
ALVG configs name): ``ckpt['model']`` with ``beit3.*`` keys -> ``beit3.*`` with the vision position table and
the patch kernel bicubic-resized to the model geometry (`vgcore.models.beit3.adapt_beit3_pretrained`).

Files are read weights-only (`vgcore.checkpoint.torch_load`); ``--trust_pickle`` opts in to full unpickling.

CLI: ``python -m alvg.convert --src official.pth --dst ours.pth [--ema] [--trust_pickle]`` writes
``{"model": state_dict, "config": ALVGConfig dict, "compat": {...}, "report": {...}}`` and prints what was
dropped.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Dict, List, Optional, Tuple

import torch

from alvg.model import COMPAT_SWITCHES
from simvg.convert import (adapt_img_size, beit3_pretrained_payload, convert_beit3_pretrained, converter_parser,
                           official_family_config)
from vgcore.checkpoint import Rules, convert_state_dict, group_keys, load_strict, torch_load, unwrap
from vgcore.cli import parse_key_values

__all__ = ["OFFICIAL_COMPAT", "RULES", "UNUSED", "map_key", "to_official_state_dict", "convert_alvg_state_dict", "read_alvg_checkpoint",
           "convert_beit3_pretrained", "config_from_official", "config_from_state_dict", "adapt_img_size",
           "load_into", "main"]

OFFICIAL_COMPAT = {k: True for k in COMPAT_SWITCHES}

# official keys of modules that exist in every checkpoint but are never run
UNUSED = (r"^head\.class_embed_token\.", r"^head\.bbox_embed_token\.", r"^head\.mask_head\.cross_attn\.",
          r"^head\.mask_head\.norm\.")
EMPTY_WEIGHT = "head.criterion.empty_weight"

_TGQG_NAME = "head.text_guided_query_generation_transformer."
_TGQG = "^" + re.escape(_TGQG_NAME)
_DEC = r"^head\.transformer\.decoder\.layers\.(\d+)\."
_DEC_NORM = {"1": "norm1", "3": "norm2", "2": "norm3"}

RULES: Rules = [
    (r"^head\.criterion\.empty_weight$", None),
    *[(p, None) for p in UNUSED],
    (r"^vis_enc\.beit3\.", "beit3."),
    (r"^head\.transformer\.img_enhance\.", "head.enhance."),
    (_DEC + r"(self_attn|cross_attn)\.", r"head.decoder.layers.\1.\2."),
    (_DEC + r"linear([12])\.", r"head.decoder.layers.\1.ffn.linear\2."),
    (_DEC + r"norm([123])\.", lambda m: f"head.decoder.layers.{m.group(1)}.{_DEC_NORM[m.group(2)]}."),
    (_TGQG + r"layers\.(\d+)\.attentions\.0\.attn\.", r"head.tgqg.layers.\1.self_attn."),
    (_TGQG + r"layers\.(\d+)\.attentions\.1\.attn\.", r"head.tgqg.layers.\1.cross_attn."),
    (_TGQG + r"layers\.(\d+)\.ffns\.0\.layers\.0\.0\.", r"head.tgqg.layers.\1.ffn.linear1."),
    (_TGQG + r"layers\.(\d+)\.ffns\.0\.layers\.1\.", r"head.tgqg.layers.\1.ffn.linear2."),
    (_TGQG + r"layers\.(\d+)\.norms\.([0-2])\.", lambda m: f"head.tgqg.layers.{m.group(1)}.norm{int(m.group(2)) + 1}."),
    (_TGQG + r"post_norm_layer\.", "head.tgqg.post_norm."),
    (r"^head\.class_embed_decoder\.", "head.class_embed."),
    (r"^head\.bbox_embed_decoder\.", "head.bbox_embed."),
    (r"^head\.(input_proj|input_text_proj|query_embed|mask_head\.refine|mask_head\.upsample)\.", r"\g<0>"),
]


def map_key(key: str) -> Optional[str]:
    """One official ALVG key -> ours, or None (dropped or unmapped; ``module.`` must already be stripped)."""
    out, _ = convert_state_dict({key: None}, RULES, keep_unmatched=False)
    return next(iter(out), None)


_INV = [(r"^beit3\.", "vis_enc.beit3."), (r"^head\.enhance\.", "head.transformer.img_enhance."),
        (r"^head\.decoder\.layers\.(\d+)\.ffn\.linear([12])\.", r"head.transformer.decoder.layers.\1.linear\2."),
        (r"^head\.decoder\.layers\.(\d+)\.norm([123])\.",
         lambda m: f"head.transformer.decoder.layers.{m.group(1)}.norm{ {'1': 1, '2': 3, '3': 2}[m.group(2)]}."),
        (r"^head\.decoder\.", "head.transformer.decoder."),
        (r"^head\.tgqg\.layers\.(\d+)\.self_attn\.", _TGQG_NAME + r"layers.\1.attentions.0.attn."),
        (r"^head\.tgqg\.layers\.(\d+)\.cross_attn\.", _TGQG_NAME + r"layers.\1.attentions.1.attn."),
        (r"^head\.tgqg\.layers\.(\d+)\.ffn\.linear1\.", _TGQG_NAME + r"layers.\1.ffns.0.layers.0.0."),
        (r"^head\.tgqg\.layers\.(\d+)\.ffn\.linear2\.", _TGQG_NAME + r"layers.\1.ffns.0.layers.1."),
        (r"^head\.tgqg\.layers\.(\d+)\.norm([123])\.",
         lambda m: f"{_TGQG_NAME}layers.{m.group(1)}.norms.{int(m.group(2)) - 1}."),
        (r"^head\.tgqg\.post_norm\.", _TGQG_NAME + "post_norm_layer."),
        (r"^head\.class_embed\.", "head.class_embed_decoder."), (r"^head\.bbox_embed\.", "head.bbox_embed_decoder."),
        (r"^head\.", "head.")]


def to_official_state_dict(sd: Dict[str, torch.Tensor], eos_coef: float = 0.1) -> Dict[str, torch.Tensor]:
    """Our ALVG state dict -> the official layout (export, round-trip tests): renamed by the inverse of `RULES`,
    plus ``head.criterion.empty_weight`` = [1, ..., eos_coef]; the never-run modules are not recreated."""
    out, rep = convert_state_dict(sd, _INV, keep_unmatched=False)
    if rep.unmatched:
        raise KeyError(f"to_official_state_dict: keys without an official name: {rep.unmatched}")
    n = out["head.class_embed_decoder.weight"].shape[0]
    w = torch.ones(n)
    w[-1] = eos_coef
    out[EMPTY_WEIGHT] = w
    return dict(out)


def convert_alvg_state_dict(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Official ALVG state dict (``module.`` prefixes allowed) -> (ours, report) by `RULES`.

    report = {"unmapped": keys no rule maps, "unused": dropped never-run modules, "dropped": every dropped key,
    "eos_coef": the no-object CE weight of ``head.criterion.empty_weight`` (None if absent or not readable),
    "compat": OFFICIAL_COMPAT}.  Works on meta tensors (renaming only)."""
    sd = unwrap(sd)
    out, rep = convert_state_dict(sd, RULES, keep_unmatched=False)
    unused = [k for k in rep.dropped if k != EMPTY_WEIGHT]
    eos = None
    w = sd.get(EMPTY_WEIGHT)
    if torch.is_tensor(w) and not w.is_meta and w.numel() >= 2:
        eos = float(w[-1])
    return dict(out), {"unmapped": rep.unmatched, "unused": unused, "dropped": rep.dropped, "eos_coef": eos,
                       "compat": dict(OFFICIAL_COMPAT)}


def read_alvg_checkpoint(path_or_obj, use_ema: bool = False, *, trust_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """The model weights of an official ALVG checkpoint file (weights-only unless ``trust_pickle``) or loaded
    dict: ``state_dict``, or ``ema_state_dict`` with ``use_ema``."""
    is_path = isinstance(path_or_obj, (str, os.PathLike))
    obj = torch_load(path_or_obj, trust_pickle=trust_pickle) if is_path else path_or_obj
    return unwrap(obj, ema=use_ema, what=str(path_or_obj) if is_path else "")


def config_from_official(model_cfg: dict) -> dict:
    """The official mmcv ``model`` config (MIXDETRMB with the ALVG head) -> our `build_model` config dict."""
    vis, head = model_cfg["vis_enc"], model_cfg["head"]
    if not head.get("only_decoder", True):
        raise NotImplementedError("only_decoder=False (an encoder before the decoder) is used by no ALVG config")
    vit = vis.get("vit_type", "base")
    return dict(
        backbone=vit, img_size=vis["img_size"], patch_size=vis["patch_size"], vocab_size=vis.get("vocab_size", 64010),
        drop_path_rate=vis.get("drop_path_rate", 0.1) if vit == "base" else 0.0,  # large: rop_path_rate typo
        max_text_len=head.get("text_max_token", 20), embed_dim=head.get("embed_dim", 256),
        num_queries=head["num_queries"], num_classes=head.get("num_classes", 1),
        num_decoder_layers=head.get("num_decoder_layers", 6), num_tgqg_layers=head.get("num_tgqg_layers", 1),
        tgqg_ffn_dim=head.get("tgqs_mid_dim", 512),
        text_guided_query_generation=head.get("text_guided_query_generation", False),
        img_enhance=head.get("img_enhance", False),
    )


def loss_config_from_official(model_cfg: dict) -> dict:
    """The loss settings of the official head config (`alvg.loss.ALVGLossConfig` keys)."""
    head = model_cfg["head"]
    return dict(num_classes=head.get("num_classes", 1), aux_loss=head.get("aux_loss", True),
                score_attn_loss_weight=float(head.get("score_attn_loss_weight", 0.0)),
                decoder_attn_loss_weight=float(head.get("decoder_attn_loss_weight", 0.0)))


def config_from_state_dict(sd: Dict[str, torch.Tensor], **overrides) -> dict:
    """Infer a `build_model` config from an official ALVG state dict (shapes only; meta tensors are fine).
    Head counts cannot be read from shapes: the official values are assumed (BEiT-3 base 12 / large 16 heads,
    head 8 heads); pass ``overrides`` for other models."""
    sd = unwrap(sd)
    cfg = official_family_config(sd, "head.transformer.decoder.layers.0.linear1.weight")
    cfg.update(img_enhance="head.transformer.img_enhance.img_proj.weight" in sd,
               mask_head="head.mask_head.refine.0.weight" in sd)
    if cfg["mask_head"]:
        cfg["mask_channels"] = sd["head.mask_head.refine.0.weight"].shape[0]
    cfg.update(overrides)
    return cfg


def load_into(model, sd_ours: Dict[str, torch.Tensor], assign: bool = False, what: str = "ALVG") -> None:
    """Strict load; one readable error naming missing / unexpected / mis-shaped keys."""
    load_strict(model, sd_ours, what=what, assign=assign)


def main(argv: Optional[List[str]] = None) -> int:
    a = converter_parser("ALVG").parse_args(argv)
    overrides = parse_key_values(a.set)
    raw = torch_load(a.src, trust_pickle=a.trust_pickle)
    from alvg.model import build_model, config_from_args
    out = beit3_pretrained_payload(raw, config_from_args, a.img_size, a.patch_size)
    if out is not None:
        print(f"BEiT-3 pretrained: {len(out['model'])} backbone tensors; ignored {len(out['report']['ignored'])} "
              "other keys")
    else:
        official = read_alvg_checkpoint(raw, use_ema=a.ema)
        sd, report = convert_alvg_state_dict(official)
        if report["unmapped"]:
            print(f"unmapped keys ({len(report['unmapped'])}):", *group_keys(report["unmapped"]), sep="\n  ",
                  file=sys.stderr)
            return 1
        cfg = config_from_state_dict(official, **overrides)
        cfg.update(report["compat"])
        with torch.device("meta"):
            model = build_model(cfg)
        load_into(model, {k: v.to("meta") for k, v in sd.items()}, assign=True)  # strict check, no RAM
        out = {"model": sd, "config": cfg, "compat": report["compat"], "report": report, "kind": "alvg"}
        print(f"dropped {len(report['unused'])} keys of never-run official modules:",
              *group_keys(report["unused"]), sep="\n  ")
        if report["eos_coef"] is not None:
            print(f"criterion empty_weight: eos_coef {report['eos_coef']:g} (the loss uses eos_coef 0.1, ALVGLossConfig)")
    torch.save(out, a.dst)
    print(f"wrote {a.dst}: {len(out['model'])} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
