"""Image loading: any file a grounding dataset may hold -> a PIL RGB image, or a clear `DataError`.

Mode handling (the official loaders all call ``PIL.Image.open(path).convert("RGB")``; we match that
except where it silently destroys the picture):

* ``RGB``: returned as is (after a full decode, so truncation is detected here and not in a worker later).
* ``L`` / ``1`` / ``CMYK`` / ``YCbCr`` / ``LAB`` / ``HSV``: PIL's ``convert("RGB")`` (CMYK uses PIL's naive
  conversion, no ICC colour management -- same as the official code).
* ``RGBA`` / ``LA`` / ``RGBa`` / ``La``: the alpha channel is **dropped** (not composited), exactly what
  ``convert("RGB")`` does in the official loaders, so pixels under transparent areas keep their stored colour.
* ``P`` / ``PA`` (palette, with or without ``transparency``): palette colours, alpha dropped. Done through
  RGBA so PIL does not warn about byte transparency; the pixels equal ``convert("RGB")``.
* ``I;16*`` / ``I`` (16-bit or 32-bit integer grey): **scaled** to 8 bits (value / 257, rounded, clipped)
  and replicated to 3 channels. Deviation: PIL's ``convert("RGB")`` clips such values at 255, which turns
  almost every 16-bit image white; no dataset of the five methods contains such images.
* ``F`` (float grey): clipped to [0, 255].

EXIF orientation is NOT applied: annotation coordinates (COCO, ReferIt, Flickr) refer to the stored pixel
grid, and the official loaders do not transpose either.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError, DataWarning

__all__ = ["load_image", "image_size", "DataError"]

_PLAIN = {"L", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}


def _where(path, record) -> str:
    s = f"image {os.fspath(path)!r}"
    if record is not None:
        s += f" (sample {record.key()})"
    return s


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _PLAIN or mode in ("RGBA", "LA", "RGBa", "La"):
        return img.convert("RGB")
    if mode in ("P", "PA"):
        return img.convert("RGBA").convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(a[..., None], 3, axis=2), "RGB")
    if mode == "F":
        a = np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(a[..., None], 3, axis=2), "RGB")
    return img.convert("RGB")


def load_image(path, record=None, check_size: bool = False) -> Image.Image:
    """Open `path` fully decoded as an RGB PIL image (see module docstring for the mode rules).

    Raises `DataError` naming the file, the sample (``record.key()`` when `record` is given) and the problem
    when the file is missing, not an image, truncated or corrupt.  When the record carries height/width and
    the decoded image has another size, a `DataWarning` names the file, the sample and both sizes (the boxes
    are read in the stored pixel grid, so they may be off); with ``check_size=True`` that is an error instead.
    """
    try:
        with Image.open(path) as img:
            img.load()
            out = _to_rgb(img)
            if out is img:
                out = img.copy()
    except FileNotFoundError:
        raise DataError(f"{_where(path, record)}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{_where(path, record)}: is a directory, not an image file") from None
    except UnidentifiedImageError as e:
        raise DataError(f"{_where(path, record)}: not a recognised image file (corrupt or wrong format): {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{_where(path, record)}: corrupt or truncated image file: {e}") from None
    if record is not None and record.height is not None and record.width is not None:
        if (out.height, out.width) != (int(record.height), int(record.width)):
            msg = (f"{_where(path, record)}: image is {out.height}x{out.width} (h x w) but the annotation "
                   f"says {int(record.height)}x{int(record.width)}")
            if check_size:
                raise DataError(msg)
            warnings.warn(msg + "; the boxes are used as stored", DataWarning, stacklevel=2)
    return out


def image_size(path, record=None) -> tuple:
    """(height, width) from the file header only (no decode); `DataError` when missing or unreadable."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError:
        raise DataError(f"{_where(path, record)}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{_where(path, record)}: unreadable image header: {e}") from None
