"""HiVG configuration: one dataclass, backbone presets, and the mapping from the official argparse flags.

Layer-index conventions (as the official code counts them):
  * ``extract_vision_layers``: HF ``hidden_states`` indices (0 = embeddings, i = output of block i-1) whose
    tokens are concatenated into the multi-level visual feature (B/16: [1,4,8,12]; L/14: [6,12,18,24]).
  * ``bridge_layers``: 0-based vision blocks that carry a bridge (B/16: [0,3,7,11]; L/14: [4,10,16,22];
    [] for the large model's first warm-up phase, ``--warmup``).
  * ``bridge_text_layers``: HF text ``hidden_states`` indices fed to the bridge, chosen by the dataset flag
    (unc/flickr/other: [12]; unc+/referit: [6,12]; gref_umd/gref: [1..12]).  Ignored with ``mixup_pretrain``
    (the bridge then reads ``condition_text_proj(text_projection(last_hidden_state))``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["HiVGConfig", "BACKBONES", "PRESETS", "bridge_text_layers_for", "config_from_any"]


@dataclass
class HiVGConfig:
    backbone: str = "ViT-B/16"
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp: int = 3072
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp: int = 2048
    vocab_size: int = 49408
    context_length: int = 77
    embed_dim: int = 512  # CLIP projection dim == fusion width (official vl_hidden_dim)
    extract_vision_layers: list = field(default_factory=lambda: [1, 4, 8, 12])
    bridge_layers: list = field(default_factory=lambda: [0, 3, 7, 11])
    dataset: str = "unc"
    bridge_text_layers: Optional[list] = None  # None -> derived from `dataset`
    mixup_pretrain: bool = False
    adaptive_weights: bool = True
    # fusion encoder (official defaults: 6 layers, 8 heads, FFN 2048, dropout 0.1, pre-norm)
    fusion_layers: int = 6
    fusion_heads: int = 8
    fusion_ffn: int = 2048
    fusion_dropout: float = 0.1
    fusion_pre_norm: bool = True
    token_mlp_dim: int = 3072  # visu_token_mlp hidden width (hard-coded 3072 officially)
    # Hi LoRA
    lora_rank: int = 32
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    hi_lora_stage: int = 0
    hilora_stage_layers: list = field(default_factory=lambda: [5, 8, 12])  # leading vision blocks per stage 1..3
    # initial (frozen) contrastive temperature: CLIP's trained value for pretrained towers; the from-scratch
    # presets start from CLIP's own initialisation, ln(1/0.07), since a scale of 100 on random features
    # collapses the contrastive term to its chance value ln(B) (measured on the synthetic data)
    logit_scale_init: float = 4.605170185988092  # ln(100)
    # position tables at random init: "clip" = CLIP's random tables and HiVG's N(0, 1) vl_pos_embed (what every
    # pretrained tower overwrites anyway); "sincos" = 2-D sine tables on the patch rows of both (the vision table
    # times ``sincos_vision_scale``), for from-scratch presets: the [REG] token reads the box out of patch tokens
    # whose only position signal comes from the vision table, and a smooth one is learned from in a few hundred
    # steps where a random one is not (hivg/README.md, "Learning diagnosis")
    pos_init: str = "clip"
    sincos_vision_scale: float = 1.5
    # compat switches
    compat_batch_mixing: bool = False

    def __post_init__(self):
        if self.bridge_text_layers is None:
            self.bridge_text_layers = bridge_text_layers_for(self.dataset, self.text_layers)
        self.extract_vision_layers = [int(i) for i in self.extract_vision_layers]
        self.bridge_layers = [int(i) for i in self.bridge_layers]
        self.bridge_text_layers = [int(i) for i in self.bridge_text_layers]
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for i in self.extract_vision_layers:
            if not 0 <= i <= self.vision_layers:
                raise ValueError(f"extract_vision_layers index {i} outside 0..{self.vision_layers}")
        for i in self.bridge_text_layers:
            if not 0 <= i <= self.text_layers:
                raise ValueError(f"bridge_text_layers index {i} outside 0..{self.text_layers}")
        if self.pos_init not in ("clip", "sincos"):
            raise ValueError(f"pos_init must be 'clip' or 'sincos', got {self.pos_init!r}")
        if not 0 <= self.hi_lora_stage <= 3:
            raise ValueError(f"hi_lora_stage must be 0..3, got {self.hi_lora_stage}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_visu_tokens(self) -> int:
        return self.grid ** 2

    @property
    def fusion_len(self) -> int:
        return 1 + 1 + self.num_visu_tokens + self.context_length  # REG, CLS, patches, text

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def bridge_text_layers_for(dataset: str, text_layers: int = 12) -> list:
    """Official dataset -> text layers rule, scaled to a text tower of ``text_layers`` blocks."""
    d = (dataset or "").lower()
    if d in ("gref_umd", "gref"):
        return list(range(1, text_layers + 1))
    if d in ("unc+", "unc_plus", "referit"):
        return [max(1, text_layers // 2), text_layers]
    return [text_layers]


BACKBONES = {
    "ViT-B/16": dict(patch_size=16, vision_width=768, vision_layers=12, vision_heads=12, vision_mlp=3072,
                     text_width=512, text_layers=12, text_heads=8, text_mlp=2048, embed_dim=512,
                     extract_vision_layers=[1, 4, 8, 12], bridge_layers=[0, 3, 7, 11]),
    "ViT-L/14": dict(patch_size=14, vision_width=1024, vision_layers=24, vision_heads=16, vision_mlp=4096,
                     text_width=768, text_layers=12, text_heads=12, text_mlp=3072, embed_dim=768,
                     extract_vision_layers=[6, 12, 18, 24], bridge_layers=[4, 10, 16, 22]),
}

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature (a from-scratch tower starts here)

# Small random-init presets with the same architecture (for tests, synthetic training, smoke runs).
PRESETS = {
    "hivg-b16": dict(backbone="ViT-B/16", **BACKBONES["ViT-B/16"]),
    "hivg-l14": dict(backbone="ViT-L/14", **BACKBONES["ViT-L/14"]),
    # tiny: measured on the synthetic data (hivg/README.md, "Tiny preset"): width 64 steps ~35%
    # faster than width 128 and learns at least as fast per step; 4 fusion layers beat 2 and 6
    "hivg-tiny": dict(backbone="tiny", image_size=128, patch_size=16, vision_width=64, vision_layers=4,
                      vision_heads=2, vision_mlp=256, text_width=64, text_layers=2, text_heads=2, text_mlp=256,
                      embed_dim=64, extract_vision_layers=[1, 2, 3, 4], bridge_layers=[0, 1, 2, 3],
                      fusion_layers=4, fusion_heads=4, fusion_ffn=256, token_mlp_dim=128, lora_rank=8,
                      lora_alpha=4.0, hilora_stage_layers=[1, 2, 4], logit_scale_init=CLIP_INIT_LOGIT_SCALE,
                      pos_init="sincos"),
}

_OFFICIAL_ARG_MAP = {  # official argparse name -> config field
    "imsize": "image_size", "max_query_len": "context_length", "vl_nheads": "fusion_heads",
    "vl_dim_feedforward": "fusion_ffn", "vl_enc_layers": "fusion_layers", "vl_dropout": "fusion_dropout",
    "normalize_before": "fusion_pre_norm", "enable_adaptive_weights": "adaptive_weights",
    "dataset": "dataset", "mixup_pretrain": "mixup_pretrain", "hi_lora_stage": "hi_lora_stage",
}
_IGNORED_OFFICIAL = {"model", "warmup", "vl_hidden_dim"}


def config_from_any(cfg: Any = None, **overrides) -> HiVGConfig:
    """Build a `HiVGConfig` from a preset name, a dict / Namespace (our field names or the official flags
    ``model, dataset, hi_lora_stage, warmup, mixup_pretrain, enable_adaptive_weights, imsize, max_query_len,
    vl_hidden_dim, vl_nheads, vl_dim_feedforward, vl_enc_layers, vl_dropout, normalize_before``), or a config.

    A ``preset`` key (or a string argument) picks the base from `PRESETS`; ``model``/``backbone`` =
    "ViT-B/16" | "ViT-L/14" picks the backbone dims.  Unknown keys raise.
    """
    if isinstance(cfg, HiVGConfig):
        d = cfg.to_dict()
    elif cfg is None:
        d = {}
    elif isinstance(cfg, str):
        d = {"preset": cfg}
    elif isinstance(cfg, argparse.Namespace):
        d = dict(vars(cfg))
    elif isinstance(cfg, dict):
        d = dict(cfg)
    else:
        raise TypeError(f"cannot build a HiVG config from {type(cfg).__name__}")
    d.update(overrides)
    fields = {f.name for f in dataclasses.fields(HiVGConfig)}
    out: dict = {}
    preset = d.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise KeyError(f"unknown HiVG preset {preset!r}; known: {sorted(PRESETS)}")
        out.update(PRESETS[preset])
    model = d.pop("model", None) or d.get("backbone")
    if model is not None and model in BACKBONES and preset is None:
        out["backbone"] = model
        out.update(BACKBONES[model])
    warmup = bool(d.pop("warmup", False))
    vl_hidden = d.pop("vl_hidden_dim", None)
    unknown = []
    for k, v in d.items():
        if k in fields:
            out[k] = v
        elif k in _OFFICIAL_ARG_MAP:
            out[_OFFICIAL_ARG_MAP[k]] = v
        elif k in _IGNORED_OFFICIAL:
            pass
        else:
            unknown.append(k)
    if unknown:
        raise KeyError(f"unknown HiVG config keys: {sorted(unknown)}")
    if warmup:
        out["bridge_layers"] = []
    cfg_obj = HiVGConfig(**out)
    if vl_hidden is not None and int(vl_hidden) != cfg_obj.embed_dim:
        raise ValueError(f"vl_hidden_dim {vl_hidden} must equal the CLIP projection dim {cfg_obj.embed_dim} "
                         f"(official: 512 for ViT-B/16, 768 for ViT-L/14)")
    return cfg_obj
