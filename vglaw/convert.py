"""Official VG-LAW / ViTDet / BERT checkpoints -> our `vglaw.model.VGLAW` state dict.

Three sources, each converted by explicit rules with a report ``{"unmapped": [...], "dropped": [...]}``
(``unmapped`` must be empty: a key no rule covers is an error, never silently skipped):

1. **VG-LAW MindSpore checkpoint** (``law_fpt_vit_*_shareSD_mt.ckpt`` or a training ``.ckpt``), read without
   MindSpore by `read_mindspore_ckpt` (the protobuf ``Checkpoint{repeated Value{tag, TensorProto{dims,
   tensor_type, tensor_content}}}``).  Rules (official -> ours):

   * ``*.gamma`` / ``*.beta`` (LayerNorm) -> ``*.weight`` / ``*.bias``; ``*.embedding_table`` -> ``*.weight``
   * BERT: ``attention.self_attn.`` -> ``attention.self.``; ``layer_norm.`` -> ``LayerNorm.``
   * ``weight_generator.S`` [3C, K, 1] / ``.D`` [K, C, 1] (conv1d kernels) -> [3C, K] / [K, C];
     ``weight_generator.layer_embedding`` [L, 1, C] -> [L, C]
   * everything else keeps its name (``visual_encoder.*``, ``weight_generator.proj.*``, ``ada_gap.*``,
     ``up_sample.*``, ``bbox_pred.layers.*``)
   * dropped: optimizer state (``moment1.*``, ``moment2.*``, ``accumulate_*``, ``zeros_*``, ``counter_``,
     ``global_step``, ``learning_rate``, ``beta1_power``, ``beta2_power``) and ``*.S_D.*`` aliases of S / D.

   Every official checkpoint implies `OFFICIAL_COMPAT`.

2. **detectron2 ViTDet Mask R-CNN** (``model_final_61ccd1.pkl``): a pickle holding ``{"model": {name: ndarray}}``.
   It is read by `read_detectron2_pickle` with a *restricted* unpickler that reconstructs only numpy arrays /
   dtypes / scalars and builtin containers; any other global in the file is refused (the file is data, never
   code).  ``backbone.net.X`` -> ``visual_encoder.X`` (``blocks.i.`` kept); relative-position tables longer
   than the target grid (127 rows for the global blocks at 1024 px) are centre-cropped to 2*size-1 rows
   (55 at 448 px), as the authors did; window tables (27) are unchanged.  ``backbone.simfp_*``,
   ``proposal_generator.*``, ``roi_heads.*`` and pixel mean/std buffers are dropped.
   The MindSpore conversion of that file (bare ViT, ``{i}.norm1.gamma`` ...) is accepted too.

3. **HF bert-base-uncased** (``pytorch_model.bin`` / ``model.safetensors``): ``[bert.]embeddings.*``,
   ``[bert.]encoder.layer.{0..n-1}.*`` and ``[bert.]pooler.*`` -> ``text_encoder.*``; deeper layers and the
   pretraining heads (``cls.*``) are dropped (VG-LAW keeps the first 6 layers).

Pretrained (partial) weights load with `load_partial`: every key of the model under the given prefixes must
be provided, with the right shape.

CLI: ``python -m vglaw.convert --src law.ckpt --dst ours.pth`` (VG-LAW), ``--src model_final_61ccd1.pkl``
(ViTDet backbone) or ``--src bert-dir/pytorch_model.bin`` (BERT) writes ``{"model", "config", "compat",
"report", "kind"}``.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from vgcore.cli import parse_key_values

from vgcore.checkpoint import load_plain_pickle, load_strict

__all__ = ["OFFICIAL_COMPAT", "COMPAT_FROM_SPEC", "read_mindspore_ckpt", "write_mindspore_ckpt",
           "read_detectron2_pickle", "map_key", "convert_vglaw_state_dict", "convert_vitdet_backbone",
           "convert_hf_bert", "config_from_official", "config_from_state_dict", "load_into", "load_partial",
           "load_pretrained", "main"]

OFFICIAL_COMPAT = {"pos_embed_tf_bicubic": True, "vit_ln_eps_1e5": True, "generator_ln_eps_1e7": True}

# golden spec.json compat names -> our switches
COMPAT_FROM_SPEC = {"pos_embed_bicubic": "pos_embed_tf_bicubic", "vit_block_layernorm_eps_1e-5": "vit_ln_eps_1e5",
                    "weight_generator_layernorm_eps_1e-7": "generator_ln_eps_1e7"}

# ----------------------------------------------------------------------------------- MindSpore .ckpt (protobuf)
_MS_DTYPES = {"Float32": np.float32, "Float16": np.float16, "Float64": np.float64, "Int8": np.int8,
              "Int16": np.int16, "Int32": np.int32, "Int64": np.int64, "UInt8": np.uint8, "UInt16": np.uint16,
              "UInt32": np.uint32, "UInt64": np.uint64, "Bool": np.bool_}


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    out, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7


def _fields(buf: bytes) -> Iterable[Tuple[int, int, object]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values are bytes."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 2:
            ln, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + ln], pos + ln
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"MindSpore checkpoint: unsupported protobuf wire type {wt}")
        yield num, wt, val


def _tensor_proto(buf: bytes) -> Tuple[List[int], str, bytes]:
    dims, dtype, content = [], "", b""
    for num, wt, val in _fields(buf):
        if num == 1:
            if wt == 2:  # packed
                p = 0
                while p < len(val):
                    d, p = _varint(val, p)
                    dims.append(d)
            else:
                dims.append(val)
        elif num == 2:
            dtype = val.decode()
        elif num == 3:
            content = val
    return dims, dtype, content


def read_mindspore_ckpt(path_or_bytes) -> Dict[str, torch.Tensor]:
    """name -> tensor of a MindSpore ``.ckpt`` (plain protobuf, not encrypted).  Parameters saved in several
    slices (repeated entries with the same name) are concatenated in order."""
    buf = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes).read_bytes()
    parts: Dict[str, list] = {}
    for num, wt, val in _fields(bytes(buf)):
        if num != 1 or wt != 2:
            continue
        tag, tensor = None, None
        for n2, _, v2 in _fields(val):
            if n2 == 1:
                tag = v2.decode()
            elif n2 == 2:
                tensor = _tensor_proto(v2)
        if tag is None or tensor is None:
            continue  # map tensors and other entries carry no dense parameter
        parts.setdefault(tag, []).append(tensor)
    out = {}
    for tag, chunks in parts.items():
        dims, dtype = chunks[0][0], chunks[0][1]
        if dtype not in _MS_DTYPES:
            raise ValueError(f"MindSpore checkpoint: {tag}: unsupported tensor_type {dtype!r}")
        raw = b"".join(c[2] for c in chunks)
        arr = np.frombuffer(raw, dtype=_MS_DTYPES[dtype]).copy()
        out[tag] = torch.from_numpy(arr.reshape(dims) if dims else arr.reshape(()))
    return out


def _key(num: int, wt: int) -> bytes:
    return _enc_varint((num << 3) | wt)


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _enc_varint(len(payload)) + payload


def write_mindspore_ckpt(sd: Dict[str, torch.Tensor], path=None) -> bytes:
    """The MindSpore ``.ckpt`` bytes of a name -> tensor dict (for tests and exports); written to ``path`` if given."""
    names = {np.dtype(v).name: k for k, v in _MS_DTYPES.items()}
    out = bytearray()
    for tag, t in sd.items():
        arr = t.detach().cpu().contiguous().numpy()
        tp = b"".join(_key(1, 0) + _enc_varint(d) for d in arr.shape)
        tp += _ld(2, names[arr.dtype.name].encode()) + _ld(3, arr.tobytes())
        out += _ld(1, _ld(1, tag.encode()) + _ld(2, tp))
    if path is not None:
        Path(path).write_bytes(bytes(out))
    return bytes(out)


# ----------------------------------------------------------------------------------- detectron2 pickle
def read_detectron2_pickle(path) -> Dict[str, torch.Tensor]:
    """name -> tensor of a detectron2 model-zoo ``.pkl`` (``{"model": {...}}`` or a bare dict), read with
    `vgcore.checkpoint.load_plain_pickle` (builtin containers and numpy arrays only).  Non-array entries are
    skipped."""
    obj = load_plain_pickle(path, allow_numpy=True)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in obj.items() if isinstance(v, np.ndarray)}


# ----------------------------------------------------------------------------------- VG-LAW official names
_DROP_VGLAW = re.compile(r"^(moment1\.|moment2\.|accumulate_|zeros_|counter_$|global_step$|learning_rate$|"
                         r"beta1_power$|beta2_power$)|\.S_D\.\d$")
_VGLAW_RULES = [
    (re.compile(r"^text_encoder\.(embeddings\.(word|position|token_type)_embeddings)\.embedding_table$"), r"text_encoder.\1.weight"),
    (re.compile(r"^text_encoder\.(.*)\.layer_norm\.gamma$"), r"text_encoder.\1.LayerNorm.weight"),
    (re.compile(r"^text_encoder\.(.*)\.layer_norm\.beta$"), r"text_encoder.\1.LayerNorm.bias"),
    (re.compile(r"^text_encoder\.encoder\.layer\.(\d+)\.attention\.self_attn\.(query|key|value)\.(weight|bias)$"),
     r"text_encoder.encoder.layer.\1.attention.self.\2.\3"),
    (re.compile(r"^text_encoder\.(encoder\.layer\.\d+\.(attention\.output|intermediate|output)\.dense|pooler\.dense)"
                r"\.(weight|bias)$"), r"text_encoder.\1.\3"),
    (re.compile(r"^visual_encoder\.(pos_embed|patch_embed\.proj\.(weight|bias))$"), r"visual_encoder.\1"),
    (re.compile(r"^visual_encoder\.blocks\.(\d+)\.(norm[12])\.gamma$"), r"visual_encoder.blocks.\1.\2.weight"),
    (re.compile(r"^visual_encoder\.blocks\.(\d+)\.(norm[12])\.beta$"), r"visual_encoder.blocks.\1.\2.bias"),
    (re.compile(r"^visual_encoder\.blocks\.(\d+)\.(attn\.(qkv|proj)\.(weight|bias)|attn\.rel_pos_[hw]|"
                r"mlp\.fc[12]\.(weight|bias))$"), r"visual_encoder.blocks.\1.\2"),
    (re.compile(r"^weight_generator\.(S|D|layer_embedding)$"), r"weight_generator.\1"),
    (re.compile(r"^weight_generator\.proj\.(\d+)\.([03])\.(weight|bias)$"), r"weight_generator.proj.\1.\2.\3"),
    (re.compile(r"^weight_generator\.proj\.(\d+)\.1\.gamma$"), r"weight_generator.proj.\1.1.weight"),
    (re.compile(r"^weight_generator\.proj\.(\d+)\.1\.beta$"), r"weight_generator.proj.\1.1.bias"),
    (re.compile(r"^ada_gap\.(q_proj|k_proj)\.(weight|bias)$"), r"ada_gap.\1.\2"),
    (re.compile(r"^up_sample\.([013])\.(weight|bias)$"), r"up_sample.\1.\2"),
    (re.compile(r"^bbox_pred\.layers\.(\d+)\.(weight|bias)$"), r"bbox_pred.layers.\1.\2"),
]
_SQUEEZE = {"weight_generator.S": -1, "weight_generator.D": -1, "weight_generator.layer_embedding": 1}


def map_key(key: str) -> Optional[str]:
    """One official VG-LAW (MindSpore) name -> ours, or None when no rule applies."""
    for pat, rep in _VGLAW_RULES:
        if pat.match(key):
            return pat.sub(rep, key)
    return None


def convert_vglaw_state_dict(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Official VG-LAW state dict -> (ours, report{"unmapped", "dropped", "compat"}).  Works on meta tensors."""
    out, unmapped, dropped = {}, [], []
    for k, v in sd.items():
        if _DROP_VGLAW.search(k):
            dropped.append(k)
            continue
        new = map_key(k)
        if new is None:
            unmapped.append(k)
            continue
        if new in _SQUEEZE and v.ndim == 3:
            v = v.squeeze(_SQUEEZE[new])
        out[new] = v
    return out, {"unmapped": unmapped, "dropped": dropped, "compat": dict(OFFICIAL_COMPAT)}


# ----------------------------------------------------------------------------------- ViTDet backbone
_VIT_BLOCK = re.compile(r"^blocks\.(\d+)\.(norm[12]\.(weight|bias)|attn\.(qkv|proj)\.(weight|bias)|attn\.rel_pos_[hw]|"
                        r"mlp\.fc[12]\.(weight|bias))$")
_VIT_TOP = re.compile(r"^(pos_embed|patch_embed\.proj\.(weight|bias))$")
_D2_DROP = re.compile(r"^(backbone\.simfp_\d+\.|proposal_generator\.|roi_heads\.|pixel_(mean|std)$)")


def _crop_rel(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] <= rows:
        return t
    cut = (t.shape[0] - rows) // 2
    return t[cut:cut + rows]


def _vit_name(key: str) -> Tuple[Optional[str], bool]:
    """detectron2 (``backbone.net.``) or bare MindSpore ViT name -> our ``visual_encoder.`` name; the flag says
    the key was recognised as droppable (non-backbone)."""
    if _D2_DROP.match(key):
        return None, True
    k = key[len("backbone.net."):] if key.startswith("backbone.net.") else key
    m = re.match(r"^(\d+)\.(.*)$", k)  # MindSpore bare ViT: blocks without the 'blocks.' prefix
    if m:
        k = f"blocks.{m.group(1)}.{m.group(2)}"
    k = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))
    if _VIT_TOP.match(k) or _VIT_BLOCK.match(k):
        return "visual_encoder." + k, False
    return None, False


def convert_vitdet_backbone(sd: Dict[str, torch.Tensor], img_size: int = 448, patch_size: int = 16,
                            window_size: int = 14, global_blocks: Sequence[int] = (2, 5, 8, 11)
                            ) -> Tuple[Dict[str, torch.Tensor], dict]:
    """detectron2 ViTDet (or its MindSpore conversion) -> ``visual_encoder.*`` with rel-pos tables
    centre-cropped to the target geometry.  Returns (state dict, report{"unmapped", "dropped", "cropped"})."""
    grid = img_size // patch_size
    out, unmapped, dropped, cropped = {}, [], [], []
    for k, v in sd.items():
        new, drop = _vit_name(k)
        if drop:
            dropped.append(k)
            continue
        if new is None:
            unmapped.append(k)
            continue
        m = re.match(r"visual_encoder\.blocks\.(\d+)\.attn\.rel_pos_[hw]$", new)
        if m:
            size = grid if int(m.group(1)) in global_blocks else window_size
            rows = 2 * size - 1
            if v.shape[0] > rows:
                v = _crop_rel(v, rows)
                cropped.append(k)
        out[new] = v
    return out, {"unmapped": unmapped, "dropped": dropped, "cropped": cropped}


# ----------------------------------------------------------------------------------- HF BERT
def convert_hf_bert(sd: Dict[str, torch.Tensor], num_layers: int = 6) -> Tuple[Dict[str, torch.Tensor], dict]:
    """HF ``bert-base-uncased`` weights -> ``text_encoder.*`` keeping the first ``num_layers`` layers."""
    out, unmapped, dropped = {}, [], []
    for k, v in sd.items():
        name = k[len("bert."):] if k.startswith("bert.") else k
        if name.startswith("cls.") or name == "embeddings.position_ids":
            dropped.append(k)
            continue
        m = re.match(r"^encoder\.layer\.(\d+)\.", name)
        if m and int(m.group(1)) >= num_layers:
            dropped.append(k)
            continue
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")  # very old HF dumps
        if re.match(r"^(embeddings\.|encoder\.layer\.\d+\.|pooler\.dense\.)", name):
            out["text_encoder." + name] = v
        else:
            unmapped.append(k)
    return out, {"unmapped": unmapped, "dropped": dropped}


# ----------------------------------------------------------------------------------- configs and loading
def config_from_official(cfg: dict) -> dict:
    """The official run configuration (spec / args: law_type, img_size, text_encoder_layer, groups,
    use_activation, max_len, use_mask, ...) -> our `build_model` config dict."""
    out = dict(law_type=cfg.get("law_type", "svd"), img_size=cfg.get("img_size", 448),
               bert_layers=cfg.get("text_encoder_layer", 6), max_len=cfg.get("max_len", 40),
               groups=cfg.get("groups"), use_activation=bool(cfg.get("use_activation", False)),
               task="both",  # the official network always builds both heads; use_mask only switches the mask loss
               mask_threshold=cfg.get("mask_threshold", 0.35))
    vis = cfg.get("visual_encoder", {})
    for ours, theirs in (("patch_size", "patch_size"), ("embed_dim", "embed_dim"), ("depth", "depth"),
                         ("num_heads", "num_heads"), ("mlp_ratio", "mlp_ratio"), ("drop_path_rate", "drop_path_rate"),
                         ("window_size", "window_size"), ("global_blocks", "global_block_indexes"),
                         ("pretrain_img_size", "pretrain_img_size")):
        if theirs in vis:
            out[ours] = vis[theirs]
    txt = cfg.get("text_encoder", {})
    for ours, theirs in (("vocab_size", "vocab_size"), ("bert_hidden", "hidden"), ("bert_heads", "heads"),
                         ("bert_intermediate", "intermediate"), ("max_position_embeddings", "max_position_embeddings")):
        if theirs in txt:
            out[ours] = txt[theirs]
    gen = cfg.get("weight_generator", {})
    if "svd_rank_K" in gen:
        out["rank"] = gen["svd_rank_K"]
    return out


def config_from_state_dict(sd: Dict[str, torch.Tensor], **overrides) -> dict:
    """Infer a `build_model` config from an official VG-LAW state dict (shapes only; meta tensors are fine)."""
    pe = sd["visual_encoder.patch_embed.proj.weight"]
    C, patch = pe.shape[0], pe.shape[-1]
    blocks = sorted({int(m.group(1)) for k in sd for m in [re.match(r"visual_encoder\.blocks\.(\d+)\.", k)] if m})
    layers = sorted({int(m.group(1)) for k in sd for m in [re.match(r"text_encoder\.encoder\.layer\.(\d+)\.", k)] if m})
    rows = {i: sd[f"visual_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] for i in blocks}
    window = min(rows.values())
    global_rows = max(rows.values())
    global_blocks = [i for i in blocks if rows[i] == global_rows and global_rows != window]
    grid = (global_rows + 1) // 2 if global_blocks else (window + 1) // 2
    n_pos = sd["visual_encoder.pos_embed"].shape[1] - 1
    cfg = dict(embed_dim=C, patch_size=patch, depth=len(blocks), window_size=(window + 1) // 2,
               global_blocks=global_blocks, img_size=grid * patch, pretrain_img_size=int(round(n_pos ** 0.5)) * patch,
               bert_layers=len(layers), vocab_size=sd["text_encoder.embeddings.word_embeddings.embedding_table"].shape[0],
               bert_hidden=sd["text_encoder.embeddings.word_embeddings.embedding_table"].shape[1])
    cfg["num_heads"] = C // sd["visual_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    cfg["mlp_ratio"] = sd["visual_encoder.blocks.0.mlp.fc1.weight"].shape[0] / C
    cfg["bert_intermediate"] = sd["text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0]
    cfg["max_position_embeddings"] = sd["text_encoder.embeddings.position_embeddings.embedding_table"].shape[0]
    # head counts of BERT and of the generator's token attention are not in the shapes: 64-d heads assumed
    cfg["bert_heads"] = cfg["generator_heads"] = max(1, cfg["bert_hidden"] // 64)
    if "ada_gap.q_proj.weight" in sd:
        cfg["pool_dim"] = sd["ada_gap.q_proj.weight"].shape[0]
        cfg["box_hidden"] = sd["bbox_pred.layers.0.weight"].shape[0]
    if "up_sample.0.weight" in sd:
        cfg["mask_hidden"] = sd["up_sample.0.weight"].shape[1]
    if "weight_generator.S" in sd:
        cfg["law_type"], cfg["rank"] = "svd", sd["weight_generator.S"].shape[1]
    elif "law_type" not in overrides:
        raise ValueError("no weight_generator.S: an la/od checkpoint, whose law type (and la group counts) the "
                         "shapes cannot tell apart; pass law_type (and groups)")
    n_adapted = sd["weight_generator.layer_embedding"].shape[0]
    if n_adapted != len(blocks) and "groups" not in overrides:
        raise ValueError(f"{n_adapted} of {len(blocks)} blocks adapted: pass groups (0 = block not adapted)")
    has_rec, has_res = any(k.startswith("bbox_pred.") for k in sd), any(k.startswith("up_sample.") for k in sd)
    cfg["task"] = "both" if has_rec and has_res else ("rec" if has_rec else "res")
    cfg.update(overrides)
    return cfg


def load_into(model, sd_ours: Dict[str, torch.Tensor], assign: bool = False) -> None:
    """Strict load (`vgcore.checkpoint.load_strict`): one error naming missing / unexpected / mis-shaped keys."""
    load_strict(model, sd_ours, what="VG-LAW", assign=assign)


def load_partial(model, sd_ours: Dict[str, torch.Tensor], prefixes: Sequence[str]) -> None:
    """Load pretrained weights covering exactly the model keys under ``prefixes`` (strict on that subset)."""
    others = "^(?!" + "|".join(re.escape(p) for p in prefixes) + ")"
    load_strict(model, sd_ours, allow_missing=[others], what=f"VG-LAW pretrained ({', '.join(prefixes)})")


def load_pretrained(model, vitdet=None, bert=None) -> dict:
    """Fill a fresh `VGLAW` from the pretrained sources: ``vitdet`` = detectron2 ``.pkl`` (or its MindSpore
    ``.ckpt`` / a converted state dict), ``bert`` = HF BERT weights file or state dict.  Each part is loaded
    strictly (every key under ``visual_encoder.`` / ``text_encoder.`` provided, shapes equal).  Returns the
    conversion reports."""
    reports = {}
    cfg = model.cfg
    if vitdet is not None:
        sd = vitdet if isinstance(vitdet, dict) else _read_any(str(vitdet))[0]
        ours, rep = convert_vitdet_backbone(sd, img_size=cfg.img_size, patch_size=cfg.patch_size,
                                            window_size=cfg.window_size, global_blocks=cfg.global_blocks)
        if rep["unmapped"]:
            raise KeyError(f"ViTDet checkpoint: unmapped keys {rep['unmapped']}")
        load_partial(model, ours, ["visual_encoder."])
        reports["vitdet"] = rep
    if bert is not None:
        sd = bert if isinstance(bert, dict) else _read_any(str(bert))[0]
        ours, rep = convert_hf_bert(sd, cfg.bert_layers)
        if rep["unmapped"]:
            raise KeyError(f"BERT checkpoint: unmapped keys {rep['unmapped']}")
        load_partial(model, ours, ["text_encoder."])
        reports["bert"] = rep
    return reports


# ----------------------------------------------------------------------------------- CLI
def _read_any(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    p = Path(path)
    if p.suffix == ".ckpt":
        return read_mindspore_ckpt(p), "mindspore"
    if p.suffix == ".pkl":
        return read_detectron2_pickle(p), "detectron2"
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(p)), "torch"
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    return obj, "torch"


def _kind(sd: Dict[str, torch.Tensor]) -> str:
    if any(k.startswith("weight_generator.") for k in sd):
        return "vglaw"
    if any(k.startswith(("backbone.net.", "pos_embed", "0.attn.")) for k in sd):
        return "vitdet"
    if any(k.startswith(("bert.", "embeddings.word_embeddings")) for k in sd):
        return "bert"
    raise ValueError("unrecognised checkpoint: neither VG-LAW, ViTDet nor BERT key names")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Convert an official VG-LAW (.ckpt), detectron2 ViTDet (.pkl) or HF "
                                            "BERT checkpoint to VG-LAW PyTorch names.")
    p.add_argument("--src", required=True, help="VG-LAW MindSpore .ckpt, detectron2 .pkl, or BERT .bin/.safetensors")
    p.add_argument("--dst", required=True, help="output .pth (dict with model/config/compat/report/kind)")
    p.add_argument("--img-size", type=int, default=448, help="ViTDet: target input size (crops rel-pos tables)")
    p.add_argument("--bert-layers", type=int, default=6, help="BERT: number of layers kept")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="VG-LAW checkpoints: override an inferred config key (value parsed as JSON), repeatable")
    a = p.parse_args(argv)
    overrides = parse_key_values(a.set)
    sd, _ = _read_any(a.src)
    kind = _kind(sd)
    if kind == "vglaw":
        ours, report = convert_vglaw_state_dict(sd)
        cfg = config_from_state_dict(sd, **overrides)
        cfg.update(report["compat"])
    elif kind == "vitdet":
        ours, report = convert_vitdet_backbone(sd, img_size=a.img_size)
        cfg = {"img_size": a.img_size}
    else:
        ours, report = convert_hf_bert(sd, a.bert_layers)
        cfg = {"bert_layers": a.bert_layers}
    if report["unmapped"]:
        print(f"unmapped keys ({len(report['unmapped'])}):", *report["unmapped"], sep="\n  ", file=sys.stderr)
        return 1
    if kind == "vglaw":
        from vglaw.model import build_model
        with torch.device("meta"):
            model = build_model(cfg)
        load_into(model, {k: v.to("meta") for k, v in ours.items()}, assign=True)
    torch.save({"model": ours, "config": cfg, "compat": report.get("compat", {}), "report": report, "kind": kind}, a.dst)
    print(f"wrote {a.dst}: {kind}, {len(ours)} tensors; dropped {len(report['dropped'])}"
          + (f", cropped {len(report['cropped'])}" if "cropped" in report else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
