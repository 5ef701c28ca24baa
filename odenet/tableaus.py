"""Explicit Runge–Kutta methods as validated data.

A method is its Butcher tableau (c, a, b) and an order::

    c | a
    --+----
      | bᵀ

One generic stepping loop (``odenet.blocks``) consumes any tableau; Euler is the
one-stage tableau, not a special class. A tableau checks itself when it is built:
``a`` square and strictly lower triangular (explicit), the row sums of ``a`` equal to
``c``, and — through the rooted-tree order conditions of Butcher (2016, §3) — that it
really has the order it declares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np

__all__ = [
    "EULER",
    "FIXED_STEP_TABLEAUS",
    "HEUN",
    "MIDPOINT",
    "RALSTON",
    "RK3",
    "RK4",
    "RK38",
    "ButcherTableau",
    "TableauError",
    "rooted_trees",
]

# Order conditions hold in exact arithmetic; coefficients written as decimal floats
# (Tsitouras 2011, Prince & Dormand 1981) carry rounding of a few ulps per term.
_CONDITION_TOL = 1e-10


class TableauError(ValueError):
    """A Butcher tableau that is not a valid explicit Runge–Kutta method."""


# --------------------------------------------------------------------------- trees
# A rooted tree is a sorted tuple of its children (each a rooted tree); () is the
# single node. Order conditions: for every tree τ with |τ| ≤ p,
#     bᵀ Φ(τ) = 1 / γ(τ),   Φ(τ) = ∏_children (A Φ(child))  (elementwise),  Φ(•) = 1,
#     γ(τ) = |τ| ∏_children γ(child).


def _tree_order(tree: tuple) -> int:
    return 1 + sum(_tree_order(child) for child in tree)


@cache
def rooted_trees(order: int) -> tuple[tuple, ...]:
    """All rooted trees with exactly ``order`` nodes (1, 1, 2, 4, 9, 20, 48, 115, …)."""
    if order < 1:
        return ()
    if order == 1:
        return ((),)
    trees: set[tuple] = set()
    # A tree of n nodes is a root with a multiset of subtrees whose orders sum to n-1.
    for children in _forests(order - 1, order - 1):
        trees.add(tuple(sorted(children)))
    return tuple(sorted(trees))


@cache
def _forests(total: int, largest: int) -> tuple[tuple, ...]:
    """Multisets of trees with orders summing to ``total``, each of order ≤ ``largest``."""
    if total == 0:
        return ((),)
    out = []
    for first in range(min(total, largest), 0, -1):
        for tree in rooted_trees(first):
            for rest in _forests(total - first, first):
                # Keep multisets canonical: within equal orders, non-increasing trees.
                if rest and _tree_order(rest[0]) == first and rest[0] > tree:
                    continue
                out.append((tree, *rest))
    return tuple(out)


def _gamma(tree: tuple) -> int:
    return _tree_order(tree) * math.prod(_gamma(child) for child in tree)


def _phi(tree: tuple, a: np.ndarray) -> np.ndarray:
    out = np.ones(a.shape[0])
    for child in tree:
        out = out * (a @ _phi(child, a))
    return out


def order_residuals(a: np.ndarray, b: np.ndarray, order: int) -> list[float]:
    """Residuals bᵀΦ(τ) − 1/γ(τ) of every order condition of the given order."""
    return [float(b @ _phi(tree, a) - 1.0 / _gamma(tree)) for tree in rooted_trees(order)]


# ------------------------------------------------------------------------ tableau


def _as_tuple(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True, eq=True)
class ButcherTableau:
    """An explicit Runge–Kutta method, validated on construction.

    Parameters
    ----------
    c: nodes, length s (c₁ = 0 for an explicit method).
    a: stage coefficients, s × s, strictly lower triangular.
    b: weights, length s, summing to 1.
    order: the classical order p; checked against the rooted-tree order conditions.
    name: a short identifier (used by the registry and in results).
    description: other names and the source of the coefficients.

    The stability function is R(z) = 1 + z·bᵀ(I − zA)⁻¹·1 (see ``stability_function``).
    """

    # Any sequences are accepted; they are stored as tuples of floats (hashable, frozen).
    c: Sequence[float]
    a: Sequence[Sequence[float]]
    b: Sequence[float]
    order: int
    name: str = "custom"
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        c = _as_tuple(self.c)
        b = _as_tuple(self.b)
        try:
            a = tuple(_as_tuple(row) for row in self.a)
        except TypeError as err:
            raise TableauError("a must be a list of rows, e.g. [[0, 0], [0.5, 0]]") from err
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        s = len(b)
        if s == 0:
            raise TableauError("a tableau needs at least one stage: give b at least one weight")
        if len(c) != s or len(a) != s or any(len(row) != s for row in a):
            raise TableauError(
                f"a must be square with as many rows as b and c have entries ({s}); "
                f"got c of length {len(c)}, a of shape {len(a)}×{[len(r) for r in a]}"
            )
        if not all(math.isfinite(v) for v in (*c, *b, *(x for row in a for x in row))):
            raise TableauError("every coefficient of c, a and b must be a finite number")
        for i, row in enumerate(a):
            if any(row[j] != 0.0 for j in range(i, s)):
                raise TableauError(
                    f"row {i + 1} of a has a non-zero entry on or above the diagonal; odenet takes "
                    "explicit methods only, so a must be strictly lower triangular"
                )
        for i, (row, ci) in enumerate(zip(a, c, strict=True)):
            if abs(sum(row) - ci) > _CONDITION_TOL * max(1.0, abs(ci)):
                raise TableauError(
                    f"row {i + 1} of a sums to {sum(row):.17g} but c[{i + 1}] = {ci:.17g}; set c to the row sums of a"
                )
        if abs(sum(b) - 1.0) > _CONDITION_TOL:
            raise TableauError(f"b sums to {sum(b):.17g}, not 1; a consistent method needs Σ b = 1")
        if not isinstance(self.order, int) or isinstance(self.order, bool) or self.order < 1:
            raise TableauError(f"order must be a positive integer, got {self.order!r}")
        achieved = self.achieved_order(limit=self.order)
        if achieved < self.order:
            raise TableauError(
                f"tableau {self.name!r} declares order {self.order} but satisfies the order "
                f"conditions only up to order {achieved}; declare order={achieved} or fix the coefficients"
            )

    # -- views --------------------------------------------------------------
    @property
    def stages(self) -> int:
        """Number of stages s (function evaluations per step)."""
        return len(self.b)

    @property
    def A(self) -> np.ndarray:  # noqa: N802 - the matrix is called A in every text
        return np.array(self.a, dtype=np.float64)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(c, A, b) as float64 numpy arrays."""
        return np.array(self.c), self.A, np.array(self.b)

    # -- mathematics ----------------------------------------------------------
    def achieved_order(self, limit: int = 8) -> int:
        """Largest p ≤ ``limit`` for which every order condition up to p holds."""
        _, a, b = self.arrays()
        p = 0
        for order in range(1, limit + 1):
            if max(abs(r) for r in order_residuals(a, b, order)) > _CONDITION_TOL * 10 ** (order // 3):
                break
            p = order
        return p

    def stability_polynomial(self) -> np.ndarray:
        """Coefficients [γ₀, γ₁, …, γ_s] of R(z) = Σ γ_k z^k (increasing powers).

        For an explicit method A is nilpotent, so (I − zA)⁻¹ = Σ_{k<s} z^k A^k and
        R(z) = 1 + Σ_{k=0}^{s-1} (bᵀ A^k 1) z^{k+1}: a polynomial of degree ≤ s.
        """
        _, a, b = self.arrays()
        coeffs = [1.0]
        v = np.ones(self.stages)
        for _ in range(self.stages):
            coeffs.append(float(b @ v))
            v = a @ v
        return np.array(coeffs)

    def stability_function(self, z: np.ndarray | complex | float) -> np.ndarray:
        """R(z) = 1 + z·bᵀ(I − zA)⁻¹·1, elementwise on a (complex) array.

        |R(hλ)| ≤ 1 is the region where one step of size h of the linear test equation
        x' = λx does not amplify the solution; x_n = R(hλ)ⁿ x₀ exactly.
        """
        z = np.asarray(z, dtype=np.complex128)
        # Horner on increasing-power coefficients.
        out = np.zeros_like(z)
        for coeff in self.stability_polynomial()[::-1]:
            out = out * z + coeff
        return out

    def __repr__(self) -> str:
        return f"ButcherTableau(name={self.name!r}, stages={self.stages}, order={self.order})"


# -------------------------------------------------------- the fixed-step methods

EULER = ButcherTableau(
    #  0 | 0
    #  --+--
    #    | 1
    c=[0.0],
    a=[[0.0]],
    b=[1.0],
    order=1,
    name="euler",
    description="Forward (explicit) Euler. 1 stage, order 1. Euler (1768). "
    "A pre-activation residual block x + h·F(x) is one step of it.",
)

MIDPOINT = ButcherTableau(
    #  0   |
    #  1/2 | 1/2
    #  ----+--------
    #      | 0    1
    c=[0.0, 0.5],
    a=[[0.0, 0.0], [0.5, 0.0]],
    b=[0.0, 1.0],
    order=2,
    name="midpoint",
    description="Explicit midpoint rule (modified Euler, RK2). 2 stages, order 2. "
    "Runge (1895); Hairer, Nørsett & Wanner (1993), Table II.1.1.",
)

HEUN = ButcherTableau(
    #  0 |
    #  1 | 1
    #  --+---------
    #    | 1/2  1/2
    c=[0.0, 1.0],
    a=[[0.0, 0.0], [1.0, 0.0]],
    b=[0.5, 0.5],
    order=2,
    name="heun",
    description="Heun's method (explicit trapezoidal rule, improved Euler). 2 stages, order 2. Heun (1900).",
)

RALSTON = ButcherTableau(
    #  0   |
    #  2/3 | 2/3
    #  ----+---------
    #      | 1/4  3/4
    c=[0.0, 2 / 3],
    a=[[0.0, 0.0], [2 / 3, 0.0]],
    b=[0.25, 0.75],
    order=2,
    name="ralston",
    description="Ralston's second-order method (minimum truncation-error bound). "
    "2 stages, order 2. Ralston (1962), Math. Comp. 16:431.",
)

RK3 = ButcherTableau(
    #  0   |
    #  1/2 | 1/2
    #  1   | -1   2
    #  ----+--------------
    #      | 1/6  2/3  1/6
    c=[0.0, 0.5, 1.0],
    a=[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [-1.0, 2.0, 0.0]],
    b=[1 / 6, 2 / 3, 1 / 6],
    order=3,
    name="rk3",
    description="Kutta's third-order method (classical RK3). 3 stages, order 3. Kutta (1901).",
)

RK4 = ButcherTableau(
    #  0   |
    #  1/2 | 1/2
    #  1/2 | 0    1/2
    #  1   | 0    0    1
    #  ----+-------------------
    #      | 1/6  1/3  1/3  1/6
    c=[0.0, 0.5, 0.5, 1.0],
    a=[[0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
    b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
    order=4,
    name="rk4",
    description="The classic fourth-order Runge–Kutta method. 4 stages, order 4. Kutta (1901).",
)

RK38 = ButcherTableau(
    #  0   |
    #  1/3 | 1/3
    #  2/3 | -1/3  1
    #  1   | 1    -1    1
    #  ----+--------------------
    #      | 1/8  3/8  3/8  1/8
    c=[0.0, 1 / 3, 2 / 3, 1.0],
    a=[
        [0.0, 0.0, 0.0, 0.0],
        [1 / 3, 0.0, 0.0, 0.0],
        [-1 / 3, 1.0, 0.0, 0.0],
        [1.0, -1.0, 1.0, 0.0],
    ],
    b=[1 / 8, 3 / 8, 3 / 8, 1 / 8],
    order=4,
    name="rk38",
    description="Kutta's 3/8 rule. 4 stages, order 4. Kutta (1901). (torchdiffeq's fixed-step 'rk4' is this method.)",
)

FIXED_STEP_TABLEAUS: tuple[ButcherTableau, ...] = (EULER, MIDPOINT, HEUN, RALSTON, RK3, RK4, RK38)


def dense_output_weights(tableau: ButcherTableau, theta: float, order: int) -> np.ndarray:
    """Weights b(θ) with x(t₀ + θh) ≈ x₀ + h·Σ bᵢ(θ)·kᵢ to the given order.

    Solves the continuous order conditions bᵀ(θ)Φ(τ) = θ^|τ| / γ(τ) for every tree up
    to ``order`` (minimum-norm solution when the stages leave freedom) and refuses
    tableaus whose stages cannot reach that order at θ.
    """
    _, a, _ = tableau.arrays()
    rows, rhs = [], []
    for p in range(1, order + 1):
        for tree in rooted_trees(p):
            rows.append(_phi(tree, a))
            rhs.append(theta**p / _gamma(tree))
    m, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    if np.max(np.abs(np.array(rows) @ m - np.array(rhs))) > _CONDITION_TOL:
        raise TableauError(f"the stages of {tableau.name!r} admit no dense output of order {order} at θ={theta}")
    return m
