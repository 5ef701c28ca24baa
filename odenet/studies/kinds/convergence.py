"""Is the trained network an ODE? Train with each solver and step size, then evaluate the
same weights with other solvers at ``refinements`` × the training steps against an
adaptive reference in float64 (Queiruga et al. 2020; Ott et al. 2021).

What each number controls for:

* stage errors compare solvers on *one* fixed field (eval mode, the batch-norm statistics
  of training), so they are discretisation errors of one ODE, measured against the
  reference at ``reference_tol`` × ``TIGHTER`` and validated against it at ``reference_tol``:
  their difference, ``reference_error``, bounds what the reference can resolve, and
  errors below 10× it are left out of the order fit;
* refinements are integers ≥ 1 for per-step weights, so that every evaluation step lies
  inside one weight interval (a step across a weight boundary integrates a jump: that
  error is not the method's discretisation error);
* the order is the median of the local slopes log(e_r / e_2r) / log 2 between
  successive refinements above that floor;
* accuracies (at refinements up to ``accuracy_up_to``; finer ones change no class
  once the stage errors are small, and cost the most) are given twice: with the
  training trajectory's batch-norm statistics (what re-solving alone does) and with
  statistics recalibrated on training data under the evaluation solver
  (``ResidualNetwork.with_solver(recalibrate=…)``, no weight changes), which separates
  stale statistics from a change of the function.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from odenet.blocks import ODEBlock, SolverError
from odenet.data import TensorData
from odenet.errors import NAME_ONLY, ConfigError
from odenet.experiment import ModelConfig
from odenet.knobs import knob
from odenet.labels import Variable
from odenet.models.cifar import blocks_per_stage
from odenet.models.common import ResidualNetwork, Unit, walk
from odenet.norms import CALIBRATION_SAMPLES
from odenet.solvers import get_method
from odenet.studies.base import Cell, Study, Values, check_axis, check_solvers, check_step_sizes, train_cell
from odenet.train import TrainConfig, evaluate, resolve_device

__all__ = ["ConvergenceStudy", "fit_order", "local_slopes"]

# Test samples whose stage outputs are compared with the reference.
ERROR_SAMPLES = 16
# The stage errors are measured against the reference solved at reference_tol × TIGHTER;
# the solve at reference_tol itself estimates that reference's error. A decade, not more:
# ReLU kinks cap an adaptive solver's steps near sqrt(tol), so each decade of tolerance
# costs about 3× the function evaluations (two decades made one cell take many minutes).
TIGHTER = 0.1


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
        Variable(
            "eval_accuracy",
            ("eval_solver", "refinement"),
            "test accuracy with the evaluation solver, batch-norm statistics of training",
            "1",
        ),
        Variable(
            "eval_loss",
            ("eval_solver", "refinement"),
            "test cross-entropy with the evaluation solver, batch-norm statistics of training",
            "nat",
        ),
        Variable(
            "eval_accuracy_recalibrated",
            ("eval_solver", "refinement"),
            "test accuracy with the evaluation solver, batch-norm statistics recalibrated under it",
            "1",
        ),
        Variable(
            "eval_loss_recalibrated",
            ("eval_solver", "refinement"),
            "test cross-entropy with the evaluation solver, batch-norm statistics recalibrated under it",
            "nat",
        ),
        Variable("eval_nfe", ("eval_solver", "refinement"), "ODE-block function evaluations per forward pass", "1"),
        Variable(
            "local_order",
            ("eval_solver", "refinement", "stage"),
            "local slope log(e_prev / e) / log(m / m_prev) from the previous refinement",
            "1",
        ),
        Variable("order", ("eval_solver", "stage"), "empirical order: median local slope above the error floor", "1"),
        Variable(
            "reference_error",
            ("stage",),
            "relative difference between the reference at reference_tol and at reference_tol * 0.1",
            "1",
        ),
        Variable("reference_accuracy", (), "test accuracy with the adaptive reference solver", "1"),
        Variable(
            "reference_accuracy_recalibrated",
            (),
            "test accuracy with the adaptive reference, batch-norm statistics recalibrated under it",
            "1",
        ),
        Variable("reference_nfe", (), "function evaluations of the reference per forward pass", "1"),
    )
    coords: ClassVar[Mapping[str, tuple[str, str]]] = {
        "train_solver": ("solver the network was trained with", ""),
        "eval_solver": ("solver the trained weights are evaluated with", ""),
        "refinement": ("evaluation steps / training steps", "1"),
        "stage": ("network stage (ODE block) index", "1"),
    }
    sets: ClassVar[tuple[str, ...]] = ("solver", "step_size", "depth")

    solvers: tuple[str, ...] = knob(("euler", "rk4"), "Solvers to train with.")
    step_sizes: tuple[float, ...] | None = knob(
        None, "Training step sizes at fixed depth (list or log:…; default 1; none with a horizon)."
    )
    depths: tuple[int, ...] = knob((20,), "One or several depths.")
    horizon: float | None = knob(
        None, "Fix T = n·h: h = T / blocks per stage (the fixed-depth sweep varies T with h; this does not)."
    )
    eval_solvers: tuple[str, ...] = knob(("euler", "midpoint", "rk4"), "Solvers to evaluate with.")
    refinements: tuple[float, ...] = knob(
        (1.0, 2.0, 4.0, 8.0, 16.0, 32.0), "Evaluation steps / training steps (integers ≥ 1 for per-step weights)."
    )
    accuracy_up_to: float = knob(
        8.0, "Test accuracies (with and without recalibration) at refinements up to this; errors at all."
    )
    reference: str = knob("dopri5", "Adaptive reference solver.")
    reference_tol: float = knob(1e-9, "Its rtol = atol (float64); errors are taken against a solve at 0.1 × it.")

    def check(self) -> None:
        check_solvers("solvers", self.solvers, fixed_only=True)
        check_solvers("eval_solvers", self.eval_solvers, fixed_only=True)
        check_axis("depths", self.depths)
        self.check_design(self.horizon, self.step_sizes)
        check_step_sizes("refinements", self.refinements)
        check_step_sizes("accuracy_up_to", (self.accuracy_up_to,))
        if self.model.weights == "per_step":
            for r in self.refinements:
                if r < 1 or not float(r).is_integer():
                    raise ConfigError(
                        "{refinements}: "
                        + repr(r)
                        + " would take steps across the boundaries of per-step weights, which is not a "
                        + "discretisation error; give integers ≥ 1 (1,2,4,8,16,32)",
                        refinements=NAME_ONLY,
                    )
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
        if self.horizon is None:
            return {"train_solver": self.solvers, "step_size": self.step_sizes or (1.0,), "depth": self.depths,
                    "seed": self.seeds}  # fmt: skip
        return {"train_solver": self.solvers, "depth": self.depths, "seed": self.seeds}

    def extra_coords(self) -> dict[str, tuple[str, Sequence[Any]]]:
        if self.horizon is None:
            return {}
        return {"step_size": ("depth", [self.horizon_step(d, self.horizon) for d in self.depths])}

    def cell_configs(self, point: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
        depth = point["depth"]
        h = float(point["step_size"]) if self.horizon is None else self.horizon_step(depth, self.horizon)
        model = replace(self.model, solver=point["train_solver"], depth=depth, step_size=h)
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
        """ODE blocks of the deepest network: three stages, but at n = 1 stages 2 and 3 are
        transitions only (their stage entries stay NaN)."""
        if not self.image:
            return 1
        return 3 if any(blocks_per_stage(d, self.model.block) > 1 for d in self.depths) else 1

    def measure(self, model: nn.Module, data: TensorData, cell: Cell) -> Values:
        values, history = train_cell(model, data, cell)
        solvers, refinements, stages = len(self.eval_solvers), len(self.refinements), self.stages
        error, local = np.full((solvers, refinements, stages), np.nan), np.full((solvers, refinements, stages), np.nan)
        accuracy, loss, recal_accuracy, recal_loss, nfe = (np.full((solvers, refinements), np.nan) for _ in range(5))
        order, reference_error = np.full((solvers, stages), np.nan), np.full(stages, np.nan)
        values |= {"error": error, "local_order": local, "eval_accuracy": accuracy, "eval_loss": loss,
                   "eval_accuracy_recalibrated": recal_accuracy, "eval_loss_recalibrated": recal_loss,
                   "eval_nfe": nfe, "order": order, "reference_error": reference_error}  # fmt: skip
        values |= {
            "reference_accuracy": math.nan,
            "reference_accuracy_recalibrated": math.nan,
            "reference_nfe": math.nan,
        }
        if history.diverged:
            return values
        assert isinstance(model, ResidualNetwork)
        device = resolve_device(cell.train.device)
        tol = self.reference_tol
        # Stage errors in float64 on a few test samples, so that the reference's own error
        # and the high-order methods' errors at 32n steps are not drowned by single-precision
        # round-off. Accuracies in float32 on the whole test set, with the reference at a
        # tolerance float32 can resolve: a class decision needs no more.
        net64 = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
        net32 = copy.deepcopy(model).to(device=device, dtype=torch.float32).eval()
        x64 = data.features(data.x_test[:ERROR_SAMPLES].to(device), torch.float64)
        x, y = data.features(data.x_test.to(device), torch.float32), data.y_test.to(device)
        calibration = data.features(data.x_train[:CALIBRATION_SAMPLES].to(device), torch.float32)
        reference: dict[str, Any] = {"solver": self.reference, "adjoint": False}
        try:
            inputs, outputs = stage_states(net64.with_solver(**reference, rtol=tol * TIGHTER, atol=tol * TIGHTER), x64)
            with torch.no_grad():
                for s, block in enumerate(b for b in net64.with_solver(**reference, rtol=tol, atol=tol).body
                                          if isinstance(b, ODEBlock)):  # fmt: skip
                    reference_error[s] = float((block(inputs[s]) - outputs[s]).norm() / outputs[s].norm())
            loose = max(tol, 1e-5)
            reference32 = net32.with_solver(**reference, rtol=loose, atol=loose)
            _, values["reference_accuracy"] = evaluate(reference32, x, y)
            values["reference_nfe"] = _nfe(reference32)
            recalibrated = net32.with_solver(**reference, rtol=loose, atol=loose, recalibrate=calibration)
            _, values["reference_accuracy_recalibrated"] = evaluate(recalibrated, x, y)
        except SolverError:
            return values
        floor = 10 * np.nan_to_num(reference_error, nan=0.0)
        steps = [b.steps for b in net64.body if isinstance(b, ODEBlock)]
        for i, solver in enumerate(self.eval_solvers):
            for j, r in enumerate(self.refinements):
                stage_blocks = [b for b in net64.with_solver(solver, r).body if isinstance(b, ODEBlock)]
                with torch.no_grad():
                    for s, block in enumerate(stage_blocks):
                        error[i, j, s] = float((block(inputs[s]) - outputs[s]).norm() / outputs[s].norm())
                if r > self.accuracy_up_to:
                    continue
                candidate = net32.with_solver(solver, r)
                loss[i, j], accuracy[i, j] = evaluate(candidate, x, y)
                nfe[i, j] = _nfe(candidate)
                recal_loss[i, j], recal_accuracy[i, j] = evaluate(
                    net32.with_solver(solver, r, recalibrate=calibration), x, y
                )
            for s, n in enumerate(steps):
                m = np.array([max(1, round(r * n)) for r in self.refinements], dtype=float)
                local[i, :, s] = local_slopes(m, error[i, :, s], floor=floor[s])
                order[i, s] = fit_order(m, error[i, :, s], floor=floor[s])
        return values


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


def local_slopes(steps: np.ndarray, error: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """log(e_{j−1} / e_j) / log(m_j / m_{j−1}) at every j ≥ 1 (NaN at j = 0, and where either
    error is not finite or at or below ``floor``, the reference's resolution)."""
    out = np.full(len(steps), np.nan)
    ok = np.isfinite(error) & (error > floor)
    for j in range(1, len(steps)):
        if ok[j] and ok[j - 1] and steps[j] != steps[j - 1]:
            out[j] = math.log(error[j - 1] / error[j]) / math.log(steps[j] / steps[j - 1])
    return out


def fit_order(steps: np.ndarray, error: np.ndarray, floor: float = 0.0, use: np.ndarray | None = None) -> float:
    """Empirical order p from error ≈ C·steps^(−p): the median of the local slopes.

    Points at or below ``floor`` (the reference's own error), not finite, or not in
    ``use`` are left out; NaN when no pair of neighbours remains. The median of local
    slopes, not one line through all points, so that a pre-asymptotic first point or a
    last one near the floor does not bend the estimate.
    """
    keep = np.ones(len(steps), dtype=bool) if use is None else np.asarray(use, dtype=bool)
    slopes = local_slopes(np.asarray(steps, dtype=float)[keep], np.asarray(error, dtype=float)[keep], floor)
    slopes = slopes[np.isfinite(slopes)]
    return float(np.median(slopes)) if slopes.size else math.nan
