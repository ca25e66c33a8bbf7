"""vgcore.dist: samplers (unit) and real 2-process gloo runs whose metrics equal the single-process run.

The 2-process runs launch tests/assets/toy_train.py exactly as users launch train.py:
``python -m torch.distributed.launch --nproc_per_node=2 --use_env`` and ``torchrun --standalone``.
Training is made deterministic (no dropout/noise/BatchNorm) and the GLOBAL batch is the same (2 x 4 vs
1 x 8), so the runs differ only by float summation order.  The eval set has 7 samples (odd): counts and the
sum / sum of squares of evaluated indices prove every sample was evaluated exactly once (no padding).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vgcore import dist

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "tests" / "assets" / "toy_train.py"
TOY_ARGS = ["--epochs", "2", "--dropout", "0", "--augment_noise", "0", "--norm", "none", "--n_train", "24",
            "--n_val", "7", "--eval_batch_size", "3", "--checkpoint_every_steps", "2", "--lr_interval", "step",
            "--warmup_steps", "2", "--ema"]


# ----------------------------------------------------------------------------------------- samplers (unit)
def test_eval_sampler_shards_each_sample_once():
    shards = [list(dist.ShardedEvalSampler(7, rank=r, world_size=2)) for r in range(2)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]
    assert [len(dist.ShardedEvalSampler(7, rank=r, world_size=3)) for r in range(3)] == [3, 2, 2]
    assert sorted(sum((list(dist.ShardedEvalSampler(10, rank=r, world_size=4)) for r in range(4)), [])) == list(range(10))


def test_train_sampler_seeded_sharded_resumable():
    full = list(dist.TrainSampler(10, shuffle=True, seed=3, rank=0, world_size=1))
    assert sorted(full) == list(range(10)) and full != list(range(10))
    assert full == list(dist.TrainSampler(10, shuffle=True, seed=3, rank=0, world_size=1))  # reproducible
    s = dist.TrainSampler(10, shuffle=True, seed=3, rank=0, world_size=1)
    s.set_epoch(1)
    assert list(s) != full  # a new order each epoch
    # 2 ranks: the union of rank r's r-th slots is the single-process order (global batch equivalence)
    r0 = list(dist.TrainSampler(10, True, 3, rank=0, world_size=2))
    r1 = list(dist.TrainSampler(10, True, 3, rank=1, world_size=2))
    assert [x for pair in zip(r0, r1) for x in pair] == full
    # no drop_last: padding wraps around so every rank has the same count
    a = [list(dist.TrainSampler(7, False, 0, rank=r, world_size=2)) for r in range(2)]
    assert a == [[0, 2, 4, 6], [1, 3, 5, 0]]
    b = [list(dist.TrainSampler(7, False, 0, rank=r, world_size=2, drop_last=True)) for r in range(2)]
    assert b == [[0, 2, 4], [1, 3, 5]]
    # mid-epoch resume skips exactly the consumed indices
    s.set_epoch(1, start_index=4)
    s_full = dist.TrainSampler(10, True, 3, rank=0, world_size=1)
    s_full.set_epoch(1)
    assert list(s) == list(s_full)[4:] and len(s) == 6


def test_single_process_info_and_helpers():
    info = dist.init_distributed()
    assert (info.rank, info.world_size, info.distributed) == (0, 1, False)
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(dist.all_reduce_sum(t), torch.tensor([1.0, 2.0]))
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.is_main_process() and dist.get_world_size() == 1
    assert dist.seed_everything(5, rank=2) == 7


# ----------------------------------------------------------------------------------------- real 2-process runs
def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(cmd, out_dir):
    p = subprocess.run(cmd + ["--output_dir", str(out_dir)], cwd=str(ROOT), env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\nSTDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}"
    return json.loads((Path(out_dir) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    return _run([sys.executable, str(TOY)] + TOY_ARGS + ["--batch_size", "8"], tmp_path_factory.mktemp("single"))


def _assert_same(multi, single):
    assert multi["world_size"] == 2 and single["world_size"] == 1
    assert len(multi["history"]) == len(single["history"]) == 2
    for m, s in zip(multi["history"], single["history"]):
        assert m.keys() == s.keys()
        # exactly-once evaluation of the 7 samples: 0+..+6 = 21, 0^2+..+6^2 = 91
        assert m["eval_count"] == s["eval_count"] == m["n"] == 7.0
        assert m["idx_sum"] == 21.0 and m["idx_sqsum"] == 91.0
        for k in s:
            assert m[k] == pytest.approx(s[k], rel=1e-5, abs=1e-6), k


def test_launch_use_env_matches_single_process(single_run, tmp_path):
    multi = _run([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", "--use_env", str(TOY)]
                 + TOY_ARGS + ["--batch_size", "4"], tmp_path / "launch")
    _assert_same(multi, single_run)
    # the collective checkpoint was written once, by rank 0, with both ranks' RNG states
    from vgcore.checkpoint import torch_load
    ck = torch_load(tmp_path / "launch" / "checkpoint.pth")
    assert (ck["epoch"], ck["step"], ck["world_size"], len(ck["rng"])) == (2, 0, 2, 2)


@pytest.mark.slow
def test_torchrun_standalone_matches_single_process(single_run, tmp_path):
    multi = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(TOY)]
                 + TOY_ARGS + ["--batch_size", "4"], tmp_path / "torchrun")
    _assert_same(multi, single_run)


@pytest.mark.slow
def test_legacy_launch_without_use_env(single_run, tmp_path):
    """The legacy launcher appends --local-rank=<n>; cli.add_dist_args accepts it."""
    multi = _run([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", str(TOY)]
                 + TOY_ARGS + ["--batch_size", "4"], tmp_path / "legacy")
    _assert_same(multi, single_run)
