"""How a field's weights vary with depth (time).

A discrete ResNet has one weight set per block: the vector field F_k changes from step
to step. ``StepwiseField`` holds those n weight sets laid out on [0, horizon] and
answers two questions:

* ``at(t)`` — which weights govern the step whose midpoint is t. odenet's fixed-step
  loop asks once per step and uses that field for *every* stage of the step, so an RK4
  network on its native grid uses exactly step k's weights in all four stages (and on a
  refined grid, the weights of the original step the sub-step lies in).
* ``forward(t, x)`` — the continuous-time field an adaptive solver sees.

``interpolation="constant"`` makes the weights piecewise constant in t (weight set k on
[k·h, (k+1)·h)); ``"linear"`` interpolates them linearly between the step midpoints, a
continuous-in-depth parametrisation in the sense of Queiruga et al. (2020), "Continuous-
in-depth neural networks", so the same trained weights can be integrated by another
solver or another number of steps.

An autonomous ODE (one shared weight set) needs no wrapper: any field is one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["Interpolation", "StepwiseField", "WeightSharing", "depth_field"]

Interpolation = Literal["constant", "linear"]
WeightSharing = Literal["per_step", "shared", "interpolated"]

# A midpoint t computed in floating point may land a hair below a grid point; this
# keeps index(t) on the intended side for grids of up to ~10⁶ steps.
_GRID_EPS = 1e-9


class StepwiseField(nn.Module):
    """n weight sets of one field architecture laid out over [0, horizon].

    make_field: builds one field (called n times, so every step gets fresh weights).
    steps: number of weight sets n (the number of blocks of the discrete ResNet).
    horizon: the time interval [0, horizon] the weights span; step k owns
        [k·horizon/n, (k+1)·horizon/n).
    interpolation: ``"constant"`` or ``"linear"`` (see module docstring).
    """

    def __init__(
        self,
        make_field: Callable[[], nn.Module],
        steps: int,
        horizon: float,
        interpolation: Interpolation = "constant",
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"a stepwise field needs steps ≥ 1, got {steps}")
        if not (horizon > 0 and math.isfinite(horizon)):
            raise ValueError(f"horizon must be a positive number, got {horizon}")
        if interpolation not in ("constant", "linear"):
            raise ValueError(f"interpolation must be 'constant' or 'linear', got {interpolation!r}")
        self.steps = steps
        self.horizon = float(horizon)
        self.interpolation = interpolation
        self.fields = nn.ModuleList(make_field() for _ in range(steps))

    @property
    def step_size(self) -> float:
        """The step size h of the native grid: horizon / steps."""
        return self.horizon / self.steps

    def index(self, t: float) -> int:
        """The weight set that owns time t (clamped to [0, steps − 1])."""
        k = math.floor(t / self.step_size + _GRID_EPS)
        return min(max(k, 0), self.steps - 1)

    def at(self, t: float) -> Callable[[Tensor | float, Tensor], Tensor]:
        """The field with weights frozen at time t (used for every stage of one step).

        On the native grid (t a step midpoint) this is exactly step k's module.
        """
        if self.interpolation == "constant" or self.steps == 1:
            return self.fields[self.index(t)]
        # Linear: nodes at the step midpoints (k + 1/2)·h, clamped at both ends.
        s = min(max(t / self.step_size - 0.5, 0.0), self.steps - 1.0)
        k = min(math.floor(s), self.steps - 2)
        w = s - k
        if w <= _GRID_EPS:
            return self.fields[k]
        if w >= 1.0 - _GRID_EPS:
            return self.fields[k + 1]
        return _Interpolated(self.fields[k], self.fields[k + 1], w)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        # An adaptive solver passes t as a 0-d tensor: reading it is one host sync per
        # evaluation, which torchdiffeq's step-size control performs anyway.
        return self.at(float(t.detach()) if isinstance(t, Tensor) else float(t))(t, x)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, horizon={self.horizon:g}, interpolation={self.interpolation!r}"


class _Interpolated:
    """(1 − w)·θ_k + w·θ_{k+1}, evaluated with k's architecture (buffers too)."""

    def __init__(self, left: nn.Module, right: nn.Module, w: float) -> None:
        self.left, self.right, self.w = left, right, w

    def __call__(self, t: Tensor | float, x: Tensor) -> Tensor:
        w = self.w
        right: dict[str, Tensor] = dict(self.right.named_parameters())
        right.update(self.right.named_buffers())
        mixed = {}
        for name, value in [*self.left.named_parameters(), *self.left.named_buffers()]:
            if value.is_floating_point():
                mixed[name] = value.lerp(right[name], w)
            else:  # e.g. BatchNorm's num_batches_tracked
                mixed[name] = value
        return functional_call(self.left, mixed, (t, x))


def depth_field(
    make_field: Callable[[], nn.Module],
    steps: int,
    horizon: float,
    weights: WeightSharing = "per_step",
) -> nn.Module:
    """One field for an ODE block, with weights that vary with depth as asked.

    ``"per_step"``: n independent weight sets, piecewise constant in t (a discrete ResNet).
    ``"shared"``: one weight set for every step (an autonomous ODE, as in Chen et al. 2018).
    ``"interpolated"``: n weight sets, linear in t between step midpoints.
    """
    if weights == "shared":
        return make_field()
    if weights == "per_step":
        return StepwiseField(make_field, steps, horizon, "constant")
    if weights == "interpolated":
        return StepwiseField(make_field, steps, horizon, "linear")
    raise ValueError(f"unknown weight sharing {weights!r}; choose per_step, shared or interpolated")
