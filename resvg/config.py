"""ResVG configuration: one dataclass, presets, the official compat switches and the mapping from the official
argparse + ``model_config`` dict.

ResVG is VLTVG-R50 (ResNet-50 + DETR encoder, BERT-base, verification-based discriminative encoder, multi-stage
decoder) whose decoder target query starts from a per-sample semantic-prior feature.  Every default below is
the official value (all six ``configs/ResVG_R50_*.py`` share one model config).

Compat switches (booleans; ON = the official behaviour, needed to load and reproduce official checkpoints):

=================================  =====================================================================
pixel_mask_all_false               the official data pipeline never marks padding, so the model treats the
                                   whole canvas as image (encoder attention, sine PE, relative positions);
                                   off: the pixel mask is honoured everywhere
text_query_no_residual             decoder stage: text_query = LN(word_attn(...)) with no residual;
                                   off: LN(vis_query + word_attn(...))
memory_split_key_disc_value_orig   decoder image attention: key = discriminative feature + PE, value = visual
                                   encoder output; off: key and value are the discriminative feature
shared_final_norm                  one LayerNorm applied to every stage output before the box head;
                                   off: no final norm
rpe_key_weight_projection          the img2img attention adds relative-position logits: fixed sine tables
                                   projected by the key weight (no bias), q pre-scaled; off: plain attention
verify_score_gaussian              fused feature gated by scale * exp(-(1 - cos)^pow / (2 sigma^2)) with
                                   learnable scale / sigma; off: no gating (score 1)
img2img_qk_without_pe              img2textcond query and img2img q = k carry no sine PE; off: PE added
prior_feature_content_query        content query = 0 + MLP(prior feature) (the ResVG addition);
                                   off: zeros (VLTVG)
bert_last4_mean                    text feature = mean of the last ``bert_output_layers`` BERT layers;
                                   off: the last layer only
frozen_bn_eps                      FrozenBatchNorm2d with eps 1e-5 inside the sqrt; off: eps 0
=================================  =====================================================================

`COMPAT_ELSEWHERE` names the official quirks that are no model switch and where they live.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

from vgcore.models.config import config_from

__all__ = ["ResVGConfig", "PRESETS", "MODEL_SWITCHES", "OFFICIAL_COMPAT", "COMPAT_ELSEWHERE", "config_from_args",
           "config_from_official", "OFFICIAL_FREEZE_NAMES"]

MODEL_SWITCHES: Tuple[str, ...] = (
    "pixel_mask_all_false", "text_query_no_residual", "memory_split_key_disc_value_orig", "shared_final_norm",
    "rpe_key_weight_projection", "verify_score_gaussian", "img2img_qk_without_pe", "prior_feature_content_query",
    "bert_last4_mean", "frozen_bn_eps",
)

OFFICIAL_COMPAT: Dict[str, bool] = {k: True for k in MODEL_SWITCHES}

COMPAT_ELSEWHERE: Dict[str, str] = {
    "box_cxcywh_on_padded_canvas": "output contract: pred_boxes are sigmoid (cx, cy, w, h) of the padded input; "
                                   "resvg.model.boxes_to_original is the official PostProcess",
    "fused_feature": "resvg.model.DiscriminativeEncoderLayer: cat([img, (LN(img) + LN(ctx)) * verify])",
    "detr_encoder_post_norm": "resvg.model.VisualEncoder: post-norm DETR layers, PE on q and k, no final norm",
    "padding_value_zero_after_normalisation": "data pipeline (vgcore.data.transforms, resvg family)",
    "python_round_in_resize": "data pipeline (vgcore.data.transforms, resvg family)",
    "centre_offset_minus_0_1": "data pipeline (vgcore.data.transforms, resvg family)",
    "flip_substring_swap": "data pipeline (vgcore.data.transforms, resvg family)",
    "random_select_substring_exclusion": "data pipeline (vgcore.data.transforms, resvg family)",
    "prior_feature_not_flipped": "data pipeline: the prior feature is read per record, never transformed",
    "lowercase_twice": "tokenizer: lower-cased BERT WordPiece (idempotent)",
}

# official module names in ``freeze_modules`` -> ours
OFFICIAL_FREEZE_NAMES = {"backbone": "backbone", "input_proj": "input_proj", "trans_encoder": "visual_encoder",
                         "bert": "bert", "bert_proj": "bert_proj", "trans_decoder": "decoder",
                         "bbox_embed": "bbox_embed"}


@dataclass
class ResVGConfig:
    # visual branch: torchvision ResNet (FrozenBN) + DETR encoder
    backbone: str = "resnet50"
    dilation: bool = False
    train_backbone: bool = True          # official lr_backbone > 0: layer2..4 may train, conv1/layer1 never
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    enc_ffn_dim: int = 2048
    enc_dropout: float = 0.1
    # text branch: BERT (transformers BertModel)
    bert: str = "base"                   # vgcore.models.bert preset
    bert_overrides: Optional[dict] = None  # BertConfig fields on top of the preset
    bert_output_layers: int = 4
    # discriminative feature encoder (one layer)
    img_query_with_pos: bool = False     # sine PE on the img2text query
    fusion_attn_dropout: float = 0.1     # img2text, img2textcond, img2img attention dropout
    verify_proj_layers: int = 1          # text_proj / img_proj MLP depth (width = hidden_dim)
    verify_scale: float = 1.0            # initial tf_scale (learnable)
    verify_sigma: float = 0.5            # initial tf_sigma (learnable)
    verify_pow: float = 2.0              # constant
    rpe_x_range: Tuple[int, int] = (-20, 20)
    rpe_y_range: Tuple[int, int] = (-20, 20)
    rpe_learnable: bool = False          # learnable relative tables instead of fixed sine buffers
    # multi-stage decoder
    dec_layers: int = 6
    dec_ffn_dim: int = 2048
    dec_dropout: float = 0.0             # FFN and residual dropouts of a decoder stage
    dec_attn_dropout: float = 0.1
    num_queries: int = 1
    # semantic prior
    prior_dim: int = 512
    prior_hidden: int = 512
    prior_dropout: float = 0.1
    # freezing: these modules are frozen for the first freeze_epochs epochs
    freeze_modules: Tuple[str, ...] = ("backbone", "input_proj", "visual_encoder", "bert")
    freeze_epochs: int = 10
    # data side, informational (the model reads neither)
    img_size: int = 640
    max_query_len: int = 40
    # compat switches (see module docstring)
    pixel_mask_all_false: bool = True
    text_query_no_residual: bool = True
    memory_split_key_disc_value_orig: bool = True
    shared_final_norm: bool = True
    rpe_key_weight_projection: bool = True
    verify_score_gaussian: bool = True
    img2img_qk_without_pe: bool = True
    prior_feature_content_query: bool = True
    bert_last4_mean: bool = True
    frozen_bn_eps: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. the official dataset name)

    def __post_init__(self):
        self.rpe_x_range = tuple(int(v) for v in self.rpe_x_range)
        self.rpe_y_range = tuple(int(v) for v in self.rpe_y_range)
        self.freeze_modules = tuple(self.freeze_modules)
        if self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by nheads {self.nheads}")
        for name, (lo, hi) in (("rpe_x_range", self.rpe_x_range), ("rpe_y_range", self.rpe_y_range)):
            if not lo <= 0 <= hi:
                raise ValueError(f"{name} {(lo, hi)} must contain offset 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rpe_x_range"], d["rpe_y_range"] = list(self.rpe_x_range), list(self.rpe_y_range)
        d["freeze_modules"] = list(self.freeze_modules)
        return d

    def bert_config(self):
        from vgcore.models.bert import bert_config
        return bert_config(self.bert, **(self.bert_overrides or {}))


PRESETS: Dict[str, dict] = {
    # configs/ResVG_R50_{unc,unc+,gref,gref_umd,referit,flickr}.py
    "r50": {},
    # VLTVG-R50: the same network without the semantic prior
    "vltvg_r50": dict(prior_feature_content_query=False),
    # a small network for CPU runs on the synthetic data: a one-block-per-stage ResNet at stride 16 (128 px, an
    # 8 x 8 grid), width 64, a 2-layer BERT; resvg/pretrain_tiny.py pretrains its ResNet + encoder and BERT
    "tiny": dict(backbone="resnet_tiny", dilation=True, hidden_dim=64, nheads=4, enc_layers=1, enc_ffn_dim=128,
                 bert="tiny", bert_output_layers=2, dec_layers=2, dec_ffn_dim=128, prior_dim=32, prior_hidden=32,
                 img_size=128, max_query_len=20),
}


def config_from_args(args: Any = None, **overrides) -> ResVGConfig:
    """dict / Namespace / ResVGConfig (+ keyword overrides) -> ResVGConfig.

    ``preset`` / ``model_preset`` names a `PRESETS` entry applied first.  A dict must hold only config fields
    (unknown keys raise); a Namespace may hold other options, which are ignored."""
    return config_from(ResVGConfig, args, PRESETS, "ResVG", **overrides)


# ------------------------------------------------------------------------------------------ official mapping
_BERT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                "type_vocab_size", "initializer_range", "layer_norm_eps")


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise NotImplementedError(f"official ResVG config: {what} is not supported")


def _attn(args: dict, types=("MultiheadAttention",)) -> Tuple[str, int, int, float]:
    t = args.get("type")
    _need(t in types, f"attention type {t!r}")
    dim = args.get("embed_dim", args.get("d_model"))
    heads = args.get("num_heads", args.get("h"))
    return t, int(dim), int(heads), float(args.get("dropout", 0.0))


def config_from_official(args: dict, **overrides) -> dict:
    """The official argparse values with the merged config file (``train.py`` / ``test.py`` args plus
    ``model_config``, as a dict) -> a `config_from_args` dict.  Compat switches are not set here: they come
    from the checkpoint kind (see `resvg.convert`).  Raises NotImplementedError for settings no official
    config uses and this implementation does not cover."""
    pe = args.get("position_embedding", "sine")
    _need(pe in ("sine", "v2"), f"position_embedding {pe!r}")
    _need(not args.get("pre_norm", False), "pre_norm=True")
    _need(not args.get("box_xyxy", False), "box_xyxy=True")
    dec = args["model_config"]["decoder"]
    _need(dec.get("type") == "DecoderWithExtraEncoder", f"decoder type {dec.get('type')!r}")
    layer, extra = dec["layer"], dec["extra_layer"]
    _need(layer.get("type") == "MultiStageDecoderLayer", f"decoder layer type {layer.get('type')!r}")
    _need(extra.get("type") == "DiscriminativeFeatEncLayer", f"extra layer type {extra.get('type')!r}")
    _need(int(dec.get("num_extra_layers", 1)) == 1, "num_extra_layers != 1 (its output is 2 x d_model wide)")
    _need(int(layer.get("img_feat_chunk_num", 2)) == 2, "img_feat_chunk_num != 2")
    hidden = int(args["hidden_dim"])
    for k in ("query_dim", "norm_dim"):
        _need(int(dec.get(k, hidden)) == hidden, f"decoder {k} != hidden_dim")
    _need(int(layer.get("d_model", hidden)) == hidden and int(extra.get("d_model", hidden)) == hidden,
          "decoder d_model != hidden_dim")
    _, wdim, wheads, wdrop = _attn(layer["word_attn_args"])
    _, idim, iheads, idrop = _attn(layer["img_attn_args"])
    _need(wdrop == idrop, "different word / image attention dropouts")
    _, tdim, theads, tdrop = _attn(extra["img2text_attn_args"])
    _, cdim, cheads, cdrop = _attn(extra["img2textcond_attn_args"])
    itype, gdim, gheads, gdrop = _attn(extra["img2img_attn_args"], ("MHAttentionRPE", "MultiheadAttention"))
    _need(len({wdim, idim, tdim, cdim, gdim, hidden}) == 1, "attention widths != hidden_dim")
    _need(len({wheads, iheads, theads, cheads, gheads, int(args["nheads"])}) == 1, "attention head counts differ")
    _need(len({tdrop, cdrop, gdrop}) == 1, "different fusion attention dropouts")
    vl = extra["vl_verify"]
    for side in ("text_proj", "img_proj"):
        p = vl[side]
        _need(int(p["input_dim"]) == hidden and int(p["output_dim"]) == hidden and int(p["hidden_dim"]) == hidden,
              f"vl_verify.{side} widths != hidden_dim")
    _need(vl["text_proj"]["num_layers"] == vl["img_proj"]["num_layers"], "different text_proj / img_proj depths")
    cfg: Dict[str, Any] = dict(
        backbone=args.get("backbone", "resnet50"), dilation=bool(args.get("dilation", False)),
        train_backbone=float(args.get("lr_backbone", 1e-5)) > 0, hidden_dim=hidden, nheads=int(args["nheads"]),
        enc_layers=int(args["enc_layers"]), enc_ffn_dim=int(args["dim_feedforward"]),
        enc_dropout=float(args["dropout"]),
        bert_output_layers=int(args.get("bert_output_layers", 4)),
        img_query_with_pos=bool(extra.get("img_query_with_pos", True)),
        fusion_attn_dropout=tdrop, verify_proj_layers=int(vl["text_proj"]["num_layers"]),
        verify_scale=float(vl.get("scale", 1.0)), verify_sigma=float(vl.get("sigma", 0.5)),
        verify_pow=float(vl.get("pow", 2.0)),
        dec_layers=int(dec["num_layers"]), dec_ffn_dim=int(layer.get("dim_feedforward", 2048)),
        dec_dropout=float(layer.get("dropout", 0.1)), dec_attn_dropout=wdrop,
        num_queries=int(dec.get("num_queries", 1)),
        freeze_modules=[OFFICIAL_FREEZE_NAMES[m] for m in args.get("freeze_modules", [])],
        freeze_epochs=int(args.get("freeze_epochs", 0)),
        img_size=int(args.get("img_size", 640)), max_query_len=int(args.get("max_query_len", 40)),
        extra={"dataset": args.get("dataset")},
    )
    if itype == "MHAttentionRPE":
        g = extra["img2img_attn_args"]
        xr, yr = tuple(g.get("pos_x_range", (-20, 20))), tuple(g.get("pos_y_range", (-20, 20)))
        off = int(g.get("pos_index_offset", 20))
        _need(-xr[0] == off and -yr[0] == off, "pos_index_offset != -range start")
        cfg.update(rpe_x_range=xr, rpe_y_range=yr, rpe_learnable=bool(g.get("learnable_pos_embed", False)))
    else:
        cfg["rpe_key_weight_projection"] = False
    bert = args.get("bert_config")
    if bert:
        cfg["bert_overrides"] = {k: bert[k] for k in _BERT_FIELDS if k in bert}
    _need(int(args.get("bert_output_dim", 768)) == int((cfg.get("bert_overrides") or {}).get("hidden_size", 768)),
          "bert_output_dim != BERT hidden size")
    cfg.update(overrides)
    return cfg
