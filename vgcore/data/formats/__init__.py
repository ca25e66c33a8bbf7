"""One reader (and writer) per on-disk annotation format; each returns ``list[Record]`` (a `RecordList`).

==========  ==========================================================  ===================================
format      files                                                       reader / writer
==========  ==========================================================  ===================================
"transvg"   ``<root>/<ds>/<ds>_<split>.pth`` (TransVG, CLIP-VG, HiVG,     `transvg.read_split` / `write_split`
            ResVG)
"refer"     ``<root>/<ds>/refs(<by>).p`` or ``grefs(<by>).json|.p`` +    `refer.read_refer` / `write_refer`
            ``instances.json`` (lichengunc refer, gRefCOCO)
"seqtr"     ``annotations/<name>/instances.json`` keyed by split         `seqtr.read_seqtr` / `write_seqtr`
            (SeqTR, SimVG, ALVG; REC and gRefCOCO)
==========  ==========================================================  ===================================

`load_records(fmt, **kw)` dispatches to the reader; `detect_format(path)` guesses the format of a file or
directory.
"""
from __future__ import annotations

import json
import os

from ..errors import DataError, RecordList
from . import refer, seqtr, transvg
from .refer import read_refer, write_refer
from .seqtr import read_seqtr, write_seqtr
from .transvg import read_split, split_path, write_split

__all__ = ["load_records", "detect_format", "READERS", "read_split", "write_split", "split_path",
           "read_refer", "write_refer", "read_seqtr", "write_seqtr", "transvg", "refer", "seqtr"]

READERS = {"transvg": read_split, "refer": read_refer, "seqtr": read_seqtr}


def load_records(fmt: str, **kw) -> RecordList:
    """``load_records("transvg", path=..., dataset="unc", split="val")`` etc.; kwargs go to the reader."""
    if fmt not in READERS:
        raise DataError(f"unknown annotation format {fmt!r}: expected one of {sorted(READERS)}")
    return READERS[fmt](**kw)


def _is_refs_name(name: str) -> bool:
    return (name.startswith("refs(") and name.endswith(").p")) or \
        (name.startswith("grefs(") and (name.endswith(").p") or name.endswith(").json")))


def detect_format(path) -> str:
    """"transvg" | "refer" | "seqtr" for a split file / refs file / instances.json / their directory.

    A ``.pth`` file or a directory of ``<ds>_<split>.pth`` -> transvg; a ``(g)refs(...)`` file, or a directory /
    instances.json next to one -> refer; an instances.json whose top level is {split: [entries with
    "expressions"]} -> seqtr.  Raises `DataError` when nothing matches.
    """
    path = os.fspath(path)
    name = os.path.basename(path.rstrip(os.sep))
    if os.path.isfile(path):
        if name.endswith(".pth"):
            return "transvg"
        if _is_refs_name(name):
            return "refer"
        if name.endswith(".json"):
            d = os.path.dirname(os.path.abspath(path))
            if any(_is_refs_name(n) for n in os.listdir(d)):
                return "refer"
            return _json_kind(path)
        raise DataError(f"{path}: cannot tell the annotation format from the file name")
    if os.path.isdir(path):
        names = os.listdir(path)
        if any(_is_refs_name(n) for n in names):
            return "refer"
        if any(n.endswith(".pth") for n in names):
            return "transvg"
        if "instances.json" in names:
            return _json_kind(os.path.join(path, "instances.json"))
        sub = [os.path.join(path, n) for n in names if os.path.isdir(os.path.join(path, n))]
        if any(f.endswith(".pth") for s in sub for f in os.listdir(s)):
            return "transvg"
        raise DataError(f"{path}: no split .pth files, refs files or instances.json found")
    raise DataError(f"{path}: no such file or directory")


def _json_kind(path) -> str:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable JSON: {e}") from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        first = next((v[0] for v in data.values() if v), None)
        if first is None or (isinstance(first, dict) and "expressions" in first):
            return "seqtr"
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        raise DataError(f"{path}: COCO instances without a refs(...)/grefs(...) file next to it (refer layout "
                        f"needs both)")
    raise DataError(f"{path}: JSON is neither a SeqTR instances.json nor part of a refer layout")
