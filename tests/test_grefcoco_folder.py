"""gRefCOCO in the SeqTR layout is read from the folder the official SimVG configs use,
``annotations/grefs_grec/instances.json``; the older name ``annotations/grefs`` is accepted when the official
folder is absent, and the official folder wins when both exist."""
from __future__ import annotations

import numpy as np

from vgcore.data.build import load_split, seqtr_annotation_path
from vgcore.data.formats import seqtr
from vgcore.data.sample import Record


def _records(tag: str):
    name = "COCO_train2014_%012d.jpg" % 7
    return [Record(name, f"{tag} nothing here", np.zeros((0, 4)), image_id=7, height=50, width=60, split="val"),
            Record(name, f"{tag} both things", [[1, 2, 10, 20], [20, 20, 30, 40]], image_id=7, height=50,
                   width=60, split="val")]


def _write(root, folder, tag):
    seqtr.write_seqtr({"val": _records(tag)}, root / folder / "instances.json", grec=True)


def _read(root):
    recs = load_split("seqtr", "grefcoco", "val", split_root=str(root), data_root=str(root), layout="seqtr")
    return sorted(r.expression for r in recs)


def test_official_folder_is_read(tmp_path):
    _write(tmp_path, "grefs_grec", "official")
    assert seqtr_annotation_path(str(tmp_path), "grefcoco") == tmp_path / "grefs_grec" / "instances.json"
    assert _read(tmp_path) == ["official both things", "official nothing here"]


def test_old_folder_is_accepted(tmp_path):
    _write(tmp_path, "grefs", "old")
    assert seqtr_annotation_path(str(tmp_path), "grefcoco") == tmp_path / "grefs" / "instances.json"
    got = load_split("seqtr", "grefcoco", "val", split_root=str(tmp_path), data_root=str(tmp_path), layout="seqtr")
    assert sorted(r.num_targets for r in got) == [0, 2]


def test_official_folder_wins(tmp_path):
    _write(tmp_path, "grefs", "old")
    _write(tmp_path, "grefs_grec", "official")
    assert _read(tmp_path) == ["official both things", "official nothing here"]


def test_missing_names_the_official_folder(tmp_path):
    assert seqtr_annotation_path(str(tmp_path), "grefcoco") == tmp_path / "grefs_grec" / "instances.json"
