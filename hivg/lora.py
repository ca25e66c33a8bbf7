"""LoRA linear layer used by HiVG's Hi LoRA.

One adapter per linear (the official code nests peft wraps, but peft 0.3.0 re-creates the same single
"default" adapter each time, so there is exactly one rank-r pair per layer).  The forward is the peft
0.3.0 computation ``y = W x + b + scale * B(A(dropout(x)))`` with ``scale = alpha / r`` (0.5 for r=32,
alpha=16).  ``merge()`` folds the adapter into ``W`` (``W + scale * B @ A``) and zeroes ``B`` so that the
state-dict layout stays the same and a merged model still loads strictly.

Parameter names: ``weight`` [out, in], ``bias`` [out], ``lora_a`` [r, in], ``lora_b`` [out, r].
Initialisation as peft: A Kaiming-uniform (a=sqrt(5)), B zeros.

Speed: a frozen adapter whose ``B`` is all zero adds exactly nothing, so its branch (two matmuls and a dropout
mask) is skipped -- every LoRA of Hi LoRA stage 0 and the never-adapted blocks of later stages.  Zero-ness is
cached against the tensor's version counter and storage, so a load or any in-place edit re-checks it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRALinear", "merge_lora"]


class LoRALinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, rank: int = 0,
                 alpha: float = 16.0, dropout: float = 0.0):
        super().__init__(in_features, out_features, bias=bias)
        self.rank = int(rank)
        self.scale = float(alpha) / self.rank if self.rank > 0 else 0.0
        self.merged = False  # set by merge(): the adapter path is skipped (inference only)
        self._b_checked = (None, True)  # ((version, data_ptr) of lora_b when last checked, nonzero?)
        if self.rank > 0:
            self.lora_a = nn.Parameter(torch.empty(self.rank, in_features))
            self.lora_b = nn.Parameter(torch.zeros(out_features, self.rank))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        else:
            self.register_parameter("lora_a", None)
            self.register_parameter("lora_b", None)

    def adapter_active(self) -> bool:
        """Whether the adapter branch can change the output or receive gradients."""
        if self.rank == 0 or self.merged:
            return False
        b = self.lora_b
        if b.requires_grad or self.lora_a.requires_grad:
            return True
        key = (b._version, b.data_ptr())
        if self._b_checked[0] != key:
            self._b_checked = (key, bool(b.any()))
        return self._b_checked[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.adapter_active():
            y = y + self.scale * F.linear(F.linear(self.lora_dropout(x), self.lora_a), self.lora_b)
        return y

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the base weight (W += scale * B @ A) and zero B."""
        if self.rank > 0:
            self.weight.add_(self.scale * (self.lora_b @ self.lora_a))
            self.lora_b.zero_()
            self.merged = True

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", lora_rank={self.rank}, lora_scale={self.scale}" if self.rank else "")


def merge_lora(module: nn.Module) -> int:
    """Merge every LoRALinear inside ``module``; returns how many were merged."""
    n = 0
    for m in module.modules():
        if isinstance(m, LoRALinear) and m.rank > 0:
            m.merge()
            n += 1
    return n
