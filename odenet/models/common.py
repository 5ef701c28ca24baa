"""Pieces shared by the model families: the network shell, its traversal, stage transitions, shortcuts.

A ``ResidualNetwork`` is stem → body → head, and its body is a sequence of residual
units: the steps of ``ODEBlock``s and the stage ``Transition``s between them.
``units`` and ``walk`` are the one traversal of those units; probes and studies use
them instead of walking the body themselves.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from odenet.blocks import ODEBlock, check_step_size, ode_blocks
from odenet.depth import StepwiseField
from odenet.norms import calibrate_batchnorm
from odenet.solvers import Method
from odenet.tableaus import ButcherTableau

__all__ = ["ResidualNetwork", "Transition", "Unit", "ZeroPadShortcut", "check_step_size", "units", "walk"]


class ResidualNetwork(nn.Module):
    """stem → body (ODE blocks and stage transitions) → head.

    x: (batch, …) → logits (batch, num_classes).
    """

    def __init__(self, stem: nn.Module, body: nn.Sequential, head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.body = body
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(self.stem(x)))

    def ode_blocks(self) -> list[ODEBlock]:
        return list(ode_blocks(self))

    def with_blocks(self, swap: Callable[[ODEBlock], ODEBlock]) -> ResidualNetwork:
        """The same network (shared modules) with every ODE block replaced by ``swap(block)``."""
        body = nn.Sequential(*[swap(m) if isinstance(m, ODEBlock) else m for m in self.body])
        return ResidualNetwork(self.stem, body, self.head).train(self.training)

    def with_solver(
        self,
        solver: str | ButcherTableau | Method | None = None,
        refinement: float = 1.0,
        *,
        recalibrate: Tensor | None = None,
        **options: Any,
    ) -> ResidualNetwork:
        """The trained weights re-solved: every ODE block with ``solver`` at ``refinement`` × its steps.

        ``options`` go to ``ODEBlock.with_solver`` (rtol, atol, adjoint, max_steps). Without
        ``recalibrate`` the result shares every module with this network, batch-norm
        statistics included; those were gathered on the *training* solver's trajectory,
        which is not the new solver's. With ``recalibrate`` (training inputs) the result is
        a copy whose batch-norm statistics are recomputed on those inputs under the new
        solver (``odenet.norms.calibrate_batchnorm``); the weights are the same values and
        this network is left untouched.
        """

        def swap(block: ODEBlock) -> ODEBlock:
            return block.with_solver(solver, steps=max(1, round(refinement * block.steps)), **options)

        if recalibrate is None:
            return self.with_blocks(swap)
        net = copy.deepcopy(self).with_blocks(swap)
        return calibrate_batchnorm(net, recalibrate)  # type: ignore[return-value]


class ZeroPadShortcut(nn.Module):
    """Option A of He et al. (2015): subsample by ``stride`` and pad new channels with zeros.

    Parameter-free. x: (batch, in, H, W) → (batch, out, H/stride, W/stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class Transition(nn.Module):
    """A stage transition: x ↦ P(x) + h·F(x), with a strided, widening residual function.

    Not an ODE step (the state changes shape), so it is the same for every solver. For
    pre-activation fields (He et al. 2016) both branches see the activated input
    ReLU(BN(x)); for the post-activation basic block a ReLU follows the sum.
    ``residual=False`` drops the shortcut (the plain twin).
    """

    def __init__(
        self,
        field: nn.Module,
        shortcut: nn.Module,
        step_size: float = 1.0,
        residual: bool = True,
        projection: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.field = field
        self.shortcut = shortcut if residual else None
        self.step_size = step_size
        self.residual = residual
        self.projection = projection
        self.preactivated = hasattr(field, "preactivate")

    def forward(self, x: Tensor) -> Tensor:
        if self.preactivated:
            field: Any = self.field
            x = field.preactivate(x)
            out = field.residual(x.new_zeros(()), x)
        else:
            out = self.field(x.new_zeros(()), x)
        if self.shortcut is not None:
            out = self.shortcut(x) + (out if self.step_size == 1.0 else self.step_size * out)
        if self.projection is not None:
            out = self.projection(out)
        return out


@dataclass(frozen=True)
class Unit:
    """One residual unit in forward order.

    kind: ``"step"`` (step ``step`` of an ``ODEBlock``), ``"block"`` (a whole ``ODEBlock``,
    when the traversal does not split blocks into steps) or ``"transition"``.
    """

    kind: Literal["step", "block", "transition"]
    module: nn.Module
    step: int = 0

    def __call__(self, x: Tensor) -> Tensor:
        if self.kind == "step":
            block: ODEBlock = self.module  # type: ignore[assignment]
            return block.step(x, self.step)
        return self.module(x)

    @property
    def method(self) -> Method | None:
        return self.module.method if isinstance(self.module, ODEBlock) else None

    @property
    def step_size(self) -> float:
        return float(getattr(self.module, "step_size", 1.0))

    @property
    def time(self) -> float:
        """t at the start of the step."""
        return self.step * self.step_size

    def field(self) -> Callable[[Tensor | float, Tensor], Tensor] | None:
        """F_k of a step (None for a transition, whose state changes shape, or a whole block)."""
        if self.kind == "step":
            return self.module.field_at_step(self.step)  # type: ignore[operator]
        return None

    def weights(self) -> nn.Module | None:
        """The module holding this unit's own weights; None when they are shared by all steps."""
        if isinstance(self.module, Transition):
            return self.module
        if self.kind != "step":
            return None
        field = self.module.field  # type: ignore[union-attr]
        if isinstance(field, StepwiseField):
            return field.fields[field.index(self.time + 0.5 * self.step_size)]
        return None


def _network(model: nn.Module) -> ResidualNetwork:
    if not isinstance(model, ResidualNetwork):
        raise ValueError(f"this needs an odenet ResidualNetwork (stem, body, head), not {type(model).__name__}")
    return model


def units(model: nn.Module, steps: bool = True) -> list[Unit]:
    """The residual units of a ``ResidualNetwork`` in forward order.

    steps: split every ``ODEBlock`` into its steps (for an adaptive block these name the
    weights of each step, but cannot be run one by one); ``False`` gives one unit per block.
    """
    out: list[Unit] = []
    for module in _network(model).body:
        if isinstance(module, (ODEBlock, Transition)):
            out += _units_of(module, steps, runnable=False)
    return out


Visit = Callable[[int, Unit, Tensor], Tensor]


def walk(model: nn.Module, x: Tensor, visit: Visit | None = None, steps: bool = True) -> Tensor:
    """stem → every unit (through ``visit(i, unit, x)``, which returns its output) → head.

    Without ``visit`` each unit is simply applied, which equals ``model(x)``. An adaptive
    block is one unit (it has no states between steps). Modules of the body that are not
    residual units (none in odenet's own models) are applied as is.
    x: network inputs (batch, …) → logits (batch, classes).
    """
    net = _network(model)
    apply: Visit = visit or (lambda i, unit, z: unit(z))
    x = net.stem(x)
    i = 0
    for module in net.body:
        if isinstance(module, (ODEBlock, Transition)):
            for unit in _units_of(module, steps, runnable=True):
                x = apply(i, unit, x)
                i += 1
        else:
            x = module(x)
    return net.head(x)


def _units_of(module: nn.Module, steps: bool, runnable: bool) -> list[Unit]:
    if isinstance(module, Transition):
        return [Unit("transition", module)]
    block: ODEBlock = module  # type: ignore[assignment]
    if steps and not (runnable and block.method.adaptive):
        return [Unit("step", block, n) for n in range(block.steps)]
    return [Unit("block", block)]
