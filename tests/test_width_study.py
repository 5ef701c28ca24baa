"""The width study: depth × width × learning rate, and the regression it stores."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from odenet.errors import ConfigError
from odenet.experiment import ModelConfig
from odenet.plots import study_figures
from odenet.studies import run_study
from odenet.studies.kinds.width import TERMS, WidthStudy, width_fit
from odenet.train import TrainConfig
from odenet_cli.main import main

DEPTHS, WIDENS, LRS, SEEDS = [8, 14, 20, 32], [1, 2, 4], [0.01, 0.1, 1.0], [0, 1, 2]
TRUE = {
    "intercept": 90.0, "log2_depth": 1.5, "log2_widen": 2.0, "log2_lr": -0.5,
    "log2_depth:log2_widen": 0.25, "log2_depth:log2_lr": -0.3, "log2_widen:log2_lr": 0.1,
}  # fmt: skip


def _synthetic(noise: float = 0.0, seed: int = 0) -> xr.Dataset:
    """A width result whose accuracy follows ``TRUE`` exactly (plus Gaussian noise)."""
    shape = (len(DEPTHS), len(WIDENS), len(LRS), len(SEEDS))
    D, K, E, _ = np.meshgrid(np.log2(DEPTHS), np.log2(WIDENS), np.log2(LRS), SEEDS, indexing="ij")
    D, K, E = D - np.log2(DEPTHS).mean(), K - np.log2(WIDENS).mean(), E - np.log2(LRS).mean()
    acc = (
        TRUE["intercept"] + TRUE["log2_depth"] * D + TRUE["log2_widen"] * K + TRUE["log2_lr"] * E
        + TRUE["log2_depth:log2_widen"] * D * K + TRUE["log2_depth:log2_lr"] * D * E
        + TRUE["log2_widen:log2_lr"] * K * E
    )  # fmt: skip
    acc = acc + noise * np.random.default_rng(seed).standard_normal(shape)
    loss = np.exp(-D - K)[..., None] * np.ones(2)
    dims = ("depth", "widen", "learning_rate", "seed")
    return xr.Dataset(
        {
            "final_test_accuracy": (dims, acc / 100),
            "train_loss": ((*dims, "epoch"), loss),
            "done": (dims, np.ones(shape, dtype="int8")),
            "diverged": (dims, np.zeros(shape, dtype="int64")),
        },
        coords={"depth": DEPTHS, "widen": WIDENS, "learning_rate": LRS, "seed": SEEDS, "epoch": [1, 2]},
    )


def test_the_fit_recovers_a_known_model_exactly_without_noise():
    fit = width_fit(_synthetic())
    coef = fit.fit_coef.sel(response="test_accuracy_pct")
    np.testing.assert_allclose([float(coef.sel(term=t)) for t in TERMS], [TRUE[t] for t in TERMS], atol=1e-9)
    assert float(fit.fit_r2.sel(response="test_accuracy_pct")) == pytest.approx(1.0)
    assert int(fit.fit_n.sel(response="test_accuracy_pct")) == 4 * 3 * 3 * 3
    # log10 loss = −(D + K)/ln 10: slopes −1/ln 10 on depth and width, nothing else.
    loss = fit.fit_coef.sel(response="log10_train_loss")
    np.testing.assert_allclose(float(loss.sel(term="log2_depth")), -1 / np.log(10), atol=1e-9)
    np.testing.assert_allclose(float(loss.sel(term="log2_lr")), 0.0, atol=1e-9)


def test_standard_errors_are_the_classical_ols_ones_and_cover_the_truth():
    noise = 0.8
    ds = _synthetic(noise, seed=3)
    fit = width_fit(ds)
    # The same regression written out independently: X from the grid, (XᵀX)⁻¹σ̂².
    rows = ds[["final_test_accuracy"]].to_dataframe().reset_index()
    D = np.log2(rows.depth) - np.log2(DEPTHS).mean()
    K = np.log2(rows.widen) - np.log2(WIDENS).mean()
    E = np.log2(rows.learning_rate) - np.log2(LRS).mean()
    X = np.column_stack([np.ones(len(rows)), D, K, E, D * K, D * E, K * E])
    y = 100 * rows.final_test_accuracy.to_numpy()
    beta = np.linalg.solve(X.T @ X, X.T @ y)
    sigma2 = np.sum((y - X @ beta) ** 2) / (len(y) - X.shape[1])
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(X.T @ X)))
    got = fit.sel(response="test_accuracy_pct")
    np.testing.assert_allclose(got.fit_coef.values, beta, rtol=1e-10)
    np.testing.assert_allclose(got.fit_se.values, se, rtol=1e-10)
    z = np.abs(got.fit_coef.values - np.array([TRUE[t] for t in TERMS])) / got.fit_se.values
    assert (z < 4).all()  # 7 coefficients, each within 4 SE of the truth (p ≈ 4e-4 of failing)


def test_diverged_and_unfinished_runs_are_left_out_of_the_fit():
    ds = _synthetic()
    ds["final_test_accuracy"][0, 0, 0, 0] = 0.10  # a diverged run's chance-level number
    ds["diverged"][0, 0, 0, 0] = 1
    ds["done"][1, 1, 1, 1] = 0
    fit = width_fit(ds).sel(response="test_accuracy_pct")
    assert int(fit.fit_n) == 4 * 3 * 3 * 3 - 2
    assert float(fit.fit_r2) == pytest.approx(1.0)  # the outlier did not enter


def test_a_variable_with_one_value_has_no_estimable_terms():
    fit = width_fit(_synthetic().isel(widen=[1])).sel(response="test_accuracy_pct")
    for term in TERMS:
        estimable = "widen" not in term
        assert np.isfinite(float(fit.fit_coef.sel(term=term))) == estimable, term


def test_the_study_refuses_bad_axes():
    with pytest.raises(ConfigError, match=r"cell .*widen=0 is not an integer ≥ 1"):  # ModelConfig's rule
        WidthStudy(dataset="spirals", widens=(0,), depths=(2,), model=ModelConfig(depth=2))
    with pytest.raises(ConfigError, match="lrs"):
        WidthStudy(dataset="spirals", lrs=(float("nan"),), depths=(2,), model=ModelConfig(depth=2))


def test_a_width_study_runs_stores_its_fit_resumes_and_plots(tmp_path):
    study = WidthStudy(
        dataset="spirals", model=ModelConfig(depth=2, width=4), train=TrainConfig(epochs=1, batch_size=512),
        depths=(2, 4), widens=(1, 2), lrs=(0.03, 0.3), seeds=(0, 1),
    )  # fmt: skip
    out = tmp_path / "width.nc"
    ds = run_study(study, out, progress=False).dataset
    assert ds is not None and ds.fit_coef.dims == ("response", "term")
    assert int(ds.fit_n.sel(response="test_accuracy_pct")) == 16
    assert ds.fit_coef.attrs["units"] == "1" and "model" in ds.fit_coef.attrs
    widths = ds.parameters.isel(depth=0, learning_rate=0, seed=0).values
    assert widths[1] > 3 * widths[0]  # k = 2 doubles the residual stream
    with xr.open_dataset(out, engine="h5netcdf") as back:
        np.testing.assert_array_equal(back.fit_coef.values, ds.fit_coef.values)
    again = run_study(study, out, resume=True, progress=False)  # from the finished file
    assert again.computed == 0
    assert again.dataset is not None
    np.testing.assert_array_equal(again.dataset.fit_coef.values, ds.fit_coef.values)
    assert set(study_figures(ds)) == {"width-accuracy", "width-fit"}


def test_the_width_command_exists_with_its_axes():
    result = CliRunner().invoke(main, ["study", "width", "--help"])
    assert result.exit_code == 0
    for flag in ("--depths", "--widens", "--lrs", "--seeds"):
        assert flag in result.output
