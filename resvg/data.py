"""ResVG data: the official datasets and splits, image folders, the records of a split with their prior rows,
the query-length check, the transform and the tokenizer.

Annotations are the TransVG-format split lists ``<split_root>/<dataset>/<dataset>_<split>.pth`` (boxes kept as
float32, no integer truncation); training reads ``new_train`` (the real data plus the relation-sensitive
augmented samples) and evaluation the split named on the command line.  ``--extra_train_splits`` appends
further split lists to the training split (e.g. ``--train_split train --extra_train_splits new_train`` when the
augmented list holds only the added samples), each with its own prior file.  Images live where the official code
looks for them below ``--data_root`` (``images/train2014`` for the COCO sets, ``referit/ReferIt``,
``flickr/flickr``); ``--image_root`` names one folder for every source instead.

Prior features (`resvg.prior`): ``<prior_root>/<split>_fea.pth``, ``prior_root`` = ``--prior_root`` or the
dataset's split folder.  Without a file the run stops, unless ``--prior_missing zeros`` (all-zero rows: the
content query becomes the prior MLP applied to zeros) or ``--no_prior`` (the prior branch is switched off:
content query zeros, as in VLTVG).

Queries: [CLS] + WordPiece pieces + [SEP] must fit ``--max_query_len``; a longer query is an error naming the
split file and the sample, unless ``--truncate_long_queries`` (the official tokenizer's silent truncation).
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Dict, List

from vgcore.data.checks import require_single_target
from vgcore.data.build import SKIP_HINT, split_file, target_policy, load_split
from vgcore.data.errors import DataError
from vgcore.data.formats import transvg as transvg_fmt
from vgcore.data.transforms import build_transforms
from vgcore.text import build_tokenizer

from resvg.prior import attach_priors, attach_zero_priors, prior_path, read_prior_file

__all__ = ["DATASET_SPLITS", "IMAGE_DIRS", "image_root", "check_split", "prior_root", "prior_source",
           "train_splits", "records", "check_query_lengths", "build_tok", "pipeline", "train_scales"]

# official dataset names and their split lists
DATASET_SPLITS: Dict[str, tuple] = {
    "unc": ("train", "val", "trainval", "testA", "testB", "test", "new_train"),
    "unc+": ("train", "val", "trainval", "testA", "testB", "new_train", "gligen_train"),
    "gref": ("train", "val", "new_train"),
    "gref_umd": ("train", "val", "test", "new_train"),
    "referit": ("train", "val", "trainval", "test", "new_train"),
    "flickr": ("train", "val", "test", "new_train"),
}
# image folder of each dataset below --data_root (the official code's fixed ./ln_data/... folders)
IMAGE_DIRS = {"unc": "images/train2014", "unc+": "images/train2014", "gref": "images/train2014",
              "gref_umd": "images/train2014", "referit": "referit/ReferIt", "flickr": "flickr/flickr"}
OFFICIAL_SCALES = (448, 480, 512, 544, 576, 608, 640)


def image_root(args) -> str:
    return args.image_root or os.path.join(args.data_root, IMAGE_DIRS[args.dataset])


_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*")


def check_split(dataset: str, split: str, official: bool = True) -> None:
    """``official``: ``split`` must be one of the dataset's official splits (as the official loader demands);
    otherwise any name made of letters, digits, ``_``, ``+`` and ``-`` (a user's own list, e.g. an extra
    training list)."""
    if dataset not in DATASET_SPLITS:
        raise DataError(f"unknown ResVG dataset {dataset!r}; choose from {sorted(DATASET_SPLITS)}")
    if official and split not in DATASET_SPLITS[dataset]:
        raise DataError(f"dataset {dataset} has no split {split!r}; its splits: {', '.join(DATASET_SPLITS[dataset])}")
    if not official and not _SPLIT_NAME.fullmatch(split):
        raise DataError(f"split name {split!r}: use letters, digits, '_', '+' and '-' only")


def prior_root(args) -> str:
    return args.prior_root or os.path.join(args.split_root, args.dataset)


def prior_source(args, split: str) -> str:
    """One line saying where the prior features of ``split`` come from (for the log)."""
    if args.no_prior:
        return f"{split}: no prior (--no_prior: content query zeros, as VLTVG)"
    parts = ("train", "val") if split == "trainval" and args.dataset != "referit" else (split,)
    lines = []
    for s in parts:
        path = prior_path(prior_root(args), s)
        if os.path.isfile(path):
            lines.append(f"{s}: prior features {path}")
        elif args.prior_missing == "zeros":
            lines.append(f"{s}: WARNING {path} not found: prior features are zeros (--prior_missing zeros; the "
                         f"content query is the prior MLP of a zero vector)")
        else:
            lines.append(f"{s}: {path} not found (the run will stop; --prior_missing zeros or --no_prior to go on)")
    return "; ".join(lines)


def _attach(args, recs: list, width: int) -> list:
    by_split: "OrderedDict[str, list]" = OrderedDict()
    for r in recs:
        by_split.setdefault(r.split, []).append(r)
    out = []
    for s, part in by_split.items():
        path = prior_path(prior_root(args), s)
        if not os.path.isfile(path) and args.prior_missing == "zeros":
            print(f"resvg: WARNING {path} not found: {len(part)} samples of {args.dataset}/{s} get zero prior "
                  f"features (--prior_missing zeros)")
            out.extend(attach_zero_priors(part, width))
        else:
            out.extend(attach_priors(part, read_prior_file(path, width), path))
    return out


def check_query_lengths(args, recs: list, tokenizer) -> None:
    """Every query must fit ``tokenizer.max_len`` with [CLS] and [SEP] (see module doc)."""
    if args.truncate_long_queries:
        return
    limit = tokenizer.max_len - 2
    for r in recs:
        n = len(tokenizer.tokenize(r.expression.lower()))
        if n > limit:
            path = transvg_fmt.split_path(args.split_root, args.dataset, r.split)
            raise DataError(f"{path}: sample {r.extra.get('index')} ({os.path.basename(r.image_path)}): query "
                            f"{r.expression!r} has {n} WordPiece tokens, more than --max_query_len "
                            f"{tokenizer.max_len} - 2; raise --max_query_len or pass --truncate_long_queries "
                            f"(the official silent truncation)")


def _split_records(args, split: str) -> list:
    check_split(args.dataset, split, official=split not in (getattr(args, "extra_train_splits", None) or []))
    recs = load_split("transvg", args.dataset, split, split_root=args.split_root, image_root=image_root(args),
                      layout="transvg")
    recs = require_single_target(recs, split_file("transvg", args.dataset, split, args.split_root),
                                 target_policy(args), needed_by="ResVG (one box per expression)", hint=SKIP_HINT)
    if not recs:
        raise DataError(f"no samples in split {split!r} of {args.dataset} under {args.split_root}")
    return recs


def train_splits(args) -> List[str]:
    """``--train_split`` followed by ``--extra_train_splits`` (each read with its own prior file)."""
    splits = [args.train_split, *(getattr(args, "extra_train_splits", None) or [])]
    dup = sorted({s for s in splits if splits.count(s) > 1})
    if dup:
        raise DataError(f"training split(s) {dup} named twice (--train_split / --extra_train_splits)")
    return splits


def records(args, split, model_cfg, tokenizer=None) -> list:
    """The records of ``split`` (a name, or a list of names concatenated in that order, as the official
    ``trainval`` concatenates train and val) with their prior rows attached (none with ``--no_prior``).  Every
    split keeps its own sample indices and reads its own ``<split>_fea.pth``."""
    recs = [r for s in ([split] if isinstance(split, str) else split) for r in _split_records(args, s)]
    check_query_lengths(args, recs, tokenizer or build_tok(args, model_cfg))
    if model_cfg.prior_feature_content_query:
        recs = _attach(args, recs, model_cfg.prior_dim)
    return recs


def build_tok(args, model_cfg):
    """Lower-cased BERT WordPiece from ``--bert_token_mode`` (a vocab.txt or a folder holding one; default the
    ``--bert_model`` folder), ``max_len`` = the model's max_query_len."""
    vocab = args.bert_token_mode or (args.bert_model if args.bert_model and os.path.isdir(args.bert_model) else "")
    if not vocab:
        raise SystemExit("resvg: --bert_token_mode (bert-base-uncased vocab.txt, or its folder) is required")
    return build_tokenizer("bert", max_len=model_cfg.max_query_len, vocab_file=vocab)


def train_scales(size: int) -> List[int]:
    """The official long-side sizes 448..640 (step 32), scaled to the input size."""
    return [max(32, round(s * size / 640)) for s in OFFICIAL_SCALES]


def pipeline(args, model_cfg, train: bool, tokenizer=None):
    size = model_cfg.img_size
    flags = dict(compat=True, scales=train_scales(size)) if train else dict(compat=True)
    return build_transforms("resvg", train=train, imsize=size, **flags), tokenizer or build_tok(args, model_cfg)
