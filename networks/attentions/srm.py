"""SRM (Lee et al., ICCV 2019): style pooling (mean, std), channel-wise FC, BN and a sigmoid gate."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SRMModule(nn.Module):
    """Style-based recalibration. No hyper-parameter; the std uses the population variance + 1e-5,
    so it is defined for any spatial size."""

    eps = 1e-5

    def __init__(self, channels: int) -> None:
        super().__init__()
        # channel-wise fully connected: one (mean, std) -> 1 weight pair per channel
        self.cfc = nn.Conv1d(channels, channels, kernel_size=2, groups=channels, bias=False)
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(2)
        mean = flat.mean(dim=2)
        std = (flat.var(dim=2, unbiased=False) + self.eps).sqrt()
        style = torch.stack([mean, std], dim=2)  # (N, C, 2)
        gate = torch.sigmoid(self.bn(self.cfc(style)))  # (N, C, 1)
        return x * gate[..., None]

    @staticmethod
    def count_own_ops(shape: torch.Size) -> int:
        """Mean, variance (subtract, square, sum) and scaling per element; sqrt and sigmoid per channel."""
        n, c, h, w = shape
        return 5 * n * c * h * w + 2 * n * c
