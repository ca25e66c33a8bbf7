"""Float32 islands inside an autocast forward: the prediction heads whose outputs are boxes and class scores
run in float32 even under ``--amp`` (a bfloat16 box coordinate carries ~3 significant digits: about 2 px at
640 px).  Outside autocast `fp32` is a plain call."""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["fp32"]


def fp32(fn: Callable, *tensors: torch.Tensor):
    """``fn(*tensors)`` with autocast off and floating inputs in float32 when autocast is on for their device."""
    dev = tensors[0].device.type
    if not torch.is_autocast_enabled(dev):
        return fn(*tensors)
    with torch.autocast(dev, enabled=False):
        return fn(*(t.float() if t.is_floating_point() else t for t in tensors))
