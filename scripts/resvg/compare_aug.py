"""Compare two evaluations of the ResVG tiny preset per expression type: without and with the
relation-sensitive augmentation (the `eval_<dataset>_<split>.json` files that `resvg/eval.py --breakdown
expr_type` writes).

Besides each synthetic expression type it prints two merged groups:

* ``position`` = extreme + ordinal: the target is picked out among instances of its own category by where it
  lies ("the far left circle", "the second star from the top").  These are the relations the augmentation's
  pseudo-queries teach (left / middle / right, top / bottom, ordinal among same-category instances).
* ``spatial`` = position + rel: every expression with a spatial word, including "the X left of the Y", whose
  anchor is an object of another category (a form the pseudo-queries never take).

    python scripts/resvg/compare_aug.py OUT/unc/eval_unc_val.json OUT/unc_aug/eval_unc_val.json [--json F]

Either side may pool several evaluations, count-weighted: a run folder stands for every ``eval_*.json`` in it
(e.g. val, testA and testB), and a comma list joins files or folders (e.g. the runs of several seeds):

    python scripts/resvg/compare_aug.py OUT/ctl_s1,OUT/ctl_s2 OUT/aug_s1,OUT/aug_s2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

GROUPS = {"position": ("extreme", "ordinal"), "spatial": ("extreme", "ordinal", "rel")}


def load_metrics(path: Path) -> Dict[str, float]:
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: cannot read the evaluation file ({e})")
    if not isinstance(m, dict) or not any(k.startswith("n/") for k in m):
        raise SystemExit(f"{path}: no per-type counts (n/<type>): evaluate with --breakdown expr_type")
    return m


def pooled_metrics(spec: str, key: str = "acc@0.5") -> Dict[str, float]:
    """The evaluations ``spec`` names (a file, a run folder = its eval_*.json files, or a comma list of either)
    pooled: counts summed, accuracies count-weighted; a single file is returned as it is."""
    paths: List[Path] = []
    for part in (s for s in spec.split(",") if s):
        path = Path(part)
        found = sorted(path.glob("eval_*.json")) if path.is_dir() else [path]
        if not found:
            raise SystemExit(f"{path}: no eval_*.json in this folder")
        paths += found
    files = [load_metrics(p) for p in paths]
    if len(files) == 1:
        return files[0]
    out: Dict[str, float] = {}
    for name in sorted({k[2:] for m in files for k in m if k.startswith("n/")}) + [None]:
        nk, ak = ("n", key) if name is None else (f"n/{name}", f"{key}/{name}")
        n = sum(int(m.get(nk, 0)) for m in files)
        out[nk] = n
        if n:
            out[ak] = sum(m[ak] * int(m[nk]) for m in files if m.get(nk)) / n
    return out


def group_accuracy(m: Dict[str, float], types, key: str = "acc@0.5") -> Tuple[Optional[float], int]:
    """Accuracy over the union of ``types`` (count-weighted) and its sample count; (None, 0) when empty."""
    n = sum(int(m.get(f"n/{t}", 0)) for t in types)
    if n == 0:
        return None, 0
    hits = sum(m[f"{key}/{t}"] * int(m[f"n/{t}"]) for t in types if m.get(f"n/{t}"))
    return hits / n, n


def rows(base: Dict[str, float], aug: Dict[str, float]) -> List[dict]:
    types = sorted({k[2:] for k in base if k.startswith("n/")} | {k[2:] for k in aug if k.startswith("n/")})
    out = []
    for name, members in [(t, (t,)) for t in types] + list(GROUPS.items()):
        (a, na), (b, nb) = group_accuracy(base, members), group_accuracy(aug, members)
        if na != nb:
            raise SystemExit(f"group {name}: {na} samples without the augmentation, {nb} with it: "
                             "the two files do not evaluate the same split")
        out.append({"group": name, "n": na, "base": a, "aug": b})
    out.append({"group": "all", "n": None, "base": base.get("acc@0.5"), "aug": aug.get("acc@0.5")})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("base", help="evaluation(s) without the augmented split: file, run folder, or comma list")
    p.add_argument("aug", help="evaluation(s) with it")
    p.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    table = rows(pooled_metrics(args.base), pooled_metrics(args.aug))
    pct = lambda v: "--" if v is None else f"{100 * v:6.2f}"  # noqa: E731
    print(f"{'group':10s} {'n':>5s} {'without':>8s} {'with':>8s} {'diff':>7s}")
    for r in table:
        diff = None if r["base"] is None or r["aug"] is None else r["aug"] - r["base"]
        n = "" if r["n"] is None else str(r["n"])
        print(f"{r['group']:10s} {n:>5s} {pct(r['base']):>8s} {pct(r['aug']):>8s} "
              f"{'--' if diff is None else f'{100 * diff:+6.2f}':>7s}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
