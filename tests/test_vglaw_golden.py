"""Golden tests: our VG-LAW against numbers produced by the official MindSpore code ($VG_GOLDEN_DIR/vglaw).

Driven by the data: every case folder under golden/vglaw whose spec.json carries a state-dict layout is
discovered (the data-pipeline case ``transforms`` and the ``full_keys`` layouts are tested elsewhere).  The
model is built from the case's ``config`` plus the compat switches its ``compat`` section names, the official
state dict goes through vglaw/convert.py, and every output listed in outputs.pt is compared by name at the
spec tolerance.  An output the test cannot produce fails with its name.

Name conventions understood by `produce`: a name our model returns directly; ``<name>_c<a>_<b>`` = channels
a..b (inclusive) of ``<name>`` (dim 1); ``mask_logits_<n>`` = the mask logits before the final upsample at
n x n; ``probe_abs_pos`` = the absolute-position resize applied to the input ``probe_pos_embed``.  A stored
output with more leading entries than ours along a broadcast dim (size 1) is compared after expanding.
"""
import json
import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_GOLDEN = Path(os.environ.get("VG_GOLDEN_DIR", ROOT.parent / "shared" / "golden")) / "vglaw"


def discover_cases(root: Path):
    """Case folders under ``root`` whose spec.json has a non-empty state_dict layout."""
    if not root.is_dir():
        return []
    out = []
    for spec in sorted(root.glob("*/spec.json")):
        if json.loads(spec.read_text()).get("state_dict"):
            out.append(spec.parent.name)
    return out


CASES = discover_cases(_GOLDEN)


# ------------------------------------------------------------------------------------- compare-by-name helper
def _as_tensor(v):
    if isinstance(v, (list, tuple)):
        return torch.stack(list(v))
    return v


def produce(name: str, ours: dict, extra: dict):
    """Our tensor for a golden output name (see module docstring), or raise KeyError(name)."""
    if name in ours:
        return _as_tensor(ours[name])
    if name in extra:
        return extra[name]()
    m = re.fullmatch(r"(.+)_c(\d+)_(\d+)", name)
    if m:
        base = produce(m.group(1), ours, extra)
        return base[:, int(m.group(2)):int(m.group(3)) + 1]
    raise KeyError(name)


def expand_to(mine: torch.Tensor, shape) -> torch.Tensor:
    """Expand broadcast (size-1) dims of ``mine`` to the stored shape; other shapes are returned unchanged."""
    shape = tuple(shape)
    if tuple(mine.shape) == shape or mine.ndim != len(shape):
        return mine
    if all(a == b or a == 1 for a, b in zip(mine.shape, shape)):
        return mine.expand(shape)
    return mine


def compare_by_name(gold: dict, ours: dict, extra: dict, gl, atol: float, rtol: float):
    """Compare every golden output by name.  Returns (errors, per-output max abs error)."""
    errors, stats = [], {}
    for name, ref in gold.items():
        if not torch.is_tensor(ref):
            continue
        try:
            mine = produce(name, ours, extra)
        except KeyError:
            errors.append(f"{name}: output not produced by our model")
            continue
        mine = expand_to(mine.detach(), ref.shape)
        if not ref.is_floating_point():
            if not torch.equal(mine.to(ref.dtype), ref):
                errors.append(f"{name}: integer output differs")
            continue
        if mine.shape == ref.shape:
            stats[name] = (mine.float() - ref.float()).abs().max().item()
        try:
            gl.assert_matches(mine, ref, atol=atol, rtol=rtol, name=name)
        except AssertionError as e:
            errors.append(str(e))
    return errors, stats


# ------------------------------------------------------------------------------------- the test
@pytest.fixture(scope="module")
def goldenlib(golden_dir):
    import goldenlib as gl
    return gl


def _build(spec, state_dict):
    from vglaw import convert
    from vglaw.model import build_model

    sd, report = convert.convert_vglaw_state_dict(state_dict)
    assert report["unmapped"] == [], report["unmapped"]
    cfg = convert.config_from_official(spec["config"])
    for official, ours in convert.COMPAT_FROM_SPEC.items():
        if official in spec.get("compat", {}):
            cfg[ours] = True
    model = build_model(cfg)  # on CPU: BERT's non-persistent buffers (position ids) must hold real values
    convert.load_into(model, sd)
    return model.eval()


@pytest.mark.parametrize("case_name", CASES or ["<none>"])
def test_vglaw_golden(case_name, golden_dir, goldenlib):
    if case_name == "<none>":
        pytest.skip("no VG-LAW golden cases found")
    case = goldenlib.load_case(golden_dir / "vglaw" / case_name)
    spec, inp, gold = case["spec"], case["inputs"], case["outputs"]
    tol = {k: spec.get("tolerance", {}).get(k, d) for k, d in (("atol", 1e-4), ("rtol", 1e-3))}
    model = _build(spec, case.pop("state_dict"))
    with torch.no_grad():
        out = model(inp["images"].float(), inp["input_ids"], inp["attention_mask"], inp.get("token_type_ids"))
    low = out.get("mask_logits_low")
    extra = {}
    if low is not None:
        extra[f"mask_logits_{low.shape[-1]}"] = lambda: low
    if "probe_pos_embed" in inp:
        grid = model.visual_encoder.grid
        extra["probe_abs_pos"] = lambda: model.visual_encoder.abs_pos(inp["probe_pos_embed"].float(), grid)
    ours = {**out, "vit_final_features": out["vit_features"]}
    errors, stats = compare_by_name(gold, ours, extra, goldenlib, **tol)
    for name, err in sorted(stats.items()):
        print(f"{case_name}/{name}: max abs err {err:.2e} (atol {tol['atol']:g}, rtol {tol['rtol']:g})")
    assert not errors, "\n".join(errors)


def test_helper_fails_missing_output_by_name(goldenlib):
    gold = {"pred_box": torch.zeros(2, 4), "not_a_thing": torch.zeros(1)}
    errors, _ = compare_by_name(gold, {"pred_box": torch.zeros(2, 4)}, {}, goldenlib, 1e-4, 1e-3)
    assert errors == ["not_a_thing: output not produced by our model"]
    errors, _ = compare_by_name({"x_c0_1": torch.ones(2, 2, 3)}, {"x": torch.ones(2, 5, 3)}, {}, goldenlib, 1e-4, 1e-3)
    assert errors == []
    errors, _ = compare_by_name({"y": torch.ones(3, 2, 4)}, {"y": torch.ones(3, 1, 4)}, {}, goldenlib, 1e-4, 1e-3)
    assert errors == []
    errors, _ = compare_by_name({"y": torch.ones(3)}, {"y": torch.zeros(3)}, {}, goldenlib, 1e-4, 1e-3)
    assert len(errors) == 1 and errors[0].startswith("y:")


@pytest.mark.parametrize("case_name", CASES or ["<none>"])
def test_vglaw_golden_text_ids(case_name, golden_dir, request):
    """The case's token ids come back from its raw expressions through our BERT WordPiece tokenizer
    (bert-base-uncased vocab rebuilt by the ``bert_base_vocab`` fixture), padded to the configured length."""
    if case_name == "<none>":
        pytest.skip("no VG-LAW golden cases found")
    folder = golden_dir / "vglaw" / case_name
    spec = json.loads((folder / "spec.json").read_text())
    inp = torch.load(folder / "inputs.pt", weights_only=False)
    if "raw_text" not in inp:
        pytest.skip(f"{case_name}: no raw_text input")
    from vgcore.text import BertWordPieceTokenizer
    tok = BertWordPieceTokenizer(request.getfixturevalue("bert_base_vocab"), max_len=int(spec["config"].get("max_len", 40)))
    ids, mask = tok(list(inp["raw_text"]))
    assert torch.equal(ids, inp["input_ids"].long())
    assert torch.equal(mask.long(), inp["attention_mask"].long())
