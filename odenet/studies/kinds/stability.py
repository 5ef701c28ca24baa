"""Step-size stability: solvers × step sizes (or depths at a fixed horizon) × norms × shortcuts × seeds.

Every block is probed at initialisation (batch norm calibrated first) and after
training (``odenet.probes``): Jacobian eigenvalues by largest modulus and by largest
real part (ARPACK tolerance, convergence and residuals stored), max |R(hλ)| with the
block's own solver, the exact flow's growth and the discretisation's excess over it,
the spectral radius of the one-step map, perturbation amplification, activation size
and gradient norms.

Two designs. With ``horizon`` T, the step size of each depth is h = T / n (n blocks per
stage): every cell discretises a stage of the same length, so h is varied alone. With
``step_sizes`` (the fixed-depth design) the depth is fixed and h varies, so the horizon
T = n·h varies with it: a change across h may come from h or from T. ``norms`` and
``shortcuts`` are axes too, the controls for effects of the normalisation and of the
stage transitions (option A's zero-padded channels hold h·F only, variance ∝ h²).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from torch import nn

from odenet.data import TensorData
from odenet.errors import ConfigError
from odenet.experiment import ModelConfig
from odenet.knobs import check_count, knob
from odenet.labels import Variable, over
from odenet.norms import CALIBRATION_SAMPLES, FrozenBatchNorm, calibrate_batchnorm
from odenet.probes import GRADIENTS, SELECTIONS, SPECTRUM, gradient_norms, missing, probe_blocks
from odenet.studies.base import (
    Cell,
    Study,
    Values,
    check_axis,
    check_solvers,
    init_and_final,
    inner_blocks,
    train_cell,
)
from odenet.studies.kinds.depth import gradient_batch
from odenet.train import TrainConfig, resolve_device

__all__ = ["DEFAULT_STEP_SIZES", "ProbeConfig", "StabilityStudy"]

# The step sizes of a fixed-depth sweep when none are given: two decades around h = 1/3.
DEFAULT_STEP_SIZES = (0.03, 0.1, 0.3, 1.0, 3.0)


@dataclass(frozen=True)
class ProbeConfig:
    """How the stability probes look."""

    samples: int = knob(4, "Inputs whose block Jacobians are probed.")
    eigenvalues: int = knob(4, "Leading eigenvalues per block.")
    tol: float = knob(1e-2, "ARPACK's relative tolerance for the eigenvalues.")
    grad_samples: int = knob(256, "Training examples whose loss gradient is measured per block.")

    def __post_init__(self) -> None:
        for name in ("samples", "eigenvalues", "grad_samples"):
            check_count(name, getattr(self, name))
        if not (isinstance(self.tol, float) and 0 < self.tol < 1):
            raise ConfigError("{tol} must lie in (0, 1)", tol=self.tol)


@dataclass(frozen=True)
class StabilityStudy(Study):
    """Step size: solvers × step sizes × depths × seeds, probed at init and after training.

    horizon: if set, the step size of each depth is horizon / n (n blocks per stage for
    conv nets, the depth for MLPs) and ``step_sizes`` is not given.
    """

    kind: ClassVar[str] = "stability"
    variables: ClassVar[tuple[Variable, ...]] = (
        *over("when", GRADIENTS + SPECTRUM),
        Variable("arpack_tol", (), "ARPACK's relative tolerance for the eigenvalues", "1"),
    )
    coords: ClassVar[Mapping[str, tuple[str, str]]] = {
        "select": ("eigenvalues chosen by largest modulus or by largest real part", ""),
        "norm": ("normalisation in the fields (auto: batch here)", ""),
        "shortcut": ("stage-transition shortcut (A: zero-padding identity; B: 1x1 projection)", ""),
    }
    sets: ClassVar[tuple[str, ...]] = ("solver", "depth", "step_size")

    solvers: tuple[str, ...] = knob(("euler", "midpoint", "rk4"), "Fixed-step solvers.")
    step_sizes: tuple[float, ...] | None = knob(
        None, "Step sizes: 0.1,0.3,1 or log:0.01:3:8; default 0.03,0.1,0.3,1,3 (none with a horizon)."
    )
    depths: tuple[int, ...] = knob((20,), "One or several depths.")
    horizon: float | None = knob(
        None, "Fix T = n·h: h = T / blocks per stage (the fixed-depth sweep varies T with h; this does not)."
    )
    norms: tuple[str, ...] | None = knob(None, "Normalisations as an axis, e.g. batch,group,none (default: norm).")
    shortcuts: tuple[str, ...] | None = knob(None, "Shortcuts as an axis: A,B (default: shortcut).")
    probe: ProbeConfig = knob(default_factory=ProbeConfig)

    def check(self) -> None:
        check_solvers("solvers", self.solvers, fixed_only=True)
        check_axis("depths", self.depths)
        self.model_axis("norm", self.norms)
        self.model_axis("shortcut", self.shortcuts)
        self.check_design(self.horizon, self.step_sizes)
        if not self.model.residual:
            raise ConfigError(
                "stability studies probe residual networks (|R(hλ)| has no meaning without the skip); drop {residual}",
                residual=False,
            )

    @property
    def grid_step_sizes(self) -> tuple[float, ...]:
        """The step sizes of a fixed-depth sweep: those given, or ``DEFAULT_STEP_SIZES``."""
        return DEFAULT_STEP_SIZES if self.step_sizes is None else self.step_sizes

    def step_size(self, depth: int) -> float:
        """h at a fixed horizon: the horizon spread over one stage's blocks."""
        assert self.horizon is not None
        return self.horizon_step(depth, self.horizon)

    def axes(self) -> dict[str, Sequence[Any]]:
        controls = {
            "norm": self.model_axis("norm", self.norms),
            "shortcut": self.model_axis("shortcut", self.shortcuts),
        }
        if self.horizon is None:
            grid = {"solver": self.solvers, "step_size": self.grid_step_sizes, "depth": self.depths}
        else:
            grid = {"solver": self.solvers, "depth": self.depths}
        return {**grid, **controls, "seed": self.seeds}

    def extra_coords(self) -> dict[str, tuple[str, Sequence[Any]]]:
        if self.horizon is None:
            return {}
        return {"step_size": ("depth", [self.step_size(d) for d in self.depths])}

    def cell_configs(self, point: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
        h = float(point["step_size"]) if self.horizon is None else self.step_size(point["depth"])
        model = replace(
            self.model,
            solver=point["solver"],
            depth=point["depth"],
            step_size=h,
            norm=point["norm"],
            shortcut=point["shortcut"],
        )
        return model, replace(self.train, seed=point["seed"])

    def inner(self) -> dict[str, Sequence[Any]]:
        inner = inner_blocks(self.train.epochs, max(self.blocks(d) for d in self.depths))
        inner["select"] = list(SELECTIONS)
        inner["eig"] = list(range(self.probe.eigenvalues))
        return inner

    def measure(self, model: nn.Module, data: TensorData, cell: Cell) -> Values:
        device = resolve_device(cell.train.device)
        model.to(device)
        probe = self.probe
        xs = data.features(data.x_train[: probe.samples].to(device))
        x, y = gradient_batch(data, probe.grad_samples, device)
        calibration = data.features(data.x_train[:CALIBRATION_SAMPLES].to(device))
        calibrated = calibrate_batchnorm(copy.deepcopy(model), calibration)
        if any(isinstance(m, FrozenBatchNorm) for m in model.modules()):
            # training calibrates frozen statistics before every epoch; do so for the model it trains
            calibrate_batchnorm(model, calibration, only=FrozenBatchNorm)
        spectrum_init = probe_blocks(calibrated, xs, k=probe.eigenvalues, tol=probe.tol, seed=cell.train.seed)
        grads_init = gradient_norms(model, x, y)
        values, history = train_cell(model, data, cell)
        blocks = spectrum_init.sizes["block"]
        if history.diverged:
            spectrum_final = missing(SPECTRUM, blocks, probe.eigenvalues)
            grads_final = missing(GRADIENTS, blocks)
        else:
            spectrum_final = probe_blocks(model, xs, k=probe.eigenvalues, tol=probe.tol, seed=cell.train.seed)
            grads_final = gradient_norms(model, x, y)
        init = spectrum_init.merge(grads_init)
        final = spectrum_final.merge(grads_final)
        return {**values, **init_and_final(init, final), "arpack_tol": probe.tol}
