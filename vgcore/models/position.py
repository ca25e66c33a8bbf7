"""Sine position encodings (DETR style), shared by the DETR-style heads.

* `sine_position_2d(mask)`: the DETR / detrex ``PositionEmbeddingSine`` for a feature map.  ``mask`` is
  [B, H, W] bool with **True = padding**; positions are the cumulative count of valid cells along each axis
  (1-based), optionally normalised to (0, scale].  Output [B, 2 * num_pos_feats, H, W], channels
  ``[pos_y (num_pos_feats), pos_x (num_pos_feats)]``, each interleaving sin (even) / cos (odd) channels.
* `sine_position_1d(length, dim)`: a 1-D sequence encoding [length, dim] with position p = 0..length-1,
  even dims sin(p * f_i), odd dims cos(p * f_i), f_i = 1 / 10000^(i / (dim/2)).  ``degenerate=True``
  reproduces SimVG/ALVG's ``PositionEmbeddingSine1D``, which truncates the frequencies to integers
  (``[1, 0, 0, ...]``): dim0 = sin(p), dim1 = cos(p), other even dims 0, other odd dims 1.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["sine_position_2d", "sine_position_1d", "PositionEmbeddingSine"]


def sine_position_2d(mask: torch.Tensor, num_pos_feats: int = 128, temperature: float = 10000.0,
                     normalize: bool = True, scale: float = 2 * math.pi, eps: float = 1e-6,
                     offset: float = 0.0) -> torch.Tensor:
    """[B, H, W] bool mask (True = padding) -> [B, 2 * num_pos_feats, H, W] float32."""
    if mask.dim() != 3:
        raise ValueError(f"sine_position_2d: mask must be [B,H,W], got {tuple(mask.shape)}")
    not_mask = ~mask.bool()
    y = not_mask.cumsum(1, dtype=torch.float32)
    x = not_mask.cumsum(2, dtype=torch.float32)
    if normalize:
        y = (y + offset) / (y[:, -1:, :] + eps) * scale
        x = (x + offset) / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    px = x[..., None] / dim_t
    py = y[..., None] / dim_t
    B, H, W = mask.shape
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).view(B, H, W, -1)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).view(B, H, W, -1)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingSine(nn.Module):
    """Module wrapper of `sine_position_2d` (no parameters)."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi, eps: float = 1e-6, offset: float = 0.0):
        super().__init__()
        self.kw = dict(num_pos_feats=num_pos_feats, temperature=temperature, normalize=normalize,
                       scale=scale, eps=eps, offset=offset)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return sine_position_2d(mask, **self.kw)


def sine_position_1d(length: int, dim: int, temperature: float = 10000.0, degenerate: bool = False,
                     device=None, dtype=torch.float32) -> torch.Tensor:
    """[length, dim] sinusoidal table for positions 0..length-1 (see module docstring)."""
    if dim % 2:
        raise ValueError(f"sine_position_1d: dim must be even, got {dim}")
    half = dim // 2
    freq = 1.0 / torch.pow(torch.tensor(float(temperature)), torch.arange(half, dtype=torch.float32) / half)
    if degenerate:
        freq = freq.to(torch.long).to(torch.float32)  # the official int cast: [1, 0, 0, ...]
    pos = torch.arange(length, dtype=torch.float32)
    arg = pos[:, None] * freq[None, :]
    out = torch.empty(length, dim, dtype=torch.float32)
    out[:, 0::2] = arg.sin()
    out[:, 1::2] = arg.cos()
    return out.to(device=device, dtype=dtype)
