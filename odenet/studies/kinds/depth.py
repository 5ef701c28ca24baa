"""Accuracy versus depth: solvers × depths × residual/plain × seeds (He et al. 2015's degradation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from torch import nn

from odenet.data import TensorData
from odenet.errors import NAME_ONLY, ConfigError
from odenet.experiment import ModelConfig
from odenet.knobs import check_count, knob
from odenet.labels import Variable, over
from odenet.probes import GRADIENTS, gradient_norms, missing
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
from odenet.train import TrainConfig, resolve_device

__all__ = ["ARCHS", "ArchGrid", "DepthStudy", "gradient_batch"]

ARCHS = ("residual", "plain")


def gradient_batch(data: TensorData, samples: int, device: Any) -> tuple[Any, Any]:
    """The first ``samples`` training examples (float features): the batch the gradient probes use."""
    return data.features(data.x_train[:samples].to(device)), data.y_train[:samples].to(device)


@dataclass(frozen=True)
class ArchGrid(Study):
    """The grid of kinds that set a residual net against its plain twin: solvers × depths ×
    arch (residual / plain) × seeds. Not a kind itself; ``fixed_steps`` kinds refuse
    adaptive solvers (they need the steps of a solve)."""

    coords: ClassVar[Mapping[str, tuple[str, str]]] = {
        "arch": ("architecture (residual: skip connections; plain: none)", ""),
    }
    sets: ClassVar[tuple[str, ...]] = ("solver", "depth", "residual")
    fixed_steps: ClassVar[bool] = False

    solvers: tuple[str, ...] = knob(("euler",), "Solvers, e.g. euler,rk4.")
    depths: tuple[int, ...] = knob((20, 32, 56, 110), "Depths (6n+2 for conv nets, blocks for MLPs).")
    archs: tuple[str, ...] = knob(ARCHS, "residual and/or plain.")

    def check(self) -> None:
        check_solvers("solvers", self.solvers, fixed_only=self.fixed_steps)
        check_axis("depths", self.depths)
        check_axis("archs", self.archs)
        for a in self.archs:
            if a not in ARCHS:
                raise ConfigError("{archs}: " + repr(a) + " is not residual or plain", archs=NAME_ONLY)

    def axes(self) -> dict[str, Sequence[Any]]:
        return {"solver": self.solvers, "depth": self.depths, "arch": self.archs, "seed": self.seeds}

    def cell_configs(self, point: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
        model = replace(self.model, solver=point["solver"], depth=point["depth"], residual=point["arch"] == "residual")
        return model, replace(self.train, seed=point["seed"])


@dataclass(frozen=True)
class DepthStudy(ArchGrid):
    """Accuracy versus depth: solvers × depths × arch (residual / plain) × seeds.

    Per cell: the training history and outcome, and the gradient norms of every block
    (its own weights, its input state) at initialisation and after training.
    """

    kind: ClassVar[str] = "depth"
    variables: ClassVar[tuple[Variable, ...]] = over("when", GRADIENTS)

    grad_samples: int = knob(256, "Training examples whose loss gradient is measured per block.")

    def check(self) -> None:
        super().check()
        check_count("grad_samples", self.grad_samples)

    def inner(self) -> dict[str, Sequence[Any]]:
        return inner_blocks(self.train.epochs, max(self.blocks(d) for d in self.depths))

    def measure(self, model: nn.Module, data: TensorData, cell: Cell) -> Values:
        device = resolve_device(cell.train.device)
        model.to(device)
        x, y = gradient_batch(data, self.grad_samples, device)
        init = gradient_norms(model, x, y)
        values, history = train_cell(model, data, cell)
        final = missing(GRADIENTS, init.sizes["block"]) if history.diverged else gradient_norms(model, x, y)
        return {**values, **init_and_final(init, final)}
