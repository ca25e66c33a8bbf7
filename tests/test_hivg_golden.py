"""Golden tests: our HiVG vs the official implementation's outputs ($VG_GOLDEN_DIR/hivg/<case>/).

Every case folder whose spec.json has a ``state_dict`` layout is discovered (``transforms`` and ``full_keys``
have none).  The model is built from the case's official flags (spec.json config.args), the generated
official state dict goes through hivg.convert, and every tensor of outputs.pt is compared:
  * full-batch outputs with the bridge batch-mixing compat switch ON (the official behaviour);
  * ``*_bs1`` outputs (official code run one sample at a time) with the switch OFF on the whole batch, and
    with the switch ON at batch size 1 (where the quirk is a no-op).
"""
import json
from pathlib import Path

import pytest
import torch

from hivg.convert import convert_official
from hivg.model import build_model

OUR_NAME = {"pred_box": "pred_boxes"}  # golden output name -> our output key (others are identical)


def _cases(golden_dir):
    root = Path(golden_dir) / "hivg"
    if not root.is_dir():
        return []
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        spec = d / "spec.json"
        if spec.exists() and json.loads(spec.read_text()).get("state_dict"):  # transforms/: {} ; full_keys/: none
            out.append(d)
    return out


def _batch(inp):
    """The case inputs as a vgcore Batch (bool masks: pixel_mask True = pad, text_mask True = real token),
    with the raw texts tokenized by vgcore's CLIP BPE (the official forward takes the strings)."""
    from vgcore.data.sample import Batch
    from vgcore.text import build_tokenizer

    B = inp["img"].shape[0]
    ids, mask = build_tokenizer("clip")(list(inp["texts"]))
    assert torch.equal(ids.long(), inp["text_ids"].long()), "CLIP BPE ids differ from the official tokenizer's"
    return Batch(images=inp["img"], pixel_mask=inp["img_mask"].bool(), text_ids=ids, text_mask=mask,
                 boxes=torch.zeros(B, 4), target_boxes=[torch.zeros(1, 4)] * B,
                 num_targets=torch.ones(B, dtype=torch.long), affine=torch.zeros(B, 4, dtype=torch.float64),
                 orig_size=torch.zeros(B, 2, dtype=torch.long), texts=list(inp["texts"]), records=[None] * B)


@pytest.fixture(scope="module")
def results(golden_dir):
    """Per case: convert, build from the official flags, and run
      mix   -- forward_tensors on the whole batch, LoRA unmerged (as peft), batch mixing ON;
      nomix -- model(Batch) on the whole batch after model.merge_lora(), batch mixing OFF;
      bs1   -- (first case only) one sample at a time, merged LoRA, batch mixing ON (a no-op at B = 1)."""
    import goldenlib

    found = _cases(golden_dir)
    if not found:
        pytest.skip("no HiVG golden cases")
    res = []
    for i, d in enumerate(found):
        case = goldenlib.load_case(d)
        args = case["spec"]["config"]["args"]
        sd, info = convert_official(case["state_dict"], mixup=args.get("mixup_pretrain", False))
        del case["state_dict"]
        with torch.device("meta"):
            model = build_model(args)
        model.load_state_dict(sd, strict=True, assign=True)
        model.eval()
        inp = case["inputs"]
        r = {"name": d.name, "case": case, "info": info, "cfg": model.cfg}
        with torch.no_grad():
            model.compat_batch_mixing = True
            r["mix"] = model.forward_tensors(inp["img"], inp["img_mask"], inp["text_ids"])
            assert model.merge_lora() > 0
            model.compat_batch_mixing = False
            r["nomix"] = model(_batch(inp))
            if i == 0:
                model.compat_batch_mixing = True
                r["bs1"] = [model.forward_tensors(inp["img"][b:b + 1], inp["img_mask"][b:b + 1],
                                                  inp["text_ids"][b:b + 1]) for b in range(inp["img"].shape[0])]
        res.append(r)
    return res


def _ours(out, name):
    base = name[:-4] if name.endswith("_bs1") else name
    return out[OUR_NAME.get(base, base)]


def test_cases_discovered(golden_dir):
    assert len(_cases(golden_dir)) >= 1


def test_converter_implies_compat_and_stage(results):
    for r in results:
        info, args = r["info"], r["case"]["spec"]["config"]["args"]
        assert info["compat_batch_mixing"] is True
        assert info["hi_lora_stage"] == args["hi_lora_stage"], r["name"]
        # the converter's shape-based config inference agrees with the official flags
        assert info["config"]["bridge_text_layers"] == r["cfg"].bridge_text_layers, r["name"]
        assert info["config"]["bridge_layers"] == r["cfg"].bridge_layers, r["name"]


def test_full_batch_outputs_with_batch_mixing(results):
    import goldenlib

    for r in results:
        case = r["case"]
        tol = case["spec"].get("tolerance", {})
        names = [k for k in case["outputs"] if not k.endswith("_bs1")]
        assert "pred_box" in names and "fusion_reg_output" in names
        for k in names:
            goldenlib.assert_matches(_ours(r["mix"], k), case["outputs"][k], **tol, name=f"{r['name']}/{k}")


def test_bs1_outputs_without_batch_mixing(results):
    """Switch OFF on the whole batch (merged LoRA, Batch entry point) == the official batch-size-1 runs."""
    import goldenlib

    for r in results:
        case, out = r["case"], r["nomix"]
        tol = case["spec"].get("tolerance", {})
        names = [k for k in case["outputs"] if k.endswith("_bs1")]
        assert names
        for k in names:
            ours = _ours(out, k)
            if k.startswith("logits_per_text"):
                ours = ours.diagonal()  # each bs1 run gives the 1x1 logit of its own pair
            goldenlib.assert_matches(ours, case["outputs"][k], **tol, name=f"{r['name']}/{k}")
        # the switch matters on a batch: the mixed full-batch reg output differs beyond tolerance
        diff = (out["fusion_reg_output"] - case["outputs"]["fusion_reg_output"]).abs().max().item()
        assert diff > tol.get("atol", 1e-4), f"{r['name']}: batch mixing had no effect ({diff})"


def test_batch_size_one_quirk_is_noop(results):
    import goldenlib

    r = results[0]
    case = r["case"]
    tol = case["spec"].get("tolerance", {})
    for k in ("pred_box_bs1", "logits_per_text_bs1", "visu_token_similarity_bs1", "seg_mask_bs1",
              "fusion_reg_output_bs1", "vision_cls_per_layer_bs1"):
        ours = torch.cat([_ours(o, k).reshape(1, *case["outputs"][k].shape[1:]) for o in r["bs1"]], 0)
        goldenlib.assert_matches(ours, case["outputs"][k], **tol, name=f"{r['name']}/{k} (bs1 runs)")
