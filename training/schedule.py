"""Learning-rate schedules of the release (step or cosine, per epoch), with optional linear warmup."""

from __future__ import annotations

import math

import torch


def lr_factor(epoch: int, iteration: int, iters_per_epoch: int, epochs: int, cosine: bool,
              warmup_epochs: float = 0.0, step_size: int = 30, gamma: float = 0.1) -> float:
    """Multiplier of the base lr for ``iteration`` of ``epoch`` (both 0-based).

    Step: ``gamma ** (epoch // step_size)``. Cosine, as the release steps ``CosineAnnealingLR`` before
    each epoch: ``(1 + cos(pi * (epoch + 1) / epochs)) / 2``. Warmup scales the first ``warmup_epochs``
    linearly from 1/warmup_iters to 1, iteration by iteration.
    """
    if cosine:
        factor = 0.5 * (1.0 + math.cos(math.pi * (epoch + 1) / epochs))
    else:
        factor = gamma ** (epoch // step_size)
    warmup_iters = round(warmup_epochs * iters_per_epoch)
    step = epoch * iters_per_epoch + iteration
    if step < warmup_iters:
        factor *= (step + 1) / warmup_iters
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, args, iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler stepped once per iteration; its ``last_epoch`` counts iterations."""

    def factor(step: int) -> float:
        epoch, iteration = divmod(step, iters_per_epoch)
        return lr_factor(epoch, iteration, iters_per_epoch, args.epochs, args.cos_lr, args.warmup_epochs)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
