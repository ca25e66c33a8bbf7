"""ResVG (ACM MM'24): VLTVG-R50 whose decoder target query starts from a per-sample semantic-prior feature.

``build_model(args)`` builds `ResVG` from a dict, an argparse Namespace or a `ResVGConfig` (see
`resvg.config`; every default is the official value, compat switches on).

Forward contract
----------------
``model(batch)`` with a `vgcore.data.sample.Batch` (images [B,3,H,W] normalised; pixel_mask [B,H,W] True = pad;
text_ids / text_mask [B,L] BERT WordPiece, True = real token; the prior feature [B, prior_dim] in
``batch.extra["prior_feature"]``) -> ``forward_tensors(images, pixel_mask, text_ids, text_mask, prior)`` -> dict:

* ``pred_boxes`` [B,Q,4]: last stage, sigmoid (cx, cy, w, h) normalised by the padded input;
* ``aux_outputs``: [{"pred_boxes"}] for stages 0..S-2; ``stage_boxes`` [S,B,Q,4] every stage;
* with ``return_intermediates=True``, ``intermediates``: ``visual_memory`` [B,N,D] (DETR encoder output, N = h*w
  row-major), ``pos_embed`` [B,N,D], ``text_feature`` [B,L,768] (BERT layer mean), ``word_feature`` [B,L,D],
  ``verify_score`` [B,N,1], ``discriminative_feature`` [B,N,D], ``content_query`` [B,Q,D] (the initial target
  query), ``decoder_hs`` [S,B,Q,D].

Data flow: ResNet (FrozenBN) -> 1x1 conv -> DETR encoder with sine PE -> discriminative encoder (visual-linguistic
verification x language-guided context with relative positions) -> S decoder stages (word attention, then image
attention with key = discriminative feature, value = visual feature) -> shared LayerNorm -> 3-layer box MLP.

Input size: any image whose feature grid fits the relative-position tables (up to 21 x 21 cells, i.e. 672 px at
stride 32, with the official offsets -20..20); the official code accepts exactly 640 x 640 (a 20 x 20 grid).
The DETR encoder layers keep DETR's dropout on the attention output (vgcore's detrex-style layer has none).

Freezing: ``model.set_epoch(e)`` freezes ``cfg.freeze_modules`` while ``e < cfg.freeze_epochs`` and unfreezes them
afterwards; ResNet conv1 / layer1 and the BERT pooler never train (`permanently_frozen`).  When
``model.schedule_epoch`` is set (the training schedule `resvg.training.FreezingSchedule` keeps it), every
``model.train()`` applies the freeze of that epoch, so the epoch loop needs no hook of its own.

Prior feature: ``batch.extra["prior_feature"]`` when the collate put it there, else the per-record rows that
`resvg.prior.attach_priors` stored in ``record.extra`` (`resvg.prior.batch_prior`), else ``model.default_prior``
([prior_dim], not saved with the weights; ``predict.py`` sets it), else None.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vgcore.boxes import box_cxcywh_to_xyxy
from vgcore.metrics import RECAccumulator
from vgcore.models.bert import bert_layer_mean, build_bert
from vgcore.models.checkpointing import checkpoint_blocks
from vgcore.models.detr import FFN, DetrEncoderLayer, MultiheadAttention
from vgcore.models.mlp import MLP
from vgcore.models.precision import fp32
from vgcore.models.position import sine_position_2d
from vgcore.models.resnet import ResNetBackbone

from resvg.attention import RelPosAttention
from resvg.config import ResVGConfig, config_from_args
from resvg.prior import batch_prior

__all__ = ["ResVG", "VisualEncoder", "DiscriminativeEncoderLayer", "DecoderStage", "ResVGDecoder", "build_model",
           "boxes_to_original", "ACC_THRESHOLDS", "make_accumulator"]

ACC_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))  # Acc@0.50 .. Acc@0.90


class _EncoderLayer(DetrEncoderLayer):
    """DETR's post-norm encoder layer, with DETR's dropout on the attention output before the residual."""

    def __init__(self, d: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__(d, heads, ffn_dim, dropout, dropout)
        self.attn_dropout = nn.Dropout(dropout)

    def forward(self, x, pos=None, padding_mask=None):
        q = k = x if pos is None else x + pos
        x = self.norm1(x + self.attn_dropout(self.self_attn(q, k, x, key_padding_mask=padding_mask)))
        return self.norm2(x + self.ffn(x))


class VisualEncoder(nn.Module):
    """``layers.{i}``: post-norm DETR encoder layers (PE added to q and k), no final norm; batch-first.
    ``grad_ckpt``: activation checkpointing per layer while gradients are on (``--grad_ckpt``; dropout draws
    the same numbers in the recomputation, so outputs and gradients are those of the plain run)."""

    def __init__(self, num_layers: int, d: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(_EncoderLayer(d, heads, ffn_dim, dropout) for _ in range(num_layers))
        self.grad_ckpt = False  # activation checkpointing per layer (--grad_ckpt)

    def forward(self, x, pos, padding_mask=None):
        return checkpoint_blocks(self.layers, x, pos, padding_mask, enabled=self.grad_ckpt)


class DiscriminativeEncoderLayer(nn.Module):
    """VLTVG's visual-linguistic verification + language-guided context encoder.

    forward(img [B,N,D], pos [B,N,D], word [B,L,D], word_pad [B,L], img_pad [B,N] or None, grid) ->
    (fused [B,N,D], verify [B,N,1]); fused = (LN(img) + LN(ctx)) * verify, where ctx is relative-position
    self-attention with q = k = img + text-conditioned info and value = img."""

    def __init__(self, cfg: ResVGConfig):
        super().__init__()
        D, h, p = cfg.hidden_dim, cfg.nheads, cfg.fusion_attn_dropout
        self.img_query_with_pos = cfg.img_query_with_pos
        self.qk_without_pe = cfg.img2img_qk_without_pe
        self.verify = cfg.verify_score_gaussian
        self.img2text_attn = MultiheadAttention(D, h, p)
        if self.verify:
            self.text_proj = MLP(D, D, D, cfg.verify_proj_layers)
            self.img_proj = MLP(D, D, D, cfg.verify_proj_layers)
            self.verify_scale = nn.Parameter(torch.tensor([float(cfg.verify_scale)]))
            self.verify_sigma = nn.Parameter(torch.tensor([float(cfg.verify_sigma)]))
            self.verify_pow = float(cfg.verify_pow)
        self.img2textcond_attn = MultiheadAttention(D, h, p)
        self.img2img_attn = RelPosAttention(D, h, p, cfg.rpe_x_range, cfg.rpe_y_range,
                                            relative=cfg.rpe_key_weight_projection, learnable=cfg.rpe_learnable)
        self.norm_text_cond_img = nn.LayerNorm(D)
        self.norm_img = nn.LayerNorm(D)

    def verify_score(self, img: torch.Tensor, text_info: torch.Tensor) -> torch.Tensor:
        cos = (F.normalize(self.img_proj(img), p=2, dim=-1) *
               F.normalize(self.text_proj(text_info), p=2, dim=-1)).sum(-1, keepdim=True)
        return self.verify_scale * torch.exp(-(1 - cos).pow(self.verify_pow) / (2 * self.verify_sigma ** 2))

    def forward(self, img, pos, word, word_pad, img_pad, grid):
        if self.verify:
            query = img + pos if self.img_query_with_pos else img
            score = self.verify_score(img, self.img2text_attn(query, word, word, key_padding_mask=word_pad))
        else:
            score = img.new_ones(img.shape[:-1] + (1,))
        cond_query = img if self.qk_without_pe else img + pos
        text_cond = self.img2textcond_attn(cond_query, word, word, key_padding_mask=word_pad)
        qk = img + text_cond if self.qk_without_pe else img + text_cond + pos
        ctx = self.img2img_attn(qk, qk, img, grid, key_padding_mask=img_pad)
        return (self.norm_img(img) + self.norm_text_cond_img(ctx)) * score, score


class DecoderStage(nn.Module):
    """One multi-stage decoder layer: the target query gathers text, the text query gathers image evidence.

    text_query = norm1(word_attn(vis_query + vis_pos, word, word))            (+ vis_query with the residual)
    vis_query  = norm2(vis_query + img_attn(text_query + text_pos, key + img_pos, value))
    vis_query  = norm3(vis_query + ffn(vis_query))"""

    def __init__(self, cfg: ResVGConfig):
        super().__init__()
        D, h = cfg.hidden_dim, cfg.nheads
        self.residual_text = not cfg.text_query_no_residual
        self.word_attn = MultiheadAttention(D, h, cfg.dec_attn_dropout)
        self.img_attn = MultiheadAttention(D, h, cfg.dec_attn_dropout)
        self.ffn = FFN(D, cfg.dec_ffn_dim, cfg.dec_dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(D), nn.LayerNorm(D), nn.LayerNorm(D)
        self.dropout1, self.dropout2 = nn.Dropout(cfg.dec_dropout), nn.Dropout(cfg.dec_dropout)

    def forward(self, vis_query, vis_pos, text_pos, key, value, img_pos, img_pad, word, word_pad):
        text_info = self.dropout1(self.word_attn(vis_query + vis_pos, word, word, key_padding_mask=word_pad))
        text_query = self.norm1(vis_query + text_info if self.residual_text else text_info)
        vis_info = self.img_attn(text_query + text_pos, key + img_pos, value, key_padding_mask=img_pad)
        vis_query = self.norm2(vis_query + self.dropout2(vis_info))
        return self.norm3(vis_query + self.ffn(vis_query))


class ResVGDecoder(nn.Module):
    """Query embeddings, the semantic-prior MLP, S `DecoderStage`s and the shared final LayerNorm.

    forward(...) -> (hs [S,B,Q,D], content_query [B,Q,D])."""

    def __init__(self, cfg: ResVGConfig):
        super().__init__()
        D, Q = cfg.hidden_dim, cfg.num_queries
        self.split_memory = cfg.memory_split_key_disc_value_orig
        self.layers = nn.ModuleList(DecoderStage(cfg) for _ in range(cfg.dec_layers))
        self.norm = nn.LayerNorm(D) if cfg.shared_final_norm else None
        self.vis_query_embed = nn.Embedding(Q, D)
        self.text_query_embed = nn.Embedding(Q, D)
        self.prior_mlp = None
        if cfg.prior_feature_content_query:
            self.prior_mlp = nn.Sequential(nn.Linear(cfg.prior_dim, cfg.prior_hidden), nn.ReLU(),
                                           nn.Dropout(cfg.prior_dropout), nn.Linear(cfg.prior_hidden, D))

    def forward(self, visual, disc, img_pos, img_pad, word, word_pad, prior=None):
        B = visual.shape[0]
        vis_pos = self.vis_query_embed.weight[None].expand(B, -1, -1)
        text_pos = self.text_query_embed.weight[None].expand(B, -1, -1)
        query = torch.zeros_like(vis_pos)
        if self.prior_mlp is not None:
            if prior is None:
                raise ValueError("ResVG: the semantic-prior feature is required (prior_feature_content_query is on)")
            query = query + self.prior_mlp(prior.to(query.dtype))[:, None, :]
        content = query
        key, value = (disc, visual) if self.split_memory else (disc, disc)
        hs = []
        for layer in self.layers:
            query = layer(query, vis_pos, text_pos, key, value, img_pos, img_pad, word, word_pad)
            hs.append(query if self.norm is None else self.norm(query))
        return torch.stack(hs), content


class ResVG(nn.Module):
    def __init__(self, cfg: ResVGConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_dim
        self.backbone = ResNetBackbone(cfg.backbone, cfg.dilation, bn_eps=1e-5 if cfg.frozen_bn_eps else 0.0,
                                       train_layers=("layer2", "layer3", "layer4") if cfg.train_backbone else ())
        self.input_proj = nn.Conv2d(self.backbone.num_channels, D, kernel_size=1)
        self.visual_encoder = VisualEncoder(cfg.enc_layers, D, cfg.nheads, cfg.enc_ffn_dim, cfg.enc_dropout)
        self.bert = build_bert(cfg.bert_config())
        self.bert_proj = nn.Linear(self.bert.config.hidden_size, D)
        self.discriminative = DiscriminativeEncoderLayer(cfg)
        self.decoder = ResVGDecoder(cfg)
        self.bbox_embed = MLP(D, D, 4, 3)
        # official init: xavier on every matrix of the encoder and of the fusion / decoder; bert_proj, bbox_embed,
        # input_proj keep PyTorch's default, BERT its own
        for module in (self.visual_encoder, self.discriminative, self.decoder):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for p in self.bert.pooler.parameters():
            p.requires_grad_(False)
        self._always_frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        self.schedule_epoch: Optional[int] = None      # set by resvg.training.FreezingSchedule
        self.default_prior: Optional[torch.Tensor] = None  # [prior_dim] used when a batch carries no prior

    def train(self, mode: bool = True) -> "ResVG":
        super().train(mode)
        if mode and self.schedule_epoch is not None:
            self.set_epoch(self.schedule_epoch)
        return self

    # ------------------------------------------------------------------------------------------- freezing
    def permanently_frozen(self) -> List[str]:
        """Parameters that never train: ResNet conv1 / layer1 (all of it without ``train_backbone``), BERT pooler."""
        return sorted(self._always_frozen)

    def set_frozen(self, frozen: bool, modules: Optional[Sequence[str]] = None) -> None:
        """(Un)freeze the named top-level modules (default ``cfg.freeze_modules``); permanent freezes stay."""
        for name in modules if modules is not None else self.cfg.freeze_modules:
            for n, p in getattr(self, name).named_parameters(prefix=name):
                p.requires_grad_(not frozen and n not in self._always_frozen)

    def set_epoch(self, epoch: int) -> bool:
        """Apply the freeze schedule for ``epoch`` (0-based); returns True while the modules are frozen."""
        frozen = epoch < self.cfg.freeze_epochs
        self.set_frozen(frozen)
        return frozen

    # ------------------------------------------------------------------------------------------- forward
    def forward_tensors(self, images: torch.Tensor, pixel_mask: Optional[torch.Tensor], text_ids: torch.Tensor,
                        text_mask: torch.Tensor, prior: Optional[torch.Tensor] = None,
                        return_intermediates: bool = False) -> Dict[str, Any]:
        """images [B,3,H,W]; pixel_mask [B,H,W] True = pad (ignored with ``pixel_mask_all_false``); text_ids /
        text_mask [B,L] (True = real token); prior [B, prior_dim].  See the module docstring for the output."""
        cfg = self.cfg
        use_mask = pixel_mask is not None and not cfg.pixel_mask_all_false
        feat, mask = self.backbone(images, pixel_mask if use_mask else None)
        B, _, h, w = feat.shape
        if mask is None:
            mask = torch.zeros(B, h, w, dtype=torch.bool, device=feat.device)
        pos = sine_position_2d(mask, num_pos_feats=cfg.hidden_dim // 2).to(feat.dtype).flatten(2).transpose(1, 2)
        img_pad = mask.flatten(1) if use_mask else None
        src = self.input_proj(feat).flatten(2).transpose(1, 2)
        visual = self.visual_encoder(src, pos, img_pad)

        n_layers = cfg.bert_output_layers if cfg.bert_last4_mean else 1
        text = bert_layer_mean(self.bert, text_ids, text_mask, n_layers)
        word = self.bert_proj(text)
        word_pad = ~text_mask.bool()

        disc, score = self.discriminative(visual, pos, word, word_pad, img_pad, (h, w))
        hs, content = self.decoder(visual, disc, pos, img_pad, word, word_pad, prior)
        boxes = fp32(lambda x: self.bbox_embed(x).sigmoid(), hs)  # float32 under --amp
        out: Dict[str, Any] = {"pred_boxes": boxes[-1], "stage_boxes": boxes,
                               "aux_outputs": [{"pred_boxes": b} for b in boxes[:-1]]}
        if return_intermediates:
            out["intermediates"] = {"visual_memory": visual, "pos_embed": pos, "text_feature": text,
                                    "word_feature": word, "verify_score": score, "discriminative_feature": disc,
                                    "content_query": content, "decoder_hs": hs}
        return out

    def forward(self, batch, return_intermediates: bool = False) -> Dict[str, Any]:
        prior = batch_prior(batch)
        if prior is None and self.default_prior is not None:
            prior = self.default_prior.to(batch.images.device).expand(batch.images.shape[0], -1)
        return self.forward_tensors(batch.images, batch.pixel_mask, batch.text_ids, batch.text_mask, prior,
                                    return_intermediates=return_intermediates)


def build_model(args: Any = None, **overrides) -> ResVG:
    """Build `ResVG` (random init; load converted official weights with `resvg.convert`)."""
    return ResVG(config_from_args(args, **overrides))


# ------------------------------------------------------------------------------------------- evaluation
def boxes_to_original(pred_boxes: torch.Tensor, input_size, dxdy: torch.Tensor, ratio: torch.Tensor,
                      orig_size: torch.Tensor) -> torch.Tensor:
    """The official PostProcess: normalised cxcywh [B,4] or [B,1,4] on the padded input -> xyxy original pixels.

    input_size (H, W) of the padded input; dxdy [B,2] = (left, top) paste offset; ratio [B,2] = (new_h / h,
    new_w / w); orig_size [B,2] = (h, w).  Steps: xyxy * (W, H, W, H), minus (dx, dy, dx, dy), clamp >= 0,
    divided by (ratio_w, ratio_h, ratio_w, ratio_h), elementwise min with (orig_w, orig_h, orig_w, orig_h)."""
    if pred_boxes.dim() == 3:
        pred_boxes = pred_boxes[:, 0]
    H, W = input_size
    xyxy = box_cxcywh_to_xyxy(pred_boxes) * pred_boxes.new_tensor([W, H, W, H])
    dxdy = dxdy.to(xyxy)
    xyxy = (xyxy - torch.cat([dxdy, dxdy], 1)).clamp(min=0)
    rh, rw = ratio.to(xyxy).unbind(1)
    xyxy = xyxy / torch.stack([rw, rh, rw, rh], 1)
    oh, ow = orig_size.to(xyxy).unbind(1)
    return torch.min(xyxy, torch.stack([ow, oh, ow, oh], 1))


def make_accumulator() -> RECAccumulator:
    """ResVG's REC metric: Acc@t = share of IoU > t (strict) for t = 0.50, 0.55, ..., 0.90."""
    return RECAccumulator(thresholds=ACC_THRESHOLDS, strict=True)
