"""VG-LAW data: records of the official refer layout (or any vgcore format) and the input pipeline, with the
referent's mask carried into the transform.

The shared loader (`vgcore.method.build_loader`) builds its dataset without mask decoding, and the method
protocol has no hook to ask for it.  So the mask travels with the expression: `records` replaces each
record's ``expression`` by a `MaskedText` (a ``str`` equal to the expression, carrying the record's
segmentation), and the first step of the pipeline (`DecodeMask`) decodes it on the original image and hands
the plain string on.  From there the vgcore transforms resize / flip / paste the mask with the image, and the
collated `Batch` holds it in ``masks`` [B, H, W] on the input canvas.  (A ``load_masks`` hook in
`vgcore.method.build_loader` would make this module's `MaskedText` unnecessary.)
"""
from __future__ import annotations

from typing import Optional

from vgcore.data.checks import require_single_target
from vgcore.data.build import SKIP_HINT, split_file, target_policy, REFER_DATASETS, load_split
from vgcore.data.masks import decode_mask
from vgcore.data.transforms import Compose, Sample, build_transforms

__all__ = ["MaskedText", "DecodeMask", "records", "pipeline_transform", "dataset_key"]

_LAYOUTS = {"refer": "refer", "seqtr": "seqtr"}  # image folders below --data_root per annotation format


class MaskedText(str):
    """An expression that also carries its referent's segmentation (``seg``: polygons | RLE | None)."""

    def __new__(cls, text: str, seg):
        obj = super().__new__(cls, text)
        obj.seg = seg
        return obj

    def __reduce__(self):  # pickles into DataLoader workers with its segmentation
        return (MaskedText, (str(self), self.seg))


class DecodeMask:
    """First pipeline step: ``sample.text`` a `MaskedText` -> ``sample.mask`` uint8 [H, W] of the original image
    (union of the pieces) and ``sample.text`` the plain expression."""

    def __call__(self, s: Sample) -> Sample:
        if isinstance(s.text, MaskedText):
            h, w = s.size
            s.mask = decode_mask(s.text.seg, h, w)
            s.text = str(s.text)
        return s

    def __repr__(self):
        return "DecodeMask()"


def dataset_key(dataset: str, split_by: Optional[str]) -> str:
    """The `vgcore.data.build.REFER_DATASETS` key of an official (dataset, splitBy) pair (refcocog google ->
    "gref"); the dataset name itself when no key matches (then splitBy is passed on)."""
    for k, v in REFER_DATASETS.items():
        if v == (dataset, split_by):
            return k
    return dataset


def records(args, split: str, need_masks: bool) -> list:
    """Records of one split; with ``need_masks`` every record must have a segmentation and carries it in a
    `MaskedText` expression."""
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
    if not need_masks:
        return recs
    missing = [r.key() for r in recs if r.mask is None]
    if missing:
        raise ValueError(f"{len(missing)} of {len(recs)} samples of {split!r} have no segmentation (first: "
                         f"{missing[0]}); masks are needed for --task both / res (REC only: --use_mask 0)")
    return [r.replace(expression=MaskedText(r.expression, r.mask)) for r in recs]


def pipeline_transform(img_size: int, train: bool, *, translate: bool = True, multi_scale: bool = False,
                       compat: bool = False) -> Compose:
    """`DecodeMask` + vgcore's ``vglaw`` pipeline (long side -> img_size with cv2-exact bilinear, ImageNet
    normalisation, zero canvas; training: flip p 0.5 with the left/right swap, random placement with
    ``translate``).  Evaluation is centred (the official scripts place eval images at random too)."""
    flags = dict(translate=translate, multi_scale=multi_scale, compat=compat) if train else {}
    return Compose([DecodeMask(), build_transforms("vglaw", train=train, imsize=img_size, **flags)])
