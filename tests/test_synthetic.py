"""The procedural dataset: determinism, unambiguous expressions, exact boxes/masks, baselines, on-disk formats."""
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vgcore.synthetic import scenes as syn
from vgcore.synthetic.baselines import grec_baselines, iou_xyxy, noun_only_baseline, trivial_baselines
from vgcore.data.sample import Record

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2 copy= warning


@pytest.fixture(scope="module")
def val_records():
    return syn.make_records(400, seed=0, split="val")


@pytest.fixture(scope="module")
def grec_records():
    return syn.make_records(200, seed=0, split="val", grec=True)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "a"
    summary = syn.generate(out, num_train=40, num_val=30, num_test=12, seed=5, grec=True, verbose=False)
    return out, summary


def _tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _swap_lr(text: str) -> str:  # the official TransVG/HiVG flip rule (substring replacement)
    return text.replace("right", "*&^special^&*").replace("left", "right").replace("*&^special^&*", "left")


# ------------------------------------------------------------------------------------------ determinism

def test_make_records_deterministic():
    a, ia = syn.make_records(25, seed=3, split="train")
    b, ib = syn.make_records(25, seed=3, split="train")
    c, _ = syn.make_records(25, seed=4, split="train")
    assert len(a) == len(b) == 25
    assert [r.expression for r in a] == [r.expression for r in b]
    assert all(np.array_equal(x.boxes, y.boxes) for x, y in zip(a, b))
    assert ia.keys() == ib.keys() and all(np.array_equal(ia[k], ib[k]) for k in ia)
    assert [r.expression for r in a] != [r.expression for r in c]


def test_generate_same_seed_same_bytes(written, tmp_path):
    out_a, _ = written
    out_b = tmp_path / "b"
    syn.generate(out_b, num_train=40, num_val=30, num_test=12, seed=5, grec=True, verbose=False)
    da, db = _tree_digest(out_a), _tree_digest(out_b)
    assert da.keys() == db.keys()
    assert [k for k in da if da[k] != db[k]] == []


# ------------------------------------------------------------------------------------------ semantics

def _check_unambiguous(records):
    for r in records:
        prog = syn.parse_expression(r.expression)
        assert syn.realise(prog) == r.expression
        got = syn.evaluate(prog, r.extra["objects"], r.width, r.height)
        assert got is not None, f"ill-defined expression {r.key()}"
        assert list(got) == r.extra["target_index"], r.key()
        objs = r.extra["objects"]
        want = np.array([objs[i]["box"] for i in got], np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(want, r.boxes)


def test_expressions_unambiguous_all_splits(val_records, grec_records):
    _check_unambiguous(val_records[0])
    _check_unambiguous(grec_records[0])
    for split in ("testA", "testB"):
        _check_unambiguous(syn.make_records(80, seed=1, split=split)[0])


def test_expressions_survive_horizontal_flip(val_records, grec_records):
    """Mirror the scene and swap left/right in the text: the expression still denotes exactly the same objects."""
    n_lr = n_changed = 0
    for r in val_records[0] + grec_records[0]:
        W = r.width
        flipped = [dict(o, box=[W - o["box"][2], o["box"][1], W - o["box"][0], o["box"][3]]) for o in r.extra["objects"]]
        text = _swap_lr(r.expression)
        n_lr += text != r.expression
        got = syn.evaluate(syn.parse_expression(text), flipped, W, r.height)
        assert got is not None and list(got) == r.extra["target_index"], r.key()
        if text != r.expression:  # the unswapped text on the mirrored scene (usually) means something else
            wrong = syn.evaluate(syn.parse_expression(r.expression), flipped, W, r.height)
            n_changed += wrong is None or list(wrong) != r.extra["target_index"]
    assert n_lr > 0.3 * (len(val_records[0]) + len(grec_records[0]))
    assert n_changed > 0.8 * n_lr  # flipping without swapping the words would corrupt the labels


def test_grammar_coverage(val_records, grec_records):
    types = Counter(r.extra["expr_type"] for r in val_records[0])
    assert set(types) == {"attr", "extreme", "ordinal", "rel"} and min(types.values()) >= 10
    g = grec_records[0]
    assert sum(r.num_targets == 0 for r in g) >= 15 and sum(r.num_targets > 1 for r in g) >= 20
    for r in g:
        if r.num_targets == 0:
            assert r.ann_id == [-1] and r.mask is None
        elif r.num_targets > 1:
            assert isinstance(r.ann_id, list) and len(r.ann_id) == r.num_targets
    words = {w for r in val_records[0] for w in r.expression.split()}
    assert {"left", "right", "top", "bottom"} <= words
    with pytest.raises(ValueError):
        syn.parse_expression("the dog on the sofa")


def test_test_splits_refer_to_their_kind_groups():
    for split, kinds in syn.KIND_GROUPS.items():
        recs, _ = syn.make_records(60, seed=2, split=split)
        assert {r.category for r in recs} <= set(kinds), split


# ------------------------------------------------------------------------------------------ geometry

def test_boxes_tight_and_masks_exact(val_records):
    recs, images = val_records
    seen = set()
    for r in recs[:150]:
        h, w = r.height, r.width
        rle = mask_utils.merge(mask_utils.frPyObjects(r.mask, h, w))
        m = mask_utils.decode(rle).astype(bool)
        ys, xs = np.nonzero(m)
        np.testing.assert_array_equal(r.boxes[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        if r.image_id in seen:
            continue
        seen.add(r.image_id)
        img = images[os.path.basename(r.image_path)]
        assert img.shape == (h, w, 3)
        total = np.zeros((h, w), int)
        for o in r.extra["objects"]:
            om = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(o["segmentation"], h, w))).astype(bool)
            total += om
            assert om.sum() == o["area"] > 30
            px = img[om].astype(int)
            assert (px.max(0) - px.min(0)).max() == 0, "an object's drawn pixels are one flat colour"
            # the fill is nearest to the object's named colour
            names = list(syn.COLORS)
            d = [np.abs(px[0] - np.array(syn.COLORS[c])).sum() for c in names]
            assert names[int(np.argmin(d))] == o["color"]
        assert total.max() == 1, "objects never overlap"


def test_image_sizes_and_object_scale(val_records):
    recs, images = val_records
    sizes = {a.shape[:2] for a in images.values()}
    assert len(sizes) >= 5 and all(96 <= s <= 192 for hw in sizes for s in hw)
    rel = [max(r.boxes[0, 2] - r.boxes[0, 0], r.boxes[0, 3] - r.boxes[0, 1]) / min(r.width, r.height) for r in recs]
    assert min(rel) > 0.1 and np.mean(rel) > 0.2


# ------------------------------------------------------------------------------------------ baselines

def test_baselines_on_hand_made_records():
    objs = [{"category": "circle", "box": [0, 0, 10, 10]}, {"category": "circle", "box": [20, 0, 40, 20]},
            ("square", [50, 50, 60, 60])]
    r1 = Record("a.png", "the small circle", [[0, 0, 10, 10]], width=100, height=100,
                extra={"objects": objs, "noun": "circle"})
    r2 = Record("a.png", "the square", [[50, 50, 60, 60]], width=100, height=100, category="square",
                extra={"objects": objs})
    nt = Record("a.png", "the red star", np.zeros((0, 4)), width=100, height=100, extra={"objects": objs})
    b = trivial_baselines([r1, r2, nt])
    assert b["random_object"] == pytest.approx(1 / 3)  # each record: 1 of 3 objects hits
    assert b["largest_object"] == pytest.approx(0.0)  # the 20x20 circle is never the target
    assert b["center_box"] == pytest.approx(0.0)  # a 10x10 box at (45, 45) misses both targets
    assert noun_only_baseline([r1, r2, nt]) == pytest.approx((1 / 2 + 1) / 2)
    np.testing.assert_allclose(iou_xyxy([[0, 0, 10, 10]], [[5, 0, 15, 10], [0, 0, 10, 10]]), [[1 / 3, 1.0]])
    with pytest.raises(ValueError):
        trivial_baselines([Record("a.png", "x", [[0, 0, 1, 1]], width=9, height=9)])


def test_grec_baselines_on_hand_made_records():
    """Always no-target is right exactly on the no-target records; one box (largest / random object) exactly on
    the single-target records where that object is the target (GIoU matching at 0.5, the GREC metric code)."""
    objs = [{"category": "circle", "box": [0, 0, 10, 10]}, {"category": "circle", "box": [20, 0, 40, 20]},
            {"category": "square", "box": [50, 50, 60, 60]}]
    one_big = Record("a.png", "the big circle", [[20, 0, 40, 20]], width=100, height=100, extra={"objects": objs})
    one_small = Record("a.png", "the small circle", [[0, 0, 10, 10]], width=100, height=100, extra={"objects": objs})
    two = Record("a.png", "all circles", [[0, 0, 10, 10], [20, 0, 40, 20]], width=100, height=100,
                 extra={"objects": objs})
    nt = Record("a.png", "the red star", np.zeros((0, 4)), width=100, height=100, extra={"objects": objs})
    b = grec_baselines([one_big, one_small, two, nt])
    key = "pr@(F1=1,IoU>=0.5)"
    assert b["always_no_target"] == {key: 0.25, "n_acc": 1.0, "t_acc": 0.0}
    assert b["largest_object"] == {key: 0.25, "n_acc": 0.0, "t_acc": 1.0}  # right on one_big only
    assert b["random_object"][key] == pytest.approx((1 / 3 + 1 / 3) / 4)
    assert b["random_object"]["n_acc"] == 0.0


def test_val_is_hard_for_trivial_baselines(val_records):
    recs = val_records[0]
    train, _ = syn.make_records(200, seed=0, split="train")
    frac = np.mean([r.extra["has_distractor"] for r in recs])
    assert frac >= 0.5
    b = trivial_baselines(recs, train_records=train)
    assert set(b) == {"center_box", "largest_object", "random_object"}
    assert all(v <= 0.35 for v in b.values()), b
    assert 0.1 < b["random_object"] < 0.3
    noun = noun_only_baseline(recs)
    assert b["random_object"] < noun < 0.7


# ------------------------------------------------------------------------------------------ on disk

def test_layout_meta_and_tokenizers(written):
    out, summary = written
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 5 and meta["vocab"]["kinds"] == list(syn.KINDS)
    assert meta["splits"]["val"]["records"] == 30 and meta["splits"]["testA"]["records"] == 12
    assert meta["grec_splits"]["val"]["no_target"] + meta["grec_splits"]["val"]["multi_target"] > 0
    for rel in ["split/data/unc/unc_train.pth", "split/data/unc/unc_testB.pth", "split/data/gref_umd/gref_umd_test.pth",
                "refer/refcoco/refs(unc).p", "refer/refcoco/instances.json", "refer/grefcoco/instances.json",
                "seqtr/annotations/refcoco-unc/instances.json", "seqtr/annotations/grefs/instances.json",
                "tokenizers/vocab.txt", "tokenizers/spm.model", "scenes.json"]:
        assert (out / rel).is_file(), rel
    n_img = len(list((out / "images").glob("COCO_train2014_*.png")))
    assert n_img == len(json.loads((out / "scenes.json").read_text()))
    from vgcore.text import Beit3Tokenizer, BertWordPieceTokenizer
    recs, _ = syn.make_records(30, seed=5, split="val")
    bert = BertWordPieceTokenizer(str(out / "tokenizers" / "vocab.txt"), max_len=20)
    ids, mask = bert([r.expression for r in recs])
    assert not (ids == 100).any() and mask.sum(1).max() <= 20  # no [UNK]
    spm = Beit3Tokenizer(str(out / "tokenizers" / "spm.model"), max_len=20, min_vocab=50)
    assert max(len(spm.piece_ids(r.expression)) for r in recs) == max(len(r.expression.split()) for r in recs)


def test_refer_instances_hold_every_object_of_the_images(written):
    """As the real refer instances.json: every object of the images, referred to or not, with its category, box
    and polygons; the refs point at annotations of that file."""
    import pickle

    out, _ = written
    scenes = json.loads((out / "scenes.json").read_text())
    inst = json.loads((out / "refer" / "refcoco" / "instances.json").read_text())
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    by_image = {}
    for a in inst["annotations"]:
        x, y, w, h = a["bbox"]
        by_image.setdefault(a["image_id"], set()).add((cats[a["category_id"]], x, y, x + w, y + h))
        assert a["segmentation"] and a["area"] > 0
    assert {im["id"] for im in inst["images"]} == set(by_image)
    for iid, objs in by_image.items():
        scene = {(o["category"], *o["box"]) for o in scenes[str(iid)]["objects"]}
        assert objs == scene, iid
    with open(out / "refer" / "refcoco" / "refs(unc).p", "rb") as f:
        refs = pickle.load(f)
    ann_ids = {a["id"] for a in inst["annotations"]}
    referred = {r["ann_id"] for r in refs}
    assert referred <= ann_ids and len(referred) < len(ann_ids)  # unreferred objects are listed too


@pytest.mark.parametrize("fmt", ["transvg", "refer", "seqtr"])
def test_load_synthetic_round_trip(written, fmt):
    out, _ = written
    for split, grec in [("val", False), ("testA", False)] + ([("val", True)] if fmt != "transvg" else []):
        mem, _ = syn.make_records(30 if split == "val" else 12, seed=5, split=split, grec=grec)
        got = syn.load_synthetic(out, split, fmt=fmt, grec=grec)
        key = lambda r: (r.expression, tuple(np.round(r.boxes.ravel(), 3)))
        assert sorted(map(key, got)) == sorted(map(key, mem))
        assert all(os.path.isfile(r.image_path) for r in got)
        assert all(r.extra["objects"] for r in got)
    single = [r for r in got if r.num_targets == 1]
    assert 0 < noun_only_baseline(single) <= 1


def test_cli(tmp_path):
    s = syn.main(["--out", str(tmp_path / "c"), "--num-train", "8", "--num-val", "8", "--num-test", "4",
                  "--formats", "transvg", "--no-tokenizers", "--image-format", "jpg"])
    assert list(s["formats"]) == ["transvg"] and not (tmp_path / "c" / "tokenizers").exists()
    assert len(list((tmp_path / "c" / "images").glob("COCO_train2014_*.jpg"))) > 0


def test_scene_options_single_object_and_scale(val_records):
    """min/max_objects and object_scale: single-object scenes (every expression names the only shape), larger
    shapes by the given factor; the default options reproduce the default dataset exactly."""
    one, _ = syn.make_records(40, seed=0, split="val", min_objects=1, max_objects=1)
    assert len(one) == 40 and all(len(r.extra["objects"]) == 1 for r in one)
    assert all(syn.evaluate(syn.parse_expression(r.expression), r.extra["objects"], r.width, r.height) == (0,)
               for r in one)
    assert all(np.array_equal(r.boxes[0], r.extra["objects"][0]["box"]) for r in one)

    def rel_size(recs):
        return np.mean([max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) / min(r.width, r.height)
                        for r in recs for o in r.extra["objects"]])
    big, _ = syn.make_records(40, seed=0, split="val", min_objects=2, max_objects=3, object_scale=1.5)
    assert all(2 <= len(r.extra["objects"]) <= 3 for r in big)
    assert rel_size(big) > 1.25 * rel_size(val_records[0])  # 1.34: big shapes that find no spot are dropped
    default, _ = syn.make_records(25, seed=0, split="val", min_objects=3, max_objects=8, object_scale=1.0)
    assert [r.expression for r in default] == [r.expression for r in val_records[0][:25]]
    with pytest.raises(ValueError, match="min_objects"):
        syn.make_records(2, min_objects=0)


def test_cli_scene_options(tmp_path):
    syn.main(["--out", str(tmp_path / "d"), "--num-train", "6", "--num-val", "4", "--num-test", "2", "--formats",
              "transvg", "--no-tokenizers", "--min-objects", "1", "--max-objects", "1", "--object-scale", "1.2"])
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["scene_options"] == {"min_objects": 1, "max_objects": 1, "object_scale": 1.2}
    assert all(len(o["objects"]) == 1 for o in json.loads((tmp_path / "d" / "scenes.json").read_text()).values())


def test_train_types_keep_only_those_expressions(written, tmp_path):
    """--train-types attr,rel: the train split without position expressions; val, the images and the
    tokenizers' vocabulary are those of the full dataset."""
    full, _ = written
    out = tmp_path / "b"
    syn.main(["--out", str(out), "--num-train", "40", "--num-val", "30", "--num-test", "12", "--seed", "5",
              "--formats", "transvg", "--grec", "--train-types", "attr,rel"])
    kept = syn.load_synthetic(out, "train", fmt="transvg")
    every = syn.load_synthetic(full, "train", fmt="transvg")
    assert {syn.expression_type(r) for r in kept} <= {"attr", "rel"}
    key = lambda r: (r.image_path.rsplit("/", 1)[-1], r.expression)  # noqa: E731
    assert sorted(map(key, kept)) == sorted(key(r) for r in every if syn.expression_type(r) in ("attr", "rel"))
    assert len(kept) < len(every)
    assert (out / "split/data/unc/unc_val.pth").read_bytes() == (full / "split/data/unc/unc_val.pth").read_bytes()
    assert (out / "tokenizers/vocab.txt").read_text() == (full / "tokenizers/vocab.txt").read_text()
    assert json.loads((out / "meta.json").read_text())["train_types"] == ["attr", "rel"]
    with pytest.raises(ValueError, match="unknown"):
        syn.generate(tmp_path / "c", num_train=2, num_val=1, num_test=1, train_types=["where"], verbose=False)
