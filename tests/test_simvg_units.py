"""SimVG units: the Hungarian set criterion and the DWBD weight W on hand-computed cases, the token-only path,
the compat switches, the Batch forward and the REC post-processing."""
import math

import pytest
import torch

from simvg.head import pool_text
from simvg.loss import SimVGCriterion, distill_targets
from simvg.model import build_model, postprocess_rec
from vgcore.data.sample import Batch
from vgcore.models.matcher import HungarianMatcher, SetCriterion, weighted_sum
from vgcore.models.position import sine_position_1d


def _logits(p_obj):
    """2-class logits with softmax[0] = p_obj."""
    return [math.log(p_obj), math.log(1 - p_obj)]


def test_set_criterion_hand_checked():
    # one GT, two queries; query 0 sits on the GT (half its height), query 1 is far away
    gt = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]])}]
    out = {"pred_logits": torch.tensor([[_logits(0.5), _logits(0.25)]]),
           "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]]])}
    matcher = HungarianMatcher(1, 5, 2)
    (src, tgt), = matcher(out, gt)
    assert src.tolist() == [0] and tgt.tolist() == [0]
    crit = SetCriterion(1, matcher, eos_coef=0.1)
    losses = crit(out, gt)
    # CE: query 0 -> class 0 (p=0.5, weight 1), query 1 -> no-object (p=0.75, weight 0.1); weighted mean
    want_ce = (-math.log(0.5) + 0.1 * -math.log(0.75)) / 1.1
    assert losses["loss_class"].item() == pytest.approx(want_ce, rel=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(0.2, abs=1e-6)       # |0.2 - 0.4|
    assert losses["loss_giou"].item() == pytest.approx(0.5, abs=1e-6)       # IoU 0.5, hull = union
    total = weighted_sum(losses, {"loss_class": 1, "loss_bbox": 5, "loss_giou": 2})
    assert total.item() == pytest.approx(want_ce + 5 * 0.2 + 2 * 0.5, rel=1e-6)


def test_matcher_permutation_and_empty_targets():
    out = {"pred_logits": torch.zeros(2, 3, 2),
           "pred_boxes": torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1]]] * 2)}
    tg = [{"labels": torch.tensor([0, 0]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1], [0.2, 0.2, 0.1, 0.1]])},
          {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    idx = HungarianMatcher(1, 5, 2)(out, tg)
    assert idx[0][0].tolist() == [0, 2] and idx[0][1].tolist() == [1, 0]
    assert idx[1][0].numel() == 0
    losses = SetCriterion(1, HungarianMatcher(1, 5, 2))(out, tg)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    # all 6 queries have p = 0.5: CE = log 2 whatever the weights
    assert losses["loss_class"].item() == pytest.approx(math.log(2), rel=1e-6)


def _distill_case():
    # sample 0: query 0 on the GT with p=0.75 -> w = 0.75;  sample 1: query 1 shifted by 0.05 (IoU 0.6), p=0.5
    dec_logits = torch.tensor([[_logits(0.75), _logits(0.1)], [_logits(0.1), _logits(0.5)]])
    dec_boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.9, 0.9, 0.05, 0.05]],
                              [[0.1, 0.9, 0.05, 0.05], [0.55, 0.5, 0.2, 0.2]]])
    gts = [torch.tensor([[0.3, 0.3, 0.2, 0.2]]), torch.tensor([[0.5, 0.5, 0.2, 0.2]])]
    return dec_logits, dec_boxes, gts


def test_distillation_weight_hand_computed():
    dec_logits, dec_boxes, gts = _distill_case()
    targets = [{"labels": torch.zeros(1, dtype=torch.long), "boxes": g} for g in gts]
    W, pseudo, w = distill_targets(HungarianMatcher(1, 5, 2), dec_logits, dec_boxes, targets)
    assert w.tolist() == pytest.approx([0.75, 0.5 * 0.6], abs=1e-5)
    assert W.item() == pytest.approx((0.75 + 0.3) / 2, abs=1e-5)
    torch.testing.assert_close(pseudo[0]["boxes"], dec_boxes[0, :1])
    torch.testing.assert_close(pseudo[1]["boxes"], dec_boxes[1, 1:])


def test_criterion_combines_branches_with_W():
    dec_logits, dec_boxes, gts = _distill_case()
    torch.manual_seed(0)
    tok_logits = torch.randn(2, 2, 2, requires_grad=True)
    tok_boxes = torch.rand(2, 2, 4).mul(0.3).add(0.2).requires_grad_()
    dl = torch.stack([dec_logits + 0.3, dec_logits]).requires_grad_()   # 2 layers, last = the case
    db = torch.stack([dec_boxes * 0.9 + 0.05, dec_boxes])
    outputs = {"pred_logits": dl[-1], "pred_boxes": db[-1], "decoder_logits": dl, "decoder_boxes": db,
               "token_logits": tok_logits, "token_boxes": tok_boxes}
    crit = SimVGCriterion({"lambda_decoder": 1.0, "lambda_token": 2.0, "lambda_distill": 1.0})
    out = crit(outputs, gts)
    W = (0.75 + 0.3) / 2
    assert out["distill_w"].item() == pytest.approx(W, abs=1e-5)
    wd = {"loss_class": 1, "loss_bbox": 5, "loss_giou": 2}
    sc = SetCriterion(1, HungarianMatcher(1, 5, 2))
    targets = [{"labels": torch.zeros(1, dtype=torch.long), "boxes": g} for g in gts]
    dgt = weighted_sum(sc({"pred_logits": dl[-1], "pred_boxes": db[-1],
                           "aux_outputs": [{"pred_logits": dl[0], "pred_boxes": db[0]}]}, targets), wd)
    tgt = weighted_sum(sc({"pred_logits": tok_logits, "pred_boxes": tok_boxes}, targets), wd)
    pseudo = [{"labels": torch.zeros(1, dtype=torch.long), "boxes": dec_boxes[0, :1]},
              {"labels": torch.zeros(1, dtype=torch.long), "boxes": dec_boxes[1, 1:]}]
    kd = weighted_sum(sc({"pred_logits": tok_logits, "pred_boxes": tok_boxes}, pseudo), wd)
    assert out["loss_dgt"].item() == pytest.approx(dgt.item(), rel=1e-6)
    assert out["loss_tgt"].item() == pytest.approx(2.0 * (1 - W) * tgt.item(), rel=1e-5)
    assert out["loss_kd"].item() == pytest.approx(1.0 * W * kd.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(dgt.item() + 2 * (1 - W) * tgt.item() + W * kd.item(), rel=1e-5)
    out["loss"].backward()
    assert tok_boxes.grad is not None and dl.grad is not None
    # decoder-only (stage 1): no TB terms
    s1 = SimVGCriterion({"loss_preset": "decoder_only"})(outputs, gts)
    assert set(k for k in s1 if not k.startswith("dgt_")) == {"loss_dgt", "loss"}
    # a batch with no GT at all (gRefCOCO no-target): W = 0, every query supervised as no-object
    empty = SimVGCriterion({})(outputs, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert empty["distill_w"].item() == 0.0 and torch.isfinite(empty["loss"])
    assert empty["loss_kd"].item() == 0.0


def _tiny_model(**kw):
    torch.manual_seed(0)
    return build_model({"preset": "tiny", "vocab_size": 1000, "num_queries": 3, **kw}).eval()


def _inputs(B=2, L=12):
    torch.manual_seed(1)
    img = torch.randn(B, 3, 128, 128)
    ids = torch.randint(3, 1000, (B, L))
    ids[:, 0] = 0
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[0, 6:] = True
    ids[0, 5] = 2
    ids[pad] = 1
    return img, ids, pad


def test_token_only_path_equals_full_forward_token_branch():
    model = _tiny_model()
    img, ids, pad = _inputs()
    with torch.no_grad():
        full = model.forward_tensors(img, ids, pad, branch="both")
        tok = model.forward_tensors(img, ids, pad, branch="token")
        dec = model.forward_tensors(img, ids, pad, branch="decoder")
    assert "decoder_logits" not in tok and "token_logits" not in dec
    # the TB-only path skips the patch tokens in BEiT-3's last layer: other matrix shapes, float rounding only
    torch.testing.assert_close(tok["token_logits"], full["token_logits"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tok["token_boxes"], full["token_boxes"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tok["pred_boxes"], full["token_boxes"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dec["pred_boxes"], full["pred_boxes"], rtol=0, atol=0)
    assert len(full["aux_outputs"]) == 2 and full["pred_boxes"].shape == (2, 3, 4)
    assert ((full["pred_boxes"] > 0) & (full["pred_boxes"] < 1)).all()


def test_text_pool_and_1d_position_compat():
    t = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2)
    t[0, 1] = 100.0                      # a real token with a large value
    t[0, 2] = torch.tensor([50.0, -50])  # second-to-last (pad) row
    pad = torch.tensor([[False, False, True, True], [False, False, False, False]])
    assert pool_text(t, pad).tolist() == [[100.0, 100.0], [14.0, 15.0]]           # masked max over real tokens
    # official int64-mask indexing: max(T[-1], T[-2]) with padding, T[-1] without
    assert pool_text(t, pad, int64_mask_compat=True).tolist() == [[50.0, 7.0], [14.0, 15.0]]
    deg = sine_position_1d(5, 8, degenerate=True)
    p = torch.arange(5.0)
    torch.testing.assert_close(deg[:, 0], p.sin())
    torch.testing.assert_close(deg[:, 1], p.cos())
    assert (deg[:, 2::2] == 0).all() and (deg[:, 3::2] == 1).all()
    full = sine_position_1d(5, 8)
    torch.testing.assert_close(full[:, 2], (p / 10000 ** 0.25).sin())
    model = _tiny_model()
    img, ids, pad = _inputs()
    with torch.no_grad():
        a = model.forward_tensors(img, ids, pad, return_intermediates=True)["intermediates"]
        model.set_compat(text_maxpool_int64_mask=True, text_pos_embed_1d_degenerate=True)
        b = model.forward_tensors(img, ids, pad, return_intermediates=True)["intermediates"]
    T = a["text_feat_proj"]
    torch.testing.assert_close(b["text_feat_filter"][:, 0], torch.stack([torch.maximum(T[0, -1], T[0, -2]), T[1, -1]]))
    torch.testing.assert_close(a["text_feat_filter"][0, 0], T[0, :6].amax(0))


def test_batch_forward_and_image_padding_mask():
    model = _tiny_model()
    img, ids, pad = _inputs()
    pixel = torch.zeros(2, 128, 128, dtype=torch.bool)
    pixel[1, :, 96:] = True
    batch = Batch(images=img, pixel_mask=pixel, text_ids=ids, text_mask=~pad, boxes=torch.zeros(2, 4),
                  target_boxes=[torch.zeros(1, 4), torch.zeros(0, 4)], num_targets=torch.tensor([1, 0]),
                  affine=torch.zeros(2, 4, dtype=torch.float64), orig_size=torch.tensor([[128, 128]] * 2),
                  texts=["a", "b"], records=[None, None])
    with torch.no_grad():
        out = model(batch, return_intermediates=True)
        ref = model.forward_tensors(img, ids, pad, image_padding_mask=pixel)
    m = out["intermediates"]["img_mask"]
    assert m.shape == (2, 8, 8) and not m[0].any() and m[1, :, 6:].all() and not m[1, :, :6].any()
    torch.testing.assert_close(out["pred_boxes"], ref["pred_boxes"])


def test_postprocess_rec_drops_empty_boxes_and_clips():
    logits = torch.tensor([[_logits(0.9), _logits(0.6), _logits(0.3)]])
    boxes = torch.tensor([[[-0.2, 0.5, 0.2, 0.2],    # entirely left of the image: empty after clipping
                           [0.9, 0.5, 0.4, 0.2],     # clipped at the right border
                           [0.5, 0.5, 0.1, 0.1]]])
    r = postprocess_rec(logits, boxes, (100, 200))
    assert r["best"].tolist() == [1]
    assert r["boxes_xyxy"].tolist() == [pytest.approx([140.0, 40.0, 200.0, 60.0])]
    assert r["scores"][0].tolist() == pytest.approx([0.9, 0.6, 0.3])
    assert r["keep"].tolist() == [[False, True, True]]


def test_detr_attention_and_decoder_layer_match_torch():
    from vgcore.models.detr import DetrDecoderLayer, MultiheadAttention
    torch.manual_seed(0)
    mha = MultiheadAttention(16, 4).eval()
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ref.load_state_dict(mha.state_dict())
    q, k = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    pad = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]).bool()
    o_ref, w_ref = ref(q, k, k, key_padding_mask=pad)
    torch.testing.assert_close(mha(q, k, k, pad), o_ref, atol=1e-6, rtol=1e-5)
    o, w = mha(q, k, k, pad, need_weights=True)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)
    assert (w[0, :, 3:] == 0).all()
    # without positions our post-norm layer is torch's TransformerDecoderLayer (ReLU, post-norm)
    layer = DetrDecoderLayer(16, 4, 32).eval()
    tl = torch.nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    sd = {}
    for kk, v in layer.state_dict().items():
        kk = kk.replace("cross_attn.", "multihead_attn.").replace("ffn.", "")
        sd[kk] = v
    tl.load_state_dict(sd)
    torch.testing.assert_close(layer(q, k, memory_padding_mask=pad), tl(q, k, memory_key_padding_mask=pad),
                               atol=1e-5, rtol=1e-5)
