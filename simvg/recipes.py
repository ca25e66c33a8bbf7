"""SimVG command-line flags (official names and defaults) and the official recipes as a table.

Presets: every hyperparameter flag defaults to ``None``; `resolve_preset` fills the ``None``s from the recipe
of (``--preset``, ``--dataset``, ``--backbone``, ``--pretrain_from``), so a flag given on the command line
always wins.  The recipe is `RECIPES`, read top to bottom: every row whose selectors match sets its values,
later rows overriding earlier ones.  A selector is ``"*"`` (any), one name, or a tuple of names.  The rows
are the official config files (configs/simvg/...): one-stage, two-stage (1 and 2), pre-training on the
mixed / COCO-all data, fine-tuning and distillation, each for BEiT-3 base / large.  ``--backbone tiny`` =
`simvg.model.PRESETS["tiny"]` (a small random-init BEiT-3 at 128 px) with the vocabulary size of
``--beit3_spm`` (synthetic runs, tests); it follows the base recipes.

The table machinery (`select_rows`, `fill_unset`) and the flags every method built on SimVG's BEiT-3 one-tower
model shares (`add_path_args`, `add_beit3_arch_args`, `add_weights_args`, `add_schedule_args`, `build_tok`,
`model_config_from_args`) are public: ALVG (a SimVG fork) uses them with its own table and flags.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

from vgcore import cli
from vgcore.text import build_tokenizer

PRESET_NAMES = ("onestage", "twostage_1", "twostage_2", "pretrain_mixed", "pretrain_cocoall", "finetune", "distill")
DATASETS = ("refcoco", "refcocoplus", "refcocog", "refcocoggoogle", "referit", "flickr30k", "grefcoco", "mixed",
            "cocoall")
BACKBONES = ("beit3_base", "beit3_large", "tiny")
MODEL_PRESET = {"beit3_base": "vitb", "beit3_large": "vitl", "tiny": "tiny"}

ANY = "*"
LARGE = "beit3_large"
NOT_LARGE = ("beit3_base", "tiny")
REFCOCOS = ("refcoco", "refcocoplus", "refcocog", "refcocoggoogle")
PRETRAIN = ("pretrain_mixed", "pretrain_cocoall")
NO_TOKEN = dict(token_weight=0.0, distill_weight=0.0)  # decoder branch only (DB-only presets)
GREC_LONG = dict(epochs=200, decay_steps=[180])

# (preset, dataset, backbone, pretrain_from) -> values; later rows win
RECIPES = (
    # every recipe
    (ANY, ANY, ANY, ANY, dict(lr=5e-4, batch_size=32, epochs=30, warmup_epochs=3, decay_steps=[25], token_weight=2.0,
                              distill_weight=1.0, ema=False, img_size=640, num_queries=1, lsj=True,
                              evaluate_interval=1, start_evaluate_epoch=0)),
    (ANY, "grefcoco", ANY, ANY, dict(num_queries=10, lsj=False, evaluate_interval=2, start_evaluate_epoch=50)),
    # one-stage
    ("onestage", ANY, LARGE, ANY, dict(batch_size=4, token_weight=1.0, distill_weight=0.4)),
    ("onestage", "referit", LARGE, ANY, dict(token_weight=2.0, distill_weight=1.0)),
    ("onestage", "refcocoggoogle", LARGE, ANY, dict(warmup_epochs=0)),
    ("onestage", "grefcoco", ANY, ANY, GREC_LONG),
    # two-stage, stage 1 (decoder branch only)
    ("twostage_1", ANY, ANY, ANY, NO_TOKEN),
    ("twostage_1", ANY, LARGE, ANY, dict(batch_size=4, decay_steps=[21, 27])),
    ("twostage_1", REFCOCOS, NOT_LARGE, ANY, dict(batch_size=16, ema=True)),
    ("twostage_1", "grefcoco", ANY, ANY, GREC_LONG),
    # two-stage, stage 2
    ("twostage_2", ANY, ANY, ANY, dict(lr=3e-4, epochs=20, decay_steps=[15])),
    ("twostage_2", ANY, LARGE, ANY, dict(lr=1e-4, batch_size=4, epochs=10, warmup_epochs=0, decay_steps=[7],
                                         token_weight=1.0, distill_weight=0.4)),
    ("twostage_2", "referit", LARGE, ANY, dict(token_weight=2.0, distill_weight=1.0)),
    ("twostage_2", "grefcoco", ANY, ANY, dict(lr=5e-4, epochs=100, decay_steps=[90])),
    # pre-training (decoder branch only, no large-scale jitter)
    (PRETRAIN, ANY, ANY, ANY, dict(decay_steps=[21, 27], lsj=False, img_size=640, **NO_TOKEN)),
    ("pretrain_cocoall", ANY, ANY, ANY, dict(img_size=512)),
    (PRETRAIN, ANY, LARGE, ANY, dict(batch_size=4)),
    # fine-tuning of a pre-trained model (decoder branch only)
    ("finetune", ANY, ANY, ANY, dict(lr=1e-4, epochs=10, decay_steps=[8], **NO_TOKEN)),
    ("finetune", "refcoco", ANY, "cocoall", dict(lr=2e-4)),
    ("finetune", ANY, LARGE, ANY, dict(batch_size=4)),
    # distillation (token branch on) after pre-training
    ("distill", ANY, ANY, ANY, dict(lr=3e-4)),
    ("distill", ANY, ANY, "mixed", dict(epochs=15, decay_steps=[10], token_weight=2.0, distill_weight=1.0)),
    ("distill", ANY, ANY, "cocoall", dict(epochs=20, decay_steps=[15], token_weight=1.0, distill_weight=0.4)),
    ("distill", ANY, LARGE, ANY, dict(batch_size=4)),
    # every recipe: optimiser, EMA, architecture, loss
    (ANY, ANY, ANY, ANY, dict(lr_vis_enc_mult=0.1, decay_ratio=0.1, weight_decay=0.0, grad_norm_clip=0.15,
                              ema_factor=0.999, max_token=20, num_decoder_layers=3, num_tgqg_layers=2,
                              decoder_weight=1.0, drop_path_rate=0.0)),
    (ANY, ANY, "beit3_base", ANY, dict(drop_path_rate=0.1)),  # large: 0.0 (the official typo)
    (ANY, ANY, "tiny", ANY, dict(img_size=128)),
)


def _match(selector, value: str) -> bool:
    return selector == ANY or value == selector or (isinstance(selector, tuple) and value in selector)


def select_rows(rows, *values: str) -> dict:
    """The values of every row ``(*selectors, dict)`` of a recipe table whose selectors all match ``values``,
    applied in order (later rows win; lists are copied)."""
    out: dict = {}
    for *selectors, row in rows:
        if all(_match(sel, v) for sel, v in zip(selectors, values)):
            out.update({k: list(v) if isinstance(v, list) else v for k, v in row.items()})
    return out


def recipe(preset: str, dataset: str, backbone: str, pretrain_from: str = "cocoall") -> dict:
    """The official config values of one (preset, dataset, backbone, pretrain_from): the matching `RECIPES`
    rows applied in order."""
    if preset not in PRESET_NAMES:
        raise ValueError(f"unknown SimVG preset {preset!r}; choose from {PRESET_NAMES}")
    return select_rows(RECIPES, preset, dataset, backbone, pretrain_from)


def fill_unset(args: argparse.Namespace, values: dict) -> argparse.Namespace:
    """Every flag of ``args`` that is ``None`` takes its entry of ``values``; ``--num_workers`` None becomes
    min(8, cores - 1).  Returns ``args`` (modified in place)."""
    for k, v in values.items():
        if hasattr(args, k) and getattr(args, k) is None:
            setattr(args, k, v)
    if getattr(args, "num_workers", 0) is None:
        args.num_workers = max(0, min(8, (os.cpu_count() or 1) - 1))
    return args


def resolve_preset(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every ``None`` flag from `recipe`; returns ``args`` (modified in place)."""
    return fill_unset(args, recipe(args.preset, args.dataset, args.backbone, args.pretrain_from))


# ------------------------------------------------------------------------------------------------ flags
def add_selection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SimVG recipe selection")
    g.add_argument("--preset", default="onestage", choices=PRESET_NAMES,
                   help="official config family; fills every hyperparameter flag left unset")
    g.add_argument("--dataset", default="refcoco", choices=DATASETS,
                   help="official names; grefcoco is multi/no-target (GREC), mixed / cocoall the pre-training sets")
    g.add_argument("--backbone", default="beit3_base", choices=BACKBONES,
                   help="BEiT-3 base / large (patch 32); 'tiny' = small random-init model for synthetic runs")
    g.add_argument("--pretrain_from", default="cocoall", choices=("mixed", "cocoall"),
                   help="finetune/distill presets: which pre-training recipe they follow")
    add_path_args(p, "SimVG")


def add_path_args(p: argparse.ArgumentParser, method: str) -> None:
    """``--image_root`` and ``--beit3_spm`` (group "<method> paths")."""
    g = p.add_argument_group(f"{method} paths")
    g.add_argument("--image_root", default="", help="one image folder for every source (overrides --data_root's)")
    g.add_argument("--beit3_spm", default="./checkpoints/beit3/beit3.spm", help="XLM-R sentencepiece model")


def add_beit3_arch_args(p: argparse.ArgumentParser, method: str, img_size_help: str, decoder_help: str):
    """The architecture flags of the BEiT-3 one-tower model with text-guided queries (None = preset); returns
    the group (``<method> architecture``) for a method's own flags."""
    g = p.add_argument_group(f"{method} architecture (None = preset)")
    g.add_argument("--img_size", type=int, default=None, help=img_size_help)
    g.add_argument("--max_token", type=int, default=None, help="text tokens incl. <s> </s> (20)")
    g.add_argument("--num_queries", type=int, default=None, help="1 (grefcoco 10)")
    g.add_argument("--num_decoder_layers", type=int, default=None, help=decoder_help)
    g.add_argument("--num_tgqg_layers", type=int, default=None, help="text-guided query generation layers (2)")
    g.add_argument("--drop_path_rate", type=float, default=None, help="base 0.1, large 0.0 (official typo)")
    return g


def add_weights_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("weights")
    g.add_argument("--trust_pickle", action="store_true",
                   help="read checkpoints that a weights-only load refuses with full unpickling (it can run code "
                        "stored in the file): only for files you trust")


def add_schedule_args(g) -> None:
    """The optimisation flags of the official recipes, into group ``g`` (None = preset)."""
    g.add_argument("--lr_vis_enc_mult", type=float, default=None, help="BEiT-3 lr = lr x this (0.1; 0 freezes BEiT-3)")
    g.add_argument("--decay_steps", type=int, nargs="+", default=None, help="lr x decay_ratio when e+1 >= each")
    g.add_argument("--decay_ratio", type=float, default=None, help="lr factor at each of --decay_steps (0.1)")
    g.add_argument("--grad_norm_clip", type=float, default=None, help="0 = off (official 0.15)")


def add_validation_args(p: argparse.ArgumentParser, method: str, batch_mean_help: str) -> None:
    """The validation schedule of a training run (None = preset) and ``--batch_mean_metric``."""
    g = p.add_argument_group(f"{method} evaluation schedule (None = preset)")
    g.add_argument("--evaluate_interval", type=int, default=None, help="epochs between validations")
    g.add_argument("--start_evaluate_epoch", type=int, default=None, help="no validation before this epoch")
    g.add_argument("--batch_mean_metric", action="store_true", help=batch_mean_help)


def add_arch_args(p: argparse.ArgumentParser) -> None:
    """Architecture flags (train and eval); None = preset value."""
    add_beit3_arch_args(p, "SimVG", "square input (640; pretrain_cocoall 512; tiny 128)", "DB decoder layers (3)")
    g = p.add_argument_group("compat switches (official numerics)")
    g.add_argument("--official_compat", action="store_true",
                   help="= --text_pool_compat --text_pos_compat (+ --batch_mean_metric at eval)")
    g.add_argument("--text_pool_compat", action="store_true",
                   help="text max-pool = max of projected tokens 18/19 (int64-mask indexing)")
    g.add_argument("--text_pos_compat", action="store_true",
                   help="degenerate 1-D sine text position encoding")
    add_weights_args(p)


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Initialisation, optimisation (None = preset), evaluation schedule and logging."""
    g = p.add_argument_group("initialisation")
    g.add_argument("--beit3_ckpt", default="", help="BEiT-3 pretrained weights (default ./checkpoints/beit3/"
                   "beit3_{base,large}_patch16_224.pth; --backbone tiny: none unless given, e.g. the output of "
                   "simvg/pretrain_tiny.py)")
    g.add_argument("--load_from", default="", help="model weights only (twostage_2: the stage-1 det_best.pth)")
    g.add_argument("--finetune_from", default="", help="model weights only, best reset (finetune / distill)")
    cli.add_optim_args(p, only=("lr", "weight_decay", "epochs", "warmup_epochs", "accum_steps", "amp", "ema"),
                       lr=None, weight_decay=None, epochs=None, warmup_epochs=None, ema=None)
    cli.set_help(p, lr="base learning rate (None = preset: 5e-4 one-stage)",
                 weight_decay="Adam weight decay (None = preset: 0)",
                 epochs="training epochs (None = preset: 30; grefcoco one-stage 200)",
                 warmup_epochs="epochs of linear lr warm-up, (e+1)/(W+1) (None = preset: 3)",
                 ema="EMA of the weights (None = preset: on only in the base twostage_1 RefCOCO-family recipes)")
    g = p.add_argument_group("SimVG optimisation (None = preset)")
    add_schedule_args(g)
    g.add_argument("--ema_factor", type=float, default=None, help="EMA decay with --ema (0.999)")
    g.add_argument("--lsj", dest="lsj", action="store_true", default=None, help="LargeScaleJitter(0.3, 1.4)")
    g.add_argument("--no_lsj", dest="lsj", action="store_false",
                   help="no large-scale jitter (preset: off for grefcoco / pre-training)")
    g.add_argument("--decoder_weight", type=float, default=None, help="decoder-branch (DB) loss weight (1.0)")
    g.add_argument("--token_weight", type=float, default=None,
                   help="token-branch (TB) loss weight (2.0); 0 with --distill_weight 0 = TB off")
    g.add_argument("--distill_weight", type=float, default=None,
                   help="DB -> TB distillation loss weight (1.0; 0 in DB-only presets)")
    add_validation_args(p, "SimVG", "also report the official mean of per-batch accuracies (on with --official_compat)")
    cli.add_data_args(p, only=("data_root", "split_root", "format", "train_split", "val_split", "num_workers",
                               "batch_size", "eval_batch_size", "box_convention", "skip_bad_targets"), **DATA_DEFAULTS)
    cli.add_dist_args(p, skip=("world_size",))
    cli.add_logging_args(p, skip=("eval_every",), output_dir="./outputs", seed=6666)


def add_eval_args(p: argparse.ArgumentParser, mode: str = "eval") -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--load_from", default="", help="checkpoint to evaluate (ours, converted or official)")
    g.add_argument("--use_ema", action="store_true",
                   help="EMA weights: 'ema_state_dict' of an official file; our det_best.pth of an EMA run "
                        "already holds the EMA weights")
    g.add_argument("--score_thresh", type=float, default=0.7,
                   help="multi-query (gRefCOCO) models: the boxes drawn / returned are the queries above it")
    if mode == "eval":
        g.add_argument("--eval_sets", nargs="+", default=["val"], help="splits, e.g. val testA testB")
        g.add_argument("--batch_mean_metric", action="store_true",
                       help="also report the official mean of per-batch accuracies (depends on batch size; on "
                            "with --official_compat)")
        g.add_argument("--branch", default="both", choices=("both", "decoder", "token"),
                       help="branches to run; 'token' = TB-only fast path")
        g.add_argument("--vis", type=int, default=0, help="draw the first N predictions (red; the DB's, else the "
                       "TB's) and GT (green) into <output_dir>/vis_<dataset>_<split>.png")
    else:
        g.add_argument("--branch", default="decoder", choices=("decoder", "token"),
                       help="branch whose box is predicted")
    add_eval_run_args(p)


def add_eval_run_args(p: argparse.ArgumentParser) -> None:
    """The shared tail of the evaluation / prediction flags: amp, data, distributed launch, output folder, seed,
    and the training command line's ``--tensorboard`` accepted (so one list of flags serves both scripts)."""
    cli.add_optim_args(p, only=("amp",))
    cli.add_data_args(p, only=("data_root", "split_root", "format", "num_workers", "batch_size", "eval_batch_size",
                               "box_convention", "skip_bad_targets"), **DATA_DEFAULTS)
    cli.add_dist_args(p, skip=("world_size",))
    cli.add_logging_args(p, only=("output_dir", "seed"), output_dir="./outputs", seed=6666)
    cli.add_accepted_args(p, {"--tensorboard": "evaluation writes no tensorboard"}, valued=("--tensorboard",))


DATA_DEFAULTS = dict(data_root="./data", split_root="", format="seqtr", num_workers=None, batch_size=None)


def compat_switches(args) -> dict:
    """The compat switches the flags turn on (``--official_compat`` = both)."""
    on = bool(args.official_compat)
    return {"text_maxpool_int64_mask": on or bool(args.text_pool_compat),
            "text_pos_embed_1d_degenerate": on or bool(args.text_pos_compat)}


def build_tok(args, model_cfg=None):
    max_len = model_cfg.max_text_len if model_cfg is not None else args.max_token
    kw = {"min_vocab": 1} if (args.backbone == "tiny" or (model_cfg is not None and model_cfg.backbone == "tiny")) else {}
    return build_tokenizer("beit3", max_len=max_len, vocab_file=args.beit3_spm, **kw)


def model_config_from_args(args, vocab_size: Optional[int] = None, switches: Optional[dict] = None) -> dict:
    """The model config of the flags (None = preset); ``switches``: the compat switches (default SimVG's,
    `compat_switches`); ``--backbone tiny`` takes the vocabulary size of ``--beit3_spm``."""
    switches = compat_switches(args) if switches is None else switches
    d = dict(preset=MODEL_PRESET[args.backbone], img_size=args.img_size, num_queries=args.num_queries,
             num_decoder_layers=args.num_decoder_layers, num_tgqg_layers=args.num_tgqg_layers,
             drop_path_rate=args.drop_path_rate, max_text_len=args.max_token, **switches)
    if args.backbone == "tiny":
        if vocab_size is None:
            vocab_size = build_tok(args).vocab_size
        d["vocab_size"] = int(vocab_size)
    return {k: v for k, v in d.items() if v is not None}


