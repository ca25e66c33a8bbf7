"""Compare a method's metrics JSON with the synthetic dataset's baselines and write one summary JSON.

    python scripts/baselines.py --data DIR --split val --metrics OUT/eval_unc_val.json --out summary.json

Baselines (vgcore.synthetic.baselines, exact expectations, no sampling): centre box, largest object, random
object (the "trivial" ones) and noun-only (a random object of the kind the expression names).

    python scripts/baselines.py --data DIR --split val --format seqtr --grec --metrics OUT/eval_grefcoco_val.json

``--grec``: the gRefCOCO-style split and its baselines (always no-target, one box = the largest or a random
object), scored with the GREC metric code (Pr@(F1=1, IoU>=0.5), N-acc, T-acc at score 0.7).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgcore.metrics import GREC_MAIN_KEY  # noqa: E402
from vgcore.synthetic.baselines import grec_baselines, noun_only_baseline, trivial_baselines  # noqa: E402
from vgcore.synthetic.scenes import load_synthetic  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="synthetic dataset folder (python -m vgcore.synthetic --out)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--metrics", required=True, help="eval JSON with an 'acc@0.5' entry")
    ap.add_argument("--key", default="acc@0.5", help="metric key (simvg/eval.py: decoder/acc@0.5 or token/acc@0.5)")
    ap.add_argument("--format", default="transvg", choices=("transvg", "refer", "seqtr"),
                    help="which on-disk copy of the synthetic data to read")
    ap.add_argument("--grec", action="store_true",
                    help="the gRefCOCO-style split (seqtr / refer) and the GREC baselines; --key defaults to "
                         "the GREC main key")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    if a.grec:
        return _grec(a)
    records = load_synthetic(a.data, a.split, fmt=a.format)
    train = load_synthetic(a.data, "train", fmt=a.format)
    trivial = trivial_baselines(records, train_records=train)
    noun = noun_only_baseline(records)
    metrics = json.loads(Path(a.metrics).read_text())
    acc = float(metrics[a.key])
    best = max(trivial.values())
    summary = {"split": a.split, "n": len(records), "acc@0.5": acc, "baselines": {**trivial, "noun_only": noun},
               "best_trivial": best, "margin_over_best_trivial": acc - best, "margin_over_noun_only": acc - noun}
    print(json.dumps(summary, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=2))
    return summary


def _grec(a) -> dict:
    records = load_synthetic(a.data, a.split, fmt=a.format, grec=True)
    base = grec_baselines(records)
    metrics = json.loads(Path(a.metrics).read_text())
    key = GREC_MAIN_KEY if a.key == "acc@0.5" else a.key
    prefix = key[: -len(GREC_MAIN_KEY)]
    ours = {k: float(metrics[prefix + k]) for k in (GREC_MAIN_KEY, "n_acc", "t_acc")}
    best = max(b[GREC_MAIN_KEY] for b in base.values())
    one_box_nacc = max(base["largest_object"]["n_acc"], base["random_object"]["n_acc"])
    summary = {"split": a.split, "n": len(records), "n_no_target": sum(r.num_targets == 0 for r in records),
               **ours, "baselines": base, "margin_over_best_trivial": ours[GREC_MAIN_KEY] - best,
               "n_acc_margin_over_one_box": ours["n_acc"] - one_box_nacc}
    print(json.dumps(summary, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
