"""VG-LAW data: records of the official refer layout (or any vgcore format) and the input pipeline.

The referent's mask comes from its annotation's segmentation (polygons or RLE; the official per-ref ``.npy``
files are not needed): the method asks the shared loader for masks (``vglaw.method.load_masks``), which decodes
``Record.mask`` on the original image (`vgcore.data.masks.decode_mask`, the union of the pieces) before the
transform; the vgcore transforms then resize / flip / paste it with the image, and the collated `Batch` holds it
in ``masks`` [B, H, W] on the input canvas.
"""
from __future__ import annotations

from typing import Optional

from vgcore.data.build import REFER_DATASETS, SKIP_HINT, load_split, split_file, target_policy
from vgcore.data.checks import require_single_target
from vgcore.data.transforms import Compose, build_transforms

__all__ = ["records", "pipeline_transform", "dataset_key"]

_LAYOUTS = {"refer": "refer", "seqtr": "seqtr"}  # image folders below --data_root per annotation format


def dataset_key(dataset: str, split_by: Optional[str]) -> str:
    """The `vgcore.data.build.REFER_DATASETS` key of an official (dataset, splitBy) pair (refcocog google ->
    "gref"); the dataset name itself when no key matches (then splitBy is passed on)."""
    for k, v in REFER_DATASETS.items():
        if v == (dataset, split_by):
            return k
    return dataset


def records(args, split: str, need_masks: bool) -> list:
    """Records of one split; with ``need_masks`` every record must have a segmentation."""
    kw = {}
    if args.format == "refer":
        key = dataset_key(args.dataset, args.splitBy)
        if key == args.dataset:
            kw["split_by"] = args.splitBy
    else:
        key = args.dataset
    recs = load_split(args.format, key, split, split_root=args.split_root, data_root=args.data_root,
                      image_root=args.image_root or None, layout=_LAYOUTS.get(args.format, "transvg"), **kw)
    recs = require_single_target(recs, split_file(args.format, key, split, args.split_root), target_policy(args),
                                 needed_by="VG-LAW (one box and mask per expression)", hint=SKIP_HINT)
    if not recs:
        raise ValueError(f"no samples in {args.format} split {split!r} of {args.dataset} under {args.split_root}")
    if need_masks:
        missing = [r.key() for r in recs if r.mask is None]
        if missing:
            raise ValueError(f"{len(missing)} of {len(recs)} samples of {split!r} have no segmentation (first: "
                             f"{missing[0]}); masks are needed for --task both / res (REC only: --use_mask 0)")
    return recs


def pipeline_transform(img_size: int, train: bool, *, translate: bool = True, multi_scale: bool = False,
                       compat: bool = False) -> Compose:
    """vgcore's ``vglaw`` pipeline (long side -> img_size with cv2-exact bilinear, ImageNet normalisation, zero
    canvas; training: flip p 0.5 with the left/right swap, random placement with ``translate``).  Evaluation is
    centred (the official scripts place eval images at random too).  Masks decoded by the loader follow the
    image through every step."""
    flags = dict(translate=translate, multi_scale=multi_scale, compat=compat) if train else {}
    return build_transforms("vglaw", train=train, imsize=img_size, **flags)
