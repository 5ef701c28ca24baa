"""Labelled variables: one definition of a measured quantity, used wherever it is stored.

A ``Variable`` is a name, its dimensions, and the CF attributes ``long_name`` and
``units``. The training history, every probe and every study kind declare their outputs
as Variables; datasets, study schemas and figure labels are derived from those
declarations, so a quantity is described exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["Variable", "labelled", "over"]


@dataclass(frozen=True)
class Variable:
    """One stored variable: its dimensions, dtype and CF attributes.

    dims: the variable's own dimensions (a study prefixes its cell dimensions).
    dtype: ``"float64"`` (missing = NaN) or ``"int64"`` (missing = −1).
    """

    name: str
    dims: tuple[str, ...]
    long_name: str
    units: str
    dtype: str = "float64"

    @property
    def fill(self) -> float | int:
        return -1 if self.dtype == "int64" else np.nan

    @property
    def attrs(self) -> dict[str, str]:
        return {"long_name": self.long_name, "units": self.units}


def over(dim: str, variables: Iterable[Variable]) -> tuple[Variable, ...]:
    """The same variables with ``dim`` put in front, e.g. measured at ``when`` = init, final."""
    return tuple(replace(v, dims=(dim, *v.dims)) for v in variables)


def labelled(
    variables: Iterable[Variable], values: Mapping[str, Any], coords: Mapping[str, Any] | None = None
) -> xr.Dataset:
    """An ``xarray.Dataset`` of ``values`` laid out and labelled as ``variables`` declare.

    Every declared variable must be given, and nothing else: a misspelled or missing name
    is an error here rather than a silently empty column later.
    """
    declared = {v.name: v for v in variables}
    unknown = sorted(set(values) - set(declared))
    missing = sorted(set(declared) - set(values))
    if unknown or missing:
        raise KeyError(f"values do not match the declared variables (unknown: {unknown}, missing: {missing})")
    data = {name: (var.dims, np.asarray(values[name], dtype=var.dtype), var.attrs) for name, var in declared.items()}
    return xr.Dataset(data, coords=dict(coords or {}))
