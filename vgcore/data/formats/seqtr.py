"""SeqTR / SimVG / ALVG ``data/annotations/<name>/instances.json`` (the layout SimVG and ALVG read).

Top level: a dict keyed by split name (``train``, ``val``, ``testA``, ..., Mixed: ``val_refcoco_unc`` ...),
each a list of entries.

REC entry: ``image_id`` (int), ``height``, ``width``, ``expressions`` (list of str; train entries group all
sentences of one object, eval entries usually hold one), ``bbox`` = [x, y, w, h] original pixels (COCO),
optional ``mask`` (polygons or RLE), ``data_source`` (Mixed).  Read as **one record per expression**
(``extra["entry"]`` = entry index, ``extra["expr_index"]`` = position in ``expressions``, so a sampler can
reproduce SimVG's "one random expression per entry per visit").

gRefCOCO ("grec") entry: ``image_id``, ``height``, ``width``, ``expressions[k]``, ``annotations[k]`` (list of
MDETR-style ann dicts; ``category_id == -1`` marks the no-target placeholder), ``bbox[k]`` (list of xywh
boxes, ``[0, 0, 0, 0]`` for the placeholder), optional ``segmentation[k]`` (ALVG: one segmentation per
target).  Flattened to one record per expression k: no-target -> boxes [0, 4]; multi-target -> [N, 4];
``ann_id`` = the anns' ``original_id`` list; ``extra["category_ids"]``.

Image path (not stored, derived from ``image_id``): refcoco* / gRefCOCO -> ``COCO_train2014_%012d.jpg``;
referit / flickr -> ``%d.jpg``; mixed -> by ``data_source`` (``coco`` in it -> COCO name), root
``image_root[data_source]`` (``visual-genome`` and ``vg`` are aliases).  ``image_name_fn(entry) -> str``
overrides the name; an entry's ``file_name`` field (non-official, see ``write_seqtr(store_file_name=True)``) is
used when present.

Boxes: xywh -> xyxy (x2 = x + w).  SimVG additionally clips x to [0, W-1] and y to [0, H-1] of the original
image in its loader; ``clip=True`` applies that here, in the reader, using the entry's height/width (default
False: the reader keeps the annotation and the transforms decide).
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import DataError, IssueLog, RecordList, check_box, reason_of
from ..image import image_size
from ..masks import is_polygons, jsonable_segmentation, union_segmentation
from ..sample import Record

__all__ = ["read_seqtr", "write_seqtr", "image_name", "naming_of"]

_COCO_FMT = "COCO_train2014_%012d.jpg"
_ID_FMT = "%d.jpg"
_ID_RE = re.compile(r"(\d+)\.[A-Za-z0-9]+$")


def naming_of(dataset: str) -> str:
    """'coco' | 'id' | 'mixed' image naming for a SeqTR dataset directory name; DataError if unknown."""
    n = (dataset or "").lower()
    if "mix" in n:
        return "mixed"
    if "refcoco" in n or "gref" in n or "coco" in n or n in ("unc", "unc+", "gref_umd"):
        return "coco"
    if "referit" in n or "flickr" in n or "saiapr" in n:
        return "id"
    raise DataError(f"unknown SeqTR dataset {dataset!r}: cannot derive image file names "
                    f"(known: refcoco*, grefs_grec / grefs, referitgame*, flickr30k, mixed) -- pass dataset= or image_name_fn=")


def image_name(image_id: int, naming: str, data_source: Optional[str] = None) -> str:
    if naming == "mixed":
        naming = "coco" if data_source and "coco" in data_source else "id"
    return (_COCO_FMT if naming == "coco" else _ID_FMT) % int(image_id)


_ALIASES = {"visual-genome": "vg", "vg": "visual-genome"}


def _root(image_root, source):
    if image_root is None or isinstance(image_root, (str, os.PathLike)):
        return image_root
    for k in (source, _ALIASES.get(source)):
        if k in image_root:
            return image_root[k]
    raise DataError(f"image_root has no entry for data_source {source!r} (keys: {sorted(image_root)})")


class _Bad(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _xywh_boxes(v, what) -> np.ndarray:
    try:
        b = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise _Bad("malformed box", f"{what}: {e}")
    if b.size % 4 or (b.ndim == 1 and b.size != 4):
        raise _Bad("malformed box", f"{what}: expected [x, y, w, h] boxes, got {v!r}")
    b = b.reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)


def _clip(boxes, h, w):
    b = boxes.copy()
    b[:, 0::2] = np.clip(b[:, 0::2], 0, w - 1)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, h - 1)
    return b


def _is_grec(entry) -> bool:
    if "annotations" in entry:
        return True
    bb = entry.get("bbox")
    return isinstance(bb, list) and len(bb) > 0 and isinstance(bb[0], (list, tuple))


def read_seqtr(path, split: Union[str, Sequence[str], None] = None, image_root: Union[str, dict, None] = None,
               dataset: Optional[str] = None, image_name_fn: Optional[Callable[[dict], str]] = None,
               on_error: str = "raise", clip: bool = False, check_images: bool = False,
               grec: Optional[bool] = None) -> RecordList:
    """Read split(s) of a SeqTR-style instances.json into one record per expression (module docstring).

    path           the json file or its directory.  split: a key, a list of keys, or None for all.
    dataset        names the image convention and ``Record.dataset``; default = the directory name.
    grec           None = auto per entry (``annotations`` key or list-of-lists ``bbox``).
    clip           SimVG's clip of xyxy to [0, W-1] x [0, H-1] (needs the entry's height/width).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "instances.json")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected a SeqTR instances.json keyed by split)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON (expected a SeqTR instances.json keyed by split): {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(f"{path}: expected a dict {{split name: list of entries}}, got "
                        f"{type(data).__name__}" + (f" with keys {list(data)[:5]}" if isinstance(data, dict) else ""))
    if dataset is None:
        dataset = os.path.basename(os.path.dirname(os.path.abspath(path)))
    naming, naming_error = None, None
    if image_name_fn is None:
        try:
            naming = naming_of(dataset)
        except DataError as err:  # only fatal if some entry has no file_name
            naming_error = err
    splits = list(data) if split is None else ([split] if isinstance(split, str) else list(split))
    missing = [s for s in splits if s not in data]
    if missing:
        raise DataError(f"{path}: no split {missing} (available: {list(data)})")
    log = IssueLog(path, on_error)
    out: List[Record] = []
    for sp in splits:
        for i, e in enumerate(data[sp]):
            where = f"{sp!r} entry {i}"
            try:
                if not isinstance(e, dict) or "image_id" not in e or "expressions" not in e or "bbox" not in e:
                    raise _Bad("malformed entry", "needs image_id, expressions and bbox")
                exprs = e["expressions"]
                if not isinstance(exprs, list) or not exprs:
                    raise _Bad("malformed entry", "expressions must be a non-empty list")
                h, w = e.get("height"), e.get("width")
                src = e.get("data_source")
                if image_name_fn is not None:
                    name = image_name_fn(e)
                elif isinstance(e.get("file_name"), str):
                    name = e["file_name"]
                elif naming_error is not None:
                    raise naming_error
                else:
                    if naming == "mixed" and not src:
                        raise _Bad("malformed entry", "Mixed entries need data_source")
                    try:
                        name = image_name(e["image_id"], naming, src)
                    except (TypeError, ValueError):
                        raise _Bad("malformed entry", f"image_id must be an int, got {e['image_id']!r}") from None
                root = _root(image_root, src) if naming == "mixed" or isinstance(image_root, dict) else image_root
                img_path = os.path.join(root, name) if root else name
                if clip and (h is None or w is None):
                    raise _Bad("malformed entry", "clip=True needs height and width in the entry")
                g = _is_grec(e) if grec is None else grec
                if g:
                    per = _grec_targets(e, len(exprs), h, w)
                else:
                    boxes = _xywh_boxes(e["bbox"], "bbox")
                    if boxes.shape[0] != 1:
                        raise _Bad("malformed box", f"REC entries hold one [x, y, w, h] box, got {boxes.shape[0]}")
                    problem = check_box(boxes[0], h, w)
                    if problem:
                        raise _Bad(reason_of(problem), problem)
                    per = None
                    mask = e.get("mask")
            except _Bad as b:
                log.fail(where, b.reason, b.detail)
                continue
            except DataError as d:
                if d is naming_error:
                    raise
                log.fail(where, "malformed entry", str(d))
                continue
            if check_images and not os.path.isfile(img_path):
                log.fail(where, "missing image", img_path)
                continue
            base = {k: e[k] for k in ("category_id", "data_source") if k in e}
            for k, text in enumerate(exprs):
                if not isinstance(text, str) or not text.strip():
                    log.fail(f"{where} expression {k}", "empty expression" if isinstance(text, str) else
                             "malformed entry", f"image_id {e['image_id']}: {text!r}")
                    continue
                extra = dict(base, entry=i, expr_index=k)
                if per is not None:
                    bx, ann_ids, cids, seg = per[k]
                    extra["category_ids"] = cids
                    ann_id, m = ann_ids, seg
                else:
                    bx, ann_id, m = boxes, e.get("ann_id"), mask
                if clip and bx.shape[0]:
                    bx = _clip(bx, h, w)
                sent_ids = e.get("sent_ids")
                out.append(Record(image_path=img_path, expression=text, boxes=bx.astype(np.float32),
                                  image_id=e["image_id"], mask=m, ref_id=e.get("ref_id"), ann_id=ann_id,
                                  sent_id=sent_ids[k] if isinstance(sent_ids, list) and k < len(sent_ids) else None,
                                  category=e.get("category"), height=h, width=w, dataset=dataset, split=sp,
                                  extra=extra))
    return log.finish(out)


def _grec_targets(e, n, h, w):
    """Per expression k: (xyxy boxes [N,4], original ann ids, category ids, union mask) of a grec entry."""
    bbox, anns, segs = e.get("bbox"), e.get("annotations"), e.get("segmentation")
    if not isinstance(bbox, list) or len(bbox) != n:
        raise _Bad("malformed entry", f"gRefCOCO bbox must be a list of {n} box lists (one per expression)")
    if anns is not None and (not isinstance(anns, list) or len(anns) != n):
        raise _Bad("malformed entry", f"gRefCOCO annotations must be a list of {n} lists (one per expression)")
    out = []
    for k in range(n):
        xyxy = _xywh_boxes(bbox[k], f"bbox[{k}]") if bbox[k] else np.zeros((0, 4))
        if anns is not None:
            ak = anns[k] if isinstance(anns[k], list) else [anns[k]]
            if len(ak) != xyxy.shape[0]:
                raise _Bad("malformed entry", f"expression {k}: {len(ak)} annotations but {xyxy.shape[0]} boxes")
            keep = [j for j, a in enumerate(ak) if int(a.get("category_id", 0)) != -1]
            ids = [a.get("original_id", a.get("id")) for a in ak]
            ids = [None if (x is None or x == -1) else x for x in ids]
            cids = [a.get("category_id") for a in ak]
        else:  # no annotations: an all-zero box is the no-target placeholder
            keep = [j for j, b in enumerate(xyxy) if np.any(b != 0)]
            ids, cids = [None] * xyxy.shape[0], [None] * xyxy.shape[0]
        boxes = xyxy[keep]
        for b in boxes:
            problem = check_box(b, h, w)
            if problem:
                raise _Bad(reason_of(problem), f"expression {k}: {problem}")
        seg = None
        if isinstance(segs, list) and k < len(segs) and segs[k]:
            sk = segs[k]  # one segmentation per target (ALVG); a bare polygon list / RLE is taken as one
            seg = sk if (is_polygons(sk) or isinstance(sk, dict)) else union_segmentation(list(sk), h, w)
        out.append((boxes, [ids[j] for j in keep], [cids[j] for j in keep], seg))
    return out


# ---------------------------------------------------------------------------------------------------- writer

def _image_id_of(r: Record, where) -> int:
    if isinstance(r.image_id, (int, np.integer)):
        return int(r.image_id)
    m = _ID_RE.search(os.path.basename(r.image_path))
    if m:
        return int(m.group(1))
    raise DataError(f"{where}: SeqTR entries need an int image_id (none in the record and none in the file name)")


def _size(r: Record, where):
    if r.height is not None and r.width is not None:
        return int(r.height), int(r.width)
    if os.path.isfile(r.image_path):
        return image_size(r.image_path, r)
    return None, None


def _xywh(b) -> list:
    x1, y1, x2, y2 = (float(v) for v in b)
    return [x1, y1, x2 - x1, y2 - y1]


def write_seqtr(records_by_split: Dict[str, Sequence[Record]], path, grec: bool = False,
                group: Union[str, Sequence[str]] = "train", store_file_name: bool = False) -> str:
    """Write ``{split: records}`` as a SeqTR/SimVG instances.json (path = file, or directory -> instances.json).

    grec=False: REC entries (every record exactly one box).  Splits named in `group` ("train" by default, "all",
    "none", or a list) group records of the same object -- same (image, ref_id) or, without ref_id, same
    (image, box to 1e-3, data_source) -- into one entry with several expressions, as SeqTR's train files do;
    other splits get one entry per expression (eval files).  Fields: image_id, height, width, expressions,
    bbox (xywh), + mask / data_source / ref_id / ann_id / category_id when known.
    grec=True: gRefCOCO entries; grouped splits put all expressions of one image in one entry
    (convert_gref.py), others one entry per expression (the "only_format_trainset" variant for the default
    group="train").  No-target expressions get the MDETR placeholder annotation (category_id -1, bbox
    [0,0,0,0], area -1, iscrowd -1, empty True, original_id -1).  Masks go to ``segmentation[k]`` = [mask].
    image_id comes from Record.image_id or the digits ending the file name.  ``store_file_name=True`` adds a
    non-official ``file_name`` field (basename of image_path) that `read_seqtr` prefers over the name derived
    from image_id -- for images not named ``COCO_train2014_%012d.jpg`` / ``%d.jpg`` (the official SimVG loader
    ignores it and derives the name).  Returns the path written.
    """
    path = os.fspath(path)
    if os.path.isdir(path) or not path.endswith(".json"):
        path = os.path.join(path, "instances.json")
    grouped = set(records_by_split) if group == "all" else set() if group in ("none", None) else \
        {group} if isinstance(group, str) else set(group)
    out: dict = {}
    names_of: dict = {}
    for sp, recs in records_by_split.items():
        entries: list = []
        index: dict = {}
        for i, r in enumerate(recs):
            where = f"{path}: split {sp!r} record {i} ({r.key()})"
            iid = _image_id_of(r, where)
            fname = os.path.basename(r.image_path)
            if names_of.setdefault((iid, fname if store_file_name else None), fname) != fname:
                raise DataError(f"{where}: image_id {iid} already used for {names_of[(iid, None)]!r}; SeqTR derives "
                                f"the file name from image_id -- set distinct Record.image_id or store_file_name=True")
            h, w = _size(r, where)
            src = r.extra.get("data_source")
            if not grec:
                if r.num_targets != 1:
                    raise DataError(f"{where}: REC entries hold exactly one box, got {r.num_targets} (use grec=True)")
                b = r.boxes[0]
                fkey = fname if store_file_name else None
                key = (iid, fkey, "ref", r.ref_id) if r.ref_id is not None else \
                    (iid, fkey, tuple(np.round(b.astype(np.float64), 3).tolist()), src)
                e = index.get(key) if sp in grouped else None
                if e is None:
                    e = {"image_id": iid}
                    if store_file_name:
                        e["file_name"] = os.path.basename(r.image_path)
                    if h is not None:
                        e["height"], e["width"] = h, w
                    e["expressions"] = []
                    e["bbox"] = _xywh(b)
                    for k, v in (("mask", jsonable_segmentation(r.mask)), ("data_source", src),
                                 ("ref_id", r.ref_id), ("ann_id", r.ann_id),
                                 ("category_id", r.extra.get("category_id"))):
                        if v is not None and isinstance(v, (int, str, list, dict, np.integer)):
                            e[k] = int(v) if isinstance(v, np.integer) else v
                    entries.append(e)
                    index[key] = e
                e["expressions"].append(r.expression)
                continue
            key = (iid, fname if store_file_name else None)
            e = index.get(key) if sp in grouped else None
            if e is None:
                e = {"image_id": iid}
                if store_file_name:
                    e["file_name"] = os.path.basename(r.image_path)
                if h is not None:
                    e["height"], e["width"] = h, w
                e.update(expressions=[], annotations=[], bbox=[])
                entries.append(e)
                index[key] = e
            e["expressions"].append(r.expression)
            if r.is_no_target:
                e["annotations"].append([{"category_id": -1, "bbox": [0.0, 0.0, 0.0, 0.0], "area": -1,
                                          "iscrowd": -1, "empty": True, "original_id": -1}])
                e["bbox"].append([[0.0, 0.0, 0.0, 0.0]])
            else:
                ids = r.ann_id if isinstance(r.ann_id, (list, tuple)) and len(r.ann_id) == r.num_targets \
                    else [r.ann_id if r.num_targets == 1 and isinstance(r.ann_id, (int, np.integer)) else -1] * r.num_targets
                cids = r.extra.get("category_ids")
                cids = cids if isinstance(cids, list) and len(cids) == r.num_targets else [1] * r.num_targets
                boxes = [_xywh(b) for b in r.boxes]
                e["annotations"].append([{"category_id": int(c), "bbox": bb, "area": bb[2] * bb[3], "iscrowd": 0,
                                          "empty": False, "original_id": int(a) if a is not None else -1}
                                         for bb, c, a in zip(boxes, cids, ids)])
                e["bbox"].append(boxes)
            if r.mask is not None or "segmentation" in e:
                segs = e.setdefault("segmentation", [[] for _ in range(len(e["expressions"]) - 1)])
                segs.append([jsonable_segmentation(r.mask)] if r.mask is not None else [])
        for e in entries:  # grec: pad segmentation lists created late
            if grec and "segmentation" in e:
                e["segmentation"] += [[] for _ in range(len(e["expressions"]) - len(e["segmentation"]))]
        out[sp] = entries
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f)
    return path
