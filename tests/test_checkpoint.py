"""vgcore.checkpoint: atomic save, strict loading, official-checkpoint helpers and EXACT mid-epoch resume."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from vgcore import checkpoint as ck

ASSETS = Path(__file__).resolve().parent / "assets"


def _toy():
    spec = importlib.util.spec_from_file_location("vg_toy_train", ASSETS / "toy_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------- atomic save
def test_atomic_save_crash_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    ck.atomic_save({"v": torch.tensor([1.0, 2.0])}, path)
    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        f.write(b"partial garbage")  # half-written file, then the process "dies"
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        ck.atomic_save({"v": torch.tensor([9.0])}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(ck.torch_load(path)["v"], torch.tensor([1.0, 2.0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]  # no temp file left behind
    ck.atomic_save({"v": torch.tensor([3.0])}, path)
    assert torch.equal(ck.torch_load(path)["v"], torch.tensor([3.0]))


# ----------------------------------------------------------------------------------------- strict loading
class _Net(nn.Module):
    def __init__(self, d=3):
        super().__init__()
        self.a = nn.Linear(2, d)
        self.bn = nn.BatchNorm1d(d)


def test_strict_loader_lists_missing_unexpected_and_shapes():
    net = _Net()
    sd = dict(_Net().state_dict())
    del sd["a.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["bn.weight"] = torch.zeros(5)
    with pytest.raises(ck.StateDictMismatchError) as ei:
        ck.load_strict(net, sd, what="unit")
    assert str(ei.value) == (
        "state dict does not match the model (unit):\n"
        "  missing from the checkpoint (1):\n    a.bias\n"
        "  unexpected, not in the model (1):\n    extra.weight\n"
        "  shape mismatches (1):\n    bn.weight: checkpoint (5,) vs model (3,)")
    assert ei.value.missing == ["a.bias"] and ei.value.unexpected == ["extra.weight"]
    # allowed omissions load the rest and are reported back
    sd["bn.weight"] = torch.full((3,), 7.0)
    missing, unexpected = ck.load_strict(net, sd, allow_missing=[r"^a\.bias$"], allow_unexpected=[r"^extra\."])
    assert missing == ["a.bias"] and unexpected == ["extra.weight"]
    assert torch.equal(net.bn.weight.data, torch.full((3,), 7.0))


def test_strict_report_groups_keys_by_pattern():
    net = nn.Sequential(*[nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3)) for _ in range(12)])
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith(".1.bias")}
    sd["7.0.weight"] = torch.zeros(4, 2)
    sd["9.0.weight"] = torch.zeros(4, 2)
    with pytest.raises(ck.StateDictMismatchError) as ei:
        ck.load_strict(net, sd, what="grouped.pth")
    assert str(ei.value) == (
        "state dict does not match the model (grouped.pth):\n"
        "  missing from the checkpoint (12):\n    *.*.bias  [0-11] [1]\n"
        "  shape mismatches (2):\n    *.*.weight  [7,9] [0]: checkpoint (4, 2) vs model (2, 2)")
    assert ck.group_keys(["blocks.0.q", "blocks.1.q", "blocks.2.q", "blocks.5.q", "head.w"]) == \
        ["blocks.*.q  [0-2,5]", "head.w"]


def test_strip_prefix_and_collisions():
    sd = {"module.module.a": 1, "module.b": 2, "c": 3, "backbone.module.d": 4}
    out = ck.strip_prefix(sd, ["module."])
    assert list(out) == ["a", "b", "c", "backbone.module.d"]
    assert list(ck.strip_prefix(sd, "module.", repeat=False)) == ["module.a", "b", "c", "backbone.module.d"]
    assert list(ck.strip_prefix({"model.x": 0, "module.y": 1}, ["model.", "module."])) == ["x", "y"]
    with pytest.raises(KeyError, match="collide"):
        ck.strip_prefix({"module.a": 1, "a": 2}, "module.")


def test_convert_state_dict_rules_and_report():
    sd = {"module.backbone.blocks.0.attn.qkv.weight": 1, "backbone.blocks.0.norm1.weight": 2, "head_drop.x": 3,
          "bbox_embed.layers.0.weight": 4, "text_projection": torch.arange(6.0).reshape(2, 3)}
    rules = [
        (r"^(module\.)?backbone\.blocks\.(\d+)\.attn\.qkv\.", r"visu.blocks.\2.attn.in_proj."),
        (r"^backbone\.", "visu."),                                   # first matching rule wins
        (r"^head_drop\.", None),                                     # dropped
        (r"^text_projection$", "text_proj.weight", lambda v: v.t()),  # renamed and transformed
        (r"\.attn\.", ".never."),                                    # shadowed by the first rule
    ]
    out, rep = ck.convert_state_dict(sd, rules, expected_keys=["visu.blocks.0.attn.in_proj.weight",
                                                              "visu.blocks.0.norm1.weight", "text_proj.weight",
                                                              "visu.pos_embed"])
    assert list(out) == ["visu.blocks.0.attn.in_proj.weight", "visu.blocks.0.norm1.weight",
                         "bbox_embed.layers.0.weight", "text_proj.weight"]
    assert torch.equal(out["text_proj.weight"], torch.arange(6.0).reshape(2, 3).t())
    assert rep.renamed == {"module.backbone.blocks.0.attn.qkv.weight": "visu.blocks.0.attn.in_proj.weight",
                           "backbone.blocks.0.norm1.weight": "visu.blocks.0.norm1.weight",
                           "text_projection": "text_proj.weight"}
    assert rep.dropped == ["head_drop.x"]
    assert rep.unmatched == ["bbox_embed.layers.0.weight"]        # kept unchanged, reported
    assert rep.missing == ["visu.pos_embed"] and rep.unexpected == ["bbox_embed.layers.0.weight"]
    assert not rep.ok
    with pytest.raises(ck.ConversionError) as ei:
        rep.check(what="official.pth")
    assert str(ei.value) == (
        "checkpoint conversion incomplete (official.pth):\n"
        "  unmatched (1; no rule for these checkpoint keys):\n    bbox_embed.layers.0.weight\n"
        "  missing (1; expected, not produced):\n    visu.pos_embed\n"
        "  unexpected (1; produced, not expected):\n    bbox_embed.layers.0.weight")
    out2, rep2 = ck.convert_state_dict(sd, rules, keep_unmatched=False)
    assert "bbox_embed.layers.0.weight" not in out2 and len(out2) == 3 and rep2.unmatched == rep.unmatched
    assert rep2.check(allow_unmatched=True) is rep2
    with pytest.raises(KeyError, match="both map"):
        ck.convert_state_dict({"a.x": 1, "b.x": 2}, [(r"^[ab]\.", "c.")])


def test_resample_pos_table_numbers():
    # 1-D: a ramp f(i) = i with one extra (cls) token.  Output i samples src (i + 0.5) / 2 - 0.5, so i=3 -> 1.25
    # with taps 0..3 at distances 1.25, 0.25, 0.75, 1.75.  Keys' cubic kernel with a = -0.75 (PyTorch's) gives
    # weights -0.10546875, 0.87890625, 0.26171875, -0.03515625 -> 0.87890625 + 2*0.26171875 - 3*0.03515625
    # = 1.296875; i=4 (src 1.75) by symmetry 3 - 1.296875 = 1.703125.
    ramp = torch.arange(4.0)[:, None].repeat(1, 2)
    table = torch.cat([torch.full((1, 2), -5.0), ramp])
    out = ck.resample_pos_table(table, 8, num_prefix_tokens=1)
    assert out.shape == (9, 2)
    assert torch.equal(out[0], torch.full((2,), -5.0))
    assert torch.allclose(out[1 + 3], torch.full((2,), 1.296875), atol=1e-6)
    assert torch.allclose(out[1 + 4], torch.full((2,), 1.703125), atol=1e-6)
    # 2-D, batched [1, N, C], f(x, y) = x + 10 y on a 4x4 grid -> 8x8 (row-major: row = y)
    y, x = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    grid = (x + 10 * y).reshape(1, 16, 1)
    pos = torch.cat([torch.zeros(1, 1, 1), grid], 1)
    out2 = ck.resample_pos_table(pos, (8, 8), num_prefix_tokens=1)
    assert out2.shape == (1, 65, 1)
    g = out2[0, 1:, 0].reshape(8, 8)
    assert g[3, 4].item() == pytest.approx(1.703125 + 12.96875, abs=1e-5)  # separable: x(4) + 10 y(3)
    assert g[4, 3].item() == pytest.approx(1.296875 + 17.03125, abs=1e-5)
    # constant fields stay constant; same size is the identity; non-square grid needs old_grid
    const = torch.full((1, 1 + 6, 3), 0.5)
    r = ck.resample_pos_table(const, (4, 5), num_prefix_tokens=1, old_grid=(2, 3))
    assert r.shape == (1, 21, 3) and torch.allclose(r, torch.full_like(r, 0.5), atol=1e-6)
    assert torch.equal(ck.resample_pos_table(pos, (4, 4), num_prefix_tokens=1), pos)
    with pytest.raises(ValueError, match="square"):
        ck.resample_pos_table(torch.zeros(6, 2), (4, 4))
    half = ck.resample_pos_table(table.half(), 8, num_prefix_tokens=1)
    assert half.dtype == torch.float16


def test_unwrap_checkpoint():
    sd = {"w": torch.zeros(1)}
    assert ck.unwrap_checkpoint({"model": {"module": sd}, "epoch": 3}) is sd
    assert ck.unwrap_checkpoint({"state_dict": sd}) is sd
    flat = {"model": torch.zeros(1), "b": torch.ones(1)}  # a tensor named "model" is not a wrapper
    assert ck.unwrap_checkpoint(flat) is flat
    with pytest.raises(TypeError):
        ck.unwrap_checkpoint([1, 2])


def test_unwrap_nesting_module_prefix_and_ema():
    w, e = torch.zeros(1), torch.ones(1)
    # DDP prefixes (stacked) are removed when every key carries one; a partial prefix is left alone
    assert ck.unwrap({"model": {"module.module.a": w, "module.b": w}}) == {"a": w, "b": w}
    assert list(ck.unwrap({"state_dict": {"module.a": w, "b": w}})) == ["module.a", "b"]
    assert list(ck.unwrap(nn.Linear(2, 1))) == ["weight", "bias"]
    # EMA weights: mmdet-style (SimVG), timm, ours ({"shadow": ...})
    assert ck.unwrap({"state_dict": {"a": w}, "ema_state_dict": {"module.a": e}}, ema=True)["a"] is e
    assert ck.unwrap({"state_dict": {"a": w}, "state_dict_ema": {"a": e}}, ema=True)["a"] is e
    assert ck.unwrap({"model": {"a": w}, "ema": {"shadow": {"a": e}, "decay": 0.999}}, ema=True)["a"] is e
    assert ck.unwrap({"model": {"a": w}, "ema": {"shadow": {"a": e}}})["a"] is w
    with pytest.raises(KeyError, match="run.pth: no EMA weights"):
        ck.unwrap({"state_dict": {"a": w}}, ema=True, what="run.pth")


def test_resample_patch_kernel_numbers():
    # a 2x2 kernel [[0, 1], [0, 1]] -> 4x4, bicubic (a = -0.75), align_corners=False, no magnitude rescale.
    # Output column j samples x = (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25; taps floor(x)-1 .. floor(x)+2,
    # clamped to the border.  t = 0.25 weights the taps -0.10546875, 0.87890625, 0.26171875, -0.03515625
    # (t = 0.75: the reverse).  j=0 (taps -2..1 -> values 0,0,0,1): -0.10546875; j=1 (taps -1..2 -> 0,0,1,1):
    # 0.26171875 - 0.03515625 = 0.2265625; j=2: 0.87890625 - 0.10546875 = 0.7734375; j=3 (taps 0..3 ->
    # 0,1,1,1): 0.87890625 + 0.26171875 - 0.03515625 = 1.10546875.  Rows are constant (separable).
    k = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
    out = ck.resample_patch_kernel(k, 4)
    want = torch.tensor([-0.10546875, 0.2265625, 0.7734375, 1.10546875])
    torch.testing.assert_close(out[0, 0], want.expand(4, 4), rtol=0, atol=1e-7)
    assert ck.resample_patch_kernel(k, 2) is k and ck.resample_patch_kernel(k, (3, 5)).shape == (1, 1, 3, 5)


def test_torch_load_allows_namespace(tmp_path):
    import argparse
    ck.atomic_save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "o.pth")
    obj = ck.torch_load(tmp_path / "o.pth")
    assert obj["args"].lr == 1e-4


def test_rng_state_roundtrip():
    import random
    import numpy as np
    st = ck.get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ck.set_rng_state(st)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


# ----------------------------------------------------------------------------------------- exact resume
def _run(toy, argv):
    args = toy.get_args_parser().parse_args(argv)
    return toy.main(args)


@pytest.mark.parametrize("extra", [
    # cosine per epoch, EMA, dropout, BN, augmentation noise from the global RNG, shuffle
    ["--ema"],
    # per-iteration warm-up + step schedule, gradient accumulation 2
    ["--ema", "--lr_interval", "step", "--lr_scheduler", "step", "--lr_milestones", "1", "--warmup_steps", "3",
     "--warmup_start_factor", "0.1", "--accum_steps", "2", "--checkpoint_every_steps", "1"],
])
def test_resume_mid_epoch_is_bit_identical(tmp_path, extra):
    toy = _toy()
    common = ["--epochs", "2", "--n_train", "16", "--batch_size", "4", "--seed", "11", "--amp", "none",
              "--num_workers", "0", "--checkpoint_every_steps", "2"] + extra
    # 4 batches per epoch; crash after 6 batches (epoch 1, step 2): last checkpoint is epoch 1 step 2
    full = _run(toy, common + ["--output_dir", str(tmp_path / "full")])
    crashed = _run(toy, common + ["--output_dir", str(tmp_path / "crash"), "--stop_after_steps", "6"])
    assert crashed["crashed"]
    mid = ck.torch_load(tmp_path / "crash" / "checkpoint.pth")
    assert (mid["epoch"], mid["step"]) == (1, 2)
    # scramble all RNGs: the resumed run must restore them from the checkpoint
    torch.manual_seed(12345)
    resumed = _run(toy, common + ["--output_dir", str(tmp_path / "resumed"),
                                  "--resume", str(tmp_path / "crash" / "checkpoint.pth")])
    a = ck.torch_load(tmp_path / "full" / "checkpoint.pth")
    b = ck.torch_load(tmp_path / "resumed" / "checkpoint.pth")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 0)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["ema"]["shadow"].items():
        assert torch.equal(v, b["ema"]["shadow"][k]), k
    assert a["ema"]["updates"] == b["ema"]["updates"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)
    assert a["scheduler"] == b["scheduler"]
    # evaluation after the resumed epoch: identical metrics (train_loss is the mean over the batches run in
    # that process only, so it legitimately differs)
    fa = {k: v for k, v in full["final"].items() if k != "train_loss"}
    fb = {k: v for k, v in resumed["final"].items() if k != "train_loss"}
    assert fa == fb and fa["eval_count"] == 7.0
    # and the mid-epoch state really differs from the end state (the test is not vacuous)
    assert not all(torch.equal(v, mid["model"][k]) for k, v in a["model"].items())
