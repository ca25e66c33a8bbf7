"""The epoch loop every ``train.py`` shares: resume, train, checkpoint, validate, keep the best.

A method's ``train.py`` builds its model, criterion, optimizer, schedule and loaders, then calls `fit`.
Everything stateful lives in one place so that a run stopped anywhere (mid-epoch included) and resumed
with ``--resume <output_dir>/checkpoint.pth`` ends with the same weights as an uninterrupted run:

* ``<output_dir>/checkpoint.pth``: the full training state (`vgcore.checkpoint.save_checkpoint`), written
  atomically at the end of every epoch and every ``--checkpoint_every_steps`` optimizer steps.  It stores
  ``(epoch, step)`` = the epoch in progress and the batches of it already done.
* ``<output_dir>/best_checkpoint.pth``: model weights (raw, plus the EMA weights when training keeps an EMA;
  validation and model selection use the EMA) + model config + the validation metrics of the best epoch
  (`save_model`), the file ``eval.py`` and the next training stage read.
* ``<output_dir>/log.jsonl`` / ``tb/``: per-epoch statistics (rank 0).

The data order of epoch ``e`` depends only on ``(seed, e, rank)`` (`vgcore.dist.build_loader`), and a
dataset exposing ``set_epoch`` draws its augmentations from per-(epoch, index) seeds, so skipping the
first ``step`` batches on resume reproduces the remaining batches exactly.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from . import dist
from .checkpoint import MODEL_FORMAT, load_checkpoint, load_model_file, save_checkpoint, save_model  # noqa: F401
from .engine import Logger, evaluate, train_one_epoch

__all__ = ["fit", "save_model", "load_model_file", "MODEL_FORMAT"]


def _better(new: float, best: Optional[float], mode: str) -> bool:
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return new > best if mode == "max" else new < best


def fit(*, args, model: torch.nn.Module, criterion: Callable, optimizer: torch.optim.Optimizer, scheduler,
        train_loader, device, val_loader=None, postprocess: Optional[Callable] = None,
        make_accumulators: Optional[Callable[[], Any]] = None, metric: str = "acc@0.5", mode: str = "max",
        ema=None, scaler=None, model_config: Any = None, logger: Optional[Logger] = None,
        start_epoch: int = 0, initial_best: Optional[float] = None) -> Dict[str, Any]:
    """Train ``args.epochs`` epochs (resuming from ``args.resume`` if set); returns the final summary.

    ``args`` fields read: epochs, output_dir, resume, amp, accum_steps, clip_max_norm, log_every,
    checkpoint_every_steps, eval_every, max_steps (batches per epoch, debug), stop_after_steps (stop the
    whole run after this many batches in total -- simulates an interruption; the state is checkpointed).
    ``model`` may be DDP-wrapped.  Validation uses the EMA weights when ``ema`` is given.
    """
    out = Path(args.output_dir)
    if dist.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    logger = logger or Logger(str(out), tensorboard=getattr(args, "tensorboard", True))
    ckpt_path = out / "checkpoint.pth"
    best_path = out / "best_checkpoint.pth"

    epoch, step, best = start_epoch, 0, initial_best
    if getattr(args, "resume", ""):
        info = load_checkpoint(args.resume, model, optimizer, scheduler, scaler, ema)
        epoch, step = info["epoch"], info["step"]
        best = info["extra"].get("best", best)
        logger.info(f"resumed from {args.resume}: epoch {epoch}, step {step}, best {metric} {best}")

    extra = lambda: {"best": best, "config": model_config}  # noqa: E731

    def save(e: int, s: int) -> None:
        save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, ema, epoch=e, step=s, args=args,
                        extra=extra())

    stop_after = getattr(args, "stop_after_steps", None)
    try:
        per_epoch = len(train_loader)
    except TypeError:
        per_epoch = None
    done_total = epoch * (per_epoch or 0) + step
    last_metrics: Dict[str, float] = {}
    stopped = False
    for e in range(epoch, args.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(e, step)
        ds = getattr(train_loader, "dataset", None)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(e)
        max_steps = getattr(args, "max_steps", None)
        if stop_after is not None and per_epoch is not None:
            remaining = stop_after - done_total
            cap = step + max(remaining, 0)
            max_steps = cap if max_steps is None else min(max_steps, cap)
        stats = train_one_epoch(
            model, criterion, train_loader, optimizer, scheduler, device, e, amp=getattr(args, "amp", "none"),
            scaler=scaler, accum_steps=getattr(args, "accum_steps", 1),
            clip_max_norm=getattr(args, "clip_max_norm", 0.0), ema=ema, logger=logger,
            log_every=getattr(args, "log_every", 50), start_step=step, checkpoint_fn=save,
            checkpoint_every=getattr(args, "checkpoint_every_steps", 0) or 0, max_steps=max_steps)
        done_total += int(stats["steps"]) - step
        if not stats["completed"]:
            # stopped inside the epoch (max_steps / stop_after_steps): keep the exact position
            save(e, int(stats["steps"]))
            if stop_after is not None and done_total >= stop_after:
                stopped = True
                break
        step = 0
        record = {"epoch": e, **{f"train/{k}": v for k, v in stats.items()}}
        do_eval = (val_loader is not None and postprocess is not None and make_accumulators is not None
                   and ((e + 1) % max(getattr(args, "eval_every", 1), 1) == 0 or e + 1 == args.epochs))
        if do_eval:
            with (ema.apply_to(model) if ema is not None else contextlib.nullcontext()):
                last_metrics = evaluate(model, val_loader, device, postprocess=postprocess,
                                        accumulators=make_accumulators(), amp=getattr(args, "amp", "none"),
                                        logger=logger, log_step=e + 1, desc=f"val {e}")
            value = last_metrics.get(metric)
            if value is not None and _better(value, best, mode):
                best = value
                save_model(best_path, model, model_config, last_metrics, {"epoch": e}, ema=ema)
            record.update({f"val/{k}": v for k, v in last_metrics.items()})
            logger.info(f"epoch {e}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_metrics.items()
                                                   if isinstance(v, float)) + f" (best {metric} {best})")
        save(e + 1, 0)
        logger.json(record)
        if stop_after is not None and done_total >= stop_after:
            stopped = True
            break
    summary = {"best": best, "metric": metric, "last": last_metrics, "stopped": stopped}
    if dist.is_main_process():
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    logger.flush()
    return summary
