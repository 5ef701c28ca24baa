"""The statistics the studies report: order from local slopes above the reference's floor,
each model's learning rate chosen without test data."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from odenet.studies.kinds.compare import chosen_lr
from odenet.studies.kinds.convergence import fit_order, local_slopes


def test_local_slopes_recover_a_known_order_and_stop_at_the_floor():
    m = np.array([3.0, 6, 12, 24, 48, 96])
    error = 2.0 * m**-4.0
    slopes = local_slopes(m, error)
    assert np.isnan(slopes[0]) and np.allclose(slopes[1:], 4.0)
    # Below the floor (the reference's resolution) the points say nothing about the method.
    floored = np.maximum(error, 1e-9)
    slopes = local_slopes(m, floored, floor=1e-6)
    assert np.allclose(slopes[1:4], 4.0) and np.isnan(slopes[4:]).all()
    assert fit_order(m, floored, floor=1e-6) == pytest.approx(4.0)


def test_order_is_the_median_local_slope_robust_to_a_pre_asymptotic_point():
    m = np.array([1.0, 2, 4, 8, 16, 32])
    error = m**-2.0
    error[0] = 5.0  # far from the asymptotic regime
    assert fit_order(m, error) == pytest.approx(2.0)
    assert np.isnan(fit_order(m, np.full(6, np.nan)))
    assert fit_order(m, error, use=m >= 2) == pytest.approx(2.0)


def _compare(train_loss: np.ndarray, diverged: np.ndarray) -> xr.Dataset:
    """train_loss: (model, learning_rate, seed, epoch)."""
    dims = ("model", "learning_rate", "seed")
    return xr.Dataset(
        {"train_loss": ((*dims, "epoch"), train_loss), "diverged": (dims, diverged)},
        coords={"model": ["a", "b"], "learning_rate": [0.03, 0.1], "seed": [0, 1, 2], "epoch": [1, 2]},
    )


def test_each_model_gets_the_rate_with_the_lowest_mean_final_training_loss():
    loss = np.ones((2, 2, 3, 2))
    loss[0, 0, :, -1] = [0.2, 0.3, 0.1]  # model a: 0.03 is better on average
    loss[0, 1, :, -1] = [0.05, 0.9, 0.9]  # (one lucky seed does not win)
    loss[1, 0, :, -1] = 0.5
    loss[1, 1, :, -1] = 0.4  # model b: 0.1
    lr = chosen_lr(_compare(loss, np.zeros((2, 2, 3), dtype=int)))
    assert lr.sel(model="a").item() == 0.03 and lr.sel(model="b").item() == 0.1


def test_a_rate_that_diverged_in_any_seed_is_not_chosen():
    loss = np.ones((2, 2, 3, 2))
    loss[:, 1, :, -1] = 0.1  # the larger rate has the lower loss …
    diverged = np.zeros((2, 2, 3), dtype=int)
    diverged[1, 1, 2] = 1  # … but diverged once for model b
    loss[1, 1, 2, -1] = np.nan
    lr = chosen_lr(_compare(loss, diverged))
    assert lr.sel(model="a").item() == 0.1 and lr.sel(model="b").item() == 0.03
