"""From command-line arguments to records and loaders: where each official layout keeps its annotations and
images, and the one way records become batches.

`load_split(fmt, dataset, split, ...)` is the one call a method makes for its records;
`build_grounding_loader(records, transform, tokenizer, ...)` turns them into a loader (the dataset, collate and
sampler wiring every method shares) and `single_batch` makes the one-image batch of ``predict.py``.  It knows the
official directory layouts so that a user points ``--split_root`` / ``--data_root`` at the same folders the
official code reads, and ``--image_root`` overrides the image folder for everything (the synthetic data,
or any custom layout).

Image folders below ``--data_root`` in each official layout:

=========================  ===========================================  ==============================
layout                     COCO train2014                               ReferIt / Flickr30k
=========================  ===========================================  ==============================
``transvg`` (TransVG)      other/images/mscoco/images/train2014         referit/images, Flickr30k/flickr30k_images
``hivg`` (CLIP-VG, HiVG)   other/images/mscoco/images/train2014         referit/images, Flickr30k/flickr30k-images
``seqtr`` (SimVG, ALVG)    images/mscoco/train2014                      images/saiaprtc12, images/flickr30k
=========================  ===========================================  ==============================
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..dist import build_loader
from .dataset import Collate, GroundingDataset
from .errors import DataError
from .formats import refer as refer_fmt
from .formats import seqtr as seqtr_fmt
from .formats import transvg as transvg_fmt
from .image import load_image
from .sample import Record

__all__ = ["image_roots", "load_split", "split_file", "box_options", "target_policy", "default_workers",
           "build_grounding_loader", "single_batch", "SEQTR_DIRS", "REFER_DATASETS", "SKIP_HINT", "SEQTR_OLD_DIRS",
           "seqtr_annotation_path"]

_COCO_SETS = {"unc", "unc+", "gref", "gref_umd", "refcoco", "refcoco+", "refcocoplus", "refcocog",
              "refcocogumd", "refcocoggoogle", "grefcoco", "cocoall"}

# dataset key -> SeqTR annotation folder
SEQTR_DIRS = {
    "unc": "refcoco-unc", "refcoco": "refcoco-unc", "unc+": "refcocoplus-unc", "refcoco+": "refcocoplus-unc",
    "refcocoplus": "refcocoplus-unc", "gref_umd": "refcocog-umd", "refcocog": "refcocog-umd",
    "gref": "refcocog-google", "refcocoggoogle": "refcocog-google", "referit": "referitgame-berkeley",
    "flickr": "flickr30k", "flickr30k": "flickr30k", "mixed": "mixed", "grefcoco": "grefs_grec",
}
# dataset key -> older folder names still accepted when the official one is absent (gRefCOCO: the official
# SimVG configs read annotations/grefs_grec/instances.json; "grefs" is the earlier name)
SEQTR_OLD_DIRS = {"grefcoco": ("grefs",)}
# dataset key -> (refer dataset folder, splitBy)
REFER_DATASETS = {
    "unc": ("refcoco", "unc"), "refcoco": ("refcoco", "unc"), "unc+": ("refcoco+", "unc"),
    "refcoco+": ("refcoco+", "unc"), "refcocoplus": ("refcoco+", "unc"), "gref_umd": ("refcocog", "umd"),
    "refcocog": ("refcocog", "umd"), "gref": ("refcocog", "google"), "refcocoggoogle": ("refcocog", "google"),
    "referit": ("refclef", "berkeley"), "grefcoco": ("grefcoco", "unc"),
}


def image_roots(data_root: str, layout: str = "hivg") -> dict:
    """Per-source image folders of an official layout (keys: coco, referit, flickr, vg)."""
    r = Path(data_root)
    if layout in ("transvg", "resvg", "hivg", "clipvg"):
        flickr = "Flickr30k/flickr30k-images" if layout in ("hivg", "clipvg") else "Flickr30k/flickr30k_images"
        return {"coco": str(r / "other/images/mscoco/images/train2014"), "referit": str(r / "referit/images"),
                "flickr": str(r / flickr)}
    if layout == "seqtr":
        return {"coco": str(r / "images/mscoco/train2014"), "referit": str(r / "images/saiaprtc12"),
                "flickr": str(r / "images/flickr30k"), "vg": str(r / "images/visual-genome")}
    if layout == "refer":
        return {"coco": str(r / "images/mscoco/images/train2014"), "referit": str(r / "images/saiapr_tc-12")}
    raise ValueError(f"unknown image layout {layout!r} (transvg | hivg | seqtr | refer)")


def seqtr_annotation_path(split_root: str, dataset: str) -> Path:
    """``<split_root>/<folder>/instances.json`` of a SeqTR-layout dataset (``split_root`` itself when it is a
    file): the official folder (`SEQTR_DIRS`), else the first older name of `SEQTR_OLD_DIRS` that exists; the
    official path when none exists (so the error names it)."""
    root = Path(split_root)
    if root.is_file():
        return root
    official = root / SEQTR_DIRS.get(dataset, dataset) / "instances.json"
    if official.exists():
        return official
    for old in SEQTR_OLD_DIRS.get(dataset, ()):
        if (root / old / "instances.json").exists():
            return root / old / "instances.json"
    return official


def _source(dataset: str) -> str:
    if dataset in ("referit", "refclef"):
        return "referit"
    if dataset in ("flickr", "flickr30k"):
        return "flickr"
    return "coco"


def split_file(fmt: str, dataset: str, split: str, split_root: str) -> str:
    """The annotation file `load_split` reads for (fmt, dataset, split): for messages that name it."""
    if fmt == "transvg":
        return transvg_fmt.split_path(split_root, dataset, split)
    if fmt == "refer":
        name, split_by = REFER_DATASETS.get(dataset, (dataset, "unc"))
        return f"{refer_fmt.refs_path(split_root, name, split_by)} ({split})"
    return f"{seqtr_annotation_path(split_root, dataset)} ({split})"


def _check_dataset(fmt: str, dataset: str, split_root: str, box_convention: Optional[str]) -> None:
    """A dataset name the format does not know is an error listing the names it does (a custom folder below
    ``--split_root``, or ``--split_root`` naming the file itself, is accepted for seqtr and refer)."""
    if fmt == "transvg":
        known = transvg_fmt.DATASETS
        if dataset in known or box_convention is not None:
            return
        extra = "; other TransVG-style split files need --box_convention xywh or xyxy"
    elif fmt == "seqtr":
        known = tuple(SEQTR_DIRS)
        if dataset in known or Path(split_root).is_file() or (Path(split_root) / dataset).is_dir():
            return
        extra = f"; or a folder {Path(split_root) / dataset} holding instances.json"
    elif fmt == "refer":
        known = tuple(REFER_DATASETS)
        if dataset in known or (Path(split_root) / dataset).is_dir():
            return
        extra = f"; or a refer folder {Path(split_root) / dataset}"
    else:
        raise ValueError(f"unknown annotation format {fmt!r} (transvg | refer | seqtr)")
    raise DataError(f"--dataset {dataset!r} is not a {fmt} dataset name: use one of {', '.join(known)}{extra}")


def load_split(fmt: str, dataset: str, split: str, *, split_root: str, data_root: str = "",
               image_root: Optional[str] = None, layout: str = "hivg", on_error: str = "raise",
               box_convention: Optional[str] = None, int_truncate: bool = False, **kw) -> list:
    """Records of one split.

    fmt: ``transvg`` (``<split_root>/<dataset>/<dataset>_<split>.pth``), ``refer``
    (``<split_root>/<refer dataset>/refs(<splitBy>).p``), ``seqtr``
    (``<split_root>/<seqtr dir>/instances.json`` or ``<split_root>`` itself when it is a file).
    ``image_root`` (one folder for every source) wins over the layout's folders below ``data_root``.
    ``box_convention`` ("xywh" | "xyxy", default: the dataset's) and ``int_truncate`` (the official int cast of
    the stored numbers) apply to transvg split files; refer and seqtr files store COCO xywh floats, and either
    option with them is an error.  An unknown dataset name is an error listing the format's names.
    Extra keyword arguments go to the format's reader (e.g. ``clip=True`` for seqtr).
    """
    _check_dataset(fmt, dataset, split_root, box_convention)
    if fmt != "transvg" and (box_convention is not None or int_truncate):
        raise DataError(f"--box_convention / --box_int_truncate apply to transvg split files only; {fmt} "
                        f"annotations store COCO xywh boxes")
    if fmt == "transvg":
        kw = dict(kw, box_convention=box_convention, int_truncate=int_truncate)
    roots = image_roots(data_root or ".", layout)
    if image_root:
        root = image_root
        roots = {k: image_root for k in roots}
    else:
        root = roots[_source(dataset)]
    if fmt == "transvg":
        if dataset == "mixup":
            root = roots
        path = transvg_fmt.split_path(split_root, dataset, split) if split != "trainval" or dataset == "referit" else None
        if path is None:  # trainval = train + val (every dataset but referit)
            return (load_split(fmt, dataset, "train", split_root=split_root, data_root=data_root,
                               image_root=image_root, layout=layout, on_error=on_error, **kw)
                    + load_split(fmt, dataset, "val", split_root=split_root, data_root=data_root,
                                 image_root=image_root, layout=layout, on_error=on_error, **kw))
        return transvg_fmt.read_split(path, dataset, image_root=root, split=split, on_error=on_error, **kw)
    if fmt == "refer":
        name, split_by = REFER_DATASETS.get(dataset, (dataset, kw.pop("split_by", "unc")))
        return refer_fmt.read_refer(split_root, name, split_by, split=split, image_root=root, on_error=on_error, **kw)
    if fmt != "seqtr":
        raise ValueError(f"unknown annotation format {fmt!r} (transvg | refer | seqtr)")
    p = seqtr_annotation_path(split_root, dataset)
    return seqtr_fmt.read_seqtr(str(p), split=split, image_root=root, dataset=dataset, on_error=on_error, **kw)


def box_options(args) -> dict:
    """The box flags of the data group (``--box_convention``, ``--box_int_truncate``) as `load_split` keywords
    (a flag the parser does not have is left at the reader's default)."""
    return {"box_convention": getattr(args, "box_convention", None),
            "int_truncate": bool(getattr(args, "box_int_truncate", False))}


def target_policy(args) -> str:
    """``on_bad`` of `vgcore.data.checks.require_single_target` for the flags: "skip" with --skip_bad_targets."""
    return "skip" if getattr(args, "skip_bad_targets", False) else "raise"


SKIP_HINT = "Pass --skip_bad_targets to drop such samples (counted, with one warning), or use a single-target split"


def default_workers(requested: Optional[int]) -> int:
    """``requested`` if given, else min(4, cpus - 1) (0 on a 1-cpu machine)."""
    if requested is not None:
        return requested
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def build_grounding_loader(records: Sequence, transform, tokenizer, *, batch_size: int, train: bool, seed: int = 0,
                           num_workers: Optional[int] = None, load_masks: bool = False):
    """`GroundingDataset` over ``records`` + its collate + `vgcore.dist.build_loader` (train: shuffled, drop last,
    ``set_epoch``; eval: every sample exactly once over the ranks).  ``num_workers`` None = `default_workers`."""
    if not records:
        raise ValueError("build_grounding_loader: no records")
    dataset = GroundingDataset(list(records), transform, tokenizer=tokenizer, load_masks=load_masks, on_error="raise")
    return build_loader(dataset, batch_size, train=train, seed=seed, num_workers=default_workers(num_workers),
                        collate_fn=Collate(tokenizer), drop_last=train, pin_memory=torch.cuda.is_available())


def single_batch(image_path: str, text: str, transform, tokenizer, device="cpu"):
    """The `Batch` of one image and one expression (no annotation: the target is the whole image), on ``device``."""
    w, h = load_image(image_path).size
    rec = Record(image_path=image_path, expression=text, boxes=np.array([[0, 0, w, h]], np.float32), height=h, width=w)
    ds = GroundingDataset([rec], transform, tokenizer=tokenizer)
    return Collate(tokenizer)([ds[0]]).to(device)
