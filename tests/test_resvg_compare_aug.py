"""scripts/resvg/compare_aug.py: the per-type and merged-group accuracies of two `--breakdown expr_type`
evaluations (without / with the relation-sensitive augmentation), count-weighted, and a clear refusal of files
that do not describe the same split."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_aug", ROOT / "scripts" / "resvg" / "compare_aug.py")
compare_aug = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_aug)


def _metrics(counts, accs, overall):
    m = {"n": sum(counts.values()), "acc@0.5": overall}
    for t, n in counts.items():
        m[f"n/{t}"] = n
        m[f"acc@0.5/{t}"] = accs[t]
    return m


def test_groups_are_count_weighted(tmp_path, capsys):
    counts = {"attr": 50, "extreme": 30, "ordinal": 10, "rel": 10}
    base = _metrics(counts, {"attr": 0.9, "extreme": 0.5, "ordinal": 0.3, "rel": 0.6}, 0.72)
    aug = _metrics(counts, {"attr": 0.9, "extreme": 0.7, "ordinal": 0.5, "rel": 0.6}, 0.80)
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(aug))
    assert compare_aug.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json", str(tmp_path / "t.json")]) == 0
    table = {r["group"]: r for r in json.loads((tmp_path / "t.json").read_text())}
    assert table["position"]["n"] == 40
    assert table["position"]["base"] == pytest.approx((30 * 0.5 + 10 * 0.3) / 40)
    assert table["position"]["aug"] == pytest.approx((30 * 0.7 + 10 * 0.5) / 40)
    assert table["spatial"]["n"] == 50
    assert table["spatial"]["aug"] == pytest.approx((30 * 0.7 + 10 * 0.5 + 10 * 0.6) / 50)
    assert table["attr"]["base"] == table["attr"]["aug"] == 0.9
    assert table["all"]["base"] == 0.72 and table["all"]["aug"] == 0.80
    out = capsys.readouterr().out
    assert "position" in out and "+20.00" in out  # extreme: 50 -> 70


def test_refuses_mismatched_or_unbroken_files(tmp_path):
    a = _metrics({"extreme": 30, "rel": 10}, {"extreme": 0.5, "rel": 0.6}, 0.5)
    b = _metrics({"extreme": 31, "rel": 10}, {"extreme": 0.5, "rel": 0.6}, 0.5)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    with pytest.raises(SystemExit, match="same split"):
        compare_aug.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    (tmp_path / "c.json").write_text(json.dumps({"n": 40, "acc@0.5": 0.5}))
    with pytest.raises(SystemExit, match="breakdown expr_type"):
        compare_aug.main([str(tmp_path / "c.json"), str(tmp_path / "a.json")])


def test_pools_run_folders_and_comma_lists(tmp_path):
    """A run folder pools its eval_*.json files, a comma list pools folders (seeds): counts add up and the
    accuracies are count-weighted."""
    counts_val, counts_test = {"extreme": 30, "rel": 10}, {"extreme": 10, "rel": 30}
    for run, (av, at) in {"s1": (0.5, 0.7), "s2": (0.6, 0.9)}.items():
        d = tmp_path / run
        d.mkdir()
        (d / "eval_unc_val.json").write_text(json.dumps(_metrics(counts_val, {"extreme": av, "rel": av}, av)))
        (d / "eval_unc_testA.json").write_text(json.dumps(_metrics(counts_test, {"extreme": at, "rel": at}, at)))
        (d / "log.json").write_text("{}")  # not an evaluation: ignored
    both = compare_aug.pooled_metrics(f"{tmp_path / 's1'},{tmp_path / 's2'}")
    assert both["n"] == 160 and both["n/extreme"] == 80
    assert both["acc@0.5/extreme"] == pytest.approx((30 * 0.5 + 10 * 0.7 + 30 * 0.6 + 10 * 0.9) / 80)
    assert both["acc@0.5"] == pytest.approx((40 * 0.5 + 40 * 0.7 + 40 * 0.6 + 40 * 0.9) / 160)
    assert compare_aug.main([str(tmp_path / "s1"), str(tmp_path / "s2")]) == 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no eval_"):
        compare_aug.pooled_metrics(str(tmp_path / "empty"))
