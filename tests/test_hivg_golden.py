"""Golden tests: our HiVG against the official implementation's outputs ($VG_GOLDEN_DIR/hivg/<case>/).

Driven by the fixtures: every case folder with a state-dict layout is run (pytest id = folder name).  The
model is built from the case's official flags (``config.args``); every other configuration entry of
spec.json is checked against the built model, and a setting the model cannot honour fails naming its key.
Every output in outputs.pt is compared by name at the spec's tolerance:
  * ``X`` -- the full batch with the compat switches at their official values (bridge batch mixing ON),
    LoRA unmerged as peft computes it;
  * ``X_bs1`` -- the official code run one sample at a time: our whole batch at once with batch mixing OFF
    (merged LoRA, `Batch` entry point), and separately our own one-sample runs with the switch at its
    official value (at batch size 1 the quirk is a no-op).
Every ``full_keys`` layout converts through `hivg.convert.convert_official` with no unmapped key and loads
strictly.  The meta-tests at the end build variant cases (renamed outputs, batch size 1, a subset of outputs,
an unknown flag) in a temporary folder and run them through the same code.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch

import golden
from hivg.config import config_from_any
from hivg.convert import convert_official
from hivg.model import build_model

CASES = golden.params(golden.model_cases("hivg"), "HiVG model")
OUR_NAME = {"pred_box": "pred_boxes"}  # golden output name -> our output key (others are identical)
BS1 = "_bs1"


# ------------------------------------------------------------------------------------------ configuration
def _hf_checks(cfg) -> dict:
    """Spec config key -> (our value) for every key the model honours."""
    tower = lambda p: {"hidden_size": getattr(cfg, f"{p}_width"), "intermediate_size": getattr(cfg, f"{p}_mlp"),  # noqa
                       "num_attention_heads": getattr(cfg, f"{p}_heads"),
                       "num_hidden_layers": getattr(cfg, f"{p}_layers"), "projection_dim": cfg.embed_dim}
    text = dict(tower("text"), max_position_embeddings=cfg.context_length)
    vision = dict(tower("vision"), image_size=cfg.image_size, patch_size=cfg.patch_size)
    return {
        "extract_vision_layer": cfg.extract_vision_layers, "adapt_layer": cfg.bridge_layers,
        # mixup / warm-up models read no text layers into the bridge: the list does not affect their outputs
        "extract_text_layer": cfg.bridge_text_layers if cfg.bridge_layers and not cfg.mixup_pretrain else None,
        "patch_size": cfg.patch_size,
        "num_visu_token": cfg.num_visu_tokens, "num_text_token": cfg.context_length, "hidden_dim": cfg.embed_dim,
        "vl_seq_len": cfg.fusion_len,
        "hf_clip_config": {"text_config": text, "vision_config": vision, "projection_dim": cfg.embed_dim},
        "hf_clip_config_defaults_used": {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                                         "vocab_size": cfg.vocab_size, "attention_dropout": 0.0},
        "lora": {"r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "scaling": cfg.lora_alpha / cfg.lora_rank,
                 "bias": "none", "peft_wraps": 1 + cfg.hi_lora_stage,
                 "target_modules": None, "lora_dropout": None, "where LoRA lands": None},
        "bridge": {"cross_attn heads": cfg.vision_heads, "cross_norm eps": 1e-5, "cross_mlp activation": "QuickGELU",
                   "adaptive weights": None},
        **_INFORMATIONAL,
    }


# settings that describe the fixture, not the model
_INFORMATIONAL = dict.fromkeys(("script_flags", "script_flags_note", "hf_clip_checkpoint", "versions", "fusion encoder",
                                "fixture_batch_size"))


def _compat_switches(spec: dict) -> dict:
    """compat entries that are switches ({"official": bool, ...}) -> our config field; descriptions of fixed
    official behaviour (strings) need no switch."""
    out = {}
    for name, entry in (spec.get("compat") or {}).items():
        if isinstance(entry, dict) and "official" in entry:
            out[name] = bool(entry["official"])
    return out


def _switch_field(name: str, cfg) -> str:
    for f in (f"compat_{name}", name, f"compat_{name.split('_', 1)[-1]}"):
        if hasattr(cfg, f):
            return f
    raise KeyError(f"compat switch {name!r} named by the spec has no counterpart in HiVGConfig")


# ------------------------------------------------------------------------------------------ running a case
def _texts_to_ids(texts, context_length, stored=None):
    from vgcore.text import build_tokenizer

    ids, mask = build_tokenizer("clip", max_len=context_length)(list(texts))
    if stored is not None:
        assert torch.equal(ids.long(), stored.long()), "CLIP BPE ids differ from the official tokenizer's"
    return ids, mask


def _batch(img, img_mask, ids, mask, texts):
    from vgcore.data.sample import Batch

    B = img.shape[0]
    return Batch(images=img, pixel_mask=img_mask.bool(), text_ids=ids, text_mask=mask,
                 boxes=torch.zeros(B, 4), target_boxes=[torch.zeros(1, 4)] * B,
                 num_targets=torch.ones(B, dtype=torch.long), affine=torch.zeros(B, 4, dtype=torch.float64),
                 orig_size=torch.zeros(B, 2, dtype=torch.long), texts=list(texts), records=[None] * B)


@lru_cache(maxsize=2)
def run_case(folder: Path) -> dict:
    """Convert, build from the official flags, and run every forward the case's outputs need."""
    case = golden.load(folder)
    spec = case.spec
    args = dict(spec["config"]["args"])
    cfg = config_from_any(args)  # unknown official flags raise KeyError naming them
    problems = golden.setting_problems({k: v for k, v in spec["config"].items() if k != "args"}, _hf_checks(cfg))
    switches = {}
    for name, official in _compat_switches(spec).items():
        try:
            switches[_switch_field(name, cfg)] = official
        except KeyError as e:
            problems.append(str(e).strip("'\""))
    sd, info = convert_official(case.state_dict(), mixup=bool(args.get("mixup_pretrain", False)))
    with torch.device("meta"):
        model = build_model(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    model.eval()
    del sd
    inp = case.inputs
    img, img_mask = inp["img"], inp["img_mask"]
    B = img.shape[0]
    fb = spec["config"].get("fixture_batch_size")
    if fb is not None and int(fb) != B:
        problems.append(f"config.fixture_batch_size: spec {fb}, inputs hold a batch of {B}")
    ids, mask = _texts_to_ids(inp["texts"], cfg.context_length, inp.get("text_ids"))
    names = list(case.outputs)
    full = [n for n in names if not n.endswith(BS1)]
    r = {"case": case, "info": info, "cfg": model.cfg, "problems": problems, "switches": switches, "B": B}
    with torch.no_grad():
        for f, v in switches.items():
            setattr(model.cfg, f, v)
        if full:  # official full-batch behaviour, LoRA unmerged
            r["full"] = model.forward_tensors(img, img_mask, ids)
        model.merge_lora()
        if len(full) < len(names):
            for f in switches:  # the per-sample official runs == the corrected model on the whole batch
                setattr(model.cfg, f, False)
            r["nomix"] = model(_batch(img, img_mask, ids, mask, inp["texts"]))
            for f, v in switches.items():
                setattr(model.cfg, f, v)
            runs = [model.forward_tensors(img[b:b + 1], img_mask[b:b + 1], ids[b:b + 1]) for b in range(B)]
            r["per_sample"] = {k: torch.cat([o[k] for o in runs], 0) for k in runs[0]}
    return r


def produce(r: dict, names, per_sample: bool = False) -> dict:
    """Our value for every golden output name (`golden.Unproducible` where we have none)."""
    def rule(name):
        bs1 = name.endswith(BS1)
        base = name[:-len(BS1)] if bs1 else name
        key = OUR_NAME.get(base, base)
        out = r["per_sample" if per_sample else ("nomix" if bs1 else "full")]
        v = out[key]
        if bs1 and not per_sample and base.startswith("logits_per_"):
            v = v.diagonal()  # each one-sample run gives the 1x1 logit of its own pair
        return v

    return golden.produce_all(names, rule)


# ------------------------------------------------------------------------------------------ tests
def check_case(folder: Path):
    r = run_case(Path(folder))
    assert not r["problems"], "spec settings the model does not honour:\n  " + "\n  ".join(r["problems"])
    case = r["case"]
    return golden.compare(produce(r, case.outputs), case)


@pytest.mark.parametrize("folder", CASES)
def test_hivg_golden_outputs(folder):
    check_case(golden.require_case(folder, "HiVG"))


@pytest.mark.parametrize("folder", CASES)
def test_hivg_converter_agrees_with_spec(folder):
    r = run_case(golden.require_case(folder, "HiVG"))
    spec, info, cfg = r["case"].spec, r["info"], r["cfg"]
    args = spec["config"]["args"]
    assert info["hi_lora_stage"] == args.get("hi_lora_stage", 0)
    for name, official in _compat_switches(spec).items():
        assert info.get(_switch_field(name, cfg)) is official, name
    for k in ("bridge_layers", "bridge_text_layers", "extract_vision_layers", "image_size", "patch_size"):
        if k != "bridge_text_layers" or (cfg.bridge_layers and not cfg.mixup_pretrain):  # else not in the shapes
            assert info["config"][k] == getattr(cfg, k), k


@pytest.mark.parametrize("folder", CASES)
def test_hivg_one_sample_runs(folder):
    """Our own batch-size-1 runs with the compat switches at their official values == the official ``*_bs1``."""
    r = run_case(golden.require_case(folder, "HiVG"))
    case = r["case"]
    names = [n for n in case.outputs if n.endswith(BS1)]
    golden.compare(produce(r, names, per_sample=True), case, names, label=" (one-sample runs)")


@pytest.mark.parametrize("folder", CASES)
def test_hivg_batch_mixing_is_detectable(folder):
    """Where a case stores an output both ways and batch mixing is on, the corrected full-batch run must differ
    from the official full-batch output beyond the tolerance (the switch is observable)."""
    r = run_case(golden.require_case(folder, "HiVG"))
    case = r["case"]
    pairs = [n for n in case.outputs if not n.endswith(BS1) and n + BS1 in case.outputs]
    if r["B"] < 2 or not pairs or not any(r["switches"].values()):
        return
    diffs = {}
    for n in pairs:
        ours = produce(r, [n + BS1])[n + BS1]
        gold = case.outputs[n].float()
        if gold.is_floating_point() and tuple(ours.shape) == tuple(gold.shape):
            diffs[n] = (ours.float() - gold).abs().max().item()
    atol = golden.tolerances(case.spec, "")[0][1]["atol"]
    assert diffs and max(diffs.values()) > atol, f"batch mixing had no visible effect: {diffs}"


# ------------------------------------------------------------------------------------------ full_keys
def _full_keys():
    d = golden.golden_root() / "hivg" / "full_keys"
    files = sorted(p for p in d.glob("*.json") if p.name != "index.json") if d.is_dir() else []
    return golden.params(files, "HiVG full_keys")


def _meta(layout: dict) -> dict:
    return {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in layout.items()}


@pytest.mark.parametrize("path", _full_keys())
def test_hivg_full_keys_convert(path):
    path = golden.require_case(path, "HiVG full_keys")
    index_path = path.parent / "index.json"
    entry = json.loads(index_path.read_text()).get(path.name, {}) if index_path.is_file() else {}
    mixup = "--mixup_pretrain" in entry.get("flags", "").split()
    # raises ConversionError listing every unmapped key; verify=True loads the result strictly into the model
    # built from the shapes
    sd, info = convert_official(_meta(json.loads(path.read_text())), mixup=mixup)
    if "hi_lora_stage" in entry:
        assert info["hi_lora_stage"] == entry["hi_lora_stage"]
    if "adapt_layer" in entry:
        assert info["config"]["bridge_layers"] == entry["adapt_layer"]
    if "extract_text_layer" in entry and not mixup and info["config"]["bridge_layers"]:
        assert info["config"]["bridge_text_layers"] == entry["extract_text_layer"]


# ------------------------------------------------------------------------------------------ meta-tests
def _template():
    found = golden.model_cases("hivg")
    if not found:
        golden.missing_golden("no HiVG golden case to build variants from")
    return found[0]


def _variant(tmp_path: Path, edit) -> Path:
    return golden.variant_case(_template(), tmp_path, edit)


def test_meta_unproducible_output_fails_by_name(tmp_path):
    def edit(spec, inputs, outputs):
        first = next(iter(outputs))
        outputs[first + "_renamed_by_meta_test"] = outputs.pop(first)

    folder = _variant(tmp_path, edit)
    with pytest.raises(AssertionError, match=r"_renamed_by_meta_test.*cannot be produced"):
        check_case(folder)


def test_meta_unknown_setting_fails_by_name(tmp_path):
    def edit(spec, inputs, outputs):
        spec["config"]["args"]["flag_added_by_meta_test"] = 3

    with pytest.raises(KeyError, match="flag_added_by_meta_test"):
        run_case(_variant(tmp_path, edit))


def test_meta_batch_of_one_with_a_subset_of_outputs(tmp_path):
    """Slice the batch to its last sample; the official one-sample outputs then are the case's full-batch
    outputs (batch mixing is a no-op at B = 1).  Only those outputs are stored: a subset of the original."""
    kept = {}

    def edit(spec, inputs, outputs):
        B = inputs["img"].shape[0]
        b = B - 1
        for k, v in list(inputs.items()):
            inputs[k] = v[b:b + 1] if (torch.is_tensor(v) or isinstance(v, list)) and len(v) == B else v
        one = {}
        for n, v in outputs.items():
            if n.endswith(BS1):
                one[n[:-len(BS1)]] = v[b:b + 1]
        outputs.clear()
        outputs.update(one)
        kept.update(one)
        if "fixture_batch_size" in spec["config"]:
            spec["config"]["fixture_batch_size"] = 1

    folder = _variant(tmp_path, edit)
    assert kept, "the template case has no one-sample outputs to build a batch-of-one case from"
    report = check_case(folder)
    assert {r.name for r in report.rows} == set(kept)
