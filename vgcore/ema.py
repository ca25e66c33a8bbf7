"""Exponential moving average of a model's whole state dict (parameters and buffers).

After each optimizer step ``update(model)`` does, for every floating-point entry,
``ema = d * ema + (1 - d) * value`` and copies non-float entries (e.g. ``num_batches_tracked``).
The decay ``d`` for the n-th update (n = number of updates done before this one, starting at 0) is

* ``warmup=None``        -> ``decay``;
* ``warmup="ratio"``     -> ``min(decay, (1 + n) / (10 + n))`` (SimVG's / the TF ``num_updates`` rule);
* ``warmup=<float tau>`` -> ``decay * (1 - exp(-(n + 1) / tau))`` (timm / YOLO style ramp);
* ``warmup=<callable>``  -> ``warmup(n)``.

Distributed: construct it on every rank (the constructor broadcasts rank 0's state, so per-rank init
seeds do not matter); updates then stay identical across ranks because DDP keeps the weights identical.
The shadow lives in float32 on ``device`` (default: the model's device) whatever the model dtype.
``with ema.apply_to(model): evaluate(...)`` swaps the EMA weights in and restores the raw ones afterwards.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional, Union

import torch

from . import dist
from .dist import unwrap_model

__all__ = ["ModelEMA"]


class ModelEMA:
    def __init__(self, model: torch.nn.Module, decay: float = 0.9999,
                 warmup: Union[None, str, float, Callable[[int], float]] = None, device=None):
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        self.device = device
        sd = unwrap_model(model).state_dict()
        self.shadow = {k: self._init(v) for k, v in sd.items()}
        if dist.is_dist():  # ranks may have initialised differently (per-rank seeds): start from rank 0's
            for v in self.shadow.values():
                dist.broadcast(v, 0)

    def _init(self, v: torch.Tensor) -> torch.Tensor:
        v = v.detach().clone()
        if v.is_floating_point():
            v = v.float()
        return v.to(self.device) if self.device is not None else v

    def current_decay(self, n: Optional[int] = None) -> float:
        n = self.updates if n is None else n
        w = self.warmup
        if w is None:
            return self.decay
        if w == "ratio":
            return min(self.decay, (1.0 + n) / (10.0 + n))
        if callable(w):
            return float(w(n))
        return self.decay * (1.0 - math.exp(-(n + 1) / float(w)))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        sd = unwrap_model(model).state_dict()
        floats_e, floats_v = [], []
        for k, e in self.shadow.items():
            v = sd[k].detach()
            if e.is_floating_point():
                floats_e.append(e)
                floats_v.append(v.to(e.device, e.dtype))
            else:
                e.copy_(v)
        if floats_e:
            torch._foreach_mul_(floats_e, d)
            torch._foreach_add_(floats_e, floats_v, alpha=1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, sd: dict) -> None:
        shadow = sd["shadow"]
        missing = sorted(set(self.shadow) - set(shadow))
        unexpected = sorted(set(shadow) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(f"ModelEMA.load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for k, v in shadow.items():
            self.shadow[k].copy_(v.to(self.shadow[k].device, self.shadow[k].dtype))
        self.updates = int(sd["updates"])
        self.decay = float(sd.get("decay", self.decay))

    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite ``model``'s state with the EMA state (cast to the model's dtypes)."""
        m = unwrap_model(model)
        sd = m.state_dict()
        with torch.no_grad():
            for k, v in sd.items():
                v.copy_(self.shadow[k].to(v.device, v.dtype))

    @contextlib.contextmanager
    def apply_to(self, model: torch.nn.Module):
        """Context in which ``model`` carries the EMA weights; the raw weights come back on exit."""
        m = unwrap_model(model)
        backup = {k: v.detach().clone() for k, v in m.state_dict().items()}
        self.copy_to(m)
        try:
            yield m
        finally:
            with torch.no_grad():
                for k, v in m.state_dict().items():
                    v.copy_(backup[k])
