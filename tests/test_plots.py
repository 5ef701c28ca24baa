"""Study figures: labelled from the data, unfinished cells hidden, diverged ones shown, the mathematics right.

Every dataset here is synthetic and small, built from ``odenet.studies.schema`` so it has
exactly the dimensions and attributes a study writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from odenet.plots import FIGURES, PlotError, figures_for, open_result, plot_study, study_figures, unregister
from odenet.plots.convergence import reference_slope
from odenet.solvers import get_method
from odenet.studies.schema import coordinates, variables
from odenet_cli.plot import plot

# Every coordinate any built-in kind has: long_name and units, from the kinds themselves.
COORDS = {
    name: attrs
    for kind in ("depth", "stability", "convergence", "compare")
    for name, attrs in coordinates(kind).items()
}

GARBAGE = 1e9  # what an unfinished cell holds here, so that drawing it would show
EVAL_SOLVERS = ["euler", "rk4"]
EXPECTED = {
    "depth": {"depth-accuracy", "depth-train-loss", "depth-curves", "depth-grad-norm"},
    "stability": {"stability-regions", "stability-accuracy", "stability-max-R"},
    "convergence": {"convergence-error", "convergence-accuracy"},
    "compare": {"compare-summary"},
}
CELLS = {
    "depth": {"solver": ["euler"], "depth": [8, 20], "arch": ["residual", "plain"], "seed": [0, 1]},
    "stability": {"solver": ["euler", "rk4"], "step_size": [0.1, 1.0, 3.0], "depth": [8], "seed": [0, 1]},
    "convergence": {"train_solver": ["euler", "midpoint"], "step_size": [1.0], "seed": [0, 1]},
    "compare": {"model": ["resnet", "rknet", "odenet"], "seed": [0, 1]},
}
INNER = {
    "epoch": [1, 2, 3],
    "block": [0, 1, 2],
    "when": ["init", "final"],
    "eig": [0, 1],
    "eval_solver": EVAL_SOLVERS,
    "refinement": [0.5, 1.0, 2.0, 4.0, 8.0],
    "stage": [0, 1],
}


def _coord_attrs(name: str) -> dict[str, str]:
    long_name, units = COORDS[name]
    return {"long_name": long_name, "units": units}


def _values(name: str, dims: tuple[str, ...], coords: dict[str, list], rng: np.random.Generator) -> np.ndarray:
    shape = tuple(len(coords[d]) for d in dims)
    if name == "error":  # exactly C·refinementᐨᵖ with p the eval solver's order
        order = xr.DataArray([get_method(s).order for s in EVAL_SOLVERS], dims="eval_solver")
        r = xr.DataArray(coords["refinement"], dims="refinement")
        scale = xr.DataArray(rng.uniform(0.05, 0.1, shape), dims=dims)
        return (scale * r ** (-order)).transpose(*dims).values
    if name in ("diverged", "outcome", "diverged_epoch"):
        return np.zeros(shape, dtype=np.int64)
    if name == "parameters":
        return np.full(shape, 269_722, dtype=np.int64)
    if name == "eig_real":
        return rng.uniform(-2.5, 0.1, shape)
    if name == "eig_imag":
        return rng.uniform(-1.5, 1.5, shape)
    if "accuracy" in name:
        return rng.uniform(0.6, 0.95, shape)
    if name.endswith("grad_norm"):
        return 10 ** rng.uniform(-4, 0, shape)
    return rng.uniform(0.2, 2.0, shape)


def make_study(kind: str, cells: dict[str, list] | None = None, seed: int = 0) -> xr.Dataset:
    """A complete study dataset of ``kind``: cell 0 diverged, the last cell unfinished."""
    rng = np.random.default_rng(seed)
    cells = cells or CELLS[kind]
    coords = {**cells, **INNER}
    ds = xr.Dataset(attrs={"study": kind, "config": json.dumps({"kind": kind}), "odenet_version": "test"})
    for name, values in coords.items():
        ds.coords[name] = (name, values, _coord_attrs(name))
    for var in variables(kind):
        dims = (*cells, *var.dims)
        ds[var.name] = (dims, _values(var.name, dims, coords, rng), {"long_name": var.long_name, "units": var.units})
    ds["done"] = (tuple(cells), np.ones([len(v) for v in cells.values()], dtype=np.int64))
    first = {d: 0 for d in cells}
    ds["diverged"][first] = 1
    ds["final_test_accuracy"][first] = np.nan
    last = {d: -1 for d in cells}
    ds["done"][last] = 0
    for name, var in ds.data_vars.items():
        if name != "done":
            var[last] = -1 if np.issubdtype(var.dtype, np.integer) else GARBAGE
    return ds


def horizon_stability() -> xr.Dataset:
    """Fixed horizon T = 4: cells solver × depth × seed, h = T / depth along depth."""
    ds = make_study("stability", {"solver": ["euler", "rk4"], "depth": [2, 4, 16], "seed": [0, 1]})
    ds.coords["step_size"] = ("depth", [2.0, 1.0, 0.25], _coord_attrs("step_size"))
    return ds


@pytest.fixture(scope="module")
def figures() -> dict[str, dict[str, Figure]]:
    return {kind: study_figures(make_study(kind)) for kind in FIGURES}


def _plotted(fig: Figure) -> np.ndarray:
    """Every finite number a figure draws as data (line and scatter coordinates)."""
    values = [np.ravel(np.asarray(line.get_xydata(), dtype=float)) for ax in fig.axes for line in ax.lines]
    values += [np.ravel(c.get_offsets()) for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]
    data = np.concatenate(values)
    return data[np.isfinite(data)]


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and output.rstrip().endswith(errors[0]), output
    return errors[0]


def _is_image(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"\x89PNG\r\n\x1a\n") if path.suffix == ".png" else b"<svg" in data[:2000]


@pytest.mark.parametrize("kind", list(FIGURES))
def test_plot_study_writes_each_figure(kind, tmp_path):
    ds = horizon_stability() if kind == "stability" else make_study(kind)  # the grid layout: `figures`
    written = plot_study(ds, tmp_path / "new" / "figs", dpi=30)  # PNG by default
    assert {p.name for p in written} == {f"{name}.png" for name in EXPECTED[kind]}
    assert all(_is_image(p) for p in written)


@pytest.mark.parametrize("kind", list(FIGURES))
def test_unfinished_cells_are_not_drawn(kind, figures):
    for name, fig in figures[kind].items():
        assert _plotted(fig).size, name
        assert np.abs(_plotted(fig)).max() < GARBAGE / 10, f"{name} draws a cell with done == 0"


def _labels(fig: Figure) -> list[str]:
    """Axis labels of a figure (panels and figure-level), with line wrapping undone."""
    texts = [fig.get_supxlabel(), fig.get_supylabel()]
    texts += [t for ax in fig.axes for t in (ax.get_xlabel(), ax.get_ylabel())]
    return [" ".join(t.split()) for t in texts if t]


def test_axis_labels_are_long_names_with_units(figures):
    ds = make_study("convergence")
    depth = _labels(figures["depth"]["depth-accuracy"])
    assert depth == ["network depth (layers)", "test accuracy after training"]  # no "[1]"
    assert "mean training cross-entropy, last epoch [nat]" in _labels(figures["depth"]["depth-train-loss"])
    assert "step size h of every block" in _labels(figures["stability"]["stability-accuracy"])
    error = _labels(figures["convergence"]["convergence-error"])
    assert error[:2] == [COORDS["refinement"][0], ds["error"].attrs["long_name"]]


def test_diverged_seeds_are_counted_not_dropped(figures):
    # Cell 0 (euler, depth 8, residual, seed 0) diverged: its point still has seed 1.
    texts = [t.get_text() for t in figures["depth"]["depth-accuracy"].axes[0].texts]
    assert texts == ["1/2 diverged"]
    summary = [t.get_text() for t in figures["compare"]["compare-summary"].axes[0].texts]
    assert "1/2 diverged" in summary
    # Convergence panels average over runs: (euler, h = 1, seed 0) diverged, seed 1 did not.
    euler = [t.get_text() for t in figures["convergence"]["convergence-accuracy"].axes[0].texts]
    assert euler == ["1/2 runs diverged"]


def test_every_seed_diverged_is_marked_on_the_axis():
    ds = make_study("depth")
    ds["diverged"][{"solver": 0, "depth": 0, "arch": 0}] = 1
    ds["final_test_accuracy"][{"solver": 0, "depth": 0, "arch": 0}] = np.nan
    ax = study_figures(ds)["depth-accuracy"].axes[0]
    assert "2/2 diverged" in [t.get_text() for t in ax.texts]
    assert any(line.get_marker() == "x" for line in ax.lines)


def test_reference_slopes_have_each_eval_solvers_order(figures):
    for ax in figures["convergence"]["convergence-error"].axes:
        for solver in EVAL_SOLVERS:
            (ref,) = [line for line in ax.lines if line.get_gid() == f"reference-{solver}"]
            r, e = ref.get_xydata().T
            slope = np.polyfit(np.log(r), np.log(e), 1)[0]
            assert slope == pytest.approx(-get_method(solver).order)


def test_reference_slope_passes_through_the_first_finite_point():
    r = np.array([0.5, 1.0, 2.0, 4.0])
    line = reference_slope(r, np.array([np.nan, 0.1, 0.02, 0.01]), order=2)
    assert line[1] == pytest.approx(0.1) and line[3] == pytest.approx(0.1 / 16)


def test_euler_boundary_is_the_unit_circle_about_minus_one(figures):
    # R(z) = 1 + z for forward Euler, so |R| = 1 is the circle |z + 1| = 1.
    ax = figures["stability"]["stability-regions"].axes[0]
    (boundary,) = [c for c in ax.collections if c.get_gid() == "boundary-euler"]
    z = np.concatenate([p.vertices for p in boundary.get_paths()]) @ np.array([1, 1j])
    assert np.abs(np.abs(z + 1) - 1).max() < 0.02


def test_measured_h_lambda_is_drawn_for_init_and_final(figures):
    ax = figures["stability"]["stability-regions"].axes[0]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    ds = make_study("stability").sel(solver="euler")
    finished_cells = int(ds["done"].sum()) * ds.sizes["block"] * ds.sizes["eig"]
    assert [len(c.get_offsets()) for c in points] == [finished_cells, finished_cells]


def test_fixed_horizon_layout_read_from_netcdf_plots_against_step_size(tmp_path):
    horizon_stability().to_netcdf(tmp_path / "horizon.nc", engine="h5netcdf")
    figs = study_figures(open_result(tmp_path / "horizon.nc"))
    assert set(figs) == EXPECTED["stability"]
    (line, *_) = figs["stability-accuracy"].axes[0].lines
    assert sorted(line.get_xdata()) == [0.25, 1.0, 2.0]


def test_missing_study_kind_and_nothing_finished_are_plot_errors():
    ds = make_study("compare")
    with pytest.raises(PlotError, match="study"):
        study_figures(ds.drop_attrs())
    ds["done"][:] = 0
    with pytest.raises(PlotError, match="finished"):
        study_figures(ds)


def test_every_study_kind_registers_its_figures():
    assert set(FIGURES) == set(EXPECTED)


def test_a_registered_kind_is_plotted_with_its_figures(tmp_path):
    def toy_figures(ds: xr.Dataset) -> dict[str, Figure]:
        fig = Figure()
        fig.add_subplot().plot(ds["x"].values)
        return {"toy-x": fig}

    figures_for("toy")(toy_figures)
    try:
        assert FIGURES["toy"] is toy_figures
        ds = xr.Dataset({"x": ("t", [1.0, 3.0, 2.0])}, attrs={"study": "toy"})
        assert [p.name for p in plot_study(ds, tmp_path, dpi=30)] == ["toy-x.png"]
    finally:
        unregister("toy")
    assert "toy" not in FIGURES


def test_a_kind_registered_twice_with_another_function_is_refused():
    def first(ds: xr.Dataset) -> dict[str, Figure]:
        return {}

    def second(ds: xr.Dataset) -> dict[str, Figure]:
        return {}

    try:
        figures_for("twice")(first)
        figures_for("twice")(first)  # the same function again (a module imported twice) is harmless
        with pytest.raises(ValueError, match="'twice'"):
            figures_for("twice")(second)
        assert FIGURES["twice"] is first
        with pytest.raises(ValueError, match="'depth'"):
            figures_for("depth")(second)
    finally:
        unregister("twice")
    assert FIGURES["depth"].__name__ == "depth_figures"


def new_kind() -> xr.Dataset:
    """A kind no module knows: width × seed cells, seed 2 of width 64 unfinished (and garbage)."""
    width, seed, epoch = [16, 32, 64], [0, 1, 2], [1, 2, 3, 4]
    rng = np.random.default_rng(1)
    ds = xr.Dataset(attrs={"study": "somethingnew"})
    ds.coords["width"] = ("width", width, {"long_name": "channels per block", "units": "1"})
    ds.coords["seed"] = ("seed", seed, _coord_attrs("seed"))
    ds.coords["epoch"] = ("epoch", epoch, _coord_attrs("epoch"))
    cells = ("width", "seed")
    ds["final_test_accuracy"] = (cells, rng.uniform(0.6, 0.95, (3, 3)), {"long_name": "test accuracy", "units": "1"})
    ds["train_time"] = (cells, rng.uniform(10, 20, (3, 3)), {"long_name": "training time", "units": "s"})
    ds["parameters"] = (cells, np.full((3, 3), 1000, dtype=np.int64), {"long_name": "parameters", "units": "1"})
    curve = {"long_name": "test accuracy after the epoch", "units": "1"}
    ds["test_accuracy"] = ((*cells, "epoch"), rng.uniform(0.5, 0.9, (3, 3, 4)), curve)
    loss = {"long_name": "mean training cross-entropy", "units": "nat"}
    ds["train_loss"] = ((*cells, "epoch"), rng.uniform(0.2, 2.0, (3, 3, 4)), loss)
    ds["done"] = (cells, np.ones((3, 3), dtype=np.int64))
    ds["done"][{"width": 2, "seed": 2}] = 0
    for name in ("final_test_accuracy", "train_time", "test_accuracy", "train_loss"):
        ds[name][{"width": 2, "seed": 2}] = GARBAGE
    return ds


def test_a_kind_without_figures_gets_generic_ones_from_its_labels(tmp_path):
    ds = new_kind()
    written = plot_study(ds, tmp_path, formats=("png", "svg"), dpi=30)
    assert sorted(p.name for p in written) == [
        "somethingnew-final.png",
        "somethingnew-final.svg",
        "somethingnew-history.png",
        "somethingnew-history.svg",
    ]
    assert all(_is_image(p) and p.stat().st_size > 1000 for p in written)
    figs = study_figures(ds)
    final, history = figs["somethingnew-final"], figs["somethingnew-history"]
    # Float variables over the cells only: two panels (the integer parameter count is left out).
    assert _labels(final) == ["channels per block", "test accuracy", "channels per block", "training time [s]"]
    assert _labels(history) == ["epoch", "test accuracy after the epoch", "epoch", "mean training cross-entropy [nat]"]
    for fig in figs.values():
        assert np.abs(_plotted(fig)).max() < GARBAGE / 10, "an unfinished cell is drawn"


def test_generic_final_is_the_seed_mean_with_sample_std_of_finished_cells():
    ds = new_kind()
    acc = ds["final_test_accuracy"].values
    ax = study_figures(ds)["somethingnew-final"].axes[0]
    (bars,) = ax.containers
    line, _, (barlines,) = bars
    mean = [acc[0].mean(), acc[1].mean(), acc[2, :2].mean()]  # width 64: seeds 0 and 1 only
    std = [acc[0].std(ddof=1), acc[1].std(ddof=1), acc[2, :2].std(ddof=1)]
    np.testing.assert_allclose(line.get_xdata(), [16, 32, 64])
    np.testing.assert_allclose(line.get_ydata(), mean)
    half_heights = [(seg[1, 1] - seg[0, 1]) / 2 for seg in barlines.get_segments()]
    np.testing.assert_allclose(half_heights, std)


def test_generic_curves_are_one_seed_mean_per_other_cell():
    ds = new_kind()
    loss = ds["train_loss"].values
    lines = study_figures(ds)["somethingnew-history"].axes[1].lines
    assert len(lines) == 3  # one per width
    for width, line in enumerate(lines):
        seeds = 2 if width == 2 else 3
        np.testing.assert_allclose(line.get_xdata(), [1, 2, 3, 4])
        np.testing.assert_allclose(line.get_ydata(), loss[width, :seeds].mean(axis=0))


def test_a_single_seed_has_no_error_bar_and_a_bad_kind_is_refused():
    ds = new_kind().isel(seed=[0])
    (bars,) = study_figures(ds)["somethingnew-final"].axes[0].containers
    _, _, (barlines,) = bars
    assert not np.isfinite(np.concatenate(barlines.get_segments())).any()
    for kind in ("../escape", "", "v1.2", 3):
        with pytest.raises(PlotError, match="study"):
            study_figures(ds.assign_attrs(study=kind))


@pytest.mark.filterwarnings("ignore:The data type.*Zarr V3:FutureWarning")  # fixed-width strings, zarr 3
def test_cli_writes_figures_from_netcdf_and_a_running_zarr_store(tmp_path):
    ds = make_study("compare")
    ds.to_netcdf(tmp_path / "compare.nc", engine="h5netcdf")
    ds.to_zarr(tmp_path / "running.zarr", consolidated=False)  # as a running study leaves it
    runner = CliRunner()
    result = runner.invoke(plot, [str(tmp_path / "compare.nc"), "--out", str(tmp_path), "--dpi", "50"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [str(tmp_path / "compare-summary.png")]
    out = tmp_path / "svg"
    result = runner.invoke(plot, [str(tmp_path / "running.zarr"), "-o", str(out), "-f", "svg", "-f", "pdf"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [str(out / "compare-summary.svg"), str(out / "compare-summary.pdf")]
    assert _is_image(out / "compare-summary.svg") and (out / "compare-summary.pdf").read_bytes().startswith(b"%PDF")


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path):
    xr.Dataset({"x": ("t", [1.0, 2.0])}).to_netcdf(tmp_path / "plain.nc", engine="h5netcdf")
    (tmp_path / "notes.txt").write_text("not a dataset")
    cases = {
        "does not exist": [str(tmp_path / "missing.nc"), "--out", str(tmp_path)],
        "not a study result": [str(tmp_path / "plain.nc"), "--out", str(tmp_path)],
        "cannot read": [str(tmp_path / "notes.txt"), "--out", str(tmp_path)],
        "is a file": [str(tmp_path / "plain.nc"), "--out", str(tmp_path / "notes.txt")],
    }
    for message, args in cases.items():
        result = CliRunner().invoke(plot, args)
        assert result.exit_code == 2, result.output
        assert message in _one_error_line(result.output)
