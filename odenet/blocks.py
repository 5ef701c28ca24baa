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

import contextlib
import functools
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from odenet.adaptive import Counts, SolverError, Tolerances, shape_error, solve
from odenet.adjoint import solve_fixed_adjoint
from odenet.depth import StepwiseField
from odenet.errors import NAME_ONLY, ConfigError
from odenet.norms import running_stats_kept
from odenet.solvers import Method, get_method
from odenet.tableaus import ButcherTableau

__all__ = [
    "MEMORY",
    "Memory",
    "ODEBlock",
    "SolverError",
    "check_solver_options",
    "check_step_size",
    "check_steps",
    "check_tolerances",
    "ode_blocks",
    "resolve_memory",
    "total_nfe",
]

Memory = Literal["backprop", "checkpoint", "adjoint"]
# How a block pays for its gradient, defined once: backprop stores every step's
# activations (memory ∝ N), checkpoint stores the input of about √N segments and
# recomputes one segment at a time in the backward pass (∝ √N, the same gradient),
# adjoint solves the adjoint ODE backwards (Chen et al. 2018): no stored activations,
# but the gradient of the continuous problem, not of the discrete network.
MEMORY: tuple[Memory, ...] = get_args(Memory)

# Default bound on adaptive steps per forward pass: far more than a well-conditioned
# block needs (dozens), few enough that a stiff field fails in seconds, not hours.
DEFAULT_MAX_STEPS = 10_000


# -- the block's rules: stated once here, called by every layer above -------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_step_size(step_size: Any) -> float:
    """h as a float; a ``ConfigError`` unless it is a positive finite number."""
    if not (_is_number(step_size) and math.isfinite(step_size) and step_size > 0):
        raise ConfigError(
            "{step_size} is not a step size: give a positive finite number (h = 1 is the classic ResNet)",
            step_size=step_size,
        )
    return float(step_size)


def check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("{steps} is not a number of steps: give a positive integer", steps=steps)
    return steps


def check_tolerances(rtol: Any, atol: Any) -> None:
    """rtol and atol of an adaptive solve: positive finite numbers."""
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not (_is_number(tol) and math.isfinite(tol) and tol > 0):
            raise ConfigError("{" + name + "} is not a tolerance: give a positive number such as 1e-3", **{name: tol})


def resolve_memory(memory: str | None = None, adjoint: bool = False) -> Memory:
    """The memory mode of a block: ``memory`` itself, or ``"adjoint"`` when only ``adjoint=True`` is given.

    ``adjoint=True`` is the older spelling of ``memory="adjoint"``; giving it with another
    mode is a contradiction.
    """
    if memory is None:
        return "adjoint" if adjoint else "backprop"
    if memory not in MEMORY:
        raise ConfigError(
            "{memory} is not a memory mode; choose backprop (store every step), checkpoint (recompute "
            "segments of steps, about sqrt(N) memory, exact gradients) or adjoint (the continuous adjoint)",
            memory=memory,
        )
    if adjoint and memory != "adjoint":
        raise ConfigError(
            "{adjoint} is the older spelling of the adjoint memory mode, but {memory} was given: give one of the two",
            adjoint=True,
            memory=memory,
        )
    return memory  # type: ignore[return-value]


def check_solver_options(
    method: Method,
    *,
    residual: bool = True,
    adjoint: bool = False,
    memory: str | None = None,
    projected: bool = False,
) -> Memory:
    """What a solver admits, and the memory mode it resolves to.

    The plain twin needs fixed steps; checkpointing recomputes fixed steps; the adjoint
    method solves an ODE backwards in time, so it needs a flow: not the plain twin, not a
    step followed by a projection (the post-activation 'basic' block).
    """
    mode = resolve_memory(memory, adjoint)
    if method.adaptive and not residual:
        raise ConfigError(
            "{residual} (the plain twin) drops the identity from each step and is defined for "
            "fixed-step solvers only; {solver} is adaptive: choose a fixed-step solver",
            residual=False,
            solver=method.name,
        )
    if mode == "checkpoint" and method.adaptive:
        raise ConfigError(
            "{memory} recomputes segments of fixed steps; {solver} is adaptive: use the adjoint "
            "memory mode for memory that does not grow with the number of steps, or backprop",
            memory=mode,
            solver=method.name,
        )
    if mode == "adjoint" and not residual:
        raise ConfigError(
            "{memory} solves the ODE backwards in time; the plain twin {residual} is not an ODE "
            "flow: use the checkpoint memory mode to save memory with exact gradients",
            memory=mode,
            residual=False,
        )
    if mode == "adjoint" and projected:
        raise ConfigError(
            "{memory} solves the ODE backwards in time; a projection after every step (the "
            "post-activation 'basic' block) is not an ODE flow: use the preact block, or the "
            "checkpoint memory mode",
            memory=mode,
        )
    return mode


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
    memory: how the backward pass is paid for (``MEMORY``). ``"backprop"`` stores every
        step; ``"checkpoint"`` (fixed-step solvers) stores the input of about √N segments
        of the N steps and recomputes one segment at a time during the backward pass with
        ``torch.utils.checkpoint``: the same gradient, bit for bit, in memory ∝ √N (batch-
        norm statistics are not updated twice). ``"adjoint"`` solves the adjoint ODE
        backwards in time through torchdiffeq's ``odeint_adjoint`` (Chen et al. 2018):
        for an adaptive solver under rtol/atol; for a fixed-step solver with the block's
        own tableau on its own grid. That is the gradient of the *continuous* problem,
        which differs from the discrete network's by O(h^p) and more where the backward
        reconstruction of the state is unstable (Gholami et al. 2019, ANODE). One solve
        per weight set: a shared-weight field stores nothing per step, per-step weights
        store two states per step (not the activations inside the field).
    adjoint: ``True`` is the older spelling of ``memory="adjoint"``.
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
        memory: Memory | None = None,
    ) -> None:
        super().__init__()
        method = get_method(solver)
        steps = check_steps(steps)
        h = check_step_size(step_size)
        if method.adaptive:
            check_tolerances(rtol, atol)
        mode = check_solver_options(
            method, residual=residual, adjoint=adjoint, memory=memory, projected=projection is not None
        )
        if projection is not None and method.tableau.stages != 1:
            raise ConfigError(
                "a {projection} after each step (the post-activation 'basic' block) is a projected "
                "Euler step, valid with solver='euler' only, not {solver}; use the pre-activation "
                "block for other solvers",
                projection=NAME_ONLY,
                solver=method.name,
            )
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ConfigError("{max_steps} is not a bound on steps: give a positive integer", max_steps=max_steps)
        if not callable(field):
            raise ConfigError("{field} is not a vector field: give an nn.Module called as field(t, x)", field=field)
        _check_signature(field.fields[0] if isinstance(field, StepwiseField) else field)
        horizon = steps * h
        if isinstance(field, StepwiseField) and not math.isclose(field.horizon, horizon, rel_tol=1e-9):
            raise ConfigError(
                f"the field's weights span [0, {field.horizon:g}] but the block integrates over "
                f"[0, {horizon:g}] ({steps} steps of {h:g}); choose steps·step_size = {field.horizon:g}"
            )
        self.field = field
        self.method = method
        self.steps = steps
        self.step_size = float(step_size)
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.memory: Memory = mode
        self.residual = residual
        self.projection = projection
        self.max_steps = int(max_steps)
        c, a, _ = method.tableau.arrays()
        self._stages = tuple(
            _Stage(float(c[i]) * h, tuple((j, float(a[i, j]) * h) for j in range(i) if a[i, j] != 0.0))
            for i in range(method.stages)
        )
        # (stage index, bᵢ) for the non-zero weights; h is applied once to the sum.
        self._weights = tuple((i, float(bi)) for i, bi in enumerate(method.tableau.b) if bi != 0.0)
        self._counts = Counts()
        self.compiled_steps = False  # see compile_steps
        # t of every stage of every step, per (device, dtype): built once, indexed per stage,
        # so fields get t as a 0-d tensor (torchdiffeq's convention) without a copy per step.
        self._times: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, ...]]] = {}

    # -- evaluation with other settings -------------------------------------------------
    @property
    def horizon(self) -> float:
        """T in [0, T]: steps · step_size."""
        return self.steps * self.step_size

    @property
    def solver(self) -> str:
        return self.method.name

    @property
    def compilable(self) -> str | None:
        """Why ``torch.compile`` cannot trace this block, or ``None`` when it can.

        A fixed-step loop is a fixed sequence of tensor operations; an adaptive solve
        chooses its steps by reading the error estimate back on the host, and the adjoint
        runs torchdiffeq's own autograd function with the same kind of loop.
        """
        if self.method.adaptive:
            return f"{self.method.name} is adaptive: its step sizes are chosen on the host"
        if self.memory == "adjoint":
            return "memory='adjoint' runs torchdiffeq's adjoint loop, which reads the time grid on the host"
        return None

    @property
    def adjoint(self) -> bool:
        """Gradients by the adjoint method (``memory == "adjoint"``)."""
        return self.memory == "adjoint"

    @property
    def nfe_forward(self) -> int:
        """Field evaluations of the last forward pass."""
        return self._counts.forward

    @nfe_forward.setter
    def nfe_forward(self, value: int) -> None:
        self._counts.forward = value

    @property
    def nfe_backward(self) -> int:
        """Field evaluations (adjoint) or differentiated evaluations (backprop) of the last backward pass."""
        return self._counts.backward

    @nfe_backward.setter
    def nfe_backward(self, value: int) -> None:
        self._counts.backward = value

    def with_solver(
        self,
        solver: str | ButcherTableau | Method | None = None,
        steps: int | None = None,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        adjoint: bool | None = None,
        max_steps: int | None = None,
        memory: Memory | None = None,
    ) -> ODEBlock:
        """The same field (the same parameter tensors, nothing copied) solved differently.

        The horizon is kept: with ``steps=m`` the step size becomes horizon / m. The memory
        mode is kept where the new solver admits it; otherwise it becomes backprop:
        checkpointing for an adaptive solver, and an adaptive block's adjoint for a fixed-
        step solver (whose loop backpropagates exactly and cheaply).
        """
        steps = check_steps(self.steps if steps is None else steps)
        method = get_method(self.method if solver is None else solver)
        if memory is None:
            if adjoint is not None:
                memory = "adjoint" if adjoint else ("backprop" if self.memory == "adjoint" else self.memory)
            elif self.memory == "adjoint" and self.method.adaptive and not method.adaptive:
                memory = "backprop"
            else:
                memory = self.memory
            if memory == "checkpoint" and method.adaptive:
                memory = "backprop"
        return ODEBlock(
            self.field,
            solver=method,
            steps=steps,
            step_size=self.horizon / steps,
            rtol=self.rtol if rtol is None else rtol,
            atol=self.atol if atol is None else atol,
            residual=self.residual,
            projection=self.projection,
            max_steps=self.max_steps if max_steps is None else max_steps,
            memory=memory,
        )

    # -- integration -------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        self._counts.backward = 0  # not the property: nn.Module.__setattr__ costs µs per call
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
        return self._advance(self._field_for_step(t), self._time_table(x)[n], x)

    def _time_table(self, x: Tensor) -> list[tuple[Tensor, ...]]:
        """The stage times t + cᵢh of every step as 0-d tensors on x's device, in x's dtype.

        One (steps, stages) tensor is made per device and dtype and split into views once,
        so the loop indexes a Python list: no allocation or copy per stage.
        """
        key = (x.device, x.dtype)
        table = self._times.get(key)
        if table is None:
            h = self.step_size
            rows = [[n * h + stage.dt for stage in self._stages] for n in range(self.steps)]
            dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
            grid = torch.tensor(rows, dtype=dtype, device=x.device)
            table = self._times[key] = [row.unbind(0) for row in grid.unbind(0)]
        return table

    def _advance(self, f: Callable[[Tensor | float, Tensor], Tensor], times: tuple[Tensor, ...], x: Tensor) -> Tensor:
        # Each tableau term is one fused multiply-add, torch.add(a, b, alpha=w): at small
        # sizes the cost of a step is its operator count, so a*b + c as two ops is not free.
        h = self.step_size
        k: list[Tensor] = []
        for i, stage in enumerate(self._stages):
            xi = x
            for j, ahij in stage.terms:
                xi = torch.add(xi, k[j], alpha=ahij)
            k.append(f(times[i], xi))
        if k[0].shape != x.shape:  # a shape comparison, no device work
            raise shape_error(k[0], x)
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
        times = self._time_table(x)
        differentiated = torch.is_grad_enabled() and (x.requires_grad or _any_requires_grad(self))
        if self.memory == "checkpoint" and differentiated:
            h = self.step_size
            for steps in self.segments():
                fields = {id(f): f for f in (self._field_for_step(n * h) for n in steps)}.values()
                # The forward pass runs as usual; the recomputation in the backward pass
                # normalises with the same batch statistics but must not update the
                # running ones a second time.
                modules = [f for f in fields if isinstance(f, nn.Module)]
                recompute = functools.partial(_recompute_contexts, modules)
                segment_times = times[steps.start : steps.stop]  # only the segment's: torch flattens its inputs
                x = checkpoint(self._run, x, steps, segment_times, use_reentrant=False, context_fn=recompute)
        elif self.memory == "adjoint" and differentiated:
            x = solve_fixed_adjoint(
                x, self._pieces(), self._stages, self._weights, self.step_size, self.rtol, self.atol
            )
        else:
            x = self._run(x, range(self.steps), times)
        self._counts.forward = self.steps * len(self._stages)
        if x.requires_grad:
            nfe = self.nfe_forward
            if torch.compiler.is_compiling():
                # A hook that mutates the block breaks torch.compile's graph; the count a
                # fixed-step backward pass will make is known now.
                self.nfe_backward = nfe
            else:

                def on_backward(grad: Tensor) -> None:
                    self.nfe_backward = nfe

                x.register_hook(on_backward)
        return x

    def _run(self, x: Tensor, steps: range, times: list[tuple[Tensor, ...]]) -> Tensor:
        """Steps ``steps`` from x; ``times[i]`` holds the stage times of the i-th of them."""
        h = self.step_size
        advance = _compiled_advance() if self.compiled_steps else ODEBlock._advance
        for n, stage_times in zip(steps, times, strict=True):
            x = advance(self, self._field_for_step(n * h), stage_times, x)
        return x

    def compile_steps(self, enabled: bool = True) -> ODEBlock:
        """Run each fixed step (its stages, the field calls and the tableau's sums) as one
        ``torch.compile`` graph; returns the block.

        The graph is traced once per tableau, step size and state shape and reused by
        every step and every block that matches: a field's parameters are inputs of the
        graph, so per-step weights and the next network of a study share it. Compiling
        a step rather than the unrolled loop keeps compile time independent of depth
        (seconds, where tracing 100 unrolled rk4 steps takes minutes on a CPU) and keeps
        most of the fusion. Dynamo gives up after ``torch._dynamo.config.recompile_limit``
        distinct graphs and runs further ones eagerly. Fixed-step, non-adjoint blocks
        only (``compilable``).
        """
        if enabled and self.compilable is not None:
            raise ConfigError(f"this block cannot be compiled: {self.compilable}")
        self.compiled_steps = enabled
        return self

    def segments(self) -> list[range]:
        """The steps of each checkpointed segment: about √N segments of about √N steps.

        Peak memory is then the √N stored segment inputs plus one segment's activations,
        both ∝ √N (Chen et al. 2016, "Training deep nets with sublinear memory cost").
        """
        count = max(1, round(math.sqrt(self.steps)))
        size = math.ceil(self.steps / count)
        return [range(start, min(start + size, self.steps)) for start in range(0, self.steps, size)]

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
        how = Tolerances(self.method.name, self.rtol, self.atol, self.adjoint, self.max_steps)
        return solve(x, self._pieces(), how, self._counts)

    def extra_repr(self) -> str:
        parts = [f"solver={self.method.name!r}", f"steps={self.steps}", f"step_size={self.step_size:g}"]
        if self.method.adaptive:
            parts += [f"rtol={self.rtol:g}", f"atol={self.atol:g}"]
        if self.memory != "backprop":
            parts.append(f"memory={self.memory!r}")
        if not self.residual:
            parts.append("residual=False")
        return ", ".join(parts)


def _check_signature(field: Any) -> None:
    """A field is called as field(t, x); one whose forward takes only x fails here, not mid-solve."""
    forward = field.forward if isinstance(field, nn.Module) else field
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):  # builtins and C callables: nothing to check
        return
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        names = ", ".join(p.name for p in positional) or "nothing"
        raise ConfigError(
            "{field} is called as field(t, x), torchdiffeq's convention, but its forward takes ("
            + names
            + "); add the time argument: def forward(self, t, x) (t may be ignored)",
            field=type(field).__name__,
        )


@functools.cache
def _compiled_advance() -> Callable[..., Tensor]:
    """``ODEBlock._advance`` under ``torch.compile``, made once per process."""
    return torch.compile(ODEBlock._advance)


def _any_requires_grad(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _recompute_contexts(
    modules: list[nn.Module],
) -> tuple[contextlib.AbstractContextManager[None], contextlib.AbstractContextManager[None]]:
    """``torch.utils.checkpoint``'s (forward, recompute) contexts for a segment of ``modules``."""
    return contextlib.nullcontext(), running_stats_kept(modules)


def ode_blocks(model: nn.Module) -> Iterator[ODEBlock]:
    """Every ``ODEBlock`` inside a model, in registration order."""
    return (m for m in model.modules() if isinstance(m, ODEBlock))


def total_nfe(model: nn.Module) -> tuple[int, int]:
    """(forward, backward) function evaluations of the last pass, summed over blocks."""
    blocks = list(ode_blocks(model))
    return sum(b.nfe_forward for b in blocks), sum(b.nfe_backward for b in blocks)
