"""scripts/vglaw: the README rows' recipes as printed by the dry runs (learning rates of each stage, the stage
hand-over, splitBy and evaluation splits, the released scripts' shared flags, the compat switch), and the tiny
preset's command chain.  The generic checks (syntax, launcher, global batch on any GPU count, real parsers) are
in tests/test_scripts.py and tests/test_script_batches.py."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash not available")


def _dry(script, *args, **env):
    e = dict(os.environ, DRY_RUN="1", OUT_ROOT="./outputs")
    for k in ("NGPU", "NNODES", "RESUME", "VGLAW_BS", "VGLAW_COMPAT", "STAGES"):
        e.pop(k, None)
    e.update({k: str(v) for k, v in env.items()})
    proc = subprocess.run([BASH, str(REPO / "scripts" / script), *args], cwd=REPO, env=e, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def _target(argv):
    """(script, {flag: [values]}) of a launched or plain python command."""
    i = next((i for i, a in enumerate(argv) if a.endswith(".py")), argv.index("-m") if "-m" in argv else 0)
    flags, key = {}, None
    for tok in argv[i + 1:]:
        if tok.startswith("--"):
            key = tok[2:]
            flags[key] = []
        elif key is not None:
            flags[key].append(tok)
    return argv[i], flags


def test_multitask_rows_recipe_and_handover():
    runs = [_target(c) for c in _dry("vglaw/train_multitask.sh")]
    train = [f for s, f in runs if s == "vglaw/train.py"]
    evals = [f for s, f in runs if s == "vglaw/eval.py"]
    assert [f["dataset"][0] for f in train] == [d for d in ("refcoco", "refcoco+", "refcocog", "refclef") for _ in "12"]
    lrs = {("refcoco", "stage1"): "1e-5 1e-5 1e-4", ("refcoco", "stage2"): "1e-6 1e-6 1e-5",
           ("refcoco+", "stage2"): "1e-5 1e-5 1e-4", ("refcocog", "stage2"): "1e-6 1e-6 1e-5",
           ("refclef", "stage2"): "1e-6 1e-6 1e-5"}
    split_by = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "berkeley"}
    for f in train:
        ds, stage = f["dataset"][0], f["output_dir"][0].rsplit("/", 1)[1]
        assert f["output_dir"] == [f"./outputs/vglaw/{ds}/{stage}"] and f["splitBy"] == [split_by[ds]]
        got = " ".join(f["lr_lang"] + f["lr_visual"] + f["lr_base"])
        assert got == lrs.get((ds, stage), "1e-5 1e-5 1e-4"), (ds, stage)
        for flag, value in (("batch_sum", "256"), ("law_type", "svd"), ("img_size", "448"), ("lr_scheduler", "step"),
                            ("max_epochs", "20"), ("drop_epochs", "10"), ("vit_model", "vitdet_b_mrcnn")):
            assert f[flag] == [value], flag
        assert f["translate"] == [] and f["use_mask"] == []
        if stage == "stage1":
            assert f["vit_model_path"][0].endswith("model_final_61ccd1.pkl") and "pretrained_path" not in f
        else:  # the continuation starts from stage 1's best model
            assert f["pretrained_path"] == [f"./outputs/vglaw/{ds}/stage1/best_checkpoint.pth"]
            assert "vit_model_path" not in f
    assert {f["dataset"][0]: f["eval_sets"] for f in evals} == {
        "refcoco": ["val", "testA", "testB"], "refcoco+": ["val", "testA", "testB"], "refcocog": ["val", "test"],
        "refclef": ["test"]}
    for f in evals:
        assert f["pretrained_path"] == [f"./outputs/vglaw/{f['dataset'][0]}/stage2/best_checkpoint.pth"]
        assert "canvas_metrics" in f


def test_stages_compat_and_released():
    only2 = [_target(c) for c in _dry("vglaw/train_multitask.sh", "refcocog", STAGES="stage2")]
    assert len(only2) == 1 and only2[0][1]["output_dir"] == ["./outputs/vglaw/refcocog/stage2"]
    compat = [_target(c) for c in _dry("vglaw/train_multitask.sh", "refclef", VGLAW_COMPAT=1)]
    for script, f in compat:
        assert "official_compat" in f
        assert ("compat_constant_lr" in f) == (script == "vglaw/train.py")
    rel = [_target(c) for c in _dry("vglaw/eval_released.sh")]
    assert [f["pretrained_path"][0].rsplit("/", 1)[1] for _, f in rel] == [
        f"law_fpt_vit_{d}_shareSD_mt.ckpt" for d in ("refcoco", "refcoco+", "refcocog", "refclef")]
    bad = subprocess.run([BASH, str(REPO / "scripts/vglaw/train_multitask.sh"), "--dry-run", "refcocoplus"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "refcocoplus" in bad.stderr


def test_tiny_synthetic_chain():
    """Data -> tag pretraining -> training from the pretrained towers -> eval of the best model -> baselines."""
    cmds = [_target(c) for c in _dry("vglaw/train_tiny_synthetic.sh", OUT="o", LAW="la")]
    scripts = [s for s, _ in cmds]
    assert scripts == ["-m", "vglaw/pretrain_tiny.py", "vglaw/train.py", "vglaw/eval.py", "scripts/baselines.py"]
    assert cmds[0][1]["formats"] == ["refer"]  # the refer layout carries the polygon masks
    pre, train, ev = cmds[1][1], cmds[2][1], cmds[3][1]
    assert pre["out_dir"] == ["o/pretrained"] and pre["bert_model"] == ["o/data/tokenizers"]
    assert train["vit_model_path"] == ["o/pretrained/vit_tiny.pth"] and train["bert_model"] == ["o/pretrained/bert"]
    assert train["law_type"] == ["la"] and train["preset"] == ["tiny"] and train["batch_sum"] == ["16"]
    assert ev["pretrained_path"] == ["o/run/best_checkpoint.pth"] and ev["eval_sets"] == ["val"]


def test_bench_loop_level_prints_one_json_line_per_figure():
    """scripts/bench_vglaw.py --level qkv --json at a toy size: every path of every mode, with the documented
    fields."""
    import json
    import sys
    proc = subprocess.run([sys.executable, "scripts/bench_vglaw.py", "--level", "qkv", "--laws", "svd,od2", "--batch", "2",
                           "--img_size", "64", "--rounds", "1", "--threads", "1", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {(r["law"], r["mode"], r["path"]) for r in rows} == {
        (law, mode, path) for law in ("svd", "od2") for mode in ("train", "infer")
        for path in ("batched", "loop", "loop_weight", "plain")}
    for r in rows:
        assert r["method"] == "vglaw" and r["level"] == "qkv" and r["ms_per_step"] > 0 and r["images_per_s"] > 0
        assert r["peak_mb"] == r["peak_mb"] and list(r)[:6] == ["method", "mode", "path", "ms_per_step",
                                                                "images_per_s", "peak_mb"]


def test_bench_tiny_paths_and_model_loop_json_lines():
    """--level all with the tiny preset: the vgcore.bench figures (fp32 and grad_ckpt training, inference, the
    data loader) then the model-level batched / loop figures."""
    import json
    import sys
    proc = subprocess.run([sys.executable, "scripts/bench_vglaw.py", "--preset", "tiny", "--img_size", "64", "--batch",
                           "2", "--quick", "--threads", "1", "--paths", "fp32", "grad_ckpt", "--loader_batches", "1",
                           "--level", "all", "--laws", "svd", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    paths = [(r["mode"], r["path"]) for r in rows if "level" not in r]
    assert paths == [("train", "fp32"), ("train", "grad_ckpt"), ("infer", "fp32"), ("data", "1 worker")]
    model = {(r["mode"], r["path"]) for r in rows if r.get("level") == "model"}
    assert model == {(m, p) for m in ("train", "infer") for p in ("batched", "loop")}
    assert all(r["method"] == "vglaw" and r["images_per_s"] > 0 for r in rows)
