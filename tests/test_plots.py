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

from odenet.plots import FIGURES, PlotError, figures_for, open_result, plot_study, seed_stats, study_figures, unregister
from odenet.plots.compare import reported
from odenet.plots.convergence import FLOOR, reference_slope
from odenet.plots.stability import stage_of_block
from odenet.solvers import get_method
from odenet.studies.schema import coordinates, variables
from odenet_cli.plot import plot

# Every coordinate any built-in kind has: long_name and units, from the kinds themselves.
COORDS = {
    name: attrs
    for kind in ("depth", "stability", "convergence", "compare", "width", "shattered", "lesion", "landscape")
    for name, attrs in coordinates(kind).items()
}

GARBAGE = 1e9  # what an unfinished cell holds here, so that drawing it would show
EVAL_SOLVERS = ["euler", "rk4"]
STABILITY = {"stability-regions", "stability-accuracy", "stability-max-R", "stability-discretisation"}
EXPECTED = {
    "depth": {"depth-accuracy", "depth-train-loss", "depth-curves", "depth-grad-norm"},
    "stability": STABILITY,
    "convergence": {"convergence-error", "convergence-accuracy"},
    "compare": {"compare-summary", "compare-learning-rate"},
    "width": {"width-accuracy", "width-fit"},
    "shattered": {"shattered-curves", "shattered-acf", "shattered-lag1", "shattered-slope"},
    "lesion": {"lesion-single", "lesion-random", "lesion-paths"},
    "landscape": {"landscape-contours", "landscape-slices", "landscape-nonconvexity"},
}
# The layouts the studies write: norm and shortcut are cell dimensions of one value unless varied.
CELLS = {
    "depth": {"solver": ["euler"], "depth": [8, 20], "arch": ["residual", "plain"], "seed": [0, 1]},
    "stability": {
        "solver": ["euler", "rk4"],
        "step_size": [0.1, 1.0, 3.0],
        "depth": [8],
        "norm": ["batch"],
        "shortcut": ["A"],
        "seed": [0, 1],
    },
    "convergence": {"train_solver": ["euler", "midpoint"], "step_size": [1.0], "depth": [8], "seed": [0, 1]},
    "compare": {"model": ["resnet", "rknet", "odenet"], "learning_rate": [0.03, 0.1], "seed": [0, 1]},
    "width": {"depth": [8, 14], "widen": [1, 2], "learning_rate": [0.03, 0.3], "seed": [0, 1, 2]},
    "shattered": {"solver": ["euler"], "depth": [8, 20], "arch": ["residual", "plain"], "seed": [0, 1]},
    "lesion": {"solver": ["euler", "rk4"], "depth": [8, 20], "arch": ["residual", "plain"], "seed": [0, 1]},
    "landscape": {"solver": ["euler"], "depth": [8, 20], "arch": ["residual", "plain"], "seed": [0, 1]},
}
ACCURACY_UP_TO = 8.0  # eval accuracies are NaN above it, as the study stores them
INNER = {
    "epoch": [1, 2, 3],
    "block": [0, 1, 2],
    "when": ["init", "final"],
    "select": ["modulus", "real_part"],
    "eig": [0, 1],
    "eval_solver": EVAL_SOLVERS,
    "refinement": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
    "stage": [0, 1],
    "line": [0, 1],
    "s": list(np.linspace(0.0, 1.0, 16)),
    "lag": [0, 1, 2, 3],
    "deleted": [0, 1, 2],
    "path_length": [0, 1, 2, 3],
    "alpha_1d": list(np.linspace(-1.0, 1.0, 9)),
    "alpha": list(np.linspace(-1.0, 1.0, 5)),
    "beta": list(np.linspace(-1.0, 1.0, 5)),
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
    if name.startswith("eval_") and "refinement" in dims:  # accuracies and losses only up to accuracy_up_to
        r = np.asarray(coords["refinement"]).reshape([-1 if d == "refinement" else 1 for d in dims])
        return np.where(r <= ACCURACY_UP_TO, rng.uniform(0.6, 0.95, shape), np.nan)
    if name in ("diverged", "outcome", "diverged_epoch"):
        return np.zeros(shape, dtype=np.int64)
    if name == "peak_saved_bytes":
        return rng.uniform(1, 8, shape) * 2**20
    if name == "peak_cuda_bytes":  # a CPU study
        return np.full(shape, np.nan)
    if name == "reference_error":
        return rng.uniform(1e-9, 1e-8, shape)
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


def make_study(kind: str, cells: dict[str, list] | None = None, seed: int = 0, **inner: list) -> xr.Dataset:
    """A complete study dataset of ``kind``: cell 0 diverged, the last cell unfinished (``inner`` replaces INNER's)."""
    rng = np.random.default_rng(seed)
    cells = cells or CELLS[kind]
    coords = {**cells, **INNER, **inner}
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


def horizon_stability(norms: tuple[str, ...] = ("batch",), shortcuts: tuple[str, ...] = ("A",)) -> xr.Dataset:
    """Fixed horizon T = 3: cells solver × depth × norm × shortcut × seed, h = T / n along depth (n = 1, 2, 5)."""
    cells = {"solver": ["euler", "rk4"], "depth": [8, 14, 32], "norm": list(norms), "shortcut": list(shortcuts)}
    ds = make_study("stability", {**cells, "seed": [0, 1]})
    ds.coords["step_size"] = ("depth", [3.0, 1.5, 0.6], _coord_attrs("step_size"))
    return ds


def horizon_convergence() -> xr.Dataset:
    """Fixed horizon T = 3: cells train_solver × depth × seed, h = T / n along depth."""
    ds = make_study("convergence", {"train_solver": ["euler", "rk4"], "depth": [14, 20], "seed": [0, 1, 2]})
    ds.coords["step_size"] = ("depth", [1.5, 1.0], _coord_attrs("step_size"))
    return ds


@pytest.fixture(scope="module")
def figures() -> dict[str, dict[str, Figure]]:
    return {kind: study_figures(make_study(kind)) for kind in FIGURES}


def _plotted(fig: Figure) -> np.ndarray:
    """Every finite number a figure draws as data (line and scatter coordinates)."""
    values = [np.ravel(np.asarray(line.get_xydata(), dtype=float)) for ax in fig.axes for line in ax.lines]
    values += [np.ravel(c.get_offsets()) for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]
    values += [np.ravel(np.ma.filled(image.get_array(), np.nan)) for ax in fig.axes for image in ax.images]
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
    # (resnet, lr 0.03, seed 0) diverged: counted where each rate is shown; the summary
    # reports resnet at 0.1, the rate without a diverged seed, so there it says nothing.
    for ax in figures["compare"]["compare-learning-rate"].axes:
        assert [t.get_text() for t in ax.texts] == ["1/2 diverged"]
    assert not any("diverged" in t.get_text() for t in figures["compare"]["compare-summary"].axes[0].texts)
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


def test_measured_h_lambda_is_drawn_for_each_moment_and_each_selection(figures):
    ax = figures["stability"]["stability-regions"].axes[0]
    points = {c.get_gid(): c for c in ax.collections if isinstance(c, PathCollection)}
    ds = make_study("stability").sel(solver="euler")
    finished_cells = int(ds["done"].sum()) * ds.sizes["block"] * ds.sizes["eig"]
    expected = {f"h-lambda-{when}-{select}" for when in ("init", "final") for select in ("modulus", "real_part")}
    assert set(points) == expected
    assert all(len(c.get_offsets()) == finished_cells for c in points.values())
    # The two selections look different: by modulus filled, by real part hollow rings.
    lam = ds["eig_real"].sel(when="init", select="real_part") * ds["step_size"]
    np.testing.assert_allclose(
        np.sort(points["h-lambda-init-real_part"].get_offsets()[:, 0]), np.sort(lam.values.ravel())
    )
    assert points["h-lambda-init-modulus"].get_facecolors()[:, 3].min() > 0
    assert points["h-lambda-init-real_part"].get_facecolors().size == 0


def test_fixed_horizon_layout_read_from_netcdf_plots_against_step_size(tmp_path):
    horizon_stability().to_netcdf(tmp_path / "horizon.nc", engine="h5netcdf")
    figs = study_figures(open_result(tmp_path / "horizon.nc"))
    assert set(figs) == EXPECTED["stability"]  # one norm and one shortcut: no stability-controls
    (line, *_) = figs["stability-accuracy"].axes[0].lines
    assert sorted(line.get_xdata()) == [0.6, 1.5, 3.0]


def controls_study(layout: str = "horizon") -> xr.Dataset:
    """Euler, 2 norms × 2 shortcuts; depths 8, 14, 32 (n = 1, 2, 5 blocks per stage, up to 15 blocks).

    At init the eigenvalue of largest modulus of every step of stage s is exactly
    (s + 1)·c / h, c = 1, 2, 3, 4 per norm × shortcut: |λ| ∝ 1/h. A stage's first block
    after stage 0 is its transition, which has no eigenvalues (NaN); blocks past a
    network's 3n are not there (NaN). ``layout``: "horizon" (h along depth) or "grid"
    (h a dimension, one depth).
    """
    controls = {"norm": ["batch", "group"], "shortcut": ["A", "B"]}
    if layout == "horizon":
        depths, steps = [8, 14, 32], [3.0, 1.5, 0.6]
        ds = make_study("stability", {"solver": ["euler"], "depth": depths, **controls, "seed": [0, 1]},
                        block=list(range(15)))  # fmt: skip
        ds.coords["step_size"] = ("depth", steps, _coord_attrs("step_size"))
        h = ds["step_size"]
    else:
        depths, steps = [14], [0.3, 1.0, 3.0]
        cells = {"solver": ["euler"], "step_size": steps, "depth": depths, **controls, "seed": [0, 1]}
        ds = make_study("stability", cells, block=list(range(15)))
        h = ds["step_size"]
    n = (ds["depth"] - 2) // 6
    block = ds["block"]
    stage = block // n
    transition = (stage > 0) & (block % n == 0)
    c = xr.DataArray([[1.0, 2.0], [3.0, 4.0]], coords={"norm": controls["norm"], "shortcut": controls["shortcut"]})
    largest = ((stage + 1) * c / h).where((block < 3 * n) & ~transition)
    init_modulus = {"when": "init", "select": "modulus", "eig": 0}
    target = ds["eig_real"].loc[init_modulus]
    ds["eig_real"].loc[init_modulus] = -largest.broadcast_like(target).transpose(*target.dims)
    ds["eig_imag"].loc[init_modulus] = 0.0
    ds["activation_rms"] = ds["activation_rms"].where(block < 3 * n)
    return ds


def test_stage_of_block_is_b_div_n_from_the_blocks_each_network_has():
    stage = stage_of_block(controls_study())
    assert stage.sel(depth=32, solver="euler", norm="batch", shortcut="A", seed=0).values.tolist() == [
        *[0] * 5, *[1] * 5, *[2] * 5,
    ]  # fmt: skip
    depth8 = stage.sel(depth=8, solver="euler", norm="batch", shortcut="A", seed=0).values
    np.testing.assert_array_equal(depth8[:3], [0, 1, 2])
    assert np.isnan(depth8[3:]).all()  # a network of 3 blocks has no block 3


@pytest.mark.parametrize("layout", ["horizon", "grid"])
def test_norm_and_shortcut_axes_get_a_controls_figure_with_one_line_each(layout):
    ds = controls_study(layout)
    figs = study_figures(ds)
    assert set(figs) == STABILITY | {"stability-controls"}
    fig = figs["stability-controls"]
    labels = ["norm=batch, shortcut=A", "norm=batch, shortcut=B", "norm=group, shortcut=A", "norm=group, shortcut=B"]
    (legend,) = fig.legends  # five entries: beside the panels
    assert [t.get_text() for t in legend.get_texts()] == [*labels, "slope −1 (|λ| ∝ 1/h)"]
    h = np.asarray(ds["step_size"].values, dtype=float)
    n = (np.asarray(ds["depth"].values) - 2) // 6
    n = np.broadcast_to(n, h.shape)
    for s, ax in enumerate(fig.axes):
        assert ax.get_title() == f"stage {s}"
        (slope,) = [line for line in ax.lines if line.get_gid() == "slope-1"]
        x, y = slope.get_xydata().T
        assert np.polyfit(np.log(x), np.log(y), 1)[0] == pytest.approx(-1)
        means = [c.lines[0] for c in ax.containers]
        assert len(means) == 4
        for c, line in enumerate(means, start=1):
            # Stage s of a network with n = 1 is its transition alone after stage 0: no eigenvalues.
            expected = np.where((s == 0) | (n > 1), (s + 1) * c / h, np.nan)
            np.testing.assert_allclose(line.get_xdata(), h)
            np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
    # The other figures draw the same four lines, labelled the same way.
    assert figs["stability-accuracy"].axes[0].get_legend_handles_labels()[1] == labels


def test_one_norm_and_one_shortcut_are_squeezed_not_named():
    figs = study_figures(make_study("stability"))
    assert "stability-controls" not in figs
    _, texts = figs["stability-accuracy"].axes[0].get_legend_handles_labels()
    assert texts == ["euler", "rk4"]


def test_discretisation_shows_the_largest_radius_over_blocks_and_the_line_at_one(figures):
    ds = make_study("stability")
    fig = figures["stability"]["stability-discretisation"]
    radii_init, _, excess_init, _ = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["init", "final", "init", "final"]
    for name, ax in (("step_radius", radii_init), ("flow_radius", radii_init), ("step_excess", excess_init)):
        euler, _ = [line for line in ax.lines if line.get_gid() == name]
        # Every euler cell finished: the seed mean of the per-cell maximum over blocks.
        expected = ds[name].sel(solver="euler", when="init").max("block").mean("seed").squeeze()
        np.testing.assert_allclose(euler.get_xdata(), ds["step_size"].values)
        np.testing.assert_allclose(euler.get_ydata(), expected.values)
    for ax in (excess_init, fig.axes[3]):
        assert any(np.all(np.asarray(line.get_ydata()) == 1.0) for line in ax.lines if line.get_gid() is None)


def test_seed_stats_is_the_sample_std_over_finished_seeds_with_their_count():
    da = xr.DataArray([[1.0, 2.0, 3.0], [5.0, np.nan, np.nan], [np.nan] * 3], dims=("x", "seed"))
    mean, std, n = seed_stats(da)
    np.testing.assert_allclose(mean.values, [2.0, 5.0, np.nan])
    np.testing.assert_allclose(std.values, [1.0, np.nan, np.nan])  # ddof = 1; one seed: no spread, not 0
    assert n.values.tolist() == [3, 1, 0]


def test_error_bars_are_the_sample_std_and_figures_say_n():
    ds = make_study("depth", {"solver": ["euler"], "depth": [8, 20], "arch": ["residual", "plain"], "seed": [0, 1, 2]})
    ds["final_test_accuracy"].loc[{"depth": 20, "arch": "residual"}] = [0.1, 0.2, 0.3]
    fig = study_figures(ds)["depth-accuracy"]
    residual = fig.axes[0].containers[0]
    line, _, (bars,) = residual
    assert line.get_ydata()[1] == pytest.approx(0.2)
    segment = bars.get_segments()[1]
    assert (segment[1, 1] - segment[0, 1]) / 2 == pytest.approx(0.1)  # sample std of 0.1, 0.2, 0.3
    # Cell 0 diverged (2 seeds left), the last one is unfinished (2 seeds), the rest have 3.
    assert fig.get_suptitle() == "mean ± sample std (ddof=1), n = 2–3 seeds"


def test_a_single_seed_draws_no_error_bar_in_a_kinds_figure():
    ds = make_study("stability").isel(seed=[0])
    fig = study_figures(ds)["stability-accuracy"]
    for container in fig.axes[0].containers:
        _, _, (bars,) = container
        assert not np.isfinite(np.concatenate(bars.get_segments())).any()
    assert fig.get_suptitle() == "mean ± sample std (ddof=1), n = 1 seed (no error bars)"


def compare_with_two_rates() -> xr.Dataset:
    """Three models at lr 0.03 and 0.1; known final training losses and accuracies.

    resnet trains best at 0.03, but seed 0 diverged there (cell 0), so 0.1 is its rate;
    rknet's lowest loss is at 0.03 (its last epoch there is unrecorded: the one before
    counts); odenet's at 0.1, where seed 1 has not finished.
    """
    ds = make_study("compare")
    loss = {"resnet": (0.1, 0.5), "rknet": (0.2, 0.9), "odenet": (0.8, 0.3)}
    for model, (at_small, at_large) in loss.items():
        ds["train_loss"].loc[{"model": model, "learning_rate": 0.03}] = at_small
        ds["train_loss"].loc[{"model": model, "learning_rate": 0.1}] = at_large
    ds["train_loss"].loc[{"model": "rknet", "learning_rate": 0.03, "seed": 1, "epoch": 3}] = np.nan
    ds["final_test_accuracy"].loc[{"learning_rate": 0.03}] = [[0.50, 0.52], [0.54, 0.56], [0.58, 0.60]]
    ds["final_test_accuracy"].loc[{"learning_rate": 0.1}] = [[0.90, 0.92], [0.94, 0.96], [0.98, 0.99]]
    ds["final_test_accuracy"][{"model": 0, "learning_rate": 0, "seed": 0}] = np.nan
    ds["final_test_accuracy"][{"model": -1, "learning_rate": -1, "seed": -1}] = GARBAGE
    return ds


def test_compare_reports_each_model_at_its_chosen_learning_rate():
    ds = compare_with_two_rates()
    chosen = {"resnet": 0.1, "rknet": 0.03, "odenet": 0.1}
    lr = reported(ds.where(ds["done"] == 1))
    assert dict(zip(lr["model"].values, lr.values.tolist(), strict=True)) == chosen
    figs = study_figures(ds)
    summary = figs["compare-summary"]
    accuracy, _, _, memory = summary.axes
    widths = [bar.get_width() for bar in accuracy.patches]
    np.testing.assert_allclose(widths, [0.91, 0.55, 0.98])  # odenet at 0.1: seed 0 only
    assert [t.get_text() for t in accuracy.get_yticklabels()] == ["resnet\nlr 0.1", "rknet\nlr 0.03", "odenet\nlr 0.1"]
    assert "lowest mean final training loss" in summary.get_suptitle()
    assert "n = 1–2 seeds" in summary.get_suptitle()
    # Memory: peak bytes autograd saves, in MiB, of each model at its rate.
    saved = ds["peak_saved_bytes"].where(ds["done"] == 1) / 2**20
    expected = [float(saved.sel(model=m, learning_rate=r).mean()) for m, r in chosen.items()]
    np.testing.assert_allclose([bar.get_width() for bar in memory.patches], expected)
    assert memory.get_xlabel().endswith("[MiB]")
    # The choice itself: training loss against the rate, the chosen point ringed.
    for ax in figs["compare-learning-rate"].axes:
        for model, rate in chosen.items():
            (ring,) = [line for line in ax.lines if line.get_gid() == f"chosen-{model}"]
            assert ring.get_xdata().tolist() == [rate]


def test_fixed_horizon_convergence_has_a_row_per_training_step_size():
    ds = horizon_convergence()
    figs = study_figures(ds)
    assert set(figs) == EXPECTED["convergence"]
    titles = [ax.get_title() for ax in figs["convergence-accuracy"].axes]
    assert titles == [
        "trained with euler\nstep size 1.5, depth 14",
        "trained with rk4\nstep size 1.5, depth 14",
        "trained with euler\nstep size 1, depth 20",
        "trained with rk4\nstep size 1, depth 20",
    ]
    done = ds.where(ds["done"] == 1)
    for ax, (h_index, train) in zip(figs["convergence-accuracy"].axes, [(0, 0), (0, 1), (1, 0), (1, 1)], strict=True):
        cell = done.isel(depth=h_index, train_solver=train)
        for name in ("eval_accuracy", "eval_accuracy_recalibrated"):
            lines = [line for line in ax.lines if line.get_gid() == name]
            assert len(lines) == len(EVAL_SOLVERS)
            assert {line.get_linestyle() for line in lines} == {"-" if name == "eval_accuracy" else "--"}
            for line, solver in zip(lines, EVAL_SOLVERS, strict=True):
                expected = cell[name].sel(eval_solver=solver).mean("seed")
                np.testing.assert_allclose(line.get_ydata(), expected.values)  # NaN above accuracy_up_to
        for name in ("reference_accuracy", "reference_accuracy_recalibrated"):
            (line,) = [line for line in ax.lines if line.get_gid() == name]
            assert line.get_ydata()[0] == pytest.approx(float(cell[name].mean()))
    # The reference's resolution is shaded on the error panels: up to 10× its error.
    error = figs["convergence-error"]
    assert [ax.get_title() for ax in error.axes][:2] == [
        "stage 0\nstep size 1.5, depth 14",
        "stage 1\nstep size 1.5, depth 14",
    ]
    ax = error.axes[0]
    (band,) = [p for p in ax.patches if p.get_gid() == "reference-floor"]
    floor = FLOOR * float(done["reference_error"].isel(depth=0).sel(stage=0).max())
    top = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1].max()
    assert top == pytest.approx(min(floor, ax.get_ylim()[1]))


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
    assert result.output.splitlines() == [str(tmp_path / f"compare-{f}.png") for f in ("summary", "learning-rate")]
    out = tmp_path / "svg"
    result = runner.invoke(plot, [str(tmp_path / "running.zarr"), "-o", str(out), "-f", "svg", "-f", "pdf"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:2] == [str(out / "compare-summary.svg"), str(out / "compare-summary.pdf")]
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
