"""VG-LAW units: the batched law types against a direct per-sample computation of their formulas, the weight
generator's token attention, the TF-style bicubic, initial identity behaviour, heads / task modes and losses."""

import pytest
import torch
import torch.nn.functional as F

from vglaw.law import AdaptiveLinear, WeightGenerator, law_channels, od_row_groups
from vglaw.loss import VGLAWCriterion, dice_loss, sigmoid_focal_loss
from vglaw.model import build_model
from vglaw.vit import resize_abs_pos, tf_bicubic_matrix, window_partition, window_unpartition

TINY = dict(embed_dim=64, depth=3, num_heads=4, img_size=64, patch_size=16, window_size=2, global_blocks=[1],
            pretrain_img_size=32, bert_layers=2, bert_hidden=64, bert_heads=4, bert_intermediate=128,
            vocab_size=100, max_position_embeddings=16, max_len=8, generator_heads=4, rank=4, pool_dim=16,
            box_hidden=32, mask_hidden=16, drop_path_rate=0.0, bert_dropout=0.0)


def _layer(law, Ci=12, Co=18, groups=1, seed=0):
    torch.manual_seed(seed)
    lin = AdaptiveLinear(Ci, Co, law_type=law, groups=groups)
    with torch.no_grad():
        lin.bias.normal_()
    return lin


# --------------------------------------------------------------------------------------------- law types
def _direct(law, lin, x, a, S=None, D=None, groups=1):
    """Per-sample y_b = W_b x_b + (bias), with W_b built explicitly from the formula of each law type."""
    W0, b0 = lin.weight, lin.bias
    Co, Ci = W0.shape
    ys = []
    for b in range(x.shape[0]):
        xb, ab = x[b], a[b]
        if law == "svd":
            K = S.shape[1]
            A = ab.reshape(K, K)                          # row-major: A[i, j] = a[K i + j]
            y = xb @ (W0 + S @ A @ D).t() + b0
        elif law == "la":
            rows = []
            for g, (Wg, bg) in enumerate(zip(W0.chunk(groups, 0), b0.chunk(groups, 0))):
                scale = ab[g * Ci:(g + 1) * Ci]
                rows.append(xb @ (Wg * scale[None]).t() + bg)   # W0_g diag(a_g) x + b0_g
            y = torch.cat(rows, -1)
        else:
            sizes = od_row_groups(law, Co)
            k = len(sizes)
            c_out = ab[k * Ci:]
            parts = []
            for g, (Wg, bg) in enumerate(zip(W0.split(sizes, 0), b0.split(sizes, 0))):
                c_in = ab[g * Ci:(g + 1) * Ci]
                parts.append(xb @ (Wg @ torch.diag(c_in)).t() + bg)
            y = torch.cat(parts, -1) * c_out
        ys.append(y)
    return torch.stack(ys)


@pytest.mark.parametrize("law,groups", [("la", 1), ("la", 3), ("od1", 1), ("od2", 1), ("od3", 1), ("svd", 1)])
def test_law_types_match_per_sample_formula(law, groups):
    Ci, Co, B, N, K = 12, 18, 3, 5, 4
    lin = _layer(law, Ci, Co, groups)
    torch.manual_seed(1)
    x = torch.randn(B, N, Ci)
    a = torch.randn(B, law_channels(law, Ci, Co, groups, K))
    S = torch.randn(Co, K) if law == "svd" else None
    D = torch.randn(K, Ci) if law == "svd" else None
    shared = (S, D) if law == "svd" else None
    got = lin(x, a, shared)
    want = _direct(law, lin, x, a, S, D, groups)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the per-sample reference loops (the benchmark's "loop" paths) compute the same
    torch.testing.assert_close(lin.forward_loop(x, a, shared), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lin.forward_loop(x, a, shared, build_weight=True), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("law", ["svd", "la", "od2"])
def test_law_window_layout_groups_each_samples_windows(law):
    """Windows [B*nW, ws, ws, C] (sample outermost) use the sample's vector, like [B, N, C] tokens."""
    Ci, Co, B = 8, 24, 2
    lin = _layer(law, Ci, Co)
    x = torch.randn(B, 4, 4, Ci)
    a = torch.randn(B, law_channels(law, Ci, Co, 1, 2))
    shared = (torch.randn(Co, 2), torch.randn(2, Ci)) if law == "svd" else None
    win = window_partition(x, 2)
    y_win = window_unpartition(lin(win, a, shared), 2, (4, 4))
    torch.testing.assert_close(y_win, lin(x.reshape(B, 16, Ci), a, shared).reshape(B, 4, 4, Co))


def test_law_identity_vectors_are_the_plain_linear():
    Ci, Co, B = 8, 24, 2
    x = torch.randn(B, 5, Ci)
    for law in ("la", "od1", "od2", "od3"):
        lin = _layer(law, Ci, Co)
        ones = torch.ones(B, law_channels(law, Ci, Co))
        torch.testing.assert_close(lin(x, ones), F.linear(x, lin.weight, lin.bias))
    lin = _layer("svd", Ci, Co)
    zeros = torch.zeros(B, 4)
    torch.testing.assert_close(lin(x, zeros, (torch.randn(Co, 2), torch.randn(2, Ci))), F.linear(x, lin.weight, lin.bias))


@pytest.mark.parametrize("law", ["svd", "la", "od3"])
def test_batched_law_gradients_equal_the_per_sample_weight_loop(law):
    """Gradients of the batched path (x, a, W0, b0, S, D) equal those of the loop that builds every sample's
    weight: the re-associated batched formulas are the same function (scripts/bench_vglaw.py times both)."""
    torch.manual_seed(0)
    B, N, C, K = 3, 7, 8, 2
    lin = _layer(law, C, 3 * C)
    x = torch.randn(B, N, C, requires_grad=True)
    a = (torch.randn(B, law_channels(law, C, 3 * C, 1, K)) + (law != "svd")).requires_grad_()
    S, D = torch.randn(3 * C, K, requires_grad=True), torch.randn(K, C, requires_grad=True)
    shared = (S, D) if law == "svd" else None
    g = torch.randn(B, N, 3 * C)
    params = [x, a, lin.weight, lin.bias] + ([S, D] if law == "svd" else [])
    grads = []
    for build in (None, True):
        y = lin(x, a, shared) if build is None else lin.forward_loop(x, a, shared, build_weight=True)
        grads.append(torch.autograd.grad((y * g).sum(), params))
    for p, u, v in zip(("x", "a", "W0", "b0", "S", "D"), *grads):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4, msg=p)


# --------------------------------------------------------------------------------------------- generator
def test_weight_generator_token_attention_matches_direct_softmax():
    torch.manual_seed(0)
    gen = WeightGenerator([(16, 48, 1)] * 3, dim=32, law_type="svd", rank=4, num_heads=4)
    B, T = 2, 6
    text = torch.randn(B, T, 32)
    pad = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    got = gen.token_attention(text, pad)
    E = gen.layer_embedding
    want = torch.zeros(3, B, 32)
    for b in range(B):
        keep = ~pad[b]
        for h in range(4):
            sl = slice(8 * h, 8 * (h + 1))
            logits = E[:, sl] @ text[b, keep, sl].t() / 8 ** 0.5
            want[:, b, sl] = logits.softmax(-1) @ text[b, keep, sl]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    ada, feats = gen(text, pad)
    assert [t.shape for t in ada] == [(B, 16)] * 3
    assert all(bool((t == 0).all()) for t in ada)  # svd: last layer weight 0 and bias 0


def test_weight_generator_la_od_start_at_identity():
    text = torch.randn(2, 5, 32)
    for law in ("la", "od3"):
        gen = WeightGenerator([(16, 48, 1)] * 2, dim=32, law_type=law, num_heads=4)
        ada, _ = gen(text)
        assert all(bool((t == 1).all()) for t in ada)


# --------------------------------------------------------------------------------------------- bicubic
def test_tf_bicubic_matrix_rows_and_known_values():
    m = tf_bicubic_matrix(14, 28)
    torch.testing.assert_close(m.sum(1), torch.ones(28, dtype=m.dtype))
    # output 0: source -0.25 (half-pixel) -> taps -2, -1 (outside: dropped), 0 (distance 0.25), 1 (1.25)
    def keys(d, a=-0.5):
        d = abs(d)
        return ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    w0, w1 = keys(0.25), keys(1.25)
    torch.testing.assert_close(m[0, :3], torch.tensor([w0 / (w0 + w1), w1 / (w0 + w1), 0.0], dtype=m.dtype))
    # output 1: source 0.25 -> taps -1 (outside), 0, 1, 2
    w = [keys(0.25), keys(0.75), keys(1.75)]
    torch.testing.assert_close(m[1, :3], torch.tensor(w, dtype=m.dtype) / sum(w))
    assert torch.equal(tf_bicubic_matrix(5, 5), torch.eye(5, dtype=m.dtype))
    pos = torch.randn(1, 1 + 9, 3)
    assert torch.equal(resize_abs_pos(pos, (3, 3)), pos[:, 1:].reshape(1, 3, 3, 3))
    # torch's bicubic (a = -0.75, clamped borders) is a different operator
    assert not torch.allclose(resize_abs_pos(pos, (6, 6), tf_bicubic=False), resize_abs_pos(pos, (6, 6)), atol=1e-3)


# --------------------------------------------------------------------------------------------- model
def _inputs(B=2, cfg=TINY):
    torch.manual_seed(3)
    images = torch.randn(B, 3, cfg["img_size"], cfg["img_size"])
    ids = torch.randint(5, cfg["vocab_size"], (B, cfg["max_len"]))
    mask = torch.ones(B, cfg["max_len"], dtype=torch.long)
    mask[0, 5:] = 0
    ids[0, 5:] = 0
    return images, ids, mask


@pytest.mark.parametrize("law", ["svd", "la", "od1", "od2", "od3"])
def test_fresh_model_equals_unadapted_backbone(law):
    """At init every law type leaves the pretrained ViT unchanged (svd: A = 0; la/od: scales = 1)."""
    torch.manual_seed(0)
    model = build_model({**TINY, "law_type": law}).eval()
    images, ids, mask = _inputs()
    with torch.no_grad():
        out = model(images, ids, mask)
        plain = model.visual_encoder(images)
    torch.testing.assert_close(out["vit_features"], plain, atol=1e-5, rtol=1e-5)
    assert out["pred_box"].shape == (2, 4) and bool(((out["pred_box"] > 0) & (out["pred_box"] < 1)).all())
    assert out["logit_mask"].shape == (2, 1, 64, 64)


def test_language_changes_the_visual_features_once_trained():
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    with torch.no_grad():
        for p in model.weight_generator.proj:
            p[-1].weight.normal_(std=0.5)
    images, ids, mask = _inputs()
    with torch.no_grad():
        a = model(images, ids, mask)["vit_features"]
        b = model(images, ids.flip(0), mask.flip(0))["vit_features"]
    assert (a - b).abs().max() > 1e-3


def test_svd_gradients_at_init_reach_only_the_generator_output():
    torch.manual_seed(0)
    model = build_model(TINY).train()
    images, ids, mask = _inputs()
    out = model(images, ids, mask)
    crit = VGLAWCriterion()
    loss = crit(out, torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.4, 0.6, 0.3, 0.3]]), torch.rand(2, 64, 64) > 0.5)["loss"]
    loss.backward()
    g = model.weight_generator
    assert g.S.grad.abs().max() == 0 and g.D.grad.abs().max() == 0      # A = 0: S and D get no gradient yet
    assert g.proj[0][-1].weight.grad.abs().max() > 0 and g.proj[0][-1].bias.grad.abs().max() > 0


def test_task_modes_and_groups():
    rec = build_model({**TINY, "task": "rec"})
    res = build_model({**TINY, "task": "res"})
    assert not hasattr(rec, "up_sample") and hasattr(rec, "bbox_pred")
    assert not hasattr(res, "bbox_pred") and hasattr(res, "up_sample")
    images, ids, mask = _inputs()
    with torch.no_grad():
        o_rec, o_res = rec.eval()(images, ids, mask), res.eval()(images, ids, mask)
    assert "pred_box" in o_rec and "logit_mask" not in o_rec
    assert "logit_mask" in o_res and "pred_box" not in o_res
    crit = VGLAWCriterion()
    assert set(crit(o_rec, torch.full((2, 4), 0.5))) == {"loss_l1", "loss_giou", "loss"}
    assert set(crit(o_res, None, torch.zeros(2, 64, 64))) == {"loss_focal", "loss_dice", "loss"}
    m = build_model({**TINY, "law_type": "la", "groups": [2, 0, 3]})
    assert m.adapted == [0, 2] and len(m.weight_generator.proj) == 2
    assert m.weight_generator.proj[1][-1].out_features == 3 * 64
    with torch.no_grad():
        out = m.eval()(images, ids, mask)
    assert [t.shape[1] for t in out["ada_weights"]] == [128, 192]
    with pytest.raises(ValueError):
        build_model({**TINY, "groups": [2, 1, 1]})  # svd has no group counts


def test_mask_head_is_unscaled_cls_dot_product_then_align_corners_upsample():
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    images, ids, mask = _inputs()
    with torch.no_grad():
        out = model(images, ids, mask)
        pix = model.up_sample(out["vit_features"])
        cls = out["text_features"][:, 0]
        low = (pix * cls[:, :, None, None]).sum(1, keepdim=True)
        up = F.interpolate(low, scale_factor=4, mode="bilinear", align_corners=True)
    torch.testing.assert_close(out["mask_logits_low"], low, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["logit_mask"], up, atol=1e-5, rtol=1e-5)
    # REC pooling: softmax(<Wq q, Wk v_i> / sqrt(d)) over tokens, values the raw tokens
    tok = out["vit_features"].flatten(2).transpose(1, 2)
    att = (model.ada_gap.q_proj(cls)[:, None] * model.ada_gap.k_proj(tok)).sum(-1) / 16 ** 0.5
    torch.testing.assert_close(out["pooled_visual"], (att.softmax(-1)[..., None] * tok).sum(1), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- losses
def test_losses_against_hand_formulas():
    z = torch.tensor([[2.0, -1.0, 0.0, 3.0]])
    y = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    p = torch.sigmoid(z)
    bce = -(y * p.log() + (1 - y) * (1 - p).log())
    pt = torch.where(y > 0, p, 1 - p)
    at = torch.where(y > 0, torch.tensor(0.25), torch.tensor(0.75))
    torch.testing.assert_close(sigmoid_focal_loss(z, y), (at * (1 - pt) ** 2 * bce).mean())
    torch.testing.assert_close(dice_loss(z, y), 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1))
    crit = VGLAWCriterion()
    pred = {"pred_box": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]])}
    gt = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.3, 0.2, 0.2]])
    t = crit(pred, gt)
    torch.testing.assert_close(t["loss_l1"], torch.tensor(0.1 / 2))
    # sample 2: IoU = 0.02 / 0.06 = 1/3, enclosing = 0.3 x 0.2 = union -> GIoU = 1/3
    torch.testing.assert_close(t["loss_giou"], torch.tensor((0.0 + (1 - 1 / 3)) / 2))
    torch.testing.assert_close(t["loss"], t["loss_l1"] + t["loss_giou"])
