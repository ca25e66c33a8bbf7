"""scripts/alvg/*.sh in dry-run mode: every printed alvg/train.py / eval.py command parses with the real parser,
its hyperparameters equal the Python recipe table for its (preset, dataset, backbone), the official global
batch is kept on 1, 4 and 8 GPUs, and scripts/train_and_eval_full_sup.sh runs the ALVG recipes."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash not available")
SCRIPTS = sorted(p.name for p in (REPO / "scripts" / "alvg").glob("*.sh") if not p.name.startswith("_"))
BATCH = re.compile(r"^# batch: (\d+) processes x per-GPU (\d+) x accumulation (\d+) = global (\d+) "
                   r"\(official: (\d+) GPUs x (\d+)\)")


def _dry(script: str, *args, **env) -> str:
    e = dict(os.environ, DRY_RUN="1", OUT_ROOT="./outputs", **env)
    e.pop("RESUME", None)
    p = subprocess.run([BASH, str(REPO / "scripts" / script), *args], cwd=REPO, env=e, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _launches(out: str):
    for line in out.splitlines():
        if line.startswith("+ ") and "--use_env" in line:
            argv = shlex.split(line[2:])
            i = argv.index("--use_env")
            yield argv[i + 1], argv[i + 2:]


@pytest.mark.parametrize("script", SCRIPTS)
def test_commands_parse_and_follow_the_recipe_table(script):
    from alvg import eval as alvg_eval, train as alvg_train
    from alvg.recipes import recipe, resolve_preset
    parsers = {"alvg/train.py": alvg_train.get_args_parser(), "alvg/eval.py": alvg_eval.get_args_parser()}
    seen = 0
    for compat in ("0", "1"):
        for target, argv in _launches(_dry(f"alvg/{script}", ALVG_COMPAT=compat, NPROC="2")):
            args = parsers[target].parse_args(argv)
            seen += 1
            if target != "alvg/train.py" or args.backbone == "tiny":
                continue
            given = {k: v for k, v in vars(args).items() if v is not None}
            want = recipe(args.preset, args.dataset, args.backbone)
            for k, v in want.items():
                if k in given and k != "batch_size":  # the batch is checked against the GPUs below
                    assert given[k] == v, (script, args.preset, args.dataset, args.backbone, k, given[k], v)
            assert resolve_preset(args).official_compat == (compat == "1")
    assert seen


@pytest.mark.parametrize("ngpu", ["1", "4", "8"])
def test_official_global_batch_on_any_gpu_count(ngpu):
    from alvg.recipes import OFFICIAL_GPUS, recipe
    for script in ("train_single_base.sh", "train_single_large.sh", "train_pretrain_finetune_large.sh"):
        out = _dry(f"alvg/{script}", *(["pretrain_mixed", "pretrain_cocoall", "finetune"]
                                       if script.startswith("train_pretrain") else []), NGPU=ngpu)
        lines = out.splitlines()
        for i, line in enumerate(lines):
            m = BATCH.match(line)
            if not m:
                continue
            procs, bs, accum, glob, gpus, per = map(int, m.groups())
            target, argv = next(_launches(lines[i + 1]))
            f = dict(zip(argv[::1], argv[1:]))
            preset, ds, bb = f["--preset"], f["--dataset"], f["--backbone"]
            official = OFFICIAL_GPUS[preset] if isinstance(OFFICIAL_GPUS[preset], int) else OFFICIAL_GPUS[preset][bb]
            assert (gpus, per) == (official, recipe(preset, ds, bb)["batch_size"]), (script, preset, ds, bb)
            assert procs * bs * accum == glob == gpus * per and procs <= int(ngpu)
            assert int(f["--batch_size"]) == bs and int(f.get("--accum_steps", 1)) == accum


def test_full_sup_driver_runs_alvg():
    out = _dry("train_and_eval_full_sup.sh", "alvg")
    targets = [t for t, _ in _launches(out)]
    assert targets.count("alvg/train.py") == 13 and "alvg/eval.py" in targets
    assert not any(t.startswith(("simvg/", "hivg/")) for t in targets)


def test_tiny_variants():
    out = _dry("alvg/train_tiny_synthetic.sh", MASKS="off", ATTN="0")
    train = [a for t, a in _launches(out) if t == "alvg/train.py"]
    assert train and "--no_attn_loss" in train[0] and train[0][train[0].index("--masks") + 1] == "off"
    assert "alvg_tiny/refcoco_boxonly_noattn" in " ".join(train[0])
