"""Width against depth (Zagoruyko & Komodakis 2016): depths × widening factors × learning rates × seeds.

Every cell trains a network of depth d whose stages are k times wider than the base
width (``ModelConfig.widen``) at one learning rate. Once the cells are in, the study
fits a stated regression of the outcome on the three design variables and stores it in
the dataset (``width_fit``), so the trade-off is a number with an uncertainty, not only
a picture.

The regression (ordinary least squares, one observation per finished cell: every seed
is an independent training run; diverged runs are left out and counted):

    y = β₀ + β_d·D + β_k·K + β_η·E + β_dk·D·K + β_dη·D·E + β_kη·K·E + ε,
    D = log₂ d − mean, K = log₂ k − mean, E = log₂ η − mean,

with the means over the grid's own axis values, so a main effect is the change in y per
doubling of that variable at the centre of the grid, and an interaction the change of
one slope per doubling of the other. Two responses: the final test accuracy (in
percentage points) and log₁₀ of the final training loss (losses span decades).
Standard errors are the classical σ̂²(XᵀX)⁻¹ ones (homoscedastic errors assumed; with 3
or more seeds a referee can check that against the per-cell spread); R² is 1 − RSS/TSS.
A term whose variable has one value in the grid is not estimable and is stored as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import xarray as xr
from torch import nn

from odenet.data import TensorData
from odenet.knobs import check_finite, knob
from odenet.labels import Variable
from odenet.studies.base import Cell, Study, Values, check_axis, last_recorded, train_cell
from odenet.train import TrainConfig

__all__ = ["FIT", "RESPONSES", "TERMS", "WidthStudy", "width_fit"]

PREDICTORS = ("log2_depth", "log2_widen", "log2_lr")
DIMS = ("depth", "widen", "learning_rate")  # the cell dimension of each predictor
TERMS = ("intercept", *PREDICTORS, "log2_depth:log2_widen", "log2_depth:log2_lr", "log2_widen:log2_lr")
RESPONSES = ("test_accuracy_pct", "log10_train_loss")

FIT: tuple[Variable, ...] = (
    Variable("fit_coef", ("response", "term"), "least-squares coefficient (per doubling, at the grid's centre)", "1"),
    Variable("fit_se", ("response", "term"), "standard error of the coefficient", "1"),
    Variable("fit_r2", ("response",), "coefficient of determination R² of the fit", "1"),
    Variable("fit_n", ("response",), "finished, non-diverged runs in the fit", "1", "int64"),
    Variable("fit_centre", ("predictor",), "mean of log₂ of the axis values (the fit's centre)", "1"),
)


@dataclass(frozen=True)
class WidthStudy(Study):
    """Test accuracy and training loss over depth × width × learning rate, and their regression."""

    kind: ClassVar[str] = "width"
    coords: ClassVar[Mapping[str, tuple[str, str]]] = {
        "widen": ("widening factor k of every stage (Zagoruyko & Komodakis 2016)", "1"),
        "learning_rate": ("(peak) learning rate the cell trains with", "1"),
        "response": ("response variable of the regression", ""),
        "term": ("term of the regression (centred log₂ design variables)", ""),
        "predictor": ("design variable of the regression", ""),
    }
    sets: ClassVar[tuple[str, ...]] = ("depth", "widen")

    depths: tuple[int, ...] = knob((8, 14, 20), "Depths (6n+2 for conv nets, blocks for MLPs).")
    widens: tuple[int, ...] = knob((1, 2, 4), "Widening factors k: stages k·width·(1, 2, 4) channels.")
    lrs: tuple[float, ...] = knob((0.03, 0.1, 0.3), "Learning rates (positive), an axis of the regression.")

    def check(self) -> None:
        check_axis("depths", self.depths)
        check_axis("widens", self.widens)
        check_axis("lrs", self.lrs)
        for lr in self.lrs:
            check_finite("lrs", lr)

    def axes(self) -> dict[str, Sequence[Any]]:
        return {"depth": self.depths, "widen": self.widens, "learning_rate": self.lrs, "seed": self.seeds}

    def cell_configs(self, point: Mapping[str, Any]) -> tuple[Any, TrainConfig]:
        model = replace(self.model, depth=point["depth"], widen=point["widen"])
        return model, replace(self.train, seed=point["seed"], lr=float(point["learning_rate"]))

    def measure(self, model: nn.Module, data: TensorData, cell: Cell) -> Values:
        values, _ = train_cell(model, data, cell)
        return values

    def summarise(self, ds: xr.Dataset) -> xr.Dataset:
        return ds.merge(width_fit(ds))


def width_fit(ds: xr.Dataset) -> xr.Dataset:
    """The regression of the module docstring over the finished cells of a width study.

    ds: a width result (dims depth, widen, learning_rate, seed, epoch). Returns the
    ``FIT`` variables over ``response`` × ``term`` (and ``predictor`` for the centre).
    """
    finished = ds["done"].astype(bool) & (ds["diverged"] == 0)
    loss = last_recorded(ds["train_loss"], "epoch")
    grid: dict[str, xr.DataArray] = {
        name: xr.apply_ufunc(np.log2, ds[dim].astype(float)) for name, dim in zip(PREDICTORS, DIMS, strict=True)
    }
    centre = {name: float(values.mean()) for name, values in grid.items()}
    frame = xr.Dataset(
        {name: (values - centre[name]).broadcast_like(finished) for name, values in grid.items()}
        | {"test_accuracy_pct": 100 * ds["final_test_accuracy"], "log10_train_loss": np.log10(loss)}
    )
    rows = frame.where(finished).to_dataframe().dropna()
    coef = np.full((len(RESPONSES), len(TERMS)), np.nan)
    se, r2, n = np.full_like(coef, np.nan), np.full(len(RESPONSES), np.nan), np.zeros(len(RESPONSES), dtype=int)
    varied = {name: ds.sizes[dim] > 1 for name, dim in zip(PREDICTORS, DIMS, strict=True)}
    columns = [t for t in TERMS if t == "intercept" or all(varied[p] for p in t.split(":"))]
    for r, response in enumerate(RESPONSES):
        ok = rows[np.isfinite(rows[response])]
        n[r] = len(ok)
        if n[r] <= len(columns):
            continue  # not enough runs to estimate every term and the error variance
        X = np.column_stack([_column(ok, t) for t in columns])
        y = ok[response].to_numpy()
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ beta
        dof = n[r] - len(columns)
        sigma2 = float(resid @ resid) / dof
        cov = sigma2 * np.linalg.pinv(X.T @ X)
        where = [TERMS.index(t) for t in columns]
        coef[r, where] = beta
        se[r, where] = np.sqrt(np.diag(cov))
        tss = float(((y - y.mean()) ** 2).sum())
        r2[r] = 1 - float(resid @ resid) / tss if tss > 0 else math.nan
    attrs = {
        "fit_model": "y = b0 + b_d D + b_k K + b_lr E + b_dk D K + b_dlr D E + b_klr K E; "
        "D, K, E = log2(depth, widen, lr) minus their grid means; OLS over finished, non-diverged runs",
    }
    out = xr.Dataset(
        {
            "fit_coef": (("response", "term"), coef),
            "fit_se": (("response", "term"), se),
            "fit_r2": (("response",), r2),
            "fit_n": (("response",), n.astype("int64")),
            "fit_centre": (("predictor",), np.array([centre[p] for p in PREDICTORS])),
        },
        coords={"response": list(RESPONSES), "term": list(TERMS), "predictor": list(PREDICTORS)},
    )
    for var in FIT:
        out[var.name].attrs.update(var.attrs)
    for name, (long_name, units) in WidthStudy.coords.items():
        if name in out.coords:
            out[name].attrs.update({"long_name": long_name, "units": units})
    out["fit_coef"].attrs["model"] = attrs["fit_model"]
    return out


def _column(rows: Any, term: str) -> np.ndarray:
    if term == "intercept":
        return np.ones(len(rows))
    out = np.ones(len(rows))
    for predictor in term.split(":"):
        out = out * rows[predictor].to_numpy()
    return out
