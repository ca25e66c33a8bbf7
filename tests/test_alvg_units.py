"""ALVG pieces in isolation: attention-loss targets, the losses on box-only data, the decoder's parallel /
stacked layers, compat switches, TIE, the converter's rules, and a short overfit of the tiny model."""
from __future__ import annotations

import json
import types

import pytest
import torch
import torch.nn.functional as F

from alvg import convert
from alvg.loss import ALVGCriterion, attention_targets, box_coverage, decoder_attention_loss, mask_target
from alvg.model import COMPAT_SWITCHES, build_model
from vgcore.models.attn_decoder import AttnMapDecoder


def _raster(box, H, W, inclusive):
    x1, y1, x2, y2 = box
    m = torch.zeros(H, W)
    e = 1 if inclusive else 0
    m[int(torch.floor(torch.tensor(y1))):int(torch.ceil(torch.tensor(y2))) + e,
      int(torch.floor(torch.tensor(x1))):int(torch.ceil(torch.tensor(x2))) + e] = 1
    return m


@pytest.mark.parametrize("inclusive", [True, False])
def test_box_coverage_is_the_area_pooled_raster(inclusive):
    boxes = torch.tensor([[10.3, 20.0, 100.7, 250.2], [0.0, 0.0, 640.0, 640.0], [600.5, 3.0, 639.0, 31.99]],
                         dtype=torch.float64)
    cov = box_coverage(boxes, (640, 640), (20, 20), inclusive)
    for b, c in zip(boxes.tolist(), cov):
        ref = F.interpolate(_raster(b, 640, 640, inclusive)[None, None], size=(20, 20), mode="area")[0, 0]
        assert torch.allclose(c, ref, atol=1e-6)
    # a canvas that is not a multiple of the grid takes the raster path
    cov2 = box_coverage(boxes[:1] / 5, (130, 130), (7, 7), inclusive)
    ref2 = F.adaptive_avg_pool2d(_raster((boxes[0] / 5).tolist(), 130, 130, inclusive)[None, None], (7, 7))[0, 0]
    assert torch.allclose(cov2[0], ref2, atol=1e-6)


def test_overlap_map_positives_sum_to_one_negatives_to_minus_one():
    H = W = 64
    masks = torch.zeros(3, H, W, dtype=torch.uint8)
    masks[0, 8:40, 16:30] = 1
    masks[1, 0:64, 0:20] = 1
    boxes = [torch.tensor([[23 / 64, 24 / 64, 14 / 64, 32 / 64]]),                  # sample 0: one target
             torch.tensor([[5 / 64, 0.5, 10 / 64, 1.0], [15 / 64, 0.5, 10 / 64, 1.0]]),  # sample 1: two targets
             torch.zeros(0, 4)]                                                 # sample 2: no target
    t = attention_targets(boxes, masks, (H, W), (8, 8), box_compat=True)
    O = t["overlap"]
    assert O.shape == (3, 8, 8)
    assert O[0][O[0] > 0].sum().item() == pytest.approx(1.0) and O[0][O[0] < 0].sum().item() == pytest.approx(-1.0)
    assert O[1][O[1] > 0].sum().item() == pytest.approx(1.0, abs=0.3)  # max over 2 targets, / 2
    assert torch.allclose(O[2], torch.full((8, 8), -1 / 64))
    assert t["num_targets"].tolist() == [1, 2, 0] and t["focus"].shape == (3, 2, 8, 8)
    assert t["focus"][2].abs().sum() == 0 and t["focus"][0, 1].abs().sum() == 0  # rows past K_b are zero
    assert set(t["focus"].unique().tolist()) <= {0.0, 1.0}  # mask focus maps are binary
    # box targets: the focus map stays fractional with the compat switch, binary without
    tb = attention_targets(boxes[:1], None, (H, W), (8, 8), box_compat=True)
    assert ((tb["focus"][0] > 0) & (tb["focus"][0] < 1)).any()
    tb2 = attention_targets(boxes[:1], None, (H, W), (8, 8), box_compat=False)
    assert set(tb2["focus"][0].unique().tolist()) <= {0.0, 1.0}


def test_decoder_loss_layer_summed_vs_per_pair():
    torch.manual_seed(0)
    A = torch.rand(3, 2, 1, 4, 4)
    A = A / A.sum((-1, -2), keepdim=True)
    focus = torch.zeros(2, 1, 4, 4)
    focus[0, 0, :2] = 1
    focus[1, 0, :, :1] = 1
    num = torch.tensor([1, 1])
    idx = [(torch.tensor([0]), torch.tensor([0]))] * 2
    summed = decoder_attention_loss(A, focus, num, idx, layer_summed=True)
    S, inside = A.sum(0)[:, 0].sum((1, 2)), (A.sum(0)[:, 0] * torch.stack([f[0] for f in focus])).sum((1, 2))
    assert summed.item() == pytest.approx(((S - inside) / (inside + 0.001)).sum().item() / 6)
    per = decoder_attention_loss(A, focus, num, idx, layer_summed=False)
    ref = sum(((A[l, b, 0].sum() - (A[l, b, 0] * focus[b][0]).sum()) / ((A[l, b, 0] * focus[b][0]).sum() + 0.001))
              for l in range(3) for b in range(2)) / 6
    assert per.item() == pytest.approx(ref.item(), rel=1e-6)
    # attention inside the focus region only: zero loss (up to the 0.001 guard)
    B = torch.zeros(3, 2, 1, 4, 4)
    B[:, 0, 0, 0, 0] = 1
    B[:, 1, 0, 3, 0] = 1
    assert decoder_attention_loss(B, focus, num, idx, layer_summed=True).item() == pytest.approx(0.0)


def test_mask_target_truncation_erodes():
    m = torch.zeros(1, 64, 64, dtype=torch.uint8)
    m[0, 10:31, 10:31] = 1
    a, b = mask_target(m, (16, 16), True), mask_target(m, (16, 16), False)
    assert a.sum() < b.sum() and set(a.unique().tolist()) <= {0.0, 1.0}


def _tiny(**kw):
    torch.manual_seed(0)
    return build_model(dict(preset="tiny", vocab_size=100, **kw))


def _inputs(B=2, S=128):
    torch.manual_seed(1)
    img = torch.randn(B, 3, S, S)
    ids = torch.randint(3, 100, (B, 20))
    pad = torch.zeros(B, 20, dtype=torch.bool)
    pad[0, 12:] = True
    return img, ids, pad


def test_box_only_batch_trains_with_float_zero_mask_terms():
    """The official code crashes on box-only data; here the mask terms are float zeros and the rest back-propagates."""
    model = _tiny(**{k: True for k in COMPAT_SWITCHES})
    model.train()
    out = model.forward_tensors(*_inputs())
    boxes = [torch.tensor([[0.3, 0.4, 0.2, 0.3]]), torch.tensor([[0.6, 0.5, 0.5, 0.4]])]
    crit = ALVGCriterion({}, model.cfg.compat())
    losses = crit(out, types.SimpleNamespace(target_boxes=boxes, masks=None))
    assert losses["loss_mask"].dtype == torch.float32 and losses["loss_mask"].item() == 0.0
    assert torch.isfinite(losses["loss"]) and losses["decoder_attention_loss"].item() > 0
    losses["loss"].backward()
    assert model.head.enhance.img_proj.weight.grad.abs().sum() > 0  # the score loss reaches TIE
    assert model.head.mask_head.refine[0].weight.grad is None         # no mask supervision without masks


def test_parallel_layers_are_independent_and_stacked_are_not():
    torch.manual_seed(0)
    dec = AttnMapDecoder(3, 16, 2, 32, 0.0, chain_layers=False)
    tgt, mem, qp, kp = torch.zeros(2, 1, 16), torch.randn(2, 9, 16), torch.randn(2, 1, 16), torch.randn(2, 9, 16)
    hs, attn = dec(tgt, mem, qp, kp)
    assert hs.shape == (3, 2, 1, 16) and attn.shape == (3, 2, 1, 9)
    assert torch.allclose(attn.sum(-1), torch.ones(3, 2, 1), atol=1e-6)
    dec.layers[1].load_state_dict(dec.layers[0].state_dict())
    hs, _ = dec(tgt, mem, qp, kp)
    assert torch.allclose(hs[0], hs[1])      # same weights, same input: the layers do not see each other
    dec.chain_layers = True
    hs2, _ = dec(tgt, mem, qp, kp)
    assert torch.allclose(hs2[0], hs[0]) and not torch.allclose(hs2[1], hs2[0], atol=1e-4)


def test_every_compat_switch_changes_something_and_round_trips():
    img, ids, pad = _inputs()
    boxes = [torch.tensor([[0.3, 0.4, 0.2, 0.3]]), torch.tensor([[0.6, 0.5, 0.5, 0.4]])]
    masks = torch.zeros(2, 128, 128, dtype=torch.uint8)
    masks[0, 40:90, 20:60] = 1
    masks[1, 30:101, 50:127] = 1
    base = _tiny()
    base.eval()

    def run(model, box_only=False):
        with torch.no_grad():
            out = model.forward_tensors(img, ids, pad)
            r = ALVGCriterion({}, model.cfg.compat()).compute(
                out, types.SimpleNamespace(target_boxes=boxes, masks=None if box_only else masks))
        return out, r

    ref = {bo: run(base, bo) for bo in (False, True)}
    for k in COMPAT_SWITCHES:
        m = _tiny(**{k: True})
        m.load_state_dict(base.state_dict())
        m.eval()
        assert m.cfg.compat()[k] and m.head.switches().get(k, True)
        box_only = k == "attn_targets_mask_vs_box"
        out, r = run(m, box_only)
        o0, r0 = ref[box_only]
        changed = [n for n in ("decoder_boxes", "pred_masks", "score_map", "attn_maps") if not torch.allclose(out[n], o0[n])]
        changed += [n for n, v in r["raw"].items() if not torch.allclose(v, r0["raw"][n])]
        assert changed, k
        m.set_compat(**{k: False})
        assert not m.cfg.compat()[k]
        out2, _ = run(m, box_only)
        assert torch.allclose(out2["decoder_boxes"], o0["decoder_boxes"]), k
    with pytest.raises(KeyError):
        base.set_compat(no_such_switch=True)


def test_tie_score_is_standardised():
    model = _tiny()
    model.eval()
    with torch.no_grad():
        out = model.forward_tensors(*_inputs())
    s = out["score_map"]
    assert ((s > 0) & (s < 2)).all()
    z = torch.logit(s / 2)
    assert torch.allclose(z.flatten(1).mean(1), torch.zeros(2), atol=1e-4)
    assert torch.allclose(z.flatten(1).std(1, unbiased=False), torch.ones(2), atol=1e-3)


def test_converter_rules_and_export_layout():
    assert convert.map_key("head.transformer.decoder.layers.2.norm3.weight") == "head.decoder.layers.2.norm2.weight"
    assert convert.map_key("head.transformer.decoder.layers.0.norm2.bias") == "head.decoder.layers.0.norm3.bias"
    assert convert.map_key("head.transformer.decoder.layers.1.linear1.weight") == "head.decoder.layers.1.ffn.linear1.weight"
    assert convert.map_key("head.transformer.img_enhance.img_proj.weight") == "head.enhance.img_proj.weight"
    assert convert.map_key("head.mask_head.upsample.6.bias") == "head.mask_head.upsample.6.bias"
    assert convert.map_key("head.mask_head.cross_attn.in_proj_weight") is None
    assert convert.map_key("head.text_guided_query_generation_transformer.layers.1.norms.2.weight") == \
        "head.tgqg.layers.1.norm3.weight"
    sd = {"module.head.criterion.empty_weight": torch.tensor([1.0, 0.25]), "module.head.query_embed.weight": torch.zeros(1, 4),
          "module.head.bbox_embed_token.layers.0.weight": torch.zeros(4, 4), "module.head.something_new": torch.zeros(1)}
    out, rep = convert.convert_alvg_state_dict(sd)
    assert list(out) == ["head.query_embed.weight"] and rep["unmapped"] == ["head.something_new"]
    assert rep["unused"] == ["head.bbox_embed_token.layers.0.weight"] and rep["eos_coef"] == 0.25


def test_tiny_overfits_one_batch():
    """20 Adam steps on one batch: the total loss falls by more than half and the box moves onto the target."""
    model = _tiny()
    model.train()
    img, ids, pad = _inputs()
    boxes = [torch.tensor([[0.3, 0.4, 0.2, 0.3]]), torch.tensor([[0.6, 0.5, 0.5, 0.4]])]
    masks = torch.zeros(2, 128, 128, dtype=torch.uint8)
    masks[0, 32:70, 25:51] = 1
    masks[1, 38:90, 45:109] = 1
    crit = ALVGCriterion({}, model.cfg.compat())
    batch = types.SimpleNamespace(target_boxes=boxes, masks=masks)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(20):
        out = model.forward_tensors(img, ids, pad)
        loss = crit(out, batch)
        opt.zero_grad()
        loss["loss_dgt"].add(loss["loss_mask"]).backward()
        opt.step()
        first = first if first is not None else (loss["loss_dgt"] + loss["loss_mask"]).item()
    last = (loss["loss_dgt"] + loss["loss_mask"]).item()
    assert last < 0.5 * first, (first, last)


def test_convert_cli_round_trip_of_an_official_file(tmp_path):
    """Our tiny model exported to the official layout (with the never-run modules and a DDP prefix), written as
    an official checkpoint file, converted by ``python -m alvg.convert``'s main and loaded by the evaluation
    loader: same outputs, every compat switch on, the never-run modules dropped."""
    from alvg.weights import read_weights
    model = _tiny()
    model.eval()
    off = convert.to_official_state_dict(model.state_dict())
    C = model.cfg.embed_dim
    off.update({"head.class_embed_token.weight": torch.zeros(2, C), "head.mask_head.norm.weight": torch.ones(C)})
    torch.save({"state_dict": {"module." + k: v for k, v in off.items()}, "epoch": 3}, tmp_path / "official.pth")
    bb = json.dumps({"embed_dim": C, "num_layers": 3, "ffn_dim": 256, "num_heads": 4})
    assert convert.main(["--src", str(tmp_path / "official.pth"), "--dst", str(tmp_path / "ours.pth"),
                         "--set", f"backbone_overrides={bb}", "--set", "num_heads=4"]) == 0
    payload = torch.load(tmp_path / "ours.pth", weights_only=True)
    assert sorted(payload["report"]["unused"]) == ["head.class_embed_token.weight", "head.mask_head.norm.weight"]
    sd, cfg, kind = read_weights(str(tmp_path / "ours.pth"))
    assert kind == "converted" and all(cfg[k] for k in COMPAT_SWITCHES)
    again = build_model(cfg)
    again.load_state_dict(sd)
    again.set_compat(**{k: False for k in COMPAT_SWITCHES})
    again.eval()
    with torch.no_grad():
        a, b = model.forward_tensors(*_inputs()), again.forward_tensors(*_inputs())
    assert torch.equal(a["decoder_boxes"], b["decoder_boxes"]) and torch.equal(a["pred_masks"], b["pred_masks"])
