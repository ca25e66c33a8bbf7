"""VG-LAW learns on the synthetic data (CPU).

Fast: every law type (svd, la, od1, od2, od3) trains: ``vglaw/train.py --preset tiny --law_type X`` on a small
synthetic refer-layout set (masks included, both heads), 4 epochs of 8 steps: the training loss falls every
epoch (measured: -10 to -14 % over the 4 epochs for every type) and the generator's output layers, zero at
the start, have moved.

Slow (``python -m pytest -q -s -m slow tests/test_vglaw_learning.py``): the tiny preset's acceptance run, the
one of scripts/vglaw/train_tiny_synthetic.sh (quickstart data: larger shapes, 6,000 train / 500 val expressions;
`vglaw/pretrain_tiny.py` at its defaults; grounding at the script's recipe).  On val:
  * REC Prec@0.5 beats the best trivial baseline (centre box / largest / random object) by >= 15 points and beats
    the noun-only baseline (a random object of the named kind);
  * RES mIoU (original resolution) >= 0.5.
Measured with the script (8 epochs): Prec@0.5 88.2% (best trivial 38.3%, noun-only 69.5%), mIoU 71.4%; 6.5 min of
CPU time.  Per-epoch figures and times: vglaw/README.md, "Tiny preset".
"""
from __future__ import annotations

import json
import os
import time

import pytest

EPOCHS = int(os.environ.get("VGLAW_LEARN_EPOCHS", "8"))
SCENE = dict(object_scale=1.8, max_objects=5)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from vgcore.synthetic.scenes import generate
    out = tmp_path_factory.mktemp("vglaw_small")
    generate(out, num_train=64, num_val=8, num_test=2, seed=3, formats=("refer",), verbose=False, **SCENE)
    return out


def _data(syn):
    return ["--dataset", "refcoco", "--split_root", str(syn / "refer"), "--image_root", str(syn / "images"),
            "--device", "cpu", "--num_workers", "0"]


@pytest.mark.parametrize("law", ["svd", "la", "od1", "od2", "od3"])
def test_every_law_type_trains(small, tmp_path, law):
    from vglaw.train import get_args_parser, main
    out = tmp_path / law
    main(get_args_parser().parse_args(
        ["--preset", "tiny", "--law_type", law, *_data(small), "--bert_model", str(small / "tokenizers"),
         "--batch_size", "8", "--batch_sum", "8", "--warmup_steps", "0", "--lr_base", "2e-3", "--lr_visual", "2e-3",
         "--lr_lang", "2e-3", "--max_epochs", "4", "--drop_epochs", "10", "--eval_step", "10", "--tensorboard", "false",
         "--output_dir", str(out)]))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in log]
    assert len(losses) == 4 and all(b < a for a, b in zip(losses, losses[1:])), losses  # falls every epoch
    assert losses[-1] < 0.92 * losses[0], losses
    assert all(r["train/loss_focal"] > 0 and r["train/loss_dice"] > 0 for r in log)  # both heads train
    # the language-adaptive weights trained: the generator's output layers (zero at the start) moved
    import torch
    sd = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)["model"]
    gen = [v for k, v in sd.items() if k.startswith("weight_generator.proj.") and k.endswith(".3.weight")]
    assert len(gen) == 4 and all(float(v.abs().max()) > 1e-3 for v in gen)


# ------------------------------------------------------------------------------------------------ acceptance
@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """The quickstart data + the tag-pretrained tiny ViT and BERT (vglaw/pretrain_tiny.py defaults)."""
    import vglaw.pretrain_tiny as pt
    from vgcore.synthetic.scenes import generate
    out = tmp_path_factory.mktemp("vglaw_learn")
    t0 = time.time()
    generate(out, num_train=6000, num_val=500, num_test=50, seed=0, formats=("refer",), image_format="jpg",
             verbose=False, **SCENE)
    pt.main(pt.get_args_parser().parse_args(["--bert_model", str(out / "tokenizers"), "--out_dir", str(out / "pre"),
                                             "--object-scale", "1.8", "--max-objects", "5"]))
    print(f"[vglaw learning] data + tag pretraining: {(time.time() - t0) / 60:.1f} min")
    return out


@pytest.mark.slow
def test_tiny_preset_beats_baselines_and_segments(syn, tmp_path):
    from vgcore.synthetic.baselines import noun_only_baseline, trivial_baselines
    from vgcore.synthetic.scenes import load_synthetic
    from vglaw.eval import get_args_parser as eval_parser, main as eval_main
    from vglaw.train import get_args_parser, main

    common = ["--preset", "tiny", *_data(syn), "--bert_model", str(syn / "pre" / "bert")]
    t0 = time.time()
    main(get_args_parser().parse_args(
        common + ["--vit_model_path", str(syn / "pre" / "vit_tiny.pth"), "--batch_size", "16", "--batch_sum", "16",
                  "--warmup_steps", "0", "--lr_base", "1e-3", "--lr_visual", "3e-4", "--lr_lang", "3e-4",
                  "--max_epochs", str(EPOCHS), "--drop_epochs", str(max(EPOCHS - 1, 1)), "--log_freq", "100",
                  "--tensorboard", "false", "--output_dir", str(tmp_path / "run")]))
    minutes = (time.time() - t0) / 60
    m = eval_main(eval_parser().parse_args(
        common + ["--pretrained_path", str(tmp_path / "run" / "best_checkpoint.pth"), "--eval_sets", "val",
                  "--output_dir", str(tmp_path / "ev")]))["val"]
    val = load_synthetic(syn, "val", fmt="refer")
    base = trivial_baselines(val, train_records=load_synthetic(syn, "train", fmt="refer"))
    noun = noun_only_baseline(val)
    print(f"[vglaw learning] {minutes:.1f} min training; val {json.dumps(m)}; baselines {base}, noun-only {noun:.3f}")
    assert m["rec/acc@0.5"] >= max(base.values()) + 0.15, (m, base)
    assert m["rec/acc@0.5"] > noun, (m, noun)
    assert m["res/miou"] >= 0.5, m
