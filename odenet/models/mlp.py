"""MLP ResNets for vector data (MNIST-1D, concentric spheres, spirals)."""

from __future__ import annotations

from torch import nn

from odenet.blocks import Memory, ODEBlock, check_solver_options
from odenet.depth import WeightSharing, depth_field
from odenet.fields import MLPField
from odenet.models.cifar import check_positive
from odenet.models.common import ResidualNetwork, check_step_size
from odenet.norms import resolve_norm
from odenet.solvers import Method, get_method
from odenet.tableaus import ButcherTableau

__all__ = ["mlp_resnet"]


def mlp_resnet(
    in_features: int,
    num_classes: int,
    depth: int = 8,
    width: int = 64,
    hidden: int | None = None,
    solver: str | ButcherTableau | Method = "euler",
    step_size: float = 1.0,
    residual: bool = True,
    *,
    weights: WeightSharing = "per_step",
    activation: str = "relu",
    norm: str = "auto",
    time: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    adjoint: bool = False,
    output: str = "linear",
    memory: Memory | None = None,
) -> ResidualNetwork:
    """Linear lift to ``width`` features → ``depth`` steps of an MLP field → linear classifier.

    depth: the number of residual blocks (solver steps).
    norm: ``"auto"`` (default) is no normalisation; ``"batch"``, ``"frozen_batch"``,
        ``"group"`` put one before the first linear map (``odenet.norms``).
    output: ``"linear"`` (x + h·F(x)) or ``"relu"`` (x + h·ReLU(F(x)); ``odenet.fields``).
    memory: backprop, checkpoint or adjoint (``odenet.blocks.MEMORY``); the ``depth`` steps
        are one ``ODEBlock``, so checkpointing stores about √depth states.
    x: (batch, in_features) → logits (batch, num_classes).
    """
    check_positive(in_features=in_features, num_classes=num_classes, depth=depth, width=width)
    h = check_step_size(step_size)
    method = get_method(solver)
    memory = check_solver_options(method, residual=residual, adjoint=adjoint, memory=memory)
    norm = resolve_norm(
        norm, adaptive=method.adaptive, autonomous=weights == "shared", adjoint=memory == "adjoint", default="none"
    )

    def make() -> nn.Module:
        return MLPField(width, hidden, activation=activation, norm=norm, time=time, output=output)  # type: ignore[arg-type]

    block = ODEBlock(
        depth_field(make, depth, depth * h, weights),
        method,
        steps=depth,
        step_size=h,
        rtol=rtol,
        atol=atol,
        memory=memory,
        residual=residual,
    )
    return ResidualNetwork(nn.Linear(in_features, width), nn.Sequential(block), nn.Linear(width, num_classes))
