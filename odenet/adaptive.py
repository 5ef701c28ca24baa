"""Adaptive solving through torchdiffeq: the one module that knows torchdiffeq's internals.

``ODEBlock`` hands adaptive solves here: ``solve`` integrates a field over one or more
intervals with ``torchdiffeq.odeint`` (or ``odeint_adjoint``), lands the last step on
the interval's end, counts function evaluations at the cost of a Python call each (no
autograd hook per evaluation), and turns torchdiffeq's assertion failures into a
``SolverError`` that says what to change. ``torchdiffeq_tableau`` reads the propagated
tableau of one of torchdiffeq's adaptive pairs, so the registry's stability regions
describe exactly what runs, and Tsit5, which torchdiffeq 0.2.5 does not ship, is
registered into torchdiffeq's solver table here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver, _ButcherTableau

from odenet.errors import NAME_ONLY, ConfigError
from odenet.tableaus import ButcherTableau, dense_output_weights

__all__ = ["TSIT5", "Counts", "SolverError", "shape_error", "solve", "torchdiffeq_order", "torchdiffeq_tableau"]

# The module, not the function of the same name that torchdiffeq._impl re-exports.
_tdq_odeint = importlib.import_module("torchdiffeq._impl.odeint")


class SolverError(RuntimeError):
    """An adaptive solve that could not finish (too many steps, step-size underflow)."""


def torchdiffeq_tableau(name: str, description: str) -> ButcherTableau:
    """The propagated tableau of torchdiffeq's adaptive solver ``name``.

    torchdiffeq stores (alpha, beta, c_sol, c_error): alpha = c₂…c_s, beta = the rows of a
    below the first, c_sol = b. The order is checked against the order conditions.
    """
    solver = _tdq_odeint.SOLVERS[name]
    tab = solver.tableau
    s = len(tab.c_sol)
    c = [0.0, *tab.alpha.tolist()]
    a = [[0.0] * s]
    for row in tab.beta:
        values = row.tolist()
        a.append(values + [0.0] * (s - len(values)))
    return ButcherTableau(c=c, a=a, b=tab.c_sol.tolist(), order=solver.order, name=name, description=description)


def torchdiffeq_order(name: str) -> int:
    """The order torchdiffeq declares for its solver ``name``."""
    return int(_tdq_odeint.SOLVERS[name].order)


# Tsitouras (2011), "Runge–Kutta pairs of order 5(4) satisfying only the first column
# simplifying assumption", Comput. Math. Appl. 62:770–775, Table 1. The 7th stage is
# FSAL (a₇ = b). torchdiffeq 0.2.5 does not ship it, so odenet registers it there.
_TSIT5_C = [0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0]
_TSIT5_B = [
    0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
    -3.290069515436081, 2.324710524099774, 0.0,
]  # fmt: skip
_TSIT5_A = [
    [0.0] * 7,
    [0.161] + [0.0] * 6,
    [-0.008480655492356989, 0.335480655492357] + [0.0] * 5,
    [2.8971530571054935, -6.359448489975075, 4.3622954328695815] + [0.0] * 4,
    [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525] + [0.0] * 3,
    [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
     -0.028269050394068383, 0.0, 0.0],
    [*_TSIT5_B[:6], 0.0],
]  # fmt: skip
# b − b̂: the difference to the embedded fourth-order weights (the error estimator).
_TSIT5_B_ERROR = [
    -0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995,
    -0.1447110071732629, 0.5823571654525552, -0.45808210592918697, 0.015151515151515152,
]  # fmt: skip

TSIT5 = ButcherTableau(
    c=_TSIT5_C,
    a=_TSIT5_A,
    b=_TSIT5_B,
    order=5,
    name="tsit5",
    description="Tsitouras 5(4) pair, 7 stages (FSAL), order 5 with a 4th-order error "
    "estimate. Tsitouras (2011), Comput. Math. Appl. 62:770.",
)


def _tsit5_solver_class() -> type[RKAdaptiveStepsizeODESolver]:
    f64 = torch.float64
    # torchdiffeq interpolates with a quartic through y₀, y₁, f₀, f₁ and y(t₀ + h/2); the
    # midpoint weights solve the continuous order conditions to order 4 at θ = 1/2.
    mid = dense_output_weights(TSIT5, 0.5, order=4)

    class Tsit5Solver(RKAdaptiveStepsizeODESolver):
        order = 5
        tableau = _ButcherTableau(
            alpha=torch.tensor(_TSIT5_C[1:], dtype=f64),
            beta=[torch.tensor(row[:i], dtype=f64) for i, row in enumerate(_TSIT5_A[1:], start=1)],
            c_sol=torch.tensor(_TSIT5_B, dtype=f64),
            c_error=torch.tensor(_TSIT5_B_ERROR, dtype=f64),
        )

    Tsit5Solver.mid = torch.tensor(mid, dtype=f64)
    return Tsit5Solver


_tdq_odeint.SOLVERS.setdefault("tsit5", _tsit5_solver_class())


def shape_error(out: Tensor, x: Tensor) -> ConfigError:
    """The error for a field whose output is not shaped like its state (fixed and adaptive solves)."""
    return ConfigError(
        "the {field} returned shape "
        + str(tuple(out.shape))
        + " for a state of shape "
        + str(tuple(x.shape))
        + ": a vector field returns dx/dt, shaped like x (use a Transition to change shape)",
        field=NAME_ONLY,
    )


# -- solving ------------------------------------------------------------------------------
@dataclass
class Counts:
    """Function evaluations of the last forward pass and of the backward pass after it."""

    forward: int = 0
    backward: int = 0


@dataclass(frozen=True)
class Tolerances:
    """What an adaptive solve is asked for: the method's registry name and its controls."""

    method: str
    rtol: float
    atol: float
    adjoint: bool
    max_steps: int


def solve(x: Tensor, pieces: Sequence[tuple[float, float, nn.Module]], how: Tolerances, counts: Counts) -> Tensor:
    """x(T) from x(t0) through each (t0, t1, field) piece in turn; counts evaluations.

    x: (batch, …) → same shape. ``counts.forward`` is set to the evaluations of this
    solve; ``counts.backward`` grows during the backward pass: by one per field call of
    the adjoint solve, or, with backpropagation, by one per forward evaluation that is
    differentiated. Those are known when the forward solve ends, the step-size probe
    aside (see ``_Counter``), so one hook on the solution adds them when the backward pass
    reaches it. A hook on every evaluation, as before, cost ~25 µs per evaluation: 4–5% of
    a dopri5 forward+backward of a small MLP (odenet issue 11).
    """
    counts.forward = 0
    counts.backward = 0
    differentiated = 0
    solution = x
    for t0, t1, field in pieces:
        counter = _Counter(field, counts, not how.adjoint)
        try:
            solution = _solve_piece(x, t0, t1, counter, how)
        finally:
            counts.forward += counter.calls
            counter.end_forward()
        x = solution[-1]
        differentiated += counter.differentiated
    if not how.adjoint and x.requires_grad:

        def on_backward(grad: Tensor) -> None:
            counts.backward += differentiated

        # On the whole solution rather than on the x(T) returned: the caller's tensor
        # stays as torchdiffeq returns it.
        solution.register_hook(on_backward)
    return x


def _solve_piece(x: Tensor, t0: float, t1: float, counter: _Counter, how: Tolerances) -> Tensor:
    """The solution at (t0, t1): (2, batch, …)."""
    t_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    t = torch.tensor([t0, t1], dtype=t_dtype, device=x.device)
    # step_t makes the last step land on T exactly, so x(T) is a solver step, not
    # torchdiffeq's quartic interpolant past it (whose error can exceed rtol by orders
    # of magnitude for the high-order pairs). The adjoint solve likewise ends on 0.
    options = {"max_num_steps": how.max_steps, "step_t": t[1:]}
    try:
        if how.adjoint:
            # The counter is a plain callable: odeint_adjoint needs an nn.Module only to
            # find the parameters, and is given them (it drops those without gradients).
            return odeint_adjoint(
                counter,
                x,
                t,
                rtol=how.rtol,
                atol=how.atol,
                method=how.method,
                options=options,
                adjoint_params=tuple(counter.field.parameters()),
                adjoint_options={"max_num_steps": how.max_steps, "step_t": t[:1]},
            )
        return odeint(counter, x, t, rtol=how.rtol, atol=how.atol, method=how.method, options=options)
    except AssertionError as err:
        raise SolverError(_explain(err, how, t0, t1)) from err


def _explain(err: AssertionError, how: Tolerances, t0: float, t1: float) -> str:
    msg = str(err)
    span = f"[{t0:g}, {t1:g}]"
    if "max_num_steps" in msg:
        return (
            f"{how.method} needed more than max_steps={how.max_steps} steps over {span} "
            f"(rtol={how.rtol:g}, atol={how.atol:g}): the field is stiff or diverging; loosen "
            "rtol/atol, raise max_steps, or use a fixed-step solver"
        )
    if "underflow" in msg:
        return (
            f"{how.method}'s step size underflowed over {span}: the field is stiff or singular; "
            "loosen rtol/atol or use a fixed-step solver"
        )
    if "non-finite" in msg:
        return f"{how.method} met a non-finite state (NaN/inf): the field diverged"
    return f"{how.method} failed: {msg}"


class _Counter:
    """The field as torchdiffeq calls it: counts evaluations, checks the first one's shape.

    A plain callable, not an ``nn.Module``: torchdiffeq wraps whatever it is given in its
    own module (``_PerturbFunc``), so a module here would be a second ``__call__`` per
    evaluation. Its ``callback_step`` and ``callback_reject_step`` are torchdiffeq's step
    callbacks (RK solvers call them on ``func`` at the start of every attempted step and
    after a rejected one).

    Which forward evaluations backpropagation differentiates, in torchdiffeq's RK loop:
    those whose output has a gradient and which are either the first, f(t₀, x₀), or a
    stage of an accepted step (the stages make the new state or, the last one, the next
    step's f₀ and the interpolant the output is read from); no stage of a rejected step
    (the state is kept, and the next step size is computed under ``no_grad``). The one
    that depends on the data is the probe of the initial step-size heuristic (Hairer,
    Nørsett & Wanner, Sec. II.4): the first step size is a differentiable min/max of it
    and of f₀, unless ``step_t`` shortens the first step to end on T. So a probe, any
    evaluation before the first step other than f₀, carries a hook; ``on_graph`` and
    ``rejected`` count the rest. (An output can have a gradient through t alone: the
    step times inherit one from that first step size.)

    Calls after ``end_forward`` come from the adjoint solve and count as backward.
    """

    __slots__ = ("attempt_start", "calls", "counts", "field", "forward_done", "hook_probes", "on_graph", "rejected",
                 "stepping")  # fmt: skip

    def __init__(self, field: nn.Module, counts: Counts, backprop: bool) -> None:
        self.field = field
        self.counts = counts
        self.hook_probes = backprop
        self.calls = 0  # evaluations of the forward solve
        self.on_graph = 0  # of those, f(t₀, x₀) and stages of steps, with a gradient
        self.stepping = False  # True from the first attempted step on
        self.attempt_start = 0  # on_graph when the current attempted step began
        self.rejected = 0  # of on_graph, those of rejected steps
        self.forward_done = False

    @property
    def differentiated(self) -> int:
        """Evaluations backpropagation will differentiate, probes aside."""
        return self.on_graph - self.rejected

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        out = self.field(t, x)
        if self.stepping:  # the hot path: stages of a step
            self.calls += 1
            if out.requires_grad:
                self.on_graph += 1
            return out
        if self.forward_done:  # the adjoint solve
            self.counts.backward += 1
            return out
        if self.calls == 0:
            if out.shape != x.shape:
                raise shape_error(out, x)
            self.on_graph = int(out.requires_grad)
        elif self.hook_probes and out.requires_grad:
            out.register_hook(self._probe_differentiated)
        self.calls += 1
        return out

    def end_forward(self) -> None:
        """Calls from now on come from the adjoint solve."""
        self.stepping = False
        self.forward_done = True

    def _probe_differentiated(self, grad: Tensor) -> None:
        self.counts.backward += 1

    def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.stepping = True
        self.attempt_start = self.on_graph

    def callback_reject_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.rejected += self.on_graph - self.attempt_start
