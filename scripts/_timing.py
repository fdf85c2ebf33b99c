"""Timing candidates against each other within one run, as the benchmarks report them."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Hashable, TypeVar

Name = TypeVar("Name", bound=Hashable)


def alternate(candidates: dict[Name, Callable[[], object]], rounds: int, per_round: int = 1,
              synchronize: Callable[[], None] = lambda: None) -> dict[Name, float]:
    """Median seconds per call of each candidate over ``rounds`` rounds.

    A round times ``per_round`` calls of every candidate in turn, in reverse order every other round, so
    that each ratio compares candidates under the same machine load. ``synchronize`` waits for queued
    device work (CUDA) before the clock is read.
    """
    times: dict[Name, list[float]] = {name: [] for name in candidates}
    order = list(candidates)
    for round_ in range(rounds):
        for name in order if round_ % 2 == 0 else order[::-1]:
            synchronize()
            start = time.perf_counter()
            for _ in range(per_round):
                candidates[name]()
            synchronize()
            times[name].append((time.perf_counter() - start) / per_round)
    return {name: statistics.median(values) for name, values in times.items()}
