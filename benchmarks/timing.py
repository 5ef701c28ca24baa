"""Timing primitives of the benchmark suite: a clock that waits for the device, quartiles
of a series, the load average (other work on the machine inflates wall-clock times)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

NOISY = 1.2  # upper/lower quartile ratio above which a series is flagged as disturbed


def quartiles(ts: list[float]) -> tuple[float, float, float]:
    """(lower quartile, median, upper quartile) of a series; one value repeats for n = 1.

    Inclusive quartiles (linear interpolation between order statistics): they stay within
    [min, max] for the short series of a smoke run, where the exclusive ones extrapolate.
    """
    if len(ts) == 1:
        return ts[0], ts[0], ts[0]
    q = statistics.quantiles(ts, n=4, method="inclusive")
    return q[0], statistics.median(ts), q[2]


def spread(ts: list[float]) -> float:
    """Upper over lower quartile: near 1 on a quiet machine, large when something else ran."""
    q1, _, q3 = quartiles(ts)
    return q3 / q1 if q1 > 0 else float("inf")


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages, if the platform reports them."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock time covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start
