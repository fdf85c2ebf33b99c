"""SimAM: the parameter-free 3-D attention of Yang et al. (ICML 2021), Eq. 5-6 of the paper."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .simam_kernels import simam_fused

# FX symbolic tracing (torchvision's create_feature_extractor, detection backbones) records the fused function
# as one leaf call instead of tracing into its shape checks and implementation choice.
torch.fx.wrap("simam_fused")

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def simam(x: Tensor, e_lambda: float = 0.1) -> Tensor:
    """The paper's formula, in eager PyTorch (the reference ``SimAM`` modules are checked against): return
    ``x * sigmoid(1 / e_t*)`` for every neuron of an (N, C, H, W) tensor.

    Per channel, with M = H*W: ``d = (x - mean)^2``, ``v = sum(d) / (M - 1)`` and
    ``1 / e_t* = d / (4 (v + lambda)) + 0.5``. With a single neuron per channel (H*W = 1) there
    are no other neurons, so ``d = v = 0`` and the gate is ``sigmoid(0.5)`` (the limit of the
    formula, instead of the release's 0/0 = NaN). fp16/bf16 inputs are computed in fp32 (the
    channel sums overflow fp16 on large maps) and returned in the input dtype; the memory format
    (e.g. channels_last) is preserved.
    """
    if x.dim() != 4:
        raise ValueError(f"SimAM expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    return (xf * simam_gate(xf, e_lambda)).to(x.dtype)


def simam_gate(x: Tensor, e_lambda: float = 0.1) -> Tensor:
    """SimAM's gate ``sigmoid(1 / e_t*)`` for every neuron of an (N, C, H, W) tensor (``simam`` is ``x * gate``)."""
    n = max(x.shape[2] * x.shape[3] - 1, 1)
    d = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
    e_inv = d / (4 * (d.sum(dim=[2, 3], keepdim=True) / n + e_lambda)) + 0.5
    return torch.sigmoid(e_inv)


class SimAM(nn.Module):
    """SimAM attention module (no parameters). ``e_lambda`` is the paper's lambda (0.1 on ImageNet);
    ``channels`` is accepted, and unused, so that every attention module is built as ``cls(channels, ...)``.
    It runs the memory-efficient fused implementation (``networks.set_simam_implementation`` chooses)."""

    def __init__(self, channels: int | None = None, e_lambda: float = 0.1) -> None:
        super().__init__()
        e_lambda = float(e_lambda)
        if not e_lambda > 0:  # also rejects NaN
            raise ValueError(f"SimAM lambda must be > 0, got {e_lambda}")
        self.e_lambda = e_lambda

    def forward(self, x: Tensor) -> Tensor:
        return simam_fused(x, self.e_lambda)  # checks that x is (N, C, H, W)

    def __repr__(self) -> str:
        return f"SimAM(lambda={self.e_lambda:g})"

    @staticmethod
    def count_own_ops(shape: torch.Size) -> int:
        """Elementwise operations and reductions of one forward (mean, subtract, square, sum,
        divide, add, sigmoid, multiply per element; variance terms per channel)."""
        n, c, h, w = shape
        return 8 * n * c * h * w + 4 * n * c
