"""The generic speed / memory switches of every method: ``--amp``, ``--compile`` and ``--grad_ckpt``.

* ``--amp none|bf16|fp16``: autocast of the model forward (`vgcore.engine.autocast_context`); outputs are cast
  back to float32 before losses, matching, box decoding and metrics (`vgcore.engine.float_outputs`); fp16
  trains with a grad scaler and needs CUDA, bf16 works on CUDA and on CPUs (fast where the CPU has native
  bfloat16 dot products, e.g. AVX512-BF16 / AMX).
* ``--compile``: ``torch.compile`` of the model's forward, in place (parameter names and checkpoints are
  unchanged).  Inputs have fixed shapes per run (images at the model's size, text padded to the tokenizer's
  length); the batch dimension becomes dynamic after the first differently-sized batch (one recompilation,
  e.g. the last evaluation batch).  The first batches are slow while it compiles.
* ``--grad_ckpt``: activation checkpointing per backbone block (`vgcore.models.checkpointing`): training
  memory falls to about one block's activations for roughly one extra backbone forward per step.

A method adds the flags with `vgcore.cli.add_speed_args` and `vgcore.method` applies them (`apply_speed_flags`)
after building or loading the model.
"""
from __future__ import annotations

import torch
from torch import nn

from .models.checkpointing import set_grad_ckpt

__all__ = ["apply_speed_flags", "compile_model", "enable_grad_ckpt"]


def compile_model(model: nn.Module, **options) -> nn.Module:
    """``torch.compile`` the forward of ``model`` in place (``nn.Module.compile``); returns ``model``.
    ``options`` go to torch.compile (e.g. ``mode="max-autotune"``)."""
    import torch._dynamo
    # one graph per (train / eval, autocast, shape) combination; the default limit of 8 is enough, but a
    # training run that also validates under AMP visits several
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    model.compile(**options)
    return model


def enable_grad_ckpt(model: nn.Module) -> list:
    """Activation checkpointing in every backbone of ``model`` that supports it; `ValueError` when none does."""
    names = set_grad_ckpt(model, True)
    if not names:
        raise ValueError(f"--grad_ckpt: {type(model).__name__} has no backbone that supports activation "
                         "checkpointing")
    return names


def apply_speed_flags(model: nn.Module, args, logger=None, train: bool = True) -> nn.Module:
    """Apply ``args.grad_ckpt`` (training only) and ``args.compile`` (flags absent from ``args`` count as off)
    to ``model``; returns it (compiled in place)."""
    say = logger.info if logger is not None else (lambda msg: None)
    if train and getattr(args, "grad_ckpt", False):
        names = enable_grad_ckpt(model)
        say(f"--grad_ckpt: activation checkpointing per block in {', '.join(n or type(model).__name__ for n in names)}")
    if getattr(args, "compile", False):
        compile_model(model)
        say("--compile: torch.compile of the model forward (the first batches include the compilation)")
    return model
