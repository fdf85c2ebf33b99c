"""Learning-rate schedules by name, as one ``LambdaLR`` stepped per iteration, with optional linear warmup.

Every schedule is a factor of the base lr computed afresh from the iteration count (never chained from the
previous lr), so a scheduler restored from its ``state_dict`` continues exactly. ``step`` and ``release_cosine``
are the release's schedules, factor for factor.
"""

from __future__ import annotations

import argparse
import bisect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .errors import UserError
from .options import Options, user_errors


@dataclass(frozen=True)
class LrSchedule(Options):
    """The learning-rate schedule's options (``build_scheduler``'s keywords), with the command line's defaults."""

    epochs: int
    name: str = "step"
    warmup_epochs: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    milestones: tuple[int, ...] = ()
    lr_min: float = 0.0

    DESTS = {"name": "lr_scheduler", "step_size": "lr_step_size", "gamma": "lr_gamma", "milestones": "lr_milestones"}

    @classmethod
    def values_of(cls, args) -> dict[str, Any]:
        """``--lr-scheduler`` by name (default: step, or release_cosine with the release's ``--cos_lr``)."""
        values = super().values_of(args)
        cos_lr = getattr(args, "cos_lr", False)
        if cos_lr and values.get("name") not in (None, "release_cosine"):
            raise UserError(f"--cos_lr is the release's name for --lr-scheduler release_cosine; it cannot be combined "
                            f"with --lr-scheduler {values['name']}")
        values["name"] = values.get("name") or ("release_cosine" if cos_lr else "step")
        values["milestones"] = tuple(values.get("milestones", ()))
        return values

    def check(self) -> None:
        self.at_least_one("step_size")
        self.not_negative("warmup_epochs", "gamma", "lr_min")
        user_errors(self.validate)

    def validate(self) -> None:
        """``ValueError`` with one line if an option is out of range."""
        if self.name not in SCHEDULE_FACTORS:
            raise ValueError(f"unknown lr schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup epochs must be >= 0, not {self.warmup_epochs}")
        if self.name == "step" and self.step_size < 1:
            raise ValueError(f"the step schedule needs a step size >= 1, not {self.step_size}")
        if self.name == "multistep" and (not self.milestones or min(self.milestones) < 0):
            raise ValueError(f"the multistep schedule needs milestones (epochs >= 0), not {list(self.milestones)}")
        if self.lr_min < 0:
            raise ValueError(f"lr_min must be >= 0, not {self.lr_min}")
        if self.lr_min and self.name not in _WITH_LR_MIN:
            raise ValueError(f"lr_min applies to the {' and '.join(_WITH_LR_MIN)} schedules only, not {self.name!r}")


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("learning-rate schedule (stepped per iteration)")
    arg = group.add_argument
    arg("--lr-scheduler", default=None, choices=SCHEDULES,
        help="learning-rate schedule by name (default: step, or release_cosine with --cos_lr); "
             "stepped per iteration, combined with --warmup-epochs")
    arg("--cos_lr", action="store_true",
        help="cosine learning rate, per epoch as in the release: epoch e uses lr * (1 + cos(pi (e+1) / epochs)) / 2")
    arg("--warmup-epochs", default=LrSchedule.warmup_epochs, type=float,
        help="linear learning-rate warmup, in epochs (per iteration)")
    arg("--lr-step-size", default=LrSchedule.step_size, type=int, help="step: decay every N epochs")
    arg("--lr-gamma", default=LrSchedule.gamma, type=float, help="step, multistep, exponential: decay factor")
    arg("--lr-milestones", default=list(LrSchedule.milestones), type=int, nargs="+", metavar="EPOCH",
        help="multistep: epochs of the decays")
    arg("--lr-min", default=LrSchedule.lr_min, type=float, help="cosine: the learning rate it ends at")


def _step(epoch: int, step: int, o: LrSchedule, total: int) -> float:
    return o.gamma ** (epoch // o.step_size)


def _multistep(epoch: int, step: int, o: LrSchedule, total: int) -> float:
    return o.gamma ** bisect.bisect_right(o.milestones, epoch)


def _exponential(epoch: int, step: int, o: LrSchedule, total: int) -> float:
    return o.gamma ** epoch


def _cosine(epoch: int, step: int, o: LrSchedule, total: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


def _release_cosine(epoch: int, step: int, o: LrSchedule, total: int) -> float:
    # The release stepped CosineAnnealingLR(T_max=epochs) once before each epoch.
    return 0.5 * (1.0 + math.cos(math.pi * (epoch + 1) / o.epochs))


def _linear(epoch: int, step: int, o: LrSchedule, total: int) -> float:
    return 1.0 - step / total


def _constant(epoch: int, step: int, o: LrSchedule, total: int) -> float:
    return 1.0


# name -> factor(epoch, step, schedule, total steps) of the base lr before warmup and lr_min; ``step`` counts
# iterations from 0 over the whole run, ``epoch`` is ``step // iters_per_epoch``.
SCHEDULE_FACTORS: dict[str, Callable[[int, int, LrSchedule, int], float]] = {
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


def schedule_factor(schedule: LrSchedule, step: int, iters_per_epoch: int, min_ratio: float = 0.0) -> float:
    """Multiplier of a base lr at iteration ``step`` (0-based, over the whole run).

    ``min_ratio`` is lr_min / base lr: the factor is ``min_ratio + (1 - min_ratio) * f``. Warmup then multiplies
    it by ``(step + 1) / W`` while ``step < W``, ``W = round(warmup_epochs * iters_per_epoch)``.
    """
    factor = SCHEDULE_FACTORS[schedule.name](step // iters_per_epoch, step, schedule,
                                             schedule.epochs * iters_per_epoch)
    if min_ratio:
        factor = min_ratio + (1.0 - min_ratio) * factor
    warmup_iters = round(schedule.warmup_epochs * iters_per_epoch)
    if step < warmup_iters:
        factor *= (step + 1) / warmup_iters
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, iters_per_epoch: int,
                    **options: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per iteration (its ``last_epoch`` counts iterations) following ``options``
    (``LrSchedule``'s fields: ``epochs``, and ``name``, ``warmup_epochs``, ``step_size``, ``gamma``,
    ``milestones``, ``lr_min`` with its defaults).

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
    schedule = LrSchedule(**{**options, "milestones": tuple(sorted(int(m) for m in options.get("milestones", ())))})
    schedule.validate()
    if schedule.epochs < 1 or iters_per_epoch < 1:
        raise ValueError(f"a schedule needs epochs >= 1 and iterations per epoch >= 1, not {schedule.epochs} and "
                         f"{iters_per_epoch}")

    def factor_for(base_lr: float) -> Callable[[int], float]:
        min_ratio = schedule.lr_min / base_lr if base_lr else 0.0

        def factor(step: int) -> float:  # a plain function: LambdaLR saves no state for it
            return schedule_factor(schedule, step, iters_per_epoch, min_ratio)

        return factor

    base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_for(base_lr) for base_lr in base_lrs])
