"""Loss landscapes (Li et al. 2018): filter normalisation, the batched surface, curvature, the study.

The surface is checked against the definition, L(θ + αδ + βη) evaluated on a perturbed
copy of the network one point at a time; the curvature against quadratics and a cubic
whose Hessians are known; the Lanczos estimate against the dense Hessian of a network
small enough to form it.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from odenet.data import load_dataset
from odenet.errors import ConfigError
from odenet.experiment import ModelConfig
from odenet.landscape import (
    filter_normalised_direction,
    grid,
    hessian_extremes,
    loss_surface,
    slice_curvature,
)
from odenet.models import cifar_resnet, mlp_resnet
from odenet.plots import plot_study, study_figures
from odenet.studies import load_study, run_study
from odenet.studies.kinds.landscape import LandscapeStudy
from odenet.studies.schema import coordinates, variables
from odenet.train import TrainConfig, torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny networks: one thread is fastest, and two spin-waiting threads on a busy machine are very slow.
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", seed=0)
    return data.x_train[:48].double(), data.y_train[:48]


def small_resnet(norm: str = "batch", residual: bool = True) -> nn.Module:
    """ResNet-8 of width 4 on 8×8 digits, float64, with batch statistics that are not 0 and 1."""
    torch.manual_seed(0)
    net = cifar_resnet(8, in_channels=1, width=4, norm=norm, residual=residual).double()  # type: ignore[arg-type]
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def perturbed(model: nn.Module, steps: list[tuple[float, dict[str, torch.Tensor]]]) -> nn.Module:
    """A copy of ``model`` with every parameter θ + Σ c·d: the definition the surface must match."""
    net = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in net.named_parameters():
            for c, d in steps:
                p.add_(c * d[name])
    return net


def direct_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_norm: str) -> tuple[float, float]:
    """Loss and accuracy with batch norm as ``batch_norm`` says: batch statistics (train mode) or running ones."""
    net.train(batch_norm == "batch")
    with torch.no_grad():
        logits = net(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).double().mean().item()


def test_every_filter_of_a_direction_has_the_norm_of_the_same_filter_of_the_weights():
    model = small_resnet()
    d = filter_normalised_direction(model, torch.Generator().manual_seed(3))
    assert list(d) == [name for name, _ in model.named_parameters()]
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()
    }
    filters = zeros = 0
    for name, p in model.named_parameters():
        assert d[name].shape == p.shape and d[name].dtype == p.dtype
        if p.dim() <= 1:  # biases (the head's), batch-norm weights and biases: not moved
            assert torch.count_nonzero(d[name]) == 0
            zeros += 1
            continue
        assert id(p) not in norm_params
        for i in range(p.shape[0]):  # filter i: output channel of a conv, row of a linear map
            want = torch.linalg.vector_norm(p[i]).item()
            assert torch.linalg.vector_norm(d[name][i]).item() == pytest.approx(want, rel=1e-12)
            filters += 1
    assert zeros == len(norm_params) + 1  # batch-norm weights and biases, and the head's bias
    assert filters == 4 + 2 * 4 + 2 * 8 + 2 * 16 + 10  # stem, two convs per stage (width 4, 8, 16), head rows
    # The same seed draws the same direction; another seed another one.
    again = filter_normalised_direction(model, torch.Generator().manual_seed(3))
    other = filter_normalised_direction(model, torch.Generator().manual_seed(4))
    assert all(torch.equal(d[n], again[n]) for n in d)
    assert not torch.equal(d["stem.0.weight"], other["stem.0.weight"])


@pytest.mark.parametrize("batch_norm", ["batch", "running"])
def test_the_batched_surface_is_the_loss_at_each_perturbed_point(digits, batch_norm):
    x, y = digits
    model = small_resnet()
    g = torch.Generator().manual_seed(0)
    delta, eta = filter_normalised_direction(model, g), filter_normalised_direction(model, g)
    alphas, betas = grid(5), grid(4, span=0.5)
    surface = loss_surface(model, x, y, (delta, eta), alphas, betas, chunk=3, batch_norm=batch_norm)
    assert surface["loss"].dims == ("alpha", "beta") and surface["loss"].shape == (5, 4)
    assert surface["loss"].attrs == {"long_name": "mean cross-entropy on the evaluation batch", "units": "nat"}
    np.testing.assert_array_equal(surface["beta"].values, betas)
    for i, j in [(0, 0), (1, 3), (4, 2), (2, 1)]:
        net = perturbed(model, [(alphas[i], delta), (betas[j], eta)])
        loss, accuracy = direct_loss(net, x, y, batch_norm)
        assert surface["loss"].values[i, j] == pytest.approx(loss, rel=1e-12)
        assert surface["accuracy"].values[i, j] == accuracy
    # The surface is not flat: the directions move the loss (else the check above is empty).
    assert np.ptp(surface["loss"].values) > 0.01


def test_the_centre_is_the_models_own_loss_and_the_1d_slice_cuts_the_surface_at_beta_0(digits):
    x, y = digits
    model = small_resnet()
    g = torch.Generator().manual_seed(1)
    delta, eta = filter_normalised_direction(model, g), filter_normalised_direction(model, g)
    line = loss_surface(model, x, y, (delta,), grid(9))
    plane = loss_surface(model, x, y, (delta, eta), grid(5), grid(5))
    own, _ = direct_loss(copy.deepcopy(model), x, y, "batch")
    assert line["loss"].dims == ("alpha",)
    assert line["loss"].sel(alpha=0.0).item() == pytest.approx(own, rel=1e-12)
    assert plane["loss"].sel(alpha=0.0, beta=0.0).item() == pytest.approx(own, rel=1e-12)
    np.testing.assert_allclose(line["loss"].values[::2], plane["loss"].sel(beta=0.0).values, rtol=1e-12)


def test_how_the_grid_is_chunked_does_not_change_the_surface(digits):
    x, y = digits
    model = small_resnet(residual=False)
    g = torch.Generator().manual_seed(2)
    directions = (filter_normalised_direction(model, g), filter_normalised_direction(model, g))
    surfaces = [loss_surface(model, x, y, directions, grid(3), grid(3), chunk=c)["loss"].values for c in (1, 4, 9)]
    np.testing.assert_allclose(surfaces[0], surfaces[1], rtol=1e-12)
    np.testing.assert_allclose(surfaces[0], surfaces[2], rtol=1e-12)


def test_the_model_is_left_as_it_was(digits):
    x, y = digits
    model = small_resnet(norm="frozen_batch").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    directions = (filter_normalised_direction(model, g), filter_normalised_direction(model, g))
    for batch_norm in ("batch", "running"):
        loss_surface(model, x, y, directions, grid(3), grid(3), batch_norm=batch_norm)
        hessian_extremes(model, x, y, steps=3, generator=g, batch_norm=batch_norm)
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and statistics, bit for bit
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not any(getattr(m, "calibrating", False) for m in model.modules())


def test_an_adaptive_model_is_evaluated_one_point_at_a_time_with_the_same_result():
    torch.manual_seed(0)
    data = load_dataset("spirals", seed=0)
    x, y = data.x_train[:32].double(), data.y_train[:32]
    model = mlp_resnet(2, data.num_classes, depth=1, width=8, solver="dopri5", activation="tanh").double()
    g = torch.Generator().manual_seed(0)
    delta = filter_normalised_direction(model, g)
    line = loss_surface(model, x, y, (delta,), grid(3, span=0.5))
    for i, a in enumerate(grid(3, span=0.5)):
        loss, _ = direct_loss(perturbed(model, [(a, delta)]), x, y, "batch")
        assert line["loss"].values[i] == pytest.approx(loss, rel=1e-10)


def _quadratic(a: float, b: float, c: float, alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """f = a α² + 2b αβ + c β² + α − β + 3: Hessian [[2a, 2b], [2b, 2c]] everywhere."""
    A, B = np.meshgrid(alphas, betas, indexing="ij")
    return a * A**2 + 2 * b * A * B + c * B**2 + A - B + 3


def test_the_slice_curvature_of_a_bowl_a_saddle_and_a_cubic():
    alphas, betas = grid(21), grid(11, span=0.5)
    # A convex bowl: both eigenvalues those of the constant Hessian, no negative curvature.
    bowl = slice_curvature(_quadratic(1.0, 0.3, 2.0, alphas, betas), alphas, betas)
    lam = np.linalg.eigvalsh(np.array([[2.0, 0.6], [0.6, 4.0]]))
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(bowl.lam_min[inner], lam[0], rtol=1e-9)
    np.testing.assert_allclose(bowl.lam_max[inner], lam[1], rtol=1e-9)
    assert np.isnan(bowl.lam_min[0]).all() and np.isnan(bowl.lam_max[:, -1]).all()  # the edge has no neighbours
    assert bowl.negative_fraction() == 0.0
    # A saddle α² − β² curves down everywhere.
    saddle = slice_curvature(_quadratic(1.0, 0.0, -1.0, alphas, betas), alphas, betas)
    np.testing.assert_allclose(saddle.lam_min[inner], -2.0, rtol=1e-9)
    np.testing.assert_allclose(saddle.lam_max[inner], 2.0, rtol=1e-9)
    assert saddle.negative_fraction() == 1.0
    # α³ + β²: f_αα = 6α (central differences are exact for cubics), negative for α < 0.
    # 20 points: no α is 0; the 18 interior columns have 9 with α < 0.
    a20 = grid(20)
    cubic = slice_curvature(_quadratic(0.0, 0.0, 1.0, a20, betas) + a20[:, None] ** 3, a20, betas)
    want = np.broadcast_to(np.minimum(6 * a20[1:-1, None], 2.0), (18, betas.size - 2))
    np.testing.assert_allclose(cubic.lam_min[1:-1, 1:-1], want, rtol=1e-9, atol=1e-9)
    assert cubic.negative_fraction() == 0.5
    assert cubic.negative_fraction(tol=6 * 0.6) == pytest.approx(np.mean(6 * a20[1:-1] < -3.6))


def test_the_slice_curvature_needs_an_even_grid_of_three_points():
    with pytest.raises(ValueError, match="equally spaced"):
        slice_curvature(np.zeros((3, 3)), [0.0, 0.1, 0.3], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="at least 3"):
        slice_curvature(np.zeros((2, 3)), [0.0, 1.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        slice_curvature(np.zeros((3, 4)), grid(3), grid(3))


def test_lanczos_finds_the_extreme_eigenvalues_of_the_dense_hessian():
    torch.manual_seed(0)
    model = mlp_resnet(2, 3, depth=1, width=3, activation="tanh").double()
    x, y = torch.randn(16, 2, dtype=torch.float64), torch.randint(0, 3, (16,))
    names = [n for n, p in model.named_parameters() if p.dim() > 1]
    shapes = [dict(model.named_parameters())[n].shape for n in names]
    sizes = [math.prod(s) for s in shapes]
    theta = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names])
    rest = {n: p.detach() for n, p in model.named_parameters() if n not in names}

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params = {n: v.reshape(s) for n, v, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
        return F.cross_entropy(torch.func.functional_call(model, {**rest, **params}, (x,)), y)

    dense = torch.autograd.functional.hessian(loss, theta)
    lam = torch.linalg.eigvalsh(dense).numpy()
    assert lam[0] < 0 < lam[-1]  # an indefinite Hessian: both ends are tested
    n = theta.numel()  # 33 filter weights: n Lanczos steps span the whole space
    found = hessian_extremes(model, x, y, steps=n, generator=torch.Generator().manual_seed(0))
    assert found.lam_min == pytest.approx(lam[0], rel=1e-8)
    assert found.lam_max == pytest.approx(lam[-1], rel=1e-8)
    assert found.residual_min < 1e-8 and found.residual_max < 1e-8
    assert found.ratio == pytest.approx(abs(lam[0] / lam[-1]), rel=1e-8)
    # A few steps: Ritz values lie inside the spectrum, with residuals that bound their distance to it.
    few = hessian_extremes(model, x, y, steps=4, generator=torch.Generator().manual_seed(0))
    assert lam[0] - 1e-12 <= few.lam_min <= few.lam_max <= lam[-1] + 1e-12
    assert np.min(np.abs(lam - few.lam_max)) <= few.residual_max + 1e-12


def test_a_tiny_landscape_study_runs_end_to_end_and_plots(tmp_path):
    study = LandscapeStudy(
        dataset="digits", model=ModelConfig(width=4), train=TrainConfig(epochs=1, batch_size=256),
        depths=(8,), seeds=(0,), samples=32, points_1d=5, points_2d=5, hessian_steps=3,
    )  # fmt: skip
    ds = run_study(study, tmp_path / "landscape.nc", progress=False).dataset
    assert ds is not None and int(ds["done"].sum()) == 2 and ds.attrs["study"] == "landscape"
    assert ds["surface_loss"].dims == ("solver", "depth", "arch", "seed", "alpha", "beta")
    assert ds["slice_loss"].dims == ("solver", "depth", "arch", "seed", "alpha_1d")
    assert ds["alpha"].attrs["long_name"] == "step alpha along the filter-normalised direction delta"
    assert ds["surface_loss"].attrs["units"] == "nat"
    np.testing.assert_allclose(ds["alpha_1d"].values, grid(5))
    for arch in ("residual", "plain"):
        cell = ds.sel(solver="euler", depth=8, arch=arch, seed=0)
        centre = cell["centre_loss"].item()
        assert np.isfinite(cell["surface_loss"]).all() and np.isfinite(cell["slice_accuracy"]).all()
        # The same point reached three ways (vmapped in chunks of different make-up: float32 rounding).
        assert cell["slice_loss"].sel(alpha_1d=0.0).item() == pytest.approx(centre, rel=1e-5)
        assert cell["surface_loss"].sel(alpha=0.0, beta=0.0).item() == pytest.approx(centre, rel=1e-5)
        again = slice_curvature(cell["surface_loss"].values, grid(5), grid(5))
        np.testing.assert_array_equal(cell["curvature_min"].values, again.lam_min)
        assert cell["negative_curvature_fraction"].item() == again.negative_fraction()
        h_min, h_max = cell["hessian_min"].item(), cell["hessian_max"].item()
        assert h_min <= h_max and cell["hessian_ratio"].item() == pytest.approx(abs(h_min / h_max))
    written = plot_study(xr.open_dataset(tmp_path / "landscape.nc"), tmp_path / "figures", dpi=30)
    assert {p.stem for p in written} == {"landscape-contours", "landscape-slices", "landscape-nonconvexity"}
    assert all(p.stat().st_size > 0 for p in written)
    contours = study_figures(ds)["landscape-contours"]
    assert contours.get_suptitle().startswith("seed 0")
    assert [ax.get_title() for ax in contours.axes[:2]] == ["depth 8, residual", "depth 8, plain"]


def synthetic_study() -> xr.Dataset:
    """depth 8, 20 × residual, plain × seeds 0, 1: (8, residual, 0) diverged, (20, plain, 1) unfinished (garbage)."""
    cells = {"solver": ["euler"], "depth": [8, 20], "arch": ["residual", "plain"], "seed": [0, 1]}
    inner = {"epoch": [1, 2], "alpha_1d": list(grid(7)), "alpha": list(grid(5)), "beta": list(grid(5))}
    attrs = coordinates("landscape")
    ds = xr.Dataset(attrs={"study": "landscape"})
    for name, values in {**cells, **inner}.items():
        ds.coords[name] = (name, values, dict(zip(("long_name", "units"), attrs.get(name, (name, "1")), strict=True)))
    rng = np.random.default_rng(0)
    for var in variables("landscape"):
        dims = (*cells, *var.dims)
        shape = [ds.sizes[d] for d in dims]
        values = np.zeros(shape, dtype=var.dtype) if var.dtype == "int64" else rng.uniform(0.1, 2.0, shape)
        ds[var.name] = (dims, values, var.attrs)
    ds["done"] = (tuple(cells), np.ones([len(v) for v in cells.values()], dtype=np.int64))
    first = {"depth": 8, "arch": "residual", "seed": 0}
    ds["diverged"].loc[first] = 1
    for var in variables("landscape")[-12:]:  # a diverged cell has no landscape
        ds[var.name].loc[first] = np.nan
    last = {"depth": 20, "arch": "plain", "seed": 1}
    ds["done"].loc[last] = 0
    for name in ds.data_vars:
        if name != "done" and ds[name].dtype.kind == "f":
            ds[name].loc[last] = 1e9
    return ds


def test_the_figures_leave_out_unfinished_cells_and_say_which_diverged():
    ds = synthetic_study()
    figures = study_figures(ds)
    for name, fig in figures.items():
        drawn = [np.asarray(line.get_xydata(), dtype=float) for ax in fig.axes for line in ax.lines]
        drawn += [np.asarray(c.levels) for ax in fig.axes for c in ax.collections if hasattr(c, "levels")]
        values = np.concatenate([np.ravel(v) for v in drawn])
        assert values[np.isfinite(values)].size and np.nanmax(np.abs(values)) < 1e8, name
    contours = figures["landscape-contours"]
    assert contours.get_suptitle().startswith("seed 0")  # the first seed with a finished surface
    panels = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in contours.axes if ax.get_title()}
    assert panels["depth 8, residual"] == ["training diverged"] and panels["depth 20, plain"] == []
    assert len(contours.axes[0].lines) == 0 and len(contours.axes[1].lines) == 1  # θ marked where there is a surface
    # Negative-curvature fraction against depth: the mean over the seeds that finished.
    (ax, *_) = figures["landscape-nonconvexity"].axes
    residual = next(c for c in ax.containers if c.get_label() == "residual").lines[0]
    frac = ds["negative_curvature_fraction"].sel(solver="euler", arch="residual")
    np.testing.assert_allclose(residual.get_ydata(), [frac.sel(depth=8, seed=1), frac.sel(depth=20).mean("seed")])
    assert "1/2 diverged" in {t.get_text() for t in ax.texts}


def test_landscape_settings_are_checked_and_the_canonical_spec_reads():
    with pytest.raises(ConfigError, match="points_2d"):
        LandscapeStudy(points_2d=2)
    with pytest.raises(ConfigError, match="span"):
        LandscapeStudy(span=0.0)
    with pytest.raises(ConfigError, match="bn_statistics"):
        LandscapeStudy(bn_statistics="eval")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="archs"):
        LandscapeStudy(archs=("resnet",))
    from pathlib import Path

    spec = load_study(Path(__file__).resolve().parents[1] / "studies" / "loss-landscape.toml")
    assert isinstance(spec.study, LandscapeStudy) and spec.out.parent.name == "results"
    assert {c.model.residual for c in spec.study.cells()} == {True, False}
