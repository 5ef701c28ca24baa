"""The registry of named solvers: fixed-step tableaus and torchdiffeq's adaptive pairs.

Every method is a ``Method``: a name, its ``ButcherTableau`` (for adaptive pairs, the
tableau of the propagated solution, read from torchdiffeq's own coefficients so that
stability regions describe exactly what runs) and whether step sizes are chosen
adaptively. Fixed-step methods run in odenet's own loop (``odenet.blocks``); adaptive
ones are handed to ``torchdiffeq.odeint``. A user's ``ButcherTableau`` works wherever a
name does.
"""

from __future__ import annotations

from dataclasses import dataclass

from odenet.adaptive import TSIT5, torchdiffeq_tableau
from odenet.errors import ConfigError
from odenet.tableaus import FIXED_STEP_TABLEAUS, ButcherTableau

__all__ = ["METHODS", "Method", "UnknownSolverError", "get_method", "method_names"]


class UnknownSolverError(ConfigError):
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
    return Method(name, torchdiffeq_tableau(name, description), adaptive=True)


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
            "{solver} is not a known solver; choose one of: " + ", ".join(METHODS) + " (or an odenet.ButcherTableau)",
            solver=solver,
        )
    raise TypeError(f"solver must be a name or a ButcherTableau, got {type(solver).__name__}")
