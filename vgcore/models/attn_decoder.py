"""A DETR-style decoder that also returns every layer's cross-attention map (ALVG's attention supervision).

Conventions as in `vgcore.models.detr`: batch first ([B, L, D]), key padding masks bool with True = padding,
positions added to queries and keys but never to values, attention = `vgcore.models.detr.MultiheadAttention`
(packed ``in_proj_weight``, nn.MultiheadAttention maths).

Layer (post-norm; ``tgt`` the queries, ``Q`` their position, ``M`` the memory, ``P`` its position)::

    t1 = norm1(tgt + drop(self_attn(q = k = tgt + Q, v = tgt)))
    o, A = cross_attn(q = t1 + Q, k = M + P, v = M)           A = head-averaged weights [B, Lq, Lk]
    t2 = norm2(base + drop(o))      base = t1 + Q  (``residual_includes_query_pos``)  or  t1
    t3 = norm3(t2 + ffn(t2))        ffn = linear2(drop(relu(linear1(.)))) then drop

``A`` is taken after attention dropout in training (nn.MultiheadAttention's behaviour), so in training a row
sums to about, not exactly, 1.

Decoder: ``chain_layers=True`` feeds each layer the previous layer's output (a standard stacked decoder);
``chain_layers=False`` feeds every layer the *same* initial target, so the "layers" are independent one-layer
decoders on the same memory and query positions (the official ALVG code does this: its loop passes the
original target to every layer).  Either way every layer's output and map is returned; there is no final
LayerNorm.

Parameter names: ``layers.{i}.self_attn.*``, ``layers.{i}.cross_attn.*`` (packed in_proj + out_proj),
``layers.{i}.ffn.linear1/linear2``, ``layers.{i}.norm1/norm2/norm3`` in the order of use above.
"""
from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
from torch import nn

from .detr import FFN, MultiheadAttention

__all__ = ["AttnMapDecoderLayer", "AttnMapDecoder"]


def _add(x, pos):
    return x if pos is None else x + pos


class AttnMapDecoderLayer(nn.Module):
    def __init__(self, embed_dim: int = 256, num_heads: int = 8, feedforward_dim: int = 2048, dropout: float = 0.1,
                 residual_includes_query_pos: bool = False):
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dim, num_heads, dropout)
        self.cross_attn = MultiheadAttention(embed_dim, num_heads, dropout)
        self.ffn = FFN(embed_dim, feedforward_dim, dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.norm3 = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.residual_includes_query_pos = residual_includes_query_pos

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, query_pos: Optional[torch.Tensor] = None,
                key_pos: Optional[torch.Tensor] = None, memory_padding_mask: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """tgt [B, Lq, D], memory [B, Lk, D] -> (output [B, Lq, D], attention map [B, Lq, Lk])."""
        q = k = _add(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, k, tgt)))
        q = _add(tgt, query_pos)
        o, attn = self.cross_attn(q, _add(memory, key_pos), memory, key_padding_mask=memory_padding_mask,
                                  need_weights=True)
        tgt = self.norm2((q if self.residual_includes_query_pos else tgt) + self.dropout(o))
        return self.norm3(tgt + self.ffn(tgt)), attn


class AttnMapDecoder(nn.Module):
    """``num_layers`` `AttnMapDecoderLayer`; forward -> (outputs [n, B, Lq, D], attention maps [n, B, Lq, Lk])."""

    def __init__(self, num_layers: int, embed_dim: int = 256, num_heads: int = 8, feedforward_dim: int = 2048,
                 dropout: float = 0.1, chain_layers: bool = True, residual_includes_query_pos: bool = False):
        super().__init__()
        layer = AttnMapDecoderLayer(embed_dim, num_heads, feedforward_dim, dropout, residual_includes_query_pos)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.chain_layers = chain_layers

    @property
    def residual_includes_query_pos(self) -> bool:
        return self.layers[0].residual_includes_query_pos if len(self.layers) else False

    @residual_includes_query_pos.setter
    def residual_includes_query_pos(self, value: bool) -> None:
        for layer in self.layers:
            layer.residual_includes_query_pos = bool(value)

    def forward(self, tgt, memory, query_pos=None, key_pos=None, memory_padding_mask=None):
        outs, maps = [], []
        x = tgt
        for layer in self.layers:
            y, attn = layer(x if self.chain_layers else tgt, memory, query_pos, key_pos, memory_padding_mask)
            outs.append(y)
            maps.append(attn)
            x = y
        return torch.stack(outs), torch.stack(maps)
