"""The ImageNet ResNets of He et al. (2015) as projected Euler discretisations.

ResNet-18/34/50/101/152 (He et al. 2015, Table 1), layer for layer torchvision's
``resnet18`` … ``resnet152`` (ResNet v1.5: a bottleneck's stride sits on its 3×3 conv):

    stem   conv7×7/2 (width) – BN – ReLU – max-pool 3×3/2
    body   four stages of n₁…n₄ blocks at widths w, 2w, 4w, 8w (×4 for bottlenecks),
           strides 1, 2, 2, 2
    head   global average pooling – linear classifier

Every block is post-activation, x ← ReLU(x + h·F_k(x)): one Euler step of size h on the
field F_k (``BasicConvField`` for 18/34, ``PostActBottleneckField`` for 50+), followed by
the projection onto x ≥ 0 that the ReLU is. Within a stage the blocks are the steps of one
``ODEBlock`` with per-step weights; the first block of a stage that changes width or
resolution is a ``Transition`` whose shortcut is a 1×1 projection with batch norm
(option B). With h = 1 (the default) the network *is* torchvision's: the same parameters
(11,689,512 for ResNet-18 … 60,192,808 for ResNet-152) and, after
``load_torchvision_state_dict``, the same logits.

``torchvision_keys`` is the key mapping (torchvision name → odenet name); it holds for
any ``width`` and ``num_classes``:

    conv1, bn1                         stem.0, stem.1
    layer{s}.0.* of a stage that       body.{i}.field.{conv,norm}{j}.*, and
      changes shape                    downsample.{0,1} → body.{i}.shortcut.{0,1}
    layer{s}.{b}.* (the other blocks)  body.{i}.field.fields.{k}.{conv,norm}{j}.*
    fc                                 head.2

where convolutions of a field are ``ConcatConv2d`` (``….conv1.conv.weight``) and
bn{j} becomes norm{j}. Buffers (running statistics, ``num_batches_tracked``) map with
their batch norms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from odenet.blocks import ODEBlock
from odenet.depth import depth_field
from odenet.errors import ConfigError, literal
from odenet.fields import BasicConvField, PostActBottleneckField
from odenet.models.cifar import check_positive
from odenet.models.common import ResidualNetwork, Transition, check_step_size
from odenet.norms import make_norm
from odenet.solvers import Method, get_method
from odenet.tableaus import ButcherTableau

__all__ = [
    "IMAGENET_DEPTHS",
    "check_imagenet_depth",
    "check_imagenet_solver",
    "imagenet_resnet",
    "load_torchvision_state_dict",
    "torchvision_keys",
    "torchvision_state_dict",
]

# He et al. (2015), Table 1: the block and the number of blocks in conv2_x … conv5_x.
IMAGENET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
_FIELDS: dict[str, type[BasicConvField] | type[PostActBottleneckField]] = {
    "basic": BasicConvField,
    "bottleneck": PostActBottleneckField,
}
_LAYERS = {"basic": 2, "bottleneck": 3}  # convolutions (and batch norms) per block
_BATCHNORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def check_imagenet_depth(depth: object) -> tuple[str, tuple[int, int, int, int]]:
    """(block, blocks per stage) of a depth of Table 1; a ``ConfigError`` naming the valid ones otherwise."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth not in IMAGENET_DEPTHS:
        valid = ", ".join(str(d) for d in IMAGENET_DEPTHS)
        raise ConfigError(
            "{depth} is not a depth of the ImageNet ResNets of He et al. (2015); choose one of " + valid,
            depth=depth,
        )
    return IMAGENET_DEPTHS[depth]


def check_imagenet_solver(method: Method) -> None:
    """Euler only: every block puts a ReLU after the sum, a projected Euler step."""
    if method.tableau.stages != 1:
        raise ConfigError(
            "the ImageNet ResNets apply a ReLU after each sum, x ← ReLU(x + h·F(x)), a projected Euler "
            "step that is valid with the euler solver only, not {solver}; refine Euler instead "
            "(more, smaller steps), or use a pre-activation network (cifar_resnet) for other solvers",
            solver=method.name,
        )


@dataclass(frozen=True)
class _Stage:
    """One stage of the body: the shape change of its first block and its number of blocks."""

    index: int  # 1 … 4, torchvision's layer{index}
    in_channels: int
    out_channels: int
    stride: int
    blocks: int

    @property
    def transition(self) -> bool:
        """Whether the first block changes the shape (a ``Transition``, not an ODE step)."""
        return self.in_channels != self.out_channels or self.stride != 1


def _stages(block: str, blocks: tuple[int, ...], width: int) -> list[_Stage]:
    expansion = PostActBottleneckField.expansion if block == "bottleneck" else 1
    out, channels = [], width
    for s, n in enumerate(blocks):
        cout = width * 2**s * expansion
        out.append(_Stage(s + 1, channels, cout, 1 if s == 0 else 2, n))
        channels = cout
    return out


def imagenet_resnet(
    depth: int,
    solver: str | ButcherTableau | Method = "euler",
    residual: bool = True,
    step_size: float = 1.0,
    num_classes: int = 1000,
    in_channels: int = 3,
    width: int = 64,
) -> ResidualNetwork:
    """ResNet-``depth`` of He et al. (2015), Table 1, as Euler steps of size ``step_size``.

    depth: 18, 34 (basic blocks) or 50, 101, 152 (bottleneck blocks).
    solver: ``"euler"`` (the only one: each block is x ← ReLU(x + h·F_k(x)), a projected
        Euler step; any other solver is refused).
    residual: ``False`` builds the plain twin (no shortcuts, no projections: He et al.
        2015's plain networks, x ← ReLU(F_k(x))).
    step_size: h. With h = 1 (default) the network is torchvision's ``resnet{depth}``;
        any other h scales every residual branch, x ← ReLU(x + h·F_k(x)) and
        ReLU(P(x) + h·F(x)) at transitions, and is no longer torchvision's network.
    num_classes, in_channels: the classifier's outputs and the image channels.
    width: the stem's channels, w (64 in He et al.); stages have w, 2w, 4w, 8w (×4 for
        bottlenecks).

    Convolutions are initialised as torchvision does (He et al. 2015b: normal, fan-out,
    gain √2), batch norms to the identity, the classifier by PyTorch's default.

    Re-solving: ``model.with_solver("euler", refinement=m)`` keeps each block's weights
    and horizon and takes m Euler steps of h/m with them, the ReLU after each, the
    transitions unchanged: the same network on an m-times finer grid (batch-norm
    statistics stay those of the original grid unless ``recalibrate`` is given). Other
    solvers are refused there too (``ODEBlock``'s rule for a projected step).

    x: (batch, in_channels, H, W) → logits (batch, num_classes).
    """
    block, blocks = check_imagenet_depth(depth)
    method = get_method(solver)
    check_imagenet_solver(method)
    h = check_step_size(step_size)
    check_positive(num_classes=num_classes, in_channels=in_channels, width=width)
    field_cls = _FIELDS[block]

    stem = nn.Sequential(
        nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
        make_norm("batch", width),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    stages = _stages(block, blocks, width)
    body: list[nn.Module] = []
    for stage in stages:
        steps = stage.blocks
        if stage.transition:
            shortcut = nn.Sequential(
                nn.Conv2d(stage.in_channels, stage.out_channels, 1, stride=stage.stride, bias=False),
                make_norm("batch", stage.out_channels),
            )
            field = field_cls(stage.in_channels, stage.out_channels, stride=stage.stride)
            body.append(Transition(field, shortcut, h, residual, nn.ReLU()))
            steps -= 1

        def step_field(c: int = stage.out_channels) -> nn.Module:
            return field_cls(c, c)

        # Every depth of Table 1 has ≥ 2 blocks per stage, so each stage has an ODE block.
        body.append(
            ODEBlock(
                depth_field(step_field, steps, steps * h),
                solver=method,
                steps=steps,
                step_size=h,
                residual=residual,
                projection=nn.ReLU(),
            )
        )
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(stages[-1].out_channels, num_classes))
    model = ResidualNetwork(stem, nn.Sequential(*body), head)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):  # torchvision's initialisation (He et al. 2015b)
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


# -- torchvision's weights -------------------------------------------------------------
def torchvision_keys(depth: int) -> dict[str, str]:
    """torchvision ``resnet{depth}``'s state-dict keys → the keys of ``imagenet_resnet(depth)``.

    One entry per tensor (parameters and batch-norm buffers), for any width and number of
    classes; the module docstring shows the pattern.
    """
    block, blocks = check_imagenet_depth(depth)
    keys: dict[str, str] = {}

    def conv(tv: str, od: str) -> None:
        keys[f"{tv}.weight"] = f"{od}.weight"

    def norm(tv: str, od: str) -> None:
        keys.update({f"{tv}.{leaf}": f"{od}.{leaf}" for leaf in _BATCHNORM})

    def field(tv: str, od: str) -> None:
        for j in range(1, _LAYERS[block] + 1):
            conv(f"{tv}.conv{j}", f"{od}.conv{j}.conv")  # ConcatConv2d wraps an nn.Conv2d
            norm(f"{tv}.bn{j}", f"{od}.norm{j}")

    conv("conv1", "stem.0")
    norm("bn1", "stem.1")
    i = 0  # index into the body: transitions and ODE blocks in order
    for stage in _stages(block, blocks, 64):
        layer, first = f"layer{stage.index}", 0
        if stage.transition:
            field(f"{layer}.0", f"body.{i}.field")
            conv(f"{layer}.0.downsample.0", f"body.{i}.shortcut.0")
            norm(f"{layer}.0.downsample.1", f"body.{i}.shortcut.1")
            i, first = i + 1, 1
        for b in range(first, stage.blocks):
            field(f"{layer}.{b}", f"body.{i}.field.fields.{b - first}")
        i += 1
    keys["fc.weight"], keys["fc.bias"] = "head.2.weight", "head.2.bias"
    return keys


_BLOCK_KEY = re.compile(r"layer([1-4])\.(\d+)\.conv1\.weight")


def _torchvision_depth(state_dict: Mapping[str, Tensor]) -> int:
    """The depth of the torchvision ResNet a state dict comes from, read off its keys."""
    counts = [0, 0, 0, 0]
    for key in state_dict:
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            s, b = int(match[1]) - 1, int(match[2])
            counts[s] = max(counts[s], b + 1)
    block = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    for depth, architecture in IMAGENET_DEPTHS.items():
        if architecture == (block, tuple(counts)):
            return depth
    found = "×".join(str(n) for n in counts)
    raise ConfigError(
        literal(
            f"the state dict is not one of torchvision's resnet18, 34, 50, 101, 152: it has {block} "
            f"blocks {found} per stage (He et al. 2015, Table 1, lists the valid ones)"
        )
    )


def load_torchvision_state_dict(model: ResidualNetwork, state_dict: Mapping[str, Tensor]) -> ResidualNetwork:
    """Load a torchvision ``resnet{18,34,50,101,152}`` state dict into ``imagenet_resnet``, strictly.

    The depth is read from the keys; every key must be used and every tensor of ``model``
    filled (``torchvision_keys``), else a ``ConfigError`` (keys) or torch's
    ``RuntimeError`` (shapes, e.g. another width or number of classes). With h = 1, eval
    mode gives torchvision's logits. Returns ``model``.
    """
    keys = torchvision_keys(_torchvision_depth(state_dict))
    unused, missing = sorted(set(state_dict) - set(keys)), sorted(set(keys) - set(state_dict))
    if unused or missing:
        raise ConfigError(
            literal(
                "the state dict is not torchvision's ResNet layout: "
                f"unused keys {unused[:5]}, missing keys {missing[:5]}"
            )
        )
    model.load_state_dict({keys[k]: v for k, v in state_dict.items()}, strict=True)
    return model


def torchvision_state_dict(model: ResidualNetwork) -> dict[str, Tensor]:
    """``model``'s tensors under torchvision's keys, loadable into ``resnet{depth}`` strictly.

    The inverse of ``load_torchvision_state_dict``. The plain twin (``residual=False``)
    has no shortcut projections, so it has no torchvision counterpart.
    """
    own = model.state_dict()
    for depth in IMAGENET_DEPTHS:
        keys = torchvision_keys(depth)
        if set(keys.values()) == set(own):
            return {tv: own[od] for tv, od in keys.items()}
    raise ConfigError(
        "the model's tensors are not laid out as an imagenet_resnet with shortcuts "
        "(the plain twin, residual=False, has no torchvision counterpart)"
    )
