"""ResVG training as users launch it, on tiny synthetic data (CPU, --model_preset tiny):

(a) ``python -m torch.distributed.launch --nproc_per_node=2 --use_env resvg/train.py ...`` (gloo, 2 processes)
    trains with the encoders frozen for the first epoch, then unfrozen, and validates every epoch; the
    dataset-level validation metrics it logs (overall and per expression type, ``--breakdown expr_type``) equal
    a single-process ``resvg/eval.py`` of its final weights, every sample counted once;
(b) a run stopped mid-epoch (``--stop_after_steps``, inside the frozen epoch) and resumed with ``--resume
    checkpoint.pth`` ends bit-identical to an uninterrupted run: weights, AdamW state, the StepLR / freeze
    position; training on ``--train_split train --extra_train_splits testA`` (two split lists, each with its own
    prior file, as the augmented list is added to the real one).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vgcore.synthetic.scenes import EXPR_TYPES

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 32  # the tiny preset's prior_dim


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from vgcore.synthetic.scenes import generate

    out = tmp_path_factory.mktemp("resvg_dist")
    generate(out, num_train=16, num_val=11, num_test=8, seed=11, formats=("transvg",), verbose=False)
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val", "testA"):
        n = len(torch.load(out / "split" / "data" / "unc" / f"unc_{split}.pth", weights_only=False))
        torch.save(torch.randn(n, WIDTH, generator=g), out / "split" / "data" / "unc" / f"{split}_fea.pth")
    return out


def _common(syn, out) -> list:
    return ["--model_preset", "tiny", "--dataset", "unc", "--split_root", str(syn / "split" / "data"),
            "--image_root", str(syn / "images"), "--bert_token_mode", str(syn / "tokenizers" / "vocab.txt"),
            "--device", "cpu", "--num_workers", "0", "--output_dir", str(out)]


def _recipe(*extra) -> list:
    return ["--train_split", "train", "--epochs", "2", "--freeze_epochs", "1", "--lr_drop", "1", "--lr", "1e-3",
            "--lr_backbone", "1e-4", "--lr_vis_enc", "1e-4", "--lr_bert", "1e-4", "--tensorboard", "false",
            "--log_every", "100", *extra]


def test_ddp_launch_metrics_equal_single_process_eval(syn, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", "--master_port=29533", "--use_env",
           "resvg/train.py", *_common(syn, out), *_recipe("--batch_size", "4", "--eval_batch_size", "3",
                                                          "--breakdown", "expr_type")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    val = {k[4:]: v for k, v in logged[-1].items() if k.startswith("val/")}
    assert val["n"] == 11  # an odd split over 2 ranks: every sample exactly once
    groups = {k[2:] for k in val if k.startswith("n/")}
    assert groups and groups <= set(EXPR_TYPES) and sum(val[f"n/{g}"] for g in groups) == 11
    from resvg.eval import get_args_parser, main

    ev = main(get_args_parser().parse_args([*_common(syn, tmp_path / "ev"), "--checkpoint", str(out / "checkpoint.pth"),
                                            "--eval_sets", "val", "--batch_size", "5", "--breakdown", "expr_type"]))["val"]
    assert set(ev) == set(val)
    for k, v in ev.items():
        if k.startswith(("n", "acc")):
            assert v == val[k], k  # counts: exact
        else:
            assert v == pytest.approx(val[k], abs=1e-6), k  # mean IoU: float summation order


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_stop_mid_epoch_and_resume_is_bit_identical(syn, tmp_path):
    from resvg.train import get_args_parser, main

    def run(out, *extra):
        main(get_args_parser().parse_args(_common(syn, out) + _recipe("--batch_size", "4", "--extra_train_splits",
                                                                      "testA", *extra)))

    run(tmp_path / "straight")
    summary = json.loads((tmp_path / "straight" / "train_summary.json").read_text())
    log = (tmp_path / "straight" / "log.txt").read_text()
    assert "prior testA: prior features" in log and "24 samples" in log  # 16 train + 8 testA
    assert summary["last"]["n"] == 11
    run(tmp_path / "cut", "--stop_after_steps", "3")
    mid = _state(tmp_path / "cut" / "checkpoint.pth")
    assert (mid["epoch"], mid["step"]) == (0, 3)  # inside the first (frozen) epoch of 6 batches
    torch.manual_seed(1234)  # scramble the global RNG: resume must restore it
    run(tmp_path / "cut", "--resume", str(tmp_path / "cut" / "checkpoint.pth"))
    a, b = _state(tmp_path / "straight" / "checkpoint.pth"), _state(tmp_path / "cut" / "checkpoint.pth")
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert a["scheduler"] == b["scheduler"]
    # the unfrozen epoch trained the encoders after the stop; ResNet layer1 never trains
    for k, changed in (("visual_encoder.layers.0.ffn.linear1.weight", True), ("bert.encoder.layer.0.output.dense.weight", True),
                       ("backbone.body.layer4.0.conv1.weight", True), ("backbone.body.layer1.0.conv1.weight", False)):
        assert torch.equal(b["model"][k], mid["model"][k]) != changed, k
