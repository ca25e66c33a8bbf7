"""SimVG head (official ``TextGuidedQuerySelectKDDETRHead``): projections, text-guided query generation (TGQG),
the decoder branch (DB) and the token branch (TB).

Shapes: B batch, Q queries, L text tokens, C = ``embed_dim`` (256), (h, w) the patch grid.  Everything is
batch-first.  Masks are bool with **True = padding**.  Boxes are sigmoid outputs, normalised cxcywh of the
input frame; logits index 0 = "object", index 1 = "no-object".

Data flow (as in the official code):
  x = input_proj(img tokens) [B,C,h,w];  T = input_text_proj(text tokens) [B,L,C];
  c = input_cls_proj(object token = BEiT-3 vision CLS) repeated to [B,Q,C];
  TGQG: zeros [B,Q,C] attend to T (query_pos = query_embed.weight, key_pos = 1-D sine of the text positions,
        text pads masked) through ``num_tgqg_layers`` post-norm DETR layers + final LayerNorm;
  query = TGQG_out + pool(T) + query_embed.weight   (the decoder's query position)
  TB: token_mlp(c + query) -> class_embed_token / bbox_embed_token (+ sigmoid)
  DB: zeros [B,Q,C] attend to x (key_pos = 2-D sine) through a 3-layer post-norm decoder; every layer output
      goes through the shared final LayerNorm -> class_embed_decoder / bbox_embed_decoder (+ sigmoid).
  The class / box layers run in float32 under ``--amp`` (`vgcore.models.precision.fp32`).

Compat switches (official behaviour, needed for released checkpoints; off by default):
* ``text_maxpool_int64_mask``: pool(T) is max(T[L-1], T[L-2]) if the sample has padding, else T[L-1]
  (the official int64-mask indexing bug) instead of a masked max over real tokens.
* ``text_pos_embed_1d_degenerate``: the 1-D text key position encoding with integer-truncated
  frequencies (dim0 = sin p, dim1 = cos p, other even dims 0, other odd dims 1).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from vgcore.models.detr import DetrDecoder
from vgcore.models.mlp import MLP
from vgcore.models.precision import fp32
from vgcore.models.position import sine_position_1d, sine_position_2d

__all__ = ["SimVGHead", "pool_text"]

BRANCHES = ("both", "decoder", "token")


def pool_text(t: torch.Tensor, text_pad: torch.Tensor, int64_mask_compat: bool = False) -> torch.Tensor:
    """Text pooling [B,L,C] -> [B,C]. Default: max over real tokens (text_pad False).
    ``int64_mask_compat``: the official behaviour (see module docstring)."""
    if int64_mask_compat:
        neg = torch.finfo(t.dtype).min
        has_pad = text_pad.any(1, keepdim=True)
        has_real = (~text_pad).any(1, keepdim=True)
        last = torch.where(has_real, t[:, -1], torch.full_like(t[:, -1], neg))
        second = torch.where(has_pad, t[:, -2], torch.full_like(t[:, -2], neg))
        return torch.maximum(last, second)
    return t.masked_fill(text_pad[..., None], float("-inf")).amax(1)


class SimVGHead(nn.Module):
    def __init__(self, in_channels: int, embed_dim: int = 256, num_queries: int = 1, num_classes: int = 1,
                 num_heads: int = 8, num_decoder_layers: int = 3, decoder_ffn_dim: int = 2048,
                 num_tgqg_layers: int = 2, tgqg_ffn_dim: int = 512, dropout: float = 0.1,
                 num_token_mlp_layers: int = 1, text_guided_query_generation: bool = True,
                 share_predicthead: bool = False, text_maxpool_int64_mask: bool = False,
                 text_pos_embed_1d_degenerate: bool = False):
        super().__init__()
        C = embed_dim
        self.num_queries = num_queries
        self.text_maxpool_int64_mask = text_maxpool_int64_mask
        self.text_pos_embed_1d_degenerate = text_pos_embed_1d_degenerate
        self.input_proj = nn.Conv2d(in_channels, C, kernel_size=1)
        self.input_text_proj = nn.Linear(in_channels, C)
        self.input_cls_proj = nn.Linear(in_channels, C)
        self.query_embed = nn.Embedding(num_queries, C)
        self.decoder = DetrDecoder(num_decoder_layers, C, num_heads, decoder_ffn_dim, dropout, dropout,
                                   post_norm=True, return_intermediate=True)
        for p in self.decoder.parameters():  # official DetrTransformer.init_weights
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.tgqg = (DetrDecoder(num_tgqg_layers, C, num_heads, tgqg_ffn_dim, dropout, dropout,
                                 post_norm=True, return_intermediate=False)
                     if text_guided_query_generation else None)
        self.token_mlp = MLP(C, C, C, num_token_mlp_layers, return_intermediate=True) if num_token_mlp_layers > 0 else None
        self.class_embed_decoder = nn.Linear(C, num_classes + 1)
        self.bbox_embed_decoder = MLP(C, C, 4, 3)
        if share_predicthead:
            self.class_embed_token, self.bbox_embed_token = self.class_embed_decoder, self.bbox_embed_decoder
        else:
            self.class_embed_token = nn.Linear(C, num_classes + 1)
            self.bbox_embed_token = MLP(C, C, 4, 3)

    def forward(self, img_feat: torch.Tensor, cls_feat: torch.Tensor, text_feat: torch.Tensor,
                text_pad: torch.Tensor, img_mask: Optional[torch.Tensor] = None, branch: str = "both",
                return_intermediates: bool = False) -> Dict[str, torch.Tensor]:
        """img_feat [B,Db,h,w] (unused, may be None, for ``branch="token"``), cls_feat [B,Db], text_feat [B,L,Db],
        text_pad [B,L] bool (True = pad),
        img_mask [B,h,w] bool (True = pad, None = no padding).  See `SimVG.forward_tensors` for the outputs."""
        if branch not in BRANCHES:
            raise ValueError(f"SimVGHead: branch must be one of {BRANCHES}, got {branch!r}")
        B = cls_feat.shape[0]
        Q = self.num_queries
        text_pad = text_pad.bool()
        if branch != "token" and img_mask is None:
            _, _, h, w = img_feat.shape
            img_mask = torch.zeros(B, h, w, dtype=torch.bool, device=img_feat.device)
        t = self.input_text_proj(text_feat)
        c = self.input_cls_proj(cls_feat)[:, None].expand(B, Q, -1)
        qe = self.query_embed.weight[None].expand(B, Q, -1)
        inter = {}
        if self.tgqg is not None:
            pooled = pool_text(t, text_pad, self.text_maxpool_int64_mask)
            tpos = sine_position_1d(t.shape[1], t.shape[2], degenerate=self.text_pos_embed_1d_degenerate,
                                    device=t.device, dtype=t.dtype)
            tg = self.tgqg(torch.zeros_like(qe), t, query_pos=qe, key_pos=tpos[None], memory_padding_mask=text_pad)
            query = tg[0] + pooled[:, None] + qe
            if return_intermediates:
                inter.update(text_feat_proj=t, text_feat_filter=pooled[:, None], text_pos_embed_1d=tpos,
                             tgqg_out=tg[0])
        else:
            query = qe
        out = {"branch": branch}
        if branch in ("both", "token"):
            tok = query + c
            feats = self.token_mlp(tok) if self.token_mlp is not None else tok[None]
            logits, boxes = fp32(lambda f: (self.class_embed_token(f), self.bbox_embed_token(f).sigmoid()), feats)
            out["token_logits"], out["token_boxes"] = logits[-1], boxes[-1]
            if return_intermediates:
                inter["token_features"] = feats
        if branch in ("both", "decoder"):
            x = self.input_proj(img_feat)
            pos = sine_position_2d(img_mask, x.shape[1] // 2).to(x.dtype)
            memory = x.flatten(2).transpose(1, 2)
            hs = self.decoder(torch.zeros_like(query), memory, query_pos=query,
                              key_pos=pos.flatten(2).transpose(1, 2), memory_padding_mask=img_mask.flatten(1))
            logits, boxes = fp32(lambda h: (self.class_embed_decoder(h), self.bbox_embed_decoder(h).sigmoid()), hs)
            out["decoder_logits"], out["decoder_boxes"] = logits, boxes
            if return_intermediates:
                inter.update(decoder_hidden_states=hs, pos_embed_2d=pos, img_mask=img_mask)
        if return_intermediates:
            inter["query_embed"] = query
            out["intermediates"] = inter
        return out
