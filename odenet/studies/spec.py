"""Study configurations: frozen dataclasses that know their grid, layout and cells.

A study is a grid of independent *cells*. Each cell trains (and probes or re-evaluates)
one network; what it stores is described in ``odenet.studies.schema``. The four kinds:

* ``DepthStudy`` — solvers × depths × architectures (residual / plain) × seeds;
* ``StabilityStudy`` — solvers × step sizes × depths × seeds, spectra at init and after
  training (or, with ``horizon``, step sizes h = horizon / blocks-per-stage);
* ``ConvergenceStudy`` — train with each solver at each step size, then evaluate the
  trained weights with other solvers at n/2 … 8n steps against an adaptive reference;
* ``CompareStudy`` — named model variants × seeds (ResNet vs RK-Net vs ODE-Net).

Validation happens on construction with messages that name the fix, so a bad grid is
refused before anything is loaded or trained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import product
from typing import Any, ClassVar

from odenet.data import IMAGE_DATASETS
from odenet.experiment import ModelConfig
from odenet.models.cifar import blocks_per_stage
from odenet.solvers import get_method
from odenet.studies.schema import variables
from odenet.studies.store import Layout
from odenet.train import TrainConfig

__all__ = ["ARCHS", "Cell", "CompareStudy", "ConvergenceStudy", "DepthStudy", "StabilityStudy", "Study", "Variant"]

ARCHS = ("residual", "plain")


@dataclass(frozen=True)
class Cell:
    """One unit of work: its index along the cell dims and the configs it runs."""

    index: tuple[int, ...]
    labels: tuple[Any, ...]
    model: ModelConfig
    train: TrainConfig


@dataclass(frozen=True)
class Study:
    """What every study has: the data, the base model and training, the seeds."""

    kind: ClassVar[str] = ""
    dataset: str = "digits"
    data_dir: str | None = None
    model: ModelConfig = field(default_factory=lambda: ModelConfig(depth=20))
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        _nonempty("seeds", self.seeds)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be non-negative integers, got {list(self.seeds)}")
        _unique("seeds", self.seeds)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **asdict(self)}, sort_keys=True)

    @property
    def image(self) -> bool:
        return self.dataset in IMAGE_DATASETS

    def _check_depth(self, depth: int, name: str = "depths") -> None:
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise ValueError(f"{name}: {depth!r} is not an integer")
        if self.image:
            try:
                blocks_per_stage(depth, self.model.block)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        elif depth < 1:
            raise ValueError(f"{name}: {depth} is not a positive number of residual blocks")

    def blocks(self, depth: int) -> int:
        """Residual blocks of a network of this depth (3n for conv nets, depth for MLPs)."""
        return 3 * blocks_per_stage(depth, self.model.block) if self.image else depth

    def _cell(self, index: tuple[int, ...], labels: tuple[Any, ...], seed: int, **model: Any) -> Cell:
        return Cell(index, labels, replace(self.model, **model), replace(self.train, seed=seed))

    # Filled in by each kind.
    def layout(self) -> Layout:
        raise NotImplementedError

    def cells(self) -> list[Cell]:
        raise NotImplementedError


def _nonempty(name: str, values: Sequence[Any]) -> None:
    if len(values) == 0:
        raise ValueError(f"{name}: the list is empty; give at least one value")


def _unique(name: str, values: Sequence[Any]) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: {list(values)} repeats a value; give each once")


def _solvers(name: str, solvers: Sequence[str], fixed_only: bool = False) -> None:
    _nonempty(name, solvers)
    _unique(name, solvers)
    for s in solvers:
        method = get_method(s)  # UnknownSolverError (a ValueError) lists the names
        if fixed_only and method.adaptive:
            raise ValueError(f"{name}: {s} is adaptive; this study needs fixed-step solvers (euler, midpoint, rk4, …)")


def _step_sizes(name: str, values: Sequence[float]) -> None:
    _nonempty(name, values)
    for h in values:
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not (math.isfinite(h) and h > 0):
            raise ValueError(f"{name}: {h!r} is not a positive step size (e.g. 0.1)")
    _unique(name, values)


@dataclass(frozen=True)
class DepthStudy(Study):
    """Accuracy versus depth: solvers × depths × arch (residual / plain) × seeds."""

    kind: ClassVar[str] = "depth"
    solvers: tuple[str, ...] = ("euler",)
    depths: tuple[int, ...] = (20, 32, 56, 110)
    archs: tuple[str, ...] = ARCHS

    def __post_init__(self) -> None:
        super().__post_init__()
        _solvers("solvers", self.solvers)
        _nonempty("depths", self.depths)
        for d in self.depths:
            self._check_depth(d)
        _unique("depths", self.depths)
        _nonempty("arch", self.archs)
        _unique("arch", self.archs)
        for a in self.archs:
            if a not in ARCHS:
                raise ValueError(f"arch: {a!r} is not residual or plain")
        if "plain" in self.archs:
            for s in self.solvers:
                if get_method(s).adaptive:
                    raise ValueError(
                        f"arch: plain drops the identity from fixed steps and {s} is adaptive; "
                        "use fixed-step solvers or arch residual only"
                    )

    def layout(self) -> Layout:
        return Layout(
            {"solver": self.solvers, "depth": self.depths, "arch": self.archs, "seed": self.seeds},
            _inner(self.train.epochs, max(self.blocks(d) for d in self.depths)),
            variables(self.kind),
        )

    def cells(self) -> list[Cell]:
        axes = (self.solvers, self.depths, self.archs, self.seeds)
        return [
            self._cell(index, labels, labels[3], solver=labels[0], depth=labels[1], residual=labels[2] == "residual")
            for index, labels in _grid(axes)
        ]


@dataclass(frozen=True)
class ProbeConfig:
    """How the stability probes look. samples: inputs whose block Jacobians are probed;
    eigenvalues: how many leading ones per block; tol: ARPACK's relative tolerance;
    grad_samples: the batch for gradient norms."""

    samples: int = 4
    eigenvalues: int = 4
    tol: float = 1e-2
    grad_samples: int = 256

    def __post_init__(self) -> None:
        for name in ("samples", "eigenvalues", "grad_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"probe.{name} must be at least 1")
        if not (0 < self.tol < 1):
            raise ValueError("probe.tol must lie in (0, 1)")


@dataclass(frozen=True)
class StabilityStudy(Study):
    """Step size: solvers × step sizes × depths × seeds, probed at init and after training.

    horizon: if set, the step size of each depth is horizon / n (n blocks per stage for
    conv nets, the depth for MLPs) and ``step_sizes`` must be empty.
    """

    kind: ClassVar[str] = "stability"
    solvers: tuple[str, ...] = ("euler", "midpoint", "rk4")
    step_sizes: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    depths: tuple[int, ...] = (20,)
    horizon: float | None = None
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        _solvers("solvers", self.solvers, fixed_only=True)
        _nonempty("depths", self.depths)
        for d in self.depths:
            self._check_depth(d)
        _unique("depths", self.depths)
        if self.horizon is None:
            _step_sizes("step_sizes", self.step_sizes)
        else:
            if not (math.isfinite(self.horizon) and self.horizon > 0):
                raise ValueError(f"horizon: {self.horizon!r} is not a positive number")
            if self.step_sizes:
                raise ValueError("give either step sizes or a horizon (which sets h = horizon / blocks), not both")
        if not self.model.residual:
            raise ValueError("stability studies probe residual networks (|R(hλ)| has no meaning without the skip)")

    def step_size(self, depth: int) -> float:
        """h at a fixed horizon: the horizon spread over one stage's blocks."""
        assert self.horizon is not None
        n = self.blocks(depth) // 3 if self.image else depth
        return self.horizon / n

    def layout(self) -> Layout:
        inner = _inner(self.train.epochs, max(self.blocks(d) for d in self.depths))
        inner["eig"] = list(range(self.probe.eigenvalues))
        if self.horizon is None:
            cells = {"solver": self.solvers, "step_size": self.step_sizes, "depth": self.depths, "seed": self.seeds}
            return Layout(cells, inner, variables(self.kind))
        cells = {"solver": self.solvers, "depth": self.depths, "seed": self.seeds}
        extra = {"step_size": ("depth", [self.step_size(d) for d in self.depths])}
        return Layout(cells, inner, variables(self.kind), extra)

    def cells(self) -> list[Cell]:
        if self.horizon is None:
            axes: tuple[Sequence[Any], ...] = (self.solvers, self.step_sizes, self.depths, self.seeds)
            return [
                self._cell(i, lab, lab[3], solver=lab[0], step_size=float(lab[1]), depth=lab[2])
                for i, lab in _grid(axes)
            ]
        axes = (self.solvers, self.depths, self.seeds)
        return [
            self._cell(i, lab, lab[2], solver=lab[0], depth=lab[1], step_size=self.step_size(lab[1]))
            for i, lab in _grid(axes)
        ]


@dataclass(frozen=True)
class ConvergenceStudy(Study):
    """Is the trained network an ODE? Train with each solver and step size, then evaluate
    the same weights with ``eval_solvers`` at ``refinements`` × the training steps and
    with ``reference`` (adaptive, float64) at tight tolerance."""

    kind: ClassVar[str] = "convergence"
    solvers: tuple[str, ...] = ("euler", "rk4")
    step_sizes: tuple[float, ...] = (1.0,)
    eval_solvers: tuple[str, ...] = ("euler", "midpoint", "rk4")
    refinements: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    reference: str = "dopri5"
    reference_tol: float = 1e-9

    def __post_init__(self) -> None:
        super().__post_init__()
        _solvers("solvers", self.solvers, fixed_only=True)
        _solvers("eval_solvers", self.eval_solvers, fixed_only=True)
        _step_sizes("step_sizes", self.step_sizes)
        _step_sizes("refinements", self.refinements)
        if not get_method(self.reference).adaptive:
            raise ValueError(f"reference: {self.reference} is fixed-step; give an adaptive solver (dopri5, dopri8, …)")
        if not (0 < self.reference_tol < 1e-3):
            raise ValueError(f"reference_tol: {self.reference_tol!r} must lie in (0, 1e-3) to serve as a reference")
        self._check_depth(self.model.depth, "depth")
        if not self.model.residual:
            raise ValueError("convergence studies need residual networks (the plain twin is no ODE solver)")

    def layout(self) -> Layout:
        inner: dict[str, Sequence[Any]] = {"epoch": list(range(1, self.train.epochs + 1))}
        inner |= {"eval_solver": self.eval_solvers, "refinement": self.refinements, "stage": list(range(self.stages))}
        cells = {"train_solver": self.solvers, "step_size": self.step_sizes, "seed": self.seeds}
        return Layout(cells, inner, variables(self.kind))

    @property
    def stages(self) -> int:
        """ODE blocks of the network: three stages, but at n = 1 stages 2 and 3 are transitions only."""
        if not self.image:
            return 1
        return 3 if blocks_per_stage(self.model.depth, self.model.block) > 1 else 1

    def cells(self) -> list[Cell]:
        axes = (self.solvers, self.step_sizes, self.seeds)
        return [self._cell(i, lab, lab[2], solver=lab[0], step_size=float(lab[1])) for i, lab in _grid(axes)]


@dataclass(frozen=True)
class Variant:
    """A named model in a comparison, e.g. ResNet (euler, per-step weights)."""

    name: str
    model: ModelConfig


@dataclass(frozen=True)
class CompareStudy(Study):
    """Named model variants × seeds: accuracy, parameters and NFE side by side."""

    kind: ClassVar[str] = "compare"
    variants: tuple[Variant, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _nonempty("models", self.variants)
        _unique("models", [v.name for v in self.variants])
        for v in self.variants:
            method = get_method(v.model.solver)
            self._check_depth(v.model.depth, f"models.{v.name}.depth")
            if v.model.adjoint and not method.adaptive:
                raise ValueError(f"models.{v.name}: adjoint needs an adaptive solver, not {method.name}")

    def layout(self) -> Layout:
        return Layout(
            {"model": [v.name for v in self.variants], "seed": self.seeds},
            {"epoch": list(range(1, self.train.epochs + 1))},
            variables(self.kind),
        )

    def cells(self) -> list[Cell]:
        out = []
        for index, (name, seed) in _grid(([v.name for v in self.variants], self.seeds)):
            variant = self.variants[index[0]]
            out.append(Cell(index, (name, seed), variant.model, replace(self.train, seed=seed)))
        return out


def _inner(epochs: int, blocks: int) -> dict[str, Sequence[Any]]:
    return {"epoch": list(range(1, epochs + 1)), "when": ["init", "final"], "block": list(range(blocks))}


def _grid(axes: Sequence[Sequence[Any]]) -> list[tuple[tuple[int, ...], tuple[Any, ...]]]:
    """(index, labels) for every combination, last axis fastest."""
    ranges = [range(len(a)) for a in axes]
    return [(idx, tuple(a[i] for a, i in zip(axes, idx, strict=True))) for idx in product(*ranges)]
