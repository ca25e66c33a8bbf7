"""SimVG (NeurIPS'24): BEiT-3 multiway encoder + object token + decoupled decoder / token branches.

``build_model(args)`` builds `SimVG` from a dict, an argparse Namespace or a `SimVGConfig`; ``args["preset"]``
(or ``args.preset``) picks a starting point from `PRESETS` ('vitb', 'vitl', 'tiny'); every other key overrides a
`SimVGConfig` field of the same name.

Forward contract
----------------
``model(batch)`` with a `vgcore.data.sample.Batch` (images [B,3,H,W] normalised; pixel_mask [B,H,W] True = pad;
text_ids [B,L] BEiT-3 sentencepiece ids with the fairseq offset; text_mask [B,L] True = real token) ->
``forward_tensors(images, text_ids, text_padding_mask=~text_mask, image_padding_mask=pixel_mask)`` -> dict:

* ``pred_logits`` [B,Q,C+1], ``pred_boxes`` [B,Q,4] (normalised cxcywh of the input frame): the decoder
  branch's last layer, or the token branch when only it runs (``branch="token"``).
* ``aux_outputs``: list of {pred_logits, pred_boxes} for decoder layers 0..n-2.
* ``decoder_logits`` [n,B,Q,C+1], ``decoder_boxes`` [n,B,Q,4]: every decoder layer (when the DB runs).
* ``token_logits`` [B,Q,C+1], ``token_boxes`` [B,Q,4]: the token branch (when it runs).
* ``branch``: which branches ran.  ``intermediates`` (with ``return_intermediates=True``): BEiT-3 outputs and
  head internals (see `SimVGHead`).
Class index 0 = object; the score of a query is softmax(logits)[..., 0].

Branches: "both" (training with distillation, evaluation of both), "decoder" (stage-1 / pre-training: the
official code does not run the TB at all), "token" (TB-only inference: the 3-layer image decoder is skipped,
and so is the patch tokens' work in BEiT-3's last layer, whose outputs only the decoder reads).
The default comes from ``SimVGConfig.default_branch``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import torch
from torch import nn

from vgcore.models.config import config_from
from vgcore.models.beit3 import BEiT3, beit3_config, load_beit3_pretrained
from vgcore.models.detr import layer_outputs
from vgcore.boxes import box_cxcywh_to_xyxy

from simvg.head import SimVGHead

__all__ = ["SimVGConfig", "SimVG", "PRESETS", "build_model", "config_from_args", "postprocess_rec", "query_scores",
           "head_kwargs"]

HEAD_FIELDS = ("embed_dim", "num_queries", "num_classes", "num_heads", "num_decoder_layers", "decoder_ffn_dim",
               "num_tgqg_layers", "tgqg_ffn_dim", "dropout", "text_guided_query_generation")


def head_kwargs(cfg, in_channels: int, *fields: str) -> dict:
    """The keyword arguments of a head with text-guided queries (SimVG's and the methods built on it): the
    BEiT-3 width ``in_channels`` and the config's `HEAD_FIELDS` plus ``fields``."""
    return dict(in_channels=in_channels, **{k: getattr(cfg, k) for k in HEAD_FIELDS + tuple(fields)})


@dataclass
class SimVGConfig:
    # backbone (BEiT-3)
    backbone: str = "base"               # BEiT-3 preset: base | large | tiny
    backbone_overrides: Optional[dict] = None  # e.g. {"embed_dim": 96, "num_layers": 2} on top of the preset
    img_size: int = 640                  # fixed square input size (the vision position table fixes it)
    patch_size: int = 32
    vocab_size: int = 64010
    max_text_positions: int = 1024
    drop_path_rate: float = 0.1          # official: 0.1 for base, 0.0 for large (``rop_path_rate`` typo)
    max_text_len: int = 20               # tokens per expression incl. <s> and </s> (data side; informational)
    # head
    embed_dim: int = 256
    num_queries: int = 1                 # 1 for REC, 10 for gRefCOCO
    num_classes: int = 1
    num_heads: int = 8
    num_decoder_layers: int = 3
    decoder_ffn_dim: int = 2048
    num_tgqg_layers: int = 2
    tgqg_ffn_dim: int = 512
    dropout: float = 0.1                 # attention and FFN dropout of the head's transformer layers
    num_token_mlp_layers: int = 1
    text_guided_query_generation: bool = True
    share_predicthead: bool = False
    default_branch: str = "both"         # both | decoder | token
    # compat switches (official quirks; ON for official checkpoints, see simvg.convert.OFFICIAL_COMPAT)
    text_maxpool_int64_mask: bool = False
    text_pos_embed_1d_degenerate: bool = False

    def beit3(self):
        return beit3_config(self.backbone, img_size=self.img_size, patch_size=self.patch_size,
                            vocab_size=self.vocab_size, max_text_positions=self.max_text_positions,
                            drop_path_rate=self.drop_path_rate, **(self.backbone_overrides or {}))

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: Dict[str, dict] = {
    # configs/single/ViT-base/*: BEiT-3 base, 640 px, patch 32
    "vitb": dict(backbone="base", drop_path_rate=0.1),
    # configs/single/ViT-large/*: BEiT-3 large; drop-path 0 as the official run (``rop_path_rate`` typo)
    "vitl": dict(backbone="large", drop_path_rate=0.0),
    # a small random-init model for CPU tests and synthetic learning runs (~10M params, 8M of them text embed)
    "tiny": dict(backbone="tiny", img_size=128, patch_size=16, drop_path_rate=0.0, embed_dim=128, num_heads=4,
                 decoder_ffn_dim=256, tgqg_ffn_dim=256),
}


def config_from_args(args: Any = None, **overrides) -> SimVGConfig:
    """dict / Namespace / SimVGConfig (+ keyword overrides) -> SimVGConfig.

    A dict must hold only `SimVGConfig` fields (and ``preset`` / ``model_preset``); a Namespace may hold other
    options, which are ignored.  ``model_preset`` (or ``preset`` when it names a `PRESETS` entry) selects a
    preset applied before the other keys.
    """
    return config_from(SimVGConfig, args, PRESETS, "SimVG", **overrides)


class SimVG(nn.Module):
    def __init__(self, cfg: SimVGConfig):
        super().__init__()
        self.cfg = cfg
        self.beit3 = BEiT3(cfg.beit3())
        self.head = SimVGHead(**head_kwargs(cfg, self.beit3.cfg.embed_dim, "num_token_mlp_layers", "share_predicthead",
                                            "text_maxpool_int64_mask", "text_pos_embed_1d_degenerate"))

    def set_compat(self, **switches) -> None:
        """Turn compat switches on/off after construction (e.g. with the dict `simvg.convert` returns)."""
        for k, v in switches.items():
            if not hasattr(self.head, k):
                raise KeyError(f"SimVG has no compat switch {k!r}")
            setattr(self.head, k, bool(v))
            setattr(self.cfg, k, bool(v))

    def load_pretrained_backbone(self, path_or_state, trust_pickle: bool = False) -> dict:
        """Initialise BEiT-3 from an official pretrained checkpoint (position table + patch kernel resized);
        a path is read weights-only unless ``trust_pickle``."""
        return load_beit3_pretrained(self.beit3, path_or_state, trust_pickle=trust_pickle)

    def forward_tensors(self, images: torch.Tensor, text_ids: torch.Tensor, text_padding_mask: torch.Tensor,
                        image_padding_mask: Optional[torch.Tensor] = None, branch: Optional[str] = None,
                        return_intermediates: bool = False) -> Dict[str, Any]:
        """images [B,3,H,W]; text_ids [B,L] long; text_padding_mask [B,L] (True/1 = pad);
        image_padding_mask [B,H,W] (True = pad) or None.  Returns the dict described in the module docstring."""
        branch = branch or self.cfg.default_branch
        text_pad = text_padding_mask.bool()
        # TB only: the patch tokens' last-layer work is skipped (the TB reads the object token and the text)
        enc = self.beit3(images, text_ids, text_pad, vision_queries=1 if branch == "token" else None)
        img_feat, img_mask = self.beit3.image_grid(enc, image_padding_mask if branch != "token" else None)
        out = self.head(img_feat, enc["cls"], enc["text_tokens"], text_pad, img_mask, branch, return_intermediates)
        if "decoder_logits" in out:
            out.update(layer_outputs(out["decoder_logits"], out["decoder_boxes"]))
        else:
            out["pred_logits"], out["pred_boxes"] = out["token_logits"], out["token_boxes"]
            out["aux_outputs"] = []
        if return_intermediates:
            out["intermediates"].update(beit3_cls=enc["cls"], beit3_text_tokens=enc["text_tokens"])
            if "img_tokens" in enc:
                out["intermediates"]["beit3_img_tokens"] = enc["img_tokens"]
        return out

    def forward(self, batch, branch: Optional[str] = None, return_intermediates: bool = False) -> Dict[str, Any]:
        return self.forward_tensors(batch.images, batch.text_ids, ~batch.text_mask.bool(),
                                    image_padding_mask=batch.pixel_mask, branch=branch,
                                    return_intermediates=return_intermediates)


def build_model(args: Any = None, **overrides) -> SimVG:
    """Build `SimVG` (random init; call ``model.load_pretrained_backbone(path)`` for BEiT-3 weights)."""
    return SimVG(config_from_args(args, **overrides))


def query_scores(pred_logits: torch.Tensor) -> torch.Tensor:
    """[..., C+1] logits -> object score softmax(.)[..., 0]."""
    return pred_logits.float().softmax(-1)[..., 0]


def postprocess_rec(pred_logits: torch.Tensor, pred_boxes: torch.Tensor, size_hw) -> Dict[str, torch.Tensor]:
    """Official REC post-processing (head.inference + detectron2 detector_postprocess + argmax).

    pred_logits [B,Q,C+1], pred_boxes [B,Q,4] normalised cxcywh; size_hw = (H, W) of the input frame.
    Boxes are scaled to pixels, clipped to [0,W]x[0,H]; queries whose clipped box is empty are dropped before
    the argmax of the score.  Returns ``boxes_xyxy`` [B,4] (input-frame pixels), ``scores`` [B,Q],
    ``best`` [B] query index, ``boxes_xyxy_all`` [B,Q,4] (clipped) and ``keep`` [B,Q] (non-empty after clipping:
    the boxes the official GREC evaluation sees before its score threshold).
    """
    H, W = size_hw
    scores = query_scores(pred_logits)
    xyxy = box_cxcywh_to_xyxy(pred_boxes.float()) * pred_boxes.new_tensor([W, H, W, H]).float()
    lim = xyxy.new_tensor([W, H, W, H])
    xyxy = torch.minimum(xyxy.clamp(min=0), lim)
    nonempty = ((xyxy[..., 2] - xyxy[..., 0]) > 0) & ((xyxy[..., 3] - xyxy[..., 1]) > 0)
    masked = torch.where(nonempty, scores, torch.full_like(scores, float("-inf")))
    masked = torch.where(nonempty.any(1, keepdim=True), masked, scores)
    best = masked.argmax(1)
    boxes = xyxy[torch.arange(xyxy.shape[0], device=xyxy.device), best]
    return {"boxes_xyxy": boxes, "scores": scores, "best": best, "boxes_xyxy_all": xyxy, "keep": nonempty}
