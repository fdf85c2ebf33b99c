"""CBAM (Woo et al., ECCV 2018): channel gate then spatial gate, with the release's parameter names."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from .se import hidden_units


class ChannelGate(nn.Module):
    """Shared MLP over average- and max-pooled descriptors (``mlp.1``, ``mlp.3``; ``mlp.0`` flattens)."""

    def __init__(self, channels: int, reduction: float = 16) -> None:
        super().__init__()
        hidden = hidden_units(channels, reduction)
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        logits = self.mlp(x.mean(dim=[2, 3])) + self.mlp(x.amax(dim=[2, 3]))
        return x * torch.sigmoid(logits)[:, :, None, None]


class SpatialGate(nn.Module):
    """7x7 conv + BN over the channel-wise [max, mean] maps (``spatial.conv``, ``spatial.bn``)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.spatial = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False),
                # momentum 0.01 as in the release (slow running statistics)
                bn=nn.BatchNorm2d(1, eps=1e-5, momentum=0.01),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module: ``SpatialGate(ChannelGate(x))``."""

    def __init__(self, channels: int, reduction: float = 16) -> None:
        super().__init__()
        self.reduction = float(reduction)
        self.ChannelGate = ChannelGate(channels, reduction)
        self.SpatialGate = SpatialGate()

    def forward(self, x: Tensor) -> Tensor:
        return self.SpatialGate(self.ChannelGate(x))

    def extra_repr(self) -> str:
        return f"reduction={self.reduction:g}"

    @staticmethod
    def count_own_ops(shape: torch.Size) -> int:
        """Avg+max pools and scaling per element (channel gate), max+mean over channels and scaling per
        element (spatial gate), logit sum and sigmoid per channel, sigmoid per position."""
        n, c, h, w = shape
        return 6 * n * c * h * w + 2 * n * c + n * h * w
