"""Layers shared by the U-Net and SyncNet transformers (same maths and parameter names in both upstream)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GEGLU(nn.Module):
    """Gated GELU: one projection to twice the width, split as value | gate, value * gelu(gate) (exact erf)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to `mult`x width, then back: `net.0.proj` (C -> 2*mult*C) and `net.2` (mult*C -> C).

    Index 1 is upstream's dropout, so the output layer keeps the checkpoint name `net.2`.
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
