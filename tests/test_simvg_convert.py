"""simvg/convert.py: every official key layout in golden/simvg/full_keys converts with no unmapped key and loads
strictly (meta tensors: no weights are allocated), and a checkpoint round-trips through the CLI."""
import json

import pytest
import torch

from simvg import convert
from simvg.model import build_model, config_from_args


def _layouts(golden_dir):
    d = golden_dir / "simvg" / "full_keys"
    if not d.is_dir():
        pytest.skip(f"no full_keys layouts in {d}")
    return sorted(d.glob("*.json"))


def _meta_state(path):
    lay = json.loads(path.read_text())
    return {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in lay.items()}


def test_every_full_keys_layout_converts_and_loads_strictly(golden_dir):
    paths = _layouts(golden_dir)
    assert paths
    for path in paths:
        sd = _meta_state(path)
        if any(k.startswith("vis_enc.") for k in sd):
            ours, report = convert.convert_simvg_state_dict(sd)
            assert report["unmapped"] == [], (path.name, report["unmapped"])
            assert sorted(report["dropped"]) == sorted(k for k in convert.DROPPED if k in sd)
            assert report["compat"] == convert.OFFICIAL_COMPAT
            cfg = convert.config_from_state_dict(sd)
            with torch.device("meta"):
                model = build_model(cfg)
            convert.load_into(model, ours, assign=True)  # strict: raises on missing / unexpected / shape
            assert model.head.query_embed.weight.shape[0] == sd["head.query_embed.weight"].shape[0]
            assert len(model.beit3.encoder.layers) == 1 + max(
                int(k.split(".")[4]) for k in sd if k.startswith("vis_enc.beit3.encoder.layers."))
            # and back: our names map onto exactly the official layout
            back = convert.to_official_state_dict(model.state_dict())
            assert set(back) == set(sd), path.name
        else:  # BEiT-3 pretrained 'model' dict
            D = sd["beit3.text_embed.weight"].shape[1]
            cfg = config_from_args({"preset": "vitl" if D == 1024 else "vitb"})
            ours, report = convert.convert_beit3_pretrained({"model": sd}, cfg)
            assert report["ignored"] == [], path.name
            with torch.device("meta"):
                model = build_model(cfg)
            own = {k: v for k, v in model.state_dict().items() if k.startswith("beit3.")}
            assert set(ours) == set(own), (path.name, sorted(set(ours) ^ set(own))[:10])
            for k, v in ours.items():
                assert tuple(v.shape) == tuple(own[k].shape), (path.name, k)


def test_module_prefix_and_unknown_keys_reported():
    sd = {"module.head.query_embed.weight": torch.zeros(1, 4), "module.head.transformer.encoder.layers.0.x": torch.zeros(1),
          "module.head.criterion.empty_weight": torch.ones(2)}
    ours, report = convert.convert_simvg_state_dict(sd)
    assert list(ours) == ["head.query_embed.weight"]
    assert report["unmapped"] == ["head.transformer.encoder.layers.0.x"]
    assert report["dropped"] == ["head.criterion.empty_weight"]
    assert convert.map_key("head.transformer.decoder.layers.2.norms.2.bias") == "head.decoder.layers.2.norm3.bias"
    assert convert.map_key("head.text_guided_query_generation_transformer.layers.1.ffns.0.layers.0.0.weight") == \
        "head.tgqg.layers.1.ffn.linear1.weight"


TINY_SET = ["--set", "backbone=tiny", "--set", "num_heads=4",
            "--set", 'backbone_overrides={"embed_dim": 128, "num_layers": 3, "ffn_dim": 256, "num_heads": 4}']


def test_cli_round_trip_tiny(tmp_path):
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "num_queries": 2}).eval()
    official = convert.to_official_state_dict(model.state_dict())
    ema = {k: v + 1e-3 if v.is_floating_point() else v for k, v in official.items()}
    torch.save({"state_dict": {"module." + k: v for k, v in official.items()}, "ema_state_dict": ema, "epoch": 3},
               tmp_path / "official.pth")
    assert convert.main(["--src", str(tmp_path / "official.pth"), "--dst", str(tmp_path / "ours.pth")] + TINY_SET) == 0
    assert convert.main(["--src", str(tmp_path / "official.pth"), "--dst", str(tmp_path / "ema.pth"), "--ema"] + TINY_SET) == 0
    out = torch.load(tmp_path / "ours.pth", weights_only=False)
    assert out["compat"] == convert.OFFICIAL_COMPAT and out["report"]["unmapped"] == []
    model2 = build_model(out["config"]).eval()
    assert model2.head.text_maxpool_int64_mask and model2.head.text_pos_embed_1d_degenerate
    convert.load_into(model2, out["model"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k
    ema_out = torch.load(tmp_path / "ema.pth", weights_only=False)["model"]
    assert torch.allclose(ema_out["head.query_embed.weight"], model.head.query_embed.weight + 1e-3)


def test_cli_refuses_unmapped(tmp_path, capsys):
    model = build_model({"preset": "tiny"})
    official = convert.to_official_state_dict(model.state_dict())
    official["head.some_new_module.weight"] = torch.zeros(3)
    torch.save({"state_dict": official}, tmp_path / "bad.pth")
    assert convert.main(["--src", str(tmp_path / "bad.pth"), "--dst", str(tmp_path / "x.pth")] + TINY_SET) == 1
    assert "head.some_new_module.weight" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


def test_adapt_img_size_resizes_the_vision_position_table():
    small = build_model({"preset": "tiny", "vocab_size": 100, "img_size": 96})    # 6x6 grid
    big = build_model({"preset": "tiny", "vocab_size": 100, "img_size": 128})     # 8x8 grid
    sd = convert.adapt_img_size(small.state_dict(), big.cfg)
    A = sd["beit3.encoder.embed_positions.A.weight"]
    assert A.shape == (3 + 64, 128)
    torch.testing.assert_close(A[:3], small.beit3.encoder.embed_positions.A.weight[:3])
    convert.load_into(big, sd)


def test_config_and_loss_args_from_namespace():
    import argparse
    from simvg.loss import SimVGCriterion
    ns = argparse.Namespace(preset="onestage", backbone="large", num_queries=10, lr=1e-4,
                            decoder_weight=1.0, token_weight=1.0, distill_weight=0.4)
    cfg = config_from_args(ns)
    assert (cfg.backbone, cfg.num_queries) == ("large", 10)
    assert config_from_args(argparse.Namespace(model_preset="tiny")).img_size == 128
    with pytest.raises(KeyError):
        config_from_args({"num_querys": 3})
    c = SimVGCriterion(ns).cfg
    assert (c.lambda_decoder, c.lambda_token, c.lambda_distill) == (1.0, 1.0, 0.4)
