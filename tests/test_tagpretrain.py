"""Dense-tag pretraining (`vgcore.synthetic.tagpretrain`, `hivg/pretrain_tiny.py`): the labels follow the scenes, the tiny
tower learns them, and the written CLIP file loads into hivg/train.py with the image tower frozen."""
import numpy as np
import pytest
import torch

from vgcore.synthetic.scenes import TAG_CLASSES, scene_tag_maps
from vgcore.data.transforms import build_transforms
from vgcore.synthetic.tagpretrain import SceneTagDataset, pretrain_tags, tag_accuracy
from vgcore.synthetic.tagpretrain import make_scenes

TINY = ["--model", "tiny", "--dataset", "unc", "--imsize", "64", "--max_query_len", "12", "--normalize_before",
        "--enable_adaptive_weights"]


def test_make_scenes_one_per_scene_and_deterministic():
    from vgcore.synthetic.scenes import make_records

    recs, imgs = make_scenes(30, seed=4)
    assert len(recs) == 30 == len({r.image_path for r in recs}) == len(imgs)
    again, _ = make_scenes(30, seed=4)
    assert [r.image_path for r in again] == [r.image_path for r in recs]
    other, other_imgs = make_scenes(30, seed=5)
    assert not np.array_equal(imgs[recs[0].image_path], other_imgs[other[0].image_path])
    # the scenes of make_records with the same arguments, objects included, without the expressions
    full, full_imgs = make_records(40, seed=4)
    by_name = {r.image_path: r for r in recs}
    shared = [r for r in full if r.image_path in by_name]
    assert len({r.image_path for r in shared}) >= 8
    for r in shared:
        assert np.array_equal(full_imgs[r.image_path], imgs[r.image_path])
        assert r.extra["objects"] == by_name[r.image_path].extra["objects"]
    assert all(r.expression == "" and len(r.boxes) == len(r.extra["objects"]) for r in recs)
    with pytest.raises(ValueError, match="num must be"):
        make_scenes(0)


def test_dataset_labels_the_shapes_and_caches():
    recs, imgs = make_scenes(12, seed=4, object_scale=1.5)
    ds = SceneTagDataset(recs, imgs, build_transforms("hivg", train=False, imsize=128), patch=16,
                         fields=("kind", "color", "size"))
    assert ds.num_classes == {f: len(TAG_CLASSES[f]) + 1 for f in ("kind", "color", "size")}
    img, lab = ds[0]
    assert img.shape == (3, 128, 128) and img.dtype == torch.float32
    assert lab.shape == (3, 8, 8) and lab.dtype == torch.int64
    # kind, colour and size label the same patches (one owner per patch), and some patches carry a shape
    on = lab[0] > 0
    assert on.any() and torch.equal(on, lab[1] > 0) and torch.equal(on, lab[2] > 0)
    # the labelled kinds / colours are those of the scene's shapes
    objs = recs[0].extra["objects"]
    kinds = {TAG_CLASSES["kind"].index(o["category"]) + 1 for o in objs}
    colors = {TAG_CLASSES["color"].index(o["color"]) + 1 for o in objs}
    assert set(lab[0][on].tolist()) <= kinds and set(lab[1][on].tolist()) <= colors
    img2, lab2 = ds[0]  # from the cache: the same sample (image kept in float16)
    assert torch.equal(lab2, lab) and torch.allclose(img2, img, atol=1e-2)
    with pytest.raises(ValueError, match="unknown tag fields"):
        SceneTagDataset(recs, imgs, None, 16, fields=("shape",))
    with pytest.raises(ValueError, match="no image"):
        SceneTagDataset(recs, {}, None, 16)
    bad = [recs[0].replace(extra={})]
    with pytest.raises(ValueError, match=r"record 0 .*objects"):
        SceneTagDataset(bad, imgs, build_transforms("hivg", train=False, imsize=128), 16)[0]
    assert scene_tag_maps(objs, recs[0].height, recs[0].width)["kind"].max() > 0


def test_position_fields_label_every_patch_with_its_grid_cell():
    recs, imgs = make_scenes(4, seed=4, object_scale=1.5)
    ds = SceneTagDataset(recs, imgs, build_transforms("simvg", train=False, imsize=128), patch=16,
                         fields=("kind", "row", "col"))
    assert ds.num_classes == {"kind": len(TAG_CLASSES["kind"]) + 1, "row": 9, "col": 9}
    _, lab = ds[1]
    assert lab.shape == (3, 8, 8)
    assert lab[1].tolist() == [[r + 1] * 8 for r in range(8)]
    assert lab[2].tolist() == [list(range(1, 9))] * 8
    _, only_kind = SceneTagDataset(recs, imgs, build_transforms("simvg", train=False, imsize=128), 16,
                                   fields=("kind",))[1]
    assert torch.equal(only_kind[0], lab[0])  # the content tags do not depend on the other fields


def test_tiny_tower_learns_colours_and_kinds():
    """200 steps on 96 scenes: the colour of the covering shape is read from almost every patch, and the kind
    well above what the untrained tower with a trained head reaches (the features carry the shape)."""
    from hivg.model import build_model

    torch.manual_seed(0)
    recs, imgs = make_scenes(96, seed=6, object_scale=1.5, max_objects=5)
    vrecs, vimgs = make_scenes(48, seed=6, split="val", object_scale=1.5, max_objects=5)
    tf = build_transforms("hivg", train=False, imsize=128)
    train, val = SceneTagDataset(recs, imgs, tf, 16), SceneTagDataset(vrecs, vimgs, tf, 16)

    def run(train_tower):
        torch.manual_seed(0)
        tower = build_model("hivg-tiny", context_length=12).vision
        for p in tower.parameters():
            p.requires_grad_(train_tower)
        feats = lambda x: tower(x)[0][-1][:, 1:]  # noqa: E731
        res = pretrain_tags(feats, tower.parameters(), train, steps=200, batch_size=16, lr=2e-3,
                            val_dataset=train, log_every=50)
        return res, tag_accuracy(feats, res["heads"], val, train.fields)

    res, acc = run(True)
    assert res["history"][-1]["loss"] < 0.5 * res["history"][0]["loss"]
    frozen_res, frozen_acc = run(False)  # a linear probe on the random tower
    assert acc["color"] > 0.9, acc
    assert res["val"]["kind"] > frozen_res["val"]["kind"] + 0.15, (res["val"], frozen_res["val"])
    assert acc["kind"] > frozen_acc["kind"] + 0.05, (acc, frozen_acc)  # held-out scenes (measured 0.19 vs 0.07)


def test_pretrain_tiny_file_loads_frozen_into_train(tmp_path, monkeypatch):
    """hivg/pretrain_tiny.py writes CLIP weights that `--clip_dir` loads strictly; `--train_clip text` keeps
    the image tower's base weights frozen (bridges train), `all` trains it, the default `none` freezes both."""
    import hivg.pretrain_tiny as pt
    from hivg.recipes import build_hivg
    from hivg.weights import load_pretrained
    from hivg.train import get_args_parser

    trained = {}

    def spy(features, params, *a, **kw):  # the parameters the tag pretraining updates
        trained["params"] = list(params)
        return pretrain_tags(features, trained["params"], *a, **kw)

    monkeypatch.setattr(pt, "pretrain_tags", spy)
    out = tmp_path / "tiny_clip.pth"
    summary = pt.main(pt.get_args_parser().parse_args(
        TINY + ["--out", str(out), "--steps", "4", "--num_scenes", "16", "--val_scenes", "8",
                "--pretrain_batch_size", "8", "--log_every", "2"]))
    assert set(summary["val_tag_accuracy"]) == {"kind", "color"}
    obj = torch.load(out, weights_only=False)
    saved = obj["model"]
    assert saved and all(k.startswith(("vision.", "text.", "text_projection", "visual_projection", "logit_scale"))
                         and ".bridge." not in k for k in saved)

    def built(mode):
        args = get_args_parser().parse_args(TINY + ["--clip_dir", str(out)] + (["--train_clip", mode] if mode else []))
        model = build_hivg(args)
        load_pretrained(model, args)
        return model

    m = built("text")
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in saved.items())
    grads = dict((n, p.requires_grad) for n, p in m.named_parameters())
    vision_base = [n for n in grads if n.startswith("vision.") and ".bridge." not in n and ".lora_" not in n]
    assert vision_base and not any(grads[n] for n in vision_base)
    assert all(grads[n] for n in grads if ".bridge." in n and ".lora_" not in n)
    rest = [n for n in grads if n.startswith(("text.", "fusion.", "bbox_head.")) and ".lora_" not in n]
    assert any(n.startswith("fusion.") for n in rest) and all(grads[n] for n in rest)
    assert all(dict(built("all").named_parameters())[n].requires_grad for n in vision_base)
    none = dict(built(None).named_parameters())
    assert not none["text.token_embedding.weight"].requires_grad and not any(none[n].requires_grad for n in vision_base)
    # the image tower's base weights and LoRA adapters train (merged into the saved base weights); no bridge
    want = [v.shape for k, v in saved.items() if k.startswith("vision.")]
    want += [p.shape for n, p in m.named_parameters() if n.startswith("vision.") and ".lora_" in n
             and ".bridge." not in n]
    assert sorted(tuple(p.shape) for p in trained["params"]) == sorted(tuple(s) for s in want)
    # the saved tower is the trained one: with the saved tag heads it reproduces the reported accuracy
    heads = torch.nn.ModuleDict({f: torch.nn.Linear(64, len(TAG_CLASSES[f]) + 1) for f in ("kind", "color")})
    heads.load_state_dict(obj["extra"]["tag_heads"])
    vrecs, vimgs = make_scenes(8, seed=1, split="val")
    val = SceneTagDataset(vrecs, vimgs, build_transforms("hivg", train=False, imsize=64), 16)
    again = tag_accuracy(lambda x: m.vision(x)[0][-1][:, 1:], heads, val, ("kind", "color"))
    assert again == pytest.approx(summary["val_tag_accuracy"], abs=1e-6)
    # a file missing a tower parameter is refused, naming it
    broken = dict(saved)
    broken.pop("vision.ln_pre.weight")
    torch.save({"model": broken}, tmp_path / "broken.pth")
    args = get_args_parser().parse_args(TINY + ["--clip_dir", str(tmp_path / "broken.pth")])
    with pytest.raises(KeyError, match="vision.ln_pre.weight"):
        load_pretrained(build_hivg(args), args)


def test_train_clip_flag_values():
    from hivg.train import get_args_parser
    p = get_args_parser()
    assert p.parse_args(["--train_clip"]).train_clip == "all" and p.parse_args([]).train_clip == "none"
    with pytest.raises(SystemExit):
        p.parse_args(["--train_clip", "both"])

def test_program_tags_say_what_the_expression_says():
    from vgcore.synthetic.scenes import make_records, parse_expression
    from vgcore.synthetic.tagpretrain import TEXT_TAG_CLASSES, program_tags

    p = {"type": "rel", "np": {"kind": "star", "color": "purple", "size": None, "plural": False},
         "anchor": {"kind": "cross", "color": None, "size": "small", "plural": False}, "rel": "right"}
    tags = dict(zip(TEXT_TAG_CLASSES, program_tags(p)))
    K = TEXT_TAG_CLASSES
    assert tags == {"kind": K["kind"].index("star") + 1, "color": K["color"].index("purple") + 1, "size": 0,
                    "expr_type": K["expr_type"].index("rel") + 1, "dir": K["dir"].index("right") + 1,
                    "ordinal": 0, "anchor_kind": K["kind"].index("cross") + 1, "anchor_color": 0,
                    "anchor_size": K["size"].index("small") + 1}
    assert program_tags({"type": "ordinal", "np": {"kind": None}, "dir": "top", "k": 3}, ("ordinal", "dir", "kind")) \
        == [2, K["dir"].index("top") + 1, 0]
    with pytest.raises(ValueError, match="dir = 'up'"):
        program_tags({"type": "extreme", "np": {}, "dir": "up"})
    # the labels are a function of the text: the parsed expression gives the same ones as the program
    recs, _ = make_records(60, seed=3)
    for r in recs:
        assert program_tags(parse_expression(r.expression)) == program_tags(r.extra["program"]), r.expression


def test_text_tower_learns_to_parse_and_pretrain_tiny_saves_it(tmp_path):
    """The text phase of hivg/pretrain_tiny.py: the tiny text tower learns the program tags of held-out
    expressions far above the majority class, and the written file carries the trained text tower."""
    import hivg.pretrain_tiny as pt
    from vgcore.synthetic.scenes import make_records
    from vgcore.synthetic.tagpretrain import TEXT_TAG_CLASSES, ExpressionTagDataset
    from vgcore.text import build_tokenizer

    out = tmp_path / "tiny_clip.pth"
    summary = pt.main(pt.get_args_parser().parse_args(
        TINY + ["--out", str(out), "--steps", "2", "--num_scenes", "8", "--val_scenes", "200",
                "--pretrain_batch_size", "4", "--text_steps", "150", "--text_records", "1500", "--log_every", "50"]))
    acc = summary["val_text_tag_accuracy"]
    vrecs, _ = make_records(200, seed=1, split="val")
    majority = ExpressionTagDataset(vrecs, build_tokenizer("clip", max_len=12)).labels
    for f in ("kind", "expr_type", "dir"):
        base = float(majority[:, list(TEXT_TAG_CLASSES).index(f)].bincount().max()) / len(vrecs)
        assert acc[f] > min(base + 0.3, 0.95), (f, acc[f], base)
    saved = torch.load(out, weights_only=False)["model"]
    init = pt.build_hivg(pt.get_args_parser().parse_args(TINY + ["--out", "x"])).state_dict()
    assert not torch.equal(saved["text.token_embedding.weight"], init["text.token_embedding.weight"])
    with pytest.raises(ValueError, match="no extra\\['program'\\]"):
        ExpressionTagDataset([vrecs[0].replace(extra={})], build_tokenizer("clip", max_len=12))


def test_mask_tokens_hides_inner_tokens_only():
    from vgcore.synthetic.tagpretrain import mask_tokens
    ids = torch.tensor([[0, 5, 6, 7, 2, 1, 1], [0, 9, 2, 1, 1, 1, 1], [0, 2, 1, 1, 1, 1, 1]])
    mask = ids != 1
    inp, tgt = mask_tokens(ids, mask, mask_id=99, prob=1.0)
    assert inp.tolist() == [[0, 99, 99, 99, 2, 1, 1], [0, 99, 2, 1, 1, 1, 1], [0, 2, 1, 1, 1, 1, 1]]
    assert tgt.tolist() == [[-100, 5, 6, 7, -100, -100, -100], [-100, 9] + [-100] * 5, [-100] * 7]
    inp, tgt = mask_tokens(ids, mask, mask_id=99, prob=0.0, generator=torch.Generator().manual_seed(0))
    assert (inp == 99).sum(1).tolist() == [1, 1, 0]  # at least one per row that has an inner token
    assert torch.equal(tgt >= 0, inp == 99) and torch.equal(tgt[tgt >= 0], ids[inp == 99])
    g = torch.Generator().manual_seed(1)
    long_ids = torch.randint(4, 50, (400, 20))
    long_ids[:, 0], long_ids[:, -1] = 0, 2
    share = (mask_tokens(long_ids, torch.ones_like(long_ids, dtype=torch.bool), 99, 0.5, g)[0] == 99).float().mean()
    assert abs(float(share) - 0.5 * 18 / 20) < 0.03


def test_referent_tags_follow_the_described_object():
    from vgcore.synthetic.scenes import COLORS, KINDS, SIZES, make_records
    from vgcore.synthetic.tagpretrain import referent_tags

    recs, _ = make_records(300, seed=2, split="train", grec=True)  # gRefCOCO-style: no- and multi-target too
    tags = referent_tags(recs, grid=8)
    assert tags.shape == (300, 5)
    single = [i for i, r in enumerate(recs) if len(r.extra["target_index"]) == 1]
    multi = [i for i, r in enumerate(recs) if len(r.extra["target_index"]) != 1]
    assert single and multi and (tags[multi] == -100).all()
    for i in single[:50]:
        r = recs[i]
        o = r.extra["objects"][r.extra["target_index"][0]]
        x0, y0, x1, y1 = o["box"]
        assert tags[i].tolist() == [KINDS.index(o["category"]), list(COLORS).index(o["color"]),
                                    SIZES.index(o["size"]), int((y0 + y1) / 2 / r.height * 8),
                                    int((x0 + x1) / 2 / r.width * 8)]
        assert np.allclose(r.boxes[0], o["box"])  # the record's target box is that object's
    with pytest.raises(ValueError, match="target_index"):
        referent_tags([recs[0].replace(extra={})], grid=8)


def test_joint_tags_learn_through_the_pooled_feature():
    """`pretrain_joint_tags`: heads on a pooled joint feature learn what held-out expressions say, and the
    referent's kind, far above the majority class (a bag of tokens knows the kind the expression names)."""
    from vgcore.synthetic.scenes import make_records
    from vgcore.synthetic.tagpretrain import (TEXT_TAG_CLASSES, ImageTextDataset, pretrain_joint_tags, record_tags,
                                    referent_tags)
    from vgcore.text import build_tokenizer

    tok = build_tokenizer("clip", max_len=12)
    tf = build_transforms("hivg", train=False, imsize=32)
    recs, imgs = make_records(1000, seed=1, split="train")
    vrecs, vimgs = make_records(200, seed=1, split="val")
    train, val = ImageTextDataset(recs, imgs, tf, tok), ImageTextDataset(vrecs, vimgs, tf, tok)
    torch.manual_seed(0)
    emb = torch.nn.Embedding(tok.vocab_size, 64)
    img_proj = torch.nn.Linear(3, 64)

    def pooled(img, ids, mask):  # the mean token embedding plus the mean colour of the image
        w = mask.float()[..., None]
        return (emb(ids) * w).sum(1) / w.sum(1) + img_proj(img.mean((2, 3)))

    res = pretrain_joint_tags(pooled, list(emb.parameters()) + list(img_proj.parameters()), train, steps=250,
                              referent_weight=1.0, grid=4, batch_size=32, lr=3e-3, warmup_steps=20,
                              val_dataset=val)
    labels, ref = record_tags(vrecs), referent_tags(vrecs, grid=4)
    for f in ("kind", "expr_type", "dir"):
        base = float(labels[:, list(TEXT_TAG_CLASSES).index(f)].bincount().max()) / len(vrecs)
        assert res["val"][f] > min(base + 0.3, 0.9), (f, res["val"][f], base)
    kinds = ref[ref[:, 0] >= 0, 0]
    assert res["val"]["referent_kind"] > float(kinds.bincount().max()) / len(kinds) + 0.3, res["val"]
    assert set(res["val"]) >= {"referent_row", "referent_col", "referent_color", "referent_size"}
    assert res["history"][-1]["loss"] < res["history"][0]["loss"]
    with pytest.raises(ValueError, match="no extra\\['program'\\]"):
        record_tags([vrecs[0].replace(extra={})])
    with pytest.raises(ValueError, match="grid"):
        pretrain_joint_tags(pooled, [], train, steps=1, referent_weight=1.0)
