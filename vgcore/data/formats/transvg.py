"""TransVG-family split files ``<split_root>/<dataset>/<dataset>_<split>.pth`` (TransVG, CLIP-VG, HiVG, ResVG).

Each file is a ``torch.save``-d Python list with one tuple per expression.  Layouts:

=====================  =========================================  ===========================================
dataset                tuple                                      stored box
=====================  =========================================  ===========================================
unc, unc+, gref,       (img_file, X2, bbox, phrase, X5)           [x, y, w, h] pixels (COCO, 0-based)
gref_umd
referit                (img_file, X2, bbox, phrase, X5)           [x1, y1, x2, y2] pixels
flickr                 (img_file, bbox, phrase)                   [x1, y1, x2, y2] pixels
mixup (HiVG)           (img_file, X2, bbox, phrase, X5)           [x, y, w, h] for EVERY source
=====================  =========================================  ===========================================

X2 / X5 by variant:
* original TransVG/ReSC files: X2 a mask-file name (``'482127.pth'``), X5 a parsed-attribute list; both unused
  -> kept verbatim in ``Record.extra["x2"]`` / ``["x5"]`` so ``write_split(variant="transvg")`` re-emits them.
* HiVG "ref_data_shuffled": X2 = ``{"height", "width"}`` -> Record.height/width; X5 = COCO polygons of the
  referent -> Record.mask.
* HiVG mixup: X2 = size dict for COCO images (file name starts with ``COCO_``), else the string ``"flickr"`` or
  ``"referit"`` naming the image root -> ``Record.extra["source"]`` in {"coco", "flickr", "referit"}.
* ResVG ``<ds>_new_train.pth`` and CLIP-VG ``<ds>_train_pseudo.pth``: the dataset's own layout (Pseudo-Q
  samples carry the string ``'useless placeholder'`` in X2/X5) -- just another split name here.

Conversion: boxes become float32 xyxy original pixels once, here (x2 = x + w, no -1).  ``int_truncate=True``
reproduces the TransVG/CLIP-VG/HiVG loaders, which cast the four STORED numbers to int (toward zero,
``np.array(bbox, dtype=int)``) before converting xywh -> xyxy (and also cast referit/flickr xyxy boxes): e.g.
xywh (146.37, 11.62, 63.55, 34.29) -> xyxy (146, 11, 209, 45), the ``box_xyxy_int`` of the HiVG golden transforms
case.  ResVG keeps floats (the default here).  Validation always checks the untruncated box.

Expressions are kept exactly as stored (HiVG/TransVG lower-case later, in __getitem__ -- that is the
transform's/tokenizer's job).
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ...checkpoint.safe import UntrustedFileError, torch_load
from ..errors import BOX_TOLERANCE, DataError, IssueLog, RecordList, check_box, reason_of
from ..masks import is_polygons
from ..sample import Record

__all__ = ["read_split", "write_split", "split_path", "load_pth", "DATASETS", "BOX_CONVENTION", "COCO_FAMILY"]

COCO_FAMILY = ("unc", "unc+", "gref", "gref_umd")
BOX_CONVENTION = {"unc": "xywh", "unc+": "xywh", "gref": "xywh", "gref_umd": "xywh",
                  "referit": "xyxy", "flickr": "xyxy", "mixup": "xywh"}
DATASETS = tuple(BOX_CONVENTION)
CONVENTIONS = ("xywh", "xyxy")
MIXUP_SOURCES = ("coco", "flickr", "referit")

_ID_RE = re.compile(r"(\d+)\.[A-Za-z0-9]+$")


def split_path(root, dataset: str, split: str) -> str:
    """``<root>/<dataset>/<dataset>_<split>.pth`` (e.g. ``data/unc/unc_testA.pth``)."""
    return os.path.join(os.fspath(root), dataset, f"{dataset}_{split}.pth")


def load_pth(path, *, trust_pickle: bool = False) -> Any:
    """``torch.load(weights_only=True)`` of a split file (plain lists, tuples, strings, numbers; numpy arrays
    and scalars too).  A file that needs more (pickled objects, which could run code) raises `DataError`
    naming the file; ``trust_pickle=True`` (``--trust_pickle``) unpickles it fully -- only for files you trust.
    Missing or corrupt files raise `DataError` naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: split file not found (expected a torch.save-d list of tuples)")
    try:
        return torch_load(path, trust_pickle=trust_pickle, allow_numpy=True)
    except UntrustedFileError as e:
        raise DataError(str(e)) from None
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: not a readable torch.save file (corrupt or wrong format): {e}") from None


def _image_id(img_file: str) -> Optional[int]:
    m = _ID_RE.search(os.path.basename(img_file))
    return int(m.group(1)) if m else None


def _root_for(image_root, source: str, dataset: str, file: str, index) -> Optional[str]:
    if image_root is None or isinstance(image_root, (str, os.PathLike)):
        return image_root
    if isinstance(image_root, dict):
        for k in (source, dataset):
            if k in image_root:
                return image_root[k]
        raise DataError(f"{file}: sample {index}: image_root has no entry for source {source!r} "
                        f"(keys: {sorted(image_root)})")
    raise DataError(f"image_root must be a str, a dict per source or None, got {type(image_root).__name__}")


class _Bad(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _to_box(v) -> list:
    if isinstance(v, (list, tuple)) and len(v) == 4:
        try:
            return [float(x) for x in v]
        except (TypeError, ValueError) as e:
            raise _Bad("malformed box", f"{v!r}: {e}")
    try:
        b = np.asarray(v.tolist() if torch.is_tensor(v) else v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise _Bad("malformed box", f"{v!r}: {e}")
    if b.shape[0] != 4:
        raise _Bad("malformed box", f"expected 4 numbers, got {b.shape[0]}: {v!r}")
    return b.tolist()


def _to_xyxy(raw: np.ndarray, conv: str) -> np.ndarray:
    """[M, 4] stored boxes -> [M, 4] xyxy."""
    if conv == "xyxy":
        return raw.copy()
    return np.concatenate([raw[:, :2], raw[:, :2] + raw[:, 2:]], 1)


def _fields(item, dataset):
    """Pass 1 (pure Python, per sample): structure, text, X2/X5 interpretation.

    Returns (img_file, raw box list, phrase, height, width, mask, extra, source)."""
    if not isinstance(item, (tuple, list)):
        raise _Bad("malformed entry", f"expected a tuple, got {type(item).__name__}")
    extra: dict = {}
    height = width = None
    mask = None
    if dataset == "flickr":
        if len(item) != 3:
            raise _Bad("malformed entry", f"flickr entries are 3-tuples (img_file, bbox, phrase), got {len(item)} fields")
        img_file, bbox, phrase = item
        source = "flickr"
    else:
        if len(item) != 5:
            raise _Bad("malformed entry", f"{dataset} entries are 5-tuples (img_file, X2, bbox, phrase, X5), "
                                          f"got {len(item)} fields")
        img_file, x2, bbox, phrase, x5 = item
        source = "coco" if dataset in COCO_FAMILY else dataset
        if isinstance(x2, dict) and "height" in x2 and "width" in x2:
            height, width = int(x2["height"]), int(x2["width"])
        elif dataset == "mixup" and isinstance(x2, str) and x2 in ("flickr", "referit"):
            pass
        else:
            extra["x2"] = x2
        if dataset == "mixup":
            if isinstance(img_file, str) and img_file.split("_")[0] == "COCO":
                source = "coco"
            elif isinstance(x2, str) and x2 in ("flickr", "referit"):
                source = x2
            else:
                raise _Bad("unknown mixup source", f"img_file {img_file!r} is not a COCO_ file and X2 is {x2!r}, "
                                                   f"not 'flickr' or 'referit'")
            extra["source"] = source
        if x5 is None:
            pass
        elif is_polygons(x5) or (isinstance(x5, dict) and "counts" in x5):
            mask = x5
        else:
            extra["x5"] = x5
    if not isinstance(img_file, str) or not img_file:
        raise _Bad("malformed entry", f"img_file must be a non-empty str, got {img_file!r}")
    if not isinstance(phrase, str):
        raise _Bad("malformed entry", f"phrase must be a str, got {type(phrase).__name__}")
    if not phrase.strip():
        raise _Bad("empty expression", f"image {img_file!r}")
    return img_file, _to_box(bbox), phrase, height, width, mask, extra, source


def _read_one(data, file, dataset, conv, int_truncate, image_root, split, log, check_images):
    rows, problems = [], []
    for i, item in enumerate(data):
        try:
            rows.append((i,) + _fields(item, dataset))
        except _Bad as e:
            problems.append((i, e.reason, e.detail))
    m = len(rows)
    raw = np.array([r[2] for r in rows], dtype=np.float64).reshape(m, 4)
    hw = np.array([(np.nan if r[4] is None else r[4], np.nan if r[5] is None else r[5]) for r in rows],
                  dtype=np.float64).reshape(m, 2)
    xyxy = _to_xyxy(raw, conv)
    # pass 2, vectorised: degenerate or outside (size known) boxes; messages from check_box for flagged rows only
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(xyxy).all(1) | (xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])
        known = np.isfinite(hw).all(1)
        tol = BOX_TOLERANCE
        bad |= known & ((xyxy[:, 0] < -tol) | (xyxy[:, 1] < -tol) | (xyxy[:, 2] > hw[:, 1] + tol) |
                        (xyxy[:, 3] > hw[:, 0] + tol))
    for k in np.flatnonzero(bad):
        r = rows[k]
        problem = check_box(xyxy[k], r[4], r[5]) or "degenerate box: unknown"
        problems.append((r[0], reason_of(problem), f"{problem}; stored {conv} {raw[k].tolist()}, image {r[1]!r}"))
    if int_truncate:
        xyxy = _to_xyxy(np.trunc(raw), conv)
    boxes = xyxy.astype(np.float32)
    dropped = {i for i, _, _ in problems}
    recs = []
    for k, (i, img_file, _, phrase, h, w, mask, extra, source) in enumerate(rows):
        if i in dropped:
            continue
        root = _root_for(image_root, source, dataset, file, i)
        path = os.path.join(root, img_file) if root else img_file
        if check_images and not os.path.isfile(path):
            problems.append((i, "missing image", path))
            continue
        extra["index"] = i
        recs.append(Record(image_path=path, expression=phrase, boxes=boxes[k:k + 1], image_id=_image_id(img_file),
                           mask=mask, height=h, width=w, dataset=dataset, split=split, extra=extra))
    for i, reason, detail in sorted(problems, key=lambda t: t[0]):
        log.fail(i, reason, detail)  # raises on the first one under on_error="raise"
    return recs


def _split_of(path: str, dataset: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem[len(dataset) + 1:] if stem.startswith(dataset + "_") else stem


def _files(path, dataset, split):
    """Resolve (file, split) pairs: a split root dir + split, or a file; non-referit trainval = train + val."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if split is None:
            raise DataError(f"{path} is a directory: pass split=... to pick <dataset>_<split>.pth")
        if os.path.isdir(os.path.join(path, dataset)):
            path = split_path(path, dataset, split)
        else:
            path = os.path.join(path, f"{dataset}_{split}.pth")
    split = split or _split_of(path, dataset)
    if split == "trainval" and dataset != "referit":  # as the official loaders: never a trainval file
        d = os.path.dirname(path)
        return [(os.path.join(d, f"{dataset}_{s}.pth"), s) for s in ("train", "val")]
    return [(path, split)]


def read_split(path, dataset: str, image_root: Union[str, dict, None] = None, split: Optional[str] = None,
               on_error: str = "raise", box_convention: Optional[str] = None, int_truncate: bool = False,
               check_images: bool = False, trust_pickle: bool = False) -> RecordList:
    """Read one TransVG-family split file (or ``trainval``) into records.

    path           the ``.pth`` file, or the split root (``<root>/<dataset>/<dataset>_<split>.pth`` with `split`).
    dataset        unc | unc+ | gref | gref_umd | referit | flickr | mixup; another name needs `box_convention`.
    image_root     prefix of ``img_file``: a str, a dict per source (keys "coco" / "flickr" / "referit", or the
                   dataset name), or None (paths stay as stored).
    split          recorded in ``Record.split``; inferred from the file name when None.  ``trainval`` for every
                   dataset but referit concatenates ``_train`` and ``_val`` (referit has its own file).
    box_convention "xywh" | "xyxy" override of the dataset's stored convention (e.g. odd pseudo-label files).
    int_truncate   reproduce the official int cast of the stored numbers (see module docstring).
    on_error       "raise" (default) or "skip" (drop bad samples; one summary `DataWarning`; counts in
                   ``result.skipped``).
    check_images   also fail samples whose image file does not exist (stats every path).
    trust_pickle   unpickle the file fully (a file with pickled objects; it could run code): trusted files only.
    """
    if box_convention is not None and box_convention not in CONVENTIONS:
        raise DataError(f"unknown box_convention {box_convention!r}: expected one of {CONVENTIONS}")
    if dataset not in BOX_CONVENTION and box_convention is None:
        raise DataError(f"{os.fspath(path)}: unknown dataset {dataset!r} (known: {', '.join(DATASETS)}); "
                        f"pass box_convention='xywh' or 'xyxy' to read other TransVG-style files")
    conv = box_convention or BOX_CONVENTION[dataset]
    out: list = []
    skipped: dict = {}
    for file, sp in _files(path, dataset, split):
        data = load_pth(file, trust_pickle=trust_pickle)
        if not isinstance(data, (list, tuple)):
            raise DataError(f"{file}: expected a list of per-sample tuples, got {type(data).__name__}")
        log = IssueLog(file, on_error)
        recs = _read_one(data, file, dataset, conv, int_truncate, image_root, sp, log, check_images)
        res = log.finish(recs)
        out.extend(res)
        for k, v in res.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    return RecordList(out, skipped)


def _source_of(r: Record) -> str:
    s = r.extra.get("source")
    if s:
        return s
    if r.dataset in COCO_FAMILY or r.dataset == "coco":
        return "coco"
    if r.dataset in ("flickr", "referit"):
        return r.dataset
    return "coco" if os.path.basename(r.image_path).startswith("COCO_") else ""


def _plain(v):
    """numpy scalars/arrays -> Python numbers/lists so the file loads with weights_only=True."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    return v


def write_split(records: Sequence[Record], path, dataset: str, variant: str = "transvg",
                box_convention: Optional[str] = None, relative_to: Optional[str] = None) -> str:
    """Write records as an official ``<dataset>_<split>.pth`` list (``torch.save``), loadable by the official
    loaders and by `read_split` (also with ``weights_only=True``: only str/float/int/list/dict/tuple inside).

    variant "transvg": X2/X5 = ``Record.extra["x2"]/["x5"]`` when present, else ``""`` and ``[]``.
    variant "hivg":    X2 = ``{"height", "width"}`` (needs Record.height/width for COCO-family and mixup-COCO
                       records), X5 = Record.mask (polygons; an RLE dict is written as is), ``None`` when absent.
    mixup (dataset "mixup", either variant): boxes xywh for every source; X2 = size dict for COCO images, else
    the source string ("flickr" / "referit", from ``extra["source"]`` or the record's dataset).  COCO images
    must be named ``COCO_*`` (HiVG routes by that prefix).
    img_file = basename of image_path, or its path relative to `relative_to`.  Every record needs exactly one
    box.  Returns the path written.
    """
    if variant not in ("transvg", "hivg"):
        raise DataError(f"unknown variant {variant!r}: expected 'transvg' or 'hivg'")
    if box_convention is not None and box_convention not in CONVENTIONS:
        raise DataError(f"unknown box_convention {box_convention!r}: expected one of {CONVENTIONS}")
    if dataset not in BOX_CONVENTION and box_convention is None:
        raise DataError(f"{os.fspath(path)}: unknown dataset {dataset!r} (known: {', '.join(DATASETS)}); "
                        f"pass box_convention")
    conv = box_convention or BOX_CONVENTION[dataset]
    path = os.fspath(path)
    items = []
    for i, r in enumerate(records):
        where = f"{path}: record {i} ({r.key()})"
        if r.num_targets != 1:
            raise DataError(f"{where}: TransVG-style files hold exactly one box per sample, got {r.num_targets}")
        x1, y1, x2, y2 = (float(v) for v in r.boxes[0])
        bbox = [x1, y1, x2 - x1, y2 - y1] if conv == "xywh" else [x1, y1, x2, y2]
        img_file = os.path.relpath(r.image_path, relative_to) if relative_to else os.path.basename(r.image_path)
        phrase = r.expression
        if dataset == "flickr":
            items.append((img_file, bbox, phrase))
            continue
        size = {"height": int(r.height), "width": int(r.width)} if r.height is not None and r.width is not None else None
        if dataset == "mixup":
            source = _source_of(r)
            is_coco_name = img_file.split("_")[0] == "COCO"
            if source == "coco":
                if not is_coco_name:
                    raise DataError(f"{where}: mixup COCO images must be named COCO_* (HiVG routes by that prefix)")
                if size is None:
                    raise DataError(f"{where}: mixup COCO samples need Record.height/width for the X2 size dict")
                X2 = size
            elif source in ("flickr", "referit"):
                if is_coco_name:
                    raise DataError(f"{where}: a {source} image named COCO_* would be read from the COCO root by HiVG")
                X2 = source
            else:
                raise DataError(f"{where}: cannot tell the mixup source (set extra['source'] to one of {MIXUP_SOURCES})")
        elif variant == "hivg":
            if size is None and dataset in COCO_FAMILY:
                raise DataError(f"{where}: the hivg variant needs Record.height/width for the X2 size dict")
            X2 = size if size is not None else r.extra.get("x2", "")
        else:
            X2 = r.extra.get("x2", "")
        if variant == "hivg" or dataset == "mixup":
            X5 = r.mask if r.mask is not None else r.extra.get("x5")
        else:
            X5 = r.extra.get("x5", [])
        items.append((img_file, _plain(X2), bbox, phrase, _plain(X5)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(items, path)
    return path
