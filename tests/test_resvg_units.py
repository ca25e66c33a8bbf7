"""Unit tests of the ResVG parts: relative-position attention, the criterion, post-processing and metric, the
freeze schedule, the compat switches and the shared ResNet / BERT wrappers, on a tiny random model."""
from __future__ import annotations

import math

import pytest
import torch

from resvg.attention import RelPosAttention, relative_sine_table
from resvg.config import MODEL_SWITCHES, config_from_args
from resvg.loss import ResVGCriterion
from resvg.model import ACC_THRESHOLDS, ResVG, boxes_to_original, make_accumulator
from vgcore.models.bert import bert_layer_mean, build_bert, convert_bert_state_dict
from vgcore.models.detr import MultiheadAttention
from vgcore.models.resnet import ResNetBackbone

TINY = dict(backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, enc_ffn_dim=64, bert="tiny",
            bert_overrides={"vocab_size": 500}, bert_output_layers=2, dec_layers=2, dec_ffn_dim=64, prior_dim=16,
            prior_hidden=16)


def _tiny(**kw):
    torch.manual_seed(0)
    return ResVG(config_from_args({**TINY, **kw}))


def _inputs(B=2, size=64, L=7, prior_dim=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, size, size, generator=g)
    mask = torch.zeros(B, size, size, dtype=torch.bool)
    ids = torch.randint(1, 500, (B, L), generator=g)
    text_mask = torch.ones(B, L, dtype=torch.bool)
    text_mask[0, 4:] = False
    ids[~text_mask] = 0
    prior = torch.randn(B, prior_dim, generator=g)
    return images, mask, ids, text_mask, prior


# ------------------------------------------------------------------------------------------ relative positions
def _reference_rpe(att: RelPosAttention, x: torch.Tensor, grid, pad=None):
    """The formula written out: logits over all (i, j) pairs with explicit offsets, softmax, values."""
    B, N, D = x.shape
    h, dh = att.num_heads, D // att.num_heads
    wq, wk, wv = att.in_proj_weight.split(D)
    bq, bk, bv = att.in_proj_bias.split(D)
    q = (x @ wq.t() + bq).view(B, N, h, dh)
    k = (x @ wk.t() + bk).view(B, N, h, dh)
    v = (x @ wv.t() + bv).view(B, N, h, dh)
    H, W = grid
    valid = torch.ones(B, H, W, dtype=torch.bool) if pad is None else ~pad.view(B, H, W)
    ys = valid.cumsum(1).view(B, N).float()
    xs = valid.cumsum(2).view(B, N).float()
    half = D // 2
    Ry = (att.pos_y @ wk[:, :half].t()).view(-1, h, dh)
    Rx = (att.pos_x @ wk[:, half:].t()).view(-1, h, dh)
    lo_y, lo_x = att.y_range[0], att.x_range[0]
    logits = torch.empty(B, h, N, N)
    for b in range(B):
        for i in range(N):
            for j in range(N):
                dy = int(ys[b, i] - ys[b, j]) - lo_y
                dx = int(xs[b, i] - xs[b, j]) - lo_x
                kk = k[b, j] + Ry[dy] + Rx[dx]
                logits[b, :, i, j] = (q[b, i] * kk).sum(-1) / math.sqrt(dh)
    if pad is not None:
        logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
    out = torch.einsum("bhij,bjhd->bihd", logits.softmax(-1), v).reshape(B, N, D)
    return att.out_proj(out)


@pytest.mark.parametrize("with_pad", [False, True])
def test_relpos_attention_matches_the_formula(with_pad):
    torch.manual_seed(0)
    att = RelPosAttention(16, 2, 0.0, (-4, 4), (-4, 4)).eval()
    torch.nn.init.normal_(att.in_proj_bias, std=0.1)
    grid = (3, 4)
    x = torch.randn(2, 12, 16)
    pad = None
    if with_pad:
        pad = torch.zeros(2, 3, 4, dtype=torch.bool)
        pad[1, 2, :] = True
        pad[1, :, 3] = True
        pad = pad.flatten(1)
    ours = att(x, x, x, grid, key_padding_mask=pad)
    ref = _reference_rpe(att, x, grid, pad)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_relpos_attention_without_relative_terms_is_plain_attention():
    torch.manual_seed(0)
    att = RelPosAttention(16, 4, 0.0, relative=False).eval()
    mha = MultiheadAttention(16, 4).eval()
    mha.load_state_dict(att.state_dict())
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    assert torch.allclose(att(x, x, x, (2, 3), pad), mha(x, x, x, key_padding_mask=pad), atol=1e-6)


def test_relpos_attention_rejects_grids_beyond_the_tables():
    att = RelPosAttention(16, 2, 0.0, (-2, 2), (-2, 2))
    with pytest.raises(ValueError, match="grid"):
        att(torch.randn(1, 16, 16), torch.randn(1, 16, 16), torch.randn(1, 16, 16), (4, 4))


def test_relative_sine_table_values():
    t = relative_sine_table(-20, 20, 128)
    assert t.shape == (41, 128)
    # row 20 is offset 0: sin 0 = 0 on even channels, cos 0 = 1 on odd ones
    assert torch.equal(t[20, 0::2], torch.zeros(64)) and torch.equal(t[20, 1::2], torch.ones(64))
    # offset +20 -> 20 / (20 + 1e-6) * 2 pi, channel 0 has frequency 1
    assert math.isclose(t[40, 0].item(), math.sin(20 / (20 + 1e-6) * 2 * math.pi), abs_tol=1e-6)
    assert math.isclose(t[0, 2].item(), math.sin(-20 / (20 + 1e-6) * 2 * math.pi / 10000 ** (2 / 128)), abs_tol=1e-6)


def test_relative_tables_equal_the_official_buffers(golden_dir):
    path = golden_dir / "resvg" / "r50_unc" / "buffers.pt"
    if not path.is_file():
        pytest.skip("no ResVG buffers.pt")
    buf = torch.load(path, weights_only=True)
    pre = "trans_decoder.decoder.extra_encoder_layers.0.img2img_attn."
    att = RelPosAttention(256, 8)
    assert torch.allclose(att.pos_x, buf[pre + "pos_x"], atol=1e-6)
    assert torch.allclose(att.pos_y, buf[pre + "pos_y"], atol=1e-6)


# ------------------------------------------------------------------------------------------ loss
def test_criterion_by_hand():
    pred = torch.tensor([[[0.5, 0.5, 0.2, 0.2]], [[0.3, 0.3, 0.2, 0.2]]])
    tgt = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.3, 0.2, 0.2]])
    aux = torch.tensor([[[0.5, 0.5, 0.4, 0.4]], [[0.4, 0.3, 0.2, 0.2]]])
    out = ResVGCriterion({})({"pred_boxes": pred, "aux_outputs": [{"pred_boxes": aux}]}, tgt)
    # last stage: sample 0 exact; sample 1 shifted by 0.1 in x: L1 0.1, IoU 0.1*0.2/(0.08-0.02)=1/3, encl = union
    assert math.isclose(out["l1"].item(), 0.1 / 2, rel_tol=1e-5)
    assert math.isclose(out["giou"].item(), (1 - 1 / 3) / 2, rel_tol=1e-5)
    # aux stage: sample 0 box twice as large (IoU 0.25, enclosure = union), sample 1 exact
    assert math.isclose(out["l1_0"].item(), 0.4 / 2, rel_tol=1e-5)
    assert math.isclose(out["giou_0"].item(), 0.75 / 2, rel_tol=1e-5)
    want = 5 * (out["l1"] + out["l1_0"]) + 2 * (out["giou"] + out["giou_0"])
    assert torch.allclose(out["loss"], want)
    assert set(out) == {"l1", "giou", "l1_0", "giou_0", "loss"}
    no_aux = ResVGCriterion({"aux_loss": False, "bbox_loss_coef": 1.0})({"pred_boxes": pred}, tgt)
    assert set(no_aux) == {"l1", "giou", "loss"}
    assert torch.allclose(no_aux["loss"], no_aux["l1"] + 2 * no_aux["giou"])


def test_criterion_rejects_unknown_keys():
    with pytest.raises(KeyError, match="unknown"):
        ResVGCriterion({"weight_class": 1.0})


# ------------------------------------------------------------------------------------------ evaluation
def test_boxes_to_original_follows_the_official_postprocess():
    # a 500 x 375 (w x h) picture resized to 640 x 480, pasted at (0, 80)
    pred = torch.tensor([[[0.5, 0.5, 0.5, 0.25]], [[0.02, 0.5, 0.1, 1.0]]])
    dxdy = torch.tensor([[0.0, 80.0], [0.0, 80.0]])
    ratio = torch.tensor([[480 / 375, 640 / 500]] * 2)
    orig = torch.tensor([[375.0, 500.0]] * 2)
    out = boxes_to_original(pred, (640, 640), dxdy, ratio, orig)
    # box 0: xyxy on canvas (160, 240, 480, 400) -> minus (0, 80) -> / 1.28
    assert torch.allclose(out[0], torch.tensor([125.0, 125.0, 375.0, 250.0]), atol=1e-4)
    # box 1: x1 = -19.2 clamps to 0, x2 = 44.8; y2 = 640 - 80 = 560 -> 437.5 -> min with h 375
    assert torch.allclose(out[1], torch.tensor([0.0, 0.0, 44.8 / 1.28, 375.0]), atol=1e-4)


def test_accuracy_is_strict():
    acc = make_accumulator()
    assert acc.thresholds[0] == 0.5 and len(ACC_THRESHOLDS) == 9
    # IoU exactly 0.5: box [0, 0, 2, 1] vs [0, 0, 1, 1] -> not counted at 0.5
    acc.update(torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]]),
               torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]))
    res = acc.compute()
    key = next(k for k in res if "0.5" in k and "0.55" not in k)
    assert math.isclose(float(res[key]), 0.5 if res[key] <= 1 else 50.0, rel_tol=1e-6), res


# ------------------------------------------------------------------------------------------ model
def test_tiny_model_forward_backward_and_outputs():
    model = _tiny().eval()
    images, mask, ids, tmask, prior = _inputs()
    with torch.no_grad():
        out = model.forward_tensors(images, mask, ids, tmask, prior, return_intermediates=True)
    assert out["stage_boxes"].shape == (2, 2, 1, 4) and out["pred_boxes"].shape == (2, 1, 4)
    assert torch.equal(out["pred_boxes"], out["stage_boxes"][-1]) and len(out["aux_outputs"]) == 1
    it = out["intermediates"]
    assert it["visual_memory"].shape == (2, 4, 32) and it["discriminative_feature"].shape == (2, 4, 32)
    # the initial content query is the prior MLP output
    with torch.no_grad():
        assert torch.allclose(it["content_query"][:, 0], model.decoder.prior_mlp(prior), atol=1e-6)
    out = model.train().forward_tensors(images, mask, ids, tmask, prior)
    loss = ResVGCriterion({})(out, torch.tensor([[0.5, 0.5, 0.3, 0.3]] * 2))["loss"]
    loss.backward()
    assert model.decoder.prior_mlp[0].weight.grad.abs().sum() > 0
    assert model.discriminative.verify_sigma.grad is not None
    assert model.backbone.body.conv1.weight.grad is None  # never trains


def test_prior_is_required_and_changes_the_boxes():
    model = _tiny().eval()
    images, mask, ids, tmask, prior = _inputs()
    with pytest.raises(ValueError, match="prior"):
        model.forward_tensors(images, mask, ids, tmask, None)
    with torch.no_grad():
        a = model.forward_tensors(images, mask, ids, tmask, prior)["pred_boxes"]
        b = model.forward_tensors(images, mask, ids, tmask, prior * 3)["pred_boxes"]
    assert not torch.allclose(a, b)


def test_pixel_mask_switch():
    images, _, ids, tmask, prior = _inputs()
    pad = torch.zeros(2, 64, 64, dtype=torch.bool)
    pad[0, 32:] = True
    none = torch.zeros_like(pad)
    for switch, same in ((True, True), (False, False)):
        model = _tiny(pixel_mask_all_false=switch).eval()
        with torch.no_grad():
            a = model.forward_tensors(images, none, ids, tmask, prior)["pred_boxes"]
            b = model.forward_tensors(images, pad, ids, tmask, prior)["pred_boxes"]
        assert torch.allclose(a, b) == same
        assert torch.allclose(a[1], b[1], atol=1e-6)  # sample 1 has no padding either way


@pytest.fixture(scope="module")
def official_tiny():
    """A tiny model with every switch on and its norms / one FrozenBN perturbed, so that each switch matters."""
    model = _tiny()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in n or "LayerNorm" in n):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        model.backbone.body.bn1.running_var.fill_(1e-4)
    return model.eval()


def _all_outputs(model, inputs):
    with torch.no_grad():
        out = model.forward_tensors(*inputs, return_intermediates=True)
    it = out["intermediates"]
    return torch.cat([t.flatten() for t in (it["visual_memory"], it["discriminative_feature"], it["decoder_hs"],
                                             out["stage_boxes"])])


@pytest.mark.parametrize("switch", [s for s in MODEL_SWITCHES if s != "pixel_mask_all_false"])
def test_each_compat_switch_changes_the_network(switch, official_tiny):
    inputs = _inputs()
    off = _tiny(**{switch: False}).eval()
    shared = {k: v for k, v in official_tiny.state_dict().items() if k in off.state_dict()}
    off.load_state_dict({**off.state_dict(), **shared})
    a, b = _all_outputs(official_tiny, inputs), _all_outputs(off, inputs)
    assert (a - b).abs().max() > 1e-5, f"{switch} off gives the same output"


def test_freeze_schedule():
    model = _tiny(freeze_epochs=2)
    trainable = lambda prefix: [p.requires_grad for n, p in model.named_parameters() if n.startswith(prefix)]
    always = set(model.permanently_frozen())
    assert "bert.pooler.dense.weight" in always and "backbone.body.conv1.weight" in always
    assert any(n.startswith("backbone.body.layer1.") for n in always)
    assert not any(n.startswith("backbone.body.layer2.") for n in always)
    assert model.set_epoch(0) is True
    for m in ("backbone", "input_proj", "visual_encoder", "bert."):
        assert not any(trainable(m)), m
    for m in ("bert_proj", "discriminative", "decoder", "bbox_embed"):
        assert all(trainable(m)), m
    assert model.set_epoch(2) is False
    for n, p in model.named_parameters():
        assert p.requires_grad == (n not in always), n


def test_tiny_model_learns_one_batch():
    """The first (frozen-trunk) phase of the recipe: fusion, decoder and head fit one batch."""
    model = _tiny(freeze_epochs=1).train()
    assert model.set_epoch(0)
    images, mask, ids, tmask, prior = _inputs()
    target = torch.tensor([[0.3, 0.6, 0.2, 0.4], [0.7, 0.4, 0.3, 0.2]])
    crit = ResVGCriterion({})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss = crit(model.forward_tensors(images, mask, ids, tmask, prior), target)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


# ------------------------------------------------------------------------------------------ shared wrappers
def test_resnet_backbone_frozen_bn_and_mask():
    torch.manual_seed(0)
    net = ResNetBackbone("resnet18", bn_eps=1e-5).eval()
    bn = net.body.bn1
    bn.running_var.uniform_(0.5, 1.5)
    bn.running_mean.normal_()
    bn.weight.normal_()
    x = torch.randn(1, 64, 4, 4)
    want = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 1e-5) * \
        bn.weight[:, None, None] + bn.bias[:, None, None]
    assert torch.allclose(bn(x), want, atol=1e-5)
    assert "num_batches_tracked" not in "".join(net.state_dict())
    pm = torch.zeros(1, 64, 64, dtype=torch.bool)
    pm[:, :, 32:] = True
    feat, mask = net(torch.randn(1, 3, 64, 64), pm)
    assert feat.shape == (1, 512, 2, 2) and mask.tolist() == [[[False, True], [False, True]]]


def test_bert_layer_mean_and_weight_conversion():
    torch.manual_seed(0)
    bert = build_bert("tiny").eval()
    ids = torch.randint(1000, 2000, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1] * 5]).bool()
    with torch.no_grad():
        hs = bert(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        got = bert_layer_mean(bert, ids, mask, 2)
    assert torch.allclose(got, (hs[-1] + hs[-2]) / 2, atol=1e-6)
    # pytorch-pretrained-bert layout: bert. prefix, gamma/beta, cls heads
    legacy = {}
    for k, v in bert.state_dict().items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        legacy["bert." + k] = v
    legacy["cls.predictions.bias"] = torch.zeros(3)
    sd, rep = convert_bert_state_dict(legacy)
    assert rep["unmapped"] == [] and rep["dropped"] == ["cls.predictions.bias"]
    assert set(sd) == set(bert.state_dict()) and all(torch.equal(sd[k], v) for k, v in bert.state_dict().items())
    _, rep = convert_bert_state_dict({"bert.encoder.layer.0.attention.self.qurey.weight": torch.zeros(1)})
    assert rep["unmapped"] == ["bert.encoder.layer.0.attention.self.qurey.weight"]
