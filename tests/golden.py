"""Shared helpers of the golden tests: find the fixture cases, load them, compare named outputs.

A case is a folder ``$VG_GOLDEN_DIR/<method>/<case>/`` with ``spec.json`` (configuration, state-dict layout,
seed, described inputs/outputs, compat switches, tolerance), ``inputs.pt``, ``outputs.pt`` and optionally
``buffers.pt``.  Model cases carry a non-empty state-dict layout; data-pipeline cases live in
``<method>/transforms`` (or ``transforms*/``).  Nothing here knows about particular cases: a new case folder
is discovered and every output its ``outputs.pt`` holds is compared by name.

`compare` checks a dict of produced outputs against every stored output:
  * an output that was not produced (absent, or an `Unproducible` with its reason) is a failure naming it;
  * floating outputs must satisfy every tolerance that applies to them (`tolerances`), integer / bool /
    string outputs must be equal;
  * a produced tensor whose shape broadcasts to the stored one is expanded to it (an intermediate that is the
    same for every sample); one whose shape only differs by merged or singleton dimensions (e.g. [B*Q] vs
    [B,Q], [B,1,1] vs [B]) is reshaped; any other shape difference is a failure;
  * an output can be skipped only explicitly, with a reason that is shown in the report.
All failures are collected and reported at once in a table (name, shape, max abs error, tolerance).
"""
from __future__ import annotations

import fnmatch
import importlib.util
import itertools
import json
import math
import operator
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOL = {"atol": 1e-4, "rtol": 1e-3}  # goldenlib.assert_matches defaults, used when a spec names none


# ------------------------------------------------------------------------------------------ discovery
def golden_root() -> Path:
    return Path(os.environ.get("VG_GOLDEN_DIR", ROOT.parent / "shared" / "golden"))


def golden_required() -> bool:
    """In CI (``CI`` set to a true value) or with ``VG_REQUIRE_GOLDEN=1`` missing fixtures are an error."""
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("VG_REQUIRE_GOLDEN", "") == "1"


def missing_golden(reason: str) -> None:
    """Skip (local runs without fixtures) or fail (CI / VG_REQUIRE_GOLDEN=1)."""
    if golden_required():
        pytest.fail(f"{reason} (golden fixtures are required: CI or VG_REQUIRE_GOLDEN=1 is set)", pytrace=False)
    pytest.skip(reason)


def read_spec(folder: Path) -> dict:
    return json.loads((Path(folder) / "spec.json").read_text())


def _is_transforms(folder: Path) -> bool:
    return folder.name.startswith("transforms") or folder.parent.name.startswith("transforms")


def model_cases(method: str, root: Optional[Path] = None) -> list:
    """Every ``<root>/<method>/<case>/`` whose spec.json has a non-empty state-dict layout."""
    d = Path(root or golden_root()) / method
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        if p.is_dir() and (p / "spec.json").is_file() and not _is_transforms(p) and read_spec(p).get("state_dict"):
            out.append(p)
    return out


def transform_cases(root: Optional[Path] = None) -> list:
    """Every data-pipeline case: ``<root>/<method>/transforms*/spec.json`` (or one level deeper)."""
    root = Path(root or golden_root())
    if not root.is_dir():
        return []
    found = set(root.glob("*/transforms*/spec.json")) | set(root.glob("*/transforms*/*/spec.json"))
    return sorted(p.parent for p in found)


def case_id(folder: Path) -> str:
    """pytest id: the case folder name (``<method>/<folder>`` for data-pipeline cases, all named transforms)."""
    folder = Path(folder)
    return f"{folder.parent.name}/{folder.name}" if _is_transforms(folder) else folder.name


def params(folders: Iterable[Path], what: str) -> list:
    """pytest parameters (ids = case folder names); one placeholder that skips / fails when none exist."""
    folders = list(folders)
    if folders:
        return [pytest.param(f, id=case_id(f)) for f in folders]
    return [pytest.param(None, id=f"no-{what}-cases")]


def require_case(folder: Optional[Path], what: str) -> Path:
    if folder is None:
        missing_golden(f"no {what} golden cases under {golden_root()} (set VG_GOLDEN_DIR)")
    return folder


# ------------------------------------------------------------------------------------------ loading
def goldenlib():
    """The fixture folder's own ``goldenlib`` module (regenerates the weights from layout + seed)."""
    path = golden_root() / "goldenlib.py"
    if not path.is_file():
        missing_golden(f"{path} not found")
    spec = importlib.util.spec_from_file_location("goldenlib", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_pt(path: Path, default=None):
    if not path.is_file():
        if default is not None:
            return default
        raise FileNotFoundError(path)
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class Case:
    folder: Path
    spec: dict
    inputs: Any
    outputs: dict
    buffers: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.folder.name

    def state_dict(self) -> dict:
        """The official-format state dict (floats regenerated from the layout and seed, buffers stored)."""
        return goldenlib().make_state_dict(self.spec["state_dict"], self.spec["seed"], self.buffers)


def load(folder: Path) -> Case:
    folder = Path(folder)
    return Case(folder=folder, spec=read_spec(folder), inputs=_load_pt(folder / "inputs.pt", {}),
                outputs=_load_pt(folder / "outputs.pt"), buffers=_load_pt(folder / "buffers.pt", {}))


def config_key(name: str) -> str:
    """Spec keys may carry an explanation in parentheses: 'adapt_layer (0-based ...)' -> 'adapt_layer'."""
    return name.split(" (", 1)[0].strip()


def setting_problems(section: dict, expected: dict, where: str = "config") -> list:
    """Compare a spec configuration section with what the implementation does.

    ``expected`` maps a key (spec keys are matched without their parenthesised explanation) to the value the
    model implements, to a nested dict (compared recursively), or to None (accepted, not checked: settings
    that do not change the compared numbers, e.g. training-only options).  A key missing from ``expected``
    is a problem unless its value is a plain description (a string).  Returns readable problem lines naming
    the spec key."""
    problems = []
    for k, v in section.items():
        key = config_key(k)
        if key not in expected:
            if not isinstance(v, str):
                problems.append(f"{where}.{k}: not a setting this implementation knows (value {v!r})")
            continue
        want = expected[key]
        if want is None:
            continue
        if isinstance(want, dict):
            if isinstance(v, dict):
                problems += setting_problems(v, want, f"{where}.{k}")
            else:
                problems.append(f"{where}.{k}: expected a section, the spec has {v!r}")
        elif isinstance(v, str) and isinstance(want, str):
            if v.lower() != want.lower():
                problems.append(f"{where}.{k}: spec {v!r}, the model implements {want!r}")
        elif isinstance(v, float) or isinstance(want, float):
            if not isinstance(v, (int, float)) or abs(v - want) > 1e-12 * max(1.0, abs(want)):
                problems.append(f"{where}.{k}: spec {v!r}, the model implements {want!r}")
        elif (list(v) if isinstance(v, tuple) else v) != (list(want) if isinstance(want, tuple) else want):
            problems.append(f"{where}.{k}: spec {v!r}, the model implements {want!r}")
    return problems


# ------------------------------------------------------------------------------------------ tolerance
def _tol_entry(d) -> Optional[dict]:
    if isinstance(d, dict) and ("atol" in d or "rtol" in d):
        return {"atol": float(d.get("atol", 0.0)), "rtol": float(d.get("rtol", 0.0))}
    return None


def tolerances(spec: dict, name: str) -> list:
    """Every tolerance that applies to output ``name``: the spec's default ``tolerance`` {atol, rtol} and any
    per-output entry, found either inside ``tolerance`` (``{name: {atol, rtol}}``, also under a nested dict
    such as ``per_output``) or in another top-level ``tolerance*`` section (e.g. ``tolerance_strict``).
    Output keys may be glob patterns.  An output must pass all of them."""
    base = spec.get("tolerance") or {}
    out = [("tolerance", {"atol": float(base.get("atol", DEFAULT_TOL["atol"])),
                          "rtol": float(base.get("rtol", DEFAULT_TOL["rtol"]))})]
    sections = [("tolerance", base)] + [(k, v) for k, v in spec.items()
                                        if k.startswith("tolerance") and k != "tolerance" and isinstance(v, dict)]
    for label, sec in sections:
        stack = [(label, sec)]
        while stack:
            where, d = stack.pop()
            for k, v in d.items():
                t = _tol_entry(v)
                if t is not None and (k == name or fnmatch.fnmatchcase(name, k)):
                    out.append((f"{where}.{k}", t))
                elif t is None and isinstance(v, dict):
                    stack.append((f"{where}.{k}", v))
    return out


# ------------------------------------------------------------------------------------------ comparison
class Unproducible:
    """Stands for an output the implementation cannot produce; compares as a failure with ``reason``."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self):
        return f"Unproducible({self.reason!r})"


class Skip:
    """An output deliberately not compared, with the reason (shown in the report, never silent)."""

    def __init__(self, reason: str):
        self.reason = reason


@dataclass
class Row:
    name: str
    shape: str
    err: Optional[float]
    tol: str
    status: str  # "ok", "skipped: ...", or the failure


@dataclass
class Report:
    case: str
    rows: list = field(default_factory=list)

    @property
    def failures(self) -> list:
        return [r for r in self.rows if r.status != "ok" and not r.status.startswith("skipped")]

    def table(self, rows=None) -> str:
        rows = self.rows if rows is None else rows
        head = ("output", "shape", "max abs err", "tolerance", "status")
        cells = [head] + [(r.name, r.shape, "-" if r.err is None else f"{r.err:.3e}", r.tol, r.status) for r in rows]
        w = [max(len(c[i]) for c in cells) for i in range(4)]
        return "\n".join("  ".join(c[i].ljust(w[i]) for i in range(4)) + "  " + c[4] for c in cells)

    def check(self) -> "Report":
        bad = self.failures
        if bad:
            raise AssertionError(f"{self.case}: {len(bad)} of {len(self.rows)} golden outputs failed\n"
                                 + self.table(bad))
        return self


def _shape(x) -> str:
    if torch.is_tensor(x) or isinstance(x, np.ndarray):
        return "x".join(map(str, x.shape)) or "scalar"
    if isinstance(x, (list, tuple)):
        return f"list[{len(x)}]"
    return type(x).__name__


def _merge_compatible(a: tuple, b: tuple) -> bool:
    """True when one shape is the other with dimensions merged (row-major: every boundary of the coarser shape
    is a boundary of the finer one) or with size-1 dimensions added/removed."""
    cuts = lambda s: set(itertools.accumulate([d for d in s if d != 1], operator.mul))  # noqa: E731
    if math.prod(a) != math.prod(b):
        return False
    ca, cb = cuts(a), cuts(b)
    return ca <= cb or cb <= ca


def fit_shape(ours: torch.Tensor, shape: tuple) -> tuple:
    """``ours`` brought to ``shape`` (expand a broadcast, or a merge/singleton reshape); (tensor, note)."""
    shape = tuple(shape)
    if tuple(ours.shape) == shape:
        return ours, ""
    try:
        if torch.broadcast_shapes(tuple(ours.shape), shape) == shape:
            return ours.expand(shape), f"expanded from {_shape(ours)}"
    except RuntimeError:
        pass
    if _merge_compatible(tuple(ours.shape), shape):
        return ours.reshape(shape), f"reshaped from {_shape(ours)}"
    return None, f"shape {_shape(ours)} != golden {'x'.join(map(str, shape)) or 'scalar'}"


def _as_tensor(x):
    if torch.is_tensor(x):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, (bool, int, float, np.number)):
        return torch.tensor(x)
    return None


def _compare_tensor(name, ours, gold, tols, rows):
    gold_t, ours_t = _as_tensor(gold), _as_tensor(ours)
    if ours_t is None:
        rows.append(Row(name, _shape(gold), None, "", f"produced a {type(ours).__name__}, golden is a tensor"))
        return
    ours_t, note = fit_shape(ours_t, tuple(gold_t.shape))
    if ours_t is None:
        rows.append(Row(name, _shape(gold), None, "", note))
        return
    exact = not gold_t.is_floating_point()
    g = gold_t.to(torch.float64)
    o = ours_t.to(torch.float64)
    diff = (o - g).abs()
    nan_same = torch.isnan(o) & torch.isnan(g)
    diff = torch.where(nan_same, torch.zeros_like(diff), diff)
    err = float(diff.max()) if diff.numel() else 0.0
    if math.isnan(err) or bool(torch.isnan(diff).any()):
        err = float("nan")
    if exact:
        ok = diff.numel() == 0 or bool((diff == 0).all())
        tol = "exact"
        status = "ok" if ok else f"{int((diff != 0).sum())} of {diff.numel()} values differ"
    else:
        status, tol = "ok", " & ".join(f"atol={t['atol']:g} rtol={t['rtol']:g}" for _, t in tols)
        for label, t in tols:
            limit = t["atol"] + t["rtol"] * g.abs()
            bad = ~(diff <= limit)
            if bool(bad.any()):
                worst = int(torch.argmax(torch.where(bad, diff - limit, torch.full_like(diff, -math.inf))))
                status = (f"exceeds {label} at {int(bad.sum())} of {diff.numel()} values (worst flat index {worst}: "
                          f"ours {o.flatten()[worst].item():.6g}, golden {g.flatten()[worst].item():.6g})")
                break
    rows.append(Row(name, _shape(gold) + (f" ({note})" if note else ""), err, tol, status))


def _compare(name, ours, gold, tols, rows):
    if isinstance(ours, Unproducible):
        rows.append(Row(name, _shape(gold), None, "", f"cannot be produced: {ours.reason}"))
    elif isinstance(ours, Skip):
        rows.append(Row(name, _shape(gold), None, "", f"skipped: {ours.reason}"))
    elif isinstance(gold, str) or isinstance(ours, str):
        rows.append(Row(name, "str", None, "exact", "ok" if ours == gold else f"{ours!r} != golden {gold!r}"))
    elif isinstance(gold, dict):
        if not isinstance(ours, dict):
            rows.append(Row(name, "dict", None, "", f"produced a {type(ours).__name__}, golden is a dict"))
            return
        for k in gold:
            _compare(f"{name}.{k}", ours.get(k, Unproducible(f"no key {k!r}")), gold[k], tols, rows)
    elif isinstance(gold, (list, tuple)) and not (gold and isinstance(gold[0], (int, float, bool))):
        if torch.is_tensor(ours) and len(ours) == len(gold):
            ours = list(ours)
        if not isinstance(ours, (list, tuple)) or len(ours) != len(gold):
            rows.append(Row(name, _shape(gold), None, "", f"produced {_shape(ours)}, golden has {len(gold)} items"))
            return
        for i, (o, g) in enumerate(zip(ours, gold)):
            _compare(f"{name}[{i}]", o, g, tols, rows)
    else:
        _compare_tensor(name, ours, gold, tols, rows)


def compare(produced: dict, case: Case, names: Optional[Iterable[str]] = None, label: str = "") -> Report:
    """Compare ``produced`` with every stored output of ``case`` (or the subset ``names``) and raise one
    AssertionError listing every failure.  Returns the report (all rows, for printing)."""
    report = Report(f"{case.name}{label}")
    for name in (list(case.outputs) if names is None else list(names)):
        ours = produced.get(name, Unproducible("not produced by this implementation"))
        _compare(name, ours, case.outputs[name], tolerances(case.spec, name), report.rows)
    print(f"\n[golden] {report.case}\n{report.table()}")
    return report.check()


def produce_all(names: Iterable[str], rules: Callable[[str], Any]) -> dict:
    """Apply ``rules(name)`` to every name; a rule raising KeyError / LookupError marks it `Unproducible`."""
    out = {}
    for n in names:
        try:
            out[n] = rules(n)
        except LookupError as e:
            out[n] = Unproducible(str(e).strip("'\""))
    return out


def variant_case(template: Path, tmp_path: Path, edit: Callable[[dict, dict, dict], None]) -> Path:
    """A copy of the case ``template`` in ``tmp_path`` whose spec / inputs / outputs ``edit(spec, inputs,
    outputs)`` changes in place (meta-tests: the tests must follow what a case's files say)."""
    dst = tmp_path / (template.name + "_variant")
    dst.mkdir()
    case = load(template)
    edit(case.spec, case.inputs, case.outputs)
    (dst / "spec.json").write_text(json.dumps(case.spec))
    torch.save(case.inputs, dst / "inputs.pt")
    torch.save(case.outputs, dst / "outputs.pt")
    if (template / "buffers.pt").is_file():
        shutil.copy(template / "buffers.pt", dst / "buffers.pt")
    return dst
