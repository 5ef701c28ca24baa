"""Figures of a depth study: does a deeper network train better, with and without skips?

Cells are solver × depth × arch × seed. The question is He et al. (2015), "Deep Residual
Learning for Image Recognition", Fig. 1/4: the deeper *plain* network has the higher
training error, its residual twin does not; the gradient-norm profile over blocks shows
why (it vanishes towards the input of a deep plain net).
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
    annotate_diverged,
    diverged_counts,
    finished,
    groups,
    label,
    last_valid,
    legend,
    new_figure,
    note_seeds,
    require,
    seed_stats,
    shared_labels,
)
from odenet.plots.registry import figures_for

__all__ = ["depth_figures", "last_valid"]


@figures_for("depth")
def depth_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """The figures of a depth study, by file stem.

    depth-accuracy: final test accuracy vs depth; depth-train-loss: last-epoch training
    loss vs depth; depth-curves: training curves per depth, residual vs plain;
    depth-grad-norm: per-block gradient norm at initialisation and after training.
    """
    require(ds, "depth", "final_test_accuracy", "diverged", "train_loss", "test_accuracy", "block_grad_norm")
    done = finished(ds)
    return {
        "depth-accuracy": _versus_depth(done, done["final_test_accuracy"]),
        "depth-train-loss": _versus_depth(done, _final_train_loss(done), suffix=", last epoch"),
        "depth-curves": _curves(done),
        "depth-grad-norm": _grad_norm(done),
    }


def _final_train_loss(done: xr.Dataset) -> xr.DataArray:
    # A diverged run's last recorded loss is huge and would swamp the mean; its seeds are
    # counted as "k/n diverged" instead, like its NaN final accuracy.
    loss = last_valid(done["train_loss"], "epoch")
    return loss.where(done["diverged"] != 1)


def _line_dims(done: xr.Dataset) -> list[str]:
    return [d for d in ("solver", "arch") if d in done.dims]


def _versus_depth(done: xr.Dataset, values: xr.DataArray, suffix: str = "") -> Figure:
    """One line per solver × arch: mean ± std over seeds against depth."""
    fig = new_figure()
    ax = fig.axes[0]
    depth = done["depth"].values
    solvers = list(done["solver"].values) if "solver" in done.dims else [None]
    counts = []
    for text, sel, sub in groups(values, _line_dims(done)):
        mean, std, n_seeds = seed_stats(sub)
        counts.append(n_seeds.values)
        colour = COLOURS[solvers.index(sel.get("solver")) % len(COLOURS)]
        style = ARCH_STYLES.get(str(sel.get("arch")), "-")
        ax.errorbar(
            depth,
            mean.values,
            yerr=std.values,
            label=text,
            color=colour,
            linestyle=style,
            marker="o",
            markersize=3,
            capsize=2,
        )
        k, n = diverged_counts(done, sel)
        annotate_diverged(ax, depth, mean.values, k, n, colour)
    ax.set_xlabel(label(done["depth"]))
    ax.set_ylabel(label(values, suffix))
    ax.set_xticks(depth)
    legend(ax)
    note_seeds(fig, counts)
    return fig


def _depth_colours(done: xr.Dataset) -> tuple[Normalize, list[Line2D]]:
    """Colour by depth (viridis, shallow dark) and legend handles for it."""
    depths = done["depth"].values
    norm = Normalize(float(depths.min()), float(depths.max()) if depths.max() > depths.min() else depths.min() + 1)
    handles = [Line2D([], [], color=colormaps["viridis"](norm(d)), label=f"depth {d}") for d in depths]
    return norm, handles


def _arch_handles(done: xr.Dataset) -> list[Line2D]:
    if "arch" not in done.dims:
        return []
    return [
        Line2D([], [], color="0.3", linestyle=ARCH_STYLES.get(str(a), "-"), label=str(a)) for a in done["arch"].values
    ]


def _curves(done: xr.Dataset) -> Figure:
    """Training loss and test accuracy per epoch: colour = depth, line style = arch, row = solver."""
    rows = list(done["solver"].values) if "solver" in done.dims else [None]
    fig = new_figure(len(rows), 2)
    axes = np.array(fig.axes).reshape(len(rows), 2)
    norm, depth_handles = _depth_colours(done)
    epoch = done["epoch"].values
    # Diverged runs are left out of the mean curves (their NaN-padded tail would cut the
    # line short); their share is in depth-accuracy.
    kept = done.where(done["diverged"] != 1)
    counts = []
    for row, solver in zip(axes, rows, strict=True):
        sel = {"solver": solver} if solver is not None else {}
        for ax, name in zip(row, ("train_loss", "test_accuracy"), strict=True):
            var = kept[name].sel(sel)
            for _, part, sub in groups(var, ["depth", "arch"]):
                mean, _, n = seed_stats(sub)
                counts.append(n.values)
                ax.plot(
                    epoch,
                    mean.values,
                    color=colormaps["viridis"](norm(part["depth"])),
                    linestyle=ARCH_STYLES.get(str(part.get("arch")), "-"),
                    linewidth=1,
                )
            ax.set_ylabel(label(done[name]))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if solver is not None:
                ax.set_title(str(solver), fontsize=9)
    shared_labels(fig, xlabel=label(done["epoch"]))
    fig.legend(handles=depth_handles + _arch_handles(done), loc="outside right upper", fontsize=7)
    note_seeds(fig, counts, spread=False, prefix="diverged runs left out")
    return fig


def _grad_norm(done: xr.Dataset) -> Figure:
    """Gradient norm of each block's weights against block index, log scale: row = solver × arch."""
    var = done["block_grad_norm"]
    rows = list(groups(var, _line_dims(done)))
    whens = list(var["when"].values)
    fig = new_figure(len(rows), len(whens), sharey="row")
    axes = np.array(fig.axes).reshape(len(rows), len(whens))
    norm, depth_handles = _depth_colours(done)
    counts = []
    for row, (text, _, sub) in zip(axes, rows, strict=True):
        for ax, when in zip(row, whens, strict=True):
            for _, part, line in groups(sub.sel(when=when), ["depth"]):
                mean, _, n = seed_stats(line)
                counts.append(n.values)
                ax.plot(
                    mean["block"].values,
                    mean.values,
                    color=colormaps["viridis"](norm(part["depth"])),
                    marker=".",
                    markersize=3,
                    linewidth=1,
                )
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{text}, {when}" if text else str(when), fontsize=9)
    shared_labels(fig, xlabel=label(done["block"], width=80), ylabel=label(var, width=30 * len(rows)))
    fig.legend(handles=depth_handles, loc="outside right upper", fontsize=7)
    note_seeds(fig, counts, spread=False)
    return fig
