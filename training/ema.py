"""An exponential moving average of the weights, with the semantics of torchvision's classification references.

The average is a ``torch.optim.swa_utils.AveragedModel`` over the parameters and the buffers (``use_buffers``):
an update after every ``steps`` optimizer steps, ``ema = decay * ema + (1 - decay) * model`` (an update of an
empty average copies the model), and during the warmup epochs the average is emptied after each update, so it
follows the model until the warmup ends. Its ``state_dict`` (``module.``-prefixed weights and ``n_averaged``) is
what a checkpoint saves as ``model_ema``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Mapping

from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

import networks

from .errors import UserError
from .options import Options


@dataclass(frozen=True)
class EmaOptions(Options):
    """``--model-ema``: whether and how the run keeps an average of the weights."""

    model_ema: bool = False
    model_ema_decay: float = 0.99998
    model_ema_steps: int = 32

    def check(self) -> None:
        self.at_least_one("model_ema_steps")
        if not 0.0 < self.model_ema_decay < 1.0:
            raise UserError(f"--model-ema-decay must be in (0, 1), got {self.model_ema_decay}")


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("weight averaging (EMA, torchvision's names and meanings)")
    arg = group.add_argument
    arg("--model-ema", action="store_true",
        help="keep an exponential moving average of the weights, evaluated every epoch beside the model")
    arg("--model-ema-decay", default=EmaOptions.model_ema_decay, type=float,
        help="EMA decay (adjusted for the batch size, --model-ema-steps and --epochs as torchvision does)")
    arg("--model-ema-steps", default=EmaOptions.model_ema_steps, type=int,
        help="update the EMA every N optimizer steps")


def ema_decay(decay: float, steps: int, total_batch_size: int, epochs: int) -> float:
    """The decay per update that torchvision's references derive from ``--model-ema-decay``.

    ``adjust = total_batch_size * steps / epochs`` (``total_batch_size``: images per optimizer step over all
    processes) stands for the inverse of the number of updates, up to the dataset size, so the average spans a
    similar share of the run whatever the batch size, ``steps`` and epochs: ``1 - min(1, (1 - decay) * adjust)``.
    """
    adjust = total_batch_size * steps / epochs
    alpha = min(1.0, (1.0 - decay) * adjust)
    return 1.0 - alpha


class ExponentialMovingAverage(AveragedModel):
    """The average of ``model``'s weights and buffers: a copy of ``model`` on its device and in its memory format,
    updated with ``decay`` every ``steps`` optimizer steps by ``maybe_update``."""

    def __init__(self, model: nn.Module, decay: float, steps: int = 1, warmup_epochs: float = 0.0) -> None:
        if steps < 1:
            raise ValueError(f"EMA steps must be >= 1, not {steps}")
        device = next(model.parameters()).device
        super().__init__(model, device, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay, self.steps, self.warmup_epochs = decay, steps, warmup_epochs
        self.updates = 0  # ``n_averaged`` as a host number: an update never reads the device

    def update_parameters(self, model: nn.Module) -> None:
        """``AveragedModel.update_parameters`` (an empty average copies ``model``, a later update averages), deciding
        on the host count ``updates`` instead of reading ``n_averaged`` back from the device twice, which would
        synchronise a GPU at every update."""
        averaged = [tensor.detach() for tensor in _weights_and_buffers(self.module)]
        current = [tensor.detach().to(mine.device) for tensor, mine in zip(_weights_and_buffers(model), averaged)]
        if self.updates == 0:
            for mine, theirs in zip(averaged, current):
                mine.copy_(theirs)
        else:
            groups = _group_tensors_by_device_and_dtype([averaged, current])
            for (device, _), ([mine, theirs], _) in groups.items():
                self.multi_avg_fn(mine, theirs, self.n_averaged.to(device))
        self.n_averaged += 1
        self.updates += 1

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        loaded = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.updates = int(self.n_averaged)  # once, when a checkpoint is loaded
        return loaded

    def empty(self) -> None:
        """Forget the average: the next update copies the model."""
        self.n_averaged.fill_(0)
        self.updates = 0

    def maybe_update(self, model: nn.Module, step_in_epoch: int, epoch: int,
                     warmup_epochs: float | None = None) -> bool:
        """After optimizer step ``step_in_epoch`` (0-based) of ``epoch``: update every ``steps`` steps (the first
        at step 0) and, while ``epoch < warmup_epochs`` (default: the EMA's own), empty the average again so the
        next update copies. Returns whether it updated."""
        if step_in_epoch % self.steps:
            return False
        self.update_parameters(model)
        if epoch < (self.warmup_epochs if warmup_epochs is None else warmup_epochs):
            self.empty()
        return True

    def weights(self) -> dict[str, Tensor]:
        """The averaged model's state dict as the model's own (no ``module.`` prefix, no ``n_averaged``)."""
        return self.module.state_dict()

    def restart(self, model: nn.Module) -> None:
        """Start the average again from ``model``'s weights (for a checkpoint that has none)."""
        for averaged, current in zip(_weights_and_buffers(self.module), _weights_and_buffers(model)):
            averaged.detach().copy_(current.detach())
        self.empty()


def build_ema(model: nn.Module, decay: float, steps: int, total_batch_size: int, epochs: int,
              warmup_epochs: float = 0.0) -> ExponentialMovingAverage:
    """The EMA of ``model`` with torchvision's ``--model-ema-decay`` (adjusted by ``ema_decay``) and
    ``--model-ema-steps``, reset during the ``warmup_epochs``; build it from the model without a DDP or
    ``torch.compile`` wrapper."""
    return ExponentialMovingAverage(model, ema_decay(decay, steps, total_batch_size, epochs), steps, warmup_epochs)


def ema_state(ema: ExponentialMovingAverage) -> dict[str, Any]:
    """What a checkpoint saves as ``model_ema``: the ``AveragedModel`` state dict."""
    return ema.state_dict()


def load_ema_state(ema: ExponentialMovingAverage, saved: Mapping[str, Any] | None, model: nn.Module) -> None:
    """Restore a checkpoint's ``model_ema`` exactly (strict; a mismatch raises ``RuntimeError``), into the EMA's
    own device and memory format; without one (``None``: a checkpoint saved without EMA) restart from ``model``."""
    if saved is None:
        ema.restart(model)
    else:
        ema.load_state_dict(saved)


def ema_weights_of(checkpoint: object, path: str) -> dict[str, Tensor]:
    """The EMA weights of a checkpoint, ``checkpoint['model_ema']``, as the model's state dict (without DDP's and
    AveragedModel's ``module.`` prefixes and without ``n_averaged``); a file without them is a ``UserError``."""
    try:
        return networks.ema_state_dict_of(checkpoint, path)
    except ValueError as error:
        raise UserError(str(error)) from None


def _weights_and_buffers(model: nn.Module) -> list[Tensor]:
    return [*model.parameters(), *model.buffers()]
