"""ALVG command-line flags (official names and defaults) and the official recipes as a table.

Presets: every hyperparameter flag defaults to ``None``; `resolve_preset` fills the ``None``s from the recipe
of (``--preset``, ``--dataset``, ``--backbone``), so a flag given on the command line always wins.  The
recipe is `RECIPES`, read top to bottom: every row whose selectors match sets its values, later rows
overriding earlier ones.  A selector is ``"*"`` (any), one name, or a tuple of names.  The rows are the
official config files (configs/single/ViT-{base,large}/<dataset>, configs/mix/ViT-large/...):

* ``single``: one dataset, lr 5e-4, 30 epochs (warm-up 3, x0.1 at 25), batch 32 (ViT-L: 4 per GPU,
  x0.1 at 21 and 27 except Flickr30k), score-loss weight 40 (ViT-B RefCOCO+ 16, ViT-L 32), decoder-attention
  weight 1; gRefCOCO: 10 queries, 250 epochs (x0.1 at 225), both attention losses off, validation every 2
  epochs from epoch 50.
* ``pretrain_mixed`` / ``pretrain_cocoall``: ViT-L pre-training on the mixed / RefCOCO-all data (x0.1 at 21
  and 27; 4 / 8 per GPU on 8 GPUs).
* ``finetune``: ViT-L from the RefCOCO-all pre-training, lr 2e-4, 10 epochs (x0.1 at 8), 4 per GPU.
Every recipe: Adam amsgrad (0.9, 0.98), eps 1e-9, no weight decay, BEiT-3 at lr x 0.1, gradient clipping
0.15, no EMA, no augmentation, 640 px.  ``--backbone tiny`` = `alvg.model.PRESETS["tiny"]` (128 px) with the
vocabulary of ``--beit3_spm`` (synthetic runs, tests); it follows the base recipes.

The table machinery and the flags of SimVG's BEiT-3 one-tower model are SimVG's (`simvg.recipes`).

Masks (the mask loss, the mask-based attention targets, the RES metrics): ``--masks auto`` uses them for the
datasets whose official configs load them (RefCOCO/+/g, gRefCOCO, RefCOCO-all) and not for ReferIt,
Flickr30k and the mixed data (box targets for the attention losses).
"""
from __future__ import annotations

import argparse
from typing import Optional

from simvg import recipes as _simvg
from simvg.recipes import ANY, BACKBONES, DATA_DEFAULTS, MODEL_PRESET, build_tok  # noqa: F401 (re-exported)
from vgcore import cli

PRESET_NAMES = ("single", "pretrain_mixed", "pretrain_cocoall", "finetune")
DATASETS = ("refcoco", "refcocoplus", "refcocog", "refcocoggoogle", "referit", "flickr30k", "grefcoco", "mixed",
            "cocoall")
MASK_DATASETS = ("refcoco", "refcocoplus", "refcocog", "refcocoggoogle", "grefcoco", "cocoall")

LARGE = "beit3_large"

RECIPES = (
    (ANY, ANY, ANY, dict(lr=5e-4, batch_size=32, epochs=30, warmup_epochs=3, decay_steps=[25], img_size=640,
                         num_queries=1, score_attn_loss_weight=40.0, decoder_attn_loss_weight=1.0,
                         evaluate_interval=1, start_evaluate_epoch=0)),
    ("single", "refcocoplus", ANY, dict(score_attn_loss_weight=16.0)),
    ("single", ANY, LARGE, dict(batch_size=4, decay_steps=[21, 27], score_attn_loss_weight=32.0)),
    ("single", "flickr30k", LARGE, dict(decay_steps=[25])),
    ("single", "grefcoco", ANY, dict(num_queries=10, epochs=250, decay_steps=[225], score_attn_loss_weight=0.0,
                                     decoder_attn_loss_weight=0.0, evaluate_interval=2, start_evaluate_epoch=50)),
    (("pretrain_mixed", "pretrain_cocoall"), ANY, ANY, dict(batch_size=4, decay_steps=[21, 27],
                                                            score_attn_loss_weight=32.0)),
    ("pretrain_cocoall", ANY, ANY, dict(batch_size=8)),
    ("finetune", ANY, ANY, dict(lr=2e-4, epochs=10, decay_steps=[8], batch_size=4, score_attn_loss_weight=32.0)),
    # every recipe: optimiser, architecture
    (ANY, ANY, ANY, dict(lr_vis_enc_mult=0.1, decay_ratio=0.1, weight_decay=0.0, grad_norm_clip=0.15,
                         max_token=20, num_decoder_layers=3, num_tgqg_layers=2, drop_path_rate=0.0)),
    (ANY, ANY, "beit3_base", dict(drop_path_rate=0.1)),  # large: 0.0 (the official typo)
    (ANY, ANY, "tiny", dict(img_size=128)),
)

# official GPUs per recipe (the global batch the scripts keep): ViT-B single-dataset runs are one-GPU runs
OFFICIAL_GPUS = {"single": {"beit3_base": 1, "beit3_large": 8, "tiny": 1}, "pretrain_mixed": 8,
                 "pretrain_cocoall": 8, "finetune": 8}


def recipe(preset: str, dataset: str, backbone: str) -> dict:
    """The official config values of one (preset, dataset, backbone): the matching `RECIPES` rows in order."""
    if preset not in PRESET_NAMES:
        raise ValueError(f"unknown ALVG preset {preset!r}; choose from {PRESET_NAMES}")
    return _simvg.select_rows(RECIPES, preset, dataset, backbone)


def uses_masks(args) -> bool:
    """--masks on / off, or (auto) whether the dataset's official config loads masks."""
    m = getattr(args, "masks", "auto") or "auto"
    return args.dataset in MASK_DATASETS if m == "auto" else m == "on"


def resolve_preset(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every ``None`` flag from `recipe`; returns ``args`` (modified in place)."""
    return _simvg.fill_unset(args, recipe(args.preset, args.dataset, args.backbone))


# ------------------------------------------------------------------------------------------------ flags
def add_selection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ALVG recipe selection")
    g.add_argument("--preset", default="single", choices=PRESET_NAMES,
                   help="official config family; fills every hyperparameter flag left unset")
    g.add_argument("--dataset", default="refcoco", choices=DATASETS,
                   help="official names; grefcoco is multi/no-target (GREC), mixed / cocoall the pre-training sets")
    g.add_argument("--backbone", default="beit3_base", choices=BACKBONES,
                   help="BEiT-3 base / large (patch 32); 'tiny' = small model for synthetic runs")
    g.add_argument("--masks", default="auto", choices=("auto", "on", "off"),
                   help="ground-truth masks: mask loss, mask attention targets and RES metrics (auto: the datasets "
                        "whose official config loads them); off = box targets, as ReferIt / Flickr30k")
    _simvg.add_path_args(p, "ALVG")


def add_arch_args(p: argparse.ArgumentParser) -> None:
    """Architecture flags (train and eval); None = preset value."""
    g = _simvg.add_beit3_arch_args(p, "ALVG", "square input (640; tiny 128)", "decoder layers (3)")
    g.add_argument("--no_img_enhance", action="store_true", help="no text-guided image enhancement (ablation)")
    g = p.add_argument_group("compat switches (official numerics; --official_compat = all)")
    g.add_argument("--official_compat", action="store_true",
                   help="every switch below (+ --batch_mean_metric at eval); on for official checkpoints")
    for name, text in COMPAT_HELP.items():
        g.add_argument("--" + name, action="store_true", help=text)
    _simvg.add_weights_args(p)


COMPAT_HELP = {
    "text_pool_last_two_slots": "pooled text = max of projected tokens 18/19 (int64-mask indexing)",
    "text_pos_1d_int_truncation": "degenerate 1-D sine text position encoding",
    "tie_pos_before_proj_zscore": "TIE: position added before img_proj, unbiased z-score over all tokens",
    "decoder_parallel_layers": "every decoder layer gets the zero target (independent one-layer decoders)",
    "decoder_cross_attn_residual_includes_query_pos": "cross-attention residual adds to target + query position",
    "pos2d_added_three_times": "2-D position added again at the mask-head input",
    "mask_head_sigmoid_output": "the mask head outputs probabilities (ends with a Sigmoid)",
    "mask_loss_double_sigmoid": "focal / dice apply a sigmoid to the mask head's output as it is",
    "mask_target_bilinear_int": "mask target: bilinear down-sampling then int truncation",
    "attn_targets_mask_vs_box": "box attention targets: inclusive ceil end, fractional focus map",
    "decoder_attn_loss_layer_summed_ratio": "one query: decoder loss on the attention summed over layers",
}


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("initialisation")
    g.add_argument("--beit3_ckpt", default="", help="BEiT-3 pretrained weights (default ./checkpoints/beit3/"
                   "beit3_{base,large}_indomain_patch16_224.pth; --backbone tiny: none unless given, e.g. the "
                   "output of simvg/pretrain_tiny.py)")
    g.add_argument("--load_from", default="", help="model weights only (finetune: the pre-trained det_best.pth)")
    g.add_argument("--finetune_from", default="", help="model weights only (same as --load_from)")
    cli.add_optim_args(p, only=("lr", "weight_decay", "epochs", "warmup_epochs", "accum_steps", "amp"),
                       lr=None, weight_decay=None, epochs=None, warmup_epochs=None)
    cli.set_help(p, lr="base learning rate (None = preset: 5e-4; finetune 2e-4)",
                 weight_decay="Adam weight decay (None = preset: 0)",
                 epochs="training epochs (None = preset: 30; grefcoco 250; finetune 10)",
                 warmup_epochs="epochs of linear lr warm-up, (e+1)/(W+1) (None = preset: 3)")
    g = p.add_argument_group("ALVG optimisation and loss (None = preset)")
    _simvg.add_schedule_args(g)
    g.add_argument("--score_attn_loss_weight", type=float, default=None,
                   help="TIE score-map loss weight (40; ViT-B RefCOCO+ 16; ViT-L 32; grefcoco 0)")
    g.add_argument("--decoder_attn_loss_weight", type=float, default=None,
                   help="decoder attention loss weight (1; grefcoco 0)")
    g.add_argument("--no_attn_loss", action="store_true", help="both attention losses off (ablation)")
    _simvg.add_validation_args(p, "ALVG", "also report the official batch-averaged numbers (on with --official_compat)")
    cli.add_data_args(p, only=("data_root", "split_root", "format", "train_split", "val_split", "num_workers",
                               "batch_size", "eval_batch_size", "box_convention", "skip_bad_targets"), **DATA_DEFAULTS)
    cli.add_dist_args(p, skip=("world_size",))
    cli.add_logging_args(p, skip=("eval_every",), output_dir="./outputs", seed=6666)


def add_eval_args(p: argparse.ArgumentParser, mode: str = "eval") -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--load_from", default="", help="checkpoint to evaluate (ours, converted or official)")
    g.add_argument("--score_thresh", type=float, default=0.7,
                   help="multi-query (gRefCOCO) models: the boxes kept / drawn are the queries above it")
    g.add_argument("--mask_thresh", type=float, default=0.5, help="mask probability threshold")
    if mode == "eval":
        g.add_argument("--eval_sets", nargs="+", default=["val"], help="splits, e.g. val testA testB")
        g.add_argument("--batch_mean_metric", action="store_true",
                       help="also report the official batch-averaged numbers (Acc@0.5 and mIoU at the 640 input, "
                            "GREC F1 / N-acc / cIoU; they depend on the batch size; on with --official_compat)")
        g.add_argument("--vis", type=int, default=0,
                       help="draw the first N predictions (red) and GT (green) into <output_dir>/vis_<dataset>_<split>.png")
    else:
        g.add_argument("--attn_out", default="",
                       help="also write the attention map over the image (decoder cross-attention of the best "
                            "query, summed over layers) to this PNG (default: <out> with _attn)")
    _simvg.add_eval_run_args(p)


def compat_switches(args) -> dict:
    """The compat switches the flags turn on (``--official_compat`` = all)."""
    on = bool(getattr(args, "official_compat", False))
    return {k: on or bool(getattr(args, k, False)) for k in COMPAT_HELP}


def model_config_from_args(args, vocab_size: Optional[int] = None) -> dict:
    """SimVG's model config of the flags (`simvg.recipes.model_config_from_args`) with ALVG's compat switches and
    ``--no_img_enhance``."""
    d = _simvg.model_config_from_args(args, vocab_size, switches=compat_switches(args))
    if getattr(args, "no_img_enhance", False):
        d["img_enhance"] = False
    return d
