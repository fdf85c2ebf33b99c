"""Non-finite losses: counted and kept out of the weights on the device, read on the host only at print
intervals and before a checkpoint is written."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .distributed import all_reduce_sum


class NonFiniteGuard:
    """Counts training steps whose loss is NaN/inf and skips their updates.

    A step with non-finite gradients makes no update: the gradient scaler skips it under fp16; otherwise the
    fused SGD kernel receives the same overflow flag (``found_inf``) the scaler would give it. All of this
    stays on the device: nothing waits for the GPU.
    """

    def __init__(self, device: torch.device) -> None:
        self.bad_steps = torch.zeros((), dtype=torch.int64, device=device)
        self._found_inf = torch.zeros(1, device=device)
        self._one = torch.ones(1, device=device)

    def count(self, loss: Tensor) -> None:
        self.bad_steps += (~torch.isfinite(loss.detach())).to(torch.int64)

    def flag_nonfinite_gradients(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Give ``optimizer`` (fused SGD) the overflow flag of this step's gradients, so it skips the update."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self._found_inf.zero_()
        if grads:  # the check GradScaler makes, with a unit scale
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self._found_inf, self._one)
        optimizer.found_inf = self._found_inf

    def read(self) -> int:
        """Non-finite steps so far, summed over all processes (reads the device)."""
        return int(all_reduce_sum(self.bad_steps.clone()).item())
