"""Figures of a stability study: is a block's step hλ inside its solver's stability region?

Cells are solver × step_size × depth × seed, or — with a fixed horizon T, where the
depth sets h = T/depth — solver × depth × seed with ``step_size`` a coordinate along
depth; ``normalise`` turns the second layout into the first (without the depth dim).

For the linear test equation x' = λx one step multiplies x by R(hλ), the solver's
stability function; the step does not amplify when |R(hλ)| ≤ 1. Plotting the measured
hλ of each block (leading eigenvalues of the field Jacobian) over the region shows
which networks sit at the edge, and accuracy against h shows what that costs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xarray as xr
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

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
    require,
    seed_stats,
    shared_labels,
)
from odenet.plots.registry import figures_for
from odenet.solvers import UnknownSolverError, get_method

__all__ = ["normalise", "region_box", "stability_figures"]

# Markers of the moment of measurement; filled so the colour (step size) shows.
WHEN_MARKERS = {"init": "^", "final": "o"}
# Search window for the bounded stability region of an explicit method (dopri8's reaches
# about −6 on the real axis).
_SEARCH = (-12.0, 4.0, 12.0)


def normalise(ds: xr.Dataset) -> xr.Dataset:
    """Make ``step_size`` a dimension: swap it in for ``depth`` in the fixed-horizon layout."""
    if "step_size" not in ds.variables:
        raise PlotError("the stability result has no step_size coordinate; re-run the study to plot it")
    if "step_size" in ds.dims:
        return ds
    along = ds["step_size"].dims
    if len(along) != 1:
        raise PlotError(f"step_size varies along {', '.join(map(str, along))}; expected one dimension (depth) to swap")
    return ds.swap_dims({along[0]: "step_size"})


@figures_for("stability")
def stability_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """The figures of a stability study, by file stem.

    stability-regions: each solver's region {|R(z)| ≤ 1} with the measured hλ;
    stability-accuracy: final test accuracy and diverged fraction vs h;
    stability-max-R: the largest |R(hλ)| over blocks vs h.
    """
    require(ds, "solver", "final_test_accuracy", "diverged", "eig_real", "eig_imag", "max_abs_R")
    done = finished(normalise(ds))
    return {
        "stability-regions": _regions(done),
        "stability-accuracy": _accuracy(done),
        "stability-max-R": _max_abs_r(done),
    }


def _line_dims(done: xr.Dataset) -> list[str]:
    """Everything but h and seed: solver, and depth in the grid layout."""
    return [str(d) for d in done["final_test_accuracy"].dims if d not in ("step_size", "seed")]


def _stability_function(solver: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """R(z) of a registered solver; None for a name odenet does not know (no region drawn)."""
    try:
        return get_method(solver).tableau.stability_function
    except UnknownSolverError:
        return None


def region_box(solver: str, pad: float = 0.5) -> tuple[float, float, float, float]:
    """Bounding box (re0, re1, im0, im1) of {|R(z)| ≤ 1} for a registered solver, padded."""
    R = _stability_function(solver)
    lo, hi, half = _SEARCH
    re, im = np.meshgrid(np.linspace(lo, hi, 321), np.linspace(-half, half, 481))
    inside = np.abs(R(re + 1j * im)) <= 1 if R is not None else np.zeros_like(re, dtype=bool)
    if not inside.any():
        return (-3.0, 1.0, -3.0, 3.0)
    return (re[inside].min() - pad, re[inside].max() + pad, im[inside].min() - pad, im[inside].max() + pad)


def _h_lambda(done: xr.Dataset, solver: str, when: str) -> tuple[np.ndarray, np.ndarray]:
    """All measured hλ of a solver at one moment, with the h of each (flattened, finite)."""
    sub = done.sel(solver=solver, when=when)
    lam = sub["eig_real"] + 1j * sub["eig_imag"]
    h = sub["step_size"].broadcast_like(lam)
    z, steps = (h * lam).values.ravel(), h.values.ravel()
    keep = np.isfinite(z)
    return z[keep], steps[keep]


def _regions(done: xr.Dataset) -> Figure:
    """One panel per solver: the region, its boundary |R| = 1, and hλ coloured by h."""
    solvers = [str(s) for s in done["solver"].values]
    ncols = min(3, len(solvers))
    nrows = -(-len(solvers) // ncols)
    fig = new_figure(nrows, ncols, width=3.2, height=3.0)
    h_all = done["step_size"].values[np.asarray(done["step_size"].values) > 0]
    norm = None
    if h_all.size:  # a single step size still needs a non-empty colour range
        norm = LogNorm(h_all.min() if h_all.max() > h_all.min() else h_all.min() / 2, h_all.max())
    whens = [str(w) for w in done["when"].values]
    scatter = None
    for ax, solver in zip(fig.axes, solvers, strict=False):
        re0, re1, im0, im1 = region_box(solver)
        points = {when: _h_lambda(done, solver, when) for when in whens}
        z = np.concatenate([p[0] for p in points.values()])
        # Show the measured points too, but not so far out that the region shrinks to a dot.
        span = max(re1 - re0, im1 - im0)
        if z.size:
            re0 = max(min(re0, z.real.min() - 0.2), re0 - span)
            re1 = min(max(re1, z.real.max() + 0.2), re1 + span)
            im0 = max(min(im0, z.imag.min() - 0.2), im0 - span)
            im1 = min(max(im1, z.imag.max() + 0.2), im1 + span)
        R = _stability_function(solver)
        if R is not None:
            re, im = np.meshgrid(np.linspace(re0, re1, 400), np.linspace(im0, im1, 400))
            modulus = np.abs(R(re + 1j * im))
            ax.contourf(re, im, modulus, levels=[0, 1], colors=["0.88"])
            boundary = ax.contour(re, im, modulus, levels=[1], colors="k", linewidths=0.8)
            boundary.set_gid(f"boundary-{solver}")
        ax.axhline(0, color="0.6", linewidth=0.5)
        ax.axvline(0, color="0.6", linewidth=0.5)
        for when, (zw, hw) in points.items():
            scatter = ax.scatter(
                zw.real,
                zw.imag,
                c=hw,
                norm=norm,
                cmap="viridis",
                s=10,
                alpha=0.8,
                marker=WHEN_MARKERS.get(when, "s"),
                linewidths=0,
            )
        outside = int(np.sum((z.real < re0) | (z.real > re1) | (z.imag < im0) | (z.imag > im1)))
        if outside:
            ax.text(0.02, 0.02, f"{outside} points outside", transform=ax.transAxes, fontsize=6)
        ax.set_xlim(re0, re1)
        ax.set_ylim(im0, im1)
        ax.set_aspect("equal", adjustable="box")
        order = f", order {get_method(solver).order}" if R is not None else " (unknown: no region)"
        ax.set_title(f"{solver}{order}", fontsize=9)
        ax.set_xlabel("Re(hλ)")
        ax.set_ylabel("Im(hλ)")
    for ax in fig.axes[len(solvers) :]:
        ax.set_visible(False)
    if scatter is not None and norm is not None:
        fig.colorbar(scatter, ax=fig.axes[: len(solvers)], label=label(done["step_size"], width=25), shrink=0.8)
    handles = [Line2D([], [], color="0.3", marker=WHEN_MARKERS.get(w, "s"), linestyle="none", label=w) for w in whens]
    handles.append(Line2D([], [], color="k", linewidth=0.8, label="|R(z)| = 1"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7)
    return fig


def _accuracy(done: xr.Dataset) -> Figure:
    """Final test accuracy (mean ± std over seeds) and the fraction of diverged seeds against h."""
    fig = new_figure(2, 1, height=2.2, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top, bottom = fig.axes
    h = done["step_size"].values
    for i, (text, sel, sub) in enumerate(groups(done["final_test_accuracy"], _line_dims(done))):
        colour = COLOURS[i % len(COLOURS)]
        mean, std = seed_stats(sub)
        top.errorbar(h, mean.values, yerr=std.values, color=colour, marker="o", markersize=3, capsize=2, label=text)
        k, n = diverged_counts(done, sel)
        annotate_diverged(top, h, mean.values, k, n, colour)
        with np.errstate(invalid="ignore", divide="ignore"):
            bottom.plot(h, np.where(n > 0, k / np.maximum(n, 1), np.nan), color=colour, marker="o", markersize=3)
    log_axis(top, "x", h)
    top.set_ylabel(label(done["final_test_accuracy"]))
    legend(top)
    bottom.set_ylim(-0.05, 1.05)
    bottom.set_ylabel("fraction of\nseeds diverged")
    bottom.set_xlabel(label(done["step_size"]))
    return fig


def _max_abs_r(done: xr.Dataset) -> Figure:
    """max over blocks of max |R(hλ)| against h, log–log; mean over seeds with the seeds' range."""
    var = done["max_abs_R"]
    whens = list(var["when"].values)
    fig = new_figure(1, len(whens), sharey=True)
    h = done["step_size"].values
    largest = var.max("block")
    for ax, when in zip(fig.axes, whens, strict=True):
        for i, (text, _, sub) in enumerate(groups(largest.sel(when=when), _line_dims(done))):
            colour = COLOURS[i % len(COLOURS)]
            mean, _ = seed_stats(sub)
            ax.plot(h, mean.values, color=colour, marker="o", markersize=3, label=text)
            if "seed" in sub.dims:
                ax.fill_between(h, sub.min("seed").values, sub.max("seed").values, color=colour, alpha=0.2, linewidth=0)
        ax.axhline(1.0, color="k", linestyle="--", linewidth=0.8)
        log_axis(ax, "x", h)
        ax.set_yscale("log")
        ax.set_title(str(when), fontsize=9)
    shared_labels(fig, xlabel=label(done["step_size"], width=80))
    fig.axes[0].set_ylabel(label(var, ", max over blocks"))
    legend(fig.axes[0])
    return fig
