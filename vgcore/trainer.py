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

Before anything is built, the ``train.py`` main calls `prepare_output_dir`: it removes the temporary files of
checkpoint writes that were killed, and refuses an output folder that holds a previous run (``checkpoint.pth``,
``best_checkpoint.pth`` or ``log.jsonl``) unless the run resumes (``--resume``) or ``--overwrite`` is given
(then that run's files are deleted).

Resume (``LoopConfig.resume``): the log names the checkpoint, the position, the best so far, and every flag
whose value differs from the saved run's.  A different world size resumes with the saved weights, optimizer
and schedule but fresh RNG states (the log says so), and the position in the epoch is carried over in samples.
A different ``--batch_size``, ``--lr`` or ``--accum_steps`` is refused unless ``LoopConfig.allow_resume_changes``
(``--allow_resume_changes``); then a new ``--lr`` rescales the schedule's base learning rates by new / old.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

from . import dist
from .checkpoint.training import load_checkpoint, remove_stale_tmp, save_checkpoint, save_model
from .engine import Logger, evaluate, integral_counts, train_one_epoch

__all__ = ["LoopConfig", "fit", "prepare_output_dir", "wrap_ddp", "RUN_FILES", "RESUME_GUARDED"]

RUN_FILES = ("checkpoint.pth", "best_checkpoint.pth", "log.jsonl")  # a folder holding one of these is "used"
_RUN_OUTPUTS = RUN_FILES + ("log.txt", "train_summary.json", "latest.pth", "det_best.pth")  # removed by overwrite
RESUME_GUARDED = ("batch_size", "lr", "accum_steps")  # changing one on resume needs allow_resume_changes
_NOT_COMPARED = {"resume", "output_dir", "overwrite", "allow_resume_changes", "local_rank", "world_size",
                 "stop_after_steps", "max_steps", "device", "dist_backend", "num_workers"}


def _fmt(k: str, v) -> str:
    return f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}"


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
    ``best_checkpoint.pth`` and whether larger (max) or smaller (min) is better; overwrite: start fresh in a
    folder that holds a previous run (deleting its files; `prepare_output_dir`); allow_resume_changes: accept a
    different batch size / lr / accumulation on resume.
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
    overwrite: bool = False
    allow_resume_changes: bool = False

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"LoopConfig.mode must be 'max' or 'min', got {self.mode!r}")
        if self.accum_steps < 1:
            raise ValueError(f"LoopConfig.accum_steps must be >= 1, got {self.accum_steps}")

    @classmethod
    def from_cli(cls, args, *, metric: str = "acc@0.5", mode: str = "max") -> "LoopConfig":
        """The loop of a parser built from `vgcore.cli`'s optim and logging groups (their flag names, read one by
        one); a method whose flags have other names builds its `LoopConfig` field by field."""
        return cls(epochs=args.epochs, output_dir=args.output_dir, resume=args.resume, eval_every=args.eval_every,
                   clip_max_norm=args.clip_max_norm, accum_steps=args.accum_steps, amp=args.amp,
                   log_every=args.log_every, checkpoint_every_steps=args.checkpoint_every_steps,
                   max_steps=args.max_steps, stop_after_steps=args.stop_after_steps,
                   tensorboard=bool(args.tensorboard), metric=metric, mode=mode)

    def validates_after(self, epoch: int) -> bool:
        """Whether validation runs at the end of 0-based ``epoch``."""
        if epoch < self.eval_start_epoch:
            return False
        return (epoch + 1) % max(self.eval_every, 1) == 0 or epoch + 1 == self.epochs


def prepare_output_dir(loop: LoopConfig) -> List[str]:
    """Start of a run, before anything is built (every rank calls it): remove stale ``.*.tmp`` files of killed
    checkpoint writes, refuse (`SystemExit`) a folder that holds a previous run unless ``loop.resume`` or
    ``loop.overwrite`` (which deletes that run's files).  Returns the notes to log."""
    out = Path(loop.output_dir)
    used = [n for n in RUN_FILES if (out / n).exists()]
    if used and not loop.resume and not loop.overwrite:
        raise SystemExit(f"{out} holds a previous run ({', '.join(used)}): pass --resume {out / 'checkpoint.pth'} "
                         f"to continue it, --overwrite to start over in it, or another --output_dir")
    notes = []
    if not dist.is_main_process():
        return notes
    stale = remove_stale_tmp(out)
    if stale:
        notes.append(f"removed {len(stale)} unfinished checkpoint write(s): {', '.join(p.name for p in stale)}")
    if used and loop.overwrite and not loop.resume:
        gone = [n for n in _RUN_OUTPUTS if (out / n).is_file() or (out / n).is_symlink()]
        for n in gone:
            (out / n).unlink()
        notes.append(f"--overwrite: deleted the previous run's {', '.join(gone)} in {out}")
    return notes


@contextlib.contextmanager
def _stderr_silenced():
    """fd 2 to /dev/null (C++ warnings bypass Python's ``warnings`` and ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _OneNoticeDDP(torch.nn.parallel.DistributedDataParallel):
    """DDP whose first forward is silent on ranks > 0: PyTorch's once-per-process notice that
    ``find_unused_parameters=True`` found no unused parameter (printed from C++ at the end of the first forward)
    then appears once per job, from rank 0."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._quiet_once = not dist.is_main_process()

    def forward(self, *args, **kw):
        if self._quiet_once:
            self._quiet_once = False
            with _stderr_silenced():
                return super().forward(*args, **kw)
        return super().forward(*args, **kw)


def wrap_ddp(model: torch.nn.Module, device, find_unused_parameters: bool = True) -> torch.nn.Module:
    """DistributedDataParallel around ``model``, the ``find_unused_parameters`` notice once per job (rank 0)."""
    device = torch.device(device)
    cls = _OneNoticeDDP if find_unused_parameters else torch.nn.parallel.DistributedDataParallel
    return cls(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=find_unused_parameters)


def _changes(saved: Any, now: Any) -> Dict[str, tuple]:
    """Flags whose values differ between the saved run's args and this run's ({name: (saved, now)})."""
    if not isinstance(saved, dict) or not isinstance(now, dict):
        return {}
    from .checkpoint.training import _plain
    now = _plain(now)
    return {k: (saved.get(k), now[k]) for k in sorted(now) if k not in _NOT_COMPARED and k in saved
            and saved.get(k) != now[k]}


def _rescale_lr(optimizer, scheduler, ratio: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] *= ratio
        if "initial_lr" in g:
            g["initial_lr"] *= ratio
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [b * ratio for b in scheduler.base_lrs]


def _resume(loop: LoopConfig, logger: Logger, model, optimizer, scheduler, scaler, ema, run_args,
            train_loader, initial_best):
    """Load ``loop.resume``; check and log what changed; returns (epoch, step, best)."""
    info = load_checkpoint(loop.resume, model, optimizer, scheduler, scaler, ema, world_size_change="skip_rng")
    epoch, step = info["epoch"], info["step"]
    best = info["extra"].get("best", initial_best)
    changed = _changes(info["args"], run_args)
    guarded = {k: v for k, v in changed.items() if k in RESUME_GUARDED}
    if guarded and not loop.allow_resume_changes:
        raise SystemExit(f"resume from {loop.resume} refused: changed since the saved run: "
                         + ", ".join(f"--{k} {a} -> {b}" for k, (a, b) in guarded.items())
                         + "; pass --allow_resume_changes to resume with the new values")
    logger.info(f"resumed from {loop.resume}: epoch {epoch}, step {step}, best {loop.metric} {best}")
    world = dist.get_world_size()
    if info["world_size"] != world:
        logger.info(f"resume: world size {info['world_size']} -> {world}: weights, optimizer and schedule restored, "
                    f"RNG state not restored (fresh per-rank seeds)")
    if changed:
        logger.info("resume: changed flags: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    if "lr" in guarded:
        old, new = guarded["lr"]
        if old and new:
            _rescale_lr(optimizer, scheduler, float(new) / float(old))
            logger.info(f"resume: learning rates rescaled x {float(new) / float(old):.6g} (--lr {old} -> {new})")
    # the position inside the epoch, in samples: the same samples are skipped under a new global batch
    saved_bs = info["args"].get("batch_size") if isinstance(info["args"], dict) else None
    bs = getattr(train_loader, "batch_size", None)
    if step and saved_bs and bs and (saved_bs * info["world_size"] != bs * world):
        samples = step * saved_bs * info["world_size"]
        new_step = samples // (bs * world)
        new_step -= new_step % loop.accum_steps
        logger.info(f"resume: {samples} samples of epoch {epoch} were done; with {world} x {bs} samples per batch "
                    f"that is step {new_step} (was {step})"
                    + ("" if new_step * bs * world == samples else "; the samples in between are repeated"))
        step = new_step
    return epoch, step, best


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
        epoch, step, best = _resume(loop, logger, model, optimizer, scheduler, scaler, ema, run_args, train_loader,
                                    initial_best)

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
            logger.info(f"epoch {e}: " + ", ".join(_fmt(k, v) for k, v in integral_counts(last_metrics).items()
                                                   if isinstance(v, (int, float))) + f" (best {metric} {best})")
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
