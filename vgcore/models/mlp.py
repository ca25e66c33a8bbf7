"""A plain multi-layer perceptron (Linear -> ReLU -> ... -> Linear), as in DETR's box head.

Parameter names ``layers.{i}.weight/bias`` match DETR / detrex / SimVG, so official heads convert 1:1.
``return_intermediate=True`` returns every layer's output stacked on a new leading dim
([num_layers, *batch, dim]; only valid when all layers have the same width), as SimVG's token-branch MLP does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 return_intermediate: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP needs num_layers >= 1, got {num_layers}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.return_intermediate = return_intermediate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
            if self.return_intermediate:
                outs.append(x)
        return torch.stack(outs) if self.return_intermediate else x
