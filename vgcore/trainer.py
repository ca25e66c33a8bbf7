"""The epoch loop every ``train.py`` shares: resume, train, checkpoint, validate, keep the best.

A method's ``train.py`` (usually `vgcore.method.train`) builds its model, criterion, optimizer, schedule and
loaders, describes the loop in a `LoopConfig`, then calls `fit`.
Everything stateful lives in one place so that a run stopped anywhere (mid-epoch included) and resumed
with ``--resume <output_dir>/checkpoint.pth`` ends with the same weights as an uninterrupted run:

* ``<output_dir>/checkpoint.pth``: the full training state (`vgcore.checkpoint.save_checkpoint`), written
  atomically at the end of every epoch and every ``LoopConfig.checkpoint_every_steps`` optimizer steps.  It stores
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
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch

from . import dist
from .checkpoint import load_checkpoint, save_checkpoint, save_model
from .engine import Logger, evaluate, train_one_epoch

__all__ = ["LoopConfig", "fit"]


def _better(new: float, best: Optional[float], mode: str) -> bool:
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return new > best if mode == "max" else new < best


@dataclass
class LoopConfig:
    """What the epoch loop does, field by field (each ``train.py`` fills it from its own flags).

    epochs: epochs in total; output_dir: where checkpoints and logs go; resume: a ``checkpoint.pth`` to continue
    exactly ("" = start fresh); eval_every: epochs between validations (the last epoch always validates);
    eval_start_epoch: no validation after epochs ``e < eval_start_epoch`` (0-based; SimVG's
    ``start_evaluate_epoch``); clip_max_norm: total-norm clipping (0 = off); accum_steps: gradient accumulation;
    amp: none | bf16 | fp16; log_every: batches between log lines; checkpoint_every_steps: mid-epoch
    checkpoints (optimizer steps; 0 = per epoch only); max_steps: batches per epoch (debug); stop_after_steps:
    stop the whole run after this many batches in total (the state is checkpointed; continue with ``resume``);
    tensorboard: write ``<output_dir>/tb``; metric / mode: the validation key that selects
    ``best_checkpoint.pth`` and whether larger (max) or smaller (min) is better.
    """
    epochs: int
    output_dir: str
    resume: str = ""
    eval_every: int = 1
    eval_start_epoch: int = 0
    clip_max_norm: float = 0.0
    accum_steps: int = 1
    amp: str = "none"
    log_every: int = 50
    checkpoint_every_steps: int = 0
    max_steps: Optional[int] = None
    stop_after_steps: Optional[int] = None
    tensorboard: bool = True
    metric: str = "acc@0.5"
    mode: str = "max"

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"LoopConfig.mode must be 'max' or 'min', got {self.mode!r}")
        if self.accum_steps < 1:
            raise ValueError(f"LoopConfig.accum_steps must be >= 1, got {self.accum_steps}")

    def validates_after(self, epoch: int) -> bool:
        """Whether validation runs at the end of 0-based ``epoch``."""
        if epoch < self.eval_start_epoch:
            return False
        return (epoch + 1) % max(self.eval_every, 1) == 0 or epoch + 1 == self.epochs


def fit(loop: LoopConfig, *, model: torch.nn.Module, criterion: Callable, optimizer: torch.optim.Optimizer,
        scheduler, train_loader, device, val_loader=None, postprocess: Optional[Callable] = None,
        make_accumulators: Optional[Callable[[], Any]] = None, ema=None, scaler=None, model_config: Any = None,
        logger: Optional[Logger] = None, initial_best: Optional[float] = None,
        run_args: Any = None) -> Dict[str, Any]:
    """Train ``loop.epochs`` epochs (resuming from ``loop.resume`` if set); returns the final summary
    ``{"best", "metric", "last", "stopped"}``.

    ``model`` may be DDP-wrapped.  Validation (``val_loader`` + ``postprocess`` + ``make_accumulators()``, see
    `vgcore.engine.evaluate`) runs after the epochs `LoopConfig.validates_after` selects and uses the EMA
    weights when ``ema`` is given.  ``initial_best`` is the value to beat before the first validation (e.g. the
    previous stage's model); ``run_args`` (e.g. ``vars(args)``) is stored in the checkpoints for reference.
    """
    out = Path(loop.output_dir)
    if dist.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    logger = logger or Logger(str(out), tensorboard=loop.tensorboard)
    ckpt_path = out / "checkpoint.pth"
    best_path = out / "best_checkpoint.pth"
    metric = loop.metric

    epoch, step, best = 0, 0, initial_best
    if loop.resume:
        info = load_checkpoint(loop.resume, model, optimizer, scheduler, scaler, ema)
        epoch, step = info["epoch"], info["step"]
        best = info["extra"].get("best", best)
        logger.info(f"resumed from {loop.resume}: epoch {epoch}, step {step}, best {metric} {best}")

    def save(e: int, s: int) -> None:
        save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, ema, epoch=e, step=s, args=run_args,
                        extra={"best": best, "config": model_config})

    stop_after = loop.stop_after_steps
    try:
        per_epoch = len(train_loader)
    except TypeError:
        per_epoch = None
    done_total = epoch * (per_epoch or 0) + step
    last_metrics: Dict[str, float] = {}
    stopped = False
    for e in range(epoch, loop.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(e, step)
        ds = getattr(train_loader, "dataset", None)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(e)
        max_steps = loop.max_steps
        if stop_after is not None and per_epoch is not None:
            cap = step + max(stop_after - done_total, 0)
            max_steps = cap if max_steps is None else min(max_steps, cap)
        stats = train_one_epoch(
            model, criterion, train_loader, optimizer, scheduler, device, e, amp=loop.amp, scaler=scaler,
            accum_steps=loop.accum_steps, clip_max_norm=loop.clip_max_norm, ema=ema, logger=logger,
            log_every=loop.log_every, start_step=step, checkpoint_fn=save,
            checkpoint_every=loop.checkpoint_every_steps or 0, max_steps=max_steps)
        done_total += int(stats["steps"]) - step
        if not stats["completed"]:
            # stopped inside the epoch (max_steps / stop_after_steps): keep the exact position
            save(e, int(stats["steps"]))
            if stop_after is not None and done_total >= stop_after:
                stopped = True
                break
        step = 0
        record = {"epoch": e, **{f"train/{k}": v for k, v in stats.items()}}
        if (val_loader is not None and postprocess is not None and make_accumulators is not None
                and loop.validates_after(e)):
            with (ema.apply_to(model) if ema is not None else contextlib.nullcontext()):
                last_metrics = evaluate(model, val_loader, device, postprocess=postprocess,
                                        accumulators=make_accumulators(), amp=loop.amp,
                                        logger=logger, log_step=e + 1, desc=f"val {e}")
            value = last_metrics.get(metric)
            if value is not None and _better(value, best, loop.mode):
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
