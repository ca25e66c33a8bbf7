"""vgcore.models.matcher against brute force: the Hungarian assignment is the cheapest one-to-one matching of the
cost written out element by element, and the set loss equals its definition computed query by query."""
import itertools
import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from vgcore.models.matcher import (HungarianMatcher, SetCriterion, flatten_matches, num_boxes_all_ranks, pad_targets,
                                   weighted_sum)

W_CLASS, W_BBOX, W_GIOU = 1.0, 5.0, 2.0


def _giou(a, b):
    """GIoU of two normalised cxcywh boxes given as python floats."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union - (hull - union) / hull


def _cost(logits, boxes, labels, tboxes):
    """[Q, N] cost of one image, one element at a time."""
    prob = logits.double().softmax(-1).tolist()
    out = [[0.0] * len(tboxes) for _ in range(len(boxes))]
    for q, pb in enumerate(boxes.tolist()):
        for g, (tl, tb) in enumerate(zip(labels.tolist(), tboxes.tolist())):
            l1 = sum(abs(u - v) for u, v in zip(pb, tb))
            out[q][g] = W_BBOX * l1 - W_CLASS * prob[q][tl] - W_GIOU * _giou(pb, tb)
    return out


def _cheapest(cost):
    """Minimum total cost over every one-to-one matching of min(Q, N) pairs, by enumeration."""
    Q, N = len(cost), len(cost[0]) if cost else 0
    if N <= Q:
        return min(sum(cost[q][g] for g, q in enumerate(qs)) for qs in itertools.permutations(range(Q), N))
    return min(sum(cost[q][g] for q, g in enumerate(gs)) for gs in itertools.permutations(range(N), Q))


def _batch(sizes, Q=5, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(sizes)
    out = {"pred_logits": torch.randn(B, Q, C + 1, generator=g),
           "pred_boxes": torch.rand(B, Q, 4, generator=g) * 0.4 + 0.3}
    targets = [{"labels": torch.randint(0, C, (n,), generator=g), "boxes": torch.rand(n, 4, generator=g) * 0.4 + 0.3}
               for n in sizes]
    return out, targets


@pytest.mark.parametrize("sizes,Q", [((2, 0, 4), 5), ((3, 1), 2), ((0, 0), 3)])
def test_assignment_is_the_cheapest_matching(sizes, Q):
    out, targets = _batch(sizes, Q=Q, seed=len(sizes) + Q)
    result = HungarianMatcher(W_CLASS, W_BBOX, W_GIOU)(out, targets)
    assert len(result) == len(sizes)
    for i, ((rows, cols), t) in enumerate(zip(result, targets)):
        n = len(t["boxes"])
        assert rows.dtype == cols.dtype == torch.int64 and len(rows) == len(cols) == min(Q, n)
        assert rows.tolist() == sorted(set(rows.tolist())) and len(set(cols.tolist())) == len(cols)
        if n == 0:
            continue
        cost = _cost(out["pred_logits"][i], out["pred_boxes"][i], t["labels"], t["boxes"])
        assert sum(cost[q][g] for q, g in zip(rows.tolist(), cols.tolist())) == pytest.approx(_cheapest(cost), abs=1e-5)
        r, c = linear_sum_assignment(cost)
        assert rows.tolist() == r.tolist() and cols.tolist() == c.tolist()


def test_cost_tensor_equals_elementwise_definition():
    out, targets = _batch((3, 2))
    m = HungarianMatcher(W_CLASS, W_BBOX, W_GIOU)
    labels, boxes = pad_targets(targets, "cpu")
    assert labels.shape == (2, 3) and boxes.shape == (2, 3, 4) and (boxes[1, 2] == 0).all()
    cost = m.cost(out["pred_logits"], out["pred_boxes"], labels, boxes)
    for i, t in enumerate(targets):
        want = _cost(out["pred_logits"][i], out["pred_boxes"][i], t["labels"], t["boxes"])
        want = torch.tensor(want, dtype=torch.float64)
        torch.testing.assert_close(cost[i, :, :len(t["boxes"])].double(), want, atol=1e-5, rtol=1e-5)


def _set_loss_by_definition(out, targets, indices, num_classes, eos_coef, num_boxes):
    """Weighted CE over every query, L1 and 1 - GIoU over matched pairs, query by query."""
    num, den, l1, giou = 0.0, 0.0, 0.0, 0.0
    for i, ((rows, cols), t) in enumerate(zip(indices, targets)):
        matched = dict(zip(rows.tolist(), cols.tolist()))
        logp = out["pred_logits"][i].double().log_softmax(-1).tolist()
        for q in range(len(logp)):
            y = int(t["labels"][matched[q]]) if q in matched else num_classes
            w = eos_coef if y == num_classes else 1.0
            num, den = num - w * logp[q][y], den + w
            if q in matched:
                pb, tb = out["pred_boxes"][i, q].tolist(), t["boxes"][matched[q]].tolist()
                l1 += sum(abs(u - v) for u, v in zip(pb, tb))
                giou += 1 - _giou(pb, tb)
    return num / den, l1 / num_boxes, giou / num_boxes


def test_set_criterion_equals_definition_with_aux_layers():
    out, targets = _batch((2, 0, 4), C=3, seed=7)
    g = torch.Generator().manual_seed(8)
    aux = {"pred_logits": torch.randn(3, 5, 4, generator=g), "pred_boxes": torch.rand(3, 5, 4, generator=g) * 0.4 + 0.3}
    matcher = HungarianMatcher(W_CLASS, W_BBOX, W_GIOU)
    crit = SetCriterion(3, matcher, eos_coef=0.1)
    losses = crit({**out, "aux_outputs": [aux]}, targets)
    assert set(losses) == {"loss_class", "loss_bbox", "loss_giou", "loss_class_0", "loss_bbox_0", "loss_giou_0"}
    for suffix, o in (("", out), ("_0", aux)):
        want = _set_loss_by_definition(o, targets, matcher(o, targets), 3, 0.1, num_boxes=6)
        got = [losses[k + suffix].item() for k in ("loss_class", "loss_bbox", "loss_giou")]
        assert got == pytest.approx(want, rel=1e-5)
    total = weighted_sum(losses, {"loss_class": 1, "loss_bbox": 5, "loss_giou": 2})
    want_total = sum(w * losses[k + s] for s in ("", "_0") for k, w in (("loss_class", 1), ("loss_bbox", 5),
                                                                          ("loss_giou", 2)))
    assert total.item() == pytest.approx(want_total.item(), rel=1e-6)
    with pytest.raises(KeyError, match="loss_giou"):
        weighted_sum(losses, {"loss_class": 1, "loss_bbox": 5})


def test_flat_indices_and_normaliser():
    indices = [(torch.tensor([1, 3]), torch.tensor([0, 1])), (torch.zeros(0, dtype=torch.long),) * 2,
               (torch.tensor([0]), torch.tensor([2]))]
    image, pred, tgt = flatten_matches(indices)
    assert image.tolist() == [0, 0, 2] and pred.tolist() == [1, 3, 0] and tgt.tolist() == [0, 1, 2]
    _, targets = _batch((2, 0, 3))
    assert num_boxes_all_ranks(targets, "cpu") == 5.0
    assert num_boxes_all_ranks(_batch((0, 0))[1], "cpu") == 1.0
    assert math.isclose(num_boxes_all_ranks(_batch((1,))[1], "cpu"), 1.0)
