"""LoRALinear skips a frozen all-zero adapter exactly, and re-checks after loads and in-place edits."""
import torch
import torch.nn.functional as F

from hivg.lora import LoRALinear


def _frozen(lin):
    lin.lora_a.requires_grad_(False)
    lin.lora_b.requires_grad_(False)
    return lin


def test_frozen_zero_adapter_is_skipped_without_touching_the_rng():
    torch.manual_seed(0)
    lin = _frozen(LoRALinear(8, 5, rank=4, alpha=8, dropout=0.5)).train()
    x = torch.randn(3, 8)
    state = torch.get_rng_state()
    y = lin(x)
    assert torch.equal(torch.get_rng_state(), state), "the skipped branch must not draw a dropout mask"
    assert torch.equal(y, F.linear(x, lin.weight, lin.bias))
    assert not lin.adapter_active()


def test_trainable_adapter_always_runs():
    lin = LoRALinear(8, 5, rank=4, alpha=8, dropout=0.0)
    assert lin.adapter_active()  # B is zero but trainable: it needs its gradient
    x = torch.randn(3, 8)
    lin(x).sum().backward()
    assert lin.lora_b.grad is not None and lin.lora_b.grad.abs().sum() > 0


def test_frozen_adapter_reactivates_after_in_place_edit_and_load():
    g = torch.Generator().manual_seed(1)
    lin = _frozen(LoRALinear(8, 5, rank=4, alpha=8, dropout=0.0)).eval()
    x = torch.randn(3, 8, generator=g)
    lin(x)  # caches "B is zero"
    B = torch.randn(5, 4, generator=g)
    with torch.no_grad():
        lin.lora_b.copy_(B)
    ref = x @ (lin.weight + 2.0 * B @ lin.lora_a).t() + lin.bias
    torch.testing.assert_close(lin(x), ref)
    # a strict load of another adapter into a frozen layer is seen too
    sd = {k: v.clone() for k, v in lin.state_dict().items()}
    sd["lora_b"] = 2 * B
    lin2 = _frozen(LoRALinear(8, 5, rank=4, alpha=8, dropout=0.0)).eval()
    lin2(x)
    lin2.load_state_dict(sd)
    ref2 = x @ (sd["weight"] + 2.0 * (2 * B) @ sd["lora_a"]).t() + sd["bias"]
    torch.testing.assert_close(lin2(x), ref2)
    # merged: the adapter lives in W, the branch is off
    lin2.merge()
    assert not lin2.adapter_active()
    torch.testing.assert_close(lin2(x), ref2, rtol=1e-5, atol=1e-5)
