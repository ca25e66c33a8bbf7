"""ResVG entry points end to end on tiny synthetic data: resvg/train.py (2 epochs, the encoders frozen for the
first), resvg/eval.py on the final weights, resvg/predict.py with a prior file, all as subprocesses."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 32  # the tiny preset's prior_dim


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from vgcore.synthetic.scenes import generate

    out = tmp_path_factory.mktemp("syn")
    generate(out, num_train=16, num_val=6, num_test=3, seed=7, formats=("transvg",), verbose=False)
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val", "testA"):
        n = len(torch.load(out / "split" / "data" / "unc" / f"unc_{split}.pth", weights_only=False))
        torch.save(torch.randn(n, WIDTH, generator=g), out / "split" / "data" / "unc" / f"{split}_fea.pth")
    return out


def _common(syn):
    return ["--model_preset", "tiny", "--dataset", "unc", "--split_root", str(syn / "split" / "data"),
            "--image_root", str(syn / "images"), "--bert_token_mode", str(syn / "tokenizers" / "vocab.txt"),
            "--device", "cpu"]


def _run(args, timeout=400):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    r = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-5000:]}"
    return r


def test_train_eval_predict(syn, tmp_path):
    out = tmp_path / "run"
    _run(["resvg/train.py", *_common(syn), "--train_split", "train", "--batch_size", "4", "--epochs", "2",
          "--freeze_epochs", "1", "--lr", "1e-3", "--num_workers", "0", "--tensorboard", "false",
          "--output_dir", str(out)])
    log = (out / "log.txt").read_text()
    assert "prior train: prior features" in log and "prior val: prior features" in log
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["last"]["n"] == 6
    # the final weights evaluate to the numbers of the last validation, from the files alone
    r = _run(["resvg/eval.py", *_common(syn), "--checkpoint", str(out / "checkpoint.pth"), "--eval_sets", "val",
              "testA", "--num_workers", "0", "--output_dir", str(tmp_path / "ev")])
    assert "Acc@0.5 (IoU > 0.5)" in r.stdout
    val = json.loads((tmp_path / "ev" / "eval_unc_val.json").read_text())
    for k in ("n", "miou", "acc@0.5", "acc@0.9"):
        assert val[k] == pytest.approx(summary["last"][k], abs=1e-6), k
    assert json.loads((tmp_path / "ev" / "eval_unc_testA.json").read_text())["n"] == 3
    # against the initial weights (same seed, same build): ResNet layer1 never trains, layer4 trains once unfrozen
    from resvg.model import build_model
    from vgcore.dist import seed_everything

    seed_everything(42, 0)
    init = build_model({"model_preset": "tiny", "freeze_epochs": 1}).state_dict()
    final = torch.load(out / "checkpoint.pth", weights_only=False)["model"]
    assert torch.equal(final["backbone.body.layer1.0.conv1.weight"], init["backbone.body.layer1.0.conv1.weight"])
    assert not torch.equal(final["backbone.body.layer4.0.conv1.weight"], init["backbone.body.layer4.0.conv1.weight"])
    assert not torch.equal(final["bbox_embed.layers.2.weight"], init["bbox_embed.layers.2.weight"])
    # predict: the query's prior from a file; the box lies in the image
    img = sorted((syn / "images").iterdir())[0]
    prior = tmp_path / "q_fea.pth"
    torch.save(torch.randn(WIDTH), prior)
    png = tmp_path / "p.png"
    r = _run(["resvg/predict.py", "--checkpoint", str(out / "best_checkpoint.pth"), "--bert_token_mode",
              str(syn / "tokenizers" / "vocab.txt"), "--image", str(img), "--text", "the red circle",
              "--prior_file", str(prior), "--out", str(png), "--device", "cpu"], timeout=200)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    from PIL import Image

    w, h = Image.open(img).size
    x1, y1, x2, y2 = res["box_xyxy"]
    assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    assert png.stat().st_size > 0
