"""DETR-style transformer layers (post-norm, as detrex ``BaseTransformerLayer`` builds them for DETR).

Conventions
-----------
* **Batch first** everywhere: sequences are [B, L, D].
* Padding masks are bool [B, L] with **True = padding** (ignored as keys).
* Positions are *added to queries and keys, never to values* (DETR): self-attention uses
  q = k = x + query_pos, v = x; cross-attention uses q = x + query_pos, k = memory + key_pos, v = memory.
* Post-norm order: self_attn -> norm1 -> cross_attn -> norm2 -> ffn -> norm3, each with an identity residual.
* Attention = `torch.nn.MultiheadAttention` maths (packed ``in_proj_weight`` [3D, D], dropout on the
  attention weights) computed with ``F.scaled_dot_product_attention``.  Keeping the packed layout makes
  official nn.MultiheadAttention / detrex checkpoints convert by renaming only.

Parameter names (ours; official detrex name in brackets):
``layers.{i}.self_attn.{in_proj_weight,in_proj_bias,out_proj.*}`` [attentions.0.attn.*],
``layers.{i}.cross_attn.*`` [attentions.1.attn.*], ``layers.{i}.ffn.linear1/linear2`` [ffns.0.layers.0.0 /
ffns.0.layers.1], ``layers.{i}.norm1/2/3`` [norms.0/1/2], ``post_norm`` [post_norm_layer].
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiheadAttention", "FFN", "DetrDecoderLayer", "DetrEncoderLayer", "DetrDecoder", "DetrEncoder",
           "key_padding_to_attn_mask", "layer_outputs"]


def layer_outputs(logits: torch.Tensor, boxes: torch.Tensor) -> dict:
    """Every decoder layer's predictions [n, B, Q, ...] -> the set-criterion layout: ``pred_logits`` /
    ``pred_boxes`` of the last layer and ``aux_outputs`` (a list of {pred_logits, pred_boxes}) of the others."""
    return {"pred_logits": logits[-1], "pred_boxes": boxes[-1],
            "aux_outputs": [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]}


def key_padding_to_attn_mask(key_padding_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """[B, Lk] bool (True = pad) -> SDPA boolean mask [B, 1, 1, Lk] (True = attend), or None."""
    if key_padding_mask is None:
        return None
    return (~key_padding_mask.bool())[:, None, None, :]


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention-compatible weights, batch-first, SDPA kernel, no residual."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None, need_weights: bool = False):
        """query [B, Lq, D], key/value [B, Lk, D]; key_padding_mask [B, Lk] True = pad;
        attn_mask optional SDPA-style mask broadcastable to [B, H, Lq, Lk] (bool True = attend, or additive).

        Returns [B, Lq, D]; with ``need_weights`` returns (output, weights [B, Lq, Lk]) where weights are the
        head-averaged attention probabilities *after* attention dropout (nn.MultiheadAttention's
        ``average_attn_weights=True`` behaviour), computed explicitly instead of with SDPA."""
        D, H = self.embed_dim, self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.split(D)
        b_q, b_k, b_v = self.in_proj_bias.split(D)
        B, Lq, _ = query.shape
        Lk = key.shape[1]
        q = F.linear(query, w_q, b_q).view(B, Lq, H, D // H).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(B, Lk, H, D // H).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(B, Lk, H, D // H).transpose(1, 2)
        mask = key_padding_to_attn_mask(key_padding_mask)
        if attn_mask is not None:
            if mask is None:
                mask = attn_mask
            elif attn_mask.dtype == torch.bool:
                mask = mask & attn_mask
            else:
                mask = attn_mask.masked_fill(~mask, float("-inf"))
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q * (D // H) ** -0.5) @ k.transpose(-1, -2)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            attn = F.dropout(scores.softmax(-1), p, self.training)
            out = self.out_proj((attn @ v).transpose(1, 2).reshape(B, Lq, D))
            return out, attn.mean(1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, D))


class FFN(nn.Module):
    """linear1 -> ReLU -> dropout -> linear2 -> dropout (residual added by the layer)."""

    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(embed_dim, feedforward_dim)
        self.linear2 = nn.Linear(feedforward_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))


def _add(x, pos):
    return x if pos is None else x + pos


class DetrDecoderLayer(nn.Module):
    """Post-norm DETR decoder layer: self_attn, norm1, cross_attn, norm2, ffn, norm3."""

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, feedforward_dim: int = 2048,
                 attn_dropout: float = 0.1, ffn_dropout: float = 0.1):
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dim, num_heads, attn_dropout)
        self.cross_attn = MultiheadAttention(embed_dim, num_heads, attn_dropout)
        self.ffn = FFN(embed_dim, feedforward_dim, ffn_dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.norm3 = nn.LayerNorm(embed_dim)

    def forward(self, tgt, memory, query_pos=None, key_pos=None, memory_padding_mask=None,
                tgt_padding_mask=None):
        q = k = _add(tgt, query_pos)
        tgt = self.norm1(tgt + self.self_attn(q, k, tgt, key_padding_mask=tgt_padding_mask))
        tgt = self.norm2(tgt + self.cross_attn(_add(tgt, query_pos), _add(memory, key_pos), memory,
                                               key_padding_mask=memory_padding_mask))
        return self.norm3(tgt + self.ffn(tgt))


class DetrEncoderLayer(nn.Module):
    """Post-norm DETR encoder layer: self_attn, norm1, ffn, norm2."""

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, feedforward_dim: int = 2048,
                 attn_dropout: float = 0.1, ffn_dropout: float = 0.1):
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dim, num_heads, attn_dropout)
        self.ffn = FFN(embed_dim, feedforward_dim, ffn_dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(self, x, pos=None, padding_mask=None):
        q = k = _add(x, pos)
        x = self.norm1(x + self.self_attn(q, k, x, key_padding_mask=padding_mask))
        return self.norm2(x + self.ffn(x))


class DetrDecoder(nn.Module):
    """A stack of `DetrDecoderLayer` with an optional shared final LayerNorm (``post_norm``).

    forward(...) returns [num_layers, B, Lq, D] (every layer output, each through ``post_norm``) when
    ``return_intermediate`` else [1, B, Lq, D] (the last layer, through ``post_norm``).
    """

    def __init__(self, num_layers: int, embed_dim: int = 256, num_heads: int = 8, feedforward_dim: int = 2048,
                 attn_dropout: float = 0.1, ffn_dropout: float = 0.1, post_norm: bool = True,
                 return_intermediate: bool = True):
        super().__init__()
        layer = DetrDecoderLayer(embed_dim, num_heads, feedforward_dim, attn_dropout, ffn_dropout)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.post_norm = nn.LayerNorm(embed_dim) if post_norm else None
        self.return_intermediate = return_intermediate

    def _norm(self, x):
        return x if self.post_norm is None else self.post_norm(x)

    def forward(self, tgt, memory, query_pos=None, key_pos=None, memory_padding_mask=None,
                tgt_padding_mask=None) -> torch.Tensor:
        outs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, query_pos, key_pos, memory_padding_mask, tgt_padding_mask)
            if self.return_intermediate:
                outs.append(self._norm(tgt))
        return torch.stack(outs) if self.return_intermediate else self._norm(tgt)[None]


class DetrEncoder(nn.Module):
    """A stack of `DetrEncoderLayer` with an optional final LayerNorm; returns [B, L, D]."""

    def __init__(self, num_layers: int, embed_dim: int = 256, num_heads: int = 8, feedforward_dim: int = 2048,
                 attn_dropout: float = 0.1, ffn_dropout: float = 0.1, post_norm: bool = False):
        super().__init__()
        layer = DetrEncoderLayer(embed_dim, num_heads, feedforward_dim, attn_dropout, ffn_dropout)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.post_norm = nn.LayerNorm(embed_dim) if post_norm else None

    def forward(self, x, pos=None, padding_mask=None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, pos, padding_mask)
        return x if self.post_norm is None else self.post_norm(x)
