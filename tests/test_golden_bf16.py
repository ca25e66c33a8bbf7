"""The golden cases under ``--amp bf16``: the same official weights and inputs, the model forward under CPU
bfloat16 autocast (as `vgcore.engine` runs it), the final boxes compared with the stored official float32 ones
at a stated, looser tolerance.  (float32 stays exact to the fixtures' own tolerance: tests/test_*_golden.py.)

Tolerances (bfloat16 keeps 8 significant bits, ~0.4 % relative per rounding; the boxes come out of 12-layer
backbones, the box heads themselves run in float32):
* HiVG ``pred_boxes``, normalised cxcywh of the 224 px input: |error| <= 0.004 (0.9 px) per coordinate
  (measured: 3.3e-4).
* SimVG decoder / token branch boxes in input pixels (640 px): |error| <= 1.5 px per coordinate (measured:
  0.14 px).
"""
from __future__ import annotations

import pytest
import torch

import golden
import test_hivg_golden as hg
import test_simvg_golden as sg
from vgcore.engine import autocast_context, float_outputs

HIVG_ATOL = 0.004  # normalised coordinates
SIMVG_ATOL_PX = 1.5


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
        assert err <= SIMVG_ATOL_PX, f"bf16 {name} differ from the official float32 ones by {err:.2f} px"
        checked += 1
    assert checked, "the case stores no final boxes (pred_bboxes_decoder / pred_bboxes_token)"
