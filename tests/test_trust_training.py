"""Training failures that must be caught, refused or reported -- one test per failure, each reproducing it.

Non-finite values (stop on the step, never write non-finite weights, SimVG's matcher never sees NaN), resume
and output-folder guards (used folder, stale temporary files, changed batch size / lr, another world size),
eval / predict that check their output location first and print before writing, and the text progress line.
"""
import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from vgcore import dist, engine, optim
from vgcore.checkpoint import save_checkpoint, torch_load

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "tests" / "assets" / "toy_train.py"
FIT_ARGS = ["--fit", "--epochs", "2", "--dropout", "0", "--augment_noise", "0", "--norm", "none", "--n_train", "24",
            "--n_val", "7", "--log_every", "2"]


@pytest.fixture(scope="module")
def toy():
    spec = importlib.util.spec_from_file_location("vg_toy_train_trust", TOY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _loader(toy, n=32, bs=4):
    loader = dist.build_loader(toy.ToyDataset(n, 16, seed=5), bs, train=True, seed=0, collate_fn=toy.collate,
                               distributed=False)
    loader.set_epoch(0)
    return loader


def _all_finite(state):
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


# ----------------------------------------------------------------------------------------- non-finite values
def test_nan_loss_stops_on_its_step_with_terms_and_lr(toy, tmp_path):
    """l2 turns NaN at batch 3 of 8 with --log_every 50: the run stops at step 3 (not at the next log point),
    names the term and the lr; the last checkpoint is step 2's, with finite weights."""
    calls = []

    def criterion(outputs, batch):
        losses = toy.ToyCriterion()(outputs, batch)
        calls.append(1)
        if len(calls) == 3:
            losses["l2"] = losses["l2"] * float("nan")
            losses["loss"] = losses["l1"] + losses["l2"]
        return losses

    model = toy.ToyModel(16, dropout=0.0)
    opt = optim.build_optimizer("sgd", model.parameters(), 0.05)
    ckpt = tmp_path / "checkpoint.pth"
    with pytest.raises(FloatingPointError) as err:
        engine.train_one_epoch(model, criterion, _loader(toy), opt, None, "cpu", 0, log_every=50,
                               checkpoint_every=1,
                               checkpoint_fn=lambda e, s: save_checkpoint(ckpt, model, opt, epoch=e, step=s))
    msg = str(err.value)
    assert "non-finite loss: l2, loss at epoch 0 step 3" in msg and "l1=" in msg and "lr 5.000e-02" in msg, msg
    ck = torch_load(ckpt)
    assert ck["step"] == 2 and _all_finite(ck["model"])
    assert _all_finite(model.state_dict())  # stopped before the NaN step's update


def test_no_checkpoint_from_nonfinite_weights(toy, tmp_path):
    """A finite loss whose gradient is NaN (sqrt at 0) poisons the weights on step 1: the checkpoint of that
    step is refused, naming the tensors, and no file is written."""
    def criterion(outputs, batch):
        losses = toy.ToyCriterion()(outputs, batch)
        p = outputs["pred_boxes"]
        losses["loss"] = losses["loss"] + 0.0 * torch.sqrt(p - p).sum()  # value finite, gradient NaN
        return losses

    model = toy.ToyModel(16, dropout=0.0, norm="none")
    opt = optim.build_optimizer("sgd", model.parameters(), 0.05)
    ckpt = tmp_path / "checkpoint.pth"
    with pytest.raises(FloatingPointError, match=r"non-finite weights in .*conv1\.weight"):
        engine.train_one_epoch(model, criterion, _loader(toy), opt, None, "cpu", 0, checkpoint_every=1,
                               checkpoint_fn=lambda e, s: save_checkpoint(ckpt, model, opt, epoch=e, step=s))
    assert not ckpt.exists() and not list(tmp_path.glob(".*.tmp"))


class _FakeSimVG(nn.Module):
    """SimVG-shaped outputs (2 decoder layers, 3 queries); the boxes turn NaN from the ``nan_at``-th call."""

    def __init__(self, nan_at: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, 4))
        self.nan_at, self.calls = nan_at, 0

    def forward(self, batch):
        self.calls += 1
        B = len(batch)
        boxes = (self.w.sigmoid() + 0.0 * batch.images.mean()).expand(2, B, 3, 4)
        if self.calls >= self.nan_at:
            boxes = boxes * float("nan")
        logits = self.w[:, :2].expand(2, B, 3, 2)
        return {"decoder_logits": logits, "decoder_boxes": boxes, "pred_logits": logits[-1], "pred_boxes": boxes[-1]}


def test_simvg_matcher_never_sees_nan(toy, monkeypatch):
    """NaN predicted boxes at step 2: the SimVG criterion's finiteness check stops the run before its Hungarian
    matcher (scipy) runs on them, and the engine names the step, the outputs and the lr."""
    import vgcore.models.matcher as matcher
    from simvg.loss import SimVGCriterion

    seen = []
    real = matcher.linear_sum_assignment

    def spy(cost):
        seen.append(bool(torch.isfinite(torch.as_tensor(cost)).all()))
        return real(cost)

    monkeypatch.setattr(matcher, "linear_sum_assignment", spy)
    model = _FakeSimVG(nan_at=2)
    opt = optim.build_optimizer("adam", model.parameters(), 1e-4)
    with pytest.raises(FloatingPointError) as err:
        engine.train_one_epoch(model, SimVGCriterion({"loss_preset": "decoder_only"}), _loader(toy), opt, None, "cpu",
                               0, log_every=50)
    msg = str(err.value)
    assert "SimVG outputs (before the Hungarian matcher): decoder_boxes at epoch 0 step 2" in msg and "lr 1.000e-04" in msg
    assert seen and all(seen)  # step 1 was matched; step 2's NaN never reached scipy


# ----------------------------------------------------------------------------------------- resume / output folder
def _fit(toy, out, *extra):
    args = toy.get_args_parser().parse_args(FIT_ARGS + ["--output_dir", str(out)] + list(extra))
    return toy.main_fit(args)


def test_used_output_folder_is_refused_unless_resume_or_overwrite(toy, tmp_path):
    data_only = tmp_path / "data"
    data_only.mkdir()
    (data_only / "train.json").write_text("[]")
    _fit(toy, data_only, "--stop_after_steps", "2")  # a folder with only data is not "used"
    with pytest.raises(SystemExit, match=r"holds a previous run \(checkpoint.pth\): pass --resume"):
        _fit(toy, data_only, "--stop_after_steps", "2")
    before = (data_only / "log.txt").read_text()
    _fit(toy, data_only, "--stop_after_steps", "2", "--overwrite")
    after = (data_only / "log.txt").read_text()
    assert "--overwrite: deleted the previous run's" in after and before not in after
    assert (data_only / "train.json").exists()  # the data stays


def test_stale_tmp_checkpoint_is_removed_on_start(toy, tmp_path):
    _fit(toy, tmp_path, "--stop_after_steps", "2")
    stale = tmp_path / ".checkpoint.pth.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    _fit(toy, tmp_path, "--stop_after_steps", "3", "--resume", str(tmp_path / "checkpoint.pth"))
    assert not stale.exists()
    assert "removed 1 unfinished checkpoint write(s): .checkpoint.pth.k1ll3d.tmp" in (tmp_path / "log.txt").read_text()


def test_resume_with_another_batch_size_or_lr_needs_the_flag(toy, tmp_path):
    _fit(toy, tmp_path, "--batch_size", "4", "--stop_after_steps", "3")  # 3 of 6 batches of epoch 0
    resume = ["--resume", str(tmp_path / "checkpoint.pth")]
    with pytest.raises(SystemExit, match=r"changed since the saved run: --batch_size 4 -> 2; pass --allow_resume_changes"):
        _fit(toy, tmp_path, "--batch_size", "2", *resume)
    with pytest.raises(SystemExit, match=r"--lr 0.003 -> 0.006"):
        _fit(toy, tmp_path, "--batch_size", "4", "--lr", "6e-3", *resume)
    _fit(toy, tmp_path, "--batch_size", "2", "--lr", "6e-3", "--allow_resume_changes", "--stop_after_steps", "13",
         *resume)
    log = (tmp_path / "log.txt").read_text()
    assert "resumed from" in log and "epoch 0, step 3" in log
    assert "resume: changed flags: allow_resume_changes" not in log  # the flag itself is not a change
    assert "batch_size 4 -> 2" in log and "lr 0.003 -> 0.006" in log
    assert "learning rates rescaled x 2" in log
    assert "12 samples of epoch 0 were done; with 1 x 2 samples per batch that is step 6 (was 3)" in log
    assert re.search(r"epoch 0: n 7, miou 0\.\d{4}", log)  # counts print as integers


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(cmd):
    p = subprocess.run(cmd, cwd=str(ROOT), env=_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"{' '.join(cmd)}:\nSTDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}"
    return p


def test_two_ranks_then_one_resume_progress_lines_and_one_ddp_notice(tmp_path):
    """2 processes (find_unused_parameters=True, all parameters used) stop mid-epoch 1; 1 process resumes from
    the command line.  The 2-process job prints PyTorch's find_unused_parameters notice once (not once per
    rank); with stdout a pipe both print text progress lines; the resume says the RNG was not restored."""
    args = FIT_ARGS + ["--batch_size", "3", "--checkpoint_every_steps", "1", "--output_dir", str(tmp_path)]
    two = _run([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", "--use_env", str(TOY)]
               + args + ["--stop_after_steps", "5"])
    assert two.stderr.count("find_unused_parameters=True was specified") == 1, two.stderr
    line = re.compile(r"^epoch (\d+) step (\d+)/(\d+)  loss \d+\.\d{4}  l1 \d+\.\d{4}  l2 \d+\.\d{4}  "
                      r"lr \d\.\d{3}e[-+]\d\d  \d+\.\d img/s  eta \d+:\d\d:\d\d$", re.M)
    assert [m.groups() for m in line.finditer(two.stdout)] == [("0", "2", "4"), ("0", "4", "4"), ("1", "1", "4")]
    ck = torch_load(tmp_path / "checkpoint.pth")
    assert (ck["epoch"], ck["step"], ck["world_size"]) == (1, 1, 2)
    one = _run([sys.executable, str(TOY)] + args + ["--resume", str(tmp_path / "checkpoint.pth")])
    assert "resume: world size 2 -> 1: weights, optimizer and schedule restored, RNG state not restored" in one.stdout
    assert "6 samples of epoch 1 were done; with 1 x 3 samples per batch that is step 2 (was 1)" in one.stdout
    assert [m.groups() for m in line.finditer(one.stdout)] == [("1", "4", "8"), ("1", "6", "8"), ("1", "8", "8")]
    assert json.loads((tmp_path / "train_summary.json").read_text())["stopped"] is False


def test_progress_line_every_log_every_steps(toy, capsys):
    model = toy.ToyModel(16, dropout=0.0)
    opt = optim.build_optimizer("sgd", model.parameters(), 0.01)
    stats = engine.train_one_epoch(model, toy.ToyCriterion(), _loader(toy, 16, 4), opt, None, "cpu", 3,
                                   logger=engine.Logger(enabled=True), log_every=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    for ln, step in zip(lines, (2, 4)):
        assert re.fullmatch(rf"epoch 3 step {step}/4  loss \d\.\d{{4}}  l1 \d\.\d{{4}}  l2 \d\.\d{{4}}  lr 1\.000e-02  "
                            r"\d+\.\d img/s  eta 0:00:\d\d", ln), ln
    assert type(stats["steps"]) is int and type(stats["optimizer_steps"]) is int


# ----------------------------------------------------------------------------------------- eval / predict
def _fake_method(calls):
    m = types.ModuleType("fake_method")
    m.NAME = "Fake"
    for name in ("add_args", "build", "records", "pipeline", "make_postprocess", "make_accumulators",
                 "build_optimizer", "loop_config", "convert"):
        setattr(m, name, lambda *a, **k: None)

    def load(args):
        calls.append("load")
        return nn.Linear(1, 1)
    m.load = load
    m.predictions = lambda args, model, outputs, batch: [{"box_xyxy": torch.tensor([1.0, 2.0, 3.0, 4.0]).numpy()}]
    return m


def test_eval_and_predict_refuse_an_unwritable_output_before_model_work(tmp_path):
    from vgcore import method
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    calls = []
    fake = _fake_method(calls)
    ev = argparse.Namespace(output_dir=str(blocker / "out"), dist_backend=None, device="cpu", eval_sets=["val"],
                            dataset="toy", vis=0, amp="none")
    with pytest.raises(SystemExit, match="is not writable"):
        method.evaluate(fake, ev)
    pr = argparse.Namespace(out=str(blocker / "out" / "p.png"), device="cpu", image="x.png", text="t")
    with pytest.raises(SystemExit, match="is not writable"):
        method.predict(fake, pr)
    assert calls == []  # no model was loaded


def test_eval_and_predict_print_before_writing(tmp_path, monkeypatch, capsys):
    """The output location breaks after the check (here: replaced by a file; the PNG writer fails): the metrics
    and the box are on stdout all the same."""
    from vgcore import method
    calls = []
    fake = _fake_method(calls)
    out = tmp_path / "ev"

    def evaluation(*a, **k):
        out.rmdir()
        out.write_text("the folder is gone")
        return {"acc@0.5": 0.75, "n": 4}

    monkeypatch.setattr(method, "build_loader", lambda *a, **k: None)
    monkeypatch.setattr(method, "run_evaluation", evaluation)
    ev = argparse.Namespace(output_dir=str(out), dist_backend=None, device="cpu", eval_sets=["val"], dataset="toy",
                            vis=0, amp="none")
    with pytest.raises(OSError):
        method.evaluate(fake, ev)
    assert 'toy val: {"acc@0.5": 0.75, "n": 4}' in capsys.readouterr().out

    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    monkeypatch.setattr(method, "single_batch", lambda *a, **k: None)
    fake.pipeline = lambda *a, **k: (None, None)
    fake.load = lambda args: nn.Identity()

    def broken_draw(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(method, "draw_grounding", broken_draw)
    pr = argparse.Namespace(out=str(tmp_path / "p.png"), device="cpu", image=str(tmp_path / "img.png"), text="t")
    with pytest.raises(OSError, match="disk full"):
        method.predict(fake, pr)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["box_xyxy"] == [1.0, 2.0, 3.0, 4.0]
