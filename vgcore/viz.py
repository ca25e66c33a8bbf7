"""Drawing grounding results: predicted / ground-truth boxes, translucent masks, the expression.

Boxes are xyxy in the pixels of the image being drawn on (use ``Batch.boxes_to_original`` first for
predictions); masks are [H, W] arrays / tensors of that image, or any segmentation `vgcore.data.masks.decode_mask`
reads (polygons, RLE, e.g. a prediction's ``mask_rle``).  Colours: prediction red, ground truth green (override
with ``pred_color`` / ``gt_color``).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .data.image import load_image

__all__ = ["to_pil", "draw_grounding", "save_grid", "save_prediction_grid"]

Color = Tuple[int, int, int]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_pil(img, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> Image.Image:
    """PIL image from a PIL image, HxWx3 uint8/float array, or a [3,H,W] tensor (``mean``/``std`` undo
    normalisation; floats are taken in [0,1])."""
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    if torch.is_tensor(img):
        t = img.detach().float().cpu()
        if t.dim() == 3 and t.shape[0] in (1, 3):
            if mean is not None:
                t = t * torch.tensor(std or (1, 1, 1)).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
            t = t.permute(1, 2, 0)
        img = t.numpy()
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    return Image.fromarray(a[..., :3])


def _boxes(b) -> np.ndarray:
    if b is None:
        return np.zeros((0, 4), np.float32)
    if torch.is_tensor(b):
        b = b.detach().float().cpu().numpy()
    return np.asarray(b, np.float32).reshape(-1, 4)


def _mask_array(mask, height: int, width: int) -> np.ndarray:
    """[H, W] array of a mask given as an array / tensor, or as a segmentation (polygons / RLE dict)."""
    if torch.is_tensor(mask):
        return mask.detach().cpu().numpy()
    if isinstance(mask, dict) or (isinstance(mask, (list, tuple)) and not isinstance(mask, np.ndarray)):
        from .data.masks import decode_mask
        return decode_mask(mask, height, width)
    return np.asarray(mask)


def _overlay(img: Image.Image, mask, color: Color, alpha: float) -> Image.Image:
    m = _mask_array(mask, img.height, img.width)
    m = m.astype(bool)
    if m.shape != (img.height, img.width):
        raise ValueError(f"mask shape {m.shape} does not match image {(img.height, img.width)}")
    a = np.asarray(img).astype(np.float32)
    a[m] = (1 - alpha) * a[m] + alpha * np.asarray(color, np.float32)
    return Image.fromarray(a.round().astype(np.uint8))


def draw_grounding(image, pred_boxes=None, gt_boxes=None, text: Optional[str] = None, pred_mask=None,
                   gt_mask=None, pred_color: Color = (230, 30, 30), gt_color: Color = (30, 200, 60),
                   mask_alpha: float = 0.45, width: int = 3, scores: Optional[Sequence[float]] = None,
                   mean=None, std=None) -> Image.Image:
    """Return a new RGB PIL image with masks (translucent), GT boxes, predicted boxes and ``text`` on a
    banner under the image."""
    img = to_pil(image, mean, std)
    if gt_mask is not None:
        img = _overlay(img, gt_mask, gt_color, mask_alpha)
    if pred_mask is not None:
        img = _overlay(img, pred_mask, pred_color, mask_alpha)
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for b in _boxes(gt_boxes):
        d.rectangle([float(x) for x in b], outline=gt_color, width=width)
    for i, b in enumerate(_boxes(pred_boxes)):
        d.rectangle([float(x) for x in b], outline=pred_color, width=width)
        if scores is not None:
            d.text((float(b[0]) + 2, float(b[1]) + 1), f"{float(scores[i]):.2f}", fill=pred_color, font=font)
    if text:
        chars = max(10, img.width // 7)
        lines = textwrap.wrap(text, chars) or [""]
        lh = 13
        banner = Image.new("RGB", (img.width, img.height + lh * len(lines) + 6), (255, 255, 255))
        banner.paste(img, (0, 0))
        bd = ImageDraw.Draw(banner)
        for i, line in enumerate(lines):
            bd.text((3, img.height + 3 + i * lh), line, fill=(0, 0, 0), font=font)
        img = banner
    return img


def save_grid(images: Sequence, path: Union[str, Path], ncol: int = 4, pad: int = 4,
              bg: Color = (255, 255, 255)) -> Image.Image:
    """Tile images (any `to_pil` input; sizes may differ -- cells take the largest) row-major into ``ncol``
    columns and save to ``path``.  Returns the grid."""
    ims = [to_pil(i) for i in images]
    if not ims:
        raise ValueError("save_grid: no images")
    ncol = max(1, min(ncol, len(ims)))
    nrow = math.ceil(len(ims) / ncol)
    cw = max(i.width for i in ims)
    ch = max(i.height for i in ims)
    grid = Image.new("RGB", (ncol * cw + (ncol + 1) * pad, nrow * ch + (nrow + 1) * pad), bg)
    for k, im in enumerate(ims):
        r, c = divmod(k, ncol)
        grid.paste(im, (pad + c * (cw + pad), pad + r * (ch + pad)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid


def save_prediction_grid(records: Sequence, pred_boxes: Sequence, path: Union[str, Path], ncol: int = 4,
                         pred_masks: Optional[Sequence] = None, gt_masks: bool = False) -> Image.Image:
    """One tile per record (its original image, ``pred_boxes[i]`` [K,4] xyxy original pixels in red, its
    ground-truth boxes in green, its expression below), tiled by `save_grid` into ``path``.  ``pred_masks``:
    per record a mask of the original image (array or segmentation, None = none) drawn translucent red;
    ``gt_masks``: also each record's own ``mask`` in green."""
    masks = list(pred_masks) if pred_masks is not None else [None] * len(records)
    tiles = [draw_grounding(load_image(r.image_path, r), pred_boxes=b, gt_boxes=r.boxes, text=r.expression,
                            pred_mask=m, gt_mask=r.mask if gt_masks and r.mask is not None else None)
             for r, b, m in zip(records, pred_boxes, masks)]
    return save_grid(tiles, path, ncol=ncol)
