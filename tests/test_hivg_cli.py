"""HiVG entry points end to end on tiny synthetic data: the distributed launcher, exact resume, eval, predict."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--model", "tiny", "--dataset", "unc", "--imsize", "64", "--max_query_len", "12", "--normalize_before",
        "--enable_adaptive_weights"]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from vgcore.synthetic.scenes import generate

    out = tmp_path_factory.mktemp("syn")
    generate(out, num_train=48, num_val=13, num_test=4, seed=3, formats=("transvg",), tokenizers=False, verbose=False)
    return out


def _data(syn):
    return ["--split_root", str(syn / "split" / "data"), "--image_root", str(syn / "images")]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    return env


def _run(args, timeout=300):
    r = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-5000:]}"
    return r


def _train_args(syn, out, *extra):
    return (TINY + _data(syn) + ["--train_clip", "--batch_size", "4", "--lr", "1e-3", "--lr_scheduler", "cosine",
            "--use_contrastive_loss", "--use_rtcc_constrain_loss", "--use_mask_loss", "--device", "cpu",
            "--num_workers", "0", "--tensorboard", "false", "--output_dir", str(out)] + list(extra))


def test_help_lists_official_flags():
    r = _run([sys.executable, "hivg/train.py", "--help"], timeout=120)
    for flag in ["--model", "--dataset", "--imsize", "--max_query_len", "--batch_size", "--lr", "--epochs",
                 "--lr_scheduler", "--aug_crop", "--aug_scale", "--aug_translate", "--aug_blur", "--hi_lora_stage",
                 "--warmup", "--mixup_pretrain", "--enable_adaptive_weights", "--use_contrastive_loss",
                 "--use_rtcc_constrain_loss", "--use_mask_loss", "--data_root", "--split_root", "--output_dir",
                 "--resume", "--retrain", "--hi_lora_retrain", "--clip_model", "--vl_hidden_dim",
                 "--bridge_batch_mixing", "--normalize_before", "--sup_type"]:
        assert flag in r.stdout, flag


def test_resume_mid_epoch_is_exact(syn, tmp_path):
    """Stop after 5 batches (mid-epoch 1 of 12 batches/epoch), resume, finish: same weights as straight."""
    from hivg.train import get_args_parser, main

    straight = tmp_path / "straight"
    main(get_args_parser().parse_args(_train_args(syn, straight, "--epochs", "2")))
    cut = tmp_path / "cut"
    main(get_args_parser().parse_args(_train_args(syn, cut, "--epochs", "2", "--stop_after_steps", "17")))
    ck = torch.load(cut / "checkpoint.pth", weights_only=False)
    assert (ck["epoch"], ck["step"]) == (1, 5)
    torch.manual_seed(1234)  # scramble the global RNG: resume must restore it
    main(get_args_parser().parse_args(_train_args(syn, cut, "--epochs", "2", "--resume", str(cut / "checkpoint.pth"))))
    a = torch.load(straight / "checkpoint.pth", weights_only=False)["model"]
    b = torch.load(cut / "checkpoint.pth", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # ... and evaluation / prediction of that checkpoint work from the files alone
    from hivg.eval import get_args_parser as eval_parser, main as eval_main

    m = eval_main(eval_parser().parse_args(["--eval_model", str(straight / "best_checkpoint.pth"), "--eval_set", "val",
                                            "--dataset", "unc", *_data(syn), "--device", "cpu", "--num_workers", "0",
                                            "--output_dir", str(tmp_path / "ev"), "--vis", "4"]))["val"]
    assert m["n"] == 13
    assert (tmp_path / "ev" / "vis_unc_val.png").stat().st_size > 0
    summary = json.loads((straight / "train_summary.json").read_text())
    assert summary["best"] is not None


def test_distributed_launch_matches_single_process(syn, tmp_path):
    """`python -m torch.distributed.launch --nproc_per_node=2 --use_env hivg/train.py` (gloo, CPU): the final
    val metrics equal a single-process evaluation of the same checkpoint (13 val samples: odd, no padding)."""
    out = tmp_path / "ddp"
    _run([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", "--use_env", "hivg/train.py",
          *_train_args(syn, out, "--epochs", "1", "--max_steps", "3")])
    summary = json.loads((out / "train_summary.json").read_text())
    ddp_metrics = summary["last"]
    assert ddp_metrics["n"] == 13
    _run([sys.executable, "hivg/eval.py", "--eval_model", str(out / "best_checkpoint.pth"), "--eval_set", "val",
          "--dataset", "unc", *_data(syn), "--device", "cpu", "--num_workers", "0", "--output_dir", str(out)])
    single = json.loads((out / "eval_unc_val.json").read_text())
    assert single["n"] == 13
    for k in ("acc@0.5", "miou", "align_pointing"):
        assert single[k] == pytest.approx(ddp_metrics[k], abs=1e-6), k


def test_predict_draws_png(syn, tmp_path):
    from hivg.model import build_model
    from vgcore.checkpoint import save_model

    model = build_model("hivg-tiny", image_size=64, context_length=12, dataset="unc")
    ck = tmp_path / "m.pth"
    save_model(ck, model, model.cfg.to_dict())
    img = sorted((syn / "images").iterdir())[0]
    png = tmp_path / "p.png"
    r = _run([sys.executable, "hivg/predict.py", "--eval_model", str(ck), "--image", str(img),
              "--text", "the red circle", "--out", str(png), "--device", "cpu"], timeout=120)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    x1, y1, x2, y2 = res["box_xyxy"]
    from PIL import Image

    w, h = Image.open(img).size
    assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    assert png.stat().st_size > 0
