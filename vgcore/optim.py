"""Parameter groups by name, optimizers and resumable learning-rate schedules.

Parameter groups
----------------
``build_param_groups(model, base_lr, weight_decay, rules=[(pattern, {"lr_mult": 0.1}), ...], freeze=[...])``:
each trainable parameter takes the options of the FIRST rule whose regex ``re.search``-matches its name
(``lr_mult`` multiplies ``base_lr``; ``lr`` sets it absolutely; ``weight_decay`` overrides).  ``freeze``
patterns set ``requires_grad=False`` and leave the parameter out.  ``no_decay_1d=True`` additionally puts
biases and other 1-D tensors (norms, ...) at weight decay 0 unless a rule says otherwise -- off by default
because the official codes of the five methods decay everything.  Every group keeps ``param_names`` (the
torch convention) and ``lr_mult``.

Schedules
---------
`Schedule` sets ``lr = initial_lr * factor(t)`` for every group, where ``t`` counts calls to ``step()``.
``interval`` says what ``t`` counts:

* ``"epoch"``: call ``scheduler.step()`` once at the end of each epoch (the engine does this when an epoch
  completes); ``t`` = epochs done.  This is how HiVG (cosine), ResVG (step), SimVG/ALVG (warm-up + step) run.
* ``"step"``: call ``scheduler.step()`` after every optimizer step (the engine does this); ``t`` = optimizer
  steps done.  Milestones/warm-up given in epochs are converted with ``iters_per_epoch`` (optimizer steps
  per epoch).  VG-LAW's per-iteration warm-up uses this.

factor(t) = warmup(t) * main(t):

* warmup: ``start + (1 - start) * t / W`` for ``t < W`` else 1 (``W`` = warm-up length in the unit of
  ``interval``; ``start`` = ``warmup_start_factor``).  SimVG/ALVG's ``(e+1)/(W+1)`` is ``start = 1/(W+1)``.
* main (at the absolute ``t``; T = total length in the unit of ``interval``):
  ``constant`` 1; ``step`` ``gamma ** #{m in milestones: t >= m}`` (or ``gamma ** (t // step_size)``);
  ``cosine`` ``min + (1 - min) * 0.5 * (1 + cos(pi * t / T))``; ``poly`` ``min + (1 - min) * (1 - t/T) ** power``;
  ``linear`` ``min + (1 - min) * (1 - t/T)``  (``min`` = ``min_lr_ratio``; t is clamped to T).
  Note SimVG/ALVG decay when ``e + 1 >= d``: their ``decay at [d]`` is ``milestones=[d - 1]`` here.

All schedules resume via ``state_dict()`` / ``load_state_dict()`` (the step count and initial lrs).
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

__all__ = ["build_param_groups", "describe_param_groups", "build_optimizer", "Schedule", "ScheduleFactor",
           "build_scheduler", "build_scheduler_from_args", "SCHEDULERS", "OPTIMIZERS"]

SCHEDULERS = ("constant", "step", "cosine", "poly", "linear")
OPTIMIZERS = ("adamw", "adam", "sgd")


def build_param_groups(model: torch.nn.Module, base_lr: float, weight_decay: float,
                       rules: Sequence[Tuple[str, Dict[str, Any]]] = (), freeze: Iterable[str] = (),
                       no_decay_1d: bool = False, drop_empty: bool = True) -> List[dict]:
    """Group trainable parameters of ``model`` by the first matching rule (see module doc)."""
    freeze_re = [re.compile(p) for p in freeze]
    rules_c = [(re.compile(p), dict(o), p) for p, o in rules]
    for p, o, _ in rules_c:
        bad = set(o) - {"lr_mult", "lr", "weight_decay"}
        if bad:
            raise ValueError(f"build_param_groups: rule {p.pattern!r} has unknown options {sorted(bad)}")
    groups: Dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if any(r.search(name) for r in freeze_re):
            p.requires_grad_(False)
        if not p.requires_grad:
            continue
        opts, tag = {}, "default"
        for r, o, pat in rules_c:
            if r.search(name):
                opts, tag = o, pat
                break
        mult = float(opts.get("lr_mult", 1.0))
        lr = float(opts["lr"]) if "lr" in opts else base_lr * mult
        if "weight_decay" in opts:
            wd = float(opts["weight_decay"])
        elif no_decay_1d and p.ndim <= 1:
            wd, tag = 0.0, tag + "|no_decay"
        else:
            wd = float(weight_decay)
        key = (tag, lr, wd)
        g = groups.setdefault(key, {"params": [], "param_names": [], "lr": lr, "weight_decay": wd,
                                    "lr_mult": lr / base_lr if base_lr else mult, "group_name": tag})
        g["params"].append(p)
        g["param_names"].append(name)
    out = list(groups.values())
    if not drop_empty:
        return out
    return [g for g in out if g["params"]]


def describe_param_groups(groups: Sequence[dict]) -> str:
    lines = []
    for g in groups:
        n = sum(p.numel() for p in g["params"])
        lines.append(f"{g.get('group_name', '?'):<30s} lr={g['lr']:.3g} wd={g['weight_decay']:.3g} "
                     f"tensors={len(g['params'])} params={n}")
    return "\n".join(lines)


def _all_params(params) -> list:
    out = []
    for item in params:
        out.extend(item["params"] if isinstance(item, dict) else [item])
    return out


def _can_fuse(params) -> bool:
    """The fused Adam/AdamW kernels take floating-point CPU or CUDA tensors."""
    ps = _all_params(params)
    return bool(ps) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in ps)


def build_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999),
                    eps: float = 1e-8, momentum: float = 0.9, amsgrad: bool = False,
                    nesterov: bool = False, fused: Optional[bool] = None) -> torch.optim.Optimizer:
    """adamw | adam | sgd over ``params`` (a list of param groups from `build_param_groups` or tensors).

    ``fused`` (Adam/AdamW): None = use torch's fused kernel whenever the parameters allow it.  It is the same
    update rule in one pass over all tensors; on the CPU the default per-tensor loop was ~10x slower and took
    ~10% of a tiny preset's training step.
    """
    name = name.lower()
    params = list(params)
    if name in ("adamw", "adam"):
        use_fused = _can_fuse(params) if fused is None else bool(fused)
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, amsgrad=amsgrad,
                   fused=use_fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"build_optimizer: unknown optimizer {name!r}; choose from {OPTIMIZERS}")


class ScheduleFactor:
    """factor(t) = warmup(t) * main(t); all lengths in the unit of the schedule's interval."""

    def __init__(self, kind: str = "constant", total: float = 1, milestones: Sequence[float] = (),
                 gamma: float = 0.1, step_size: Optional[float] = None, power: float = 0.9,
                 min_lr_ratio: float = 0.0, warmup: float = 0, warmup_start_factor: float = 0.0):
        if kind not in SCHEDULERS:
            raise ValueError(f"unknown lr schedule {kind!r}; choose from {SCHEDULERS}")
        self.kind, self.total = kind, max(float(total), 1e-12)
        self.milestones = sorted(float(m) for m in milestones)
        self.gamma, self.step_size, self.power = gamma, step_size, power
        self.min_lr_ratio = min_lr_ratio
        self.warmup, self.warmup_start_factor = float(warmup), float(warmup_start_factor)

    def main(self, t: float) -> float:
        k, m = self.kind, self.min_lr_ratio
        if k == "constant":
            return 1.0
        if k == "step":
            if self.step_size:
                return self.gamma ** int(t // self.step_size)
            return self.gamma ** sum(t >= s for s in self.milestones)
        x = min(t, self.total) / self.total
        if k == "cosine":
            return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * x))
        if k == "poly":
            return m + (1 - m) * (1 - x) ** self.power
        return m + (1 - m) * (1 - x)  # linear

    def warm(self, t: float) -> float:
        if self.warmup <= 0 or t >= self.warmup:
            return 1.0
        s = self.warmup_start_factor
        return s + (1 - s) * t / self.warmup

    def __call__(self, t: float) -> float:
        return self.warm(t) * self.main(t)


class Schedule:
    """lr_g = initial_lr_g * factor(t); ``step()`` advances t by one (see module doc for ``interval``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor, interval: str = "epoch"):
        if interval not in ("epoch", "step"):
            raise ValueError(f"Schedule interval must be 'epoch' or 'step', got {interval!r}")
        self.optimizer, self.factor, self.interval = optimizer, factor, interval
        self.base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        f = self.factor(self.last_step)
        for g, b in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = b * f

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs), "interval": self.interval}

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("interval", self.interval) != self.interval:
            raise ValueError(f"Schedule.load_state_dict: checkpoint interval {sd['interval']!r} != {self.interval!r}")
        self.last_step = int(sd["last_step"])
        self.base_lrs = list(sd["base_lrs"])
        for g, b in zip(self.optimizer.param_groups, self.base_lrs):
            g["initial_lr"] = b
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, name: str = "constant", *, epochs: int,
                    iters_per_epoch: int = 1, interval: str = "epoch", milestones: Sequence[float] = (),
                    gamma: float = 0.1, step_size: Optional[float] = None, warmup_epochs: float = 0,
                    warmup_steps: Optional[int] = None, warmup_start_factor: float = 0.0,
                    power: float = 0.9, min_lr_ratio: float = 0.0) -> Schedule:
    """Build a `Schedule`.  ``epochs``, ``milestones``, ``step_size``, ``warmup_epochs`` are in epochs;
    with ``interval="step"`` they are multiplied by ``iters_per_epoch`` (``warmup_steps``, if given, is
    already in optimizer steps and wins over ``warmup_epochs``)."""
    name = {"none": "constant", "multistep": "step", "cos": "cosine"}.get(name.lower(), name.lower())
    u = iters_per_epoch if interval == "step" else 1
    if warmup_steps is not None and interval == "step":
        warm = warmup_steps
    else:
        warm = warmup_epochs * u
    f = ScheduleFactor(name, total=epochs * u, milestones=[m * u for m in milestones], gamma=gamma,
                       step_size=step_size * u if step_size else None, power=power, min_lr_ratio=min_lr_ratio,
                       warmup=warm, warmup_start_factor=warmup_start_factor)
    return Schedule(optimizer, f, interval)


def build_scheduler_from_args(optimizer: torch.optim.Optimizer, args, iters_per_epoch: int) -> Schedule:
    """`build_scheduler` from the `vgcore.cli.add_optim_args` flags.  ``iters_per_epoch`` = optimizer steps
    per epoch (batches per epoch // accum_steps), used only with ``--lr_interval step``."""
    return build_scheduler(optimizer, args.lr_scheduler, epochs=args.epochs, iters_per_epoch=iters_per_epoch,
                           interval=args.lr_interval, milestones=args.lr_milestones, gamma=args.lr_gamma,
                           step_size=args.lr_drop, warmup_epochs=args.warmup_epochs,
                           warmup_steps=args.warmup_steps, warmup_start_factor=args.warmup_start_factor,
                           power=args.lr_power, min_lr_ratio=args.min_lr_ratio)
