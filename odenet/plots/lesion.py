"""Figures of a lesion study: how much does a trained network need each of its blocks?

Cells are solver × depth × arch × seed. The question is Veit, Wilber & Belongie (2016),
"Residual networks behave like ensembles of relatively shallow networks": deleting one
block of a trained residual network costs little (Fig. 3), deleting several costs
smoothly more (Fig. 4a), while a plain network falls to chance; and most of the gradient
travels along short paths (Fig. 6). ``odenet.lesions`` says what deleting a unit means.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

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

__all__ = ["lesion_figures"]

# Residual and plain in their own colours too: the single-lesion panels overlay both.
ARCH_COLOURS = {"residual": COLOURS[0], "plain": COLOURS[1]}


@figures_for("lesion")
def lesion_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """The figures of a lesion study, by file stem.

    lesion-single: test accuracy with one unit deleted against the unit, a panel per
    solver × depth, residual and plain overlaid, the intact accuracy as a dotted line and
    stage transitions (replaced by their shortcut) as separate markers on shaded columns;
    lesion-random: accuracy against the number k of ODE steps deleted at random;
    lesion-paths (when a cell measured it: Euler residual nets): the norm of the loss
    gradient carried by the paths through k residual branches, against k.
    """
    require(ds, "depth", "lesion_accuracy", "transition_lesion_accuracy", "is_transition", "intact_accuracy",
            "random_lesion_accuracy", "path_gradient_norm")  # fmt: skip
    done = finished(ds)
    kept = done.where(done["diverged"] != 1)  # a diverged cell measured nothing
    figures = {"lesion-single": _single(kept), "lesion-random": _random(kept)}
    if bool(np.isfinite(kept["path_gradient_norm"].values).any()):
        figures["lesion-paths"] = _paths(kept)
    return figures


def _solvers(done: xr.Dataset) -> list[object]:
    return list(done["solver"].values) if "solver" in done.dims else [None]


def _archs(done: xr.Dataset) -> list[object]:
    return list(done["arch"].values) if "arch" in done.dims else [None]


def _sel(**labels: object) -> dict[str, object]:
    return {k: v for k, v in labels.items() if v is not None}


def _transitions(done: xr.Dataset, sel: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
    """(unit indices, which are transitions) of the network at ``sel``: the same in every finished cell."""
    kind = done["is_transition"].sel(sel)
    flags = kind.max([d for d in kind.dims if d != "block"]) if kind.ndim > 1 else kind
    values = flags.values
    present = np.isfinite(values) & (values >= 0)
    return done["block"].values[present], done["block"].values[present & (values == 1)]


def _single(done: xr.Dataset) -> Figure:
    """One panel per solver × depth: accuracy with unit i deleted (mean ± std over seeds) against i."""
    solvers, depths, archs = _solvers(done), list(done["depth"].values), _archs(done)
    fig = new_figure(len(solvers), len(depths), sharey=True)
    axes = np.array(fig.axes).reshape(len(solvers), len(depths))
    counts = []
    for row, solver in zip(axes, solvers, strict=True):
        for ax, depth in zip(row, depths, strict=True):
            where = _sel(solver=solver, depth=depth)
            blocks, transitions = _transitions(done, where)
            for b in transitions:
                ax.axvspan(b - 0.5, b + 0.5, color="0.9", linewidth=0)
            for arch in archs:
                sub = done.sel({**where, **_sel(arch=arch)})
                colour = ARCH_COLOURS.get(str(arch), COLOURS[2])
                style = ARCH_STYLES.get(str(arch), "-")
                mean, std, n = seed_stats(sub["lesion_accuracy"])
                counts.append(n.values)
                ax.errorbar(blocks, mean.values[blocks], yerr=std.values[blocks], color=colour, linestyle=style,
                            marker="o", markersize=3, capsize=2, linewidth=1)  # fmt: skip
                tmean, tstd, tn = seed_stats(sub["transition_lesion_accuracy"])
                counts.append(tn.values)
                ax.errorbar(transitions, tmean.values[transitions], yerr=tstd.values[transitions], color=colour,
                            linestyle="none", marker="v", markersize=5, capsize=2)  # fmt: skip
                intact, _, ni = seed_stats(sub["intact_accuracy"])
                counts.append(ni.values)
                if np.isfinite(intact.values):
                    ax.axhline(float(intact.values), color=colour, linestyle=":", linewidth=1)
            title = ", ".join(t for t in (str(solver) if solver is not None else "", f"depth {depth}") if t)
            ax.set_title(title, fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [
        Line2D([], [], color=ARCH_COLOURS.get(str(a), COLOURS[2]), linestyle=ARCH_STYLES.get(str(a), "-"),
               marker="o", markersize=3, label=f"{a}: ODE step deleted" if a is not None else "ODE step deleted")
        for a in archs
    ]  # fmt: skip
    handles += [
        Line2D([], [], color="0.3", linestyle="none", marker="v", label="transition: shortcut only (shaded)"),
        Line2D([], [], color="0.3", linestyle=":", label="intact network"),
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    width = 30 * len(solvers)
    shared_labels(fig, xlabel=label(done["block"], width=80), ylabel=label(done["lesion_accuracy"], width=width))
    note_seeds(fig, counts, prefix="plain transitions cannot be deleted")
    return fig


def _depth_colours(done: xr.Dataset) -> tuple[Normalize, list[Line2D]]:
    depths = done["depth"].values
    top = float(depths.max()) if depths.max() > depths.min() else float(depths.min()) + 1
    norm = Normalize(float(depths.min()), top)
    handles = [Line2D([], [], color=colormaps["viridis"](norm(d)), label=f"depth {d}") for d in depths]
    return norm, handles


def _arch_handles(done: xr.Dataset) -> list[Line2D]:
    return [Line2D([], [], color="0.3", linestyle=ARCH_STYLES.get(str(a), "-"), label=str(a)) for a in _archs(done)
            if a is not None]  # fmt: skip


def _random(done: xr.Dataset) -> Figure:
    """One panel per solver: accuracy against k random deletions; colour = depth, line style = arch."""
    solvers = _solvers(done)
    fig = new_figure(1, len(solvers), sharey=True, lines=done.sizes["depth"] + len(_archs(done)))
    norm, depth_handles = _depth_colours(done)
    k = done["deleted"].values
    counts = []
    for ax, solver in zip(fig.axes, solvers, strict=True):
        var = done["random_lesion_accuracy"].sel(_sel(solver=solver))
        for _, part, sub in groups(var, ["depth", "arch"]):
            mean, std, n = seed_stats(sub)
            counts.append(n.values)
            ax.errorbar(k, mean.values, yerr=std.values, color=colormaps["viridis"](norm(part["depth"])),
                        linestyle=ARCH_STYLES.get(str(part.get("arch")), "-"), marker="o", markersize=3, capsize=2,
                        linewidth=1)  # fmt: skip
        if solver is not None:
            ax.set_title(str(solver), fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend(fig.axes[-1], handles=depth_handles + _arch_handles(done))
    shared_labels(fig, xlabel=label(done["deleted"]), ylabel=label(done["random_lesion_accuracy"], width=30))
    note_seeds(fig, counts, prefix="each seed: mean over its random sets")
    return fig


def _paths(done: xr.Dataset) -> Figure:
    """‖g_k‖ against path length k, log scale: one line per depth (and solver, arch) that measured it."""
    var = done["path_gradient_norm"]
    fig = new_figure(height=3.2)
    ax = fig.axes[0]
    norm, _ = _depth_colours(done)
    counts = []
    for text, part, sub in groups(var, ["solver", "depth", "arch"]):
        mean, _, n = seed_stats(sub)
        if not np.isfinite(mean.values).any():
            continue  # a plain net or a higher-order solver: no split into paths
        counts.append(n.values)
        ax.plot(mean["path_length"].values, mean.values, color=colormaps["viridis"](norm(part["depth"])),
                marker=".", markersize=4, linewidth=1, label=text)  # fmt: skip
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label(done["path_length"]))
    ax.set_ylabel(label(var, width=30))
    legend(ax)
    note_seeds(fig, counts, spread=False)
    return fig
