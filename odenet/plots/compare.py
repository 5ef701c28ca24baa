"""Figures of a compare study: accuracy against its price, one bar per model variant.

Cells are model × learning_rate × seed (e.g. ResNet, RK-Net, ODE-Net with the same
width, each trained at every rate). A paper's table compares test accuracy, parameters,
function evaluations and memory; here they are bar panels sharing the model axis, so the
trade-off is read along one row. Each model is reported at its own learning rate, the
one with the lowest mean final *training* loss (``chosen_lr``: no test data in the
choice); ``compare-learning-rate`` shows that choice.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from odenet.plots.common import (
    COLOURS,
    annotate_diverged,
    diverged_counts,
    finished,
    label,
    last_valid,
    legend,
    log_axis,
    new_figure,
    note_seeds,
    require,
    seed_stats,
)
from odenet.plots.registry import figures_for
from odenet.studies.kinds.compare import chosen_lr

__all__ = ["compare_figures", "reported"]

# Mean ± sample std over seeds of each, in panel order (bytes are drawn in MiB).
COLUMNS = ("final_test_accuracy", "parameters", "nfe_forward_final", "peak_saved_bytes")
# Drawn as a further panel only where measured (NaN off CUDA).
CUDA = "peak_cuda_bytes"
MIB = 2**20


@figures_for("compare")
def compare_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """The figures of a compare study, by file stem.

    compare-summary: every model at its chosen learning rate: accuracy, parameters, NFE,
    memory; compare-learning-rate (with several rates): final training loss and test
    accuracy against the rate, the chosen one ringed.
    """
    require(ds, "model", "learning_rate", "diverged", "train_loss", *COLUMNS)
    done = finished(ds)
    lr = reported(done)
    figures = {"compare-summary": _summary(done, lr)}
    if done.sizes.get("learning_rate", 1) > 1:
        figures["compare-learning-rate"] = _learning_rates(done, lr)
    return figures


def reported(done: xr.Dataset) -> xr.DataArray:
    """The learning rate each model is reported at (``chosen_lr``) over the finished cells.

    A seed that has not finished is not a failed one: only finished seeds that diverged
    bar a rate from the choice.
    """
    return chosen_lr(done.assign(diverged=done["diverged"].fillna(0)))


def _last_train_loss(done: xr.Dataset) -> xr.DataArray:
    """The last recorded training loss of each run (a diverged or resumed run's history is NaN-padded)."""
    return last_valid(done["train_loss"], "epoch")


def _in_mib(da: xr.DataArray) -> xr.DataArray:
    if da.attrs.get("units") != "B":
        return da
    return (da / MIB).assign_attrs({**da.attrs, "units": "MiB"})


def _summary(done: xr.Dataset, lr: xr.DataArray) -> Figure:
    """Horizontal bars, one per model at its chosen rate: accuracy (with diverged seeds), parameters, NFE, memory."""
    at = done.sel(learning_rate=lr)  # model × seed
    columns = [*COLUMNS, *([CUDA] if CUDA in at and at[CUDA].notnull().any() else [])]
    models = [str(m) for m in at["model"].values]
    fig = new_figure(1, len(columns), width=2.6, height=0.45 * len(models) + 1.4, sharey=True)
    y = np.arange(len(models))
    colours = [COLOURS[i % len(COLOURS)] for i in range(len(models))]
    counts = []
    for ax, name in zip(fig.axes, columns, strict=True):
        var = _in_mib(at[name])
        mean, std, n = seed_stats(var)
        counts.append(n.values)
        ax.barh(y, np.nan_to_num(mean.values), xerr=std.values, color=colours, capsize=2, height=0.6, gid=name)
        for yi, value in zip(y, mean.values, strict=True):
            text = "n/a" if not np.isfinite(value) else f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
            ax.annotate(
                text,
                (0, yi),
                xytext=(2, 0),
                textcoords="offset points",
                va="center",
                fontsize=6,
                color="w" if np.isfinite(value) and value > 0 else "k",
            )
        ax.set_xlabel(label(var, width=30))
    for yi, model in zip(y, models, strict=True):
        k, n_runs = diverged_counts(at, {"model": model})
        if k > 0:
            # In the gap below the model's bar (the y axis is inverted: first model on top).
            fig.axes[0].annotate(
                f"{k}/{n_runs} diverged",
                (0, yi + 0.45),
                xytext=(2, 0),
                textcoords="offset points",
                va="center",
                fontsize=6,
                color="C3",
            )
    rates = lr.values
    fig.axes[0].set_yticks(y, [f"{m}\nlr {r:g}" for m, r in zip(models, rates, strict=True)])
    fig.axes[0].invert_yaxis()  # first model on top, as in a table
    many = done.sizes.get("learning_rate", 1)
    prefix = (
        f"each model at its learning rate of {many} with the lowest mean final training loss (no test data)"
        if many > 1
        else f"learning rate {float(done['learning_rate'].values[0]):g}"
    )
    note_seeds(fig, counts, prefix=prefix)
    return fig


def _final_train_loss(done: xr.Dataset) -> xr.DataArray:
    """The last recorded training loss of each run, as ``chosen_lr`` scores it; NaN for a diverged run.

    A diverged run's last loss is huge and would swamp the mean; it is counted instead.
    """
    return _last_train_loss(done).where(done["diverged"] != 1).assign_attrs(done["train_loss"].attrs)


def _learning_rates(done: xr.Dataset, lr: xr.DataArray) -> Figure:
    """Final training loss (the choice) and test accuracy against the rate, one line per model; chosen rate ringed."""
    fig = new_figure(1, 2)
    rates = done["learning_rate"].values.astype(float)
    models = [str(m) for m in done["model"].values]
    counts = []
    panels = (_final_train_loss(done), done["final_test_accuracy"])
    for ax, values in zip(fig.axes, panels, strict=True):
        for i, model in enumerate(models):
            colour = COLOURS[i % len(COLOURS)]
            mean, std, n = seed_stats(values.sel(model=model))
            counts.append(n.values)
            ax.errorbar(rates, mean.values, yerr=std.values, color=colour, marker="o", markersize=3, capsize=2)
            ax.plot([], [], color=colour, marker="o", markersize=3, label=model)
            chosen = float(lr.sel(model=model))
            at = float(mean.sel(learning_rate=chosen))
            ax.plot(
                [chosen], [at], marker="o", markersize=9, markerfacecolor="none", color=colour, gid=f"chosen-{model}"
            )
            k, n_runs = diverged_counts(done, {"model": model})
            annotate_diverged(ax, rates, mean.values, k, n_runs, colour)
        log_axis(ax, "x", rates)
        ax.set_xlabel(label(done["learning_rate"], width=30))
    fig.axes[0].set_ylabel(label(panels[0], ", last epoch", width=30))
    fig.axes[1].set_ylabel(label(panels[1], width=30))
    legend(fig.axes[0])
    note_seeds(fig, counts, prefix="ringed: the rate each model is reported at")
    return fig
