"""vgcore.engine / optim / ema / cli / viz: learning, accumulation, EMA and schedule numbers by hand."""
import argparse
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from vgcore import cli, dist, engine, optim
from vgcore.ema import ModelEMA

ASSETS = Path(__file__).resolve().parent / "assets"


@pytest.fixture(scope="module")
def toy():
    spec = importlib.util.spec_from_file_location("vg_toy_train_engine", ASSETS / "toy_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _loader(toy, ds, bs, shuffle=True, seed=0):
    return dist.build_loader(ds, bs, train=True, seed=seed, collate_fn=toy.collate, shuffle=shuffle,
                             distributed=False)


# ----------------------------------------------------------------------------------------- engine
def test_loss_decreases_and_eval_improves(toy):
    torch.manual_seed(0)
    ds = toy.ToyDataset(32, 16, seed=3)
    val = toy.ToyDataset(7, 16, seed=4)
    loader = _loader(toy, ds, 8)
    vloader = dist.build_loader(val, 4, train=False, collate_fn=toy.collate, distributed=False)
    model = toy.ToyModel(16, dropout=0.0)
    opt = optim.build_optimizer("adamw", model.parameters(), 3e-3, 0.0)
    crit = toy.ToyCriterion()

    def ev():
        from vgcore.metrics import RECAccumulator
        m = engine.evaluate(model, vloader, "cpu", postprocess=lambda o, b: toy.postprocess(o, b)["rec"],
                            accumulators=RECAccumulator(thresholds=(0.5,)))
        assert m["n"] == 7.0
        return m["miou"]

    miou0 = ev()
    losses = []
    for epoch in range(5):
        loader.set_epoch(epoch)
        st = engine.train_one_epoch(model, crit, loader, opt, None, "cpu", epoch, log_every=3)
        assert st["completed"] == 1.0 and st["steps"] == 4 and st["optimizer_steps"] == 4
        assert set(st) >= {"loss", "l1", "l2", "lr"}
        losses.append(st["loss"])
    assert losses[-1] < 0.5 * losses[0], losses
    assert ev() > miou0 + 0.05


def _grad_run(toy, bs, accum, steps_total):
    torch.manual_seed(1)
    ds = toy.ToyDataset(16, 16, seed=5)
    loader = _loader(toy, ds, bs, shuffle=False)
    model = toy.ToyModel(16, dropout=0.0, norm="none")
    opt = optim.build_optimizer("sgd", model.parameters(), 0.5, 0.0, momentum=0.9)
    loader.set_epoch(0)
    st = engine.train_one_epoch(model, toy.ToyCriterion(), loader, opt, None, "cpu", 0, accum_steps=accum,
                                clip_max_norm=0.0)
    assert st["optimizer_steps"] == steps_total
    return model


def test_grad_accumulation_equals_big_batch(toy):
    big = _grad_run(toy, 8, 1, 2)
    acc = _grad_run(toy, 4, 2, 2)
    acc4 = _grad_run(toy, 2, 4, 2)
    ref = _grad_run(toy, 4, 1, 4)  # a different trajectory, to show the tolerance is meaningful
    for (k, a), b, c, r in zip(big.state_dict().items(), acc.state_dict().values(), acc4.state_dict().values(),
                               ref.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), k
        assert torch.allclose(a, c, atol=1e-6, rtol=1e-5), k
    assert max((a - r).abs().max().item() for a, r in zip(big.state_dict().values(), ref.state_dict().values())) > 1e-3


def test_start_step_and_max_steps(toy):
    ds = toy.ToyDataset(16, 16, seed=5)
    loader = _loader(toy, ds, 4)
    model = toy.ToyModel(16, dropout=0.0)
    opt = optim.build_optimizer("sgd", model.parameters(), 0.01)
    sched = optim.build_scheduler(opt, "step", epochs=4, milestones=[1])
    calls = []
    loader.set_epoch(0, start_step=2)
    assert len(loader) == 2
    st = engine.train_one_epoch(model, toy.ToyCriterion(), loader, opt, sched, "cpu", 0, start_step=2,
                                checkpoint_fn=lambda e, s: calls.append((e, s)), checkpoint_every=1)
    assert st["steps"] == 4 and st["optimizer_steps"] == 2 and st["completed"] == 1.0
    assert calls == [(0, 3), (0, 4)]
    assert sched.last_step == 1 and opt.param_groups[0]["lr"] == pytest.approx(0.001)  # epoch schedule stepped
    loader.set_epoch(1)
    st = engine.train_one_epoch(model, toy.ToyCriterion(), loader, opt, sched, "cpu", 1, max_steps=3)
    assert st["steps"] == 3 and st["completed"] == 0.0 and sched.last_step == 1  # incomplete: not stepped
    with pytest.raises(ValueError, match="multiple"):
        engine.train_one_epoch(model, toy.ToyCriterion(), loader, opt, None, "cpu", 0, start_step=1, accum_steps=2)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_modes_run(toy, amp):
    ds = toy.ToyDataset(8, 16, seed=5)
    loader = _loader(toy, ds, 4)
    model = toy.ToyModel(16, dropout=0.0)
    opt = optim.build_optimizer("adamw", model.parameters(), 1e-3)
    scaler = engine.build_grad_scaler(amp, "cpu")
    assert (scaler is not None) == (amp == "fp16")
    before = [p.detach().clone() for p in model.parameters()]
    st = engine.train_one_epoch(model, toy.ToyCriterion(), loader, opt, None, "cpu", 0, amp=amp, scaler=scaler,
                                clip_max_norm=0.1)
    assert math.isfinite(st["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    with pytest.raises(ValueError):
        engine.train_one_epoch(model, toy.ToyCriterion(), loader, opt, None, "cpu", 0, amp="fp16", scaler=None)


def test_nonfinite_loss_raises(toy):
    ds = toy.ToyDataset(8, 16, seed=5)
    model = toy.ToyModel(16, dropout=0.0)

    def bad(outputs, batch):
        return {"loss": outputs["pred_boxes"].sum() * float("nan")}

    with pytest.raises(FloatingPointError):
        engine.train_one_epoch(model, bad, _loader(toy, ds, 4), optim.build_optimizer("sgd", model.parameters(), 0.1),
                               None, "cpu", 0, log_every=1)


def test_logger_writes_tensorboard_and_text(tmp_path):
    lg = engine.Logger(str(tmp_path), tensorboard=True, enabled=True)
    lg.info("hello")
    lg.scalars({"loss": 1.5, "lr": torch.tensor(0.1)}, 3, prefix="train/")
    lg.json({"epoch": 0, "acc": 0.5})
    lg.close()
    assert (tmp_path / "log.txt").read_text() == "hello\n"
    assert '"acc": 0.5' in (tmp_path / "log.jsonl").read_text()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


# ----------------------------------------------------------------------------------------- EMA
def test_ema_hand_computed():
    m = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[0].bias.fill_(0.0)
    ema = ModelEMA(m, decay=0.9)
    with torch.no_grad():
        m[0].weight.fill_(3.0)
        m[1].running_mean.fill_(2.0)
        m[1].num_batches_tracked.fill_(5)
    ema.update(m)
    assert ema.shadow["0.weight"].item() == pytest.approx(0.9 * 1 + 0.1 * 3)  # 1.2
    assert ema.shadow["1.running_mean"].item() == pytest.approx(0.1 * 2)  # buffers averaged too
    assert ema.shadow["1.num_batches_tracked"].item() == 5  # integer buffers copied
    ema.update(m)
    assert ema.shadow["0.weight"].item() == pytest.approx(0.9 * 1.2 + 0.1 * 3)  # 1.38
    # apply_to swaps in the EMA weights and restores the raw ones
    with ema.apply_to(m):
        assert m[0].weight.item() == pytest.approx(1.38)
    assert m[0].weight.item() == 3.0
    # warm-up "ratio": decay_n = min(decay, (1 + n) / (10 + n)) -> 0.1, 2/11, ...
    r = ModelEMA(m, decay=0.999, warmup="ratio")
    assert [r.current_decay(n) for n in (0, 1, 990, 9000)] == pytest.approx([0.1, 2 / 11, 0.991, 0.999])
    t = ModelEMA(m, decay=0.9, warmup=10.0)
    assert t.current_decay(0) == pytest.approx(0.9 * (1 - math.exp(-0.1)))
    # state dict round trip
    e2 = ModelEMA(nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1)), decay=0.9)
    e2.load_state_dict(ema.state_dict())
    assert e2.updates == 2 and e2.shadow["0.weight"].item() == pytest.approx(1.38)


# ----------------------------------------------------------------------------------------- optim
def _opt(lr=1.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.step()
    return out


def test_schedules_hand_checked():
    cos = optim.build_scheduler(_opt(), "cosine", epochs=4)  # HiVG: 0.5 (1 + cos(pi e / E)) per epoch
    assert _lrs(cos, 5) == pytest.approx([1, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5,
                                          0.5 - 0.5 * math.cos(math.pi / 4), 0.0])
    st = optim.build_scheduler(_opt(2.0), "step", epochs=5, milestones=[2, 3], gamma=0.1)
    assert _lrs(st, 5) == pytest.approx([2, 2, 0.2, 0.02, 0.02])
    sz = optim.build_scheduler(_opt(), "step", epochs=5, step_size=2, gamma=0.5)  # ResVG StepLR
    assert _lrs(sz, 5) == pytest.approx([1, 1, 0.5, 0.5, 0.25])
    # SimVG / ALVG MultiStepLRWarmUp: (e+1)/4 for e < 3, then x0.1 once e + 1 >= 8 (milestone 7 here)
    sv = optim.build_scheduler(_opt(), "step", epochs=10, warmup_epochs=3, warmup_start_factor=0.25,
                               milestones=[7])
    assert _lrs(sv, 9) == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1, 0.1, 0.1])
    po = optim.build_scheduler(_opt(), "poly", epochs=4, power=2.0)
    assert _lrs(po, 5) == pytest.approx([1, 0.5625, 0.25, 0.0625, 0])
    li = optim.build_scheduler(_opt(), "linear", epochs=4, min_lr_ratio=0.2)
    assert _lrs(li, 5) == pytest.approx([1, 0.8, 0.6, 0.4, 0.2])
    # VG-LAW-like per-iteration: warm-up 0.01 -> 1 over 4 steps, x0.1 at epoch 1 (10 steps per epoch)
    it = optim.build_scheduler(_opt(), "step", epochs=2, iters_per_epoch=10, interval="step", milestones=[1],
                               warmup_steps=4, warmup_start_factor=0.01)
    v = _lrs(it, 12)
    assert v[:5] == pytest.approx([0.01, 0.2575, 0.505, 0.7525, 1.0])
    assert v[9] == 1.0 and v[10] == pytest.approx(0.1) and v[11] == pytest.approx(0.1)
    assert it.interval == "step"


def test_schedule_resume_state_dict():
    o1 = _opt(0.4)
    s1 = optim.build_scheduler(o1, "cosine", epochs=10, warmup_epochs=2)
    for _ in range(5):
        s1.step()
    o2 = _opt(0.4)
    s2 = optim.build_scheduler(o2, "cosine", epochs=10, warmup_epochs=2)
    s2.load_state_dict(s1.state_dict())
    assert o2.param_groups[0]["lr"] == o1.param_groups[0]["lr"] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi / 2)))
    s1.step(), s2.step()
    assert o2.param_groups[0]["lr"] == o1.param_groups[0]["lr"]


def test_param_groups_rules_and_freeze():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.vis_enc = nn.Linear(2, 2)
            self.lan_enc = nn.Linear(2, 2)
            self.head = nn.Linear(2, 2)
            self.norm = nn.LayerNorm(2)

    m = M()
    groups = optim.build_param_groups(m, 1e-3, 1e-4, rules=[(r"^vis_enc\.", {"lr_mult": 0.1}),
                                                             (r"^norm\.", {"weight_decay": 0.0})],
                                      freeze=[r"^lan_enc\."], no_decay_1d=True)
    by = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["param_names"]}
    assert by == {"vis_enc.weight": (1e-4, 1e-4), "vis_enc.bias": (1e-4, 0.0), "head.weight": (1e-3, 1e-4),
                  "head.bias": (1e-3, 0.0), "norm.weight": (1e-3, 0.0), "norm.bias": (1e-3, 0.0)}
    assert not m.lan_enc.weight.requires_grad
    opt = optim.build_optimizer("adam", groups, 1e-3, betas=(0.9, 0.98), eps=1e-9, amsgrad=True)
    assert len(opt.param_groups) == len(groups) and opt.defaults["amsgrad"]
    assert "vis_enc" in optim.describe_param_groups(groups)
    with pytest.raises(ValueError, match="unknown options"):
        optim.build_param_groups(m, 1e-3, 0.0, rules=[("x", {"lr_mul": 2})])


@pytest.mark.parametrize("name,kw", [("adamw", {}), ("adam", {"amsgrad": True, "weight_decay": 1e-2})])
def test_fused_adam_matches_the_per_tensor_loop(name, kw):
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    fus = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    fus.load_state_dict(ref.state_dict())
    o_ref = optim.build_optimizer(name, ref.parameters(), 1e-2, fused=False, **kw)
    o_fus = optim.build_optimizer(name, fus.parameters(), 1e-2, **kw)  # auto: fused on CPU tensors
    assert o_fus.defaults.get("fused") and not o_ref.defaults.get("fused")
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    for _ in range(20):
        for m, o in ((ref, o_ref), (fus, o_fus)):
            o.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            o.step()
    for a, b in zip(ref.parameters(), fus.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- cli / viz
def test_cli_groups_defaults_and_legacy_local_rank():
    p = argparse.ArgumentParser()
    cli.add_data_args(p, batch_size=64, dataset="refcocog")
    cli.add_optim_args(p, lr=2.5e-4, lr_scheduler="cosine")
    cli.add_dist_args(p)
    cli.add_logging_args(p, seed=6666)
    a = p.parse_args(["--local-rank=1", "--amp", "bf16"])
    assert (a.batch_size, a.dataset, a.lr, a.lr_scheduler, a.seed, a.local_rank, a.amp) == \
        (64, "refcocog", 2.5e-4, "cosine", 6666, 1, "bf16")
    assert p.parse_args(["--local_rank", "0"]).local_rank == 0
    assert p.parse_args([]).local_rank is None
    with pytest.raises(TypeError, match="unknown flag name"):
        cli.add_optim_args(argparse.ArgumentParser(), learning_rate=1.0)
    with pytest.raises(TypeError, match="unknown flag name"):
        cli.add_optim_args(argparse.ArgumentParser(), skip=("learning_rate",))
    # skip / only: a method offers exactly the flags it uses
    q = argparse.ArgumentParser()
    cli.add_optim_args(q, only=("amp", "lr"), lr=None)
    cli.add_logging_args(q, skip=("eval_every", "tensorboard"))
    got = vars(q.parse_args([]))
    assert got["lr"] is None and got["amp"] == "none" and "weight_decay" not in got
    assert "eval_every" not in got and "tensorboard" not in got and got["stop_after_steps"] is None
    with pytest.raises(SystemExit):
        q.parse_args(["--weight_decay", "0.1"])
    b = argparse.ArgumentParser()
    cli.add_optim_args(b, epochs=3)
    args = b.parse_args(["--lr_interval", "step", "--warmup_steps", "2"])
    s = optim.build_scheduler_from_args(_opt(), args, iters_per_epoch=5)
    assert s.interval == "step" and s.factor.total == 15 and s.factor.warmup == 2


def test_accepted_official_flags_parse_and_warn(capsys):
    p = argparse.ArgumentParser()
    cli.add_accepted_args(p, {"--save_hilora_clip": "nothing to save", "--lr_exponential": "no such schedule"},
                          valued=("--lr_exponential",))
    assert vars(p.parse_args([])) == {"save_hilora_clip": None, "lr_exponential": None}
    capsys.readouterr()
    a = p.parse_args(["--save_hilora_clip", "--lr_exponential", "0.9"])
    assert a.save_hilora_clip is True and a.lr_exponential == "0.9"
    err = capsys.readouterr().err
    assert "--save_hilora_clip is accepted for official command lines and ignored (nothing to save)" in err
    assert "--lr_exponential" in err


def test_loop_config_validation_schedule():
    from vgcore.trainer import LoopConfig
    every2 = LoopConfig(epochs=7, output_dir="x", eval_every=2)
    assert [e for e in range(7) if every2.validates_after(e)] == [1, 3, 5, 6]  # the last epoch always
    gated = LoopConfig(epochs=8, output_dir="x", eval_every=2, eval_start_epoch=4)
    assert [e for e in range(8) if gated.validates_after(e)] == [5, 7]
    with pytest.raises(ValueError, match="mode"):
        LoopConfig(epochs=1, output_dir="x", mode="best")


def test_fit_validates_on_the_loop_schedule_and_keeps_the_best(toy, tmp_path):
    """`fit` validates only after the epochs `LoopConfig` selects (not before ``eval_start_epoch``, every
    ``eval_every``, always the last), logs them, and best_checkpoint.pth holds the best validated epoch."""
    import json

    from vgcore.metrics import RECAccumulator
    from vgcore.checkpoint import load_model_file
    from vgcore.trainer import LoopConfig, fit
    torch.manual_seed(0)
    loader = _loader(toy, toy.ToyDataset(16, 16, seed=3), 8)
    vloader = dist.build_loader(toy.ToyDataset(7, 16, seed=4), 4, train=False, collate_fn=toy.collate,
                                distributed=False)
    model = toy.ToyModel(16, dropout=0.0)
    opt = optim.build_optimizer("adamw", model.parameters(), 3e-3, 0.0)
    loop = LoopConfig(epochs=6, output_dir=str(tmp_path), eval_every=2, eval_start_epoch=2, tensorboard=False,
                      metric="miou")
    summary = fit(loop, model=model, criterion=toy.ToyCriterion(), optimizer=opt, scheduler=None,
                  train_loader=loader, val_loader=vloader, device="cpu",
                  postprocess=lambda o, b: toy.postprocess(o, b)["rec"],
                  make_accumulators=lambda: RECAccumulator(thresholds=(0.5,)), model_config={"toy": 1})
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    validated = {r["epoch"]: r["val/miou"] for r in log if "val/miou" in r}
    assert [r["epoch"] for r in log] == list(range(6)) and sorted(validated) == [3, 5]
    best = load_model_file(tmp_path / "best_checkpoint.pth")
    assert summary["best"] == max(validated.values()) == best["metrics"]["miou"]
    assert best["extra"]["epoch"] == max(validated, key=validated.get) and best["config"] == {"toy": 1}


def test_method_packages_fill_the_protocol():
    import types

    import hivg.method
    import simvg.method
    from vgcore import method
    assert method.check(hivg.method) == [] and method.check(simvg.method) == []
    assert method.check(types.ModuleType("empty")) == list(method.REQUIRED)
    with pytest.raises(TypeError, match="missing"):
        method.train_parser(types.ModuleType("empty"))


def test_viz_draws_boxes_masks_text(tmp_path):
    from vgcore import viz
    img = torch.zeros(3, 40, 50)
    mask = torch.zeros(40, 50, dtype=torch.bool)
    mask[30:35, 40:45] = True
    out = viz.draw_grounding(img, pred_boxes=torch.tensor([[5.0, 5.0, 20.0, 20.0]]), gt_boxes=[[25, 5, 45, 25]],
                             text="the man on the left", gt_mask=mask, width=1)
    a = torch.from_numpy(__import__("numpy").array(out))
    assert out.width == 50 and out.height > 40  # text banner under the image
    assert tuple(a[5, 10].tolist()) == (230, 30, 30)  # predicted box edge, red
    assert tuple(a[5, 30].tolist()) == (30, 200, 60)  # GT box edge, green
    assert tuple(a[32, 42].tolist()) == (round(0.45 * 30), round(0.45 * 200), round(0.45 * 60))  # mask blend
    assert tuple(a[15, 12].tolist()) == (0, 0, 0)  # untouched inside
    g = viz.save_grid([out, out, out], tmp_path / "g.png", ncol=2, pad=2)
    assert g.size == (2 * 50 + 3 * 2, 2 * out.height + 3 * 2) and (tmp_path / "g.png").exists()


def test_evaluate_dict_accumulators_merge_and_prefix_on_clash(toy):
    class Count:
        def __init__(self):
            self.n = torch.zeros(1)

        def update(self, x):
            self.n += x.numel()

        def all_reduce(self):
            dist.all_reduce_sum(self.n)

        def compute(self):
            return {"n": float(self.n)}

    val = toy.ToyDataset(5, 16, seed=4)
    vl = dist.build_loader(val, 2, train=False, collate_fn=toy.collate, distributed=False)
    model = toy.ToyModel(16)
    model.train()
    post = lambda o, b: {"a": {"x": b.extra["idx"]}, "b": (b.extra["idx"][:1],)}  # noqa: E731
    m = engine.evaluate(model, vl, "cpu", postprocess=post, accumulators={"a": Count(), "b": Count()})
    assert m == {"a/n": 5.0, "b/n": 3.0}  # 3 batches of sizes 2, 2, 1
    assert model.training  # mode restored
