"""What every study figure shares: reading a result, masking unfinished cells, labels, saving.

A study dataset (schema in ``odenet.studies.schema``) has *cell* dimensions — one
training run per combination, e.g. solver × depth × arch × seed — and a ``done`` mask
over them. Cells still running or not yet started have ``done == 0`` and NaN (float) or
−1 (integer) values, so every figure starts from ``finished(ds)``. Axis labels are
never typed by hand: they come from each variable's ``long_name`` and ``units``.
"""

from __future__ import annotations

import itertools
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter
from matplotlib.transforms import blended_transform_factory

__all__ = [
    "FORMATS",
    "PlotError",
    "annotate_diverged",
    "diverged_counts",
    "finished",
    "fmt",
    "groups",
    "label",
    "legend",
    "log_axis",
    "new_figure",
    "note_diverged",
    "open_result",
    "provenance",
    "require",
    "save_figure",
    "seed_stats",
    "shared_labels",
]

# Formats matplotlib writes without extra packages; PNG for slides, SVG/PDF for papers.
FORMATS = ("png", "svg", "pdf")
# Fill value of the schema's integer variables for cells that have not run.
INT_FILL = -1
# Colours of solvers (or models, eval solvers): matplotlib's default qualitative cycle.
COLOURS = tuple(f"C{i}" for i in range(10))
# Residual (skip connections) solid, its plain twin dashed, as in He et al. (2015), Fig. 1.
ARCH_STYLES: dict[str, Any] = {"residual": "-", "plain": "--"}


class PlotError(ValueError):
    """A result that cannot be plotted; the message says how to fix it."""


def open_result(path: str | Path) -> xr.Dataset:
    """Read a study result into memory: a netCDF file or a Zarr store (``*.zarr``).

    A Zarr store may belong to a study that is still running; its unfinished cells have
    ``done == 0`` and are left out of every figure.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise PlotError(f"no study result at {path}; give the .nc file or .zarr folder that `odenet study` wrote")
    try:
        if path.is_dir() or path.suffix == ".zarr":
            with warnings.catch_warnings():
                # A running study may not have consolidated its metadata yet; reading
                # the per-array metadata instead is slower but correct.
                warnings.simplefilter("ignore", RuntimeWarning)
                ds = xr.open_zarr(path, chunks=None).load()
        else:
            with xr.open_dataset(path, engine="h5netcdf") as opened:
                ds = opened.load()
    except (OSError, ValueError, KeyError, TypeError) as err:
        kind = "Zarr store" if path.is_dir() else "netCDF-4 file"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PlotError(f"cannot read {path} as a {kind} ({reason}); give a result written by `odenet study`") from None
    return ds


def require(ds: xr.Dataset, *names: str) -> None:
    """Refuse a dataset that lacks a variable or coordinate a figure needs."""
    missing = [n for n in names if n not in ds.variables]
    if missing:
        kind = ds.attrs.get("study", "?")
        raise PlotError(
            f"the {kind} result has no {', '.join(missing)}; re-run the study with this odenet version to plot it"
        )


def finished(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every cell that is not done set to NaN (integer variables become float).

    Integer variables use −1 for "not written"; that becomes NaN too, so a mean over
    seeds never counts a placeholder. A dataset without ``done`` counts as complete.
    """
    out = ds.copy()
    for name, var in ds.data_vars.items():
        if np.issubdtype(var.dtype, np.integer):
            out[name] = var.where(var != INT_FILL)
    if "done" in ds:
        mask = ds["done"] == 1
        out = out.where(mask)
        out["done"] = mask.astype(int)  # keep it a 0/1 count, not NaN
    return out


def label(da: xr.DataArray, suffix: str = "", width: int = 40) -> str:
    """Axis label from CF attributes: ``long_name`` (+ suffix) and `` [units]`` unless 1.

    Wrapped at ``width`` characters: the schema's long names are sentences, and a label
    longer than its axis would be cut off.
    """
    text = str(da.attrs.get("long_name", da.name)) + suffix
    units = str(da.attrs.get("units", "")).strip()
    return textwrap.fill(f"{text} [{units}]" if units not in ("", "1") else text, width)


def shared_labels(fig: Figure, xlabel: str | None = None, ylabel: str | None = None) -> None:
    """Label a grid of panels once (figure-level) instead of on every panel."""
    if xlabel is not None:
        fig.supxlabel(xlabel, fontsize="medium")
    if ylabel is not None:
        fig.supylabel(ylabel, fontsize="medium")


def log_axis(ax: Axes, which: str, values: np.ndarray | None = None, base: float = 10) -> None:
    """Log scale; with ``values`` (e.g. the step sizes studied), ticks exactly there, printed plainly.

    A study samples a handful of values (h = 0.1, 0.3, 1, 3; refinement 0.5 … 8), so
    ticks at those values read better than powers of ten with crowded minor labels.
    """
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=base)
    if values is not None:
        ticks = np.unique(np.asarray(values, dtype=float))
        axis.set_ticks(ticks[np.isfinite(ticks) & (ticks > 0)])
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def fmt(dim: str, value: Any) -> str:
    """A coordinate value in a legend: strings as they are, numbers with their name."""
    if isinstance(value, (str, np.str_)):
        return str(value)
    return f"{dim.replace('_', ' ')} {value:g}" if isinstance(value, (float, np.floating)) else f"{dim} {value}"


def groups(da: xr.DataArray, dims: Sequence[str]) -> Iterator[tuple[str, dict[str, Any], xr.DataArray]]:
    """One (legend label, selection, sub-array) per combination of the values of ``dims``.

    A dimension with a single value is left out of the label (it says nothing); an
    absent dimension is skipped.
    """
    dims = [d for d in dims if d in da.dims]
    values = [list(da[d].values) for d in dims]
    for combo in itertools.product(*values):
        sel = dict(zip(dims, combo, strict=True))
        text = ", ".join(fmt(d, v) for d, v in sel.items() if da.sizes[d] > 1)
        yield text or ", ".join(fmt(d, v) for d, v in sel.items()), sel, da.sel(sel)


def seed_stats(da: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Mean and standard deviation over seeds (NaN skipped; std 0 for a single seed)."""
    if "seed" not in da.dims:
        return da, xr.zeros_like(da)
    return da.mean("seed"), da.std("seed").fillna(0.0)


def diverged_counts(ds: xr.Dataset, sel: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(diverged, finished) seed counts of the cells in ``sel`` of a ``finished`` dataset."""
    sub = ds.sel(sel)
    k = sub["diverged"].fillna(0)
    n = sub["done"] if "done" in sub else xr.ones_like(k)
    if "seed" in k.dims:
        k, n = k.sum("seed"), n.sum("seed")
    return np.asarray(k.values, dtype=int), np.asarray(n.values, dtype=int)


def annotate_diverged(ax: Axes, x: np.ndarray, y: np.ndarray, k: np.ndarray, n: np.ndarray, color: str) -> None:
    """Show diverged seeds instead of dropping them: "k/n diverged" beside each point.

    A point whose every seed diverged has no mean; it gets an ✕ on the bottom edge of the
    axes at its x, so a reader sees where training failed.
    """
    bottom = blended_transform_factory(ax.transData, ax.transAxes)
    for xi, yi, ki, ni in zip(x, y, k, n, strict=True):
        if ki <= 0:
            continue
        text = f"{ki}/{ni} diverged"
        if np.isfinite(yi):
            ax.annotate(text, (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=6, color=color)
        else:
            ax.plot([xi], [0.03], marker="x", color=color, transform=bottom, clip_on=False, linestyle="none")
            ax.annotate(
                text,
                (xi, 0.03),
                xycoords=bottom,
                xytext=(4, 2),
                textcoords="offset points",
                fontsize=6,
                color=color,
                rotation=90,
                va="bottom",
            )


def note_diverged(ax: Axes, ds: xr.Dataset, sel: dict[str, Any]) -> None:
    """Write "k/n runs diverged" in the corner of a panel that averages over several runs."""
    sub = ds.sel(sel)
    k = int(sub["diverged"].fillna(0).sum())
    n = int(sub["done"].sum()) if "done" in sub else int(sub["diverged"].notnull().sum())
    if k > 0:
        ax.text(
            0.98,
            0.02,
            f"{k}/{n} runs diverged",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=6,
            color="C3",
        )


def legend(ax: Axes, inside: int = 4) -> None:
    """A legend of the lines in ``ax``: inside it for a few, beside the figure for more (not over data)."""
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) <= inside:
        ax.legend(handles, labels, fontsize=7)
    else:
        ax.figure.legend(handles, labels, loc="outside right upper", fontsize=7)


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 3.6, height: float = 2.8, **kw: Any) -> Figure:
    """A figure of ``nrows × ncols`` panels, each ``width × height`` inches (a paper column)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig


def provenance(ds: xr.Dataset) -> str:
    """One line naming where the numbers come from, for the files' metadata."""
    a = ds.attrs
    parts = [f"odenet {a['study']} study" if "study" in a else "odenet study"]
    parts += [f"{key} {a[key]}" for key in ("odenet_version", "git_commit", "device", "created") if key in a]
    return "; ".join(parts)


def save_figure(fig: Figure, stem: Path, formats: Sequence[str], description: str = "", dpi: int = 200) -> list[Path]:
    """Write ``fig`` as ``stem.<format>`` for each format; return the paths written."""
    written = []
    for ext in formats:
        path = stem.with_suffix(f".{ext}")
        title = stem.name
        # PNG takes free-form text chunks, SVG Dublin Core keys, PDF the document info keys.
        meta = {"Title": title, ("Subject" if ext == "pdf" else "Description"): description}
        fig.savefig(path, format=ext, dpi=dpi, metadata=meta)
        written.append(path)
    return written
