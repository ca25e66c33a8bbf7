"""Checkpoints: atomic save, exact resume, strict loading and helpers for official checkpoints.

Training checkpoints
--------------------
``save_checkpoint(path, model, optimizer, scheduler, scaler, ema, epoch, step, args)`` writes one file::

    {"format": "vgcore-ckpt-1", "model", "optimizer", "scheduler", "scaler", "ema",
     "epoch": e, "step": s, "args": {...}, "rng": [per-rank RNG states], "extra": {...}}

``(epoch, step)`` is the resume position: ``step`` batches of epoch ``epoch`` are done (``step = 0`` means
the epoch has not started; after a completed epoch save ``epoch + 1, 0``).  ``save_checkpoint`` is
**collective** when distributed: every rank must call it (it gathers every rank's RNG state); rank 0 writes.
``load_checkpoint`` restores everything given to it, each rank picks its own RNG state, and returns
``{"epoch", "step", "args", "extra"}``; the script then calls ``loader.set_epoch(epoch, start_step=step)``
(see `vgcore.dist.build_loader`) and ``train_one_epoch(..., start_step=step)`` -- the rest of the epoch then
sees exactly the batches, RNG streams and lr values of an uninterrupted run (CPU, ``num_workers=0``).

Files are written atomically: to a temporary file in the same directory, flushed and fsync'ed, then
``os.replace``'d over the target -- a crash mid-write leaves the previous checkpoint intact.
Everything stored is loadable with ``torch.load(weights_only=True)`` (args are reduced to plain types).

Official checkpoints
--------------------
``unwrap_checkpoint`` (descend through "model"/"state_dict"/"module"), ``strip_prefix``, ``rename_keys`` (regex
rules, with a report of keys no rule touched), ``resize_pos_embed`` (1-D or 2-D grids, bicubic, leading extra
tokens kept) and ``load_state_dict_strict`` (raises listing missing / unexpected / shape-mismatched keys; there
is deliberately no silent ``strict=False``).
"""
from __future__ import annotations

import argparse
import os
import random
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import dist
from .dist import unwrap_model

__all__ = [
    "atomic_save", "torch_load", "save_checkpoint", "load_checkpoint", "get_rng_state", "set_rng_state",
    "StateDictMismatchError", "check_state_dict", "load_state_dict_strict", "strip_prefix", "rename_keys",
    "resize_pos_embed", "unwrap_checkpoint",
]

FORMAT = "vgcore-ckpt-1"


# --------------------------------------------------------------------------------------------- file I/O
def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(str(d), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Union[str, Path]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (tmp file in the same dir, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def torch_load(path: Union[str, Path], map_location="cpu", weights_only: bool = True) -> Any:
    """``torch.load`` with ``argparse.Namespace`` allowed under ``weights_only=True`` (official TransVG-family
    checkpoints store their args as a Namespace).  Pass ``weights_only=False`` only for trusted files."""
    if not weights_only:
        return torch.load(path, map_location=map_location, weights_only=False)
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location=map_location, weights_only=True)


# --------------------------------------------------------------------------------------------- RNG
def get_rng_state() -> dict:
    """Python, numpy, torch CPU and (if available) CUDA RNG states, in weights_only-safe types."""
    np_state = np.random.get_state()
    st = {
        "python": random.getstate(),
        "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    v = st["python"]
    random.setstate((v[0], tuple(v[1]), v[2]))
    n = st["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(st["torch"].cpu())
    if "cuda" in st and torch.cuda.is_available():
        states = st["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in states])
        else:
            torch.cuda.set_rng_state(states[0].cpu())


def _plain(x: Any) -> Any:
    """Reduce args to weights_only-loadable types."""
    if isinstance(x, argparse.Namespace):
        x = vars(x)
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


# --------------------------------------------------------------------------------------------- save / load
def save_checkpoint(path: Union[str, Path], model: torch.nn.Module, optimizer=None, scheduler=None, scaler=None,
                    ema=None, epoch: int = 0, step: int = 0, args: Any = None, rng: bool = True,
                    extra: Optional[dict] = None) -> Optional[Path]:
    """Collective when distributed (all ranks call; rank 0 writes).  Returns the path on rank 0."""
    rng_states = dist.all_gather_object(get_rng_state()) if rng else None
    if not dist.is_main_process():
        dist.barrier()
        return None
    obj = {
        "format": FORMAT,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "args": _plain(args),
        "rng": rng_states,
        "world_size": dist.get_world_size(),
        "extra": _plain(extra or {}),
    }
    out = atomic_save(obj, path)
    dist.barrier()
    return out


def load_checkpoint(path: Union[str, Path], model: Optional[torch.nn.Module] = None, optimizer=None,
                    scheduler=None, scaler=None, ema=None, restore_rng: bool = True,
                    map_location="cpu") -> dict:
    """Restore what is given from a `save_checkpoint` file; returns {"epoch", "step", "args", "extra"}.

    Raises if a requested part is absent from the file, or if the model keys/shapes differ.
    RNG: rank r restores the state saved by rank r; a different world size is an error (resume would not
    be exact) unless ``restore_rng=False``.
    """
    ck = torch_load(path, map_location=map_location)
    if not isinstance(ck, Mapping) or ck.get("format") != FORMAT:
        raise ValueError(f"{path}: not a vgcore training checkpoint (use unwrap_checkpoint + "
                         f"load_state_dict_strict for model-only / official files)")
    if model is not None:
        load_state_dict_strict(unwrap_model(model), ck["model"], what=str(path))
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler), ("ema", ema)):
        if obj is None:
            continue
        if ck.get(name) is None:
            raise KeyError(f"{path}: checkpoint has no {name!r} state but one was asked to be restored")
        obj.load_state_dict(ck[name])
    if restore_rng and ck.get("rng") is not None:
        states = ck["rng"]
        if len(states) != dist.get_world_size():
            raise ValueError(f"{path}: saved with world size {len(states)}, resuming with "
                             f"{dist.get_world_size()}; pass restore_rng=False to resume inexactly")
        set_rng_state(states[dist.get_rank()])
    return {"epoch": int(ck["epoch"]), "step": int(ck["step"]), "args": ck.get("args"),
            "extra": ck.get("extra") or {}}


# --------------------------------------------------------------------------------------------- strict loading
class StateDictMismatchError(RuntimeError):
    def __init__(self, missing, unexpected, mismatched, what: str = ""):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        parts = [f"state dict does not match the model{(' (' + what + ')') if what else ''}:"]
        if self.missing:
            parts.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            parts.append(f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        if self.mismatched:
            parts.append(f"  shape mismatches ({len(self.mismatched)}): " +
                         ", ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched))
        super().__init__("\n".join(parts))


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], allow_missing: Sequence[str] = (),
                     allow_unexpected: Sequence[str] = ()) -> Tuple[List[str], List[str], List[tuple]]:
    """(missing, unexpected, shape-mismatched) keys of ``sd`` against ``model``; ``allow_*`` are regexes of
    keys that may legitimately be missing / unexpected (e.g. a head trained from scratch)."""
    own = unwrap_model(model).state_dict()
    am = [re.compile(p) for p in allow_missing]
    au = [re.compile(p) for p in allow_unexpected]
    missing = [k for k in own if k not in sd and not any(r.search(k) for r in am)]
    unexpected = [k for k in sd if k not in own and not any(r.search(k) for r in au)]
    mismatched = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own
                  if k in sd and torch.is_tensor(sd[k]) and tuple(sd[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, mismatched


def load_state_dict_strict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor],
                           allow_missing: Sequence[str] = (), allow_unexpected: Sequence[str] = (),
                           what: str = "") -> Tuple[List[str], List[str]]:
    """Load ``sd`` into ``model``; raise `StateDictMismatchError` naming every missing, unexpected and
    shape-mismatched key unless explicitly allowed by the ``allow_*`` regexes.  Returns the (allowed)
    missing and unexpected keys so the caller can report them."""
    missing, unexpected, mismatched = check_state_dict(model, sd, allow_missing, allow_unexpected)
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(missing, unexpected, mismatched, what)
    res = unwrap_model(model).load_state_dict(sd, strict=False)
    return list(res.missing_keys), list(res.unexpected_keys)


# --------------------------------------------------------------------------------------------- official files
def unwrap_checkpoint(obj: Any, keys: Sequence[str] = ("model", "state_dict", "module")) -> Dict[str, Any]:
    """Descend through wrapper dicts (``{"model": {...}}``, ``{"state_dict": ...}``, nested) to the state dict.

    A key is followed only if its value is itself a mapping, so a state dict that happens to contain a
    tensor named "model" is returned as is."""
    seen = 0
    while isinstance(obj, Mapping) and seen < 8:
        for k in keys:
            if k in obj and isinstance(obj[k], Mapping):
                obj = obj[k]
                break
        else:
            break
        seen += 1
    if not isinstance(obj, Mapping):
        raise TypeError(f"unwrap_checkpoint: expected a mapping, got {type(obj).__name__}")
    return obj


def strip_prefix(sd: Mapping[str, Any], prefixes: Union[str, Sequence[str]], repeat: bool = True) -> "OrderedDict":
    """Remove any of ``prefixes`` from the start of each key (again and again if ``repeat``, e.g.
    ``module.module.x``).  Raises if two keys collide after stripping."""
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    out: "OrderedDict[str, Any]" = OrderedDict()
    for k, v in sd.items():
        nk = k
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if p and nk.startswith(p):
                    nk = nk[len(p):]
                    changed = repeat
                    break
        if nk in out:
            raise KeyError(f"strip_prefix: keys collide after stripping {list(prefixes)}: {nk!r} (from {k!r})")
        out[nk] = v
    return out


def rename_keys(sd: Mapping[str, Any], rules: Sequence[Tuple[str, Optional[str]]], keep_unmatched: bool = True
                ) -> Tuple["OrderedDict", List[str]]:
    """Apply regex rules ``(pattern, repl)`` in order to every key (each matching rule rewrites the current
    key with ``re.sub``; ``repl=None`` drops the key).  Returns ``(new_sd, unmatched)`` where ``unmatched``
    lists original keys no rule matched (kept unchanged if ``keep_unmatched``, else dropped).
    Raises if two keys map to the same new name."""
    rules_c = [(re.compile(p), r) for p, r in rules]
    out: "OrderedDict[str, Any]" = OrderedDict()
    unmatched: List[str] = []
    src: Dict[str, str] = {}
    for k, v in sd.items():
        nk: Optional[str] = k
        hit = False
        for pat, repl in rules_c:
            if nk is not None and pat.search(nk):
                hit = True
                nk = None if repl is None else pat.sub(repl, nk)
        if not hit:
            unmatched.append(k)
            if not keep_unmatched:
                continue
        if nk is None:
            continue
        if nk in out:
            raise KeyError(f"rename_keys: {k!r} and {src[nk]!r} both map to {nk!r}")
        out[nk] = v
        src[nk] = k
    return out, unmatched


def resize_pos_embed(pos: torch.Tensor, new_grid: Union[int, Sequence[int]], num_extra_tokens: int = 0,
                     old_grid: Union[None, int, Sequence[int]] = None, mode: str = "bicubic",
                     align_corners: bool = False) -> torch.Tensor:
    """Resize a position table [N, C] or [1, N, C] whose last ``N - num_extra_tokens`` rows form a grid.

    ``new_grid``/``old_grid``: an int L for a 1-D table (text positions), a pair (h, w) for a 2-D grid (ViT
    patches; row-major).  ``old_grid`` None -> 2-D square if ``new_grid`` is a pair, else 1-D.  The leading
    ``num_extra_tokens`` rows (cls, distillation, ...) are kept as they are.  Interpolation is done in float32
    (``mode`` bicubic by default; 1-D grids are treated as 1 x L images) and cast back to the input dtype.
    """
    squeeze = pos.dim() == 2
    if squeeze:
        pos = pos[None]
    if pos.dim() != 3:
        raise ValueError(f"resize_pos_embed: expected [N, C] or [1, N, C], got {tuple(pos.shape)}")
    extra, grid = pos[:, :num_extra_tokens], pos[:, num_extra_tokens:]
    n, C = grid.shape[1], grid.shape[2]
    two_d = not isinstance(new_grid, int)
    if old_grid is None:
        if two_d:
            s = int(round(n ** 0.5))
            if s * s != n:
                raise ValueError(f"resize_pos_embed: {n} grid tokens is not a square; pass old_grid=(h, w)")
            old_grid = (s, s)
        else:
            old_grid = n
    oh, ow = (1, old_grid) if isinstance(old_grid, int) else tuple(old_grid)
    nh, nw = (1, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
    if oh * ow != n:
        raise ValueError(f"resize_pos_embed: old grid {oh}x{ow} != {n} tokens")
    if (oh, ow) == (nh, nw):
        out = pos
    else:
        g = grid.float().reshape(grid.shape[0], oh, ow, C).permute(0, 3, 1, 2)
        kw = {} if mode in ("nearest", "area") else {"align_corners": align_corners}
        g = F.interpolate(g, size=(nh, nw), mode=mode, **kw)
        g = g.permute(0, 2, 3, 1).reshape(grid.shape[0], nh * nw, C).to(pos.dtype)
        out = torch.cat([extra, g], 1)
    return out[0] if squeeze else out
