"""Shattered gradients (Balduzzi et al. 2017): the statistics, the gradient curve, the result, the study.

* The summaries against noises whose answer is known: the autocorrelation of white noise
  is δ_k, of an AR(1) process φ^k, of a random walk near 1; the spectral slope of white
  noise is 0, of brown noise −2, of a signal built with spectrum |2 sin πf|^β exactly β.
  The sampling margins are stated where they are used.
* ``gradient_curve`` is the directional derivative: equal to a forward-mode jvp (to
  rounding) and to a central finite difference, for any chunking of the grid, with the
  model untouched; with an adaptive solver too.
* The direction of Balduzzi et al.'s result in their own setting (scalar in, scalar out,
  256 points on [−2, 2], batch norm) with fixed seeds at initialisation: the plain
  network's lag-1 correlation falls with depth to white noise, the residual one's stays.
* A tiny study runs end to end: stored, labelled, reproducing the library's numbers,
  plotted, and its canonical spec and command line read.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from odenet.data import load_dataset
from odenet.errors import ConfigError
from odenet.experiment import ModelConfig, build_model
from odenet.models import cifar_resnet, mlp_resnet
from odenet.norms import CALIBRATION_SAMPLES, calibrate_batchnorm
from odenet.plots import plot_study
from odenet.shattered import autocorrelation, gradient_curve, lag1, line_grid, shattering, spectral_slope
from odenet.studies import KINDS, load_study, run_study
from odenet.studies.kinds.shattered import ShatteredStudy, line_ends
from odenet.train import TrainConfig, torch_threads
from odenet_cli.main import main

ROOT = Path(__file__).resolve().parents[1]
N = 256  # grid points, as Balduzzi et al.


@pytest.fixture(autouse=True)
def _one_thread():
    # As every study cell: one torch thread, so the numbers (and their rounding) do not
    # depend on the machine's core count, and a loaded machine is not oversubscribed.
    with torch_threads(1):
        yield


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- the autocorrelation ------------------------------------------------------------------
def test_the_autocorrelation_is_the_standard_estimator():
    g = _rng().standard_normal(50)
    c = g - g.mean()
    full = np.correlate(c, c, mode="full")[len(c) - 1 :] / (c @ c)
    np.testing.assert_allclose(autocorrelation(g, 10), full[:11], rtol=1e-12, atol=1e-15)
    # batched over leading axes, and invariant to an affine change of the curve
    batch = _rng(1).standard_normal((3, 4, 40))
    np.testing.assert_allclose(autocorrelation(batch, 5)[1, 2], autocorrelation(batch[1, 2], 5), rtol=1e-12)
    np.testing.assert_allclose(autocorrelation(3.0 * g - 7.0, 10), autocorrelation(g, 10), rtol=1e-12, atol=1e-14)
    assert np.isnan(autocorrelation(np.full(20, 2.5), 3)).all()  # no variance, no correlation
    with pytest.raises(ValueError, match="max_lag"):
        autocorrelation(g, 50)


def test_white_noise_has_the_autocorrelation_of_a_delta():
    m = 400
    acf = autocorrelation(_rng().standard_normal((m, N)), 10)
    assert np.all(acf[:, 0] == 1.0)
    # r_k (k ≥ 1) of white noise: mean −(1/n) (mean removed), spread 1/√n per series, so the
    # mean over m series lies within 1/n + 4/√(n m) of 0 (4 standard errors).
    assert np.all(np.abs(acf[:, 1:].mean(axis=0)) < 1 / N + 4 / math.sqrt(N * m))


def test_an_ar1_process_has_autocorrelation_phi_to_the_k():
    phi, n, m = 0.6, 1024, 50
    e = _rng(2).standard_normal((m, n))
    x = np.zeros((m, n))
    x[:, 0] = e[:, 0] / math.sqrt(1 - phi**2)  # stationary start
    for i in range(1, n):
        x[:, i] = phi * x[:, i - 1] + e[:, i]
    got = autocorrelation(x, 5).mean(axis=0)
    k = np.arange(6)
    # Bartlett's variance of r_k for AR(1), over m series; the estimator's bias is O(1/n).
    bartlett = ((1 + phi**2) * (1 - phi ** (2 * k)) / (1 - phi**2) - 2 * k * phi ** (2 * k)) / n
    assert np.all(np.abs(got - phi**k) <= 4 * np.sqrt(bartlett / m) + 5 / n)


def test_a_random_walk_stays_correlated():
    walks = np.cumsum(_rng(3).standard_normal((200, N)), axis=-1)
    acf = autocorrelation(walks, 8)
    mean = acf.mean(axis=0)
    assert mean[1] > 0.95 and np.all(np.diff(mean) < 0) and mean[8] > 0.75
    assert np.all(lag1(walks) > 0.8)  # every single walk, not only the mean
    np.testing.assert_array_equal(lag1(walks), acf[:, 1])


# -- the spectral slope ---------------------------------------------------------------------
def _slope_standard_error(n: int) -> float:
    """√(π²/6 / Σ(x − x̄)²): each log-periodogram ordinate has variance π²/6 (log of an exponential)."""
    k = np.arange(1, (n + 1) // 2)
    x = np.log(2 * np.sin(np.pi * k / n))
    return math.sqrt(math.pi**2 / 6 / ((x - x.mean()) ** 2).sum())


def test_white_noise_has_spectral_slope_zero_and_brown_noise_minus_two():
    m = 100
    margin = 4 * _slope_standard_error(N) / math.sqrt(m)  # 4 standard errors of the mean: ≈ 0.054
    white = spectral_slope(_rng(4).standard_normal((m, N)))
    brown = spectral_slope(np.cumsum(_rng(5).standard_normal((m, N)), axis=-1))
    assert white.shape == brown.shape == (m,)
    assert abs(white.mean() - 0.0) < margin
    assert abs(brown.mean() - (-2.0)) < margin
    # the stated per-curve standard error is the scatter a single curve shows
    assert 0.8 < white.std(ddof=1) / _slope_standard_error(N) < 1.2


@pytest.mark.parametrize("beta", [-3.0, -2.0, -0.5, 0.0, 1.0])
def test_a_curve_with_spectrum_2_sin_pi_f_to_the_beta_has_slope_beta(beta):
    # |DFT|² exactly |2 sin πf_k|^β at every fitted frequency, random phases: no sampling error.
    k = np.arange(N // 2 + 1)
    amplitude = np.zeros(k.size)  # no mean
    amplitude[1:] = (2 * np.sin(np.pi * k[1:] / N)) ** (beta / 2)
    phases = np.exp(2j * np.pi * _rng(6).random(k.size))
    curve = np.fft.irfft(amplitude * phases, n=N)
    assert spectral_slope(curve) == pytest.approx(beta, abs=1e-9)
    assert spectral_slope(5.0 * curve + 1.0) == pytest.approx(beta, abs=1e-9)
    assert np.isnan(spectral_slope(np.zeros(N)))


# -- the gradient curve ---------------------------------------------------------------------
def _eval64(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to(torch.float64).eval()


def _jvp_curve(model: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, points: int, logit: int) -> np.ndarray:
    """J·v with J = ∂f_logit/∂x at x(s) and v = x1 − x0, one point at a time (torch's jvp,
    by the double-backward trick: no sum over a batch, no derivative with respect to s)."""
    net = _eval64(model)
    x0, x1 = x0.to(torch.float64), x1.to(torch.float64)
    out = []
    for s in line_grid(points):
        _, jv = torch.autograd.functional.jvp(lambda x: net(x[None])[0, logit], x0 + s * (x1 - x0), x1 - x0)
        out.append(float(jv))
    return np.array(out)


def _input_gradient_curve(
    model: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, points: int, logit: int
) -> np.ndarray:
    """∇_x f_logit(x(s)) · (x1 − x0) at each s: the input gradient of one point per pass, projected."""
    net = _eval64(model)
    x0, x1 = x0.to(torch.float64), x1.to(torch.float64)
    out = []
    for s in line_grid(points):
        x = (x0 + s * (x1 - x0)).requires_grad_(True)
        (grad,) = torch.autograd.grad(net(x[None])[0, logit], x)
        out.append(float((grad * (x1 - x0)).sum()))
    return np.array(out)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_gradient_curve_is_the_directional_derivative_on_a_conv_net():
    torch.manual_seed(0)
    model = cifar_resnet(8, num_classes=10, in_channels=1)
    calibrate_batchnorm(model, torch.randn(64, 1, 8, 8))
    model.train()
    before = _state(model)
    x0, x1 = torch.randn(1, 8, 8), torch.randn(1, 8, 8)
    g = gradient_curve(model, x0, x1, points=16, logit=3).numpy()
    np.testing.assert_allclose(g, _input_gradient_curve(model, x0, x1, 16, 3), rtol=1e-10, atol=1e-12)
    # eval mode makes every point independent: any chunking of the grid gives the same curve
    np.testing.assert_allclose(gradient_curve(model, x0, x1, points=16, logit=3, chunk=5).numpy(), g, rtol=1e-12)
    # probes never change the model: same weights, same statistics, still in train mode
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_gradient_curve_equals_a_jvp_and_a_central_finite_difference():
    torch.manual_seed(1)
    model = mlp_resnet(3, 4, depth=3, width=16, activation="tanh", norm="batch").to(torch.float64)
    calibrate_batchnorm(model, torch.randn(256, 3, dtype=torch.float64))
    x0, x1 = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    points, logit = 11, 2
    g = gradient_curve(model, x0, x1, points=points, logit=logit).numpy()
    np.testing.assert_allclose(g, _jvp_curve(model, x0, x1, points, logit), rtol=1e-10, atol=1e-12)
    net = _eval64(model)
    h = 1e-6  # tanh is smooth: truncation ~h², rounding ~1e-16/h, both far below the tolerance

    @torch.no_grad()
    def f(s: float) -> float:
        return float(net((x0 + s * (x1 - x0))[None])[0, logit])

    fd = np.array([(f(s + h) - f(s - h)) / (2 * h) for s in line_grid(points).tolist()])
    np.testing.assert_allclose(g, fd, rtol=1e-7, atol=1e-9)


def test_an_adaptive_solver_is_evaluated_point_by_point():
    # dopri5 chooses its steps for a whole batch, which couples its points: the summed
    # logits of a batch then do not give each point's own derivative; the curve does.
    torch.manual_seed(2)
    model = mlp_resnet(2, 3, depth=2, width=8, solver="dopri5", activation="tanh")
    x0, x1 = torch.tensor([-1.0, 0.5]), torch.tensor([2.0, -1.0])
    g = gradient_curve(model, x0, x1, points=6, logit=1).numpy()
    alone = _input_gradient_curve(model, x0, x1, 6, 1)
    np.testing.assert_allclose(g, alone, rtol=1e-12, atol=1e-14)
    s = line_grid(6).requires_grad_(True)
    x = x0.double() + s[:, None] * (x1 - x0).double()
    (batched,) = torch.autograd.grad(_eval64(model)(x)[:, 1].sum(), s)
    assert np.abs(batched.numpy() - alone).max() > 1e-10


def test_shattering_labels_its_measurements():
    torch.manual_seed(3)
    model = mlp_resnet(1, 2, depth=2, width=8)
    x0, x1 = torch.tensor([[-2.0], [0.0]]), torch.tensor([[2.0], [1.0]])
    ds = shattering(model, x0, x1, torch.tensor([0, 1]), points=32, max_lag=4)
    assert ds.grad_curve.dims == ("line", "s") and ds.grad_acf.sizes == {"line": 2, "lag": 5}
    np.testing.assert_array_equal(ds["s"].values, line_grid(32).numpy())
    np.testing.assert_allclose(ds["s"].values, np.linspace(0, 1, 32), rtol=1e-15, atol=1e-16)
    np.testing.assert_allclose(ds.grad_curve[1], gradient_curve(model, x0[1], x1[1], 32, 1), rtol=1e-12)
    np.testing.assert_array_equal(ds.grad_lag1, ds.grad_acf.sel(lag=1))
    assert all(ds[v].attrs["long_name"] and "units" in ds[v].attrs for v in ds.data_vars)


# -- Balduzzi et al.'s result -----------------------------------------------------------------
DEPTHS = (2, 6, 24)
SEEDS = (0, 1, 2)


def _lag1_at_init(depth: int, residual: bool, seed: int) -> tuple[float, float]:
    """Balduzzi et al.'s setting: scalar input and output, 256 points on [−2, 2], batch norm
    calibrated on standard normal inputs; odenet's MLP ResNet (or its plain twin)."""
    torch.manual_seed(seed)
    model = mlp_resnet(1, 1, depth=depth, width=32, residual=residual, norm="batch")
    calibrate_batchnorm(model, torch.randn(1024, 1, generator=torch.Generator().manual_seed(seed)))
    g = gradient_curve(model, torch.tensor([-2.0]), torch.tensor([2.0]), points=N).numpy()
    return float(lag1(g)), float(spectral_slope(g))


def test_plain_gradients_shatter_with_depth_and_residual_ones_do_not():
    plain = np.array([[_lag1_at_init(d, False, s) for d in DEPTHS] for s in SEEDS])  # (seed, depth, stat)
    residual = np.array([[_lag1_at_init(d, True, s) for d in DEPTHS] for s in SEEDS])
    # for every seed, the plain net's lag-1 correlation falls with depth …
    assert np.all(np.diff(plain[:, :, 0], axis=1) < 0), plain[:, :, 0]
    # … and at the deepest depth it is below the residual net's, by far
    assert np.all(plain[:, -1, 0] < residual[:, -1, 0] - 0.5), (plain[:, -1, 0], residual[:, -1, 0])
    # the deep plain net is near white noise (r_1 ≈ 0, slope ≈ 0), the residual one near brown (1, −2)
    assert abs(plain[:, -1, 0].mean()) < 0.25 and abs(plain[:, -1, 1].mean()) < 0.5
    assert residual[:, -1, 0].mean() > 0.7 and residual[:, -1, 1].mean() < -1.2


# -- the study kind ---------------------------------------------------------------------------
def _tiny() -> ShatteredStudy:
    return ShatteredStudy(
        dataset="digits",
        model=ModelConfig(depth=8),
        train=TrainConfig(epochs=1, batch_size=256),
        depths=(8,),
        lines=2,
        points=32,
        max_lag=6,
    )


def test_a_tiny_shattered_study_runs_stores_and_plots(tmp_path):
    study = _tiny()
    assert KINDS["shattered"] is ShatteredStudy and len(study.cells()) == 2
    ds = run_study(study, tmp_path / "shattered.nc", progress=False).dataset
    assert ds is not None and ds.attrs["study"] == "shattered" and int(ds.done.sum()) == 2
    assert ds.grad_curve.dims == ("solver", "depth", "arch", "seed", "when", "line", "s")
    assert ds.grad_acf.sizes["lag"] == 7 and list(ds.when.values) == ["init", "final"]
    assert ds.s.attrs["long_name"].startswith("position along the line")
    assert ds.grad_lag1.attrs == {"long_name": "lag-1 autocorrelation of the gradient curve", "units": "1"}
    np.testing.assert_allclose(ds.grad_acf.sel(lag=0), 1.0)
    np.testing.assert_array_equal(ds.grad_lag1, ds.grad_acf.sel(lag=1))

    # The stored init curves are the library's, on the cell's network with calibrated batch norm.
    data = load_dataset("digits", seed=0)
    x0, x1, logits = line_ends(data, 2)
    np.testing.assert_array_equal(ds.line_logit.sel(arch="plain", seed=0).squeeze(), logits.numpy())
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=8, residual=False), data)
    calibrate_batchnorm(model, data.x_train[:CALIBRATION_SAMPLES])
    expected = shattering(model, x0, x1, logits, points=32, max_lag=6)
    stored = ds.sel(arch="plain", seed=0, when="init").squeeze()
    np.testing.assert_allclose(stored.grad_curve, expected.grad_curve, rtol=1e-9)
    np.testing.assert_allclose(stored.grad_spectral_slope, expected.grad_spectral_slope, rtol=1e-9)
    # training changed the network, so its curves
    assert not np.allclose(ds.grad_curve.sel(when="final"), ds.grad_curve.sel(when="init"))

    written = plot_study(xr.open_dataset(tmp_path / "shattered.nc"), tmp_path / "figures")
    names = {p.stem for p in written}
    assert names == {"shattered-curves", "shattered-acf", "shattered-lag1", "shattered-slope"}
    assert all(p.stat().st_size > 0 for p in written)


def test_the_kind_refuses_what_it_cannot_measure():
    with pytest.raises(ConfigError, match="dopri5 is adaptive"):
        replace(_tiny(), solvers=("dopri5",))
    with pytest.raises(ConfigError, match="max_lag=32 must be below points=32"):
        replace(_tiny(), max_lag=32)
    with pytest.raises(ConfigError, match="archs: 'skip' is not residual or plain"):
        replace(_tiny(), archs=("skip",))
    with pytest.raises(ConfigError, match="lines=900 needs 2 training examples per line"):
        line_ends(load_dataset("digits", seed=0), 900)


def test_the_canonical_spec_and_the_command_line():
    spec = load_study(ROOT / "studies" / "shattered-gradients.toml").study
    assert isinstance(spec, ShatteredStudy) and spec.dataset == "digits"
    assert (spec.depths, spec.archs, spec.seeds) == ((8, 14, 20, 32), ("residual", "plain"), (0, 1, 2))
    assert (spec.lines, spec.points, spec.max_lag, spec.train.epochs) == (8, 256, 32, 5)
    runner = CliRunner()
    assert "shattered" in runner.invoke(main, ["study", "--help"]).output
    bad = runner.invoke(main, ["study", "shattered", "--points", "16", "--max-lag", "16", "--out", "x.nc"])
    assert bad.exit_code == 2 and "Error: --max-lag 16 must be below --points 16" in bad.output, bad.output
