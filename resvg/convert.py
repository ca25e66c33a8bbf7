"""Official checkpoints -> our `resvg.model.ResVG` state dict, by explicit rules, with a report.

Three kinds of file are recognised (``detect_kind``):

``resvg``  an official ResVG (or VLTVG) checkpoint: ``{"model": state_dict, "epoch", "args": Namespace}`` as
           ``train.py`` saves it (``module.`` prefixes are stripped).  Rules, official -> ours:

           backbone.0.body.X                                     -> backbone.body.X
           trans_encoder.encoder.layers.i.linear{1,2}.X          -> visual_encoder.layers.i.ffn.linear{1,2}.X
           trans_encoder.encoder.layers.i.X (self_attn, norm1/2) -> visual_encoder.layers.i.X
           input_proj.X, bert_proj.X, bbox_embed.X               -> unchanged
           bert.X                                                -> bert.X (transformers BertModel names)
           trans_decoder.decoder.extra_encoder_layers.0.X        -> discriminative.X, with tf_scale ->
                                                                    verify_scale, tf_sigma -> verify_sigma
           trans_decoder.decoder.layers.i.ffn.{0,3}.X            -> decoder.layers.i.ffn.linear{1,2}.X
           trans_decoder.decoder.layers.i.norm.{0,1,2}.X         -> decoder.layers.i.norm{1,2,3}.X
           trans_decoder.decoder.layers.i.X (word_attn, img_attn) -> decoder.layers.i.X
           trans_decoder.decoder.ffn.{0,3}.X                     -> decoder.prior_mlp.{0,3}.X
           trans_decoder.decoder.{norm,vis_query_embed,text_query_embed}.X -> decoder.X

           Every official checkpoint implies `OFFICIAL_COMPAT`; a VLTVG file (no ``trans_decoder.decoder.ffn``)
           has ``prior_feature_content_query`` off.
``detr``   a DETR-R50 checkpoint (facebookresearch/detr, or TransVG's detr-r50-{unc,gref,referit}.pth):
           ``backbone.0.body.X`` and ``input_proj.X`` as above, ``transformer.encoder.layers.i.X`` as
           ``trans_encoder.encoder.layers.i.X``; the DETR decoder, ``class_embed``, ``bbox_embed`` and
           ``query_embed`` are dropped (listed in the report).  Fills backbone + input_proj + visual encoder.
``bert``   bert-base-uncased weights, Hugging Face or pytorch-pretrained-bert layout (``bert.`` prefix optional,
           LayerNorm gamma/beta accepted, ``cls.*`` dropped): -> ``bert.X``.  Fills the BERT tower.

The report is ``{"kind", "unmapped": [keys no rule maps], "dropped": [keys deliberately left out],
"compat": {...}}``; any unmapped key is an error for the command line and for `load_pretrained` (which
fills a model from any of the three kinds).

CLI: ``python -m resvg.convert --src FILE --dst OUT.pth [--kind auto|resvg|detr|bert]`` writes
``{"model": state_dict, "kind", "config" (resvg kind: from the checkpoint's args), "compat", "report"}``.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from vgcore.checkpoint import (StateDictMismatchError, check_state_dict, load_strict, strip_prefix,
                               torch_load, unwrap_checkpoint)
from vgcore.models.bert import convert_bert_state_dict, is_bert_model_key

from resvg.config import OFFICIAL_COMPAT

__all__ = ["detect_kind", "map_resvg_key", "official_key", "convert_resvg_state_dict", "convert_detr_state_dict",
           "convert_bert", "convert_any", "to_official_state_dict", "load_into", "load_partial", "load_pretrained",
           "read_checkpoint",
           "PARTIAL_MODULES", "main"]

Rule = Tuple[str, str, Optional[Callable[[str], Optional[str]]]]


def _sub_all(rules: Sequence[Tuple[str, str]]) -> Callable[[str], Optional[str]]:
    """Inner renames applied to the rest of a key after its prefix."""
    compiled = [(re.compile(p), r) for p, r in rules]

    def apply(rest: str) -> Optional[str]:
        for p, r in compiled:
            rest = p.sub(r, rest)
        return rest
    return apply


def _bert_rest(rest: str) -> Optional[str]:
    return rest if is_bert_model_key(rest) else None


_ENCODER_INNER = _sub_all([(r"^(\d+)\.linear([12])\.", r"\1.ffn.linear\2.")])
_DISC_INNER = _sub_all([(r"^tf_scale$", "verify_scale"), (r"^tf_sigma$", "verify_sigma")])
_DECODER_INNER = _sub_all([(r"^(\d+)\.ffn\.0\.", r"\1.ffn.linear1."), (r"^(\d+)\.ffn\.3\.", r"\1.ffn.linear2."),
                           (r"^(\d+)\.norm\.([0-2])\.", lambda m: f"{m.group(1)}.norm{int(m.group(2)) + 1}.")])
_DECODER_TOP = re.compile(r"^(norm\.(weight|bias)|vis_query_embed\.weight|text_query_embed\.weight)$")

# (official prefix, our prefix, inner rename) -- first match wins
RESVG_RULES: List[Rule] = [
    ("backbone.0.body.", "backbone.body.", None),
    ("trans_encoder.encoder.layers.", "visual_encoder.layers.", _ENCODER_INNER),
    ("input_proj.", "input_proj.", None),
    ("bert_proj.", "bert_proj.", None),
    ("bert.", "bert.", _bert_rest),
    ("trans_decoder.decoder.extra_encoder_layers.0.", "discriminative.", _DISC_INNER),
    ("trans_decoder.decoder.layers.", "decoder.layers.", _DECODER_INNER),
    ("trans_decoder.decoder.ffn.", "decoder.prior_mlp.", None),
    ("trans_decoder.decoder.", "decoder.", lambda rest: rest if _DECODER_TOP.match(rest) else None),
    ("bbox_embed.", "bbox_embed.", None),
]

DETR_RULES: List[Rule] = [
    ("backbone.0.body.", "backbone.body.", None),
    ("transformer.encoder.layers.", "visual_encoder.layers.", _ENCODER_INNER),
    ("input_proj.", "input_proj.", None),
]
DETR_DROPPED = re.compile(r"^(transformer\.decoder\.|class_embed\.|bbox_embed\.|query_embed\.)")

# the top-level modules each partial kind fills
PARTIAL_MODULES = {"detr": ("backbone", "input_proj", "visual_encoder"), "bert": ("bert",)}


def _apply(rules: Sequence[Rule], key: str) -> Optional[str]:
    for src, dst, inner in rules:
        if key.startswith(src):
            rest = key[len(src):]
            rest = inner(rest) if inner is not None else rest
            return None if rest is None else dst + rest
    return None


def map_resvg_key(key: str) -> Optional[str]:
    """One official ResVG key (no ``module.``) -> ours, or None when no rule maps it."""
    return _apply(RESVG_RULES, key)


_ENCODER_INNER_INV = _sub_all([(r"^(\d+)\.ffn\.linear([12])\.", r"\1.linear\2.")])
_DISC_INNER_INV = _sub_all([(r"^verify_scale$", "tf_scale"), (r"^verify_sigma$", "tf_sigma")])
_DECODER_INNER_INV = _sub_all([(r"^(\d+)\.ffn\.linear1\.", r"\1.ffn.0."), (r"^(\d+)\.ffn\.linear2\.", r"\1.ffn.3."),
                               (r"^(\d+)\.norm([1-3])\.", lambda m: f"{m.group(1)}.norm.{int(m.group(2)) - 1}.")])
_INVERSE: List[Tuple[str, str, Callable[[str], str]]] = [
    ("backbone.body.", "backbone.0.body.", lambda r: r),
    ("visual_encoder.layers.", "trans_encoder.encoder.layers.", _ENCODER_INNER_INV),
    ("discriminative.", "trans_decoder.decoder.extra_encoder_layers.0.", _DISC_INNER_INV),
    ("decoder.layers.", "trans_decoder.decoder.layers.", _DECODER_INNER_INV),
    ("decoder.prior_mlp.", "trans_decoder.decoder.ffn.", lambda r: r),
    ("decoder.", "trans_decoder.decoder.", lambda r: r),
]


def official_key(key: str) -> str:
    """Inverse of `map_resvg_key`: one of our keys -> the official name."""
    for ours, off, inner in _INVERSE:
        if key.startswith(ours):
            return off + inner(key[len(ours):])
    return key


def to_official_state_dict(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our state dict -> the official ResVG layout (for export and round trips)."""
    return {official_key(k): v for k, v in sd.items()}


def _convert(sd: Mapping[str, torch.Tensor], rules: Sequence[Rule], dropped_re=None):
    out: Dict[str, torch.Tensor] = {}
    unmapped, dropped = [], []
    for k, v in strip_prefix(sd, "module.").items():
        if dropped_re is not None and dropped_re.match(k):
            dropped.append(k)
            continue
        new = _apply(rules, k)
        if new is None:
            unmapped.append(k)
            continue
        if new in out:
            raise KeyError(f"resvg.convert: two keys map to {new!r} (one is {k!r})")
        out[new] = v
    return out, unmapped, dropped


def convert_resvg_state_dict(sd: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Official ResVG / VLTVG state dict -> (ours, report).  Renaming only (works on meta tensors)."""
    out, unmapped, dropped = _convert(sd, RESVG_RULES)
    compat = dict(OFFICIAL_COMPAT)
    compat["prior_feature_content_query"] = any(k.startswith("decoder.prior_mlp.") for k in out)
    compat["rpe_key_weight_projection"] = any(k.startswith("discriminative.img2img_attn.pos_") for k in out)
    return out, {"kind": "resvg", "unmapped": unmapped, "dropped": dropped, "compat": compat}


def convert_detr_state_dict(sd: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """DETR checkpoint -> (backbone / input_proj / visual_encoder part of ours, report)."""
    out, unmapped, dropped = _convert(sd, DETR_RULES, DETR_DROPPED)
    return out, {"kind": "detr", "unmapped": unmapped, "dropped": dropped, "compat": {}}


def convert_bert(sd: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """bert-base-uncased weights (HF or pytorch-pretrained-bert) -> (``bert.*`` part of ours, report)."""
    hf, rep = convert_bert_state_dict(strip_prefix(sd, "module."))
    return {"bert." + k: v for k, v in hf.items()}, {"kind": "bert", "unmapped": rep["unmapped"],
                                                     "dropped": rep["dropped"], "compat": {}}


def detect_kind(sd: Mapping[str, torch.Tensor]) -> str:
    """'resvg', 'detr' or 'bert' from the key set."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in sd]
    if any(k.startswith("trans_decoder.") for k in keys):
        return "resvg"
    if any(k.startswith("transformer.encoder.") for k in keys):
        return "detr"
    if any(("encoder.layer." in k and "attention.self" in k) for k in keys):
        return "bert"
    raise ValueError("resvg.convert: not a ResVG/VLTVG, DETR or BERT checkpoint "
                     f"(first keys: {keys[:5]})")


_CONVERTERS = {"resvg": convert_resvg_state_dict, "detr": convert_detr_state_dict, "bert": convert_bert}


def read_checkpoint(path_or_obj) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state dict, the official args as a dict or {}) of a checkpoint file or loaded object (weights only)."""
    obj = torch_load(path_or_obj) if not isinstance(path_or_obj, Mapping) else path_or_obj
    args = obj.get("args") if isinstance(obj, Mapping) else None
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    sd = unwrap_checkpoint(obj, keys=("model", "state_dict"))
    return dict(sd), dict(args) if isinstance(args, Mapping) else {}


def convert_any(sd: Mapping[str, torch.Tensor], kind: str = "auto") -> Tuple[Dict[str, torch.Tensor], dict]:
    """Convert with the converter of ``kind`` ('auto' detects it)."""
    kind = detect_kind(sd) if kind == "auto" else kind
    if kind not in _CONVERTERS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose from {sorted(_CONVERTERS)}")
    return _CONVERTERS[kind](sd)


def load_into(model, sd_ours: Mapping[str, torch.Tensor], assign: bool = False) -> None:
    """Strict load of a full converted state dict (raises naming missing / unexpected / mis-shaped keys)."""
    if not assign:
        load_strict(model, sd_ours, what="ResVG")
        return
    missing, unexpected, mismatched = check_state_dict(model, sd_ours)
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(missing, unexpected, mismatched, "ResVG")
    model.load_state_dict(sd_ours, strict=True, assign=True)


def load_partial(model, sd_ours: Mapping[str, torch.Tensor], modules: Sequence[str]) -> None:
    """Load a converted DETR / BERT part: every key of ``modules`` must be present, nothing else may be."""
    allow = [r"^(?!(" + "|".join(re.escape(m) + r"\." for m in modules) + "))"]
    load_strict(model, sd_ours, allow_missing=allow, what=f"ResVG parts {list(modules)}")


def load_pretrained(model, path_or_obj, kind: str = "auto") -> dict:
    """Fill ``model`` from an official file: a full ResVG / VLTVG checkpoint (strict; its compat must match the
    model's switches), or a DETR / BERT file (only the modules it covers).  Returns the conversion report."""
    sd, _ = read_checkpoint(path_or_obj)
    ours, report = convert_any(sd, kind)
    if report["unmapped"]:
        raise KeyError(f"resvg.convert: unmapped keys ({len(report['unmapped'])}): {report['unmapped']}")
    if report["kind"] == "resvg":
        wrong = {k: v for k, v in report["compat"].items() if getattr(model.cfg, k) != v}
        if wrong:
            raise ValueError(f"resvg.convert: the checkpoint needs compat switches {wrong}")
        load_into(model, ours)
    else:
        load_partial(model, ours, PARTIAL_MODULES[report["kind"]])
    return report


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Convert an official ResVG/VLTVG, DETR-R50 or BERT checkpoint to ours.")
    p.add_argument("--src", required=True, help="official checkpoint (.pth / pytorch_model.bin)")
    p.add_argument("--dst", required=True, help="output file (torch.save dict: model, kind, config, compat, report)")
    p.add_argument("--kind", default="auto", choices=["auto", *sorted(_CONVERTERS)])
    a = p.parse_args(argv)
    sd, args = read_checkpoint(a.src)
    ours, report = convert_any(sd, a.kind)
    if report["unmapped"]:
        print(f"unmapped keys ({len(report['unmapped'])}):", *report["unmapped"], sep="\n  ", file=sys.stderr)
        return 1
    config = None
    if report["kind"] == "resvg":
        from resvg.config import config_from_args, config_from_official
        from resvg.model import ResVG
        cfg = config_from_official(args) if args.get("model_config") else {}
        cfg.update(report["compat"])
        config = config_from_args(cfg).to_dict()
        with torch.device("meta"):
            model = ResVG(config_from_args(config))
        load_strict(model, {k: v.to("meta") for k, v in ours.items()}, what=a.src)
    torch.save({"model": ours, "kind": report["kind"], "config": config, "compat": report["compat"],
                "report": report}, a.dst)
    print(f"wrote {a.dst}: {len(ours)} tensors ({report['kind']}); dropped {len(report['dropped'])}, unmapped 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
