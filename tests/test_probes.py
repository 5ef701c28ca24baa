"""Probes against known answers: a linear field's spectrum and the textbook stability boundary,
gradients against plain autograd, the stepwise walk against the block's own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from odenet import ODEBlock, StepwiseField, get_method
from odenet.models import cifar_resnet
from odenet.models.common import ResidualNetwork, units
from odenet.probes import (
    calibrate_batchnorm,
    gradient_norms,
    leading_eigenvalues,
    probe_blocks,
    stability_factor,
)
from odenet.studies import fit_order


class Linear(nn.Module):
    """F(t, x) = A x for x: (batch, d)."""

    def __init__(self, a: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("a", torch.as_tensor(a, dtype=torch.float64))

    def forward(self, t, x):
        return x @ self.a.T.to(x.dtype)


def linear_net(a: np.ndarray, solver: str, h: float, steps: int) -> ResidualNetwork:
    block = ODEBlock(Linear(a), solver=solver, steps=steps, step_size=h)
    return ResidualNetwork(nn.Identity(), nn.Sequential(block), nn.Identity())


def real_form(eigenvalues: list[complex]) -> np.ndarray:
    """A real matrix with the given eigenvalues (complex ones as conjugate 2×2 blocks), rotated."""
    blocks = []
    for lam in eigenvalues:
        if lam.imag == 0:
            blocks.append(np.array([[lam.real]]))
        else:
            blocks.append(np.array([[lam.real, lam.imag], [-lam.imag, lam.real]]))
    d = sum(len(b) for b in blocks)
    a = np.zeros((d, d))
    i = 0
    for b in blocks:
        a[i : i + len(b), i : i + len(b)] = b
        i += len(b)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((d, d)))
    return q @ a @ q.T


def test_leading_eigenvalues_of_a_linear_field_dense_and_arnoldi():
    lam = [-4.0, -1.0 + 2.0j, -0.5]
    a = real_form(lam)
    got = leading_eigenvalues(Linear(a), 0.0, torch.randn(1, a.shape[0], dtype=torch.float64), k=3)
    expected = sorted([-4.0, -1 + 2j, -1 - 2j, -0.5], key=lambda z: -abs(z))[:3]
    assert np.allclose(sorted(got, key=lambda z: (-abs(z), z.imag)), sorted(expected, key=lambda z: (-abs(z), z.imag)))
    # Above the dense limit: ARPACK on Jacobian-vector products finds the two outliers.
    d = 400
    diag = np.concatenate([[-5.0, 3.0], -np.linspace(0.1, 1.0, d - 2)])
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((d, d)))
    got = leading_eigenvalues(
        Linear(q @ np.diag(diag) @ q.T), 0.0, torch.randn(1, d, dtype=torch.float64), k=2, tol=1e-8
    )
    assert np.allclose(got, [-5.0, 3.0], atol=1e-6)


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
def test_stability_boundary_on_the_linear_test_equation(solver):
    """Stable (perturbations decay over many steps) exactly while max |R(hλ)| ≤ 1.

    For euler with λ = −4 the boundary is |1 + hλ| = 1, h = 0.5; midpoint has the same
    real-axis boundary (R = 1 + z + z²/2); rk4 reaches z ≈ −2.785.
    """
    lam = [-4.0, -1.0]
    a = real_form(lam)
    boundary = {"euler": 2.0, "midpoint": 2.0, "rk4": 2.785293563405282}[solver] / 4.0
    method = get_method(solver)
    for h in boundary * np.array([0.5, 0.9, 0.99, 1.01, 1.1, 1.5]):
        steps = 60
        probe = probe_blocks(linear_net(a, solver, float(h), steps), torch.randn(1, 2), k=2)
        # The probe's eigenvalues and |R(hλ)| match the known spectrum in every block.
        modulus = probe.eig_real.sel(select="modulus").values
        assert np.allclose(np.sort(modulus, axis=1), [[-4.0, -1.0]] * steps)
        expected = max(abs(method.tableau.stability_function(np.array([h * x]))[0]) for x in lam)
        assert np.allclose(probe.max_abs_R.values, expected)
        # The per-step amplification of a perturbation never exceeds max|R|, and after
        # 60 steps a perturbation has grown exactly when the step leaves the region.
        assert np.all(probe.amplification.values <= expected + 1e-9)
        assert (expected > 1) == (h > boundary)
        if abs(h / boundary - 1) > 0.05:  # near the boundary, 1.02^60 can lose to a small random start
            assert (probe.perturbation_growth[-1] > 1) == (h > boundary)


def test_stability_factor_ignores_missing_eigenvalues():
    euler = get_method("euler")
    assert stability_factor(euler, 0.5, np.array([-4.0 + 0j, np.nan + 0j])) == pytest.approx(1.0)
    assert np.isnan(stability_factor(euler, 0.5, np.array([np.nan + 0j])))


def test_stepwise_walk_reproduces_the_network():
    torch.manual_seed(0)
    net = cifar_resnet(14, solver="rk4", in_channels=1, width=4, step_size=0.7).double().eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    z = net.stem(x)
    i = 0
    blocks = units(net)
    for module in net.body:
        count = module.steps if isinstance(module, ODEBlock) else 1
        for _ in range(count):
            z = blocks[i](z)
            i += 1
    assert i == len(blocks) == 6
    assert torch.equal(net.head(z), net(x))


def test_gradient_norms_match_autograd():
    torch.manual_seed(0)
    net = cifar_resnet(14, in_channels=1, width=4)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    norms = gradient_norms(net, x, y)
    theta, state = norms.block_grad_norm.values, norms.state_grad_norm.values
    assert theta.shape == state.shape == (6,) and np.all(np.isfinite(state))
    ref = net.double().train()
    nn.functional.cross_entropy(ref(x.double()), y).backward()
    owners = [ref.body[0].field.fields[0], ref.body[0].field.fields[1], ref.body[1], ref.body[2].field.fields[0]]
    for k, owner in zip([0, 1, 2, 3], owners, strict=True):
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in owner.parameters()))
        assert theta[k] == pytest.approx(float(norm), rel=1e-10)


def test_shared_weights_have_no_per_block_weight_gradient():
    net = cifar_resnet(14, in_channels=1, width=4, weights="shared")
    norms = gradient_norms(net, torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    theta, state = norms.block_grad_norm.values, norms.state_grad_norm.values
    steps = [i for i, u in enumerate(units(net)) if u.kind == "step"]
    assert np.all(np.isnan(theta[steps])) and np.all(np.isfinite(state))


def test_calibrated_batchnorm_holds_the_exact_statistics():
    bn = nn.BatchNorm1d(3)
    x = torch.randn(1000, 3) * 2 + 5
    calibrate_batchnorm(nn.Sequential(bn), x, batch_size=1000)
    assert torch.allclose(bn.running_mean, x.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, x.var(0), atol=1e-4)
    assert bn.momentum == 0.1


def test_adaptive_solve_of_per_step_weights_integrates_each_piece():
    """Piecewise-constant weights: dopri5 at tight tolerance gives Π expm(A_k h) x exactly."""
    mats = [real_form([-1.0, 0.5 + 1j]), real_form([-2.0, -0.3 + 0.2j]), real_form([0.4, -1 + 0.5j])]
    fields = iter(mats)
    field = StepwiseField(lambda: Linear(next(fields)), steps=3, horizon=1.5)
    block = ODEBlock(field, solver="dopri5", steps=3, step_size=0.5, rtol=1e-11, atol=1e-11)
    x = torch.randn(2, 3, dtype=torch.float64)
    expected = x.numpy().T
    for a in mats:
        w, v = np.linalg.eig(a * 0.5)
        expected = (v @ np.diag(np.exp(w)) @ np.linalg.inv(v)).real @ expected
    assert np.allclose(block(x).numpy(), expected.T, atol=1e-9)


def test_fit_order_recovers_the_slope_and_skips_the_floor():
    steps = np.array([2.0, 4, 8, 16, 32])
    error = 3.0 * steps**-4.0
    assert fit_order(steps, error) == pytest.approx(4.0)
    floored = np.maximum(error, 1e-6)  # the last points sit on the reference's error
    assert fit_order(steps, floored, floor=2e-6) == pytest.approx(4.0)
    assert np.isnan(fit_order(steps, np.full(5, np.nan)))


def _spectrum(rng: np.random.Generator, pairs: int, reals: int) -> list[complex]:
    """A mixed spectrum: eigenvalues on both sides of the imaginary axis, some complex."""
    lam: list[complex] = [
        complex(x, y) for x, y in zip(rng.uniform(-3, 1, pairs), rng.uniform(0.1, 2, pairs), strict=True)
    ]
    return lam + [complex(x) for x in rng.uniform(-4, 1.2, reals)]


def _all_eigenvalues(lam: list[complex]) -> np.ndarray:
    return np.array([z for x in lam for z in ((x, x.conjugate()) if x.imag else (x,))])


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("pairs, reals", [(4, 4), (120, 60)])  # 12 unknowns: dense; 300: ARPACK
def test_step_radius_is_max_abs_r_over_the_whole_spectrum(solver, pairs, reals):
    """For F(x) = Ax the step map is x ↦ R(hA)x: its spectral radius is max |R(hλ)| over
    *every* eigenvalue, where the field-eigenvalue sets see only their 2·k extreme ones."""
    lam = _spectrum(np.random.default_rng(pairs), pairs, reals)
    a = real_form(lam)
    h = 0.7
    method = get_method(solver)
    exact = float(np.abs(method.tableau.stability_function(h * _all_eigenvalues(lam))).max())
    probe = probe_blocks(linear_net(a, solver, h, 1), torch.randn(1, a.shape[0]), k=2, tol=1e-10)
    assert float(probe.step_radius[0]) == pytest.approx(exact, rel=1e-7)
    assert float(probe.step_radius_residual[0]) < 1e-6
    # The eigenvalue-based factor is a lower bound on it, never more.
    assert float(probe.max_abs_R[0]) <= exact * (1 + 1e-9)


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
def test_growth_of_the_ode_itself_is_not_charged_to_the_solver(solver):
    """Re λ > 0: |R(hλ)| > 1 for every consistent method, because the exact flow e^{hλ}
    grows too. The discretisation measures (excess_growth, step_excess) stay ≤ 1."""
    lam = [0.3, 0.8, 1.5, -0.5, -1.0]
    a = real_form(lam)
    h = 0.5
    probe = probe_blocks(linear_net(a, solver, h, 3), torch.randn(1, a.shape[0]), k=2)
    assert np.all(probe.max_abs_R.values > 1)
    assert np.allclose(probe.max_abs_flow.values, np.exp(h * 1.5))
    assert np.allclose(probe.flow_radius.values, np.exp(h * 1.5))
    assert np.all(probe.excess_growth.values <= 1)
    assert np.all(probe.step_excess.values <= 1)
    # The largest-real-part selection finds the expanding direction first.
    assert np.allclose(probe.eig_real.sel(select="real_part", eig=0).values, 1.5)
    assert np.all(probe.eig_converged.values == 2)
    assert np.all(probe.eig_residual.values < 1e-10)


def test_excess_growth_flags_what_the_solver_adds():
    """λ = 0.05 ± 2i, h = 0.5: the flow grows by e^{0.025} per step. Euler's |1 + hλ| = 1.43
    adds growth the ODE does not have; rk4's |R| ≈ 0.99 does not."""
    a = real_form([0.05 + 2j, -1.0])
    x = torch.randn(1, 3)
    euler = probe_blocks(linear_net(a, "euler", 0.5, 2), x, k=2)
    rk4 = probe_blocks(linear_net(a, "rk4", 0.5, 2), x, k=2)
    assert np.all(euler.excess_growth.values > 1.3) and np.all(euler.step_excess.values > 1.3)
    assert np.all(rk4.excess_growth.values <= 1) and np.all(rk4.step_excess.values <= 1)


def test_arpack_residuals_and_convergence_are_recorded():
    """On the ARPACK path (n > DENSE_LIMIT) each selection says how many converged and
    how well: residuals of converged pairs below the requested tolerance's order."""
    lam = _spectrum(np.random.default_rng(3), 100, 100)
    a = real_form(lam)
    everything = _all_eigenvalues(lam)
    probe = probe_blocks(linear_net(a, "rk4", 0.5, 1), torch.randn(1, a.shape[0]), k=3, tol=1e-8)
    modulus = probe.eig_real.sel(select="modulus")[0] + 1j * probe.eig_imag.sel(select="modulus")[0]
    real_part = probe.eig_real.sel(select="real_part")[0]
    assert np.allclose(np.sort(np.abs(modulus.values)), np.sort(np.abs(everything))[-3:], rtol=1e-6)
    assert np.allclose(np.sort(real_part.values), np.sort(everything.real)[-3:], rtol=1e-6)
    assert np.all(probe.eig_converged.values == 3)
    assert np.all(probe.eig_residual.values < 1e-6)
