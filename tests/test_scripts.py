"""Tests of the reproduction shell scripts under scripts/.

- every .sh passes `bash -n`;
- every method script (scripts/<method>/*.sh, files starting with "_" are sourced libraries) and
  scripts/train_and_eval_full_sup.sh run in dry-run mode, exit 0, create nothing, and print launch commands
  `python -m torch.distributed.launch --nproc_per_node=N ... --use_env <method>/{train,eval}.py ...`;
- the printed commands carry the official hyperparameters (spot checks against the specs) and a
  one-checkpoint stage hand-over;
- if <method>/train.py / eval.py exist and expose get_args_parser(), every printed command parses with
  the real parser (skipped otherwise).
"""

from __future__ import annotations

import functools
import importlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
METHODS = ("hivg", "simvg", "resvg", "vglaw", "alvg")
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="bash not available")


def _all_sh() -> list[Path]:
    return sorted(SCRIPTS.rglob("*.sh"))


def _runnable() -> list[Path]:
    """Scripts with a dry-run mode: per-method scripts (not _libraries) and the full-sup driver."""
    out = [p for m in METHODS for p in sorted((SCRIPTS / m).glob("*.sh")) if not p.name.startswith("_")]
    full = SCRIPTS / "train_and_eval_full_sup.sh"
    if full.exists():
        out.append(full)
    return out


def _ids(paths):
    return [str(p.relative_to(SCRIPTS)) for p in paths]


@functools.lru_cache(maxsize=None)
def _dry_run(script: str, args: tuple[str, ...] = (), out_root: str = "", extra_env: tuple = ()) -> str:
    env = dict(os.environ, DRY_RUN="1", OUT_ROOT=out_root or "./outputs")
    env.update(dict(extra_env))
    env.pop("RESUME", None)
    proc = subprocess.run([BASH, str(SCRIPTS / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{script} {args} dry run failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _launch_target(argv: list[str]) -> tuple[str, list[str]] | None:
    """(script path, its argv) for a torch.distributed.launch / torch.distributed.run command, else None."""
    if "torch.distributed.launch" in argv:
        i = argv.index("--use_env")
        return argv[i + 1], argv[i + 2:]
    if "torch.distributed.run" in argv:
        i = next(j for j, a in enumerate(argv) if a.startswith("--master_port="))
        return argv[i + 1], argv[i + 2:]
    return None


def _flags(argv: list[str]) -> dict[str, list[str]]:
    """'--name v1 v2 --flag' -> {'name': ['v1','v2'], 'flag': []} (last occurrence wins)."""
    out: dict[str, list[str]] = {}
    key = None
    for tok in argv:
        if tok.startswith("--"):
            key = tok[2:]
            out[key] = []
        elif key is not None:
            out[key].append(tok)
    return out


def _launches(script: str, *args: str, **env) -> list[tuple[str, dict]]:
    out = _dry_run(script, tuple(args), extra_env=tuple(sorted(env.items())))
    res = []
    for cmd in _commands(out):
        t = _launch_target(cmd)
        if t:
            res.append((t[0], _flags(t[1])))
    return res


# ----------------------------------------------------------------------------------------------- syntax

@pytest.mark.parametrize("path", _all_sh(), ids=_ids(_all_sh()))
def test_bash_syntax(path):
    proc = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------- dry run

@pytest.mark.parametrize("path", _runnable(), ids=_ids(_runnable()))
def test_dry_run_prints_launch_commands(path, tmp_path):
    rel = str(path.relative_to(SCRIPTS))
    # the CPU quickstart trains in one plain process by default (test_tiny_synthetic_default_is_one_process)
    env = (("NPROC", "2"),) if rel in TINY_ONE_PROCESS else ()
    stdout = _dry_run(rel, out_root=str(tmp_path / "out"), extra_env=env)
    cmds = _commands(stdout)
    assert cmds, f"{rel}: dry run printed no command"
    targets = [t for t in map(_launch_target, cmds) if t]
    assert targets, f"{rel}: no `torch.distributed.launch ... --use_env` command printed"
    for cmd in cmds:
        if "torch.distributed.launch" in cmd:
            assert "--use_env" in cmd and any(c.startswith("--nproc_per_node=") for c in cmd), cmd
    if rel == "train_and_eval_full_sup.sh":
        expected = {f"{m}/train.py" for m in ("hivg", "simvg", "vglaw", "resvg", "alvg")}
    else:
        method = rel.split("/")[0]
        expected = {f"{method}/eval.py" if path.name.startswith("eval") else f"{method}/train.py"}
    assert expected <= {t[0] for t in targets}, f"{rel}: expected launches of {expected}"
    assert not (tmp_path / "out").exists(), f"{rel}: the dry run created files"


TINY_ONE_PROCESS = ("simvg/train_tiny_synthetic.sh", "vglaw/train_tiny_synthetic.sh")


@pytest.mark.parametrize("rel", TINY_ONE_PROCESS)
def test_tiny_synthetic_default_is_one_process(rel, tmp_path):
    """On the CPU one process on every core with in-process loading is the fastest layout (simvg/README.md,
    "Tiny preset"): the default prints plain `python <method>/train.py` with the whole batch of 16 and no loader
    worker; NPROC=2 splits the same batch over two launched processes."""
    method = rel.split("/")[0]
    for nproc, batch in (("", "16"), ("2", "8")):
        env = (("NPROC", nproc),) if nproc else ()
        cmds = _commands(_dry_run(rel, out_root=str(tmp_path / "out"), extra_env=env))
        train = [c for c in cmds if f"{method}/train.py" in c]
        assert len(train) == 1, cmds
        cmd = train[0]
        launched = "torch.distributed.launch" in cmd
        assert launched == bool(nproc), cmd
        flags = _flags(cmd[cmd.index(f"{method}/train.py") + 1:])
        assert flags["batch_size"] == [batch] and flags["num_workers"] == ["0"], flags
        if not launched:
            assert cmd[:2] == ["python", f"{method}/train.py"], cmd
    assert not (tmp_path / "out").exists()


def test_dry_run_flag_equals_env():
    env_out = _dry_run("hivg/train_finetune_base.sh", ("flickr",))
    proc = subprocess.run([BASH, str(SCRIPTS / "hivg/train_finetune_base.sh"), "--dry-run", "flickr"],
                          cwd=REPO, env={k: v for k, v in os.environ.items() if k != "DRY_RUN"} | {
                              "OUT_ROOT": "./outputs"}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert _commands(proc.stdout) == _commands(env_out)


def test_unknown_dataset_is_rejected():
    proc = subprocess.run([BASH, str(SCRIPTS / "hivg/train_finetune_base.sh"), "--dry-run", "refcoco"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "refcoco" in proc.stderr


def test_ngpu_env_is_used():
    out = _dry_run("simvg/train_onestage_base.sh", ("refcoco",), extra_env=(("NGPU", "4"),))
    launches = [c for c in _commands(out) if "torch.distributed.launch" in c]
    assert launches and all("--nproc_per_node=4" in c for c in launches)
    # the official GPU counts are the defaults: HiVG 7, SimVG single-dataset 1
    assert "--nproc_per_node=7" in _dry_run("hivg/train_finetune_base.sh", ("unc",))
    assert "--nproc_per_node=1" in _dry_run("simvg/train_onestage_base.sh", ("refcoco",))


# ------------------------------------------------------------------------------ official hyperparameters

def _train(launches, **match):
    """The train.py launches whose flags contain all of match (flag -> value)."""
    out = []
    for script, f in launches:
        if not script.endswith("train.py"):
            continue
        if all(f.get(k) == ([] if v is True else [str(v)]) for k, v in match.items()):
            out.append(f)
    return out


def test_hivg_base_recipe_and_handover():
    runs = _launches("hivg/train_finetune_base.sh", "unc", "flickr")
    for ds, wep, sep, s3bs in (("unc", "60", "20", "40"), ("flickr", "30", "5", "60")):
        seq = [f for f in _train(runs, dataset=ds)]
        assert len(seq) == 4
        warm, s1, s2, s3 = seq
        assert (warm["epochs"], warm["batch_size"], warm["lr"]) == ([wep], ["80"], ["2.5e-4"])
        assert warm["clip_model"][0].endswith("clip_b_ml_cascade_maskrcnn_model_224.pth")
        assert "hi_lora_stage" not in warm
        for k, (f, bs, lr) in enumerate(((s1, "60", "1e-4"), (s2, "60", "5e-5"), (s3, s3bs, "2.5e-5")), 1):
            assert (f["hi_lora_stage"], f["epochs"], f["batch_size"], f["lr"]) == ([str(k)], [sep], [bs], [lr])
            prev = (warm, s1, s2)[k - 1]
            assert f["hi_lora_retrain"] == [prev["output_dir"][0] + "/best_checkpoint.pth"]
            assert "hi_lora_clip" not in f
        for f in seq:
            for flag in ("aug_crop", "aug_scale", "aug_translate", "normalize_before", "enable_adaptive_weights",
                         "use_contrastive_loss", "use_rtcc_constrain_loss", "use_mask_loss"):
                assert f[flag] == [], flag
            assert f["lr_scheduler"] == ["cosine"] and f["model"] == ["ViT-B/16"]
            assert f["imsize"] == ["224"] and f["max_query_len"] == ["77"]
    evals = [f for s, f in runs if s == "hivg/eval.py"]
    assert sorted(f["eval_set"][0] for f in evals if f["dataset"] == ["unc"]) == ["testA", "testB", "val"]
    assert all(f["hi_lora_stage"] == ["3"] and f["batch_size"] == ["60"] for f in evals)


def test_hivg_large_recipe():
    runs = _launches("hivg/train_finetune_large.sh", "referit", "flickr")
    ref = _train(runs, dataset="referit")
    assert [f["epochs"][0] for f in ref] == ["5", "60", "10", "10", "10"]
    fl = _train(runs, dataset="flickr")
    assert [f["epochs"][0] for f in fl] == ["10", "30", "5", "5", "5"]
    warm1, warm2 = ref[0], ref[1]
    assert "warmup" in warm1 and "enable_adaptive_weights" not in warm1
    assert warm2["retrain"] == [warm1["output_dir"][0] + "/best_checkpoint.pth"]
    assert all(f["batch_size"] == ["32"] and f["vl_hidden_dim"] == ["768"] for f in ref)
    assert [f["lr"][0] for f in ref] == ["2.5e-4", "2.5e-4", "1e-4", "5e-5", "2.5e-5"]


def test_hivg_mixup_recipe_and_eval_splits():
    runs = _launches("hivg/train_mixup_base.sh")
    tr = _train(runs)
    assert [f["lr"][0] for f in tr] == ["2.5e-4", "1e-4", "5e-5", "2e-5"]
    assert [f["epochs"][0] for f in tr] == ["60", "20", "20", "20"]
    assert all("mixup_pretrain" in f and f["dataset"] == ["mixup"] and f["batch_size"] == ["64"] for f in tr)
    assert all("enable_adaptive_weights" not in f for f in tr)
    evals = [(f["dataset"][0], f["eval_set"][0]) for s, f in runs
             if s == "hivg/eval.py" and "save_hilora_clip" not in f]
    assert len(evals) == 12 and len(set(evals)) == 12
    # the hand-over evaluations of warm-up, stage 1 and stage 2 (official: mixup val and test, --save_hilora_clip)
    writers = [(f["dataset"][0], f["eval_set"][0]) for s, f in runs if s == "hivg/eval.py" and "save_hilora_clip" in f]
    assert writers == [("mixup", "val"), ("mixup", "test")] * 3
    large = _train(_launches("hivg/train_mixup_large.sh"))
    assert [f["epochs"][0] for f in large] == ["10", "30", "10", "10", "10"]


def test_hivg_compat_switch():
    on = _launches("hivg/train_finetune_base.sh", "unc", HIVG_COMPAT="1")
    off = _launches("hivg/train_finetune_base.sh", "unc", HIVG_COMPAT="0")
    assert all("bridge_batch_mixing" in f for _, f in on)
    assert not any("bridge_batch_mixing" in f for _, f in off)
    rel = _launches("hivg/eval_released.sh", "finetuning_base")
    assert rel and all("bridge_batch_mixing" in f for _, f in rel)


def test_simvg_recipes():
    tw = _launches("simvg/train_twostage_base.sh", "refcoco", "referit")
    s1 = _train(tw, preset="twostage_1", dataset="refcoco")[0]
    assert (s1["batch_size"], s1["lr"], s1["epochs"], s1["decay_steps"]) == (["16"], ["5e-4"], ["30"], ["25"])
    assert "ema" in s1 and s1["token_weight"] == ["0"]
    s1r = _train(tw, preset="twostage_1", dataset="referit")[0]
    assert s1r["batch_size"] == ["32"] and "ema" not in s1r
    s2 = _train(tw, preset="twostage_2", dataset="refcoco")[0]
    assert s2["load_from"] == [s1["output_dir"][0] + "/det_best.pth"]
    assert (s2["lr"], s2["epochs"], s2["decay_steps"], s2["token_weight"], s2["distill_weight"]) == (
        ["3e-4"], ["20"], ["15"], ["2.0"], ["1.0"])
    ev = [f for s, f in tw if s == "simvg/eval.py" and f["preset"] == ["twostage_1"] and f["dataset"] == ["refcoco"]]
    assert ev[0]["eval_sets"] == ["val", "testA", "testB"] and "use_ema" in ev[0]

    lg = _launches("simvg/train_single_large.sh", "refcocoggoogle", "referit", SIMVG_RECIPE="onestage")
    g = _train(lg, dataset="refcocoggoogle")[0]
    assert (g["batch_size"], g["warmup_epochs"], g["token_weight"], g["distill_weight"]) == (
        ["4"], ["0"], ["1.0"], ["0.4"])
    assert g["drop_path_rate"] == ["0.0"] and g["backbone"] == ["beit3_large"]
    r = _train(lg, dataset="referit")[0]
    assert (r["warmup_epochs"], r["token_weight"], r["distill_weight"]) == (["3"], ["2.0"], ["1.0"])
    l2 = _train(_launches("simvg/train_single_large.sh", "refcoco"), preset="twostage_2")[0]
    assert (l2["lr"], l2["epochs"], l2["warmup_epochs"], l2["decay_steps"]) == (["1e-4"], ["10"], ["0"], ["7"])

    gr = _train(_launches("simvg/train_onestage_base.sh", "grefcoco"))[0]
    assert (gr["num_queries"], gr["epochs"], gr["decay_steps"], gr["start_evaluate_epoch"]) == (
        ["10"], ["200"], ["180"], ["50"]) and "no_lsj" in gr

    pre = _launches("simvg/train_pretrain_base.sh", "mixed", "cocoall")
    mixed, coco = _train(pre, preset="pretrain_mixed")[0], _train(pre, preset="pretrain_cocoall")[0]
    assert mixed["img_size"] == ["640"] and coco["img_size"] == ["512"]
    assert mixed["decay_steps"] == ["21", "27"] and "no_lsj" in mixed
    out = _dry_run("simvg/train_pretrain_base.sh", ("cocoall",))
    assert "--nproc_per_node=8" in out

    ft = _train(_launches("simvg/train_finetune_base.sh", "cocoall"), preset="finetune")
    assert {f["dataset"][0]: f["lr"][0] for f in ft} == {"refcoco": "2e-4", "refcocoplus": "1e-4", "refcocog": "1e-4"}
    assert all(f["finetune_from"][0].endswith("pretrain_cocoall_base/det_best.pth") for f in ft)
    dm = _train(_launches("simvg/train_distill_base.sh", "mixed", "refcoco"), preset="distill")[0]
    assert (dm["epochs"], dm["decay_steps"], dm["token_weight"], dm["distill_weight"]) == (
        ["15"], ["10"], ["2.0"], ["1.0"])


def test_resvg_recipe():
    """README row: every config trains on new_train from the dataset's DETR-R50 file (unc for unc / unc+, gref for
    gref / gref_umd, referit for referit / flickr) and bert-base-uncased, validating on val, with the flag defaults
    (the official config values); evaluation on the README's splits with the README's --batch_size_test 32."""
    runs = _launches("resvg/train_r50.sh")
    detr = {"unc": "unc", "unc+": "unc", "gref": "gref", "gref_umd": "gref", "referit": "referit", "flickr": "referit"}
    train = _train(runs)
    assert [f["dataset"][0] for f in train] == list(detr)
    for f in train:
        ds = f["dataset"][0]
        assert f["load_weights_path"] == [f"./checkpoints/detr/detr-r50-{detr[ds]}.pth"]
        assert f["bert_model"] == ["./checkpoints/bert-base-uncased"] and f["train_split"] == ["new_train"]
        assert f["val_split"] == ["val"] and f["batch_size"] == ["16"] and f["output_dir"] == [f"./outputs/resvg/r50/{ds}"]
        for flag in ("lr", "epochs", "lr_drop", "freeze_epochs", "extra_train_splits", "no_prior"):
            assert flag not in f, flag  # the official values are the defaults
    evals = {f["dataset"][0]: f for s, f in runs if s == "resvg/eval.py"}
    assert {ds: f["eval_sets"] for ds, f in evals.items()} == {
        "unc": ["val", "testA", "testB"], "unc+": ["val", "testA", "testB"], "gref": ["val"],
        "gref_umd": ["val", "test"], "referit": ["test"], "flickr": ["test"]}
    for ds, f in evals.items():
        assert f["batch_size"] == ["32"] and f["checkpoint"] == [f"./outputs/resvg/r50/{ds}/best_checkpoint.pth"]
    assert "--nproc_per_node=4" in _dry_run("resvg/train_r50.sh", ("gref",))
    # the augmentation switch and the evaluated checkpoint
    (f,) = _train(_launches("resvg/train_r50.sh", "unc", RESVG_TRAIN_SPLIT="train", RESVG_EXTRA_SPLITS="new_train",
                            EVAL_CKPT="checkpoint.pth", RESVG_PRIOR_ROOT="priors"))
    assert f["train_split"] == ["train"] and f["extra_train_splits"] == ["new_train"]
    assert f["prior_root"] == ["priors/unc"]
    ev = [f for s, f in _launches("resvg/train_r50.sh", "unc", EVAL_CKPT="checkpoint.pth") if s == "resvg/eval.py"]
    assert ev[0]["checkpoint"] == ["./outputs/resvg/r50/unc/checkpoint.pth"]
    official = [f for s, f in _launches("resvg/eval_official.sh", "unc") if s == "resvg/eval.py"]
    assert official[0]["checkpoint"] == ["./outputs/resvg/official/unc/converted.pth"]


def test_resvg_tiny_stages_augmentation_and_parsers(tmp_path):
    """The tiny script's commands parse with the real parsers; training is one launched process per core with the
    global batch 16 (NPROC=1: plain python, batch 16); STAGES picks phases; AUG_SPLIT trains on train + the
    augmented list into another run folder; evaluation reports the per-type breakdown."""
    import resvg.eval as ev
    import resvg.pretrain_tiny as pt
    import resvg.train as tr

    parsers = {"resvg/train.py": tr.get_args_parser(), "resvg/eval.py": ev.get_args_parser(),
               "resvg/pretrain_tiny.py": pt.get_args_parser()}
    out = str(tmp_path / "out")

    def commands(**env):
        res = []
        for c in _commands(_dry_run("resvg/train_tiny_synthetic.sh", out_root=out,
                                    extra_env=tuple(sorted(dict(OUT=out, **env).items())))):
            t = _launch_target(c)
            res.append((t[0], t[1], c) if t else ((c[2], c[3:], c) if c[1] == "-m" else (c[1], c[2:], c)))
        return res

    base = commands()
    assert [t for t, _, _ in base] == ["vgcore.synthetic", "resvg/pretrain_tiny.py", "resvg/train.py",
                                       "resvg/eval.py", "scripts/baselines.py"]
    train_cmd = base[2][2]
    assert "--nproc_per_node=2" in train_cmd and _flags(base[2][1])["batch_size"] == ["8"]
    one = commands(NPROC="1")[2]
    assert one[2][:2] == ["python", "resvg/train.py"] and _flags(one[1])["batch_size"] == ["16"]
    aug = commands(STAGES="train eval", AUG_SPLIT="new_train", RUN="unc_aug")
    assert [t for t, _, _ in aug] == ["resvg/train.py", "resvg/eval.py", "scripts/baselines.py"]
    for target, argv, _ in base + aug:
        if target in parsers:
            args = parsers[target].parse_args(argv)
            if target != "resvg/pretrain_tiny.py":
                assert args.breakdown == "expr_type" and args.prior_missing == "zeros"
    train = parsers["resvg/train.py"].parse_args(aug[0][1])
    assert (train.train_split, train.extra_train_splits) == ("train", ["new_train"])
    assert train.output_dir == f"{out}/unc_aug" and train.load_weights_path == f"{out}/pretrained/detr_tiny.pth"
    # the augmentation's comparison: a train split without position expressions, scene pastes with the relations
    # the tiny vocabulary spells, and both arms fine-tuned from the same checkpoint (FROM)
    from resvg import relation_aug
    from vgcore.synthetic import scenes

    (data,) = commands(STAGES="data", TRAIN_TYPES="attr,rel")
    assert data[0] == "vgcore.synthetic" and scenes.get_args_parser().parse_args(data[1]).train_types == "attr,rel"
    (aug_cmd,) = commands(STAGES="aug", AUG_SPLIT="new_train")
    a = relation_aug.get_args_parser().parse_args(aug_cmd[1])
    assert (a.background, a.relations, a.out_split, a.no_base) == ("scene", "left,right,top,bottom,second,third",
                                                                    "new_train", True)
    start = f"{out}/unc/best_checkpoint.pth"
    ft = commands(FROM=start, STAGES="control train eval", AUG_SPLIT="new_train", RUN="ft_control")
    assert [t for t, _, _ in ft] == ["resvg.relation_aug", "resvg/train.py", "resvg/eval.py", "scripts/baselines.py"]
    assert relation_aug.get_args_parser().parse_args(ft[0][1]).control_like == "new_train"
    t = parsers["resvg/train.py"].parse_args(ft[1][1])
    assert (t.load_weights_path, t.bert_model, t.epochs, t.freeze_epochs, t.lr, t.lr_bert) == (start, "", 3, 0, 1e-4, 1e-5)
    assert t.extra_train_splits == ["new_train_control"] and t.output_dir == f"{out}/ft_control"
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- real argparse parsers

def _parser_or_skip(method: str, kind: str):
    if not (REPO / method / f"{kind}.py").exists():
        pytest.skip(f"{method}/{kind}.py does not exist yet")
    try:
        mod = importlib.import_module(f"{method}.{kind}")
    except Exception as e:  # noqa: BLE001 - importorskip style, the reason names the error
        pytest.skip(f"cannot import {method}.{kind}: {type(e).__name__}: {e}")
    if not hasattr(mod, "get_args_parser"):
        pytest.skip(f"{method}.{kind} has no get_args_parser()")
    return mod.get_args_parser()


@pytest.mark.parametrize("method,kind", [(m, k) for m in ("hivg", "simvg", "vglaw", "resvg") for k in ("train", "eval")])
def test_commands_parse_with_real_parser(method, kind):
    parser = _parser_or_skip(method, kind)
    target = f"{method}/{kind}.py"
    seen: set[tuple[str, ...]] = set()
    for path in _runnable():
        rel = str(path.relative_to(SCRIPTS))
        if not (rel.startswith(method + "/") or rel == "train_and_eval_full_sup.sh"):
            continue
        for env in ({}, {"HIVG_COMPAT": "1", "SIMVG_COMPAT": "1", "VGLAW_COMPAT": "1"}):
            out = _dry_run(rel, extra_env=tuple(sorted(env.items())))
            for cmd in _commands(out):
                t = _launch_target(cmd)
                if not t or t[0] != target:
                    continue
                argv = tuple(t[1])
                if argv in seen:
                    continue
                seen.add(argv)
                try:
                    parser.parse_args(list(argv))
                except SystemExit:
                    pytest.fail(f"{rel}: {target} rejects the command: {shlex.join(argv)}")
    assert seen, f"no {target} command found"


def test_quickstart_launches_through_lib(tmp_path):
    """scripts/quickstart.sh runs every command with lib.sh's $PYTHON; training goes through vg_launch (QS_NPROC=2,
    the default) or plain $PYTHON (QS_NPROC=1); every HiVG command parses with the real parser."""
    launched = _launches("quickstart.sh", PYTHON="py3")
    assert [t for t, _ in launched] == ["hivg/train.py"]
    assert launched[0][1]["batch_size"] == ["16"]
    for nproc in ("2", "1"):
        cmds = _commands(_dry_run("quickstart.sh", out_root=str(tmp_path / "out"),
                                  extra_env=(("PYTHON", "py3"), ("QS_NPROC", nproc))))
        assert len(cmds) == 5 and all(c[0] == "py3" for c in cmds), cmds
        for cmd in cmds:
            t = _launch_target(cmd) or ((cmd[1], cmd[2:]) if cmd[1].startswith("hivg/") else None)
            if t and t[0] in ("hivg/train.py", "hivg/eval.py"):
                _parser_or_skip("hivg", t[0][5:-3]).parse_args(list(t[1]))
    assert not (tmp_path / "out").exists()
