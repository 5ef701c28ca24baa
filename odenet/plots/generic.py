"""Figures of a study kind that has none of its own, drawn only from the dataset's labels.

A new study kind should be plottable the day it first runs, before anyone writes its
paper figures (and register them with ``figures_for``). Everything here is read from
the dataset: the cell dimensions are those of the ``done`` mask, axis labels come from
``long_name``/``units``, and a variable is drawn when its shape says what it is:

* ``<kind>-final``: every float variable over cell dimensions only (one number per
  run, e.g. ``final_test_accuracy``), one panel each, against the first cell dimension
  other than ``seed`` (with several values); one line per combination of the other
  cell dimensions, the mean over seeds with the sample standard deviation (ddof = 1)
  as error bars where at least two seeds finished (``seed_stats``; n in the title).
* ``<kind>-history``: ``test_accuracy`` and ``train_loss`` against ``epoch``, the
  seed mean per combination of the other cell dimensions.

Only finished cells (``done == 1``) count, as in every figure.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from odenet.plots.common import (
    COLOURS,
    PlotError,
    annotate_diverged,
    diverged_counts,
    finished,
    groups,
    label,
    legend,
    log_axis,
    new_figure,
    note_seeds,
    require,
    seed_stats,
)

__all__ = ["CURVES", "final_variables", "generic_figures"]

# Training curves drawn against epoch, when a study stores them.
CURVES = ("test_accuracy", "train_loss")
# Line styles after the ten colours are used up, so that lines stay distinguishable.
STYLES = ("-", "--", ":", "-.")
# At most this many x values get a tick each; more would overlap.
MAX_TICKS = 12


def generic_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """The generic figures of ``ds``, by file stem: ``<kind>-final`` and/or ``<kind>-history``."""
    require(ds, "done")
    kind = ds.attrs.get("study", "study")
    cells = [str(d) for d in ds["done"].dims]
    done = finished(ds)
    if "diverged" in ds and set(ds["diverged"].dims) == set(cells):
        # As in the depth curves: a diverged run's NaN-padded, exploding history would
        # swamp the mean; its share is shown as "k/n diverged" on the final panels.
        curves_from = done.where(done["diverged"] != 1)
    else:
        curves_from = done
    figures: dict[str, Figure] = {}
    finals = final_variables(ds)
    if finals:
        figures[f"{kind}-final"] = _finals(done, finals, cells)
    curves = [n for n in CURVES if n in ds and "epoch" in ds[n].dims and set(ds[n].dims) <= {*cells, "epoch"}]
    if curves:
        figures[f"{kind}-history"] = _history(curves_from, curves, cells)
    if not figures:
        raise PlotError(
            f"the {kind} result has no float variable over its cells ({', '.join(cells)}) and no "
            f"{' or '.join(CURVES)} over epoch to plot; register its figures with "
            f'@odenet.plots.figures_for("{kind}")'
        )
    return figures


def x_dim(ds: xr.Dataset) -> str:
    """The dimension on the x axis: the first cell dimension that is not ``seed`` and has several values.

    Seeds are repeats, averaged over, never a quantity to plot against; a dimension with
    one value (a study of one solver) would put every point on one vertical line.
    """
    dims = [str(d) for d in ds["done"].dims]
    cells = [d for d in dims if d != "seed"] or dims
    return next((d for d in cells if ds.sizes[d] > 1), cells[0])


def final_variables(ds: xr.Dataset) -> list[str]:
    """Float variables with one value per cell (no inner dimension), that vary along the x axis.

    Integer variables (counts, flags such as ``diverged``) are left out: their mean over
    seeds is not a quantity of the run. ``done`` is the mask itself.
    """
    cells = set(ds["done"].dims)
    x = x_dim(ds)
    return [
        str(name)
        for name, var in ds.data_vars.items()
        if name != "done" and np.issubdtype(var.dtype, np.floating) and x in var.dims and set(var.dims) <= cells
    ]


def _x_axis(ax: Axes, coord: xr.DataArray) -> tuple[np.ndarray, bool]:
    """Positions of the x values, and whether to join the points by lines.

    Numbers are their own positions, joined by lines; names (e.g. models) sit at 0, 1, …
    as unjoined points, since a line between two models would suggest an order.

    Numbers spanning two decades or more (learning rates, widths 8 … 1024) get a log
    axis, so the small values are not squeezed into one corner.
    """
    values = coord.values
    if not np.issubdtype(values.dtype, np.number):
        positions = np.arange(len(values), dtype=float)
        ax.set_xticks(positions, [str(v) for v in values])
        return positions, False
    positions = values.astype(float)
    finite = positions[np.isfinite(positions)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() >= 100:
        log_axis(ax, "x", finite if finite.size <= MAX_TICKS else None)
    elif finite.size <= MAX_TICKS:
        ax.set_xticks(np.unique(finite))
    return positions, True


def _style(i: int) -> dict[str, Any]:
    return {"color": COLOURS[i % len(COLOURS)], "linestyle": STYLES[(i // len(COLOURS)) % len(STYLES)]}


def _grid(n: int, **kw: Any) -> Figure:
    """``n`` panels, at most three a row; unused places of the last row removed."""
    ncols = min(n, 3)
    fig = new_figure(math.ceil(n / ncols), ncols, **kw)
    for ax in fig.axes[n:]:
        fig.delaxes(ax)
    return fig


def _finals(done: xr.Dataset, names: list[str], cells: list[str]) -> Figure:
    """One panel per variable: seed mean ± sample std against the x dimension, a line per combination."""
    x = x_dim(done)
    others = [d for d in cells if d not in (x, "seed")]
    fig = _grid(len(names))
    counts = []
    for ax, name in zip(fig.axes, names, strict=True):
        # Counts per point need diverged and the variable over the same cells.
        count_diverged = "diverged" in done and set(done["diverged"].dims) == set(done[name].dims) == set(cells)
        positions, join = _x_axis(ax, done[x])
        for i, (text, sel, sub) in enumerate(groups(done[name], others)):
            mean, std, n_seeds = seed_stats(sub.transpose(x, ...))
            counts.append(n_seeds.values)
            style = _style(i) if join else {**_style(i), "linestyle": "none"}
            ax.errorbar(
                positions,
                mean.values,
                yerr=std.values,
                label=text if others else None,
                marker="o",
                markersize=3,
                capsize=2,
                **style,
            )
            if count_diverged:
                k, n = diverged_counts(done, sel)
                annotate_diverged(ax, positions, mean.values, k, n, style["color"])
        ax.set_xlabel(label(done[x]))
        ax.set_ylabel(label(done[name], width=30))
    if others:
        legend(fig.axes[0])
    note_seeds(fig, counts)
    return fig


def _history(done: xr.Dataset, names: list[str], cells: list[str]) -> Figure:
    """One panel per training curve: the seed mean against epoch, a line per combination of cells."""
    lines = [d for d in cells if d != "seed"]
    fig = _grid(len(names))
    epoch = done["epoch"].values
    counts = []
    for ax, name in zip(fig.axes, names, strict=True):
        for i, (text, _, sub) in enumerate(groups(done[name], lines)):
            mean, _, n = seed_stats(sub.transpose("epoch", ...))
            counts.append(n.values)
            ax.plot(epoch, mean.values, label=text or None, linewidth=1, **_style(i))
        ax.set_xlabel(label(done["epoch"]))
        ax.set_ylabel(label(done[name], width=30))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if lines:
        legend(fig.axes[0])
    note_seeds(fig, counts, spread=False)
    return fig
