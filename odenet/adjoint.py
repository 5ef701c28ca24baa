"""The continuous adjoint of a fixed-step block: torchdiffeq's ``odeint_adjoint`` on the block's own grid.

``ODEBlock(..., memory="adjoint")`` with a fixed-step tableau hands its solve here. The
forward pass is the block's own method (the same tableau, the same N steps of h), run by
torchdiffeq's fixed-grid machinery through ``odeint_adjoint``, which stores no
activations; the backward pass solves the adjoint ODE

    a'(t) = −a(t)ᵀ ∂F/∂x,   dL/dθ = ∫ a(t)ᵀ ∂F/∂θ dt,

backwards on the same grid with the same tableau, reconstructing x(t) by integrating
the ODE backwards too. That is the gradient of the continuous problem: it differs from
the gradient of the discrete network (what backpropagation through the steps computes)
by O(h^p) for a smooth field, and by more where the backward reconstruction is unstable
(Gholami, Keutzer & Biros 2019, "ANODE", arXiv:1902.10298).

A field with one weight set per step is solved one step per ``odeint_adjoint`` call,
each with its own parameters: one call over all N steps would carry the adjoints of all
N weight sets in its state, O(N·P) work per evaluation. Each call keeps its solution at
both ends for the backward pass, so per-step weights cost two states per step; a
shared-weight field costs nothing per step.

The solver class registered here (``"odenet_fixed"``) is one of the two places that
know torchdiffeq's internals; the other is ``odenet.adaptive``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint_adjoint
from torchdiffeq._impl.solvers import FixedGridODESolver

__all__ = ["solve_fixed_adjoint"]

_tdq_odeint = importlib.import_module("torchdiffeq._impl.odeint")

# (time offset cᵢh, ((j, h·aᵢⱼ), …)) per stage, as ODEBlock pre-multiplies them.
Stages = Sequence[Any]
Weights = Sequence[tuple[int, float]]


class _TableauGrid(FixedGridODESolver):  # type: ignore[misc]
    """torchdiffeq fixed-grid solver running an explicit tableau, N equal steps over [t0, t1].

    Options: ``stages`` and ``weights`` (h pre-multiplied, as ``ODEBlock`` holds them),
    ``h`` and ``steps``. The grid is ``linspace(t0, t1, steps + 1)``: exactly the block's N
    steps (torchdiffeq's own ``step_size`` grid rounds T/h up and can add a sliver step).
    The backward solve runs on the negated time axis, where steps are again +h.
    """

    order = 1  # unused on a fixed grid

    def __init__(self, func: Any, y0: Tensor, stages: Stages = (), weights: Weights = (), h: float = 1.0,
                 steps: int = 1, **kwargs: Any) -> None:  # fmt: skip
        self.stages = stages
        self.weights = weights
        self.h = h

        def grid(func: Any, y0: Tensor, t: Tensor) -> Tensor:
            return torch.linspace(t[0], t[-1], steps + 1, dtype=t.dtype, device=t.device)

        super().__init__(func, y0, grid_constructor=grid, **kwargs)

    def _step_func(self, func: Any, t0: Tensor, dt: Tensor, t1: Tensor, y0: Tensor) -> tuple[Tensor, Tensor]:
        k: list[Tensor] = []
        for stage in self.stages:
            yi = y0
            for j, ahij in stage.terms:
                yi = torch.add(yi, k[j], alpha=ahij)
            k.append(func(t0 + stage.dt, yi))
        i0, b0 = self.weights[0]
        dy = k[i0] * (self.h * b0)
        for i, bi in self.weights[1:]:
            dy = torch.add(dy, k[i], alpha=self.h * bi)
        return dy, k[0]


_tdq_odeint.SOLVERS.setdefault("odenet_fixed", _TableauGrid)


def solve_fixed_adjoint(
    x: Tensor,
    pieces: Sequence[tuple[float, float, nn.Module]],
    stages: Stages,
    weights: Weights,
    h: float,
    rtol: float,
    atol: float,
) -> Tensor:
    """x(T) from x(0) through each (t0, t1, field) piece with ``odeint_adjoint`` on the fixed grid.

    x: (batch, …) → same shape. ``stages``/``weights`` are the block's tableau with h
    pre-multiplied; each piece takes round((t1 − t0)/h) steps.
    """
    t_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    for t0, t1, field in pieces:
        steps = max(1, round((t1 - t0) / h))
        options = {"stages": stages, "weights": weights, "h": h, "steps": steps}
        t = torch.tensor([t0, t1], dtype=t_dtype, device=x.device)
        params = tuple(p for p in field.parameters() if p.requires_grad)
        x = odeint_adjoint(
            field, x, t, rtol=rtol, atol=atol, method="odenet_fixed", options=options,
            adjoint_options=options, adjoint_params=params,
        )[-1]  # fmt: skip
    return x
