"""resvg/convert.py: every stored official key layout converts with no unmapped key and fills our model exactly;
round trips; BERT layouts; the command line (strict, with a listed report of unmapped keys)."""
from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import pytest
import torch

from resvg import convert
from resvg.config import OFFICIAL_COMPAT, config_from_args, config_from_official
from resvg.model import ResVG
from vgcore.checkpoint import StateDictMismatchError

ROOT = Path(__file__).resolve().parents[1]
_GOLDEN = Path(os.environ.get("VG_GOLDEN_DIR", ROOT.parent / "shared" / "golden")) / "resvg"


def _layouts():
    d = _GOLDEN / "full_keys"
    return sorted(p.name for p in d.glob("*.json")) if d.is_dir() else []


def _meta_sd(layout: dict) -> dict:
    return {k: torch.empty(v["shape"], device="meta") for k, v in layout.items()}


def _meta_model(**cfg):
    with torch.device("meta"):
        return ResVG(config_from_args(cfg))


@pytest.fixture(scope="module")
def official_model():
    return _meta_model()


@pytest.mark.parametrize("name", _layouts() or ["<none>"])
def test_full_key_layout_converts_completely(name, official_model):
    if name == "<none>":
        pytest.skip("no ResVG full_keys layouts found")
    layout = json.loads((_GOLDEN / "full_keys" / name).read_text())
    sd = _meta_sd(layout)
    kind = convert.detect_kind(sd)
    ours, report = convert.convert_any(sd)
    assert report["unmapped"] == [], f"{name}: unmapped keys {report['unmapped']}"
    assert len(ours) + len(report["dropped"]) == len(sd)
    if kind == "resvg":
        model = official_model if report["compat"] == OFFICIAL_COMPAT else _meta_model(**report["compat"])
        convert.load_into(model, ours)  # strict: nothing missing, unexpected or mis-shaped
        assert convert.to_official_state_dict(ours).keys() == sd.keys()
    else:
        modules = convert.PARTIAL_MODULES[kind]
        want = {k for k in official_model.state_dict() if k.split(".")[0] in modules}
        assert set(ours) == want, (sorted(want - set(ours))[:5], sorted(set(ours) - want)[:5])
        convert.load_partial(official_model, ours, modules)


def test_detr_layout_report(official_model):
    path = _GOLDEN / "full_keys" / "detr-r50.json"
    if not path.is_file():
        pytest.skip("no DETR layout")
    ours, report = convert.convert_detr_state_dict(_meta_sd(json.loads(path.read_text())))
    # 265 backbone + 72 encoder + 2 input_proj tensors are used, the DETR decoder and heads are dropped
    assert len(ours) == 265 + 72 + 2 and len(report["dropped"]) == 119
    assert all(k.startswith(("transformer.decoder.", "class_embed.", "bbox_embed.", "query_embed."))
               for k in report["dropped"])
    assert ours["visual_encoder.layers.5.ffn.linear2.weight"].shape == (256, 2048)


def test_vltvg_checkpoint_turns_the_prior_off():
    path = _GOLDEN / "full_keys" / "ResVG_R50.json"
    if not path.is_file():
        pytest.skip("no ResVG layout")
    layout = json.loads(path.read_text())
    sd = _meta_sd({k: v for k, v in layout.items() if not k.startswith("trans_decoder.decoder.ffn.")})
    ours, report = convert.convert_resvg_state_dict(sd)
    assert report["unmapped"] == [] and report["compat"]["prior_feature_content_query"] is False
    convert.load_into(_meta_model(**report["compat"]), ours)


def test_missing_and_unknown_keys_are_named(official_model):
    path = _GOLDEN / "full_keys" / "ResVG_R50.json"
    if not path.is_file():
        pytest.skip("no ResVG layout")
    sd = _meta_sd(json.loads(path.read_text()))
    del sd["bbox_embed.layers.2.bias"]
    sd["module.trans_decoder.decoder.extra_encoder_layers.0.tf_gamma"] = torch.empty(1, device="meta")
    sd["some_head.weight"] = torch.empty(1, device="meta")
    ours, report = convert.convert_resvg_state_dict(sd)
    assert sorted(report["unmapped"]) == ["some_head.weight"]
    with pytest.raises(StateDictMismatchError) as e:
        convert.load_into(official_model, ours)
    assert "bbox_embed.layers.2.bias" in str(e.value) and "discriminative.tf_gamma" in str(e.value)


@pytest.mark.parametrize("layout", ["hf", "pytorch_pretrained_bert", "bare"])
def test_bert_layouts(layout, official_model):
    ours_bert = {k[len("bert."):]: v for k, v in official_model.state_dict().items() if k.startswith("bert.")}
    sd = {}
    for k, v in ours_bert.items():
        if layout == "pytorch_pretrained_bert":
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        sd[("" if layout == "bare" else "bert.") + k] = v
    if layout != "bare":
        sd["cls.predictions.transform.dense.weight"] = torch.empty(768, 768, device="meta")
        sd["cls.seq_relationship.weight"] = torch.empty(2, 768, device="meta")
    if layout == "hf":
        sd["bert.embeddings.position_ids"] = torch.empty(1, 512, device="meta")
    assert convert.detect_kind(sd) == "bert"
    ours, report = convert.convert_any(sd)
    assert report["unmapped"] == []
    assert set(ours) == {"bert." + k for k in ours_bert}
    convert.load_partial(official_model, ours, convert.PARTIAL_MODULES["bert"])


def test_key_rules_round_trip():
    samples = {
        "backbone.0.body.layer3.4.bn2.running_var": "backbone.body.layer3.4.bn2.running_var",
        "trans_encoder.encoder.layers.3.linear1.weight": "visual_encoder.layers.3.ffn.linear1.weight",
        "trans_encoder.encoder.layers.3.norm2.bias": "visual_encoder.layers.3.norm2.bias",
        "trans_decoder.decoder.extra_encoder_layers.0.tf_sigma": "discriminative.verify_sigma",
        "trans_decoder.decoder.extra_encoder_layers.0.img2img_attn.pos_x": "discriminative.img2img_attn.pos_x",
        "trans_decoder.decoder.layers.5.ffn.3.weight": "decoder.layers.5.ffn.linear2.weight",
        "trans_decoder.decoder.layers.0.norm.2.weight": "decoder.layers.0.norm3.weight",
        "trans_decoder.decoder.ffn.0.bias": "decoder.prior_mlp.0.bias",
        "trans_decoder.decoder.text_query_embed.weight": "decoder.text_query_embed.weight",
        "bert.encoder.layer.11.output.LayerNorm.weight": "bert.encoder.layer.11.output.LayerNorm.weight",
        "bbox_embed.layers.2.weight": "bbox_embed.layers.2.weight",
    }
    for off, ours in samples.items():
        assert convert.map_resvg_key(off) == ours, off
        assert convert.official_key(ours) == off, ours
    for bad in ("trans_decoder.decoder.query_pos.weight", "bert.encoder.layer.1.attention.self.qkv.weight",
                "transformer.encoder.layers.0.linear1.weight"):
        assert convert.map_resvg_key(bad) is None, bad


def _tiny_official_args(golden_dir) -> dict:
    """The official argparse values of the r50_unc case, shrunk to a tiny network."""
    spec = json.loads((golden_dir / "resvg" / "r50_unc" / "spec.json").read_text())
    a = copy.deepcopy(spec["config"])
    a.update(backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dim_feedforward=64, bert_output_dim=64,
             bert_output_layers=2)
    a["bert_config"].update(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                            vocab_size=500, max_position_embeddings=64)
    dec = a["model_config"]["decoder"]
    dec.update(num_layers=2, query_dim=32, norm_dim=32)
    dec["layer"].update(d_model=32, dim_feedforward=64)
    ex = dec["extra_layer"]
    ex["d_model"] = 32
    for att in (dec["layer"]["word_attn_args"], dec["layer"]["img_attn_args"], ex["img2text_attn_args"],
                ex["img2textcond_attn_args"]):
        att.update(embed_dim=32, num_heads=2)
    ex["img2img_attn_args"].update(d_model=32, h=2)
    for side in ("text_proj", "img_proj"):
        ex["vl_verify"][side].update(input_dim=32, hidden_dim=32, output_dim=32)
    return a


def test_command_line_round_trip(tmp_path, golden_dir, capsys):
    args = _tiny_official_args(golden_dir)
    cfg = config_from_official(args)
    cfg.update(OFFICIAL_COMPAT)
    torch.manual_seed(0)
    model = ResVG(config_from_args(cfg))
    src = tmp_path / "checkpoint0090.pth"
    torch.save({"model": convert.to_official_state_dict(model.state_dict()), "epoch": 89,
                "args": argparse.Namespace(**args)}, src)
    dst = tmp_path / "ours.pth"
    assert convert.main(["--src", str(src), "--dst", str(dst)]) == 0
    out = torch.load(dst, weights_only=True)
    assert out["kind"] == "resvg" and out["report"]["unmapped"] == []
    rebuilt = ResVG(config_from_args(out["config"]))
    convert.load_into(rebuilt, out["model"])
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
    assert rebuilt.cfg.extra["dataset"] == args["dataset"] and rebuilt.cfg.dec_layers == 2
    # load_pretrained: the official file straight into a model, and a DETR file into its three modules only
    fresh = ResVG(config_from_args(out["config"]))
    assert convert.load_pretrained(fresh, str(src))["kind"] == "resvg"
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    detr = {"backbone.0." + k[len("backbone."):]: v + 1 for k, v in model.state_dict().items()
            if k.startswith("backbone.body.")}
    detr.update({"transformer.encoder." + k[len("visual_encoder."):].replace(".ffn.linear", ".linear"): v + 1
                 for k, v in model.state_dict().items() if k.startswith("visual_encoder.")})
    detr.update({k: v + 1 for k, v in model.state_dict().items() if k.startswith("input_proj.")})
    detr["query_embed.weight"] = torch.zeros(100, 32)
    report = convert.load_pretrained(fresh, {"model": detr})
    assert report["kind"] == "detr" and report["dropped"] == ["query_embed.weight"]
    for k, v in fresh.state_dict().items():
        moved = k.startswith(("backbone.", "visual_encoder.", "input_proj."))
        assert torch.equal(v, model.state_dict()[k] + 1 if moved else model.state_dict()[k]), k
    off = ResVG(config_from_args({**out["config"], "prior_feature_content_query": False}))
    with pytest.raises(ValueError, match="prior_feature_content_query"):
        convert.load_pretrained(off, str(src))


def test_command_line_lists_unmapped_keys(tmp_path, capsys):
    sd = {"backbone.0.body.conv1.weight": torch.zeros(1), "transformer.encoder.layers.0.linear1.weight": torch.zeros(1),
          "transformer.encoder.norm.weight": torch.zeros(1), "class_embed.weight": torch.zeros(1)}
    src = tmp_path / "detr.pth"
    torch.save({"model": sd}, src)
    assert convert.main(["--src", str(src), "--dst", str(tmp_path / "o.pth")]) == 1
    err = capsys.readouterr().err
    assert "unmapped keys (1)" in err and "transformer.encoder.norm.weight" in err
    assert not (tmp_path / "o.pth").exists()
    del sd["transformer.encoder.norm.weight"]
    torch.save({"model": sd}, src)
    assert convert.main(["--src", str(src), "--dst", str(tmp_path / "o.pth")]) == 0
    out = torch.load(tmp_path / "o.pth", weights_only=True)
    assert set(out["model"]) == {"backbone.body.conv1.weight", "visual_encoder.layers.0.ffn.linear1.weight"}
    assert out["report"]["dropped"] == ["class_embed.weight"]
