"""Unit tests of vgcore.data.transforms and vgcore.data.dataset.

The central property: for every family, eval and train (random augmentations included, seeded loops
over many draws), the boxes, the object mask and the recorded affine agree --
  * the transformed box equals the original box pushed through the affine (clipped to what is visible),
  * `Batch.boxes_to_original` brings the normalised target back onto the original box (<= 0.5 px),
  * the bbox of the transformed mask (which only follows the IMAGE operations) matches the transformed box.
"""
from __future__ import annotations

import pickle
import random
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vgcore.data.dataset import Collate, GroundingDataset, make_dataloader
from vgcore.data.sample import Record, affine_apply_boxes, affine_invert_boxes
from vgcore.data.transforms import (
    ClipBoxesToImage, Compose, LargeScaleJitter, PadCanvas, RandomCropKeepBox, RandomHorizontalFlip, RandomResize,
    RandomSelect, RandomSizeCrop, Sample, Stretch, ToTensorNormalize, VGLawRandomResize, build_transforms,
    cv2_resize_linear, cv2_resize_nearest, has_direction_word, torch_nearest_index, normalize_lut, swap_left_right,
    transvg_center_offset)

TEXTS = ["the dog", "man on the left", "red car", "bright lamp in the middle", "laptop", "the big one"]


def _scene(rng: np.random.Generator, h: int, w: int):
    """A random picture, one integer box well inside it and its rectangle mask."""
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    bw, bh = int(rng.integers(w // 5, w // 2)), int(rng.integers(h // 5, h // 2))
    x1, y1 = int(rng.integers(1, w - bw - 1)), int(rng.integers(1, h - bh - 1))
    box = np.array([[x1, y1, x1 + bw, y1 + bh]], dtype=np.float64)
    mask = np.zeros((h, w), np.uint8)
    mask[y1:y1 + bh, x1:x1 + bw] = 1
    return img, box, mask


def _visible_region(s: Sample) -> torch.Tensor:
    """The image area of the final canvas, xyxy input pixels."""
    h, w = s.meta.get("image_hw", s.image.shape[-2:])
    if "pad_top_left" in s.meta:
        top, left = s.meta["pad_top_left"]
    else:
        top, left = 0, 0
    return torch.tensor([left, top, left + w, top + h], dtype=torch.float64)


def _mask_bbox(m: torch.Tensor):
    ys, xs = torch.nonzero(m, as_tuple=True)
    if ys.numel() == 0:
        return None
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float64)


CONFIGS = [
    # (family, train, imsize, flags, picture size range)
    ("hivg", False, 224, {}, (80, 240)),
    ("hivg", True, 224, {}, (80, 240)),
    ("transvg", True, 320, {"aug_blur": True}, (80, 240)),
    ("transvg", True, 320, {"compat": True}, (80, 240)),
    ("resvg", False, 640, {}, (80, 240)),
    ("resvg", True, 640, {}, (80, 240)),
    ("simvg", False, 320, {}, (80, 240)),
    ("simvg", True, 320, {}, (80, 240)),
    ("alvg", False, 320, {}, (80, 240)),
    ("vglaw", False, 448, {}, (80, 240)),
    ("vglaw", True, 448, {"multi_scale": True}, (80, 480)),
]


@pytest.mark.parametrize("family,train,imsize,flags,hw", CONFIGS,
                         ids=[f"{c[0]}-{'train' if c[1] else 'eval'}-{i}" for i, c in enumerate(CONFIGS)])
def test_box_mask_affine_agree(family, train, imsize, flags, hw):
    tf = build_transforms(family, train, imsize, **flags)
    rng = np.random.default_rng(zlib.crc32(f"{family}-{train}-{imsize}".encode()))  # stable across processes
    random.seed(1234)
    n_draws = 16 if train else 4
    samples = []
    for k in range(n_draws):
        h, w = (int(v) for v in rng.integers(hw[0], hw[1], 2))
        img, box, mask = _scene(rng, h, w)
        s = tf(Sample(image=Image.fromarray(img), boxes=box, text=TEXTS[k % len(TEXTS)], mask=mask))
        assert torch.is_tensor(s.image) and s.image.dtype == torch.float32
        H, W = s.image.shape[-2:]
        assert s.pixel_mask.shape == (H, W) and s.mask.shape == (H, W)
        aff = torch.tensor(s.affine, dtype=torch.float64)
        vis = _visible_region(s)
        # 1. the box equals the affine image of the original box, clipped to what is visible
        pushed = affine_apply_boxes(torch.from_numpy(box), aff)
        clipped = torch.cat([torch.maximum(pushed[:, :2], vis[:2]), torch.minimum(pushed[:, 2:], vis[2:])], 1)
        # a box cut away entirely (TransVG's swapped crop test, compat=True, allows it) collapses onto the crop edge
        clipped[:, 2:] = torch.maximum(clipped[:, 2:], clipped[:, :2])
        # (coordinates clipped by a crop may differ by < 0.5 px: the official TransVG resize scales boxes by
        # size / long_side while the image gets round(side * ratio) pixels)
        assert torch.allclose(s.boxes, clipped, atol=0.5), (family, k, s.boxes, clipped)
        inside = torch.cat([pushed[:, :2] > vis[:2] + 0.5, pushed[:, 2:] < vis[2:] - 0.5], 1)
        assert torch.allclose(s.boxes[inside], pushed[inside], atol=1e-6), (family, k, s.boxes, pushed)
        # 2. the mask (image operations only) lands on the box
        mb = _mask_bbox(s.mask)
        out_area = (s.boxes[0, 2:] - s.boxes[0, :2]).clamp(min=0).prod()
        if mb is None:
            assert out_area < 4 * abs(s.affine[0] * s.affine[2]) + 4, (family, k)
            continue
        # nearest-neighbour rounding at both ends: one output pixel plus one source pixel, and for two-step
        # resizes (SimVG LSJ then stretch) one pixel of the intermediate image, seen through the last step
        tol = 1.0 + abs(s.affine[0]) + abs(s.affine[2]) + max(s.meta.get("scale_factor", (0.0, 0.0)))
        assert torch.allclose(mb, s.boxes[0], atol=tol), (family, k, mb, s.boxes[0], s.affine)
        # 3. the mask never extends into the padding
        assert not bool((s.mask.bool() & s.pixel_mask).any()) or family == "resvg"
        samples.append((s, box, img.shape[:2]))
    # 4. through Collate: normalised targets map back to the original pixels within 0.5 px
    batch = Collate(None)([
        {"image": s.image, "pixel_mask": s.pixel_mask, "boxes": s.boxes, "mask": s.mask, "text": s.text,
         "affine": torch.tensor(s.affine, dtype=torch.float64), "orig_size": hw_, "record": None, "index": i}
        for i, (s, _, hw_) in enumerate(samples)])
    back = batch.boxes_to_original(batch.boxes, clamp=False).double()
    expect = affine_invert_boxes(torch.stack([s.boxes[0] for s, _, _ in samples]), batch.affine)
    assert torch.allclose(back, expect, atol=0.5), (back - expect).abs().max()
    uncropped = torch.tensor([torch.allclose(expect[i], torch.from_numpy(b[0]), atol=1e-4)
                              for i, (_, b, _) in enumerate(samples)])
    orig = torch.stack([torch.from_numpy(b[0]) for _, b, _ in samples])
    assert torch.allclose(back[uncropped], orig[uncropped], atol=0.5)
    if not train:
        assert bool(uncropped.all())


def test_flip_maps_back_and_swaps_words():
    rng = np.random.default_rng(0)
    img, box, mask = _scene(rng, 90, 160)
    s = RandomHorizontalFlip(p=1.0)(Sample(image=Image.fromarray(img), boxes=box, text="the Left one", mask=mask))
    assert s.text == "the Right one"
    assert s.affine[0] == -1.0 and s.affine[1] == 160.0
    np.testing.assert_array_equal(np.asarray(s.image), img[:, ::-1])
    np.testing.assert_array_equal(s.mask, mask[:, ::-1])
    x1, y1, x2, y2 = box[0]
    assert s.boxes[0].tolist() == [160 - x2, y1, 160 - x1, y2]
    back = affine_invert_boxes(s.boxes, torch.tensor(s.affine, dtype=torch.float64))
    assert torch.allclose(back, torch.from_numpy(box))
    # twice = identity (geometry and text)
    s2 = RandomHorizontalFlip(p=1.0)(s)
    assert s2.text == "the Left one" and s2.affine == (1.0, 0.0, 1.0, 0.0)


@pytest.mark.parametrize("text,word,substring", [
    ("the left one", "the right one", "the right one"),
    ("right guy", "left guy", "left guy"),
    ("left and right", "right and left", "right and left"),
    ("bright red lamp", "bright red lamp", "bleft red lamp"),
    ("the upright lamp", "the upright lamp", "the upleft lamp"),
    ("copyright", "copyright", "copyleft"),
    ("leftmost person", "rightmost person", "rightmost person"),  # documented: compounds -most/-ward(s) swap
    ("leftover pizza", "leftover pizza", "rightover pizza"),
    ("Left side, LEFT", "Right side, RIGHT", "Left side, LEFT"),  # word mode keeps case; official is case-sensitive
    ("upper-left corner", "upper-right corner", "upper-right corner"),
])
def test_word_swap(text, word, substring):
    assert swap_left_right(text) == word
    assert swap_left_right(text, "substring") == substring
    assert swap_left_right(text, "none") == text
    assert swap_left_right(swap_left_right(text)) == text  # word mode is an involution


def test_direction_words():
    assert has_direction_word("man on the left")
    assert has_direction_word("TOP shelf") and has_direction_word("leftmost") and has_direction_word("the topmost one")
    assert not has_direction_word("laptop") and not has_direction_word("stop sign")
    assert not has_direction_word("bright lamp") and not has_direction_word("tiptop")
    for t in ("laptop", "stop sign", "bright", "tiptop", "brighter"):  # the official substring rule
        assert has_direction_word(t, "substring")
    # RandomSelect forces the plain branch for direction words
    hits = []
    sel = RandomSelect(lambda s: hits.append("plain") or s, lambda s: hits.append("crop") or s, p_plain=0.0)
    sel(Sample(image=np.zeros((4, 4, 3), np.uint8), boxes=np.zeros((0, 4)), text="laptop"))
    sel(Sample(image=np.zeros((4, 4, 3), np.uint8), boxes=np.zeros((0, 4)), text="the left cup"))
    assert hits == ["crop", "plain"]
    sel.match = "substring"
    sel(Sample(image=np.zeros((4, 4, 3), np.uint8), boxes=np.zeros((0, 4)), text="laptop"))
    assert hits[-1] == "plain"


def test_random_size_crop_checks():
    box = torch.tensor([[500.0, 20.0, 560.0, 60.0]])  # centre (530, 40)
    c = RandomSizeCrop(check="center")
    assert c._accept(box, top=0, left=400, ch=400, cw=400)
    assert not c._accept(box, top=50, left=400, ch=400, cw=400)
    t = RandomSizeCrop(check="transvg")  # official: centre-x > top and centre-y > left (axes swapped)
    assert t._accept(box, top=50, left=30, ch=400, cw=400)  # box centre y=40 is above the crop: accepted
    assert not t._accept(box, top=0, left=400, ch=400, cw=400)  # box fully inside: rejected (cy 40 < left)
    i = RandomSizeCrop(check="iou")
    assert i._accept(box, top=0, left=0, ch=500, cw=535)  # clipped box keeps 35/60 of it: IoU 0.58
    assert not i._accept(box, top=0, left=0, ch=500, cw=525)  # 25/60 = 0.42
    # the crop keeps box / image / affine consistent and stays within the size limits
    random.seed(0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        img, b, m = _scene(rng, 500, 700)
        s = RandomSizeCrop(384, 600, check="iou")(Sample(image=Image.fromarray(img), boxes=b, mask=m))
        h, w = s.size
        assert 384 <= h <= 600 and 384 <= w <= 600 or (h, w) == (500, 700)
        top, left = -s.affine[3], -s.affine[1]
        np.testing.assert_array_equal(np.asarray(s.image), img[int(top):int(top) + h, int(left):int(left) + w])


def test_vglaw_crop_keeps_whole_box():
    random.seed(3)
    rng = np.random.default_rng(3)
    for _ in range(20):
        img, b, m = _scene(rng, 300, 500)
        s = Compose([VGLawRandomResize(448, [448 + 32 * r for r in range(-4, 5)]), RandomCropKeepBox(448)])(
            Sample(image=img, boxes=b, text="a cat", mask=m))
        assert max(s.size) <= 448
        pushed = affine_apply_boxes(torch.from_numpy(b), torch.tensor(s.affine, dtype=torch.float64))
        assert torch.allclose(s.boxes, pushed)  # never clipped


def test_lsj_compat_offset_switch():
    # with compat_last_offset the boxes may be shifted by another offset than the image in the fallback path;
    # without it (default) box, mask and image always agree (checked in test_box_mask_affine_agree)
    rng = np.random.default_rng(5)
    img, b, m = _scene(rng, 200, 300)
    for seed in range(10):
        random.seed(seed)
        s = LargeScaleJitter(320, 0.3, 1.4)(Sample(image=img, boxes=b, mask=m))
        pushed = affine_apply_boxes(torch.from_numpy(b), torch.tensor(s.affine, dtype=torch.float64))
        h, w = s.size
        lim = torch.tensor([w, h, w, h], dtype=torch.float64)
        assert torch.allclose(s.boxes, torch.minimum(pushed.clamp(min=0), lim))


def test_canvas_offsets_and_normalisation():
    assert [transvg_center_offset(d) for d in (0, 1, 2, 3, 5, 64, 65)] == [0, 0, 1, 1, 2, 32, 32]
    lut = normalize_lut((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "div255")
    assert abs(lut[0, 0].item() - (-0.485 / 0.229)) < 1e-6 and abs(lut[2, 255].item() - (1 - 0.406) / 0.225) < 1e-6
    lut255 = normalize_lut((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "raw255")
    assert torch.allclose(lut255, lut, atol=1e-5)
    img = np.full((3, 5, 3), 255, np.uint8)
    s = Compose([ToTensorNormalize(), PadCanvas(8)])(Sample(image=img, boxes=[[0, 0, 5, 3]]))
    assert s.meta["pad_top_left"] == (2, 1)  # round(5/2 - .1) = 2, round(3/2 - .1) = 1
    assert s.pixel_mask.sum() == 64 - 15 and not s.pixel_mask[2:5, 1:6].any()
    assert s.boxes[0].tolist() == [1, 2, 6, 5]
    assert s.image[:, 0, 0].abs().sum() == 0  # the padding is 0 = the mean colour


def test_cv2_resize_properties():
    const = np.full((17, 23, 3), 77, np.uint8)
    assert (cv2_resize_linear(const, 40, 9) == 77).all()
    g = np.tile(np.arange(0, 200, 10, dtype=np.uint8), (5, 1))  # horizontal ramp, 1 channel
    up = cv2_resize_linear(g, 5, 40)
    assert up.shape == (5, 40) and (np.diff(up.astype(int), axis=1) >= 0).all()
    assert cv2_resize_nearest(np.arange(4)[None].repeat(2, 0), 2, 8).tolist()[0] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_torch_nearest_index_matches_interpolate():
    rng = np.random.default_rng(1)
    for src, dst in [(5, 10), (10, 5), (7, 7), (100, 224), (224, 100), (333, 640), (1, 9)] + \
            [tuple(int(v) for v in rng.integers(1, 700, 2)) for _ in range(30)]:
        x = torch.arange(src, dtype=torch.float32)[None, None, None]
        ref = torch.nn.functional.interpolate(x, size=(1, dst), mode="nearest")[0, 0, 0].long().numpy()
        np.testing.assert_array_equal(torch_nearest_index(src, dst), ref, err_msg=f"{src}->{dst}")


def test_cv2_resize_matches_opencv_if_installed():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for _ in range(40):
        H, W, h, w = (int(v) for v in rng.integers(2, 300, 4))
        c = int(rng.choice([1, 3]))
        img = rng.integers(0, 256, (H, W, c), dtype=np.uint8).squeeze(-1) if c == 1 else \
            rng.integers(0, 256, (H, W, c), dtype=np.uint8)
        lin = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        near = cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(cv2_resize_linear(img, h, w), lin)
        np.testing.assert_array_equal(cv2_resize_nearest(img, h, w), near)


def test_seqtr_clip_and_stretch():
    s = Sample(image=np.zeros((100, 50, 3), np.uint8), boxes=[[40, 10, 60, 120]])
    s = Compose([ClipBoxesToImage(), Stretch((64, 64))])(s)
    assert s.boxes[0].tolist() == pytest.approx([40 * 1.28, 10 * 0.64, 49 * 1.28, 99 * 0.64], abs=1e-5)
    assert s.affine[1] == 0 and s.affine[0] == pytest.approx(1.28, rel=1e-7)


def test_multi_and_no_target_and_resize_variants():
    random.seed(0)
    img = np.zeros((100, 200, 3), np.uint8)
    for fam in ("hivg", "resvg", "simvg", "vglaw"):
        for boxes in (np.zeros((0, 4)), np.array([[10, 10, 50, 50], [100, 20, 190, 90]], float)):
            for train in (False, True):
                s = build_transforms(fam, train)(Sample(image=Image.fromarray(img), boxes=boxes, text="two cats"))
                assert s.boxes.shape == (len(boxes), 4)
    s = RandomResize([50], long_side=False, box_scale="per_axis")(Sample(image=img, boxes=[[0, 0, 200, 100]]))
    assert s.size == (50, 100) and s.boxes[0].tolist() == [0, 0, 100, 50]
    with pytest.raises(TypeError):
        build_transforms("hivg", True, aug_crp=True)  # typo in a flag name
    with pytest.raises(ValueError):
        build_transforms("nope", True)


# ------------------------------------------------------------------------------------------ dataset / collate
def _records(n=5):
    recs = []
    for i in range(n):
        boxes = [[10 + i, 20, 60, 70]] if i % 3 == 0 else ([] if i % 3 == 1 else [[5, 5, 30, 30], [40, 40, 90, 60]])
        poly = [[10.0, 20.0, 60.0, 20.0, 60.0, 70.0, 10.0, 70.0]]
        recs.append(Record(image_path=f"im{i}.png", expression=f"the left thing {i}", boxes=np.array(boxes, float),
                           mask=poly, dataset="toy", split="val", ref_id=i))
    return recs


class _Loader:  # module-level class: picklable into DataLoader workers
    def __call__(self, path, record):
        if "bad" in path:
            raise OSError(f"cannot read {path}")
        i = int(path[2:-4])
        return Image.fromarray(np.full((80 + 10 * i, 120, 3), 40 * i, np.uint8))


class _Tok:
    def __call__(self, texts):
        ids = torch.tensor([[len(t), 1, 0] for t in texts])
        return ids, ids != 0


def test_dataset_collate_batch():
    recs = _records(5)
    ds = GroundingDataset(recs, build_transforms("hivg", False, 64), tokenizer=_Tok(), load_masks=True,
                          image_loader=_Loader())
    batch = ds.collate([ds[i] for i in range(len(ds))])
    assert batch.images.shape == (5, 3, 64, 64) and batch.pixel_mask.dtype == torch.bool
    assert batch.num_targets.tolist() == [1, 0, 2, 1, 0]
    assert [t.shape[0] for t in batch.target_boxes] == [1, 0, 2, 1, 0]
    assert batch.boxes[1].abs().sum() == 0 and batch.boxes[4].abs().sum() == 0
    assert torch.equal(batch.boxes[2], batch.target_boxes[2][0])
    assert batch.affine.dtype == torch.float64 and batch.orig_size[0].tolist() == [80, 120]
    assert batch.text_ids.shape == (5, 3) and batch.text_mask.dtype == torch.bool
    assert batch.masks.shape == (5, 64, 64) and batch.masks.dtype == torch.uint8
    back = batch.boxes_to_original(batch.boxes, clamp=False)
    for i in (0, 3):
        assert torch.allclose(back[i].double(), torch.from_numpy(recs[i].boxes[0]).double(), atol=0.5)
    # the mask (the same rectangle as record 0's box) lands where the box does
    ys, xs = torch.nonzero(batch.masks[0], as_tuple=True)
    cx, cy, w, h = (batch.boxes[0] * 64).tolist()
    assert abs(xs.min().item() - (cx - w / 2)) <= 1.5 and abs(ys.max().item() + 1 - (cy + h / 2)) <= 1.5
    assert pickle.loads(pickle.dumps(Collate(_Tok()))) is not None


def test_dataset_on_error_and_workers():
    recs = _records(4)
    recs[2] = recs[2].replace(image_path="bad2.png")
    with pytest.raises(OSError):
        GroundingDataset(recs, build_transforms("simvg", False, 64), image_loader=_Loader())[2]
    ds = GroundingDataset(recs, build_transforms("simvg", True, 64), on_error="skip", image_loader=_Loader())
    with pytest.warns(UserWarning, match="skipping sample 2"):
        assert ds[2] is None
    loader = make_dataloader(ds, batch_size=4, num_workers=2, collate_fn=Collate(_Tok()), prefetch_factor=2)
    batches = list(loader)
    assert len(batches) == 1 and len(batches[0]) == 3 and batches[0].images.shape[-2:] == (64, 64)
    assert [r.ref_id for r in batches[0].records] == [0, 1, 3]
    assert batches[0].extra["index"].tolist() == [0, 1, 3]
    del loader
