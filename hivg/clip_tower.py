"""CLIP text and vision towers for HiVG, with the Multi-layer Adaptive Cross-modal Bridge.

Architecture = OpenAI CLIP / HF ``CLIPModel`` (pre-norm residual blocks, QuickGELU MLPs, LayerNorm eps 1e-5),
written on ``F.scaled_dot_product_attention``.  All q/k/v/out projections are `LoRALinear` (Hi LoRA).

Hidden-state indexing follows HF: ``hidden[0]`` = embeddings (after ``ln_pre`` for vision), ``hidden[i]`` =
output of 0-based block ``i-1``.  The text states fed to the bridge are raw residual-stream states (no
final LayerNorm).  Tensors are batch-first: [B, T, D].  ``grad_ckpt = True`` on a tower (``--grad_ckpt``)
recomputes each block in the backward pass instead of keeping its activations.

Bridge (block l in ``bridge_layers``), applied between the self-attention and the MLP of the block:
    r = x;  h = norm(x)
    T = gate(cat_i(t_i + E_i * t_i))        E_i = adaptive_weights[i] [77, Dt]   (or the mixup text directly)
    x = r + mlp(cross_attn(q=h, kv=T))      no text padding mask (the official code attends to all 77 slots)
With ``batch_mixing`` (the official bug: a [77, B, D] tensor fed to a batch-first attention) the keys/values of sample b are computed from
``T.transpose(0, 1).reshape(B, 77, D)[b]`` instead of ``T[b]``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vgcore.models.checkpointing import checkpoint_blocks

from .lora import LoRALinear

__all__ = ["QuickGELU", "MLP2", "Attention", "Bridge", "Block", "TextTower", "VisionTower"]


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class MLP2(nn.Module):
    """fc1 -> QuickGELU -> fc2 (CLIP MLP; also HiVG's TOKEN_MLP and the bridge MLP)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out LoRA linears (HF CLIP layout), batch-first."""

    def __init__(self, dim: int, heads: int, lora_rank: int = 0, lora_alpha: float = 16.0, lora_dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        lin = lambda: LoRALinear(dim, dim, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout)  # noqa: E731
        self.q, self.k, self.v, self.out = lin(), lin(), lin(), lin()

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        return x.view(B, T, self.heads, D // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        kv = x if kv is None else kv
        q, k, v = self._split(self.q(x)), self._split(self.k(kv)), self._split(self.v(kv))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        B, _, T, _ = o.shape
        return self.out(o.transpose(1, 2).reshape(B, T, -1))


class Bridge(nn.Module):
    """One cross-modal bridge (HiVG MACB) living inside a vision block.

    ``n_text``: number of text layers concatenated; ``adaptive``: whether per-layer adaptive weights and
    the gate exist (False in mixup mode, where the text comes pre-projected to the vision width).
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, text_dim: int, n_text: int, context_length: int,
                 adaptive: bool, lora_rank: int, lora_alpha: float, lora_dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads, lora_rank, lora_alpha, lora_dropout)
        self.mlp = MLP2(dim, mlp_dim)
        self.adaptive = adaptive
        if adaptive:
            self.gate = nn.Linear(text_dim * n_text, dim)
            # nn.Embedding default init N(0, 1), as the official cross_adaptive_weights
            self.adaptive_weights = nn.Parameter(torch.randn(n_text, context_length, text_dim))

    def text_keys(self, text_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """[B, T, D_v] bridge keys from the list of text states (each [B, T, Dt], or one [B, T, Dv] in mixup)."""
        if not self.adaptive:
            return text_states[-1]
        t = torch.cat([s + w * s for s, w in zip(text_states, self.adaptive_weights)], dim=-1)
        return self.gate(t)

    def forward(self, x: torch.Tensor, text_states: Sequence[torch.Tensor], batch_mixing: bool) -> torch.Tensor:
        keys = self.text_keys(text_states).to(x.dtype)
        if batch_mixing:
            B, T, D = keys.shape
            keys = keys.transpose(0, 1).reshape(B, T, D)
        return x + self.mlp(self.attn(self.norm(x), kv=keys))


class Block(nn.Module):
    """Pre-norm CLIP residual block, optionally with a bridge between attention and MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, lora_rank: int = 0, lora_alpha: float = 16.0,
                 lora_dropout: float = 0.0, bridge: Optional[Bridge] = None):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads, lora_rank, lora_alpha, lora_dropout)
        self.ln2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = MLP2(dim, mlp_dim)
        self.bridge = bridge

    def forward(self, x: torch.Tensor, is_causal: bool = False, text_states=None, batch_mixing: bool = False):
        x = x + self.attn(self.ln1(x), is_causal=is_causal)
        if self.bridge is not None and text_states is not None:  # no text: the plain CLIP image encoder
            x = self.bridge(x, text_states, batch_mixing)
        return x + self.mlp(self.ln2(x))


class TextTower(nn.Module):
    """CLIP text transformer: causal mask only (no padding mask), pooled at argmax(ids) (the EOT token)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_dim: int, vocab_size: int = 49408,
                 context_length: int = 77, lora_rank: int = 0, lora_alpha: float = 16.0, lora_dropout: float = 0.0):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_dim, lora_rank, lora_alpha, lora_dropout)
                                    for _ in range(layers))
        self.ln_final = nn.LayerNorm(width, eps=1e-5)
        self.grad_ckpt = False  # activation checkpointing per block (--grad_ckpt)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, ids: torch.Tensor):
        """ids [B, T] -> (hidden_states list of L+1 [B,T,Dt], last [B,T,Dt] after ln_final, pooled [B,Dt])."""
        x0 = self.token_embedding(ids) + self.pos_embed[: ids.shape[1]]
        x, hidden = checkpoint_blocks(self.blocks, x0, enabled=self.grad_ckpt, collect=True, is_causal=True)
        hidden = [x0] + hidden
        last = self.ln_final(x)
        pooled = last[torch.arange(ids.shape[0], device=ids.device), ids.argmax(dim=-1)]
        return hidden, last, pooled


class VisionTower(nn.Module):
    """CLIP ViT with bridges at ``bridge_layers`` (0-based block indices)."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, mlp_dim: int,
                 bridge_layers: Sequence[int] = (), bridge_kwargs: Optional[dict] = None, lora_rank: int = 0,
                 lora_alpha: float = 16.0, lora_dropout: float = 0.0):
        super().__init__()
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(3, width, patch_size, patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.pos_embed = nn.Parameter(torch.randn(self.grid ** 2 + 1, width) * width ** -0.5)
        self.ln_pre = nn.LayerNorm(width, eps=1e-5)
        bridge_layers = set(int(i) for i in bridge_layers)
        bad = [i for i in bridge_layers if not 0 <= i < layers]
        if bad:
            raise ValueError(f"bridge layers {bad} outside the {layers}-layer vision tower")
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_dim, lora_rank, lora_alpha, lora_dropout,
                  bridge=Bridge(width, heads, mlp_dim, **bridge_kwargs, lora_rank=lora_rank, lora_alpha=lora_alpha,
                                lora_dropout=lora_dropout) if i in bridge_layers else None)
            for i in range(layers))
        self.ln_post = nn.LayerNorm(width, eps=1e-5)
        self.grad_ckpt = False  # activation checkpointing per block (--grad_ckpt)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """[1 + h*w, D]; the patch table is resized bicubically (antialias) when the grid differs."""
        if h == self.grid and w == self.grid:
            return self.pos_embed
        cls, patch = self.pos_embed[:1], self.pos_embed[1:]
        g = int(math.isqrt(patch.shape[0]))
        patch = patch.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return torch.cat([cls, patch.permute(0, 2, 3, 1).reshape(h * w, -1)], 0)

    def forward(self, img: torch.Tensor, text_states=None, batch_mixing: bool = False):
        """img [B,3,H,W] -> (hidden_states list of L+1 [B,1+N,Dv], pooled [B,Dv] = ln_post(CLS)).

        ``text_states`` None: the plain CLIP image encoder, bridges skipped (e.g. tag pretraining)."""
        x = self.patch_embed(img)
        B, D, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.to(x.dtype).expand(B, 1, D), x], 1) + self.position_embedding(h, w)
        x0 = self.ln_pre(x)
        x, hidden = checkpoint_blocks(self.blocks, x0, enabled=self.grad_ckpt, collect=True, text_states=text_states,
                                      batch_mixing=batch_mixing)
        return [x0] + hidden, self.ln_post(x[:, 0])
