"""The release's SGD as one fused kernel, restoring saved optimizer states, and skipping non-finite steps.

The fused SGD kernel and ``NonFiniteGuard`` agree on one handshake, kept here: before ``optimizer.step()`` the
guard sets ``optimizer.found_inf`` to a one-element device tensor that is 1 when this step's loss or gradients are
not finite, and the kernel then leaves the weights and momentum as they were. It is the flag ``GradScaler`` itself
hands the optimizer under fp16 (where the guard leaves the job to the scaler, and ``skipped_flag`` reads the
scaler's record, as the scaler deletes the attribute after the step); nothing is read on the host. After the step
the guard puts back the buffers (BatchNorm statistics) that the skipped step's forward pass moved, and
``take_found_inf`` removes the flag, so a later step without a guard does not see a stale one.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .options import Options

# How our SGD runs, as opposed to what it computes: never taken from a saved state (the release saved
# non-fused states, and a fused step given found_inf by a non-fused group fails).
_IMPLEMENTATION_OPTIONS = ("fused", "foreach", "differentiable", "capturable")


# Modules whose parameters take ``norm_weight_decay``, as torchvision's references ``set_weight_decay``.
NORM_CLASSES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm, nn.RMSNorm,
)


@dataclass(frozen=True)
class SgdOptions(Options):
    """The optimizer's options (``build_optimizer``'s keywords), with the command line's defaults."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    norm_weight_decay: float | None = None
    bias_weight_decay: float | None = None

    def check(self) -> None:
        self.not_negative("lr", "weight_decay", "momentum", "norm_weight_decay", "bias_weight_decay")


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimizer (SGD)")
    arg = group.add_argument
    arg("--lr", "--learning-rate", default=SgdOptions.lr, type=float, metavar="LR", dest="lr",
        help="initial learning rate")
    arg("--momentum", default=SgdOptions.momentum, type=float, metavar="M", help="SGD momentum")
    arg("--wd", "--weight-decay", default=SgdOptions.weight_decay, type=float, metavar="W", dest="weight_decay",
        help="weight decay")
    arg("--nesterov", action="store_true", help="Nesterov momentum")
    arg("--norm-weight-decay", default=None, type=float,
        help="weight decay of normalisation layers' parameters (default: --wd)")
    arg("--bias-weight-decay", default=None, type=float, help="weight decay of biases (default: --wd)")


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float, nesterov: bool = False,
                    norm_weight_decay: float | None = None, bias_weight_decay: float | None = None) -> torch.optim.SGD:
    """The release's SGD, as one fused kernel that takes an overflow flag on the device. Momentum buffers start
    at zero, which is SGD's first step exactly (buffer = gradient) and keeps a skipped first step from leaving
    them uninitialised.

    ``norm_weight_decay`` and ``bias_weight_decay`` (None: ``weight_decay``) make parameter groups as
    ``weight_decay_groups`` does; with both None the model's parameters form one group, as in the release.
    """
    if norm_weight_decay is None and bias_weight_decay is None:
        params: Any = model.parameters()
    else:
        params = weight_decay_groups(model, weight_decay, norm_weight_decay, bias_weight_decay)
    optimizer = torch.optim.SGD(params, lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                fused=True)
    _match_parameters(optimizer)
    return optimizer


def weight_decay_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float | None = None,
                        bias_weight_decay: float | None = None) -> list[dict[str, Any]]:
    """SGD parameter groups with torchvision's ``set_weight_decay`` semantics: a parameter named ``bias`` takes
    ``bias_weight_decay``, any other parameter of a ``NORM_CLASSES`` module ``norm_weight_decay``, the rest
    ``weight_decay`` (None: ``weight_decay``).

    Groups of equal decay are merged; groups come in the order other, norm, bias (a merged one where its first
    kind comes), parameters in the order of ``model.parameters()``, empty groups are left out. Unlike
    torchvision, frozen parameters are kept (the groups hold every parameter, as the one group does).
    """
    decay_of = {"other": weight_decay,
                "norm": weight_decay if norm_weight_decay is None else norm_weight_decay,
                "bias": weight_decay if bias_weight_decay is None else bias_weight_decay}
    params: dict[float, list[nn.Parameter]] = {decay: [] for decay in decay_of.values()}  # first kind first
    seen: set[int] = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen:  # shared: its first module decides, as model.parameters() lists it once
                continue
            seen.add(id(parameter))
            if name == "bias" and bias_weight_decay is not None:
                kind = "bias"
            elif isinstance(module, NORM_CLASSES) and norm_weight_decay is not None:
                kind = "norm"
            else:
                kind = "other"
            params[decay_of[kind]].append(parameter)
    return [{"params": group, "weight_decay": decay} for decay, group in params.items() if group]


def load_optimizer_state(optimizer: torch.optim.SGD, saved: Mapping[str, Any]) -> None:
    """Restore a saved SGD state (ours or the release's) into ``optimizer``.

    The hyper-parameters (each group's lr, momentum, weight decay, nesterov) and momentum come from ``saved``;
    how the step runs (fused) stays ours; momentum buffers take each parameter's memory layout (a run saved
    contiguous may continue channels_last, and the reverse: the fused kernel assumes a buffer laid out as its
    parameter), and a missing buffer starts at zero. A state whose parameter groups differ in number or size
    from the optimizer's raises ``ValueError``.
    """
    saved_sizes = [len(group["params"]) for group in saved["param_groups"]]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != sizes:
        raise ValueError(f"the saved optimizer state has {_groups(saved_sizes)}, this optimizer {_groups(sizes)} "
                         "(the weight-decay parameter groups must be those of the run that saved it)")
    ours = [{key: group[key] for key in _IMPLEMENTATION_OPTIONS if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, options in zip(optimizer.param_groups, ours):
        for key in _IMPLEMENTATION_OPTIONS:
            group.pop(key, None)
        group.update(options)
    _match_parameters(optimizer)


def _groups(sizes: list[int]) -> str:
    """``sizes`` (parameters per group) in words: '1 parameter group (161 parameters)'."""
    return f"{len(sizes)} parameter group{'s' if len(sizes) != 1 else ''} ({' + '.join(map(str, sizes))} parameters)"


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
    """Marks the training steps of an epoch whose loss is NaN/inf and skips the steps whose loss or gradients are
    not finite, all on the device: no update of the weights or momentum, and ``model``'s buffers (BatchNorm running
    statistics and counts) as they were before the step. It adds a constant few operations to a step (9 on a CPU,
    counted by ``scripts/benchmark.py --suite guard``) when the buffers are stored flat (``flatten_buffers``, as
    training does): one copy before the step, one select after it; two operations per buffer otherwise.

    ``steps`` is the number of steps in the epoch; ``pending()`` hands the marks not yet counted to a
    synchronisation point (which adds them over processes: a step counts once however many processes saw it),
    and ``add_counted(n)`` records the result.
    """

    def __init__(self, device: torch.device, steps: int, model: nn.Module | None = None) -> None:
        self.marks = torch.zeros(steps, device=device)  # float32: the flag type of the check that writes them
        self._mark_of_step = list(self.marks.split(1))  # made once: no view operations in the steps
        self.counted_until, self.bad_steps = 0, 0
        self._found_inf = torch.zeros(1, device=device)
        self._loss = torch.zeros(1, device=device)
        self._one, self._zero = torch.ones(1, device=device), torch.zeros(1, device=device)
        buffers = list(model.buffers()) if model is not None else []
        self._buffers = flat_buffers(buffers) or buffers  # the bytes of all of them after ``flatten_buffers``
        self._saved = [torch.empty_like(buffer) for buffer in self._buffers]

    @torch.no_grad()
    def save_buffers(self) -> None:
        """Before the step's forward pass: keep the buffers it will move (a few kilobytes for these networks)."""
        for saved, buffer in zip(self._saved, self._buffers):
            saved.copy_(buffer)

    @torch.no_grad()
    def mark(self, loss: Tensor, step: int) -> None:
        """Mark step ``step`` when ``loss`` is not finite; this also starts the step's flag (``found_inf``)."""
        mark = self._mark_of_step[step]
        mark.zero_()
        self._loss.copy_(loss)
        torch._amp_foreach_non_finite_check_and_unscale_([self._loss], mark, self._one)  # isfinite in one operation
        self._found_inf.copy_(mark)

    def flag_nonfinite_gradients(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After ``mark``: give ``optimizer`` (fused SGD) the flag of this step's loss and gradients, so it skips the
        update."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:  # the check GradScaler makes, with a unit scale
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self._found_inf, self._one)
        optimizer.found_inf = self._found_inf

    @torch.no_grad()
    def restore_buffers_if_skipped(self, found_inf: Tensor | None) -> None:
        """After the step: where it was skipped (``found_inf``, from ``skipped_flag``), the buffers saved by
        ``save_buffers`` come back, bit for bit (a select, never arithmetic, as the moved values may be NaN);
        otherwise they stay. On the device, without a host sync."""
        if found_inf is None or not self._buffers:
            return
        skipped = torch.gt(found_inf, self._zero)  # (against a tensor: a Python 0 costs a copy of its own)
        for buffer, saved in zip(self._buffers, self._saved):
            torch.where(skipped if buffer.dim() else skipped.reshape(()), saved, buffer, out=buffer)

    def pending(self, step: int) -> Tensor:
        """The marks of the steps after the last count, up to and including ``step``."""
        return self.marks[self.counted_until:step + 1]

    def add_counted(self, step: int, summed_marks: list[float]) -> int:
        """Record the marks up to ``step``, summed over processes; returns the epoch's bad steps so far."""
        self.bad_steps += sum(1 for value in summed_marks if value > 0)
        self.counted_until = step + 1
        return self.bad_steps


def flatten_buffers(model: nn.Module) -> None:
    """Store all of ``model``'s buffers (BatchNorm running statistics and counts, whatever their dtypes) in one
    storage per device, so that ``NonFiniteGuard`` saves them in one copy and restores them in one select whatever
    the depth (two operations per buffer otherwise: 318 a step for ResNet-50). Each buffer stays a tensor of its own
    (not a view: autograd's version counter is its own, so one BatchNorm's update does not invalidate what another
    saved for backward); values, shapes, state dict keys and checkpoints are unchanged. Call it once the model is
    on its device and before anything keeps references to its buffers (DDP, an average of the weights); moving the
    model afterwards undoes it, harmlessly."""
    by_device: dict[torch.device, list[tuple[nn.Module, str, Tensor]]] = {}
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None:
                by_device.setdefault(buffer.device, []).append((module, name, buffer))
    with torch.no_grad():
        for device, entries in by_device.items():
            entries.sort(key=lambda entry: -entry[2].element_size())  # widest first: every offset stays aligned
            storage = torch.empty(sum(b.numel() * b.element_size() for _, _, b in entries), dtype=torch.uint8,
                                  device=device).untyped_storage()
            offset = 0  # bytes
            for module, name, buffer in entries:
                placed = torch.empty(0, dtype=buffer.dtype, device=device).set_(
                    storage, offset // buffer.element_size(), buffer.shape)
                module._buffers[name] = placed.copy_(buffer)
                offset += buffer.numel() * buffer.element_size()


def flat_buffers(buffers: list[Tensor]) -> list[Tensor] | None:
    """The bytes of each storage that ``buffers`` exactly fill (as ``flatten_buffers`` stores them), as uint8
    tensors; None when they are stored otherwise."""
    by_storage: dict[int, list[Tensor]] = {}
    for buffer in buffers:
        by_storage.setdefault(buffer.untyped_storage().data_ptr(), []).append(buffer)
    flats = []
    for group in by_storage.values():
        storage = group[0].untyped_storage()
        starts = {b.storage_offset() * b.element_size() for b in group}
        if (len(group) == 1 or len(starts) != len(group) or not all(b.is_contiguous() for b in group)
                or sum(b.numel() * b.element_size() for b in group) != storage.nbytes()):
            return None
        flats.append(torch.empty(0, dtype=torch.uint8, device=group[0].device).set_(storage, 0, (storage.nbytes(),)))
    return flats or None


def skipped_flag(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> Tensor | None:
    """After ``scaler.step(optimizer)`` and before ``scaler.update()``: the device flag that is > 0 when the step was
    skipped. Under fp16 that is the scaler's own record of overflowing gradients: the scaler hands the fused
    optimizer its flag as ``optimizer.found_inf`` but deletes it right after the step, and ``update()`` forgets its
    record. Otherwise it is the guard's flag (``NonFiniteGuard.flag_nonfinite_gradients``), or None without one."""
    if scaler.is_enabled():
        per_device = scaler._found_inf_per_device(optimizer)  # cleared by update()
        return sum(per_device.values()) if per_device else None
    return getattr(optimizer, "found_inf", None)


def take_found_inf(optimizer: torch.optim.Optimizer) -> None:
    """Remove the guard's flag after the step (see the module docstring)."""
    optimizer.__dict__.pop("found_inf", None)
