"""``ODEBlock``: integrate a vector field over [0, steps·step_size] with a named solver.

A residual block is one step of an ODE solver. With a fixed-step tableau (c, a, b) one
step of size h from (t, x) is

    kᵢ = F(t + cᵢh, x + h·Σⱼ aᵢⱼ kⱼ),   i = 1 … s
    x ← x + h·Σᵢ bᵢ kᵢ

and odenet runs that loop itself: coefficients are Python floats, times are Python
floats, nothing is read back from the device, and a stage whose coefficients are zero
costs nothing. Adaptive pairs go to ``torchdiffeq.odeint`` (or ``odeint_adjoint``)
under rtol/atol with a bound on the number of steps.

``residual=False`` gives the plain twin of He et al. (2015): the identity is dropped,
x ← Σᵢ bᵢ kᵢ, which for Euler is x_{k+1} = F_k(x_k). ``projection`` (for example a
ReLU) is applied after every step: the post-activation "basic" block of He et al.
(2015), x_{k+1} = ReLU(x_k + h·F_k(x_k)), is a projected Euler step and is defined for
Euler only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from odenet.depth import StepwiseField
from odenet.solvers import Method, get_method
from odenet.tableaus import ButcherTableau

__all__ = ["ODEBlock", "SolverError", "ode_blocks", "total_nfe"]

# Default bound on adaptive steps per forward pass: far more than a well-conditioned
# block needs (dozens), few enough that a stiff field fails in seconds, not hours.
DEFAULT_MAX_STEPS = 10_000


class SolverError(RuntimeError):
    """An adaptive solve that could not finish (too many steps, step-size underflow)."""


@dataclass(frozen=True)
class _Stage:
    """One stage of a tableau, pre-multiplied by h: time offset cᵢh, terms (j, h·aᵢⱼ)."""

    dt: float
    terms: tuple[tuple[int, float], ...]


class ODEBlock(nn.Module):
    """Integrate ``field`` over [0, steps·step_size].

    field: an ``nn.Module`` called as ``field(t, x)``; a ``StepwiseField`` supplies
        per-step weights, any other module is an autonomous (shared-weight) field.
    solver: a registered name (``odenet.solvers.method_names()``) or a ``ButcherTableau``.
    steps, step_size: for fixed-step solvers, ``steps`` steps of size ``step_size``; for
        adaptive ones the same horizon, solved under rtol/atol.
    adjoint: adaptive solvers only — gradients by the adjoint method (Chen et al. 2018)
        at O(1) memory instead of backpropagating through the solver.
    residual: ``False`` drops the identity (the plain twin), fixed-step solvers only.
    projection: a module applied after every step (Euler only), e.g. ``nn.ReLU()``.
    max_steps: bound on accepted adaptive steps per solve.

    After a forward pass, ``nfe_forward`` holds the number of field evaluations; after
    the backward pass, ``nfe_backward`` the number of field evaluations (adjoint) or
    differentiated evaluations (backpropagation) it needed.

    x: (batch, …) → same shape (and the same dtype and device).
    """

    def __init__(
        self,
        field: nn.Module,
        solver: str | ButcherTableau | Method = "euler",
        steps: int = 1,
        step_size: float = 1.0,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        adjoint: bool = False,
        residual: bool = True,
        projection: nn.Module | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        super().__init__()
        method = get_method(solver)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
        if method.adaptive:
            for name, tol in (("rtol", rtol), ("atol", atol)):
                if not (math.isfinite(tol) and tol > 0):
                    raise ValueError(f"{name} must be a positive number (e.g. 1e-3), got {tol!r}")
            if not residual:
                raise ValueError(
                    "residual=False (the plain twin) drops the identity from each step and is "
                    f"defined for fixed-step solvers only; {method.name!r} is adaptive"
                )
        else:
            if adjoint:
                raise ValueError(
                    f"adjoint=True needs an adaptive solver; {method.name!r} is fixed-step "
                    "(backpropagation through its loop is exact and cheaper)"
                )
        if projection is not None and method.tableau.stages != 1:
            raise ValueError(
                f"a projection after each step (the post-activation 'basic' block) is a "
                f"projected Euler step, valid with solver='euler' only, not {method.name!r}; "
                "use the pre-activation block for other solvers"
            )
        horizon = steps * float(step_size)
        if isinstance(field, StepwiseField) and not math.isclose(field.horizon, horizon, rel_tol=1e-9):
            raise ValueError(
                f"the field's weights span [0, {field.horizon:g}] but the block integrates over "
                f"[0, {horizon:g}] ({steps} steps of {step_size:g}); choose steps·step_size = {field.horizon:g}"
            )
        self.field = field
        self.method = method
        self.steps = steps
        self.step_size = float(step_size)
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.adjoint = adjoint
        self.residual = residual
        self.projection = projection
        self.max_steps = int(max_steps)
        h = self.step_size
        c, a, _ = method.tableau.arrays()
        self._stages = tuple(
            _Stage(float(c[i]) * h, tuple((j, float(a[i, j]) * h) for j in range(i) if a[i, j] != 0.0))
            for i in range(method.stages)
        )
        # (stage index, bᵢ) for the non-zero weights; h is applied once to the sum.
        self._weights = tuple((i, float(bi)) for i, bi in enumerate(method.tableau.b) if bi != 0.0)
        self.nfe_forward = 0
        self.nfe_backward = 0

    # -- evaluation with other settings -------------------------------------------------
    @property
    def horizon(self) -> float:
        """T in [0, T]: steps · step_size."""
        return self.steps * self.step_size

    @property
    def solver(self) -> str:
        return self.method.name

    def with_solver(
        self,
        solver: str | ButcherTableau | Method | None = None,
        steps: int | None = None,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        adjoint: bool | None = None,
        max_steps: int | None = None,
    ) -> ODEBlock:
        """The same field (the same parameter tensors, nothing copied) solved differently.

        The horizon is kept: with ``steps=m`` the step size becomes horizon / m.
        """
        steps = self.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        method = get_method(self.method if solver is None else solver)
        return ODEBlock(
            self.field,
            solver=method,
            steps=steps,
            step_size=self.horizon / steps,
            rtol=self.rtol if rtol is None else rtol,
            atol=self.atol if atol is None else atol,
            adjoint=(self.adjoint and method.adaptive) if adjoint is None else adjoint,
            residual=self.residual,
            projection=self.projection,
            max_steps=self.max_steps if max_steps is None else max_steps,
        )

    # -- integration -------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        self.nfe_backward = 0
        if self.method.adaptive:
            return self._adaptive(x)
        return self._fixed(x)

    def _field_for_step(self, t: float) -> Callable[[Tensor | float, Tensor], Tensor]:
        # A StepwiseField hands out the weights owning the step's midpoint; any other
        # module is one autonomous field.
        if isinstance(self.field, StepwiseField):
            return self.field.at(t + 0.5 * self.step_size)
        return self.field

    def field_at_step(self, n: int) -> Callable[[Tensor | float, Tensor], Tensor]:
        """The field F_n that governs step n (0-based), called as ``F_n(t, x)``."""
        return self._field_for_step(n * self.step_size)

    def step(self, x: Tensor, n: int) -> Tensor:
        """One fixed step: the state after step n (0-based) from the state x before it.

        Chaining ``step`` for n = 0 … steps − 1 reproduces ``forward`` exactly; probes use
        it to look at the state between blocks.
        """
        if self.method.adaptive:
            raise ValueError(f"step() is defined for fixed-step solvers; {self.method.name!r} is adaptive")
        t = n * self.step_size
        return self._advance(self._field_for_step(t), t, x)

    def _advance(self, f: Callable[[Tensor | float, Tensor], Tensor], t: float, x: Tensor) -> Tensor:
        # Each tableau term is one fused multiply-add, torch.add(a, b, alpha=w): at small
        # sizes the cost of a step is its operator count, so a*b + c as two ops is not free.
        h = self.step_size
        k: list[Tensor] = []
        for stage in self._stages:
            xi = x
            for j, ahij in stage.terms:
                xi = torch.add(xi, k[j], alpha=ahij)
            k.append(f(t + stage.dt, xi))
        weights = self._weights
        if self.residual:
            for i, bi in weights:
                x = torch.add(x, k[i], alpha=h * bi)
        else:
            i0, b0 = weights[0]
            x = k[i0] if b0 == 1.0 else b0 * k[i0]
            for i, bi in weights[1:]:
                x = torch.add(x, k[i], alpha=bi)
        if self.projection is not None:
            x = self.projection(x)
        return x

    def _fixed(self, x: Tensor) -> Tensor:
        h = self.step_size
        for n in range(self.steps):
            t = n * h
            x = self._advance(self._field_for_step(t), t, x)
        self.nfe_forward = self.steps * len(self._stages)
        if x.requires_grad:
            nfe = self.nfe_forward

            def on_backward(grad: Tensor) -> None:
                self.nfe_backward = nfe

            x.register_hook(on_backward)
        return x

    def _pieces(self) -> list[tuple[float, float, nn.Module]]:
        """(t0, t1, field) intervals on which the field is smooth in t.

        Piecewise-constant per-step weights jump at every k·h. An adaptive solver stepping
        across a jump sees an O(1) error its controller can only shrink by rejecting steps,
        and a stage evaluated exactly at t = (k+1)·h would use the next step's weights; so
        each weight set is integrated on its own interval, which is the ODE the discrete
        network defines.
        """
        f = self.field
        if isinstance(f, StepwiseField) and f.interpolation == "constant" and f.steps > 1:
            hs = f.step_size
            return [(k * hs, (k + 1) * hs, f.fields[k]) for k in range(f.steps)]
        return [(0.0, self.horizon, f)]

    def _adaptive(self, x: Tensor) -> Tensor:
        self.nfe_forward = 0
        for t0, t1, field in self._pieces():
            x = self._adaptive_piece(x, t0, t1, field)
        return x

    def _adaptive_piece(self, x: Tensor, t0: float, t1: float, field: nn.Module) -> Tensor:
        counter = _CountingField(field, backprop=not self.adjoint)
        t_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        t = torch.tensor([t0, t1], dtype=t_dtype, device=x.device)
        # step_t makes the last step land on T exactly, so x(T) is a solver step, not
        # torchdiffeq's quartic interpolant past it (whose error can exceed rtol by orders
        # of magnitude for the high-order pairs). The adjoint solve likewise ends on 0.
        options = {"max_num_steps": self.max_steps, "step_t": t[1:]}
        try:
            if self.adjoint:
                params = tuple(p for p in field.parameters() if p.requires_grad)
                out = odeint_adjoint(
                    counter,
                    x,
                    t,
                    rtol=self.rtol,
                    atol=self.atol,
                    method=self.method.name,
                    options=options,
                    adjoint_params=params,
                    adjoint_options={"max_num_steps": self.max_steps, "step_t": t[:1]},
                )
            else:
                out = odeint(counter, x, t, rtol=self.rtol, atol=self.atol, method=self.method.name, options=options)
        except AssertionError as err:
            raise SolverError(_explain(err, self)) from err
        self.nfe_forward += counter.forward_calls
        counter.forward_done = True
        counter.block = self
        return out[-1]

    def extra_repr(self) -> str:
        parts = [f"solver={self.method.name!r}", f"steps={self.steps}", f"step_size={self.step_size:g}"]
        if self.method.adaptive:
            parts += [f"rtol={self.rtol:g}", f"atol={self.atol:g}", f"adjoint={self.adjoint}"]
        if not self.residual:
            parts.append("residual=False")
        return ", ".join(parts)


def _explain(err: AssertionError, block: ODEBlock) -> str:
    msg = str(err)
    if "max_num_steps" in msg:
        return (
            f"{block.method.name} needed more than max_steps={block.max_steps} steps over "
            f"[0, {block.horizon:g}] (rtol={block.rtol:g}, atol={block.atol:g}): the field is stiff "
            "or diverging; loosen rtol/atol, raise max_steps, or use a fixed-step solver"
        )
    if "underflow" in msg:
        return (
            f"{block.method.name}'s step size underflowed over [0, {block.horizon:g}]: the field is "
            "stiff or singular; loosen rtol/atol or use a fixed-step solver"
        )
    if "non-finite" in msg:
        return f"{block.method.name} met a non-finite state (NaN/inf): the field diverged"
    return f"{block.method.name} failed: {msg}"


class _CountingField(nn.Module):
    """Wraps a field for torchdiffeq and counts its evaluations (a Python int, no sync).

    Calls made while ``forward_done`` is False belong to the forward solve. Afterwards,
    calls come from the adjoint solve (backward). With backpropagation the backward pass
    calls nothing; each evaluation whose output receives a gradient is counted by a hook.
    """

    def __init__(self, field: nn.Module, backprop: bool) -> None:
        super().__init__()
        self.field = field
        self.backprop = backprop
        self.forward_calls = 0
        self.forward_done = False
        self.block: ODEBlock | None = None

    def _backward_one(self, grad: Tensor | None = None) -> None:
        if self.block is not None:
            self.block.nfe_backward += 1

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        out = self.field(t, x)
        if not self.forward_done:
            self.forward_calls += 1
            if self.backprop and out.requires_grad:
                out.register_hook(self._backward_one)
        else:
            self._backward_one()
        return out


def ode_blocks(model: nn.Module) -> Iterator[ODEBlock]:
    """Every ``ODEBlock`` inside a model, in registration order."""
    return (m for m in model.modules() if isinstance(m, ODEBlock))


def total_nfe(model: nn.Module) -> tuple[int, int]:
    """(forward, backward) function evaluations of the last pass, summed over blocks."""
    blocks = list(ode_blocks(model))
    return sum(b.nfe_forward for b in blocks), sum(b.nfe_backward for b in blocks)
