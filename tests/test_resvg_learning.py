"""Slow: ResVG's tiny preset learns the synthetic scenes on the CPU -- scripts/resvg/train_tiny_synthetic.sh as one
command (synthetic data, tag pretraining of the tiny ResNet + encoder and BERT, grounding training, evaluation,
baselines) within 15 minutes on the 2-core machine, beating the best trivial baseline (centre box / largest /
random object) by >= 15 points Acc@0.5 on val and the noun-only baseline (a random object of the named kind).
Run with ``python -m pytest -q -s -m slow tests/test_resvg_learning.py``.

The evaluation reports the accuracy per expression type (attr / extreme / ordinal / rel); the test checks that
the breakdown covers val exactly.  Measured figures: resvg/README.md, "Tiny preset".
"""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_synthetic_beats_baselines(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "tiny"))
    t = time.time()
    r = subprocess.run(["bash", "scripts/resvg/train_tiny_synthetic.sh"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=3600)
    minutes = (time.time() - t) / 60
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((tmp_path / "tiny" / "unc" / "vs_baselines.json").read_text())
    metrics = json.loads((tmp_path / "tiny" / "unc" / "eval_unc_val.json").read_text())
    per_type = {k[len("acc@0.5/"):]: v for k, v in metrics.items() if k.startswith("acc@0.5/")}
    print(json.dumps(summary, indent=2), json.dumps(per_type), f"\n{minutes:.1f} min")
    assert sum(metrics[f"n/{t}"] for t in per_type) == metrics["n"] == summary["n"]
    assert set(per_type) <= {"attr", "extreme", "ordinal", "rel"}
    assert minutes < 15, f"the tiny script took {minutes:.1f} min"
    assert summary["margin_over_best_trivial"] >= 0.15, summary
    assert summary["margin_over_noun_only"] > 0, summary
