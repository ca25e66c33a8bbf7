"""COCO segmentations <-> binary masks (pycocotools), in original-image pixels.

A `Record.mask` is one of
* polygons: ``[[x1, y1, x2, y2, ...], ...]`` (flat float lists, COCO convention: continuous pixel
  coordinates, 0-based);
* an RLE dict ``{"size": [h, w], "counts": str | bytes | list[int]}`` (compressed or uncompressed);
* None (no mask known).

`decode_mask` returns uint8 [H, W] in {0, 1}.  Several polygons (or a list of RLEs) are merged as a
**union**.  (lichengunc refer's ``getMask`` sums the decoded maps and casts to uint8, so overlapping pieces
read 2 there; gRefCOCO's ``getMaskByRef(merge=True)`` and SimVG's ``maskUtils.merge`` give the union.  The
union is what every metric and loss uses.)

`box_mask` reproduces HiVG's box-shaped object mask: ``pycocotools.mask.frPyObjects`` of the float
**xywh** box as an ``np.ndarray`` of shape [1, 4] (pycocotools' ``frBbox``: the box becomes the 4-corner
polygon (x, y), (x, y+h), (x+w, y+h), (x+w, y) and is rasterised like any polygon), decoded, on the original
image.  HiVG passes the untruncated float box, so pass `Record.boxes`, not the int-truncated target.

Batch side (torch): `masks_to_original` samples a model's mask logits on the padded input canvas back onto
every original pixel through the batch's affine (so flips and any resize / paste map back exactly);
`gt_masks_original` decodes each record's mask at its original size, aligned the same way (top-left in a
[B, Hmax, Wmax] tensor); `prediction_mask` decodes the ``mask_rle`` a method's prediction carries.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from .errors import DataError

__all__ = ["decode_mask", "box_mask", "encode_mask", "to_rle", "union_segmentation", "is_polygons", "mask_area",
           "jsonable_segmentation", "record_mask", "masks_to_original", "gt_masks_original", "prediction_mask"]


def _decode(rle) -> np.ndarray:
    with warnings.catch_warnings():  # pycocotools + numpy 2 "__array__ ... copy keyword" noise
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


def is_polygons(seg: Any) -> bool:
    """True for a COCO polygon list ``[[x, y, ...], ...]`` (each a flat sequence starting with a number)."""
    if not isinstance(seg, (list, tuple)) or len(seg) == 0:
        return False
    for p in seg:
        if isinstance(p, np.ndarray):
            if p.ndim != 1:
                return False
        elif not isinstance(p, (list, tuple)) or (len(p) and not isinstance(p[0], (int, float, np.number))) \
                or isinstance(p[0] if len(p) else 0, bool):
            return False
    return True


def _clean_polygons(polys) -> list:
    out = []
    for p in polys:
        p = [float(v) for v in (p.tolist() if isinstance(p, np.ndarray) else p)]
        # fewer than 3 points cannot enclose area; and a 4-number list would be read as a BOX by frPyObjects
        if len(p) >= 6 and len(p) % 2 == 0:
            out.append(p)
    return out


def to_rle(seg: Any, height: int, width: int) -> Optional[dict]:
    """Any segmentation (polygons / RLE dict / list of RLE dicts) -> one merged compressed RLE, or None."""
    if seg is None:
        return None
    h, w = int(height), int(width)
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            raise DataError(f"RLE mask needs 'size' and 'counts', got keys {sorted(seg)}")
        if [int(v) for v in seg["size"]] != [h, w]:
            raise DataError(f"RLE mask size {list(seg['size'])} does not match the image size [{h}, {w}]")
        counts = seg["counts"]
        if isinstance(counts, list):
            return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        return {"size": [h, w], "counts": counts}
    if isinstance(seg, (list, tuple)):
        if len(seg) == 0:
            return None
        if all(isinstance(s, dict) for s in seg):
            rles = [to_rle(s, h, w) for s in seg]
            return mask_utils.merge(rles) if len(rles) > 1 else rles[0]
        if is_polygons(seg):
            polys = _clean_polygons(seg)
            if not polys:
                return None
            rles = mask_utils.frPyObjects(polys, h, w)
            return mask_utils.merge(rles) if len(rles) > 1 else rles[0]
    raise DataError(f"unsupported segmentation of type {type(seg).__name__}: expected polygons, an RLE dict or None")


def decode_mask(seg: Any, height: int, width: int) -> np.ndarray:
    """Decode a `Record.mask` to uint8 [H, W] in {0, 1} (union of all pieces). None or empty -> all zeros."""
    rle = to_rle(seg, height, width)
    if rle is None:
        return np.zeros((int(height), int(width)), dtype=np.uint8)
    m = _decode(rle)
    if m.ndim == 3:
        m = m.max(axis=2)
    return np.ascontiguousarray(m, dtype=np.uint8)


def record_mask(record) -> np.ndarray:
    """`decode_mask` of ``record.mask`` at the record's (height, width); DataError when the size is unknown."""
    if record.height is None or record.width is None:
        raise DataError(f"sample {record.key()}: decoding its mask needs Record.height/width (unknown; take them "
                        f"from the loaded image)")
    return decode_mask(record.mask, record.height, record.width)


def box_mask(box, height: int, width: int, fmt: str = "xyxy") -> np.ndarray:
    """HiVG's box object mask: uint8 [H, W] (box [4]) or [N, H, W] (boxes [N, 4]) in original pixels.

    `fmt` is the convention of `box`: "xyxy" (default, `Record.boxes`) or "xywh".  Rasterised with
    pycocotools ``frPyObjects(np.ndarray [N, 4] xywh)`` exactly as HiVG's ``convert_coco_poly_mask`` does.
    """
    b = np.asarray(box, dtype=np.float64)
    single = b.ndim == 1
    b = b.reshape(-1, 4).copy()
    if fmt == "xyxy":
        b[:, 2:] -= b[:, :2]
    elif fmt != "xywh":
        raise ValueError(f"box_mask: fmt must be 'xyxy' or 'xywh', got {fmt!r}")
    h, w = int(height), int(width)
    if b.shape[0] == 0:
        return np.zeros((0, h, w), dtype=np.uint8)
    m = _decode(mask_utils.frPyObjects(b, h, w))  # [H, W, N]
    m = np.ascontiguousarray(np.moveaxis(m, 2, 0), dtype=np.uint8)
    return m[0] if single else m


def encode_mask(mask: np.ndarray) -> dict:
    """Binary [H, W] array -> compressed RLE dict with a str ``counts`` (JSON-serialisable)."""
    m = np.asfortranarray(np.asarray(mask) > 0, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"encode_mask expects [H, W], got shape {m.shape}")
    rle = mask_utils.encode(m)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_area(seg: Any, height: int, width: int) -> float:
    rle = to_rle(seg, height, width)
    return 0.0 if rle is None else float(mask_utils.area(rle))


def union_segmentation(segs: Sequence[Any], height: Optional[int] = None, width: Optional[int] = None) -> Any:
    """Union of several objects' segmentations (multi-target referents) as one `Record.mask`.

    All polygons -> the concatenated polygon list (no image size needed; decodes to the union).
    Otherwise (any RLE) -> one merged RLE with str counts (needs height/width).  Nones are ignored;
    returns None when nothing is left.
    """
    segs = [s for s in segs if s is not None and not (isinstance(s, (list, tuple)) and len(s) == 0)]
    if not segs:
        return None
    if len(segs) == 1:
        return segs[0]
    if all(is_polygons(s) for s in segs):
        return [list(p) for s in segs for p in s]
    if height is None or width is None:
        raise DataError("merging RLE segmentations needs the image height and width")
    rle = mask_utils.merge([to_rle(s, height, width) for s in segs])
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def jsonable_segmentation(seg: Any) -> Any:
    """A segmentation with plain Python types only (bytes RLE counts -> str, numpy -> lists) for JSON/pickle."""
    if seg is None:
        return None
    if isinstance(seg, dict):
        out = {}
        for k, v in seg.items():
            if isinstance(v, bytes):
                v = v.decode("ascii")
            out[k] = jsonable_segmentation(v) if isinstance(v, (list, tuple, np.ndarray, dict)) else \
                (v.item() if isinstance(v, np.generic) else v)
        return out
    if isinstance(seg, np.ndarray):
        return seg.tolist()
    if isinstance(seg, (list, tuple)):
        return [jsonable_segmentation(v) if isinstance(v, (list, tuple, np.ndarray, dict)) else
                (v.item() if isinstance(v, np.generic) else v) for v in seg]
    return seg


# ------------------------------------------------------------------------------------------- batch (torch) side
def masks_to_original(logits: torch.Tensor, batch) -> tuple:
    """Canvas logits [B, 1, H, W] (or [B, H, W]) -> (logits [B, Hm, Wm] at original resolution, valid [B, Hm, Wm]).

    ``batch``: a `vgcore.data.sample.Batch` (its ``orig_size`` [B, 2] (h, w) and ``affine`` [B, 4]
    (sx, ox, sy, oy): original -> canvas).  Hm x Wm = the largest original size of the batch; sample i fills its
    top-left ``orig_size[i]`` (``valid`` True there).  Original pixel (x, y) takes the bilinear value (border
    clamped) at canvas point (sx (x + .5) + ox, sy (y + .5) + oy), so flips and any resize / paste map back
    exactly.  Threshold the result (``sigmoid > t``) and AND it with ``valid``."""
    if logits.dim() == 4:
        logits = logits[:, 0]
    B, H, W = logits.shape
    size = batch.orig_size.to(logits.device)
    Hm, Wm = int(size[:, 0].max()), int(size[:, 1].max())
    aff = batch.affine.to(logits.device, torch.float32)
    xs = torch.arange(Wm, device=logits.device, dtype=torch.float32) + 0.5
    ys = torch.arange(Hm, device=logits.device, dtype=torch.float32) + 0.5
    u = aff[:, 0, None] * xs[None] + aff[:, 1, None]                    # [B, Wm] canvas x
    v = aff[:, 2, None] * ys[None] + aff[:, 3, None]                    # [B, Hm] canvas y
    grid = torch.stack([(2 * u / W - 1)[:, None, :].expand(B, Hm, Wm),
                        (2 * v / H - 1)[:, :, None].expand(B, Hm, Wm)], -1)
    out = F.grid_sample(logits[:, None].float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)[:, 0]
    valid = (torch.arange(Hm, device=logits.device)[None, :, None] < size[:, 0, None, None]) & \
            (torch.arange(Wm, device=logits.device)[None, None, :] < size[:, 1, None, None])
    return out, valid


def gt_masks_original(batch, shape) -> torch.Tensor:
    """[B, *shape] bool: each record's mask (`decode_mask` of ``record.mask``) at its original size
    (``batch.orig_size``), top-left aligned as `masks_to_original` places the predictions."""
    out = torch.zeros((len(batch.records),) + tuple(shape), dtype=torch.bool)
    for i, r in enumerate(batch.records):
        h, w = int(batch.orig_size[i, 0]), int(batch.orig_size[i, 1])
        out[i, :h, :w] = torch.from_numpy(decode_mask(r.mask, h, w).astype(bool))
    return out


def prediction_mask(pred: dict, height: int, width: int) -> Optional[np.ndarray]:
    """uint8 [H, W] of a prediction's ``mask_rle`` (original pixels), or None when it carries no mask."""
    seg = pred.get("mask_rle")
    return None if seg is None else decode_mask(seg, height, width)
