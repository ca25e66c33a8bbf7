"""The speed paths compute the same function as the plain ones: BEiT-3's separate vision / text streams against
the joint-sequence layer (outputs and gradients, drop-path on), HiVG's composed segmentation kernel against the
three transposed convolutions, and activation checkpointing against the plain backward."""

import torch

from vgcore.models.beit3 import BEiT3, beit3_config, drop_path
from vgcore.models.checkpointing import checkpoint_blocks, grad_ckpt_modules, set_grad_ckpt


def _beit3(**kw):
    torch.manual_seed(0)
    m = BEiT3(beit3_config("tiny", img_size=64, patch_size=16, vocab_size=1000, **kw))
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m


def _joint_forward(m, image, ids, pad):
    """BEiT-3 through the joint-sequence API (EncoderLayer.forward(x, split, mask)), as before the streams."""
    pos = m.encoder.embed_positions
    v = m.vision_embed(image)
    t = m.text_embed(ids)
    nv, nt = v.shape[1], t.shape[1]
    x = torch.cat([v, t], 1) + pos(nv, nt)
    padj = torch.cat([pad.new_zeros(pad.shape[0], nv), pad], 1)
    x = x * (~padj)[..., None]
    for layer in m.encoder.layers:
        x = layer(x, nv, (~padj)[:, None, None, :])
    return m.encoder.layer_norm(x, nv)


def _grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_beit3_streams_match_the_joint_sequence_with_drop_path():
    m = _beit3(drop_path_rate=0.3).train()
    image, ids = torch.randn(3, 3, 64, 64), torch.randint(3, 900, (3, 6))
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    torch.manual_seed(5)
    a = m(image, ids, pad)["tokens"]
    (a * torch.linspace(-1, 1, a.shape[-1])).sum().backward()
    ga = _grads(m)
    m.zero_grad()
    torch.manual_seed(5)  # the same drop-path draws in the same order
    b = _joint_forward(m, image, ids, pad)
    (b * torch.linspace(-1, 1, b.shape[-1])).sum().backward()
    gb = _grads(m)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert ga.keys() == gb.keys() and ga
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-4, rtol=1e-4, msg=n)


def test_drop_path_scales_per_sample():
    torch.manual_seed(0)
    x = torch.ones(64, 3, 2)
    y = drop_path(x, 0.25, True)
    per = y[:, 0, 0]
    assert bool(((per == 0) | torch.isclose(per, torch.tensor(1 / 0.75))).all()) and 0 < int((per == 0).sum()) < 64
    assert torch.equal(y, per[:, None, None].expand_as(y))
    assert drop_path(x, 0.25, False) is x


def test_hivg_composed_seg_kernel_equals_the_transposed_convolutions():
    from hivg.model import seg_mask_from_patches
    torch.manual_seed(0)
    ups = torch.nn.Sequential(*[torch.nn.ConvTranspose2d(12, 12, 2, 2, bias=False) for _ in range(3)]).double()
    p = torch.randn(2, 12, 3, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 12, dtype=torch.float64)
    ref = torch.einsum("bchw,bc->bhw", ups(p), v)[:, None]
    out = seg_mask_from_patches(p, [m.weight for m in ups], v)
    assert out.shape == (2, 1, 24, 24)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    g_ref = torch.autograd.grad(ref.square().sum(), [p, *ups.parameters()])
    g_out = torch.autograd.grad(out.square().sum(), [p, *ups.parameters()])
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_checkpointed_backbone_gives_the_same_gradients():
    m = _beit3(drop_path_rate=0.2).train()
    assert grad_ckpt_modules(m) == [""]
    image, ids = torch.randn(2, 3, 64, 64), torch.randint(3, 900, (2, 5))
    runs = []
    for on in (False, True):
        set_grad_ckpt(m, on)
        m.zero_grad()
        torch.manual_seed(1)
        out = m(image, ids)["tokens"]
        out.square().mean().backward()
        runs.append((out.detach(), _grads(m)))
    torch.testing.assert_close(runs[0][0], runs[1][0])
    for n, g in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][n], g, msg=n)


def test_checkpoint_blocks_collects_hidden_states():
    blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
    x = torch.randn(2, 4, requires_grad=True)
    y, hidden = checkpoint_blocks(blocks, x, collect=True)
    ref = x
    for b in blocks:
        ref = b(ref)
    assert len(hidden) == 3 and torch.allclose(y, ref)
    g1, = torch.autograd.grad(y.sum(), x)
    g2, = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g1, g2)


def test_hivg_grad_ckpt_same_gradients_and_towers_covered():
    from hivg.loss import HiVGCriterion
    from hivg.model import build_model
    torch.manual_seed(0)
    model = build_model("hivg-tiny")
    model.cfg.fusion_dropout = 0.0
    names = set_grad_ckpt(model, False)
    assert set(names) == {"text", "vision", "fusion"}
    model.train()
    B, S = 2, model.cfg.image_size
    img, mask = torch.randn(B, 3, S, S), torch.zeros(B, S, S, dtype=torch.bool)
    ids = torch.zeros(B, model.cfg.context_length, dtype=torch.long)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 49406, 500, 49407

    class _B:  # the fields the criterion reads
        boxes = torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.4, 0.6, 0.2, 0.2]])
        pixel_mask = mask
        images = img
        masks = None

    runs = []
    for on in (False, True):
        set_grad_ckpt(model, on)
        model.zero_grad()
        torch.manual_seed(3)
        loss = HiVGCriterion()(model.forward_tensors(img, mask, ids), _B)["loss"]
        loss.backward()
        runs.append((loss.detach(), _grads(model)))
    torch.testing.assert_close(runs[0][0], runs[1][0])
    assert runs[0][1].keys() == runs[1][1].keys()
    for n, g in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][n], g, atol=1e-5, rtol=1e-4, msg=n)


def test_beit3_vision_queries_gives_the_same_cls_and_text():
    m = _beit3().eval()
    image, ids = torch.randn(2, 3, 64, 64), torch.randint(3, 900, (2, 6))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:] = True
    with torch.no_grad():
        full = m(image, ids, pad)
        part = m(image, ids, pad, vision_queries=1)
    assert "img_tokens" not in part and part["split"] == 1 and part["tokens"].shape[1] == 7
    torch.testing.assert_close(part["cls"], full["cls"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part["text_tokens"], full["text_tokens"], atol=1e-5, rtol=1e-5)


def test_simvg_token_branch_equals_the_both_branch_run():
    from simvg.model import build_model
    torch.manual_seed(0)
    model = build_model({"preset": "tiny"}).eval()
    S = model.cfg.img_size
    images, ids = torch.randn(2, 3, S, S), torch.randint(4, 500, (2, 8))
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[1, 5:] = True
    with torch.no_grad():
        both = model.forward_tensors(images, ids, pad, branch="both")
        tok = model.forward_tensors(images, ids, pad, branch="token")
    torch.testing.assert_close(tok["pred_boxes"], both["token_boxes"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tok["pred_logits"], both["token_logits"], atol=1e-5, rtol=1e-5)
