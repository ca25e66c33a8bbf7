"""Golden tests: our SimVG against numbers produced by the official code ($VG_GOLDEN_DIR/simvg/<case>/).

Driven by the fixtures: every case folder with a state-dict layout is run (pytest id = folder name).
  * A SimVG checkpoint layout (``vis_enc.*`` keys): the model is built from the case's official mmcv config
    (``config.model_cfg``: backbone size, image/patch size, number of queries = REC or GREC head, head depths),
    every other configuration entry is checked against the built model (a setting the model cannot honour
    fails naming its key), the official state dict goes through `simvg.convert`, the compat switches the spec
    lists are turned on, and every output is compared by name.  REC or GREC post-processing follows the
    official rule: GREC when the image metas carry a ``target``.
  * A BEiT-3 pretrained layout (``beit3.*`` keys only): the initialisation of a SimVG model from it; every
    named output tensor (a state-dict entry, optionally sliced) is compared and every other key must be
    copied unchanged.
Every ``full_keys`` layout converts with no unmapped key and loads strictly.  Meta-tests build variant cases
(renamed output, one sample, a subset of outputs, an unknown setting) in a temporary folder.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch

import golden
from simvg_family import beit3_encoder_expected
from simvg import convert
from simvg.model import build_model, config_from_args, postprocess_rec

CASES = golden.params(golden.model_cases("simvg"), "SimVG model")


def _kind(spec) -> str:
    keys = spec["state_dict"]
    if any(k.startswith(("vis_enc.", "module.vis_enc.")) for k in keys):
        return "checkpoint"
    if any(k.startswith("beit3.") for k in keys):
        return "beit3_pretrained"
    raise AssertionError(f"{spec.get('case')}: a state-dict layout this test does not know (neither a SimVG "
                         "checkpoint nor a BEiT-3 pretrained dict)")


# ------------------------------------------------------------------------------------------ configuration
def _head_expected(cfg) -> dict:
    train_only = ("decoder_freeze", "aux_loss", "branch_loss_weight", "distill_type", "prepare_target_mode",
                  "mlp_aux_loss", "num_encoder_layers", "score_attn_loss_weight", "decoder_attn_loss_weight")
    return dict(dict.fromkeys(train_only), type="TextGuidedQuerySelectKDDETRHead", num_queries=cfg.num_queries,
                text_max_token=cfg.max_text_len, in_channels=cfg.beit3().embed_dim, embed_dim=cfg.embed_dim,
                num_classes=cfg.num_classes, num_decoder_layers=cfg.num_decoder_layers, only_decoder=True,
                text_embed_aug=False, share_predicthead=cfg.share_predicthead,
                num_token_mlp_layers=cfg.num_token_mlp_layers,
                text_guided_query_generation=cfg.text_guided_query_generation, num_tgqg_layers=cfg.num_tgqg_layers,
                tgqs_mid_dim=cfg.tgqg_ffn_dim)


def _vis_expected(cfg) -> dict:
    return dict(type="BEIT3", img_size=cfg.img_size, patch_size=cfg.patch_size, vit_type=cfg.backbone,
                vocab_size=cfg.vocab_size, drop_path_rate=None, freeze_layer=None,
                vision_embed_proj_interpolate=None, pretrain=None)


def _expected(cfg) -> dict:
    head, vis = _head_expected(cfg), _vis_expected(cfg)
    return {
        "model_cfg": {"type": "MIXDETRMB", "vis_enc": vis, "head": head, "lan_enc": None, "fusion": None},
        "head_cfg": head, "vis_enc_cfg": vis, "img_size": cfg.img_size, "patch_size": cfg.patch_size,
        "max_token": cfg.max_text_len, "num_queries": cfg.num_queries,
        "beit3_encoder_config": beit3_encoder_expected(cfg.beit3()), "beit3_encoder_args": beit3_encoder_expected(cfg.beit3()),
        # the data pipeline and normalisation are checked by the transforms cases; the model reads the stored input
        "img_norm_cfg": None, "val_pipeline": None, "train_pipeline": None, "test_pipeline": None, "config_file": None,
        "beit3_pretrained_checkpoint": None, "dataset": None,
        "score_threshold": None,  # GREC: applied by the metric, not by the model's post-processing
    }


def _none_sections(section: dict, problems: list):
    for k in ("lan_enc", "fusion"):
        if section.get(k) is not None:
            problems.append(f"config.model_cfg.{k}: {section[k]!r} (SimVG has no separate {k} module)")


# ------------------------------------------------------------------------------------------ running a case
def _compat(spec, cfg, report_compat) -> tuple:
    """Switches named in spec['compat'] that our model has (turned on: they are official behaviour)."""
    names = set(spec.get("compat") or {})
    problems = [f"compat.{k}: the converter implies this switch but the spec does not list it"
                for k in report_compat if k not in names]
    return {k: True for k in names if hasattr(cfg, k)}, problems


def _image(inp) -> torch.Tensor:
    if "img" in inp:
        return inp["img"].float()
    return (inp["img_u8"].float() - inp["img_mean"][:, None, None]) / inp["img_std"][:, None, None]


def _is_grec(inp) -> bool:
    """Official rule (mix_detr_mb.forward_test): GREC post-processing when the image metas carry a target."""
    metas = inp.get("img_metas") or []
    return bool(metas) and isinstance(metas[0], dict) and metas[0].get("target") is not None


def _frame_hw(inp, img) -> tuple:
    metas = inp.get("img_metas") or []
    shapes = {tuple(int(x) for x in m["img_shape"][:2]) for m in metas if isinstance(m, dict) and "img_shape" in m}
    if len(shapes) > 1:
        raise AssertionError(f"samples with different img_shape {shapes}: not produced by the official pipelines")
    return shapes.pop() if shapes else tuple(img.shape[-2:])


@lru_cache(maxsize=2)
def run_case(folder: Path) -> dict:
    case = golden.load(folder)
    spec, inp = case.spec, case.inputs
    assert _kind(spec) == "checkpoint"
    sd, report = convert.convert_simvg_state_dict(case.state_dict())
    assert report["unmapped"] == [], f"unmapped official keys: {report['unmapped']}"
    cfg_dict = convert.config_from_official(spec["config"]["model_cfg"])
    cfg0 = config_from_args(cfg_dict)
    switches, problems = _compat(spec, cfg0, report["compat"])
    cfg_dict.update(switches)
    with torch.device("meta"):
        model = build_model(cfg_dict)
    convert.load_into(model, sd, assign=True)
    model.eval()
    del sd
    problems += golden.setting_problems(spec["config"], _expected(model.cfg))
    _none_sections(spec["config"].get("model_cfg", {}), problems)
    img = _image(inp)
    text_pad = inp["text_attention_mask"]  # official int64, 1 = pad
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.forward_tensors(img, inp["ref_expr_inds"], text_pad, branch="both", return_intermediates=True)
    return {"case": case, "out": out, "problems": problems, "switches": switches, "grec": _is_grec(inp),
            "hw": _frame_hw(inp, img), "cfg": model.cfg}


def _predictions(logits, boxes, hw, grec, like):
    """Official get_predictions (REC: the best box per sample, labels of the kept queries) or
    get_predictions_grec (every kept box with its score and label), shaped like the stored value."""
    post = postprocess_rec(logits, boxes, hw)
    labels = logits[..., :-1].argmax(-1)
    if not grec:
        return post["boxes_xyxy"], labels[post["keep"]]
    per = [{"boxes": post["boxes_xyxy_all"][b][post["keep"][b]], "scores": post["scores"][b][post["keep"][b]],
            "labels": labels[b][post["keep"][b]]} for b in range(logits.shape[0])]
    if torch.is_tensor(like):  # stored stacked: every sample kept the same number of boxes
        return torch.stack([p["boxes"] for p in per]), None
    if isinstance(like, (list, tuple)) and like and torch.is_tensor(like[0]):  # stored as boxes per sample
        return [p["boxes"] for p in per], None
    return per, None


_POS_SLICE = re.compile(r"^pos_embed_2d_ch(\d+)_(\d+)_(\d+)_(\d+)$")
_FIRST = re.compile(r"^beit3_img_tokens_first(\d+)$")


def produce(r: dict, names) -> dict:
    out, it, gold = r["out"], r["out"]["intermediates"], r["case"].outputs
    branch = {"decoder": (out["decoder_logits"][-1], out["decoder_boxes"][-1]),
              "token": (out["token_logits"], out["token_boxes"])}

    def rule(name):
        m = re.match(r"^(pred_bboxes|predict_classes)_(decoder|token)$", name)
        if m:
            boxes, labels = _predictions(*branch[m.group(2)], r["hw"], r["grec"], gold.get(name))
            if m.group(1) == "pred_bboxes":
                return boxes
            if labels is None:
                raise KeyError(f"{name}: GREC predictions carry their labels inside pred_bboxes")
            return labels
        m = re.match(r"^(decoder|token)_scores$", name)
        if m:
            return branch[m.group(1)][0].float().softmax(-1)[..., 0]
        if name in ("decoder_pred_boxes", "decoder_pred_logits"):
            return out["decoder_" + name.split("_")[-1]]
        if name in ("token_pred_boxes", "token_pred_logits"):
            return out["token_" + name.split("_")[-1]][None]
        if name == "beit3_cls_token":
            return it["beit3_cls"]
        if name == "tgqg_out":
            return it["tgqg_out"].transpose(0, 1)[None]  # official: [1, Q, B, C], sequence-first
        if name == "beit3_img_tokens_mean":
            return it["beit3_img_tokens"].mean(1)
        if name == "beit3_img_tokens_l2":
            return it["beit3_img_tokens"].norm(dim=-1)
        m = _FIRST.match(name)
        if m:
            return it["beit3_img_tokens"][:, :int(m.group(1))]
        m = _POS_SLICE.match(name)
        if m:  # channels a..b and c..d of the 2-D key position embedding of sample 0
            a, b, c, d = map(int, m.groups())
            pos = it["pos_embed_2d"][0]
            return torch.cat([pos[a:b + 1], pos[c:d + 1]])
        return it[name]

    return golden.produce_all(names, rule)


def _pretrained_outputs(case) -> dict:
    """Initialise from the BEiT-3 pretrained layout; every stored output is a SimVG key, optionally sliced."""
    spec, inp = case.spec, case.inputs
    vis = spec["config"]["vis_enc_cfg"]
    cfg = config_from_args({"backbone": vis["vit_type"], "img_size": vis["img_size"], "patch_size": vis["patch_size"],
                            "vocab_size": vis["vocab_size"]})
    problems = golden.setting_problems(spec["config"], _expected(cfg))
    for k in ("img_size", "patch_size"):
        if k in inp and int(inp[k]) != int(vis[k]):
            problems.append(f"inputs.{k} = {inp[k]} differs from config.vis_enc_cfg.{k} = {vis[k]}")
    assert not problems, "spec settings the model does not honour:\n  " + "\n  ".join(problems)
    src = case.state_dict()
    ours, report = convert.convert_beit3_pretrained({inp.get("pretrained_key", "model"): src}, cfg)
    assert report["ignored"] == [], report["ignored"]

    def rule(name):
        key, _, sl = name.partition("[")
        v = ours[convert.map_key(key)]
        if sl:
            start, _, stop = sl.rstrip("]").partition(":")
            v = v[int(start or 0):int(stop) if stop else None]
        return v

    produced = golden.produce_all(case.outputs, rule)
    compared = {n.partition("[")[0] for n in case.outputs}
    prefix = inp.get("target_prefix", "")
    unchanged = [k for k, v in src.items() if prefix + k not in compared
                 and not torch.equal(ours[convert.map_key(prefix + k)], v)]
    assert not unchanged, f"keys changed although only the stored outputs may differ: {unchanged[:10]}"
    with torch.device("meta"):
        model = build_model(cfg)
    own = {k: v for k, v in model.state_dict().items() if k.startswith("beit3.")}
    assert set(own) == set(ours), (sorted(set(own) - set(ours))[:10], sorted(set(ours) - set(own))[:10])
    bad = [k for k, v in ours.items() if tuple(v.shape) != tuple(own[k].shape)]
    assert not bad, bad
    return produced


def check_case(folder: Path):
    folder = Path(folder)
    if _kind(golden.read_spec(folder)) == "beit3_pretrained":
        case = golden.load(folder)
        return golden.compare(_pretrained_outputs(case), case)
    r = run_case(folder)
    assert not r["problems"], "spec settings the model does not honour:\n  " + "\n  ".join(r["problems"])
    return golden.compare(produce(r, r["case"].outputs), r["case"])


@pytest.mark.parametrize("folder", CASES)
def test_simvg_golden_outputs(folder):
    check_case(golden.require_case(folder, "SimVG"))


@pytest.mark.parametrize("folder", CASES)
def test_simvg_compat_switches_matter(folder):
    """With the official compat switches off, some compared output must leave the tolerance (the fixtures
    see the switches), unless the case names none."""
    folder = golden.require_case(folder, "SimVG")
    if _kind(golden.read_spec(folder)) != "checkpoint":
        return
    r = run_case(folder)
    if not r["switches"]:
        return
    case = r["case"]
    sd, _ = convert.convert_simvg_state_dict(case.state_dict())
    cfg = dict(r["cfg"].to_dict(), **{k: False for k in r["switches"]})
    with torch.device("meta"):
        model = build_model(cfg)
    convert.load_into(model, sd, assign=True)
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.forward_tensors(_image(case.inputs), case.inputs["ref_expr_inds"],
                                    case.inputs["text_attention_mask"], branch="both", return_intermediates=True)
    with pytest.raises(AssertionError):
        golden.compare(produce(dict(r, out=out), case.outputs), case, label=" (compat switches off)")


# ------------------------------------------------------------------------------------------ full_keys
def _full_keys():
    d = golden.golden_root() / "simvg" / "full_keys"
    return golden.params(sorted(d.glob("*.json")) if d.is_dir() else [], "SimVG full_keys")


@pytest.mark.parametrize("path", _full_keys())
def test_simvg_full_keys_convert(path):
    path = golden.require_case(path, "SimVG full_keys")
    layout = json.loads(path.read_text())
    sd = {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in layout.items()}
    if any(k.startswith(("vis_enc.", "module.vis_enc.")) for k in sd):
        ours, report = convert.convert_simvg_state_dict(sd)
        assert report["unmapped"] == [], report["unmapped"]
        with torch.device("meta"):
            model = build_model(convert.config_from_state_dict(sd))
        convert.load_into(model, ours, assign=True)  # strict: raises on missing / unexpected / shape
        assert set(convert.to_official_state_dict(model.state_dict())) == {k.removeprefix("module.") for k in sd}
    else:  # BEiT-3 pretrained 'model' dict
        D = sd["beit3.text_embed.weight"].shape[1]
        cfg = config_from_args({"preset": "vitl" if D == 1024 else "vitb"})
        ours, report = convert.convert_beit3_pretrained({"model": sd}, cfg)
        assert report["ignored"] == []
        with torch.device("meta"):
            model = build_model(cfg)
        own = {k: v for k, v in model.state_dict().items() if k.startswith("beit3.")}
        assert set(ours) == set(own), sorted(set(ours) ^ set(own))[:10]
        assert [k for k, v in ours.items() if tuple(v.shape) != tuple(own[k].shape)] == []


# ------------------------------------------------------------------------------------------ meta-tests
def _template():
    found = [f for f in golden.model_cases("simvg") if _kind(golden.read_spec(f)) == "checkpoint"]
    if not found:
        golden.missing_golden("no SimVG checkpoint case to build variants from")
    return found[0]


def _variant(tmp_path: Path, edit) -> Path:
    return golden.variant_case(_template(), tmp_path, edit)


def test_meta_unproducible_output_fails_by_name(tmp_path):
    def edit(spec, inputs, outputs):
        first = next(iter(outputs))
        outputs[first + "_renamed_by_meta_test"] = outputs.pop(first)

    with pytest.raises(AssertionError, match=r"_renamed_by_meta_test.*cannot be produced"):
        check_case(_variant(tmp_path, edit))


def test_meta_unknown_setting_fails_by_name(tmp_path):
    def edit(spec, inputs, outputs):
        spec["config"]["model_cfg"]["head"]["setting_added_by_meta_test"] = 2

    with pytest.raises(AssertionError, match="setting_added_by_meta_test"):
        check_case(_variant(tmp_path, edit))


def test_meta_one_sample_with_a_subset_of_outputs(tmp_path):
    """Slice the batch to its first sample (SimVG samples are independent).  Outputs with exactly one dimension
    of the batch size are sliced there, outputs with none are per-case constants kept as they are, ambiguous
    ones and every second output are dropped: a case of another batch size with a subset of the outputs."""
    kept = []

    def edit(spec, inputs, outputs):
        B = inputs["ref_expr_inds"].shape[0]
        for k, v in list(inputs.items()):
            if (torch.is_tensor(v) and v.dim() and v.shape[0] == B) or (isinstance(v, list) and len(v) == B):
                inputs[k] = v[:1]
        for i, (n, v) in enumerate(list(outputs.items())):
            dims = [d for d, s in enumerate(v.shape) if s == B] if torch.is_tensor(v) else None
            if dims is None or len(dims) > 1 or i % 2:
                del outputs[n]
            elif dims:
                outputs[n] = v.narrow(dims[0], 0, 1).clone()
        kept.extend(outputs)

    folder = _variant(tmp_path, edit)
    assert kept
    report = check_case(folder)
    assert [r.name for r in report.rows] == kept


def test_meta_grec_post_processing(tmp_path):
    """The same case evaluated with GREC image metas (a ``target`` entry, the official switch): every kept box
    with its score and label per sample, stored as the official list of dicts.  With one query nothing is
    dropped, so the expected values follow from the REC outputs of the template case."""
    def edit(spec, inputs, outputs):
        for m, box in zip(inputs["img_metas"], inputs.get("gt_bbox") or [None] * len(inputs["img_metas"])):
            m["target"] = [box]
        for br in ("decoder", "token"):
            boxes, scores = outputs.pop(f"pred_bboxes_{br}"), outputs[f"{br}_scores"]
            labels = outputs.pop(f"predict_classes_{br}").reshape(scores.shape)
            outputs[f"pred_bboxes_{br}"] = [{"boxes": boxes[b][None], "scores": scores[b], "labels": labels[b]}
                                            for b in range(len(boxes))]

    src = golden.load(_template())
    if src.spec["config"]["model_cfg"]["head"]["num_queries"] != 1 or "img_metas" not in src.inputs:
        pytest.skip("the template case is not a one-query REC case with image metas")
    report = check_case(_variant(tmp_path, edit))
    assert any(r.name.startswith("pred_bboxes_decoder[0].boxes") for r in report.rows)
