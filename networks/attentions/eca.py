"""ECA (Wang et al., CVPR 2020): a 1-D conv across channels of the pooled descriptor."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def adaptive_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's kernel size rule k = |log2(C)/gamma + b/gamma|, rounded to the nearest odd number above."""
    k = int(abs((math.log2(channels) + b) / gamma))
    return k if k % 2 else k + 1


class ECAModule(nn.Module):
    """Efficient channel attention. ``kernel_size=None`` picks ECA's adaptive size from the channel count."""

    def __init__(self, channels: int, kernel_size: int | None = None) -> None:
        super().__init__()
        if kernel_size is None:
            kernel_size = adaptive_kernel_size(channels)
        if not (float(kernel_size).is_integer() and kernel_size >= 1 and int(kernel_size) % 2 == 1):
            raise ValueError("ECA kernel size must be an odd integer >= 1 (or omitted for adaptive), "
                             f"got {kernel_size}")
        kernel_size = int(kernel_size)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        descriptor = x.mean(dim=[2, 3])[:, None, :]  # (N, 1, C)
        gate = torch.sigmoid(self.conv(descriptor))[:, 0, :, None, None]
        return x * gate

    @staticmethod
    def count_own_ops(shape: torch.Size) -> int:
        """Average pool and scaling per element, sigmoid per channel."""
        n, c, h, w = shape
        return 2 * n * c * h * w + n * c
