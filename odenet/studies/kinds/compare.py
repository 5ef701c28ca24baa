"""Named model variants × seeds: accuracy, parameters and NFE side by side (Chen et al. 2018, Table 1)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from torch import nn

from odenet.data import TensorData
from odenet.errors import ConfigError
from odenet.experiment import ModelConfig
from odenet.knobs import knob
from odenet.labels import Variable
from odenet.studies.base import Cell, Study, Values, check_axis, train_cell
from odenet.train import TrainConfig

__all__ = ["CompareStudy", "Variant"]


@dataclass(frozen=True)
class Variant:
    """A named model in a comparison, e.g. ResNet (euler, per-step weights)."""

    name: str
    model: ModelConfig

    @classmethod
    def from_table(cls, table: Mapping[str, Any], base: ModelConfig) -> Variant:
        """A ``[[models]]`` table of a spec: a ``name`` and ``ModelConfig`` fields over ``base``."""
        if not isinstance(table, Mapping) or "name" not in table:
            raise ConfigError('every {models} entry needs a name, e.g. name = "ODE-Net"', models=[])
        table = dict(table)
        name = str(table.pop("name"))
        valid = {f.name for f in fields(ModelConfig)}
        unknown = sorted(set(table) - valid)
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r} in {{models}} entry {name!r}; valid keys: name, "
                + ", ".join(sorted(valid)),
                models=[],
            )
        try:
            return cls(name, replace(base, **table))
        except ConfigError as err:
            raise err.within(f"models entry {name!r}") from None


@dataclass(frozen=True)
class CompareStudy(Study):
    """Named model variants × seeds: accuracy, parameters and NFE side by side."""

    kind: ClassVar[str] = "compare"
    variables: ClassVar[tuple[Variable, ...]] = (
        Variable("nfe_forward_final", (), "function evaluations per training batch in the last epoch, forward", "1"),
        Variable("nfe_backward_final", (), "function evaluations per training batch in the last epoch, backward", "1"),
    )
    coords: ClassVar[Mapping[str, tuple[str, str]]] = {"model": ("model variant", "")}
    sets: ClassVar[tuple[str, ...]] = tuple(f.name for f in fields(ModelConfig))
    command: ClassVar[bool] = False  # variants are tables: run from a spec

    models: tuple[Variant, ...] = knob((), "The variants: [[models]] tables of a spec.", cli=False)

    def check(self) -> None:
        check_axis("models", [v.name for v in self.models])

    def axes(self) -> dict[str, Sequence[Any]]:
        return {"model": [v.name for v in self.models], "seed": self.seeds}

    def cell_configs(self, point: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
        variant = next(v for v in self.models if v.name == point["model"])
        return variant.model, replace(self.train, seed=point["seed"])

    def measure(self, model: nn.Module, data: TensorData, cell: Cell) -> Values:
        values, history = train_cell(model, data, cell)
        last = history.epochs - 1
        values["nfe_forward_final"] = history.nfe_forward[last] if last >= 0 else math.nan
        values["nfe_backward_final"] = history.nfe_backward[last] if last >= 0 else math.nan
        return values
