"""--grad_ckpt in VG-LAW's ViTDet ViT (each block with its language-adaptive qkv vector as an extra input), in
ResVG's DETR encoder and in ALVG's BEiT-3: the same outputs and gradients as the plain run, with fewer tensors
kept for the backward pass; and the --compile / --grad_ckpt flags of every method's command line."""

import pytest
import torch

from vgcore.models.checkpointing import grad_ckpt_modules, set_grad_ckpt


def _grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def _saved_mb(fn):
    """Megabytes of distinct tensors autograd keeps for the backward pass while ``fn()`` runs (the checkpointed
    blocks keep only their inputs)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values()) / 2 ** 20


def _compare(model, run, atol=1e-6, rtol=1e-5):
    """run(model) -> scalar loss; plain then checkpointed: returns (saved MB plain, saved MB checkpointed)."""
    res = []
    for on in (False, True):
        set_grad_ckpt(model, on)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        loss, mb = _saved_mb(lambda: run(model))
        loss.backward()
        res.append((loss.detach(), _grads(model), mb))
    set_grad_ckpt(model, False)
    (l0, g0, m0), (l1, g1, m1) = res
    torch.testing.assert_close(l1, l0, atol=0, rtol=0)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=atol, rtol=rtol, msg=n)
    return m0, m1


@pytest.mark.parametrize("law", ["svd", "la"])
def test_vglaw_vit_grad_ckpt_same_outputs_and_gradients_less_memory(law):
    from vglaw.loss import VGLAWCriterion
    from vglaw.model import build_model
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": 100, "law_type": law, "drop_path_rate": 0.2}).train()
    assert grad_ckpt_modules(model) == ["visual_encoder"]
    with torch.no_grad():  # a generator that adapts (the fresh svd generator outputs zeros)
        for p in model.weight_generator.proj:
            p[-1].weight.normal_(std=0.05)
    B, S, L = 2, model.cfg.img_size, model.cfg.max_len
    images, ids = torch.randn(B, 3, S, S), torch.randint(5, 100, (B, L))
    att = torch.zeros(B, L, dtype=torch.long)
    att[:, :6] = 1
    boxes = torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.3, 0.6, 0.2, 0.2]])
    masks = (torch.rand(B, S, S) > 0.7).float()
    crit = VGLAWCriterion()
    m0, m1 = _compare(model, lambda m: crit(m(images, ids, att), boxes, masks)["loss"])
    assert m1 < 0.75 * m0, (m0, m1)
    # the generator (its vectors enter every checkpointed block) still gets its gradients
    assert model.weight_generator.proj[0][-1].weight.grad is not None
    # no gradients: checkpointing is skipped, the same outputs
    model.eval()
    set_grad_ckpt(model, True)
    with torch.no_grad():
        a = model(images, ids, att)["pred_box"]
    set_grad_ckpt(model, False)
    with torch.no_grad():
        torch.testing.assert_close(model(images, ids, att)["pred_box"], a, atol=0, rtol=0)


def test_resvg_encoder_grad_ckpt_same_outputs_and_gradients_less_memory():
    from resvg.loss import ResVGCriterion
    from resvg.model import build_model
    torch.manual_seed(0)
    model = build_model({"model_preset": "tiny", "enc_layers": 3}).train()  # encoder dropout 0.1 on
    assert grad_ckpt_modules(model) == ["visual_encoder"]
    B, S, L = 2, model.cfg.img_size, model.cfg.max_query_len
    images = torch.randn(B, 3, S, S)
    ids = torch.zeros(B, L, dtype=torch.long)
    ids[:, 0], ids[:, 1:6], ids[:, 6] = 101, torch.randint(1000, 2000, (B, 5)), 102
    prior = torch.randn(B, model.cfg.prior_dim)
    target = torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.3, 0.6, 0.2, 0.2]])
    crit = ResVGCriterion(dict(weight_l1=5.0, weight_giou=2.0, aux_loss=True))

    def enc_only(m):  # the encoder's own saved tensors
        src = torch.randn(B, 64, m.cfg.hidden_dim, requires_grad=True)
        return m.visual_encoder(src, torch.randn(B, 64, m.cfg.hidden_dim)).square().mean()

    _compare(model, lambda m: crit(m.forward_tensors(images, None, ids, ids != 0, prior), target)["loss"])
    m0, m1 = _compare(model, enc_only)
    assert m1 < 0.5 * m0, (m0, m1)


def test_alvg_grad_ckpt_reaches_beit3_same_gradients():
    import types

    from alvg.loss import ALVGCriterion
    from alvg.model import build_model
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": 100}).train()
    assert grad_ckpt_modules(model) == ["beit3"]
    B, S = 2, model.cfg.img_size
    images, ids = torch.randn(B, 3, S, S), torch.randint(4, 100, (B, 8))
    pad = torch.zeros(B, 8, dtype=torch.bool)
    pad[:, 5:] = True
    tgt = types.SimpleNamespace(target_boxes=[torch.tensor([[0.5, 0.5, 0.3, 0.4]])] * B,
                                masks=torch.zeros(B, S, S, dtype=torch.uint8))
    tgt.masks[:, 32:96, 40:80] = 1
    crit = ALVGCriterion({}, model.cfg.compat())
    m0, m1 = _compare(model, lambda m: crit(m.forward_tensors(images, ids, pad), tgt)["loss"], atol=1e-5, rtol=1e-4)
    assert m1 < m0


@pytest.mark.parametrize("name", ["resvg", "vglaw", "alvg"])
def test_speed_flags_parse_and_apply(name):
    import importlib

    from vgcore.method import train_parser
    from vgcore.speed import apply_speed_flags
    method = importlib.import_module(f"{name}.method")
    args = train_parser(method).parse_args(["--compile", "--grad_ckpt"])
    assert args.compile and args.grad_ckpt
    model = {"resvg": lambda: __import__("resvg.model").model.build_model({"model_preset": "tiny"}),
             "vglaw": lambda: __import__("vglaw.model").model.build_model({"preset": "tiny", "vocab_size": 100}),
             "alvg": lambda: __import__("alvg.model").model.build_model({"preset": "tiny", "vocab_size": 100})}[name]()
    args.compile = False  # compiling is slow; apply_speed_flags' compile path is vgcore's, tested there
    apply_speed_flags(model, args)
    assert all(getattr(dict(model.named_modules())[n], "grad_ckpt") for n in grad_ckpt_modules(model))


@pytest.mark.parametrize("law", ["svd", "la", "od3"])
def test_vglaw_trains_under_bf16_autocast(law):
    """--amp bf16: the adapted qkv (svd's in-place accumulation of S u included) runs under autocast, and the
    outputs stay close to float32's."""
    from vglaw.model import build_model
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": 100, "law_type": law}).train()
    with torch.no_grad():
        for p in model.weight_generator.proj:
            p[-1].weight.normal_(std=0.05)
    images, ids = torch.randn(2, 3, 128, 128), torch.randint(5, 100, (2, model.cfg.max_len))
    att = torch.ones_like(ids)
    ref = model(images, ids, att)["pred_box"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, ids, att)
    out["pred_box"].float().sum().backward()
    torch.testing.assert_close(out["pred_box"].float(), ref, atol=0.03, rtol=0)
    assert model.visual_encoder.blocks[0].attn.qkv.weight.grad is not None
