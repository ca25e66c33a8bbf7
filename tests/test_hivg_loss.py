"""HiVGCriterion: hand-checkable values of every term and the official weights/switches."""
import math

import pytest
import torch

from hivg.loss import HiVGCriterion, box_masks_from_boxes
from vgcore.boxes import generalized_box_iou_elementwise as elementwise_giou
from vgcore.models.losses import dice_loss, sigmoid_focal_loss


def _outputs(pred, B, g=2, sim=0.0, seg=0.0, logits=None):
    return {
        "pred_boxes": pred,
        "logits_per_text": torch.zeros(B, B) if logits is None else logits,
        "visu_token_similarity": torch.full((B, g * g), sim),
        "seg_mask": torch.full((B, 1, g, g), seg),
    }


def test_box_terms_hand_values():
    crit = HiVGCriterion(dict(use_contrastive_loss=False, use_rtcc_constrain_loss=False, use_mask_loss=False))
    tgt = torch.tensor([[0.5, 0.5, 0.25, 0.25], [0.9, 0.9, 0.2, 0.2]])
    pred = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.2, 0.2]])
    out = crit(_outputs(pred, 2), {"boxes": tgt})
    # L1: sample 0 -> 0.5, sample 1 -> 0.8 + 0.8 = 1.6 ; mean 1.05 ; weight 2
    assert out["loss_bbox"].item() == pytest.approx(2 * (0.5 + 1.6) / 2)
    # GIoU: sample 0 -> IoU 0.25, hull = pred -> 0.25 ; sample 1 -> 0 - (1 - 0.08) / 1 = -0.92
    assert out["loss_giou"].item() == pytest.approx(2 * ((1 - 0.25) + (1 + 0.92)) / 2, rel=1e-6)
    assert set(out) == {"loss_bbox", "loss_giou", "loss"}
    assert out["loss"].item() == pytest.approx(out["loss_bbox"].item() + out["loss_giou"].item())
    perfect = crit(_outputs(tgt.clone(), 2), {"boxes": tgt})
    assert perfect["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_giou_symmetry_and_identity():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
    assert torch.allclose(elementwise_giou(a, a), torch.ones(2))
    assert torch.allclose(elementwise_giou(a, a.flip(0)), elementwise_giou(a.flip(0), a))


def test_focal_and_dice_hand_values():
    ln2 = math.log(2.0)
    logits = torch.zeros(1, 4)
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # p = 0.5 everywhere: positive 0.25 * 0.25 * ln2, negative 0.75 * 0.25 * ln2 ; mean over 4
    focal = (2 * 0.25 * 0.25 * ln2 + 2 * 0.75 * 0.25 * ln2) / 4
    assert sigmoid_focal_loss(logits, t, 1).item() == pytest.approx(focal, rel=1e-6)
    # dice: 1 - (2 * 0.5 * 2 + 1) / (0.5 * 4 + 2 + 1) = 1 - 3/5
    assert dice_loss(logits, t, 1).item() == pytest.approx(0.4, rel=1e-6)
    assert dice_loss(torch.tensor([[30.0, 30.0, -30.0, -30.0]]), t, 1).item() == pytest.approx(0.0, abs=1e-6)


def test_contrastive_term():
    crit = HiVGCriterion(dict(use_rtcc_constrain_loss=False, use_mask_loss=False))
    B = 3
    tgt = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(B, 1)
    flat = crit(_outputs(tgt, B), {"boxes": tgt})
    assert flat["loss_contrastive"].item() == pytest.approx(math.log(B), rel=1e-6)
    sharp = crit(_outputs(tgt, B, logits=100 * torch.eye(B)), {"boxes": tgt})
    assert sharp["loss_contrastive"].item() == pytest.approx(0.0, abs=1e-6)


def test_align_and_seg_terms_with_official_weights():
    crit = HiVGCriterion()
    ln2 = math.log(2.0)
    tgt = torch.tensor([[0.25, 0.5, 0.5, 1.0]])  # left half of the image
    mask = box_masks_from_boxes(tgt, (4, 4))
    assert mask[0, :, :2].eq(1).all() and mask[0, :, 2:].eq(0).all()
    out = crit(_outputs(tgt.clone(), 1), {"boxes": tgt, "masks": mask.to(torch.uint8)})
    half = (0.25 * 0.25 * ln2 + 0.75 * 0.25 * ln2) / 2  # half the pixels / patches are positive
    assert out["loss_algin_focal"].item() == pytest.approx(20 * half, rel=1e-5)
    assert out["loss_align_dice"].item() == pytest.approx(2 * (1 - (2 * 0.5 * 2 + 1) / (0.5 * 4 + 2 + 1)), rel=1e-5)
    assert out["loss_seg_focal"].item() == pytest.approx(20 * half, rel=1e-5)
    assert out["loss_seg_dice"].item() == pytest.approx(2 * (1 - (2 * 0.5 * 8 + 1) / (0.5 * 16 + 8 + 1)), rel=1e-5)
    # masks=None -> box masks from the boxes at the pixel_mask size: same numbers here
    out2 = crit(_outputs(tgt.clone(), 1), {"boxes": tgt, "masks": None, "pixel_mask": torch.zeros(1, 4, 4)})
    for k in out:
        assert out2[k].item() == pytest.approx(out[k].item(), rel=1e-6)
    assert set(out) == {"loss_bbox", "loss_giou", "loss_contrastive", "loss_algin_focal", "loss_align_dice",
                        "loss_seg_focal", "loss_seg_dice", "loss"}


def test_tiny_model_step_backprops_into_trainable_set():
    from hivg.model import build_model
    from vgcore.data.sample import Batch

    torch.manual_seed(0)
    model = build_model("hivg-tiny", hi_lora_stage=1)
    B = 2
    ids = torch.zeros(B, 77, dtype=torch.long)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 49406, 320, 49407
    pm = torch.zeros(B, 128, 128, dtype=torch.bool)
    pm[1, :32] = True
    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.3, 0.2]])
    batch = Batch(images=torch.randn(B, 3, 128, 128), pixel_mask=pm, text_ids=ids, text_mask=ids != 0, boxes=boxes,
                  target_boxes=[b[None] for b in boxes], num_targets=torch.ones(B, dtype=torch.long),
                  affine=torch.zeros(B, 4, dtype=torch.float64), orig_size=torch.zeros(B, 2, dtype=torch.long),
                  texts=["a", "b"], records=[None, None], masks=None)
    out = model(batch)
    assert out["pred_boxes"].shape == (B, 4) and out["seg_mask"].shape == (B, 1, 64, 64)
    assert out["visu_token_similarity"].shape == (B, 64)
    assert out["visu_mask"][1].sum().item() == 16 and out["visu_mask"][0].sum().item() == 0
    losses = HiVGCriterion()(out, batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    params = dict(model.named_parameters())
    assert params["bbox_head.layers.2.weight"].grad is not None
    assert params["vision.blocks.0.bridge.gate.weight"].grad is not None
    assert params["text.blocks.0.attn.q.lora_b"].grad is not None
    assert params["vision.blocks.0.attn.q.weight"].grad is None  # CLIP base frozen
