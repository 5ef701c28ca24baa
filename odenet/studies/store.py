"""Incremental, resumable storage of a study: one Zarr store while it runs, netCDF at the end.

The store is created once, as the whole dataset filled with NaN (or −1 for integers)
and a ``done`` mask of zeros, chunked one cell per chunk. Each finished cell is written
into its own region (``Dataset.to_zarr(region=…)``) together with a CRC-32 of every
variable's values, and only then is its ``done`` flag set; a study killed in the middle
of a write leaves that cell not done, and resuming recomputes exactly the cells whose
flag is 0. One process writes (the runner, holding ``odenet.studies.lock``), however
many workers compute.

A finished cell is verified against its checksums when a study is resumed (a damaged
cell — a deleted or truncated chunk — is reported by cell and variable and computed
again) and before the result is exported (a damaged cell is refused, never written as
data). Unreadable store metadata is a ``StoreError`` that says what to do.
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from odenet.errors import NAME_ONLY, ConfigError, literal
from odenet.files import write_atomically
from odenet.labels import Variable
from odenet.studies.schema import OUTCOMES

__all__ = ["Layout", "StoreError", "StudyStore"]

# Zarr format 2: its fixed-width unicode (solver names, …) and consolidated metadata are
# specified, where format 3 still flags both as unstable extensions.
ZARR_FORMAT = 2
# The store's own bookkeeping, dropped from the exported result.
CHECKSUM = "checksum"
CHECKSUM_DIM = "stored_variable"


def checksum(values: np.ndarray) -> int:
    """CRC-32 of an array's bytes (C order), as stored for every variable of a cell."""
    return zlib.crc32(np.ascontiguousarray(values).tobytes())


@dataclass(frozen=True)
class Damage:
    """A stored variable of a finished cell that does not read back as it was written."""

    index: tuple[int, ...]
    labels: tuple[Any, ...]
    variable: str
    what: str


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
        ds.coords[CHECKSUM_DIM] = (CHECKSUM_DIM, np.asarray([v.name for v in self.variables]).astype(str))
        ds[CHECKSUM] = (
            (*self.cell_dims, CHECKSUM_DIM),
            np.zeros([len(v) for v in self.cells.values()] + [len(self.variables)], dtype="int64"),
            {"long_name": "CRC-32 of each stored variable of the cell (store bookkeeping)", "units": "1"},
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
    def open(
        self,
        attrs: Mapping[str, Any],
        resume: bool,
        ignore: Sequence[str] = (),
        defaults: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """Create the store, or reopen it with ``resume``; return the ``done`` mask.

        Refuses (``StoreError``) to overwrite a result or an unfinished store without
        ``resume``, and to resume a store that another config made (config keys in
        ``ignore`` may differ: they do not change what a finished cell means). A config
        key that the stored config lacks (an option added to odenet since the study
        started) matches when the new config gives it its value in ``defaults`` (the
        config's defaults, nested like it): a new option's default keeps the old
        behaviour, so those cells mean the same. On resume,
        finished cells whose stored values fail their checksums are listed in
        ``self.repaired`` and marked unfinished, so they are computed again.
        """
        self.repaired: list[tuple[tuple[Any, ...], str, str]] = []  # (cell labels, variable, what)
        if self.zarr.exists():
            if not resume:
                raise StoreError(
                    f"{literal(str(self.zarr))} holds an unfinished study; pass {{resume}} to continue it, "
                    "or delete it to start over",
                    resume=True,
                )
            self._check_config(self._open().attrs, attrs, ignore, defaults)
        elif self.path.exists():
            if not resume:
                raise StoreError(
                    f"{literal(str(self.path))} exists; choose another {{out}}, or pass {{resume}} to reuse its cells",
                    out=NAME_ONLY,
                    resume=True,
                )
            try:
                old = xr.open_dataset(self.path, engine="h5netcdf").load()
            except (OSError, ValueError) as err:
                raise StoreError(
                    literal(f"{self.path} cannot be read as a study result ({type(err).__name__}: {err}); ")
                    + "choose another {out}, or delete it",
                    out=NAME_ONLY,
                ) from None
            self._check_config(old.attrs, attrs, ignore, defaults)
            cell_variables = {v.name for v in self.layout.variables} | {"done"}
            derived = [name for name in old.data_vars if name not in cell_variables]
            old = old.drop_vars(derived)  # derived again by ``finalize``
            used = {d for name in old.data_vars for d in old[name].dims}
            old = self._with_checksums(old.drop_dims([d for d in old.dims if d not in used]))
            old.to_zarr(self.zarr, mode="w-", encoding=self._encoding(old), zarr_format=ZARR_FORMAT)
        else:
            template = self.layout.template(attrs)
            template.to_zarr(self.zarr, mode="w-", encoding=self._encoding(template), zarr_format=ZARR_FORMAT)
            return self.done()
        damaged = self.verify()
        for index in {d.index for d in damaged}:
            self._mark(index, 0)
        self.repaired = [(d.labels, d.variable, d.what) for d in damaged]
        return self.done()

    def _open(self) -> xr.Dataset:
        """The store as a lazy dataset; damaged metadata is a ``StoreError`` saying what to do."""
        errors = []
        for consolidated in (True, False):
            try:
                ds = xr.open_zarr(self.zarr, consolidated=consolidated)
            except Exception as err:  # JSON, KeyError, zarr and codec errors of a damaged store
                errors.append(f"{type(err).__name__}: {err}")
                continue
            if not consolidated:
                # Only the consolidated copy of the metadata was damaged: rebuild it from the
                # per-array metadata, which writes read too.
                import zarr

                zarr.consolidate_metadata(str(self.zarr))
            return ds
        raise StoreError(
            literal(
                f"the store {self.zarr} is damaged: its metadata cannot be read ({errors[-1]}); delete it and "
                "run the study again (its finished cells are lost)"
            )
        )

    def _with_checksums(self, ds: xr.Dataset) -> xr.Dataset:
        """A finished result read back for resuming, with the checksums its export dropped."""
        cells = self.layout.cell_dims
        names = [v.name for v in self.layout.variables]
        sums = np.zeros([ds.sizes[d] for d in cells] + [len(names)], dtype="int64")
        for index in np.ndindex(*sums.shape[:-1]):
            for j, name in enumerate(names):
                sums[(*index, j)] = checksum(ds[name].values[index])
        ds = ds.assign_coords({CHECKSUM_DIM: np.asarray(names).astype(str)})
        ds[CHECKSUM] = ((*cells, CHECKSUM_DIM), sums)
        return ds

    def _encoding(self, ds: xr.Dataset) -> dict[str, dict[str, Any]]:
        # One chunk per cell along the cell dimensions: each cell write touches only its own chunks.
        enc: dict[str, dict[str, Any]] = {}
        for name, var in ds.data_vars.items():
            enc[str(name)] = {"chunks": tuple(1 if d in self.layout.cells else n for d, n in var.sizes.items())}
        return enc

    @staticmethod
    def _check_config(
        stored: Mapping[str, Any],
        new: Mapping[str, Any],
        ignore: Sequence[str] = (),
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        old_config, new_config = _without(stored.get("config"), ignore), _without(new.get("config"), ignore)
        old_config = _with_added_defaults(old_config, new_config, defaults or {})
        if stored.get("study") != new.get("study") or old_config != new_config:
            diff = _config_diff(str(stored.get("config", "{}")), str(new.get("config", "{}")))
            raise StoreError(
                f"the existing results were made by a different {stored.get('study', '?')} study config "
                f"({literal(diff)}); use another {{out}}, or delete the old results",
                out=NAME_ONLY,
            )

    # -- cells -------------------------------------------------------------------------
    def done(self) -> np.ndarray:
        with self._open() as ds:
            return ds["done"].values.astype(bool)

    def _mark(self, index: Sequence[int], flag: int) -> None:
        cells = self.layout.cell_dims
        region = {d: slice(i, i + 1) for d, i in zip(cells, index, strict=True)}
        xr.Dataset({"done": (cells, np.full((1,) * len(cells), flag, dtype="int8"))}).to_zarr(self.zarr, region=region)

    def verify(self) -> list[Damage]:
        """Finished cells whose stored values do not match their checksums.

        One ``Damage`` for every damaged variable of a finished cell: a deleted chunk reads
        back as fill values, a truncated one fails to decode. A store written before
        checksums existed is not checked.
        """
        import zarr

        try:
            group = zarr.open_group(str(self.zarr), mode="r", use_consolidated=False)
            if CHECKSUM not in group:
                return []
            arrays: dict[str, Any] = {name: group[name] for name in [*(v.name for v in self.layout.variables), "done"]}
            done = np.asarray(arrays["done"][...]).astype(bool)
            sums = np.asarray(group[CHECKSUM][...])  # type: ignore[index]
        except Exception as err:
            raise StoreError(
                literal(f"the store {self.zarr} is damaged ({type(err).__name__}: {err}); delete it and run again")
            ) from None
        names = [v.name for v in self.layout.variables]
        damaged = []
        for found in zip(*np.nonzero(done), strict=True):
            index = tuple(int(i) for i in found)
            labels = tuple(list(values)[i] for values, i in zip(self.layout.cells.values(), index, strict=True))
            for j, name in enumerate(names):
                try:
                    stored = np.asarray(arrays[name][index])
                except Exception as err:  # a truncated or corrupt chunk
                    damaged.append(Damage(index, labels, name, f"unreadable ({type(err).__name__})"))
                    continue
                if checksum(stored) != int(sums[(*index, j)]):
                    what = "values differ from those written (a chunk is missing or altered)"
                    damaged.append(Damage(index, labels, name, what))
        return damaged

    def write(self, index: Sequence[int], values: Mapping[str, Any]) -> None:
        """Store one finished cell (``index`` along the cell dims), then mark it done.

        values: variable name → array of the variable's own shape (a shallower network may
        fill fewer blocks: the rest keeps the fill value), or an ``xarray`` variable whose
        dimension names must be the declared ones. A name the layout does not declare is
        refused (``StoreError``) before anything is written, so a misspelled variable never
        loses its data silently; a declared one that is absent keeps its fill value.
        """
        cells = self.layout.cell_dims
        for name in values:
            self.layout.variable(str(name))  # refuses an undeclared name before anything is written
        region = {d: slice(i, i + 1) for d, i in zip(cells, index, strict=True)}
        data = {}
        sums = []
        for var in self.layout.variables:
            full = self.layout.shape(var)[len(cells) :]
            value = values.get(var.name, np.full(full, var.fill, dtype=var.dtype))
            if isinstance(value, xr.DataArray):
                if tuple(value.dims) != var.dims:
                    raise StoreError(
                        literal(f"{var.name} has dimensions {value.dims}, but the study declares {var.dims}")
                    )
                value = value.values
            value = np.asarray(value, dtype=var.dtype)
            if value.shape != full:
                if value.ndim != len(full) or any(n > m for n, m in zip(value.shape, full, strict=True)):
                    raise StoreError(literal(f"{var.name} has shape {value.shape}; the study holds {full}"))
                padded = np.full(full, var.fill, dtype=var.dtype)
                padded[tuple(slice(0, n) for n in value.shape)] = value
                value = padded
            data[var.name] = (cells + var.dims, value.reshape((1,) * len(cells) + full))
            sums.append(checksum(value))
        data[CHECKSUM] = ((*cells, CHECKSUM_DIM), np.asarray(sums, dtype="int64").reshape((1,) * len(cells) + (-1,)))
        xr.Dataset(data).to_zarr(self.zarr, region={**region, CHECKSUM_DIM: slice(None)})
        self._mark(index, 1)

    # -- the result --------------------------------------------------------------------
    def finalize(
        self, keep_store: bool = False, summarise: Callable[[xr.Dataset], xr.Dataset] | None = None
    ) -> xr.Dataset:
        """Write the netCDF result (h5netcdf) and, unless ``keep_store``, remove the Zarr store.

        Every finished cell is verified first: a damaged one is refused (``StoreError``
        naming the cell and variable), never exported as data.
        """
        damaged = self.verify()
        if damaged:
            first = damaged[0]
            raise StoreError(
                literal(
                    f"{len(damaged)} stored value(s) of finished cells are damaged, first {first.variable} of cell "
                )
                + literal(" ".join(map(str, first.labels)) + f": {first.what}")
                + "; pass {resume} to compute those cells again",
                resume=True,
            )
        with self._open() as ds:
            result = ds.drop_vars([CHECKSUM, CHECKSUM_DIM], errors="ignore").load()
        if summarise is not None:  # what the kind derives from all cells (``Study.summarise``)
            result = summarise(result)
        # atomic, interrupts held back: neither a reader nor Ctrl-C sees half a file
        write_atomically(self.path, lambda tmp: result.to_netcdf(tmp, engine="h5netcdf"))
        if not keep_store:
            shutil.rmtree(self.zarr)
        return result


def _without(config: Any, keys: Sequence[str]) -> Any:
    """The config JSON as a dict without the top-level ``keys`` (unparsable: as it is)."""
    try:
        parsed = json.loads(str(config))
    except json.JSONDecodeError:
        return config
    return {k: v for k, v in parsed.items() if k not in keys} if isinstance(parsed, dict) else parsed


def _with_added_defaults(old: Any, new: Any, defaults: Mapping[str, Any]) -> Any:
    """``old`` with the keys only ``new`` has, where ``new`` gives them their default value."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old
    filled = dict(old)
    for key, value in new.items():
        default = defaults.get(key, _MISSING)
        if key not in old and default is not _MISSING and value == default:
            filled[key] = value
        elif key in old and isinstance(default, Mapping):
            filled[key] = _with_added_defaults(old[key], value, default)
    return filled


_MISSING = object()


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
