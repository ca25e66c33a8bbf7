"""Language-adaptive weights (LAW): the adapted qkv Linear and the weight generator.

Every adapted ViT block replaces its qkv ``Linear(C -> 3C)`` (weight W0, bias b0) by `AdaptiveLinear`, which
takes, per sample b, a vector ``a_b`` produced from the expression by `WeightGenerator`.  Three law types:

* ``svd``: ``y = W0 x + b0 + S A_b D x`` with ``A_b`` = ``a_b`` viewed row-major as K x K (``A[i, j] = a[K i + j]``),
  S (3C x K) and D (K x C) one pair shared by every adapted layer (passed in as ``shared``).
* ``la``: ``a_b`` viewed as G x C; W0/b0 split into G equal chunks along the output dim;
  ``y_g = W0_g (x * a_{b,g}) + b0_g``, outputs concatenated (a per-input-channel scaling of the weight).
* ``od1`` / ``od2`` / ``od3``: ``a_b = [c_in^1, ..., c_in^k, c_out]`` (k vectors of C, then one of 3C);
  the output rows are split into k groups (od1: all; od2: q and k together | v; od3: q | k | v) and
  ``y = (W0_g (x * c_in^g) + b0_g) * c_out`` per group.

Input ``x`` is [B, ..., C] (any token layout with the sample outermost); everything is batched.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LAW_TYPES", "law_channels", "od_row_groups", "AdaptiveLinear", "WeightGenerator"]

LAW_TYPES = ("svd", "la", "od1", "od2", "od3")


def od_row_groups(law_type: str, out_features: int) -> List[int]:
    """Sizes of the output-row groups that get their own input scaling (od1: 1, od2: qk | v, od3: q | k | v)."""
    third = out_features // 3
    return {"od1": [out_features], "od2": [2 * third, third], "od3": [third, third, third]}[law_type]


def law_channels(law_type: str, in_features: int, out_features: int, groups: int = 1, rank: int = 32) -> int:
    """Length of the per-sample vector ``a`` a layer of this law type consumes."""
    if law_type == "svd":
        return rank * rank
    if law_type == "la":
        return groups * in_features
    if law_type in ("od1", "od2", "od3"):
        return out_features + int(law_type[2]) * in_features
    raise ValueError(f"unknown law_type {law_type!r}; expected one of {LAW_TYPES}")


class AdaptiveLinear(nn.Module):
    """A Linear whose weight is modulated per sample.  ``weight``/``bias`` are the pretrained W0/b0.

    ``forward(x, a=None, shared=None)``: ``a`` [B, law_channels] (None = plain Linear); ``shared`` = (S, D) for svd.
    """

    def __init__(self, in_features: int, out_features: int, law_type: str = "svd", groups: int = 1, bias: bool = True):
        super().__init__()
        if law_type not in LAW_TYPES:
            raise ValueError(f"unknown law_type {law_type!r}; expected one of {LAW_TYPES}")
        if law_type == "la" and out_features % groups:
            raise ValueError(f"la: out_features {out_features} not divisible by groups {groups}")
        self.in_features, self.out_features = in_features, out_features
        self.law_type, self.groups = law_type, groups
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, a: Optional[torch.Tensor] = None,
                shared: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        if a is None:
            return F.linear(x, self.weight, self.bias)
        shape = x.shape
        B = a.shape[0]
        x = x.reshape(B, -1, self.in_features)  # sample outermost: [B, N, C]
        if self.law_type == "svd":
            y = self._svd(x, a, shared)
        elif self.law_type == "la":
            y = self._la(x, a)
        else:
            y = self._od(x, a)
        return y.reshape(*shape[:-1], self.out_features)

    def _svd_factors(self, shared):
        """(S, D) cut to this layer: D's first Ci columns, S's first Co/3 rows of each q/k/v chunk."""
        if shared is None:
            raise ValueError("svd law needs the shared (S, D) pair")
        S, D = shared
        Co, Ci = self.out_features, self.in_features
        if D.shape[1] > Ci:
            D = D[:, :Ci]
        if S.shape[0] > Co:  # first Co/3 rows of each q/k/v chunk
            S = S.reshape(3, -1, S.shape[1])[:, : Co // 3].reshape(-1, S.shape[1])
        return S, D

    def _svd(self, x, a, shared):
        S, D = self._svd_factors(shared)
        Co, Ci = self.out_features, self.in_features
        K = S.shape[1]
        A = a.reshape(a.shape[0], K, K)
        B, N, _ = x.shape
        u = torch.bmm(x @ D.t(), A.transpose(1, 2))                          # (A D x)^T: [B, N, K]
        # W0 x + b0, then S u accumulated in place into the same output (no extra [B, N, Co] temporary)
        x2, u2 = x.reshape(B * N, Ci), u.reshape(B * N, K)
        y = F.linear(x2, self.weight, self.bias) if self.bias is None else torch.addmm(self.bias, x2, self.weight.t())
        return y.addmm_(u2, S.t().to(y.dtype)).reshape(B, N, Co)  # autocast leaves in-place ops alone

    def _scaled(self, x, c_in, sizes):
        """``concat_g (W0_g (x * c_in[:, g]) + b0_g)`` over the output-row groups ``sizes``; c_in [B, k, C].
        One dense GEMM per group on the scaled input (no per-sample weight is built)."""
        bias = self.bias.split(sizes) if self.bias is not None else [None] * len(sizes)
        outs = [F.linear(x * c_in[:, g, None], w, b) for g, (w, b) in enumerate(zip(self.weight.split(sizes), bias))]
        return outs[0] if len(outs) == 1 else torch.cat(outs, -1)

    def _la(self, x, a):
        B, N, C = x.shape
        return self._scaled(x, a.reshape(B, self.groups, C), [self.out_features // self.groups] * self.groups)

    def _od(self, x, a):
        B, N, C = x.shape
        sizes = od_row_groups(self.law_type, self.out_features)
        k = len(sizes)
        return self._scaled(x, a[:, : k * C].reshape(B, k, C), sizes) * a[:, None, k * C:]

    def sample_weight(self, a_b: torch.Tensor, shared=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """One sample's law written as a dense Linear: (W_b, c_b) with ``y = W_b x + c_b`` for the vector
        ``a_b`` [n].  svd: ``W0 + S A D``, ``b0``; la: ``W0_g diag(a_g)`` per row group, ``b0``; od:
        ``diag(c_out) W0_g diag(c_in^g)`` per row group, ``b0 * c_out``.  What a per-sample implementation
        builds; the batched `forward` never does."""
        W0, b0 = self.weight, self.bias
        Co, Ci = W0.shape
        if self.law_type == "svd":
            S, D = self._svd_factors(shared)
            K = S.shape[1]
            return W0 + S @ (a_b.reshape(K, K) @ D), b0
        if self.law_type == "la":
            G = self.groups
            return (W0.reshape(G, Co // G, Ci) * a_b.reshape(G, 1, Ci)).reshape(Co, Ci), b0
        sizes = od_row_groups(self.law_type, Co)
        k = len(sizes)
        c_in, c_out = a_b[: k * Ci].reshape(k, Ci), a_b[k * Ci:]
        W = torch.cat([w * c_in[g] for g, w in enumerate(W0.split(sizes))]) * c_out[:, None]
        return W, (b0 * c_out if b0 is not None else None)

    def forward_loop(self, x: torch.Tensor, a: torch.Tensor, shared=None, build_weight: bool = False) -> torch.Tensor:
        """Reference per-sample loop with the result of `forward`: one sample at a time, either through the
        same batched code (``build_weight=False``) or by building that sample's dense weight
        (`sample_weight`) and applying it."""
        B = a.shape[0]
        xs = x.reshape(B, -1, *x.shape[1:])

        def one(b):
            return F.linear(xs[b], *self.sample_weight(a[b], shared)) if build_weight else self(xs[b], a[b:b + 1], shared)
        if torch.is_grad_enabled():
            out = torch.stack([one(b) for b in range(B)])
        else:  # inference: each sample written into the output (no list of B partial results)
            out = x.new_empty(B, *xs.shape[1:-1], self.out_features)
            for b in range(B):
                out[b] = one(b)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, law_type={self.law_type}, " \
               f"groups={self.groups}, bias={self.bias is not None}"


class WeightGenerator(nn.Module):
    """Expression -> one adaptive vector per adapted layer.

    1. ``layer_embedding`` [L, C] queries the BERT tokens T [B, T, C] with a parameter-free multi-head attention
       (``num_heads`` heads of C/num_heads channels, scale 1/sqrt(head dim), padding masked out; [CLS] and
       [SEP] are attended): F [L, B, C].
    2. Per layer l: ``proj[l]`` = Linear(C -> C//16) -> LayerNorm -> GELU -> Linear(-> n_l); optional ReLU.
    For svd, S [3C_max, K] and D [K, C_max] live here (shared by every layer).

    ``channels``: (in_features, out_features, groups) of every adapted layer, in order.
    """

    def __init__(self, channels: Sequence[Tuple[int, int, int]], dim: int = 768, law_type: str = "svd",
                 rank: int = 32, num_heads: int = 12, use_activation: bool = False, ln_eps: float = 1e-5):
        super().__init__()
        self.law_type, self.num_heads, self.use_activation = law_type, num_heads, use_activation
        L = len(channels)
        inner = dim // 16
        self.layer_embedding = nn.Parameter(torch.empty(L, dim))
        if law_type == "svd":
            self.S = nn.Parameter(torch.empty(max(co for _, co, _ in channels), rank))
            self.D = nn.Parameter(torch.empty(rank, max(ci for ci, _, _ in channels)))
        else:
            self.register_parameter("S", None)
            self.register_parameter("D", None)
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, inner), nn.LayerNorm(inner, eps=ln_eps), nn.GELU(),
                          nn.Linear(inner, law_channels(law_type, ci, co, g, rank)))
            for ci, co, g in channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.layer_embedding, a=math.sqrt(5))
        if self.S is not None:
            nn.init.kaiming_uniform_(self.S, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.D, a=math.sqrt(5))
        start = 0.0 if self.law_type == "svd" else 1.0  # svd: A = 0; la/od: identity scaling
        for p in self.proj:
            nn.init.zeros_(p[-1].weight)
            nn.init.constant_(p[-1].bias, start)

    @property
    def shared(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        return (self.S, self.D) if self.S is not None else None

    def token_attention(self, text: torch.Tensor, text_pad: Optional[torch.Tensor]) -> torch.Tensor:
        """F [L, B, C]: the layer embeddings attend over the text tokens [B, T, C] (text_pad True = padding)."""
        B, T, C = text.shape
        L, h = self.layer_embedding.shape[0], self.num_heads
        q = self.layer_embedding.reshape(1, L, h, C // h).transpose(1, 2).expand(B, -1, -1, -1)
        kv = text.reshape(B, T, h, C // h).transpose(1, 2)
        mask = None if text_pad is None else (~text_pad.bool())[:, None, None, :]
        out = F.scaled_dot_product_attention(q, kv, kv, attn_mask=mask)     # [B, h, L, C/h]
        return out.permute(2, 0, 1, 3).reshape(L, B, C)

    def forward(self, text: torch.Tensor, text_pad: Optional[torch.Tensor] = None):
        """Returns (list of L tensors [B, n_l], F [L, B, C])."""
        feats = self.token_attention(text, text_pad)
        out = [p(f) for p, f in zip(self.proj, feats)]
        if self.use_activation:
            out = [F.relu(o) for o in out]
        return out, feats
