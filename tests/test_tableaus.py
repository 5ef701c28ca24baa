"""ButcherTableau: validation, order conditions, stability functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from odenet import ButcherTableau, TableauError
from odenet.solvers import METHODS
from odenet.tableaus import FIXED_STEP_TABLEAUS, RK4, dense_output_weights, rooted_trees


def test_rooted_tree_counts_match_oeis_a000081():
    # Number of rooted trees with n nodes: 1, 1, 2, 4, 9, 20, 48, 115 (OEIS A000081).
    assert [len(rooted_trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


@pytest.mark.parametrize("method", list(METHODS.values()), ids=lambda m: m.name)
def test_every_registered_method_meets_exactly_its_declared_order(method):
    # The registry's order is checked against the rooted-tree conditions: it is met,
    # and (for all but the order-8 pair, whose next conditions we do not generate)
    # the next order is not met, so the declared order is the true one.
    tab = method.tableau
    assert tab.achieved_order(limit=tab.order) == tab.order
    if tab.order < 8:
        assert tab.achieved_order(limit=tab.order + 1) == tab.order


def test_tableau_is_frozen():
    with pytest.raises(AttributeError):
        RK4.order = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(c=[0, 1], a=[[0, 0]], b=[0.5, 0.5], order=2), "square"),
        (dict(c=[0, 1], a=[[0, 1], [1, 0]], b=[0.5, 0.5], order=2), "strictly lower triangular"),
        (dict(c=[0, 1], a=[[1, 0], [1, 0]], b=[0.5, 0.5], order=2), "strictly lower triangular"),
        (dict(c=[0, 0.5], a=[[0, 0], [1, 0]], b=[0.5, 0.5], order=2), "row sums of a"),
        (dict(c=[0, 1], a=[[0, 0], [1, 0]], b=[0.5, 0.6], order=1), "not 1"),
        (dict(c=[0, 1], a=[[0, 0], [1, 0]], b=[0.5, 0.5], order=3), "declare order=2"),
        (dict(c=[0], a=[[0]], b=[1], order=0), "positive integer"),
        (dict(c=[], a=[], b=[], order=1), "at least one stage"),
        (dict(c=[0], a=[[float("nan")]], b=[1], order=1), "finite"),
    ],
)
def test_invalid_tableaus_are_refused_with_a_message_naming_the_fix(kwargs, fragment):
    with pytest.raises(TableauError, match=fragment):
        ButcherTableau(**kwargs)


def test_user_tableau_with_correct_order_is_accepted():
    # Generic second-order family with parameter α = 3/4 (Ralston's is α = 2/3).
    alpha = 0.75
    tab = ButcherTableau(
        c=[0, alpha], a=[[0, 0], [alpha, 0]], b=[1 - 1 / (2 * alpha), 1 / (2 * alpha)], order=2, name="mine"
    )
    assert tab.stages == 2 and tab.achieved_order() == 2


@pytest.mark.parametrize("tab", FIXED_STEP_TABLEAUS, ids=lambda t: t.name)
def test_stability_function_is_the_taylor_polynomial_for_s_stage_order_s(tab):
    # For explicit methods with s = p ≤ 4, R(z) = Σ_{k≤p} z^k / k! exactly.
    assert tab.stages == tab.order
    z = np.array([-2.5, -1.0 + 1.0j, 0.3j, 0.7, -0.1 - 2.0j])
    taylor = sum(z**k / math.factorial(k) for k in range(tab.order + 1))
    np.testing.assert_allclose(tab.stability_function(z), taylor, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("method", list(METHODS.values()), ids=lambda m: m.name)
def test_stability_polynomial_equals_the_resolvent_formula(method):
    # R(z) = 1 + z bᵀ (I − zA)⁻¹ 1, computed by a dense solve, agrees with the polynomial.
    _c, a, b = method.tableau.arrays()
    s = len(b)
    rng = np.random.default_rng(1)
    for z in rng.normal(size=6) * 1.5 + 1j * rng.normal(size=6) * 1.5:
        direct = 1 + z * b @ np.linalg.solve(np.eye(s) - z * a, np.ones(s))
        assert method.tableau.stability_function(z) == pytest.approx(direct, rel=1e-12, abs=1e-12)


def test_stability_boundaries_on_the_real_axis():
    # Textbook intervals of absolute stability on the negative real axis:
    # Euler [-2, 0], RK2 family [-2, 0], RK3 ≈ [-2.5127, 0], RK4 ≈ [-2.7853, 0]
    # (Hairer & Wanner, Solving ODEs II, Fig. IV.2.1).
    expected = {"euler": 2.0, "midpoint": 2.0, "heun": 2.0, "ralston": 2.0, "rk3": 2.5127, "rk4": 2.7853}
    x = np.linspace(-3.5, 0, 350001)
    for name, boundary in expected.items():
        stable = np.abs(METHODS[name].tableau.stability_function(x)) <= 1 + 1e-12
        leftmost = x[np.argmax(stable)]
        assert leftmost == pytest.approx(-boundary, abs=2e-4), name


def test_dense_output_reproduces_b_at_theta_one():
    # At θ = 1 the continuous order conditions are the ordinary ones: b(1) satisfies them
    # (with rk4's four stages the solution is unique and equals b).
    np.testing.assert_allclose(dense_output_weights(RK4, 1.0, order=4), RK4.b, atol=1e-12)
