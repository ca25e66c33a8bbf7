"""vgcore.models.losses: focal, dice and the L1 + GIoU box terms against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from vgcore.models.losses import dice_loss, l1_giou_losses, sigmoid_focal_loss


def test_focal_hand_values_row_mean_then_sum():
    # row 0: logit 0 on a positive -> p_t = 0.5: 0.25 * 0.5^2 * ln 2;
    #        logit ln 3 on a negative -> p = 0.75, p_t = 0.25: 0.75 * 0.75^2 * ln 4
    # row 1: logit -ln 3 on a positive -> p = 0.25 = p_t: 0.25 * 0.75^2 * ln 4;
    #        logit 0 on a negative: 0.75 * 0.25 * ln 2
    ln2, ln3, ln4 = math.log(2), math.log(3), math.log(4)
    logits = torch.tensor([[0.0, ln3], [-ln3, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    row0 = (0.25 * 0.25 * ln2 + 0.75 * 0.5625 * ln4) / 2
    row1 = (0.25 * 0.5625 * ln4 + 0.75 * 0.25 * ln2) / 2
    assert sigmoid_focal_loss(logits, targets, 4).item() == pytest.approx((row0 + row1) / 4, rel=1e-6)
    # gamma 0 and no alpha weighting: plain binary cross-entropy, averaged per row
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum()
    assert sigmoid_focal_loss(logits, targets, 1, alpha=-1, gamma=0).item() == pytest.approx(bce.item(), rel=1e-6)
    # trailing dimensions are flattened into the row
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 1, 4, 5, generator=g), (torch.rand(3, 1, 4, 5, generator=g) > 0.5).float()
    assert sigmoid_focal_loss(x, t, 3).item() == pytest.approx(sigmoid_focal_loss(x.flatten(1), t.flatten(1), 3).item())


def test_dice_hand_values():
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]])
    # p = 1/2 everywhere: 1 - (2 * 1 + 1) / (2.5 + 2 + 1)
    assert dice_loss(torch.zeros(1, 5), t, 1).item() == pytest.approx(1 - 3 / 5.5, rel=1e-6)
    # p == t: 0;  p == 1 - t: no overlap, 1 - 1 / (3 + 2 + 1)
    sharp = 40 * (2 * t - 1)
    assert dice_loss(sharp, t, 1).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(-sharp, t, 1).item() == pytest.approx(1 - 1 / 6, rel=1e-6)
    # rows are summed and divided by num; smoothing is a parameter
    two = dice_loss(torch.cat([sharp, -sharp]), torch.cat([t, t]), 4)
    assert two.item() == pytest.approx((0 + 5 / 6) / 4, rel=1e-6)
    assert dice_loss(torch.zeros(1, 5), t, 1, smooth=0.0).item() == pytest.approx(1 - 2 / 4.5, rel=1e-6)


def test_l1_giou_hand_values_and_gradients():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]], requires_grad=True)
    tgt = torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]])
    # pair 0: shifted by 0.1 -> L1 0.1, inter 0.02, union 0.06, hull 0.06 -> GIoU 1/3
    # pair 1: disjoint -> L1 1.2, union 0.08, hull 0.8 x 0.8 -> GIoU -(0.64 - 0.08) / 0.64 = -0.875
    l1, giou = l1_giou_losses(pred, tgt, 2)
    assert l1.item() == pytest.approx((0.1 + 1.2) / 2, rel=1e-5)
    assert giou.item() == pytest.approx(((1 - 1 / 3) + 1.875) / 2, rel=1e-5)
    (l1 + giou).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    same_l1, same_giou = l1_giou_losses(tgt, tgt, 1)
    assert same_l1.item() == 0.0 and same_giou.item() == pytest.approx(0.0, abs=1e-6)
    none_l1, none_giou = l1_giou_losses(torch.zeros(0, 4), torch.zeros(0, 4), 1)
    assert none_l1.item() == 0.0 and none_giou.item() == 0.0
