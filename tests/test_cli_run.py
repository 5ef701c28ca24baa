"""``odenet run`` through Click's CliRunner: outputs, and bad input exits 2 in one line."""

from __future__ import annotations

import json

import pytest
import xarray as xr
from click.testing import CliRunner

from odenet_cli.main import main

SMALL = ["--depth", "8", "--width", "4", "--epochs", "2", "--batch-size", "256", "--no-progress"]


def invoke(*args: str):
    return CliRunner().invoke(main, ["run", *args])


def test_short_run_on_digits_writes_a_labelled_dataset(tmp_path):
    out = tmp_path / "run.nc"
    result = invoke(*SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = result.output.strip().splitlines()[0]
    assert "test accuracy" in summary and "parameters" in summary and " s on cpu" in summary
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert ds.sizes["epoch"] == 2
    for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "wall_time"):
        assert name in ds and "units" in ds[name].attrs and "long_name" in ds[name].attrs
    config = json.loads(ds.attrs["config"])
    assert config["model"]["depth"] == 8 and config["train"]["epochs"] == 2
    for key in ("odenet_version", "git_commit", "torch_version", "device"):
        assert ds.attrs[key]
    assert 0 <= float(ds.test_accuracy[-1]) <= 1


@pytest.mark.parametrize("extra", [["--solver", "rk4"], ["--solver", "dopri5", "--rtol", "1e-2", "--atol", "1e-2"],
                                   ["--plain"], ["--dataset", "spirals", "--depth", "3"]])  # fmt: skip
def test_solvers_and_plain_on_the_same_command_line(extra):
    result = invoke(*SMALL[:-5], "--epochs", "1", "--batch-size", "512", "--no-progress", *extra)
    assert result.exit_code == 0, result.output
    if "dopri5" in extra:
        assert "NFE/batch" in result.output


def test_divergence_is_reported_not_raised(tmp_path):
    out = tmp_path / "d.nc"
    result = invoke(*SMALL, "--lr", "1e9", "--schedule", "constant", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "DIVERGED at epoch 1" in result.output
    assert xr.open_dataset(out, engine="h5netcdf").attrs["diverged"] == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--depth", "21"], "depth 21 is not 6n+2"),
        (["--depth", "21", "--block", "bottleneck"], "not 9n+2"),
        (["--solver", "rk5"], "--solver rk5 is not a known solver; choose one of: euler"),
        (["--step-size", "0"], "--step-size 0.0 is not a step size"),
        (["--step-size", "-1"], "--step-size -1.0 is not a step size"),
        (
            ["--block", "basic", "--solver", "rk4"],
            "--block basic applies a ReLU after each sum (a projected Euler step) "
            "and is valid with the euler solver only, not --solver rk4",
        ),
        (["--solver", "dopri5", "--rtol", "0"], "--rtol 0.0 is not a tolerance"),
        (["--solver", "dopri5", "--atol", "-1"], "--atol -1.0 is not a tolerance"),
        (["--epochs", "0"], "--epochs 0 is not an integer ≥ 1"),
        (["--out", "/nonexistent-dir/run.nc"], "does not exist"),
        (
            ["--dataset", "cifar10"],
            "--dataset cifar10 is read from a local folder: "
            "set --data-dir to a folder DIR with DIR/cifar-10-batches-py",
        ),
        (["--dataset", "mnist", "--data-dir", "."], "expected DIR/MNIST/raw"),
        (
            ["--plain", "--solver", "dopri5"],
            "--plain (the plain twin) drops the identity from each step "
            "and is defined for fixed-step solvers only; --solver dopri5 is adaptive",
        ),
        (["--adjoint", "--plain"], "--memory adjoint solves the ODE backwards in time; the plain twin --plain"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(args, fragment):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and fragment in error_lines[0], result.output


def test_out_pointing_to_a_directory_is_refused(tmp_path):
    result = invoke("--out", str(tmp_path))
    assert result.exit_code == 2 and "is a directory" in result.output
