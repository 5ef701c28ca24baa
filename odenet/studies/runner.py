"""Run a study: check it can run, lock and open its store, compute the unfinished cells, write each.

Cells run in this process (``workers=1``), in local worker processes of a Dask
``LocalCluster`` (``workers>1``), or on an existing Dask cluster (``scheduler_address``).
Before the store is created, the executor is set up and the study's data is loaded once
where the cells will run (so a missing data folder or an unreachable scheduler is refused
with nothing written). Whatever computes, this process is the single writer, holding the
store's lock: results come back one at a time and go into the store as they finish. A
cell that raises (a bug, out of memory) is reported and left unfinished, so ``resume``
retries it; a diverging network or a failing adaptive solver is a recorded *result*. If
every Dask worker is gone for ``worker_timeout`` seconds, the study stops with
``WorkersLostError``; its store is kept for ``resume``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import xarray as xr

from odenet.errors import ConfigError, literal
from odenet.experiment import device_name, environment
from odenet.knobs import check_count, check_finite, knob
from odenet.studies.base import Cell, Study, Values, cached_data, run_cell
from odenet.studies.lock import StoreLock
from odenet.studies.store import StudyStore
from odenet.train import resolve_device

__all__ = ["Execution", "StudyReport", "WorkersLostError", "run_study"]


class WorkersLostError(RuntimeError):
    """Every Dask worker has been gone for longer than ``worker_timeout``; the store is kept."""


@dataclass(frozen=True)
class Execution:
    """Where and how a study's cells run (the knobs of ``run_study``)."""

    resume: bool = knob(False, "Continue a killed or failed study: finished cells are kept (damaged ones recomputed).")
    workers: int = knob(1, "Local worker processes (a Dask LocalCluster); 1 runs cells in this process.")
    scheduler_address: str | None = knob(None, "Run cells on this Dask cluster (tcp://host:8786).")
    worker_timeout: float = knob(120.0, "Seconds without any Dask worker before the study stops (resumable).")

    def __post_init__(self) -> None:
        check_count("workers", self.workers)
        check_finite("worker_timeout", self.worker_timeout)


@dataclass
class StudyReport:
    """What a run of ``run_study`` did. failures: (cell labels, error message)."""

    path: Path
    total: int
    skipped: int
    computed: int = 0
    failures: list[tuple[tuple[Any, ...], str]] = field(default_factory=list)
    repaired: list[tuple[tuple[Any, ...], str, str]] = field(default_factory=list)
    seconds: float = 0.0
    dataset: xr.Dataset | None = None


def run_study(
    study: Study,
    out: str | Path,
    *,
    resume: bool = Execution.resume,
    workers: int = Execution.workers,
    scheduler_address: str | None = Execution.scheduler_address,
    worker_timeout: float = Execution.worker_timeout,
    progress: bool | None = None,
    on_cell: Callable[[Cell, Values | BaseException], None] | None = None,
) -> StudyReport:
    """Compute every unfinished cell of ``study`` and write the dataset to ``out`` (netCDF).

    While running, results live in the Zarr store ``out + ".zarr"``; it is removed once
    the netCDF is written, unless cells failed (then ``resume=True`` retries them).
    Raises ``ConfigError`` (a ``StoreError`` for the store) when the study cannot run as
    asked — its data missing, the scheduler unreachable, ``out`` or its store existing
    without ``resume``, a store of a different config, another process writing it — all
    before any cell is computed; ``WorkersLostError`` when the cluster lost every worker.
    """
    from tqdm.auto import tqdm

    execution = Execution(resume, workers, scheduler_address, worker_timeout)
    if Path(out).suffix == ".zarr":
        raise ConfigError(
            "{out} names a Zarr store, but a study's result is a netCDF file: give a name such as "
            "results.nc (the running store is kept beside it as results.nc.zarr)",
            out=str(out),
        )
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
    cells = study.cells()
    with _Executor(study, execution) as executor, StoreLock(out):
        store = StudyStore(out, study.layout())
        done = store.open(attrs, resume, ignore=study.incidental, defaults=study.defaults())
        pending = [c for c in cells if not done[c.index]]
        report = StudyReport(store.path, total=len(cells), skipped=len(cells) - len(pending), repaired=store.repaired)
        bar = tqdm(total=len(cells), initial=report.skipped, desc=f"{study.kind} study", unit="cell",
                   disable=None if progress is None else not progress)  # fmt: skip
        try:
            for cell, result in executor.run(pending):
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
        report.dataset = store.finalize(keep_store=bool(report.failures), summarise=study.summarise)
    report.seconds = time.perf_counter() - start
    return report


def _check_data(dataset: str, data_dir: str | None, seed: int) -> str:
    """Load the study's data once (where the cells run); its description."""
    return cached_data(dataset, data_dir, seed).describe()


class _Executor:
    """Where cells run: set up (and the data checked there) before the store is touched."""

    def __init__(self, study: Study, execution: Execution) -> None:
        self.study = study
        self.execution = execution
        self.client: Any = None
        self.cluster: Any = None

    def __enter__(self) -> _Executor:
        study, ex = self.study, self.execution
        if ex.scheduler_address is None and ex.workers == 1:
            _check_data(study.dataset, study.data_dir, study.seeds[0])
            return self
        from dask.distributed import Client, LocalCluster

        try:
            if ex.scheduler_address is None:
                # One task at a time per worker process; each cell sets its own torch thread count.
                self.cluster = LocalCluster(
                    n_workers=ex.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                    silence_logs=logging.ERROR,
                )  # fmt: skip
                self.client = Client(self.cluster)
            else:
                self.client = Client(ex.scheduler_address, timeout="10s")
        except (OSError, ValueError, TypeError) as err:
            self.__exit__(None, None, None)
            raise ConfigError(
                "cannot reach the Dask scheduler at {scheduler_address} ("
                + literal(f"{type(err).__name__}: {err}")
                + "); give the address of a running scheduler, e.g. tcp://host:8786",
                scheduler_address=ex.scheduler_address,
            ) from None
        try:
            # Loaded on a worker: a cluster's data folder is the workers', not this machine's.
            check = self.client.submit(_check_data, study.dataset, study.data_dir, study.seeds[0], pure=False)
            check.result(timeout=ex.worker_timeout)
        except ConfigError:
            self.__exit__(None, None, None)
            raise
        except TimeoutError:
            self.__exit__(None, None, None)
            raise WorkersLostError(
                f"no Dask worker answered within {ex.worker_timeout:g} s; start workers for the scheduler "
                "(nothing was written)"
            ) from None
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    def run(self, cells: Sequence[Cell]) -> Iterator[tuple[Cell, Values | BaseException]]:
        """(cell, values or the exception it raised) in order of completion."""
        if not cells:
            return
        if self.client is None:
            for cell in cells:
                try:
                    values = run_cell(self.study, cell)
                except Exception as err:  # reported per cell; the study goes on
                    yield cell, err
                else:
                    yield cell, values
            return
        yield from self._distributed(cells)

    def _distributed(self, cells: Sequence[Cell]) -> Iterator[tuple[Cell, Values | BaseException]]:
        from dask.distributed import wait

        futures = {self.client.submit(run_cell, self.study, cell, pure=False): cell for cell in cells}
        pending = set(futures)
        alone_since: float | None = None
        while pending:
            try:
                finished, pending = wait(pending, timeout=2.0, return_when="FIRST_COMPLETED")
            except TimeoutError:  # nothing finished in this poll: look at the workers
                finished = set()
            for future in finished:
                cell = futures[future]
                try:
                    yield cell, future.result()
                except Exception as err:
                    yield cell, err
            if finished:
                alone_since = None
                continue
            if self.client.scheduler_info().get("workers"):
                alone_since = None
            elif alone_since is None:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > self.execution.worker_timeout:
                raise WorkersLostError(
                    f"no Dask worker has been connected for {self.execution.worker_timeout:g} s and "
                    f"{len(pending)} cell(s) are unfinished; the store is kept: start workers and run "
                    "again with resume"
                )
