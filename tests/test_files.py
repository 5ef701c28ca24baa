"""Result files are written whole: interrupts wait until the file is in place."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import xarray as xr

from odenet.files import deferred_interrupts, write_atomically


def _netcdf_with_an_interrupt_inside(ds: xr.Dataset):
    def write(tmp):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while h5netcdf is writing
        ds.to_netcdf(tmp, engine="h5netcdf")

    return write


def test_ctrl_c_while_writing_is_delivered_after_the_file_is_in_place(tmp_path):
    path = tmp_path / "result.nc"
    ds = xr.Dataset({"loss": ("epoch", np.arange(5.0))})
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, _netcdf_with_an_interrupt_inside(ds))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with xr.open_dataset(path, engine="h5netcdf") as back:
        np.testing.assert_array_equal(back.loss.values, np.arange(5.0))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "result.nc"
    path.write_text("old")

    def write(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, write)
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_deferred_interrupts_pass_the_signal_to_the_handler_installed_before():
    got = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            assert got == []  # held back inside the block
        assert got == [signal.SIGINT]  # delivered once, to the program's own handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGINT) is previous


def test_without_a_signal_nothing_changes():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with deferred_interrupts():
        pass
    assert {sig: signal.getsignal(sig) for sig in before} == before
