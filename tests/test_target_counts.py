"""Single-box methods on splits with no-target / multi-target samples: an error when the records are loaded
(or a counted, warned skip with --skip_bad_targets), never an index error in the metric after an epoch; and the
box flags of the data group reach the readers."""
import types
import warnings

import numpy as np
import pytest
import torch

from vgcore.data.checks import require_single_target
from vgcore.data.errors import DataError, DataWarning
from vgcore.data.formats.seqtr import write_seqtr
from vgcore.data.sample import Record


def _rec(i, boxes):
    return Record(image_path=f"COCO_train2014_{i:012d}.jpg", expression=f"thing {i}",
                  boxes=np.array(boxes, np.float32).reshape(-1, 4), image_id=i, height=100, width=100,
                  dataset="grefcoco", split="val")


ONE, ONE_B = [[1, 2, 20, 30]], [[5, 5, 9, 9]]
TWO = [[1, 1, 20, 20], [30, 30, 50, 50]]
RECS = [_rec(1, ONE), _rec(2, []), _rec(3, TWO), _rec(4, ONE_B), _rec(5, [])]


def test_raise_names_file_counts_and_keys():
    with pytest.raises(DataError) as e:
        require_single_target(RECS, "ann.json (val)", needed_by="X", hint="HINT")
    msg = str(e.value)
    assert msg.startswith("ann.json (val): 3 of 5 samples do not have exactly one target box, which X needs")
    assert "2 no-target sample(s): " in msg and "1 multi-target sample(s): " in msg and msg.endswith(". HINT")
    assert RECS[1].key() in msg and RECS[4].key() in msg and RECS[2].key() in msg and RECS[0].key() not in msg


def test_raise_quotes_only_the_first_keys():
    many = [_rec(i, []) for i in range(10, 20)]
    with pytest.raises(DataError, match=r"10 no-target sample\(s\) \(first 3\)") as e:
        require_single_target(many, "f")
    assert many[2].key() in str(e.value) and many[3].key() not in str(e.value)


def test_skip_warns_once_with_counts_and_keeps_the_rest():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        kept = require_single_target(RECS, "ann.json (val)", on_bad="skip")
    assert [str(x.message) for x in w if issubclass(x.category, DataWarning)][0].startswith(
        "skipped 3, kept 2. ann.json (val): 3 of 5")
    assert len([x for x in w if issubclass(x.category, DataWarning)]) == 1
    assert [r.image_id for r in kept] == [1, 4]
    assert dict(kept.skipped) == {"no-target": 2, "multi-target": 1}


def test_single_target_records_pass_unchanged():
    good = [RECS[0], RECS[3]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = require_single_target(good, "f")
    assert list(out) == good
    with pytest.raises(ValueError, match="on_bad"):
        require_single_target(good, "f", on_bad="ignore")


@pytest.fixture
def grec_file(tmp_path):
    return write_seqtr({"val": RECS}, tmp_path / "grefs" / "instances.json", grec=True)


def _hivg_args(*extra):
    from hivg import train

    return train.get_args_parser().parse_args(list(extra))


def test_hivg_grec_split_fails_at_load_not_in_the_metric(grec_file, tmp_path):
    """Before the check, the records loaded and HiVG's metric raised IndexError on the no-target sample."""
    from hivg import method
    from hivg.evaluation import gt_boxes_original

    args = _hivg_args("--format", "seqtr", "--dataset", "grefcoco", "--split_root", grec_file,
                      "--image_root", str(tmp_path))
    with pytest.raises(DataError, match=r"instances.json \(val\): 3 of 5 samples .* HiVG .*--skip_bad_targets"):
        method.records(args, "val", False)
    with pytest.raises(IndexError):  # what the metric does with such a record
        gt_boxes_original(types.SimpleNamespace(records=RECS[:2], images=torch.zeros(1)))

    args = _hivg_args("--format", "seqtr", "--dataset", "grefcoco", "--split_root", grec_file,
                      "--image_root", str(tmp_path), "--skip_bad_targets")
    with pytest.warns(DataWarning, match="skipped 3, kept 2"):
        recs = method.records(args, "val", False)
    gt = gt_boxes_original(types.SimpleNamespace(records=recs, images=torch.zeros(1)))
    np.testing.assert_allclose(gt.numpy(), np.array(ONE + ONE_B, np.float32), atol=1e-4)


def _simvg_args(*extra):
    from simvg import train

    return train.get_args_parser().parse_args(list(extra))


def test_simvg_rec_dataset_rejects_multi_target_but_grefcoco_keeps_them(grec_file, tmp_path):
    from simvg import method

    args = _simvg_args("--dataset", "refcoco", "--split_root", grec_file, "--image_root", str(tmp_path))
    with pytest.raises(DataError, match=r"3 of 5 samples .* SimVG on refcoco \(REC\)"):
        method.records(args, "val", False)
    args = _simvg_args("--dataset", "grefcoco", "--split_root", grec_file, "--image_root", str(tmp_path))
    recs = method.records(args, "val", False)
    assert [r.num_targets for r in recs] == [1, 0, 2, 1, 0]


def _transvg_split(root, dataset, box):
    (root / dataset).mkdir(parents=True)
    torch.save([("COCO_train2014_000000000001.jpg", {"height": 200, "width": 280}, box, "the ball", None)],
               root / dataset / f"{dataset}_val.pth")


def test_box_flags_reach_the_transvg_reader(tmp_path):
    from hivg import method

    _transvg_split(tmp_path, "unc", [146.37, 11.62, 63.55, 34.29])
    base = ["--dataset", "unc", "--split_root", str(tmp_path), "--image_root", str(tmp_path)]
    np.testing.assert_allclose(method.records(_hivg_args(*base), "val", False)[0].boxes,
                               [[146.37, 11.62, 209.92, 45.91]], atol=1e-4)  # xywh, the dataset's own layout
    np.testing.assert_array_equal(method.records(_hivg_args(*base, "--box_int_truncate"), "val", False)[0].boxes,
                                  [[146, 11, 209, 45]])
    _transvg_split(tmp_path / "b", "unc", [10, 20, 30, 40])
    other = ["--dataset", "unc", "--split_root", str(tmp_path / "b"), "--image_root", str(tmp_path)]
    np.testing.assert_array_equal(method.records(_hivg_args(*other), "val", False)[0].boxes, [[10, 20, 40, 60]])
    np.testing.assert_array_equal(method.records(_hivg_args(*other, "--box_convention", "xyxy"), "val", False)[0].boxes,
                                  [[10, 20, 30, 40]])
    # a TransVG-style file under another name is readable once its layout is given
    _transvg_split(tmp_path, "mysplits", [10, 20, 30, 40])
    custom = ["--dataset", "mysplits", "--split_root", str(tmp_path), "--image_root", str(tmp_path)]
    with pytest.raises(DataError, match="--box_convention xywh or xyxy"):
        method.records(_hivg_args(*custom), "val", False)
    np.testing.assert_allclose(method.records(_hivg_args(*custom, "--box_convention", "xywh"), "val", False)[0].boxes,
                               [[10, 20, 40, 60]])


def test_box_flags_are_refused_for_formats_without_them(grec_file, tmp_path):
    from simvg import method

    args = _simvg_args("--dataset", "grefcoco", "--split_root", grec_file, "--box_convention", "xyxy")
    with pytest.raises(DataError, match="apply to transvg split files only; seqtr"):
        method.records(args, "val", False)
