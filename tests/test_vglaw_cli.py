"""VG-LAW entry points end to end on tiny synthetic refer-layout data (CPU, ``--preset tiny``): train.py learns
(multi-task: box and mask losses), eval.py reports dataset-level REC and RES metrics equal to the training run's
last validation, predict.py draws box + mask; the 2-process launcher's training validation and a 2-process eval.py
equal a single-process eval; a run stopped mid-epoch and resumed ends bit-identical to an uninterrupted one."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("vglaw_syn")
    _run([sys.executable, "-m", "vgcore.synthetic", "--out", str(out), "--formats", "refer", "--num-train", "24",
          "--num-val", "7", "--num-test", "2", "--seed", "5"])
    return out


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    return env


def _run(args, timeout=300):
    r = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-5000:]}"
    return r


def _data(syn):
    return ["--dataset", "refcoco", "--split_root", str(syn / "refer"), "--image_root", str(syn / "images"),
            "--bert_model", str(syn / "tokenizers"), "--device", "cpu", "--num_workers", "0"]


def _train(syn, out, *extra, launcher=()):
    return _run([sys.executable, *launcher, "vglaw/train.py", "--preset", "tiny", *_data(syn), "--batch_size", "4",
                 "--batch_sum", "8", "--warmup_steps", "0", "--lr_base", "2e-3", "--lr_visual", "2e-3", "--lr_lang",
                 "2e-3", "--tensorboard", "false", "--output_dir", str(out), *extra])


def test_train_eval_predict(syn, tmp_path):
    out = tmp_path / "run"
    _train(syn, out, "--max_epochs", "2")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2
    for k in ("loss", "loss_l1", "loss_giou", "loss_focal", "loss_dice"):
        assert k == "loss" or log[0][f"train/{k}"] > 0
    assert log[1]["train/loss"] < log[0]["train/loss"]
    for f in ("checkpoint.pth", "best_checkpoint.pth", "train_summary.json"):
        assert (out / f).stat().st_size > 0
    last = json.loads((out / "train_summary.json").read_text())["last"]

    # eval of the last epoch's weights (checkpoint.pth) equals the training run's last validation
    r = _run([sys.executable, "vglaw/eval.py", "--pretrained_path", str(out / "checkpoint.pth"), *_data(syn),
              "--eval_sets", "val", "testA", "--batch_size", "3", "--output_dir", str(tmp_path / "ev"),
              "--canvas_metrics", "--vis", "2"])
    assert "REC Prec@0.5" in r.stdout and "RES mIoU" in r.stdout
    m = json.loads((tmp_path / "ev" / "eval_refcoco_val.json").read_text())
    assert m["n"] == 7 and json.loads((tmp_path / "ev" / "eval_refcoco_testA.json").read_text())["n"] == 2
    for k in ("rec/acc@0.5", "rec/miou", "res/miou", "res/oiou", "res/pr@0.5", "res/pr@0.9"):
        assert m[k] == pytest.approx(last[k], abs=1e-6), k
    assert 0 < m["rec/miou"] < 1 and "canvas/res/miou" in m and "canvas/rec/acc@0.5" in m
    assert (tmp_path / "ev" / "vis_refcoco_val.png").stat().st_size > 0

    img = sorted((syn / "images").iterdir())[0]
    png = tmp_path / "p.png"
    r = _run([sys.executable, "vglaw/predict.py", "--pretrained_path", str(out / "best_checkpoint.pth"),
              "--bert_model", str(syn / "tokenizers"), "--image", str(img), "--text", "the red circle",
              "--out", str(png), "--device", "cpu", "--mask_threshold", "0.0"])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    from PIL import Image

    from vgcore.data.masks import decode_mask

    w, h = Image.open(img).size
    x1, y1, x2, y2 = res["box_xyxy"]
    assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    mask = decode_mask(res["mask_rle"], h, w)
    assert mask.sum() == res["mask_area"]
    drawn = Image.open(png)
    assert drawn.width == w and drawn.height > h  # the image plus the text banner


def test_distributed_launch_matches_single_process(syn, tmp_path):
    """``python -m torch.distributed.launch --nproc_per_node=2 --use_env vglaw/train.py`` (gloo, CPU): the
    dataset-level validation equals a single-process eval.py of the same weights (7 val samples: uneven shards)."""
    out = tmp_path / "ddp"
    _train(syn, out, "--max_epochs", "1", "--max_steps", "2",
           launcher=("-m", "torch.distributed.launch", "--nproc_per_node=2", "--use_env"))
    ddp = json.loads((out / "train_summary.json").read_text())["last"]
    assert ddp["n"] == 7
    _run([sys.executable, "vglaw/eval.py", "--pretrained_path", str(out / "checkpoint.pth"), *_data(syn),
          "--eval_sets", "val", "--output_dir", str(out)])
    single = json.loads((out / "eval_refcoco_val.json").read_text())
    _run([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", "--use_env", "vglaw/eval.py",
          "--pretrained_path", str(out / "checkpoint.pth"), *_data(syn), "--eval_sets", "val", "--batch_size", "3",
          "--output_dir", str(out / "ev2")])
    two = json.loads((out / "ev2" / "eval_refcoco_val.json").read_text())
    for k in ("n", "rec/acc@0.5", "rec/miou", "res/miou", "res/oiou", "res/pr@0.5"):
        assert single[k] == pytest.approx(ddp[k], abs=1e-6), k
        assert two[k] == pytest.approx(single[k], abs=1e-6), k


def test_stop_mid_epoch_and_resume_is_bit_identical(syn, tmp_path):
    """6 batches of 4 per epoch, 2 per optimizer step (--batch_sum 8): stopped after 4 batches of epoch 0 (random
    placement and flips on), resumed from checkpoint.pth, 2 epochs: weights, optimizer state and schedule equal
    the uninterrupted run's bit for bit."""
    import torch

    from vglaw.train import get_args_parser, main

    def args(out, *extra):
        return get_args_parser().parse_args(
            ["--preset", "tiny", *_data(syn), "--batch_size", "4", "--batch_sum", "8", "--warmup_steps", "4",
             "--lr_base", "2e-3", "--lr_visual", "2e-3", "--lr_lang", "2e-3", "--max_epochs", "2", "--drop_epochs", "1",
             "--tensorboard", "false", "--output_dir", str(out), *extra])

    main(args(tmp_path / "full"))
    main(args(tmp_path / "part", "--stop_after_steps", "4"))
    mid = torch.load(tmp_path / "part" / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert (mid["epoch"], mid["step"]) == (0, 4)
    torch.manual_seed(1234)  # scramble the global RNG: resuming must restore it
    main(args(tmp_path / "part", "--resume", str(tmp_path / "part" / "checkpoint.pth")))
    a, b = (torch.load(tmp_path / d / "checkpoint.pth", map_location="cpu", weights_only=False) for d in ("full", "part"))
    assert a["epoch"] == b["epoch"] == 2 and a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
