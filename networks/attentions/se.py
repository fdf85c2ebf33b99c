"""Squeeze-and-Excitation (Hu et al., CVPR 2018) with the release's parameter names."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def hidden_units(channels: int, reduction: float) -> int:
    """Hidden width of a C -> C/r -> C bottleneck, as the release computes it (int(C // r))."""
    reduction = float(reduction)
    if not reduction >= 1:
        raise ValueError(f"reduction ratio must be >= 1, got {reduction:g}")
    hidden = int(channels // reduction)
    if hidden < 1:
        raise ValueError(f"reduction ratio {reduction:g} leaves no hidden unit for {channels} channels")
    return hidden


class SEModule(nn.Module):
    """Channel gate ``x * sigmoid(W2 relu(W1 avgpool(x)))``; linears without bias (``fc.0``, ``fc.2``)."""

    def __init__(self, channels: int, reduction: float = 16) -> None:
        super().__init__()
        hidden = hidden_units(channels, reduction)
        self.reduction = float(reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc(x.mean(dim=[2, 3]))
        return x * gate[:, :, None, None]

    def extra_repr(self) -> str:
        return f"reduction={self.reduction:g}"

    @staticmethod
    def count_own_ops(shape: torch.Size) -> int:
        """Average pool and scaling per element, pool division and sigmoid per channel."""
        n, c, h, w = shape
        return 2 * n * c * h * w + 2 * n * c
