"""HiVG command-line flags (official names and defaults) and the model config they select.

The model presets and backbone dimensions are tables in `hivg.config` (``PRESETS``, ``BACKBONES``); the
official per-dataset recipes (epochs, batch sizes, learning rates of every phase) are the command lines of
scripts/hivg/.
"""
from __future__ import annotations

import argparse
from typing import Optional

from hivg.loss import HiVGCriterion
from hivg.model import HiVG, build_model
from vgcore import cli

MODELS = ("ViT-B/16", "ViT-L/14", "tiny")
# official flags this code does not need: they parse, and a warning says they are ignored
ACCEPTED_TRAIN = {"--save_hilora_clip": "best_checkpoint.pth already holds CLIP + LoRA + bridges; as the official "
                                        "scripts do, `hivg/eval.py --save_hilora_clip` writes the official file "
                                        "from a checkpoint",
                  "--lr_exponential": "no exponential schedule in the official HiVG recipes"}
ACCEPTED_EVAL = {"--use_mask_loss": "no loss at evaluation",
                 "--retrain": "evaluation reads --eval_model", "--hi_lora_retrain": "evaluation reads --eval_model",
                 "--hi_lora_clip": "evaluation reads --eval_model"}
VALUED = ("--lr_exponential", "--retrain", "--hi_lora_retrain", "--hi_lora_clip")
# dataset names of the seqtr / refer formats -> the official HiVG name that picks the bridge's text layers
OFFICIAL_NAME = {"refcoco": "unc", "refcoco+": "unc+", "refcocoplus": "unc+", "refcocog": "gref_umd",
                 "refcocoggoogle": "gref", "flickr30k": "flickr"}


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model + data flags shared by train.py / eval.py / predict.py / pretrain_tiny.py (official names and defaults)."""
    g = p.add_argument_group("HiVG model")
    g.add_argument("--model", default="ViT-B/16", choices=MODELS,
                   help="CLIP backbone; 'tiny' = small random-init CLIP with the same architecture (synthetic runs)")
    g.add_argument("--vl_hidden_dim", type=int, default=512, help="fusion width = CLIP projection dim (768 for ViT-L/14)")
    g.add_argument("--vl_nheads", type=int, default=8, help="attention heads of the fusion encoder")
    g.add_argument("--vl_dim_feedforward", type=int, default=2048, help="MLP width of the fusion encoder")
    g.add_argument("--vl_enc_layers", type=int, default=6, help="fusion encoder layers")
    g.add_argument("--vl_dropout", type=float, default=0.1, help="dropout of the fusion encoder")
    g.add_argument("--normalize_before", action="store_true", help="pre-norm fusion encoder (every official script)")
    g.add_argument("--enable_adaptive_weights", action="store_true",
                   help="adaptive weights on the bridge's multi-layer text features (all non-mixup runs)")
    g.add_argument("--warmup", action="store_true", help="no bridge (HiVG-L first warm-up phase)")
    g.add_argument("--mixup_pretrain", action="store_true",
                   help="bridge text = condition_text_proj(projected last layer) (dataset-mixed pre-training)")
    g.add_argument("--hi_lora_stage", type=int, default=0, choices=[0, 1, 2, 3],
                   help="0 warm-up; k = Hi LoRA stage k (vision LoRA of blocks <5/<8/<12 + text LoRA trainable)")
    g.add_argument("--bridge_batch_mixing", action="store_true",
                   help="compat: the official bridge's cross-sample key/value mixing; on for "
                        "released checkpoints, off (per-sample attention) for new training")
    g.add_argument("--clip_dir", default="", help="plain CLIP weights: HF folder (clip-vit-base-patch16), "
                   "OpenAI/open_clip/HF state dict file, or a folder holding one of them")
    g.add_argument("--clip_model", default="", help="debiased CLIP file (clip_b_ml_cascade_maskrcnn_model_224.pth); "
                   "loaded after --clip_dir, first phase only")
    g.add_argument("--train_clip", nargs="?", const="all", default="none", choices=["none", "text", "vision", "all"],
                   help="train CLIP tower base weights too (the official recipe freezes them and trains bridges + "
                        "LoRA + heads): 'all' (also plain --train_clip) both towers, for from-scratch presets such "
                        "as --model tiny; 'text' only the text tower, e.g. over a tag-pretrained tiny image tower "
                        "(hivg/pretrain_tiny.py); LoRA adapters keep the trainable set of --hi_lora_stage")
    g.add_argument("--trust_pickle", action="store_true",
                   help="read checkpoint files that a weights-only load refuses (e.g. OpenAI's TorchScript CLIP "
                        "archives) with full unpickling, which can run code stored in the file: trusted files only")
    g.add_argument("--image_root", default="", help="one image folder for every source (overrides --data_root's layout)")
    cli.add_data_args(p, skip=("splitby", "test_split"), data_root="./data/image_data/",
                      split_root="./data/pseudo_samples/", dataset="referit", format="transvg", imsize=224,
                      max_query_len=77, num_workers=None, batch_size=8)
    cli.set_help(p, dataset="official names: unc | unc+ | gref | gref_umd | referit | flickr | mixup (transvg "
                            "split files; selects the bridge's text layers); --format seqtr / refer take their own")


def model_config_from_args(args, model: Optional[HiVG] = None) -> dict:
    if model is not None:
        return model.cfg.to_dict()
    d = dict(dataset=OFFICIAL_NAME.get(args.dataset, args.dataset), hi_lora_stage=args.hi_lora_stage,
             warmup=args.warmup,
             mixup_pretrain=args.mixup_pretrain, enable_adaptive_weights=args.enable_adaptive_weights,
             imsize=args.imsize, max_query_len=args.max_query_len, vl_nheads=args.vl_nheads,
             vl_dim_feedforward=args.vl_dim_feedforward, vl_enc_layers=args.vl_enc_layers,
             vl_dropout=args.vl_dropout, normalize_before=args.normalize_before,
             compat_batch_mixing=args.bridge_batch_mixing)
    if args.model == "tiny":
        d["preset"] = "hivg-tiny"
        d.pop("vl_nheads"), d.pop("vl_dim_feedforward"), d.pop("vl_enc_layers")  # the preset's small fusion
    else:
        d["model"] = args.model
        d["vl_hidden_dim"] = args.vl_hidden_dim
    return d


def build_hivg(args) -> HiVG:
    """The model the flags describe, at its initialisation (no weights loaded)."""
    return build_model(model_config_from_args(args))


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Training flags: initialisation, losses, augmentation, optimisation, logging (official defaults)."""
    g = p.add_argument_group("HiVG training")
    g.add_argument("--retrain", default="", help="start from these model weights (fresh optimizer, epoch 0); "
                   "from a --warmup (no bridge) model only the bridge parameters may be missing")
    g.add_argument("--hi_lora_retrain", default="",
                   help="previous phase's best_checkpoint.pth (the whole model): validated and saved as "
                        "best_checkpoint.pth (epoch -1) before training this stage")
    g.add_argument("--hi_lora_clip", default="", help="official clip_lora_stage_with_bridge.pth (optional, "
                   "official-format hand-over; not needed with --hi_lora_retrain from our runs)")
    g.add_argument("--use_contrastive_loss", action="store_true", help="CLIP contrastive term (weight 1)")
    g.add_argument("--use_rtcc_constrain_loss", action="store_true", help="alignment focal x20 + dice x2")
    g.add_argument("--use_mask_loss", action="store_true", help="segmentation focal x20 + dice x2")
    g.add_argument("--aug_crop", action="store_true",
                   help="training: half the time resize-crop-resize instead of a plain random resize")
    g.add_argument("--aug_scale", action="store_true",
                   help="training: long side drawn from imsize - 32 i, i < 7 (else imsize)")
    g.add_argument("--aug_translate", action="store_true",
                   help="training: image placed at a random offset in the padded input (else centred)")
    g.add_argument("--aug_blur", action="store_true", help="training: Gaussian blur with probability 0.5")
    g.add_argument("--sup_type", default="full", choices=["full", "un"], help="full: <split>; un: <split>_pseudo")
    g = p.add_argument_group("HiVG loss weights (official hard-coded constants; change them only for from-scratch "
                             "recipes such as the tiny quickstart)")
    for name, value in HiVGCriterion.DEFAULTS.items():
        if name.endswith("_coef"):
            g.add_argument(f"--{name}", type=float, default=value, help="weight of the term")
    cli.add_optim_args(p, skip=("ema", "ema_decay"), lr=1e-4, weight_decay=1e-4, epochs=90, lr_scheduler="step",
                       lr_drop=60)
    cli.add_dist_args(p, skip=("world_size",))
    cli.add_logging_args(p, output_dir="./outputs", seed=13)
    cli.add_accepted_args(p, ACCEPTED_TRAIN, valued=VALUED)


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_model", default="", help="checkpoint to evaluate (ours or official)")
    g.add_argument("--eval_set", dest="eval_sets", nargs="+", default=["test"],
                   help="split(s): val | testA | testB | test")
    g.add_argument("--vis", type=int, default=0, help="also draw the first N predictions (red) and ground truths "
                   "(green) into <output_dir>/vis_<dataset>_<set>.png")
    g.add_argument("--merge_lora", action="store_true", help="fold LoRA into the base weights before evaluating")
    g.add_argument("--save_hilora_clip", action="store_true",
                   help="also write <output_dir>/clip_lora_stage_with_bridge.pth from --eval_model: the CLIP towers, "
                        "LoRA adapters and bridges in the official key layout ({'model': model.clip.state_dict()} "
                        "of the official code, read by its --hi_lora_clip and by ours)")
    cli.add_optim_args(p, only=("amp",))
    cli.add_dist_args(p, skip=("world_size",))
    cli.add_logging_args(p, only=("output_dir", "seed"), output_dir="./outputs", seed=13)
    cli.add_accepted_args(p, ACCEPTED_EVAL, valued=VALUED)
    p.set_defaults(batch_size=32, num_workers=2)
