"""The training and evaluation loops shared by every method.

Contracts: ``outputs = model(batch)`` (a dict), ``losses = criterion(outputs, batch)`` (a dict of named terms
plus ``'loss'``, the one that is back-propagated).  ``batch`` is a `vgcore.data.sample.Batch` (anything
with ``.to(device)`` and ``len()`` works).

`train_one_epoch`
-----------------
* AMP: ``amp`` in {"none", "bf16", "fp16"}; fp16 needs a ``torch.amp.GradScaler`` (`build_grad_scaler`).
  Only the model's forward runs under autocast: its outputs are cast back to float32 (`float_outputs`) and the
  criterion (losses, matching), the box decoding of the post-processing and the metrics run in float32.
* Gradient accumulation over ``accum_steps`` batches: each batch's loss is divided by ``accum_steps``;
  DDP gradient sync is skipped (``no_sync``) on all but the last batch of a group.  A trailing partial group
  at the end of the epoch still steps (with its gradient divided by ``accum_steps``).
* After each optimizer step: clip (``clip_max_norm > 0``: total-norm over all parameters, after unscaling),
  step, zero grads, ``scheduler.step()`` if ``scheduler.interval == "step"``, ``ema.update(model)``.
  A scheduler with ``interval == "epoch"`` (or without the attribute) is stepped once when the epoch
  completes (not when ``max_steps`` stops it early).
* ``step`` = batches of this epoch done.  ``start_step`` resumes mid-epoch: the loader must already skip the
  first ``start_step`` batches (``loader.set_epoch(epoch, start_step)``, see `vgcore.dist.build_loader`);
  ``start_step`` must be a multiple of ``accum_steps``.
* ``checkpoint_fn(epoch, step)`` is called after every ``checkpoint_every``-th optimizer step of the epoch
  (counted from the epoch start, so resuming keeps the same cadence; on all ranks -- saving is collective), ``max_steps`` stops the epoch after that many batches (counted from 0 including
  ``start_step``), useful for tests and time-boxed runs.
* Non-finite loss: every batch, the scalar loss terms are checked with one fused ``isfinite`` reduction
  (all-reduced when distributed, so every rank stops together) and one host sync -- the only per-step sync of
  the loop.  A non-finite term raises `NonFiniteError` before ``backward``, naming the epoch, the step (batches
  of the epoch done, counting the failing one), the non-finite terms and the learning rate; the weights are
  those of the last good step.  A criterion that must not see non-finite model outputs (e.g. a Hungarian
  matcher) checks them first with `assert_finite` (SimVG's does); its `NonFiniteError` is reported the same
  way.
* Logging: loss terms are summed on device every batch; every ``log_every`` batches they are averaged over
  ranks and the window, shown on the rank-0 tqdm bar (when stderr is a terminal), written to tensorboard by
  `Logger` and, when stdout is not a terminal (a log file, a batch job), printed as one text line
  ``epoch E step S/N  loss ...  <term> ...  lr ...  <images/s> img/s  eta H:MM:SS``.

`evaluate`
----------
No grad, eval mode, the DDP wrapper removed (shards may be uneven, so no collective op in the loop); each batch
is moved with ``Batch.to``, ``post = postprocess(outputs, batch)`` is computed by the method, and accumulators
are updated.  ``accumulators`` is either one object (then ``post`` is the kwargs of its ``update``) or a dict
``name -> accumulator`` (then ``post[name]`` is the kwargs -- or an args tuple -- for that one).  Afterwards
every accumulator is ``all_reduce``'d and ``compute``'d; the merged dict is returned (keys prefixed
``name/`` only when two accumulators report the same key; counts such as ``n`` as ints, `integral_counts`).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from . import dist

__all__ = ["Logger", "build_grad_scaler", "autocast_context", "check_amp", "float_outputs", "train_one_epoch",
           "evaluate", "AMP_MODES",
           "NonFiniteError", "assert_finite", "integral_counts"]

AMP_MODES = ("none", "bf16", "fp16")


# --------------------------------------------------------------------------------------------- logging
class Logger:
    """Rank-0 logger: text (stdout + ``<output_dir>/log.txt``), JSON lines (``log.jsonl``) and tensorboard
    scalars (``<output_dir>/tb``).  On other ranks every method is a no-op."""

    def __init__(self, output_dir: Optional[str] = None, tensorboard: bool = True, enabled: Optional[bool] = None):
        self.enabled = dist.is_main_process() if enabled is None else enabled
        self.output_dir = Path(output_dir) if output_dir else None
        self.writer = None
        if self.enabled and self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.output_dir / "tb"))

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        print(msg, flush=True)
        if self.output_dir is not None:
            with open(self.output_dir / "log.txt", "a") as f:
                f.write(msg + "\n")

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        if not self.enabled or self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1):
                self.writer.add_scalar(prefix + k, float(v), step)

    def json(self, record: Mapping[str, Any]) -> None:
        if not self.enabled or self.output_dir is None:
            return
        with open(self.output_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(dict(record), default=float) + "\n")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --------------------------------------------------------------------------------------------- finiteness
class NonFiniteError(FloatingPointError):
    """A loss term or a model output is NaN / inf; ``names`` lists which."""

    def __init__(self, msg: str, names=()):
        super().__init__(msg)
        self.names = list(names)


def _finite_flag(tensors) -> torch.Tensor:
    """One fused reduction: 1.0 (device scalar) when every element of every tensor is finite, else 0.0;
    all-reduced (minimum over ranks) when distributed.  No host sync."""
    if not tensors:
        return torch.ones(())
    flat = torch.cat([t.detach().float().reshape(-1) for t in tensors])
    flag = torch.isfinite(flat).all().float().reshape(1)
    if dist.get_world_size() > 1:
        bad = 1.0 - flag
        dist.all_reduce_sum(bad)
        flag = (bad == 0).float()
    return flag[0]


def _nonfinite_names(named: Mapping[str, torch.Tensor]) -> list:
    return [k for k, v in named.items() if not bool(torch.isfinite(v.detach()).all())]


def assert_finite(named: Mapping[str, torch.Tensor], what: str = "model outputs") -> None:
    """Raise `NonFiniteError` when a tensor of ``named`` holds NaN / inf: one fused ``isfinite`` reduction
    and one host sync (collective when distributed: every rank raises together)."""
    named = {k: v for k, v in named.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()}
    if not named or bool(_finite_flag(list(named.values())).item()):
        return
    names = _nonfinite_names(named)
    raise NonFiniteError(f"non-finite {what}: {', '.join(names) or '(on another rank)'}", names)


_COUNT_PARTS = ("n", "count")


def _is_count(key: str) -> bool:
    return any(p in _COUNT_PARTS or p.startswith("n_") or p.startswith("num_") or p.endswith("_count")
               for p in key.split("/"))


def integral_counts(values: Mapping[str, Any]) -> Dict[str, Any]:
    """``values`` with the counts (keys ``n``, ``n_*``, ``num_*``, ``*count``, per ``/`` part) as ints."""
    return {k: int(v) if isinstance(v, float) and _is_count(k) and v.is_integer() else v for k, v in values.items()}


def _hms(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _progress_line(epoch: int, step: int, total: Optional[int], vals: Mapping[str, float], lr: float,
                   images_per_s: float, eta: Optional[float]) -> str:
    """``epoch E step S/N  loss L  <term> V ...  lr X  R img/s  eta H:MM:SS`` (the text progress line; N = batches
    of the epoch, the ETA is to the end of this run's part of it)."""
    terms = ([("loss", vals["loss"])] if "loss" in vals else []) + [(k, v) for k, v in vals.items() if k != "loss"]
    parts = [f"epoch {epoch} step {step}{f'/{total}' if total is not None else ''}"] + [f"{k} {v:.4f}" for k, v in terms]
    parts += [f"lr {lr:.3e}", f"{images_per_s:.1f} img/s"]
    if eta is not None:
        parts.append(f"eta {_hms(eta)}")
    return "  ".join(parts)


# --------------------------------------------------------------------------------------------- AMP
def build_grad_scaler(amp: str, device) -> Optional[torch.amp.GradScaler]:
    """A GradScaler for fp16, None otherwise."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def check_amp(amp: str, device) -> None:
    """``amp`` is usable on ``device``: any mode on CUDA, "none" / "bf16" on the CPU (fp16 autocast and its
    grad scaler are CUDA features; the CPU's fast reduced-precision path is bfloat16)."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    kind = torch.device(device).type
    if amp == "fp16" and kind != "cuda":
        raise ValueError(f"--amp fp16 needs a CUDA device (got {kind}); use --amp bf16 on the CPU")


def autocast_context(amp: str, device):
    """Autocast of the model forward for ``amp`` ("none": a null context)."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def float_outputs(outputs):
    """``outputs`` (dicts / lists / tuples of tensors) with every half / bfloat16 tensor cast to float32, so that
    losses, matching, box decoding and metrics never run in reduced precision."""
    if torch.is_tensor(outputs):
        return outputs.float() if outputs.dtype in (torch.float16, torch.bfloat16) else outputs
    if isinstance(outputs, dict):
        return {k: float_outputs(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(float_outputs(v) for v in outputs)
    return outputs


def _move(batch, device):
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    return batch


def _progress(total: Optional[int], initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr,
                disable=not sys.stderr.isatty() and os.environ.get("VG_TQDM") != "1")


# --------------------------------------------------------------------------------------------- training
def train_one_epoch(model: torch.nn.Module, criterion: Callable, loader, optimizer: torch.optim.Optimizer,
                    scheduler=None, device="cpu", epoch: int = 0, *, amp: str = "none",
                    scaler: Optional[torch.amp.GradScaler] = None, accum_steps: int = 1,
                    clip_max_norm: float = 0.0, ema=None, logger: Optional[Logger] = None, log_every: int = 50,
                    start_step: int = 0, checkpoint_fn: Optional[Callable[[int, int], Any]] = None,
                    checkpoint_every: int = 0, max_steps: Optional[int] = None, progress: bool = True
                    ) -> Dict[str, float]:
    """One epoch (or its remainder from ``start_step``).  Returns the epoch means of every loss term over
    the batches run here, plus ``lr``, ``steps`` (batches of the epoch done, incl. ``start_step``),
    ``optimizer_steps`` (this call) and ``completed`` (1.0 if the epoch ran to its end)."""
    if amp == "fp16" and scaler is None:
        raise ValueError("train_one_epoch: amp='fp16' needs a GradScaler (vgcore.engine.build_grad_scaler)")
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    if start_step % accum_steps:
        raise ValueError(f"start_step {start_step} is not a multiple of accum_steps {accum_steps}")
    sampler = getattr(loader, "sampler", None)
    skip = getattr(sampler, "start_index", None)
    if skip is not None and skip != start_step * getattr(loader, "batch_size", 0):
        raise ValueError(f"train_one_epoch: start_step={start_step} but the loader's sampler skips {skip} samples; "
                         f"call loader.set_epoch(epoch, start_step={start_step}) first")
    device = torch.device(device)
    model.train()
    if hasattr(criterion, "train"):
        criterion.train()
    sched_per_step = scheduler is not None and getattr(scheduler, "interval", "epoch") == "step"
    params = [p for g in optimizer.param_groups for p in g["params"]]
    is_ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    try:
        full = start_step + len(loader)  # batches in the whole epoch
    except TypeError:
        full = None
    stop = full if max_steps is None else (max_steps if full is None else min(full, max_steps))
    log = logger or Logger(enabled=False)
    bar = _progress(stop, start_step, f"epoch {epoch}", progress and dist.is_main_process())

    text_lines = log.enabled and not sys.stdout.isatty()  # a log file / batch job: plain progress lines
    world = dist.get_world_size()

    sums: Dict[str, torch.Tensor] = {}  # epoch sums (device tensors)
    win: Dict[str, torch.Tensor] = {}  # log-window sums
    n_seen = n_win = 0
    img_win = 0  # samples of this rank in the log window
    opt_steps = 0
    step = start_step
    completed = True  # set False when max_steps stops the epoch early
    optimizer.zero_grad(set_to_none=True)
    t0 = t_win = time.time()
    it = iter(loader)
    while True:
        if max_steps is not None and step >= max_steps:
            completed = full is not None and step >= full
            break
        try:
            batch = next(it)
        except StopIteration:
            break
        batch = _move(batch, device)
        boundary = (step + 1) % accum_steps == 0
        if full is not None and step + 1 == full:
            boundary = True  # flush a trailing partial accumulation group
        sync_ctx = model.no_sync() if (is_ddp and not boundary) else contextlib.nullcontext()
        with sync_ctx:
            with autocast_context(amp, device):
                outputs = model(batch)
            if amp != "none":
                outputs = float_outputs(outputs)
            try:
                losses = criterion(outputs, batch)
            except NonFiniteError as e:
                raise _nonfinite(e, epoch, step + 1, optimizer) from None
            terms = {k: v for k, v in losses.items() if torch.is_tensor(v) and v.numel() == 1}
            if not bool(_finite_flag(list(terms.values())).item()):  # the one host sync of the step
                bad = _nonfinite_names(terms)
                raise _nonfinite(NonFiniteError(f"non-finite loss: {', '.join(bad) or '(on another rank)'}", bad),
                                 epoch, step + 1, optimizer, terms)
            loss = losses["loss"]
            scaled = loss.float() / accum_steps
            if scaler is not None:
                scaler.scale(scaled).backward()
            else:
                scaled.backward()
        with torch.no_grad():
            for k, v in terms.items():
                v = v.detach().float().reshape(())
                sums[k] = sums[k] + v if k in sums else v.clone()
                win[k] = win[k] + v if k in win else v.clone()
        n_seen += 1
        n_win += 1
        img_win += len(batch)
        step += 1
        if boundary:
            if scaler is not None:
                if clip_max_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, clip_max_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                if clip_max_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, clip_max_norm)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            opt_steps += 1
            if sched_per_step:
                scheduler.step()
            if ema is not None:
                ema.update(model)
        if step % log_every == 0 or (stop is not None and step == stop):
            vals = _reduce_means(win, n_win)
            lr = optimizer.param_groups[0]["lr"]
            if text_lines:
                dt = max(time.time() - t_win, 1e-9)
                eta = (stop - step) * dt / n_win if stop is not None else None
                log.info(_progress_line(epoch, step, full, vals, lr, img_win * world / dt, eta))
            win, n_win, img_win, t_win = {}, 0, 0, time.time()
            if bar is not None:
                bar.set_postfix({k: f"{v:.4f}" for k, v in list(vals.items())[:4]} | {"lr": f"{lr:.2e}"})
            gstep = epoch * (full or 0) + step
            log.scalars({**vals, "lr": lr}, gstep, prefix="train/")
        if bar is not None:
            bar.update(1)
        if (boundary and checkpoint_fn is not None and checkpoint_every > 0 and step % accum_steps == 0
                and (step // accum_steps) % checkpoint_every == 0):
            checkpoint_fn(epoch, step)
    if bar is not None:
        bar.close()
    if full is not None and step < full:
        completed = False
    if completed and scheduler is not None and not sched_per_step:
        scheduler.step()
    stats = _reduce_means(sums, n_seen)
    stats.update({"lr": optimizer.param_groups[0]["lr"], "steps": step, "optimizer_steps": opt_steps,
                  "completed": 1.0 if completed else 0.0, "time": time.time() - t0})
    return stats


def _nonfinite(err: NonFiniteError, epoch: int, step: int, optimizer, terms=None) -> NonFiniteError:
    """The stop message: where (epoch, step), what (the non-finite names, the other terms' values) and the lr."""
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    vals = ""
    if terms:
        vals = " (" + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items()) + ")"
    msg = (f"{err} at epoch {epoch} step {step}{vals}; lr {', '.join(f'{x:.3e}' for x in lrs)}.  Training stopped "
           f"before this step's update; the last checkpoint holds the weights of an earlier step.")
    return NonFiniteError(msg, err.names)


def _reduce_means(sums: Dict[str, torch.Tensor], n: int) -> Dict[str, float]:
    """Mean over batches and ranks of each summed term (one collective; all ranks must call)."""
    if not sums:
        return {}
    keys = sorted(sums)
    vec = torch.stack([sums[k] for k in keys] + [torch.tensor(float(n), device=sums[keys[0]].device)])
    dist.all_reduce_sum(vec)
    vec = vec.cpu()
    return {k: float(vec[i] / max(vec[-1].item(), 1.0)) for i, k in enumerate(keys)}


# --------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device="cpu", *, postprocess: Callable[[dict, Any], dict],
             accumulators, amp: str = "none", progress: bool = True, desc: str = "eval",
             logger: Optional[Logger] = None, log_step: Optional[int] = None, prefix: str = "val/"
             ) -> Dict[str, float]:
    """Run ``model`` over ``loader`` and return the all-reduced metrics (see module doc)."""
    device = torch.device(device)
    m = dist.unwrap_model(model)
    was_training = m.training
    m.eval()
    single = not isinstance(accumulators, Mapping)
    accs = {"": accumulators} if single else dict(accumulators)
    try:
        total = len(loader)
    except TypeError:
        total = None
    bar = _progress(total, 0, desc, progress and dist.is_main_process())
    try:
        for batch in loader:
            batch = _move(batch, device)
            with autocast_context(amp, device):
                outputs = m(batch)
            if amp != "none":
                outputs = float_outputs(outputs)
            post = postprocess(outputs, batch)
            for name, acc in accs.items():
                a = post if single else post[name]
                if isinstance(a, Mapping):
                    acc.update(**a)
                else:
                    acc.update(*a)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        m.train(was_training)
    results: Dict[str, float] = {}
    computed = {}
    for name, acc in accs.items():
        acc.all_reduce()
        computed[name] = acc.compute()
    clash = len({k for r in computed.values() for k in r}) < sum(len(r) for r in computed.values())
    for name, r in computed.items():
        for k, v in r.items():
            results[f"{name}/{k}" if clash and name else k] = v
    results = integral_counts(results)
    if logger is not None and log_step is not None:
        logger.scalars(results, log_step, prefix=prefix)
    return results
