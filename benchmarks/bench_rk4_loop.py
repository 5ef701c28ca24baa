"""Fixed-step loop speed: odenet's own loop vs torchdiffeq's (and torchode's) on one MLP field.

Two benchmarks, each in two modes (forward under ``torch.no_grad()``; forward + backward
into the field's parameters), on F(t, x) = Linear(64→32)(tanh(Linear(32→64)(x))),
batch 128, over [0, 1]:

``rk4-loop``: 100 steps of h = 0.01 (400 field evaluations per solve)

* ``odenet rk4``: ``ODEBlock(field, "rk4", steps=100, step_size=0.01)``, classic RK4;
* ``odenet rk38``: the same with Kutta's 3/8 rule, the like-for-like method, because
* ``torchdiffeq rk4`` (the reference): ``odeint(field, x, [0, 1], method="rk4",
  options={"step_size": 0.01})`` is the 3/8 rule (``rk4_alt_step_func``);
* ``torchode rk4``: classic RK4 as a torchode user tableau, ``FixedStepController``
  (torchode ships no RK4);
* ``odenet rk4 (compiled)``: ``torch.compile`` of the odenet block (compile time
  reported apart, not timed).

``heun-loop``: 200 steps of h = 0.005 (400 evaluations): odenet ``heun`` vs torchdiffeq
``heun2`` (the reference) vs torchode ``Heun``; all three are the same method.

Ratio = torchdiffeq median / contender median: the speed-up over torchdiffeq; target for
odenet rk4 ≥ 1.5 (eager or compiled). Before timing, each case checks that contenders
doing the same method agree (float32 rounding; float64 to 1e-12, which tells the 3/8 rule
from classic RK4) and that every contender makes the same number of field evaluations.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint

from benchmarks.common import (
    MLP,
    TORCHODE_MISSING,
    Solve,
    agree,
    count_evaluations,
    forward,
    forward_backward,
    gradients,
    relative_difference,
    torchode,
    torchode_fixed,
)
from benchmarks.suite import Case, Contender, Options
from odenet import ODEBlock

TARGET = 1.5
# float32, relative to the solution's size: a different operation order (odenet fuses each
# multiply-add) over 100 steps stays within a few 1e-6; float64 below is decisive.
MATCH = 1e-5
MATCH_GRAD = 1e-4
MATCH64 = 1e-12


def _sizes(options: Options, steps: int) -> dict[str, int]:
    if options.quick:
        return {"batch": 16, "features": 8, "hidden": 16, "steps": steps // 10, "repeats": 2, "warmup": 1}
    return {"batch": 128, "features": 32, "hidden": 64, "steps": steps, "repeats": 50, "warmup": 5}


def _solvers(
    field: nn.Module, odenet_methods: dict[str, str], tdq: tuple[str, str], torchode_method: tuple[str, str], steps: int
) -> tuple[dict[str, Solve], list[tuple[str, str]]]:
    """Name → solve x ↦ x(1), and the contenders skipped here."""
    h = 1.0 / steps
    solves: dict[str, Solve] = {
        name: ODEBlock(field, method, steps=steps, step_size=h) for name, method in odenet_methods.items()
    }
    tdq_name, tdq_method = tdq

    def torchdiffeq_solve(x: Tensor) -> Tensor:
        t = torch.tensor([0.0, 1.0], device=x.device)
        return odeint(field, x, t, method=tdq_method, options={"step_size": h})[-1]

    solves[tdq_name] = torchdiffeq_solve
    skipped = []
    name, method = torchode_method
    if torchode is None:
        skipped.append((name, TORCHODE_MISSING))
    else:
        solves[name] = torchode_fixed(field, method, steps)
    return solves, skipped


def _fixed_cases(
    options: Options,
    benchmark: str,
    steps: int,
    stages: int,
    odenet_methods: dict[str, str],
    tdq: tuple[str, str],
    torchode_method: tuple[str, str],
    same_method: list[tuple[str, str]],
    compiled: str | None,
    targets: dict[str, float],
    notes: dict[str, str],
) -> list[Case]:
    n = _sizes(options, steps)
    device = options.torch_device
    field = MLP(n["features"], n["hidden"]).to(device)
    x = torch.randn(n["batch"], n["features"], device=device)
    solves, skipped = _solvers(field, odenet_methods, tdq, torchode_method, n["steps"])
    reference = tdq[0]
    traced: set[str] = set()  # contenders whose field runs inside a compiled graph
    if compiled is not None:
        eager = next(iter(odenet_methods))
        steps_name = f"{eager} (compile_steps)"
        if options.compile:
            solves[compiled] = torch.compile(solves[eager], backend=options.compile_backend)
            # odenet's own compile=True path: one graph per step, reused by all steps
            solves[steps_name] = ODEBlock(field, odenet_methods[eager], steps=n["steps"], step_size=1.0 / n["steps"])
            solves[steps_name].compile_steps()  # type: ignore[union-attr]
            traced = {compiled, steps_name}
        else:
            skipped.append((compiled, "left out (--no-compile)"))
            skipped.append((steps_name, "left out (--no-compile)"))
    pairs = [(a, b) for a, b in same_method if a in solves and b in solves]
    pairs += [(name, next(iter(odenet_methods))) for name in sorted(traced)]
    evaluations: dict[str, int] = {}

    def check_forward() -> dict[str, Any]:
        with torch.no_grad():
            outs = {name: s(x) for name, s in solves.items()}
            for name, s in solves.items():
                if name not in traced:  # a compiled graph does not call the module's hooks
                    evaluations[name] = count_evaluations(field, functools.partial(s, x))
        info = agree(outs, [(a, b, MATCH) for a, b in pairs], "float32")
        assert set(evaluations.values()) == {n["steps"] * stages}, f"field evaluations per solve: {evaluations}"
        info["field evaluations per solve"] = evaluations
        # float64 tells the methods apart: same-method pairs agree to rounding.
        field64 = copy.deepcopy(field).double()
        solves64, _ = _solvers(field64, odenet_methods, tdq, torchode_method, n["steps"])
        with torch.no_grad():
            outs64 = {name: s(x.double()) for name, s in solves64.items()}
        info.update(agree(outs64, [(a, b, MATCH64) for a, b in pairs if a not in traced], "float64"))
        # Across methods (classic RK4 vs the 3/8 rule) the difference is the methods' own.
        info["float64 max|contender − reference|/max|reference|"] = {
            name: float(f"{relative_difference(out, outs64[reference]):.3g}")
            for name, out in outs64.items()
            if name != reference
        }
        return info

    def check_backward() -> dict[str, Any]:
        grads = {name: gradients(s, x, field) for name, s in solves.items()}
        return agree(grads, [(a, b, MATCH_GRAD) for a, b in pairs], "gradient")

    def contenders(make: Callable[[Solve], Callable[[], object]]) -> tuple[Contender, ...]:
        return tuple(
            Contender(name, make(s), compiled=name in traced, nfe=n["steps"] * stages, note=notes.get(name, ""))
            for name, s in solves.items()
        )

    mlp = f"MLP {n['features']}→{n['hidden']}→{n['features']}"
    description = f"{n['steps']} fixed steps over [0, 1], {mlp}, batch {n['batch']}"
    return [
        Case(
            benchmark,
            "forward",
            description + ", torch.no_grad()",
            reference,
            contenders(lambda s: forward(s, x)),
            n["repeats"],
            n["warmup"],
            {name: t for name, t in targets.items() if name in solves},
            check_forward,
            tuple(skipped),
        ),
        Case(
            benchmark,
            "forward+backward",
            description + ", backpropagation into the field's parameters",
            reference,
            contenders(lambda s: forward_backward(s, x, field)),
            n["repeats"],
            n["warmup"],
            {name: t for name, t in targets.items() if name in solves},
            check_backward,
            tuple(skipped),
        ),
    ]


def rk4_cases(options: Options) -> list[Case]:
    """odenet rk4 / rk38 / compiled rk4 vs torchdiffeq rk4 (3/8 rule) vs torchode classic RK4."""
    compiled = "odenet rk4 (compiled)"
    return _fixed_cases(
        options,
        "rk4-loop",
        100,
        4,
        {"odenet rk4": "rk4", "odenet rk38": "rk38"},
        ("torchdiffeq rk4", "rk4"),
        ("torchode rk4", "rk4"),
        same_method=[("odenet rk38", "torchdiffeq rk4"), ("torchode rk4", "odenet rk4")],
        compiled=compiled,
        targets={"odenet rk4": TARGET, compiled: TARGET, "odenet rk4 (compile_steps)": TARGET},
        notes={
            "odenet rk4": "classic RK4",
            "odenet rk38": "Kutta's 3/8 rule: torchdiffeq's rk4",
            "torchdiffeq rk4": "Kutta's 3/8 rule (rk4_alt_step_func)",
            "torchode rk4": "classic RK4 as a torchode user tableau (torchode 1.0 ships no RK4)",
            compiled: "torch.compile(ODEBlock(field, 'rk4', …)): the unrolled loop as one graph",
            "odenet rk4 (compile_steps)": "ODEBlock(...).compile_steps(), what compile=True does: one graph per step",
        },
    )


def heun_cases(options: Options) -> list[Case]:
    """odenet heun vs torchdiffeq heun2 vs torchode Heun: one method, three loops."""
    return _fixed_cases(
        options,
        "heun-loop",
        200,
        2,
        {"odenet heun": "heun"},
        ("torchdiffeq heun2", "heun2"),
        ("torchode heun", "heun"),
        same_method=[("odenet heun", "torchdiffeq heun2"), ("torchode heun", "torchdiffeq heun2")],
        compiled=None,
        targets={},
        notes={},
    )
