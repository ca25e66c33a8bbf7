"""hivg.convert: every official layout maps with no unmapped key and loads strictly (meta tensors, no memory),
pretrained-CLIP mappings (open_clip / OpenAI / HF) reproduce the source model's embeddings, LoRA merging
and peft naming variants, and the Hi LoRA trainable sets match the official parameter counts."""
import argparse
import json
from pathlib import Path

import pytest
import torch

from hivg.config import PRESETS
from hivg.convert import ConversionError, convert_clip, convert_official, load_clip_into
from hivg.model import build_model


def _official_args(flags: str) -> dict:
    """The official argparse defaults (hivg_eval.py) + the flags of a layout, as a dict."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B/16")
    ap.add_argument("--dataset", default="referit")
    ap.add_argument("--hi_lora_stage", type=int, default=0)
    ap.add_argument("--warmup", action="store_true")
    ap.add_argument("--mixup_pretrain", action="store_true")
    ap.add_argument("--enable_adaptive_weights", action="store_true")
    ap.add_argument("--normalize_before", action="store_true")
    ap.add_argument("--imsize", type=int, default=224)
    ap.add_argument("--max_query_len", type=int, default=77)
    ap.add_argument("--vl_hidden_dim", type=int, default=512)
    ap.add_argument("--vl_nheads", type=int, default=8)
    ap.add_argument("--vl_dim_feedforward", type=int, default=2048)
    ap.add_argument("--vl_enc_layers", type=int, default=6)
    ap.add_argument("--vl_dropout", type=float, default=0.1)
    args, _ = ap.parse_known_args(flags.split())
    return vars(args)


def _layouts(golden_dir):
    root = Path(golden_dir) / "hivg" / "full_keys"
    if not (root / "index.json").exists():
        pytest.skip("no hivg/full_keys fixtures")
    index = json.loads((root / "index.json").read_text())
    files = sorted(p for p in root.glob("*.json") if p.name != "index.json")
    assert files
    return [(p.name, json.loads(p.read_text()), index[p.name]) for p in files]


_DT = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "bfloat16": torch.bfloat16}


def _meta_sd(layout: dict) -> dict:
    return {k: torch.empty(v["shape"], dtype=_DT[v["dtype"]], device="meta") for k, v in layout.items()}


def test_every_official_layout_converts_and_loads_strictly(golden_dir):
    for name, layout, meta in _layouts(golden_dir):
        args = _official_args(meta["flags"])
        sd, info = convert_official(_meta_sd(layout), mixup=args["mixup_pretrain"])
        assert info["hi_lora_stage"] == meta["hi_lora_stage"], name
        assert info["compat_batch_mixing"] is True
        with torch.device("meta"):
            model = build_model(args)
        model.load_state_dict(sd, strict=True, assign=True)  # raises on any missing/unexpected/shape mismatch
        assert model.cfg.bridge_layers == meta["adapt_layer"], name
        assert model.cfg.bridge_text_layers == meta["extract_text_layer"], name
        # (convert_official already checked sd against a model built from the config inferred from shapes)
        assert info["config"]["bridge_layers"] == meta["adapt_layer"], name
        # parameter bookkeeping: everything kept or explicitly dropped (unused official modules)
        n_in = sum(t.numel() for k, t in _meta_sd(layout).items() if t.is_floating_point())
        n_dropped = sum(torch.Size(layout[k]["shape"]).numel() for k in info["dropped"]
                        if layout[k]["dtype"].startswith("float"))
        n_out = sum(t.numel() for t in sd.values())
        assert n_in == n_out + n_dropped, name
        # clip_lora_stage_with_bridge.pth (--save_hilora_clip) = the 'clip.' entries without 'clip.'
        clip_only = {k[len("clip."):]: v for k, v in _meta_sd(layout).items() if k.startswith("clip.")}
        csd, _ = convert_clip({"model": clip_only}, mixup=args["mixup_pretrain"])
        clip_keys = {k for k in sd if k.startswith(("text.", "vision.", "text_projection", "visual_projection",
                                                    "logit_scale"))}
        assert set(csd) == clip_keys, name


def test_lora_merge_modes_and_newer_peft_naming(golden_dir):
    name, layout, meta = next(x for x in _layouts(golden_dir) if x[0].startswith("b16_stage3"))
    args = _official_args(meta["flags"])
    sd_keep, _ = convert_official(_meta_sd(layout), mixup=args["mixup_pretrain"])
    sd_merge, _ = convert_official(_meta_sd(layout), lora="merge", mixup=args["mixup_pretrain"])
    assert set(sd_keep) == set(sd_merge)
    sd_drop, info = convert_official(_meta_sd(layout), lora="merge_drop", mixup=args["mixup_pretrain"])
    assert not any(".lora_" in k for k in sd_drop) and info["config"]["lora_rank"] == 0
    with torch.device("meta"):
        plain = build_model(args, lora_rank=0)
    plain.load_state_dict(sd_drop, strict=True, assign=True)
    # peft >= 0.7 renames the wrapped linear to '<linear>.base_layer.weight/bias'
    lora_lin = {k.rsplit(".lora_A", 1)[0] for k in layout if ".lora_A." in k}
    renamed = {}
    for k, v in layout.items():
        stem, _, leaf = k.rpartition(".")
        renamed[f"{stem}.base_layer.{leaf}" if stem in lora_lin else k] = v
    assert renamed.keys() != layout.keys()
    sd_new, _ = convert_official(_meta_sd(renamed), mixup=args["mixup_pretrain"])
    assert set(sd_new) == set(sd_keep)


def test_unmapped_and_ambiguous_inputs_raise(golden_dir):
    name, layout, meta = _layouts(golden_dir)[0]
    sd = _meta_sd(layout)
    sd["something_new.weight"] = torch.empty(3, device="meta")
    with pytest.raises(ConversionError, match="something_new.weight"):
        convert_official(sd, mixup=False)
    with pytest.raises(ValueError, match="mixup"):
        convert_official(_meta_sd(layout))  # no args in the checkpoint: the caller must say
    sd = _meta_sd(layout)
    prefix = meta["clip_prefix"]
    sd[prefix + "vision_model.encoder.layers.0.self_attn.q_proj.extra.weight"] = torch.empty(3, device="meta")
    with pytest.raises(ConversionError, match="q_proj.extra.weight"):
        convert_official(sd, mixup=False)
    # a missing tensor is reported by the converter itself (verify=True) ...
    sd = _meta_sd(layout)
    sd.pop("visu_token_norm.weight")
    with pytest.raises(ConversionError, match="missing: visu_token_norm.weight"):
        convert_official(sd, mixup=False)
    # ... and by the strict load
    sd_ok, _ = convert_official(_meta_sd(layout), mixup=False)
    sd_ok.pop("fusion.norm.weight")
    with torch.device("meta"):
        model = build_model(_official_args(meta["flags"]))
    with pytest.raises(RuntimeError, match="fusion.norm.weight"):
        model.load_state_dict(sd_ok, strict=True, assign=True)


def test_lora_merge_is_w_plus_half_b_a():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    A, B = torch.randn(32, 4, generator=g), torch.randn(6, 32, generator=g)
    pre = "base_model.model.text_model.encoder.layers.0.self_attn.q_proj."
    sd = {pre + "weight": W, pre + "bias": b, pre + "lora_A.default.weight": A, pre + "lora_B.default.weight": B}
    out, info = convert_clip({"model": sd}, lora="merge")
    key = "text.blocks.0.attn.q.weight"
    torch.testing.assert_close(out[key], W + 0.5 * B @ A)
    assert torch.all(out["text.blocks.0.attn.q.lora_b"] == 0) and info["peft_depth"] == [1]
    kept, _ = convert_clip(sd, lora="keep")
    assert torch.equal(kept[key], W) and torch.equal(kept["text.blocks.0.attn.q.lora_a"], A)
    # our LoRALinear computes the same thing unmerged and merged
    from hivg.lora import LoRALinear
    lin = LoRALinear(4, 6, rank=32, alpha=16)
    lin.load_state_dict({"weight": W, "bias": b, "lora_a": A, "lora_b": B})
    x = torch.randn(3, 4, generator=g)
    ref = x @ (W + 0.5 * B @ A).t() + b
    torch.testing.assert_close(lin(x), ref, rtol=1e-5, atol=1e-5)
    lin.merge()
    torch.testing.assert_close(lin(x), ref, rtol=1e-5, atol=1e-5)


def _tiny_clip_model(**kw):
    cfg = dict(preset="hivg-tiny", bridge_layers=[], lora_rank=0)
    cfg.update(kw)
    return build_model(cfg).eval()


def _tiny_hf_clip_config(CLIPConfig):
    """An HF CLIPConfig with the tiny preset's dimensions."""
    t = PRESETS["hivg-tiny"]
    return CLIPConfig(
        text_config=dict(hidden_size=t["text_width"], intermediate_size=t["text_mlp"],
                         num_attention_heads=t["text_heads"], num_hidden_layers=t["text_layers"],
                         max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=t["vision_width"], intermediate_size=t["vision_mlp"],
                           num_attention_heads=t["vision_heads"], num_hidden_layers=t["vision_layers"],
                           image_size=t["image_size"], patch_size=t["patch_size"]),
        projection_dim=t["embed_dim"])


def _ids(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, 77, dtype=torch.long)
    for b in range(B):
        n = 3 + 4 * b
        ids[b, 0] = 49406
        ids[b, 1:n] = torch.randint(1, 49000, (n - 1,), generator=g)
        ids[b, n] = 49407
    return ids


def test_open_clip_and_openai_mapping_numerically():
    pytest.importorskip("open_clip")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    t = PRESETS["hivg-tiny"]  # an open_clip model with the tiny preset's dimensions
    oc = CLIP(embed_dim=t["embed_dim"], quick_gelu=True,
              vision_cfg=CLIPVisionCfg(layers=t["vision_layers"], width=t["vision_width"],
                                       head_width=t["vision_width"] // t["vision_heads"],
                                       mlp_ratio=t["vision_mlp"] / t["vision_width"], patch_size=t["patch_size"],
                                       image_size=t["image_size"]),
              text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=t["text_width"],
                                   heads=t["text_heads"], layers=t["text_layers"])).eval()
    for name, src in (("open_clip", oc.state_dict()),
                      ("openai", {**oc.state_dict(), "input_resolution": torch.tensor(128),
                                  "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)})):
        sd, info = convert_clip(src)
        assert info["source"] == "openai", name
        model = _tiny_clip_model()
        load_clip_into(model, sd)
        img = torch.randn(2, 3, 128, 128)
        ids = _ids()
        with torch.no_grad():
            ours_t = model.text_projection(model.text(ids)[2])
            ours_i = model.visual_projection(model.vision(img)[1])
            torch.testing.assert_close(ours_t, oc.encode_text(ids), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ours_i, oc.encode_image(img), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(model.logit_scale, oc.logit_scale)
            # official init of the multi-level projection: k copies of the visual projection
            k = len(model.cfg.extract_vision_layers)
            torch.testing.assert_close(model.ml_visual_projection.weight,
                                       torch.cat([model.visual_projection.weight] * k, 1))


def test_open_clip_vit_b16_keys_map_onto_hivg_b16():
    open_clip = pytest.importorskip("open_clip")
    oc = open_clip.create_model("ViT-B-16", pretrained=None)
    sd, _ = convert_clip(oc.state_dict())
    with torch.device("meta"):
        model = build_model("hivg-b16")
    own = model.state_dict()
    assert sorted(sd) == sorted(model.clip_parameter_names())
    assert all(tuple(sd[k].shape) == tuple(own[k].shape) for k in sd)


def test_hf_clip_mapping_numerically():
    pytest.importorskip("transformers")
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = _tiny_hf_clip_config(CLIPConfig)
    hf = CLIPModel(cfg).eval()
    sd, info = convert_clip(hf.state_dict())
    assert info["source"] == "hf"
    model = _tiny_clip_model()
    load_clip_into(model, sd)
    img, ids = torch.randn(2, 3, 128, 128), _ids()
    with torch.no_grad():
        t = hf.get_text_features(input_ids=ids)
        i = hf.get_image_features(pixel_values=img)
        t = t.pooler_output if hasattr(t, "pooler_output") else t
        i = i.pooler_output if hasattr(i, "pooler_output") else i
        torch.testing.assert_close(model.text_projection(model.text(ids)[2]), t, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.visual_projection(model.vision(img)[1]), i, rtol=1e-4, atol=1e-5)
    # peft-wrapped (debiased-CLIP file layout) gives the same result
    wrapped = {"model": {"base_model.model." + k: v for k, v in hf.state_dict().items()}}
    sd2, info2 = convert_clip(wrapped)
    assert info2["peft_depth"] == [1] and all(torch.equal(sd[k], sd2[k]) for k in sd)
    with pytest.raises(ConversionError, match="missing"):
        load_clip_into(_tiny_clip_model(), {k: v for k, v in sd.items() if k != "vision.ln_post.weight"})


def test_hilora_trainable_counts_match_official():
    """B/16 'unc' trainable counts per stage (the official counts): 59.69M / 62.25M / 62.84M / 63.62M of 213.24M.
    The official counts include unused modules we do not build (condition_text_proj, ml_text_feat_perceiver,
    condition_text_pos_embed, reg_pos_embed), all trainable."""
    unused = (512 * 768 + 768) * 2 + 77 * 768 + 512
    official = {0: 59.69e6, 1: 62.25e6, 2: 62.84e6, 3: 63.62e6}
    with torch.device("meta"):
        model = build_model({"model": "ViT-B/16", "dataset": "unc", "enable_adaptive_weights": True})
    total = sum(p.numel() for p in model.parameters())
    assert abs(total + unused - 213.24e6) < 0.006e6
    for stage, ref in official.items():
        model.set_hilora_stage(stage)
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert abs(n + unused - ref) < 0.006e6, (stage, n + unused)
    # stage 1: vision LoRA of blocks 0-4 only; text LoRA everywhere; CLIP base frozen; bridges trainable
    model.set_hilora_stage(1)
    tr = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "vision.blocks.4.attn.q.lora_a" in tr and "vision.blocks.5.attn.q.lora_a" not in tr
    assert "text.blocks.11.attn.out.lora_b" in tr and "text.blocks.0.attn.q.weight" not in tr
    assert "vision.blocks.7.bridge.attn.k.lora_a" in tr and "vision.blocks.7.bridge.gate.weight" in tr
    assert "logit_scale" not in tr and "visual_projection.weight" not in tr


def test_cli_converts_a_peft_wrapped_clip_file(tmp_path):
    pytest.importorskip("transformers")
    from transformers import CLIPConfig, CLIPModel

    from hivg.convert import main

    cfg = _tiny_hf_clip_config(CLIPConfig)
    hf = CLIPModel(cfg)
    src, dst = tmp_path / "debiased.pth", tmp_path / "ours.pth"
    torch.save({"model": {"base_model.model." + k: v for k, v in hf.state_dict().items()}}, src)
    assert main(["--src", str(src), "--dst", str(dst)]) == 0
    payload = torch.load(dst, weights_only=False)
    model = _tiny_clip_model()
    load_clip_into(model, payload["model"])
    torch.testing.assert_close(model.vision.pos_embed.detach(),
                               hf.state_dict()["vision_model.embeddings.position_embedding.weight"])
