"""Timing helpers shared by the benchmark scripts (imported as ``timing`` when a script
in this folder is run directly: ``python benchmarks/bench_*.py``)."""

from __future__ import annotations

import os
import statistics

import torch

NOISY = 1.2  # upper/lower quartile ratio above which a series is flagged as disturbed


def spread(ts: list[float]) -> float:
    """Upper over lower quartile: near 1 on a quiet machine, large when something else ran."""
    q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
    return q[2] / q[0]


def load_average() -> str:
    """The 1-minute load average (other work on the machine inflates timings), if known."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "n/a"


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock time covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
