"""Self-attention with 2-D relative-position logits (VLTVG's ``MHAttentionRPE``), on scaled_dot_product_attention.

For tokens on an H x W grid (row-major), head h, query i and key j::

    logit_h(i, j) = s q_i . k_j + s q_i . Ry_h[dy(i, j)] + s q_i . Rx_h[dx(i, j)],   s = d_head^-1/2

where dy(i, j) = y_i - y_j and dx = x_i - x_j are differences of the 1-based row / column counts of valid
cells (cumulative sums of the inverted padding mask, so padding shifts nothing after it), and the tables
Ry = T_y W_k[:, :D/2]^T, Rx = T_x W_k[:, D/2:]^T project fixed sine tables T [n_offsets, D/2] through the
key projection weight without its bias (the first half of the key input channels stands for y, the second
for x, as in the DETR sine PE).  T row r holds offset (lo + r); each offset o is normalised to
o / (hi + 1e-6) * 2 pi and encoded as DETR does (sin on even, cos on odd channels, frequency
10000^(2 floor(c/2) / (D/2))).  ``learnable=True`` makes T a trained ``nn.Embedding`` table instead.

Weights: ``in_proj_weight`` [3D, D], ``in_proj_bias`` [3D], ``out_proj`` (nn.MultiheadAttention layout),
``pos_x`` / ``pos_y`` buffers [n_offsets, D/2] (or ``pos_x.weight`` / ``pos_y.weight`` when learnable).
With ``relative=False`` the module is plain multi-head attention with the same parameters.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RelPosAttention", "relative_sine_table", "grid_positions"]


def relative_sine_table(lo: int, hi: int, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """[hi - lo + 1, num_feats] sine table of the integer offsets lo..hi, normalised by hi (see module doc)."""
    offsets = torch.arange(lo, hi + 1, dtype=torch.float32)
    offsets = offsets / (hi + 1e-6) * (2 * math.pi)
    c = torch.arange(num_feats, dtype=torch.float32)
    freq = temperature ** (2 * torch.div(c, 2, rounding_mode="floor") / num_feats)
    arg = offsets[:, None] / freq
    return torch.stack((arg[:, 0::2].sin(), arg[:, 1::2].cos()), dim=-1).flatten(1)


def grid_positions(padding_mask: Optional[torch.Tensor], batch: int, grid: Tuple[int, int],
                   device) -> Tuple[torch.Tensor, torch.Tensor]:
    """1-based (y, x) counts of valid cells, each [B, H*W] float; ``padding_mask`` [B, H*W] (True = pad) or None."""
    H, W = grid
    if padding_mask is None:
        valid = torch.ones(batch, H, W, dtype=torch.bool, device=device)
    else:
        valid = ~padding_mask.view(batch, H, W)
    y = valid.cumsum(1, dtype=torch.float32).view(batch, -1)
    x = valid.cumsum(2, dtype=torch.float32).view(batch, -1)
    return y, x


class RelPosAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, x_range=(-20, 20), y_range=(-20, 20),
                 relative: bool = True, learnable: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        self.relative = relative
        self.x_range, self.y_range = tuple(x_range), tuple(y_range)
        if relative:
            half = embed_dim // 2
            tx = relative_sine_table(*self.x_range, half)
            ty = relative_sine_table(*self.y_range, half)
            if learnable:
                self.pos_x = nn.Embedding(tx.shape[0], half)
                self.pos_y = nn.Embedding(ty.shape[0], half)
            else:
                self.register_buffer("pos_x", tx)
                self.register_buffer("pos_y", ty)

    def _table(self, name: str) -> torch.Tensor:
        t = getattr(self, name)
        return t.weight if isinstance(t, nn.Embedding) else t

    def _relative_bias(self, q: torch.Tensor, w_k: torch.Tensor, grid, padding_mask) -> torch.Tensor:
        """[B, h, N, N] additive logits s q . R[offset]."""
        B, Hh, N, dh = q.shape
        H, W = grid
        (ylo, yhi), (xlo, xhi) = self.y_range, self.x_range
        if H - 1 > min(-ylo, yhi) or W - 1 > min(-xlo, xhi):
            raise ValueError(f"RelPosAttention: a {H}x{W} grid needs offsets up to {H - 1}/{W - 1}, "
                             f"tables cover y {self.y_range}, x {self.x_range}")
        half = self.embed_dim // 2
        ry = self._table("pos_y") @ w_k[:, :half].t()          # [n_y, D]
        rx = self._table("pos_x") @ w_k[:, half:].t()          # [n_x, D]
        ry = ry.view(-1, Hh, dh).permute(1, 2, 0)               # [h, dh, n_y]
        rx = rx.view(-1, Hh, dh).permute(1, 2, 0)
        qs = q * dh ** -0.5
        by, bx = qs @ ry, qs @ rx                               # [B, h, N, n]
        y, x = grid_positions(padding_mask, B, grid, q.device)
        iy = (y[:, :, None] - y[:, None, :] - ylo).long()[:, None].expand(B, Hh, N, N)
        ix = (x[:, :, None] - x[:, None, :] - xlo).long()[:, None].expand(B, Hh, N, N)
        return by.gather(-1, iy) + bx.gather(-1, ix)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, grid: Tuple[int, int],
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """query / key / value [B, N, D] on an H x W grid (N = H*W); key_padding_mask [B, N] True = pad."""
        D, Hh = self.embed_dim, self.num_heads
        B, N, _ = query.shape
        if N != grid[0] * grid[1] or key.shape[1] != N:
            raise ValueError(f"RelPosAttention: {N} queries / {key.shape[1]} keys for a {grid} grid")
        w_q, w_k, w_v = self.in_proj_weight.split(D)
        b_q, b_k, b_v = self.in_proj_bias.split(D)
        q = F.linear(query, w_q, b_q).view(B, N, Hh, D // Hh).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(B, N, Hh, D // Hh).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(B, N, Hh, D // Hh).transpose(1, 2)
        mask = None
        if self.relative:
            mask = self._relative_bias(q, w_k, grid, key_padding_mask)
            if key_padding_mask is not None:
                mask = mask.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        elif key_padding_mask is not None:
            mask = (~key_padding_mask)[:, None, None, :]
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, D))
