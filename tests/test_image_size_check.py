"""An image whose size differs from its annotation's stored size is reported with the file and both sizes."""
import warnings

import numpy as np
import pytest
from PIL import Image

from vgcore.data.errors import DataError, DataWarning
from vgcore.data.image import load_image
from vgcore.data.sample import Record


def _record(path, h, w):
    return Record(image_path=str(path), image_id="img7", expression="the red circle",
                  boxes=np.array([[1.0, 1.0, 5.0, 5.0]]), height=h, width=w, ref_id=3, dataset="unc", split="val")


def test_size_mismatch_warns_with_file_and_both_sizes(tmp_path):
    p = tmp_path / "img7.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(p)
    rec = _record(p, 40, 30)
    with pytest.warns(DataWarning) as got:
        img = load_image(p, rec)
    assert img.size == (30, 20)
    msg = str(got[0].message)
    assert str(p) in msg and "20x30" in msg and "40x30" in msg and rec.key() in msg


def test_size_mismatch_is_an_error_when_checked(tmp_path):
    p = tmp_path / "img7.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(p)
    with pytest.raises(DataError, match="20x30.*40x30"):
        load_image(p, _record(p, 40, 30), check_size=True)


def test_matching_size_is_silent(tmp_path):
    p = tmp_path / "img7.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(p, _record(p, 20, 30))
