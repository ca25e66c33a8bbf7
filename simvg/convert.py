"""Official SimVG / BEiT-3 checkpoints -> our `simvg.model.SimVG` state dict.

Official SimVG checkpoint (``simvg/utils/checkpoint.py``): a dict with ``state_dict`` (and ``ema_state_dict``
when EMA was on); keys may carry ``module.`` (DDP).  The rule table `RULES` (official -> ours, applied by
`vgcore.checkpoint.convert_state_dict`):

* ``vis_enc.beit3.X``                                   -> ``beit3.X`` (torchscale names kept)
* ``head.transformer.decoder.``                         -> ``head.decoder.``
* ``head.text_guided_query_generation_transformer.``    -> ``head.tgqg.``
* inside both: ``layers.i.attentions.0.attn.`` -> ``layers.i.self_attn.``, ``attentions.1.attn.`` ->
  ``cross_attn.``, ``ffns.0.layers.0.0.`` -> ``ffn.linear1.``, ``ffns.0.layers.1.`` -> ``ffn.linear2.``,
  ``norms.j.`` -> ``norm{j+1}.``, ``post_norm_layer.`` -> ``post_norm.`` (packed in_proj kept)
* ``head.mlp.`` -> ``head.token_mlp.``; projections, ``query_embed`` and the class / box heads keep their names
* dropped: the loss-only buffers ``head.criterion.empty_weight``, ``head.criterion_harddistill.empty_weight``

Every official SimVG checkpoint was trained with the two numerical quirks, so conversion implies
`OFFICIAL_COMPAT` (``text_maxpool_int64_mask`` and ``text_pos_embed_1d_degenerate`` ON).

Official BEiT-3 pretrained checkpoint (unilm ``beit3_{base,large}_patch16_224.pth``, also named ``.zip``):
``ckpt['model']`` with ``beit3.*`` keys -> ``beit3.*`` with the vision position table and the patch kernel
bicubic-resized to the model geometry (see `vgcore.models.beit3.adapt_beit3_pretrained`).  Only the backbone
is filled; the head keeps its initialisation.

Files are read weights-only (`vgcore.checkpoint.torch_load`); ``--trust_pickle`` opts in to full unpickling.

CLI: ``python -m simvg.convert --src official.pth --dst ours.pth [--ema] [--trust_pickle]`` writes
``{"model": state_dict, "config": SimVGConfig dict, "compat": {...}, "report": {...}}``.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

import torch

from vgcore.checkpoint import Rules, convert_state_dict, load_strict, resample_pos_table, torch_load, unwrap
from vgcore.cli import parse_key_values
from vgcore.models.beit3 import VISION_POS_KEY, VISION_POS_PREFIX_ROWS, adapt_beit3_pretrained

__all__ = ["OFFICIAL_COMPAT", "RULES", "map_key", "official_key", "to_official_state_dict", "convert_simvg_state_dict",
           "convert_beit3_pretrained", "read_simvg_checkpoint", "config_from_official", "config_from_state_dict",
           "adapt_img_size", "load_into", "main"]

OFFICIAL_COMPAT = {"text_maxpool_int64_mask": True, "text_pos_embed_1d_degenerate": True}

DROPPED = ("head.criterion.empty_weight", "head.criterion_harddistill.empty_weight")


def _layer_rules(src: str, dst: str) -> list:
    """detrex transformer layers (``layers.i.attentions / ffns / norms``, ``post_norm_layer``) -> ours."""
    base = r"^head\." + src + r"\."
    layer = base + r"layers\.(\d+)\."
    return [
        (layer + r"attentions\.0\.attn\.", rf"head.{dst}.layers.\1.self_attn."),
        (layer + r"attentions\.1\.attn\.", rf"head.{dst}.layers.\1.cross_attn."),
        (layer + r"ffns\.0\.layers\.0\.0\.", rf"head.{dst}.layers.\1.ffn.linear1."),
        (layer + r"ffns\.0\.layers\.1\.", rf"head.{dst}.layers.\1.ffn.linear2."),
        (layer + r"norms\.([0-2])\.", lambda m: f"head.{dst}.layers.{m.group(1)}.norm{int(m.group(2)) + 1}."),
        (base + r"post_norm_layer\.", f"head.{dst}.post_norm."),
    ]


# official SimVG key -> ours (first matching rule; keys no rule matches are reported as unmapped)
RULES: Rules = [
    (r"^head\.criterion(_harddistill)?\.empty_weight$", None),  # loss-only buffers
    (r"^vis_enc\.beit3\.", "beit3."),
    *_layer_rules(r"transformer\.decoder", "decoder"),
    *_layer_rules(r"text_guided_query_generation_transformer", "tgqg"),
    (r"^head\.mlp\.", "head.token_mlp."),
    (r"^head\.(input_proj|input_text_proj|input_cls_proj|query_embed|class_embed_decoder|bbox_embed_decoder|"
     r"class_embed_token|bbox_embed_token)\.", r"\g<0>"),
]


def map_key(key: str) -> Optional[str]:
    """One official SimVG key -> ours, or None when no rule maps it (``module.`` must already be stripped)."""
    out, rep = convert_state_dict({key: None}, RULES, keep_unmatched=False)
    return next(iter(out), None)


_INV_PREFIX = [("beit3.", "vis_enc.beit3."), ("head.decoder.", "head.transformer.decoder."),
               ("head.tgqg.", "head.text_guided_query_generation_transformer."), ("head.token_mlp.", "head.mlp.")]
_INV_LAYER = [(".self_attn.", ".attentions.0.attn."), (".cross_attn.", ".attentions.1.attn."),
              (".ffn.linear1.", ".ffns.0.layers.0.0."), (".ffn.linear2.", ".ffns.0.layers.1."),
              (".norm1.", ".norms.0."), (".norm2.", ".norms.1."), (".norm3.", ".norms.2."),
              (".post_norm.", ".post_norm_layer.")]


def official_key(key: str) -> str:
    """Inverse of `map_key`: one of our keys -> the official SimVG name (for export and round-trip tests)."""
    for ours, off in _INV_PREFIX:
        if key.startswith(ours):
            new = off + key[len(ours):]
            if ours in ("head.decoder.", "head.tgqg."):
                for a, b in _INV_LAYER:
                    new = new.replace(a, b)
            return new
    return key


def to_official_state_dict(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our SimVG state dict -> the official layout (criterion buffers added back as [1, ..., eos 0.1])."""
    out = {official_key(k): v for k, v in sd.items()}
    n = out["head.class_embed_decoder.weight"].shape[0]
    w = torch.ones(n)
    w[-1] = 0.1
    for k in DROPPED:
        out[k] = w.clone()
    return out


def convert_simvg_state_dict(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Official SimVG state dict (``module.`` prefixes allowed) -> (ours, report) by `RULES`.  report =
    {"unmapped": [...], "dropped": [...], "compat": OFFICIAL_COMPAT}.  Works on meta tensors (renaming only)."""
    out, rep = convert_state_dict(unwrap(sd), RULES, keep_unmatched=False)
    return dict(out), {"unmapped": rep.unmatched, "dropped": rep.dropped, "compat": dict(OFFICIAL_COMPAT)}


def read_simvg_checkpoint(path_or_obj, use_ema: bool = False, *, trust_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """The model weights of an official SimVG checkpoint file (read weights-only unless ``trust_pickle``) or
    loaded dict: ``state_dict``, or ``ema_state_dict`` with ``use_ema`` (a KeyError if the run had EMA off)."""
    is_path = isinstance(path_or_obj, (str, os.PathLike))
    obj = torch_load(path_or_obj, trust_pickle=trust_pickle) if is_path else path_or_obj
    return unwrap(obj, ema=use_ema, strip=(), what=str(path_or_obj) if is_path else "")


def convert_beit3_pretrained(path_or_obj, model_cfg, *, trust_pickle: bool = False
                             ) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Official BEiT-3 pretrained checkpoint -> our ``beit3.*`` keys resized to ``model_cfg`` (a SimVGConfig
    or a BEiT3Config).  Returns (state dict, {"ignored": non-``beit3.`` keys})."""
    bcfg = model_cfg.beit3() if hasattr(model_cfg, "beit3") else model_cfg
    raw = torch_load(path_or_obj, trust_pickle=trust_pickle) if isinstance(path_or_obj, (str, os.PathLike)) \
        else path_or_obj
    sd, ignored = adapt_beit3_pretrained(unwrap(raw), bcfg)
    return {"beit3." + k: v for k, v in sd.items()}, {"ignored": ignored}


def config_from_official(model_cfg: dict) -> dict:
    """The official mmcv ``model`` config (MIXDETRMB) -> our `build_model` config dict."""
    vis, head = model_cfg["vis_enc"], model_cfg["head"]
    if not head.get("only_decoder", True):
        raise NotImplementedError("only_decoder=False (a DETR encoder before the decoder) is used by no SimVG config")
    vit = vis.get("vit_type", "base")
    branch = head.get("branch_loss_weight", {"decoder": 1.0})
    return dict(
        backbone=vit, img_size=vis["img_size"], patch_size=vis["patch_size"],
        vocab_size=vis.get("vocab_size", 64010),
        drop_path_rate=vis.get("drop_path_rate", 0.1) if vit == "base" else 0.0,  # large: rop_path_rate typo
        max_text_len=head.get("text_max_token", 20),
        embed_dim=head.get("embed_dim", 256), num_queries=head["num_queries"], num_classes=head.get("num_classes", 1),
        num_decoder_layers=head.get("num_decoder_layers", 6), num_tgqg_layers=head.get("num_tgqg_layers", 1),
        tgqg_ffn_dim=head.get("tgqs_mid_dim", 512), num_token_mlp_layers=head.get("num_token_mlp_layers", 3),
        text_guided_query_generation=head.get("text_guided_query_generation", False),
        share_predicthead=head.get("share_predicthead", False),
        default_branch="decoder" if list(branch) == ["decoder"] else "both",
    )


def config_from_state_dict(sd: Dict[str, torch.Tensor], **overrides) -> dict:
    """Infer a `build_model` config from an official SimVG state dict (shapes only; meta tensors are fine).

    Head counts cannot be read from shapes: the official values are assumed (BEiT-3 base 12 / large 16 heads,
    head 8 heads); pass ``overrides`` (e.g. ``num_heads``, ``backbone_overrides``) for other models."""
    sd = unwrap(sd)
    cfg = official_family_config(sd, "head.transformer.decoder.layers.0.ffns.0.layers.0.0.weight")
    cfg.update(num_token_mlp_layers=count_indices(sd, "head.mlp.layers."))
    cfg.update(overrides)
    return cfg


def official_family_config(sd: Dict[str, torch.Tensor], ffn_key: str) -> dict:
    """What a SimVG-family state dict (SimVG, ALVG) tells by its shapes: the BEiT-3 backbone, the head's width,
    query count, class count, decoder depth, the decoder FFN width (read from ``ffn_key``, whose name differs
    between the families' decoders) and the text-guided query generation."""
    cfg = official_backbone_config(sd)
    cfg.update(
        embed_dim=sd["head.query_embed.weight"].shape[1], num_queries=sd["head.query_embed.weight"].shape[0],
        num_classes=sd["head.class_embed_decoder.weight"].shape[0] - 1,
        num_decoder_layers=count_indices(sd, "head.transformer.decoder.layers."),
        decoder_ffn_dim=sd[ffn_key].shape[0],
    )
    cfg.update(official_tgqg_config(sd))
    return cfg


def count_indices(sd: Dict[str, torch.Tensor], prefix: str) -> int:
    """How many distinct ``<prefix><i>.`` indices the keys of ``sd`` hold (layers of a module list)."""
    return len({int(m.group(1)) for k in sd for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m})


def official_backbone_config(sd: Dict[str, torch.Tensor]) -> dict:
    """The BEiT-3 part of a config inferred from an official SimVG-family state dict (``vis_enc.beit3.*``):
    backbone (base / large by width), img_size, patch_size, vocab_size, drop_path_rate (the official 0.1 for
    base, 0 for large) and ``backbone_overrides`` when depth / width / FFN are not a preset's (heads = width / 64)."""
    sd = unwrap(sd)
    D = sd["vis_enc.beit3.text_embed.weight"].shape[1]
    vocab = sd["vis_enc.beit3.text_embed.weight"].shape[0]
    patch = sd["vis_enc.beit3.vision_embed.proj.weight"].shape[-1]
    rows = sd["vis_enc.beit3.encoder.embed_positions.A.weight"].shape[0]
    g = int(round(math.sqrt(rows - 3)))
    n_layers = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"vis_enc\.beit3\.encoder\.layers\.(\d+)\.", k)] if m)
    ffn = sd["vis_enc.beit3.encoder.layers.0.ffn.A.fc1.weight"].shape[0]
    backbone = {768: "base", 1024: "large"}.get(D)
    cfg = dict(backbone=backbone or "base", img_size=g * patch, patch_size=patch, vocab_size=vocab,
               drop_path_rate=0.1 if backbone == "base" else 0.0)
    if backbone is None or (backbone == "base" and (n_layers, ffn) != (12, 3072)) or \
            (backbone == "large" and (n_layers, ffn) != (24, 4096)):
        cfg["backbone_overrides"] = dict(embed_dim=D, num_layers=n_layers, ffn_dim=ffn, num_heads=max(1, D // 64))
    return cfg


def official_tgqg_config(sd: Dict[str, torch.Tensor]) -> dict:
    """text_guided_query_generation (and its layer count and FFN width) of an official state dict."""
    n_tgqg = count_indices(sd, "head.text_guided_query_generation_transformer.layers.")
    cfg = {"text_guided_query_generation": n_tgqg > 0}
    if n_tgqg:
        cfg["num_tgqg_layers"] = n_tgqg
        cfg["tgqg_ffn_dim"] = sd["head.text_guided_query_generation_transformer.layers.0.ffns.0.layers.0.0.weight"].shape[0]
    return cfg


def adapt_img_size(sd_ours: Dict[str, torch.Tensor], model_cfg) -> Dict[str, torch.Tensor]:
    """Resize the vision position table of one of our state dicts to ``model_cfg``'s grid (bicubic, the first 3
    rows kept), e.g. to fine-tune at 640 px from a checkpoint trained at 512 px (official ``pretrain-cocoall``).
    Other keys are returned unchanged."""
    bcfg = model_cfg.beit3() if hasattr(model_cfg, "beit3") else model_cfg
    key = "beit3." + VISION_POS_KEY
    out = dict(sd_ours)
    if key in out:
        out[key] = resample_pos_table(out[key], tuple(bcfg.grid), VISION_POS_PREFIX_ROWS)
    return out


def load_into(model, sd_ours: Dict[str, torch.Tensor], assign: bool = False, what: str = "SimVG") -> None:
    """Strict load; one readable error naming missing / unexpected / mis-shaped keys."""
    load_strict(model, sd_ours, what=what, assign=assign)


def _is_beit3_pretrained(sd: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("beit3.") for k in sd) and not any(k.startswith(("vis_enc.", "module.vis_enc.")) for k in sd)


def converter_parser(method: str) -> argparse.ArgumentParser:
    """The command line of ``python -m <method>.convert`` (SimVG and the methods built on it)."""
    p = argparse.ArgumentParser(description=f"Convert an official {method} (or BEiT-3 pretrained) checkpoint to ours.")
    p.add_argument("--src", required=True, help=f"official {method} checkpoint (.pth) or BEiT-3 pretrained .pth/.zip")
    p.add_argument("--dst", required=True, help="output file (torch.save dict with model/config/compat/report)")
    p.add_argument("--ema", action="store_true", help="take ema_state_dict instead of state_dict")
    p.add_argument("--img-size", type=int, default=640, help="BEiT-3 pretrained only: target input size")
    p.add_argument("--patch-size", type=int, default=32, help="BEiT-3 pretrained only: target patch size")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help=f"{method} checkpoints: override an inferred config key (value parsed as JSON), repeatable")
    p.add_argument("--trust_pickle", action="store_true",
                   help="unpickle --src fully if a weights-only load refuses it (it could run code): trusted files only")
    return p


def beit3_pretrained_payload(raw, config_from_args, img_size: int, patch_size: int) -> Optional[dict]:
    """When ``raw`` (a loaded file) is a BEiT-3 pretrained checkpoint: the converter's payload (backbone tensors,
    the config of ``config_from_args`` at vitb / vitl by width, ``img_size`` and ``patch_size``); else None."""
    if not (isinstance(raw, dict) and isinstance(raw.get("model"), dict) and _is_beit3_pretrained(raw["model"])):
        return None
    D = raw["model"]["beit3.text_embed.weight"].shape[1]
    cfg = config_from_args({"preset": "vitl" if D == 1024 else "vitb", "img_size": img_size, "patch_size": patch_size})
    sd, report = convert_beit3_pretrained(raw, cfg)
    return {"model": sd, "config": cfg.to_dict(), "compat": {}, "report": report, "kind": "beit3_pretrained"}


def main(argv: Optional[List[str]] = None) -> int:
    a = converter_parser("SimVG").parse_args(argv)
    overrides = parse_key_values(a.set)
    raw = torch_load(a.src, trust_pickle=a.trust_pickle)
    from simvg.model import config_from_args
    out = beit3_pretrained_payload(raw, config_from_args, a.img_size, a.patch_size)
    if out is None:
        official = read_simvg_checkpoint(raw, use_ema=a.ema)
        sd, report = convert_simvg_state_dict(official)
        if report["unmapped"]:
            print(f"unmapped keys ({len(report['unmapped'])}):", *report["unmapped"], sep="\n  ", file=sys.stderr)
            return 1
        cfg = config_from_state_dict(official, **overrides)
        cfg.update(report["compat"])
        from simvg.model import build_model
        with torch.device("meta"):
            model = build_model(cfg)
        load_into(model, {k: v.to("meta") for k, v in sd.items()}, assign=True)  # strict check, no RAM
        out = {"model": sd, "config": cfg, "compat": report["compat"], "report": report, "kind": "simvg"}
    torch.save(out, a.dst)
    print(f"wrote {a.dst}: {len(out['model'])} tensors; report: "
          f"{ {k: (len(v) if isinstance(v, list) else v) for k, v in out['report'].items()} }")
    return 0


if __name__ == "__main__":
    sys.exit(main())
