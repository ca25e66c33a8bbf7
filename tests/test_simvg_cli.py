"""simvg/train.py, eval.py, predict.py end to end on tiny synthetic data (CPU, --backbone tiny).

(a) the user command ``python -m torch.distributed.launch --nproc_per_node=2 --use_env simvg/train.py --preset
    onestage --backbone tiny ...`` (gloo) trains a few steps and validates; its dataset-level validation metrics
    equal a single-process ``simvg/eval.py`` of the best checkpoint;
(b) ``--help`` of the three scripts;
(c) [slow] an interrupted run (``--stop_after_steps``) resumed with ``--resume latest.pth`` ends with bit-identical
    weights (model, optimizer, EMA) to an uninterrupted run;
(d) the gRefCOCO evaluation path: with the object score forced below / above 0.7, Pr@(F1=1), N-acc and T-acc
    take their exact closed-form values;
(e) predict.py returns a box in original pixels for both branches.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from simvg_family import common, run_eval, tiny_synthetic, train_args

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return tiny_synthetic(tmp_path_factory, "simvg_syn")


def _train_args(argv):
    return train_args("simvg", argv)


def _eval(argv) -> dict:
    return run_eval("simvg", argv)


def test_help():
    proc = subprocess.run([sys.executable, "simvg/train.py", "--help"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--load_from" in proc.stdout and "--preset" in proc.stdout
    import importlib
    for script in ("eval", "predict"):  # same entry-point pattern; in-process to save interpreter start-ups
        text = importlib.import_module(f"simvg.{script}").get_args_parser().format_help()
        assert "--load_from" in text and "--branch" in text


def test_preset_resolution_command_line_wins():
    from simvg.recipes import resolve_preset
    a = resolve_preset(_train_args(["--preset", "twostage_1", "--dataset", "refcoco", "--lr", "1e-3"]))
    assert (a.lr, a.batch_size, a.ema, a.token_weight, a.decay_steps, a.img_size) == (1e-3, 16, True, 0.0, [25], 640)
    b = resolve_preset(_train_args(["--preset", "onestage", "--dataset", "grefcoco", "--backbone", "beit3_large"]))
    assert (b.num_queries, b.epochs, b.lsj, b.batch_size, b.token_weight, b.distill_weight, b.drop_path_rate,
            b.evaluate_interval, b.start_evaluate_epoch) == (10, 200, False, 4, 1.0, 0.4, 0.0, 2, 50)
    c = resolve_preset(_train_args(["--preset", "pretrain_cocoall", "--dataset", "cocoall", "--lsj"]))
    assert (c.img_size, c.lsj, c.decay_steps) == (512, True, [21, 27])
    d = resolve_preset(_train_args(["--preset", "finetune", "--dataset", "refcoco", "--pretrain_from", "cocoall"]))
    assert d.lr == 2e-4 and resolve_preset(_train_args(["--preset", "distill", "--pretrain_from", "mixed"])).epochs == 15


def _reference_recipe(preset: str, dataset: str, backbone: str, pretrain_from: str = "cocoall") -> dict:
    """The official configs written as branching code, independently of the `RECIPES` table."""
    large = backbone == "beit3_large"
    grec = dataset == "grefcoco"
    r = dict(lr=5e-4, batch_size=32, epochs=30, warmup_epochs=3, decay_steps=[25], token_weight=2.0,
             distill_weight=1.0, ema=False, img_size=640, num_queries=10 if grec else 1, lsj=not grec,
             evaluate_interval=2 if grec else 1, start_evaluate_epoch=50 if grec else 0)
    if preset == "onestage":
        if large:
            r.update(batch_size=4, token_weight=1.0, distill_weight=0.4)
            if dataset == "referit":
                r.update(token_weight=2.0, distill_weight=1.0)
            if dataset == "refcocoggoogle":
                r.update(warmup_epochs=0)
        if grec:
            r.update(epochs=200, decay_steps=[180])
    elif preset == "twostage_1":
        r.update(token_weight=0.0, distill_weight=0.0)
        if large:
            r.update(batch_size=4, decay_steps=[21, 27])
        elif dataset in ("refcoco", "refcocoplus", "refcocog", "refcocoggoogle"):
            r.update(batch_size=16, ema=True)
        if grec:
            r.update(epochs=200, decay_steps=[180])
    elif preset == "twostage_2":
        r.update(lr=3e-4, epochs=20, decay_steps=[15])
        if large:
            r.update(lr=1e-4, batch_size=4, epochs=10, warmup_epochs=0, decay_steps=[7], token_weight=1.0,
                     distill_weight=0.4)
            if dataset == "referit":
                r.update(token_weight=2.0, distill_weight=1.0)
        if grec:
            r.update(lr=5e-4, epochs=100, decay_steps=[90])
    elif preset in ("pretrain_mixed", "pretrain_cocoall"):
        r.update(decay_steps=[21, 27], token_weight=0.0, distill_weight=0.0, lsj=False,
                 img_size=512 if preset == "pretrain_cocoall" else 640)
        if large:
            r.update(batch_size=4)
    elif preset == "finetune":
        r.update(lr=2e-4 if (pretrain_from == "cocoall" and dataset == "refcoco") else 1e-4, epochs=10,
                 decay_steps=[8], token_weight=0.0, distill_weight=0.0)
        if large:
            r.update(batch_size=4)
    elif preset == "distill":
        r.update(lr=3e-4)
        if pretrain_from == "mixed":
            r.update(epochs=15, decay_steps=[10], token_weight=2.0, distill_weight=1.0)
        else:
            r.update(epochs=20, decay_steps=[15], token_weight=1.0, distill_weight=0.4)
        if large:
            r.update(batch_size=4)
    else:
        raise ValueError(f"unknown SimVG preset {preset!r}; choose from ...")
    r.update(lr_vis_enc_mult=0.1, decay_ratio=0.1, weight_decay=0.0, grad_norm_clip=0.15, ema_factor=0.999,
             max_token=20, num_decoder_layers=3, num_tgqg_layers=2, decoder_weight=1.0,
             drop_path_rate=0.1 if backbone == "beit3_base" else 0.0)
    if backbone == "tiny":
        r.update(img_size=128)
    return r


def test_recipe_table_equals_the_official_configs():
    """`simvg.recipes.RECIPES` resolves every (preset, dataset, backbone, pretrain_from) to exactly the values of
    the configs written as code."""
    from simvg.recipes import BACKBONES, DATASETS, PRESET_NAMES, recipe
    n = 0
    for preset in PRESET_NAMES:
        for dataset in DATASETS:
            for backbone in BACKBONES:
                for pretrain_from in ("mixed", "cocoall"):
                    want = _reference_recipe(preset, dataset, backbone, pretrain_from)
                    got = recipe(preset, dataset, backbone, pretrain_from)
                    assert got == want and all(type(got[k]) is type(want[k]) for k in want), \
                        (preset, dataset, backbone, pretrain_from)
                    n += 1
    assert n == 378
    with pytest.raises(ValueError, match="preset"):
        recipe("threestage", "refcoco", "beit3_base")


def test_ddp_launch_train_then_eval_match(syn, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", "--use_env", "simvg/train.py",
           "--preset", "onestage", *common(syn, out), "--dataset", "refcoco", "--epochs", "1", "--batch_size", "4",
           "--lr_vis_enc_mult", "1.0", "--tensorboard", "0"]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "det_best.pth").exists() and (out / "latest.pth").exists()
    logged = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    val = {k[4:]: v for k, v in logged[-1].items() if k.startswith("val/")}
    assert val["n"] == 24  # every val sample exactly once over the 2 ranks
    ev = _eval(["--preset", "onestage", "--dataset", "refcoco", *common(syn, tmp_path / "ev"),
                "--load_from", str(out / "det_best.pth"), "--eval_sets", "val", "--batch_size", "5"])["val"]
    written = json.loads((tmp_path / "ev" / "eval_refcoco_val.json").read_text())
    assert written == pytest.approx(ev)
    for k in ("n", "decoder/acc@0.5", "token/acc@0.5", "score"):
        assert ev[k] == val[k], k
    for k in ("decoder/miou", "token/miou"):
        assert ev[k] == pytest.approx(val[k], abs=1e-6), k


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_stop_and_resume_is_bit_identical(syn, tmp_path):
    from simvg.train import main
    base = ["--preset", "onestage", "--dataset", "refcoco", "--epochs", "2", "--batch_size", "4",
            "--ema", "--checkpoint_every_steps", "2", "--lr_vis_enc_mult", "1.0", "--warmup_epochs", "1",
            "--decay_steps", "2"]
    main(_train_args(base + common(syn, tmp_path / "full")))
    main(_train_args(base + common(syn, tmp_path / "part") + ["--stop_after_steps", "5"]))
    mid = _weights(tmp_path / "part" / "latest.pth")
    assert (mid["epoch"], mid["step"]) == (0, 5)
    main(_train_args(base + common(syn, tmp_path / "part") + ["--resume", str(tmp_path / "part" / "latest.pth")]))
    a, b = _weights(tmp_path / "full" / "checkpoint.pth"), _weights(tmp_path / "part" / "checkpoint.pth")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    ea, eb = a["ema"]["shadow"], b["ema"]["shadow"]
    assert all(torch.equal(v, eb[k]) for k, v in ea.items())
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["max_exp_avg_sq"], sb[i]["max_exp_avg_sq"]) for i in sa)  # amsgrad state


def _forced_score_model(syn, path, bias: float):
    """A tiny 10-query model whose object score is forced to ~0 (bias < 0) or ~1 (bias > 0) for every query."""
    from simvg.recipes import build_tok, model_config_from_args, resolve_preset
    from simvg.model import build_model
    from vgcore.checkpoint import save_model
    a = resolve_preset(_train_args(["--dataset", "grefcoco", *common(syn, path.parent)]))
    model = build_model(model_config_from_args(a, vocab_size=build_tok(a).vocab_size))
    with torch.no_grad():
        for head in (model.head.class_embed_decoder, model.head.class_embed_token):
            head.weight.zero_()
            head.bias.copy_(torch.tensor([bias, -bias]))
    save_model(path, model, model.cfg.to_dict())


def test_grec_eval_closed_form(syn, tmp_path):
    from vgcore.synthetic.scenes import load_synthetic
    recs = load_synthetic(syn, "val", fmt="seqtr", grec=True)
    n, n_nt = len(recs), sum(r.is_no_target for r in recs)
    assert 0 < n_nt < n
    for bias, expect in ((-10.0, dict(n_acc=1.0, t_acc=0.0, pr=n_nt / n)),   # nothing kept: only no-target right
                         (10.0, dict(n_acc=0.0, t_acc=1.0, pr=0.0))):        # 10 boxes kept: never F1 = 1
        ck = tmp_path / f"grec_{bias}.pth"
        _forced_score_model(syn, ck, bias)
        m = _eval(["--dataset", "grefcoco", *common(syn, tmp_path / f"ev{bias}"), "--load_from", str(ck),
                   "--eval_sets", "val", "--batch_size", "8", "--batch_mean_metric"])["val"]
        assert (m["n"], m["n_no_target"]) == (n, n_nt)
        for b in ("decoder", "token"):
            assert m[f"{b}/n_acc"] == expect["n_acc"] and m[f"{b}/t_acc"] == expect["t_acc"]
            assert m[f"{b}/pr@(F1=1,IoU>=0.5)"] == pytest.approx(expect["pr"])
            assert f"{b}/batch_mean/n_acc" in m
    token_only = _eval(["--dataset", "grefcoco", *common(syn, tmp_path / "tb"), "--load_from", str(ck),
                        "--eval_sets", "val", "--branch", "token"])["val"]
    assert "decoder/n_acc" not in token_only and token_only["token/t_acc"] == 1.0


def test_predict_both_branches(syn, tmp_path):
    from simvg.predict import get_args_parser, main
    ck = tmp_path / "m.pth"
    _forced_score_model(syn, ck, 3.0)
    img = sorted((syn / "images").iterdir())[0]
    from PIL import Image
    W, H = Image.open(img).size
    for branch in ("decoder", "token"):
        r = main(get_args_parser().parse_args(["--load_from", str(ck), "--beit3_spm", str(syn / "tokenizers" / "spm.model"),
                                               "--image", str(img), "--text", "the red circle", "--branch", branch,
                                               "--out", str(tmp_path / f"{branch}.png")]))
        x1, y1, x2, y2 = r["box_xyxy"]
        assert 0 <= x1 <= x2 <= W and 0 <= y1 <= y2 <= H
        assert r["score"] == pytest.approx(torch.tensor([3.0, -3.0]).softmax(0)[0].item(), abs=1e-4)
        assert (tmp_path / f"{branch}.png").stat().st_size > 0


def test_postprocess_maps_gt_boxes_back_exactly(syn):
    """Feeding the (transformed) ground truth as the prediction scores IoU ~1 on every sample (input-frame ->
    original-pixel mapping of `branch_predictions`), and the metric accumulator reports Acc@0.5 = 1."""
    from simvg import method
    from simvg.evaluation import make_accumulators, make_postprocess
    from simvg.recipes import build_tok, resolve_preset
    from vgcore.data.build import build_grounding_loader
    from vgcore.data.transforms import build_transforms
    a = resolve_preset(_train_args(["--dataset", "refcoco", *common(syn, syn / "unused")]))
    loader = build_grounding_loader(method.records(a, "val", False), build_transforms("simvg", train=False, imsize=a.img_size),
                                    build_tok(a), batch_size=7, train=False)
    acc = make_accumulators(False)
    for batch in loader:
        B = len(batch)
        logits = torch.tensor([5.0, -5.0]).expand(B, 1, 2)
        out = {"decoder_logits": logits[None], "decoder_boxes": batch.boxes[None, :, None], "token_logits": logits,
               "token_boxes": batch.boxes[:, None].clamp(0, 1)}
        acc.update(**make_postprocess(a.img_size)(out, batch))
    m = acc.all_reduce().compute()
    assert m["n"] == 24 and m["decoder/acc@0.5"] == 1.0 and m["token/acc@0.5"] == 1.0
    assert m["decoder/miou"] > 0.97  # GT is clipped to [0, W-1] x [0, H-1] (official) before the transform
