"""Shattered gradients: solvers × depths × residual/plain × seeds (Balduzzi et al. 2017).

The question of Balduzzi et al. (2017), "The Shattered Gradients Problem: If resnets are
the answer, then what is the question?" (ICML): sampled over a fine 1-D grid of inputs,
the gradient of a deep *plain* network decorrelates with depth until it looks like white
noise, while a residual network's stays correlated (brown noise). Per cell, at
initialisation and after training, ``odenet.shattered`` measures the derivative of a
class logit along ``lines`` lines through input space — line j runs from training
example 2j to training example 2j + 1 (of the cell's seeded split) and differentiates
the logit of the first one's class — on a grid of ``points`` positions, and stores the
curves, their autocorrelation up to ``max_lag`` and two summaries (lag-1 correlation,
spectral slope).

Choices, and why:

* Every line is stored, not a mean over lines: the count is the ``line`` dimension and
  any statistic (the mean over lines, then over seeds, as the figures take it) can be
  formed afterwards.
* At initialisation the batch-norm statistics are calibrated on training data first
  (``odenet.norms.calibrate_batchnorm``, on a copy): the defaults (mean 0, variance 1)
  would make eval-mode batch norm the identity and the measured function would not be
  the network training starts from — in a plain net without normalisation the signal
  grows or shrinks with depth. After training the running statistics are training's own.
* Fixed-step solvers only: the plain twin is defined for them alone, and an adaptive
  solver's step control would couple the points of the grid.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from odenet.data import TensorData
from odenet.errors import ConfigError, literal
from odenet.knobs import check_count, knob
from odenet.labels import Variable, over
from odenet.norms import CALIBRATION_SAMPLES, calibrate_batchnorm
from odenet.shattered import SHATTERING, line_grid, missing_shattering, shattering
from odenet.studies.base import Cell, Values, init_and_final, train_cell
from odenet.studies.kinds.depth import ArchGrid
from odenet.train import resolve_device

__all__ = ["ShatteredStudy", "line_ends"]


def line_ends(data: TensorData, lines: int) -> tuple[Tensor, Tensor, Tensor]:
    """(x0, x1, logits) of the lines: training examples 0, 2, 4, … to 1, 3, 5, …, and the
    class of each start. x0, x1: (lines, …); logits: (lines,) int64."""
    available = len(data.x_train)
    if 2 * lines > available:
        found = literal(f"{data.name} has {available}: use at most {available // 2}")
        raise ConfigError("{lines} needs 2 training examples per line; " + found, lines=lines)
    x = data.features(data.x_train[: 2 * lines])
    return x[0::2], x[1::2], data.y_train[: 2 * lines : 2].clone()


@dataclass(frozen=True)
class ShatteredStudy(ArchGrid):
    """Shattered gradients: solvers × depths × arch (residual / plain) × seeds.

    Per cell: the training history and outcome; at initialisation (batch norm
    calibrated) and after training, the gradient curve of a class logit along each line
    through input space, its autocorrelation, lag-1 correlation and spectral slope.
    """

    kind: ClassVar[str] = "shattered"
    variables: ClassVar[tuple[Variable, ...]] = (
        *over("when", SHATTERING),
        Variable("line_logit", ("line",), "class whose logit is differentiated along the line", "1", "int64"),
    )
    coords: ClassVar[Mapping[str, tuple[str, str]]] = {
        **ArchGrid.coords,
        "line": ("line through input space (line j: training example 2j to 2j + 1)", "1"),
        "s": ("position along the line, x(s) = x0 + s (x1 - x0)", "1"),
        "lag": ("lag of the autocorrelation (grid points)", "1"),
    }

    fixed_steps: ClassVar[bool] = True

    depths: tuple[int, ...] = knob((8, 14, 20, 32), "Depths (6n+2 for conv nets, blocks for MLPs).")
    lines: int = knob(8, "Lines through input space (pairs of training examples) per cell.")
    points: int = knob(256, "Grid points along each line (Balduzzi et al. use 256).")
    max_lag: int = knob(32, "Largest lag of the stored autocorrelation.")

    def check(self) -> None:
        super().check()
        check_count("lines", self.lines)
        check_count("points", self.points, 5)  # a spectral slope needs two frequencies
        check_count("max_lag", self.max_lag)
        if self.max_lag >= self.points:
            raise ConfigError(
                "{max_lag} must be below {points} (a curve of n points has n − 1 lags)",
                max_lag=self.max_lag,
                points=self.points,
            )

    def inner(self) -> dict[str, Sequence[Any]]:
        return {
            "epoch": list(range(1, self.train.epochs + 1)),
            "when": ["init", "final"],
            "line": list(range(self.lines)),
            "s": line_grid(self.points).tolist(),
            "lag": list(range(self.max_lag + 1)),
        }

    def measure(self, model: nn.Module, data: TensorData, cell: Cell) -> Values:
        device = resolve_device(cell.train.device)
        model.to(device)
        x0, x1, logits = line_ends(data, self.lines)
        x0, x1 = x0.to(device), x1.to(device)
        calibration = data.features(data.x_train[:CALIBRATION_SAMPLES].to(device))
        calibrated = calibrate_batchnorm(copy.deepcopy(model), calibration)
        init = shattering(calibrated, x0, x1, logits, self.points, self.max_lag)
        values, history = train_cell(model, data, cell)
        if history.diverged:
            final = missing_shattering(self.lines, self.points, self.max_lag)
        else:
            final = shattering(model, x0, x1, logits, self.points, self.max_lag)
        return {**values, **init_and_final(init, final), "line_logit": logits.numpy()}
