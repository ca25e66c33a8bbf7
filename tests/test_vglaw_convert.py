"""vglaw/convert.py: every full_keys layout in golden/vglaw converts with no unmapped key and loads strictly
(meta tensors: no weights allocated); the MindSpore .ckpt reader, the restricted detectron2 unpickler and the
HF BERT truncation on real bytes; the command line end to end on a tiny model."""
import json
import pickle
import re

import numpy as np
import pytest
import torch

from vglaw import convert
from vglaw.model import build_model

TINY = dict(embed_dim=64, depth=3, num_heads=4, img_size=64, patch_size=16, window_size=2, global_blocks=[1],
            pretrain_img_size=32, bert_layers=2, bert_hidden=64, bert_heads=4, bert_intermediate=128,
            vocab_size=100, max_position_embeddings=16, max_len=8, generator_heads=4, rank=4, pool_dim=16,
            box_hidden=32, mask_hidden=16)


def _layouts(golden_dir):
    d = golden_dir / "vglaw" / "full_keys"
    if not d.is_dir():
        pytest.skip(f"no full_keys layouts in {d}")
    return sorted(d.glob("*.json"))


def _meta_state(path):
    lay = json.loads(path.read_text())
    return {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in lay.items()}


def _meta_model(cfg):
    with torch.device("meta"):
        return build_model(cfg)


def test_every_full_keys_layout_converts_and_loads_strictly(golden_dir):
    paths = _layouts(golden_dir)
    assert paths
    vit_cfg = dict(img_size=448)
    for path in paths:
        sd = _meta_state(path)
        kind = convert._kind(sd)
        if kind == "vglaw":
            ours, report = convert.convert_vglaw_state_dict(sd)
            assert report["unmapped"] == [] and report["dropped"] == [], (path.name, report)
            assert report["compat"] == convert.OFFICIAL_COMPAT
            cfg = convert.config_from_state_dict(sd)
            assert (cfg["img_size"], cfg["window_size"], cfg["global_blocks"], cfg["rank"], cfg["bert_layers"],
                    cfg["task"]) == (448, 14, [2, 5, 8, 11], 32, 6, "both"), cfg
            model = _meta_model(cfg)
            convert.load_into(model, ours, assign=True)  # strict: raises on missing / unexpected / shape
            assert len(ours) == len(sd)
        elif kind == "vitdet":
            ours, report = convert.convert_vitdet_backbone(sd, **vit_cfg)
            assert report["unmapped"] == [], (path.name, report["unmapped"])
            dropped = [k for k in sd if not k.startswith("backbone.net.") and not re.match(r"^(\d+\.|pos_embed|patch_embed)", k)]
            assert sorted(report["dropped"]) == sorted(dropped)
            globals_ = sorted({int(k.split(".")[-3]) for k in report["cropped"]})
            assert globals_ in ([], [2, 5, 8, 11])  # only the 127-row global tables are cropped
            model = _meta_model(vit_cfg)
            convert.load_partial(model, ours, ["visual_encoder."])
        else:
            raise AssertionError(f"{path.name}: unexpected layout kind {kind}")


def test_rel_pos_centre_crop_keeps_offsets_minus27_to_27():
    table = torch.arange(127, dtype=torch.float32)[:, None].expand(127, 64)
    sd = {"backbone.net.blocks.2.attn.rel_pos_h": table, "backbone.net.blocks.0.attn.rel_pos_h": table[:27],
          "roi_heads.box_head.fc1.weight": torch.zeros(1), "backbone.net.mystery": torch.zeros(1)}
    ours, report = convert.convert_vitdet_backbone(sd, img_size=448)
    got = ours["visual_encoder.blocks.2.attn.rel_pos_h"][:, 0]
    assert torch.equal(got, torch.arange(36, 91, dtype=torch.float32))  # rows 36..90: offset 0 (row 63) centred
    assert torch.equal(ours["visual_encoder.blocks.0.attn.rel_pos_h"], table[:27])
    assert report["unmapped"] == ["backbone.net.mystery"] and report["dropped"] == ["roi_heads.box_head.fc1.weight"]


def test_mindspore_ckpt_reader_round_trip_and_slices(tmp_path):
    sd = {"a.gamma": torch.randn(3, 4), "b": torch.arange(6, dtype=torch.int32).reshape(2, 3),
          "c": torch.tensor(2.5), "d": torch.randn(5, 1, 2).half()}
    data = convert.write_mindspore_ckpt(sd, tmp_path / "x.ckpt")
    back = convert.read_mindspore_ckpt(tmp_path / "x.ckpt")
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k
    # a parameter saved in two slices (same tag twice) is concatenated
    big = torch.randn(4, 3)
    one = convert.write_mindspore_ckpt({"w": big})
    tag = convert._ld(1, b"w")
    first = convert.write_mindspore_ckpt({"w": big[:2]})
    second = convert.write_mindspore_ckpt({"w": big[2:]})
    # the second slice carries only content; dims are read from the first entry
    sliced = first.replace(convert._key(1, 0) + convert._enc_varint(2), convert._key(1, 0) + convert._enc_varint(4), 1)
    assert torch.equal(convert.read_mindspore_ckpt(sliced + second)["w"], big)
    assert convert.read_mindspore_ckpt(one)["w"].shape == (4, 3) and tag in one
    assert data == convert.write_mindspore_ckpt(sd)


def test_detectron2_pickle_reader_is_restricted(tmp_path):
    arrays = {"backbone.net.pos_embed": np.random.rand(1, 5, 4).astype(np.float32), "n": np.int64(3)}
    for protocol in (2, 4):
        p = tmp_path / f"model_final_{protocol}.pkl"
        p.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}, protocol=protocol))
        got = convert.read_detectron2_pickle(p)
        assert list(got) == ["backbone.net.pos_embed"]
        assert torch.equal(got["backbone.net.pos_embed"], torch.from_numpy(arrays["backbone.net.pos_embed"]))

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo should-not-run",))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"model": {"x": Evil()}}))
    with pytest.raises(pickle.UnpicklingError, match="refused: the pickle names posix.system|refused: the pickle names os.system"):
        convert.read_detectron2_pickle(bad)


def test_hf_bert_truncated_to_first_layers_loads_strictly():
    from transformers import BertConfig, BertForPreTraining
    torch.manual_seed(0)
    hf = BertForPreTraining(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                       intermediate_size=128, max_position_embeddings=16))
    sd = hf.state_dict()
    ours, report = convert.convert_hf_bert(sd, num_layers=2)
    assert report["unmapped"] == []
    assert any(k.startswith("bert.encoder.layer.3.") for k in report["dropped"])
    assert any(k.startswith("cls.") for k in report["dropped"])
    model = build_model(TINY)
    convert.load_partial(model, ours, ["text_encoder."])
    assert torch.equal(model.text_encoder.encoder.layer[1].output.dense.weight,
                       sd["bert.encoder.layer.1.output.dense.weight"])
    # the truncated encoder equals running HF's first two layers
    ids = torch.randint(1, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    hf.eval(), model.eval()
    with torch.no_grad():
        full = hf.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
        mine = model.encode_text(ids, mask)
    torch.testing.assert_close(mine, full, atol=1e-5, rtol=1e-5)


def _official_names(model):
    """Our state dict -> official MindSpore names (test-side inverse of the converter's rules)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith(("position_ids", "token_type_ids")) and "embeddings." in k and not k.endswith("weight"):
            continue
        n = k
        n = re.sub(r"_embeddings\.weight$", "_embeddings.embedding_table", n)
        n = re.sub(r"LayerNorm\.weight$", "layer_norm.gamma", n)
        n = re.sub(r"LayerNorm\.bias$", "layer_norm.beta", n)
        n = n.replace("attention.self.", "attention.self_attn.")
        n = re.sub(r"(norm[12])\.weight$", r"\1.gamma", n)
        n = re.sub(r"(norm[12])\.bias$", r"\1.beta", n)
        n = re.sub(r"(proj\.\d+\.1)\.weight$", r"\1.gamma", n)
        n = re.sub(r"(proj\.\d+\.1)\.bias$", r"\1.beta", n)
        if n in ("weight_generator.S", "weight_generator.D"):
            v = v[..., None]
        if n == "weight_generator.layer_embedding":
            v = v[:, None]
        out[n] = v
    return out


def test_cli_round_trip_tiny_mindspore_ckpt(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    official = _official_names(model)
    official["moment1.visual_encoder.pos_embed"] = torch.zeros(1)
    convert.write_mindspore_ckpt(official, tmp_path / "law.ckpt")
    heads = ["--set", "bert_heads=4", "--set", "generator_heads=4", "--set", "max_len=8"]
    assert convert.main(["--src", str(tmp_path / "law.ckpt"), "--dst", str(tmp_path / "ours.pth")] + heads) == 0
    saved = torch.load(tmp_path / "ours.pth", weights_only=True)
    assert saved["kind"] == "vglaw" and saved["report"]["dropped"] == ["moment1.visual_encoder.pos_embed"]
    inferred = {k: v for k, v in saved["config"].items() if k in TINY}
    assert inferred == {k: TINY[k] for k in inferred}, inferred
    assert set(TINY) - set(inferred) <= {"drop_path_rate", "bert_dropout"}
    fresh = build_model({**saved["config"]}).eval()
    convert.load_into(fresh, saved["model"])
    for k, v in model.state_dict().items():
        if k in saved["model"]:
            assert torch.equal(fresh.state_dict()[k], v), k
    # an unknown key makes the command fail, listing it
    official["visual_encoder.blocks.0.attn.mystery"] = torch.zeros(1)
    convert.write_mindspore_ckpt(official, tmp_path / "bad.ckpt")
    assert convert.main(["--src", str(tmp_path / "bad.ckpt"), "--dst", str(tmp_path / "bad.pth")] + heads) == 1


def test_load_pretrained_from_detectron2_pickle_crops_and_fills_the_backbone(tmp_path):
    """A detectron2-layout pickle of a larger-input ViT (global rel-pos tables longer than needed) fills the
    backbone strictly; the global tables are the centre rows, everything else is copied."""
    torch.manual_seed(0)
    src = build_model({**TINY, "img_size": 128})            # grid 8: global tables 15 rows
    d2 = {"backbone.net." + k[len("visual_encoder."):]: v.numpy()
          for k, v in src.state_dict().items() if k.startswith("visual_encoder.")}
    d2["roi_heads.box_predictor.cls_score.weight"] = np.zeros((2, 2), np.float32)
    (tmp_path / "vitdet.pkl").write_bytes(pickle.dumps({"model": d2, "__author__": "test"}))
    model = build_model(TINY)                                # grid 4: global tables 7 rows
    reports = convert.load_pretrained(model, vitdet=tmp_path / "vitdet.pkl")
    assert reports["vitdet"]["cropped"] == ["backbone.net.blocks.1.attn.rel_pos_h", "backbone.net.blocks.1.attn.rel_pos_w"]
    got, want = model.state_dict(), src.state_dict()
    assert torch.equal(got["visual_encoder.blocks.1.attn.rel_pos_h"], want["visual_encoder.blocks.1.attn.rel_pos_h"][4:11])
    for k in want:
        if k.startswith("visual_encoder.") and "blocks.1.attn.rel_pos" not in k:
            assert torch.equal(got[k], want[k]), k
    with pytest.raises(RuntimeError, match="missing"):
        convert.load_pretrained(model, vitdet={k: torch.from_numpy(v) for k, v in d2.items() if "fc1" not in k})
