"""VG-LAW command-line flags: the official names (``--batch_sum``, ``--splitBy``, ``--lr_lang`` ...) and the
released recipe's values as defaults, plus the switches this port adds.

Defaults: the four released training scripts share ``--batch_size=1 --batch_sum=256 --law_type=svd
--img_size=448 --vit_model=vitdet_b_mrcnn --translate --lr_scheduler=step --max_epochs=20 --drop_epochs=10
--log_freq=10 --use_mask``; those values are our defaults, except ``--batch_size`` (8, the official parser's
default: batch 1 was a memory workaround, the effective batch is ``--batch_sum``).  Flags the scripts do not
pass keep the official parser's defaults (``--warmup_steps 8000``, ``--clip_max_norm 0.15``,
``--weight_decay 1e-4``, ``--drop_rate 0.1``, ``--max_len 40``, ``--mask_threshold 0.35``, the README's
``--lr_base 1e-4 --lr_visual 1e-5 --lr_lang 1e-5``).
"""
from __future__ import annotations

import argparse

from vgcore import cli
from vgcore.cli import str2bool
from vglaw.law import LAW_TYPES
from vglaw.model import PRESETS

__all__ = ["add_model_args", "add_train_args", "add_eval_args", "EVAL_SPLITS", "task_of", "prepare_args"]

# the official evaluation splits per (dataset, splitBy)
EVAL_SPLITS = {("refcoco", None): ["val", "testA", "testB"], ("refcoco+", None): ["val", "testA", "testB"],
               ("refcocog", "umd"): ["val", "test"], ("refcocog", "google"): ["val"], ("refclef", None): ["test"]}

_IGNORED = {
    "--experiment_name": "our outputs go to --output_dir", "--short_comment": "log naming",
    "--comments": "log naming", "--mode_name": "MindSpore execution mode", "--device_target": "use --device",
    "--run_distribute": "ranks come from the launcher's environment", "--work_dir": "use --output_dir",
    "--save_ckpt_dir": "use --output_dir", "--config_root": "use --split_root", "--mask_path":
    "masks are decoded from the annotations' segmentations", "--crop_prob": "unused officially",
    "--reduction": "L1 is summed over coordinates and averaged over the batch, as officially",
    "--xiou_loss_type": "GIoU (the official default) is the only box-overlap loss", "--start_epoch": "use --resume",
}
_VALUED = {"--experiment_name", "--short_comment", "--comments", "--mode_name", "--device_target",
           "--run_distribute", "--work_dir", "--save_ckpt_dir", "--config_root", "--mask_path", "--crop_prob",
           "--reduction", "--xiou_loss_type", "--start_epoch"}


def add_model_args(p: argparse.ArgumentParser, mode: str) -> None:
    g = p.add_argument_group("VG-LAW model")
    g.add_argument("--preset", default="vitb", choices=sorted(PRESETS),
                   help="architecture: vitb (ViTDet ViT-B + 6-layer BERT-base, the paper's) | tiny (CPU tests)")
    g.add_argument("--task", default=None, choices=["both", "rec", "res"],
                   help="heads and losses: both (multi-task), rec (boxes only), res (masks only); "
                        "default both with --use_mask, else rec")
    g.add_argument("--use_mask", type=str2bool, nargs="?", const=True, default=True,
                   help="official: predict and learn masks too (multi-task); off = REC only")
    g.add_argument("--law_type", default="svd", choices=list(LAW_TYPES), help="language-adaptive weight type")
    g.add_argument("--groups", type=int, nargs="+", default=None,
                   help="per ViT block: 0 = not adapted, g = la group count (default: every block, 1 group)")
    g.add_argument("--use_activation", action="store_true", help="ReLU on the generated weights")
    g.add_argument("--img_size", type=int, default=None, help="input canvas side (default: the preset's, 448)")
    g.add_argument("--max_len", type=int, default=40, help="text tokens (padded to exactly this length)")
    g.add_argument("--text_encoder_layer", type=int, default=None, help="BERT layers (default: the preset's, 6)")
    g.add_argument("--mask_threshold", type=float, default=0.35, help="mask = sigmoid(logit) > this")
    g.add_argument("--iou_threshold", type=float, default=0.5, help="REC hit: IoU >= this")
    g.add_argument("--vit_model", default="vitdet_b_mrcnn",
                   help="name of the ViTDet backbone (informational; the weights come from --vit_model_path)")
    g.add_argument("--vit_model_path", default="",
                   help="training: detectron2 ViTDet checkpoint (model_final_61ccd1.pkl, or its MindSpore .ckpt); "
                        "global-block rel-pos tables are centre-cropped to the input grid")
    g.add_argument("--bert_model", default="",
                   help="folder of HF bert-base-uncased: vocab.txt (the tokenizer; required) and, for training, "
                        "pytorch_model.bin / model.safetensors (its first --text_encoder_layer layers)")
    g.add_argument("--pretrained_path", default="",
                   help="a whole VG-LAW model: official MindSpore .ckpt (converted on the fly, compat switches "
                        "on), a `python -m vglaw.convert` output or one of our checkpoints; train: the starting "
                        "point; eval / predict: the model evaluated")
    g.add_argument("--official_compat", action="store_true",
                   help="the MindSpore port's numerics: TF-style bicubic position resize, ViT LayerNorm eps "
                        "1e-5, generator LayerNorm eps 1e-7 (on automatically for official .ckpt files), and "
                        "its substring left/right swap on flips")
    g.add_argument("--trust_pickle", action="store_true",
                   help="allow full pickle loading of our own older checkpoints (never for downloaded files)")

    d = p.add_argument_group("VG-LAW data")
    d.add_argument("--dataset", default="refcoco", help="refcoco | refcoco+ | refcocog | refclef")
    d.add_argument("--splitBy", default=None, help="refer split-by: unc | umd | google | berkeley "
                                                   "(default: unc, refcocog umd, refclef berkeley)")
    d.add_argument("--format", default="refer", help="annotations: refer (refs(<splitBy>).p + instances.json, "
                                                     "the official layout) | seqtr | transvg (no masks: --use_mask 0)")
    d.add_argument("--split_root", default="./data", help="annotation root (refer: <split_root>/<dataset>/refs(...).p)")
    d.add_argument("--data_root", default="./data", help="images below the refer layout's folders")
    d.add_argument("--image_root", default="", help="one image folder for every source (overrides --data_root)")
    cli.add_data_args(p, only=("num_workers", "batch_size", "eval_batch_size", "skip_bad_targets"), batch_size=8)
    cli.add_dist_args(p, skip=("world_size",))
    if mode == "train":
        p.add_argument("--train_split", default="train", help="training split")
        p.add_argument("--val_split", default="val", help="model selection split (officially the last test split)")
        p.add_argument("--translate", type=str2bool, nargs="?", const=True, default=True,
                       help="random placement on the canvas during training (centred at evaluation)")
        p.add_argument("--multi_scale", action="store_true", help="long side 448 +- 32 r, r <= 4 (unused officially)")
    cli.add_accepted_args(p, {k: v for k, v in _IGNORED.items()}, valued=_VALUED)


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("VG-LAW optimisation (AdamW, betas 0.9/0.999, eps 1e-6, decay on every parameter)")
    g.add_argument("--batch_sum", type=int, default=256,
                   help="effective batch: gradients accumulate over batch_sum / (batch_size x processes) batches")
    g.add_argument("--lr_base", type=float, default=1e-4, help="weight generator and heads")
    g.add_argument("--lr_visual", type=float, default=1e-5, help="visual_encoder.* (ViTDet)")
    g.add_argument("--lr_lang", type=float, default=1e-5, help="text_encoder.* (BERT)")
    g.add_argument("--weight_decay", type=float, default=1e-4, help="AdamW weight decay")
    g.add_argument("--lr_scheduler", default="step", choices=["step", "poly", "cosine"],
                   help="after the warm-up: x drop_rate at each of --drop_epochs (step), poly or cosine decay")
    g.add_argument("--warmup_steps", type=int, default=8000,
                   help="linear warm-up from 0.01 x lr over this many batches per process (the official 8000 are "
                        "batches of 1 on each of 4 processes: 32,000 samples; scale it to --batch_size x processes)")
    g.add_argument("--max_epochs", type=int, default=20, help="training epochs")
    g.add_argument("--drop_epochs", type=int, nargs="+", default=[10], help="epochs at which the step schedule multiplies the lr by --drop_rate")
    g.add_argument("--drop_rate", type=float, default=0.1, help="lr factor at each drop epoch")
    g.add_argument("--poly_power", type=float, default=0.9, help="exponent of the poly schedule")
    g.add_argument("--compat_constant_lr", action="store_true",
                   help="the MindSpore port's actual behaviour: its schedule is computed but never applied, "
                        "so every group trains at its constant rate")
    g.add_argument("--clip_max_norm", type=float, default=0.15, help="global gradient-norm clip (0 = off)")
    for name in ("bbox", "xiou", "focal", "dice"):
        g.add_argument(f"--{name}_loss_coef", type=float, default=1.0, help="weight of this loss term")
    cli.add_optim_args(p, only=("amp",))
    g2 = p.add_argument_group("VG-LAW run")
    g2.add_argument("--eval_step", type=int, default=1, help="epochs between validations")
    g2.add_argument("--log_freq", type=int, default=10, help="batches between log lines")
    cli.add_logging_args(p, only=("output_dir", "resume", "seed", "checkpoint_every_steps", "max_steps",
                                  "stop_after_steps", "tensorboard", "overwrite", "allow_resume_changes"))


def add_eval_args(p: argparse.ArgumentParser, mode: str) -> None:
    cli.add_optim_args(p, only=("amp",))
    cli.add_logging_args(p, only=("output_dir", "seed"))
    if mode == "eval":
        p.add_argument("--eval_sets", nargs="+", default=None,
                       help="splits (default: the official ones, e.g. val testA testB for RefCOCO)")
        p.add_argument("--vis", type=int, default=0, help="draw the first N predictions of each split")
        p.add_argument("--canvas_metrics", action="store_true",
                       help="also the official numbers on the 448 padded canvas (canvas/...): box IoU of the "
                            "normalised boxes and mask IoU with the padding counted")


def task_of(args) -> str:
    return args.task or ("both" if args.use_mask else "rec")


def prepare_args(args) -> None:
    """Derived flags: the refer splitBy, the official evaluation splits."""
    if args.splitBy is None:
        args.splitBy = {"refcocog": "umd", "refclef": "berkeley"}.get(args.dataset, "unc")
    if hasattr(args, "eval_sets") and not args.eval_sets:
        key = (args.dataset, args.splitBy if args.dataset == "refcocog" else None)
        args.eval_sets = EVAL_SPLITS.get(key, ["val"])
