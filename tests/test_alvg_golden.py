"""Golden tests: our ALVG against numbers produced by the official code ($VG_GOLDEN_DIR/alvg/<case>/).

Driven by the fixtures: every case folder with a state-dict layout is run (pytest id = folder name).
  * The model is built from the case's official mmcv config (``config.model``: backbone size, image / patch
    size, number of queries, head depths, TIE on / off); every other configuration entry (head, BEiT-3 encoder
    arguments, the derived loss weights and attention-loss weights, where the attention targets come from) is
    checked against the built model and loss (a setting they cannot honour fails naming its key).
  * The official state dict goes through `alvg.convert` (no unmapped key; the CE class weight it carries must
    equal the loss's eos_coef), the compat switches the spec lists are turned on, and every stored output --
    model outputs, official post-processing, loss targets and every loss term (``loss.raw_*``,
    ``loss.weighted_*``, ``loss.official_*``) -- is compared by name; an output we cannot produce fails with its
    name.  The loss terms come from `alvg.loss.ALVGCriterion` on the stored inputs' ground truth (boxes, and the
    masks when the case has them; otherwise the box targets).
  * GREC post-processing (every kept box) follows the official rule: when the image metas carry a ``target``.
Every ``full_keys`` layout converts with no unmapped key and loads strictly into the model its shapes describe.
Meta-tests build variant cases (renamed output, unknown setting, one sample) in a temporary folder.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import golden
from simvg_family import beit3_encoder_expected
from alvg import convert
from alvg.loss import ALVGCriterion, ALVGLossConfig
from alvg.model import COMPAT_SWITCHES, build_model, config_from_args, postprocess_rec
from vgcore.boxes import box_xyxy_to_cxcywh

CASES = golden.params(golden.model_cases("alvg"), "ALVG model")

# spec['compat'] entries that describe fixed behaviour rather than a switch (each with where it lives)
DESCRIBED = {
    "decoder_layer_norm_names": "the converter maps norm3 (after cross-attention) / norm2 (after the FFN)",
    "tgqg_query": "SimVG's text-guided query generation, always as official",
    "score_loss_overlap_map": "the score loss definition (alvg.loss.attention_targets)",
    "criterion_empty_weight_buffer": "checked: the converter reports it, equal to the loss's eos_coef",
    "detection_losses": "vgcore.models.matcher.SetCriterion per decoder layer",
    "loss_total_composition": "the loss.official_* values (alvg.loss.ALVGCriterion.compute)",
    "no_padding_fixed_640": "the alvg transforms never pad",
    "eval_postprocess": "simvg.model.postprocess_rec",
    "beit3_text_pad_zeroing": "vgcore.models.beit3",
    "box_only_mask_loss_int_crash": "box-only data: float zero mask terms (the fixture's runtime fix)",
    "vitl_drop_path_typo": "config_from_official: drop_path 0 for large (training only)",
    "unused_checkpoint_modules": "dropped by the converter (report 'unused')",
    "cuda_hardcode": "no device is hard-coded",
}


# ------------------------------------------------------------------------------------------ configuration
def _expected(cfg, crit: ALVGCriterion, targets_from: str) -> dict:
    L = crit.cfg
    untested = ("num_encoder_layers", "distill_type", "prepare_target_mode", "share_predicthead",
                "num_token_mlp_layers", "mlp_aux_loss")  # token-branch / encoder leftovers the head never runs
    head = dict(dict.fromkeys(untested), type="TextGuidedQuerySelectKDDETRHead", num_queries=cfg.num_queries,
                text_max_token=cfg.max_text_len, in_channels=cfg.beit3().embed_dim, embed_dim=cfg.embed_dim,
                decoder_freeze=False, num_classes=cfg.num_classes, aux_loss=L.aux_loss,
                num_decoder_layers=cfg.num_decoder_layers, only_decoder=True, text_embed_aug=False,
                branch_loss_weight={"decoder": 1.0}, text_guided_query_generation=cfg.text_guided_query_generation,
                num_tgqg_layers=cfg.num_tgqg_layers, tgqs_mid_dim=cfg.tgqg_ffn_dim,
                score_attn_loss_weight=L.score_attn_loss_weight, decoder_attn_loss_weight=L.decoder_attn_loss_weight,
                img_enhance=cfg.img_enhance)
    vis = dict(type="BEIT3", img_size=cfg.img_size, patch_size=cfg.patch_size, vit_type=cfg.backbone,
               vocab_size=cfg.vocab_size, drop_path_rate=None, freeze_layer=-1, vision_embed_proj_interpolate=None,
               pretrain=None)
    gh, gw = cfg.beit3().grid
    derived = dict(image_size=cfg.img_size, patch=cfg.patch_size, grid=[gh, gw], text_len=cfg.max_text_len,
                   embed_dim=cfg.embed_dim, num_queries=cfg.num_queries, decoder_layers=cfg.num_decoder_layers,
                   tgqg_layers=cfg.num_tgqg_layers, mask_out=[8 * gh, 8 * gw],
                   loss_weights=_LossWeights(crit), score_attn_loss_weight=L.score_attn_loss_weight,
                   decoder_attn_loss_weight=L.decoder_attn_loss_weight, attention_targets_from=targets_from)
    return {"model": {"type": "MIXDETRMB", "vis_enc": vis, "head": head, "lan_enc": None, "fusion": None},
            "beit3_encoder_args": beit3_encoder_expected(cfg.beit3()), "derived": derived,
            # the data pipeline is checked by the transforms case; the model reads the stored inputs
            "config_file": None, "eval_pipeline": None, "train_pipeline": None, "val_pipeline": None,
            "test_pipeline": None, "train_pipeline_equals_eval_pipeline": True, "img_norm_cfg": None,
            "dataset": None}


class _LossWeights(dict):
    """Every loss weight name the spec lists -> our weight of that term (aux copies take the base weight)."""

    def __init__(self, crit):
        super().__init__()
        self.crit = crit

    def __contains__(self, k):
        try:
            self.crit.weight_of(k)
            return True
        except KeyError:
            return False

    def __getitem__(self, k):
        return self.crit.weight_of(k)


def _setting_problems(spec, expected) -> list:
    problems = []
    sec = spec["config"]
    for k, v in sec.items():
        if k == "derived" and isinstance(v, dict) and isinstance(v.get("loss_weights"), dict):
            lw = expected["derived"]["loss_weights"]
            for name, w in v["loss_weights"].items():
                if name not in lw:
                    problems.append(f"config.derived.loss_weights.{name}: a loss term this implementation lacks")
                elif abs(float(w) - lw[name]) > 1e-12:
                    problems.append(f"config.derived.loss_weights.{name}: spec {w}, the loss uses {lw[name]}")
    rest = {k: (dict(v, loss_weights=None) if k == "derived" and isinstance(v, dict) else v) for k, v in sec.items()}
    exp = dict(expected, derived=dict(expected["derived"], loss_weights=None))
    problems += golden.setting_problems(rest, exp)
    model = sec.get("model") or {}
    for k in ("lan_enc", "fusion"):
        if model.get(k) is not None:
            problems.append(f"config.model.{k}: {model[k]!r} (ALVG has no separate {k} module)")
    return problems


# ------------------------------------------------------------------------------------------ inputs
def _image(inp) -> torch.Tensor:
    if "img" in inp:
        return inp["img"].float()
    if "img_png" in inp:
        from PIL import Image
        mean = inp.get("img_mean", torch.tensor([123.675, 116.28, 103.53])).float()
        std = inp.get("img_std", torch.tensor([58.395, 57.12, 57.375])).float()
        u8 = [torch.from_numpy(np.array(Image.open(io.BytesIO(bytes(t.numpy()))))) for t in inp["img_png"]]
        img = torch.stack([((u - mean) / std).permute(2, 0, 1) for u in u8])
        if "img_checksum" in inp:
            assert torch.equal(img.double().sum(dim=(1, 2, 3)), inp["img_checksum"].double()), "decoded image checksum"
        return img
    return (inp["img_u8"].float() - inp["img_mean"][:, None, None]) / inp["img_std"][:, None, None]


def _metas(inp) -> list:
    m = inp.get("img_metas") or []
    return m if m and isinstance(m[0], dict) else []


def _is_grec(inp) -> bool:
    """Official rule (mix_detr_mb.forward_test): GREC post-processing when the image metas carry a target."""
    metas = _metas(inp)
    return bool(metas) and metas[0].get("target") is not None


def _frame_hw(inp, img) -> tuple:
    shapes = set()
    for m in _metas(inp):
        if "img_shape" in m:
            shapes.add(tuple(int(x) for x in m["img_shape"][:2]))
    if "img_shape" in inp and torch.is_tensor(inp["img_shape"]):
        shapes |= {tuple(int(x) for x in s[:2]) for s in inp["img_shape"]}
    if len(shapes) > 1:
        raise AssertionError(f"samples with different img_shape {shapes}: not produced by the official pipelines")
    return shapes.pop() if shapes else tuple(img.shape[-2:])


def _gt_boxes(inp, hw) -> list:
    """Per sample [N_i,4] normalised cxcywh targets (official prepare_soft_targets: GREC entries whose target has
    category_id -1 are dropped)."""
    H, W = hw
    raw = inp.get("gt_bbox")
    if raw is None:
        return None
    items = list(raw)
    metas = _metas(inp)
    out = []
    for i, b in enumerate(items):
        b = torch.as_tensor(b).reshape(-1, 4).double()
        if metas and metas[i].get("target") is not None:
            keep = [j for j, t in enumerate(metas[i]["target"]) if int(t.get("category_id", 0)) != -1]
            b = b[keep]
        out.append(box_xyxy_to_cxcywh(b.float() / torch.tensor([W, H, W, H], dtype=torch.float32)))
    return out


def _gt_masks(inp):
    """[B,H,W] union masks, or None when the case has none (box targets)."""
    if "gt_mask_packed" in inp:
        m = torch.from_numpy(np.unpackbits(np.asarray(inp["gt_mask_packed"]), axis=-1))
    elif inp.get("gt_mask") is not None:
        g = inp["gt_mask"]
        m = torch.stack([torch.as_tensor(x).reshape(-1, *torch.as_tensor(x).shape[-2:]).any(0) for x in g]) \
            if isinstance(g, (list, tuple)) else torch.as_tensor(g)
    else:
        return None
    return (m.reshape(m.shape[0], -1, *m.shape[-2:]).amax(1) > 0).to(torch.uint8)


# ------------------------------------------------------------------------------------------ running a case
def _loss_config(spec) -> dict:
    return convert.loss_config_from_official(spec["config"]["model"])


def _compat(spec, report_compat) -> tuple:
    names = set(spec.get("compat") or {})
    problems = [f"compat.{k}: the converter implies this switch but the spec does not list it"
                for k in report_compat if k not in names]
    unknown = sorted(names - set(COMPAT_SWITCHES) - set(DESCRIBED))
    if unknown:
        print(f"[golden] compat entries neither a switch nor a known description (compared outputs decide): {unknown}")
    return {k: True for k in names if k in COMPAT_SWITCHES}, problems


_SD_CACHE: dict = {}


def _official_state_dict(case) -> dict:
    """The regenerated official weights, kept for the last (layout, seed, buffers) seen: variant cases of the
    meta-tests share their template's weights, and regenerating 230 M values takes seconds."""
    key = (json.dumps(case.spec["state_dict"], sort_keys=True), case.spec["seed"],
           repr(sorted((k, v.tolist()) for k, v in case.buffers.items())))
    if key not in _SD_CACHE:
        _SD_CACHE.clear()
        _SD_CACHE[key] = case.state_dict()
    return _SD_CACHE[key]


_RUN_CACHE: dict = {}


def _digest(x, h=None) -> str:
    """Content hash of nested inputs (tensors by dtype, shape and bytes)."""
    top = h is None
    h = h or hashlib.sha256()
    if torch.is_tensor(x):
        h.update(f"{x.dtype}{tuple(x.shape)}".encode())
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(x, dict):
        for k in sorted(x, key=str):
            h.update(repr(k).encode())
            _digest(x[k], h)
    elif isinstance(x, (list, tuple)):
        h.update(f"[{len(x)}".encode())
        for v in x:
            _digest(v, h)
    else:
        h.update(repr(x).encode())
    return h.hexdigest() if top else ""


def _run(case, switches) -> dict:
    """Convert, build, forward and compute the losses of ``case`` with ``switches`` (cached on the weights, the
    switches and the inputs, which variant cases share with their template)."""
    spec, inp = case.spec, case.inputs
    key = (id(_official_state_dict(case)), tuple(sorted(switches.items())), json.dumps(spec["config"], sort_keys=True),
           _digest(inp))
    if key in _RUN_CACHE:
        return dict(_RUN_CACHE[key], case=case)
    sd, report = convert.convert_alvg_state_dict(_official_state_dict(case))
    assert report["unmapped"] == [], f"unmapped official keys: {report['unmapped']}"
    cfg_dict = dict(convert.config_from_official(spec["config"]["model"]), **switches)
    with torch.device("meta"):
        model = build_model(cfg_dict)
    convert.load_into(model, sd, assign=True)
    model.eval()
    crit = ALVGCriterion(_loss_config(spec), model.cfg.compat())
    problems = []
    if report["eos_coef"] is not None and abs(report["eos_coef"] - crit.cfg.eos_coef) > 1e-6:
        problems.append(f"head.criterion.empty_weight: eos_coef {report['eos_coef']} != the loss's {crit.cfg.eos_coef}")
    img = _image(inp)
    hw = _frame_hw(inp, img)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.forward_tensors(img, inp["ref_expr_inds"], inp["text_attention_mask"], return_intermediates=True)
        boxes = _gt_boxes(inp, hw)
        masks = _gt_masks(inp)
        loss = crit.compute(out, types.SimpleNamespace(target_boxes=boxes, masks=masks)) if boxes is not None else None
    r = {"case": case, "out": out, "loss": loss, "crit": crit, "cfg": model.cfg, "hw": hw, "grec": _is_grec(inp),
         "masks": masks, "problems": problems}
    while len(_RUN_CACHE) >= 2:  # the official run and the switches-off run
        _RUN_CACHE.pop(next(iter(_RUN_CACHE)))
    _RUN_CACHE[key] = r
    return r


def settings(case) -> tuple:
    """(switches to turn on, problems): the spec's compat entries and configuration against what the model and
    loss built from it implement (no weights needed)."""
    switches, problems = _compat(case.spec, convert.OFFICIAL_COMPAT)
    cfg = config_from_args(dict(convert.config_from_official(case.spec["config"]["model"]), **switches))
    crit = ALVGCriterion(_loss_config(case.spec), cfg.compat())
    targets_from = "masks" if _gt_masks(case.inputs) is not None else "boxes"
    problems += _setting_problems(case.spec, _expected(cfg, crit, targets_from))
    return switches, problems


def run_case(folder: Path) -> dict:
    case = golden.load(folder)
    switches, problems = settings(case)
    assert not problems, "spec settings the model does not honour:\n  " + "\n  ".join(problems)
    r = _run(case, switches)
    assert not r["problems"], "\n  ".join(r["problems"])
    return dict(r, switches=switches)


_FIRST = re.compile(r"^backbone_img_feat_first(\d+)$")
_MASK_SUM = re.compile(r"^final_mask_(\d+)_sum$")
_MASK_TGT = re.compile(r"^target_masks_(\d+)$")
_LOSS = re.compile(r"^loss\.(raw|weighted|official)_(.+)$")
_DIRECT = {"pred_boxes": "decoder_boxes", "pred_logits": "decoder_logits", "score_map": "score_map",
           "attn_maps": "attn_maps", "pred_masks": "pred_masks"}
_INTER = {"decoder_hidden": "decoder_hidden", "img_masks": "img_mask", "memory": "memory", "query_pos": "query_pos",
          "text_feat_filter": "text_feat_filter", "text_pos_embed": "text_pos_embed",
          "backbone_text_feat": "beit3_text_tokens", "backbone_cls_feat": "beit3_cls", "tgqg_out": "tgqg_out"}


def _predictions(out, hw, grec):
    logits, boxes = out["decoder_logits"][-1], out["decoder_boxes"][-1]
    post = postprocess_rec(logits, boxes, hw)
    labels = logits[..., :-1].argmax(-1)
    B = logits.shape[0]
    if not grec:
        return {"final_bboxes_xyxy": post["boxes_xyxy"], "final_scores": post["scores"],
                "final_classes": labels[torch.arange(B), post["best"]]}
    per = [{"boxes": post["boxes_xyxy_all"][b][post["keep"][b]], "scores": post["scores"][b][post["keep"][b]],
            "labels": labels[b][post["keep"][b]]} for b in range(B)]
    return {"final_bboxes_xyxy": [p["boxes"] for p in per], "final_scores": [p["scores"] for p in per],
            "final_classes": [p["labels"] for p in per], "final_predictions": per}


def produce(r: dict, names) -> dict:
    out, it, loss = r["out"], r["out"]["intermediates"], r["loss"]
    preds = _predictions(out, r["hw"], r["grec"])

    def rule(name):
        if name in _DIRECT:
            return out[_DIRECT[name]]
        if name in _INTER:
            return it[_INTER[name]]
        if name in preds:
            return preds[name]
        m = _FIRST.match(name)
        if m:
            return it["beit3_img_tokens"][:, :int(m.group(1))]
        m = _MASK_SUM.match(name)
        if m:
            s = int(m.group(1))
            up = F.interpolate(out["mask_probs"][:, None], size=(s, s), mode="bilinear", align_corners=False)
            return up.double().sum((1, 2, 3))
        if loss is None:
            raise KeyError(f"{name}: the case has no ground truth for the losses")
        tg = loss["targets"]
        if name == "target_boxes_cxcywh":
            return torch.cat(tg["boxes_cxcywh"])
        m = _MASK_TGT.match(name)
        if m:
            if "mask_target" not in tg:
                raise KeyError(f"{name}: no mask target (the case has no masks)")
            mt = tg["mask_target"]
            if mt.shape[-1] != int(m.group(1)):
                raise KeyError(f"{name}: the mask head predicts {tuple(mt.shape[-2:])}")
            return mt
        if name == "attn_overlap_maps":
            return tg["overlap"]
        if name == "attn_focus_maps":  # the first target's focus map (one query: the map the loss reads)
            f = tg["focus"]
            return f[:, 0] if f.shape[1] else torch.zeros_like(tg["overlap"])
        m = _LOSS.match(name)
        if m:
            return loss[m.group(1)][m.group(2)]
        raise KeyError(f"{name}: no rule produces it")

    return golden.produce_all(names, rule)


def check_case(folder: Path):
    r = run_case(Path(folder))
    return golden.compare(produce(r, r["case"].outputs), r["case"])


@pytest.mark.parametrize("folder", CASES)
def test_alvg_golden_outputs(folder):
    check_case(golden.require_case(folder, "ALVG"))


@pytest.mark.parametrize("folder", CASES)
def test_alvg_compat_switches_matter(folder):
    """With the official compat switches off, some compared output must leave the tolerance."""
    folder = golden.require_case(folder, "ALVG")
    r = run_case(folder)
    if not r["switches"]:
        return
    off = _run(r["case"], {k: False for k in r["switches"]})
    with pytest.raises(AssertionError):
        golden.compare(produce(off, r["case"].outputs), r["case"], label=" (compat switches off)")


# ------------------------------------------------------------------------------------------ full_keys
def _full_keys():
    d = golden.golden_root() / "alvg" / "full_keys"
    return golden.params(sorted(d.glob("*.json")) if d.is_dir() else [], "ALVG full_keys")


@pytest.mark.parametrize("path", _full_keys())
def test_alvg_full_keys_convert(path):
    path = golden.require_case(path, "ALVG full_keys")
    layout = json.loads(path.read_text())
    sd = {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in layout.items()}
    if any(k.startswith(("vis_enc.", "module.vis_enc.")) for k in sd):
        ours, report = convert.convert_alvg_state_dict(sd)
        assert report["unmapped"] == [], report["unmapped"]
        assert all(re.match("|".join(convert.UNUSED), k.removeprefix("module.")) for k in report["unused"])
        with torch.device("meta"):
            model = build_model(convert.config_from_state_dict(sd))
        convert.load_into(model, ours, assign=True)  # strict: raises on missing / unexpected / shape
        assert len(ours) + len(report["dropped"]) == len(sd)
    else:  # BEiT-3 pretrained 'model' dict
        D = sd["beit3.text_embed.weight"].shape[1]
        cfg = config_from_args({"preset": "vitl" if D == 1024 else "vitb"})
        ours, report = convert.convert_beit3_pretrained({"model": sd}, cfg)
        with torch.device("meta"):
            model = build_model(cfg)
        own = {k: v for k, v in model.state_dict().items() if k.startswith("beit3.")}
        assert set(ours) == set(own), sorted(set(ours) ^ set(own))[:10]


# ------------------------------------------------------------------------------------------ meta-tests
def _template():
    found = golden.model_cases("alvg")
    if not found:
        golden.missing_golden("no ALVG model case to build variants from")
    return found[0]


def test_meta_unproducible_output_fails_by_name(tmp_path):
    def edit(spec, inputs, outputs):
        for first in (next(iter(outputs)), next(n for n in outputs if n.startswith("loss."))):
            outputs[first + "_renamed_by_meta_test"] = outputs.pop(first)

    with pytest.raises(AssertionError, match=r"(?s)_renamed_by_meta_test.*cannot be produced.*_renamed_by_meta_test"):
        check_case(golden.variant_case(_template(), tmp_path, edit))


def test_meta_unknown_setting_fails_by_name(tmp_path):
    def edit(spec, inputs, outputs):
        spec["config"]["model"]["head"]["setting_added_by_meta_test"] = 2
        spec["config"]["derived"]["loss_weights"]["loss_added_by_meta_test"] = 1.0

    with pytest.raises(AssertionError, match=r"(?s)setting_added_by_meta_test.*loss_added_by_meta_test"):
        check_case(golden.variant_case(_template(), tmp_path, edit))


def test_meta_one_sample_with_a_subset_of_outputs(tmp_path):
    """The first sample alone with every second per-sample output: a case of another batch size with a subset
    of the outputs.  Batch-level values (the losses, normalised by the batch) are dropped."""
    kept = []

    def edit(spec, inputs, outputs):
        B = inputs["ref_expr_inds"].shape[0]
        for k, v in list(inputs.items()):
            if k == "gt_mask_packed" or (torch.is_tensor(v) and v.dim() and v.shape[0] == B) or \
                    (isinstance(v, list) and len(v) == B):
                inputs[k] = v[:1]
        for i, (n, v) in enumerate(list(outputs.items())):
            dims = [d for d, s in enumerate(v.shape) if s == B] if torch.is_tensor(v) else None
            if n.startswith("loss.") or dims is None or len(dims) > 1 or i % 2:
                del outputs[n]
            elif dims:
                outputs[n] = v.narrow(dims[0], 0, 1).clone()
        kept.extend(outputs)

    report = check_case(golden.variant_case(_template(), tmp_path, edit))
    assert kept and [r.name for r in report.rows] == kept
