"""Resampling tensors whose shape follows the input geometry: position tables and patch-embedding kernels."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ["resample_pos_table", "resample_patch_kernel"]

Grid = Union[int, Sequence[int]]


def resample_pos_table(table: torch.Tensor, new_grid: Grid, num_prefix_tokens: int = 0, mode: str = "bicubic",
                       old_grid: Optional[Grid] = None, align_corners: bool = False) -> torch.Tensor:
    """Resize a position table [N, C] or [1, N, C] whose last ``N - num_prefix_tokens`` rows form a grid.

    ``new_grid``/``old_grid``: an int L for a 1-D table (text positions), a pair (h, w) for a 2-D grid (ViT
    patches, row-major).  ``old_grid`` None -> a square if ``new_grid`` is a pair, else 1-D.  The leading
    ``num_prefix_tokens`` rows (cls, BEiT-3's two offset rows, ...) are kept as they are.  Interpolation runs
    in float32 on the grid seen as an image (1-D tables as 1 x L) and is cast back to the input dtype; an
    unchanged grid returns ``table`` itself."""
    squeeze = table.dim() == 2
    pos = table[None] if squeeze else table
    if pos.dim() != 3:
        raise ValueError(f"resample_pos_table: expected [N, C] or [1, N, C], got {tuple(table.shape)}")
    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    n, C = grid.shape[1], grid.shape[2]
    if old_grid is None:
        if isinstance(new_grid, int):
            old_grid = n
        else:
            s = int(round(n ** 0.5))
            if s * s != n:
                raise ValueError(f"resample_pos_table: {n} grid rows are not a square; pass old_grid=(h, w)")
            old_grid = (s, s)
    oh, ow = (1, old_grid) if isinstance(old_grid, int) else tuple(old_grid)
    nh, nw = (1, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
    if oh * ow != n:
        raise ValueError(f"resample_pos_table: old grid {oh}x{ow} != {n} rows")
    if (oh, ow) == (nh, nw):
        return table
    g = grid.float().reshape(grid.shape[0], oh, ow, C).permute(0, 3, 1, 2)
    kw = {} if mode in ("nearest", "area") else {"align_corners": align_corners}
    g = F.interpolate(g, size=(nh, nw), mode=mode, **kw)
    g = g.permute(0, 2, 3, 1).reshape(grid.shape[0], nh * nw, C).to(table.dtype)
    out = torch.cat([prefix, g], 1)
    return out[0] if squeeze else out


def resample_patch_kernel(weight: torch.Tensor, new_size: Grid, mode: str = "bicubic",
                          align_corners: bool = False) -> torch.Tensor:
    """Patch-embedding kernel [D, C, p, p] -> [D, C, h, w] by plain interpolation, **no magnitude rescale**
    (SimVG/ALVG behaviour: a 16 -> 32 resize makes each patch sum about 4x more input at initialisation).
    An unchanged size returns ``weight`` itself."""
    size = (new_size, new_size) if isinstance(new_size, int) else tuple(new_size)
    if tuple(weight.shape[-2:]) == size:
        return weight
    kw = {} if mode in ("nearest", "area") else {"align_corners": align_corners}
    return F.interpolate(weight.float(), size=size, mode=mode, **kw).to(weight.dtype)
