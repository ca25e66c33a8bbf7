"""ALVG: SimVG's BEiT-3 one-tower encoder and text-guided queries, plus text-guided image enhancement (TIE), a
decoder whose cross-attention maps are supervised, and a mask head (REC + RES, and GREC with 10 queries).

``build_model(args)`` builds `ALVG` from a dict, an argparse Namespace or an `ALVGConfig`; ``args["preset"]``
(or ``args.preset``) picks a starting point from `PRESETS` ('vitb', 'vitl', 'tiny'); every other key overrides
an `ALVGConfig` field of the same name.

Forward contract
----------------
``model(batch)`` with a `vgcore.data.sample.Batch` (images [B,3,H,W] normalised; pixel_mask [B,H,W] True = pad;
text_ids [B,L] BEiT-3 sentencepiece ids; text_mask [B,L] True = real token) ->
``forward_tensors(images, text_ids, text_padding_mask=~text_mask, image_padding_mask=pixel_mask)`` -> dict:

* ``pred_logits`` [B,Q,C+1], ``pred_boxes`` [B,Q,4] (normalised cxcywh of the input frame): the last decoder
  layer; ``aux_outputs``: list of {pred_logits, pred_boxes} of the other layers.
* ``decoder_logits`` [n,B,Q,C+1], ``decoder_boxes`` [n,B,Q,4]: every decoder layer.
* ``attn_maps`` [n,B,Q,h,w]: every layer's head-averaged cross-attention weights over the patch grid.
* ``score_map`` [B,h,w]: the TIE enhancement score 2 sigmoid(z) in (0, 2) (when ``img_enhance``).
* ``pred_masks`` [B,8h,8w]: the mask head's output (probabilities with ``mask_head_sigmoid_output``, else logits)
  and ``mask_probs`` (always probabilities), one mask per image (the union of the targets).
* ``input_hw``: (H, W) of the input frame.  ``intermediates`` (``return_intermediates=True``): BEiT-3 outputs
  and head internals (`alvg.head.ALVGHead`).
Class index 0 = object; the score of a query is softmax(logits)[..., 0].

Compat switches (`COMPAT_SWITCHES`, all ON for official checkpoints, see `alvg.convert.OFFICIAL_COMPAT`): the
head's seven (`alvg.head`) and the loss's four (`alvg.loss`); they live in the config so that a checkpoint
carries them to its loss.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import torch
from torch import nn

from alvg.head import HEAD_SWITCHES, ALVGHead
from alvg.loss import LOSS_SWITCHES
from simvg.model import head_kwargs, postprocess_rec, query_scores
from vgcore import dist
from vgcore.models.beit3 import BEiT3, beit3_config, load_beit3_pretrained
from vgcore.models.config import config_from
from vgcore.models.detr import layer_outputs

__all__ = ["ALVGConfig", "ALVG", "PRESETS", "COMPAT_SWITCHES", "LOSS_SWITCHES", "build_model", "config_from_args",
           "postprocess_rec", "query_scores"]

COMPAT_SWITCHES = HEAD_SWITCHES + LOSS_SWITCHES


@dataclass
class ALVGConfig:
    # backbone (BEiT-3)
    backbone: str = "base"               # BEiT-3 preset: base | large | tiny
    backbone_overrides: Optional[dict] = None
    img_size: int = 640
    patch_size: int = 32
    vocab_size: int = 64010
    max_text_positions: int = 1024
    drop_path_rate: float = 0.1          # official: 0.1 for base, 0.0 for large (``rop_path_rate`` typo)
    max_text_len: int = 20
    # head
    embed_dim: int = 256
    num_queries: int = 1                 # 1 for REC, 10 for gRefCOCO
    num_classes: int = 1
    num_heads: int = 8
    num_decoder_layers: int = 3
    decoder_ffn_dim: int = 2048
    num_tgqg_layers: int = 2
    tgqg_ffn_dim: int = 512
    dropout: float = 0.1
    text_guided_query_generation: bool = True
    img_enhance: bool = True             # TIE
    tie_dropout: float = 0.1
    mask_head: bool = True
    mask_channels: int = 128
    # compat switches (official quirks; see the module docstrings of alvg.head and alvg.loss)
    text_pool_last_two_slots: bool = False
    text_pos_1d_int_truncation: bool = False
    tie_pos_before_proj_zscore: bool = False
    decoder_parallel_layers: bool = False
    decoder_cross_attn_residual_includes_query_pos: bool = False
    pos2d_added_three_times: bool = False
    mask_head_sigmoid_output: bool = False
    mask_loss_double_sigmoid: bool = False
    mask_target_bilinear_int: bool = False
    attn_targets_mask_vs_box: bool = False
    decoder_attn_loss_layer_summed_ratio: bool = False

    def beit3(self):
        return beit3_config(self.backbone, img_size=self.img_size, patch_size=self.patch_size,
                            vocab_size=self.vocab_size, max_text_positions=self.max_text_positions,
                            drop_path_rate=self.drop_path_rate, **(self.backbone_overrides or {}))

    def compat(self) -> Dict[str, bool]:
        return {k: bool(getattr(self, k)) for k in COMPAT_SWITCHES}

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: Dict[str, dict] = {
    "vitb": dict(backbone="base", drop_path_rate=0.1),
    "vitl": dict(backbone="large", drop_path_rate=0.0),
    # a small model for CPU tests and synthetic learning runs (SimVG's tiny BEiT-3 at 128 px, patch 16)
    "tiny": dict(backbone="tiny", img_size=128, patch_size=16, drop_path_rate=0.0, embed_dim=128, num_heads=4,
                 decoder_ffn_dim=256, tgqg_ffn_dim=256, mask_channels=64),
}


def config_from_args(args: Any = None, **overrides) -> ALVGConfig:
    """dict / Namespace / ALVGConfig (+ keyword overrides) -> ALVGConfig (`vgcore.models.config.config_from`)."""
    return config_from(ALVGConfig, args, PRESETS, "ALVG", **overrides)


class ALVG(nn.Module):
    def __init__(self, cfg: ALVGConfig):
        super().__init__()
        self.cfg = cfg
        self.beit3 = BEiT3(cfg.beit3())
        self.head = ALVGHead(**head_kwargs(cfg, self.beit3.cfg.embed_dim, "img_enhance", "tie_dropout", "mask_head",
                                           "mask_channels", *HEAD_SWITCHES))

    def train(self, mode: bool = True):
        """Also, when leaving training in a distributed run: every rank takes rank 0's buffers (the mask head's
        BatchNorm statistics).  DDP broadcasts buffers at the start of each training forward, so after the last
        step each rank holds its own update; without this, validation would run different statistics per rank
        from the ones saved in the checkpoint (rank 0's).  Only after a training forward, so that evaluation
        code calling ``eval()`` on one rank never waits for the others."""
        if not mode and getattr(self, "_buffers_stale", False) and dist.get_world_size() > 1:
            for b in self.buffers():
                dist.broadcast(b, 0)
        if not mode:
            self._buffers_stale = False
        return super().train(mode)

    def set_compat(self, **switches) -> None:
        """Turn compat switches on / off after construction (head switches act at once, loss switches through
        the config the criterion reads)."""
        for k, v in switches.items():
            if k not in COMPAT_SWITCHES:
                raise KeyError(f"ALVG has no compat switch {k!r}; known: {list(COMPAT_SWITCHES)}")
            if k in HEAD_SWITCHES:
                self.head.set_switch(k, v)
            setattr(self.cfg, k, bool(v))

    def load_pretrained_backbone(self, path_or_state, trust_pickle: bool = False) -> dict:
        """Initialise BEiT-3 from an official pretrained checkpoint (position table + patch kernel resized)."""
        return load_beit3_pretrained(self.beit3, path_or_state, trust_pickle=trust_pickle)

    def forward_tensors(self, images: torch.Tensor, text_ids: torch.Tensor, text_padding_mask: torch.Tensor,
                        image_padding_mask: Optional[torch.Tensor] = None,
                        return_intermediates: bool = False) -> Dict[str, Any]:
        """images [B,3,H,W]; text_ids [B,L] long; text_padding_mask [B,L] (True/1 = pad); image_padding_mask
        [B,H,W] (True = pad) or None.  Returns the dict of the module docstring."""
        if self.training:
            self._buffers_stale = True
        text_pad = text_padding_mask.bool()
        enc = self.beit3(images, text_ids, text_pad)
        img_feat, img_mask = self.beit3.image_grid(enc, image_padding_mask)
        out = self.head(img_feat, enc["text_tokens"], text_pad, img_mask, return_intermediates)
        out.update(layer_outputs(out["decoder_logits"], out["decoder_boxes"]))
        out["input_hw"] = tuple(images.shape[-2:])
        if return_intermediates:
            out["intermediates"].update(beit3_cls=enc["cls"], beit3_text_tokens=enc["text_tokens"],
                                        beit3_img_tokens=enc["img_tokens"])
        return out

    def forward(self, batch, return_intermediates: bool = False) -> Dict[str, Any]:
        return self.forward_tensors(batch.images, batch.text_ids, ~batch.text_mask.bool(),
                                    image_padding_mask=batch.pixel_mask, return_intermediates=return_intermediates)


def build_model(args: Any = None, **overrides) -> ALVG:
    """Build `ALVG` (random init; ``model.load_pretrained_backbone(path)`` for BEiT-3 weights)."""
    return ALVG(config_from_args(args, **overrides))
