"""Learning-rate schedules by name, as one ``LambdaLR`` stepped per iteration, with optional linear warmup.

Every schedule is a factor of the base lr computed afresh from the iteration count (never chained from the
previous lr), so a scheduler restored from its ``state_dict`` continues exactly. ``step`` and ``release_cosine``
are the release's schedules, factor for factor.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class ScheduleOptions:
    """What a schedule's factor depends on besides the position."""

    epochs: int
    iters_per_epoch: int
    step_size: int = 30
    gamma: float = 0.1
    milestones: tuple[int, ...] = ()


def _step(epoch: int, step: int, o: ScheduleOptions) -> float:
    return o.gamma ** (epoch // o.step_size)


def _multistep(epoch: int, step: int, o: ScheduleOptions) -> float:
    return o.gamma ** bisect.bisect_right(o.milestones, epoch)


def _exponential(epoch: int, step: int, o: ScheduleOptions) -> float:
    return o.gamma ** epoch


def _cosine(epoch: int, step: int, o: ScheduleOptions) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * step / (o.epochs * o.iters_per_epoch)))


def _release_cosine(epoch: int, step: int, o: ScheduleOptions) -> float:
    # The release stepped CosineAnnealingLR(T_max=epochs) once before each epoch.
    return 0.5 * (1.0 + math.cos(math.pi * (epoch + 1) / o.epochs))


def _linear(epoch: int, step: int, o: ScheduleOptions) -> float:
    return 1.0 - step / (o.epochs * o.iters_per_epoch)


def _constant(epoch: int, step: int, o: ScheduleOptions) -> float:
    return 1.0


# name -> factor(epoch, step, options) of the base lr before warmup and lr_min; ``step`` counts iterations
# from 0 over the whole run, ``epoch`` is ``step // iters_per_epoch``.
SCHEDULE_FACTORS: dict[str, Callable[[int, int, ScheduleOptions], float]] = {
    "step": _step,
    "multistep": _multistep,
    "cosine": _cosine,
    "release_cosine": _release_cosine,
    "exponential": _exponential,
    "linear": _linear,
    "constant": _constant,
}
SCHEDULES = tuple(SCHEDULE_FACTORS)
# Schedules that decay towards lr_min; the others take lr_min = 0 only.
_WITH_LR_MIN = ("cosine", "linear")


def schedule_factor(name: str, step: int, options: ScheduleOptions, warmup_iters: int = 0,
                    min_ratio: float = 0.0) -> float:
    """Multiplier of a base lr at iteration ``step`` (0-based, over the whole run).

    ``min_ratio`` is lr_min / base lr: the factor is ``min_ratio + (1 - min_ratio) * f``. Warmup then multiplies
    it by ``(step + 1) / warmup_iters`` while ``step < warmup_iters``.
    """
    epoch = step // options.iters_per_epoch
    factor = SCHEDULE_FACTORS[name](epoch, step, options)
    if min_ratio:
        factor = min_ratio + (1.0 - min_ratio) * factor
    if step < warmup_iters:
        factor *= (step + 1) / warmup_iters
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, iters_per_epoch: int, *, epochs: int, name: str = "step",
                    warmup_epochs: float = 0.0, step_size: int = 30, gamma: float = 0.1, milestones: Sequence[int] = (),
                    lr_min: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per iteration (its ``last_epoch`` counts iterations) following ``name``.

    With ``e`` the epoch, ``t`` the iteration over the whole run (both from 0) and ``T = epochs * iters_per_epoch``,
    the lr of a group with base lr ``lr`` is ``lr * f``:

    - ``step``: ``gamma ** (e // step_size)`` (the release's default: x0.1 every 30 epochs);
    - ``multistep``: ``gamma ** (number of milestones <= e)``;
    - ``cosine``: ``lr_min + (lr - lr_min) * (1 + cos(pi * t / T)) / 2``, per iteration from ``lr`` towards
      ``lr_min`` (torch's ``CosineAnnealingLR(T_max=T, eta_min=lr_min)`` stepped per iteration);
    - ``release_cosine`` (the release's ``--cos_lr``): ``(1 + cos(pi * (e + 1) / epochs)) / 2``, per epoch;
    - ``exponential``: ``gamma ** e``;
    - ``linear``: ``lr_min + (lr - lr_min) * (1 - t / T)``, per iteration (with warmup, FFCV's triangular
      schedule);
    - ``constant``: ``1``.

    ``lr_min`` applies to ``cosine`` and ``linear`` only (any other schedule rejects a non-zero one). The schedules
    span the whole run, warmup included: warmup multiplies the factor by ``(t + 1) / W`` for ``t < W``,
    ``W = round(warmup_epochs * iters_per_epoch)``. A bad option raises ``ValueError``.
    """
    options = schedule_options(name, iters_per_epoch, epochs=epochs, warmup_epochs=warmup_epochs,
                               step_size=step_size, gamma=gamma, milestones=milestones, lr_min=lr_min)
    warmup_iters = round(warmup_epochs * iters_per_epoch)

    def factor_for(base_lr: float) -> Callable[[int], float]:
        min_ratio = lr_min / base_lr if base_lr else 0.0

        def factor(step: int) -> float:  # a plain function: LambdaLR saves no state for it
            return schedule_factor(name, step, options, warmup_iters, min_ratio)

        return factor

    base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_for(base_lr) for base_lr in base_lrs])


def schedule_options(name: str, iters_per_epoch: int, *, epochs: int, warmup_epochs: float = 0.0,
                     step_size: int = 30, gamma: float = 0.1, milestones: Sequence[int] = (),
                     lr_min: float = 0.0) -> ScheduleOptions:
    """Check the options of schedule ``name`` (``ValueError`` with one line if one is out of range)."""
    if name not in SCHEDULE_FACTORS:
        raise ValueError(f"unknown lr schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if epochs < 1 or iters_per_epoch < 1:
        raise ValueError(f"a schedule needs epochs >= 1 and iterations per epoch >= 1, not {epochs} and "
                         f"{iters_per_epoch}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup epochs must be >= 0, not {warmup_epochs}")
    if name == "step" and step_size < 1:
        raise ValueError(f"the step schedule needs a step size >= 1, not {step_size}")
    if name == "multistep" and (not milestones or min(milestones) < 0):
        raise ValueError(f"the multistep schedule needs milestones (epochs >= 0), not {list(milestones)}")
    if lr_min < 0:
        raise ValueError(f"lr_min must be >= 0, not {lr_min}")
    if lr_min and name not in _WITH_LR_MIN:
        raise ValueError(f"lr_min applies to the {' and '.join(_WITH_LR_MIN)} schedules only, not {name!r}")
    return ScheduleOptions(epochs, iters_per_epoch, step_size, gamma, tuple(sorted(int(m) for m in milestones)))

