"""VG-LAW (CVPR'23): language-adaptive weights for multi-task visual grounding.

A 6-layer BERT encodes the expression (T [B, 40, 768]).  The weight generator turns T into one vector per
ViT block; each block's qkv is modulated by it (law types svd / la / od1-3, see `vglaw.law`).  The ViTDet
ViT-B then runs on the image alone (the language enters only through the weights) and gives F_v [B, 768, 28, 28].
Heads, both queried by the [CLS] last hidden state q = T[:, 0]:

* REC: attention pooling (single head, 64-d q/k projections, values = raw visual tokens) -> MLP
  768-256-256-4 -> sigmoid: ``pred_box`` [B, 4], normalised (cx, cy, w, h) of the padded input.
* RES: ConvT(768->256, 2, 2) -> channel LayerNorm -> GELU -> ConvT(256->768, 2, 2) -> dot product with q ->
  [B, 1, H/4, W/4] -> bilinear x4 (align_corners=True): ``logit_mask`` [B, 1, H, W] raw logits
  (binarise with sigmoid > ``mask_threshold``).

``build_model(args)`` builds `VGLAW` from a dict, argparse Namespace or `VGLAWConfig` (``preset`` picks a
`PRESETS` entry first).  ``task`` = "both" | "rec" | "res" selects the heads.

Forward: ``model(images, input_ids, attention_mask, token_type_ids=None)`` (attention_mask 1 = real token;
the text must be padded to ``max_len`` tokens), or ``model(batch)`` with a `vgcore.data.sample.Batch`
(``images``, ``text_ids``, ``text_mask``) -> dict with ``pred_box`` / ``logit_mask`` (by task) and the
intermediates ``ada_weights`` (list of [B, n_l]), ``text_features`` [B, T, C], ``layer_text_features``
[L, B, C], ``vit_features`` [B, C, h, w], ``pooled_visual`` [B, C] (REC), ``mask_logits_low`` (RES).

Compat switches (ON for the official checkpoints, see `vglaw.convert.OFFICIAL_COMPAT`):
``pos_embed_tf_bicubic`` (TensorFlow-style bicubic resize of the absolute positions), ``vit_ln_eps_1e5``
(ViT block LayerNorm eps 1e-5 instead of detectron2's 1e-6), ``generator_ln_eps_1e7`` (weight-generator
LayerNorm eps 1e-7 instead of 1e-5).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vgcore.models.mlp import MLP
from vgcore.models.precision import fp32

from vglaw.law import LAW_TYPES, WeightGenerator
from vglaw.vit import ViT

__all__ = ["VGLAWConfig", "VGLAW", "PRESETS", "build_model", "config_from_args", "LayerNorm2d", "AttentionPool"]


@dataclass
class VGLAWConfig:
    # language-adaptive weights
    law_type: str = "svd"                  # svd | la | od1 | od2 | od3
    rank: int = 32                         # svd inner rank K (a is K*K long)
    groups: Optional[List[int]] = None     # per block: 0 = not adapted, g = la group count; None = all, 1 group
    use_activation: bool = False           # ReLU on the generated vectors
    generator_heads: int = 12
    # visual encoder (ViTDet)
    img_size: int = 448
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    window_size: int = 14
    global_blocks: List[int] = field(default_factory=lambda: [2, 5, 8, 11])
    pretrain_img_size: int = 224
    # text encoder (BERT)
    bert_layers: int = 6
    bert_hidden: int = 768
    bert_heads: int = 12
    bert_intermediate: int = 3072
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    bert_dropout: float = 0.1
    max_len: int = 40
    # heads
    task: str = "both"                     # both | rec | res
    pool_dim: int = 64
    box_hidden: int = 256
    mask_hidden: int = 256
    mask_threshold: float = 0.35
    # compat switches (official quirks)
    pos_embed_tf_bicubic: bool = False
    vit_ln_eps_1e5: bool = False
    generator_ln_eps_1e7: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: Dict[str, dict] = {
    "vitb": {},
    # a CPU-sized model for the synthetic data and tests: 128 px, 4 ViT blocks of 64 channels (windows of 4 x 4
    # patches, blocks 1 and 3 global), a 2-layer BERT of 64 channels; vocab_size comes from the tokenizer
    "tiny": dict(img_size=128, embed_dim=64, depth=4, num_heads=4, window_size=4, global_blocks=[1, 3],
                 pretrain_img_size=128, drop_path_rate=0.0, bert_layers=2, bert_hidden=64, bert_heads=4,
                 bert_intermediate=128, max_position_embeddings=64, bert_dropout=0.0, generator_heads=4, rank=8,
                 pool_dim=16, box_hidden=32, mask_hidden=32),
}


def config_from_args(args: Any = None, **overrides) -> VGLAWConfig:
    """A `VGLAWConfig` from a dict (only config fields and ``preset``), a Namespace (other attributes ignored)
    or a config; ``overrides`` win."""
    if isinstance(args, VGLAWConfig):
        d, strict = args.to_dict(), True
    elif isinstance(args, argparse.Namespace):
        d, strict = vars(args), False
    else:
        d, strict = dict(args or {}), True
    d = {**d, **overrides}
    names = {f.name for f in fields(VGLAWConfig)}
    kw: dict = {}
    preset = d.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise KeyError(f"unknown VG-LAW preset {preset!r}; choose from {sorted(PRESETS)}")
        kw.update(PRESETS[preset])
    unknown = sorted(k for k in d if k not in names and k != "preset")
    if strict and unknown:
        raise KeyError(f"unknown VG-LAW config keys: {unknown}")
    kw.update({k: v for k, v in d.items() if k in names})
    cfg = VGLAWConfig(**kw)
    if cfg.law_type not in LAW_TYPES:
        raise ValueError(f"law_type {cfg.law_type!r} not in {LAW_TYPES}")
    if cfg.task not in ("both", "rec", "res"):
        raise ValueError(f"task {cfg.task!r} not in ('both', 'rec', 'res')")
    if cfg.groups is not None and len(cfg.groups) != cfg.depth:
        raise ValueError(f"groups has {len(cfg.groups)} entries for {cfg.depth} blocks")
    if cfg.law_type != "la" and cfg.groups is not None and any(g > 1 for g in cfg.groups):
        raise ValueError(f"group counts > 1 exist only for law_type 'la' (got {cfg.groups})")
    return cfg


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of [B, C, H, W] (biased variance)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class AttentionPool(nn.Module):
    """Single-head attention of a query over tokens with ``dim``-d q/k projections; values are the raw tokens."""

    def __init__(self, in_dim: int, dim: int = 64):
        super().__init__()
        self.q_proj = nn.Linear(in_dim, dim)
        self.k_proj = nn.Linear(in_dim, dim)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """query [B, C], tokens [B, N, C] -> [B, C]."""
        q = self.q_proj(query)[:, None, None]                    # [B, 1, 1, d]
        k = self.k_proj(tokens)[:, None]                         # [B, 1, N, d]
        return F.scaled_dot_product_attention(q, k, tokens[:, None])[:, 0, 0]


def _bert(cfg: VGLAWConfig):
    from transformers import BertConfig, BertModel
    bc = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.bert_hidden, num_hidden_layers=cfg.bert_layers,
                    num_attention_heads=cfg.bert_heads, intermediate_size=cfg.bert_intermediate, hidden_act="gelu",
                    hidden_dropout_prob=cfg.bert_dropout, attention_probs_dropout_prob=cfg.bert_dropout,
                    max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=2, layer_norm_eps=1e-12)
    return BertModel(bc, add_pooling_layer=True)  # the pooler is kept (official checkpoints carry it), never used


class VGLAW(nn.Module):
    def __init__(self, cfg: VGLAWConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.embed_dim
        groups = cfg.groups if cfg.groups is not None else [1] * cfg.depth
        self.adapted = [i for i, g in enumerate(groups) if g > 0]
        self.text_encoder = _bert(cfg)
        self.visual_encoder = ViT(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=C, depth=cfg.depth, num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio, drop_path_rate=cfg.drop_path_rate, window_size=cfg.window_size,
            global_blocks=cfg.global_blocks, pretrain_img_size=cfg.pretrain_img_size,
            block_ln_eps=1e-5 if cfg.vit_ln_eps_1e5 else 1e-6, pos_embed_tf_bicubic=cfg.pos_embed_tf_bicubic,
            law_type=cfg.law_type, groups=groups)
        channels = [(C, 3 * C, groups[i]) for i in self.adapted]
        self.weight_generator = WeightGenerator(
            channels, dim=cfg.bert_hidden, law_type=cfg.law_type, rank=cfg.rank, num_heads=cfg.generator_heads,
            use_activation=cfg.use_activation, ln_eps=1e-7 if cfg.generator_ln_eps_1e7 else 1e-5)
        if cfg.task in ("both", "rec"):
            self.ada_gap = AttentionPool(C, cfg.pool_dim)
            self.bbox_pred = MLP(C, cfg.box_hidden, 4, 3)
        if cfg.task in ("both", "res"):
            self.up_sample = nn.Sequential(
                nn.ConvTranspose2d(C, cfg.mask_hidden, 2, 2), LayerNorm2d(cfg.mask_hidden, eps=1e-6), nn.GELU(),
                nn.ConvTranspose2d(cfg.mask_hidden, cfg.bert_hidden, 2, 2))
            for m in (self.up_sample[0], self.up_sample[3]):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.normal_(m.bias, std=0.01)

    @property
    def has_rec(self) -> bool:
        return self.cfg.task in ("both", "rec")

    @property
    def has_res(self) -> bool:
        return self.cfg.task in ("both", "res")

    def encode_text(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return self.text_encoder(input_ids=input_ids.long(), attention_mask=attention_mask.long(),
                                 token_type_ids=token_type_ids.long()).last_hidden_state

    def forward(self, images, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        if input_ids is None:  # a vgcore Batch
            batch = images
            images, input_ids, attention_mask = batch.images, batch.text_ids, batch.text_mask.long()
        text = self.encode_text(input_ids, attention_mask, token_type_ids)
        ada, layer_feats = self.weight_generator(text, attention_mask != 1)
        per_block: List[Optional[torch.Tensor]] = [None] * self.cfg.depth
        for i, a in zip(self.adapted, ada):
            per_block[i] = a
        vis = self.visual_encoder(images, per_block, self.weight_generator.shared)
        cls = text[:, 0]
        out: Dict[str, Any] = {"ada_weights": ada, "text_features": text, "layer_text_features": layer_feats,
                               "vit_features": vis}
        if self.has_rec:
            pooled = self.ada_gap(cls, vis.flatten(2).transpose(1, 2))
            out["pooled_visual"] = pooled
            out["pred_box"] = fp32(lambda x: self.bbox_pred(x).sigmoid(), pooled)  # float32 under --amp
        if self.has_res:
            pix = self.up_sample(vis)
            low = torch.einsum("bc,bchw->bhw", cls, pix)[:, None]
            out["mask_logits_low"] = low
            out["logit_mask"] = F.interpolate(low, size=images.shape[-2:], mode="bilinear", align_corners=True)
        return out


def build_model(args: Any = None, **overrides) -> VGLAW:
    return VGLAW(config_from_args(args, **overrides))
