"""SimAM: the parameter-free 3-D attention of Yang et al. (ICML 2021), Eq. 5-6 of the paper, as a module.

The formula is in ``simam_functional``; the kernels that run it in ``simam_kernels``. Each module runs the
implementation it was built with (``SimAM(implementation=...)``, ``create_net(..., simam_impl=...)``);
``set_simam_implementation(name, model)`` changes it on a built model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import simam_kernels
from .simam_functional import simam, simam_gate
from .simam_kernels import IMPLEMENTATIONS, check_implementation, get_default_implementation, simam_fused

# FX symbolic tracing (torchvision's create_feature_extractor, detection backbones) records the fused function
# as one leaf call instead of tracing into its shape checks and implementation choice.
torch.fx.wrap("simam_fused")

__all__ = ["IMPLEMENTATIONS", "SimAM", "get_simam_implementation", "set_simam_implementation", "simam",
           "simam_fused", "simam_gate"]


class SimAM(nn.Module):
    """SimAM attention module (no parameters). ``e_lambda`` is the paper's lambda (0.1 on ImageNet);
    ``channels`` is accepted, and unused, so that every attention module is built as ``cls(channels, ...)``.

    ``implementation``: 'auto' (compiled kernels where torch.compile can build them, else 'eager'), 'compiled',
    'eager' (the memory-efficient custom backward in plain PyTorch) or 'reference' (the paper's formula with
    autograd); None takes the default (``get_simam_implementation()``: env SIMAM_IMPL, else 'auto')."""

    def __init__(self, channels: int | None = None, e_lambda: float = 0.1, implementation: str | None = None) -> None:
        super().__init__()
        e_lambda = float(e_lambda)
        if not e_lambda > 0:  # also rejects NaN
            raise ValueError(f"SimAM lambda must be > 0, got {e_lambda}")
        self.e_lambda = e_lambda
        self.implementation = check_implementation(implementation or get_default_implementation())

    def forward(self, x: Tensor) -> Tensor:
        return simam_fused(x, self.e_lambda, self.implementation)  # checks that x is (N, C, H, W)

    def __repr__(self) -> str:
        return f"SimAM(lambda={self.e_lambda:g})"

    def __setstate__(self, state: dict) -> None:  # modules pickled before implementations were per module
        state.setdefault("implementation", get_default_implementation())
        super().__setstate__(state)

    @staticmethod
    def count_own_ops(shape: torch.Size) -> int:
        """Elementwise operations and reductions of one forward (mean, subtract, square, sum,
        divide, add, sigmoid, multiply per element; variance terms per channel)."""
        n, c, h, w = shape
        return 8 * n * c * h * w + 4 * n * c


def set_simam_implementation(name: str, model: nn.Module | None = None) -> int | None:
    """Choose how SimAM runs: 'auto', 'compiled', 'eager' or 'reference'.

    With ``model``: every SimAM module of ``model`` (and so every fused SimAM + BatchNorm pair) runs ``name``
    from now on; returns how many modules were changed. Without: the default of SimAM modules built from now on
    (``create_net``, ``SimAM()``); models built before keep theirs. Env ``SIMAM_IMPL`` sets the initial default.
    """
    check_implementation(name)
    if model is None:
        simam_kernels.set_default_implementation(name)
        return None
    modules = [m for m in model.modules() if isinstance(m, SimAM)]
    for module in modules:
        module.implementation = name
    return len(modules)


def get_simam_implementation(model: nn.Module | None = None) -> str | None:
    """The default implementation of new SimAM modules; with ``model``, the one its SimAM modules run ('mixed'
    if they differ, None without SimAM)."""
    if model is None:
        return get_default_implementation()
    names = {m.implementation for m in model.modules() if isinstance(m, SimAM)}
    return None if not names else names.pop() if len(names) == 1 else "mixed"
