"""Figures of a shattered-gradients study: does the input gradient turn into white noise with depth?

Cells are solver × depth × arch × seed; each holds, at ``when`` = init and final, the
derivative of a class logit along several lines through input space (``line`` × ``s``),
its autocorrelation over ``lag`` and two summaries per line. The question is Balduzzi et
al. (2017), "The Shattered Gradients Problem", Fig. 1–2: a deep *plain* network's
gradient curve looks like white noise (lag-1 correlation near 0, flat spectrum), a
residual network's like brown noise (correlation near 1, spectral slope −2).

A cell's value of a summary is its mean over lines (lines whose curve is constant have
no correlation and are left out); the figures then take ``seed_stats`` over seeds.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from odenet.plots.common import (
    ARCH_STYLES,
    COLOURS,
    finished,
    groups,
    label,
    legend,
    new_figure,
    note_seeds,
    require,
    seed_stats,
    shared_labels,
)
from odenet.plots.registry import figures_for

__all__ = ["line_mean", "shattered_figures"]

# Reference levels of the summaries: white noise and brown noise (a random walk).
WHITE_BROWN = {"grad_lag1": (0.0, 1.0), "grad_spectral_slope": (0.0, -2.0)}


@figures_for("shattered")
def shattered_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """The figures of a shattered study, by file stem.

    shattered-curves: one gradient curve (line 0, first finished seed) of the shallowest
    and the deepest residual and plain network, at init and after training;
    shattered-acf: autocorrelation against lag, colour = depth; shattered-lag1 and
    shattered-slope: lag-1 correlation and spectral slope against depth, residual vs plain.
    """
    require(ds, "depth", "arch", "grad_curve", "grad_acf", "grad_lag1", "grad_spectral_slope")
    done = finished(ds)
    return {
        "shattered-curves": _curves(done),
        "shattered-acf": _acf(done),
        "shattered-lag1": _versus_depth(done, "grad_lag1"),
        "shattered-slope": _versus_depth(done, "grad_spectral_slope"),
    }


def line_mean(da: xr.DataArray) -> xr.DataArray:
    """The mean over ``line`` of the finite values (NaN where there are none), attributes kept."""
    n = da.notnull().sum("line")
    mean = da.sum("line") / n.where(n > 0)
    return mean.assign_attrs(da.attrs)


def _first_solver(done: xr.Dataset) -> tuple[xr.Dataset, str]:
    if "solver" not in done.dims:
        return done, ""
    solver = str(done["solver"].values[0])
    return done.sel(solver=solver), solver


def _curves(done: xr.Dataset) -> Figure:
    """Rows: init, final; columns: shallowest and deepest depth × residual, plain (Balduzzi et al.'s Fig. 1)."""
    sub, solver = _first_solver(done)
    depths = sorted({int(sub["depth"].values.min()), int(sub["depth"].values.max())})
    archs = list(sub["arch"].values)
    whens = list(sub["when"].values)
    panels = [(d, a) for d in depths for a in archs]
    fig = new_figure(len(whens), len(panels), width=2.6, height=2.0, sharex=True)
    axes = np.array(fig.axes).reshape(len(whens), len(panels))
    curve = sub["grad_curve"].isel(line=0)
    s = sub["s"].values
    shown_seeds = set()
    for row, when in zip(axes, whens, strict=True):
        for ax, (depth, arch) in zip(row, panels, strict=True):
            one = curve.sel(depth=depth, arch=arch, when=when)
            seeds = [k for k in range(one.sizes.get("seed", 1)) if np.isfinite(_seed(one, k).values).any()]
            if seeds:
                shown = _seed(one, seeds[0])
                ax.plot(s, shown.values, color="C0" if arch == "residual" else "C3", linewidth=0.6)
                if "seed" in one.dims:
                    shown_seeds.add(int(one["seed"].values[seeds[0]]))
            else:
                ax.text(0.5, 0.5, "not finished\nor diverged", transform=ax.transAxes, ha="center", fontsize=7)
            ax.set_title(f"depth {depth}, {arch}, {when}", fontsize=8)
            ax.tick_params(labelsize=6)
    shared_labels(fig, xlabel=label(sub["s"], width=80), ylabel=label(curve, width=50))
    where = ", ".join(
        t
        for t in (
            solver,
            "line 0",
            f"seed {', '.join(map(str, sorted(shown_seeds)))}" if shown_seeds else "",
        )
        if t
    )
    fig.suptitle(f"one gradient curve per panel ({where})", x=0.01, ha="left", fontsize="small")
    return fig


def _seed(da: xr.DataArray, k: int) -> xr.DataArray:
    return da.isel(seed=k) if "seed" in da.dims else da


def _depth_colours(depths: np.ndarray) -> tuple[Normalize, list[Line2D]]:
    """Colour by depth (viridis, shallow dark) and legend handles for it."""
    top = float(depths.max()) if depths.max() > depths.min() else float(depths.min()) + 1
    norm = Normalize(float(depths.min()), top)
    return norm, [Line2D([], [], color=colormaps["viridis"](norm(d)), label=f"depth {d}") for d in depths]


def _acf(done: xr.Dataset) -> Figure:
    """Autocorrelation against lag, mean over lines then seeds: rows = solver × arch, columns = when."""
    var = line_mean(done["grad_acf"])
    rows = list(groups(var, [d for d in ("solver", "arch") if d in var.dims]))
    whens = list(var["when"].values)
    fig = new_figure(len(rows), len(whens), sharex=True, sharey=True)
    axes = np.array(fig.axes).reshape(len(rows), len(whens))
    norm, handles = _depth_colours(done["depth"].values)
    lag = var["lag"].values
    counts = []
    for row, (text, _, sub) in zip(axes, rows, strict=True):
        for ax, when in zip(row, whens, strict=True):
            for _, part, line in groups(sub.sel(when=when), ["depth"]):
                mean, _, n = seed_stats(line)
                counts.append(n.values)
                ax.plot(lag, mean.values, color=colormaps["viridis"](norm(part["depth"])), linewidth=1)
            ax.axhline(0.0, color="0.6", linewidth=0.6, linestyle=":")  # white noise
            ax.set_title(f"{text}, {when}" if text else str(when), fontsize=9)
    shared_labels(fig, xlabel=label(done["lag"], width=80), ylabel=label(done["grad_acf"], width=30 * len(rows)))
    fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    note_seeds(fig, counts, spread=False, prefix="mean over lines")
    return fig


def _versus_depth(done: xr.Dataset, name: str) -> Figure:
    """A summary against depth, one panel per ``when``: a line per solver × arch, mean ± std over seeds."""
    var = line_mean(done[name])
    whens = list(var["when"].values)
    fig = new_figure(1, len(whens), sharey=True)
    depth = done["depth"].values
    solvers = list(done["solver"].values) if "solver" in done.dims else [None]
    counts = []
    for ax, when in zip(fig.axes, whens, strict=True):
        white, brown = WHITE_BROWN[name]
        ax.axhline(white, color="0.6", linewidth=0.6, linestyle=":")
        ax.axhline(brown, color="0.6", linewidth=0.6, linestyle="-.")
        for text, sel, sub in groups(var.sel(when=when), [d for d in ("solver", "arch") if d in var.dims]):
            mean, std, n = seed_stats(sub)
            counts.append(n.values)
            ax.errorbar(
                depth,
                mean.values,
                yerr=std.values,
                label=text,
                color=COLOURS[solvers.index(sel.get("solver")) % len(COLOURS)],
                linestyle=ARCH_STYLES.get(str(sel.get("arch")), "-"),
                marker="o",
                markersize=3,
                capsize=2,
            )
        ax.set_xticks(depth)
        ax.set_title(str(when), fontsize=9)
    fig.axes[0].set_ylabel(label(done[name], width=32))
    shared_labels(fig, xlabel=label(done["depth"]))
    legend(fig.axes[-1])
    note_seeds(fig, counts, prefix="mean over lines; dotted: white noise, dash-dot: brown noise")
    return fig
