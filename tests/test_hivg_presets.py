"""The from-scratch tiny preset's initialisation choices (the pretrained presets keep CLIP's)."""
import math

import torch

from hivg.config import HiVGConfig
from hivg.model import build_model


def test_tiny_preset_starts_from_clip_initial_temperature():
    m = build_model("hivg-tiny")
    torch.testing.assert_close(m.logit_scale.exp(), torch.tensor(1 / 0.07))
    assert not m.logit_scale.requires_grad
    assert abs(HiVGConfig().logit_scale_init - math.log(100.0)) < 1e-6  # pretrained CLIP's value


def test_tiny_preset_uses_smooth_sine_position_tables():
    torch.manual_seed(0)
    m = build_model("hivg-tiny")
    g, N = m.cfg.grid, m.cfg.num_visu_tokens
    for table, first in ((m.vision.pos_embed.detach(), 1), (m.vl_pos_embed.detach(), 2)):
        rows = table[first:first + N].reshape(g, g, -1)
        near = (rows[:, 1:] - rows[:, :-1]).norm(dim=-1).mean()  # horizontal neighbours
        far = (rows[:, -1:] - rows[:, :1]).norm(dim=-1).mean()   # opposite edges
        assert near < 0.5 * far, (near, far)
        other = torch.cat([table[:first], table[first + N:]])  # CLS / [REG] / text rows keep the random init
        assert other.std() > 0
    # deterministic: the same tables for any seed; the pretrained presets keep CLIP's random tables
    torch.manual_seed(1)
    again = build_model("hivg-tiny")
    assert torch.equal(again.vision.pos_embed[1:], m.vision.pos_embed[1:])
    assert build_model("hivg-tiny", pos_init="clip").cfg.pos_init == "clip"
    assert HiVGConfig().pos_init == "clip"
