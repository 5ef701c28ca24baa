"""Pieces shared by the model families: the network shell, stage transitions, shortcuts."""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from odenet.blocks import ODEBlock, ode_blocks

__all__ = ["ResidualNetwork", "Transition", "ZeroPadShortcut", "check_step_size"]


def check_step_size(step_size: float) -> float:
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)):
        raise ValueError(f"step_size must be a number, got {step_size!r}")
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be positive and finite (h = 1 is the classic ResNet), got {step_size}")
    return float(step_size)


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
            out = field.residual(0.0, x)
        else:
            out = self.field(0.0, x)
        if self.shortcut is not None:
            out = self.shortcut(x) + (out if self.step_size == 1.0 else self.step_size * out)
        if self.projection is not None:
            out = self.projection(out)
        return out
