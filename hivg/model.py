"""HiVG (ACM MM'24): CLIP + multi-layer adaptive cross-modal bridge + Hi LoRA + a DETR-style fusion encoder.

Forward (official `models/HiVG.py::HiVG.forward`, re-derived):
  text ids [B,77] -> CLIP text tower (causal) -> hidden states, last (ln_final), pooled (EOT = argmax id)
      text_features = text_projection(last) [B,77,H]; text_eos_embed = text_projection(pooled)
      bridge text   = raw hidden_states[bridge_text_layers]    (mixup: [condition_text_proj(text_features)])
  image [B,3,S,S] -> CLIP vision tower with bridges -> hidden states; img_cls_embed = visual_projection(ln_post(CLS))
      visual tokens = visu_proj(ml_visual_projection(cat_c(hidden_states[extract_vision_layers])))  [B,1+N,H]
  fusion: [REG, CLS+N patches, 77 text] + learned positions (q/k only), key padding mask
      [False, False, visu_mask, text_ids == 0], pre-norm encoder with a final LayerNorm.
  pred_boxes = sigmoid(MLP(REG)) -- normalised (cx, cy, w, h) of the padded S x S input.
  aux: logits_per_text = exp(logit_scale) * norm(text_eos) @ norm(img_cls)^T;
       visu_token_similarity = token_mlp(token_norm(fused patches)) . norm(fused text at EOT)  [B,N];
       seg_mask = 3 x ConvTranspose2d(k2,s2) on the fused patch grid . norm(fused EOT)  [B,1,8g,8g].
       Computed as one contraction (`seg_mask_from_patches`): the three bias-free stride-2 kernels and the EOT
       vector compose into one per-sample 8x8 stride-8 kernel with a single output channel (the same linear map;
       exact in exact arithmetic), instead of upsampling all channels to 8g x 8g first.  The parameters stay the
       three convolutions ``seg_upsample.{0,1,2}.weight``.

Masks: ``img_mask`` True/1 = padding; ``visu_mask`` = round(antialiased bilinear resize of the pixel mask to
the patch grid) (torchvision ``Resize`` on the int mask, as the official code); text padding = ids == 0.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vgcore.models.checkpointing import checkpoint_blocks
from vgcore.models.mlp import MLP
from vgcore.models.precision import fp32
from vgcore.models.position import sine_position_2d

from .clip_tower import MLP2, TextTower, VisionTower
from .config import HiVGConfig, PRESETS, config_from_any
from .lora import merge_lora

__all__ = ["HiVG", "build_model", "FusionEncoder", "PRESETS", "HiVGConfig", "pixel_mask_to_patches",
           "seg_mask_from_patches"]


def pixel_mask_to_patches(img_mask: torch.Tensor, grid: int) -> torch.Tensor:
    """[B,H,W] pad mask (bool/int, 1 = pad) -> [B, grid*grid] bool, as torchvision Resize on an int tensor."""
    m = F.interpolate(img_mask[:, None].float(), size=(grid, grid), mode="bilinear", align_corners=False,
                      antialias=True)
    return m.round().bool().flatten(1)


def seg_mask_from_patches(patches: torch.Tensor, kernels, vec: torch.Tensor) -> torch.Tensor:
    """``einsum("bchw,bc->bhw", up(patches), vec)`` where ``up`` is a chain of bias-free ConvTranspose2d with
    kernel = stride = 2 (weights ``kernels``, each [C_in, C_out, 2, 2]), without materialising ``up(patches)``.

    patches [B, C, g, g], vec [B, C_last] -> [B, 1, g * 2^n, g * 2^n].  The vector is pushed back through the
    kernels (last first) into a per-sample [C, s, s] kernel (s = 2^n), applied with stride s: output pixel
    (s*y + r, s*x + c) = sum_ch patches[b, ch, y, x] * K[b, ch, r, c]."""
    B, C, g, _ = patches.shape
    k = vec[:, :, None, None]  # [B, C_last, 1, 1]: the 1x1 "kernel" of the channel contraction
    for w in reversed(list(kernels)):  # w [Ci, Co, 2, 2]; k [B, Co, s, s] -> [B, Ci, 2s, 2s]
        s = k.shape[-1]
        k = torch.einsum("ijpq,bjrs->biprqs", w.to(k.dtype), k).reshape(B, w.shape[0], 2 * s, 2 * s)
    s = k.shape[-1]
    out = torch.einsum("bcyx,bcrs->byrxs", patches.to(k.dtype), k)
    return out.reshape(B, 1, g * s, g * s)


class FusionLayer(nn.Module):
    """DETR encoder layer: positions added to q and k only; ReLU FFN; pre- or post-norm."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.heads, self.pre_norm, self.p = heads, pre_norm, dropout
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def _attn(self, x: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        h = self.heads
        wq, wk, wv = self.in_proj.weight.chunk(3, 0)
        bq, bk, bv = self.in_proj.bias.chunk(3, 0)
        qk_in = x + pos
        q = F.linear(qk_in, wq, bq).view(B, L, h, D // h).transpose(1, 2)
        k = F.linear(qk_in, wk, bk).view(B, L, h, D // h).transpose(1, 2)
        v = F.linear(x, wv, bv).view(B, L, h, D // h).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=self.p if self.training else 0.0)
        return self.out_proj(o.transpose(1, 2).reshape(B, L, D))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.drop(self._attn(self.ln1(x), pos, keep))
            return x + self.drop(self.fc2(self.drop(F.relu(self.fc1(self.ln2(x))))))
        x = self.ln1(x + self.drop(self._attn(x, pos, keep)))
        return self.ln2(x + self.drop(self.fc2(self.drop(F.relu(self.fc1(x))))))


class FusionEncoder(nn.Module):
    """Stack of `FusionLayer`; a final LayerNorm when pre-norm (official ``normalize_before``). Batch-first."""

    def __init__(self, dim: int, heads: int, ffn: int, layers: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.layers = nn.ModuleList(FusionLayer(dim, heads, ffn, dropout, pre_norm) for _ in range(layers))
        self.norm = nn.LayerNorm(dim) if pre_norm else None
        self.grad_ckpt = False  # activation checkpointing per layer (--grad_ckpt)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        keep = (~pad_mask)[:, None, None, :]  # [B,1,1,L] True = attend
        x = checkpoint_blocks(self.layers, x, pos, keep, enabled=self.grad_ckpt)
        return self.norm(x) if self.norm is not None else x


class HiVG(nn.Module):
    def __init__(self, cfg: HiVGConfig):
        super().__init__()
        self.cfg = cfg
        lora = dict(lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout)
        H = cfg.embed_dim
        self.text = TextTower(cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.text_mlp, cfg.vocab_size,
                              cfg.context_length, **lora)
        n_text = 1 if cfg.mixup_pretrain else len(cfg.bridge_text_layers)
        if not cfg.mixup_pretrain and not cfg.adaptive_weights and cfg.text_width * n_text != cfg.vision_width:
            raise ValueError("adaptive_weights=False needs mixup_pretrain (the official bridge then feeds the raw "
                             f"{cfg.text_width}-wide text states to a {cfg.vision_width}-wide attention and crashes)")
        bridge_kwargs = dict(text_dim=cfg.text_width, n_text=n_text, context_length=cfg.context_length,
                             adaptive=cfg.adaptive_weights and not cfg.mixup_pretrain)
        self.vision = VisionTower(cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers,
                                  cfg.vision_heads, cfg.vision_mlp, cfg.bridge_layers, bridge_kwargs, **lora)
        self.text_projection = nn.Linear(cfg.text_width, H, bias=False)
        self.visual_projection = nn.Linear(cfg.vision_width, H, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)), requires_grad=False)
        self.condition_text_proj = nn.Linear(H, cfg.vision_width) if cfg.mixup_pretrain else None
        # heads
        self.visu_proj = nn.Linear(H, H)
        self.text_proj = nn.Linear(H, H)
        self.reg_token = nn.Parameter(torch.randn(1, H))
        self.vl_pos_embed = nn.Parameter(torch.randn(cfg.fusion_len, H))
        self.fusion = FusionEncoder(H, cfg.fusion_heads, cfg.fusion_ffn, cfg.fusion_layers, cfg.fusion_dropout,
                                    cfg.fusion_pre_norm)
        self.bbox_head = MLP(H, H, 4, 3)  # DETR bbox_embed: 3 linears, ReLU between
        self.ml_visual_projection = nn.Linear(len(cfg.extract_vision_layers) * cfg.vision_width, H)
        self.visu_token_norm = nn.LayerNorm(H, eps=1e-5)
        self.visu_token_mlp = MLP2(H, cfg.token_mlp_dim)
        self.seg_upsample = nn.Sequential(*[nn.ConvTranspose2d(H, H, 2, 2, bias=False) for _ in range(3)])
        self.init_ml_visual_projection()
        if cfg.pos_init == "sincos":
            self.init_sincos_positions()
        self.set_hilora_stage(cfg.hi_lora_stage)

    # ------------------------------------------------------------------ set-up helpers
    @property
    def compat_batch_mixing(self) -> bool:
        return bool(self.cfg.compat_batch_mixing)

    @compat_batch_mixing.setter
    def compat_batch_mixing(self, value: bool) -> None:
        self.cfg.compat_batch_mixing = bool(value)

    @torch.no_grad()
    def init_ml_visual_projection(self) -> None:
        """Official init: ml_visual_projection.weight = concat of k copies of CLIP's visual_projection.weight
        (call again after loading pretrained CLIP weights; the bias keeps its default init)."""
        k = len(self.cfg.extract_vision_layers)
        self.ml_visual_projection.weight.copy_(torch.cat([self.visual_projection.weight] * k, dim=1))

    @torch.no_grad()
    def init_sincos_positions(self) -> None:
        """2-D sine tables (DETR normalisation) on the patch rows of the vision and the fusion position tables
        (``pos_init="sincos"``); the CLS / [REG] / text rows keep their random init."""
        g, N = self.cfg.grid, self.cfg.num_visu_tokens
        grid_mask = torch.zeros(1, g, g, dtype=torch.bool)
        # (table, first patch row, scale): vision rows follow CLS; fusion rows follow [REG] and CLS
        for table, first, scale in ((self.vision.pos_embed, 1, self.cfg.sincos_vision_scale),
                                    (self.vl_pos_embed, 2, 1.0)):
            sincos = sine_position_2d(grid_mask, table.shape[1] // 2)[0].flatten(1).t()  # [g*g, D]
            table[first:first + N].copy_(scale * sincos)

    def clip_parameter_names(self) -> list:
        """Names of the CLIP parameters (towers, projections, logit scale) excluding bridges and LoRA."""
        out = []
        for n, _ in self.named_parameters():
            if n.startswith(("text.", "vision.", "text_projection", "visual_projection", "logit_scale")) \
                    and ".bridge." not in n and ".lora_" not in n:
                out.append(n)
        return out

    def set_hilora_stage(self, stage: int) -> None:
        """Trainable set of Hi LoRA stage 0..3 (official `set_HiLoRA` + bridge re-enable).

        CLIP base weights, projections and logit_scale: frozen.  Bridges (incl. their LoRA): trainable.
        Stage 0: all tower LoRA frozen.  Stage k >= 1: text LoRA of every layer, vision LoRA of the first
        ``hilora_stage_layers[k-1]`` blocks (official 5 / 8 / 12; ViT-L blocks 12+ are never adapted).
        Heads and the fusion encoder: trainable.  One adapter set is carried across stages.
        """
        if not 0 <= stage <= 3:
            raise ValueError(f"Hi LoRA stage must be 0..3, got {stage}")
        self.cfg.hi_lora_stage = int(stage)
        n_vis = 0 if stage == 0 else int(self.cfg.hilora_stage_layers[stage - 1])
        for name, p in self.named_parameters():
            if name == "logit_scale":
                p.requires_grad_(False)
            elif ".bridge." in name:
                p.requires_grad_(True)
            elif name.startswith("text.") or name.startswith("text_projection"):
                p.requires_grad_(".lora_" in name and stage >= 1)
            elif name.startswith("vision.") or name.startswith("visual_projection"):
                trainable = False
                if ".lora_" in name and name.startswith("vision.blocks."):
                    trainable = int(name.split(".")[2]) < n_vis
                p.requires_grad_(trainable)
            else:
                p.requires_grad_(True)

    def merge_lora(self) -> int:
        """Fold every LoRA adapter into its base weight (inference); returns the number merged."""
        return merge_lora(self)

    # ------------------------------------------------------------------ forward
    def forward(self, batch) -> dict:
        """``batch``: a `vgcore.data.sample.Batch` (images, pixel_mask True = pad, text_ids CLIP BPE [B,77])."""
        text_ids = batch.text_ids
        pad = None
        if getattr(batch, "text_mask", None) is not None:
            pad = ~batch.text_mask.bool()
        return self.forward_tensors(batch.images, batch.pixel_mask, text_ids, text_pad_mask=pad)

    def forward_tensors(self, img: torch.Tensor, img_mask: torch.Tensor, text_ids: torch.Tensor,
                        text_pad_mask: Optional[torch.Tensor] = None) -> dict:
        """img [B,3,S,S] normalised; img_mask [B,S,S] (1/True = padding); text_ids [B,77] CLIP ids.

        text_pad_mask [B,77] True = padding (default ``text_ids == 0``, the official convention).
        Returns a dict (see module docstring); every tensor is batch-first.
        """
        cfg = self.cfg
        B = img.shape[0]
        text_ids = text_ids.long()
        if text_pad_mask is None:
            text_pad_mask = text_ids == 0
        t_hidden, t_last, t_pooled = self.text(text_ids)
        text_features = self.text_projection(t_last)
        text_eos_embed = self.text_projection(t_pooled)
        if cfg.mixup_pretrain:
            bridge_text = [self.condition_text_proj(text_features)]
        else:
            bridge_text = [t_hidden[i] for i in cfg.bridge_text_layers]
        v_hidden, v_pooled = self.vision(img, bridge_text, batch_mixing=cfg.compat_batch_mixing and B > 1)
        img_cls_embed = self.visual_projection(v_pooled)
        ml = torch.cat([v_hidden[i] for i in cfg.extract_vision_layers], dim=-1)
        visu_src = self.visu_proj(self.ml_visual_projection(ml))  # [B,1+N,H]
        text_src = self.text_proj(text_features)  # [B,T,H]

        grid = img.shape[-1] // cfg.patch_size
        visu_mask = pixel_mask_to_patches(img_mask, grid)
        N = grid * grid
        zeros = torch.zeros(B, 2, dtype=torch.bool, device=img.device)
        vl_mask = torch.cat([zeros, visu_mask, text_pad_mask.bool()], dim=1)
        vl_src = torch.cat([self.reg_token.expand(B, -1, -1).to(visu_src.dtype), visu_src, text_src], dim=1)
        if vl_src.shape[1] != self.vl_pos_embed.shape[0]:
            raise ValueError(f"fusion sequence length {vl_src.shape[1]} != vl_pos_embed rows "
                             f"{self.vl_pos_embed.shape[0]} (input size must be {cfg.image_size})")
        hs = self.fusion(vl_src, vl_mask, self.vl_pos_embed[None])
        reg = hs[:, 0]
        pred_boxes = fp32(lambda r: self.bbox_head(r).sigmoid(), reg)  # float32 under --amp

        logit_scale = self.logit_scale.exp()
        t_n = F.normalize(text_eos_embed, dim=-1)
        i_n = F.normalize(img_cls_embed, dim=-1)
        logits_per_text = logit_scale * t_n @ i_n.t()

        patches = hs[:, 2:2 + N]
        text_hs = hs[:, 2 + N:]
        eos = text_hs[torch.arange(B, device=hs.device), text_ids.argmax(dim=-1)]
        eos = eos / eos.norm(dim=-1, keepdim=True)
        visu_token_similarity = (self.visu_token_mlp(self.visu_token_norm(patches)) * eos[:, None]).sum(-1)
        seg_mask = seg_mask_from_patches(patches.transpose(1, 2).reshape(B, -1, grid, grid),
                                         [m.weight for m in self.seg_upsample], eos)

        return {
            "pred_boxes": pred_boxes,
            "logits_per_text": logits_per_text,
            "logits_per_image": logits_per_text.t(),
            "visu_token_similarity": visu_token_similarity,
            "seg_mask": seg_mask,
            "visu_mask": visu_mask,
            "text_eos_embed": text_eos_embed,
            "img_cls_embed": img_cls_embed,
            "fusion_reg_output": reg,
            "text_last_hidden_state": t_last,
            "vision_cls_per_layer": torch.stack([h[:, 0] for h in v_hidden], dim=1),
        }


def build_model(args_or_config: Any = None, **overrides) -> HiVG:
    """Build HiVG from a preset name ("hivg-tiny", "hivg-b16", "hivg-l14"), a dict / argparse Namespace
    (our `HiVGConfig` fields or the official flags), or a `HiVGConfig`.  Weights are random; load
    converted official weights with `hivg.convert` and ``model.load_state_dict(sd, strict=True)``."""
    return HiVG(config_from_any(args_or_config, **overrides))
