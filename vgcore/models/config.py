"""Model configs from a dict, an argparse Namespace or a config: the one rule every method package uses.

``config_from(cls, args, presets, what, **overrides)``: ``preset`` / ``model_preset`` names a ``presets`` entry
applied first, then every non-None field of ``args`` and ``overrides``.  A dict must hold only config fields
(unknown keys raise, naming the valid ones); a Namespace may hold other options, which are ignored, and its
``preset`` may name a training recipe (only ``model_preset`` must then be a model preset).
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, Dict, Mapping, Type, TypeVar

__all__ = ["config_from"]

C = TypeVar("C")


def config_from(cls: Type[C], args: Any, presets: Mapping[str, Dict[str, Any]], what: str, **overrides) -> C:
    if isinstance(args, cls):
        return cls(**{**args.to_dict(), **overrides})
    names = {f.name for f in fields(cls)}
    if args is None:
        d, strict = {}, True
    elif isinstance(args, Mapping):
        d, strict = dict(args), True
    elif isinstance(args, argparse.Namespace):
        d, strict = dict(vars(args)), False
    else:
        raise TypeError(f"{what} config: expected a dict, Namespace or {cls.__name__}, got {type(args).__name__}")
    d.update(overrides)
    preset = d.get("model_preset") or d.get("preset")
    if not strict and not d.get("model_preset") and preset not in presets:
        preset = None  # a Namespace's 'preset' may name a training recipe
    kw: Dict[str, Any] = {}
    if preset:
        if preset not in presets:
            raise KeyError(f"unknown {what} preset {preset!r}; choose from {sorted(presets)}")
        kw.update(presets[preset])
    unknown = sorted(k for k in d if k not in names and k not in ("preset", "model_preset"))
    if strict and unknown:
        raise KeyError(f"unknown {what} config keys {unknown}; valid: {sorted(names)}")
    kw.update({k: v for k, v in d.items() if k in names and v is not None})
    return cls(**kw)
