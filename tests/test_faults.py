"""Faults a study must survive without losing or misreporting work (issue 13).

Two writers, a writer killed with SIGKILL or interrupted with SIGINT, a stale lock, a
deleted or truncated chunk of a finished cell, damaged store metadata, an unreachable
scheduler, a missing data folder, a cluster that loses every worker — each is either
refused before anything is written or reported with what to do, and the study resumes
to the same dataset as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import odenet.studies.runner as runner_mod
from odenet.errors import ConfigError
from odenet.experiment import ModelConfig
from odenet.studies import DepthStudy, StoreError, run_study
from odenet.studies.runner import WorkersLostError
from odenet.studies.store import StudyStore
from odenet.train import TrainConfig

TINY = dict(model=ModelConfig(depth=8, width=4), train=TrainConfig(epochs=1, batch_size=256), archs=("residual",))


def tiny(**kw) -> DepthStudy:
    return DepthStudy(**({"depths": (8, 14), "seeds": (0,)} | TINY | kw))


def _kept_store(study: DepthStudy, out: Path, monkeypatch) -> None:
    """Run ``study`` with its last cell failing, so that the store stays (done: all but one)."""
    real = runner_mod.run_cell
    last = study.cells()[-1].labels

    def flaky(s, cell):
        if cell.labels == last:
            raise MemoryError("out of memory")
        return real(s, cell)

    monkeypatch.setattr(runner_mod, "run_cell", flaky)
    report = run_study(study, out, progress=False)
    assert len(report.failures) == 1 and (out.parent / (out.name + ".zarr")).exists()
    monkeypatch.setattr(runner_mod, "run_cell", real)


def _chunk(out: Path, variable: str) -> Path:
    # The chunk of the first cell (index 0 on every dim) of a variable, Zarr format 2.
    folder = out.parent / (out.name + ".zarr") / variable
    return next(p for p in sorted(folder.iterdir()) if p.name.startswith("0.") or p.name == "0")


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_damaged_chunk_of_a_finished_cell_is_found_and_computed_again(tmp_path, monkeypatch, damage):
    study = tiny()
    straight = run_study(study, tmp_path / "straight.nc", progress=False).dataset
    out = tmp_path / "s.nc"
    _kept_store(study, out, monkeypatch)
    chunk = _chunk(out, "test_accuracy")
    if damage == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:5])

    # Exporting it as it is would write NaN (or fail) as data: refused, naming cell and variable.
    store = StudyStore(out, study.layout())
    with pytest.raises(StoreError, match=r"first test_accuracy of cell euler 8 residual 0.*pass resume=True"):
        store.finalize()

    report = run_study(study, out, resume=True, progress=False)
    assert [(labels, name) for labels, name, _ in report.repaired] == [(("euler", 8, "residual", 0), "test_accuracy")]
    assert report.computed == 2 and not report.failures  # the repaired cell and the failed one
    for name in ("test_accuracy", "train_loss", "block_grad_norm", "final_test_accuracy"):
        xr.testing.assert_equal(report.dataset[name], straight[name])


def test_damaged_store_metadata_is_a_message_not_a_traceback(tmp_path, monkeypatch):
    study = tiny()
    out = tmp_path / "s.nc"
    _kept_store(study, out, monkeypatch)
    zarr_dir = tmp_path / "s.nc.zarr"
    (zarr_dir / ".zmetadata").write_text('{"trunc')  # consolidated metadata: read per array instead
    report = run_study(study, out, resume=True, progress=False)
    assert report.computed == 1 and not report.failures

    _kept_store(study, tmp_path / "t.nc", monkeypatch)
    for name in (".zmetadata", ".zattrs"):
        (tmp_path / "t.nc.zarr" / name).write_text('{"trunc')
    with pytest.raises(StoreError, match=r"is damaged: its metadata cannot be read.*delete it and run the study again"):
        run_study(study, tmp_path / "t.nc", resume=True, progress=False)


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    study = tiny(depths=(8,))
    out = tmp_path / "s.nc"
    lock = tmp_path / "s.nc.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "since": "now"}))
        with pytest.raises(StoreError, match=f"is being written by process {sleeper.pid}"):
            run_study(study, out, progress=False)
        assert not (tmp_path / "s.nc.zarr").exists()  # refused before the store was touched
    finally:
        sleeper.kill()
        sleeper.wait()
    # The holder is gone now: its lock is stale and the study runs.
    report = run_study(study, out, progress=False)
    assert report.computed == 1 and not lock.exists()


def test_problems_of_the_setup_are_refused_before_the_store_exists(tmp_path):
    out = tmp_path / "s.nc"
    with pytest.raises(ConfigError, match="dataset='cifar10' is read from a local folder: set data_dir"):
        run_study(DepthStudy(dataset="cifar10", depths=(8,), **TINY), out, progress=False)
    with pytest.raises(
        ConfigError, match=r"cannot reach the Dask scheduler at scheduler_address='tcp://127\.0\.0\.1:9'"
    ):
        run_study(tiny(), out, scheduler_address="tcp://127.0.0.1:9", progress=False)
    assert not list(tmp_path.iterdir())


def test_the_data_folder_may_change_when_a_study_is_resumed(tmp_path, monkeypatch):
    out = tmp_path / "s.nc"
    _kept_store(tiny(data_dir=str(tmp_path / "old")), out, monkeypatch)
    report = run_study(tiny(data_dir=str(tmp_path / "new")), out, resume=True, progress=False)
    assert report.computed == 1
    with pytest.raises(StoreError, match="different depth study config"):
        run_study(tiny(seeds=(1,)), out, resume=True, progress=False)


@pytest.mark.slow
def test_a_scheduler_gives_the_same_dataset_and_losing_its_workers_keeps_the_store(tmp_path):
    from dask.distributed import LocalCluster

    study = tiny(train=TrainConfig(epochs=1, batch_size=256, threads=1))
    serial = run_study(study, tmp_path / "serial.nc", progress=False).dataset
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        remote = run_study(study, tmp_path / "remote.nc", scheduler_address=address, progress=False).dataset
        for name in ("train_loss", "final_test_accuracy", "block_grad_norm"):
            xr.testing.assert_equal(remote[name], serial[name])

        out = tmp_path / "lost.nc"

        def lose_workers(cell, result):
            cluster.scale(0)

        with pytest.raises(WorkersLostError, match="no Dask worker has been connected for 3 s and 1 cell"):
            run_study(study, out, scheduler_address=address, worker_timeout=3, on_cell=lose_workers, progress=False)
        assert (tmp_path / "lost.nc.zarr").exists() and not (tmp_path / "lost.nc.lock").exists()
        with pytest.raises(WorkersLostError, match="no Dask worker answered"):
            run_study(study, out, scheduler_address=address, resume=True, worker_timeout=2, progress=False)
    report = run_study(study, out, resume=True, progress=False)
    assert (report.skipped, report.computed) == (1, 1)
    xr.testing.assert_equal(report.dataset.final_test_accuracy, serial.final_test_accuracy)


def _odenet(*args: str) -> list[str]:
    return [sys.executable, "-m", "odenet_cli.main", *args]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_or_interrupted_study_resumes_to_the_same_result(tmp_path, sig):
    args = ["study", "depth", "--depths", "8,14,20", "--archs", "residual", "--width", "4", "--epochs", "1",
            "--batch-size", "256", "--no-progress"]  # fmt: skip
    straight = subprocess.run(_odenet(*args, "--out", str(tmp_path / "straight.nc")), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "killed.nc"
    proc = subprocess.Popen(
        _odenet(*args, "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    store = tmp_path / "killed.nc.zarr"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the first finished cell
        if store.exists() and (store / "done" / ".zarray").exists():
            try:
                if xr.open_zarr(store).done.values.sum() >= 1:
                    break
            except Exception:
                pass
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err
    if sig == signal.SIGINT:
        assert not (tmp_path / "killed.nc.lock").exists()  # released on the way out
    again = subprocess.run(_odenet(*args, "--out", str(out)), capture_output=True, text=True)
    assert again.returncode == 2 and "pass --resume to continue it" in again.stderr
    resumed = subprocess.run(_odenet(*args, "--out", str(out), "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = xr.open_dataset(tmp_path / "straight.nc"), xr.open_dataset(out)
    for name in ("train_loss", "final_test_accuracy", "block_grad_norm", "parameters"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_sizes_beyond_the_machine_are_refused_with_an_estimate():
    from odenet.experiment import check_fits, parameter_estimate
    from odenet.models import cifar_resnet, mlp_resnet

    with pytest.raises(ConfigError, match=r"the grid has 800,000 cells .*100000 seed.*at most 100,000"):
        DepthStudy(seeds=100_000, depths=(8, 14, 20, 26), archs=("residual", "plain"))
    with pytest.raises(ConfigError, match=r"would store [\d,]+ values \([\d.]+ GiB.*split the grid"):
        DepthStudy(depths=(8,), seeds=5_000, train=TrainConfig(epochs=100_000))
    with pytest.raises(ConfigError, match=r"depth=600000002, arch=residual, seed=0: depth=600000002 makes a network"):
        DepthStudy(depths=(20, 600_000_002))
    # The estimate is close to the real count (within 2%), so the refusal is not arbitrary.
    for depth, block in ((20, "preact"), (110, "preact"), (29, "bottleneck")):
        real = sum(p.numel() for p in cifar_resnet(depth, block=block).parameters())
        assert parameter_estimate(ModelConfig(depth=depth, block=block), "image") == pytest.approx(real, rel=0.02)
    real = sum(p.numel() for p in mlp_resnet(40, 10, depth=8).parameters())
    assert parameter_estimate(ModelConfig(depth=8), "vector") == pytest.approx(real, rel=0.1)
    check_fits(ModelConfig(depth=110), "image", available=2**28)  # 41 MB to train
    with pytest.raises(ConfigError, match=r"depth=1202 makes a network of about 1.93e\+07 parameters.*0.25 GiB avail"):
        check_fits(ModelConfig(depth=1202), "image", available=2**28)


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_study_is_unchanged(tmp_path):
    from dask.distributed import Client, LocalCluster

    study = tiny(depths=(8, 14, 20))
    serial = run_study(study, tmp_path / "serial.nc", progress=False).dataset
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())

        def kill_one(cell, result):
            if pids:
                os.kill(pids.pop(), signal.SIGKILL)  # its nanny starts a new worker; its task is rerun

        report = run_study(study, tmp_path / "k.nc", scheduler_address=cluster.scheduler_address, on_cell=kill_one,
                           progress=False)  # fmt: skip
    assert report.computed == 3 and not report.failures
    for name in ("train_loss", "final_test_accuracy", "block_grad_norm"):
        xr.testing.assert_equal(report.dataset[name], serial[name])


@pytest.mark.slow
def test_ctrl_c_during_a_run_keeps_the_finished_epochs(tmp_path):
    out = tmp_path / "run.nc"
    args = ["run", "--depth", "8", "--width", "4", "--epochs", "200", "--batch-size", "256", "--out", str(out)]
    proc = subprocess.Popen(_odenet(*args, "--no-progress"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not out.exists() and time.monotonic() < deadline:  # written after the first epoch
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    epochs = int(err.split("interrupted after ")[1].split()[0])
    history = xr.open_dataset(out)
    assert epochs >= 1 and history.sizes["epoch"] == epochs and np.isfinite(history.test_accuracy).all()
    assert not (tmp_path / "run.nc.tmp").exists()
    again = subprocess.run(_odenet(*args), capture_output=True, text=True)
    assert again.returncode == 2 and "exists; pass --force to overwrite it" in again.stderr
