"""ODEBlock: the fixed-step loop, the plain twin, adaptive solving, NFE and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq
from torch import nn

import odenet
import odenet.errors
from odenet import ODEBlock, SolverError, StepwiseField
from odenet.solvers import METHODS, method_names

from .conftest import BurdenFaires, LinearField, rotation_scaling

FIXED = method_names(adaptive=False)
ADAPTIVE = method_names(adaptive=True)


# -------------------------------------------------------------- linear test equation
@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("lam", [-1.5 + 0j, -0.4 + 1.1j, 0.3 + 2.0j])
@pytest.mark.parametrize(("steps", "h"), [(1, 0.5), (7, 0.3), (20, 0.1)])
def test_block_returns_stability_function_power_on_linear_test_equation(name, lam, steps, h):
    # x' = λx has x_n = R(hλ)ⁿ x₀ under any RK method; complex λ acts on (Re, Im) pairs.
    block = ODEBlock(LinearField(rotation_scaling(lam)), name, steps=steps, step_size=h)
    z0 = complex(0.8, -0.6)
    x0 = torch.tensor([[z0.real, z0.imag]], dtype=torch.float64)
    out = block(x0)[0]
    expected = METHODS[name].tableau.stability_function(h * lam) ** steps * z0
    assert complex(out[0].item(), out[1].item()) == pytest.approx(expected, rel=1e-12, abs=1e-14)


# ---------------------------------------------------------- discrete ResNet = Euler
def _mlp() -> nn.Module:
    return odenet.MLPField(5, 7, activation="tanh")


@pytest.mark.parametrize("h", [1.0, 0.25])
def test_euler_block_with_per_step_weights_is_the_hand_written_resnet_loop(h):
    field = StepwiseField(_mlp, steps=4, horizon=4 * h)
    block = ODEBlock(field, "euler", steps=4, step_size=h)
    x = torch.randn(3, 5)
    expected = x
    for k, f_k in enumerate(field.fields):
        expected = expected + h * f_k(k * h, expected)
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


def test_every_stage_of_step_k_uses_step_k_weights():
    # RK4 on the native grid: all four stages of step k (including the c = 1 stage that
    # lands on the next step's start) must call field k, and no other.
    calls: list[tuple[int, float]] = []

    class Tagged(nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.k = k

        def forward(self, t, x):
            calls.append((self.k, t))
            return -x

    made = iter(range(100))
    field = StepwiseField(lambda: Tagged(next(made)), steps=3, horizon=1.5)
    ODEBlock(field, "rk4", steps=3, step_size=0.5)(torch.ones(1, 2))
    assert [k for k, _ in calls] == [0] * 4 + [1] * 4 + [2] * 4
    assert [t for _, t in calls[:4]] == [0.0, 0.25, 0.25, 0.5]


def test_per_step_weights_match_hand_written_rk_step():
    field = StepwiseField(_mlp, steps=2, horizon=1.0)
    block = ODEBlock(field, "midpoint", steps=2, step_size=0.5)
    x = torch.randn(4, 5)
    expected = x
    for k, f in enumerate(field.fields):
        t, h = 0.5 * k, 0.5
        k1 = f(t, expected)
        expected = expected + h * f(t + h / 2, expected + h / 2 * k1)
    torch.testing.assert_close(block(x), expected)


def test_plain_twin_drops_the_identity():
    field = StepwiseField(_mlp, steps=3, horizon=3.0)
    plain = ODEBlock(field, "euler", steps=3, residual=False)
    x = torch.randn(2, 5)
    expected = x
    for k, f in enumerate(field.fields):
        expected = f(float(k), expected)
    torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)


def test_projected_euler_step_is_the_post_activation_block():
    field = StepwiseField(_mlp, steps=2, horizon=2.0)
    block = ODEBlock(field, "euler", steps=2, projection=nn.ReLU())
    x = torch.randn(2, 5)
    expected = x
    for k, f in enumerate(field.fields):
        expected = torch.relu(expected + f(float(k), expected))
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


def test_with_solver_shares_weights_and_converges_to_the_same_flow():
    # A trained block evaluated with another solver or step count: no weights copied, and
    # refining an autonomous field's solution converges (rk4 at 4·n steps vs dopri5).
    torch.manual_seed(3)
    field = odenet.MLPField(4, 8, activation="tanh").double()
    block = ODEBlock(field, "euler", steps=8, step_size=0.125)
    fine = block.with_solver("rk4", steps=32)
    assert fine.field is block.field and fine.horizon == block.horizon and fine.step_size == 1 / 32
    assert {id(p) for p in fine.parameters()} == {id(p) for p in block.parameters()}
    ref = block.with_solver("dopri5", rtol=1e-10, atol=1e-12)
    x = torch.randn(3, 4, dtype=torch.float64)
    err_euler = (block(x) - ref(x)).abs().max().item()
    err_rk4 = (fine(x) - ref(x)).abs().max().item()
    assert err_rk4 < 1e-6 < err_euler


def test_stepwise_field_refined_grid_uses_the_owning_step():
    field = StepwiseField(_mlp, steps=2, horizon=2.0)
    # Four half-steps: sub-steps 0, 1 lie in step 0; sub-steps 2, 3 in step 1.
    assert [field.index(t + 0.25) for t in (0.0, 0.5, 1.0, 1.5)] == [0, 0, 1, 1]


def test_interpolated_weights_are_linear_between_step_midpoints():
    field = StepwiseField(_mlp, steps=3, horizon=3.0, interpolation="linear")
    x = torch.randn(2, 5)
    # At midpoints, exactly field k.
    for k in range(3):
        torch.testing.assert_close(field(k + 0.5, x), field.fields[k](k + 0.5, x), rtol=0, atol=0)
    # Halfway between midpoints 0.5 and 1.5: the averaged weights.
    mixed = _mlp()
    with torch.no_grad():
        for p, a, b in zip(mixed.parameters(), field.fields[0].parameters(), field.fields[1].parameters(), strict=True):
            p.copy_((a + b) / 2)
    torch.testing.assert_close(field(1.0, x), mixed(1.0, x))


# -------------------------------------------------------------------- dtypes, agreement
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["euler", "rk4", "dopri5"])
def test_blocks_keep_dtype(dtype, name):
    field = odenet.MLPField(3, activation="tanh").to(dtype)
    out = ODEBlock(field, name, steps=2, step_size=0.5)(torch.randn(2, 3, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize(("ours", "theirs"), [("euler", "euler"), ("midpoint", "midpoint"), ("rk38", "rk4")])
def test_fixed_step_loop_matches_torchdiffeq_fixed_grid(ours, theirs):
    # torchdiffeq's fixed-step "rk4" is Kutta's 3/8 rule, odenet's rk38.
    field = odenet.MLPField(4, 6, activation="tanh").double()
    x = torch.randn(5, 4, dtype=torch.float64)
    block = ODEBlock(field, ours, steps=10, step_size=0.1)
    ref = torchdiffeq.odeint(
        field, x, torch.tensor([0.0, 1.0], dtype=torch.float64), method=theirs, options={"step_size": 0.1}
    )[-1]
    torch.testing.assert_close(block(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_block_equals_torchdiffeq_called_directly_and_the_exact_solution(name):
    field = BurdenFaires()
    x0 = torch.full((1,), field.x0, dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    errors = []
    for rtol in (1e-4, 1e-7):
        block = ODEBlock(field, name, steps=1, step_size=2.0, rtol=rtol, atol=rtol / 100, max_steps=100_000)
        # The block asks torchdiffeq to land its last step on T (step_t) rather than
        # interpolate past it; called directly with the same options, the result is identical.
        direct = torchdiffeq.odeint(field, x0, t, rtol=rtol, atol=rtol / 100, method=name, options={"step_t": t[1:]})[
            -1
        ]
        out = block(x0)
        torch.testing.assert_close(out, direct, rtol=0, atol=0)
        errors.append(abs(out.item() - field.exact(2.0)))
    # Global error is not bounded by the local tolerance, but it tracks it: within
    # 10³·rtol·|x(T)| for every pair here (fehlberg2's order-1 error estimator is the
    # loosest), and at least 30× smaller when rtol is 10³× smaller.
    assert errors[1] <= 1e3 * 1e-7 * abs(field.exact(2.0)), errors
    assert errors[1] <= errors[0] / 30, errors


@pytest.mark.parametrize("name", ["dopri5", "bosh3", "tsit5"])
def test_nfe_grows_as_rtol_tightens(name):
    field = BurdenFaires()
    x0 = torch.full((1,), field.x0, dtype=torch.float64)
    nfes = []
    for rtol in (1e-3, 1e-6, 1e-9):
        block = ODEBlock(field, name, step_size=2.0, rtol=rtol, atol=rtol * 1e-2)
        block(x0)
        nfes.append(block.nfe_forward)
    assert nfes[0] < nfes[1] < nfes[2]


def test_fixed_step_nfe_is_steps_times_stages_forward_and_backward():
    block = ODEBlock(odenet.MLPField(3), "rk4", steps=5, step_size=0.2)
    block(torch.randn(2, 3, requires_grad=True)).sum().backward()
    assert (block.nfe_forward, block.nfe_backward) == (20, 20)


def test_adjoint_gradients_agree_with_backpropagation():
    torch.manual_seed(1)
    field = odenet.MLPField(3, 6, activation="tanh").double()
    x = torch.randn(4, 3, dtype=torch.float64)
    grads, nfe = {}, {}
    for adjoint in (False, True):
        field.zero_grad()
        block = ODEBlock(field, "dopri5", step_size=1.0, rtol=1e-10, atol=1e-10, adjoint=adjoint)
        xi = x.clone().requires_grad_()
        (block(xi) ** 2).sum().backward()
        grads[adjoint] = [xi.grad.clone()] + [p.grad.clone() for p in field.parameters()]
        nfe[adjoint] = (block.nfe_forward, block.nfe_backward)
    for g_bp, g_adj in zip(grads[False], grads[True], strict=True):
        # Both are accurate to the solver tolerance (1e-10); 1e-7 leaves room for its
        # accumulation over the forward and the adjoint solve.
        torch.testing.assert_close(g_adj, g_bp, rtol=1e-7, atol=1e-8)
    assert all(n > 0 for n in nfe[False] + nfe[True])
    # The adjoint solves an augmented ODE backwards: it evaluates the field again.
    assert nfe[True][1] >= nfe[True][0]


def test_stiff_field_fails_with_a_clear_error_instead_of_hanging():
    block = ODEBlock(
        LinearField(torch.tensor([[-1e7]], dtype=torch.float64)),
        "dopri5",
        step_size=1.0,
        rtol=1e-6,
        atol=1e-8,
        max_steps=50,
    )
    with pytest.raises(SolverError, match="max_steps=50"):
        block(torch.ones(1, 1, dtype=torch.float64))


# -------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        (dict(solver="rk5"), ValueError, "choose one of: euler"),
        (dict(steps=0), ValueError, "positive integer"),
        (dict(step_size=0.0), ValueError, "step_size=0.0 is not a step size"),
        (dict(step_size=-1.0), ValueError, "positive finite"),
        (dict(step_size=math.inf), ValueError, "positive finite"),
        (dict(solver="dopri5", rtol=0.0), ValueError, "rtol=0.0 is not a tolerance"),
        (dict(solver="dopri5", atol=-1.0), ValueError, "atol=-1.0 is not a tolerance"),
        (dict(solver="dopri5", residual=False), ValueError, "fixed-step solvers only"),
        (dict(solver="dopri5", memory="checkpoint"), ValueError, "recomputes segments of fixed steps"),
        (dict(solver="rk4", projection=nn.ReLU()), ValueError, "solver='euler' only"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        ODEBlock(odenet.MLPField(3), **kwargs)


def test_field_horizon_must_match_block_horizon():
    field = StepwiseField(_mlp, steps=4, horizon=4.0)
    with pytest.raises(ValueError, match="choose steps·step_size = 4"):
        ODEBlock(field, steps=4, step_size=0.5)


# ------------------------------------------------------------- the field's contract
class _TimeRecorder(nn.Module):
    """A torchdiffeq-style field: uses t.expand, records the times it was called at."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def forward(self, t, x):
        assert isinstance(t, torch.Tensor) and t.dim() == 0
        self.times.append(float(t))
        return -x + t.expand(x.shape[0], 1)


@pytest.mark.parametrize("solver", ["euler", "rk4", "ralston", "dopri5"])
def test_every_solver_passes_t_as_a_tensor(solver):
    field = _TimeRecorder()
    block = ODEBlock(field, solver=solver, steps=2, step_size=0.5)
    block(torch.ones(3, 1))
    if solver in ("euler", "rk4", "ralston"):
        c = METHODS[solver].tableau.c
        assert field.times == pytest.approx([n * 0.5 + ci * 0.5 for n in range(2) for ci in c])


def test_a_field_without_t_or_changing_shape_fails_with_the_fix():
    class NoTime(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(odenet.errors.ConfigError, match=r"field='NoTime' is called as field\(t, x\).*def forward"):
        ODEBlock(NoTime())

    class Widens(nn.Module):
        def forward(self, t, x):
            return torch.cat([x, x], dim=1)

    for solver in ("euler", "dopri5"):
        with pytest.raises(odenet.errors.ConfigError, match=r"returned shape \(2, 6\) for a state of shape \(2, 3\)"):
            ODEBlock(Widens(), solver=solver)(torch.zeros(2, 3))
    with pytest.raises(odenet.errors.ConfigError, match="max_steps=-5 is not a bound on steps"):
        ODEBlock(odenet.MLPField(3), solver="dopri5", max_steps=-5)
    with pytest.raises(odenet.errors.ConfigError, match="field=None is not a vector field"):
        ODEBlock(None)  # type: ignore[arg-type]
