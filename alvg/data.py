"""ALVG data: the records of a split, with the referent's mask carried into the input pipeline when the run uses
masks, and the mask helpers the evaluation needs (original-resolution ground truth, canvas -> original).

The shared loader (`vgcore.method.build_loader`) builds its dataset without mask decoding, so the mask travels
with the expression: `carry_masks` replaces each record's ``expression`` by a `MaskText` (a ``str`` equal to
the expression, carrying the record's segmentation), and the first pipeline step (`MaskFromText`, added by
`decode_masks_first`) decodes it
on the original image (union of the pieces; an empty mask for a no-target record) and hands the plain string
on.  The ALVG transforms then resize the mask with the image (nearest, as mmdet's BitmapMasks), and the collated
`Batch` holds it in ``masks`` [B, H, W] on the input canvas.

These mask helpers are ALVG's own for now; generic versions are planned for `vgcore.data.masks`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from vgcore.data.masks import decode_mask
from vgcore.data.transforms import Compose, Sample

__all__ = ["MaskText", "MaskFromText", "carry_masks", "decode_masks_first", "masks_to_original", "gt_masks_original", "canvas_iou_counts"]


class MaskText(str):
    """An expression that also carries its referent's segmentation (``seg``: polygons | RLE | None)."""

    def __new__(cls, text: str, seg):
        obj = super().__new__(cls, text)
        obj.seg = seg
        return obj

    def __reduce__(self):  # keeps the segmentation when pickled into DataLoader workers
        return (MaskText, (str(self), self.seg))


class MaskFromText:
    """First pipeline step: ``sample.text`` a `MaskText` -> ``sample.mask`` uint8 [H, W] of the original image and
    ``sample.text`` the plain expression; other samples pass unchanged."""

    def __call__(self, s: Sample) -> Sample:
        if isinstance(s.text, MaskText):
            h, w = s.size
            s.mask = decode_mask(s.text.seg, h, w)
            s.text = str(s.text)
        return s

    def __repr__(self):
        return "MaskFromText()"


def carry_masks(records: Sequence) -> list:
    """The records with expressions that carry their masks (`MaskText`)."""
    return [r.replace(expression=MaskText(r.expression, r.mask)) for r in records]


def decode_masks_first(transform) -> Compose:
    """``transform`` with `MaskFromText` as its first step."""
    return Compose([MaskFromText()] + list(getattr(transform, "transforms", [transform])))


def masks_to_original(maps: torch.Tensor, batch) -> tuple:
    """Canvas-frame maps [B, h, w] (any resolution covering the whole input canvas, e.g. the mask head's
    probabilities) -> (values [B, Hm, Wm] at original resolution, valid [B, Hm, Wm]).

    Hm x Wm = the largest original size of the batch; sample i fills its top-left ``orig_size[i]``.  Original
    pixel (x, y) takes the bilinear value at canvas point (sx (x + .5) + ox, sy (y + .5) + oy) of the batch's
    affine, so any resize / paste / flip maps back exactly."""
    B = maps.shape[0]
    H, W = batch.input_size
    size = batch.orig_size.to(maps.device)
    Hm, Wm = int(size[:, 0].max()), int(size[:, 1].max())
    aff = batch.affine.to(maps.device, torch.float32)
    xs = torch.arange(Wm, device=maps.device, dtype=torch.float32) + 0.5
    ys = torch.arange(Hm, device=maps.device, dtype=torch.float32) + 0.5
    u = aff[:, 0, None] * xs[None] + aff[:, 1, None]
    v = aff[:, 2, None] * ys[None] + aff[:, 3, None]
    grid = torch.stack([(2 * u / W - 1)[:, None, :].expand(B, Hm, Wm), (2 * v / H - 1)[:, :, None].expand(B, Hm, Wm)], -1)
    out = F.grid_sample(maps[:, None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    valid = (torch.arange(Hm, device=maps.device)[None, :, None] < size[:, 0, None, None]) & \
            (torch.arange(Wm, device=maps.device)[None, None, :] < size[:, 1, None, None])
    return out, valid


def gt_masks_original(batch, shape) -> torch.Tensor:
    """[B, Hm, Wm] bool: each record's mask decoded at its original size (top-left aligned; empty when None)."""
    out = torch.zeros((len(batch.records),) + tuple(shape), dtype=torch.bool)
    for i, r in enumerate(batch.records):
        h, w = int(batch.orig_size[i, 0]), int(batch.orig_size[i, 1])
        out[i, :h, :w] = torch.from_numpy(decode_mask(r.mask, h, w).astype(bool))
    return out


def canvas_iou_counts(pred: torch.Tensor, gt: torch.Tensor) -> tuple:
    """Per-sample intersection and union pixel counts of two bool [B, H, W] masks."""
    p, g = pred.bool().flatten(1), gt.bool().flatten(1)
    return (p & g).sum(1).double(), (p | g).sum(1).double()

