"""ImageNet ResNets: torchvision's parameters, keys and logits; the projected Euler step; errors."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

import odenet
from odenet.errors import ConfigError
from odenet.fields import PostActBottleneckField
from odenet.models import MODELS, ResidualNetwork, Transition
from odenet.models.imagenet import (
    IMAGENET_DEPTHS,
    imagenet_resnet,
    load_torchvision_state_dict,
    torchvision_keys,
    torchvision_state_dict,
)

DEPTHS = list(IMAGENET_DEPTHS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Batches of two small images are too little work for intra-op parallelism to pay, and
    # on a busy machine a parallel convolution waits for its descheduled second thread:
    # one thread runs this file many times faster there. Results are unchanged.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def torchvision_resnet(depth: int, **kwargs) -> nn.Module:
    return getattr(torchvision.models, f"resnet{depth}")(**kwargs)


@torch.no_grad()
def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Batch norms that are not the identity, so eval mode tests statistics and affine maps."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model


def unloaded(depth: int, **kwargs) -> ResidualNetwork:
    """imagenet_resnet(depth) with uninitialised memory: every tensor is about to be loaded."""
    with torch.device("meta"):
        model = imagenet_resnet(depth, **kwargs)
    return model.to_empty(device="cpu")


# -- torchvision's networks -------------------------------------------------------------
@pytest.mark.parametrize(
    ("depth", "expected"),
    # torchvision.models.resnet18 … resnet152 (He et al. 2015, Table 1; ResNet v1.5).
    [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160), (152, 60_192_808)],
)
def test_parameters_and_keys_equal_torchvision(depth, expected):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        ours, theirs = imagenet_resnet(depth), torchvision_resnet(depth)
    assert n_params(ours) == n_params(theirs) == expected
    # The key mapping is a bijection between the state dicts that keeps every shape.
    mine, tv_state = ours.state_dict(), theirs.state_dict()
    keys = torchvision_keys(depth)
    assert set(keys) == set(tv_state)  # every torchvision tensor is used …
    assert sorted(keys.values()) == sorted(mine)  # … and fills exactly one of ours
    assert all(mine[od].shape == tv_state[tv].shape for tv, od in keys.items())


@pytest.mark.parametrize("depth", DEPTHS)
def test_torchvision_weights_give_torchvision_logits_in_eval_mode(depth):
    theirs = randomise_batchnorm(torchvision_resnet(depth)).eval()
    ours = load_torchvision_state_dict(unloaded(depth), theirs.state_dict()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = theirs(x)
        got = ours(x)
    assert got.shape == (2, 1000)
    # The same operations in the same order: equal to float32 rounding (in practice bit for bit).
    torch.testing.assert_close(got, expected, rtol=1.3e-6, atol=1e-5 * expected.abs().max().item())


def test_training_mode_matches_torchvision_forward_backward_and_statistics():
    theirs = randomise_batchnorm(torchvision_resnet(18)).train()
    ours = load_torchvision_state_dict(unloaded(18), theirs.state_dict()).train()
    x = torch.randn(4, 3, 32, 32)
    got, expected = ours(x), theirs(x)
    torch.testing.assert_close(got, expected, rtol=1.3e-6, atol=1e-5)
    got.square().sum().backward()
    expected.square().sum().backward()
    grads = {name: p.grad for name, p in theirs.named_parameters()}
    ours_by_name = dict(ours.named_parameters())
    for tv, od in torchvision_keys(18).items():
        if tv in grads:
            torch.testing.assert_close(ours_by_name[od].grad, grads[tv], rtol=1e-5, atol=1e-6)
    # Batch statistics were gathered identically (running means and variances, counts).
    theirs_state = theirs.state_dict()
    for tv, tensor in torchvision_state_dict(ours).items():
        torch.testing.assert_close(tensor, theirs_state[tv], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("depth", [18, 50])
def test_state_dict_round_trip_into_torchvision(depth):
    ours = randomise_batchnorm(imagenet_resnet(depth)).eval()
    exported = torchvision_state_dict(ours)
    theirs = torchvision_resnet(depth)
    theirs.load_state_dict(exported, strict=True)
    theirs.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1.3e-6, atol=1e-5)
    # And back again: the same tensors under the same names.
    back = torchvision_state_dict(load_torchvision_state_dict(unloaded(depth), theirs.state_dict()))
    assert all(torch.equal(back[k], exported[k]) for k in exported)


def test_structure_is_table_1_with_stride_on_the_bottleneck_3x3():
    with torch.device("meta"):
        model = imagenet_resnet(50)
    stem_conv = model.stem[0]
    assert (stem_conv.kernel_size, stem_conv.stride, stem_conv.padding) == ((7, 7), (2, 2), (3, 3))
    assert isinstance(model.stem[3], nn.MaxPool2d)
    transitions = [m for m in model.body if isinstance(m, Transition)]
    blocks = model.ode_blocks()
    # conv2_x … conv5_x: 3, 4, 6, 3 blocks, each stage opened by a transition (64 → 256).
    assert [b.steps + 1 for b in blocks] == [3, 4, 6, 3] and len(transitions) == 4
    for t, stride in zip(transitions, (1, 2, 2, 2), strict=True):
        field = t.field
        assert isinstance(field, PostActBottleneckField)
        assert field.conv1.conv.stride == (1, 1) and field.conv2.conv.stride == (stride, stride)  # v1.5
        assert t.shortcut[0].stride == (stride, stride)  # type: ignore[index]
    assert all(b.solver == "euler" and b.step_size == 1.0 and isinstance(b.projection, nn.ReLU) for b in blocks)
    assert model.head[2].in_features == 2048


def test_convolutions_are_initialised_as_torchvision_does():
    model = imagenet_resnet(18, num_classes=10)
    w = model.stem[0].weight  # 64·3·7·7 = 9,408 samples
    expected = math.sqrt(2.0 / (64 * 7 * 7))  # Kaiming normal, fan-out, gain √2
    assert abs(w.std().item() / expected - 1) < 0.05  # ≈ 7 standard errors of a std estimate
    assert abs(w.mean().item()) < 5 * expected / math.sqrt(w.numel())
    assert all(
        torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )


# -- the projected Euler step -----------------------------------------------------------
def small(depth: int = 18, **kwargs) -> ResidualNetwork:
    return randomise_batchnorm(imagenet_resnet(depth, num_classes=7, width=8, **kwargs)).eval()


@pytest.mark.parametrize("h", [1.0, 0.5])
@pytest.mark.parametrize("depth", [18, 50])
def test_every_block_is_a_projected_euler_step(depth, h):
    model = small(depth, step_size=h)
    block = model.ode_blocks()[0]
    x = torch.relu(torch.randn(2, block.field.fields[0].conv1.conv.in_channels, 8, 8))
    assert block.horizon == pytest.approx(block.steps * h)
    with torch.no_grad():
        z = x
        for n in range(block.steps):
            z = torch.relu(z + h * block.field_at_step(n)(n * h, z))  # x ← ReLU(x + h·F_n(x))
        torch.testing.assert_close(block(x), z)
        t = next(m for m in model.body if isinstance(m, Transition))
        a = torch.relu(torch.randn(2, t.field.conv1.conv.in_channels, 8, 8))
        torch.testing.assert_close(t(a), torch.relu(t.shortcut(a) + h * t.field(0.0, a)))


def test_refined_euler_takes_smaller_steps_with_the_same_weights_over_the_same_horizon():
    model = small(18)
    refined = model.with_solver("euler", refinement=2)
    for old, new in zip(model.ode_blocks(), refined.ode_blocks(), strict=True):
        assert new.steps == 2 * old.steps and new.step_size == old.step_size / 2 and new.horizon == old.horizon
        assert new.field is old.field and isinstance(new.projection, nn.ReLU)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = refined(x)
        assert logits.shape == (2, 7) and torch.isfinite(logits).all()
        # The first block (two weight sets) as four half steps: F_0, F_0, F_1, F_1.
        block, old = refined.ode_blocks()[0], model.ode_blocks()[0]
        z = torch.relu(torch.randn(2, 8, 8, 8))
        expected = z
        for k in (0, 0, 1, 1):
            expected = torch.relu(expected + 0.5 * old.field.fields[k](0.0, expected))
        torch.testing.assert_close(block(z), expected)


@pytest.mark.parametrize("solver", ["midpoint", "rk4", "dopri5"])
def test_other_solvers_are_refused_because_the_step_is_projected(solver):
    with pytest.raises(ConfigError, match="projected Euler step") as info:
        imagenet_resnet(18, solver=solver)
    assert f"solver={solver!r}" in str(info.value) and "euler" in str(info.value)
    model = small(18)
    with pytest.raises(ConfigError, match="projected Euler step"):
        model.with_solver(solver)


# -- options ----------------------------------------------------------------------------
def test_options_set_classes_channels_and_width():
    model = imagenet_resnet(50, num_classes=5, in_channels=1, width=8).eval()
    assert model.stem[0].in_channels == 1 and model.stem[0].out_channels == 8
    assert model.head[2].in_features == 8 * 8 * 4 and model.head[2].out_features == 5
    with torch.no_grad():
        out = model(torch.randn(3, 1, 40, 40))
    assert out.shape == (3, 5) and torch.isfinite(out).all()


def test_plain_twin_drops_exactly_the_shortcuts():
    with torch.device("meta"):
        plain = imagenet_resnet(18, residual=False)
    # He et al.'s plain-18: ResNet-18 less the three 1×1 projections with their batch norms.
    projections = sum(c * 2 * c + 2 * (2 * c) for c in (64, 128, 256))
    assert n_params(plain) == 11_689_512 - projections
    assert all(t.shortcut is None for t in plain.body if isinstance(t, Transition))
    model = small(18, residual=False)
    block = model.ode_blocks()[0]
    x = torch.relu(torch.randn(2, 8, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(block.step(x, 0), torch.relu(block.field_at_step(0)(0.0, x)))  # ReLU(F(x))
    with pytest.raises(ConfigError, match="no torchvision counterpart"):
        torchvision_state_dict(model)


@pytest.mark.parametrize("depth", [0, 20, 56, 200, True, 50.0, "50"])
def test_bad_depth_names_the_valid_depths(depth):
    with pytest.raises(ConfigError, match="choose one of 18, 34, 50, 101, 152") as info:
        imagenet_resnet(depth)
    assert f"depth={depth!r}" in str(info.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [("num_classes", 0), ("in_channels", -1), ("width", 2.5), ("step_size", 0.0), ("step_size", math.nan)],
)
def test_bad_options_are_config_errors(option, value):
    with pytest.raises(ConfigError, match=option):
        imagenet_resnet(18, **{option: value})


def test_loader_refuses_state_dicts_that_do_not_fit():
    with torch.device("meta"):
        state = torchvision_resnet(18).state_dict()
    missing = {k: v for k, v in state.items() if k != "fc.bias"}
    extra = {**state, "fc.scale": state["fc.bias"]}
    wrong = {k: v for k, v in state.items() if not k.startswith("layer3.1.")}  # 2, 2, 1, 2 blocks
    for bad, says in ((missing, "missing keys"), (extra, "unused keys"), (wrong, "2×2×1×2")):
        with pytest.raises(ConfigError, match=says):
            load_torchvision_state_dict(unloaded(18), bad)
    theirs = torchvision_resnet(18)
    with pytest.raises(RuntimeError, match="size mismatch"):  # torchvision's 1000 classes into 7
        load_torchvision_state_dict(unloaded(18, num_classes=7), theirs.state_dict())


def test_exported_and_registered():
    assert odenet.imagenet_resnet is imagenet_resnet and MODELS["imagenet_resnet"] is imagenet_resnet
    assert odenet.load_torchvision_state_dict is load_torchvision_state_dict
    assert odenet.PostActBottleneckField is PostActBottleneckField
