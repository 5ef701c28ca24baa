"""Wide ResNets (Zagoruyko & Komodakis 2016) and the ReLU-output residual form."""

from __future__ import annotations

import itertools

import pytest
import torch

from odenet.blocks import ODEBlock
from odenet.errors import ConfigError
from odenet.experiment import ModelConfig, parameter_estimate
from odenet.fields import BottleneckField, MLPField, PreActConvField
from odenet.models import cifar_resnet, mlp_resnet, wide_resnet


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _wrn_count(depth: int, k: int, classes: int = 10) -> int:
    """WRN-depth-k counted by hand from the architecture of Zagoruyko & Komodakis (2016),
    Table 1 and their code: a 3×3 stem conv 3→16 (no bias); per stage n = (depth−4)/6
    pre-activation blocks BN–ReLU–conv3×3–BN–ReLU–conv3×3 (no biases, BN with scale
    and shift), the first of each stage with a 1×1 projection shortcut where the width or
    resolution changes (not in stage 1 when k = 1); a final BN and a
    linear classifier with bias."""
    n = (depth - 4) // 6
    total = 3 * 16 * 9
    c_in = 16
    for c in (16 * k, 32 * k, 64 * k):
        for block in range(n):
            cin = c_in if block == 0 else c
            total += 2 * cin + 9 * cin * c + 2 * c + 9 * c * c
            if block == 0 and (cin != c or c > 16 * k):
                total += cin * c  # a projection where the width or the resolution changes
        c_in = c
    return total + 2 * c_in + c_in * classes + classes


# Zagoruyko & Komodakis (2016), Table 2: the depth-and-width grid on CIFAR-10, in millions.
PAPER = {(40, 1): 0.6, (40, 2): 2.2, (40, 4): 8.9, (40, 8): 35.7, (28, 10): 36.5,
         (28, 12): 52.5, (22, 8): 17.2, (22, 10): 26.8, (16, 8): 11.0, (16, 10): 17.1}  # fmt: skip


@pytest.mark.parametrize(("depth", "k"), list(PAPER))
def test_wide_resnet_parameter_counts_are_the_published_ones(depth, k):
    with torch.device("meta"):
        model = wide_resnet(depth, k)
    count = _count(model)
    assert count == _wrn_count(depth, k)
    assert round(count / 1e6, 1) == PAPER[depth, k]
    if (depth, k) == (28, 10):
        assert count == 36_479_194


def test_wrn_is_cifar_resnet_with_a_widening_factor():
    torch.manual_seed(0)
    a = wide_resnet(16, 2)
    torch.manual_seed(0)
    b = cifar_resnet(14, block="preact", shortcut="B", width=16, widen=2)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    a.eval(), b.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("depth", [15, 26, 8, 0])
def test_a_wide_resnet_depth_that_is_not_6n_plus_4_names_valid_ones(depth):
    with pytest.raises(ConfigError, match=r"6n\+4.*try"):
        wide_resnet(depth, 4)


def test_widen_multiplies_the_stage_widths_and_the_estimate_follows():
    for k in (1, 2, 4):
        with torch.device("meta"):
            model = cifar_resnet(20, widen=k)
        exact = _count(model)
        estimate = parameter_estimate(ModelConfig(depth=20, widen=k), "image")
        assert abs(estimate - exact) / exact < 0.03  # norms, projections and the head are left out
        assert model.head[-1].in_features == 64 * k
    config = ModelConfig(depth=3, widen=3, width=8)
    assert parameter_estimate(config, "vector") == 2 * 3 * 24 * 24


def test_widen_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match="widen"):
        ModelConfig(widen=0)
    with pytest.raises(ConfigError, match="branch_output"):
        ModelConfig(branch_output="tanh")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "field",
    [
        lambda output: MLPField(6, 12, output=output),
        lambda output: PreActConvField(4, output=output),
        lambda output: BottleneckField(8, output=output),
    ],
)
def test_relu_output_is_the_relu_of_the_linear_branch(field):
    torch.manual_seed(1)
    linear = field("linear").eval()
    torch.manual_seed(1)
    relu = field("relu").eval()
    x = torch.randn(3, 6) if isinstance(linear, MLPField) else torch.randn(3, linear.norm1.num_features, 5, 5)
    assert torch.equal(relu(0.0, x), torch.relu(linear(0.0, x)))
    assert (linear(0.0, x) < 0).any()  # so the ReLU changes something


@pytest.mark.parametrize("solver", ["euler", "midpoint", "heun", "rk4"])
def test_with_a_relu_output_the_state_never_decreases(solver):
    """x + h·Σ b_i ReLU(F(·)) ≥ x coordinate-wise for every tableau with b ≥ 0: the
    ReLU-output form can only grow the state (He et al. 2016, Fig. 4(c); the seed's second form)."""
    torch.manual_seed(0)
    model = mlp_resnet(10, 3, depth=6, width=16, solver=solver, step_size=0.5, output="relu").eval()
    block: ODEBlock = model.body[0]
    assert all(b >= 0 for b in block.method.tableau.b)
    x = model.stem(torch.randn(64, 10))
    states = [x]
    for n in range(block.steps):
        states.append(block.step(states[-1], n))
    for before, after in itertools.pairwise(states):
        assert (after >= before).all()
    assert (states[-1] > states[0]).any()
    torch.manual_seed(0)
    linear = mlp_resnet(10, 3, depth=6, width=16, solver=solver, step_size=0.5).eval()
    y = linear.stem(torch.randn(64, 10))
    z = linear.body[0].step(y, 0)
    assert (z < y).any()  # the linear form does decrease some coordinates


def test_relu_output_conv_net_grows_inside_its_ode_blocks():
    torch.manual_seed(0)
    model = cifar_resnet(20, output="relu").eval()
    x = torch.randn(4, 3, 16, 16)
    checked = 0

    def visit(i, unit, z):
        nonlocal checked
        out = unit(z)
        if unit.kind == "step":
            assert (out >= z).all()
            checked += 1
        return out

    from odenet.models.common import walk

    walk(model, x, visit)
    assert checked == 3 * 3 - 2  # every step but the two stage transitions
