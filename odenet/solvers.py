"""The registry of named solvers: fixed-step tableaus and torchdiffeq's adaptive pairs.

Every method is a ``Method``: a name, its ``ButcherTableau`` (for adaptive pairs, the
tableau of the propagated solution, read from torchdiffeq's own coefficients so that
stability regions describe exactly what runs) and whether step sizes are chosen
adaptively. Fixed-step methods run in odenet's own loop (``odenet.blocks``); adaptive
ones are handed to ``torchdiffeq.odeint``. A user's ``ButcherTableau`` works wherever a
name does.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver, _ButcherTableau

from odenet.tableaus import FIXED_STEP_TABLEAUS, ButcherTableau, dense_output_weights

# The module, not the function of the same name that torchdiffeq._impl re-exports.
_tdq_odeint = importlib.import_module("torchdiffeq._impl.odeint")

__all__ = ["METHODS", "Method", "UnknownSolverError", "get_method", "method_names"]


class UnknownSolverError(ValueError):
    """A solver name that is not in the registry."""


@dataclass(frozen=True)
class Method:
    """A named integration method.

    name: registry key. tableau: its Butcher tableau. adaptive: step sizes chosen by an
    embedded error estimate (run by torchdiffeq under rtol/atol) rather than fixed.
    """

    name: str
    tableau: ButcherTableau
    adaptive: bool = False

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def stages(self) -> int:
        return self.tableau.stages

    @property
    def description(self) -> str:
        return self.tableau.description


def _from_torchdiffeq(name: str, description: str) -> Method:
    """Read the propagated tableau of one of torchdiffeq's adaptive solvers.

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
    return Method(
        name,
        ButcherTableau(c=c, a=a, b=tab.c_sol.tolist(), order=solver.order, name=name, description=description),
        adaptive=True,
    )


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

_ADAPTIVE = {
    "dopri5": "Dormand–Prince 5(4), 7 stages (FSAL), order 5. Dormand & Prince (1980), "
    "J. Comput. Appl. Math. 6:19. torchdiffeq's default.",
    "bosh3": "Bogacki–Shampine 3(2), 4 stages (FSAL), order 3. Bogacki & Shampine (1989), "
    "Appl. Math. Lett. 2:321 (MATLAB's ode23).",
    "adaptive_heun": "Heun–Euler 2(1), 2 stages, order 2: Heun's method with Euler as the error estimate.",
    "fehlberg2": "Runge–Kutta–Fehlberg 1(2), 3 stages; torchdiffeq propagates the "
    "order-2 solution. Fehlberg (1969), NASA TR R-315.",
    "dopri8": "Dormand–Prince 8(7), 14 stages (13M, FSAL), order 8. Prince & Dormand (1981), "
    "J. Comput. Appl. Math. 7:67.",
}


def _build_registry() -> dict[str, Method]:
    methods = {t.name: Method(t.name, t) for t in FIXED_STEP_TABLEAUS}
    for name, description in _ADAPTIVE.items():
        methods[name] = _from_torchdiffeq(name, description)
    methods["tsit5"] = Method("tsit5", TSIT5, adaptive=True)
    return methods


METHODS: dict[str, Method] = _build_registry()


def method_names(adaptive: bool | None = None) -> list[str]:
    """Registered names, fixed-step first; ``adaptive`` filters."""
    return [m.name for m in METHODS.values() if adaptive is None or m.adaptive == adaptive]


def get_method(solver: str | ButcherTableau | Method) -> Method:
    """Resolve a solver name, a user's ``ButcherTableau`` or a ``Method``."""
    if isinstance(solver, Method):
        return solver
    if isinstance(solver, ButcherTableau):
        return Method(solver.name, solver, adaptive=False)
    if isinstance(solver, str):
        key = solver.strip().lower().replace("-", "_")
        if key in METHODS:
            return METHODS[key]
        raise UnknownSolverError(
            f"unknown solver {solver!r}; choose one of: {', '.join(METHODS)} (or pass an odenet.ButcherTableau)"
        )
    raise TypeError(f"solver must be a name or a ButcherTableau, got {type(solver).__name__}")
