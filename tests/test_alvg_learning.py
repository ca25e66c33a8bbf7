"""ALVG learns (slow): ``--backbone tiny`` over SimVG's tag-pretrained tiny BEiT-3, trained on the synthetic shapes
data on CPU.  Run with ``python -m pytest -q -s -m slow tests/test_alvg_learning.py``.

Data: the quickstart's larger-shape scenes (``--object-scale 1.8 --max-objects 5``, 6,000 train / 500 val
expressions with masks, JPEG, SeqTR layout, plus the gRefCOCO-style split).  Backbone: ``simvg/pretrain_tiny.py``
as scripts/alvg/train_tiny_synthetic.sh runs it (scenes of seed 1: 3,000 image steps on kind / colour / row / col
patch tags, 400 text steps, 2,000 joint steps).  ALVG has no object token, but the joint phase also trains
BEiT-3's attention blocks to carry what the expression says and where its referent is, which the
gRefCOCO-style run needs to tell that the named object is absent.  The recipe of scripts/alvg/train_tiny_synthetic.sh (lr 5e-4, BEiT-3 x0.2,
batch 16, no warm-up, one x0.1 decay before the last epoch, the official loss weights).

REC (one query, masks: mask loss and mask attention targets):
  * val Acc@0.5 beats the best trivial baseline (centre box / largest / random object) by >= 15 points and the
    noun-only baseline (a random object of the named kind);
  * with the attention losses on, val Acc@0.5 is at least that of the same run without them (same seed and
    budget; both printed);
  * box-only (``--masks off``: box attention targets, no mask loss) trains and beats the same baselines.
GREC (gRefCOCO-like split, 10 queries, official gRefCOCO losses), scored with the GREC metric code
(`vgcore.synthetic.baselines.grec_baselines`): Pr@(F1=1, IoU>=0.5) above the "always no-target" baseline (Pr =
the no-target fraction, N-acc 1 by construction) and the "always one box" baselines (largest / random object,
N-acc 0), and N-acc clearly above 0 (>= 0.3).

Epochs: ``ALVG_LEARN_EPOCHS`` (12), ``ALVG_GREC_EPOCHS`` (12).  Timings are printed (alvg/README.md, "Tiny preset").
"""
from __future__ import annotations

import json
import os
import time

import pytest

pytestmark = pytest.mark.slow

REC_EPOCHS = int(os.environ.get("ALVG_LEARN_EPOCHS", "12"))
GREC_EPOCHS = int(os.environ.get("ALVG_GREC_EPOCHS", "12"))
SCENE = dict(object_scale=1.8, max_objects=5)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    import simvg.pretrain_tiny as pt
    from vgcore.synthetic.scenes import generate
    out = tmp_path_factory.mktemp("alvg_learn")
    t0 = time.time()
    generate(out, num_train=6000, num_val=500, num_test=50, seed=0, formats=("seqtr",), grec=True,
             image_format="jpg", verbose=False, **SCENE)
    pt.main(pt.get_args_parser().parse_args(
        ["--beit3_spm", str(out / "tokenizers" / "spm.model"), "--out", str(out / "tiny_beit3.pth"),
         "--object-scale", "1.8", "--max-objects", "5", "--text_steps", "400", "--joint_steps", "2000",
         "--log_every", "1000"]))
    print(f"[alvg learning] data + backbone pretraining: {(time.time() - t0) / 60:.1f} min")
    return out


def _common(syn, out, dataset, masks="auto"):
    return ["--dataset", dataset, "--backbone", "tiny", "--data_root", str(syn / "seqtr"), "--image_root",
            str(syn / "images"), "--beit3_spm", str(syn / "tokenizers" / "spm.model"), "--device", "cpu",
            "--num_workers", "0", "--masks", masks, "--output_dir", str(out)]


def _train_eval(syn, out, dataset, epochs, masks="auto", extra=()):
    from alvg.eval import get_args_parser as eval_parser, main as eval_main
    from alvg.train import get_args_parser, main
    t0 = time.time()
    main(get_args_parser().parse_args(
        [*_common(syn, out, dataset, masks), "--beit3_ckpt", str(syn / "tiny_beit3.pth"), "--epochs", str(epochs),
         "--batch_size", "16", "--lr", "5e-4", "--lr_vis_enc_mult", "0.2", "--warmup_epochs", "0",
         "--decay_steps", str(max(epochs - 1, 1)), "--start_evaluate_epoch", "0", "--evaluate_interval", "1",
         "--log_every", "1000", "--tensorboard", "0", *extra]))
    minutes = (time.time() - t0) / 60
    m = eval_main(eval_parser().parse_args([*_common(syn, out / "ev", dataset, masks),
                                            "--load_from", str(out / "det_best.pth"), "--eval_sets", "val"]))["val"]
    print(f"[alvg learning] {dataset} masks={masks} {' '.join(extra)}: {minutes:.1f} min training; val {json.dumps(m)}")
    return m


@pytest.fixture(scope="module")
def baselines(syn):
    from vgcore.synthetic.baselines import noun_only_baseline, trivial_baselines
    from vgcore.synthetic.scenes import load_synthetic
    val = load_synthetic(syn, "val", fmt="seqtr")
    base = trivial_baselines(val, train_records=load_synthetic(syn, "train", fmt="seqtr"))
    noun = noun_only_baseline(val)
    print(f"[alvg learning] baselines {base}, noun_only {noun:.3f}")
    return max(base.values()), noun


@pytest.fixture(scope="module")
def rec(syn, tmp_path_factory):
    return _train_eval(syn, tmp_path_factory.mktemp("rec"), "refcoco", REC_EPOCHS)


def test_rec_beats_baselines(rec, baselines):
    best, noun = baselines
    assert rec["acc@0.5"] >= best + 0.15, (rec["acc@0.5"], best)
    assert rec["acc@0.5"] > noun, (rec["acc@0.5"], noun)
    assert rec["res/miou"] > 0.3  # the mask head learns too


def test_attention_losses_do_not_hurt(rec, syn, tmp_path):
    off = _train_eval(syn, tmp_path / "noattn", "refcoco", REC_EPOCHS, extra=("--no_attn_loss",))
    print(f"[alvg learning] val Acc@0.5 with attention losses {rec['acc@0.5']:.4f}, without {off['acc@0.5']:.4f}")
    assert rec["acc@0.5"] >= off["acc@0.5"], (rec["acc@0.5"], off["acc@0.5"])


def test_box_only_split_trains(syn, baselines, tmp_path):
    best, noun = baselines
    m = _train_eval(syn, tmp_path / "boxonly", "refcoco", REC_EPOCHS, masks="off")
    assert not any(k.startswith("res/") for k in m)
    assert m["acc@0.5"] >= best + 0.15 and m["acc@0.5"] > noun, (m["acc@0.5"], best, noun)


def test_grec_beats_trivial_baselines(syn, tmp_path):
    from vgcore.metrics import GREC_MAIN_KEY
    from vgcore.synthetic.baselines import grec_baselines
    from vgcore.synthetic.scenes import load_synthetic
    base = grec_baselines(load_synthetic(syn, "val", fmt="seqtr", grec=True))
    m = _train_eval(syn, tmp_path / "grec", "grefcoco", GREC_EPOCHS)
    pr, nacc = m[GREC_MAIN_KEY], m["n_acc"]
    print(f"[alvg learning] grec baselines {base}; ALVG Pr {pr:.3f} N-acc {nacc:.3f} T-acc {m['t_acc']:.3f} "
          f"gIoU {m['res/giou']:.3f}")
    assert pr > max(b[GREC_MAIN_KEY] for b in base.values()), (pr, base)
    assert nacc > max(base["largest_object"]["n_acc"], base["random_object"]["n_acc"]) and nacc >= 0.3, nacc
