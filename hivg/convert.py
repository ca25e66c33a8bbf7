"""Official HiVG checkpoints and pretrained CLIP weights -> our state dict.

Sources handled (every input key must be mapped or explicitly dropped; otherwise `ConversionError` lists them):
  * official HiVG ``checkpoint['model']`` of any Hi LoRA stage: ``clip.`` + ``base_model.model.`` x (1+stage)
    + HF CLIPModel key (+ bridge modules under ``vision_model.encoder.layers.<i>``), LoRA as
    ``<linear>.lora_A.default.weight`` [r,in] / ``lora_B.default.weight`` [out,r], newer-peft ``base_layer.``
    naming accepted; heads (``visu_proj``, ``vl_transformer.*``, ``bbox_embed.*`` ...);
  * ``clip_lora_stage_with_bridge.pth`` (the same CLIP entries without ``clip.``) and the debiased CLIP files
    (``{'model': peft-wrapped HF CLIPModel}``);
  * HF CLIPModel state dicts / folders (``pytorch_model.bin`` or ``model.safetensors``);
  * OpenAI CLIP state dicts (TorchScript archives only with ``trust_pickle``: loading them may run code) and
    open_clip models (same key names as OpenAI);
  * CLIP weights already in our key space (``vision.*``, ``text.*``, projections), e.g. the tag-pretrained
    tiny tower that ``hivg/pretrain_tiny.py`` writes.

The inverse direction, `export_hilora_clip`, writes our CLIP towers + LoRA + bridges in the official
``clip_lora_stage_with_bridge.pth`` layout (``{'model': model.clip.state_dict()}`` of the official code).

LoRA handling (``lora=``): "keep" copies the adapters (our `LoRALinear.lora_a/lora_b`); "merge" folds
``W + (alpha/r) * B @ A`` (alpha = 16 officially, so scale 0.5) and writes zero ``lora_b`` so the result still
loads strictly into a LoRA-enabled model; "merge_drop" folds and emits no adapter keys (for ``lora_rank=0``).

Key renaming is three rule tables over `vgcore.checkpoint.convert_state_dict`: `OPENAI_RULES` (OpenAI /
open_clip -> HF CLIPModel names, packed attention split first), `CLIP_RULES` (HF -> ours) and `HEAD_RULES`
(official heads -> ours); peft prefixes, LoRA adapters and the per-layer adaptive weights are unwrapped around
them.  Files are read weights-only; ``trust_pickle=True`` (``--trust_pickle``) opts in to full unpickling.

Every converter returns ``(state_dict, info)``; ``info`` holds the implied config and compat switches:
official checkpoints imply ``compat_batch_mixing=True`` (the released weights were trained with the bug).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Optional

import torch

from vgcore.checkpoint import ConversionError, Rules, convert_state_dict, load_strict, torch_load, unwrap
from vgcore.checkpoint import check_state_dict as _check_against_model

__all__ = ["ConversionError", "CLIP_RULES", "HEAD_RULES", "OPENAI_RULES", "TO_HF_RULES", "HILORA_CLIP_FILE",
           "convert_official", "convert_clip", "infer_official_config", "export_hilora_clip", "save_hilora_clip",
           "load_clip_into", "load_official_model", "check_state_dict", "load_checkpoint_file", "strip_peft_prefix",
           "main"]

LORA_ALPHA = 16.0
_PEFT = "base_model.model."


def _fail(msg: str, keys) -> None:
    keys = sorted(keys)
    shown = "\n  ".join(keys[:60]) + ("\n  ..." if len(keys) > 60 else "")
    raise ConversionError(f"{msg} ({len(keys)}):\n  {shown}")


# ---------------------------------------------------------------- small generic helpers
def strip_peft_prefix(key: str) -> tuple:
    """'base_model.model.' x n + rest -> (rest, n)."""
    n = 0
    while key.startswith(_PEFT):
        key = key[len(_PEFT):]
        n += 1
    return key, n


def load_checkpoint_file(path: str | os.PathLike, *, trust_pickle: bool = False):
    """A checkpoint file -> raw object: ``.safetensors``, an HF folder (``model.safetensors`` /
    ``pytorch_model.bin``), or a ``torch.save`` file read weights-only (official HiVG checkpoints pickle an
    ``argparse.Namespace`` under 'args', which is allowed).  Files needing more -- e.g. OpenAI's TorchScript
    CLIP archives -- are refused unless ``trust_pickle`` (`vgcore.checkpoint.UntrustedFileError`)."""
    p = Path(path)
    if p.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (p / name).exists():
                return load_checkpoint_file(p / name, trust_pickle=trust_pickle)
        raise FileNotFoundError(f"{p}: no model.safetensors / pytorch_model.bin in this folder")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(p))
    obj = torch_load(p, trust_pickle=trust_pickle)
    return obj.state_dict() if isinstance(obj, torch.nn.Module) else obj  # a trusted TorchScript archive


def _map_one(key: str, rules) -> Optional[str]:
    out, _ = convert_state_dict({key: None}, rules, keep_unmatched=False)
    return next(iter(out), None)


# ---------------------------------------------------------------- HF CLIP key space -> ours
_L = r"encoder\.layers\.(\d+)\."
_HF_RULES = [
    (r"text_model\.embeddings\.token_embedding\.weight", "text.token_embedding.weight"),
    (r"text_model\.embeddings\.position_embedding\.weight", "text.pos_embed"),
    (r"text_model\." + _L + r"self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"text.blocks.\1.attn.\2.\3"),
    (r"text_model\." + _L + r"layer_norm([12])\.(weight|bias)", r"text.blocks.\1.ln\2.\3"),
    (r"text_model\." + _L + r"mlp\.(fc[12])\.(weight|bias)", r"text.blocks.\1.mlp.\2.\3"),
    (r"text_model\.final_layer_norm\.(weight|bias)", r"text.ln_final.\1"),
    (r"vision_model\.embeddings\.class_embedding", "vision.class_embedding"),
    (r"vision_model\.embeddings\.patch_embedding\.weight", "vision.patch_embed.weight"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "vision.pos_embed"),
    (r"vision_model\.pre_layrnorm\.(weight|bias)", r"vision.ln_pre.\1"),
    (r"vision_model\.post_layernorm\.(weight|bias)", r"vision.ln_post.\1"),
    (r"vision_model\." + _L + r"self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"vision.blocks.\1.attn.\2.\3"),
    (r"vision_model\." + _L + r"layer_norm([12])\.(weight|bias)", r"vision.blocks.\1.ln\2.\3"),
    (r"vision_model\." + _L + r"mlp\.(fc[12])\.(weight|bias)", r"vision.blocks.\1.mlp.\2.\3"),
    (r"vision_model\." + _L + r"cross_norm\.(weight|bias)", r"vision.blocks.\1.bridge.norm.\2"),
    (r"vision_model\." + _L + r"cross_attn\.(q|k|v|out)_proj\.(weight|bias)", r"vision.blocks.\1.bridge.attn.\2.\3"),
    (r"vision_model\." + _L + r"cross_mlp\.(fc[12])\.(weight|bias)", r"vision.blocks.\1.bridge.mlp.\2.\3"),
    (r"vision_model\." + _L + r"cross_gate\.(weight|bias)", r"vision.blocks.\1.bridge.gate.\2"),
    (r"visual_projection\.weight", "visual_projection.weight"),
    (r"text_projection\.weight", "text_projection.weight"),
    (r"logit_scale", "logit_scale"),
]
CLIP_RULES: Rules = [("^" + p + "$", r) for p, r in _HF_RULES]  # HF CLIPModel key -> ours
_HF_DROP = re.compile(r"(text_model|vision_model)\.embeddings\.position_ids$")
_ADAPTIVE = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.cross_adaptive_weights\.(\d+)\.weight$")
_BRIDGE_GATE = re.compile(r"vision_model\.encoder\.layers\.\d+\.(cross_gate|cross_adaptive_weights)\.")
_LORA = re.compile(r"^(.*)\.lora_([AB])(?:\.default)?\.weight$")


def _map_hf(key: str) -> Optional[str]:
    return _map_one(key, CLIP_RULES)


def _convert_hf_space(hf: dict, lora: str, drop_bridge_gate: bool, lora_alpha: float) -> tuple:
    """HF CLIPModel key space (peft prefixes already removed) -> (ours, info)."""
    if lora not in ("keep", "merge", "merge_drop"):
        raise ValueError(f"lora must be 'keep', 'merge' or 'merge_drop', got {lora!r}")
    plain, adapters, adaptive, dropped = {}, {}, {}, []
    for k0, v in hf.items():
        k = k0.replace(".base_layer.", ".")  # newer peft naming of the wrapped linear
        m = _LORA.match(k)
        if m:
            adapters.setdefault(m.group(1), {})[m.group(2)] = v
            continue
        if _HF_DROP.match(k):
            dropped.append(k0)
            continue
        if drop_bridge_gate and _BRIDGE_GATE.match(k):
            dropped.append(k0)
            continue
        m = _ADAPTIVE.match(k)
        if m:
            adaptive.setdefault(int(m.group(1)), {})[int(m.group(2))] = v
            continue
        plain[k] = v
    base, report = convert_state_dict(plain, CLIP_RULES, keep_unmatched=False)
    if report.unmatched:
        _fail("unmapped CLIP keys", report.unmatched)
    base = dict(base)
    for layer, parts in adaptive.items():
        idx = sorted(parts)
        if idx != list(range(len(idx))):
            _fail(f"cross_adaptive_weights of layer {layer} are not numbered 0..n-1", [str(i) for i in idx])
        base[f"vision.blocks.{layer}.bridge.adaptive_weights"] = torch.stack([parts[i] for i in idx], 0)
    out = dict(base)
    rank = None
    for lin, ab in adapters.items():
        if set(ab) != {"A", "B"}:
            _fail("LoRA adapters without their A/B partner", [lin])
        wkey = _map_hf(lin + ".weight")
        if wkey is None or wkey not in base:
            _fail("LoRA adapter on an unknown or missing linear", [lin])
        A, B = ab["A"], ab["B"]
        r = A.shape[0]
        rank = r if rank is None else rank
        if lora == "keep":
            out[wkey[: -len("weight")] + "lora_a"] = A
            out[wkey[: -len("weight")] + "lora_b"] = B
        else:
            W = base[wkey]
            merged = (W.float() + (lora_alpha / r) * (B.float() @ A.float())).to(W.dtype)
            out[wkey] = merged
            if lora == "merge":
                out[wkey[: -len("weight")] + "lora_a"] = A
                out[wkey[: -len("weight")] + "lora_b"] = torch.zeros_like(B)
    info = {"lora_rank": rank or 0, "n_lora": len(adapters), "dropped": dropped,
            "bridge_layers": sorted({int(k.split(".")[2]) for k in out if ".bridge." in k})}
    return out, info


# ---------------------------------------------------------------- OpenAI / open_clip -> HF key space
_OA_BLOCK = r"^(?:(visual)\.)?transformer\.resblocks\.(\d+)\."


def _oa_block(rest: str):
    """Replacement for an OpenAI residual-block key: the tower from the optional ``visual.`` group."""
    return lambda m: f"{'vision_model' if m.group(1) else 'text_model'}.encoder.layers.{m.group(2)}.{rest}"


# OpenAI / open_clip key -> HF CLIPModel key (then `CLIP_RULES` takes it to ours); the packed attention
# in_proj is split into q/k/v before these rules apply
OPENAI_RULES: Rules = [
    (r"^(input_resolution|context_length|vocab_size)$", None),  # scalars of the OpenAI archive
    (r"(^|\.)attn_mask$", None),
    *[(_OA_BLOCK + ours + r"$", _oa_block(theirs)) for ours, theirs in (
        (r"attn\.out_proj\.weight", "self_attn.out_proj.weight"), (r"attn\.out_proj\.bias", "self_attn.out_proj.bias"),
        (r"ln_1\.weight", "layer_norm1.weight"), (r"ln_1\.bias", "layer_norm1.bias"),
        (r"ln_2\.weight", "layer_norm2.weight"), (r"ln_2\.bias", "layer_norm2.bias"),
        (r"mlp\.c_fc\.weight", "mlp.fc1.weight"), (r"mlp\.c_fc\.bias", "mlp.fc1.bias"),
        (r"mlp\.c_proj\.weight", "mlp.fc2.weight"), (r"mlp\.c_proj\.bias", "mlp.fc2.bias"))],
    (_OA_BLOCK + r"attn\.(q|k|v)_proj\.(weight|bias)$", lambda m: (
        f"{'vision_model' if m.group(1) else 'text_model'}.encoder.layers.{m.group(2)}."
        f"self_attn.{m.group(3)}_proj.{m.group(4)}")),
    (r"^token_embedding\.weight$", "text_model.embeddings.token_embedding.weight"),
    (r"^positional_embedding$", "text_model.embeddings.position_embedding.weight"),
    (r"^ln_final\.(weight|bias)$", r"text_model.final_layer_norm.\1"),
    (r"^logit_scale$", "logit_scale"),
    (r"^visual\.class_embedding$", "vision_model.embeddings.class_embedding"),
    (r"^visual\.positional_embedding$", "vision_model.embeddings.position_embedding.weight"),
    (r"^visual\.conv1\.weight$", "vision_model.embeddings.patch_embedding.weight"),
    (r"^visual\.ln_pre\.(weight|bias)$", r"vision_model.pre_layrnorm.\1"),
    (r"^visual\.ln_post\.(weight|bias)$", r"vision_model.post_layernorm.\1"),
    (r"^text_projection$", "text_projection.weight", lambda v: v.t()),  # OpenAI stores x @ P, HF a Linear
    (r"^visual\.proj$", "visual_projection.weight", lambda v: v.t()),
]


def _openai_to_hf(sd: dict) -> tuple:
    split = {}
    for k, v in sd.items():
        m = re.match(_OA_BLOCK + r"attn\.in_proj_(weight|bias)$", k)
        if m:  # packed [3D, ...] -> q, k, v
            for name, part in zip("qkv", v.chunk(3, 0)):
                split[k[: m.start(3) - len("in_proj_")] + f"{name}_proj.{m.group(3)}"] = part
        else:
            split[k] = v
    hf, report = convert_state_dict(split, OPENAI_RULES, keep_unmatched=False)
    if report.unmatched:
        _fail("unmapped OpenAI/open_clip keys", report.unmatched)
    return dict(hf), report.dropped


def _is_openai_layout(sd: dict) -> bool:
    return "visual.conv1.weight" in sd or "token_embedding.weight" in sd


# ---------------------------------------------------------------- public converters
_OWN_CLIP_PREFIXES = ("vision.", "text.", "text_projection", "visual_projection", "logit_scale")


def convert_clip(obj, lora: str = "keep", lora_alpha: float = LORA_ALPHA, mixup: bool = False, *,
                 trust_pickle: bool = False) -> tuple:
    """A pretrained CLIP (HF, peft-wrapped HF / debiased CLIP, OpenAI, open_clip; state dict, checkpoint dict,
    nn.Module, or path) -> (our CLIP-tower state dict, info).  Bridge modules present in the input (an official
    ``clip_lora_stage_with_bridge.pth``) are converted too; ``mixup=True`` drops their bypassed
    ``cross_gate``/``cross_adaptive_weights`` (a mixup model has none).  Load with `load_clip_into`."""
    if isinstance(obj, (str, os.PathLike)):
        obj = load_checkpoint_file(obj, trust_pickle=trust_pickle)
    sd = unwrap(obj)
    if sd and all(k.startswith("clip.") for k in sd):
        sd = {k[len("clip."):]: v for k, v in sd.items()}
    depth = set()
    stripped = {}
    for k, v in sd.items():
        rest, n = strip_peft_prefix(k)
        depth.add(n)
        stripped[rest] = v
    if stripped and all(k.startswith(_OWN_CLIP_PREFIXES) for k in stripped):
        # already our key space (e.g. hivg/pretrain_tiny.py): nothing to rename; `load_clip_into` checks it
        return dict(stripped), {"source": "vgcore", "peft_depth": sorted(depth), "dropped": []}
    if _is_openai_layout(stripped):
        hf, dropped = _openai_to_hf(stripped)
        source = "openai"
    else:
        hf, dropped = stripped, []
        source = "hf"
    out, info = _convert_hf_space(hf, lora, drop_bridge_gate=mixup, lora_alpha=lora_alpha)
    info.update(source=source, peft_depth=sorted(depth), dropped=dropped + info["dropped"])
    return out, info


# ---------------------------------------------------------------- ours -> official clip_lora_stage_with_bridge.pth
HILORA_CLIP_FILE = "clip_lora_stage_with_bridge.pth"
_B = r"blocks\.(\d+)\."
# our CLIP key -> HF CLIPModel key (the inverse of `CLIP_RULES`); LoRA and adaptive weights are handled apart
TO_HF_RULES: Rules = [("^" + p + "$", r) for p, r in [
    (r"text\.token_embedding\.weight", "text_model.embeddings.token_embedding.weight"),
    (r"text\.pos_embed", "text_model.embeddings.position_embedding.weight"),
    (r"(text|vision)\." + _B + r"attn\.(q|k|v|out)\.(weight|bias)",
     lambda m: f"{m.group(1)}_model.encoder.layers.{m.group(2)}.self_attn.{m.group(3)}_proj.{m.group(4)}"),
    (r"(text|vision)\." + _B + r"ln([12])\.(weight|bias)",
     lambda m: f"{m.group(1)}_model.encoder.layers.{m.group(2)}.layer_norm{m.group(3)}.{m.group(4)}"),
    (r"(text|vision)\." + _B + r"mlp\.(fc[12])\.(weight|bias)",
     lambda m: f"{m.group(1)}_model.encoder.layers.{m.group(2)}.mlp.{m.group(3)}.{m.group(4)}"),
    (r"text\.ln_final\.(weight|bias)", r"text_model.final_layer_norm.\1"),
    (r"vision\.class_embedding", "vision_model.embeddings.class_embedding"),
    (r"vision\.patch_embed\.weight", "vision_model.embeddings.patch_embedding.weight"),
    (r"vision\.pos_embed", "vision_model.embeddings.position_embedding.weight"),
    (r"vision\.ln_pre\.(weight|bias)", r"vision_model.pre_layrnorm.\1"),
    (r"vision\.ln_post\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"vision\." + _B + r"bridge\.norm\.(weight|bias)", r"vision_model.encoder.layers.\1.cross_norm.\2"),
    (r"vision\." + _B + r"bridge\.attn\.(q|k|v|out)\.(weight|bias)",
     r"vision_model.encoder.layers.\1.cross_attn.\2_proj.\3"),
    (r"vision\." + _B + r"bridge\.mlp\.(fc[12])\.(weight|bias)", r"vision_model.encoder.layers.\1.cross_mlp.\2.\3"),
    (r"vision\." + _B + r"bridge\.gate\.(weight|bias)", r"vision_model.encoder.layers.\1.cross_gate.\2"),
    (r"visual_projection\.weight", "visual_projection.weight"),
    (r"text_projection\.weight", "text_projection.weight"),
    (r"logit_scale", "logit_scale"),
]]
_OWN_ADAPTIVE = re.compile(r"^vision\.blocks\.(\d+)\.bridge\.adaptive_weights$")
_OWN_LORA = re.compile(r"^(.*)\.lora_([ab])$")


def export_hilora_clip(sd: dict, hi_lora_stage: int, mixup: bool = False) -> dict:
    """Our model state dict -> the official ``clip_lora_stage_with_bridge.pth`` payload
    ``{'model': {'base_model.model.' x (stage + 1) + HF CLIPModel key: tensor}}``: the CLIP towers, the one
    LoRA adapter per linear as ``<linear>.lora_A.default.weight`` [r, in] / ``lora_B.default.weight`` [out, r],
    the bridges as ``vision_model.encoder.layers.<i>.cross_*`` with ``cross_adaptive_weights.<j>.weight``, and
    the ``position_ids`` buffers of both towers.  Keys outside the CLIP towers (heads, fusion) are left out.
    ``mixup``: the official mixup model builds ``cross_gate`` / ``cross_adaptive_weights`` but bypasses them
    (ours has none); they are written as zeros of the official shapes so that the key layout is complete.
    `convert_clip` (with the same ``mixup``) reads the file back to exactly ``sd``'s CLIP entries."""
    clip = {k: v for k, v in sd.items() if k.startswith(_OWN_CLIP_PREFIXES)}
    plain, hf = {}, {}
    for k, v in clip.items():
        m = _OWN_ADAPTIVE.match(k)
        if m:
            for j, w in enumerate(v.unbind(0)):
                hf[f"vision_model.encoder.layers.{m.group(1)}.cross_adaptive_weights.{j}.weight"] = w.clone()
            continue
        m = _OWN_LORA.match(k)
        if m:
            lin = _map_one(m.group(1) + ".weight", TO_HF_RULES)
            if lin is None:
                _fail("LoRA adapter on a linear without an official name", [k])
            hf[lin[: -len("weight")] + f"lora_{m.group(2).upper()}.default.weight"] = v
            continue
        plain[k] = v
    base, report = convert_state_dict(plain, TO_HF_RULES, keep_unmatched=False)
    if report.unmatched:
        _fail("CLIP keys without an official name", report.unmatched)
    hf.update(base)
    if mixup:
        n_ctx, d_text = clip["text.pos_embed"].shape
        d_vis = clip["vision.class_embedding"].shape[0]
        like = clip["vision.class_embedding"]
        for layer in sorted({int(k.split(".")[2]) for k in clip if ".bridge.norm.weight" in k}):
            pre = f"vision_model.encoder.layers.{layer}."
            hf[pre + "cross_gate.weight"] = like.new_zeros(d_vis, d_text)
            hf[pre + "cross_gate.bias"] = like.new_zeros(d_vis)
            hf[pre + "cross_adaptive_weights.0.weight"] = like.new_zeros(n_ctx, d_text)
    for tower in ("text", "vision"):
        n = clip[f"{tower}.pos_embed"].shape[0]
        hf[f"{tower}_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.long).unsqueeze(0)
    prefix = _PEFT * (int(hi_lora_stage) + 1)
    return {"model": {prefix + k: v for k, v in hf.items()}}


def save_hilora_clip(model, output_dir) -> Path:
    """Write `export_hilora_clip` of ``model`` to ``<output_dir>/clip_lora_stage_with_bridge.pth``."""
    path = Path(output_dir) / HILORA_CLIP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(export_hilora_clip(sd, model.cfg.hi_lora_stage, mixup=model.cfg.mixup_pretrain), path)
    return path


_HEAD_RULES = [
    (r"visu_proj\.(weight|bias)", r"visu_proj.\1"),
    (r"text_proj\.(weight|bias)", r"text_proj.\1"),
    (r"reg_token\.weight", "reg_token"),
    (r"vl_pos_embed\.weight", "vl_pos_embed"),
    (r"vl_transformer\.encoder\.layers\.(\d+)\.self_attn\.in_proj_weight", r"fusion.layers.\1.in_proj.weight"),
    (r"vl_transformer\.encoder\.layers\.(\d+)\.self_attn\.in_proj_bias", r"fusion.layers.\1.in_proj.bias"),
    (r"vl_transformer\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"fusion.layers.\1.out_proj.\2"),
    (r"vl_transformer\.encoder\.layers\.(\d+)\.linear([12])\.(weight|bias)", r"fusion.layers.\1.fc\2.\3"),
    (r"vl_transformer\.encoder\.layers\.(\d+)\.norm([12])\.(weight|bias)", r"fusion.layers.\1.ln\2.\3"),
    (r"vl_transformer\.encoder\.norm\.(weight|bias)", r"fusion.norm.\1"),
    (r"bbox_embed\.layers\.(\d+)\.(weight|bias)", r"bbox_head.layers.\1.\2"),
    (r"ml_visual_projection\.(weight|bias)", r"ml_visual_projection.\1"),
    (r"visu_token_norm\.(weight|bias)", r"visu_token_norm.\1"),
    (r"visu_token_mlp\.(fc[12])\.(weight|bias)", r"visu_token_mlp.\1.\2"),
    (r"seg_conv1\.weight", "seg_upsample.0.weight"),
    (r"seg_conv2\.weight", "seg_upsample.1.weight"),
    (r"seg_conv3\.weight", "seg_upsample.2.weight"),
]
# official head key -> ours; the modules the official forward never uses are dropped
HEAD_RULES: Rules = [(r"^(ml_text_feat_perceiver|condition_text_pos_embed|reg_pos_embed)\.(weight|bias)$", None)] + \
    [("^" + p + "$", r) for p, r in _HEAD_RULES]
_COND = r"^condition_text_proj\.(weight|bias)$"  # kept by mixup models, dropped by the others


def _official_mixup_flag(obj, mixup: Optional[bool]) -> Optional[bool]:
    if mixup is not None:
        return bool(mixup)
    args = obj.get("args") if isinstance(obj, dict) else None
    if args is not None:
        a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        if "mixup_pretrain" in a:
            return bool(a["mixup_pretrain"])
    return None


def check_state_dict(sd: dict, model) -> None:
    """Raise `ConversionError` listing every missing, unexpected or wrongly shaped key of ``sd`` for ``model``."""
    missing, unexpected, mismatched = _check_against_model(model, sd)
    bad = [f"{k}: {a} vs model {b}" for k, a, b in mismatched]
    problems = [f"missing: {k}" for k in missing] + [f"unexpected: {k}" for k in unexpected] + \
        [f"shape: {b}" for b in bad]
    if problems:
        _fail("converted state dict does not match the model", problems)


def convert_official(obj, lora: str = "keep", mixup: Optional[bool] = None,
                     lora_alpha: float = LORA_ALPHA, verify: bool = True, *, trust_pickle: bool = False) -> tuple:
    """Official HiVG checkpoint (dict with 'model', the state dict itself, or a path read weights-only unless
    ``trust_pickle``) -> (state_dict, info).  Keys are renamed by `CLIP_RULES` (after the peft / LoRA
    unwrapping) and `HEAD_RULES`.

    ``mixup``: whether the checkpoint is a ``--mixup_pretrain`` model (its layout equals the 'unc' one, so it
    cannot be told from the keys); taken from ``checkpoint['args']`` when present, otherwise required.
    Mixup models keep ``condition_text_proj`` and drop the bypassed ``cross_gate``/``cross_adaptive_weights``;
    other models drop ``condition_text_proj``.  Always dropped (never used by the official forward):
    ``ml_text_feat_perceiver``, ``condition_text_pos_embed``, ``reg_pos_embed``, ``position_ids``.

    ``info``: {'config': dict for `build_model` (inferred from shapes), 'compat_batch_mixing': True,
    'hi_lora_stage': k (from the number of 'base_model.model.' wraps), 'dropped': [...], ...}.
    ``verify``: build the inferred model on the meta device (no memory) and check that the result fills
    every parameter with the right shape (`check_state_dict`), so missing keys fail here, listed.
    """
    raw = load_checkpoint_file(obj, trust_pickle=trust_pickle) if isinstance(obj, (str, os.PathLike)) else obj
    mixup = _official_mixup_flag(raw, mixup)
    sd = unwrap(raw)
    if mixup is None:
        raise ValueError("cannot tell a --mixup_pretrain checkpoint from a 'unc' one by its keys and the file has "
                         "no 'args': pass mixup=True/False")
    clip, heads, original = {}, {}, {}
    depths = set()
    for k, v in sd.items():
        if k.startswith("clip."):
            rest, n = strip_peft_prefix(k[len("clip."):])
            depths.add(n)
            clip[rest] = v
            original[rest] = k
        else:
            heads[k] = v
    if not clip:
        raise ConversionError("no 'clip.' keys: not an official HiVG checkpoint")
    if len(depths) != 1:
        raise ConversionError(f"mixed peft nesting depths {sorted(depths)} in one checkpoint")
    depth = depths.pop()
    out, info = _convert_hf_space(clip, lora, drop_bridge_gate=mixup, lora_alpha=lora_alpha)
    dropped = [original[k] for k in info["dropped"]]  # original checkpoint key names
    head_sd, report = convert_state_dict(heads, [(_COND, r"\g<0>" if mixup else None)] + list(HEAD_RULES),
                                         keep_unmatched=False)
    if report.unmatched:
        _fail("unmapped official HiVG keys", report.unmatched)
    out.update(head_sd)
    dropped += report.dropped
    stage = max(depth - 1, 0)
    info.update(dropped=dropped, hi_lora_stage=stage, peft_depth=depth, compat_batch_mixing=True)
    rank = 0 if lora == "merge_drop" else (info["lora_rank"] or 0)
    info["config"] = infer_official_config(sd, mixup=mixup, lora_rank=rank, stage=stage)
    if verify:
        from .model import build_model
        with torch.device("meta"):
            check_state_dict(out, build_model(info["config"]))
    return out, info


def infer_official_config(sd: dict, mixup: bool = False, lora_rank: Optional[int] = None,
                          stage: Optional[int] = None) -> dict:
    """Config dict for `hivg.build_model` from the shapes of an official HiVG state dict (any stage).

    Inferred: backbone dims, image size, bridge layers, bridge text layers (from the number of adaptive
    weights: 1 -> [L], 2 -> [L/2, L], L -> 1..L), fusion depth/FFN/pre-norm, token MLP width, LoRA rank.
    Not inferable and left at the official defaults: fusion heads (8), dropout (0.1)."""
    from .config import BACKBONES
    c = {}
    for k, v in sd.items():
        if k.startswith("clip."):
            rest, _ = strip_peft_prefix(k[len("clip."):])
            c[rest.replace(".base_layer.", ".")] = v
    pe = c["vision_model.embeddings.patch_embedding.weight"]
    vis_w, patch = pe.shape[0], pe.shape[-1]
    n_pos = c["vision_model.embeddings.position_embedding.weight"].shape[0]
    grid = int(math.isqrt(n_pos - 1))
    backbone = {768: "ViT-B/16", 1024: "ViT-L/14"}.get(vis_w, "custom")
    layer_ids = lambda tower: {int(k.split(".")[3]) for k in c if k.startswith(f"{tower}.encoder.layers.")}  # noqa
    n_vis, n_txt = len(layer_ids("vision_model")), len(layer_ids("text_model"))
    bridge = sorted({int(k.split(".")[3]) for k in c if ".cross_norm." in k})
    n_text_states = len({k for k in c if ".cross_adaptive_weights." in k and k.startswith(
        f"vision_model.encoder.layers.{bridge[0]}.")}) if bridge else 1
    if n_text_states == 1:
        text_layers = [n_txt]
    elif n_text_states == 2:
        text_layers = [n_txt // 2, n_txt]
    elif n_text_states == n_txt:
        text_layers = list(range(1, n_txt + 1))
    else:
        raise ValueError(f"{n_text_states} adaptive-weight tables: no official dataset rule gives that")
    txt_w = c["text_model.embeddings.token_embedding.weight"].shape[1]
    embed = c["text_projection.weight"].shape[0]
    fusion_layers = len({int(k.split(".")[3]) for k in sd if k.startswith("vl_transformer.encoder.layers.")})
    ml = sd["ml_visual_projection.weight"].shape[1] // vis_w
    if lora_rank is None:
        a = [v for k, v in c.items() if ".lora_A." in k]
        lora_rank = a[0].shape[0] if a else 0
    defaults = BACKBONES.get(backbone, {})
    extract = defaults.get("extract_vision_layers") if backbone in BACKBONES else None
    if extract is None or len(extract) != ml:
        raise ValueError(f"cannot infer extract_vision_layers for a {backbone} model with {ml} levels")
    return dict(
        backbone=backbone, image_size=grid * patch, patch_size=patch, vision_width=vis_w, vision_layers=n_vis,
        vision_heads=vis_w // 64, vision_mlp=c["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        text_width=txt_w, text_layers=n_txt, text_heads=txt_w // 64,
        text_mlp=c["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        vocab_size=c["text_model.embeddings.token_embedding.weight"].shape[0],
        context_length=c["text_model.embeddings.position_embedding.weight"].shape[0],
        embed_dim=embed, extract_vision_layers=list(extract), bridge_layers=bridge,
        bridge_text_layers=text_layers, mixup_pretrain=bool(mixup), adaptive_weights=not mixup,
        fusion_layers=fusion_layers, fusion_ffn=sd["vl_transformer.encoder.layers.0.linear1.weight"].shape[0],
        fusion_pre_norm="vl_transformer.encoder.norm.weight" in sd,
        token_mlp_dim=sd["visu_token_mlp.fc1.weight"].shape[0], lora_rank=int(lora_rank),
        hi_lora_stage=int(stage or 0), compat_batch_mixing=True,
    )


def load_clip_into(model, clip_sd: dict, reinit_ml_projection: bool = True) -> dict:
    """Load a `convert_clip` result into a HiVG model.  Every CLIP base parameter of the model must be
    provided (else `ConversionError`); keys the model does not have raise too.  Bridge/LoRA entries are
    loaded when present (missing ones keep their init).  Then ml_visual_projection is re-initialised from
    the loaded visual projection, as the official constructor does."""
    own = model.state_dict()
    extra = [k for k in clip_sd if k not in own]
    if extra:
        _fail("CLIP keys the model does not have", extra)
    missing = [k for k in model.clip_parameter_names() if k not in clip_sd]
    if missing:
        _fail("CLIP parameters missing from the converted weights", missing)
    bad = [f"{k}: {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in clip_sd.items()
           if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        _fail("shape mismatches", bad)
    model.load_state_dict(clip_sd, strict=False)
    if reinit_ml_projection:
        model.init_ml_visual_projection()
    return {"loaded": len(clip_sd)}


def load_official_model(src, mixup: Optional[bool] = None, lora: str = "keep", *, trust_pickle: bool = False,
                        **config_overrides):
    """Official checkpoint (path or dict) -> (HiVG model in eval mode, info).  The model is built from the
    config inferred from the checkpoint shapes (batch mixing ON, as the released weights need) plus
    ``config_overrides`` (e.g. ``compat_batch_mixing=False``), and loaded strictly."""
    from .model import build_model
    sd, info = convert_official(src, lora=lora, mixup=mixup, trust_pickle=trust_pickle)
    cfg = dict(info["config"])
    cfg.update(config_overrides)
    with torch.device("meta"):
        model = build_model(cfg)
    load_strict(model, sd, assign=True, what=str(src) if isinstance(src, (str, os.PathLike)) else "")
    return model.eval(), info


# ---------------------------------------------------------------- command line
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hivg.convert", description=__doc__.split("\n")[0])
    ap.add_argument("--src", required=True, help="official checkpoint, debiased/HF/OpenAI CLIP file or HF folder")
    ap.add_argument("--dst", required=True, help="output .pth: {'model': state_dict, 'config': ..., 'info': ...}")
    ap.add_argument("--kind", choices=["auto", "official", "clip"], default="auto")
    ap.add_argument("--lora", choices=["keep", "merge", "merge_drop"], default="keep")
    ap.add_argument("--mixup", choices=["auto", "yes", "no"], default="auto",
                    help="official checkpoints only: is it a --mixup_pretrain model (auto: read checkpoint['args'])")
    ap.add_argument("--trust_pickle", action="store_true",
                    help="unpickle --src fully if a weights-only load refuses it (e.g. an OpenAI TorchScript CLIP "
                         "archive; it can run code stored in the file): trusted files only")
    a = ap.parse_args(argv)
    raw = load_checkpoint_file(a.src, trust_pickle=a.trust_pickle)
    sd = unwrap(raw)
    kind = a.kind
    if kind == "auto":
        kind = "official" if any(k.startswith("clip.") for k in sd) and any(
            k.startswith("vl_transformer.") for k in sd) else "clip"
    if kind == "official":
        mix = None if a.mixup == "auto" else a.mixup == "yes"
        out, info = convert_official(raw, lora=a.lora, mixup=mix)
        payload = {"model": out, "config": info["config"],
                   "info": {k: v for k, v in info.items() if k != "config"}}
    else:
        out, info = convert_clip(raw, lora=a.lora)
        payload = {"model": out, "info": info}
    torch.save(payload, a.dst)
    print(f"{a.src} -> {a.dst}: {len(out)} tensors ({kind}; dropped {len(info['dropped'])}; "
          f"compat_batch_mixing={info.get('compat_batch_mixing', False)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
