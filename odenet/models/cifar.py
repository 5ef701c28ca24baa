"""The CIFAR ResNets of He et al. as ODE discretisations.

Depth 6n+2 (basic, preact) or 9n+2 (bottleneck): a 3×3 stem, three stages of n blocks
at widths w, 2w, 4w (×4 for bottleneck), global average pooling and a linear classifier.
Within a stage the blocks are the steps of one ``ODEBlock``; the first block of a stage
that changes the width or resolution is a ``Transition`` (shortcut option A: zero-pad
identity; B: 1×1 projection).

With ``block="basic", shortcut="A"`` the parameter counts are those of He et al. (2015),
Table 6: 0.27M (20), 0.46M (32), 0.66M (44), 0.85M (56), 1.7M (110), 19.4M (1202).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from odenet.blocks import Memory, ODEBlock, check_solver_options
from odenet.depth import WeightSharing, depth_field
from odenet.errors import ConfigError
from odenet.fields import BasicConvField, BottleneckField, PreActConvField
from odenet.models.common import ResidualNetwork, Transition, ZeroPadShortcut, check_step_size
from odenet.norms import Norm, make_norm, resolve_norm
from odenet.solvers import Method, get_method
from odenet.tableaus import ButcherTableau

__all__ = [
    "BLOCKS",
    "SHORTCUTS",
    "blocks_per_stage",
    "check_block",
    "check_positive",
    "cifar_resnet",
    "valid_depths",
    "wide_resnet",
]

Block = Literal["basic", "preact", "bottleneck"]
BLOCKS: dict[str, tuple[type[nn.Module], int]] = {
    # name: (field class, layers per block — depth is layers·3n + 2)
    "basic": (BasicConvField, 2),
    "preact": (PreActConvField, 2),
    "bottleneck": (BottleneckField, 3),
}


SHORTCUTS = ("A", "B")


def check_block(block: str, method: Method | None = None, shortcut: str = "A") -> None:
    """The block family is known, its shortcut too, and the basic block gets Euler."""
    if block not in BLOCKS:
        raise ConfigError("{block} is not a residual block; choose one of: " + ", ".join(BLOCKS), block=block)
    if shortcut not in SHORTCUTS:
        raise ConfigError(
            "{shortcut} is not a shortcut: choose 'A' (zero-padding identity) or 'B' (1×1 projection)",
            shortcut=shortcut,
        )
    if block == "basic" and method is not None and method.tableau.stages != 1:
        raise ConfigError(
            "{block} applies a ReLU after each sum (a projected Euler step) and is valid with the "
            "euler solver only, not {solver}; the pre-activation block (preact) takes any solver",
            block=block,
            solver=method.name,
        )


def check_positive(**values: object) -> None:
    """Sizes (widths, classes, channels, depths of MLPs): positive integers."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            mention: dict[str, Any] = {name: value}
            raise ConfigError("{" + name + "} is not a positive integer", **mention)


def valid_depths(block: str = "preact", up_to: int = 1202) -> list[int]:
    """Depths the family admits: 6n+2 (basic, preact) or 9n+2 (bottleneck), n ≥ 1."""
    per = 3 * BLOCKS[block][1]
    return list(range(per + 2, up_to + 1, per))


def blocks_per_stage(depth: int, block: str) -> int:
    """n for a depth of 6n+2 (9n+2 for bottleneck); a ``ConfigError`` naming valid depths otherwise."""
    check_block(block)
    per = 3 * BLOCKS[block][1]
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < per + 2 or (depth - 2) % per:
        form = f"{per}n+2"
        if isinstance(depth, int) and not isinstance(depth, bool) and depth >= 1:
            below = max(per + 2, depth - (depth - 2) % per)
            above = below + per if below < depth else below
            hint = f"; nearest valid depths are {below} and {above}" if below != above else f"; try {below}"
        else:
            hint = f"; the smallest is {per + 2}"
        raise ConfigError(f"{{depth}} is not {form} (n ≥ 1) for {{block}}{hint}", depth=depth, block=block)
    return (depth - 2) // per


def cifar_resnet(
    depth: int,
    solver: str | ButcherTableau | Method = "euler",
    block: Block = "preact",
    residual: bool = True,
    step_size: float = 1.0,
    shortcut: Literal["A", "B"] = "A",
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 16,
    *,
    widen: int = 1,
    output: str = "linear",
    weights: WeightSharing = "per_step",
    norm: Norm = "auto",
    time: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    adjoint: bool = False,
    memory: Memory | None = None,
) -> ResidualNetwork:
    """A CIFAR ResNet whose blocks are steps of ``solver`` with step size ``step_size``.

    depth: 6n+2 for ``"basic"``/``"preact"``, 9n+2 for ``"bottleneck"``.
    block: ``"preact"`` (He et al. 2016; x + h·F(x) is exactly an Euler step),
        ``"basic"`` (He et al. 2015; ReLU after the sum — a projected Euler step, so
        Euler only), ``"bottleneck"`` (pre-activation 1×1/3×3/1×1).
    residual: ``False`` builds the plain twin (no skip connections, He et al. 2015).
    width, widen: the stem has ``width`` channels, the three stages ``widen``·``width``
        times 1, 2, 4 (×4 for bottleneck). ``widen`` is the widening factor k of Wide
        ResNets (Zagoruyko & Komodakis 2016); with k > 1 the first stage opens with a
        transition from ``width`` to k·``width`` channels (``wide_resnet``).
    output: ``"linear"`` (x + h·F(x)) or ``"relu"`` (x + h·ReLU(F(x)), the state never
        decreases; ``odenet.fields``).
    weights: ``"per_step"`` (a discrete ResNet), ``"shared"`` (one field per stage, an
        autonomous ODE) or ``"interpolated"`` (continuous in depth).
    norm: ``"auto"`` (default) is batch norm in a discrete ResNet and GroupNorm when the
        solver is adaptive or the weights are shared, where batch-norm running statistics
        are gathered over every field call (rejected steps, the adjoint's backward solve)
        rather than over the forward trajectory: ``odenet.norms`` explains. ``"batch"``
        there is allowed but must be asked for. ``"frozen_batch"`` normalises the ODE
        fields with statistics frozen between calibrations (a fixed field); stem,
        transitions and head then use ordinary batch norm. ``"group"``, ``"none"``.
    memory: how every ODE block pays for its gradient (``odenet.blocks.MEMORY``):
        backprop, checkpoint (√N memory, the same gradient) or adjoint (the continuous
        adjoint; ``adjoint=True`` is its older spelling).
    x: (batch, in_channels, H, W) → logits (batch, num_classes).
    """
    method = get_method(solver)
    check_block(block, method, shortcut)
    memory = check_solver_options(method, residual=residual, adjoint=adjoint, memory=memory, projected=block == "basic")
    n = blocks_per_stage(depth, block)
    h = check_step_size(step_size)
    check_positive(num_classes=num_classes, in_channels=in_channels, width=width, widen=widen)

    inner = resolve_norm(norm, adaptive=method.adaptive, autonomous=weights == "shared", adjoint=memory == "adjoint")
    outer = "batch" if inner == "frozen_batch" else inner  # stem, transitions, head
    field_cls, _ = BLOCKS[block]
    expansion = BottleneckField.expansion if block == "bottleneck" else 1
    post = block == "basic"

    def field(cin: int, cout: int, stride: int = 1, norm: str = inner) -> nn.Module:
        return field_cls(cin, cout, stride=stride, norm=norm, time=time, output=output)

    def projection() -> nn.Module | None:
        return nn.ReLU() if post else None

    stem: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False)]
    if post:
        stem += [make_norm(outer, width), nn.ReLU()]

    body: list[nn.Module] = []
    channels = width
    for stage in range(3):
        out = width * widen * 2**stage * expansion
        stride = 1 if stage == 0 else 2
        steps = n
        if channels != out or stride != 1:
            if shortcut == "A":
                sc: nn.Module = ZeroPadShortcut(channels, out, stride)
            else:
                sc = nn.Conv2d(channels, out, 1, stride=stride, bias=False)
                if post:
                    sc = nn.Sequential(sc, make_norm(outer, out))
            body.append(Transition(field(channels, out, stride, outer), sc, h, residual, projection()))
            steps -= 1
            channels = out
        if steps:

            def step_field(c: int = channels) -> nn.Module:
                return field(c, c)

            body.append(
                ODEBlock(
                    depth_field(step_field, steps, steps * h, weights),
                    solver=method,
                    steps=steps,
                    step_size=h,
                    rtol=rtol,
                    atol=atol,
                    memory=memory,
                    residual=residual,
                    projection=projection(),
                )
            )

    head: list[nn.Module] = []
    if not post:  # pre-activation nets end with BN–ReLU before pooling (He et al. 2016)
        head += [make_norm(outer, channels), nn.ReLU()]
    head += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return ResidualNetwork(nn.Sequential(*stem), nn.Sequential(*body), nn.Sequential(*head))


def wide_resnet(
    depth: int = 28,
    widen: int = 10,
    num_classes: int = 10,
    solver: str | ButcherTableau | Method = "euler",
    step_size: float = 1.0,
    residual: bool = True,
    in_channels: int = 3,
    **options: Any,
) -> ResidualNetwork:
    """WRN-``depth``-``widen`` of Zagoruyko & Komodakis (2016), "Wide Residual Networks".

    depth = 6n+4 in the paper's count (n pre-activation basic blocks per stage; the 4
    counts the stem convolution, the classifier and the two strided projections): 16,
    22, 28, 40, … The stem has 16 channels, the stages 16k, 32k, 64k, and every stage
    opens with a 1×1 projection shortcut on the activated input (option B), as in the
    authors' code; dropout between the convolutions (their optional variant) is left
    out. The same network as ``cifar_resnet(depth − 2, block="preact", shortcut="B",
    width=16, widen=k)``, whose depth counts layers as He et al. do. WRN-28-10 has
    36,479,194 parameters on CIFAR-10 (the paper's Table 1 says 36.5M); ``options`` go
    to ``cifar_resnet`` (weights, norm, output, …).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        near = max(10, depth - (depth - 4) % 6) if isinstance(depth, int) and depth >= 10 else 10
        raise ConfigError(
            "{depth} is not 6n+4 (n ≥ 1), the depth of a Wide ResNet; try " + f"{near} or {near + 6}", depth=depth
        )
    return cifar_resnet(
        depth - 2, solver, "preact", residual, step_size, "B", num_classes, in_channels, 16, widen=widen, **options
    )
