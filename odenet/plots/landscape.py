"""Figures of a landscape study: is the loss surface of a deep network without skips chaotic?

Cells are solver × depth × arch × seed. The question is Li et al. (2018), "Visualizing
the Loss Landscape of Neural Nets", Fig. 5 and 7: along filter-normalised random
directions, the loss around a trained plain network becomes non-convex and chaotic as
depth grows, while its residual twin stays nearly convex.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from odenet.plots.common import (
    ARCH_STYLES,
    COLOURS,
    annotate_diverged,
    diverged_counts,
    finished,
    fmt,
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

__all__ = ["contour_levels", "landscape_figures"]

# Contour lines per panel row: log-spaced over the row's range, at most this many decades.
LEVELS = 14
DECADES = 4


@figures_for("landscape")
def landscape_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """The figures of a landscape study, by file stem.

    landscape-contours: the 2-D slice around the trained weights, residual against plain
    for every depth, for one seed (named in the figure); landscape-slices: the 1-D slice,
    loss and accuracy against the step along the direction, one line per depth (mean over
    seeds); landscape-nonconvexity: the fraction of the 2-D slice with negative curvature
    and |λ_min/λ_max| of the Hessian at the centre against depth.
    """
    require(ds, "depth", "diverged", "surface_loss", "slice_loss", "slice_accuracy", "negative_curvature_fraction")
    done = finished(ds)
    return {
        "landscape-contours": _contours(done),
        "landscape-slices": _slices(done),
        "landscape-nonconvexity": _nonconvexity(done),
    }


def contour_levels(values: np.ndarray, count: int = LEVELS, decades: float = DECADES) -> np.ndarray:
    """Log-spaced contour levels over the finite positive ``values``: from the largest down
    ``decades`` decades at most (a trained network's loss at its centre can be ~1e-4 of the
    rim's, and both ends matter). Empty if there is nothing to draw."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return np.array([])
    hi = float(v.max())
    lo = max(float(v.min()), hi * 10.0**-decades)
    if not hi > lo:
        return np.array([])
    return np.geomspace(lo, hi, count)


def _contour_seed(done: xr.Dataset) -> object | None:
    """The first seed with a finished, drawable surface (None: the study has no seed dimension)."""
    if "seed" not in done["surface_loss"].dims:
        return None
    finite = done["surface_loss"].notnull().any([d for d in done["surface_loss"].dims if d != "seed"])
    seeds = done["seed"].values[finite.values]
    return seeds[0] if seeds.size else done["seed"].values[0]


def _contours(done: xr.Dataset) -> Figure:
    """Rows: (solver ×) depth; columns: arch. Contours of the 2-D slice, log levels shared along a row."""
    seed = _contour_seed(done)
    surface = done["surface_loss"] if seed is None else done["surface_loss"].sel(seed=seed)
    rows = list(groups(surface, [d for d in ("solver", "depth") if d in surface.dims]))
    cols = list(surface["arch"].values) if "arch" in surface.dims else [None]
    fig = new_figure(len(rows), len(cols), width=3.0, height=2.7, sharex=True, sharey=True)
    axes = np.array(fig.axes).reshape(len(rows), len(cols))
    alpha, beta = surface["alpha"].values, surface["beta"].values
    several_solvers = "solver" in surface.dims and surface.sizes["solver"] > 1
    for row, (_, sel, sub) in zip(axes, rows, strict=True):
        levels = contour_levels(sub.values)
        contours = None
        for ax, arch in zip(row, cols, strict=True):
            panel = sub.sel(arch=arch) if arch is not None else sub
            parts = [str(sel["solver"])] if several_solvers else []
            parts += [fmt("depth", sel["depth"])] if "depth" in sel else []
            ax.set_title(", ".join([*parts, *([str(arch)] if arch is not None else [])]), fontsize=8)
            z = panel.transpose("alpha", "beta").values
            if not np.isfinite(z).any() or levels.size == 0:
                ax.text(0.5, 0.5, _why_empty(done, sel, arch, seed), transform=ax.transAxes, ha="center", fontsize=7)
                continue
            # contour wants z[y, x]: beta along the rows, alpha along the columns.
            contours = ax.contour(alpha, beta, z.T, levels=levels, norm=LogNorm(levels[0], levels[-1]), cmap="viridis",
                                  linewidths=0.8)  # fmt: skip
            ax.plot([0.0], [0.0], marker="+", color="k", markersize=6, linestyle="none")  # the trained weights θ
            ax.set_aspect("equal")
        if contours is not None:
            bar = fig.colorbar(contours, ax=list(row), shrink=0.9)
            ticks = [float(v) for v in levels[::3]]
            bar.set_ticks(ticks, labels=[f"{v:.2g}" for v in ticks])
            bar.ax.minorticks_off()
            bar.set_label(label(done["surface_loss"], width=25), fontsize=7)
            bar.ax.tick_params(labelsize=6)
    shared_labels(fig, xlabel=label(done["alpha"], width=60), ylabel=label(done["beta"], width=60))
    which = f"seed {seed}" if seed is not None else "one run"
    fig.suptitle(f"{which}; + marks the trained weights; log-spaced levels per row", x=0.01, ha="left",
                 fontsize="small")  # fmt: skip
    return fig


def _why_empty(done: xr.Dataset, sel: dict[str, object], arch: object, seed: object) -> str:
    where = {**sel, **({"arch": arch} if arch is not None else {}), **({"seed": seed} if seed is not None else {})}
    cell = done.sel(where)
    if int(cell["diverged"].fillna(0)) == 1:
        return "training diverged"
    return "not finished" if "done" in cell and int(cell["done"]) == 0 else "no finite loss"


def _depth_colours(done: xr.Dataset) -> tuple[Normalize, list[Line2D]]:
    depths = done["depth"].values
    hi = float(depths.max()) if depths.max() > depths.min() else float(depths.min()) + 1
    norm = Normalize(float(depths.min()), hi)
    return norm, [Line2D([], [], color=colormaps["viridis"](norm(d)), label=f"depth {d}") for d in depths]


def _slices(done: xr.Dataset) -> Figure:
    """The 1-D slice: loss (log scale) and accuracy against alpha; columns (solver ×) arch, colour = depth."""
    columns = [d for d in ("arch", "solver") if d in done.dims]  # a single column is named by its arch
    panels = list(groups(done["slice_loss"], columns))
    fig = new_figure(2, len(panels), sharex=True, sharey="row")
    axes = np.array(fig.axes).reshape(2, len(panels))
    norm, handles = _depth_colours(done)
    alpha = done["alpha_1d"].values
    counts = []
    for j, (text, sel, _) in enumerate(panels):
        for ax, name in zip(axes[:, j], ("slice_loss", "slice_accuracy"), strict=True):
            for _, part, line in groups(done[name].sel(sel), ["depth"]):
                mean, _, n = seed_stats(line)
                counts.append(n.values)
                ax.plot(alpha, mean.values, color=colormaps["viridis"](norm(part["depth"])), linewidth=1)
            if j == 0:
                ax.set_ylabel(label(done[name], width=30), fontsize=8)
        axes[0, j].set_yscale("log")
        axes[0, j].set_title(text, fontsize=9)
    shared_labels(fig, xlabel=label(done["alpha_1d"], width=80))
    fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    note_seeds(fig, counts, spread=False, prefix="diverged runs left out")
    return fig


def _nonconvexity(done: xr.Dataset) -> Figure:
    """Negative-curvature fraction of the 2-D slice, and the Hessian's |λ_min/λ_max| at θ, against depth."""
    names = [n for n in ("negative_curvature_fraction", "hessian_ratio") if n in done and done[n].notnull().any()]
    names = names or ["negative_curvature_fraction"]
    fig = new_figure(1, len(names))
    depth = done["depth"].values
    solvers = list(done["solver"].values) if "solver" in done.dims else [None]
    counts = []
    for ax, name in zip(fig.axes, names, strict=True):
        for text, sel, sub in groups(done[name], [d for d in ("solver", "arch") if d in done.dims]):
            mean, std, n = seed_stats(sub)
            counts.append(n.values)
            colour = COLOURS[solvers.index(sel.get("solver")) % len(COLOURS)]
            style = ARCH_STYLES.get(str(sel.get("arch")), "-")
            ax.errorbar(depth, mean.values, yerr=std.values, label=text, color=colour, linestyle=style, marker="o",
                        markersize=3, capsize=2)  # fmt: skip
            k, total = diverged_counts(done, sel)
            annotate_diverged(ax, depth, mean.values, k, total, colour)
        ax.set_xlabel(label(done["depth"]))
        ax.set_ylabel(label(done[name], width=35), fontsize=8)
        ax.set_xticks(depth)
        legend(ax)
    note_seeds(fig, counts)
    return fig
