"""The two data contracts every part of the codebase agrees on: `Record` and `Batch`.

Record -- one referring expression and its referent(s), exactly as an annotation file describes it,
converted once (at the reader) to a single convention:

* ``boxes``: float32 array [N, 4], **xyxy in pixels of the original image** (continuous coordinates,
  x2 = x + w).  N == 0 is a no-target expression (gRefCOCO), N > 1 multi-target.
* ``mask``: optional COCO segmentation of the referent in original pixels: a list of flat polygons
  (``[[x1, y1, x2, y2, ...], ...]``), an RLE dict ``{"size": [h, w], "counts": ...}``, or None.
* one expression per record (every grounding codebase flattens refs to one sample per sentence).

Batch -- what ``collate`` hands a model.  Geometry is carried as a per-axis affine map from original
pixels to input pixels (``affine = (sx, ox, sy, oy)``: x_in = sx * x + ox, y_in = sy * y + oy).  Every
geometric transform used by the five methods (resize, crop, pad, translate, horizontal flip -- flip gives
a negative sx) composes into one such map, so predictions go back to the original image with one
vectorised call (`Batch.boxes_to_original`) and no per-sample Python.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["Record", "Batch", "affine_apply_boxes", "affine_invert_boxes"]


@dataclass
class Record:
    image_path: str
    expression: str
    boxes: np.ndarray  # [N, 4] float32 xyxy, original pixels
    image_id: Any = None
    mask: Any = None  # polygons | RLE dict | None, original pixels
    ref_id: Any = None
    ann_id: Any = None  # int, or list of ints for multi-target
    sent_id: Any = None
    category: Optional[str] = None
    height: Optional[int] = None
    width: Optional[int] = None
    dataset: str = ""
    split: str = ""
    extra: dict = field(default_factory=dict)  # format-specific leftovers (kept, never interpreted)

    def __post_init__(self):
        b = np.asarray(self.boxes, dtype=np.float32)
        if b.size == 0:
            b = b.reshape(0, 4)
        if b.ndim == 1:
            b = b.reshape(1, 4)
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"Record({self.image_path!r}, {self.expression!r}): boxes must be [N,4], got {b.shape}")
        self.boxes = b

    @property
    def num_targets(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def is_no_target(self) -> bool:
        return self.boxes.shape[0] == 0

    @property
    def box(self) -> np.ndarray:
        """The single target box (REC); raises for no-target or multi-target records."""
        if self.boxes.shape[0] != 1:
            raise ValueError(f"record {self.key()} has {self.boxes.shape[0]} target boxes, expected exactly 1")
        return self.boxes[0]

    def key(self) -> str:
        return f"{self.dataset}/{self.split}:{self.image_path}|ref={self.ref_id}|sent={self.sent_id}|{self.expression!r}"

    def replace(self, **kw) -> "Record":
        return replace(self, **kw)


def affine_apply_boxes(boxes: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Map xyxy boxes [..., 4] through per-axis affine [..., 4] = (sx, ox, sy, oy); keeps x1<=x2 under flips."""
    sx, ox, sy, oy = affine.unbind(-1)
    x1 = boxes[..., 0] * sx + ox
    x2 = boxes[..., 2] * sx + ox
    y1 = boxes[..., 1] * sy + oy
    y2 = boxes[..., 3] * sy + oy
    return torch.stack([torch.minimum(x1, x2), torch.minimum(y1, y2), torch.maximum(x1, x2), torch.maximum(y1, y2)], -1)


def affine_invert_boxes(boxes: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Inverse of `affine_apply_boxes`: input-frame xyxy -> original-frame xyxy."""
    sx, ox, sy, oy = affine.unbind(-1)
    inv = torch.stack([1.0 / sx, -ox / sx, 1.0 / sy, -oy / sy], -1)
    return affine_apply_boxes(boxes, inv)


@dataclass
class Batch:
    """A collated batch.  All tensors share the batch dimension B.

    images       [B, 3, H, W] float, normalised, padded
    pixel_mask   [B, H, W] bool, True = padding
    text_ids     [B, L] long, as the model's tokenizer makes them
    text_mask    [B, L] bool, True = real token (models invert it where their convention differs)
    boxes        [B, 4] float, normalised cxcywh of the padded input (the first / only target;
                 zeros for no-target samples -- see `num_targets`)
    target_boxes list of B tensors [N_i, 4], normalised cxcywh (all targets; N_i = 0 for no-target)
    num_targets  [B] long
    masks        [B, H, W] uint8 object masks at input size, or None
    affine       [B, 4] float64 (sx, ox, sy, oy): original pixels -> input pixels
    orig_size    [B, 2] long (h, w) of the original image
    texts        list of B expressions after the transform (flip may swap left/right)
    records      list of B `Record`s (the untouched source annotations; ground truth for evaluation)
    """

    images: torch.Tensor
    pixel_mask: torch.Tensor
    text_ids: torch.Tensor
    text_mask: torch.Tensor
    boxes: torch.Tensor
    target_boxes: list
    num_targets: torch.Tensor
    affine: torch.Tensor
    orig_size: torch.Tensor
    texts: list
    records: list
    masks: Optional[torch.Tensor] = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def input_size(self) -> tuple:
        return tuple(self.images.shape[-2:])

    def to(self, device, non_blocking: bool = True) -> "Batch":
        def mv(x):
            if torch.is_tensor(x):
                return x.to(device, non_blocking=non_blocking)
            if isinstance(x, list) and x and torch.is_tensor(x[0]):
                return [t.to(device, non_blocking=non_blocking) for t in x]
            if isinstance(x, dict):
                return {k: mv(v) for k, v in x.items()}
            return x

        return Batch(**{f: mv(getattr(self, f)) for f in self.__dataclass_fields__})

    def pin_memory(self) -> "Batch":
        for f in ("images", "pixel_mask", "text_ids", "text_mask", "boxes", "masks"):
            v = getattr(self, f)
            if torch.is_tensor(v):
                setattr(self, f, v.pin_memory())
        return self

    def boxes_to_original(self, boxes_cxcywh_norm: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Normalised cxcywh predictions in the padded input frame [B, 4] or [B, Q, 4] -> xyxy original pixels."""
        H, W = self.input_size
        cx, cy, w, h = boxes_cxcywh_norm.float().unbind(-1)
        xyxy = torch.stack([(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H], -1)
        aff = self.affine.to(xyxy.device, torch.float32)
        if xyxy.dim() == 3:
            aff = aff[:, None, :]
        out = affine_invert_boxes(xyxy, aff)
        if clamp:
            size = self.orig_size.to(out.device, out.dtype)
            if out.dim() == 3:
                size = size[:, None, :]
            wh = torch.stack([size[..., 1], size[..., 0], size[..., 1], size[..., 0]], -1)
            out = torch.minimum(out.clamp(min=0), wh)
        return out
