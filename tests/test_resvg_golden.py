"""Golden tests: our ResVG against numbers produced by the official code (see $VG_GOLDEN_DIR/resvg/README.md).

Driven by the data: every case folder under golden/resvg whose spec.json carries a state-dict layout is
discovered (the data-pipeline case ``transforms`` is checked by test_golden_transforms.py, the ``full_keys``
layouts by test_resvg_convert.py).  For each case the model is built from spec.json's official config and
compat switches, the official state dict goes through resvg/convert.py, the inputs are passed in the order of
spec.json's ``forward_call``, and every output the case stores is compared by name at the case tolerance
(and at ``tolerance_strict`` where the spec names one).  An output we cannot produce fails with its name.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_GOLDEN = Path(os.environ.get("VG_GOLDEN_DIR", ROOT.parent / "shared" / "golden")) / "resvg"


# ------------------------------------------------------------------------------------------ case helper
def discover_cases(folder: Path) -> list:
    """Case names under ``folder``: sub-folders whose spec.json has a (non-empty) state-dict layout."""
    if not folder.is_dir():
        return []
    out = []
    for d in sorted(folder.iterdir()):
        spec = d / "spec.json"
        if d.is_dir() and spec.is_file() and json.loads(spec.read_text()).get("state_dict"):
            out.append(d.name)
    return out


def fit_to(ours: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Expand a broadcast intermediate (size-1 dims where the stored tensor has more) to the stored shape."""
    if tuple(ours.shape) == tuple(ref.shape) or ours.dim() != ref.dim():
        return ours
    if all(a == b or a == 1 for a, b in zip(ours.shape, ref.shape)):
        return ours.expand_as(ref)
    return ours


def compare_outputs(produced: dict, golden: dict, tol: dict, strict: dict, gl) -> tuple:
    """Compare every golden output by name.  Returns (errors, table rows (name, max_err, limit text))."""
    errors, rows = [], []
    for name, ref in golden.items():
        if not torch.is_tensor(ref):
            continue
        if name not in produced:
            errors.append(f"{name}: output not produced by our implementation")
            continue
        try:
            mine = produced[name]()
        except Exception as e:  # a producer that needs an input the case lacks
            errors.append(f"{name}: cannot be produced ({type(e).__name__}: {e})")
            continue
        mine = fit_to(mine.detach(), ref)
        if tuple(mine.shape) != tuple(ref.shape):
            errors.append(f"{name}: shape {tuple(mine.shape)} != golden {tuple(ref.shape)}")
            continue
        if ref.dtype in (torch.bool, torch.int64, torch.int32, torch.uint8):
            ok = torch.equal(mine.to(ref.dtype), ref)
            rows.append((name, 0.0 if ok else float("nan"), "exact"))
            if not ok:
                errors.append(f"{name}: values differ")
            continue
        err = (mine.float() - ref.float()).abs().max().item() if ref.numel() else 0.0
        checks = [tol] + ([strict[name]] if name in strict else [])
        rows.append((name, err, " & ".join(f"atol {c.get('atol', 0)} rtol {c.get('rtol', 0)}" for c in checks)))
        for c in checks:
            try:
                gl.assert_matches(mine, ref, atol=float(c.get("atol", 0.0)), rtol=float(c.get("rtol", 0.0)), name=name)
            except AssertionError as e:
                errors.append(str(e))
    return errors, rows


def forward_argument_names(spec: dict) -> list:
    """The official positional forward arguments, from spec.json's ``forward_call`` ("model(a, b, ...)")."""
    call = spec["inputs"]["forward_call"]
    m = re.search(r"\((.*)\)", call)
    assert m, f"unreadable forward_call {call!r}"
    return [a.strip() for a in m.group(1).split(",") if a.strip()]


# ------------------------------------------------------------------------------------------ the test
CASES = discover_cases(_GOLDEN)


@pytest.fixture(scope="module")
def goldenlib(golden_dir):
    import goldenlib as gl
    return gl


def _build(spec: dict):
    from resvg.config import COMPAT_ELSEWHERE, MODEL_SWITCHES, config_from_args, config_from_official
    from resvg.model import ResVG

    unknown = sorted(set(spec.get("compat", {})) - set(MODEL_SWITCHES) - set(COMPAT_ELSEWHERE))
    assert not unknown, f"compat switches named by the case but unknown to resvg: {unknown}"
    cfg = config_from_official(spec["config"])
    cfg.update({s: s in spec.get("compat", {}) for s in MODEL_SWITCHES})
    return ResVG(config_from_args(cfg))


def _producers(out: dict, inputs: dict, images: torch.Tensor) -> dict:
    """Golden output name -> how to make it from our outputs (official layouts: sequence-first features)."""
    from resvg.model import boxes_to_original

    it = out["intermediates"]
    return {
        "pred_boxes": lambda: out["pred_boxes"],
        "stage_boxes": lambda: out["stage_boxes"],
        "pred_boxes_orig_xyxy": lambda: boxes_to_original(out["pred_boxes"], images.shape[-2:], inputs["target_dxdy"],
                                                          inputs["target_ratio"], inputs["target_orig_size"]),
        "visual_encoder_output": lambda: it["visual_memory"].transpose(0, 1),
        "pos_embed": lambda: it["pos_embed"].transpose(0, 1),
        "bert_feature": lambda: it["text_feature"],
        "word_feature": lambda: it["word_feature"].transpose(0, 1),
        "verify_score": lambda: it["verify_score"].transpose(0, 1),
        "discriminative_feature": lambda: it["discriminative_feature"].transpose(0, 1),
        "content_query": lambda: it["content_query"].transpose(0, 1),
        "decoder_hs": lambda: it["decoder_hs"],
    }


@pytest.mark.parametrize("case_name", CASES or ["<none>"])
def test_resvg_golden(case_name, golden_dir, goldenlib):
    if case_name == "<none>":
        pytest.skip("no ResVG golden cases found")
    from resvg import convert

    torch.set_float32_matmul_precision("highest")
    case = goldenlib.load_case(_GOLDEN / case_name)
    spec, inputs, golden = case["spec"], case["inputs"], case["outputs"]
    sd, report = convert.convert_resvg_state_dict(case["state_dict"])
    assert report["unmapped"] == [], f"unmapped official keys: {report['unmapped']}"
    model = _build(spec)
    convert.load_into(model, sd)
    model.eval()
    del case["state_dict"], sd

    names = forward_argument_names(spec)
    missing = [n for n in names if n not in inputs]
    assert not missing, f"forward inputs missing from inputs.pt: {missing}"
    args = [inputs[n] for n in names]
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.forward_tensors(*args, return_intermediates=True)
    tol = {k: spec["tolerance"][k] for k in ("atol", "rtol") if k in spec["tolerance"]}
    errors, rows = compare_outputs(_producers(out, inputs, args[0]), golden, tol,
                                   spec.get("tolerance_strict", {}), goldenlib)
    print(f"\n[{case_name}] output, max abs error, tolerance")
    for name, err, lim in rows:
        print(f"  {name:28s} {err:.3e}  ({lim})")
    assert not errors, "\n".join(errors)
