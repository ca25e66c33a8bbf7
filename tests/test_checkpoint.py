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
        ck.load_state_dict_strict(net, sd, what="unit")
    msg = str(ei.value)
    assert "missing keys (1): a.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "bn.weight: checkpoint (5,) vs model (3,)" in msg
    assert ei.value.missing == ["a.bias"] and ei.value.unexpected == ["extra.weight"]
    # allowed omissions load the rest and are reported back
    sd["bn.weight"] = torch.full((3,), 7.0)
    missing, unexpected = ck.load_state_dict_strict(net, sd, allow_missing=[r"^a\.bias$"],
                                                    allow_unexpected=[r"^extra\."])
    assert missing == ["a.bias"] and unexpected == ["extra.weight"]
    assert torch.equal(net.bn.weight.data, torch.full((3,), 7.0))


def test_strip_prefix_and_collisions():
    sd = {"module.module.a": 1, "module.b": 2, "c": 3, "backbone.module.d": 4}
    out = ck.strip_prefix(sd, ["module."])
    assert list(out) == ["a", "b", "c", "backbone.module.d"]
    assert list(ck.strip_prefix(sd, "module.", repeat=False)) == ["module.a", "b", "c", "backbone.module.d"]
    assert list(ck.strip_prefix({"model.x": 0, "module.y": 1}, ["model.", "module."])) == ["x", "y"]
    with pytest.raises(KeyError, match="collide"):
        ck.strip_prefix({"module.a": 1, "a": 2}, "module.")


def test_rename_keys_rules_and_report():
    sd = {"backbone.blocks.0.attn.qkv.weight": 1, "backbone.blocks.0.norm1.weight": 2, "head_drop.x": 3,
          "bbox_embed.layers.0.weight": 4}
    rules = [(r"^backbone\.", "visu."), (r"\.attn\.qkv\.", ".attn.in_proj."), (r"^head_drop\.", None)]
    out, unmatched = ck.rename_keys(sd, rules)
    assert out == {"visu.blocks.0.attn.in_proj.weight": 1, "visu.blocks.0.norm1.weight": 2,
                   "bbox_embed.layers.0.weight": 4}
    assert unmatched == ["bbox_embed.layers.0.weight"]
    out2, _ = ck.rename_keys(sd, rules, keep_unmatched=False)
    assert "bbox_embed.layers.0.weight" not in out2 and len(out2) == 2
    with pytest.raises(KeyError, match="both map"):
        ck.rename_keys({"a.x": 1, "b.x": 2}, [(r"^[ab]\.", "c.")])


def test_resize_pos_embed_numbers():
    # 1-D: a ramp f(i) = i with one extra (cls) token.  Output i samples src (i + 0.5) / 2 - 0.5, so i=3 -> 1.25
    # with taps 0..3 at distances 1.25, 0.25, 0.75, 1.75.  Keys' cubic kernel with a = -0.75 (PyTorch's) gives
    # weights -0.10546875, 0.87890625, 0.26171875, -0.03515625 -> 0.87890625 + 2*0.26171875 - 3*0.03515625
    # = 1.296875; i=4 (src 1.75) by symmetry 3 - 1.296875 = 1.703125.
    ramp = torch.arange(4.0)[:, None].repeat(1, 2)
    table = torch.cat([torch.full((1, 2), -5.0), ramp])
    out = ck.resize_pos_embed(table, 8, num_extra_tokens=1)
    assert out.shape == (9, 2)
    assert torch.equal(out[0], torch.full((2,), -5.0))
    assert torch.allclose(out[1 + 3], torch.full((2,), 1.296875), atol=1e-6)
    assert torch.allclose(out[1 + 4], torch.full((2,), 1.703125), atol=1e-6)
    # 2-D, batched [1, N, C], f(x, y) = x + 10 y on a 4x4 grid -> 8x8 (row-major: row = y)
    y, x = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    grid = (x + 10 * y).reshape(1, 16, 1)
    pos = torch.cat([torch.zeros(1, 1, 1), grid], 1)
    out2 = ck.resize_pos_embed(pos, (8, 8), num_extra_tokens=1)
    assert out2.shape == (1, 65, 1)
    g = out2[0, 1:, 0].reshape(8, 8)
    assert g[3, 4].item() == pytest.approx(1.703125 + 12.96875, abs=1e-5)  # separable: x(4) + 10 y(3)
    assert g[4, 3].item() == pytest.approx(1.296875 + 17.03125, abs=1e-5)
    # constant fields stay constant; same size is the identity; non-square grid needs old_grid
    const = torch.full((1, 1 + 6, 3), 0.5)
    r = ck.resize_pos_embed(const, (4, 5), num_extra_tokens=1, old_grid=(2, 3))
    assert r.shape == (1, 21, 3) and torch.allclose(r, torch.full_like(r, 0.5), atol=1e-6)
    assert torch.equal(ck.resize_pos_embed(pos, (4, 4), num_extra_tokens=1), pos)
    with pytest.raises(ValueError, match="square"):
        ck.resize_pos_embed(torch.zeros(6, 2), (4, 4))
    half = ck.resize_pos_embed(table.half(), 8, num_extra_tokens=1)
    assert half.dtype == torch.float16


def test_unwrap_checkpoint():
    sd = {"w": torch.zeros(1)}
    assert ck.unwrap_checkpoint({"model": {"module": sd}, "epoch": 3}) is sd
    assert ck.unwrap_checkpoint({"state_dict": sd}) is sd
    flat = {"model": torch.zeros(1), "b": torch.ones(1)}  # a tensor named "model" is not a wrapper
    assert ck.unwrap_checkpoint(flat) is flat
    with pytest.raises(TypeError):
        ck.unwrap_checkpoint([1, 2])


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
