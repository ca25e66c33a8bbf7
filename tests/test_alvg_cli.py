"""alvg/train.py, eval.py, predict.py end to end on tiny synthetic data (CPU, --backbone tiny).

(a) the user command ``python -m torch.distributed.launch --nproc_per_node=2 --use_env alvg/train.py --backbone
    tiny ...`` (gloo) trains and validates; its dataset-level validation metrics (REC and RES) equal a
    single-process ``alvg/eval.py`` of the best checkpoint at another batch size;
(b) ``--help`` of the three scripts, and the recipe table against the official configs written as code;
(c) [slow] a run stopped mid-epoch (``--stop_after_steps``) and resumed with ``--resume latest.pth`` ends with
    bit-identical weights and optimizer state to an uninterrupted run;
(d) the gRefCOCO path: with the object score forced below / above 0.7, Pr@(F1=1), N-acc, T-acc and the masks'
    gIoU take their closed-form values;
(e) predict.py returns a box in original pixels, a mask and an attention-map PNG;
(f) the ground truth fed back as the prediction scores Acc@0.5 = 1 and mask mIoU ~1 at original resolution;
(g) box-only training (``--masks off``) runs and reports no RES metric.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simvg_family import common, run_eval, tiny_synthetic, train_args

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return tiny_synthetic(tmp_path_factory, "alvg_syn")


def _train_args(argv):
    return train_args("alvg", argv)


def _eval(argv) -> dict:
    return run_eval("alvg", argv)


def test_help():
    proc = subprocess.run([sys.executable, "alvg/train.py", "--help"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--score_attn_loss_weight" in proc.stdout and "--official_compat" in proc.stdout
    import importlib
    for script in ("eval", "predict"):
        text = importlib.import_module(f"alvg.{script}").get_args_parser().format_help()
        assert "--load_from" in text and "--mask_thresh" in text


def _reference_recipe(preset: str, dataset: str, backbone: str) -> dict:
    """The official configs (configs/single/ViT-*/, configs/mix/ViT-large/) written as branching code."""
    large = backbone == "beit3_large"
    r = dict(lr=5e-4, batch_size=32, epochs=30, warmup_epochs=3, decay_steps=[25], img_size=640, num_queries=1,
             score_attn_loss_weight=40.0, decoder_attn_loss_weight=1.0, evaluate_interval=1, start_evaluate_epoch=0)
    if preset == "single":
        if dataset == "refcocoplus":
            r["score_attn_loss_weight"] = 16.0
        if large:
            r.update(batch_size=4, score_attn_loss_weight=32.0,
                     decay_steps=[25] if dataset == "flickr30k" else [21, 27])
        if dataset == "grefcoco":
            r.update(num_queries=10, epochs=250, decay_steps=[225], score_attn_loss_weight=0.0,
                     decoder_attn_loss_weight=0.0, evaluate_interval=2, start_evaluate_epoch=50)
    elif preset in ("pretrain_mixed", "pretrain_cocoall"):
        r.update(batch_size=4 if preset == "pretrain_mixed" else 8, decay_steps=[21, 27], score_attn_loss_weight=32.0)
    elif preset == "finetune":
        r.update(lr=2e-4, epochs=10, decay_steps=[8], batch_size=4, score_attn_loss_weight=32.0)
    r.update(lr_vis_enc_mult=0.1, decay_ratio=0.1, weight_decay=0.0, grad_norm_clip=0.15, max_token=20,
             num_decoder_layers=3, num_tgqg_layers=2, drop_path_rate=0.1 if backbone == "beit3_base" else 0.0)
    if backbone == "tiny":
        r["img_size"] = 128
    return r


def test_recipe_table_equals_the_official_configs():
    from alvg.recipes import BACKBONES, DATASETS, PRESET_NAMES, recipe, resolve_preset
    for preset in PRESET_NAMES:
        for dataset in DATASETS:
            for backbone in BACKBONES:
                assert recipe(preset, dataset, backbone) == _reference_recipe(preset, dataset, backbone), \
                    (preset, dataset, backbone)
    a = resolve_preset(_train_args(["--dataset", "grefcoco", "--score_attn_loss_weight", "3"]))
    assert (a.num_queries, a.epochs, a.score_attn_loss_weight, a.decoder_attn_loss_weight) == (10, 250, 3.0, 0.0)


def test_ddp_launch_train_then_eval_match(syn, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", "--use_env", "alvg/train.py",
           *common(syn, out), "--dataset", "refcoco", "--epochs", "1", "--batch_size", "4", "--warmup_epochs", "0",
           "--lr_vis_enc_mult", "1.0", "--tensorboard", "0"]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "det_best.pth").exists() and (out / "latest.pth").exists()
    logged = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    val = {k[4:]: v for k, v in logged[-1].items() if k.startswith("val/")}
    assert val["n"] == 24  # every val sample exactly once over the 2 ranks
    ev = _eval(["--dataset", "refcoco", *common(syn, tmp_path / "ev"), "--load_from", str(out / "det_best.pth"),
                "--eval_sets", "val", "--batch_size", "5"])["val"]
    assert json.loads((tmp_path / "ev" / "eval_refcoco_val.json").read_text()) == pytest.approx(ev)
    for k in ("n", "acc@0.5", "score"):
        assert ev[k] == val[k], k
    for k in ("box_miou", "res/miou", "res/oiou", "res/pr@0.5"):
        assert ev[k] == pytest.approx(val[k], abs=1e-6), k


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_stop_and_resume_is_bit_identical(syn, tmp_path):
    from alvg.train import main
    base = ["--dataset", "refcoco", "--epochs", "2", "--batch_size", "4", "--checkpoint_every_steps", "2",
            "--lr_vis_enc_mult", "1.0", "--warmup_epochs", "1", "--decay_steps", "2"]
    main(_train_args(base + common(syn, tmp_path / "full")))
    main(_train_args(base + common(syn, tmp_path / "part") + ["--stop_after_steps", "5"]))
    mid = _weights(tmp_path / "part" / "latest.pth")
    assert (mid["epoch"], mid["step"]) == (0, 5)
    main(_train_args(base + common(syn, tmp_path / "part") + ["--resume", str(tmp_path / "part" / "latest.pth")]))
    a, b = _weights(tmp_path / "full" / "checkpoint.pth"), _weights(tmp_path / "part" / "checkpoint.pth")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["max_exp_avg_sq"], sb[i]["max_exp_avg_sq"]) for i in sa)  # amsgrad state


def _forced_score_model(syn, path, bias: float, dataset="grefcoco", mask_bias=None):
    """A tiny model whose object score is forced to ~0 (bias < 0) or ~1 (bias > 0) for every query, and whose mask
    is forced empty (mask_bias < 0) when given."""
    from alvg.model import build_model
    from alvg.recipes import build_tok, model_config_from_args, resolve_preset
    from vgcore.checkpoint import save_model
    a = resolve_preset(_train_args(["--dataset", dataset, *common(syn, path.parent)]))
    model = build_model(model_config_from_args(a, vocab_size=build_tok(a).vocab_size))
    with torch.no_grad():
        model.head.class_embed.weight.zero_()
        model.head.class_embed.bias.copy_(torch.tensor([bias, -bias]))
        if mask_bias is not None:
            last = model.head.mask_head.upsample[-1]
            last.weight.zero_()
            last.bias.fill_(mask_bias)
    save_model(path, model, model.cfg.to_dict())


def test_grec_eval_closed_form(syn, tmp_path):
    from vgcore.synthetic.scenes import load_synthetic
    recs = load_synthetic(syn, "val", fmt="seqtr", grec=True)
    n, n_nt = len(recs), sum(r.is_no_target for r in recs)
    assert 0 < n_nt < n
    for bias, expect in ((-10.0, dict(n_acc=1.0, t_acc=0.0, pr=n_nt / n)),   # nothing kept: only no-target right
                         (10.0, dict(n_acc=0.0, t_acc=1.0, pr=0.0))):        # 10 boxes kept: never F1 = 1
        ck = tmp_path / f"grec_{bias}.pth"
        _forced_score_model(syn, ck, bias, mask_bias=-20.0)
        m = _eval(["--dataset", "grefcoco", *common(syn, tmp_path / f"ev{bias}"), "--load_from", str(ck),
                   "--eval_sets", "val", "--batch_size", "8", "--batch_mean_metric"])["val"]
        assert (m["n"], m["n_no_target"]) == (n, n_nt)
        assert m["n_acc"] == expect["n_acc"] and m["t_acc"] == expect["t_acc"]
        assert m["pr@(F1=1,IoU>=0.5)"] == pytest.approx(expect["pr"])
        # empty masks: IoU 1 on no-target samples, 0 elsewhere; nothing predicted: cIoU 0
        assert m["res/giou"] == pytest.approx(n_nt / n) and m["res/ciou"] == 0.0
        assert "batch_mean/n_acc" in m and "batch_mean/res/ciou" in m


def test_predict_box_mask_and_attention(syn, tmp_path):
    from PIL import Image
    from alvg.predict import get_args_parser, main
    ck = tmp_path / "m.pth"
    _forced_score_model(syn, ck, 3.0, dataset="refcoco")
    img = sorted((syn / "images").iterdir())[0]
    W, H = Image.open(img).size
    r = main(get_args_parser().parse_args(["--load_from", str(ck), "--beit3_spm", str(syn / "tokenizers" / "spm.model"),
                                           "--image", str(img), "--text", "the red circle",
                                           "--out", str(tmp_path / "p.png")]))
    x1, y1, x2, y2 = r["box_xyxy"]
    assert 0 <= x1 <= x2 <= W and 0 <= y1 <= y2 <= H
    assert r["score"] == pytest.approx(torch.tensor([3.0, -3.0]).softmax(0)[0].item(), abs=1e-4)
    assert r["mask_rle"]["size"] == [H, W] and 0 <= r["mask_area"] <= W * H
    assert Image.open(r["attn_png"]).size == (W, H) and Path(r["png"]).stat().st_size > 0


def test_ground_truth_as_prediction_scores_one(syn):
    """The transformed ground truth fed back as the prediction: Acc@0.5 = 1 (input frame -> original pixels)
    and mask mIoU close to 1 (canvas mask -> original resolution)."""
    from alvg import method
    from alvg.evaluation import ALVGMetrics, make_postprocess
    from vgcore.data.build import build_grounding_loader
    a = _train_args(["--dataset", "refcoco", *common(syn, syn / "unused")])
    method.prepare(a)
    model_cfg = type("C", (), {"img_size": a.img_size, "max_text_len": 20, "backbone": "tiny"})
    transform, tok = method.pipeline(a, type("M", (), {"cfg": model_cfg})(), False)
    loader = build_grounding_loader(method.records(a, "val", False), transform, tok, batch_size=7, train=False)
    acc = ALVGMetrics(grec=False, res=True, batch_mean=True)
    post = make_postprocess(a.img_size, res=True, grec=False, batch_mean=True)
    for batch in loader:
        B = len(batch)
        logits = torch.tensor([5.0, -5.0]).expand(B, 1, 2)
        probs = torch.nn.functional.interpolate(batch.masks[:, None].float(), size=(64, 64), mode="area")[:, 0]
        out = {"decoder_logits": logits[None], "decoder_boxes": batch.boxes[None, :, None],
               "pred_boxes": batch.boxes[:, None], "mask_probs": probs}
        acc.update(**post(out, batch))
    m = acc.all_reduce().compute()
    assert m["n"] == 24 and m["acc@0.5"] == 1.0 and m["batch_mean/acc@0.5"] == 1.0
    assert m["res/miou"] > 0.9 and m["res/oiou"] > 0.9


def test_box_only_training_reports_no_res(syn, tmp_path):
    from alvg.train import main
    s = main(_train_args(["--dataset", "refcoco", "--masks", "off", "--epochs", "1", "--batch_size", "8",
                          *common(syn, tmp_path / "box")]))
    logged = [json.loads(l) for l in (tmp_path / "box" / "log.jsonl").read_text().splitlines()]
    assert "val/acc@0.5" in logged[-1] and not any(k.startswith("val/res/") for k in logged[-1])
    assert s["best"] is not None
