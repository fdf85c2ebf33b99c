"""The release's SGD as one fused kernel, restoring saved optimizer states, and skipping non-finite steps.

The fused SGD kernel and ``NonFiniteGuard`` agree on one handshake, kept here: before ``optimizer.step()`` the
guard sets ``optimizer.found_inf`` to a one-element device tensor that is 1 when this step's gradients are not
finite, and the kernel then leaves the weights and momentum as they were. It is the flag ``GradScaler`` itself
hands the optimizer under fp16 (where the guard leaves the job to the scaler); nothing is read on the host.
``take_found_inf`` removes the flag after the step, so a later step without a guard does not see a stale one.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

# How our SGD runs, as opposed to what it computes: never taken from a saved state (the release saved
# non-fused states, and a fused step given found_inf by a non-fused group fails).
_IMPLEMENTATION_OPTIONS = ("fused", "foreach", "differentiable", "capturable")


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """The release's SGD, as one fused kernel that takes an overflow flag on the device. Momentum buffers start
    at zero, which is SGD's first step exactly (buffer = gradient) and keeps a skipped first step from leaving
    them uninitialised."""
    optimizer = torch.optim.SGD(model.parameters(), lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    _match_parameters(optimizer)
    return optimizer


def load_optimizer_state(optimizer: torch.optim.SGD, saved: Mapping[str, Any]) -> None:
    """Restore a saved SGD state (ours or the release's) into ``optimizer``.

    The hyper-parameters and momentum come from ``saved``; how the step runs (fused) stays ours; momentum
    buffers take each parameter's memory layout (a run saved contiguous may continue channels_last, and the
    reverse: the fused kernel assumes a buffer laid out as its parameter), and a missing buffer starts at zero.
    """
    ours = [{key: group[key] for key in _IMPLEMENTATION_OPTIONS if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, options in zip(optimizer.param_groups, ours):
        for key in _IMPLEMENTATION_OPTIONS:
            group.pop(key, None)
        group.update(options)
    _match_parameters(optimizer)


def _match_parameters(optimizer: torch.optim.SGD) -> None:
    """Give every parameter of a group with momentum a buffer with its dtype, device and strides."""
    for group in optimizer.param_groups:
        if not group["momentum"]:
            continue
        for parameter in group["params"]:
            state = optimizer.state[parameter]
            buffer = state.get("momentum_buffer")
            if buffer is None:
                state["momentum_buffer"] = torch.zeros_like(parameter)
            elif buffer.stride() != parameter.stride() or buffer.dtype != parameter.dtype:
                state["momentum_buffer"] = torch.empty_like(parameter).copy_(buffer)


class NonFiniteGuard:
    """Marks the training steps of an epoch whose loss is NaN/inf and skips the updates of steps whose gradients
    are not finite, all on the device.

    ``steps`` is the number of steps in the epoch; ``pending()`` hands the marks not yet counted to a
    synchronisation point (which adds them over processes: a step counts once however many processes saw it),
    and ``add_counted(n)`` records the result.
    """

    def __init__(self, device: torch.device, steps: int) -> None:
        self.marks = torch.zeros(steps, dtype=torch.float64, device=device)
        self.counted_until, self.bad_steps = 0, 0
        self._found_inf = torch.zeros(1, device=device)
        self._one = torch.ones(1, device=device)

    def mark(self, loss: Tensor, step: int) -> None:
        self.marks[step] = (~torch.isfinite(loss.detach())).to(self.marks.dtype)

    def flag_nonfinite_gradients(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Give ``optimizer`` (fused SGD) the overflow flag of this step's gradients, so it skips the update."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self._found_inf.zero_()
        if grads:  # the check GradScaler makes, with a unit scale
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self._found_inf, self._one)
        optimizer.found_inf = self._found_inf

    def pending(self, step: int) -> Tensor:
        """The marks of the steps after the last count, up to and including ``step``."""
        return self.marks[self.counted_until:step + 1]

    def add_counted(self, step: int, summed_marks: list[float]) -> int:
        """Record the marks up to ``step``, summed over processes; returns the epoch's bad steps so far."""
        self.bad_steps += sum(1 for value in summed_marks if value > 0)
        self.counted_until = step + 1
        return self.bad_steps


def take_found_inf(optimizer: torch.optim.Optimizer) -> None:
    """Remove the guard's flag after the step (see the module docstring)."""
    optimizer.__dict__.pop("found_inf", None)
