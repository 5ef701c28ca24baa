"""``odenet study …`` and ``odenet plot`` through CliRunner: tiny grids produce labelled datasets,
``--resume`` skips finished cells, and bad lists exit 2 with one line."""

from __future__ import annotations

import json

import pytest
import xarray as xr
from click.testing import CliRunner

from odenet_cli.main import main

TINY = ["--width", "4", "--epochs", "1", "--batch-size", "256", "--no-progress"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_labelled(ds: xr.Dataset, kind: str) -> None:
    assert ds.attrs["study"] == kind and json.loads(ds.attrs["config"])["kind"] == kind
    for key in ("odenet_version", "git_commit", "torch_version", "device", "created"):
        assert ds.attrs[key]
    for name in [*ds.data_vars, *ds.coords]:
        assert "long_name" in ds[name].attrs and "units" in ds[name].attrs, name
    assert int(ds.done.sum()) == ds.done.size


def test_depth_study_dims_variables_and_resume(tmp_path):
    out = tmp_path / "depth.nc"
    args = ["study", "depth", "--depths", "8,14", "--solvers", "euler", "--archs", "residual,plain",
            "--seeds", "2", *TINY, "--out", str(out)]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "depth study: 8 cells" in result.output and "8 cells computed" in result.output
    ds = xr.open_dataset(out)
    assert dict(ds.done.sizes) == {"solver": 1, "depth": 2, "arch": 2, "seed": 2}
    assert ds.train_loss.dims == ("solver", "depth", "arch", "seed", "epoch")
    assert ds.block_grad_norm.dims == ("solver", "depth", "arch", "seed", "when", "block")
    assert ds.sizes["block"] == 6  # depth 14: three stages of two blocks
    assert ds.block_grad_norm.sel(depth=8).isel(block=slice(3, None)).isnull().all()  # depth 8 has 3 blocks
    for name in ("parameters", "train_time", "diverged", "nfe_forward", "final_test_accuracy"):
        assert name in ds
    assert_labelled(ds, "depth")

    again = invoke(*args)
    assert again.exit_code == 2 and "exists; choose another --out, or pass --resume" in again.output
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0 and "0 cells computed, 8 already done" in resumed.output
    different = invoke(*[a if a != "8,14" else "8" for a in args], "--resume")
    assert different.exit_code == 2 and "different depth study config" in different.output


def test_stability_study_at_fixed_step_sizes_and_at_a_fixed_horizon(tmp_path):
    out = tmp_path / "s.nc"
    result = invoke("study", "stability", "--solvers", "euler", "--step-sizes", "log:0.1:1:2", "--depths", "8",
                    "--probe-eigenvalues", "2", *TINY, "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    ds = xr.open_dataset(out)
    assert dict(ds.done.sizes) == {"solver": 1, "step_size": 2, "depth": 1, "norm": 1, "shortcut": 1, "seed": 1}
    assert list(ds.step_size.values) == [0.1, 1.0]
    assert ds.eig_real.dims[-4:] == ("when", "block", "select", "eig") and ds.sizes["eig"] == 2
    assert_labelled(ds, "stability")

    out = tmp_path / "h.nc"
    result = invoke("study", "stability", "--solvers", "euler", "--horizon", "2", "--depths", "8,14",
                    "--shortcuts", "A,B", "--norms", "batch,none", "--probe-eigenvalues", "1", *TINY,
                    "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    ds = xr.open_dataset(out)
    assert dict(ds.done.sizes) == {"solver": 1, "depth": 2, "norm": 2, "shortcut": 2, "seed": 1}
    assert list(ds.norm.values) == ["batch", "none"] and list(ds.shortcut.values) == ["A", "B"]
    assert ds.step_size.dims == ("depth",) and list(ds.step_size.values) == [2.0, 1.0]


def test_convergence_study_and_plot(tmp_path):
    out = tmp_path / "c.nc"
    result = invoke("study", "convergence", "--solvers", "euler", "--depths", "8", "--eval-solvers", "euler,rk4",
                    "--refinements", "1,2,4", *TINY, "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    ds = xr.open_dataset(out)
    assert ds.error.dims == ("train_solver", "step_size", "depth", "seed", "eval_solver", "refinement", "stage")
    assert ds.sizes["stage"] == 1  # depth 8: only the first stage has ODE steps
    assert_labelled(ds, "convergence")
    figures = tmp_path / "fig"
    result = invoke("plot", str(out), "--out", str(figures))
    assert result.exit_code == 0, result.output
    written = sorted(figures.iterdir())
    assert written and all(p.stat().st_size > 1000 for p in written)


def test_study_run_from_a_toml_spec(tmp_path):
    spec = tmp_path / "cmp.toml"
    spec.write_text(
        'kind = "compare"\nout = "results/cmp.nc"\n[train]\nepochs = 1\nbatch_size = 256\n'
        '[model]\nwidth = 4\n[[models]]\nname = "ResNet"\ndepth = 8\n'
        '[[models]]\nname = "ODE-Net"\ndepth = 8\nsolver = "dopri5"\nweights = "shared"\ntime = true\n'
        "rtol = 0.01\natol = 0.01\nadjoint = true\n"
    )
    (tmp_path / "results").mkdir()
    result = invoke("study", "run", str(spec), "--no-progress")
    assert result.exit_code == 0, result.output
    ds = xr.open_dataset(tmp_path / "results" / "cmp.nc")
    assert list(ds.model.values) == ["ResNet", "ODE-Net"]
    nfe = ds.nfe_forward_final.sel(model="ODE-Net", seed=0).item()
    assert nfe > 0 and ds.nfe_forward_final.sel(model="ResNet", seed=0).item() == 1  # one Euler step
    assert_labelled(ds, "compare")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["depth", "--depths", "21"], "cell solver=euler, depth=21, arch=residual, seed=0: depth=21 is not 6n+2"),
        (["depth", "--depths", ""], "--depths: the list is empty"),
        (["depth", "--depths", "20,x"], "--depths: 'x' is not an integer; write a comma-separated list"),
        (["depth", "--solvers", ""], "--solvers: the list is empty"),
        (["depth", "--solvers", "euler,nope"], "--solvers: 'nope' is not a known solver"),
        (["depth", "--archs", "residual,wide"], "--archs: 'wide' is not residual or plain"),
        (["depth", "--seeds", "0"], "not a positive count"),
        (["stability", "--step-sizes", "-1"], "--step-sizes: -1.0 is not a positive step size"),
        (["stability", "--step-sizes", ""], "--step-sizes: the list is empty"),
        (["stability", "--step-sizes", "log:1:0:3"], "log-spaced values need finite START, STOP > 0"),
        (["stability", "--solvers", "dopri5"], "needs fixed-step solvers"),
        (["stability", "--horizon", "2", "--step-sizes", "0.1"], "give either --step-sizes or a --horizon"),
        (["convergence", "--refinements", "0,1"], "--refinements: 0.0 is not a positive step size"),
        (["convergence", "--reference", "rk4"], "--reference rk4 is fixed-step; give an adaptive solver"),
    ],
)
def test_bad_lists_exit_2_with_one_line(tmp_path, args, fragment):
    result = invoke("study", *args, "--out", str(tmp_path / "x.nc"))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.nc.zarr").exists()


def test_bad_specs_exit_2_with_one_line(tmp_path):
    missing = invoke("study", "run", str(tmp_path / "nope.toml"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
    spec = tmp_path / "bad.toml"
    spec.write_text('kind = "depth"\ndepths = [21]\n')
    bad = invoke("study", "run", str(spec))
    assert bad.exit_code == 2 and "depth = 21 is not 6n+2" in bad.output
    assert len([line for line in bad.output.splitlines() if line.startswith("Error:")]) == 1
