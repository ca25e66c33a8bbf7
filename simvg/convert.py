"""Official SimVG / BEiT-3 checkpoints -> our `simvg.model.SimVG` state dict.

Official SimVG checkpoint (``simvg/utils/checkpoint.py``): a dict with ``state_dict`` (and ``ema_state_dict``
when EMA was on); keys may carry ``module.`` (DDP).  Rules (official -> ours):

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

CLI: ``python -m simvg.convert --src official.pth --dst ours.pth [--ema]`` writes
``{"model": state_dict, "config": SimVGConfig dict, "compat": {...}, "report": {...}}``.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Dict, List, Optional, Tuple

import torch

from vgcore.models.beit3 import adapt_beit3_pretrained, read_checkpoint

__all__ = ["OFFICIAL_COMPAT", "map_key", "official_key", "to_official_state_dict", "convert_simvg_state_dict", "convert_beit3_pretrained",
           "read_simvg_checkpoint", "config_from_official", "config_from_state_dict", "adapt_img_size", "load_into",
           "main"]

OFFICIAL_COMPAT = {"text_maxpool_int64_mask": True, "text_pos_embed_1d_degenerate": True}

DROPPED = ("head.criterion.empty_weight", "head.criterion_harddistill.empty_weight")

_PREFIX_RULES = [
    (r"^vis_enc\.beit3\.", "beit3."),
    (r"^head\.transformer\.decoder\.", "head.decoder."),
    (r"^head\.text_guided_query_generation_transformer\.", "head.tgqg."),
    (r"^head\.mlp\.", "head.token_mlp."),
]
_LAYER_RULES = [
    (r"\.attentions\.0\.attn\.", ".self_attn."),
    (r"\.attentions\.1\.attn\.", ".cross_attn."),
    (r"\.ffns\.0\.layers\.0\.0\.", ".ffn.linear1."),
    (r"\.ffns\.0\.layers\.1\.", ".ffn.linear2."),
    (r"\.norms\.([0-2])\.", lambda m: f".norm{int(m.group(1)) + 1}."),
    (r"\.post_norm_layer\.", ".post_norm."),
]
_KEEP = re.compile(r"^head\.(input_proj|input_text_proj|input_cls_proj|query_embed|class_embed_decoder|"
                   r"bbox_embed_decoder|class_embed_token|bbox_embed_token)\.")


def map_key(key: str) -> Optional[str]:
    """One official SimVG key -> ours, or None when no rule applies (``module.`` must already be stripped)."""
    if _KEEP.match(key):
        return key
    for pat, rep in _PREFIX_RULES:
        if re.match(pat, key):
            new = re.sub(pat, rep, key)
            if new.startswith(("head.decoder.", "head.tgqg.")):
                for p, r in _LAYER_RULES:
                    new = re.sub(p, r, new)
                if re.search(r"\.(attentions|ffns|norms)\.", new):
                    return None
            return new
    return None


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


def _strip_module(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def convert_simvg_state_dict(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Official SimVG state dict -> (ours, report).  report = {"unmapped": [...], "dropped": [...],
    "compat": OFFICIAL_COMPAT}.  Works on meta tensors (renaming only)."""
    out, unmapped, dropped = {}, [], []
    for k, v in _strip_module(sd).items():
        if k in DROPPED:
            dropped.append(k)
            continue
        new = map_key(k)
        if new is None:
            unmapped.append(k)
        else:
            out[new] = v
    return out, {"unmapped": unmapped, "dropped": dropped, "compat": dict(OFFICIAL_COMPAT)}


def read_simvg_checkpoint(path_or_obj, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The model weights of an official SimVG checkpoint file/dict (``ema_state_dict`` if ``use_ema``)."""
    obj = torch.load(path_or_obj, map_location="cpu", weights_only=False) if isinstance(path_or_obj, str) else path_or_obj
    key = "ema_state_dict" if use_ema else "state_dict"
    if isinstance(obj, dict) and key in obj:
        return obj[key]
    if use_ema:
        raise KeyError(f"{path_or_obj!r}: no 'ema_state_dict' (the run had EMA off)")
    return obj


def convert_beit3_pretrained(path_or_obj, model_cfg) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Official BEiT-3 pretrained checkpoint -> our ``beit3.*`` keys resized to ``model_cfg`` (a SimVGConfig
    or a BEiT3Config).  Returns (state dict, {"ignored": non-``beit3.`` keys})."""
    bcfg = model_cfg.beit3() if hasattr(model_cfg, "beit3") else model_cfg
    sd, ignored = adapt_beit3_pretrained(read_checkpoint(path_or_obj), bcfg)
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
    sd = _strip_module(sd)
    D = sd["vis_enc.beit3.text_embed.weight"].shape[1]
    vocab = sd["vis_enc.beit3.text_embed.weight"].shape[0]
    patch = sd["vis_enc.beit3.vision_embed.proj.weight"].shape[-1]
    rows = sd["vis_enc.beit3.encoder.embed_positions.A.weight"].shape[0]
    g = int(round(math.sqrt(rows - 3)))
    n_layers = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"vis_enc\.beit3\.encoder\.layers\.(\d+)\.", k)] if m)
    ffn = sd["vis_enc.beit3.encoder.layers.0.ffn.A.fc1.weight"].shape[0]
    backbone = {768: "base", 1024: "large"}.get(D)

    def count(prefix):
        idx = {int(m.group(1)) for k in sd for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
        return len(idx)

    cfg = dict(
        backbone=backbone or "base", img_size=g * patch, patch_size=patch, vocab_size=vocab,
        drop_path_rate=0.1 if backbone == "base" else 0.0,
        embed_dim=sd["head.query_embed.weight"].shape[1], num_queries=sd["head.query_embed.weight"].shape[0],
        num_classes=sd["head.class_embed_decoder.weight"].shape[0] - 1,
        num_decoder_layers=count("head.transformer.decoder.layers."),
        decoder_ffn_dim=sd["head.transformer.decoder.layers.0.ffns.0.layers.0.0.weight"].shape[0],
        num_token_mlp_layers=count("head.mlp.layers."),
    )
    if backbone is None or (backbone == "base" and (n_layers, ffn) != (12, 3072)) or \
            (backbone == "large" and (n_layers, ffn) != (24, 4096)):
        cfg["backbone_overrides"] = dict(embed_dim=D, num_layers=n_layers, ffn_dim=ffn,
                                         num_heads=max(1, D // 64))
    n_tgqg = count("head.text_guided_query_generation_transformer.layers.")
    cfg["text_guided_query_generation"] = n_tgqg > 0
    if n_tgqg:
        cfg["num_tgqg_layers"] = n_tgqg
        cfg["tgqg_ffn_dim"] = sd["head.text_guided_query_generation_transformer.layers.0.ffns.0.layers.0.0.weight"].shape[0]
    cfg.update(overrides)
    return cfg


def adapt_img_size(sd_ours: Dict[str, torch.Tensor], model_cfg) -> Dict[str, torch.Tensor]:
    """Resize the vision position table of one of our state dicts to ``model_cfg``'s grid (bicubic, the first 3
    rows kept), e.g. to fine-tune at 640 px from a checkpoint trained at 512 px (official ``pretrain-cocoall``).
    Other keys are returned unchanged."""
    from vgcore.models.beit3 import resize_vision_positions
    bcfg = model_cfg.beit3() if hasattr(model_cfg, "beit3") else model_cfg
    key = "beit3.encoder.embed_positions.A.weight"
    out = dict(sd_ours)
    if key in out:
        out[key] = resize_vision_positions(out[key], bcfg.grid)
    return out


def load_into(model, sd_ours: Dict[str, torch.Tensor], assign: bool = False) -> None:
    """Strict load with a readable error naming missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd_ours))
    unexpected = sorted(set(sd_ours) - set(own))
    bad = [f"{k}: {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd_ours.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise RuntimeError(f"SimVG strict load failed:\n  missing ({len(missing)}): {missing[:20]}\n"
                           f"  unexpected ({len(unexpected)}): {unexpected[:20]}\n  shape mismatch: {bad[:20]}")
    model.load_state_dict(sd_ours, strict=True, assign=assign)


def _is_beit3_pretrained(sd: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("beit3.") for k in sd) and not any(k.startswith(("vis_enc.", "module.vis_enc.")) for k in sd)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Convert an official SimVG (or BEiT-3 pretrained) checkpoint to ours.")
    p.add_argument("--src", required=True, help="official SimVG checkpoint (.pth) or BEiT-3 pretrained .pth/.zip")
    p.add_argument("--dst", required=True, help="output file (torch.save dict with model/config/compat/report)")
    p.add_argument("--ema", action="store_true", help="take ema_state_dict instead of state_dict")
    p.add_argument("--img-size", type=int, default=640, help="BEiT-3 pretrained only: target input size")
    p.add_argument("--patch-size", type=int, default=32, help="BEiT-3 pretrained only: target patch size")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="SimVG checkpoints: override an inferred config key (value parsed as JSON), repeatable")
    a = p.parse_args(argv)
    import json
    overrides = {}
    for item in a.set:
        k, _, v = item.partition("=")
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    raw = torch.load(a.src, map_location="cpu", weights_only=False)
    if isinstance(raw, dict) and "model" in raw and _is_beit3_pretrained(raw["model"]):
        from simvg.model import config_from_args
        D = raw["model"]["beit3.text_embed.weight"].shape[1]
        cfg = config_from_args({"preset": "vitl" if D == 1024 else "vitb", "img_size": a.img_size,
                                "patch_size": a.patch_size})
        sd, report = convert_beit3_pretrained(raw, cfg)
        out = {"model": sd, "config": cfg.to_dict(), "compat": {}, "report": report, "kind": "beit3_pretrained"}
    else:
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
