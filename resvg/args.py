"""ResVG command-line flags (official names and defaults) and the model config they select.

The official ``train.py`` reads a config file (``configs/ResVG_R50_<dataset>.py``) that silently replaces
command-line values; here there is no config file: the defaults below are the official config values (all six
configs share them: batch 16 per GPU, 90 epochs, lr drop at 60, the four encoders frozen for 10 epochs) and
every flag given on the command line wins.  ``--config`` is refused with that explanation.

Architecture flags default to None = the value of ``--model_preset`` (``r50``: the official ResVG-R50;
``vltvg_r50``: the same network without the prior; ``tiny``: a small network for CPU runs, whose ResNet + encoder
and BERT ``resvg/pretrain_tiny.py`` pretrains on synthetic tags).
"""
from __future__ import annotations

import argparse
from typing import Any, Dict

from vgcore import cli
from vgcore.metrics import BREAKDOWNS

from resvg.config import OFFICIAL_FREEZE_NAMES, PRESETS, ResVGConfig, config_from_args
from resvg.data import DATASET_SPLITS

__all__ = ["add_args", "model_config_from_args", "OFFICIAL_FREEZE_MODULES"]

OFFICIAL_FREEZE_MODULES = ("backbone", "input_proj", "trans_encoder", "bert")


class _NoConfigFile(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("--config: config files are not read. The flag defaults are the official config values "
                     "(shared by every configs/ResVG_R50_*.py); pick the dataset with --dataset and pass any other "
                     "value as a flag")


def _model_args(p: argparse.ArgumentParser, mode: str) -> None:
    g = p.add_argument_group("ResVG model (None = --model_preset value)")
    g.add_argument("--model_preset", default="r50", choices=sorted(PRESETS),
                   help="r50 = official ResVG-R50; vltvg_r50 = without the prior; tiny = CPU-sized (128 px, stride-16 "
                        "one-block-per-stage ResNet, 2-layer BERT; pretrained parts from resvg/pretrain_tiny.py)")
    g.add_argument("--img_size", type=int, default=None, help="square input size (640; tiny 128)")
    g.add_argument("--max_query_len", type=int, default=None, help="text tokens incl. [CLS]/[SEP] (40; tiny 20)")
    g.add_argument("--bert_output_layers", type=int, default=None, help="BERT layers averaged (4)")
    g.add_argument("--bert_model", default="",
                   help="bert-base-uncased weights: a folder (pytorch_model.bin / model.safetensors) or a file")
    g.add_argument("--bert_token_mode", default="",
                   help="bert-base-uncased vocab.txt or its folder (default: the --bert_model folder)")
    g = p.add_argument_group("semantic prior")
    g.add_argument("--prior_root", default="",
                   help="folder of the <split>_fea.pth prior files (default <split_root>/<dataset>)")
    g.add_argument("--no_prior", action="store_true",
                   help="switch the prior branch off (compat switch prior_feature_content_query off: the decoder's "
                        "content query is zeros, as VLTVG); no prior file is read")
    g.add_argument("--prior_missing", default="zeros" if mode == "predict" else "error", choices=("error", "zeros"),
                   help="a split without a prior file: stop, or use all-zero prior rows (logged)")
    g.add_argument("--truncate_long_queries", action="store_true",
                   help="cut queries longer than --max_query_len (official behaviour) instead of stopping")
    g.add_argument("--config", action=_NoConfigFile, help="refused: no config file overrides the command line")


def _data_args(p: argparse.ArgumentParser, mode: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="unc", choices=sorted(DATASET_SPLITS),
                   help="unc (RefCOCO) | unc+ (RefCOCO+) | gref (RefCOCOg google) | gref_umd | referit | flickr")
    g.add_argument("--split_root", default="./data", help="<split_root>/<dataset>/<dataset>_<split>.pth")
    g.add_argument("--data_root", default="./ln_data",
                   help="images: images/train2014 (COCO sets), referit/ReferIt, flickr/flickr below it")
    g.add_argument("--image_root", default="", help="one image folder for every dataset (overrides --data_root)")
    g.add_argument("--num_workers", type=int, default=8, help="data loader workers per process")
    g.add_argument("--skip_bad_targets", action="store_true",
                   help="drop samples without exactly one target box (counted, one warning) instead of stopping")
    if mode != "predict":
        g.add_argument("--breakdown", default="none", choices=["none", *sorted(BREAKDOWNS)],
                       help="also report the metrics per group of samples: expr_type = the expression type of the "
                            "synthetic data (attr / extreme / ordinal / rel), expr_words = expression length")
    if mode == "train":
        g.add_argument("--train_split", default="new_train", help="new_train = real + relation-augmented samples")
        g.add_argument("--extra_train_splits", nargs="*", default=[],
                       help="split lists appended to --train_split, each with its own <split>_fea.pth (e.g. "
                            "--train_split train --extra_train_splits new_train when that list holds only the "
                            "augmented samples); any name: <split_root>/<dataset>/<dataset>_<name>.pth")
        g.add_argument("--val_split", "--test_split", dest="val_split", default="val",
                       help="validated after every epoch")
        g.add_argument("--batch_size", type=int, default=16, help="per process (official: 16 x 4 GPUs)")
        g.add_argument("--eval_batch_size", "--batch_size_val", dest="eval_batch_size", type=int, default=32, help="validation batch per process (official batch_size_val 32)")
    else:
        g.add_argument("--batch_size", type=int, default=32, help="batch per process")
        g.add_argument("--eval_batch_size", "--batch_size_test", dest="eval_batch_size", type=int, default=None,
                       help="default --batch_size")


def _train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("initialisation")
    g.add_argument("--load_weights_path", default="",
                   help="DETR-R50 checkpoint for the backbone, input_proj and visual encoder (TransVG's "
                        "detr-r50-{unc,gref,referit}.pth; official: unc for unc/unc+, gref for gref/gref_umd, "
                        "referit for referit/flickr); or a whole model to fine-tune: an official ResVG / "
                        "VLTVG checkpoint, or a ResVG checkpoint of ours (strict; BERT included, --bert_model "
                        "is then not loaded)")
    g = p.add_argument_group("optimisation (AdamW, StepLR per epoch)")
    g.add_argument("--lr", type=float, default=1e-4, help="decoder, bert_proj, bbox head")
    g.add_argument("--lr_backbone", type=float, default=1e-5, help="ResNet layer2-4 (0: the ResNet never trains)")
    g.add_argument("--lr_vis_enc", type=float, default=1e-5, help="DETR encoder and input_proj")
    g.add_argument("--lr_bert", type=float, default=1e-5, help="BERT learning rate")
    g.add_argument("--weight_decay", type=float, default=1e-4, help="AdamW weight decay")
    g.add_argument("--epochs", type=int, default=90, help="training epochs")
    g.add_argument("--lr_drop", type=int, default=60, help="lr x 0.1 every lr_drop epochs")
    g.add_argument("--clip_max_norm", type=float, default=0.1, help="0 = no clipping")
    g.add_argument("--freeze_epochs", type=int, default=10, help="epochs with --freeze_modules frozen")
    g.add_argument("--freeze_modules", nargs="*", default=list(OFFICIAL_FREEZE_MODULES),
                   choices=sorted(OFFICIAL_FREEZE_NAMES), help="official module names")
    g.add_argument("--accum_steps", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="mixed precision (official: fp32)")
    g = p.add_argument_group("loss")
    g.add_argument("--bbox_loss_coef", type=float, default=5.0, help="L1 box loss weight (every decoder stage)")
    g.add_argument("--giou_loss_coef", type=float, default=2.0, help="GIoU loss weight (every decoder stage)")
    g.add_argument("--no_aux_loss", dest="aux_loss", action="store_false", help="loss on the last stage only")
    cli.add_dist_args(p, skip=("world_size",))
    cli.add_logging_args(p, output_dir="./outputs", seed=42)


def _eval_args(p: argparse.ArgumentParser, mode: str) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--checkpoint", "--eval_model", dest="checkpoint", required=True,
                   help="our checkpoint (best_checkpoint.pth), a resvg.convert output, or an official ResVG file")
    if mode == "eval":
        g.add_argument("--eval_sets", "--test_split", dest="eval_sets", nargs="+", default=["val"],
                       help="splits, e.g. val testA testB")
        g.add_argument("--vis", type=int, default=0, help="draw the first N predictions into "
                       "<output_dir>/vis_<dataset>_<split>.png")
    else:
        g.add_argument("--prior_file", default="",
                       help="the query's prior feature: a .pth with a [prior_dim] vector, or [N, prior_dim] rows "
                            "with --prior_row")
        g.add_argument("--prior_row", type=int, default=0, help="row of --prior_file to use for this query")
    g.add_argument("--trust_pickle", action="store_true",
                   help="unpickle --checkpoint fully (an official file stores its args as a Namespace): trusted "
                        "files only")
    g.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="mixed precision (official: fp32)")
    cli.add_dist_args(p, skip=("world_size",))
    cli.add_logging_args(p, only=("output_dir", "seed"), output_dir="./outputs", seed=42)


def add_args(p: argparse.ArgumentParser, mode: str) -> None:
    _model_args(p, mode)
    _data_args(p, mode)
    if mode == "train":
        _train_args(p)
    else:
        _eval_args(p, mode)


def model_config_from_args(args) -> ResVGConfig:
    """--model_preset + the architecture flags given + the freeze schedule + --no_prior -> ResVGConfig."""
    d: Dict[str, Any] = {"model_preset": args.model_preset}
    for k in ("img_size", "max_query_len", "bert_output_layers"):
        if getattr(args, k, None) is not None:
            d[k] = getattr(args, k)
    if hasattr(args, "freeze_epochs"):
        d["freeze_epochs"] = args.freeze_epochs
        d["freeze_modules"] = [OFFICIAL_FREEZE_NAMES[m] for m in args.freeze_modules]
        d["train_backbone"] = args.lr_backbone > 0
    if args.no_prior:
        d["prior_feature_content_query"] = False
    return config_from_args(d)
