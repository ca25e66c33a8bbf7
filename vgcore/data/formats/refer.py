"""lichengunc "refer" layout and gRefCOCO ("grefer") layout as the official repositories ship them.

Files: ``<root>/<dataset>/refs(<split_by>).p`` (pickled list of refs) or, for gRefCOCO,
``<root>/<dataset>/grefs(<split_by>).json`` / ``.p``; plus ``<root>/<dataset>/instances.json`` (COCO subset:
images / annotations / categories).

A ref = one object (gRefCOCO: a set of objects, possibly empty) with several sentences.  Reading flattens to
**one record per sentence**: expression = ``sentence["sent"]`` (the cleaned lower-case string every codebase
trains on; ``raw`` is kept in ``extra["raw"]``), boxes = the annotations' ``bbox`` (COCO xywh, 0-based,
continuous) -> xyxy, mask = the annotation ``segmentation`` (polygons for refcoco*, RLE for refclef; ``[]`` ->
None), image path = ``image_root`` + the **images table** ``file_name`` (the ref's own ``file_name`` carries an
extra ``_<n>`` suffix and is ignored), category = the category name.

gRefCOCO: ``ann_id`` / ``category_id`` are lists; ``ann_id == [-1]`` is a no-target ref -> boxes [0, 4], mask
None; several ids -> multi-target boxes [N, 4] and the union of their segmentations
(``extra["categories"]`` holds the per-target names, ``Record.category`` the names joined by "|").

Splits are matched exactly (``split="testA"`` or a list of names; None = all), not with refer's substring rules.
"""
from __future__ import annotations

import json
import os
import pickle
from typing import Optional, Sequence, Union

import numpy as np

from ...checkpoint.safe import UntrustedFileError, load_plain_pickle
from ..errors import DataError, IssueLog, RecordList, check_box, reason_of
from ..image import image_size
from ..masks import jsonable_segmentation, mask_area, union_segmentation
from ..sample import Record
from .transvg import _image_id

__all__ = ["read_refer", "write_refer", "refs_path", "instances_path"]


def refs_path(root, dataset: str, split_by: str, grefs: bool = False, ext: str = ".p") -> str:
    name = f"grefs({split_by}){ext}" if grefs else f"refs({split_by}).p"
    return os.path.join(os.fspath(root), dataset, name)


def instances_path(root, dataset: str) -> str:
    return os.path.join(os.fspath(root), dataset, "instances.json")


def _load_pickle(path):
    """A ``refs(*).p`` file: a pickle by format, read with a restricted unpickler that rebuilds only builtin
    containers, strings and numbers (anything else -- which could run code -- is refused, naming the file)."""
    try:
        return load_plain_pickle(path)
    except UntrustedFileError as e:
        raise DataError(str(e)) from None
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: not a readable pickle of a list of refs: {e}") from None


def _load_json(path, what):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected {what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON (expected {what}): {e}") from None


def _find_refs(root, dataset, split_by, grefs):
    cands = []
    if grefs is not True:
        cands.append((refs_path(root, dataset, split_by), False))
    if grefs is not False:
        cands += [(refs_path(root, dataset, split_by, True, ".p"), True),
                  (refs_path(root, dataset, split_by, True, ".json"), True)]
    for p, g in cands:
        if os.path.isfile(p):
            return p, g
    raise DataError(f"no refs file for dataset {dataset!r} split_by {split_by!r}: looked for "
                    + ", ".join(p for p, _ in cands))


def _split_set(split) -> Optional[set]:
    if split is None:
        return None
    return {split} if isinstance(split, str) else set(split)


def _ids(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def read_refer(root, dataset: str, split_by: str, split: Union[str, Sequence[str], None] = None,
               image_root: Optional[str] = None, on_error: str = "raise", check_images: bool = False,
               grefs: Optional[bool] = None) -> RecordList:
    """Read a refer / gRefCOCO dataset into one record per sentence (see module docstring).

    grefs: None = auto (``refs(...).p`` first, then ``grefs(...).p`` / ``.json``); True / False to force.
    on_error "raise" | "skip"; errors name the refs file, the ref index (and sentence index) and the problem.
    """
    rpath, is_g = _find_refs(root, dataset, split_by, grefs)
    refs = _load_json(rpath, "a list of grefs") if rpath.endswith(".json") else _load_pickle(rpath)
    if not isinstance(refs, list):
        raise DataError(f"{rpath}: expected a list of ref dicts, got {type(refs).__name__}")
    ipath = instances_path(root, dataset)
    inst = _load_json(ipath, "COCO instances with images/annotations/categories")
    if not isinstance(inst, dict) or not all(k in inst for k in ("images", "annotations", "categories")):
        raise DataError(f"{ipath}: expected a dict with 'images', 'annotations' and 'categories'")
    imgs = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    wanted = _split_set(split)
    log = IssueLog(rpath, on_error)
    out = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict) or not all(k in ref for k in ("image_id", "ann_id", "split", "sentences")):
            log.fail(i, "malformed ref", "needs image_id, ann_id, split and sentences")
            continue
        if wanted is not None and ref["split"] not in wanted:
            continue
        img = imgs.get(ref["image_id"])
        if img is None:
            log.fail(i, "unknown image_id", f"ref_id {ref.get('ref_id')}: image_id {ref['image_id']} not in {ipath}")
            continue
        h, w = img.get("height"), img.get("width")
        ann_ids = _ids(ref["ann_id"])
        no_target = ann_ids == [-1]
        bad = [a for a in ann_ids if a not in anns] if not no_target else []
        if bad or not ann_ids:
            log.fail(i, "unknown ann_id", f"ref_id {ref.get('ref_id')}: ann ids {bad or ann_ids} not in {ipath}")
            continue
        objs = [] if no_target else [anns[a] for a in ann_ids]
        try:
            xywh = np.array([o["bbox"] for o in objs], dtype=np.float64).reshape(-1, 4)
        except (KeyError, TypeError, ValueError) as e:
            log.fail(i, "malformed box", f"ref_id {ref.get('ref_id')}: {e}")
            continue
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        problem = next((p for p in (check_box(b, h, w) for b in boxes) if p), None)
        if problem:
            log.fail(i, reason_of(problem), f"ref_id {ref.get('ref_id')}: {problem}")
            continue
        names = [cats.get(o.get("category_id"), str(o.get("category_id"))) for o in objs]
        segs = [o.get("segmentation") or None for o in objs]
        if any(sg is None for sg in segs):  # a partial union would be a wrong mask: unknown instead
            segs = []
        try:
            mask = union_segmentation(segs, h, w)
        except DataError as e:
            log.fail(i, "malformed mask", f"ref_id {ref.get('ref_id')}: {e}")
            continue
        file_name = img.get("file_name") or ref.get("file_name")
        path = os.path.join(image_root, file_name) if image_root else file_name
        if check_images and not os.path.isfile(path):
            log.fail(i, "missing image", path)
            continue
        extra = {"category_id": ref.get("category_id")}
        if is_g or len(objs) != 1:
            extra["categories"] = names
        ann_field = ann_ids if (is_g or isinstance(ref["ann_id"], (list, tuple))) else ref["ann_id"]
        for j, sent in enumerate(ref["sentences"]):
            text = sent.get("sent") if isinstance(sent, dict) else None
            if not isinstance(text, str):
                log.fail(f"{i} sentence {j}", "malformed sentence", f"ref_id {ref.get('ref_id')}: no str 'sent'")
                continue
            if not text.strip():
                log.fail(f"{i} sentence {j}", "empty expression", f"ref_id {ref.get('ref_id')}")
                continue
            ex = dict(extra)
            if "raw" in sent:
                ex["raw"] = sent["raw"]
            out.append(Record(image_path=path, expression=text, boxes=boxes.astype(np.float32),
                              image_id=ref["image_id"], mask=mask, ref_id=ref.get("ref_id"), ann_id=ann_field,
                              sent_id=sent.get("sent_id"), category="|".join(dict.fromkeys(names)) or None,
                              height=h, width=w, dataset=dataset, split=ref["split"], extra=ex))
    return log.finish(out)


# ---------------------------------------------------------------------------------------------------- writer

def _img_table(records, images, where):
    """image key -> COCO image dict; key = record.image_id (or the path when it has none)."""
    given = {}
    if images is not None:
        for im in (images.values() if isinstance(images, dict) else images):
            given[im["id"]] = dict(im)
    table, key_of, used = {}, [], set(given)
    next_id = max([k for k in given if isinstance(k, int)] + [0]) + 1
    by_path = {}
    for i, r in enumerate(records):
        iid = r.image_id if isinstance(r.image_id, (int, np.integer)) else None
        if iid is None:
            iid = by_path.get(r.image_path)
        if iid is None:
            iid = _image_id(r.image_path)
            if iid is None or (iid in table and table[iid]["_path"] != r.image_path):
                while next_id in used or next_id in table:
                    next_id += 1
                iid = next_id
        iid = int(iid)
        by_path.setdefault(r.image_path, iid)
        if iid not in table:
            im = given.get(iid, {})
            h, w = im.get("height", r.height), im.get("width", r.width)
            if h is None or w is None:
                if os.path.isfile(r.image_path):
                    h, w = image_size(r.image_path, r)
                else:
                    raise DataError(f"{where}: record {i} ({r.key()}): image height/width unknown (set Record.height/"
                                    f"width, pass images=..., or let image_path point to the file)")
            table[iid] = {"id": iid, "file_name": im.get("file_name", os.path.basename(r.image_path)),
                          "height": int(h), "width": int(w), "_path": r.image_path}
        key_of.append(iid)
    return table, key_of


def _per_target(r: Record, key: str, fallback):
    v = r.extra.get(key)
    if isinstance(v, (list, tuple)) and len(v) == r.num_targets:
        return list(v)
    return [fallback] * r.num_targets


def write_refer(records: Sequence[Record], root, dataset: str, split_by: str, images=None, categories=None,
                grefs: Optional[bool] = None, grefs_ext: str = ".json", scene_objects: bool = False) -> dict:
    """Write records as ``<root>/<dataset>/refs(<split_by>).p`` (or ``grefs(<split_by>).json``) + ``instances.json``.

    images      optional COCO image dicts (list, or dict by id) giving file_name/height/width; otherwise taken
                from the records (basename of image_path, Record.height/width, or the image header).
    categories  optional {name: id} or list of COCO category dicts; otherwise ids 1.. in order of appearance
                (records without a category get "object").
    grefs       None = auto: gRefCOCO layout when any record is no-target or multi-target; True/False to force.
                gRefCOCO writes ann_id / category_id as lists and ``[-1]`` / ``[-1]`` for no-target refs.

    One annotation per distinct object: (image, Record.ann_id) when the record has ann ids, else (image, box
    rounded to 1e-3 px).  Refs group records by (image, Record.ref_id) when set, else by (image, object set,
    split); sentences keep Record.sent_id when it is an int not used yet.  Segmentation = Record.mask of a
    single-target record of that object (``[]`` when none is known).  scene_objects=True also writes every object
    a record lists in ``extra["objects"]`` (dicts with id, category, box xyxy, segmentation) that no record refers
    to: the real instances.json holds every COCO annotation of its images, referred to or not (RefCOCO: 196,771
    annotations, 50,000 referred objects).  Returns {"refs": path, "instances": path}.
    """
    records = list(records)
    d = os.path.join(os.fspath(root), dataset)
    where = d
    if grefs is None:
        grefs = any(r.num_targets != 1 for r in records)
    elif not grefs:
        for i, r in enumerate(records):
            if r.num_targets != 1:
                raise DataError(f"{where}: record {i} ({r.key()}) has {r.num_targets} boxes; the refer layout holds "
                                f"exactly one object per ref -- use grefs=True")
    table, img_of = _img_table(records, images, where)

    # categories
    if categories is None:
        cat_ids: dict = {}
    elif isinstance(categories, dict):
        cat_ids = {str(k): int(v) for k, v in categories.items()}
    else:
        cat_ids = {c["name"]: int(c["id"]) for c in categories}

    def cat_id(name):
        name = name or "object"
        if name not in cat_ids:
            cat_ids[name] = max(list(cat_ids.values()) + [0]) + 1
        return cat_ids[name]

    # objects
    given_ann = set()
    for r in records:
        for a in (r.ann_id if isinstance(r.ann_id, (list, tuple)) else [r.ann_id]):
            if isinstance(a, (int, np.integer)) and a >= 0:
                given_ann.add(int(a))
    next_ann = max(given_ann | {0}) + 1
    objects: dict = {}  # key -> ann dict
    rec_objs = []
    for i, r in enumerate(records):
        iid = img_of[i]
        ids = [None] * r.num_targets
        if isinstance(r.ann_id, (list, tuple)) and len(r.ann_id) == r.num_targets:
            ids = [int(a) if isinstance(a, (int, np.integer)) and a >= 0 else None for a in r.ann_id]
        elif r.num_targets == 1 and isinstance(r.ann_id, (int, np.integer)) and r.ann_id >= 0:
            ids = [int(r.ann_id)]
        names = _per_target(r, "categories", r.category if r.num_targets == 1 else None)
        if r.num_targets > 1 and names[0] is None and r.category and len(r.category.split("|")) == r.num_targets:
            names = r.category.split("|")
        keys = []
        for j, b in enumerate(r.boxes.astype(np.float64)):
            key = (iid, "ann", ids[j]) if ids[j] is not None else (iid, "box", tuple(np.round(b, 3).tolist()))
            if key not in objects:
                aid = ids[j]
                if aid is None:
                    while next_ann in given_ann:
                        next_ann += 1
                    aid = next_ann
                    given_ann.add(aid)
                x1, y1, x2, y2 = (float(v) for v in b)
                objects[key] = {"id": aid, "image_id": iid, "category_id": cat_id(names[j]),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": 0, "segmentation": []}
            if r.num_targets == 1 and r.mask is not None and not objects[key]["segmentation"]:
                objects[key]["segmentation"] = jsonable_segmentation(r.mask)
                im = table[iid]
                objects[key]["area"] = mask_area(r.mask, im["height"], im["width"])
            keys.append(key)
        rec_objs.append(keys)
    if scene_objects:
        for i, r in enumerate(records):
            for o in (r.extra.get("objects") or []) if isinstance(r.extra, dict) else []:
                key = (img_of[i], "ann", int(o["id"]))
                if key in objects:
                    continue
                x1, y1, x2, y2 = (float(v) for v in o["box"])
                seg = o.get("segmentation")
                im = table[img_of[i]]
                objects[key] = {"id": int(o["id"]), "image_id": img_of[i], "category_id": cat_id(o.get("category")),
                                "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": mask_area(seg, im["height"], im["width"]) if seg else (x2 - x1) * (y2 - y1),
                                "iscrowd": 0, "segmentation": jsonable_segmentation(seg) if seg else []}

    # refs
    given_sent = {int(r.sent_id) for r in records if isinstance(r.sent_id, (int, np.integer))}
    given_ref = {int(r.ref_id) for r in records if isinstance(r.ref_id, (int, np.integer))}
    next_sent, next_ref = max(given_sent | {0}) + 1, max(given_ref | {0}) + 1
    used_sent: set = set()
    refs: dict = {}
    for i, r in enumerate(records):
        iid = img_of[i]
        obj_ids = [objects[k]["id"] for k in rec_objs[i]]
        if isinstance(r.ref_id, (int, np.integer)):
            gkey = (iid, "ref", int(r.ref_id), r.split)
        else:
            gkey = (iid, "objs", tuple(sorted(obj_ids)), r.split)
        ref = refs.get(gkey)
        if ref is None:
            rid = int(r.ref_id) if isinstance(r.ref_id, (int, np.integer)) and r.ref_id not in \
                {x["ref_id"] for x in refs.values()} else None
            if rid is None:
                while next_ref in given_ref:
                    next_ref += 1
                rid = next_ref
                given_ref.add(rid)
            cids = [objects[k]["category_id"] for k in rec_objs[i]]
            stem, ext = os.path.splitext(table[iid]["file_name"])
            if grefs:
                ann_field, cat_field = (obj_ids, cids) if obj_ids else ([-1], [-1])
            else:
                ann_field, cat_field = obj_ids[0], cids[0]
            ref = {"ref_id": rid, "ann_id": ann_field, "image_id": iid, "category_id": cat_field,
                   "split": r.split, "file_name": f"{stem}_{rid}{ext}", "sent_ids": [], "sentences": []}
            refs[gkey] = ref
        sid = int(r.sent_id) if isinstance(r.sent_id, (int, np.integer)) and r.sent_id not in used_sent else None
        if sid is None:
            while next_sent in given_sent or next_sent in used_sent:
                next_sent += 1
            sid = next_sent
        used_sent.add(sid)
        ref["sent_ids"].append(sid)
        ref["sentences"].append({"tokens": r.expression.lower().split(), "raw": r.extra.get("raw", r.expression),
                                 "sent_id": sid, "sent": r.expression})

    os.makedirs(d, exist_ok=True)
    rpath = refs_path(root, dataset, split_by, grefs=grefs, ext=grefs_ext)
    ref_list = list(refs.values())
    if rpath.endswith(".json"):
        with open(rpath, "w", encoding="utf-8") as f:
            json.dump(ref_list, f)
    else:
        with open(rpath, "wb") as f:
            pickle.dump(ref_list, f, protocol=2)
    images_out = [{k: v for k, v in im.items() if not k.startswith("_")} for im in table.values()]
    inst = {"images": images_out, "annotations": list(objects.values()),
            "categories": [{"id": v, "name": k, "supercategory": k} for k, v in sorted(cat_ids.items(), key=lambda t: t[1])]}
    ipath = instances_path(root, dataset)
    with open(ipath, "w", encoding="utf-8") as f:
        json.dump(inst, f)
    return {"refs": rpath, "instances": ipath}
