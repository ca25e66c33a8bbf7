"""Relation-sensitive augmentation: images with several instances of one category, pseudo-queries about their
spatial relations, written as the ``new_train`` split ResVG trains on.

Each new image is composed offline: 2..``--max_instances`` instances of ONE category, cut out of the base split's
own images (with their masks when the annotation has one, else the whole box) and pasted without overlap onto a
background (``--background``):

* ``blur`` / ``texture``: a strongly blurred image of the split, or a procedural texture; the instances are
  rescaled to varied sizes (``--instance_scale``) and are the only objects of the image;
* ``scene``: an image of the split as it is.  Its objects all stay (the instances go into free space, clear of
  every annotated object), the scene's own instances of the category count among the 2..max, and an instance
  keeps its size relative to the image (``--paste_scale`` jitters it).  Needs ``--instances`` listing every
  object of the images, as the refer data's instances.json does.

The box of a pasted instance is tight around its pasted pixels (mask) or is the pasted rectangle (box only).  The
paper draws such images with a text-to-image model prompted with a category and a count and boxes them with a
detector; neither model is available offline, so this composition is the route built here.

Instances and their categories come from
* ``--instances``: a COCO-format ``instances.json`` (e.g. the refer data's ``refcoco/instances.json``): every
  annotation (not crowd) on an image the base split uses, with its category name and segmentation; or
* the base split's own records: category = the record's category, else the first of ``--category_words`` found
  as a whole word in the expression (records without one are left out, counted); mask = the record's mask
  (HiVG-style split files carry polygons), else the box.

Pseudo-queries (``RELATIONS``; "{c}" = the category name), each emitted only when it picks out exactly one
instance with a clear margin (``--min_gap`` of the image side between centres, ``--depth_ratio`` between
areas), among the relations ``--relations`` allows (default all):

=========  ==============================================  ==============================================
relation   rule on the instances' boxes                    templates
=========  ==============================================  ==============================================
left       smallest x-centre                               "the {c} on the left", "the left {c}"
right      largest x-centre                                "the {c} on the right", "the right {c}"
middle     median x-centre (odd count >= 3)                "the {c} in the middle", "the middle {c}"
top        smallest y-centre                               "the top {c}", "the {c} at the top"
bottom     largest y-centre                                "the bottom {c}", "the {c} at the bottom"
front      largest box area (>= ratio x every other)       "the {c} in front", "the front {c}"
behind     smallest box area (<= every other / ratio)      "the {c} behind", "the {c} behind the others"
first..    1st / 2nd / 3rd x-centre from the left          "the first|second|third {c} from the left"
           (3 or more instances)
=========  ==============================================  ==============================================

Output (``python -m resvg.relation_aug --help``)::

    <split_root>/<dataset>/<dataset>_new_train.pth           the base split's rows verbatim, then the new rows
    <split_root>/<dataset>/<dataset>_new_train_relations.json per new image: file, category, every instance box
                                                             (xyxy), and its queries (row, text, target, relation)
    <image_root>/<aug_dir>/<dataset>_new_train_<k>.png        the composed images (img_file = "<aug_dir>/<name>")

New rows use the dataset's own TransVG layout and box convention (xywh for the COCO sets, xyxy for referit /
flickr), X2 = {"height", "width"} and X5 = the pasted mask as RLE (None for box-only pastes), so the ResVG
loader (and any TransVG-family loader) reads them from the same image root as the real images.  The split also
needs its prior file ``new_train_fea.pth``: ``python -m resvg.prior_gen --split new_train --reuse_split train ...``
copies the rows of the base queries from ``train_fea.pth`` and generates only the new ones.

``--control_like new_train --out_split new_train_control`` writes no images: as many rows of the base split as
``new_train`` holds, drawn at random without replacement (``--seed``).  Training on train + that list takes as
many steps as training on train + the augmented rows, with real samples only: the same-budget control that tells
what the pseudo-queries teach from what the extra steps do.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # `python resvg/relation_aug.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image, ImageFilter

from vgcore.data.errors import DataError
from vgcore.data.formats import transvg as transvg_fmt
from vgcore.data.image import load_image
from vgcore.data.masks import decode_mask, encode_mask

from resvg.data import DATASET_SPLITS, IMAGE_DIRS, check_split

__all__ = ["Instance", "RELATIONS", "TEMPLATES", "ORDINALS", "relations_of", "instances_from_json",
           "instances_from_records", "compose", "augment", "get_args_parser", "main"]

ORDINALS = ("first", "second", "third")
RELATIONS = ("left", "right", "middle", "top", "bottom", "front", "behind") + ORDINALS
TEMPLATES = {
    "left": ("the {c} on the left", "the left {c}"),
    "right": ("the {c} on the right", "the right {c}"),
    "middle": ("the {c} in the middle", "the middle {c}"),
    "top": ("the top {c}", "the {c} at the top"),
    "bottom": ("the bottom {c}", "the {c} at the bottom"),
    "front": ("the {c} in front", "the front {c}"),
    "behind": ("the {c} behind", "the {c} behind the others"),
    **{o: (f"the {o} {{c}} from the left",) for o in ORDINALS},
}
MARGIN = 2  # px kept free around every pasted instance (no overlap, no touching)


@dataclass(frozen=True)
class Instance:
    image_path: str
    category: str
    box: Tuple[float, float, float, float]  # xyxy, original pixels
    segmentation: object = None  # polygons | RLE | None (box only)
    height: Optional[int] = None
    width: Optional[int] = None


# ----------------------------------------------------------------------------------------------- relations
def relations_of(boxes: np.ndarray, width: float, height: float, min_gap: float = 0.05,
                 depth_ratio: float = 1.5) -> Dict[int, List[str]]:
    """instance index -> the relations (``RELATIONS``) that pick it out among ``boxes`` [n, 4] xyxy (see the
    module table); a relation needs a gap of ``min_gap`` x the image side between neighbouring centres, or an
    area ratio of ``depth_ratio``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = b.shape[0]
    out: Dict[int, List[str]] = {i: [] for i in range(n)}
    if n < 2:
        return out
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    def clear(values, order, k, gap):  # the k-th in `order` is apart from both neighbours by >= gap
        ok = True
        if k > 0:
            ok &= values[order[k]] - values[order[k - 1]] >= gap
        if k < n - 1:
            ok &= values[order[k + 1]] - values[order[k]] >= gap
        return bool(ok)

    for values, gap, (lo, hi) in ((cx, min_gap * width, ("left", "right")), (cy, min_gap * height, ("top", "bottom"))):
        order = np.argsort(values, kind="stable")
        if clear(values, order, 0, gap):
            out[int(order[0])].append(lo)
        if clear(values, order, n - 1, gap):
            out[int(order[-1])].append(hi)
        if lo == "left":
            if n >= 3 and n % 2 == 1 and clear(values, order, n // 2, gap):
                out[int(order[n // 2])].append("middle")
            if n >= 3:
                for k, word in enumerate(ORDINALS[:n]):
                    if clear(values, order, k, gap):
                        out[int(order[k])].append(word)
    big, small = int(np.argmax(area)), int(np.argmin(area))
    others = np.arange(n)
    if all(area[big] >= depth_ratio * area[j] for j in others if j != big):
        out[big].append("front")
    if all(area[j] >= depth_ratio * area[small] for j in others if j != small):
        out[small].append("behind")
    return out


# ----------------------------------------------------------------------------------------------- instances
def instances_from_json(path: str, image_root: str, image_names: Sequence[str], min_size: float) -> List[Instance]:
    """Every non-crowd annotation of a COCO-format instances.json on one of ``image_names`` (base names)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: instances file not found")
    with open(path) as f:
        js = json.load(f)
    for k in ("images", "annotations", "categories"):
        if k not in js:
            raise DataError(f"{path}: not a COCO-format instances file (no {k!r})")
    wanted = set(image_names)
    images = {im["id"]: im for im in js["images"] if im["file_name"] in wanted}
    cats = {c["id"]: c["name"] for c in js["categories"]}
    out = []
    for a in js["annotations"]:
        im = images.get(a["image_id"])
        if im is None or a.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        if max(w, h) < min_size:
            continue
        if a["category_id"] not in cats:
            raise DataError(f"{path}: annotation {a.get('id')} has category_id {a['category_id']} not in categories")
        seg = a.get("segmentation") or None
        out.append(Instance(os.path.join(image_root, im["file_name"]), cats[a["category_id"]], (x, y, x + w, y + h),
                            seg, int(im["height"]), int(im["width"])))
    if not out:
        raise DataError(f"{path}: no annotation (of at least {min_size} px) on an image of the base split "
                        f"({len(wanted)} images, e.g. {sorted(wanted)[:2]})")
    return out


def _category(expression: str, words: Sequence[str]) -> Optional[str]:
    text = expression.lower()
    hits = [(m.start(), w) for w in words for m in [re.search(rf"\b{re.escape(w.lower())}\b", text)] if m]
    return min(hits)[1] if hits else None


def instances_from_records(records: Sequence, words: Sequence[str], min_size: float) -> Tuple[List[Instance], int]:
    """(distinct referents of the base split with a category, number of records without one)."""
    seen, out, unknown = set(), [], 0
    for r in records:
        cat = r.category or _category(r.expression, words)
        if cat is None:
            unknown += 1
            continue
        box = tuple(float(v) for v in r.boxes[0])
        key = (r.image_path, tuple(round(v, 1) for v in box))
        if key in seen or max(box[2] - box[0], box[3] - box[1]) < min_size:
            continue
        seen.add(key)
        out.append(Instance(r.image_path, cat, box, r.mask, r.height, r.width))
    return out, unknown


# ----------------------------------------------------------------------------------------------- composing
class _Images:
    """A small cache of decoded source images (RGB arrays)."""

    def __init__(self, size: int = 32):
        self.size, self.cache = size, OrderedDict()

    def get(self, path: str) -> np.ndarray:
        if path in self.cache:
            self.cache.move_to_end(path)
            return self.cache[path]
        arr = np.asarray(load_image(path))
        self.cache[path] = arr
        if len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return arr


def _cutout(inst: Instance, images: _Images) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(RGB crop, 0/1 mask crop) of an instance inside its integer box; None when its mask is empty there."""
    img = images.get(inst.image_path)
    h, w = img.shape[:2]
    x1, y1 = max(0, int(np.floor(inst.box[0]))), max(0, int(np.floor(inst.box[1])))
    x2, y2 = min(w, int(np.ceil(inst.box[2]))), min(h, int(np.ceil(inst.box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    crop = img[y1:y2, x1:x2]
    if inst.segmentation is None:
        return crop, np.ones(crop.shape[:2], np.uint8)
    mask = decode_mask(inst.segmentation, h, w)[y1:y2, x1:x2]
    return (crop, mask) if mask.any() else None


def _background(rng, src: np.ndarray, size: Tuple[int, int], kind: str, blur: float) -> np.ndarray:
    w, h = size
    if kind == "texture":
        from vgcore.synthetic.scenes import make_background

        return np.clip(make_background(rng, h, w), 0, 255).round().astype(np.uint8)
    im = Image.fromarray(src).resize((w, h), Image.BILINEAR)
    return np.asarray(im.filter(ImageFilter.GaussianBlur(radius=max(1.0, blur * max(w, h)))))


def compose(rng, pieces: Sequence[Tuple[np.ndarray, np.ndarray]], background: np.ndarray, scales: Sequence[float],
            tries: int = 50, occupied: Sequence[Sequence[float]] = ()
            ) -> Optional[Tuple[np.ndarray, List[np.ndarray], np.ndarray]]:
    """Paste ``pieces`` (crop, mask) rescaled to long side ``scale`` px at random free places, clear of each other
    and of the ``occupied`` boxes (xyxy: the objects already in the background image).

    Returns (image, canvas masks, boxes [n, 4] xyxy tight around each pasted mask) or None when they do not fit."""
    canvas = background.copy()
    H, W = canvas.shape[:2]
    taken: List[Tuple[int, int, int, int]] = [(int(np.floor(a)), int(np.floor(b)), int(np.ceil(c)), int(np.ceil(d)))
                                              for a, b, c, d in occupied]
    masks, boxes = [], []
    for (crop, mask), s in zip(pieces, scales):
        ch, cw = crop.shape[:2]
        f = float(s) / max(ch, cw)
        nw, nh = max(2, int(round(cw * f))), max(2, int(round(ch * f)))
        if nw + 2 * MARGIN > W or nh + 2 * MARGIN > H:
            return None
        for _ in range(tries):
            x, y = int(rng.integers(MARGIN, W - nw - MARGIN + 1)), int(rng.integers(MARGIN, H - nh - MARGIN + 1))
            if all(x + nw + MARGIN <= a or c + MARGIN <= x or y + nh + MARGIN <= b or d + MARGIN <= y
                   for a, b, c, d in taken):
                break
        else:
            return None
        m = np.asarray(Image.fromarray(mask * 255).resize((nw, nh), Image.NEAREST)) > 127
        if not m.any():
            return None
        c = np.asarray(Image.fromarray(crop).resize((nw, nh), Image.BILINEAR))
        region = canvas[y:y + nh, x:x + nw]
        region[m] = c[m]
        full = np.zeros((H, W), np.uint8)
        full[y:y + nh, x:x + nw] = m
        ys, xs = np.nonzero(m)
        boxes.append([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1])
        masks.append(full)
        taken.append((x, y, x + nw, y + nh))
    return canvas, masks, np.asarray(boxes, np.float64)


def _long_side(box) -> float:
    return max(float(box[2]) - float(box[0]), float(box[3]) - float(box[1]))


def _short_side(inst: Instance, images: "_Images") -> int:
    """The short side of the instance's own image (from its annotation, else from the decoded image)."""
    return min(inst.height, inst.width) if inst.height and inst.width else min(images.get(inst.image_path).shape[:2])


def _relation_set(spec: str) -> set:
    names = [w.strip() for w in spec.split(",") if w.strip()] if spec else list(RELATIONS)
    bad = [w for w in names if w not in RELATIONS]
    if bad or not names:
        raise SystemExit(f"resvg relation_aug: --relations {spec!r}: unknown {bad} (choose from {', '.join(RELATIONS)})")
    return set(names)


def _pasted_mask(inst: Instance, mask: np.ndarray):
    """The row's mask of a pasted instance, encoded when the row is written (None for a box-only cut-out)."""
    return None if inst.segmentation is None else (lambda: encode_mask(mask))


def _canvas_sample(rng, args, bg_sources, cats, by_cat, images):
    """2..max instances of one category pasted onto a blurred image of the split or a procedural texture."""
    cat = cats[int(rng.integers(len(cats)))]
    n = int(rng.integers(args.min_instances, args.max_instances + 1))
    cands = by_cat[cat]
    picks = [cands[int(i)] for i in rng.choice(len(cands), size=n, replace=len(cands) < n)]
    pieces = [_cutout(inst, images) for inst in picks]
    if any(p is None for p in pieces):
        return None
    src = images.get(bg_sources[int(rng.integers(len(bg_sources)))])
    sh, sw = src.shape[:2]
    f = min(1.0, args.max_canvas / max(sh, sw))
    W, H = max(8, int(round(sw * f))), max(8, int(round(sh * f)))
    scales = rng.uniform(*args.instance_scale, size=n) * min(W, H)
    made = compose(rng, pieces, _background(rng, src, (W, H), args.background, args.blur), scales)
    if made is None:
        return None
    canvas, masks, boxes = made
    return (cat, canvas, boxes, [_pasted_mask(inst, m) for inst, m in zip(picks, masks)],
            [inst.image_path for inst in picks], [True] * n, None)


def _scene_sample(rng, args, scenes, scene_paths, cats, by_cat, images):
    """Instances of one category pasted into free space of an image of the split, whose objects all stay: the
    category's instances are the scene's own ones plus the pasted ones (min..max of them, at least one pasted)."""
    path = scene_paths[int(rng.integers(len(scene_paths)))]
    objects = scenes[path]
    cat = cats[int(rng.integers(len(cats)))]
    own = [o for o in objects if o.category == cat]
    low = max(args.min_instances, len(own) + 1)
    if low > args.max_instances:
        return None
    n = int(rng.integers(low, args.max_instances + 1)) - len(own)
    cands = by_cat[cat]
    picks = [cands[int(i)] for i in rng.choice(len(cands), size=n, replace=len(cands) < n)]
    pieces = [_cutout(inst, images) for inst in picks]
    if any(p is None for p in pieces):
        return None
    scene = images.get(path)
    H, W = scene.shape[:2]
    # an instance keeps its size relative to the image (its source's short side -> the scene's), times a jitter
    scales = [_long_side(inst.box) * min(H, W) / _short_side(inst, images) * rng.uniform(*args.paste_scale)
              for inst in picks]
    made = compose(rng, pieces, scene, scales, occupied=[o.box for o in objects])
    if made is None:
        return None
    canvas, masks, boxes = made
    own_masks = [None if o.segmentation is None else
                 (lambda o=o: encode_mask(decode_mask(o.segmentation, H, W))) for o in own]
    own_boxes = np.asarray([o.box for o in own], np.float64).reshape(-1, 4)
    return (cat, canvas, np.concatenate([own_boxes, boxes]),
            own_masks + [_pasted_mask(inst, m) for inst, m in zip(picks, masks)],
            [path] * len(own) + [inst.image_path for inst in picks], [False] * len(own) + [True] * n, path)


def _row(dataset: str, img_file: str, box: np.ndarray, text: str, h: int, w: int, mask) -> tuple:
    x1, y1, x2, y2 = (float(v) for v in box)
    bbox = [x1, y1, x2 - x1, y2 - y1] if transvg_fmt.BOX_CONVENTION[dataset] == "xywh" else [x1, y1, x2, y2]
    if dataset == "flickr":
        return (img_file, bbox, text)
    return (img_file, {"height": int(h), "width": int(w)}, bbox, text, mask)


def augment(args) -> dict:
    """Write the ``--out_split`` list (base rows + composed samples), its relations JSON and the images."""
    check_split(args.dataset, args.base_split)
    check_split(args.dataset, args.out_split, official=False)
    if args.out_split == args.base_split:
        raise SystemExit("resvg relation_aug: --out_split must differ from --base_split")
    out_path = transvg_fmt.split_path(args.out_root or args.split_root, args.dataset, args.out_split)
    if os.path.exists(out_path) and not args.overwrite:
        raise SystemExit(f"resvg relation_aug: {out_path} exists (--overwrite to replace it)")
    if args.control_like:
        return write_control(args, out_path)
    if not 2 <= args.min_instances <= args.max_instances:
        raise SystemExit(f"resvg relation_aug: need 2 <= --min_instances <= --max_instances, got "
                         f"{args.min_instances}, {args.max_instances}")
    lo, hi = args.instance_scale
    if not 0 < lo <= hi < 1:
        raise SystemExit(f"resvg relation_aug: --instance_scale needs 0 < low <= high < 1, got {lo} {hi}")
    if not 0 < args.paste_scale[0] <= args.paste_scale[1]:
        raise SystemExit(f"resvg relation_aug: --paste_scale needs 0 < low <= high, got {args.paste_scale}")
    image_root = args.image_root or os.path.join(args.data_root, IMAGE_DIRS[args.dataset])
    base_path = transvg_fmt.split_path(args.split_root, args.dataset, args.base_split)
    side_path = out_path[:-len(".pth")] + "_relations.json"
    base_raw = transvg_fmt.load_pth(base_path, trust_pickle=args.trust_pickle)
    records = transvg_fmt.read_split(base_path, args.dataset, image_root=image_root, split=args.base_split,
                                     trust_pickle=args.trust_pickle)
    if not records:
        raise DataError(f"{base_path}: no samples")
    words = [w.strip() for w in args.category_words.split(",") if w.strip()] if args.category_words else []
    if args.instances:
        names = sorted({os.path.basename(r.image_path) for r in records})
        everything = instances_from_json(args.instances, image_root, names, 0.0)
        pool, unknown = [i for i in everything if _long_side(i.box) >= args.min_instance_size], 0
        source = args.instances
        if not pool:
            raise DataError(f"{source}: no annotation of at least {args.min_instance_size} px on an image of the "
                            f"base split ({len(names)} images, e.g. {names[:2]})")
    elif args.background == "scene":
        raise SystemExit("resvg relation_aug: --background scene needs --instances (a COCO-format instances.json "
                         "with every object of the base images: the relations count the scene's own instances)")
    else:
        if not words and not any(r.category for r in records):
            raise SystemExit("resvg relation_aug: the records of a TransVG split carry no category: give "
                             "--instances (COCO-format instances.json) or --category_words w1,w2,...")
        pool, unknown = instances_from_records(records, words, args.min_instance_size)
        source = base_path
    by_cat: Dict[str, List[Instance]] = {}
    for inst in pool:
        by_cat.setdefault(inst.category, []).append(inst)
    cats = sorted(by_cat)
    if not cats:
        raise DataError(f"{source}: no instance with a category ({unknown} records without one of "
                        f"--category_words {words})")
    print(f"[relation_aug] {len(pool)} instances of {len(cats)} categories from {source}"
          f"{f' ({unknown} records without a category left out)' if unknown else ''}", flush=True)
    wanted = _relation_set(args.relations)
    scenes: Dict[str, List[Instance]] = {}
    if args.background == "scene":  # every annotated object of every base image, whatever its size
        for inst in everything:
            scenes.setdefault(inst.image_path, []).append(inst)
    scene_paths = sorted(scenes)
    bg_sources = sorted({r.image_path for r in records})
    images = _Images()
    out_dir = os.path.join(image_root, args.aug_dir)
    os.makedirs(out_dir, exist_ok=True)
    rows, sidecar, failed = [], [], 0
    row0 = len(base_raw) if not args.no_base else 0
    k = 0
    while len(sidecar) < args.num_images:
        if failed > 20 * args.num_images + 100:
            raise SystemExit(f"resvg relation_aug: only {len(sidecar)} of {args.num_images} images could be composed "
                             f"({failed} failed tries): instances too large for the canvas, or too few categories "
                             f"with clear relations; lower --instance_scale (--paste_scale) or --min_gap")
        rng = np.random.default_rng([int(args.seed), k])
        k += 1
        if args.background == "scene":
            made = _scene_sample(rng, args, scenes, scene_paths, cats, by_cat, images)
        else:
            made = _canvas_sample(rng, args, bg_sources, cats, by_cat, images)
        if made is None:
            failed += 1
            continue
        cat, canvas, boxes, masks, sources, pasted, scene = made
        H, W = canvas.shape[:2]
        n = len(boxes)
        rel = relations_of(boxes, W, H, args.min_gap, args.depth_ratio)
        options = [(i, r) for i in range(n) for r in rel[i] if r in wanted]
        if not options:
            failed += 1
            continue
        chosen = sorted(rng.choice(len(options), size=min(args.queries_per_image, len(options)), replace=False))
        name = f"{args.dataset}_{args.out_split}_{len(sidecar):07d}.png"
        Image.fromarray(canvas).save(os.path.join(out_dir, name), compress_level=1)
        img_file = f"{args.aug_dir}/{name}" if args.aug_dir else name
        queries = []
        for j in chosen:
            i, r = options[int(j)]
            tpl = TEMPLATES[r][int(rng.integers(len(TEMPLATES[r])))]
            text = tpl.format(c=cat)
            mask = masks[i]() if masks[i] is not None else None
            queries.append({"row": row0 + len(rows), "text": text, "target": i, "relation": r})
            rows.append(_row(args.dataset, img_file, boxes[i], text, H, W, mask))
        sidecar.append({"file": img_file, "category": cat, "height": H, "width": W, "boxes": boxes.tolist(),
                        "pasted": pasted, "sources": sources, "scene": scene, "queries": queries})
    items = ([] if args.no_base else list(base_raw)) + rows
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    import torch
    torch.save(items, out_path)
    with open(side_path, "w") as f:
        json.dump({"split_file": os.path.basename(out_path), "base_split": None if args.no_base else args.base_split,
                   "base_rows": 0 if args.no_base else len(base_raw), "instances_from": source,
                   "settings": {k: getattr(args, k) for k in ("seed", "min_instances", "max_instances",
                                                              "instance_scale", "min_gap", "depth_ratio",
                                                              "background", "paste_scale", "queries_per_image",
                                                              "relations")},
                   "images": sidecar}, f, indent=1)
    back = transvg_fmt.read_split(out_path, args.dataset, image_root=image_root, split=args.out_split)
    if len(back) != len(items):  # the reader raises on any malformed row; this guards the count
        raise DataError(f"{out_path}: wrote {len(items)} rows, read back {len(back)}")
    counts: Dict[str, int] = {}
    for s in sidecar:
        for q in s["queries"]:
            counts[q["relation"]] = counts.get(q["relation"], 0) + 1
    print(f"[relation_aug] wrote {out_path}: {len(items)} rows ({0 if args.no_base else len(base_raw)} from "
          f"{args.base_split} + {len(rows)} pseudo-queries on {len(sidecar)} composed images in {out_dir}); "
          f"relations {dict(sorted(counts.items()))}; {side_path}", flush=True)
    print(f"[relation_aug] its prior file: python -m resvg.prior_gen --dataset {args.dataset} --split {args.out_split} "
          f"--reuse_split {args.base_split} --split_root {args.out_root or args.split_root} --generator ... "
          f"--encoder ... --encoder_weights ...", flush=True)
    return {"split_file": out_path, "relations": side_path, "rows": len(items), "new_rows": len(rows),
            "images": len(sidecar), "relation_counts": counts}


# ----------------------------------------------------------------------------------------------- command line
def write_control(args, out_path: str) -> dict:
    """The same-budget control of an augmented list: as many rows of ``--base_split`` as the list
    ``--control_like`` holds, drawn at random without replacement (``--seed``), written as ``--out_split``.
    Training on base + control takes as many steps as training on base + augmented list, with real samples only."""
    check_split(args.dataset, args.control_like, official=False)
    root = args.out_root or args.split_root
    like_path = transvg_fmt.split_path(root, args.dataset, args.control_like)
    base_path = transvg_fmt.split_path(args.split_root, args.dataset, args.base_split)
    if not os.path.exists(like_path):
        raise DataError(f"{like_path}: not found (--control_like {args.control_like}: write that list first)")
    n = len(transvg_fmt.load_pth(like_path, trust_pickle=args.trust_pickle))
    base_raw = transvg_fmt.load_pth(base_path, trust_pickle=args.trust_pickle)
    if n > len(base_raw):
        raise DataError(f"{like_path}: {n} rows, more than the {len(base_raw)} of {base_path} to draw from")
    pick = random.Random(args.seed).sample(range(len(base_raw)), n)
    rows = [base_raw[i] for i in pick]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    import torch
    tmp = out_path + ".tmp"
    torch.save(rows, tmp)
    os.replace(tmp, out_path)
    print(f"[relation_aug] wrote {out_path}: {n} rows of {base_path} drawn at random (seed {args.seed}), "
          f"as many as {like_path} holds", flush=True)
    return {"split_file": out_path, "rows": n, "control_like": like_path}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("resvg.relation_aug", add_help=add_help,
                                description="ResVG relation-sensitive augmentation: composed multi-instance images "
                                            "+ spatial pseudo-queries, written as the new_train split",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="unc", choices=sorted(DATASET_SPLITS))
    g.add_argument("--split_root", default="./data", help="<split_root>/<dataset>/<dataset>_<split>.pth")
    g.add_argument("--out_root", default="", help="where the new split list goes (default --split_root)")
    g.add_argument("--data_root", default="./ln_data", help="images below it as ResVG finds them")
    g.add_argument("--image_root", default="", help="the dataset's image folder (overrides --data_root)")
    g.add_argument("--base_split", default="train", help="instances, backgrounds and the rows copied first")
    g.add_argument("--out_split", default="new_train", help="the split written")
    g.add_argument("--no_base", action="store_true", help="write only the new rows (not the base split's)")
    g.add_argument("--aug_dir", default="resvg_aug", help="folder below the image root for the composed images")
    g.add_argument("--instances", default="", help="COCO-format instances.json giving the instances, categories "
                   "and masks (default: the base split's own referents)")
    g.add_argument("--category_words", default="", help="comma list of category names looked up in the "
                   "expressions when the records carry no category")
    g.add_argument("--trust_pickle", action="store_true", help="unpickle split files fully: trusted files only")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output split")
    g.add_argument("--control_like", default="", metavar="SPLIT",
                   help="write no images: --out_split gets as many rows of --base_split, drawn at random, as the "
                        "list SPLIT holds (the same-budget control of training with that list)")
    g = p.add_argument_group("composition")
    g.add_argument("--num_images", type=int, default=1000, help="composed images")
    g.add_argument("--min_instances", type=int, default=2, help="instances per image, at least")
    g.add_argument("--max_instances", type=int, default=4, help="instances per image, at most")
    g.add_argument("--instance_scale", type=float, nargs=2, default=(0.15, 0.45), metavar=("LOW", "HIGH"),
                   help="long side of a pasted instance as a fraction of the image's short side")
    g.add_argument("--min_instance_size", type=float, default=16.0, help="smaller instances (box long side, px) "
                   "are not used")
    g.add_argument("--max_canvas", type=int, default=640, help="long side of the composed image at most")
    g.add_argument("--background", default="blur", choices=("blur", "texture", "scene"),
                   help="blur: an image of the base split blurred beyond recognition; texture: procedural; scene: "
                        "an image of the base split as it is, its objects kept and counted (needs --instances)")
    g.add_argument("--paste_scale", type=float, nargs=2, default=(1.0, 1.0), metavar=("LOW", "HIGH"),
                   help="--background scene: a pasted instance's size relative to the image's short side, as a "
                        "factor of that in its own image (1 1: as large, relative to its image, as it was)")
    g.add_argument("--blur", type=float, default=0.06, help="Gaussian blur radius as a fraction of the long side")
    g.add_argument("--queries_per_image", type=int, default=4, help="pseudo-queries kept per image, at most")
    g.add_argument("--relations", default="", metavar="R1,R2,...",
                   help=f"the relations pseudo-queries may use (default all: {','.join(RELATIONS)})")
    g.add_argument("--min_gap", type=float, default=0.05, help="gap between neighbouring centres a spatial word "
                   "needs, as a fraction of the image side")
    g.add_argument("--depth_ratio", type=float, default=1.5, help="area ratio front/behind need")
    g.add_argument("--seed", type=int, default=0, help="image k is drawn from the stream (seed, k)")
    return p


def main(argv=None) -> dict:
    return augment(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    main()
