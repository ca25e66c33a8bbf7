"""Annotation readers/writers (transvg, refer, seqtr), image loading and masks."""
import json
import os
import pickle
import warnings

from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from vgcore.data.errors import DataError, DataWarning
from vgcore.data.formats import detect_format, load_records, refer, seqtr, transvg
from vgcore.data.image import load_image
from vgcore.data.masks import box_mask, decode_mask, encode_mask, union_segmentation
from vgcore.data.sample import Record

SIZES = {11: (60, 80), 22: (100, 50), 33: (40, 40)}


def coco_name(i):
    return "COCO_train2014_%012d.jpg" % i


def poly_of(b):
    x1, y1, x2, y2 = b
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def make_records(dataset="unc"):
    """3 images, 5 objects, 2 expressions each, splits train/val; float boxes, polygon masks."""
    objs = [(11, [5.25, 6.5, 40.75, 30.125], "train"), (11, [50.0, 1.5, 79.5, 59.0], "train"),
            (22, [0.0, 0.0, 49.0, 99.25], "val"), (22, [10.5, 20.5, 30.5, 60.75], "train"),
            (33, [3.3, 4.4, 20.2, 35.5], "val")]
    recs = []
    for k, (iid, b, sp) in enumerate(objs):
        h, w = SIZES[iid]
        for j in range(2):
            recs.append(Record(coco_name(iid), f"object {k} phrase {j}", b, image_id=iid, height=h, width=w,
                               mask=poly_of(b), dataset=dataset, split=sp))
    return recs


def by_key(recs):
    return sorted(recs, key=lambda r: (os.path.basename(r.image_path), r.expression))


def assert_same(a, b, masks=True, sizes=True):
    a, b = by_key(a), by_key(b)
    assert [os.path.basename(r.image_path) for r in a] == [os.path.basename(r.image_path) for r in b]
    assert [r.expression for r in a] == [r.expression for r in b]
    for x, y in zip(a, b):
        assert x.boxes.shape == y.boxes.shape
        np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-3, rtol=0)
        if sizes:
            assert (x.height, x.width) == (y.height, y.width)
        if masks:
            if x.mask is None or y.mask is None:
                assert x.mask is None and y.mask is None
            else:
                h, w = x.height, x.width
                np.testing.assert_array_equal(decode_mask(x.mask, h, w), decode_mask(y.mask, h, w))


# ------------------------------------------------------------------------------------------------ transvg

def test_transvg_roundtrip_hivg_variant(tmp_path):
    recs = make_records()
    for sp in ("train", "val"):
        transvg.write_split([r for r in recs if r.split == sp], transvg.split_path(tmp_path, "unc", sp), "unc",
                            variant="hivg")
    got = transvg.read_split(tmp_path, "unc", split="val", image_root="/imgs")
    assert_same(got, [r for r in recs if r.split == "val"])
    assert all(r.split == "val" and r.image_path.startswith("/imgs/COCO_") for r in got)
    assert got[0].image_id in (22, 33)
    tv = transvg.read_split(tmp_path, "unc", split="trainval")  # train + val concatenated
    assert_same(tv, recs)
    assert sorted({r.split for r in tv}) == ["train", "val"]


def test_transvg_layouts_literal(tmp_path):
    recs = make_records()
    # unc, transvg variant: (str, str, xywh list, str, list)
    p = transvg.write_split(recs, tmp_path / "unc_val.pth", "unc")
    data = torch.load(p, weights_only=True)
    assert isinstance(data, list) and len(data) == 10
    t = data[0]
    assert isinstance(t, tuple) and len(t) == 5
    assert t[0] == coco_name(11) and t[1] == "" and t[3] == "object 0 phrase 0" and t[4] == []
    assert all(isinstance(v, float) for v in t[2])
    np.testing.assert_allclose(t[2], [5.25, 6.5, 35.5, 23.625])
    # unc, hivg variant: size dict + polygon
    t = torch.load(transvg.write_split(recs, tmp_path / "h.pth", "unc", variant="hivg"), weights_only=True)[0]
    assert t[1] == {"height": 60, "width": 80} and t[4] == poly_of([5.25, 6.5, 40.75, 30.125])
    # referit: 5-tuple, xyxy stored
    rr = [r.replace(image_path="1234.jpg", dataset="referit") for r in recs[:2]]
    t = torch.load(transvg.write_split(rr, tmp_path / "referit_test.pth", "referit"), weights_only=True)[0]
    assert len(t) == 5 and t[0] == "1234.jpg"
    np.testing.assert_allclose(t[2], [5.25, 6.5, 40.75, 30.125])
    # flickr: 3-tuple (img, xyxy, phrase)
    fr = [r.replace(image_path="99.jpg", dataset="flickr") for r in recs[:2]]
    t = torch.load(transvg.write_split(fr, tmp_path / "flickr_test.pth", "flickr"), weights_only=True)[0]
    assert len(t) == 3 and t[0] == "99.jpg" and t[2] == "object 0 phrase 0"
    np.testing.assert_allclose(t[1], [5.25, 6.5, 40.75, 30.125])
    got = transvg.read_split(tmp_path / "flickr_test.pth", "flickr")
    assert got[0].split == "test" and got[0].height is None
    np.testing.assert_allclose(got[0].boxes, [[5.25, 6.5, 40.75, 30.125]], atol=1e-3)


def test_transvg_mixup(tmp_path):
    recs = make_records()[:2] + [
        Record("77.jpg", "a dog", [1, 2, 11, 22], dataset="flickr"),
        Record("88.jpg", "the sky", [0, 0, 30, 10.5], dataset="referit")]
    data = torch.load(transvg.write_split(recs, tmp_path / "mixup_train.pth", "mixup", variant="hivg"),
                      weights_only=True)
    assert data[0][1] == {"height": 60, "width": 80}
    assert [d[1] for d in data[2:]] == ["flickr", "referit"]
    np.testing.assert_allclose(data[2][2], [1, 2, 10, 20])  # xywh for every source
    np.testing.assert_allclose(data[3][2], [0, 0, 30, 10.5])
    roots = {"coco": "/coco", "flickr": "/f30k", "referit": "/rit"}
    got = transvg.read_split(tmp_path / "mixup_train.pth", "mixup", image_root=roots)
    assert [r.image_path for r in got] == ["/coco/" + coco_name(11)] * 2 + ["/f30k/77.jpg", "/rit/88.jpg"]
    assert [r.extra["source"] for r in got] == ["coco", "coco", "flickr", "referit"]
    assert_same(got, recs, masks=False, sizes=False)
    assert [r.image_path for r in transvg.read_split(tmp_path / "mixup_train.pth", "mixup", image_root="/x")][2] \
        == "/x/77.jpg"
    with pytest.raises(DataError, match="named COCO_"):
        transvg.write_split([recs[2].replace(image_path="COCO_x.jpg")], tmp_path / "m.pth", "mixup")


def test_transvg_int_truncate_and_referit_trainval(tmp_path):
    torch.save([("COCO_train2014_000000000001.jpg", {"height": 200, "width": 280},
                 [146.37, 11.62, 63.55, 34.29], "The red ball on the LEFT", None)], tmp_path / "unc_val.pth")
    r = transvg.read_split(tmp_path / "unc_val.pth", "unc", int_truncate=True)[0]
    np.testing.assert_array_equal(r.boxes, [[146, 11, 209, 45]])
    assert r.expression == "The red ball on the LEFT"  # kept as stored
    r = transvg.read_split(tmp_path / "unc_val.pth", "unc")[0]
    np.testing.assert_allclose(r.boxes, [[146.37, 11.62, 209.92, 45.91]], atol=1e-4)
    os.makedirs(tmp_path / "referit")
    torch.save([("5.jpg", "5_1.pth", [1.7, 2.2, 30.9, 40.1], "x", [])], tmp_path / "referit" / "referit_trainval.pth")
    got = transvg.read_split(tmp_path, "referit", split="trainval", int_truncate=True)
    np.testing.assert_array_equal(got[0].boxes, [[1, 2, 30, 40]])
    assert got[0].extra["x2"] == "5_1.pth" and got[0].extra["x5"] == []


def test_transvg_golden_int_truncation(tmp_path, golden_dir):
    """Every golden case with the on-disk xywh box and box_xyxy_int: our int_truncate reproduces it."""
    import goldenlib
    n = 0
    for spec in sorted(golden_dir.glob("*/*/spec.json")):
        if "box_xyxy_int" not in json.loads(spec.read_text()).get("outputs", {}):
            continue
        case = goldenlib.load_case(spec.parent)
        boxes, sizes = case["inputs"]["box_xywh_on_disk"], case["inputs"]["img_size"]
        items = [(coco_name(i), {"height": int(s[0]), "width": int(s[1])}, [float(v) for v in b], "t", None)
                 for i, (b, s) in enumerate(zip(boxes, sizes))]
        torch.save(items, tmp_path / "unc_val.pth")
        got = transvg.read_split(tmp_path / "unc_val.pth", "unc", int_truncate=True)
        ours = torch.tensor(np.stack([r.box for r in got]))
        goldenlib.assert_matches(ours, case["outputs"]["box_xyxy_int"], atol=0, rtol=0)
        n += 1
    if n == 0:
        pytest.skip("no golden case carries box_xyxy_int")


def _bad_tuples():
    ok = ("COCO_train2014_000000000001.jpg", {"height": 50, "width": 50}, [1, 1, 10, 10], "fine", None)
    return [ok,
            ("COCO_train2014_000000000001.jpg", {"height": 50, "width": 50}, [1, 1, 0, 10], "zero width", None),
            ("COCO_train2014_000000000001.jpg", {"height": 50, "width": 50}, [30, 30, 25, 10], "outside", None),
            ("COCO_train2014_000000000001.jpg", {"height": 50, "width": 50}, [1, 1, 10, 10], "  ", None),
            ("COCO_train2014_000000000001.jpg", [1, 1, 10, 10], "three fields"),
            ("COCO_train2014_000000000001.jpg", {"height": 50, "width": 50}, [40, 40, 10.9, 10.9], "0.8px out", None)]


@pytest.mark.parametrize("index,what", [(1, "degenerate box"), (2, "box outside image"), (3, "empty expression"),
                                        (4, "malformed entry")])
def test_transvg_bad_samples_raise(tmp_path, index, what):
    items = _bad_tuples()
    path = tmp_path / "unc_val.pth"
    torch.save([items[0], items[index]], path)
    with pytest.raises(DataError) as e:
        transvg.read_split(path, "unc")
    assert str(path) in str(e.value) and "sample 1" in str(e.value) and what in str(e.value)


def test_transvg_skip_counts(tmp_path):
    path = tmp_path / "unc_val.pth"
    torch.save(_bad_tuples(), path)
    with pytest.warns(DataWarning, match="skipped 4 sample") as w:
        got = transvg.read_split(path, "unc", on_error="skip")
    assert len(w) == 1 and len(got) == 2 and got.num_skipped == 4
    assert got.skipped == {"degenerate box": 1, "box outside image": 1, "empty expression": 1, "malformed entry": 1}
    assert [r.expression for r in got] == ["fine", "0.8px out"]  # 1 px tolerance


def test_transvg_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        transvg.read_split(tmp_path / "unc_val.pth", "unc")
    (tmp_path / "unc_val.pth").write_bytes(b"garbage, not a torch file")
    with pytest.raises(DataError, match=r"unc_val\.pth.*not a readable torch\.save file"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transvg.read_split(tmp_path / "unc_val.pth", "unc")
    torch.save({"a": 1}, tmp_path / "unc_val.pth")
    with pytest.raises(DataError, match="expected a list of per-sample tuples"):
        transvg.read_split(tmp_path / "unc_val.pth", "unc")
    with pytest.raises(DataError, match="unknown dataset 'refcoco'"):
        transvg.read_split(tmp_path / "unc_val.pth", "refcoco")
    with pytest.raises(DataError, match="unknown box_convention 'cxcywh'"):
        transvg.read_split(tmp_path / "unc_val.pth", "unc", box_convention="cxcywh")
    # numpy arrays inside are plain data: read by the weights-only loader, no opt-in needed
    torch.save([("a_1.jpg", "", np.array([1.0, 2.0, 3.0, 4.0]), "np box", [])], tmp_path / "x_val.pth")
    got = transvg.read_split(tmp_path / "x_val.pth", "x", box_convention="xywh")
    np.testing.assert_allclose(got[0].boxes, [[1, 2, 4, 6]])
    # a pickled object is refused (no fallback to full unpickling) unless trust_pickle is given
    torch.save([("a_1.jpg", "", [1.0, 2.0, 3.0, 4.0], "obj", [Fraction(1, 2)])], tmp_path / "y_val.pth")
    with pytest.raises(DataError, match=r"y_val\.pth: refused: it pickles fractions\.Fraction.*--trust_pickle"):
        transvg.read_split(tmp_path / "y_val.pth", "y", box_convention="xywh")
    got = transvg.read_split(tmp_path / "y_val.pth", "y", box_convention="xywh", trust_pickle=True)
    assert got[0].extra["x5"] == [Fraction(1, 2)]


def test_check_images(tmp_path):
    Image.new("RGB", (80, 60)).save(tmp_path / coco_name(11))
    recs = make_records()[:2] + make_records()[4:6]
    transvg.write_split(recs, tmp_path / "unc_val.pth", "unc", variant="hivg")
    assert len(transvg.read_split(tmp_path / "unc_val.pth", "unc", image_root=str(tmp_path))) == 4
    with pytest.raises(DataError, match="missing image"):
        transvg.read_split(tmp_path / "unc_val.pth", "unc", image_root=str(tmp_path), check_images=True)
    with pytest.warns(DataWarning):
        got = transvg.read_split(tmp_path / "unc_val.pth", "unc", image_root=str(tmp_path), check_images=True,
                                 on_error="skip")
    assert len(got) == 2 and got.skipped == {"missing image": 2}


# ------------------------------------------------------------------------------------------------ refer

def test_refer_roundtrip(tmp_path):
    recs = make_records("refcoco")
    paths = refer.write_refer(recs, tmp_path, "refcoco", "unc")
    assert paths["refs"].endswith("refs(unc).p")
    with open(paths["refs"], "rb") as f:
        refs = pickle.load(f)
    assert len(refs) == 5 and all(len(r["sentences"]) == 2 and isinstance(r["ann_id"], int) for r in refs)
    inst = json.load(open(paths["instances"]))
    assert len(inst["images"]) == 3 and len(inst["annotations"]) == 5
    ann = inst["annotations"][0]
    np.testing.assert_allclose(ann["bbox"], [5.25, 6.5, 35.5, 23.625])
    assert refs[0]["file_name"] != inst["images"][0]["file_name"]  # refer's suffixed name, ignored by the reader
    got = refer.read_refer(tmp_path, "refcoco", "unc", image_root="/coco")
    assert_same(got, recs)
    assert all(r.image_path.startswith("/coco/COCO_") and r.category == "object" for r in got)
    val = refer.read_refer(tmp_path, "refcoco", "unc", split="val")
    assert_same(val, [r for r in recs if r.split == "val"])
    assert len(refer.read_refer(tmp_path, "refcoco", "unc", split=["val", "train"])) == 10


def test_refer_bad_samples(tmp_path):
    recs = make_records("refcoco")[:4]
    paths = refer.write_refer(recs, tmp_path, "refcoco", "unc")
    refs = pickle.load(open(paths["refs"], "rb"))
    refs[1]["sentences"][1]["sent"] = ""
    pickle.dump(refs, open(paths["refs"], "wb"))
    with pytest.raises(DataError) as e:
        refer.read_refer(tmp_path, "refcoco", "unc")
    assert paths["refs"] in str(e.value) and "sample 1 sentence 1" in str(e.value) and "empty expression" in str(e.value)
    inst = json.load(open(paths["instances"]))
    inst["annotations"][0]["bbox"] = [10, 10, -3, 5]
    json.dump(inst, open(paths["instances"], "w"))
    with pytest.warns(DataWarning, match="skipped 2 sample"):
        got = refer.read_refer(tmp_path, "refcoco", "unc", on_error="skip")
    assert len(got) == 1 and got.skipped == {"degenerate box": 1, "empty expression": 1}
    with pytest.raises(DataError, match="no refs file"):
        refer.read_refer(tmp_path, "refcoco", "google")


# ------------------------------------------------------------------------------------------------ seqtr

def test_seqtr_roundtrip_grouping(tmp_path):
    recs = make_records("refcoco-unc")
    by = {sp: [r for r in recs if r.split == sp] for sp in ("train", "val")}
    p = seqtr.write_seqtr(by, tmp_path / "refcoco-unc")
    data = json.load(open(p))
    assert sorted(data) == ["train", "val"]
    assert len(data["train"]) == 3 and all(len(e["expressions"]) == 2 for e in data["train"])  # grouped
    assert len(data["val"]) == 4 and all(len(e["expressions"]) == 1 for e in data["val"])  # one per expression
    e = data["train"][0]
    assert e["image_id"] == 11 and (e["height"], e["width"]) == (60, 80)
    np.testing.assert_allclose(e["bbox"], [5.25, 6.5, 35.5, 23.625])
    got = seqtr.read_seqtr(tmp_path / "refcoco-unc", None, image_root="/c")
    assert_same(got, recs)
    assert {r.split for r in got} == {"train", "val"} and got[0].image_path == "/c/" + coco_name(11)
    # clip=True reproduces SimVG's clip to W-1 / H-1
    clipped = {r.expression: r for r in seqtr.read_seqtr(p, "val", clip=True)}
    np.testing.assert_allclose(clipped["object 2 phrase 0"].boxes, [[0, 0, 49, 99]])
    with pytest.raises(DataError, match=r"no split \['test'\]"):
        seqtr.read_seqtr(p, "test")


def test_seqtr_image_naming(tmp_path):
    rr = [Record("123.jpg", "a", [1, 1, 5, 5], height=10, width=10, split="test")]
    seqtr.write_seqtr({"test": rr}, tmp_path / "referitgame-berkeley" / "instances.json")
    assert seqtr.read_seqtr(tmp_path / "referitgame-berkeley", "test", "/r")[0].image_path == "/r/123.jpg"
    mixed = {"train": [Record(coco_name(5), "a", [1, 1, 5, 5], height=10, width=10, extra={"data_source": "coco"}),
                       Record("9.jpg", "b", [1, 1, 5, 5], height=10, width=10, extra={"data_source": "flickr"})]}
    seqtr.write_seqtr(mixed, tmp_path / "mixed")
    got = seqtr.read_seqtr(tmp_path / "mixed", "train", {"coco": "/c", "flickr": "/f"})
    assert [r.image_path for r in got] == ["/c/" + coco_name(5), "/f/9.jpg"]
    with pytest.raises(DataError, match="unknown SeqTR dataset"):
        seqtr.read_seqtr(tmp_path / "mixed" / "instances.json", "train", dataset="weird")
    got = seqtr.read_seqtr(tmp_path / "mixed", "train", dataset="weird", image_name_fn=lambda e: f"x{e['image_id']}.png")
    assert got[1].image_path == "x9.png"
    # images not named by the SeqTR convention: file_name stored (non-official field) and preferred by the reader
    syn = [Record("scene_3.png", "a", [1, 1, 5, 5], height=10, width=10), Record("other_3.png", "b", [1, 1, 5, 5],
                                                                                 height=10, width=10)]
    with pytest.raises(DataError, match="image_id 3 already used"):
        seqtr.write_seqtr({"val": syn}, tmp_path / "syn")
    seqtr.write_seqtr({"val": syn}, tmp_path / "syn", store_file_name=True)
    assert [r.image_path for r in seqtr.read_seqtr(tmp_path / "syn", "val", "/s")] == ["/s/scene_3.png", "/s/other_3.png"]


def test_seqtr_bad_samples(tmp_path):
    ok = {"image_id": 1, "height": 20, "width": 20, "expressions": ["ok", ""], "bbox": [1, 1, 5, 5]}
    bad = [{"image_id": 1, "height": 20, "width": 20, "expressions": ["zero"], "bbox": [1, 1, 5, 0]},
           {"image_id": 1, "height": 20, "width": 20, "expressions": ["far"], "bbox": [18, 1, 5, 5]},
           {"image_id": 1, "expressions": ["no box"]}]
    p = tmp_path / "refcoco-unc" / "instances.json"
    os.makedirs(p.parent)
    json.dump({"val": [ok] + bad}, open(p, "w"))
    with pytest.raises(DataError) as e:
        seqtr.read_seqtr(p, "val")
    assert str(p) in str(e.value) and "'val' entry 0 expression 1" in str(e.value)
    with pytest.warns(DataWarning, match="skipped 4 sample"):
        got = seqtr.read_seqtr(p, "val", on_error="skip")
    assert [r.expression for r in got] == ["ok"]
    assert got.skipped == {"empty expression": 1, "degenerate box": 1, "box outside image": 1, "malformed entry": 1}
    p.write_text("[1, 2]")
    with pytest.raises(DataError, match="expected a dict"):
        seqtr.read_seqtr(p, "val")
    p.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        seqtr.read_seqtr(p, "val")


# ------------------------------------------------------------------------------------------------ all three

def test_three_formats_agree(tmp_path):
    recs = make_records()
    for sp in ("train", "val"):
        transvg.write_split([r for r in recs if r.split == sp], transvg.split_path(tmp_path / "tv", "unc", sp),
                            "unc", variant="hivg")
    refer.write_refer(recs, tmp_path / "refer", "refcoco", "unc")
    seqtr.write_seqtr({sp: [r for r in recs if r.split == sp] for sp in ("train", "val")},
                      tmp_path / "seqtr" / "refcoco-unc" / "instances.json")
    for sp in ("train", "val"):
        a = load_records("transvg", path=tmp_path / "tv", dataset="unc", split=sp, image_root="/i")
        b = load_records("refer", root=tmp_path / "refer", dataset="refcoco", split_by="unc", split=sp, image_root="/i")
        c = load_records("seqtr", path=tmp_path / "seqtr" / "refcoco-unc", split=sp, image_root="/i")
        assert len(a) == len(b) == len(c) == sum(r.split == sp for r in recs)
        assert_same(a, b)
        assert_same(a, c)
        assert [r.image_path for r in by_key(a)] == [r.image_path for r in by_key(b)] == [r.image_path for r in by_key(c)]
        assert [r.image_id for r in by_key(a)] == [r.image_id for r in by_key(c)]
    assert detect_format(tmp_path / "tv") == "transvg"
    assert detect_format(tmp_path / "tv" / "unc" / "unc_val.pth") == "transvg"
    assert detect_format(tmp_path / "refer" / "refcoco") == "refer"
    assert detect_format(tmp_path / "refer" / "refcoco" / "instances.json") == "refer"
    assert detect_format(tmp_path / "seqtr" / "refcoco-unc") == "seqtr"
    with pytest.raises(DataError, match="unknown annotation format"):
        load_records("coco", path=tmp_path)


def grec_records():
    h, w = 50, 60
    return [Record(coco_name(7), "nothing here", np.zeros((0, 4)), image_id=7, height=h, width=w, split="val"),
            Record(coco_name(7), "both things", [[1, 2, 10, 20], [20.5, 20, 30, 40.25]], image_id=7, height=h,
                   width=w, split="val"),
            Record(coco_name(7), "the left thing", [[1, 2, 10, 20]], image_id=7, height=h, width=w, split="val",
                   mask=poly_of([1, 2, 10, 20])),
            Record(coco_name(8), "no target", np.zeros((0, 4)), image_id=8, height=30, width=30, split="train"),
            Record(coco_name(8), "that one", [[3, 3, 9, 9]], image_id=8, height=30, width=30, split="train")]


def test_grec_roundtrip_refer(tmp_path):
    recs = grec_records()
    paths = refer.write_refer(recs, tmp_path, "grefcoco", "unc")
    assert paths["refs"].endswith("grefs(unc).json")
    refs = json.load(open(paths["refs"]))
    assert refs[0]["ann_id"] == [-1] and len(refs[1]["ann_id"]) == 2
    assert refs[2]["ann_id"] == [refs[1]["ann_id"][0]]  # same object, one annotation
    got = refer.read_refer(tmp_path, "grefcoco", "unc")
    assert_same(got, recs)
    g = {r.expression: r for r in got}
    assert g["nothing here"].is_no_target and g["both things"].num_targets == 2
    assert g["nothing here"].ann_id == [-1]


def test_grec_roundtrip_seqtr(tmp_path):
    recs = grec_records()
    by = {"train": [r for r in recs if r.split == "train"], "val": [r for r in recs if r.split == "val"]}
    p = seqtr.write_seqtr(by, tmp_path / "grefs", grec=True)
    data = json.load(open(p))
    assert len(data["train"]) == 1 and len(data["val"]) == 3  # train grouped per image, val per expression
    e = data["train"][0]
    assert e["expressions"] == ["no target", "that one"] and e["annotations"][0][0]["category_id"] == -1
    assert e["bbox"] == [[[0.0, 0.0, 0.0, 0.0]], [[3.0, 3.0, 6.0, 6.0]]]
    got = seqtr.read_seqtr(p, None)
    assert_same(got, recs)
    both = [r for r in got if r.expression == "both things"][0]
    np.testing.assert_allclose(both.boxes, [[1, 2, 10, 20], [20.5, 20, 30, 40.25]])
    # the all-grouped (convert_gref.py) variant reads the same
    p2 = seqtr.write_seqtr(by, tmp_path / "grefs2" / "instances.json", grec=True, group="all")
    assert len(json.load(open(p2))["val"]) == 1
    assert_same(seqtr.read_seqtr(p2, None, dataset="grefs"), recs)


# ------------------------------------------------------------------------------------------------ images

def test_load_image_modes(tmp_path):
    a = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(a, "L").save(tmp_path / "l.png")
    im = load_image(tmp_path / "l.png")
    assert im.mode == "RGB" and im.size == (10, 12)
    np.testing.assert_array_equal(np.asarray(im), np.repeat(a[..., None], 3, 2))
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "rgba.png"))[0, 0], [200, 100, 50])  # alpha dropped
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    px = np.asarray(load_image(tmp_path / "cmyk.jpg"))[0, 0].astype(int)
    assert px[0] > 240 and px[1] < 15 and px[2] < 15  # red
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.info["transparency"] = 1
    p.save(tmp_path / "p.png", transparency=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        im = load_image(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(np.asarray(im)[0, 0], [10, 20, 30])
    a16 = (np.arange(6, dtype=np.uint16) * 13000).reshape(2, 3)
    Image.fromarray(a16).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    im = np.asarray(load_image(tmp_path / "i16.png"))
    np.testing.assert_array_equal(im[..., 0], np.round(a16 / 257.0).astype(np.uint8))
    assert im.shape == (2, 3, 3)


def test_load_image_errors(tmp_path):
    rec = Record("x.png", "the cat", [1, 1, 2, 2], dataset="unc", split="val")
    with pytest.raises(DataError, match=r"file not found") as e:
        load_image(tmp_path / "missing.jpg", rec)
    assert "missing.jpg" in str(e.value) and rec.key() in str(e.value)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "full.jpg")
    raw = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"trunc\.jpg.*corrupt or truncated") as e:
        load_image(tmp_path / "trunc.jpg", rec)
    assert "the cat" in str(e.value)
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"junk\.png.*not a recognised image"):
        load_image(tmp_path / "junk.png")
    with pytest.raises(DataError, match=r"image is 64x64.*annotation says 10x20"):
        load_image(tmp_path / "full.jpg", rec.replace(height=10, width=20), check_size=True)


# ------------------------------------------------------------------------------------------------ masks

@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_masks():
    h, w = 20, 30
    m = decode_mask([[2, 2, 10, 2, 10, 8, 2, 8], [6, 4, 14, 4, 14, 12, 6, 12]], h, w)
    assert m.dtype == np.uint8 and m.shape == (h, w) and m.max() == 1  # union, not sum
    one = decode_mask([[2, 2, 10, 2, 10, 8, 2, 8]], h, w)
    two = decode_mask([[6, 4, 14, 4, 14, 12, 6, 12]], h, w)
    np.testing.assert_array_equal(m, np.maximum(one, two))
    rle = encode_mask(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [h, w]
    np.testing.assert_array_equal(decode_mask(rle, h, w), m)
    unc = {"size": [h, w], "counts": [0, 5, h * w - 5]}  # uncompressed RLE (column-major)
    d = decode_mask(unc, h, w)
    assert d.sum() == 5 and d[:5, 0].all()
    np.testing.assert_array_equal(decode_mask(None, h, w), np.zeros((h, w), np.uint8))
    with pytest.raises(DataError, match="does not match"):
        decode_mask(rle, h + 1, w)
    # HiVG box mask = frPyObjects of the float xywh ndarray
    box = [3.4, 2.6, 17.8, 11.2]
    ref = mask_utils.decode(mask_utils.frPyObjects(np.array([[3.4, 2.6, 14.4, 8.6]]), h, w))[..., 0]
    np.testing.assert_array_equal(box_mask(box, h, w), ref)
    np.testing.assert_array_equal(box_mask([3.4, 2.6, 14.4, 8.6], h, w, fmt="xywh"), ref)
    assert box_mask(np.array([box, box]), h, w).shape == (2, h, w)
    assert union_segmentation([[[1, 1, 5, 1, 5, 5]], [[7, 7, 9, 7, 9, 9]]]) == [[1, 1, 5, 1, 5, 5], [7, 7, 9, 7, 9, 9]]
    u = union_segmentation([rle, [[20, 10, 28, 10, 28, 18]]], h, w)
    np.testing.assert_array_equal(decode_mask(u, h, w), np.maximum(m, decode_mask([[20, 10, 28, 10, 28, 18]], h, w)))


def test_refer_and_seqtr_file_errors(tmp_path):
    recs = make_records("refcoco")[:2]
    paths = refer.write_refer(recs, tmp_path, "refcoco", "unc")
    json.dump({"images": []}, open(paths["instances"], "w"))
    with pytest.raises(DataError, match=r"instances\.json: expected a dict with 'images'"):
        refer.read_refer(tmp_path, "refcoco", "unc")
    open(paths["refs"], "wb").write(b"\x80\x04garbage")
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: not a readable pickle"):
        refer.read_refer(tmp_path, "refcoco", "unc")
    with pytest.raises(DataError, match="file not found"):
        seqtr.read_seqtr(tmp_path / "nothing" / "instances.json", "val")
    p = seqtr.write_seqtr({"val": recs}, tmp_path / "refcoco-unc")
    Image.new("RGB", (80, 60)).save(tmp_path / coco_name(11))
    assert len(seqtr.read_seqtr(p, "val", image_root=str(tmp_path), check_images=True)) == 2
    with pytest.warns(DataWarning, match="missing image"):
        got = seqtr.read_seqtr(p, "val", image_root=str(tmp_path / "x"), check_images=True, on_error="skip")
    assert len(got) == 0 and got.skipped == {"missing image": 2}


def test_box_mask_golden(golden_dir):
    """box_mask on the original image, nearest-resized and pasted as the case says, equals the official obj_mask."""
    import goldenlib
    import torch.nn.functional as F
    need = {"obj_mask", "resized_hw", "pad_top_left"}
    n = 0
    for spec in sorted(golden_dir.glob("*/*/spec.json")):
        if not need <= set(json.loads(spec.read_text()).get("outputs", {})):
            continue
        case = goldenlib.load_case(spec.parent)
        ins, outs = case["inputs"], case["outputs"]
        if "box_xywh_on_disk" not in ins or "img_size" not in ins:
            continue
        S = outs["obj_mask"].shape[-1]
        for k, (b, (h, w)) in enumerate(zip(ins["box_xywh_on_disk"].numpy(), ins["img_size"].tolist())):
            m = torch.from_numpy(box_mask(b, h, w, fmt="xywh"))[None, None].float()
            rh, rw = outs["resized_hw"][k].tolist()
            t, l = outs["pad_top_left"][k].tolist()
            canvas = torch.zeros(S, S, dtype=torch.uint8)
            canvas[t:t + rh, l:l + rw] = (F.interpolate(m, size=(rh, rw), mode="nearest")[0, 0] > 0.5).to(torch.uint8)
            goldenlib.assert_matches(canvas, outs["obj_mask"][k, 0].to(torch.uint8), atol=0, rtol=0)
        n += 1
    if n == 0:
        pytest.skip("no golden case carries obj_mask with the on-disk box")
