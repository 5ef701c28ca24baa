"""The MNIST ODE-Net of Chen et al. (2018) and its six-block ResNet twin.

Both follow torchdiffeq's ``examples/odenet_mnist.py``: a convolutional downsampling
stem (3×3 conv, then two 4×4 stride-2 convs, GroupNorm + ReLU between), a feature
part at 64 channels, and a GroupNorm–ReLU–pool–linear head. The ODE-Net's feature part
is one time-conditioned field (GroupNorm–ReLU–ConcatConv–GroupNorm–ReLU–ConcatConv–
GroupNorm) integrated over [0, 1] by an adaptive solver: 208,266 parameters. The twin
replaces it with six pre-activation residual blocks (bias-free convs, one weight set
each), i.e. six Euler steps: 576,778 parameters (Chen et al. 2018, Table 1: 0.22M and
0.60M).
"""

from __future__ import annotations

from torch import nn

from odenet.blocks import Memory, ODEBlock
from odenet.depth import StepwiseField
from odenet.fields import PreActConvField, make_norm
from odenet.models.common import ResidualNetwork, check_step_size
from odenet.solvers import Method
from odenet.tableaus import ButcherTableau

__all__ = ["chen_odenet", "chen_resnet"]


def _stem(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, 1),
        make_norm("group", width),
        nn.ReLU(),
        nn.Conv2d(width, width, 4, 2, 1),
        make_norm("group", width),
        nn.ReLU(),
        nn.Conv2d(width, width, 4, 2, 1),
    )


def _head(width: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        make_norm("group", width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)
    )


def chen_odenet(
    num_classes: int = 10,
    in_channels: int = 1,
    solver: str | ButcherTableau | Method = "dopri5",
    rtol: float = 1e-3,
    atol: float = 1e-3,
    adjoint: bool = False,
    steps: int = 1,
    step_size: float = 1.0,
    width: int = 64,
    memory: Memory | None = None,
) -> ResidualNetwork:
    """The ODE-Net of Chen et al. (2018): one shared, time-conditioned field on [0, 1].

    Defaults are those of torchdiffeq's example (dopri5, tol 1e-3). ``memory`` (or
    ``adjoint=True``) as in ``ODEBlock``. x: (batch, in_channels, H, W) → logits (batch,
    num_classes).
    """
    field = PreActConvField(width, norm="group", time=True, bias=True, final_norm=True)
    block = ODEBlock(
        field, solver, steps=steps, step_size=check_step_size(step_size), rtol=rtol, atol=atol, adjoint=adjoint,
        memory=memory,
    )  # fmt: skip
    return ResidualNetwork(_stem(in_channels, width), nn.Sequential(block), _head(width, num_classes))


def chen_resnet(
    num_classes: int = 10,
    in_channels: int = 1,
    blocks: int = 6,
    solver: str | ButcherTableau | Method = "euler",
    step_size: float = 1.0,
    residual: bool = True,
    width: int = 64,
) -> ResidualNetwork:
    """The ResNet twin of the ODE-Net: ``blocks`` pre-activation blocks = Euler steps."""
    h = check_step_size(step_size)
    field = StepwiseField(lambda: PreActConvField(width, norm="group"), blocks, blocks * h)
    block = ODEBlock(field, solver, steps=blocks, step_size=h, residual=residual)
    return ResidualNetwork(_stem(in_channels, width), nn.Sequential(block), _head(width, num_classes))
