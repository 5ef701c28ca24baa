"""Incremental, resumable storage of a study: one Zarr store while it runs, netCDF at the end.

The store is created once, as the whole dataset filled with NaN (or −1 for integers)
and a ``done`` mask of zeros, chunked one cell per chunk. Each finished cell is written
into its own region (``Dataset.to_zarr(region=…)``), and only then is its ``done`` flag
set; a study killed in the middle of a write leaves that cell not done, and resuming
recomputes exactly the cells whose flag is 0. One process writes (the runner), however
many workers compute.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from odenet.errors import NAME_ONLY, ConfigError, literal
from odenet.labels import Variable
from odenet.studies.schema import OUTCOMES

__all__ = ["Layout", "StoreError", "StudyStore"]

# Zarr format 2: its fixed-width unicode (solver names, …) and consolidated metadata are
# specified, where format 3 still flags both as unstable extensions.
ZARR_FORMAT = 2


class StoreError(ConfigError):
    """A store that cannot be used as asked (exists, belongs to another config, …)."""


@dataclass(frozen=True)
class Layout:
    """The shape of a study dataset.

    cells: the cell dimensions and their coordinate values, in order.
    inner: the inner dimensions and their coordinate values.
    variables: what every cell fills in.
    extra_coords: non-index coordinates, name → (dimension, values).
    coord_attrs: coordinate name → (long_name, units).
    """

    cells: Mapping[str, Sequence[Any]]
    inner: Mapping[str, Sequence[Any]]
    variables: Sequence[Variable]
    extra_coords: Mapping[str, tuple[str, Sequence[Any]]] = field(default_factory=dict)
    coord_attrs: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def cell_dims(self) -> tuple[str, ...]:
        return tuple(self.cells)

    def shape(self, var: Variable) -> tuple[int, ...]:
        return tuple(len(self.cells[d]) for d in self.cells) + tuple(len(self.inner[d]) for d in var.dims)

    def template(self, attrs: Mapping[str, Any]) -> xr.Dataset:
        """The full dataset with every value missing (NaN, or −1 for integers)."""
        coords: dict[str, Any] = {}
        for name, values in [*self.cells.items(), *self.inner.items()]:
            coords[name] = (name, _coord_values(values), self._coord_attrs(name))
        for name, (dim, values) in self.extra_coords.items():
            coords[name] = (dim, _coord_values(values), self._coord_attrs(name))
        ds = xr.Dataset(coords=coords, attrs=dict(attrs))
        for var in self.variables:
            fill = var.fill
            attrs_v: dict[str, Any] = dict(var.attrs)
            if var.name == "outcome":
                attrs_v |= {"flag_values": list(range(len(OUTCOMES))), "flag_meanings": " ".join(OUTCOMES)}
            ds[var.name] = (self.cell_dims + var.dims, np.full(self.shape(var), fill, dtype=var.dtype), attrs_v)
        ds["done"] = (
            self.cell_dims,
            np.zeros([len(v) for v in self.cells.values()], dtype="int8"),
            {"long_name": "cell finished and stored (1) or not (0)", "units": "1"},
        )
        return ds

    def _coord_attrs(self, name: str) -> dict[str, str]:
        long_name, units = self.coord_attrs.get(name, (name, ""))
        return {"long_name": long_name, "units": units}

    def variable(self, name: str) -> Variable:
        """The declared variable ``name``; a ``StoreError`` naming the known ones otherwise."""
        for var in self.variables:
            if var.name == name:
                return var
        known = ", ".join(v.name for v in self.variables)
        raise StoreError(literal(f"{name} is not a variable of this study; its variables are: {known}"))


def _coord_values(values: Sequence[Any]) -> np.ndarray:
    arr = np.asarray(list(values))
    # Fixed-width unicode survives both Zarr and netCDF without object dtypes.
    return arr.astype(str) if arr.dtype.kind in "OU" else arr


class StudyStore:
    """The Zarr store of one study; ``path`` is where the final netCDF goes."""

    def __init__(self, path: str | Path, layout: Layout) -> None:
        self.path = Path(path)
        self.zarr = self.path.with_name(self.path.name + ".zarr")
        self.layout = layout

    # -- opening -----------------------------------------------------------------------
    def open(self, attrs: Mapping[str, Any], resume: bool) -> np.ndarray:
        """Create the store, or reopen it with ``resume``; return the ``done`` mask.

        Refuses (``StoreError``) to overwrite a result or an unfinished store without
        ``resume``, and to resume a store that another config made.
        """
        if self.zarr.exists():
            if not resume:
                raise StoreError(
                    f"{literal(str(self.zarr))} holds an unfinished study; pass {{resume}} to continue it, "
                    "or delete it to start over",
                    resume=True,
                )
            self._check_config(xr.open_zarr(self.zarr).attrs, attrs)
        elif self.path.exists():
            if not resume:
                raise StoreError(
                    f"{literal(str(self.path))} exists; choose another {{out}}, or pass {{resume}} to reuse its cells",
                    out=NAME_ONLY,
                    resume=True,
                )
            with xr.open_dataset(self.path, engine="h5netcdf") as old:
                self._check_config(old.attrs, attrs)
                old.load().to_zarr(self.zarr, mode="w-", encoding=self._encoding(old), zarr_format=ZARR_FORMAT)
        else:
            template = self.layout.template(attrs)
            template.to_zarr(self.zarr, mode="w-", encoding=self._encoding(template), zarr_format=ZARR_FORMAT)
        return self.done()

    def _encoding(self, ds: xr.Dataset) -> dict[str, dict[str, Any]]:
        # One chunk per cell along the cell dimensions: each cell write touches only its own chunks.
        enc: dict[str, dict[str, Any]] = {}
        for name, var in ds.data_vars.items():
            enc[str(name)] = {"chunks": tuple(1 if d in self.layout.cells else n for d, n in var.sizes.items())}
        return enc

    @staticmethod
    def _check_config(stored: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        if stored.get("study") != new.get("study") or stored.get("config") != new.get("config"):
            diff = _config_diff(str(stored.get("config", "{}")), str(new.get("config", "{}")))
            raise StoreError(
                f"the existing results were made by a different {stored.get('study', '?')} study config "
                f"({literal(diff)}); use another {{out}}, or delete the old results",
                out=NAME_ONLY,
            )

    # -- cells -------------------------------------------------------------------------
    def done(self) -> np.ndarray:
        with xr.open_zarr(self.zarr) as ds:
            return ds["done"].values.astype(bool)

    def write(self, index: Sequence[int], values: Mapping[str, Any]) -> None:
        """Store one finished cell (``index`` along the cell dims), then mark it done.

        values: variable name → array of the variable's own shape (a shallower network may
        fill fewer blocks: the rest keeps the fill value), or an ``xarray`` variable whose
        dimension names must be the declared ones. A name the layout does not declare is
        refused (``StoreError``) before anything is written, so a misspelled variable never
        loses its data silently; a declared one that is absent keeps its fill value.
        """
        cells = self.layout.cell_dims
        declared = [self.layout.variable(str(name)) for name in values]
        region = {d: slice(i, i + 1) for d, i in zip(cells, index, strict=True)}
        data = {}
        for var in declared:
            value = values[var.name]
            if isinstance(value, xr.DataArray):
                if tuple(value.dims) != var.dims:
                    raise StoreError(
                        literal(f"{var.name} has dimensions {value.dims}, but the study declares {var.dims}")
                    )
                value = value.values
            value = np.asarray(value, dtype=var.dtype)
            full = self.layout.shape(var)[len(cells) :]
            if value.shape != full:
                if value.ndim != len(full) or any(n > m for n, m in zip(value.shape, full, strict=True)):
                    raise StoreError(literal(f"{var.name} has shape {value.shape}; the study holds {full}"))
                padded = np.full(full, var.fill, dtype=var.dtype)
                padded[tuple(slice(0, n) for n in value.shape)] = value
                value = padded
            data[var.name] = (cells + var.dims, value.reshape((1,) * len(cells) + full))
        xr.Dataset(data).to_zarr(self.zarr, region=region)
        flag = np.ones((1,) * len(cells), dtype="int8")
        xr.Dataset({"done": (cells, flag)}).to_zarr(self.zarr, region=region)

    # -- the result --------------------------------------------------------------------
    def finalize(self, keep_store: bool = False) -> xr.Dataset:
        """Write the netCDF result (h5netcdf) and, unless ``keep_store``, remove the Zarr store."""
        with xr.open_zarr(self.zarr) as ds:
            result = ds.load()
        tmp = self.path.with_name(self.path.name + ".tmp")
        result.to_netcdf(tmp, engine="h5netcdf")
        tmp.replace(self.path)  # atomic: a reader never sees half a file
        if not keep_store:
            shutil.rmtree(self.zarr)
        return result


def _config_diff(old: str, new: str) -> str:
    try:
        a, b = _flatten(json.loads(old)), _flatten(json.loads(new))
    except json.JSONDecodeError:
        return "unreadable stored config"
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if not keys:
        return "another study kind"
    shown = ", ".join(f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in keys[:3])
    return shown + (f", and {len(keys) - 3} more" if len(keys) > 3 else "")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): obj}
