"""Vector fields F(t, x): the residual functions of ResNets, called as ``field(t, x)``.

Every field here is an ``nn.Module`` with the torchdiffeq signature ``forward(t, x)``.
A residual block is then one step x + h·F(t, x) of an ODE solver (``odenet.blocks``).

Residual functions
    ``PreActConvField``   BN–ReLU–conv–BN–ReLU–conv (He et al. 2016, "Identity mappings")
    ``BasicConvField``    conv–BN–ReLU–conv–BN (He et al. 2015); the block adds the ReLU
                          after the sum, so it is a projected Euler step
    ``BottleneckField``   pre-activation 1×1, 3×3, 1×1 (He et al. 2016)
    ``PostActBottleneckField``  conv1×1–BN–ReLU–conv3×3–BN–ReLU–conv1×1–BN (He et al.
                          2015, ImageNet ResNet-50/101/152); the block adds the ReLU after
                          the sum, as for ``BasicConvField``
    ``MLPField``          Linear–act–Linear for vector data

Residual forms (``output``): the branch's output is added to the state as it is
(``"linear"``, the pre-activation form of He et al. 2016: x + h·F(x)) or through a ReLU
(``"relu"``: x + h·ReLU(F(x)), the form with a ReLU at the end of the branch that He et
al. 2016, Fig. 4(c), compare and find worse: the update is never negative, so the state
can only grow, coordinate by coordinate, along every step of a method whose weights b
are non-negative). The post-activation form (ReLU *after* the sum, He et al. 2015) is
``BasicConvField`` with the block's projection, not an output option.

Time conditioning (``time=True``) appends t as an extra input channel before every
convolution (or feature before every linear map), as in Chen et al. (2018)'s
``ConcatConv2d``. Normalisation is ``"batch"``, ``"frozen_batch"``, ``"group"``
(GroupNorm with min(32, C) groups, Wu & He 2018) or ``"none"`` (``odenet.norms``, which
also says why batch norm does not belong inside adaptive or shared-weight fields).

How weights vary with depth is ``odenet.depth``'s concern, not this module's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from odenet.knobs import check_choice
from odenet.norms import Norm, make_norm

__all__ = [
    "ACTIVATIONS",
    "OUTPUTS",
    "BasicConvField",
    "BottleneckField",
    "ConcatConv2d",
    "ConcatLinear",
    "MLPField",
    "Norm",
    "PostActBottleneckField",
    "PreActConvField",
    "make_norm",
]


# How the residual branch's output enters the sum: as it is, or through a ReLU.
OUTPUTS = ("linear", "relu")


def _relu_output(output: str) -> bool:
    check_choice("output", output, OUTPUTS)
    return output == "relu"


def _time_like(t: Tensor | float, x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A tensor of value t shaped like x's batch with one channel (no host sync)."""
    if isinstance(t, Tensor):
        return t.to(dtype=x.dtype).expand(shape)
    return x.new_full(shape, float(t))


class ConcatConv2d(nn.Module):
    """A convolution that sees time as an extra input channel (Chen et al. 2018).

    x: (batch, in_channels, H, W) → (batch, out_channels, H', W').
    With ``time=False`` it is a plain ``nn.Conv2d``, so one class serves both.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        bias: bool = True,
        time: bool = True,
    ) -> None:
        super().__init__()
        self.time = time
        self.conv = nn.Conv2d(
            in_channels + int(time), out_channels, kernel_size, stride=stride, padding=padding, bias=bias
        )

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        if self.time:
            tt = _time_like(t, x, (x.shape[0], 1, x.shape[2], x.shape[3]))
            x = torch.cat([tt, x], dim=1)
        return self.conv(x)


class ConcatLinear(nn.Module):
    """A linear map that sees time as an extra input feature. x: (batch, in) → (batch, out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, time: bool = True) -> None:
        super().__init__()
        self.time = time
        self.linear = nn.Linear(in_features + int(time), out_features, bias=bias)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        if self.time:
            x = torch.cat([_time_like(t, x, (x.shape[0], 1)), x], dim=1)
        return self.linear(x)


class PreActConvField(nn.Module):
    """Pre-activation residual function: BN–ReLU–conv3×3–BN–ReLU–conv3×3 (He et al. 2016).

    x: (batch, in_channels, H, W) → (batch, out_channels, H/stride, W/stride). With
    in = out and stride 1 it is a vector field; otherwise it is the residual branch of a
    stage transition, and ``preactivate`` gives the activated input that the shortcut
    of He et al. (2016) also uses. ``final_norm`` adds a third normalisation at the end
    (the ODE function of Chen et al. 2018).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        norm: Norm = "batch",
        time: bool = False,
        bias: bool = False,
        final_norm: bool = False,
        output: str = "linear",
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.relu_output = _relu_output(output)
        self.norm1 = make_norm(norm, in_channels)
        self.conv1 = ConcatConv2d(in_channels, out_channels, 3, stride, 1, bias=bias, time=time)
        self.norm2 = make_norm(norm, out_channels)
        self.conv2 = ConcatConv2d(out_channels, out_channels, 3, 1, 1, bias=bias, time=time)
        self.norm3 = make_norm(norm, out_channels) if final_norm else nn.Identity()

    def preactivate(self, x: Tensor) -> Tensor:
        return torch.relu(self.norm1(x))

    def residual(self, t: Tensor | float, a: Tensor) -> Tensor:
        """The branch after pre-activation: conv–BN–ReLU–conv(–BN)(–ReLU with ``output="relu"``)."""
        out = self.conv1(t, a)
        out = self.norm3(self.conv2(t, torch.relu(self.norm2(out))))
        return torch.relu(out) if self.relu_output else out

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return self.residual(t, self.preactivate(x))


class BasicConvField(nn.Module):
    """Post-activation residual function: conv3×3–BN–ReLU–conv3×3–BN (He et al. 2015).

    x: (batch, in_channels, H, W) → (batch, out_channels, H/stride, W/stride). The
    original block applies a ReLU *after* x + F(x); ``odenet.blocks.ODEBlock`` does that
    with ``projection=nn.ReLU()``, valid with Euler only.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        norm: Norm = "batch",
        time: bool = False,
        bias: bool = False,
        output: str = "linear",
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.relu_output = _relu_output(output)
        self.conv1 = ConcatConv2d(in_channels, out_channels, 3, stride, 1, bias=bias, time=time)
        self.norm1 = make_norm(norm, out_channels)
        self.conv2 = ConcatConv2d(out_channels, out_channels, 3, 1, 1, bias=bias, time=time)
        self.norm2 = make_norm(norm, out_channels)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        out = self.norm2(self.conv2(t, torch.relu(self.norm1(self.conv1(t, x)))))
        return torch.relu(out) if self.relu_output else out


def _bottleneck_width(out_channels: int, expansion: int) -> int:
    """The inner width of a bottleneck, ``out_channels // expansion``; at least 1."""
    width = out_channels // expansion
    if width < 1:
        raise ValueError(f"a bottleneck needs out_channels ≥ {expansion}, got {out_channels}")
    return width


class BottleneckField(nn.Module):
    """Pre-activation bottleneck: BN–ReLU–conv1×1–BN–ReLU–conv3×3–BN–ReLU–conv1×1.

    He et al. (2016). x: (batch, in_channels, H, W) → (batch, out_channels, H/stride,
    W/stride); the inner width is ``out_channels // expansion`` (expansion 4).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        norm: Norm = "batch",
        time: bool = False,
        bias: bool = False,
        output: str = "linear",
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.relu_output = _relu_output(output)
        width = _bottleneck_width(out_channels, self.expansion)
        self.norm1 = make_norm(norm, in_channels)
        self.conv1 = ConcatConv2d(in_channels, width, 1, 1, 0, bias=bias, time=time)
        self.norm2 = make_norm(norm, width)
        self.conv2 = ConcatConv2d(width, width, 3, stride, 1, bias=bias, time=time)
        self.norm3 = make_norm(norm, width)
        self.conv3 = ConcatConv2d(width, out_channels, 1, 1, 0, bias=bias, time=time)

    def preactivate(self, x: Tensor) -> Tensor:
        return torch.relu(self.norm1(x))

    def residual(self, t: Tensor | float, a: Tensor) -> Tensor:
        out = self.conv1(t, a)
        out = self.conv2(t, torch.relu(self.norm2(out)))
        out = self.conv3(t, torch.relu(self.norm3(out)))
        return torch.relu(out) if self.relu_output else out

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return self.residual(t, self.preactivate(x))


class PostActBottleneckField(nn.Module):
    """Post-activation bottleneck: conv1×1–BN–ReLU–conv3×3–BN–ReLU–conv1×1–BN.

    He et al. (2015), Fig. 5 right (ResNet-50/101/152), as torchvision's ``Bottleneck``
    (ResNet v1.5: the stride sits on the 3×3 conv, not on the first 1×1). Like
    ``BasicConvField`` the ReLU after x + F(x) belongs to the block
    (``projection=nn.ReLU()``, a projected Euler step, Euler only).
    x: (batch, in_channels, H, W) → (batch, out_channels, H/stride, W/stride); the inner
    width is ``out_channels // expansion`` (expansion 4).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        norm: Norm = "batch",
        time: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        width = _bottleneck_width(out_channels, self.expansion)
        self.conv1 = ConcatConv2d(in_channels, width, 1, 1, 0, bias=bias, time=time)
        self.norm1 = make_norm(norm, width)
        self.conv2 = ConcatConv2d(width, width, 3, stride, 1, bias=bias, time=time)
        self.norm2 = make_norm(norm, width)
        self.conv3 = ConcatConv2d(width, out_channels, 1, 1, 0, bias=bias, time=time)
        self.norm3 = make_norm(norm, out_channels)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        out = torch.relu(self.norm1(self.conv1(t, x)))
        out = torch.relu(self.norm2(self.conv2(t, out)))
        return self.norm3(self.conv3(t, out))


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "gelu": nn.GELU}
ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)


class MLPField(nn.Module):
    """A two-layer perceptron field for vector data: (norm–)Linear–act–Linear.

    x: (batch, features) → (batch, features). ``hidden`` defaults to ``features``.
    Smooth activations (tanh, softplus) give a field with a continuous Jacobian, which
    the adaptive solvers and the convergence studies prefer.
    """

    def __init__(
        self,
        features: int,
        hidden: int | None = None,
        activation: str = "relu",
        norm: Norm = "none",
        time: bool = False,
        bias: bool = True,
        output: str = "linear",
    ) -> None:
        super().__init__()
        self.relu_output = _relu_output(output)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(_ACTIVATIONS)}")
        hidden = hidden or features
        self.norm = make_norm(norm, features, dims=1)
        self.linear1 = ConcatLinear(features, hidden, bias=bias, time=time)
        self.act = _ACTIVATIONS[activation]()
        self.linear2 = ConcatLinear(hidden, features, bias=bias, time=time)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        out = self.linear2(t, self.act(self.linear1(t, self.norm(x))))
        return torch.relu(out) if self.relu_output else out
