"""What the solver benchmarks share: the MLP field, the two modes of work, torchode if present.

A *solve* is a callable ``x ↦ x(T)``. ``forward`` times it under ``torch.no_grad()``;
``forward_backward`` times the solve, a scalar loss and backpropagation into the field's
parameters. ``relative_difference`` is how checks compare two contenders' results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Solve = Callable[[Tensor], Tensor]

try:  # an optional benchmark dependency: pip install 'odenet[bench]'
    import torchode
except ImportError:  # pragma: no cover - depends on the environment
    torchode = None

TORCHODE_MISSING = "torchode is not installed (pip install 'odenet[bench]')"


class MLP(nn.Module):
    """F(t, x) = Linear(hidden → d)(tanh(Linear(d → hidden)(x))), autonomous; torchdiffeq's signature.

    x: (batch, d) → (batch, d).
    """

    def __init__(self, features: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, features)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def forward(solve: Solve, x: Tensor) -> Callable[[], Tensor]:
    """One timed unit: the solve under ``torch.no_grad()``."""

    def run() -> Tensor:
        with torch.no_grad():
            return solve(x)

    return run


def forward_backward(solve: Solve, x: Tensor, field: nn.Module) -> Callable[[], None]:
    """One timed unit: the solve, mean(x(T)²), backpropagation into the field's parameters."""

    def run() -> None:
        field.zero_grad(set_to_none=True)
        solve(x).square().mean().backward()

    return run


def gradients(solve: Solve, x: Tensor, field: nn.Module) -> Tensor:
    """d mean(x(T)²) / d parameters, flattened: what ``forward_backward`` computes."""
    forward_backward(solve, x, field)()
    grads = torch.cat([p.grad.flatten() for p in field.parameters() if p.grad is not None])
    field.zero_grad(set_to_none=True)
    return grads


def relative_difference(a: Tensor, b: Tensor) -> float:
    """max |a − b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def count_evaluations(field: nn.Module, fn: Callable[[], Any]) -> int:
    """Calls of ``field`` during ``fn()`` (a forward pre-hook, removed afterwards)."""
    calls = [0]

    def hook(module: nn.Module, inputs: Any) -> None:
        calls[0] += 1

    handle = field.register_forward_pre_hook(hook)
    try:
        fn()
    finally:
        handle.remove()
    return calls[0]


def agree(results: dict[str, Tensor], pairs: list[tuple[str, str, float]], what: str) -> dict[str, Any]:
    """Assert that each (a, b, tolerance) pair of results agrees; the differences, for the table."""
    out: dict[str, Any] = {}
    for a, b, tol in pairs:
        diff = relative_difference(results[a], results[b])
        out[f"{what} max|{a} − {b}|/max|{b}|"] = float(f"{diff:.3g}")
        assert diff <= tol, f"{what}: {a} and {b} differ by {diff:.3g} (relative), more than {tol:g}"
    return out


# -- torchode ------------------------------------------------------------------------------
def torchode_classic_rk4() -> Any:
    """Classic RK4 as a torchode step method, from torchode's own ``ButcherTableau.from_lists``.

    torchode 1.0 ships Euler, Heun, Dopri5 and Tsit5; a fixed-step RK4 is a user tableau.
    The error weights are zero (the fixed-step controller never reads them) and the dense
    output is torchode's cubic Hermite interpolant, exact at the step's end.
    """
    from torchode.interpolation import ThirdOrderPolynomialInterpolation
    from torchode.single_step_methods.runge_kutta import ButcherTableau, ExplicitRungeKutta

    tableau = ButcherTableau.from_lists(
        c=[0.0, 0.5, 0.5, 1.0],
        a=[[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
        b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
        b_err=[0.0, 0.0, 0.0, 0.0],
    )

    class ClassicRK4(ExplicitRungeKutta):
        def __init__(self, term: Any = None) -> None:
            super().__init__(term, tableau)

        def convergence_order(self) -> int:
            return 4

        def build_interpolation(self, data: Any) -> Any:
            return ThirdOrderPolynomialInterpolation.from_k(data.t0, data.dt, data.y0, data.y1, data.k)

    return ClassicRK4


def torchode_fixed(field: nn.Module, method: str, steps: int, t1: float = 1.0, stats: bool = False) -> Solve:
    """x ↦ x(t1) by torchode, ``steps`` fixed steps (``FixedStepController``), ``method`` in {heun, rk4}.

    torchode's loop accumulates t += h and steps until t reaches t_end, so t_end is h added
    ``steps`` times in float64 (1 − 1e-16 for ten steps of 0.1): with t_end = 1 rounding
    would leave t just short of it and torchode would take one more, tiny step.
    """
    assert torchode is not None, TORCHODE_MISSING
    step = {"heun": torchode.Heun, "euler": torchode.Euler, "rk4": torchode_classic_rk4()}[method]
    term = torchode.ODETerm(field, with_stats=stats)
    solver = torchode.AutoDiffAdjoint(step(term), torchode.FixedStepController())
    h = t1 / steps
    t_end = 0.0
    for _ in range(steps):
        t_end += h

    def solve(x: Tensor) -> Tensor:
        t_start = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        problem = torchode.InitialValueProblem(y0=x, t_start=t_start, t_end=t_start + t_end)
        return solver.solve(problem, dt0=torch.full_like(t_start, h)).ys[:, -1]

    return solve
