"""Memory modes of ODE blocks: checkpoint (exact, √N) and the fixed-step continuous adjoint."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import odenet
from odenet import ODEBlock
from odenet.errors import ConfigError
from odenet.experiment import ModelConfig
from odenet.memory import saved_activation_peak
from odenet.models import cifar_resnet, mlp_resnet


def _grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()]


def test_checkpoint_gives_backprops_gradient_and_batchnorm_statistics_bit_for_bit():
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    results = {}
    for memory in ("backprop", "checkpoint"):
        torch.manual_seed(0)
        model = cifar_resnet(20, solver="rk4", memory=memory).train()
        results[memory] = _grads(model, x)
    (y0, g0, b0), (y1, g1, b1) = results["backprop"], results["checkpoint"]
    assert torch.equal(y0, y1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))
    # the recomputation in the backward pass does not update running statistics twice
    assert all(torch.equal(a, b) for a, b in zip(b0, b1, strict=True))


@pytest.mark.parametrize("steps", [1, 2, 7, 16, 50, 101])
def test_checkpoint_segments_partition_the_steps_into_about_sqrt_n(steps):
    block = ODEBlock(odenet.MLPField(3, 4), "euler", steps=steps, step_size=1 / steps, memory="checkpoint")
    segments = block.segments()
    assert [n for seg in segments for n in seg] == list(range(steps))
    assert abs(len(segments) - math.sqrt(steps)) <= 1
    assert max(len(s) for s in segments) <= math.ceil(math.sqrt(steps)) + 1


def test_checkpoint_stores_about_sqrt_n_and_backprop_n():
    """Saved-for-backward peak (deterministic): ×4 steps is ×4 for backprop, ≈×2 for checkpoint."""
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))

    def peak(memory: str, depth: int) -> int:
        torch.manual_seed(0)
        return saved_activation_peak(mlp_resnet(16, 4, depth=depth, width=32, memory=memory), x, y)

    back = peak("backprop", 256) / peak("backprop", 64)
    check = peak("checkpoint", 256) / peak("checkpoint", 64)
    assert 3.8 < back < 4.1
    assert 1.6 < check < 2.2
    assert peak("checkpoint", 256) < peak("backprop", 256) / 10


def _smooth_field() -> nn.Module:
    torch.manual_seed(0)
    return odenet.MLPField(4, 8, activation="tanh").double()


@pytest.mark.parametrize("solver, order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_adjoint_differs_from_backprop_at_the_methods_order(solver, order):
    """The continuous adjoint on the same grid vs the discrete gradient: the gap is O(h^p)."""
    field = _smooth_field()
    x0 = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gaps = []
    for steps in (4, 8, 16, 32):
        grads = {}
        for memory in ("backprop", "adjoint"):
            block = ODEBlock(field, solver, steps=steps, step_size=2.0 / steps, memory=memory)
            x = x0.clone().requires_grad_(True)
            out = block(x)
            grads[memory] = torch.autograd.grad(out.square().sum(), [x, *field.parameters()])
            if memory == "adjoint":
                assert block.nfe_forward == block.nfe_backward == steps * block.method.stages
        torch.testing.assert_close(grads["adjoint"][0], grads["backprop"][0], rtol=0.2, atol=0.2)
        gaps.append(max((a - b).abs().max().item() for a, b in zip(grads["adjoint"], grads["backprop"], strict=True)))
    slopes = [math.log2(a / b) for a, b in itertools.pairwise(gaps)]
    assert all(order - 0.35 < s < order + 0.6 for s in slopes[1:]), (gaps, slopes)


def test_fixed_step_adjoint_forward_is_the_blocks_own_method():
    field = _smooth_field()
    x = torch.randn(5, 4, dtype=torch.float64)
    for solver in ("euler", "heun", "rk4", "rk38"):
        exact = ODEBlock(field, solver, steps=10, step_size=0.1)(x)
        adjoint = ODEBlock(field, solver, steps=10, step_size=0.1, memory="adjoint")(x.requires_grad_(True))
        torch.testing.assert_close(adjoint, exact, rtol=1e-13, atol=1e-13)


def test_adjoint_with_per_step_weights_solves_each_weight_set_on_its_step():
    """One adjoint solve per weight set; with equal weight sets the gap to backprop is O(h)."""
    x0 = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    reference = mlp_resnet(4, 3, depth=1, width=4, activation="tanh").double()
    gaps = []
    for depth in (8, 16, 32):
        nets = {}
        for memory in ("backprop", "adjoint"):
            net = mlp_resnet(4, 3, depth=depth, width=4, step_size=2.0 / depth, activation="tanh", memory=memory)
            net = net.double()
            net.stem.load_state_dict(reference.stem.state_dict())
            net.head.load_state_dict(reference.head.state_dict())
            for f in net.body[0].field.fields:  # one smooth autonomous ODE, cut into per-step pieces
                f.load_state_dict(reference.body[0].field.fields[0].state_dict())
            nets[memory] = net
        x = {m: x0.clone().requires_grad_(True) for m in nets}
        out = {m: net(x[m]) for m, net in nets.items()}
        torch.testing.assert_close(out["adjoint"], out["backprop"], rtol=1e-12, atol=1e-12)
        grads = {m: torch.autograd.grad(out[m].square().sum(), x[m])[0] for m in nets}
        assert nets["adjoint"].body[0].nfe_backward == depth
        gaps.append((grads["adjoint"] - grads["backprop"]).abs().max().item())
    slopes = [math.log2(a / b) for a, b in itertools.pairwise(gaps)]
    assert all(0.7 < s < 1.4 for s in slopes), (gaps, slopes)


def test_adaptive_adjoint_spellings_are_one_mode():
    field = _smooth_field()
    a = ODEBlock(field, "dopri5", adjoint=True)
    b = ODEBlock(field, "dopri5", memory="adjoint")
    assert a.memory == b.memory == "adjoint" and a.adjoint and b.adjoint
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"solver": "dopri5", "memory": "checkpoint"}, "adaptive"),
        ({"solver": "euler", "memory": "adjoint", "residual": False}, "plain twin"),
        ({"solver": "euler", "memory": "adjoint", "projection": nn.ReLU()}, "projection"),
        ({"solver": "euler", "memory": "swap"}, "not a memory mode"),
        ({"solver": "euler", "memory": "checkpoint", "adjoint": True}, "give one of the two"),
    ],
)
def test_memory_modes_a_block_cannot_have_are_refused_with_the_fix(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ODEBlock(odenet.MLPField(3, 4), **kwargs)


def test_model_config_memory_and_adjoint_flag_agree():
    assert ModelConfig(adjoint=True).memory == "adjoint"
    assert ModelConfig(memory="adjoint").adjoint is True
    assert ModelConfig(memory="checkpoint").adjoint is False
    with pytest.raises(ConfigError, match="basic"):
        ModelConfig(block="basic", memory="adjoint")
    # the adjoint's backward solve calls the fields in training mode: auto norm is group norm
    model = cifar_resnet(8, memory="adjoint")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.body.modules())


def test_with_solver_keeps_the_memory_mode_where_the_solver_admits_it():
    block = ODEBlock(odenet.MLPField(3, 4), "euler", steps=4, step_size=0.25, memory="checkpoint")
    assert block.with_solver("rk4").memory == "checkpoint"
    assert block.with_solver("dopri5").memory == "backprop"
    adaptive = ODEBlock(odenet.MLPField(3, 4), "dopri5", adjoint=True)
    assert adaptive.with_solver("euler", 8).memory == "backprop"  # exact and cheaper
    assert adaptive.with_solver("euler", 8, memory="adjoint").memory == "adjoint"
