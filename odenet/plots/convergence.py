"""Figures of a convergence study: is the trained network a discretised ODE?

Cells are train_solver × step_size × seed. Each trained network is evaluated with other
fixed-step solvers at ``refinement`` × its training steps. If the blocks approximate one
continuous flow, the error of each stage's output against an adaptive reference falls
like refinementᐨᵖ, p the evaluation solver's order, and the test accuracy does not
depend on the solver (Queiruga et al. 2020, "Continuous-in-depth neural networks";
Ott et al. 2021, "ResNet after all?"). A network that only fits its training
discretisation shows a flat error and an accuracy that collapses under refinement.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from odenet.plots.common import (
    COLOURS,
    finished,
    fmt,
    groups,
    label,
    legend,
    log_axis,
    new_figure,
    note_diverged,
    require,
    seed_stats,
    shared_labels,
)
from odenet.plots.registry import figures_for
from odenet.solvers import UnknownSolverError, get_method

__all__ = ["convergence_figures", "reference_slope"]

# Marker per training solver; colour is the evaluation solver.
TRAIN_MARKERS = ("o", "s", "^", "D", "v", "P")


@figures_for("convergence")
def convergence_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """The figures of a convergence study, by file stem.

    convergence-error: stage error vs refinement (log–log) with reference slopes of
    each evaluation solver's order; convergence-accuracy: test accuracy vs refinement
    with the adaptive reference's accuracy.
    """
    require(ds, "eval_solver", "refinement", "error", "eval_accuracy", "reference_accuracy", "diverged")
    done = finished(ds)
    return {"convergence-error": _error(done), "convergence-accuracy": _accuracy(done)}


def reference_slope(refinement: np.ndarray, error: np.ndarray, order: int) -> np.ndarray:
    """error₀ · (r / r₀)^(−p) through the first finite point (r₀, error₀): the ideal line."""
    finite = np.flatnonzero(np.isfinite(error) & (error > 0))
    if finite.size == 0:
        return np.full(refinement.shape, np.nan)
    r0, e0 = refinement[finite[0]], error[finite[0]]
    return e0 * (refinement / r0) ** (-order)


def _order(solver: str) -> int | None:
    try:
        return get_method(solver).order
    except UnknownSolverError:
        return None


def _rows(done: xr.Dataset) -> list[dict]:
    """One row of panels per training step size (when there are several)."""
    if "step_size" in done.dims:
        return [{"step_size": h} for h in done["step_size"].values]
    return [{}]


def _error(done: xr.Dataset) -> Figure:
    """Error against refinement: row = step size, column = stage, colour = eval solver, marker = train solver."""
    error = done["error"]
    rows = _rows(done)
    stages = list(error["stage"].values) if "stage" in error.dims else [None]
    fig = new_figure(len(rows), len(stages), sharex=True, sharey=True)
    axes = np.array(fig.axes).reshape(len(rows), len(stages))
    r = done["refinement"].values
    evals = [str(e) for e in done["eval_solver"].values]
    trains = [str(t) for t in done["train_solver"].values] if "train_solver" in done.dims else [""]
    for row, sel_row in zip(axes, rows, strict=True):
        for ax, stage in zip(row, stages, strict=True):
            panel = error.sel({**sel_row, **({"stage": stage} if stage is not None else {})})
            anchored: set[str] = set()
            for _, sel, sub in groups(panel, ["eval_solver", "train_solver"]):
                ev, tr = str(sel["eval_solver"]), str(sel.get("train_solver", ""))
                mean, _ = seed_stats(sub)
                colour = COLOURS[evals.index(ev) % len(COLOURS)]
                ax.plot(
                    r,
                    mean.values,
                    color=colour,
                    marker=TRAIN_MARKERS[trains.index(tr) % len(TRAIN_MARKERS)],
                    markersize=3,
                    linewidth=1,
                )
                p = _order(ev)
                if p is not None and ev not in anchored:
                    ax.plot(
                        r,
                        reference_slope(r, mean.values, p),
                        color=colour,
                        linestyle="--",
                        linewidth=0.8,
                        alpha=0.7,
                        gid=f"reference-{ev}",
                    )
                    anchored.add(ev)
            log_axis(ax, "x", r, base=2)
            ax.set_yscale("log")
            title = [fmt("stage", stage) if stage is not None else "", *(fmt(d, v) for d, v in sel_row.items())]
            ax.set_title(", ".join(t for t in title if t), fontsize=9)
            note_diverged(ax, done, sel_row)
    shared_labels(fig, xlabel=label(done["refinement"], width=80), ylabel=label(error, width=30 * len(rows)))
    handles = [Line2D([], [], color=COLOURS[i % len(COLOURS)], label=f"eval {e}") for i, e in enumerate(evals)]
    handles += [
        Line2D(
            [],
            [],
            color="0.3",
            linestyle="none",
            marker=TRAIN_MARKERS[i % len(TRAIN_MARKERS)],
            label=f"trained with {t}",
        )
        for i, t in enumerate(trains)
        if t
    ]
    handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=0.8, label="slope −p (eval order)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    return fig


def _accuracy(done: xr.Dataset) -> Figure:
    """Test accuracy against refinement: row = step size, column = train solver, line = eval solver."""
    acc, ref = done["eval_accuracy"], done["reference_accuracy"]
    rows = _rows(done)
    trains = list(done["train_solver"].values) if "train_solver" in done.dims else [None]
    fig = new_figure(len(rows), len(trains), sharex=True, sharey=True)
    axes = np.array(fig.axes).reshape(len(rows), len(trains))
    r = done["refinement"].values
    for row, sel_row in zip(axes, rows, strict=True):
        for ax, train in zip(row, trains, strict=True):
            sel = {**sel_row, **({"train_solver": train} if train is not None else {})}
            for i, (text, _, sub) in enumerate(groups(acc.sel(sel), ["eval_solver"])):
                mean, std = seed_stats(sub)
                ax.errorbar(
                    r,
                    mean.values,
                    yerr=std.values,
                    color=COLOURS[i % len(COLOURS)],
                    marker="o",
                    markersize=3,
                    capsize=2,
                    label=f"eval {text}",
                )
            reference, _ = seed_stats(ref.sel(sel))
            if np.isfinite(reference.values).any():
                ax.axhline(float(reference.mean()), color="k", linestyle=":", linewidth=1, label="adaptive reference")
            log_axis(ax, "x", r, base=2)
            title = [f"trained with {train}" if train is not None else "", *(fmt(d, v) for d, v in sel_row.items())]
            ax.set_title(", ".join(t for t in title if t), fontsize=9)
            note_diverged(ax, done, sel)
    shared_labels(fig, xlabel=label(done["refinement"], width=80), ylabel=label(acc, width=30 * len(rows)))
    legend(axes[0, 0])
    return fig
