"""ALVG head: SimVG's text-guided query generation (TGQG), text-guided image enhancement (TIE), a decoder that
returns its cross-attention maps, box / class heads and a mask head.

Shapes: B batch, Q queries, L text tokens, C = ``embed_dim`` (256), (h, w) the patch grid, N = h * w.  Batch
first everywhere; masks are bool with **True = padding**.  Boxes are sigmoid outputs, normalised cxcywh of the
input frame; logits index 0 = "object", 1 = "no-object".

Data flow (the official ``TextGuidedQuerySelectKDDETRHead`` of ALVG):

  x = input_proj(image tokens) [B,C,h,w];  P = 2-D sine position of the patch grid [B,C,h,w]
  t = input_text_proj(text tokens) [B,L,C];  g = pool(t) [B,C]
  TGQG: zeros [B,Q,C] attend to t (query_pos = query_embed.weight, key_pos = 1-D sine of the text positions,
        pads masked) through ``num_tgqg_layers`` post-norm DETR layers + final LayerNorm;
  query = TGQG_out + g + query_embed.weight                                  (the decoder's query position)
  TIE:  V = img_proj(x + P)  (or img_proj(x)),  u = text_proj(g),  c_p = cos(V_p, u),
        z = (c - mean c) / std c over the tokens,  s = 2 sigmoid(z) in (0, 2)  (the score map [B,h,w]),
        memory = s * V
  decoder: zeros [B,Q,C] attend to memory (key_pos = P) -> every layer's output and head-averaged
        cross-attention map [n,B,Q,h,w]; class_embed / bbox_embed (+ sigmoid) on every layer, the last is the
        prediction, the others get auxiliary losses
  mask head: refine (3x3 conv, BN, ReLU, 256 -> 128) then three stride-2 transposed convs (128 -> 64 -> 32 -> 1,
        BN + ReLU after the first two): one mask per image at 8x the patch grid (1/4 of the input at patch 32),
        input memory + P (or memory)

Compat switches (official behaviour, needed for released checkpoints; off by default):
* ``text_pool_last_two_slots``: g = max(t[L-1], t[L-2]) if the sample has padding, else t[L-1] (the official
  int64-mask indexing bug) instead of a max over the real tokens.
* ``text_pos_1d_int_truncation``: the 1-D text position encoding with integer-truncated frequencies.
* ``tie_pos_before_proj_zscore``: TIE adds P to x before ``img_proj`` and standardises the cosine over all N
  tokens with the unbiased std; off: V = img_proj(x), mean / biased std over the unpadded tokens (+1e-6).
* ``decoder_parallel_layers``: every decoder layer gets the original zero target (independent one-layer
  decoders); off: a stacked decoder.
* ``decoder_cross_attn_residual_includes_query_pos``: the cross-attention residual adds to t1 + query_pos.
* ``pos2d_added_three_times``: P is added once more to the memory at the mask-head input.
* ``mask_head_sigmoid_output``: the mask head ends with a Sigmoid (outputs probabilities); off: logits.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from simvg.head import pool_text
from vgcore.models.attn_decoder import AttnMapDecoder
from vgcore.models.detr import DetrDecoder
from vgcore.models.mlp import MLP
from vgcore.models.position import sine_position_1d, sine_position_2d
from vgcore.models.precision import fp32

__all__ = ["TextGuidedEnhancement", "MaskHead", "ALVGHead", "HEAD_SWITCHES"]

HEAD_SWITCHES = ("text_pool_last_two_slots", "text_pos_1d_int_truncation", "tie_pos_before_proj_zscore",
                 "decoder_parallel_layers", "decoder_cross_attn_residual_includes_query_pos",
                 "pos2d_added_three_times", "mask_head_sigmoid_output")


class TextGuidedEnhancement(nn.Module):
    """TIE: image tokens re-weighted by their standardised cosine similarity to the pooled text (module doc)."""

    def __init__(self, embed_dim: int = 256, dropout: float = 0.1, pos_before_proj_zscore: bool = False):
        super().__init__()
        self.text_proj = nn.Linear(embed_dim, embed_dim)
        self.img_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.pos_before_proj_zscore = pos_before_proj_zscore

    def forward(self, x: torch.Tensor, pos: torch.Tensor, text: torch.Tensor,
                padding_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """x, pos [B,N,C]; text [B,C]; padding_mask [B,N] (True = pad) -> (memory [B,N,C], score [B,N])."""
        v = self.dropout(self.img_proj(x + pos if self.pos_before_proj_zscore else x))
        u = self.dropout(self.text_proj(text))
        c = (F.normalize(v, dim=-1) * F.normalize(u, dim=-1)[:, None]).sum(-1)  # [B, N]
        if self.pos_before_proj_zscore:
            z = (c - c.mean(1, keepdim=True)) / c.std(1, keepdim=True)
        else:
            valid = torch.ones_like(c) if padding_mask is None else (~padding_mask).to(c.dtype)
            n = valid.sum(1, keepdim=True).clamp(min=1)
            mean = (c * valid).sum(1, keepdim=True) / n
            std = (((c - mean) ** 2 * valid).sum(1, keepdim=True) / n).sqrt()
            z = (c - mean) / (std + 1e-6)
        score = 2 * torch.sigmoid(z)
        return score[..., None] * v, score


class MaskHead(nn.Module):
    """``refine`` (Conv3x3 no bias, BN, ReLU) + ``upsample`` (3 x ConvTranspose2d k4 s2 p1, BN + ReLU between):
    [B,C,h,w] -> [B,8h,8w] logits, or probabilities with ``sigmoid_output``."""

    def __init__(self, in_channels: int = 256, channels: int = 128, sigmoid_output: bool = False):
        super().__init__()
        self.refine = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(channels), nn.ReLU())
        nn.init.kaiming_uniform_(self.refine[0].weight, a=1)
        c2, c4 = channels // 2, channels // 4
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(channels, c2, 4, stride=2, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.ConvTranspose2d(c2, c4, 4, stride=2, padding=1), nn.BatchNorm2d(c4), nn.ReLU(),
            nn.ConvTranspose2d(c4, 1, 4, stride=2, padding=1))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.upsample(self.refine(x))[:, 0]
        return out.sigmoid() if self.sigmoid_output else out


class ALVGHead(nn.Module):
    def __init__(self, in_channels: int, embed_dim: int = 256, num_queries: int = 1, num_classes: int = 1,
                 num_heads: int = 8, num_decoder_layers: int = 3, decoder_ffn_dim: int = 2048,
                 num_tgqg_layers: int = 2, tgqg_ffn_dim: int = 512, dropout: float = 0.1,
                 text_guided_query_generation: bool = True, img_enhance: bool = True, tie_dropout: float = 0.1,
                 mask_head: bool = True, mask_channels: int = 128, **switches):
        super().__init__()
        unknown = sorted(set(switches) - set(HEAD_SWITCHES))
        if unknown:
            raise TypeError(f"ALVGHead: unknown compat switches {unknown}; known: {list(HEAD_SWITCHES)}")
        sw = {k: bool(switches.get(k, False)) for k in HEAD_SWITCHES}
        C = embed_dim
        self.num_queries = num_queries
        self.text_pool_last_two_slots = sw["text_pool_last_two_slots"]
        self.text_pos_1d_int_truncation = sw["text_pos_1d_int_truncation"]
        self.pos2d_added_three_times = sw["pos2d_added_three_times"]
        self.input_proj = nn.Conv2d(in_channels, C, kernel_size=1)
        self.input_text_proj = nn.Linear(in_channels, C)
        self.query_embed = nn.Embedding(num_queries, C)
        self.tgqg = (DetrDecoder(num_tgqg_layers, C, num_heads, tgqg_ffn_dim, dropout, dropout, post_norm=True,
                                 return_intermediate=False) if text_guided_query_generation else None)
        self.enhance = (TextGuidedEnhancement(C, tie_dropout, sw["tie_pos_before_proj_zscore"])
                        if img_enhance else None)
        self.decoder = AttnMapDecoder(num_decoder_layers, C, num_heads, decoder_ffn_dim, dropout,
                                      chain_layers=not sw["decoder_parallel_layers"],
                                      residual_includes_query_pos=sw["decoder_cross_attn_residual_includes_query_pos"])
        for mod in (self.enhance, self.decoder):  # official DetrTransformer.init_weights (TIE + decoder)
            for p in (mod.parameters() if mod is not None else ()):
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        self.class_embed = nn.Linear(C, num_classes + 1)
        self.bbox_embed = MLP(C, C, 4, 3)
        self.mask_head = MaskHead(C, mask_channels, sw["mask_head_sigmoid_output"]) if mask_head else None

    # ---------------------------------------------------------------------------------- compat switches
    def switches(self) -> Dict[str, bool]:
        return {"text_pool_last_two_slots": self.text_pool_last_two_slots,
                "text_pos_1d_int_truncation": self.text_pos_1d_int_truncation,
                "tie_pos_before_proj_zscore": bool(self.enhance is not None and self.enhance.pos_before_proj_zscore),
                "decoder_parallel_layers": not self.decoder.chain_layers,
                "decoder_cross_attn_residual_includes_query_pos": self.decoder.residual_includes_query_pos,
                "pos2d_added_three_times": self.pos2d_added_three_times,
                "mask_head_sigmoid_output": bool(self.mask_head is not None and self.mask_head.sigmoid_output)}

    def set_switch(self, name: str, value: bool) -> None:
        value = bool(value)
        if name == "tie_pos_before_proj_zscore":
            if self.enhance is not None:
                self.enhance.pos_before_proj_zscore = value
        elif name == "decoder_parallel_layers":
            self.decoder.chain_layers = not value
        elif name == "decoder_cross_attn_residual_includes_query_pos":
            self.decoder.residual_includes_query_pos = value
        elif name == "mask_head_sigmoid_output":
            if self.mask_head is not None:
                self.mask_head.sigmoid_output = value
        elif name in ("text_pool_last_two_slots", "text_pos_1d_int_truncation", "pos2d_added_three_times"):
            setattr(self, name, value)
        else:
            raise KeyError(f"ALVGHead has no compat switch {name!r}")

    # ---------------------------------------------------------------------------------- forward
    def forward(self, img_feat: torch.Tensor, text_feat: torch.Tensor, text_pad: torch.Tensor,
                img_mask: Optional[torch.Tensor] = None, return_intermediates: bool = False) -> Dict[str, torch.Tensor]:
        """img_feat [B,Db,h,w], text_feat [B,L,Db], text_pad [B,L] bool (True = pad), img_mask [B,h,w] bool (True =
        pad, None = no padding).  See `alvg.model.ALVG.forward_tensors` for the outputs."""
        B, _, h, w = img_feat.shape
        Q = self.num_queries
        text_pad = text_pad.bool()
        if img_mask is None:
            img_mask = torch.zeros(B, h, w, dtype=torch.bool, device=img_feat.device)
        x = self.input_proj(img_feat)
        C = x.shape[1]
        t = self.input_text_proj(text_feat)
        pos = sine_position_2d(img_mask, C // 2).to(x.dtype)
        qe = self.query_embed.weight[None].expand(B, Q, -1)
        pooled = pool_text(t, text_pad, self.text_pool_last_two_slots)
        inter = {}
        if self.tgqg is not None:
            tpos = sine_position_1d(t.shape[1], C, degenerate=self.text_pos_1d_int_truncation, device=t.device,
                                    dtype=t.dtype)
            tg = self.tgqg(torch.zeros_like(qe), t, query_pos=qe, key_pos=tpos[None], memory_padding_mask=text_pad)
            query = tg[0] + pooled[:, None] + qe
            if return_intermediates:
                inter.update(text_pos_embed=tpos, tgqg_out=tg[0])
        else:
            query = qe
        tokens = x.flatten(2).transpose(1, 2)
        pos_seq = pos.flatten(2).transpose(1, 2)
        pad_seq = img_mask.flatten(1)
        score = None
        if self.enhance is not None:
            memory, score = self.enhance(tokens, pos_seq, pooled, pad_seq)
        else:
            memory = tokens
        hs, attn = self.decoder(torch.zeros_like(query), memory, query_pos=query, key_pos=pos_seq,
                                memory_padding_mask=pad_seq)
        logits, boxes = fp32(lambda x: (self.class_embed(x), self.bbox_embed(x).sigmoid()), hs)  # float32 under --amp
        out = {"decoder_logits": logits, "decoder_boxes": boxes,
               "attn_maps": attn.reshape(attn.shape[0], B, Q, h, w)}
        if score is not None:
            out["score_map"] = score.reshape(B, h, w)
        memory_map = memory.transpose(1, 2).reshape(B, C, h, w)
        if self.mask_head is not None:
            m = self.mask_head(memory_map + pos if self.pos2d_added_three_times else memory_map)
            out["pred_masks"] = m
            out["mask_probs"] = m if self.mask_head.sigmoid_output else m.sigmoid()
        if return_intermediates:
            inter.update(decoder_hidden=hs, memory=memory_map, query_pos=query, text_feat_filter=pooled,
                         text_feat_proj=t, pos_embed_2d=pos, img_mask=img_mask)
            out["intermediates"] = inter
        return out
