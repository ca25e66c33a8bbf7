"""Golden tests: our SimVG against numbers produced by the official code (see $VG_GOLDEN_DIR/simvg/README.md).

Every case folder under golden/simvg whose spec.json carries a state-dict layout is discovered (the data
pipeline case ``transforms`` and the ``full_keys`` layouts are tested elsewhere).  The model is built from the
case's official config, the official state dict goes through simvg/convert.py, the compat switches are the
ones spec.json names, and every output and intermediate is compared at the spec tolerance.
"""
import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_GOLDEN = Path(os.environ.get("VG_GOLDEN_DIR", ROOT.parent / "shared" / "golden")) / "simvg"


def _cases():
    if not _GOLDEN.is_dir():
        return []
    out = []
    for d in sorted(_GOLDEN.iterdir()):
        spec = d / "spec.json"
        if d.is_dir() and spec.exists() and json.loads(spec.read_text()).get("state_dict"):
            out.append(d.name)
    return out


CASES = _cases()


def _kind(spec):
    keys = spec["state_dict"]
    if any(k.startswith("vis_enc.") for k in keys):
        return "simvg"
    if any(k.startswith("beit3.") for k in keys):
        return "beit3_pretrained"
    raise AssertionError(f"{spec['case']}: unknown state-dict layout")


@pytest.fixture(scope="module")
def goldenlib(golden_dir):
    import goldenlib as gl
    return gl


@pytest.mark.parametrize("case_name", CASES or ["<none>"])
def test_simvg_golden(case_name, golden_dir, goldenlib):
    if case_name == "<none>":
        pytest.skip("no SimVG golden cases found")
    case = goldenlib.load_case(golden_dir / "simvg" / case_name)
    spec = case["spec"]
    tol = {k: spec["tolerance"][k] for k in ("atol", "rtol") if k in spec["tolerance"]}
    if _kind(spec) == "simvg":
        _check_full_model(case, tol, goldenlib)
    else:
        _check_pretrained_init(case, tol, goldenlib)


def _check_full_model(case, tol, gl):
    from simvg import convert
    from simvg.model import build_model, postprocess_rec

    spec, inp, gold = case["spec"], case["inputs"], case["outputs"]
    sd, report = convert.convert_simvg_state_dict(case["state_dict"])
    assert report["unmapped"] == [], report["unmapped"]
    compat = report["compat"]
    assert set(compat) <= set(spec["compat"]), f"compat switches {set(compat) - set(spec['compat'])} not in spec"
    cfg = convert.config_from_official(spec["config"]["model_cfg"])
    cfg.update(compat)
    with torch.device("meta"):
        model = build_model(cfg)
    convert.load_into(model, sd, assign=True)
    model.eval()
    del case["state_dict"], sd

    img = (inp["img_u8"].float() - inp["img_mean"][:, None, None]) / inp["img_std"][:, None, None]
    text_pad = inp["text_attention_mask"]  # int64, 1 = pad (official dtype)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.forward_tensors(img, inp["ref_expr_inds"], text_pad, branch="both", return_intermediates=True)
    it = out["intermediates"]
    H, W = img.shape[-2:]
    dec = postprocess_rec(out["decoder_logits"][-1], out["decoder_boxes"][-1], (H, W))
    tok = postprocess_rec(out["token_logits"], out["token_boxes"], (H, W))
    B, Q = out["pred_logits"].shape[:2]
    img_tokens = it["beit3_img_tokens"]
    pos = it["pos_embed_2d"][0]
    ours = {
        "pred_bboxes_decoder": dec["boxes_xyxy"],
        "pred_bboxes_token": tok["boxes_xyxy"],
        "predict_classes_decoder": out["decoder_logits"][-1][..., :-1].argmax(-1).flatten(),
        "predict_classes_token": out["token_logits"][..., :-1].argmax(-1).flatten(),
        "decoder_pred_boxes": out["decoder_boxes"],
        "decoder_pred_logits": out["decoder_logits"],
        "token_pred_boxes": out["token_boxes"][None],
        "token_pred_logits": out["token_logits"][None],
        "decoder_scores": dec["scores"],
        "token_scores": tok["scores"],
        "beit3_cls_token": it["beit3_cls"],
        "beit3_text_tokens": it["beit3_text_tokens"],
        "beit3_img_tokens_first4": img_tokens[:, :4],
        "beit3_img_tokens_mean": img_tokens.mean(1),
        "beit3_img_tokens_l2": img_tokens.norm(dim=-1),
        "text_feat_proj": it["text_feat_proj"],
        "text_feat_filter": it["text_feat_filter"],
        "text_pos_embed_1d": it["text_pos_embed_1d"],
        "tgqg_out": it["tgqg_out"].transpose(0, 1)[None],          # official: [1, Q, B, C], sequence-first
        "query_embed": it["query_embed"],
        "token_features": it["token_features"],
        "decoder_hidden_states": it["decoder_hidden_states"],
        "img_mask": it["img_mask"],
        "pos_embed_2d_ch0_3_128_131": torch.cat([pos[0:4], pos[128:132]]),
    }
    missing = sorted(set(gold) - set(ours))
    assert not missing, f"golden outputs not produced: {missing}"
    errors = []
    for name, ref in gold.items():
        mine = ours[name]
        if ref.dtype in (torch.bool, torch.int64, torch.int32):
            if not torch.equal(mine.to(ref.dtype), ref):
                errors.append(f"{name}: {mine.tolist()} != {ref.tolist()}")
            continue
        try:
            gl.assert_matches(mine, ref, name=name, **tol)
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)


def _check_pretrained_init(case, tol, gl):
    from simvg import convert
    from simvg.model import config_from_args

    spec, inp, gold = case["spec"], case["inputs"], case["outputs"]
    vis = spec["config"]["vis_enc_cfg"]
    cfg = config_from_args({"backbone": vis["vit_type"], "img_size": inp["img_size"], "patch_size": inp["patch_size"],
                            "vocab_size": vis["vocab_size"]})
    src = case["state_dict"]
    ckpt = {inp["pretrained_key"]: src}
    ours, report = convert.convert_beit3_pretrained(ckpt, cfg)
    assert report["ignored"] == []
    prefix = inp["target_prefix"]
    checked = set()
    for name, ref in gold.items():
        key, _, sl = name.partition("[")
        mine = ours[convert.map_key(key)]
        if sl:
            stop = int(sl.rstrip("]").lstrip(":"))
            mine = mine[:stop]
        gl.assert_matches(mine, ref, name=name, **tol)
        checked.add(key)
    # every other key: copied unchanged under the SimVG prefix
    for k, v in src.items():
        official = prefix + k
        if official in checked:
            continue
        assert torch.equal(ours[convert.map_key(official)], v), k
    # and the result loads strictly into the backbone of a SimVG model of that geometry
    from simvg.model import SimVG
    with torch.device("meta"):
        model = SimVG(cfg)
    own = {k: v for k, v in model.state_dict().items() if k.startswith("beit3.")}
    assert set(own) == set(ours), (sorted(set(own) - set(ours)), sorted(set(ours) - set(own)))
    for k, v in ours.items():
        assert tuple(v.shape) == tuple(own[k].shape), k
