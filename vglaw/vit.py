"""ViTDet plain ViT backbone (window + global attention, decomposed relative positions) with adaptive qkv.

Geometry of ViT-B for VG-LAW: 448 input, patch 16 (28 x 28 tokens), 12 blocks, windows of 14 x 14 in every
block except the global blocks 2/5/8/11, relative-position tables of 2*size-1 rows (27 window, 55 global),
absolute positions stored at the 224 pretraining grid (1 + 14*14 rows, cls slot first) and resized to the
input grid on every forward.  Output: the last block's feature map [B, C, H/16, W/16] (no pyramid).

Compat switches (both ON for the official model):
* ``pos_embed_tf_bicubic``: the resize uses TensorFlow-style bicubic (Keys a = -0.5, half-pixel centres,
  taps outside the grid dropped and the rest renormalised); off = torch bicubic (a = -0.75, clamped borders).
* ``block_ln_eps``: LayerNorm eps of the blocks (official 1e-5; detectron2 ViTDet 1e-6).

``grad_ckpt = True`` (``--grad_ckpt``): each block (with its language-adaptive qkv vector and the shared svd
pair as inputs) is recomputed in the backward pass instead of keeping its activations; outputs and gradients
are those of the plain run (drop-path draws the same numbers in the recomputation).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vgcore.models.checkpointing import checkpoint_call

from vglaw.law import AdaptiveLinear

__all__ = ["tf_bicubic_matrix", "resize_abs_pos", "ViT"]


def _keys_cubic(t: torch.Tensor, a: float) -> torch.Tensor:
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def tf_bicubic_matrix(n_in: int, n_out: int, a: float = -0.5, dtype=torch.float64) -> torch.Tensor:
    """[n_out, n_in] interpolation matrix of TensorFlow-style bicubic resizing along one axis (half-pixel
    centres, Keys kernel with ``a``; taps outside [0, n_in) get weight 0 and each row is renormalised)."""
    src = (torch.arange(n_out, dtype=dtype) + 0.5) * (n_in / n_out) - 0.5
    base = torch.floor(src)
    taps = base[:, None] + torch.arange(-1, 3, dtype=dtype)[None]          # [n_out, 4]
    w = _keys_cubic(src[:, None] - taps, a)
    inside = (taps >= 0) & (taps < n_in)
    w = torch.where(inside, w, torch.zeros_like(w))
    w = w / w.sum(1, keepdim=True)
    m = torch.zeros(n_out, n_in, dtype=dtype)
    m.scatter_add_(1, taps.clamp(0, n_in - 1).long(), w)
    return m


def resize_abs_pos(pos: torch.Tensor, hw: Tuple[int, int], has_cls: bool = True, tf_bicubic: bool = True) -> torch.Tensor:
    """pos [1, (1+)S*S, C] -> [1, H, W, C] (cls slot dropped; bicubic resize when S x S != H x W)."""
    if has_cls:
        pos = pos[:, 1:]
    s = int(math.isqrt(pos.shape[1]))
    if s * s != pos.shape[1]:
        raise ValueError(f"absolute positions: {pos.shape[1]} entries is not a square grid")
    H, W = hw
    grid = pos.reshape(1, s, s, -1)
    if (s, s) == (H, W):
        return grid
    if tf_bicubic:
        mh = tf_bicubic_matrix(s, H).to(pos)
        mw = tf_bicubic_matrix(s, W).to(pos)
        return torch.einsum("hi,bijc,wj->bhwc", mh, grid, mw)
    out = F.interpolate(grid.permute(0, 3, 1, 2), size=(H, W), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1)


def _rel_table(q_size: int, k_size: int, table: torch.Tensor) -> torch.Tensor:
    """[q_size, k_size, C]: the relative-position embedding of every (query, key) coordinate pair."""
    n = 2 * max(q_size, k_size) - 1
    if table.shape[0] != n:  # detectron2's linear resize of the table (not used by the 448 model)
        table = F.interpolate(table.t()[None], size=n, mode="linear")[0].t()
    q = torch.arange(q_size, device=table.device)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, device=table.device)[None, :] * max(q_size / k_size, 1.0)
    idx = (q - k + (k_size - 1) * max(q_size / k_size, 1.0)).long()
    return table[idx]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, size: Tuple[int, int], law_type: str = "svd", groups: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = AdaptiveLinear(dim, 3 * dim, law_type=law_type, groups=max(groups, 1))
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * size[0] - 1, dim // num_heads))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * size[1] - 1, dim // num_heads))

    def forward(self, x: torch.Tensor, a=None, shared=None) -> torch.Tensor:
        """x [n, H, W, C] (n = B or B * windows, sample outermost)."""
        n, H, W, C = x.shape
        h = self.num_heads
        d = C // h
        qkv = self.qkv(x, a, shared).reshape(n, H * W, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                                      # [n, h, HW, d]
        rh = _rel_table(H, H, self.rel_pos_h)                                 # [H, H, d]
        rw = _rel_table(W, W, self.rel_pos_w)
        r_q = q.reshape(n, h, H, W, d)
        bias_h = torch.einsum("nzhwc,hkc->nzhwk", r_q, rh)                  # [n, h, H, W, H]
        bias_w = torch.einsum("nzhwc,wkc->nzhwk", r_q, rw)                  # [n, h, H, W, W]
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(n, h, H * W, H * W)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=d ** -0.5)
        out = out.transpose(1, 2).reshape(n, H, W, C)
        return self.proj(out)


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nH * nW, ws, ws, C], batch outermost (H, W multiples of ws)."""
    B, H, W, C = x.shape
    if H % ws or W % ws:
        raise ValueError(f"feature map {H}x{W} is not a multiple of the window size {ws}")
    x = x.reshape(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, C)


def window_unpartition(x: torch.Tensor, ws: int, hw: Tuple[int, int]) -> torch.Tensor:
    H, W = hw
    C = x.shape[-1]
    x = x.reshape(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, window_size, grid, drop_path, ln_eps, law_type, groups):
        super().__init__()
        self.window_size = window_size
        size = (window_size, window_size) if window_size else grid
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, num_heads, size, law_type, groups)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, a=None, shared=None):
        y = self.norm1(x)
        if self.window_size:
            hw = x.shape[1:3]
            y = window_unpartition(self.attn(window_partition(y, self.window_size), a, shared), self.window_size, hw)
        else:
            y = self.attn(y, a, shared)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)  # NHWC


class ViT(nn.Module):
    """``forward(images, ada=None, shared=None)``: ``ada`` is a list (one entry per block, None = not adapted)
    of per-sample vectors [B, n]; ``shared`` the svd (S, D) pair.  Returns [B, C, H/16, W/16].
    ``grad_ckpt``: activation checkpointing per block while gradients are on (``--grad_ckpt``)."""

    def __init__(self, img_size: int = 448, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, drop_path_rate: float = 0.1, window_size: int = 14,
                 global_blocks: Sequence[int] = (2, 5, 8, 11), pretrain_img_size: int = 224,
                 block_ln_eps: float = 1e-6, pos_embed_tf_bicubic: bool = False, law_type: str = "svd",
                 groups: Optional[Sequence[int]] = None):
        super().__init__()
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.pos_embed_tf_bicubic = pos_embed_tf_bicubic
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        n_pre = (pretrain_img_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pre + 1, embed_dim))
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        groups = list(groups) if groups is not None else [1] * depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, 0 if i in global_blocks else window_size, self.grid, dpr[i],
                  block_ln_eps, law_type, groups[i])
            for i in range(depth))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.grad_ckpt = False  # activation checkpointing per block (--grad_ckpt)

    def abs_pos(self, pos: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        return resize_abs_pos(pos, hw, has_cls=True, tf_bicubic=self.pos_embed_tf_bicubic)

    def forward(self, images: torch.Tensor, ada: Optional[List[Optional[torch.Tensor]]] = None, shared=None):
        x = self.patch_embed(images)
        x = x + self.abs_pos(self.pos_embed, x.shape[1:3])
        ada = ada if ada is not None else [None] * len(self.blocks)
        ckpt = self.grad_ckpt and torch.is_grad_enabled()
        for blk, a in zip(self.blocks, ada):
            x = checkpoint_call(blk, x, a, shared) if ckpt else blk(x, a, shared)
        return x.permute(0, 3, 1, 2)
