"""Is the trained network an ODE? Train with each solver and step size, then evaluate the
same weights with other solvers at ``refinements`` × the training steps against an
adaptive reference in float64 (Queiruga et al. 2020; Ott et al. 2021)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from odenet.blocks import ODEBlock, SolverError
from odenet.data import TensorData
from odenet.errors import ConfigError
from odenet.experiment import ModelConfig
from odenet.knobs import knob
from odenet.labels import Variable
from odenet.models.cifar import blocks_per_stage
from odenet.models.common import ResidualNetwork, Unit, walk
from odenet.solvers import get_method
from odenet.studies.base import Cell, Study, Values, check_solvers, check_step_sizes, train_cell
from odenet.train import TrainConfig, evaluate, resolve_device

__all__ = ["ConvergenceStudy", "fit_order"]

# Test samples whose stage outputs are compared with the reference.
ERROR_SAMPLES = 64


@dataclass(frozen=True)
class ConvergenceStudy(Study):
    """Train with each solver and step size, then evaluate the trained weights with
    ``eval_solvers`` at ``refinements`` × the training steps and with ``reference``
    (adaptive, float64) at tight tolerance."""

    kind: ClassVar[str] = "convergence"
    variables: ClassVar[tuple[Variable, ...]] = (
        Variable(
            "error",
            ("eval_solver", "refinement", "stage"),
            "relative 2-norm error of the stage output against the adaptive reference",
            "1",
        ),
        Variable("eval_accuracy", ("eval_solver", "refinement"), "test accuracy with the evaluation solver", "1"),
        Variable("eval_loss", ("eval_solver", "refinement"), "test cross-entropy with the evaluation solver", "nat"),
        Variable("eval_nfe", ("eval_solver", "refinement"), "ODE-block function evaluations per forward pass", "1"),
        Variable("order", ("eval_solver", "stage"), "empirical order fitted to error against steps (log–log)", "1"),
        Variable("reference_accuracy", (), "test accuracy with the adaptive reference solver", "1"),
        Variable("reference_nfe", (), "function evaluations of the reference per forward pass", "1"),
    )
    coords: ClassVar[Mapping[str, tuple[str, str]]] = {
        "train_solver": ("solver the network was trained with", ""),
        "eval_solver": ("solver the trained weights are evaluated with", ""),
        "refinement": ("evaluation steps / training steps", "1"),
        "stage": ("network stage (ODE block) index", "1"),
    }
    sets: ClassVar[tuple[str, ...]] = ("solver", "step_size")

    solvers: tuple[str, ...] = knob(("euler", "rk4"), "Solvers to train with.")
    step_sizes: tuple[float, ...] = knob((1.0,), "Training step sizes (list or log:…).")
    eval_solvers: tuple[str, ...] = knob(("euler", "midpoint", "rk4"), "Solvers to evaluate with.")
    refinements: tuple[float, ...] = knob((0.5, 1.0, 2.0, 4.0, 8.0), "Evaluation steps / training steps.")
    reference: str = knob("dopri5", "Adaptive reference solver.")
    reference_tol: float = knob(1e-9, "Its rtol = atol (float64).")

    def check(self) -> None:
        check_solvers("solvers", self.solvers, fixed_only=True)
        check_solvers("eval_solvers", self.eval_solvers, fixed_only=True)
        check_step_sizes("step_sizes", self.step_sizes)
        check_step_sizes("refinements", self.refinements)
        if not get_method(self.reference).adaptive:
            raise ConfigError(
                "{reference} is fixed-step; give an adaptive solver (dopri5, dopri8, …)", reference=self.reference
            )
        if not (isinstance(self.reference_tol, float) and 0 < self.reference_tol < 1e-3):
            raise ConfigError(
                "{reference_tol} must lie in (0, 1e-3) to serve as a reference", reference_tol=self.reference_tol
            )
        if not self.model.residual:
            raise ConfigError(
                "convergence studies need residual networks (the plain twin is no ODE solver); drop {residual}",
                residual=False,
            )

    def axes(self) -> dict[str, Sequence[Any]]:
        return {"train_solver": self.solvers, "step_size": self.step_sizes, "seed": self.seeds}

    def cell_configs(self, point: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
        model = replace(self.model, solver=point["train_solver"], step_size=float(point["step_size"]))
        return model, replace(self.train, seed=point["seed"])

    def inner(self) -> dict[str, Sequence[Any]]:
        return {
            "epoch": list(range(1, self.train.epochs + 1)),
            "eval_solver": self.eval_solvers,
            "refinement": self.refinements,
            "stage": list(range(self.stages)),
        }

    @property
    def stages(self) -> int:
        """ODE blocks of the network: three stages, but at n = 1 stages 2 and 3 are transitions only."""
        if not self.image:
            return 1
        return 3 if blocks_per_stage(self.model.depth, self.model.block) > 1 else 1

    def measure(self, model: nn.Module, data: TensorData, cell: Cell) -> Values:
        values, history = train_cell(model, data, cell)
        shape_eval = (len(self.eval_solvers), len(self.refinements))
        error = np.full((*shape_eval, self.stages), np.nan)
        accuracy, loss, nfe = (np.full(shape_eval, np.nan) for _ in range(3))
        order = np.full((len(self.eval_solvers), self.stages), np.nan)
        values |= {"error": error, "eval_accuracy": accuracy, "eval_loss": loss, "eval_nfe": nfe, "order": order}
        values |= {"reference_accuracy": math.nan, "reference_nfe": math.nan}
        if history.diverged:
            return values
        assert isinstance(model, ResidualNetwork)
        device = resolve_device(cell.train.device)
        tol = self.reference_tol
        # Stage errors in float64 on a few test samples, so that the reference's own error
        # (≈ reference_tol) and the high-order methods' errors at 8n steps are not drowned by
        # single-precision round-off. Accuracies in float32 on the whole test set, with the
        # reference at a tolerance float32 can resolve: a class decision needs no more.
        net64 = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
        net32 = copy.deepcopy(model).to(device=device, dtype=torch.float32).eval()
        x64 = data.x_test[:ERROR_SAMPLES].to(device, torch.float64)
        x, y = data.x_test.to(device, torch.float32), data.y_test.to(device)
        try:
            inputs, outputs = stage_states(net64.with_blocks(self._reference(tol)).eval(), x64)
            reference32 = net32.with_blocks(self._reference(max(tol, 1e-5))).eval()
            _, values["reference_accuracy"] = evaluate(reference32, x, y)
            values["reference_nfe"] = _nfe(reference32)
        except SolverError:
            return values
        steps = [b.steps for b in net64.body if isinstance(b, ODEBlock)]
        for i, solver in enumerate(self.eval_solvers):
            for j, r in enumerate(self.refinements):

                def refine(b: ODEBlock, s: str = solver, r: float = r) -> ODEBlock:
                    return b.with_solver(s, steps=max(1, round(r * b.steps)))

                stages = [b for b in net64.with_blocks(refine).body if isinstance(b, ODEBlock)]
                with torch.no_grad():
                    for s, block in enumerate(stages):
                        error[i, j, s] = float((block(inputs[s]) - outputs[s]).norm() / outputs[s].norm())
                candidate = net32.with_blocks(refine).eval()
                loss[i, j], accuracy[i, j] = evaluate(candidate, x, y)
                nfe[i, j] = _nfe(candidate)
            for s, n in enumerate(steps):
                m = np.array([max(1, round(r * n)) for r in self.refinements], dtype=float)
                order[i, s] = fit_order(m, error[i, :, s], floor=10 * tol, use=np.asarray(self.refinements) >= 1)
        return values

    def _reference(self, tol: float) -> Callable[[ODEBlock], ODEBlock]:
        def swap(b: ODEBlock) -> ODEBlock:
            return b.with_solver(self.reference, rtol=tol, atol=tol, adjoint=False)

        return swap


@torch.no_grad()
def stage_states(net: ResidualNetwork, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Inputs and outputs of every ODE block along ``net``'s own trajectory."""
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def visit(i: int, unit: Unit, z: torch.Tensor) -> torch.Tensor:
        if unit.kind != "block":
            return unit(z)
        inputs.append(z)
        out = unit(z)
        outputs.append(out)
        return out

    walk(net, x, visit, steps=False)
    return inputs, outputs


def _nfe(net: nn.Module) -> float:
    """Function evaluations of the last forward pass, over all ODE blocks."""
    return float(sum(b.nfe_forward for b in net.modules() if isinstance(b, ODEBlock)))


def fit_order(steps: np.ndarray, error: np.ndarray, floor: float = 0.0, use: np.ndarray | None = None) -> float:
    """Empirical order p from error ≈ C·steps^(−p): least squares on log–log points.

    Points at or below ``floor`` (the reference's own error) or not finite are left
    out; NaN when fewer than two remain.
    """
    ok = np.isfinite(error) & (error > floor)
    if use is not None:
        ok &= use
    if ok.sum() < 2 or len(set(steps[ok])) < 2:
        return math.nan
    slope = np.polyfit(np.log(steps[ok]), np.log(error[ok]), 1)[0]
    return float(-slope)
