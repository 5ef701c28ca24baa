"""Figures of a stability study: is a block's step hλ inside its solver's stability region?

Cells are solver × step_size × depth × norm × shortcut × seed, or — with a fixed horizon
T, where the depth sets h = T/n — solver × depth × norm × shortcut × seed with
``step_size`` a coordinate along depth; ``step_size_dim`` turns the second layout into
the first (without the depth dim). Every cell dimension other than h and seed is a line
(or a panel of the regions); one with a single value (often norm and shortcut) is
selected away and named nowhere.

For the linear test equation x' = λx one step multiplies x by R(hλ), the solver's
stability function; the step does not amplify when |R(hλ)| ≤ 1. Plotting the measured
hλ of each block (leading eigenvalues of the field Jacobian, chosen by modulus and by
real part) over the region shows which networks sit at the edge, and accuracy against h
shows what that costs. |R| > 1 is not by itself the solver's fault: where Re λ > 0 the
exact flow grows too. ``stability-discretisation`` separates the two: the spectral radius
of the one-step map against that of the exact flow, and their ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from odenet.plots.common import (
    COLOURS,
    annotate_diverged,
    diverged_counts,
    finished,
    fmt,
    groups,
    label,
    legend,
    log_axis,
    new_figure,
    note_seeds,
    reference_slope,
    require,
    seed_stats,
    shared_labels,
    step_size_dim,
)
from odenet.plots.registry import figures_for
from odenet.solvers import UnknownSolverError, get_method

__all__ = ["CONTROLS", "region_box", "stability_figures", "stage_of_block"]

# Markers of the moment of measurement; filled so the colour (step size) shows.
WHEN_MARKERS = {"init": "^", "final": "o"}
# Eigenvalues chosen by largest modulus are drawn filled, those by largest real part hollow
# (the same eigenvalue is often chosen by both: a filled marker in a ring).
SELECT_FILLED = {"modulus": True, "real_part": False}
# The model options a stability study may vary as controls; stability-controls is drawn
# when one of them has several values.
CONTROLS = ("norm", "shortcut")
# Search window for the bounded stability region of an explicit method (dopri8's reaches
# about −6 on the real axis).
_SEARCH = (-12.0, 4.0, 12.0)


@figures_for("stability")
def stability_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """The figures of a stability study, by file stem.

    stability-regions: each solver's region {|R(z)| ≤ 1} with the measured hλ;
    stability-accuracy: final test accuracy and diverged fraction vs h;
    stability-max-R: the largest |R(hλ)| over blocks vs h;
    stability-discretisation: spectral radius of the one-step map and of the exact flow,
    and the growth the discretisation adds (their ratio, and max |R| / max(1, |e^{hλ}|)) vs h;
    stability-controls (when norm or shortcut has several values): the largest |λ| at
    initialisation per stage vs h, one line per norm × shortcut, with a slope of −1.
    """
    require(ds, "solver", "final_test_accuracy", "diverged", "eig_real", "eig_imag", "max_abs_R")
    require(ds, "step_radius", "flow_radius", "step_excess", "excess_growth")
    done = finished(step_size_dim(ds))
    figures = {
        "stability-regions": _regions(done),
        "stability-accuracy": _accuracy(done),
        "stability-max-R": _max_abs_r(done),
        "stability-discretisation": _discretisation(done),
    }
    if any(done.sizes.get(c, 1) > 1 for c in CONTROLS):
        require(ds, "activation_rms")
        figures["stability-controls"] = _controls(done)
    return figures


def _line_dims(done: xr.Dataset) -> list[str]:
    """Every cell dimension but h and seed: solver, norm, shortcut, and depth in the grid layout."""
    return [str(d) for d in done["done"].dims if d not in ("step_size", "seed")]


def _lines(done: xr.Dataset) -> int:
    """How many lines a figure against h draws: one per combination of ``_line_dims``."""
    return int(np.prod([done.sizes[d] for d in _line_dims(done)]))


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


def _h_lambda(sub: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All measured hλ of a selection (one moment, one eigenvalue set), with the h of each (flattened, finite)."""
    lam = sub["eig_real"] + 1j * sub["eig_imag"]
    h = sub["step_size"].broadcast_like(lam)
    z, steps = (h * lam).values.ravel(), h.values.ravel()
    keep = np.isfinite(z)
    return z[keep], steps[keep]


def _regions(done: xr.Dataset) -> Figure:
    """One panel per solver (× norm × shortcut × depth where they vary): the region, |R| = 1, and hλ coloured by h.

    Marker: moment (init ▲, final ●); filled: chosen by modulus, hollow: by real part.
    """
    panels = list(groups(done["done"], _line_dims(done)))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = new_figure(nrows, ncols, width=3.2, height=3.0)
    h_all = done["step_size"].values[np.asarray(done["step_size"].values) > 0]
    norm = None
    if h_all.size:  # a single step size still needs a non-empty colour range
        norm = LogNorm(h_all.min() if h_all.max() > h_all.min() else h_all.min() / 2, h_all.max())
    whens = [str(w) for w in done["when"].values]
    selects = [str(s) for s in done["select"].values] if "select" in done["eig_real"].dims else [None]
    scatter = None
    for ax, (_, sel, _) in zip(fig.axes, panels, strict=False):
        solver = str(sel["solver"])
        sub = done.sel(sel)
        re0, re1, im0, im1 = region_box(solver)
        points = {
            (when, select): _h_lambda(sub.sel({"when": when, **({"select": select} if select else {})}))
            for when in whens
            for select in selects
        }
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
        for (when, select), (zw, hw) in points.items():
            style: dict[str, Any] = {"c": hw, "norm": norm, "cmap": "viridis", "linewidths": 0}
            if not SELECT_FILLED.get(str(select), True):
                rgba = colormaps["viridis"](norm(hw)) if norm is not None else "0.3"
                style = {"facecolors": "none", "edgecolors": rgba, "linewidths": 0.7}
            collection = ax.scatter(zw.real, zw.imag, s=10, alpha=0.8, marker=WHEN_MARKERS.get(when, "s"), **style)
            collection.set_gid(f"h-lambda-{when}-{select}" if select else f"h-lambda-{when}")
            if "c" in style:
                scatter = collection
        outside = int(np.sum((z.real < re0) | (z.real > re1) | (z.imag < im0) | (z.imag > im1)))
        if outside:
            ax.text(0.02, 0.02, f"{outside} points outside", transform=ax.transAxes, fontsize=6)
        ax.set_xlim(re0, re1)
        ax.set_ylim(im0, im1)
        ax.set_aspect("equal", adjustable="box")
        order = f", order {get_method(solver).order}" if R is not None else " (unknown: no region)"
        others = ", ".join(fmt(d, v) for d, v in sel.items() if d != "solver" and done.sizes[d] > 1)
        ax.set_title(f"{solver}{order}" + (f"\n{others}" if others else ""), fontsize=9)
        ax.set_xlabel("Re(hλ)")
        ax.set_ylabel("Im(hλ)")
    for ax in fig.axes[len(panels) :]:
        ax.set_visible(False)
    if scatter is not None and norm is not None:
        fig.colorbar(scatter, ax=fig.axes[: len(panels)], label=label(done["step_size"], width=25), shrink=0.8)
    handles = [Line2D([], [], color="0.3", marker=WHEN_MARKERS.get(w, "s"), linestyle="none", label=w) for w in whens]
    for select in selects:
        if select is not None:
            filled = SELECT_FILLED.get(select, True)
            face = "0.3" if filled else "none"
            text = f"largest {select.replace('_', ' ')}"
            handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor=face, linestyle="none", label=text))
    handles.append(Line2D([], [], color="k", linewidth=0.8, label="|R(z)| = 1"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=7)
    return fig


def _accuracy(done: xr.Dataset) -> Figure:
    """Final test accuracy (mean ± sample std over seeds) and the fraction of diverged seeds against h."""
    fig = new_figure(2, 1, height=2.2, lines=_lines(done), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top, bottom = fig.axes
    h = done["step_size"].values
    counts = []
    for i, (text, sel, sub) in enumerate(groups(done["final_test_accuracy"], _line_dims(done))):
        colour = COLOURS[i % len(COLOURS)]
        mean, std, n_seeds = seed_stats(sub)
        counts.append(n_seeds.values)
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
    note_seeds(fig, counts)
    return fig


def _max_abs_r(done: xr.Dataset) -> Figure:
    """max over blocks of max |R(hλ)| against h, log–log; mean over seeds with the seeds' range."""
    var = done["max_abs_R"]
    whens = list(var["when"].values)
    fig = new_figure(1, len(whens), lines=_lines(done), sharey=True)
    h = done["step_size"].values
    largest = _block_max(var)
    counts = []
    for ax, when in zip(fig.axes, whens, strict=True):
        for i, (text, _, sub) in enumerate(groups(largest.sel(when=when), _line_dims(done))):
            colour = COLOURS[i % len(COLOURS)]
            mean, _, n = seed_stats(sub)
            counts.append(n.values)
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
    note_seeds(fig, counts, spread=False, prefix="band: range over seeds")
    return fig


def _block_max(var: xr.DataArray) -> xr.DataArray:
    """The largest value over blocks (NaN where a cell has none: unfinished, or diverged before the probe)."""
    return var.fillna(-np.inf).max("block").where(var.notnull().any("block"))


# What stability-discretisation draws in each row: (variable, line style, legend text).
RADII: tuple[tuple[str, Any, str], ...] = (
    ("step_radius", "-", "ρ(∂Φ_h/∂x): one-step map"),
    ("flow_radius", "--", "exp(h max Re λ): exact flow"),
)
EXCESS: tuple[tuple[str, Any, str], ...] = (
    ("step_excess", "-", "ρ(step) / max(1, ρ(flow))"),
    ("excess_growth", ":", "max |R(hλ)| / max(1, |exp(hλ)|)"),
)


def _discretisation(done: xr.Dataset) -> Figure:
    """The ODE's own growth against the solver's: radii (top) and the solver's excess (bottom) vs h.

    Columns are the moments (init, final); colour is the line (solver × norm × shortcut …),
    style the quantity. Each point is the largest value over the network's blocks,
    averaged over seeds. An excess above 1 (the line) is growth the discretisation adds
    beyond the exact flow of the linearised field; at or below 1 it adds none.
    """
    whens = [str(w) for w in done["when"].values]
    fig = new_figure(2, len(whens), lines=_lines(done) + len(RADII) + len(EXCESS), sharex=True, sharey="row")
    axes = np.array(fig.axes).reshape(2, len(whens))
    h = done["step_size"].values
    counts = []
    for row, quantities in zip(axes, (RADII, EXCESS), strict=True):
        for ax, when in zip(row, whens, strict=True):
            for name, style, _ in quantities:
                largest = _block_max(done[name].sel(when=when))
                for i, (_, _, sub) in enumerate(groups(largest, _line_dims(done))):
                    mean, _, n = seed_stats(sub)
                    counts.append(n.values)
                    colour = COLOURS[i % len(COLOURS)]
                    ax.plot(h, mean.values, color=colour, linestyle=style, marker="o", markersize=3, gid=name)
            ax.axhline(1.0, color="k", linewidth=0.6, alpha=0.6)
            ax.set_yscale("log")
            log_axis(ax, "x", h)
            ax.set_title(when, fontsize=9)
    axes[0, 0].set_ylabel("spectral radius,\nmax over blocks")
    axes[1, 0].set_ylabel("growth the solver adds,\nmax over blocks (≤ 1: none)")
    shared_labels(fig, xlabel=label(done["step_size"], width=80))
    lines = [text for text, _, _ in groups(done["done"], _line_dims(done))]
    handles = [Line2D([], [], color=COLOURS[i % len(COLOURS)], label=text) for i, text in enumerate(lines)]
    handles += [Line2D([], [], color="0.3", linestyle=s, label=t) for _, s, t in (*RADII, *EXCESS)]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    note_seeds(fig, counts, spread=False)
    return fig


def stage_of_block(done: xr.Dataset) -> xr.DataArray:
    """The stage of every block of every cell (NaN past the cell's last block).

    A conv net of n blocks per stage has 3n blocks (a stage's first block after the first
    stage is its transition); block b belongs to stage b // n. n is read from the data:
    the blocks a cell measured (finite ``activation_rms`` at any moment) divided by 3. An
    MLP (as many blocks as its depth, or a count not divisible by 3) is one stage.
    """
    measured = done["activation_rms"].notnull().any("when")
    count = measured.sum("block")
    one_stage = (count == done["depth"]) | (count % 3 != 0)
    per_stage = xr.where(one_stage, count, count // 3)
    stage = done["block"] // per_stage.where(per_stage > 0)
    return stage.where(measured)


def _controls(done: xr.Dataset) -> Figure:
    """Largest |λ| at initialisation against h per stage, log–log: one line per norm × shortcut (× solver …).

    Where a stage's eigenvalues grow like 1/h (the slope −1 drawn for comparison), hλ does
    not shrink with h: refining the step does not approach one ODE. The lines show which
    control (normalisation, shortcut) the slope goes with.
    """
    largest = abs(done["eig_real"] + 1j * done["eig_imag"]).sel(when="init")
    if "select" in largest.dims:
        largest = largest.sel(select="modulus")
    largest = largest.isel(eig=0)
    stage = stage_of_block(done)
    stages = np.unique(stage.values[np.isfinite(stage.values)]).astype(int)
    fig = new_figure(1, max(len(stages), 1), lines=_lines(done) + 1, sharey=True)
    h = done["step_size"].values
    counts = []
    for ax, s in zip(fig.axes, stages, strict=False):
        per_cell = largest.where(stage == s).mean("block")
        first = None
        for i, (text, _, sub) in enumerate(groups(per_cell, _line_dims(done))):
            mean, std, n = seed_stats(sub)
            counts.append(n.values)
            ax.errorbar(
                h,
                mean.values,
                yerr=std.values,
                color=COLOURS[i % len(COLOURS)],
                marker="o",
                markersize=3,
                capsize=2,
                label=text,
            )
            first = mean.values if first is None else first
        if first is not None:
            ax.plot(h, reference_slope(h, first, 1), color="0.4", linestyle="--", linewidth=0.8, gid="slope-1")
        log_axis(ax, "x", h)
        ax.set_yscale("log")
        ax.set_title(f"stage {s}", fontsize=9)
    shared_labels(fig, xlabel=label(done["step_size"], width=80))
    fig.axes[0].set_ylabel("largest |λ| at init,\nmean over the stage's blocks")
    handles, _ = fig.axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.4", linestyle="--", linewidth=0.8, label="slope −1 (|λ| ∝ 1/h)"))
    legend(fig.axes[0], handles=handles)
    note_seeds(fig, counts)
    return fig
