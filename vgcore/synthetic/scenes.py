"""Procedural referring-expression dataset ("synthetic shapes") for learning tests and quickstarts.

A scene is a small image (112-192 px sides, 11 sizes / 5 aspect ratios) on a cheap textured background
(gradient / blotchy noise / stripes / checker) holding 2-8 non-overlapping filled shapes (scene options: fewer
or larger shapes, e.g. single-object scenes for a curriculum's warm-up set).  Every shape is
a polygon rasterised **with pycocotools** (the same rasteriser every reader uses), so the stored polygons
reproduce the drawn pixels exactly and the box is tight around them (xyxy, pixel-edge coordinates:
x2 = last column + 1).

Closed vocabulary (``VOCAB``): kinds circle/square/triangle/star/diamond/cross, colours
red/green/blue/yellow/purple/orange/white, sizes small/large, positions left/right/top/bottom.

Expressions are *programs* (JSON dicts, kept in ``Record.extra["program"]``) realised to text by a small
grammar, and ``parse_expression`` maps text back to a program.  ``evaluate(program, objects)`` gives the
referred set (a tuple of object indices), ``()`` for no-target, or ``None`` when the expression is
ill-defined in that scene (ambiguous "the", positions closer than a margin, ...).  A record is only
emitted when the evaluation equals its target set, so every expression is unambiguous by construction,
and tests can re-check this from the text alone.

Program types and templates (np = "[size] [colour] kind|shape", plural for sets):
  attr     "the {np}"                                   unique match
  extreme  "the far left {np}" | "the {np} on the far right" | "the top {np}" | "the {np} at the bottom"
  ordinal  "the second|third {np} from the left|right|top|bottom"
  rel      "the {np} to the left of|to the right of|above|below the {anchor np}"
  set      "all {nps}" | "both {nps}" | "the two|three {nps}"          (GREC only; multi-target)
  no-target: attr / rel / set whose evaluation is empty                  (GREC only)
Horizontal words are left/right (so a horizontal flip with left<->right swapping stays correct); vertical
relations use above/below/top/bottom which a horizontal flip does not change.

Splits: train / val / testA / testB.  testA refers only to "round-ish" kinds (circle, star, cross), testB
only to "angular" kinds (square, triangle, diamond) -- the analogue of RefCOCO's people/objects split.

Determinism: image ``i`` of split ``s`` is drawn from ``np.random.default_rng([seed, code(s), i])``; the
same seed gives identical records and identical PNG bytes.

Command line::

    python -m vgcore.synthetic --out DIR [--num-train N --num-val N --num-test N --seed S
                                      --formats transvg,refer,seqtr --grec
                                      --min-objects 3 --max-objects 8 --object-scale 1]

Layout written under DIR (see ``generate``)::

    images/COCO_train2014_<image_id:012d>.png          all images (PNG, compress_level=1; or real JPEGs named
                                                        .jpg with image_format="jpg", so SeqTR/SimVG's derived
                                                        COCO file names resolve without any override)
    scenes.json                                         image_id -> size + every object (sidecar for baselines)
    split/data/unc/unc_<split>.pth                      TransVG/HiVG split files (HiVG variant: size dict + polygons)
    split/data/gref_umd/gref_umd_<train|val|test>.pth   same records, RefCOCOg-umd-like splits (test = testA + testB)
    refer/refcoco/refs(unc).p + instances.json          lichengunc refer layout (every object of the images)
    seqtr/annotations/refcoco-unc/instances.json        SeqTR / SimVG layout
    seqtr/annotations/grefs/instances.json              (--grec) gRefCOCO-style multi/no-target split
    refer/grefcoco/grefs(unc).json + instances.json     (--grec) gRefCOCO refer layout
    tokenizers/vocab.txt, tokenizers/spm.model          WordPiece vocab and sentencepiece model of the corpus
    meta.json                                           vocabulary, category ids, counts, seed, baselines

Record conventions (``make_records``): boxes [N, 4] xyxy; mask = COCO polygons (union of the targets' polygons
for multi-target, None for no-target); ann_id int (single), list (multi), ``[-1]`` (no-target); category =
the target kind (None for a multi-target set of mixed kinds).  ``extra``: ``objects`` (every object of the
scene: id, category, category_id, color, size, box xyxy, area, segmentation), ``program``, ``expr_type``
(attr/extreme/ordinal/rel/set/none), ``noun`` (kind the expression names, None = "shape"), ``target_index``
(indices into objects), ``has_distractor`` (single target with another object of its kind in the image).
In the REC splits every record is single-target; the grec splits mix ~55% single, ~25% multi, ~20% none.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from ..data.formats.refer import write_refer
from ..data.formats.seqtr import write_seqtr
from ..data.formats.transvg import write_split
from ..data.masks import decode_mask
from ..data.sample import Record
from ..text import build_wordpiece_vocab, train_sentencepiece

__all__ = [
    "KINDS", "COLORS", "SIZES", "VOCAB", "SPLITS", "KIND_GROUPS", "CATEGORY_IDS",
    "make_scene", "make_records", "make_scenes", "generate", "load_synthetic", "evaluate", "parse_expression",
    "EXPR_TYPES", "expression_type",
    "TAG_CLASSES", "scene_tag_maps", "patch_tags",
    "realise", "image_file_name", "objects_of", "main",
]

# ----------------------------------------------------------------------------------------------- vocabulary
KINDS = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "diamond": "diamonds", "cross": "crosses", None: "shapes"}
SINGULARS = {v: k for k, v in PLURALS.items()}
COLORS = {  # name -> RGB
    "red": (215, 35, 35), "green": (40, 175, 60), "blue": (40, 80, 230), "yellow": (240, 220, 30),
    "purple": (150, 45, 200), "orange": (250, 135, 15), "white": (245, 245, 245),
}
SIZES = ("small", "large")
CATEGORY_IDS = {k: i + 1 for i, k in enumerate(KINDS)}
KIND_GROUPS = {"testA": ("circle", "star", "cross"), "testB": ("square", "triangle", "diamond")}
SPLITS = ("train", "val", "testA", "testB")
SPLIT_CODES = {"train": 1, "val": 2, "testA": 3, "testB": 4}
GREC_OFFSET = 4  # grec split codes are 5..8 (separate images)
ORDINALS = {2: "second", 3: "third"}
COUNT_WORDS = {2: "two", 3: "three"}
REL_WORDS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
VOCAB = {
    "kinds": list(KINDS), "colors": list(COLORS), "sizes": list(SIZES),
    "positions": ["left", "right", "top", "bottom"], "relations": list(REL_WORDS),
    "ordinals": list(ORDINALS.values()), "counts": list(COUNT_WORDS.values()),
}
IMAGE_SIZES = ((128, 128), (144, 144), (160, 160), (160, 120), (120, 160), (192, 128), (128, 192),
               (192, 144), (144, 192), (176, 112), (112, 176))  # (W, H)
SMALL_R = (0.085, 0.105)  # circumradius as a fraction of min(W, H)
LARGE_R = (0.150, 0.180)
POS_MARGIN = 0.06  # extremes/ordinals need this gap (fraction of W or H) to their neighbours

# -------------------------------------------------------------------------------------------------- drawing


def _round(poly):
    return [round(float(v), 2) for v in poly]


def shape_polygon(kind: str, cx: float, cy: float, r: float) -> list:
    """One flat polygon [x1, y1, x2, y2, ...] (pixel coordinates) of a shape centred at (cx, cy), size r."""
    if kind == "circle":
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    elif kind == "square":
        a = 0.8 * r
        pts = np.array([[cx - a, cy - a], [cx + a, cy - a], [cx + a, cy + a], [cx - a, cy + a]])
    elif kind == "diamond":
        pts = np.array([[cx, cy - r], [cx + 0.85 * r, cy], [cx, cy + r], [cx - 0.85 * r, cy]])
    elif kind == "triangle":
        pts = np.array([[cx, cy - r], [cx + 0.95 * r, cy + 0.75 * r], [cx - 0.95 * r, cy + 0.75 * r]])
    elif kind == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.5 * r)
        pts = np.stack([cx + rad * np.cos(t), cy + 0.05 * r + rad * np.sin(t)], 1)
    elif kind == "cross":
        a, b = 0.9 * r, 0.32 * r
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b],
                        [-a, b], [-a, -b], [-b, -b]]) + [cx, cy]
    else:
        raise ValueError(f"unknown shape kind {kind!r}; known: {KINDS}")
    return _round(pts.reshape(-1))


def polygons_to_rle(polys: list, h: int, w: int) -> dict:
    return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))


def _hsv_to_rgb(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32) * 255


def _muted(rng):
    return _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.22, 0.58))


def make_background(rng, h: int, w: int) -> np.ndarray:
    """A muted textured background, float32 [h, w, 3] in 0..255 (gradient, blotches, stripes, checker)."""
    c1, c2 = _muted(rng), _muted(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:  # linear gradient at a random angle
        a = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(a) + yy * np.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    elif kind == 1:  # blotchy low-frequency noise (bilinear upsampling of a coarse grid)
        g = rng.random((5, 5)).astype(np.float32)
        gy, gx = yy / max(h - 1, 1) * 4, xx / max(w - 1, 1) * 4
        y0, x0 = np.minimum(gy.astype(int), 3), np.minimum(gx.astype(int), 3)
        fy, fx = gy - y0, gx - x0
        t = (g[y0, x0] * (1 - fy) * (1 - fx) + g[y0 + 1, x0] * fy * (1 - fx)
             + g[y0, x0 + 1] * (1 - fy) * fx + g[y0 + 1, x0 + 1] * fy * fx)
    elif kind == 2:  # stripes
        a = rng.uniform(0, np.pi)
        period = rng.uniform(6, 20)
        t = 0.5 + 0.5 * np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period)
    else:  # checker
        s = int(rng.integers(6, 17))
        t = (((xx // s) + (yy // s)) % 2).astype(np.float32)
    img = c1 + (c2 - c1) * t[..., None]
    # grain at half resolution (2x2 blocks): keeps the texture while PNGs stay small (~4x smaller)
    grain = rng.normal(0, 6, size=((h + 1) // 2, (w + 1) // 2, 1)).astype(np.float32)
    img += np.repeat(np.repeat(grain, 2, 0), 2, 1)[:h, :w]
    return img


def make_scene(rng, n_min: int = 3, n_max: int = 8, object_scale: float = 1.0):
    """Sample one scene: returns (image uint8 [H, W, 3], objects).

    objects: list of dicts {kind, color, size, polygons, box (xyxy, tight), area (pixels), cx, cy}; shapes
    never overlap (boxes keep >= 3 px apart), so each mask is exactly the drawn pixels of its colour.
    ``n_min``..``n_max`` bounds the number of shapes tried (a shape that finds no free spot is dropped);
    ``object_scale`` multiplies every circumradius (curricula and diagnostics; 1 = the default dataset).  With
    the defaults the random stream, hence every scene, is the one of the default dataset.
    """
    w, h = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    smin = min(w, h)
    n_target = int(rng.choice(np.arange(2, 9), p=[0.02, 0.10, 0.18, 0.22, 0.20, 0.16, 0.12]))
    n_target = max(n_min, min(n_max, n_target))
    # few distinct kinds and colours per scene so same-kind distractors are common
    kinds = rng.choice(KINDS, size=int(rng.integers(2, 4)), replace=False)
    colors = rng.choice(list(COLORS), size=int(rng.integers(2, 5)), replace=False)
    img = make_background(rng, h, w)
    objs, boxes = [], []
    for _ in range(n_target):
        kind = str(rng.choice(kinds)) if rng.random() < 0.85 else str(rng.choice(KINDS))
        color = str(rng.choice(colors)) if rng.random() < 0.85 else str(rng.choice(list(COLORS)))
        size = SIZES[int(rng.random() < 0.45)]
        lo, hi = LARGE_R if size == "large" else SMALL_R
        r = rng.uniform(lo, hi) * smin * object_scale
        for _try in range(40):
            cx, cy = rng.uniform(r + 1, w - r - 1), rng.uniform(r + 1, h - r - 1)
            b = (cx - r - 3, cy - r - 3, cx + r + 3, cy + r + 3)
            if all(b[2] <= o[0] or o[2] <= b[0] or b[3] <= o[1] or o[3] <= b[1] for o in boxes):
                break
        else:
            continue
        boxes.append(b)
        poly = shape_polygon(kind, cx, cy, r)
        rle = polygons_to_rle([poly], h, w)
        m = mask_utils.decode(rle).astype(bool)
        x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
        rgb = np.array(COLORS[color], np.float32) + rng.uniform(-12, 12, 3).astype(np.float32)
        img[m] = rgb
        box = [x, y, x + bw, y + bh]
        objs.append({"kind": kind, "color": color, "size": size, "polygons": [poly], "box": box,
                     "area": int(m.sum()), "cx": (box[0] + box[2]) / 2, "cy": (box[1] + box[3]) / 2})
    return np.clip(img, 0, 255).round().astype(np.uint8), objs


# ---------------------------------------------------------------------------------------------- semantics


def _np(kind=None, color=None, size=None, plural=False) -> dict:
    return {"kind": kind, "color": color, "size": size, "plural": plural}


def _matches(np_, objs) -> list:
    return [i for i, o in enumerate(objs)
            if (np_.get("kind") is None or o["kind"] == np_["kind"])
            and (np_.get("color") is None or o["color"] == np_["color"])
            and (np_.get("size") is None or o["size"] == np_["size"])]


def _coord(o, d):
    return o["cx"] if d in ("left", "right") else o["cy"]


def evaluate(program: dict, objects: Sequence[dict], width: float, height: float) -> Optional[tuple]:
    """The sorted tuple of object indices a program refers to; () = no target; None = ill-defined.

    objects need kind (or category), color, size and box (xyxy); centres are taken from the boxes.
    Conventions: y grows downwards ("top" = smallest centre y).  Extremes / ordinals need the referent's
    centre coordinate to differ by >= POS_MARGIN * (W or H) from its neighbours in the ordering.  "A to
    the left of B" holds when A.x2 <= B.x1 and clearly fails when A.cx >= B.cx (similarly for the other
    relations); a candidate in between makes the expression ill-defined.  Singular "the" needs a unique
    referent; "both"/"two"/"three" need exactly that count; "all" needs >= 2 (or 0: no target).
    """
    objs = [dict(o, kind=o.get("kind", o.get("category")), cx=(o["box"][0] + o["box"][2]) / 2,
                 cy=(o["box"][1] + o["box"][3]) / 2) for o in objects]
    t = program["type"]
    cand = _matches(program["np"], objs)
    if t == "attr":
        return tuple(cand) if len(cand) <= 1 else None
    if t == "set":
        det = program["det"]
        if len(cand) == 0:
            return ()
        need = {"both": 2, "two": 2, "three": 3}.get(det)
        if (need is not None and len(cand) != need) or len(cand) < 2:
            return None
        return tuple(cand)
    if t in ("extreme", "ordinal"):
        d = program["dir"]
        k = program.get("k", 1)
        if len(cand) == 0:
            return ()
        if len(cand) < (2 if t == "extreme" else k + 1):
            return None
        sign = 1.0 if d in ("left", "top") else -1.0
        order = sorted(cand, key=lambda i: sign * _coord(objs[i], d))
        vals = [_coord(objs[i], d) for i in order]
        margin = POS_MARGIN * (width if d in ("left", "right") else height)
        j = k - 1
        if j > 0 and abs(vals[j] - vals[j - 1]) < margin:
            return None
        if j + 1 < len(vals) and abs(vals[j + 1] - vals[j]) < margin:
            return None
        return (order[j],)
    if t == "rel":
        anchors = _matches(program["anchor"], objs)
        if len(anchors) != 1:
            return None
        a = objs[anchors[0]]
        rel = program["rel"]
        out = []
        for i in cand:
            if i == anchors[0]:
                continue
            o = objs[i]
            if rel == "left":
                yes, no = o["box"][2] <= a["box"][0], o["cx"] >= a["cx"]
            elif rel == "right":
                yes, no = o["box"][0] >= a["box"][2], o["cx"] <= a["cx"]
            elif rel == "above":
                yes, no = o["box"][3] <= a["box"][1], o["cy"] >= a["cy"]
            else:
                yes, no = o["box"][1] >= a["box"][3], o["cy"] <= a["cy"]
            if yes:
                out.append(i)
            elif not no:
                return None
        if len(out) > 1:
            return None
        return tuple(out)
    raise ValueError(f"unknown program type {t!r}")


# ----------------------------------------------------------------------------------------- text <-> program


def _np_text(np_: dict) -> str:
    words = [np_.get("size"), np_.get("color"),
             PLURALS[np_.get("kind")] if np_.get("plural") else (np_.get("kind") or "shape")]
    return " ".join(w for w in words if w)


def realise(p: dict) -> str:
    """Program -> expression text (lower case, single spaces)."""
    t, n = p["type"], _np_text(p["np"])
    if t == "attr":
        return f"the {n}"
    if t == "extreme":
        d = p["dir"]
        if d in ("left", "right"):
            return f"the far {d} {n}" if p.get("form", 0) == 0 else f"the {n} on the far {d}"
        return f"the {d} {n}" if p.get("form", 0) == 0 else f"the {n} at the {d}"
    if t == "ordinal":
        return f"the {ORDINALS[p['k']]} {n} from the {p['dir']}"
    if t == "rel":
        return f"the {n} {REL_WORDS[p['rel']]} the {_np_text(p['anchor'])}"
    if t == "set":
        return f"{p['det']} {n}" if p["det"] in ("all", "both") else f"the {p['det']} {n}"
    raise ValueError(f"unknown program type {t!r}")


def _parse_np(text: str) -> dict:
    words = text.split()
    if not words:
        raise ValueError("empty noun phrase")
    head = words[-1]
    if head in SINGULARS:
        kind, plural = SINGULARS[head], True
    elif head in KINDS or head == "shape":
        kind, plural = (None if head == "shape" else head), False
    else:
        raise ValueError(f"unknown noun {head!r}")
    np_ = _np(kind=kind, plural=plural)
    for w in words[:-1]:
        if w in COLORS and np_["color"] is None:
            np_["color"] = w
        elif w in SIZES and np_["size"] is None:
            np_["size"] = w
        else:
            raise ValueError(f"unexpected modifier {w!r} in {text!r}")
    return np_


_PATTERNS = [
    (re.compile(r"^the (second|third) (.+) from the (left|right|top|bottom)$"),
     lambda m: {"type": "ordinal", "np": _parse_np(m[2]), "dir": m[3],
                "k": {v: k for k, v in ORDINALS.items()}[m[1]]}),
    (re.compile(r"^the (.+?) (to the left of|to the right of|above|below) the (.+)$"),
     lambda m: {"type": "rel", "np": _parse_np(m[1]), "anchor": _parse_np(m[3]),
                "rel": {v: k for k, v in REL_WORDS.items()}[m[2]]}),
    (re.compile(r"^the far (left|right) (.+)$"),
     lambda m: {"type": "extreme", "np": _parse_np(m[2]), "dir": m[1], "form": 0}),
    (re.compile(r"^the (.+) on the far (left|right)$"),
     lambda m: {"type": "extreme", "np": _parse_np(m[1]), "dir": m[2], "form": 1}),
    (re.compile(r"^the (top|bottom) (.+)$"),
     lambda m: {"type": "extreme", "np": _parse_np(m[2]), "dir": m[1], "form": 0}),
    (re.compile(r"^the (.+) at the (top|bottom)$"),
     lambda m: {"type": "extreme", "np": _parse_np(m[1]), "dir": m[2], "form": 1}),
    (re.compile(r"^(all|both) (.+)$"), lambda m: {"type": "set", "np": _parse_np(m[2]), "det": m[1]}),
    (re.compile(r"^the (two|three) (.+)$"), lambda m: {"type": "set", "np": _parse_np(m[2]), "det": m[1]}),
    (re.compile(r"^the (.+)$"), lambda m: {"type": "attr", "np": _parse_np(m[1])}),
]


def parse_expression(text: str) -> dict:
    """Expression text of this grammar -> program (inverse of `realise`); ValueError if not in the grammar."""
    s = " ".join(text.lower().split())
    for pat, build in _PATTERNS:
        m = pat.match(s)
        if m:
            return build(m)
    raise ValueError(f"expression not in the synthetic grammar: {text!r}")


EXPR_TYPES = ("attr", "extreme", "ordinal", "rel", "set", "none")


def expression_type(record) -> str:
    """The program type of a synthetic record's expression (attr / extreme / ordinal / rel / set, "none" for a
    no-target expression): ``extra["expr_type"]`` when the record carries it (records made in memory), else
    parsed from the text (records read back from a split file, whose formats do not keep it); "other" for a
    text outside the grammar (not synthetic data)."""
    extra = record.extra if isinstance(record.extra, dict) else {}
    if extra.get("expr_type"):
        return str(extra["expr_type"])
    if getattr(record, "num_targets", 1) == 0:
        return "none"
    try:
        return parse_expression(record.expression)["type"]
    except ValueError:
        return "other"


# ------------------------------------------------------------------------------------- expression sampling


def _np_options(o: dict) -> list:
    k, c, s = o["kind"], o["color"], o["size"]
    return [_np(k), _np(k, c), _np(k, None, s), _np(k, c, s)]


def _unique_np(objs, i, rng) -> Optional[dict]:
    """The shortest attribute NP that singles out object i (random among equally short), or None."""
    ok = [n for n in _np_options(objs[i]) if _matches(n, objs) == [i]]
    if not ok:
        return None
    best = min(sum(v is not None for v in (n["color"], n["size"])) for n in ok)
    ok = [n for n in ok if sum(v is not None for v in (n["color"], n["size"])) == best]
    return ok[int(rng.integers(len(ok)))]


TYPE_WEIGHTS = {"attr": 1.0, "extreme": 1.0, "ordinal": 0.6, "rel": 1.3}


def single_programs(objs, t, w, h, rng) -> dict:
    """All programs (by type) whose evaluation is exactly (t,), minimal first within each type."""
    out = {k: [] for k in TYPE_WEIGHTS}
    opts = _np_options(objs[t])
    for n in opts:
        p = {"type": "attr", "np": n}
        if evaluate(p, objs, w, h) == (t,):
            out["attr"].append(p)
    for n in opts[:3]:
        for d in ("left", "right", "top", "bottom"):
            p = {"type": "extreme", "np": n, "dir": d, "form": int(rng.integers(2))}
            if evaluate(p, objs, w, h) == (t,):
                out["extreme"].append(p)
    for n in opts[:2]:
        for k in (2, 3):
            for d in ("left", "right", "top", "bottom"):
                p = {"type": "ordinal", "np": n, "dir": d, "k": k}
                if evaluate(p, objs, w, h) == (t,):
                    out["ordinal"].append(p)
    for a in range(len(objs)):
        if a == t:
            continue
        anp = _unique_np(objs, a, rng)
        if anp is None:
            continue
        for n in opts[:2]:
            for rel in REL_WORDS:
                p = {"type": "rel", "np": n, "anchor": anp, "rel": rel}
                if evaluate(p, objs, w, h) == (t,):
                    out["rel"].append(p)
    return out


def _pick(rng, progs: dict, exclude_types=()) -> Optional[dict]:
    types = [k for k, v in progs.items() if v and k not in exclude_types]
    if not types:
        return None
    wts = np.array([TYPE_WEIGHTS[k] for k in types])
    k = types[int(rng.choice(len(types), p=wts / wts.sum()))]
    cands = progs[k]
    if k == "rel":  # relations: any anchor, but prefer the plain target noun
        plain = [p for p in cands if p["np"]["color"] is None]
        cands = plain if plain and rng.random() < 0.7 else cands
        return cands[int(rng.integers(len(cands)))]
    return cands[0] if rng.random() < 0.6 else cands[int(rng.integers(len(cands)))]


def multi_programs(objs, w, h, rng) -> list:
    """Set programs with >= 2 referents ('all red shapes', 'both circles', 'the three large stars')."""
    nps, seen = [], set()
    for o in objs:
        for n in (_np(o["kind"]), _np(None, o["color"]), _np(o["kind"], o["color"]), _np(o["kind"], None, o["size"]),
                  _np(None, o["color"], o["size"])):
            key = (n["kind"], n["color"], n["size"])
            if key not in seen:
                seen.add(key)
                nps.append(dict(n, plural=True))
    out = []
    for n in nps:
        m = _matches(n, objs)
        if len(m) < 2:
            continue
        dets = ["all"] + (["both", "two"] if len(m) == 2 else ["three"] if len(m) == 3 else [])
        p = {"type": "set", "np": n, "det": dets[int(rng.integers(len(dets)))]}
        if evaluate(p, objs, w, h) == tuple(m):
            out.append(p)
    return out


def no_target_program(objs, w, h, rng) -> Optional[dict]:
    """An expression that refers to nothing in the scene: an absent colour/kind combination, or a
    relation no candidate satisfies (all candidates clearly fail it)."""
    for _ in range(20):
        r = rng.random()
        if r < 0.6:  # a present kind in an absent colour (or an absent kind)
            kind = objs[int(rng.integers(len(objs)))]["kind"] if rng.random() < 0.75 else str(rng.choice(KINDS))
            p = {"type": "attr", "np": _np(kind, str(rng.choice(list(COLORS))))}
        elif r < 0.75:
            kind = str(rng.choice(KINDS))
            p = {"type": "set", "np": _np(kind, str(rng.choice(list(COLORS))), plural=True), "det": "all"}
        else:
            o = objs[int(rng.integers(len(objs)))]
            a = int(rng.integers(len(objs)))
            anp = _unique_np(objs, a, rng)
            if anp is None:
                continue
            p = {"type": "rel", "np": _np(o["kind"]), "anchor": anp, "rel": str(rng.choice(list(REL_WORDS)))}
        if evaluate(p, objs, w, h) == ():
            return p
    return None


# --------------------------------------------------------------------------------------------- records


def image_file_name(image_id: int, ext: str = "png") -> str:
    """COCO-style file name (``COCO_train2014_%012d.<ext>``): the digits give the image id back to every reader."""
    return f"COCO_train2014_{int(image_id):012d}.{ext}"


def _split_code(split: str, grec: bool) -> int:
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return SPLIT_CODES[split] + (GREC_OFFSET if grec else 0)


def _public_objects(objs, image_id) -> list:
    return [{"id": image_id * 100 + i + 1, "category": o["kind"], "category_id": CATEGORY_IDS[o["kind"]],
             "color": o["color"], "size": o["size"], "box": [float(v) for v in o["box"]], "area": o["area"],
             "segmentation": o["polygons"]} for i, o in enumerate(objs)]


def objects_of(record: Record) -> list:
    """The scene's objects of a record (``extra["objects"]``): dicts with category, box (xyxy), ...;
    accepts the (category, xyxy) tuple form too.  Raises if the record carries no objects."""
    objs = record.extra.get("objects") if isinstance(record.extra, dict) else None
    if objs is None:
        raise ValueError(f"record {record.key()} has no extra['objects']; load it with load_synthetic() "
                         f"or attach scenes.json")
    return [o if isinstance(o, dict) else {"category": o[0], "box": list(o[1])} for o in objs]


def _records_for_image(rng, objs, image_id, split, w, h, grec, file_name):
    """Refs (1-3 per image, 1-2 sentences each) for one scene -> list of Records."""
    public = _public_objects(objs, image_id)
    group = KIND_GROUPS.get(split)
    n_refs = int(rng.integers(1, 4))
    has_dis = np.array([sum(p["kind"] == o["kind"] for p in objs) > 1 for o in objs])
    weights = np.where(has_dis, 4.0, 1.0)
    if group is not None:
        weights = weights * np.array([o["kind"] in group for o in objs])
    recs, used = [], set()
    for ref_idx in range(n_refs):
        mode = "single"
        if grec:
            r = rng.random()
            mode = "single" if r < 0.55 else "multi" if r < 0.80 else "none"
        sentences = []
        if mode == "single":
            wts = weights.copy()
            wts[list(used)] = 0
            if wts.sum() == 0:
                continue
            t = int(rng.choice(len(objs), p=wts / wts.sum()))
            progs = single_programs(objs, t, w, h, rng)
            p1 = _pick(rng, progs)
            if p1 is None:
                continue
            used.add(t)
            sentences.append(p1)
            if rng.random() < 0.5:
                p2 = _pick(rng, progs, exclude_types=(p1["type"],))
                if p2 is not None:
                    sentences.append(p2)
            targets = (t,)
        elif mode == "multi":
            progs = multi_programs(objs, w, h, rng)
            if group is not None:
                progs = [p for p in progs if p["np"]["kind"] in group]
            if not progs:
                continue
            sentences.append(progs[int(rng.integers(len(progs)))])
            targets = evaluate(sentences[0], objs, w, h)
        else:
            p = no_target_program(objs, w, h, rng)
            if p is None:
                continue
            sentences.append(p)
            targets = ()
        ref_id = image_id * 10 + ref_idx
        for s_idx, prog in enumerate(sentences):
            text = realise(prog)
            boxes = np.array([objs[i]["box"] for i in targets], np.float32).reshape(-1, 4)
            if len(targets) == 1:
                ann_id, mask, cat = public[targets[0]]["id"], objs[targets[0]]["polygons"], objs[targets[0]]["kind"]
            else:
                ann_id = [public[i]["id"] for i in targets] or [-1]
                mask = [poly for i in targets for poly in objs[i]["polygons"]] or None
                kinds = {objs[i]["kind"] for i in targets}
                cat = kinds.pop() if len(kinds) == 1 else None
            noun = prog["np"]["kind"]
            recs.append(Record(
                image_path=file_name, expression=text, boxes=boxes, image_id=image_id, mask=mask,
                ref_id=ref_id, ann_id=ann_id, sent_id=ref_id * 10 + s_idx, category=cat, height=h, width=w,
                dataset="synthetic" + ("_grec" if grec else ""), split=split,
                extra={"objects": public, "program": prog, "expr_type": prog["type"] if targets else "none",
                       "noun": noun, "target_index": list(targets),
                       "has_distractor": bool(len(targets) == 1 and has_dis[targets[0]])}))
    return recs


def _check_scene_options(min_objects: int, max_objects: int, object_scale: float) -> None:
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"scene options: need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if not object_scale > 0:
        raise ValueError(f"scene options: object_scale must be > 0, got {object_scale}")


def make_records(num: int, seed: int = 0, split: str = "train", grec: bool = False,
                 image_dir: Optional[str] = None, image_format: str = "png", min_objects: int = 3,
                 max_objects: int = 8, object_scale: float = 1.0):
    """Generate `num` records of one split in memory.

    ``min_objects`` / ``max_objects`` / ``object_scale``: scene options of `make_scene` (defaults = the default
    dataset).  A scene is kept when at least ``min(min_objects, 2)`` shapes fit, so ``min_objects=1,
    max_objects=1`` gives single-object scenes (every expression then refers to the only shape).

    Returns (records, images) with images = {file_name: uint8 array [H, W, 3]}.  Record.image_path is the
    bare file name, or ``image_dir/file_name`` when image_dir is given.  Records of one image are
    consecutive; the last image may contribute fewer of its refs so the count is exactly `num`.
    """
    _check_scene_options(min_objects, max_objects, object_scale)
    records, images = [], {}
    code = _split_code(split, grec)
    for rng, image_id, fname, img, objs in _scenes(seed, code, min_objects, max_objects, object_scale, image_format):
        if len(records) >= num:
            break
        path = os.path.join(image_dir, fname) if image_dir else fname
        recs = _records_for_image(rng, objs, image_id, split, img.shape[1], img.shape[0], grec, path)
        if not recs:
            continue
        recs = recs[: num - len(records)]
        records.extend(recs)
        images[fname] = img
    return records, images


def _scenes(seed: int, code: int, min_objects: int, max_objects: int, object_scale: float, image_format: str):
    """The scene stream of one split: (rng, image_id, file name, image, objects) of every kept scene.  A scene
    is kept when at least ``min(min_objects, 2)`` shapes fit; ``rng`` continues the scene's own stream."""
    keep_at_least = min(min_objects, 2)
    for idx in range(1_000_000):
        rng = np.random.default_rng([int(seed), code, idx])
        img, objs = make_scene(rng, min_objects, max_objects, object_scale)
        if len(objs) >= keep_at_least:
            image_id = code * 1_000_000 + idx  # all ids (image, ann, ref, sent) stay < 2**31
            yield rng, image_id, image_file_name(image_id, image_format), img, objs
    raise ValueError("synthetic: at most 1,000,000 images per split")


def make_scenes(num: int, seed: int = 0, split: str = "train", min_objects: int = 3, max_objects: int = 8,
                object_scale: float = 1.0, image_format: str = "png"):
    """``num`` scenes without expressions (several times faster than `make_records`, e.g. for tag
    pretraining): (records, images), one `Record` per scene with an empty expression, ``boxes`` = every
    shape's box, and ``extra["objects"]`` as in `make_records`.  The scenes come from the random stream of
    `make_records` with the same arguments (same file names and images, without the expression draws)."""
    if num < 1:
        raise ValueError(f"make_scenes: num must be >= 1, got {num}")
    _check_scene_options(min_objects, max_objects, object_scale)
    records, images = [], {}
    scenes = _scenes(seed, _split_code(split, False), min_objects, max_objects, object_scale, image_format)
    while len(records) < num:
        _rng, image_id, fname, img, objs = next(scenes)
        public = _public_objects(objs, image_id)
        boxes = np.array([o["box"] for o in public], np.float32).reshape(-1, 4)
        records.append(Record(fname, "", boxes, image_id=image_id, height=img.shape[0], width=img.shape[1],
                              dataset="synthetic", split=split, extra={"objects": public}))
        images[fname] = img
    return records, images


# --------------------------------------------------------------------------------------------- writing


def _save_image(path, arr, image_format: str = "png"):
    from PIL import Image
    if image_format == "png":
        Image.fromarray(arr).save(path, format="PNG", compress_level=1)
    else:
        Image.fromarray(arr).save(path, format="JPEG", quality=95, subsampling=0)


def _corpus_extra() -> list:
    """Sentences covering the whole closed vocabulary (so tokenizers never see an unknown word)."""
    out = []
    for k in KINDS:
        for c in COLORS:
            for s in SIZES:
                out.append(f"the {s} {c} {k}")
            out.append(f"all {c} {PLURALS[k]}")
    for d in ("left", "right"):
        out.append(f"the far {d} shape on the far {d} to the {d} of")
    for d in ("top", "bottom"):
        out.append(f"the {d} shape at the {d} above below")
    out.append("both shapes the two shapes the three shapes the second shape from the third")
    return out


def _write_formats(out: Path, by_split: dict, grec_by_split: dict, formats: Sequence[str]) -> dict:
    written = {}
    if "transvg" in formats:
        files = []
        for split, recs in by_split.items():
            p = out / "split" / "data" / "unc" / f"unc_{split}.pth"
            p.parent.mkdir(parents=True, exist_ok=True)
            write_split(recs, str(p), "unc", variant="hivg")
            files.append(str(p.relative_to(out)))
        umd = {"train": by_split.get("train", []), "val": by_split.get("val", []),
               "test": by_split.get("testA", []) + by_split.get("testB", [])}
        for split, recs in umd.items():
            p = out / "split" / "data" / "gref_umd" / f"gref_umd_{split}.pth"
            p.parent.mkdir(parents=True, exist_ok=True)
            write_split([r.replace(split=split) for r in recs], str(p), "gref_umd", variant="hivg")
            files.append(str(p.relative_to(out)))
        written["transvg"] = files
    if "refer" in formats:
        allrec = [r for recs in by_split.values() for r in recs]
        write_refer(allrec, str(out / "refer"), "refcoco", "unc", categories=CATEGORY_IDS, grefs=False,
                    scene_objects=True)
        written["refer"] = ["refer/refcoco"]
        if grec_by_split:
            write_refer([r for recs in grec_by_split.values() for r in recs], str(out / "refer"),
                        "grefcoco", "unc", categories=CATEGORY_IDS, grefs=True, scene_objects=True)
            written["refer_grec"] = ["refer/grefcoco"]
    if "seqtr" in formats:
        p = out / "seqtr" / "annotations" / "refcoco-unc" / "instances.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_seqtr(by_split, str(p), grec=False)
        written["seqtr"] = [str(p.relative_to(out))]
        if grec_by_split:
            p = out / "seqtr" / "annotations" / "grefs" / "instances.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            write_seqtr(grec_by_split, str(p), grec=True)
            written["seqtr_grec"] = [str(p.relative_to(out))]
    return written


def _strip_spm_prefix(model_file: str) -> None:
    """sentencepiece stores the absolute output prefix in the model; drop the directory so the same seed gives
    the same bytes wherever the dataset is written (no-op if the protobuf module is unavailable)."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:
        return
    m = pb.ModelProto()
    with open(model_file, "rb") as f:
        m.ParseFromString(f.read())
    m.trainer_spec.model_prefix = os.path.basename(m.trainer_spec.model_prefix)
    with open(model_file, "wb") as f:
        f.write(m.SerializeToString(deterministic=True))


def _write_tokenizers(out: Path, sentences: list) -> dict:
    tdir = out / "tokenizers"
    tdir.mkdir(parents=True, exist_ok=True)
    res = {}
    build_wordpiece_vocab(sentences, str(tdir / "vocab.txt"))
    res["wordpiece"] = "tokenizers/vocab.txt"
    # BPE (as XLM-R's sentencepiece.bpe.model) with room for every word of the closed vocabulary as one piece
    model = train_sentencepiece(sentences, str(tdir / "spm"), 200, model_type="bpe")
    _strip_spm_prefix(model)
    res["sentencepiece"] = "tokenizers/spm.model"
    return res


def generate(out_dir, num_train: int = 2000, num_val: int = 500, num_test: int = 500, seed: int = 0,
             formats: Sequence[str] = ("transvg", "refer", "seqtr"), grec: bool = False,
             tokenizers: bool = True, image_format: str = "png", verbose: bool = True, min_objects: int = 3,
             max_objects: int = 8, object_scale: float = 1.0, train_types: Optional[Sequence[str]] = None) -> dict:
    """Generate the dataset on disk (layout in the module docstring) and return a summary dict.

    num_test is the size of each of testA and testB.  With grec=True a second, gRefCOCO-style dataset
    (single + multi-target + no-target expressions, its own images) of the same split sizes is written
    in the seqtr (``grefs``) and refer (``grefcoco/grefs(unc).json``) layouts.
    image_format "png" (default, lossless: pixels are exactly the drawn shapes) or "jpg" (quality 95, no chroma
    subsampling; smaller files and the .jpg names SimVG/SeqTR derive from image ids).
    min_objects / max_objects / object_scale: scene options (see `make_records`), recorded in meta.json
    ("scene_options"); the defaults give the default dataset, e.g. ``min_objects=max_objects=1`` a
    single-object warm-up set for a curriculum.
    train_types: the expression types (``EXPR_TYPES``) the written train split keeps, e.g. ("attr", "rel"): a
    train split without same-category position expressions, where they are as rare as in real data (the scenes,
    images and other splits are unchanged, and the tokenizers still read every train expression, so the
    vocabulary is that of the full dataset, as a real pretrained tokenizer's would be).
    """
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    _check_scene_options(min_objects, max_objects, object_scale)  # before anything is written
    if train_types is not None:
        train_types = tuple(t.strip() for t in train_types if t.strip())
        bad = sorted(set(train_types) - set(EXPR_TYPES))
        if bad or not train_types:
            raise ValueError(f"train_types: unknown {bad} (choose from {', '.join(EXPR_TYPES)})")
    t0 = time.time()
    log = print if verbose else (lambda *a, **k: None)
    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    formats = tuple(f.strip() for f in formats if f.strip())
    unknown = set(formats) - {"transvg", "refer", "seqtr"}
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; expected transvg, refer, seqtr")
    sizes = {"train": num_train, "val": num_val, "testA": num_test, "testB": num_test}
    scene_options = dict(min_objects=int(min_objects), max_objects=int(max_objects), object_scale=float(object_scale))
    by_split, grec_by_split, scenes = {}, {}, {}
    pending = []
    for g in ([False, True] if grec else [False]):
        for split, n in sizes.items():
            recs, imgs = make_records(n, seed, split, grec=g, image_dir=str(img_dir), image_format=image_format,
                                      **scene_options)
            (grec_by_split if g else by_split)[split] = recs
            for r in recs:
                scenes.setdefault(str(r.image_id), {"file_name": os.path.basename(r.image_path), "height": r.height,
                                                    "width": r.width, "objects": r.extra["objects"]})
            pending.extend((str(img_dir / k), v) for k, v in imgs.items())
    for path, arr in pending:
        _save_image(path, arr, image_format)
    t_img = time.time() - t0
    with open(out / "scenes.json", "w") as f:
        json.dump(scenes, f, sort_keys=True)
    all_train = by_split.get("train", [])
    if train_types is not None:
        by_split["train"] = [r for r in all_train if r.extra["expr_type"] in train_types]
    written = _write_formats(out, by_split, grec_by_split, formats)
    tok = {}
    if tokenizers:
        corpus = [r.expression for r in all_train] + _corpus_extra()
        if grec:
            corpus += [r.expression for r in grec_by_split.get("train", [])]
        tok = _write_tokenizers(out, corpus)
    from .baselines import noun_only_baseline, trivial_baselines

    def stats(recs, train):
        single = [r for r in recs if r.num_targets == 1]
        if not single:
            return {"records": len(recs)}
        s = {"records": len(recs), "images": len({r.image_id for r in recs}),
             "single_target": len(single), "multi_target": sum(r.num_targets > 1 for r in recs),
             "no_target": sum(r.num_targets == 0 for r in recs),
             "distractor_fraction": float(np.mean([r.extra["has_distractor"] for r in single])),
             "expr_types": {k: sum(r.extra["expr_type"] == k for r in recs)
                            for k in sorted({r.extra["expr_type"] for r in recs})}}
        s["baselines"] = dict(trivial_baselines(single, train_records=train), noun_only=noun_only_baseline(single))
        return s

    summary = {
        "name": "synthetic-shapes", "seed": int(seed), "vocab": VOCAB, "category_ids": CATEGORY_IDS,
        "colors_rgb": {k: list(v) for k, v in COLORS.items()}, "kind_groups": {k: list(v) for k, v in KIND_GROUPS.items()},
        "image_sizes_wh": [list(s) for s in IMAGE_SIZES], "box_format": "xyxy pixels, tight around drawn pixels",
        "splits": {s: stats(r, by_split.get("train")) for s, r in by_split.items()},
        "grec_splits": {s: stats(r, grec_by_split.get("train")) for s, r in grec_by_split.items()},
        "formats": written, "tokenizers": tok, "images_dir": "images", "scenes": "scenes.json",
        "image_format": image_format, "image_name": "COCO_train2014_%012d." + image_format,
        "datasets": {"transvg": ["unc", "gref_umd"], "refer": "refcoco/refs(unc).p",
                     "seqtr": "refcoco-unc", "seqtr_grec": "grefs"},
        "num_test_is_per_split": True, "scene_options": scene_options,
        "train_types": list(train_types) if train_types else None,
    }
    with open(out / "meta.json", "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    summary["seconds"] = {"images": round(t_img, 2), "total": round(time.time() - t0, 2)}
    log(f"[synthetic] wrote {sum(len(v) for v in by_split.values())} records "
        f"({len(scenes)} images) to {out} in {summary['seconds']['total']:.1f}s")
    return summary


# --------------------------------------------------------------------------------------------- reading


def _read_meta(out: Path) -> dict:
    p = out / "meta.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: not a synthetic dataset directory (run python -m vgcore.synthetic)")
    with open(p) as f:
        return json.load(f)


def _attach_objects(records: list, out: Path) -> list:
    with open(out / "scenes.json") as f:
        scenes = json.load(f)
    by_file = {v["file_name"]: v for v in scenes.values()}
    res = []
    for r in records:
        sc = by_file.get(os.path.basename(str(r.image_path)))
        if sc is None:
            raise KeyError(f"{out}/scenes.json has no scene for image {r.image_path!r} (record {r.key()})")
        extra = dict(r.extra) if isinstance(r.extra, dict) else {}
        extra["objects"] = sc["objects"]
        try:  # the kind the expression names (noun-only baseline), recovered from the text
            extra.setdefault("noun", parse_expression(r.expression)["np"]["kind"])
        except ValueError:
            pass
        res.append(r.replace(extra=extra))
    return res


def load_synthetic(out_dir, split: str, fmt: str = "transvg", grec: bool = False) -> list:
    """Records of one split read back through the official-format readers, with ``extra["objects"]``
    re-attached from scenes.json (so baselines work on them).  fmt: transvg | refer | seqtr."""
    out = Path(out_dir)
    img_root = str(out / "images")
    if fmt == "transvg":
        if grec:
            raise ValueError("the TransVG split files hold one box per sample: no grec variant (use refer or seqtr)")
        from ..data.formats import transvg
        recs = transvg.read_split(str(out / "split" / "data" / "unc" / f"unc_{split}.pth"), "unc", image_root=img_root)
    elif fmt == "refer":
        from ..data.formats import refer
        recs = refer.read_refer(str(out / "refer"), "grefcoco" if grec else "refcoco", "unc",
                                split=split, image_root=img_root)
    elif fmt == "seqtr":
        from ..data.formats import seqtr
        name = "grefs" if grec else "refcoco-unc"
        ext = _read_meta(out).get("image_format", "png")
        recs = seqtr.read_seqtr(str(out / "seqtr" / "annotations" / name / "instances.json"), split,
                                image_root=img_root, image_name_fn=lambda e: image_file_name(e["image_id"], ext))
    else:
        raise ValueError(f"unknown format {fmt!r}; expected transvg, refer or seqtr")
    return _attach_objects(list(recs), out)


# ------------------------------------------------------------------------------------------- dense tags
# Per-pixel / per-patch attribute labels of a scene, for pretraining a tiny image tower on the synthetic data
# (a stand-in for the CLIP / BEiT-3 pretraining the papers start from, which is not available offline).
TAG_CLASSES = {"kind": KINDS, "color": tuple(COLORS), "size": SIZES}  # label 0 = background, i + 1 = class i


def scene_tag_maps(objects: Sequence[dict], height: int, width: int) -> dict:
    """``{"kind", "color", "size"} -> int64 [height, width]`` label maps of one scene: 0 = background, ``i + 1``
    = ``TAG_CLASSES[field][i]``.  ``objects``: the scene's objects as stored in ``record.extra["objects"]``
    (category, color, size, segmentation polygons); shapes never overlap, so every pixel has one owner."""
    maps = {f: np.zeros((int(height), int(width)), np.int64) for f in TAG_CLASSES}
    for i, o in enumerate(objects):
        missing = [k for k in ("category", "color", "size", "segmentation") if k not in o]
        if missing:
            raise ValueError(f"scene_tag_maps: object {i} lacks {missing} (synthetic objects from make_records or "
                             f"load_synthetic carry them)")
        m = decode_mask(o["segmentation"], int(height), int(width)).astype(bool)
        for f, value in (("kind", o["category"]), ("color", o["color"]), ("size", o["size"])):
            if value not in TAG_CLASSES[f]:
                raise ValueError(f"scene_tag_maps: object {i} has unknown {f} {value!r}")
            maps[f][m] = TAG_CLASSES[f].index(value) + 1
    return maps


def patch_tags(tag_map: np.ndarray, affine: Sequence[float], canvas_hw: tuple, patch: int,
               min_fraction: float = 0.3) -> np.ndarray:
    """Per-patch labels ``[H // patch, W // patch]`` (int64) of an original-pixel ``tag_map`` on a model's input
    canvas.  ``affine`` = (sx, ox, sy, oy) maps original to input pixels (the dataset's per-sample
    ``affine``); every input pixel takes the label of the original pixel it comes from (nearest; padding = 0).
    A patch gets the most frequent non-background label when it covers at least ``min_fraction`` of the patch,
    else 0."""
    H, W = (int(v) for v in canvas_hw)
    if H % patch or W % patch:
        raise ValueError(f"patch_tags: canvas {H}x{W} is not a multiple of the patch size {patch}")
    sx, ox, sy, oy = (float(v) for v in affine)
    h0, w0 = tag_map.shape
    xs = np.floor((np.arange(W) + 0.5 - ox) / sx).astype(np.int64)
    ys = np.floor((np.arange(H) + 0.5 - oy) / sy).astype(np.int64)
    okx, oky = (xs >= 0) & (xs < w0), (ys >= 0) & (ys < h0)
    canvas = tag_map[np.clip(ys, 0, h0 - 1)[:, None], np.clip(xs, 0, w0 - 1)[None, :]]
    canvas = np.where(oky[:, None] & okx[None, :], canvas, 0)
    gh, gw = H // patch, W // patch
    if canvas.max() <= 0:
        return np.zeros((gh, gw), np.int64)
    blocks = canvas.reshape(gh, patch, gw, patch).transpose(0, 2, 1, 3).reshape(gh, gw, patch * patch)
    counts = np.stack([(blocks == c).sum(-1) for c in range(1, int(canvas.max()) + 1)], -1)  # [gh, gw, C]
    frac = counts.max(-1) / float(patch * patch)
    return np.where(frac >= min_fraction, counts.argmax(-1) + 1, 0).astype(np.int64)


# ------------------------------------------------------------------------------------------- command line


def get_args_parser():
    p = argparse.ArgumentParser("synthetic referring-expression dataset", add_help=True)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=500)
    p.add_argument("--num-test", type=int, default=500, help="records in each of testA and testB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", default="transvg,refer,seqtr", help="comma list of transvg,refer,seqtr")
    p.add_argument("--grec", action="store_true", help="also write a gRefCOCO-style multi/no-target dataset")
    p.add_argument("--no-tokenizers", action="store_true", help="skip tokenizers/vocab.txt and spm.model")
    p.add_argument("--image-format", default="png", choices=("png", "jpg"))
    p.add_argument("--min-objects", type=int, default=3, help="fewest shapes tried per scene (1 with "
                   "--max-objects 1: single-object scenes, e.g. a curriculum's warm-up set)")
    p.add_argument("--max-objects", type=int, default=8, help="most shapes tried per scene")
    p.add_argument("--object-scale", type=float, default=1.0, help="multiplies every shape's size")
    p.add_argument("--train-types", default="", help="comma list of the expression types the train split keeps "
                   f"({','.join(EXPR_TYPES[:4])}; default all), e.g. attr,rel: no same-category position expressions")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    s = generate(args.out, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                 seed=args.seed, formats=args.formats.split(","), grec=args.grec,
                 tokenizers=not args.no_tokenizers, image_format=args.image_format, min_objects=args.min_objects,
                 max_objects=args.max_objects, object_scale=args.object_scale,
                 train_types=args.train_types.split(",") if args.train_types else None)
    val = s["splits"].get("val", {})
    if "baselines" in val:
        print("[synthetic] val baselines (Acc@0.5): " + ", ".join(f"{k}={v:.3f}" for k, v in val["baselines"].items())
              + f"; same-kind distractor fraction {val['distractor_fraction']:.2f}")
    return s


if __name__ == "__main__":
    main()
