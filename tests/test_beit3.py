"""vgcore/models/beit3.py: the multiway encoder against a naive per-token reference, padding behaviour,
drop-path schedule, and the pretrained loader (position table / patch-kernel resizing, strict reporting).
(Base-size numerics against the official code are covered by tests/test_simvg_golden.py.)"""

import pytest
import torch
import torch.nn.functional as F

from vgcore.checkpoint import resample_patch_kernel, resample_pos_table
from vgcore.models.beit3 import BEiT3, beit3_config, load_beit3_pretrained


def _tiny(**kw):
    torch.manual_seed(0)
    cfg = beit3_config("tiny", img_size=64, patch_size=16, vocab_size=1000, **kw)
    m = BEiT3(cfg).eval()
    with torch.no_grad():  # make LayerNorms / biases non-trivial so a wrong expert shows up
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m


def _reference(m, image, ids, pad):
    """Naive BEiT-3: per-token expert choice by a boolean vision mask, explicit masked softmax attention."""
    sd = {k: v for k, v in m.state_dict().items()}
    cfg = m.cfg
    D, H = cfg.embed_dim, cfg.num_heads
    B = image.shape[0]
    conv = F.conv2d(image, sd["vision_embed.proj.weight"], sd["vision_embed.proj.bias"], stride=cfg.patch_size)
    patches = conv.flatten(2).transpose(1, 2)
    vis = torch.cat([sd["vision_embed.cls_token"].expand(B, 1, D), patches], 1)
    nv = vis.shape[1]
    vis = vis + sd["encoder.embed_positions.A.weight"][2:2 + nv]
    txt = sd["text_embed.weight"][ids] + sd["encoder.embed_positions.B.weight"][2:2 + ids.shape[1]]
    x = torch.cat([vis, txt], 1)
    keymask = torch.cat([torch.zeros(B, nv, dtype=torch.bool), pad], 1)
    x = x * (~keymask)[..., None]
    is_vis = torch.arange(x.shape[1]) < nv

    def mw(name, t, fn):
        a, b = fn(t, "A"), fn(t, "B")
        return torch.where(is_vis[None, :, None], a, b)

    def lin(prefix):
        return lambda t, e: t @ sd[f"{prefix}.{e}.weight"].T + sd[f"{prefix}.{e}.bias"]

    def ln(prefix, dim=D):
        return lambda t, e: F.layer_norm(t, (t.shape[-1],), sd[f"{prefix}.{e}.weight"], sd[f"{prefix}.{e}.bias"], 1e-5)

    for i in range(cfg.num_layers):
        p = f"encoder.layers.{i}"
        h = mw("", x, ln(f"{p}.self_attn_layer_norm"))
        q = mw("", h, lin(f"{p}.self_attn.q_proj")).view(B, -1, H, D // H).transpose(1, 2)
        k = mw("", h, lin(f"{p}.self_attn.k_proj")).view(B, -1, H, D // H).transpose(1, 2)
        v = mw("", h, lin(f"{p}.self_attn.v_proj")).view(B, -1, H, D // H).transpose(1, 2)
        att = (q * (D // H) ** -0.5) @ k.transpose(-1, -2)
        att = att.masked_fill(keymask[:, None, None, :], float("-inf")).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(B, -1, D)
        o = mw("", o, ln(f"{p}.self_attn.inner_attn_ln"))
        x = x + mw("", o, lin(f"{p}.self_attn.out_proj"))
        h = mw("", x, ln(f"{p}.final_layer_norm"))

        def ffn(t, e):
            t = F.gelu(t @ sd[f"{p}.ffn.{e}.fc1.weight"].T + sd[f"{p}.ffn.{e}.fc1.bias"])
            t = F.layer_norm(t, (t.shape[-1],), sd[f"{p}.ffn.{e}.ffn_layernorm.weight"], sd[f"{p}.ffn.{e}.ffn_layernorm.bias"], 1e-5)
            return t @ sd[f"{p}.ffn.{e}.fc2.weight"].T + sd[f"{p}.ffn.{e}.fc2.bias"]

        x = x + mw("", h, ffn)
    return mw("", x, ln("encoder.layer_norm")), nv


def test_joint_forward_matches_naive_reference():
    m = _tiny()
    torch.manual_seed(1)
    image = torch.randn(2, 3, 64, 64)
    ids = torch.randint(3, 500, (2, 7))
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, 4:] = True
    with torch.no_grad():
        out = m(image, ids, pad)
        ref, nv = _reference(m, image, ids, pad)
    assert out["split"] == nv == 17
    torch.testing.assert_close(out["tokens"], ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["cls"], ref[:, 0])
    torch.testing.assert_close(out["img_tokens"], ref[:, 1:nv])
    torch.testing.assert_close(out["text_tokens"], ref[:, nv:])


def test_padded_text_ids_do_not_matter_and_image_only_uses_vision_expert():
    m = _tiny()
    image = torch.randn(1, 3, 64, 64)
    ids = torch.tensor([[0, 55, 66, 2, 1, 1]])
    pad = ids == 1
    ids2 = ids.clone()
    ids2[pad] = 999
    with torch.no_grad():
        a, b = m(image, ids, pad), m(image, ids2, pad)
        torch.testing.assert_close(a["tokens"][:, :-2], b["tokens"][:, :-2], atol=1e-6, rtol=1e-5)
        img_only = m(image)
        assert img_only["tokens"].shape == (1, 17, 128) and "text_tokens" not in img_only
        ref, _ = _reference(m, image, ids[:, :0], pad[:, :0])
        torch.testing.assert_close(img_only["tokens"], ref, atol=1e-5, rtol=1e-4)


def test_drop_path_schedule_and_train_mode():
    m = _tiny(drop_path_rate=0.2)
    rates = [layer.drop_path_rate for layer in m.encoder.layers]
    assert rates == pytest.approx([0.0, 0.1, 0.2])  # np.linspace(0, 0.2, 3)
    image, ids = torch.randn(4, 3, 64, 64), torch.randint(3, 500, (4, 5))
    with torch.no_grad():
        e1 = m(image, ids)["tokens"]
        m.train()
        torch.manual_seed(0)
        outs = [m(image, ids)["tokens"] for _ in range(4)]
    assert any(not torch.allclose(o, e1) for o in outs)


def test_bad_inputs_raise_clearly():
    m = _tiny()
    with pytest.raises(ValueError, match="img_size"):
        m(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="vocab_size"):
        m(torch.randn(1, 3, 64, 64), torch.tensor([[0, 1000]]))


def test_pretrained_loader_resizes_and_is_strict():
    src_cfg = beit3_config("tiny", img_size=64, patch_size=16, vocab_size=1000)  # 4x4 grid, kernel 16
    dst_cfg = beit3_config("tiny", img_size=96, patch_size=32, vocab_size=1000)  # 3x3 grid, kernel 32
    torch.manual_seed(0)
    src = BEiT3(src_cfg)
    ckpt = {"model": {"beit3." + k: v for k, v in src.state_dict().items()}}
    ckpt["model"]["logit_scale"] = torch.ones(())  # a pretraining-only key
    dst = BEiT3(dst_cfg)
    report = load_beit3_pretrained(dst, ckpt)
    assert report == {"ignored": ["logit_scale"]}
    A_src = src.encoder.embed_positions.A.weight.detach()
    A_dst = dst.encoder.embed_positions.A.weight.detach()
    assert A_dst.shape == (3 + 9, 128)
    torch.testing.assert_close(A_dst[:3], A_src[:3])
    grid = A_src[3:].reshape(1, 4, 4, 128).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(3, 3), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(9, 128)
    torch.testing.assert_close(A_dst[3:], want)
    k_src, k_dst = src.vision_embed.proj.weight.detach(), dst.vision_embed.proj.weight.detach()
    torch.testing.assert_close(k_dst, F.interpolate(k_src, size=(32, 32), mode="bicubic", align_corners=False))
    # no 1/4 rescale: the upsampled kernel keeps its magnitude, so the patch sum grows ~4x
    assert 3.0 < float(k_dst.sum((1, 2, 3)).abs().mean() / k_src.sum((1, 2, 3)).abs().mean()) < 5.0
    torch.testing.assert_close(dst.text_embed.weight, src.text_embed.weight)
    # same-geometry tables are passed through untouched
    assert resample_pos_table(A_src, (4, 4), 3) is A_src and resample_patch_kernel(k_src, 16) is k_src
    # a missing key is an error naming it
    del ckpt["model"]["beit3.encoder.layer_norm.B.bias"]
    with pytest.raises(RuntimeError, match="encoder.layer_norm.B.bias"):
        load_beit3_pretrained(BEiT3(dst_cfg), ckpt)
