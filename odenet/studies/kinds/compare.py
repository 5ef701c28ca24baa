"""Named model variants × learning rates × seeds: accuracy, parameters, NFE and memory side by side.

Chen et al. (2018), Table 1. Each model is trained at every learning rate of ``lrs``;
the comparison then gives each model the rate that suits it, chosen *without test
data*: the lowest mean final training loss over seeds (``chosen_lr``). Memory is the
peak of the tensors autograd holds for backward in one training step
(``odenet.memory``): Chen et al.'s O(1)-versus-O(L) column, measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np
import xarray as xr
from torch import nn

from odenet.blocks import SolverError
from odenet.data import TensorData
from odenet.errors import ConfigError
from odenet.experiment import ModelConfig
from odenet.knobs import check_finite, knob
from odenet.labels import Variable
from odenet.memory import cuda_peak, saved_activation_peak
from odenet.studies.base import Cell, Study, Values, check_axis, last_recorded, train_cell
from odenet.train import TrainConfig, resolve_device

__all__ = ["CompareStudy", "Variant", "chosen_lr"]


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
        Variable("peak_saved_bytes", (), "peak bytes autograd holds for backward in one training step", "B"),
        Variable("peak_cuda_bytes", (), "CUDA allocator peak over one training step (NaN off CUDA)", "B"),
    )
    coords: ClassVar[Mapping[str, tuple[str, str]]] = {
        "model": ("model variant", ""),
        "learning_rate": ("(peak) learning rate the cell trains with", "1"),
    }
    sets: ClassVar[tuple[str, ...]] = tuple(f.name for f in fields(ModelConfig))
    command: ClassVar[bool] = False  # variants are tables: run from a spec

    models: tuple[Variant, ...] = knob((), "The variants: [[models]] tables of a spec.", cli=False)
    lrs: tuple[float, ...] | None = knob(None, "Learning rates, an axis; each model is reported at its own best.")

    def check(self) -> None:
        check_axis("models", [v.name for v in self.models])
        for lr in self.lrs or ():
            check_finite("lrs", lr)
        if self.lrs is not None:
            check_axis("lrs", self.lrs)

    def axes(self) -> dict[str, Sequence[Any]]:
        models = [v.name for v in self.models]
        return {"model": models, "learning_rate": self.lrs or (self.train.lr,), "seed": self.seeds}

    def cell_configs(self, point: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
        variant = next(v for v in self.models if v.name == point["model"])
        return variant.model, replace(self.train, seed=point["seed"], lr=float(point["learning_rate"]))

    def measure(self, model: nn.Module, data: TensorData, cell: Cell) -> Values:
        values, history = train_cell(model, data, cell)
        last = history.epochs - 1
        values["nfe_forward_final"] = history.nfe_forward[last] if last >= 0 else math.nan
        values["nfe_backward_final"] = history.nfe_backward[last] if last >= 0 else math.nan
        # Memory of one training step at the training batch size, after training (the
        # adaptive solvers' step counts are those of the trained field).
        device = resolve_device(cell.train.device)
        batch = slice(cell.train.batch_size)
        x, y = data.features(data.x_train[batch].to(device)), data.y_train[batch].to(device)
        try:
            values["peak_saved_bytes"] = saved_activation_peak(model, x, y)
            values["peak_cuda_bytes"] = cuda_peak(model, x, y) or math.nan
        except SolverError:
            values["peak_saved_bytes"] = values["peak_cuda_bytes"] = math.nan
        return values


def chosen_lr(ds: xr.Dataset) -> xr.DataArray:
    """Each model's learning rate: the lowest final training loss, averaged over seeds.

    Chosen on training data only, so the test accuracies reported at it are not selected
    on the test set. A rate whose runs diverged in any seed is not chosen while another
    completed in all. ds: a compare result (dims model, learning_rate, seed). Returns the rate over model.
    """
    final = last_recorded(ds["train_loss"], "epoch")
    failed = ds["diverged"].astype(bool).any("seed")
    score = final.mean("seed").where(~failed).fillna(np.inf)
    best = score.argmin("learning_rate")
    return ds["learning_rate"].isel(learning_rate=best).drop_vars("learning_rate").rename("chosen_lr")
