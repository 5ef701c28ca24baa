"""Empirical order of convergence of every tableau, run through ODEBlock's fixed-step loop.

The slope of log(error) against log(h) at the final time must be within ±0.15 of the
declared order (the asymptotic regime; the grids below sit in it for each problem).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from odenet import ODEBlock
from odenet.solvers import METHODS, method_names

from .conftest import BurdenFaires, Riccati

T = 2.0
ORDER_TOLERANCE = 0.15


def empirical_order(field, method, steps):
    x0 = torch.full((1,), field.x0, dtype=torch.float64)
    errors = []
    for n in steps:
        block = ODEBlock(field, method.tableau, steps=n, step_size=T / n)
        errors.append(abs(block(x0).item() - field.exact(T)))
    slope, _ = np.polyfit(np.log([T / n for n in steps]), np.log(errors), 1)
    return slope, errors


@pytest.mark.parametrize("name", method_names(adaptive=False))
@pytest.mark.parametrize("problem", [BurdenFaires, Riccati], ids=["linear-nonautonomous", "riccati"])
def test_fixed_step_methods_converge_at_their_order(name, problem):
    method = METHODS[name]
    # Riccati's error constants for rk38 change sign near h = 1/8: start finer.
    steps = [16, 32, 64, 128] if problem is BurdenFaires else [32, 64, 128, 256]
    slope, errors = empirical_order(problem(), method, steps)
    assert abs(slope - method.order) <= ORDER_TOLERANCE, (slope, errors)


@pytest.mark.parametrize("name", ["dopri5", "bosh3", "adaptive_heun", "fehlberg2", "tsit5"])
def test_adaptive_pairs_propagated_tableau_has_its_order_at_fixed_steps(name):
    # The registry reads these tableaus from torchdiffeq (tsit5 from Tsitouras 2011);
    # running them at fixed steps checks the coefficients, not the step control.
    method = METHODS[name]
    steps = [8, 16, 32, 64] if method.order >= 5 else [16, 32, 64, 128]
    slope, errors = empirical_order(BurdenFaires(), method, steps)
    assert abs(slope - method.order) <= ORDER_TOLERANCE, (slope, errors)
