"""vgcore.boxes: conversions, area, IoU / GIoU (pairwise + elementwise), degenerate boxes, clamp, normalise."""
import numpy as np
import pytest
import torch

from vgcore import boxes as B


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_conversions_hand_computed():
    xyxy = t([[10, 20, 30, 60]])
    assert torch.equal(B.box_xyxy_to_cxcywh(xyxy), t([[20, 40, 20, 40]]))
    assert torch.equal(B.box_xyxy_to_xywh(xyxy), t([[10, 20, 20, 40]]))
    assert torch.equal(B.box_xywh_to_xyxy(t([[10, 20, 20, 40]])), xyxy)
    assert torch.equal(B.box_cxcywh_to_xyxy(t([[20, 40, 20, 40]])), xyxy)
    assert torch.equal(B.box_cxcywh_to_xywh(t([[20, 40, 20, 40]])), t([[10, 20, 20, 40]]))
    assert torch.equal(B.box_xywh_to_cxcywh(t([[10, 20, 20, 40]])), t([[20, 40, 20, 40]]))
    assert torch.equal(B.convert_boxes(xyxy, "xyxy", "xywh"), t([[10, 20, 20, 40]]))
    assert B.convert_boxes(xyxy, "xyxy", "xyxy") is xyxy
    with pytest.raises(ValueError):
        B.convert_boxes(xyxy, "xyxy", "yxyx")


def test_conversions_leading_dims_roundtrip_and_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64)
    for a, b in [("xyxy", "cxcywh"), ("xyxy", "xywh"), ("cxcywh", "xywh")]:
        y = B.convert_boxes(B.convert_boxes(x, a, b), b, a)
        assert y.shape == x.shape
        assert torch.allclose(y, x, atol=1e-12)
    n = np.array([[0.0, 0.0, 4.0, 2.0]])
    out = B.box_xyxy_to_cxcywh(n)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [[2.0, 1.0, 4.0, 2.0]])
    with pytest.raises(ValueError, match="last dimension must be 4"):
        B.box_xyxy_to_cxcywh(torch.zeros(3, 5))


def test_conversions_agree_with_torchvision_and_keep_sizes_exact():
    from torchvision.ops import box_convert
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, 4, generator=g) * 100
    for a, b in [("xyxy", "cxcywh"), ("cxcywh", "xyxy"), ("xyxy", "xywh"), ("xywh", "xyxy")]:
        assert torch.equal(B.convert_boxes(x, a, b), box_convert(x, a, b))
    # cxcywh <-> xywh moves only the corner: w and h come back bit for bit (no trip through xyxy)
    for a, b in [("cxcywh", "xywh"), ("xywh", "cxcywh")]:
        y = B.convert_boxes(x, a, b)
        assert torch.equal(y[:, 2:], x[:, 2:])
        assert torch.allclose(y[:, :2], box_convert(x, a, b)[:, :2], atol=1e-5)


def test_area_clamps_degenerate():
    a = B.box_area(t([[0, 0, 2, 3], [5, 5, 5, 9], [4, 4, 2, 2]]))
    assert torch.equal(a, t([6, 0, 0]))


def test_pairwise_iou_giou_hand_computed():
    a = t([[0, 0, 2, 2], [0, 0, 1, 1]])
    b = t([[1, 1, 3, 3], [2, 0, 3, 1], [0, 0, 2, 1]])
    iou = B.box_iou(a, b)
    giou = B.generalized_box_iou(a, b)
    assert iou.shape == (2, 3)
    # a0 vs b0: inter 1, union 7, enclosing 9;  a0 vs b1 (touching at x=2): inter 0, union 5, enclosing 6;
    # a0 vs b2: b2 inside, inter 2, union 4, enclosing 4;  a1 vs b0: union 5, enclosing 9;
    # a1 vs b1: union 2, enclosing 3;  a1 vs b2: inter 1, union 2, enclosing 2
    exp_iou = [[1 / 7, 0.0, 0.5], [0.0, 0.0, 0.5]]
    exp_giou = [[1 / 7 - 2 / 9, -1 / 6, 0.5], [-4 / 9, -1 / 3, 0.5]]
    assert torch.allclose(iou, t(exp_iou), atol=1e-6)
    assert torch.allclose(giou, t(exp_giou), atol=1e-6)
    # exactly 0.5 stays exactly 0.5 (eps is a floor, not an additive term), so ">= 0.5" counts it
    assert B.box_iou(t([[0, 0, 2, 1]]), t([[0, 0, 1, 1]])).item() == 0.5
    # numpy in -> numpy out
    out = B.box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3]]))
    assert isinstance(out, np.ndarray) and abs(out[0, 0] - 1 / 7) < 1e-6


def test_pairwise_matches_torchvision_on_random_boxes():
    tvops = pytest.importorskip("torchvision.ops")
    g = torch.Generator().manual_seed(1)
    p = torch.rand(7, 2, generator=g, dtype=torch.float64) * 50
    a = torch.cat([p, p + torch.rand(7, 2, generator=g, dtype=torch.float64) * 30 + 1], 1)
    q = torch.rand(5, 2, generator=g, dtype=torch.float64) * 50
    b = torch.cat([q, q + torch.rand(5, 2, generator=g, dtype=torch.float64) * 30 + 1], 1)
    assert torch.allclose(B.box_iou(a, b), tvops.box_iou(a, b), atol=1e-12)
    assert torch.allclose(B.generalized_box_iou(a, b), tvops.generalized_box_iou(a, b), atol=1e-12)
    # elementwise == diagonal of pairwise, with broadcasting over leading dims
    assert torch.allclose(B.box_iou_elementwise(a[:5], b), torch.diag(B.box_iou(a[:5], b)))
    ew = B.generalized_box_iou_elementwise(a[:5].reshape(5, 1, 4), b.reshape(1, 5, 4))
    assert ew.shape == (5, 5) and torch.allclose(ew, B.generalized_box_iou(a[:5], b))


def test_degenerate_boxes_are_finite_with_finite_gradients():
    pts = t([[3, 3, 3, 3], [3, 3, 3, 3], [0, 0, 0, 5], [5, 5, 1, 1], [0, 0, 2, 2]]).requires_grad_(True)
    other = t([[3, 3, 3, 3], [4, 4, 4, 4], [0, 0, 0, 5], [0, 0, 2, 2], [5, 5, 1, 1]])
    iou = B.box_iou_elementwise(pts, other)
    giou = B.generalized_box_iou_elementwise(pts, other)
    assert torch.isfinite(iou).all() and torch.isfinite(giou).all()
    # identical points: IoU 0, GIoU 0; two distinct points: enclosing box 1x1, union 0 -> GIoU = -1
    assert iou[0].item() == 0.0 and giou[0].item() == 0.0
    assert giou[1].item() == pytest.approx(-1.0)
    assert (giou >= -1).all() and (giou <= 1).all()
    (giou.sum() + iou.sum()).backward()
    assert torch.isfinite(pts.grad).all()
    pw = B.generalized_box_iou(pts.detach(), other)
    assert torch.isfinite(pw).all()


def test_half_precision_inputs():
    a = t([[0, 0, 2, 2]]).half()
    assert B.box_iou(a, a).dtype == torch.float32
    assert B.box_iou(a, a).item() == 1.0


def test_clamp_boxes_scalar_and_per_image():
    b = t([[-5, 2, 30, 50], [1, -1, 8, 9]])
    assert torch.equal(B.clamp_boxes(b, 40, 20), t([[0, 2, 20, 40], [1, 0, 8, 9]]))
    out = B.clamp_boxes(b, torch.tensor([40.0, 5.0]), torch.tensor([20.0, 6.0]))
    assert torch.equal(out, t([[0, 2, 20, 40], [1, 0, 6, 5]]))
    n = B.clamp_boxes(np.array([[-1.0, 0.0, 11.0, 3.0]]), 2, 10)
    np.testing.assert_array_equal(n, [[0.0, 0.0, 10.0, 2.0]])


def test_normalize_denormalize():
    b = t([[10, 20, 30, 40]])
    n = B.normalize_boxes(b, h=100, w=50)
    assert torch.allclose(n, t([[0.2, 0.2, 0.6, 0.4]]))
    assert torch.allclose(B.denormalize_boxes(n, 100, 50), b)
    # per-image sizes for a batch [B, 4]; [B, Q, 4] takes h[:, None]
    bb = t([[10, 10, 20, 20], [10, 10, 20, 20]])
    out = B.normalize_boxes(bb, torch.tensor([20.0, 40.0]), torch.tensor([40.0, 20.0]))
    assert torch.allclose(out, t([[0.25, 0.5, 0.5, 1.0], [0.5, 0.25, 1.0, 0.5]]))
    bq = bb[:, None].expand(2, 3, 4)
    outq = B.normalize_boxes(bq, torch.tensor([20.0, 40.0])[:, None], torch.tensor([40.0, 20.0])[:, None])
    assert torch.allclose(outq, out[:, None].expand(2, 3, 4))
