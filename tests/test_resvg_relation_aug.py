"""Relation-sensitive augmentation (resvg/relation_aug.py) on synthetic data: every relation word of every
pseudo-query is re-checked against the geometry of all the boxes of its image (an independent check, not the
module's rule), the written new_train split reads back through the TransVG reader with tight mask boxes, and the
ResVG training data path reads it with a prior file made by the prior pipeline."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from resvg import relation_aug
from vgcore.data.errors import DataError
from vgcore.data.formats import transvg
from vgcore.data.masks import decode_mask

KINDS = "circle,square,triangle,star,diamond,cross"
ORDINALS = ("first", "second", "third")
WORDS = {"left", "right", "middle", "top", "bottom", "front", "behind"} | set(ORDINALS)
GAP, RATIO = 0.05, 1.5  # the defaults


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from vgcore.synthetic.scenes import generate

    out = tmp_path_factory.mktemp("syn_aug")
    generate(out, num_train=40, num_val=4, num_test=2, seed=11, formats=("transvg", "refer"), verbose=False)
    return out


def _run(syn, *extra, split_root=None):
    return relation_aug.main(["--dataset", "unc", "--split_root", str(split_root or syn / "split" / "data"),
                              "--image_root", str(syn / "images"), "--num_images", "12", "--seed", "3",
                              "--overwrite", *extra])


def holds(word: str, boxes: np.ndarray, t: int, width: float, height: float) -> bool:
    """Does ``word`` pick out box ``t`` among ``boxes`` (xyxy) with the default margins?"""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    others = [j for j in range(len(boxes)) if j != t]
    gx, gy = GAP * width, GAP * height
    before = sum(cx[j] <= cx[t] - gx for j in others)  # clearly left of the target
    after = sum(cx[j] >= cx[t] + gx for j in others)  # clearly right of it
    every = before + after == len(others)
    if word in ORDINALS:
        return len(boxes) >= 3 and every and before == ORDINALS.index(word)
    return {"left": every and before == 0,
            "right": every and after == 0,
            "middle": every and len(boxes) % 2 == 1 and before == after,
            "top": all(cy[j] >= cy[t] + gy for j in others),
            "bottom": all(cy[j] <= cy[t] - gy for j in others),
            "front": all(area[t] >= RATIO * area[j] for j in others),
            "behind": all(area[j] >= RATIO * area[t] for j in others)}[word]


def check_query(text: str, category: str, boxes: np.ndarray, t: int, width: float, height: float) -> str:
    """The relation word of ``text`` (the words left once the category name is removed) holds for box ``t``;
    returns it."""
    words = [w for w in re.findall(r"[a-z]+", text.replace(category, " ")) if w in WORDS]
    word = words[0]
    assert words == ([word, "left"] if word in ORDINALS else [word]), text
    assert holds(word, boxes, t, width, height), (text, t, boxes.tolist())
    return word


def _verify(syn, res, masks: bool, complete: bool = False, words=WORDS):
    side = json.loads(open(res["relations"]).read())
    split_root = res["split_file"].rsplit("/unc/", 1)[0]
    raw = torch.load(res["split_file"], weights_only=False)
    base = torch.load(f"{split_root}/unc/unc_train.pth", weights_only=False)
    assert raw[:len(base)] == base and side["base_rows"] == len(base)  # the base rows verbatim, first
    recs = transvg.read_split(res["split_file"], "unc", image_root=str(syn / "images"), split="new_train",
                              check_images=True)
    assert len(recs) == len(raw) == len(base) + res["new_rows"]
    seen = set()
    for im in side["images"]:
        boxes = np.asarray(im["boxes"], np.float64)
        with Image.open(syn / "images" / im["file"]) as pic:
            assert pic.size == (im["width"], im["height"])
        assert 2 <= len(boxes) <= 4 and im["queries"]
        found = set()
        for q in im["queries"]:
            word = check_query(q["text"], im["category"], boxes, q["target"], im["width"], im["height"])
            assert word in words, q["text"]
            seen.add(word)
            found.add((q["target"], word))
            r = recs[q["row"]]
            assert r.expression == q["text"] and r.image_path.endswith(im["file"])
            np.testing.assert_allclose(r.boxes[0], boxes[q["target"]], atol=1e-4)
            if masks:  # the stored mask is the pasted pixels; the box is tight around them
                m = decode_mask(r.mask, r.height, r.width)
                ys, xs = np.nonzero(m)
                assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == boxes[q["target"]].tolist()
            else:
                assert r.mask is None
        if complete:  # every relation that holds was emitted
            assert found == {(t, w) for t in range(len(boxes)) for w in words
                             if holds(w, boxes, t, im["width"], im["height"])}, im["file"]
    return seen


def test_pseudo_queries_match_the_box_geometry(syn):
    argv = ("--instances", str(syn / "refer" / "refcoco" / "instances.json"), "--queries_per_image", "30",
            "--num_images", "24")
    res = _run(syn, *argv)
    assert res["images"] == 24 and res["new_rows"] >= 24
    seen = _verify(syn, res, masks=True, complete=True)
    assert seen == WORDS, sorted(WORDS - seen)
    # the same seed gives the same split
    first = torch.load(res["split_file"], weights_only=False)
    _run(syn, *argv)
    assert torch.load(res["split_file"], weights_only=False) == first


def test_scene_backgrounds_keep_and_count_the_scenes_objects(syn):
    """--background scene: instances pasted into free space of a train image, whose objects all stay; the
    relations are those among every instance of the category in the result, the scene's own ones included."""
    inst_path = syn / "refer" / "refcoco" / "instances.json"
    js = json.loads(inst_path.read_text())
    names = {im["id"]: im["file_name"] for im in js["images"]}
    cats = {c["id"]: c["name"] for c in js["categories"]}
    scene_objs = {}  # file name -> [(category, box xyxy)] of every annotated object
    for a in js["annotations"]:
        x, y, w, h = a["bbox"]
        scene_objs.setdefault(names[a["image_id"]], []).append((cats[a["category_id"]], [x, y, x + w, y + h]))
    words = {"left", "right", "top", "bottom", "second", "third"}
    res = _run(syn, "--instances", str(inst_path), "--background", "scene", "--queries_per_image", "30",
               "--num_images", "30", "--relations", ",".join(sorted(words)), "--aug_dir", "aug_scene")
    seen = _verify(syn, res, masks=True, complete=True, words=words)
    assert seen == words, sorted(words - seen)
    side = json.loads(open(res["relations"]).read())
    kept = 0
    for im in side["images"]:
        name = im["scene"].rsplit("/", 1)[-1]
        boxes = np.asarray(im["boxes"])
        pasted = np.asarray(im["pasted"])
        assert pasted.any() and all(s == im["scene"] for s, p in zip(im["sources"], im["pasted"]) if not p)
        own = sorted(b for c, b in scene_objs[name] if c == im["category"])
        assert sorted(boxes[~pasted].tolist()) == own  # every own instance of the category is counted
        for pb in boxes[pasted]:  # pasted instances sit clear of every object of the scene
            for _, b in scene_objs[name]:
                assert pb[2] <= b[0] or b[2] <= pb[0] or pb[3] <= b[1] or b[3] <= pb[1], (name, pb, b)
        out = np.asarray(Image.open(syn / "images" / im["file"]).convert("RGB"), np.int16)
        src = np.asarray(Image.open(syn / "images" / name).convert("RGB"), np.int16)
        assert out.shape == src.shape
        outside = np.ones(out.shape[:2], bool)  # pixels of the scene outside the pasted boxes are unchanged
        for x1, y1, x2, y2 in boxes[pasted].astype(int):
            outside[y1:y2, x1:x2] = False
        assert np.array_equal(out[outside], src[outside])
        kept += int((~pasted).any())
    assert kept >= 10  # images where the scene's own instances take part
    with pytest.raises(SystemExit, match="--background scene needs --instances"):
        _run(syn, "--category_words", KINDS, "--background", "scene")
    with pytest.raises(SystemExit, match="--relations 'left,sideways': unknown"):
        _run(syn, "--instances", str(inst_path), "--relations", "left,sideways")


def test_box_only_instances_from_the_split_records(syn, tmp_path):
    """A TransVG split without masks or categories: categories from --category_words, rectangles pasted."""
    recs = transvg.read_split(syn / "split" / "data" / "unc" / "unc_train.pth", "unc", split="train")
    transvg.write_split([r.replace(mask=None) for r in recs], tmp_path / "unc" / "unc_train.pth", "unc",
                        variant="transvg")
    with pytest.raises(SystemExit, match="carry no category: give --instances"):
        _run(syn, split_root=tmp_path)
    res = _run(syn, "--category_words", KINDS, "--background", "texture", "--max_instances", "3",
               "--aug_dir", "aug_boxes", split_root=tmp_path)
    _verify(syn, res, masks=False)


def test_relation_rules_on_hand_made_boxes():
    rel = relation_aug.relations_of
    row = np.array([[0, 40, 10, 50], [40, 40, 50, 50], [80, 40, 90, 50]], float)  # same size, one row
    assert rel(row, 100, 100) == {0: ["left", "first"], 1: ["middle", "second"], 2: ["right", "third"]}
    close = row.copy()
    close[1] += [36, 0, 36, 0]  # centre 81 vs 85: within 5 px of the right one
    r = rel(close, 100, 100)
    assert r[0] == ["left", "first"] and not r[1] and not r[2]
    depth = np.array([[0, 0, 30, 30], [50, 60, 60, 70]], float)
    assert rel(depth, 100, 100) == {0: ["left", "top", "front"], 1: ["right", "bottom", "behind"]}
    assert rel(depth[:1], 100, 100) == {0: []}


def test_bad_inputs_are_named(syn, tmp_path):
    inst = tmp_path / "instances.json"
    inst.write_text(json.dumps({"images": [{"id": 1, "file_name": "elsewhere.png", "height": 9, "width": 9}],
                                "annotations": [], "categories": []}))
    with pytest.raises(DataError, match=r"instances.json: no annotation .* on an image of the base split"):
        _run(syn, "--instances", str(inst))
    with pytest.raises(DataError, match=r"no instance with a category"):
        _run(syn, "--category_words", "unicorn")
    argv = ["--split_root", str(syn / "split" / "data"), "--out_root", str(tmp_path / "out"), "--image_root",
            str(syn / "images"), "--category_words", KINDS, "--num_images", "1", "--aug_dir", "aug_once"]
    relation_aug.main(argv)
    with pytest.raises(SystemExit, match=r"unc_new_train.pth exists \(--overwrite"):
        relation_aug.main(argv)


def test_new_train_with_its_prior_file_feeds_resvg_training(syn, tmp_path):
    """relation_aug -> prior_gen (tiny models; new_train reuses train's rows) -> the ResVG training data path."""
    pytest.importorskip("diffusers")
    from resvg import method, prior_gen
    from resvg.model import build_model
    from resvg.prior import PRIOR_KEY
    from vgcore import method as protocol
    from vgcore.data.dataset import Collate, GroundingDataset

    root = tmp_path / "data"
    (root / "unc").mkdir(parents=True)
    shutil.copy(syn / "split" / "data" / "unc" / "unc_train.pth", root / "unc" / "unc_train.pth")
    res = _run(syn, "--instances", str(syn / "refer" / "refcoco" / "instances.json"), "--aug_dir", "aug_e2e",
               split_root=root)
    tiny = prior_gen.write_tiny_models(tmp_path / "tiny")
    gen = ["--dataset", "unc", "--split_root", str(root), "--generator", tiny["generator"], "--encoder",
           tiny["encoder"], "--encoder_weights", tiny["encoder_weights"], "--prior_dim", "32", "--steps", "1",
           "--chunk_size", "16", "--batch_size", "8", "--device", "cpu"]
    prior_gen.main(gen + ["--split", "train"])
    prior_gen.main(gen + ["--split", "new_train", "--reuse_split", "train"])
    rows = torch.load(root / "unc" / "new_train_fea.pth")
    n_base = res["rows"] - res["new_rows"]
    assert rows.shape == (res["rows"], 32)
    assert torch.equal(rows[:n_base], torch.load(root / "unc" / "train_fea.pth"))

    args = protocol.train_parser(method).parse_args(
        ["--model_preset", "tiny", "--split_root", str(root), "--image_root", str(syn / "images"),
         "--bert_token_mode", str(syn / "tokenizers" / "vocab.txt"), "--batch_size", "8"])
    assert args.train_split == "new_train"  # what training reads by default
    args.model_config = method._args.model_config_from_args(args).to_dict()
    recs = method.records(args, "new_train", train=True)
    assert len(recs) == res["rows"]
    for r in recs:
        np.testing.assert_array_equal(r.extra[PRIOR_KEY], rows[r.extra["index"]].numpy())
    model = build_model(method._args.model_config_from_args(args)).train()
    from resvg.loss import ResVGCriterion

    criterion = ResVGCriterion(dict(weight_l1=5.0, weight_giou=2.0, aux_loss=True))
    transform, tok = method.pipeline(args, model, True)
    ds = GroundingDataset(recs, transform, tok)
    batch = Collate(tok)([ds[i] for i in range(n_base, n_base + 8)])  # composed samples only
    losses = criterion(model(batch), batch)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss"] > 0


def test_control_list_matches_the_augmented_budget_with_real_rows(syn, tmp_path):
    """--control_like: as many rows of train as the augmented list holds, drawn without replacement, verbatim;
    training reads train + that list under its own (non-official) name."""
    from resvg import method
    from vgcore import method as protocol

    root = tmp_path / "data"
    (root / "unc").mkdir(parents=True)
    shutil.copy(syn / "split" / "data" / "unc" / "unc_train.pth", root / "unc" / "unc_train.pth")
    with pytest.raises(DataError, match=r"unc_new_train.pth: not found"):
        _run(syn, "--control_like", "new_train", "--out_split", "new_train_control", split_root=root)
    aug = _run(syn, "--no_base", "--category_words", KINDS, "--num_images", "4", "--aug_dir", "aug_ctl",
               split_root=root)
    res = _run(syn, "--control_like", "new_train", "--out_split", "new_train_control", split_root=root)
    train = torch.load(root / "unc" / "unc_train.pth", weights_only=True)
    ctl = torch.load(root / "unc" / "unc_new_train_control.pth", weights_only=True)
    assert res["rows"] == len(ctl) == aug["rows"] == len(torch.load(root / "unc" / "unc_new_train.pth"))
    index = {repr(r): i for i, r in enumerate(train)}
    picked = [index[repr(r)] for r in ctl]  # every row is a train row, verbatim
    assert len(set(picked)) == len(picked)  # without replacement
    again = _run(syn, "--control_like", "new_train", "--out_split", "new_train_control", split_root=root)
    assert again["rows"] == len(ctl) and torch.load(root / "unc" / "unc_new_train_control.pth") == ctl  # seeded
    with pytest.raises(DataError, match="split name"):
        _run(syn, "--control_like", "new_train", "--out_split", "bad/name", split_root=root)

    args = protocol.train_parser(method).parse_args(
        ["--model_preset", "tiny", "--split_root", str(root), "--image_root", str(syn / "images"),
         "--bert_token_mode", str(syn / "tokenizers" / "vocab.txt"), "--train_split", "train",
         "--extra_train_splits", "new_train_control", "--prior_missing", "zeros"])
    args.model_config = method._args.model_config_from_args(args).to_dict()
    recs = method.records(args, "train", train=True)
    assert len(recs) == len(train) + len(ctl)
    assert [r.expression for r in recs[len(train):]] == [r[3] for r in ctl]
    args.train_split = "train_control"  # official-name check stays for --train_split
    with pytest.raises(DataError, match="has no split 'train_control'"):
        method.records(args, "train_control", train=True)
