"""What every study figure shares: reading a result, masking unfinished cells, labels, saving.

A study dataset (schema in ``odenet.studies.schema``) has *cell* dimensions — one
training run per combination, e.g. solver × depth × arch × seed — and a ``done`` mask
over them. Cells still running or not yet started have ``done == 0`` and NaN (float) or
−1 (integer) values, so every figure starts from ``finished(ds)``. Axis labels are
never typed by hand: they come from each variable's ``long_name`` and ``units``. Every
mean over seeds is ``seed_stats``'s (the sample standard deviation, ddof = 1, and n), and
every figure says its n (``note_seeds``).
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
    "last_valid",
    "legend",
    "log_axis",
    "new_figure",
    "note_diverged",
    "note_seeds",
    "open_result",
    "provenance",
    "reference_slope",
    "require",
    "save_figure",
    "seed_stats",
    "seeds_text",
    "shared_labels",
    "step_size_dim",
]

# Formats matplotlib writes without extra packages; PNG for slides, SVG/PDF for papers.
FORMATS = ("png", "svg", "pdf")
# Fill value of the schema's integer variables for cells that have not run.
INT_FILL = -1
# Colours of solvers (or models, eval solvers): matplotlib's default qualitative cycle.
COLOURS = tuple(f"C{i}" for i in range(10))
# Residual (skip connections) solid, its plain twin dashed, as in He et al. (2015), Fig. 1.
ARCH_STYLES: dict[str, Any] = {"residual": "-", "plain": "--"}
# A legend of up to this many entries goes inside a panel; a longer one beside the figure,
# in this many inches of its own.
INSIDE = 4
LEGEND_WIDTH = 2.4
# Dimensions whose values name themselves in a legend ("rk4", "ResNet", "init"); any other
# string value is shown with its dimension ("norm=group", "shortcut=B"), since "B" alone says nothing.
SELF_NAMED = frozenset({"solver", "train_solver", "eval_solver", "model", "arch", "when"})


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
    """A coordinate value in a legend: a solver or model by its name, other values with their dimension's."""
    if isinstance(value, (str, np.str_)):
        return str(value) if dim in SELF_NAMED else f"{dim}={value}"
    return f"{dim.replace('_', ' ')} {value:g}" if isinstance(value, (float, np.floating)) else f"{dim} {value}"


def groups(da: xr.DataArray, dims: Sequence[str]) -> Iterator[tuple[str, dict[str, Any], xr.DataArray]]:
    """One (legend label, selection, sub-array) per combination of the values of ``dims``.

    A dimension with a single value (e.g. the one normalisation of a study that does not
    vary it) is selected, so the sub-array loses it, and left out of the label (it says
    nothing); when every dimension has one value the label is the first one's. An absent
    dimension is skipped.
    """
    dims = [d for d in dims if d in da.dims]
    values = [list(da[d].values) for d in dims]
    for combo in itertools.product(*values):
        sel = dict(zip(dims, combo, strict=True))
        text = ", ".join(fmt(d, v) for d, v in sel.items() if da.sizes[d] > 1)
        yield text or ", ".join(fmt(d, v) for d, v in list(sel.items())[:1]), sel, da.sel(sel)


def step_size_dim(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with ``step_size`` a dimension: swapped in for ``depth`` in the fixed-horizon layout.

    At a fixed horizon T the cells are … × depth × … with h = T / n a coordinate along
    depth; each depth has one h, so h can stand in for it (depth stays a coordinate).
    """
    if "step_size" not in ds.variables:
        kind = ds.attrs.get("study", "?")
        raise PlotError(f"the {kind} result has no step_size coordinate; re-run the study to plot it")
    if "step_size" in ds.dims:
        return ds
    along = ds["step_size"].dims
    if len(along) != 1:
        raise PlotError(f"step_size varies along {', '.join(map(str, along))}; expected one dimension (depth) to swap")
    return ds.swap_dims({along[0]: "step_size"})


def seed_stats(da: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Mean, sample standard deviation (ddof = 1) and count n over ``seed`` of the finite values.

    The one definition of "mean ± std over seeds" in every figure. The standard deviation
    is NaN (no error bar, not a bar of zero) where fewer than two seeds finished: one run
    says nothing about the spread. Without a ``seed`` dimension every value is its own
    mean, with n = 1 (0 where it is NaN).
    """
    if "seed" not in da.dims:
        n = da.notnull().astype(int)
        return da, xr.full_like(da, np.nan, dtype=float), n
    n = da.notnull().sum("seed")
    mean = da.sum("seed") / n.where(n > 0)
    # Dividing by NaN where n < 2 (not by zero) gives NaN without a warning.
    std = (((da - mean) ** 2).sum("seed") / (n - 1).where(n >= 2)) ** 0.5
    return mean, std, n


def seeds_text(counts: Sequence[Any], spread: bool = True) -> str:
    """What a point is, with its n: "mean ± sample std (ddof=1), n = 5 seeds" (or "n = 3–5").

    counts: the n arrays of ``seed_stats`` of every point drawn; points with n = 0 are not
    drawn and not counted. ``spread=False`` for figures that draw the mean alone.
    """
    flat = np.concatenate([np.ravel(np.asarray(c, dtype=float)) for c in counts]) if counts else np.array([])
    flat = flat[np.isfinite(flat) & (flat > 0)].astype(int)
    if not flat.size:
        return ""
    lo, hi = int(flat.min()), int(flat.max())
    n = f"n = {lo} seed{'s' if hi > 1 else ''}" if lo == hi else f"n = {lo}–{hi} seeds"
    if not spread:
        return f"mean over {n}"
    return f"mean ± sample std (ddof=1), {n}" + (" (no error bars)" if hi < 2 else "")


def note_seeds(fig: Figure, counts: Sequence[Any], spread: bool = True, prefix: str = "") -> None:
    """Say at the top of the figure what its points are and over how many seeds (``seeds_text``)."""
    text = "; ".join(t for t in (prefix, seeds_text(counts, spread)) if t)
    if text:
        # Left-aligned: a figure-level legend sits at the upper right.
        fig.suptitle(text, x=0.01, ha="left", fontsize="small")


def reference_slope(x: np.ndarray, y: np.ndarray, order: float) -> np.ndarray:
    """y₀ · (x / x₀)^(−p) through the first finite, positive point (x₀, y₀): the ideal line of slope −p."""
    finite = np.flatnonzero(np.isfinite(y) & (y > 0))
    if finite.size == 0:
        return np.full(np.shape(x), np.nan)
    x0, y0 = x[finite[0]], y[finite[0]]
    return y0 * (x / x0) ** (-order)


def last_valid(da: xr.DataArray, dim: str) -> xr.DataArray:
    """The last non-NaN value along ``dim`` (NaN where there is none).

    A run that stopped early (diverged, or a study resumed with more epochs) has its
    history NaN-padded, so "the last epoch" is the last one that was recorded.
    """
    values = np.moveaxis(da.values, da.get_axis_num(dim), -1)
    valid = np.isfinite(values)
    index = values.shape[-1] - 1 - np.argmax(valid[..., ::-1], axis=-1)
    last = np.take_along_axis(values, index[..., None], axis=-1)[..., 0]
    last = np.where(valid.any(axis=-1), last, np.nan)
    dims = [d for d in da.dims if d != dim]
    coords = {k: v for k, v in da.coords.items() if dim not in v.dims}
    return xr.DataArray(last, dims=dims, coords=coords, attrs=da.attrs, name=da.name)


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


def legend(ax: Axes, inside: int = INSIDE, handles: Sequence[Any] | None = None) -> None:
    """A legend of the lines in ``ax`` (or of ``handles``): inside it for a few, beside the figure for more."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    else:
        labels = [h.get_label() for h in handles]
    if not handles:
        return
    if len(handles) <= inside:
        ax.legend(handles, labels, fontsize=7)
    else:
        ax.figure.legend(handles, labels, loc="outside right upper", fontsize=7)


def new_figure(
    nrows: int = 1, ncols: int = 1, width: float = 3.6, height: float = 2.8, lines: int = 0, **kw: Any
) -> Figure:
    """A figure of ``nrows × ncols`` panels, each ``width × height`` inches (a paper column).

    lines: the legend's entries; more than ``INSIDE`` go beside the panels (``legend``),
    in room added for them rather than taken from the panels.
    """
    extra = LEGEND_WIDTH if lines > INSIDE else 0.0
    fig = Figure(figsize=(width * ncols + extra, height * nrows), layout="constrained")
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
