"""Loss landscapes over depth: solvers × depths × residual/plain × seeds (Li et al. 2018).

Li, Xu, Taylor, Studer & Goldstein (2018), "Visualizing the Loss Landscape of Neural
Nets", Fig. 5: without skip connections the loss surface of a deep network turns from
nearly convex to chaotic as depth grows; with them it stays nearly convex. Per cell the
network is trained, then (``odenet.landscape``) on a fixed evaluation batch — the first
``samples`` training examples, held on the device — this kind stores

* the 1-D slice L(θ + αδ): loss and accuracy over ``alpha_1d``;
* the 2-D slice L(θ + αδ + βη): loss over ``alpha`` × ``beta``, with the eigenvalues of
  its 2×2 Hessian (central differences) at every interior grid point and the fraction of
  those points where the slice curves down (``negative_curvature_fraction``);
* the loss at θ, and Lanczos estimates of the extreme eigenvalues of the full Hessian at
  θ over the filter weights, with their residuals and |λ_min / λ_max| (Fig. 7's ratio, at
  the centre only: at every grid point it would cost a Lanczos run per point).

δ and η are filter-normalised random directions drawn from the cell's seed; δ is the
same for the 1-D slice and the α axis of the 2-D one (the 1-D slice is a finer cut of the
surface at β = 0). Biases and normalisation parameters do not move. Batch norm uses the
perturbed network's statistics on the evaluation batch (``bn_statistics = "batch"``,
recalibration at every point) or the trained running ones (``"running"``, Li et al.'s
code); ``odenet.landscape`` says why the first is the default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import xarray as xr
from torch import nn

from odenet.blocks import ode_blocks
from odenet.data import TensorData
from odenet.knobs import check_choice, check_count, check_finite, knob
from odenet.labels import Variable
from odenet.landscape import (
    BATCH_NORM_MODES,
    filter_normalised_direction,
    grid,
    hessian_extremes,
    loss_surface,
    slice_curvature,
)
from odenet.studies.base import Cell, Values, train_cell
from odenet.studies.kinds.depth import ArchGrid, gradient_batch
from odenet.train import resolve_device

__all__ = ["LANDSCAPE", "LandscapeStudy"]

LANDSCAPE: tuple[Variable, ...] = (
    Variable("centre_loss", (), "mean cross-entropy on the evaluation batch at the trained weights", "nat"),
    Variable("slice_loss", ("alpha_1d",), "mean cross-entropy on the evaluation batch along the 1-D slice", "nat"),
    Variable("slice_accuracy", ("alpha_1d",), "accuracy on the evaluation batch along the 1-D slice", "1"),
    Variable("surface_loss", ("alpha", "beta"), "mean cross-entropy on the evaluation batch over the 2-D slice", "nat"),
    Variable(
        "curvature_min",
        ("alpha", "beta"),
        "smaller eigenvalue of the 2-D slice's Hessian (central differences; NaN on the grid's edge)",
        "nat",
    ),
    Variable(
        "curvature_max",
        ("alpha", "beta"),
        "larger eigenvalue of the 2-D slice's Hessian (central differences; NaN on the grid's edge)",
        "nat",
    ),
    Variable(
        "negative_curvature_fraction",
        (),
        "fraction of interior points of the 2-D slice where its Hessian has a negative eigenvalue",
        "1",
    ),
    Variable("hessian_min", (), "smallest eigenvalue of the loss Hessian at the trained weights (Lanczos)", "nat"),
    Variable("hessian_max", (), "largest eigenvalue of the loss Hessian at the trained weights (Lanczos)", "nat"),
    Variable("hessian_min_residual", (), "residual |Hv - lambda v| of the smallest Ritz pair", "nat"),
    Variable("hessian_max_residual", (), "residual |Hv - lambda v| of the largest Ritz pair", "nat"),
    Variable("hessian_ratio", (), "|lambda_min / lambda_max| of the loss Hessian at the trained weights", "1"),
)


@dataclass(frozen=True)
class LandscapeStudy(ArchGrid):
    """Loss landscapes: solvers × depths × arch (residual / plain) × seeds, filter-normalised slices.

    Per cell: the training history and outcome; 1-D and 2-D slices of the loss around
    the trained weights along filter-normalised random directions (Li et al. 2018), the
    curvature of the 2-D slice and the extreme Hessian eigenvalues at the centre.
    """

    kind: ClassVar[str] = "landscape"
    variables: ClassVar[tuple[Variable, ...]] = LANDSCAPE
    coords: ClassVar[Mapping[str, tuple[str, str]]] = {
        **ArchGrid.coords,
        "alpha_1d": ("step alpha along the filter-normalised direction delta (1-D slice)", "1"),
        "alpha": ("step alpha along the filter-normalised direction delta", "1"),
        "beta": ("step beta along the filter-normalised direction eta", "1"),
    }
    # How the grid is cut into vmapped calls changes the speed, not what a cell means.
    incidental: ClassVar[tuple[str, ...]] = ("data_dir", "chunk")

    depths: tuple[int, ...] = knob((8, 20, 32), "Depths (6n+2 for conv nets, blocks for MLPs).")
    samples: int = knob(512, "Training examples the loss is evaluated on: one fixed batch, held on the device.")
    points_1d: int = knob(41, "Grid points of the 1-D slice, alpha in [-span, span].")
    points_2d: int = knob(21, "Grid points per axis of the 2-D slice (points_2d² evaluations); odd puts 0 on it.")
    span: float = knob(1.0, "Half-width of the grid in units of the filter-normalised directions (Li et al.: 1).")
    chunk: int = knob(4, "Grid points evaluated together in one vmapped call (memory: chunk × one forward pass).")
    bn_statistics: Literal["batch", "running"] = knob(
        "batch",
        "Batch-norm statistics at a perturbed point: batch (the perturbed network's own on the evaluation "
        "batch, i.e. recalibrated at every point) or running (the trained ones, as Li et al.'s code).",
    )
    hessian_steps: int = knob(20, "Lanczos steps for the extreme Hessian eigenvalues at the centre (0: skip).")

    def check(self) -> None:
        super().check()
        check_count("samples", self.samples)
        check_count("points_1d", self.points_1d, minimum=2)
        check_count("points_2d", self.points_2d, minimum=3)  # a central difference needs an interior point
        check_finite("span", self.span)
        check_count("chunk", self.chunk)
        check_choice("bn_statistics", self.bn_statistics, BATCH_NORM_MODES)
        check_count("hessian_steps", self.hessian_steps, minimum=0)

    def inner(self) -> dict[str, Sequence[Any]]:
        return {
            **super().inner(),
            "alpha_1d": list(grid(self.points_1d, self.span)),
            "alpha": list(grid(self.points_2d, self.span)),
            "beta": list(grid(self.points_2d, self.span)),
        }

    def measure(self, model: nn.Module, data: TensorData, cell: Cell) -> Values:
        values, history = train_cell(model, data, cell)
        if history.diverged:  # no landscape around weights that are not a trained network
            return values
        device = resolve_device(cell.train.device)
        x, y = gradient_batch(data, self.samples, device)
        generator = torch.Generator().manual_seed(cell.train.seed)
        delta = filter_normalised_direction(model, generator)
        eta = filter_normalised_direction(model, generator)
        a1, a2 = grid(self.points_1d, self.span), grid(self.points_2d, self.span)

        def surface(directions: tuple[dict[str, torch.Tensor], ...], *axes: np.ndarray) -> xr.Dataset:
            return loss_surface(model, x, y, directions, *axes, chunk=self.chunk, batch_norm=self.bn_statistics)

        centre = surface((delta,), np.zeros(1))
        line = surface((delta,), a1)
        plane = surface((delta, eta), a2, a2)
        curvature = slice_curvature(plane["loss"].values, a2, a2)
        out = {
            **values,
            "centre_loss": float(centre["loss"].values[0]),
            "slice_loss": line["loss"].values,
            "slice_accuracy": line["accuracy"].values,
            "surface_loss": plane["loss"].values,
            "curvature_min": curvature.lam_min,
            "curvature_max": curvature.lam_max,
            "negative_curvature_fraction": curvature.negative_fraction(),
        }
        # The adjoint method has no second derivatives: those cells keep NaN for the Hessian.
        if self.hessian_steps and not any(block.adjoint for block in ode_blocks(model)):
            h = hessian_extremes(model, x, y, self.hessian_steps, generator, batch_norm=self.bn_statistics)
            out |= {
                "hessian_min": h.lam_min,
                "hessian_max": h.lam_max,
                "hessian_min_residual": h.residual_min,
                "hessian_max_residual": h.residual_max,
                "hessian_ratio": h.ratio,
            }
        return out
