"""Adaptive-solve overhead: odenet's dopri5 ``ODEBlock`` vs calling torchdiffeq directly.

odenet hands adaptive solves to torchdiffeq (``odenet/adaptive.py``); what it adds is a
wrapper that counts function evaluations and the bookkeeping of the block. This benchmark
measures that cost on the MLP field of the fixed-step benchmarks (batch 128, 32→64→32,
tanh) over [0, 1] with dopri5 at rtol = 1e-6, atol = 1e-8:

* ``odenet dopri5``: ``ODEBlock(field, "dopri5", rtol=1e-6, atol=1e-8)`` (``adjoint=True``
  in the adjoint case);
* ``torchdiffeq dopri5`` (the reference): ``torchdiffeq.odeint`` (``odeint_adjoint``) on
  the bare field with the options odenet passes, so the two take the same steps:
  ``max_num_steps`` and ``step_t = [T]`` (the last step lands on T), and for the adjoint
  ``adjoint_params`` and ``adjoint_options`` likewise;
* ``torchode dopri5``: ``torchode.AutoDiffAdjoint(Dopri5, IntegralController(atol, rtol))``
  — torchode's controller is torchdiffeq's (safety 0.9, factors 0.2–10) but it controls
  every sample of the batch separately, so it takes other steps (its evaluations are
  printed); in the adjoint case ``JointBacksolveAdjoint``, which solves the batch as one
  system like torchdiffeq.

Cases: ``forward`` (``torch.no_grad()``), ``forward+backward`` (backpropagation through
the solver), ``adjoint`` (forward, then the adjoint solve backwards). Ratio = direct
torchdiffeq median / contender median; target for odenet ≥ 0.952 (odenet at most 5%
slower than the direct call). The checks assert that odenet and the direct call make the
same number of field evaluations and agree to float32 rounding, and that torchode's
solution and gradients agree with them to 1e-3 (other steps, same tolerances).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from benchmarks.common import (
    MLP,
    TORCHODE_MISSING,
    Solve,
    agree,
    count_evaluations,
    forward,
    forward_backward,
    gradients,
    torchode,
)
from benchmarks.suite import Case, Contender, Options
from odenet import ODEBlock
from odenet.blocks import DEFAULT_MAX_STEPS

RTOL, ATOL = 1e-6, 1e-8
TARGET = 1 / 1.05  # odenet at most 5% slower than the direct call
SAME = 1e-5  # odenet vs the direct call: the same arithmetic
OTHER_STEPS = 1e-3  # torchode: other steps under the same tolerances
WHAT = {"forward": ", torch.no_grad()", "forward+backward": ", backpropagation", "adjoint": ", adjoint method"}


def direct(field: nn.Module, adjoint: bool) -> Solve:
    """x ↦ x(1) by ``odeint`` (``odeint_adjoint``) with the options ``odenet.adaptive`` passes."""

    def solve(x: Tensor) -> Tensor:
        t = torch.tensor([0.0, 1.0], dtype=torch.float32, device=x.device)
        options = {"max_num_steps": DEFAULT_MAX_STEPS, "step_t": t[1:]}
        if adjoint:
            params = tuple(p for p in field.parameters() if p.requires_grad)
            return odeint_adjoint(
                field,
                x,
                t,
                rtol=RTOL,
                atol=ATOL,
                method="dopri5",
                options=options,
                adjoint_params=params,
                adjoint_options={"max_num_steps": DEFAULT_MAX_STEPS, "step_t": t[:1]},
            )[-1]
        return odeint(field, x, t, rtol=RTOL, atol=ATOL, method="dopri5", options=options)[-1]

    return solve


def torchode_dopri5(field: nn.Module, adjoint: bool) -> Solve:
    """x ↦ x(1) by torchode's Dopri5 under its integral controller (joint backsolve adjoint)."""
    assert torchode is not None, TORCHODE_MISSING
    term = torchode.ODETerm(field, with_stats=False)
    if adjoint:
        solver = torchode.JointBacksolveAdjoint(
            term, torchode.Dopri5(term=None), torchode.IntegralController(atol=ATOL, rtol=RTOL)
        )
    else:
        solver = torchode.AutoDiffAdjoint(
            torchode.Dopri5(term),
            torchode.IntegralController(atol=ATOL, rtol=RTOL, term=term),
            max_steps=DEFAULT_MAX_STEPS,
        )

    def solve(x: Tensor) -> Tensor:
        t_start = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        problem = torchode.InitialValueProblem(y0=x, t_start=t_start, t_end=t_start + 1.0)
        return solver.solve(problem).ys[:, -1]

    return solve


def cases(options: Options) -> list[Case]:
    """forward, forward+backward and adjoint: odenet vs direct torchdiffeq vs torchode."""
    if options.quick:
        batch, features, hidden, repeats, warmup = 16, 8, 16, 2, 1
    else:
        batch, features, hidden, repeats, warmup = 128, 32, 64, 50, 5
    device = options.torch_device
    field = MLP(features, hidden).to(device)
    x = torch.randn(batch, features, device=device)
    description = f"dopri5 rtol {RTOL:g} atol {ATOL:g} over [0, 1], MLP {features}→{hidden}→{features}, batch {batch}"
    names = {"odenet": "odenet dopri5", "direct": "torchdiffeq dopri5", "torchode": "torchode dopri5"}
    out = []
    for case, adjoint in (("forward", False), ("forward+backward", False), ("adjoint", True)):
        block = ODEBlock(field, "dopri5", rtol=RTOL, atol=ATOL, adjoint=adjoint)
        solves: dict[str, Solve] = {names["odenet"]: block, names["direct"]: direct(field, adjoint)}
        skipped: tuple[tuple[str, str], ...] = ()
        if torchode is None:
            skipped = ((names["torchode"], TORCHODE_MISSING),)
        else:
            solves[names["torchode"]] = torchode_dopri5(field, adjoint)
        evaluations = _evaluations(block, solves, field, x, backward=case != "forward")

        def wrap(solve: Solve, case: str = case) -> Callable[[], object]:
            return forward(solve, x) if case == "forward" else forward_backward(solve, x, field)

        out.append(
            Case(
                "adaptive",
                case,
                description + WHAT[case],
                names["direct"],
                tuple(
                    Contender(name, wrap(s), nfe=evaluations[name], note=_note(name, adjoint))
                    for name, s in solves.items()
                ),
                repeats,
                warmup,
                {names["odenet"]: TARGET},
                _check(case, solves, block, field, x, evaluations, names),
                skipped,
            )
        )
    return out


def _note(name: str, adjoint: bool) -> str:
    if name.startswith("torchdiffeq"):
        return "odeint_adjoint with odenet's options" if adjoint else "odeint with odenet's options"
    if name.startswith("torchode"):
        if adjoint:
            return "JointBacksolveAdjoint: the batch solved as one system"
        return "AutoDiffAdjoint, error controlled per sample; nfe: calls of the field, the most any sample needed"
    return ""


def _evaluations(
    block: ODEBlock, solves: dict[str, Solve], field: nn.Module, x: Tensor, backward: bool
) -> dict[str, int]:
    """Field evaluations per call (forward solve, plus the backward pass where it has one)."""
    counts = {}
    for name, solve in solves.items():
        work = functools.partial(gradients, solve, x, field) if backward else forward(solve, x)
        counts[name] = count_evaluations(field, work)
    # odenet's own count agrees with the hook (forward; backward: adjoint evaluations, or
    # with backpropagation the differentiated evaluations, which call nothing).
    counted = block.nfe_forward + (block.nfe_backward if block.adjoint else 0)
    assert counts["odenet dopri5"] == counted, f"odenet counts {counted}, the hook {counts['odenet dopri5']}"
    return counts


def _check(
    case: str,
    solves: dict[str, Solve],
    block: ODEBlock,
    field: nn.Module,
    x: Tensor,
    evaluations: dict[str, int],
    names: dict[str, str],
) -> Callable[[], dict[str, Any]]:
    def check() -> dict[str, Any]:
        odenet_, direct_, torchode_ = names["odenet"], names["direct"], names["torchode"]
        assert evaluations[odenet_] == evaluations[direct_], (
            f"odenet and the direct call take different steps: {evaluations[odenet_]} vs "
            f"{evaluations[direct_]} field evaluations"
        )
        pairs = [(odenet_, direct_, SAME)]
        if torchode_ in solves:
            pairs.append((torchode_, direct_, OTHER_STEPS))
        if case == "forward":
            with torch.no_grad():
                results = {name: s(x) for name, s in solves.items()}
            info = agree(results, pairs, "x(1)")
        else:
            results = {name: gradients(s, x, field) for name, s in solves.items()}
            info = agree(results, pairs, "gradient")
        info["field evaluations per call"] = evaluations
        if case != "forward":
            block(x).square().mean().backward()
            field.zero_grad(set_to_none=True)
            info["odenet nfe (forward, backward)"] = [block.nfe_forward, block.nfe_backward]
        return info

    return check
