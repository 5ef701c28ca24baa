"""Figure of a compare study: accuracy against its price, one bar per model variant.

Cells are model × seed (e.g. ResNet, RK-Net, ODE-Net with the same width). A paper's
table compares test accuracy, parameters and function evaluations; here they are three
bar panels sharing the model axis, so the trade-off is read along one row.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from odenet.plots.common import COLOURS, diverged_counts, finished, label, new_figure, require, seed_stats
from odenet.plots.registry import figures_for

__all__ = ["compare_figures"]

# Mean ± std over seeds of each, in panel order.
COLUMNS = ("final_test_accuracy", "parameters", "nfe_forward_final")


@figures_for("compare")
def compare_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """The figure of a compare study, by file stem: compare-summary."""
    require(ds, "model", "diverged", *COLUMNS)
    return {"compare-summary": _summary(finished(ds))}


def _summary(done: xr.Dataset) -> Figure:
    """Horizontal bars, one per model: accuracy (with diverged seeds), parameters, NFE."""
    models = [str(m) for m in done["model"].values]
    fig = new_figure(1, len(COLUMNS), width=2.6, height=0.45 * len(models) + 1.2, sharey=True)
    y = np.arange(len(models))
    colours = [COLOURS[i % len(COLOURS)] for i in range(len(models))]
    for ax, name in zip(fig.axes, COLUMNS, strict=True):
        mean, std = seed_stats(done[name])
        ax.barh(y, np.nan_to_num(mean.values), xerr=std.values, color=colours, capsize=2, height=0.6)
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
        ax.set_xlabel(label(done[name], width=30))
    for yi, model in zip(y, models, strict=True):
        k, n = diverged_counts(done, {"model": model})
        if k > 0:
            # In the gap below the model's bar (the y axis is inverted: first model on top).
            fig.axes[0].annotate(
                f"{k}/{n} diverged",
                (0, yi + 0.45),
                xytext=(2, 0),
                textcoords="offset points",
                va="center",
                fontsize=6,
                color="C3",
            )
    fig.axes[0].set_yticks(y, models)
    fig.axes[0].invert_yaxis()  # first model on top, as in a table
    return fig
