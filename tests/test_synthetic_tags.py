"""Dense attribute tags of the synthetic scenes (`scene_tag_maps`, `patch_tags`): labels sit on the drawn
pixels, and the per-patch labels follow the original -> input affine of the data pipeline."""
import numpy as np
import pytest
from PIL import Image

from vgcore.synthetic.scenes import TAG_CLASSES, make_records, patch_tags, scene_tag_maps


@pytest.fixture(scope="module")
def scene():
    recs, images = make_records(8, seed=3, split="train")
    r = recs[0]
    return r, images[r.image_path]


def test_tag_maps_label_exactly_the_drawn_pixels(scene):
    r, img = scene
    objs = r.extra["objects"]
    maps = scene_tag_maps(objs, r.height, r.width)
    assert set(maps) == set(TAG_CLASSES)
    for m in maps.values():
        assert m.shape == (r.height, r.width) and m.dtype == np.int64
        assert (m > 0).sum() == sum(o["area"] for o in objs)  # background is 0
    for o in objs:
        x0, y0, x1, y1 = (int(np.floor(o["box"][0])), int(np.floor(o["box"][1])),
                          int(np.ceil(o["box"][2])), int(np.ceil(o["box"][3])))
        for f, value in (("kind", o["category"]), ("color", o["color"]), ("size", o["size"])):
            # shapes never overlap: the object's box holds exactly its own labelled pixels
            assert (maps[f][y0:y1, x0:x1] == TAG_CLASSES[f].index(value) + 1).sum() == o["area"]
        # the labelled pixels are the drawn ones: their colour is the object's, not the background's
        own = maps["kind"][y0:y1, x0:x1] > 0
        patch = img[y0:y1, x0:x1].astype(float)
        assert patch[own].std(0).max() < 12 < np.abs(patch[own].mean(0) - patch[~own].mean(0)).max()


def test_patch_tags_follow_the_affine():
    tag = np.zeros((64, 96), np.int64)
    tag[8:40, 16:48] = 3  # covers half or all of patches (0..2, 1..2) at patch 16
    tag[40:44, 70:90] = 5  # 4 x 10 pixels in each of patches (2, 4) and (2, 5): 16% of a patch
    want = np.zeros((4, 6), np.int64)
    want[0:3, 1:3] = 3
    ident = patch_tags(tag, (1, 0, 1, 0), (64, 96), 16)
    assert np.array_equal(ident, want)
    low = want.copy()
    low[2, 4:6] = 5
    assert np.array_equal(patch_tags(tag, (1, 0, 1, 0), (64, 96), 16, min_fraction=0.15), low)
    # the same scene on a 2x canvas with 2x patches: the same labels
    assert np.array_equal(patch_tags(tag, (2, 0, 2, 0), (128, 192), 32), want)
    # shifted one patch right and down on a larger canvas: labels move, padding is background
    shifted = patch_tags(tag, (1, 16, 1, 16), (96, 128), 16)
    assert np.array_equal(shifted[1:5, 1:7], want)
    assert not shifted[0].any() and not shifted[:, 0].any() and not shifted[5].any() and not shifted[:, 7].any()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patch_tags(tag, (1, 0, 1, 0), (60, 96), 16)


def test_patch_tags_through_the_letterbox_transform(scene):
    """Through the HiVG eval transform (resize + pad), the patch under a large round or square shape's centre
    carries its kind, and the padded patches are background."""
    from vgcore.data.dataset import GroundingDataset
    from vgcore.data.transforms import build_transforms

    checked = 0
    recs, images = make_records(40, seed=5, split="train", object_scale=1.5)
    for r in recs[::3]:
        ds = GroundingDataset([r], build_transforms("hivg", train=False, imsize=128),
                              image_loader=lambda p, rec: Image.fromarray(images[p]))
        s = ds[0]
        kind = scene_tag_maps(r.extra["objects"], r.height, r.width)["kind"]
        tags = patch_tags(kind, s["affine"].numpy(), tuple(s["image"].shape[-2:]), 16)
        sx, ox, sy, oy = s["affine"].tolist()
        for o in r.extra["objects"]:
            if o["size"] == "large" and o["category"] in ("circle", "square", "diamond"):
                x0, y0, x1, y1 = o["box"]
                gi, gj = int(((y0 + y1) / 2 * sy + oy) // 16), int(((x0 + x1) / 2 * sx + ox) // 16)
                assert tags[gi, gj] == TAG_CLASSES["kind"].index(o["category"]) + 1, (r.key(), o)
                checked += 1
        padded = s["pixel_mask"].numpy().reshape(8, 16, 8, 16).all(axis=(1, 3))
        assert not tags[padded].any()
    assert checked >= 5


def test_tag_maps_name_the_bad_object():
    with pytest.raises(ValueError, match="object 0 lacks"):
        scene_tag_maps([{"category": "circle"}], 8, 8)
    with pytest.raises(ValueError, match="unknown kind 'blob'"):
        scene_tag_maps([{"category": "blob", "color": "red", "size": "small",
                         "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}], 8, 8)
