"""The golden cases under ``--amp bf16``: the same official weights and inputs, the model forward under CPU
bfloat16 autocast (as `vgcore.engine` runs it), the final predictions compared with the stored official float32
ones at a stated, looser tolerance.  (float32 stays exact to the fixtures' own tolerance: tests/test_*_golden.py.)
Cases are discovered, built and converted by each method's float32 golden test (its helpers are imported), so a
new case folder is run here too; with no case of a method its test skips or fails as the float32 one does.

Tolerances (bfloat16 keeps 8 significant bits, ~0.4 % relative per rounding; the boxes come out of 12-layer
backbones, the box heads themselves run in float32), about ten times the error measured on the visible cases:
* HiVG ``pred_boxes``, normalised cxcywh of the 224 px input: |error| <= 0.004 (0.9 px) per coordinate
  (measured: 3.3e-4).
* SimVG decoder / token branch boxes in input pixels (640 px): |error| <= 1.5 px per coordinate (measured:
  0.14 px).
* ResVG ``pred_boxes``, normalised cxcywh of the padded 640 px input: |error| <= 0.002 (1.3 px) (measured:
  2.2e-4, 0.14 px); ``pred_boxes_orig_xyxy`` (original pixels) within the same 0.002 x 640 px divided by each
  sample's resize ratio (measured: 0.057 px, against 0.45-0.48 px allowed for the case's ratios of 2.7-2.8).
* ALVG, the predictions of the last decoder layer: ``pred_boxes[-1]`` normalised cxcywh of the 640 px input
  |error| <= 0.002 (measured: 1.4e-4) and ``final_bboxes_xyxy`` <= 0.002 x 640 = 1.28 px (measured: 0.074 px);
  ``final_scores`` <= 0.003 (measured: 3.4e-4); ``final_classes`` equal; the mask head's probabilities
  (``pred_masks``, 160 x 160) <= 0.02 (measured: 2.2e-3) and ``final_mask_<n>_sum`` (the probabilities summed
  after the upsample to n x n) within 1e-3 relative (measured: 6.2e-5).  The share of mask pixels that flip at
  the 0.5 threshold is printed, not bounded: with random weights the probabilities lie within 0.45-0.56 (8 % of
  the pixels within 0.003 of the threshold), so it measures that clustering (2.2 % flip) rather than the
  precision; the probability tolerance bounds which pixels can flip.
* VG-LAW ``pred_box``, normalised cxcywh of the padded 448 px input: |error| <= 0.006 (2.7 px) (measured:
  7.5e-4, 0.34 px); ``logit_mask`` binarised at sigmoid > ``mask_threshold`` (0.35): at most 3 % of the
  448 x 448 pixels flip (measured: 0.46 %), and the logits within 10 % of the largest |golden logit| (measured:
  0.17 on logits up to 8.6, 1.9 %; the mask path runs in bfloat16).
"""
from __future__ import annotations

import pytest
import torch

import golden
import test_alvg_golden as ag
import test_hivg_golden as hg
import test_resvg_golden as rg
import test_simvg_golden as sg
import test_vglaw_golden as vg
from vgcore.engine import autocast_context, float_outputs

HIVG_ATOL = 0.004  # normalised coordinates
SIMVG_ATOL_PX = 1.5
RESVG_ATOL = 0.002  # normalised coordinates of the padded input
ALVG_ATOL = 0.002  # normalised coordinates (final_bboxes_xyxy: times the input size in pixels)
ALVG_SCORE_ATOL = 0.003
ALVG_MASK_PROB_ATOL = 0.02
ALVG_MASK_SUM_RTOL = 1e-3
VGLAW_ATOL = 0.006  # normalised coordinates of the padded input
VGLAW_MASK_FLIP = 0.03  # share of the mask pixels
VGLAW_LOGIT_RTOL = 0.1  # of the largest |golden logit|


def _bf16(fn):
    with torch.no_grad(), autocast_context("bf16", "cpu"):
        return float_outputs(fn())


@pytest.mark.parametrize("folder", hg.CASES)
def test_hivg_golden_boxes_under_bf16(folder):
    folder = golden.require_case(folder, "HiVG")
    case = golden.load(folder)
    args = dict(case.spec["config"]["args"])
    cfg = hg.config_from_any(args)
    sd, _ = hg.convert_official(case.state_dict(), mixup=bool(args.get("mixup_pretrain", False)))
    with torch.device("meta"):
        model = hg.build_model(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    model.eval()
    for name, official in hg._compat_switches(case.spec).items():
        setattr(model.cfg, hg._switch_field(name, cfg), official)
    inp = case.inputs
    ids, _ = hg._texts_to_ids(inp["texts"], cfg.context_length, inp.get("text_ids"))
    out = _bf16(lambda: model.forward_tensors(inp["img"], inp["img_mask"], ids))
    assert out["pred_boxes"].dtype == torch.float32
    gold = case.outputs["pred_box"].float()
    err = (out["pred_boxes"] - gold).abs().max().item()
    print(f"\n[{folder.name}] bf16 pred_boxes max abs error {err:.3e} normalised (tolerance {HIVG_ATOL})")
    assert err <= HIVG_ATOL, f"bf16 pred_boxes differ from the official float32 ones by {err:.4f} > {HIVG_ATOL}"


SIMVG_CASES = golden.params([f for f in golden.model_cases("simvg") if sg._kind(golden.read_spec(f)) == "checkpoint"],
                            "SimVG checkpoint")


@pytest.mark.parametrize("folder", SIMVG_CASES)
def test_simvg_golden_boxes_under_bf16(folder):
    folder = golden.require_case(folder, "SimVG")
    case = golden.load(folder)
    spec, inp = case.spec, case.inputs
    sd, report = sg.convert.convert_simvg_state_dict(case.state_dict())
    cfg_dict = sg.convert.config_from_official(spec["config"]["model_cfg"])
    switches, _ = sg._compat(spec, sg.config_from_args(cfg_dict), report["compat"])
    cfg_dict.update(switches)
    with torch.device("meta"):
        model = sg.build_model(cfg_dict)
    sg.convert.load_into(model, sd, assign=True)
    model.eval()
    img = sg._image(inp)
    out = _bf16(lambda: model.forward_tensors(img, inp["ref_expr_inds"], inp["text_attention_mask"], branch="both"))
    hw, grec = sg._frame_hw(inp, img), sg._is_grec(inp)
    checked = 0
    for branch, (logits, boxes) in {"decoder": (out["decoder_logits"][-1], out["decoder_boxes"][-1]),
                                    "token": (out["token_logits"], out["token_boxes"])}.items():
        name = f"pred_bboxes_{branch}"
        if name not in case.outputs:
            continue
        ours, _ = sg._predictions(logits, boxes, hw, grec, case.outputs[name])
        gold = case.outputs[name]
        ours = torch.cat(list(ours)) if isinstance(ours, (list, tuple)) else ours
        gold = torch.cat(list(gold)) if isinstance(gold, (list, tuple)) else gold
        err = (ours.float().reshape(gold.shape) - gold.float()).abs().max().item()
        print(f"\n[{folder.name}] bf16 {name} max abs error {err:.3f} px (tolerance {SIMVG_ATOL_PX})")
        assert err <= SIMVG_ATOL_PX, f"bf16 {name} differ from the official float32 ones by {err:.2f} px"
        checked += 1
    assert checked, "the case stores no final boxes (pred_bboxes_decoder / pred_bboxes_token)"


def _maxerr(ours, gold) -> float:
    """Max abs difference; per-sample lists (GREC) item by item (a different number of boxes is infinite)."""
    if isinstance(gold, (list, tuple)):
        if not isinstance(ours, (list, tuple)) or len(ours) != len(gold) or \
                any(o.numel() != g.numel() for o, g in zip(ours, gold)):
            return float("inf")
        return max([_maxerr(o, g) for o, g in zip(ours, gold) if g.numel()], default=0.0)
    return (ours.double().reshape(gold.shape) - gold.double()).abs().max().item()


def _flipped(ours: torch.Tensor, gold: torch.Tensor) -> float:
    """Share of the pixels whose binarised value differs (both bool, same number of values)."""
    return (ours.reshape(gold.shape) != gold).double().mean().item()


@pytest.mark.parametrize("case_name", rg.CASES or ["<none>"])
def test_resvg_golden_boxes_under_bf16(case_name, golden_dir):
    if case_name == "<none>":
        pytest.skip("no ResVG golden cases found")
    import goldenlib
    from resvg import convert

    torch.set_float32_matmul_precision("highest")
    case = goldenlib.load_case(rg._GOLDEN / case_name)
    spec, inputs, gold = case["spec"], case["inputs"], case["outputs"]
    sd, report = convert.convert_resvg_state_dict(case.pop("state_dict"))
    assert report["unmapped"] == [], f"unmapped official keys: {report['unmapped']}"
    model = rg._build(spec)
    convert.load_into(model, sd)
    model.eval()
    del sd
    args = [inputs[n] for n in rg.forward_argument_names(spec)]
    out = _bf16(lambda: model.forward_tensors(*args, return_intermediates=True))
    assert out["pred_boxes"].dtype == torch.float32
    produce = rg._producers(out, inputs, args[0])
    print(f"\n[{case_name}] bf16 max abs error")
    checked = 0
    if "pred_boxes" in gold:
        err = _maxerr(produce["pred_boxes"](), gold["pred_boxes"])
        print(f"  pred_boxes {err:.3e} (normalised; tolerance {RESVG_ATOL})")
        assert err <= RESVG_ATOL, f"bf16 pred_boxes differ from the official float32 ones by {err:.4f} > {RESVG_ATOL}"
        checked += 1
    if "pred_boxes_orig_xyxy" in gold:
        # original pixels: the canvas tolerance in pixels divided by each sample's resize ratio
        H, W = args[0].shape[-2:]
        ratio = inputs["target_ratio"].double()  # (ratio_h, ratio_w)
        lim = RESVG_ATOL * torch.stack([W / ratio[:, 1], H / ratio[:, 0]] * 2, 1)
        diff = (produce["pred_boxes_orig_xyxy"]().double() - gold["pred_boxes_orig_xyxy"].double()).abs()
        print(f"  pred_boxes_orig_xyxy {diff.max().item():.3e} px (tolerance per sample "
              f"{lim[:, 0].tolist()} px)")
        assert bool((diff <= lim).all()), f"bf16 pred_boxes_orig_xyxy differ by {diff.max().item():.2f} px"
        checked += 1
    assert checked, "the case stores no final boxes (pred_boxes / pred_boxes_orig_xyxy)"


# ALVG outputs that are predictions (the rest of a case's outputs are intermediates and losses)
ALVG_PREDICTIONS = ("pred_boxes", "final_bboxes_xyxy", "final_scores", "final_classes", "pred_masks")
_ALVG_MASK_SUM = ag._MASK_SUM


@pytest.mark.parametrize("folder", ag.CASES)
def test_alvg_golden_predictions_under_bf16(folder):
    folder = golden.require_case(folder, "ALVG")
    case = golden.load(folder)
    switches, problems = ag.settings(case)
    assert not problems, "spec settings the model does not honour:\n  " + "\n  ".join(problems)
    spec, inp = case.spec, case.inputs
    sd, report = ag.convert.convert_alvg_state_dict(case.state_dict())
    assert report["unmapped"] == [], f"unmapped official keys: {report['unmapped']}"
    with torch.device("meta"):
        model = ag.build_model(dict(ag.convert.config_from_official(spec["config"]["model"]), **switches))
    ag.convert.load_into(model, sd, assign=True)
    model.eval()
    del sd
    img = ag._image(inp)
    hw = ag._frame_hw(inp, img)
    torch.manual_seed(0)
    out = _bf16(lambda: model.forward_tensors(img, inp["ref_expr_inds"], inp["text_attention_mask"],
                                              return_intermediates=True))
    assert out["decoder_boxes"].dtype == torch.float32
    names = [n for n in case.outputs if n in ALVG_PREDICTIONS or _ALVG_MASK_SUM.match(n)]
    ours = ag.produce({"out": out, "hw": hw, "grec": ag._is_grec(inp), "loss": None}, names)
    gold = case.outputs
    print(f"\n[{folder.name}] bf16 error")
    fails = []

    def check(name, err, tol, unit):
        print(f"  {name} {err:.3e} {unit} (tolerance {tol})")
        if not err <= tol:
            fails.append(f"{name}: {err:.4g} {unit} > {tol}")

    if "pred_boxes" in names:  # the last decoder layer is the prediction, the others train as auxiliaries
        check("pred_boxes[-1]", _maxerr(ours["pred_boxes"][-1], gold["pred_boxes"][-1]), ALVG_ATOL, "normalised")
    if "final_bboxes_xyxy" in names:
        check("final_bboxes_xyxy", _maxerr(ours["final_bboxes_xyxy"], gold["final_bboxes_xyxy"]),
              ALVG_ATOL * max(hw), f"px of {hw[1]}x{hw[0]}")
    if "final_scores" in names:
        check("final_scores", _maxerr(ours["final_scores"], gold["final_scores"]), ALVG_SCORE_ATOL, "")
    if "final_classes" in names:
        o, g = ours["final_classes"], gold["final_classes"]
        o = torch.cat(list(o)) if isinstance(o, (list, tuple)) else o
        g = torch.cat(list(g)) if isinstance(g, (list, tuple)) else g
        if not torch.equal(o.reshape(g.shape).to(g.dtype), g):
            fails.append("final_classes differ")
    if "pred_masks" in names:
        probs = out["mask_probs"]
        g = gold["pred_masks"].float()
        g = g if model.head.mask_head.sigmoid_output else g.sigmoid()
        check("mask probabilities", _maxerr(probs, g), ALVG_MASK_PROB_ATOL, "")
        print(f"  mask pixels flipped at 0.5: {_flipped(probs > 0.5, g > 0.5):.3e} of the pixels (not bounded; "
              f"golden probabilities {g.min().item():.3f}..{g.max().item():.3f})")
    for n in names:
        if _ALVG_MASK_SUM.match(n):
            g = gold[n].double()
            check(n, ((ours[n].double() - g).abs() / g.abs().clamp(min=1.0)).max().item(), ALVG_MASK_SUM_RTOL,
                  "relative")
    assert any(n in names for n in ("pred_boxes", "final_bboxes_xyxy")), \
        "the case stores no final boxes (pred_boxes / final_bboxes_xyxy)"
    assert not fails, "bf16 predictions differ from the official float32 ones:\n  " + "\n  ".join(fails)


@pytest.mark.parametrize("case_name", vg.CASES or ["<none>"])
def test_vglaw_golden_predictions_under_bf16(case_name, golden_dir):
    if case_name == "<none>":
        pytest.skip("no VG-LAW golden cases found")
    import goldenlib

    case = goldenlib.load_case(golden_dir / "vglaw" / case_name)
    spec, inp, gold = case["spec"], case["inputs"], case["outputs"]
    model = vg._build(spec, case.pop("state_dict"))
    images = inp["images"].float()
    out = _bf16(lambda: model(images, inp["input_ids"], inp["attention_mask"], inp.get("token_type_ids")))
    print(f"\n[{case_name}] bf16 error")
    fails, checked = [], 0
    if "pred_box" in gold:
        err = _maxerr(vg.produce("pred_box", out, {}), gold["pred_box"])
        print(f"  pred_box {err:.3e} normalised (tolerance {VGLAW_ATOL})")
        if not err <= VGLAW_ATOL:
            fails.append(f"pred_box: {err:.4g} > {VGLAW_ATOL}")
        checked += 1
    if "logit_mask" in gold:
        thr = model.cfg.mask_threshold
        ours, g = out["logit_mask"].float(), gold["logit_mask"].float()
        flip = _flipped(ours.sigmoid() > thr, g.sigmoid() > thr)
        err, lim = _maxerr(ours, g), VGLAW_LOGIT_RTOL * g.abs().max().item()
        print(f"  logit_mask {err:.3e} (tolerance {lim:.3f}: |logits| up to {g.abs().max().item():.2f}); "
              f"pixels flipped at sigmoid > {thr}: {flip:.3e} (tolerance {VGLAW_MASK_FLIP})")
        if not flip <= VGLAW_MASK_FLIP:
            fails.append(f"logit_mask: {flip:.4g} of the pixels flipped > {VGLAW_MASK_FLIP}")
        if not err <= lim:
            fails.append(f"logit_mask: {err:.4g} > {lim:.4g}")
        checked += 1
    assert checked, "the case stores no final prediction (pred_box / logit_mask)"
    assert not fails, "bf16 predictions differ from the official float32 ones:\n  " + "\n  ".join(fails)
