"""Run a study: open its store, compute the unfinished cells, write each as it finishes.

Cells run in this process (``workers=1``), in local worker processes of a Dask
``LocalCluster`` (``workers>1``), or on an existing Dask cluster (``scheduler_address``).
Whatever computes, this process is the single writer: results come back through
``distributed.as_completed`` and go into the store one cell at a time. A cell that raises
(a bug, out of memory) is reported and left unfinished, so ``resume`` retries it; a
diverging network or a failing adaptive solver is a recorded *result*, not a failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

from odenet.experiment import device_name, environment
from odenet.knobs import check_count, knob
from odenet.studies.base import Cell, Study, Values, run_cell
from odenet.studies.store import StudyStore
from odenet.train import resolve_device

__all__ = ["Execution", "StudyReport", "run_study"]


@dataclass(frozen=True)
class Execution:
    """Where and how a study's cells run (the knobs of ``run_study``)."""

    resume: bool = knob(False, "Continue a killed or failed study: finished cells are kept.")
    workers: int = knob(1, "Local worker processes (a Dask LocalCluster); 1 runs cells in this process.")
    scheduler_address: str | None = knob(None, "Run cells on this Dask cluster (tcp://host:8786).")

    def __post_init__(self) -> None:
        check_count("workers", self.workers)


@dataclass
class StudyReport:
    """What a run of ``run_study`` did. failures: (cell labels, error message)."""

    path: Path
    total: int
    skipped: int
    computed: int = 0
    failures: list[tuple[tuple[Any, ...], str]] = field(default_factory=list)
    seconds: float = 0.0
    dataset: xr.Dataset | None = None


def run_study(
    study: Study,
    out: str | Path,
    *,
    resume: bool = Execution.resume,
    workers: int = Execution.workers,
    scheduler_address: str | None = Execution.scheduler_address,
    progress: bool | None = None,
    on_cell: Callable[[Cell, Values | BaseException], None] | None = None,
) -> StudyReport:
    """Compute every unfinished cell of ``study`` and write the dataset to ``out`` (netCDF).

    While running, results live in the Zarr store ``out + ".zarr"``; it is removed once
    the netCDF is written, unless cells failed (then ``resume=True`` retries them).
    Raises ``StoreError`` if ``out`` or its store exists and ``resume`` is not given, or
    if they hold results of a different config.
    """
    from tqdm.auto import tqdm

    Execution(resume, workers, scheduler_address)  # validates
    start = time.perf_counter()
    device = resolve_device(study.train.device)
    attrs = {
        "title": f"odenet {study.kind} study",
        "study": study.kind,
        "config": study.to_json(),
        "Conventions": "CF-1.10",
        "torch_threads": int(study.train.threads or 0),
        **environment(
            device_name(device, study.train.threads)
            if scheduler_address is None
            else f"dask cluster at {scheduler_address}, {study.train.threads} torch thread(s) per cell"
        ),
    }
    store = StudyStore(out, study.layout())
    done = store.open(attrs, resume)
    cells = study.cells()
    pending = [c for c in cells if not done[c.index]]
    report = StudyReport(store.path, total=len(cells), skipped=len(cells) - len(pending))
    bar = tqdm(total=len(cells), initial=report.skipped, desc=f"{study.kind} study", unit="cell",
               disable=None if progress is None else not progress)  # fmt: skip
    try:
        for cell, result in _execute(study, pending, workers, scheduler_address):
            if isinstance(result, BaseException):
                report.failures.append((cell.labels, f"{type(result).__name__}: {result}"))
            else:
                store.write(cell.index, result)
                report.computed += 1
            bar.update()
            if on_cell is not None:
                on_cell(cell, result)
    finally:
        bar.close()
    report.dataset = store.finalize(keep_store=bool(report.failures))
    report.seconds = time.perf_counter() - start
    return report


def _execute(
    study: Study, cells: Sequence[Cell], workers: int, address: str | None
) -> Iterator[tuple[Cell, Values | BaseException]]:
    """(cell, values or the exception it raised) in order of completion."""
    if not cells:
        return
    if address is None and workers == 1:
        for cell in cells:
            try:
                values = run_cell(study, cell)
            except Exception as err:  # reported per cell; the study goes on
                yield cell, err
            else:
                yield cell, values
        return

    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if address is None:
        # One task at a time per worker process; each cell sets its own torch thread count.
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        )
        client = Client(cluster)
    else:
        client = Client(address)
    try:
        futures = {client.submit(run_cell, study, cell, pure=False): cell for cell in cells}
        for future in as_completed(futures):
            cell = futures[future]
            try:
                yield cell, future.result()
            except Exception as err:
                yield cell, err
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
