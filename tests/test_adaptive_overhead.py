"""Adaptive blocks at the cost of torchdiffeq (odenet issue 11): what the faster path keeps.

An adaptive block hands torchdiffeq a plain counting callable and counts the evaluations
backpropagation differentiates without a hook on every evaluation. Nothing observable may
change: the solution and the gradients are torchdiffeq's, called directly with the same
options, bit for bit; ``nfe_forward``/``nfe_backward`` equal an independent count; a
field with one weight set per step is still solved one interval at a time.
"""

from __future__ import annotations

import pytest
import torch
import torchdiffeq
from torch import Tensor, nn

import odenet
import odenet.errors
from odenet import ODEBlock, StepwiseField
from odenet.blocks import DEFAULT_MAX_STEPS


class Counted(nn.Module):
    """A field that counts its calls and, by a hook on every output, the differentiated ones."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field
        self.calls = 0
        self.differentiated = 0
        self.times: list[float] = []

    def _one(self, grad: Tensor) -> None:
        self.differentiated += 1

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        out = self.field(t, x)
        self.calls += 1
        self.times.append(float(t.detach()))
        if out.requires_grad:
            out.register_hook(self._one)
        return out


class TimeOnly(nn.Module):
    """F(t, x) = cos(3t): no parameters, no x; its output has a gradient only through t."""

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return torch.cos(3 * t) * torch.ones_like(x)


def _mlp(seed: int = 0, scale: float = 1.0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    field = odenet.MLPField(4, 8, activation="tanh", time=True).to(dtype)
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(scale)
    return field


def _direct(field: nn.Module, x: Tensor, t0: float, t1: float, method: str, rtol: float, atol: float,
            adjoint: bool) -> Tensor:  # fmt: skip
    """torchdiffeq called directly with the options the block documents: land on t1, bound the steps."""
    t = torch.tensor([t0, t1], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    options = {"max_num_steps": DEFAULT_MAX_STEPS, "step_t": t[1:]}
    if adjoint:
        return torchdiffeq.odeint_adjoint(
            field, x, t, rtol=rtol, atol=atol, method=method, options=options,
            adjoint_options={"max_num_steps": DEFAULT_MAX_STEPS, "step_t": t[:1]},
            adjoint_params=tuple(field.parameters()),
        )[-1]  # fmt: skip
    return torchdiffeq.odeint(field, x, t, rtol=rtol, atol=atol, method=method, options=options)[-1]


def _output_and_gradients(run, field: nn.Module, x0: Tensor) -> list[Tensor]:
    field.zero_grad()
    x = x0.clone().requires_grad_()
    out = run(x)
    (out**2).sum().backward()
    return [out.detach(), x.grad] + [p.grad.clone() for p in field.parameters()]


# ------------------------------------------------------------ the same numbers as torchdiffeq
@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
@pytest.mark.parametrize(("method", "dtype"), [("dopri5", torch.float32), ("dopri5", torch.float64),
                                               ("bosh3", torch.float64), ("tsit5", torch.float64)])  # fmt: skip
def test_block_output_and_gradients_are_torchdiffeqs_bit_for_bit(method, dtype, adjoint):
    field = _mlp(seed=1, dtype=dtype)
    x0 = torch.randn(5, 4, dtype=dtype)
    block = ODEBlock(field, method, steps=2, step_size=0.75, rtol=1e-6, atol=1e-8, adjoint=adjoint)
    ours = _output_and_gradients(block, field, x0)
    theirs = _output_and_gradients(lambda x: _direct(field, x, 0.0, 1.5, method, 1e-6, 1e-8, adjoint), field, x0)
    assert len(ours) == len(theirs) == 2 + len(list(field.parameters()))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------- evaluation counts
def test_backprop_counts_equal_a_hook_on_every_evaluation():
    # The block counts differentiated evaluations from the solve (accepted stages, f₀, a
    # hook on the step-size probe only); a hook on every output is the definition.
    kinds = set()
    cases = [(m, seed, scale, rtol) for m in ("dopri5", "bosh3", "tsit5", "dopri8") for seed in (0, 1)
             for scale, rtol in ((0.5, 1e-3), (3.0, 1e-6))]  # fmt: skip
    for method, seed, scale, rtol in cases:
        field = Counted(_mlp(seed, scale))
        block = ODEBlock(field, method, rtol=rtol, atol=rtol / 100)
        (block(torch.randn(3, 4, dtype=torch.float64, requires_grad=True)) ** 2).sum().backward()
        assert (block.nfe_forward, block.nfe_backward) == (field.calls, field.differentiated), (method, seed)
        undifferentiated = field.calls - field.differentiated
        kinds.add("rejected steps" if undifferentiated > 1 else f"{undifferentiated} undifferentiated")
    # The cases cover all three: rejected steps (their stages are not differentiated), and
    # a step-size probe that the gradient reaches (0) or does not (1).
    assert kinds == {"rejected steps", "0 undifferentiated", "1 undifferentiated"}


@pytest.mark.parametrize("x_grad", [True, False])
def test_backprop_counts_a_field_differentiated_through_t_only(x_grad):
    # torchdiffeq's step times carry the gradient of its first step size (a function of
    # x₀), so a field of t alone is differentiated when x requires a gradient, not otherwise.
    field = Counted(TimeOnly())
    block = ODEBlock(field, "dopri5", rtol=1e-6, atol=1e-8)
    out = block(torch.randn(2, 3, requires_grad=x_grad))
    if out.requires_grad:
        out.sum().backward()
    assert (block.nfe_forward, block.nfe_backward) == (field.calls, field.differentiated)
    assert (field.differentiated > 0) == x_grad


def test_a_second_backward_pass_counts_again_like_a_hook_per_evaluation():
    field = Counted(_mlp(0, 3.0))
    block = ODEBlock(field, "dopri5", rtol=1e-6, atol=1e-8)
    out = block(torch.randn(3, 4, dtype=torch.float64, requires_grad=True)).sum()
    out.backward(retain_graph=True)
    once = block.nfe_backward
    out.backward()
    assert block.nfe_backward == field.differentiated == 2 * once > 0


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_adjoint_counts_the_field_calls_of_each_pass(method):
    field = Counted(_mlp(1, 3.0))
    block = ODEBlock(field, method, rtol=1e-6, atol=1e-8, adjoint=True)
    out = block(torch.randn(3, 4, dtype=torch.float64, requires_grad=True))
    assert block.nfe_forward == field.calls > 0 and block.nfe_backward == 0
    out.sum().backward()
    assert block.nfe_backward == field.calls - block.nfe_forward > 0


def test_no_hook_per_evaluation(monkeypatch):
    # The cost removed by issue 11: a hook on each of ~25 outputs. Left: one on the
    # solution, and at most one per interval on the initial step-size probe.
    registered = []
    register_hook = torch.Tensor.register_hook

    def counting(self: Tensor, hook):  # type: ignore[no-untyped-def]
        registered.append(hook)
        return register_hook(self, hook)

    monkeypatch.setattr(torch.Tensor, "register_hook", counting)
    block = ODEBlock(_mlp(0), "dopri5", rtol=1e-6, atol=1e-8)
    block(torch.randn(3, 4, dtype=torch.float64, requires_grad=True)).sum().backward()
    assert block.nfe_forward >= 14 and 1 <= len(registered) <= 2
    registered.clear()
    with torch.no_grad():
        block(torch.randn(3, 4, dtype=torch.float64))
    assert registered == []


# ------------------------------------------------------------------ per-step weights
@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_per_step_weights_are_solved_one_interval_at_a_time(adjoint):
    h = 0.5
    seeds = iter(range(3))
    field = StepwiseField(lambda: Counted(_mlp(next(seeds))), steps=3, horizon=3 * h)
    block = ODEBlock(field, "dopri5", steps=3, step_size=h, rtol=1e-6, atol=1e-8, adjoint=adjoint)
    x0 = torch.randn(3, 4, dtype=torch.float64)
    ours = block(x0)
    # Weight set k sees only its own interval [k·h, (k+1)·h] (the c = 1 stages land a hair
    # before its end), and the block is torchdiffeq run interval by interval.
    for k, f_k in enumerate(field.fields):
        assert f_k.times and all(k * h <= t <= (k + 1) * h for t in f_k.times), k
    assert block.nfe_forward == sum(f.calls for f in field.fields)
    expected = x0
    with torch.no_grad():
        for k, f_k in enumerate(field.fields):
            expected = _direct(f_k, expected, k * h, (k + 1) * h, "dopri5", 1e-6, 1e-8, adjoint=False)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    # The counts, per interval summed, against independent ones.
    for f_k in field.fields:
        f_k.calls = f_k.differentiated = 0
    out = block(x0.clone().requires_grad_())
    forward = [f.calls for f in field.fields]
    out.sum().backward()
    assert block.nfe_forward == sum(forward)
    if adjoint:
        assert block.nfe_backward == sum(f.calls for f in field.fields) - sum(forward) > 0
    else:
        assert block.nfe_backward == sum(f.differentiated for f in field.fields) > 0


# ------------------------------------------------------------------------- errors kept
@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_a_field_changing_shape_still_fails_with_the_fix(adjoint):
    class Widens(nn.Module):
        def forward(self, t: Tensor, x: Tensor) -> Tensor:
            return torch.cat([x, x], dim=1)

    block = ODEBlock(Widens(), "dopri5", adjoint=adjoint)
    with pytest.raises(odenet.errors.ConfigError, match=r"returned shape \(2, 6\) for a state of shape \(2, 3\)"):
        block(torch.zeros(2, 3, requires_grad=True))
