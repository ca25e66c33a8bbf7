"""BEiT-3 Multiway Transformer (torchscale ``BEiT3``) for joint image + text encoding, and its pretrained loader.

Sequence layout (the official one): ``[vision CLS, P patches (row-major), L text tokens]``.  Every Linear and
LayerNorm of the encoder is *multiway*: the first ``split = 1 + P`` tokens go through expert ``A`` (vision), the
rest through expert ``B`` (text).  Image-only input uses A for everything, text-only input uses B.

* Vision embedding: Conv2d(3 -> D, kernel = stride = patch) + a learnable ``cls_token`` prepended
  (``mask_token`` exists for checkpoint compatibility and is unused).  The input size is fixed by the
  position table: H, W must equal ``img_size``.
* Text embedding: nn.Embedding(vocab_size, D), no padding_idx; ids are XLM-R / fairseq sentencepiece ids
  (``<s>``=0, ``<pad>``=1, ``</s>``=2, piece ids shifted by +1).
* Positions (fairseq convention, ids start at 2): table ``A`` has 2 + 1 + P rows (rows 0-1 unused offset rows,
  row 2 = CLS, rows 3.. = patches), table ``B`` has ``max_text_positions`` rows, text token j uses row 2 + j.
  No embedding scale, no embedding LayerNorm.  Padded text embeddings (token + position) are zeroed.
* Layers: pre-LN with sub-LN (Magneto):
  ``x += drop_path(out_proj(inner_attn_ln(MHA(self_attn_layer_norm(x)))))``,
  ``x += drop_path(fc2(ffn_layernorm(gelu(fc1(final_layer_norm(x))))))``; full bidirectional attention over the
  joint sequence, padded text keys masked (SDPA); final multiway ``layer_norm``.
* Drop-path rate of layer i = linspace(0, drop_path_rate, num_layers)[i].

Execution: the vision and the text tokens are kept as two separate contiguous streams through the encoder
(each multiway module runs on its own stream; only the attention sees them concatenated), so no sequence slice
is taken and no backward zero-fills a full-size tensor.  ``EncoderLayer.forward(x, split, mask)`` on the joint
sequence remains for callers that hold one.  ``checkpoint=True`` (`BEiT3.forward`) recomputes each layer in the
backward pass instead of keeping its activations (`vgcore.models.checkpointing`).

Parameter names mirror torchscale exactly (without the ``beit3.`` prefix of the official checkpoints), so an
official state dict loads after stripping the prefix.  Masks: ``text_padding_mask`` is bool [B, L], True = pad.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .checkpointing import checkpoint_call
from ..checkpoint import (convert_state_dict, load_strict, resample_patch_kernel, resample_pos_table, torch_load,
                          unwrap)

__all__ = ["BEiT3Config", "BEIT3_PRESETS", "beit3_config", "BEiT3", "Multiway", "drop_path", "drop_path_mask",
           "adapt_beit3_pretrained", "load_beit3_pretrained", "VISION_POS_KEY", "PATCH_KERNEL_KEY",
           "VISION_POS_PREFIX_ROWS"]

BEIT3_PRESETS = {
    "base": dict(embed_dim=768, num_heads=12, ffn_dim=3072, num_layers=12),
    "large": dict(embed_dim=1024, num_heads=16, ffn_dim=4096, num_layers=24),
    "tiny": dict(embed_dim=128, num_heads=4, ffn_dim=256, num_layers=3),
}


@dataclass
class BEiT3Config:
    embed_dim: int = 768
    num_heads: int = 12
    ffn_dim: int = 3072
    num_layers: int = 12
    img_size: Union[int, Tuple[int, int]] = 224
    patch_size: int = 16
    in_chans: int = 3
    vocab_size: int = 64010
    max_text_positions: int = 1024
    drop_path_rate: float = 0.0
    layernorm_eps: float = 1e-5

    @property
    def img_hw(self) -> Tuple[int, int]:
        s = self.img_size
        return (int(s), int(s)) if isinstance(s, (int, float)) else (int(s[0]), int(s[1]))

    @property
    def grid(self) -> Tuple[int, int]:
        h, w = self.img_hw
        return h // self.patch_size, w // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    def to_dict(self) -> dict:
        return asdict(self)


def beit3_config(preset: str = "base", **overrides) -> BEiT3Config:
    """A `BEiT3Config` from a preset name ('base', 'large', 'tiny') plus keyword overrides."""
    if preset not in BEIT3_PRESETS:
        raise KeyError(f"unknown BEiT-3 preset {preset!r}; choose from {sorted(BEIT3_PRESETS)}")
    kw = dict(BEIT3_PRESETS[preset])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return BEiT3Config(**kw)


def drop_path_mask(x: torch.Tensor, p: float, training: bool) -> Optional[torch.Tensor]:
    """Stochastic-depth factor [B, 1, ..., 1] (0 or 1/(1-p) per sample, one Bernoulli draw per sample), or None
    when nothing is dropped (p = 0 or eval)."""
    if p == 0.0 or not training:
        return None
    keep = 1.0 - p
    return x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample with probability p (rescaled by 1/(1-p));
    the rescale is applied to the [B, 1, ..] mask, so the activation is touched once."""
    mask = drop_path_mask(x, p, training)
    return x if mask is None else x * mask


def _residual(x: Optional[torch.Tensor], branch: Optional[torch.Tensor], mask: Optional[torch.Tensor]):
    """x + branch (* mask): one fused op per stream."""
    if x is None:
        return None
    return x + branch if mask is None else torch.addcmul(x, branch, mask)


class Multiway(nn.Module):
    """Two copies of a token-wise module: ``A`` for tokens [0, split), ``B`` for tokens [split, L) (dim 1)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.A = module
        self.B = copy.deepcopy(module)

    def forward(self, x: torch.Tensor, split: int) -> torch.Tensor:
        n = x.shape[1]
        if split >= n:
            return self.A(x)
        if split <= 0:
            return self.B(x)
        xa, xb = x.split([split, n - split], dim=1)
        return torch.cat([self.A(xa), self.B(xb)], dim=1)

    def streams(self, xa: Optional[torch.Tensor], xb: Optional[torch.Tensor]):
        """(A(xa), B(xb)) on two separate streams; a None stream stays None."""
        return (None if xa is None else self.A(xa)), (None if xb is None else self.B(xb))


class VisionEmbedding(nn.Module):
    def __init__(self, cfg: BEiT3Config):
        super().__init__()
        self.img_hw, self.grid = cfg.img_hw, cfg.grid
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        # unused (masked-image pretraining only); kept for checkpoints, frozen so DDP sees no unused grad param
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim), requires_grad=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1 + P, D] (CLS first, patches row-major)."""
        if tuple(image.shape[-2:]) != self.img_hw:
            raise ValueError(f"BEiT3: input image size {tuple(image.shape[-2:])} != model img_size {self.img_hw} "
                             "(the vision position table fixes the input size)")
        x = self.proj(image).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)


def _embedding(n: int, d: int) -> nn.Embedding:
    """nn.Embedding without its own init (filled by `BEiT3.reset_parameters`; cheap on the meta device)."""
    return nn.Embedding(n, d, _weight=torch.empty(n, d))


class MultiwayPositions(nn.Module):
    """``A``: vision table (2 offset rows + CLS + patches); ``B``: text table. Rows used start at 2."""

    def __init__(self, cfg: BEiT3Config):
        super().__init__()
        self.A = _embedding(cfg.num_patches + 1 + 2, cfg.embed_dim)
        self.B = _embedding(cfg.max_text_positions, cfg.embed_dim)

    def forward(self, num_vision: int, num_text: int) -> torch.Tensor:
        parts = []
        if num_vision:
            parts.append(self.A.weight[2:2 + num_vision])
        if num_text:
            if 2 + num_text > self.B.num_embeddings:
                raise ValueError(f"BEiT3: {num_text} text tokens exceed max_text_positions {self.B.num_embeddings} - 2")
            parts.append(self.B.weight[2:2 + num_text])
        return torch.cat(parts, 0)[None]


class SelfAttention(nn.Module):
    """torchscale MultiheadAttention (self-attention, sub-LN) with multiway projections."""

    def __init__(self, cfg: BEiT3Config):
        super().__init__()
        D = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.q_proj = Multiway(nn.Linear(D, D))
        self.k_proj = Multiway(nn.Linear(D, D))
        self.v_proj = Multiway(nn.Linear(D, D))
        self.out_proj = Multiway(nn.Linear(D, D))
        self.inner_attn_ln = Multiway(nn.LayerNorm(D, eps=cfg.layernorm_eps))

    def forward(self, x: torch.Tensor, split: int, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Joint sequence [B, N, D] with the first ``split`` tokens vision."""
        xv, xt = _to_streams(x, split)
        ov, ot = self.forward_streams(xv, xt, attn_mask)
        return _from_streams(ov, ot)

    def forward_streams(self, xv: Optional[torch.Tensor], xt: Optional[torch.Tensor],
                        attn_mask: Optional[torch.Tensor], vision_queries: Optional[int] = None):
        """Vision stream [B, Nv, D] and text stream [B, Nt, D] (either may be None) -> the two output streams.
        ``vision_queries``: only the first that many vision tokens are queries (every token is still a key): the
        vision output stream is then [B, vision_queries, D]."""
        H = self.num_heads
        qv = xv if xv is None or vision_queries is None else xv[:, :vision_queries]

        def joint(proj, a_in):
            a, b = proj.streams(a_in, xt)
            return a if b is None else (b if a is None else torch.cat([a, b], 1))

        q, k, v = joint(self.q_proj, qv), joint(self.k_proj, xv), joint(self.v_proj, xv)
        B, N, D = k.shape
        Nq = q.shape[1]
        q = q.view(B, Nq, H, D // H).transpose(1, 2)
        k, v = (t.view(B, N, H, D // H).transpose(1, 2) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(B, Nq, D)
        ov, ot = _to_streams(out, 0 if qv is None else qv.shape[1], contiguous=True)
        return self.out_proj.streams(*self.inner_attn_ln.streams(ov, ot))


def _to_streams(x: torch.Tensor, split: int, contiguous: bool = False):
    """Joint [B, N, D] -> (vision [B, split, D] or None, text [B, N - split, D] or None)."""
    n = x.shape[1]
    if split >= n:
        return x, None
    if split <= 0:
        return None, x
    a, b = x.split([split, n - split], dim=1)
    return (a.contiguous(), b.contiguous()) if contiguous else (a, b)


def _from_streams(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> torch.Tensor:
    return a if b is None else (b if a is None else torch.cat([a, b], 1))


class FeedForward(nn.Module):
    """fc1 -> GELU -> ffn_layernorm (sub-LN) -> fc2."""

    def __init__(self, cfg: BEiT3Config):
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.embed_dim)
        self.ffn_layernorm = nn.LayerNorm(cfg.ffn_dim, eps=cfg.layernorm_eps)

    def forward(self, x):
        return self.fc2(self.ffn_layernorm(F.gelu(self.fc1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: BEiT3Config, drop_path_rate: float):
        super().__init__()
        D = cfg.embed_dim
        self.self_attn = SelfAttention(cfg)
        self.self_attn_layer_norm = Multiway(nn.LayerNorm(D, eps=cfg.layernorm_eps))
        self.ffn = Multiway(FeedForward(cfg))
        self.final_layer_norm = Multiway(nn.LayerNorm(D, eps=cfg.layernorm_eps))
        self.drop_path_rate = float(drop_path_rate)

    def forward(self, x, split: int, attn_mask=None):
        """Joint sequence [B, N, D] (first ``split`` tokens vision) -> [B, N, D]."""
        xv, xt = _to_streams(x, split, contiguous=True)
        return _from_streams(*self.forward_streams(xv, xt, attn_mask))

    def forward_streams(self, xv: Optional[torch.Tensor], xt: Optional[torch.Tensor], attn_mask=None,
                        vision_queries: Optional[int] = None):
        """The layer on the vision and text streams (either may be None); the drop-path draw is per sample and
        shared by both streams of the sample, as on the joint sequence.  ``vision_queries``: only the first that
        many vision tokens are computed (the others still serve as keys / values); the vision output stream is
        then [B, vision_queries, D]."""
        ref = xv if xv is not None else xt
        av, at = self.self_attn.forward_streams(*self.self_attn_layer_norm.streams(xv, xt), attn_mask,
                                                vision_queries=vision_queries)
        if xv is not None and vision_queries is not None:
            xv = xv[:, :vision_queries]
        mask = drop_path_mask(ref, self.drop_path_rate, self.training)
        xv, xt = _residual(xv, av, mask), _residual(xt, at, mask)
        fv, ft = self.ffn.streams(*self.final_layer_norm.streams(xv, xt))
        mask = drop_path_mask(ref, self.drop_path_rate, self.training)
        return _residual(xv, fv, mask), _residual(xt, ft, mask)


class Encoder(nn.Module):
    def __init__(self, cfg: BEiT3Config):
        super().__init__()
        self.embed_positions = MultiwayPositions(cfg)
        n = cfg.num_layers
        rates = [cfg.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]  # np.linspace(0, r, n)
        self.layers = nn.ModuleList(EncoderLayer(cfg, r) for r in rates)
        self.layer_norm = Multiway(nn.LayerNorm(cfg.embed_dim, eps=cfg.layernorm_eps))


class BEiT3(nn.Module):
    """The BEiT-3 backbone.  ``forward(image, text_ids, text_padding_mask)`` -> dict:

    ``tokens`` [B, N, D] (after the final multiway LayerNorm), ``split`` (number of vision tokens),
    and when an image is given ``cls`` [B, D] (the vision CLS output) and ``img_tokens`` [B, P, D] (row-major
    patches; reshape with ``grid`` = (H/patch, W/patch)); when text is given ``text_tokens`` [B, L, D].
    ``return_hidden=True`` adds ``hidden`` = list of every layer's output (before the final LayerNorm).
    """

    def __init__(self, cfg: BEiT3Config):
        super().__init__()
        self.cfg = cfg
        self.text_embed = _embedding(cfg.vocab_size, cfg.embed_dim)
        self.vision_embed = VisionEmbedding(cfg)
        self.encoder = Encoder(cfg)
        self.grad_ckpt = False  # activation checkpointing per layer (`forward(checkpoint=...)`)
        self.reset_parameters()

    @property
    def grid(self) -> Tuple[int, int]:
        return self.cfg.grid

    def image_grid(self, enc: Dict[str, torch.Tensor], image_padding_mask: Optional[torch.Tensor] = None):
        """(patch features [B, D, h, w] of ``enc["img_tokens"]`` or None, the padding mask [B, H, W] (True = pad)
        nearest-resized to the grid [B, h, w] or None)."""
        gh, gw = self.grid
        feat = mask = None
        if "img_tokens" in enc:
            t = enc["img_tokens"]
            feat = t.transpose(1, 2).reshape(t.shape[0], -1, gh, gw)
        if image_padding_mask is not None:
            mask = F.interpolate(image_padding_mask[:, None].float(), size=(gh, gw)).squeeze(1).bool()
        return feat, mask

    def reset_parameters(self):
        """Official init: trunc_normal(std 0.02, cut at +-0.02) Linear weights, zero biases, unit LayerNorms;
        text embedding N(0, D^-0.5); position tables N(0, 1); CLS / mask tokens zero; Conv2d PyTorch default."""
        if self.text_embed.weight.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.02, b=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.text_embed.weight, std=self.cfg.embed_dim ** -0.5)
        nn.init.normal_(self.encoder.embed_positions.A.weight)
        nn.init.normal_(self.encoder.embed_positions.B.weight)

    def forward(self, image: Optional[torch.Tensor] = None, text_ids: Optional[torch.Tensor] = None,
                text_padding_mask: Optional[torch.Tensor] = None, return_hidden: bool = False,
                checkpoint: Optional[bool] = None, vision_queries: Optional[int] = None) -> Dict:
        """``checkpoint``: recompute each layer in the backward pass (activation checkpointing); None = the
        module's ``grad_ckpt`` attribute (set by ``--grad_ckpt``).

        ``vision_queries=n``: the last layer computes only the first n vision tokens (n = 1: the CLS) and the
        text tokens -- the same values as the full run for those, without the patch tokens' last-layer work
        (their outputs are not returned: no ``img_tokens``; ``tokens`` / ``split`` then hold the n kept)."""
        if image is None and text_ids is None:
            raise ValueError("BEiT3.forward: give an image, text ids, or both")
        xv = xt = None
        nv = nt = 0
        pos = self.encoder.embed_positions
        if image is not None:
            xv = self.vision_embed(image)
            nv = xv.shape[1]
            xv = xv + pos(nv, 0).to(xv.dtype)
        attn_mask = None
        if text_ids is not None:
            _check_ids(text_ids, self.cfg.vocab_size)
            xt = self.text_embed(text_ids)
            nt = xt.shape[1]
            xt = xt + pos(0, nt).to(xt.dtype)
            if text_padding_mask is not None:
                keep = ~text_padding_mask.bool()
                xt = xt * keep.unsqueeze(-1).to(xt.dtype)
                attn_mask = torch.cat([keep.new_ones(keep.shape[0], nv), keep], 1)[:, None, None, :]
        ckpt = self.grad_ckpt if checkpoint is None else checkpoint
        hidden = []
        last = len(self.encoder.layers) - 1
        for i, layer in enumerate(self.encoder.layers):
            vq = vision_queries if i == last and xv is not None else None
            if ckpt and torch.is_grad_enabled():
                xv, xt = checkpoint_call(layer.forward_streams, xv, xt, attn_mask, vq)
            else:
                xv, xt = layer.forward_streams(xv, xt, attn_mask, vq)
            if return_hidden:
                hidden.append(_from_streams(xv, xt))
        xv, xt = self.encoder.layer_norm.streams(xv, xt)
        nk = nv if xv is None else xv.shape[1]
        out = {"tokens": _from_streams(xv, xt), "split": nk}
        if xv is not None:
            cls, img = xv.split([1, nk - 1], dim=1)
            out["cls"] = cls.squeeze(1)
            if nk == nv:
                out["img_tokens"] = img
        if xt is not None:
            out["text_tokens"] = xt
        if return_hidden:
            out["hidden"] = hidden
        return out


def _check_ids(text_ids: torch.Tensor, vocab_size: int) -> None:
    """Text ids below the vocabulary size: a ValueError on the CPU; on an accelerator an asynchronous device
    assert (no host sync); skipped while torch.compile traces."""
    if not text_ids.numel() or torch.compiler.is_compiling():
        return
    if text_ids.device.type == "cpu":
        top = int(text_ids.max())
        if top >= vocab_size:
            raise ValueError(f"BEiT3: text id {top} >= vocab_size {vocab_size}")
    else:
        torch._assert_async(text_ids.max() < vocab_size, f"BEiT3: a text id >= vocab_size {vocab_size}")


# ----------------------------------------------------------------------------------------------------------
# Official pretrained checkpoints (unilm beit3_{base,large}[_indomain]_patch16_224.pth, sometimes named .zip):
# ``{"model": {"beit3.<our name>": ...}}``; a rule table over `vgcore.checkpoint`.
# ----------------------------------------------------------------------------------------------------------

VISION_POS_KEY = "encoder.embed_positions.A.weight"
PATCH_KERNEL_KEY = "vision_embed.proj.weight"
VISION_POS_PREFIX_ROWS = 3  # 2 fairseq offset rows + CLS


def adapt_beit3_pretrained(state: Dict[str, torch.Tensor], cfg: BEiT3Config, prefix: str = "beit3.",
                           resize_patch: bool = True) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Official BEiT-3 pretrained state dict (keys ``beit3.*``) -> our `BEiT3` keys (prefix stripped) with the
    vision position table (bicubic, the 3 leading rows kept) and, if ``resize_patch``, the patch kernel
    (bicubic, no magnitude rescale) resampled to ``cfg``.

    Returns (state dict, ignored keys): keys outside ``prefix`` (pretraining heads etc.) are ignored, listed."""
    sd, report = convert_state_dict(state, [("^" + re.escape(prefix), "")], keep_unmatched=False)
    if VISION_POS_KEY in sd:
        sd[VISION_POS_KEY] = resample_pos_table(sd[VISION_POS_KEY], tuple(cfg.grid), VISION_POS_PREFIX_ROWS)
    if PATCH_KERNEL_KEY in sd and resize_patch:
        sd[PATCH_KERNEL_KEY] = resample_patch_kernel(sd[PATCH_KERNEL_KEY], cfg.patch_size)
    return dict(sd), report.unmatched


def load_beit3_pretrained(model: BEiT3, path_or_state, resize_patch: bool = True, *,
                          trust_pickle: bool = False) -> Dict[str, List[str]]:
    """Load an official BEiT-3 checkpoint (a path, read weights-only unless ``trust_pickle``, or the loaded
    object) into ``model`` strictly: every parameter must be filled.

    Returns ``{"ignored": [...]}``, the checkpoint keys outside ``beit3.*``; raises one
    `vgcore.checkpoint.StateDictMismatchError` listing any missing / unexpected / mis-shaped key."""
    is_path = isinstance(path_or_state, (str, os.PathLike))
    raw = torch_load(path_or_state, trust_pickle=trust_pickle) if is_path else path_or_state
    sd, ignored = adapt_beit3_pretrained(unwrap(raw), model.cfg, resize_patch=resize_patch)
    load_strict(model, sd, what=f"BEiT-3 pretrained {path_or_state if is_path else 'state dict'}")
    return {"ignored": ignored}
