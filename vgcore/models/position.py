"""Sine position encodings (DETR style), shared by the DETR-style heads.

* `sine_position_2d(mask)`: the DETR-style encoding of a feature map.  ``mask`` is [B, H, W] bool with
  **True = padding**.  A cell's y is the number of valid cells in its column up to and including its row
  (x likewise along its row); with ``normalize`` both become (y + offset) / (valid cells in the column + eps)
  * scale.  With d = num_pos_feats, channel 2j of the y half is sin(y / temperature^(2j/d)) and channel 2j + 1
  the cos of the same angle.  Output [B, 2d, H, W]: the d y-channels, then the d x-channels.
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


def _sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """[..., k] angles -> [..., 2k] with channel 2j = sin(angle_j) and channel 2j + 1 = cos(angle_j)."""
    return torch.stack((angles.sin(), angles.cos()), -1).flatten(-2)


def sine_position_2d(mask: torch.Tensor, num_pos_feats: int = 128, temperature: float = 10000.0,
                     normalize: bool = True, scale: float = 2 * math.pi, eps: float = 1e-6,
                     offset: float = 0.0) -> torch.Tensor:
    """[B, H, W] bool mask (True = padding) -> [B, 2 * num_pos_feats, H, W] float32.

    Both axes are computed together: ``coords[..., 0]`` is the row position y, ``coords[..., 1]`` the column
    position x, each divided by the d/2 wavelengths temperature^(2j/d), j < d/2, d = num_pos_feats.
    """
    if mask.dim() != 3:
        raise ValueError(f"sine_position_2d: mask must be [B,H,W], got {tuple(mask.shape)}")
    if num_pos_feats % 2:
        raise ValueError(f"sine_position_2d: num_pos_feats must be even, got {num_pos_feats}")
    valid = ~mask.bool()
    coords = torch.stack((valid.cumsum(1, dtype=torch.float32), valid.cumsum(2, dtype=torch.float32)), -1)
    if normalize:  # divide by the valid extent of the cell's column (for y) and row (for x)
        extent = torch.stack(torch.broadcast_tensors(valid.sum(1, keepdim=True), valid.sum(2, keepdim=True)), -1)
        coords = (coords + offset) / (extent.float() + eps) * scale
    exponent = torch.arange(0, num_pos_feats, 2, dtype=torch.float32, device=mask.device) / num_pos_feats
    angles = coords[..., None] / temperature ** exponent                 # [B, H, W, 2, d/2]
    return _sin_cos(angles).flatten(-2).permute(0, 3, 1, 2)              # channels: y's d, then x's d


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
    freq = 1.0 / temperature ** (torch.arange(half, dtype=torch.float32) / half)
    if degenerate:
        freq = freq.to(torch.long).to(torch.float32)  # the official int cast: [1, 0, 0, ...]
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freq
    return _sin_cos(angles).to(device=device, dtype=dtype)
