"""Box conventions, conversions, IoU / GIoU, clamping and normalisation.

Conventions (the last dimension always holds the 4 numbers; any leading dimensions are allowed):

* ``xyxy``   -- (x1, y1, x2, y2): top-left and bottom-right corners, continuous coordinates
  (x2 = x + w, no "+1"; a box covering pixels 0..9 is [0, 10)).
* ``xywh``   -- (x, y, w, h): top-left corner and size (the COCO annotation convention).
* ``cxcywh`` -- (cx, cy, w, h): centre and size (what DETR-style heads predict, usually normalised).

Units: whatever the caller passes (pixels or [0, 1] fractions); only `normalize_boxes` /
`denormalize_boxes` change units, dividing / multiplying x by the image width and y by the height.

Degenerate boxes: areas use max(w, 0) * max(h, 0), so inverted boxes (x2 < x1) have zero area; every ratio
divides by max(denominator, eps), so IoU / GIoU are always finite: two zero-area boxes (even two identical
points) have IoU 0 and GIoU 0, never NaN.  For non-degenerate boxes the eps never changes the value (it is a
floor, not an additive term), so an IoU of exactly 0.5 stays exactly 0.5 and ``>= 0.5`` thresholds behave.

Conversions to and from xyxy are torchvision's ``box_convert``; the rest is our own where torchvision's
conventions differ (see the comments at each function).

torch and numpy: every public function accepts torch tensors or numpy arrays (numpy in -> numpy out; the
work is done in torch via a zero-copy ``torch.from_numpy``).  half / bfloat16 inputs are computed in
float32 for IoU-type functions and returned in float32.
"""
from __future__ import annotations

import functools
from typing import Union

import numpy as np
import torch
from torchvision.ops import box_convert

Array = Union[torch.Tensor, np.ndarray]

__all__ = [
    "box_xyxy_to_cxcywh", "box_cxcywh_to_xyxy", "box_xyxy_to_xywh", "box_xywh_to_xyxy",
    "box_cxcywh_to_xywh", "box_xywh_to_cxcywh", "convert_boxes",
    "box_area", "box_iou", "generalized_box_iou", "box_iou_elementwise", "generalized_box_iou_elementwise",
    "clamp_boxes", "normalize_boxes", "denormalize_boxes",
]

DEFAULT_EPS = 1e-9


def _numpy_compat(fn):
    """Let a torch implementation take numpy arrays: numpy in (any array argument) -> numpy out."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        is_np = any(isinstance(a, np.ndarray) for a in list(args) + list(kwargs.values()))
        if not is_np:
            return fn(*args, **kwargs)
        conv = lambda a: torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
        out = fn(*[conv(a) for a in args], **{k: conv(v) for k, v in kwargs.items()})
        return out.numpy() if torch.is_tensor(out) else out

    return wrapper


def _check4(b: torch.Tensor, name: str = "boxes") -> torch.Tensor:
    if not torch.is_tensor(b):
        b = torch.as_tensor(b)
    if b.shape[-1:] != (4,):
        raise ValueError(f"{name}: last dimension must be 4, got shape {tuple(b.shape)}")
    return b


def _float(b: torch.Tensor) -> torch.Tensor:
    """Promote integer / low-precision boxes to a dtype suitable for ratios."""
    if not b.is_floating_point() or b.dtype in (torch.float16, torch.bfloat16):
        return b.float()
    return b


# ------------------------------------------------------------------------------------------------ conversions

def _tv(src: str, dst: str, doc: str):
    """A public conversion that is torchvision's `box_convert` plus numpy support and a shape check."""

    @_numpy_compat
    def convert(boxes: Array) -> Array:
        return box_convert(_check4(boxes), src, dst)

    convert.__name__ = convert.__qualname__ = f"box_{src}_to_{dst}"
    convert.__doc__ = doc
    return convert


box_xyxy_to_cxcywh = _tv("xyxy", "cxcywh", "(x1, y1, x2, y2) -> (cx, cy, w, h).")
box_cxcywh_to_xyxy = _tv("cxcywh", "xyxy", "(cx, cy, w, h) -> (x1, y1, x2, y2).")
box_xyxy_to_xywh = _tv("xyxy", "xywh", "(x1, y1, x2, y2) -> (x, y, w, h).")
box_xywh_to_xyxy = _tv("xywh", "xyxy", "(x, y, w, h) -> (x1, y1, x2, y2).")


# torchvision goes cxcywh <-> xywh through xyxy, which re-rounds w and h; the direct form keeps them exact.
@_numpy_compat
def box_cxcywh_to_xywh(boxes: Array) -> Array:
    """(cx, cy, w, h) -> (x, y, w, h); w and h pass through unchanged."""
    b = _check4(boxes)
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., 2:]], -1)


@_numpy_compat
def box_xywh_to_cxcywh(boxes: Array) -> Array:
    """(x, y, w, h) -> (cx, cy, w, h); w and h pass through unchanged."""
    b = _check4(boxes)
    return torch.cat([b[..., :2] + b[..., 2:] / 2, b[..., 2:]], -1)


_CONVERTERS = {
    ("xyxy", "cxcywh"): box_xyxy_to_cxcywh, ("cxcywh", "xyxy"): box_cxcywh_to_xyxy,
    ("xyxy", "xywh"): box_xyxy_to_xywh, ("xywh", "xyxy"): box_xywh_to_xyxy,
    ("cxcywh", "xywh"): box_cxcywh_to_xywh, ("xywh", "cxcywh"): box_xywh_to_cxcywh,
}


def convert_boxes(boxes: Array, src: str, dst: str) -> Array:
    """Convert between "xyxy", "xywh" and "cxcywh" by name (identity if src == dst; returns the input)."""
    if src == dst:
        if src not in ("xyxy", "xywh", "cxcywh"):
            raise ValueError(f"unknown box format {src!r}; expected xyxy, xywh or cxcywh")
        return boxes
    try:
        return _CONVERTERS[(src, dst)](boxes)
    except KeyError:
        raise ValueError(f"unknown box conversion {src!r} -> {dst!r}; formats are xyxy, xywh, cxcywh") from None


# ------------------------------------------------------------------------------------------------ area / IoU

# torchvision's box_area / box_iou / generalized_box_iou give inverted boxes a positive area, divide without a
# floor (NaN for zero-area pairs) and are pairwise only; the forms below keep the degenerate-box convention of
# the module docstring and broadcast, so one core serves the pairwise and the aligned functions.
@_numpy_compat
def box_area(boxes: Array) -> Array:
    """Area of xyxy boxes [..., 4] -> [...]; inverted / degenerate boxes have area 0."""
    b = _check4(boxes)
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def _iou_parts(a: torch.Tensor, b: torch.Tensor):
    """a, b xyxy [..., 4] with broadcastable leading dims -> (intersection, union, enclosing-box area).

    The intersection is the box (max of the top-left corners, min of the bottom-right ones) and the enclosing
    box the reverse; `box_area` clamps both, so disjoint boxes intersect in area 0."""
    lo, hi = a[..., :2], a[..., 2:]
    lo2, hi2 = b[..., :2], b[..., 2:]
    inter = box_area(torch.cat([torch.maximum(lo, lo2), torch.minimum(hi, hi2)], -1))
    enclose = box_area(torch.cat([torch.minimum(lo, lo2), torch.maximum(hi, hi2)], -1))
    return inter, box_area(a) + box_area(b) - inter, enclose


def _prepared_parts(a, b, pairwise: bool):
    """Validate, promote to a common float dtype, lay out [N,1,4] x [1,M,4] if pairwise -> `_iou_parts`."""
    a, b = _float(_check4(a, "boxes1")), _float(_check4(b, "boxes2"))
    if pairwise:
        if a.dim() != 2 or b.dim() != 2:
            raise ValueError(f"pairwise IoU expects [N,4] and [M,4], got {tuple(a.shape)} and {tuple(b.shape)}")
        a, b = a[:, None, :], b[None, :, :]
    dt = torch.promote_types(a.dtype, b.dtype)
    return _iou_parts(a.to(dt), b.to(dt))


def _iou(parts, eps):
    inter, union, _ = parts
    return inter / union.clamp(min=eps)


def _giou(parts, eps):
    _, union, enclose = parts
    return _iou(parts, eps) - (enclose - union).clamp(min=0) / enclose.clamp(min=eps)


@_numpy_compat
def box_iou(boxes1: Array, boxes2: Array, eps: float = DEFAULT_EPS) -> Array:
    """Pairwise IoU of xyxy boxes: [N, 4] x [M, 4] -> [N, M]."""
    return _iou(_prepared_parts(boxes1, boxes2, pairwise=True), eps)


@_numpy_compat
def generalized_box_iou(boxes1: Array, boxes2: Array, eps: float = DEFAULT_EPS) -> Array:
    """Pairwise GIoU (Rezatofighi et al. 2019) of xyxy boxes: [N, 4] x [M, 4] -> [N, M], values in [-1, 1]."""
    return _giou(_prepared_parts(boxes1, boxes2, pairwise=True), eps)


@_numpy_compat
def box_iou_elementwise(boxes1: Array, boxes2: Array, eps: float = DEFAULT_EPS) -> Array:
    """Elementwise ("aligned") IoU of xyxy boxes: [..., 4] x [..., 4] (broadcastable) -> [...]."""
    return _iou(_prepared_parts(boxes1, boxes2, pairwise=False), eps)


@_numpy_compat
def generalized_box_iou_elementwise(boxes1: Array, boxes2: Array, eps: float = DEFAULT_EPS) -> Array:
    """Elementwise GIoU of xyxy boxes: [..., 4] x [..., 4] (broadcastable) -> [...]."""
    return _giou(_prepared_parts(boxes1, boxes2, pairwise=False), eps)


# ------------------------------------------------------------------------------------------------ geometry

def _per_image(v, ref: torch.Tensor) -> torch.Tensor:
    """A scalar or a per-image tensor [...] (leading dims of the boxes) -> tensor broadcastable to ref[..., 0]."""
    t = torch.as_tensor(v, dtype=ref.dtype if ref.is_floating_point() else torch.float32, device=ref.device)
    return t


@_numpy_compat
def clamp_boxes(boxes: Array, h, w) -> Array:
    """Clamp xyxy boxes [..., 4] to x in [0, w], y in [0, h].

    ``h`` and ``w`` are scalars or tensors broadcastable to the leading dims (one size per image).
    For SimVG's "clip to [0, W-1]" convention pass ``w - 1`` and ``h - 1``.
    """
    b = _check4(boxes)
    hh, ww = _per_image(h, b), _per_image(w, b)
    zero = torch.zeros((), dtype=hh.dtype, device=b.device)
    x1, y1, x2, y2 = b.unbind(-1)
    out = torch.stack([torch.minimum(torch.maximum(x1, zero), ww), torch.minimum(torch.maximum(y1, zero), hh),
                       torch.minimum(torch.maximum(x2, zero), ww), torch.minimum(torch.maximum(y2, zero), hh)], -1)
    return out.to(b.dtype) if b.is_floating_point() else out


def _scale(b: torch.Tensor, h, w) -> torch.Tensor:
    b = _float(_check4(b))
    hh, ww = _per_image(h, b), _per_image(w, b)
    return torch.stack(torch.broadcast_tensors(ww, hh, ww, hh), -1)


@_numpy_compat
def normalize_boxes(boxes: Array, h, w) -> Array:
    """Pixels -> fractions: divide x-like entries by ``w`` and y-like entries by ``h``.

    Works for any of the three formats (each coordinate is either an x-position/width or a y-position/height
    in the same slot).  ``h``, ``w``: scalars or per-image tensors broadcastable to the leading dims.
    """
    b = _float(_check4(boxes))
    return b / _scale(b, h, w)


@_numpy_compat
def denormalize_boxes(boxes: Array, h, w) -> Array:
    """Fractions -> pixels (inverse of `normalize_boxes`)."""
    b = _float(_check4(boxes))
    return b * _scale(b, h, w)
