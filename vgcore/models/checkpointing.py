"""Activation checkpointing of backbone blocks (``--grad_ckpt``).

A backbone that supports it has a boolean attribute ``grad_ckpt`` (False by default) and runs its block loop
through `checkpoint_blocks` (or `checkpoint_call` per block): with the flag on and gradients enabled, each
block's activations are dropped after its forward and recomputed during the backward pass, so a training step
keeps one block's activations at a time instead of all of them, for about one extra forward of the backbone.
Random ops inside a block (dropout, drop-path) draw the same numbers in the recomputation (the RNG state is
saved per block), so the gradients are those of the plain run.

    from vgcore.models.checkpointing import checkpoint_blocks, set_grad_ckpt
    x = checkpoint_blocks(self.blocks, x, enabled=self.grad_ckpt, mask=mask)   # in the backbone's forward
    set_grad_ckpt(model, True)                                                 # after building the model
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_call", "checkpoint_blocks", "set_grad_ckpt", "grad_ckpt_modules"]


def checkpoint_call(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` with its activations recomputed in the backward pass (non-reentrant checkpoint:
    any output structure, inputs that need no gradient, frozen parameters, and the RNG state preserved)."""
    return checkpoint(fn, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, *args, enabled: bool = True,
                      collect: bool = False, **kwargs) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
    """``x = block(x, *args, **kwargs)`` for each block in turn, each checkpointed when ``enabled`` and gradients
    are on.  ``collect=True`` returns ``(x, [output of every block])``."""
    use = enabled and torch.is_grad_enabled()
    hidden = []
    for blk in blocks:
        x = checkpoint_call(blk, x, *args, **kwargs) if use else blk(x, *args, **kwargs)
        if collect:
            hidden.append(x)
    return (x, hidden) if collect else x


def grad_ckpt_modules(model: nn.Module) -> List[str]:
    """Names of the sub-modules of ``model`` that support activation checkpointing (have ``grad_ckpt``)."""
    return [name for name, m in model.named_modules() if isinstance(getattr(m, "grad_ckpt", None), bool)]


def set_grad_ckpt(model: nn.Module, enabled: bool = True) -> List[str]:
    """Turn activation checkpointing on or off in every sub-module that supports it; returns their names
    (an empty list: the model has no checkpointable backbone)."""
    names = grad_ckpt_modules(model)
    mods = dict(model.named_modules())
    for n in names:
        mods[n].grad_ckpt = bool(enabled)
    return names
