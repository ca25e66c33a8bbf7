"""Files our training writes: atomic save, exact resume (training checkpoints) and model files.

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

Model files
-----------
``save_model`` writes ``{"format": "vgcore-model-1", "model", "config", "metrics", "extra"[, "ema"]}`` (the
best checkpoint, what evaluation and the next stage read); ``load_model_file`` reads one of those, a training
checkpoint, or any other checkpoint (its state dict via `unwrap`).

Files are written atomically: to a temporary file ``.<name>.<random>.tmp`` in the same directory, flushed and
fsync'ed, then ``os.replace``'d over the target -- a crash mid-write leaves the previous checkpoint intact, and
`remove_stale_tmp` deletes the temporary files a killed write left behind.  Neither ``save_checkpoint`` nor
``save_model`` writes weights holding NaN / inf (`FloatingPointError` naming the tensors).
Everything stored is loadable with ``torch.load(weights_only=True)`` (args are reduced to plain types), and
everything is read that way (`vgcore.checkpoint.safe.torch_load`).
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from .. import dist
from ..dist import unwrap_model
from .keys import unwrap
from .safe import torch_load
from .strict import load_strict

__all__ = ["atomic_save", "save_checkpoint", "load_checkpoint", "get_rng_state", "set_rng_state", "save_model",
           "load_model_file", "remove_stale_tmp", "assert_finite_weights", "FORMAT", "MODEL_FORMAT"]

FORMAT = "vgcore-ckpt-1"
MODEL_FORMAT = "vgcore-model-1"


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


def remove_stale_tmp(directory: Union[str, Path]) -> list:
    """Delete the ``.<name>.<random>.tmp`` files of `atomic_save` writes that were killed midway (call it when
    no write is in progress, i.e. at the start of a run); returns the removed paths."""
    d = Path(directory)
    removed = []
    if not d.is_dir():
        return removed
    for p in sorted(d.glob(".*.tmp")):
        if p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def assert_finite_weights(model: torch.nn.Module, what: str = "checkpoint") -> None:
    """Raise `FloatingPointError` naming the floating-point parameters / buffers that hold NaN / inf
    (one fused reduction; the names are only looked up when something is non-finite)."""
    sd = {k: v for k, v in unwrap_model(model).state_dict().items() if torch.is_tensor(v) and v.is_floating_point()}
    if not sd:
        return
    flags = torch.stack([torch.isfinite(v).all() for v in sd.values()])
    if bool(flags.all()):
        return
    bad = [k for k, ok in zip(sd, flags.tolist()) if not ok]
    more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
    raise FloatingPointError(f"not writing the {what}: non-finite weights in {', '.join(bad[:8])}{more}")


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
    """Collective when distributed (all ranks call; rank 0 writes).  Returns the path on rank 0.
    Raises `FloatingPointError` (on every rank: the weights are the same) when a weight is NaN / inf."""
    assert_finite_weights(model, f"training checkpoint {path}")
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
                    map_location="cpu", trust_pickle: bool = False, world_size_change: str = "error") -> dict:
    """Restore what is given from a `save_checkpoint` file; returns {"epoch", "step", "args", "extra",
    "world_size" (of the run that saved it), "rng_restored"}.

    Raises if a requested part is absent from the file, or if the model keys/shapes differ.
    RNG: rank r restores the state saved by rank r.  A different world size is an error (resume would not
    be exact) unless ``restore_rng=False`` or ``world_size_change="skip_rng"`` (then the RNG states are left
    as they are and ``rng_restored`` is False).
    """
    if world_size_change not in ("error", "skip_rng"):
        raise ValueError(f"world_size_change must be 'error' or 'skip_rng', got {world_size_change!r}")
    ck = torch_load(path, map_location=map_location, trust_pickle=trust_pickle)
    if not isinstance(ck, Mapping) or ck.get("format") != FORMAT:
        raise ValueError(f"{path}: not a vgcore training checkpoint (use load_model_file / unwrap + "
                         f"load_strict for model-only / official files)")
    if model is not None:
        load_strict(unwrap_model(model), ck["model"], what=str(path))
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler), ("ema", ema)):
        if obj is None:
            continue
        if ck.get(name) is None:
            raise KeyError(f"{path}: checkpoint has no {name!r} state but one was asked to be restored")
        obj.load_state_dict(ck[name])
    states = ck.get("rng")
    saved_world = int(ck.get("world_size") or (len(states) if states else dist.get_world_size()))
    rng_restored = False
    if restore_rng and states is not None:
        if len(states) == dist.get_world_size():
            set_rng_state(states[dist.get_rank()])
            rng_restored = True
        elif world_size_change == "error":
            raise ValueError(f"{path}: saved with world size {len(states)}, resuming with "
                             f"{dist.get_world_size()}; pass restore_rng=False to resume inexactly")
    return {"epoch": int(ck["epoch"]), "step": int(ck["step"]), "args": ck.get("args"),
            "extra": ck.get("extra") or {}, "world_size": saved_world, "rng_restored": rng_restored}


# --------------------------------------------------------------------------------------------- model files
def save_model(path, model: torch.nn.Module, config: Any = None, metrics: Optional[dict] = None,
               extra: Optional[dict] = None, ema=None) -> Optional[Path]:
    """Model-only file: {"format", "model", "config", "metrics", "extra"[, "ema"]}; rank 0 writes (not
    collective).  ``model`` holds the raw weights (what a next stage loads, as in the official codes);
    with ``ema`` the averaged weights are kept beside them under ``ema`` (``{"shadow": state dict, ...}``),
    which evaluation selects with ``--use_ema``."""
    if not dist.is_main_process():
        return None
    assert_finite_weights(model, f"model file {path}")
    obj = {"format": MODEL_FORMAT, "model": dist.unwrap_model(model).state_dict(), "config": config,
           "metrics": dict(metrics or {}), "extra": dict(extra or {})}
    if ema is not None:
        obj["ema"] = ema.state_dict()
    return atomic_save(obj, path)


def load_model_file(path, *, trust_pickle: bool = False) -> dict:
    """Read a `save_model` file, a training checkpoint (its ``model`` part) or any other checkpoint (its state
    dict); returns a dict with at least ``model`` (a state dict), ``config`` (None when the file has none),
    ``metrics``, ``extra`` and ``raw`` (the whole loaded object, e.g. for an official checkpoint's ``args``).
    Read with ``weights_only=True`` unless ``trust_pickle``."""
    obj = torch_load(path, trust_pickle=trust_pickle)
    if isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT:
        return dict(obj, raw=obj)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        cfg = obj.get("config")
        if cfg is None and isinstance(obj.get("extra"), dict):
            cfg = obj["extra"].get("config")
        return {"model": obj["model"], "config": cfg, "metrics": obj.get("metrics", {}),
                "extra": obj.get("extra", {}), "raw": obj}
    return {"model": unwrap(obj), "config": None, "metrics": {}, "extra": {}, "raw": obj}
