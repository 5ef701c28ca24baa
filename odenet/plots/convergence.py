"""Figures of a convergence study: is the trained network a discretised ODE?

Cells are train_solver × step_size × depth × seed, or — at a fixed horizon T, where the
depth sets h = T/n — train_solver × depth × seed with ``step_size`` a coordinate along
depth (swapped in for depth here, ``step_size_dim``). Each training step size (with its
depth) is a row of panels. Each trained network is evaluated with other fixed-step
solvers at ``refinement`` × its training steps. If the blocks approximate one continuous
flow, the error of each stage's output against an adaptive reference falls like
refinementᐨᵖ, p the evaluation solver's order, and the test accuracy does not depend on
the solver (Queiruga et al. 2020, "Continuous-in-depth neural networks"; Ott et al.
2021, "ResNet after all?"). A network that only fits its training discretisation shows
a flat error and an accuracy that collapses under refinement.

Errors below 10 × ``reference_error`` (the reference's own resolution) are shaded: the
study leaves them out of its order fit. Accuracies are drawn twice, with the training
trajectory's batch-norm statistics (solid) and with statistics recalibrated under the
evaluation solver (dashed), which separates stale statistics from a changed function;
they are NaN (not drawn) above the study's ``accuracy_up_to``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

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
    note_seeds,
    reference_slope,
    require,
    seed_stats,
    shared_labels,
    step_size_dim,
)
from odenet.plots.registry import figures_for
from odenet.solvers import UnknownSolverError, get_method

__all__ = ["FLOOR", "convergence_figures", "reference_slope"]

# Marker per training solver; colour is the evaluation solver.
TRAIN_MARKERS = ("o", "s", "^", "D", "v", "P")
# Errors below this multiple of the reference's own error are not resolved by it (the
# study's order fit leaves them out: odenet.studies.kinds.convergence).
FLOOR = 10.0
# Accuracy with the training trajectory's batch-norm statistics, and recalibrated under the
# evaluation solver: (variable, the reference's variable, line style, the reference's, legend text).
ACCURACIES: tuple[tuple[str, str, Any, Any, str], ...] = (
    ("eval_accuracy", "reference_accuracy", "-", ":", "BN statistics of training"),
    ("eval_accuracy_recalibrated", "reference_accuracy_recalibrated", "--", "-.", "BN recalibrated"),
)


@figures_for("convergence")
def convergence_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """The figures of a convergence study, by file stem.

    convergence-error: stage error vs refinement (log–log) with reference slopes of
    each evaluation solver's order and the reference's resolution shaded;
    convergence-accuracy: test accuracy vs refinement, with and without recalibrated
    batch norm, and the adaptive reference's accuracy (both ways).
    """
    require(ds, "eval_solver", "refinement", "step_size", "error", "eval_accuracy", "reference_accuracy", "diverged")
    done = finished(step_size_dim(ds))
    return {"convergence-error": _error(done), "convergence-accuracy": _accuracy(done)}


def _order(solver: str) -> int | None:
    try:
        return get_method(solver).order
    except UnknownSolverError:
        return None


def _rows(done: xr.Dataset) -> list[tuple[str, dict[str, Any]]]:
    """(title, selection) of each row of panels: one per training step size (and depth, in the grid layout).

    The title names the step size even when there is one: it is what the row shows. At a
    fixed horizon the depth of each h (a coordinate along it) is named too.
    """
    dims = [str(d) for d in done["done"].dims if d not in ("train_solver", "seed")]
    rows = []
    for _, sel, _ in groups(done["done"], dims):
        parts = [fmt(d, v) for d, v in sel.items()]
        if "depth" not in sel and "depth" in done.coords and done["depth"].dims == ("step_size",):
            parts.append(fmt("depth", done["depth"].sel(sel).item()))
        rows.append((", ".join(parts), sel))
    return rows


def _error(done: xr.Dataset) -> Figure:
    """Error against refinement: row = step size, column = stage, colour = eval solver, marker = train solver."""
    error = done["error"]
    rows = _rows(done)
    stages = list(error["stage"].values) if "stage" in error.dims else [None]
    evals = [str(e) for e in done["eval_solver"].values]
    trains = [str(t) for t in done["train_solver"].values] if "train_solver" in done.dims else [""]
    entries = len(evals) + len(trains) + 2  # + slope, floor
    fig = new_figure(len(rows), len(stages), lines=entries, sharex=True, sharey=True)
    axes = np.array(fig.axes).reshape(len(rows), len(stages))
    r = done["refinement"].values
    counts = []
    floors = []
    for row, (row_title, sel_row) in zip(axes, rows, strict=True):
        for ax, stage in zip(row, stages, strict=True):
            at_stage = {"stage": stage} if stage is not None else {}
            panel = error.sel({**sel_row, **at_stage})
            anchored: set[str] = set()
            for _, sel, sub in groups(panel, ["eval_solver", "train_solver"]):
                ev, tr = str(sel["eval_solver"]), str(sel.get("train_solver", ""))
                mean, _, n = seed_stats(sub)
                counts.append(n.values)
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
            if "reference_error" in done:
                floor = done["reference_error"].sel({**sel_row, **at_stage})
                if floor.notnull().any():
                    floors.append((ax, FLOOR * float(floor.max())))
            log_axis(ax, "x", r, base=2)
            ax.set_yscale("log")
            title = [fmt("stage", stage) if stage is not None else "", row_title]
            ax.set_title("\n".join(t for t in title if t), fontsize=8)
            note_diverged(ax, done, sel_row)
    _shade_floors(floors)
    shared_labels(fig, xlabel=label(done["refinement"], width=80), ylabel=label(error, width=30 * len(rows)))
    handles = _eval_handles(evals)
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
    if floors:
        handles.append(Patch(color="0.88", label=f"< {FLOOR:g} × reference error\n(not resolved, not fitted)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    note_seeds(fig, counts, spread=False)
    return fig


def _eval_handles(evals: list[str]) -> list[Any]:
    """Legend entries of the evaluation solvers' colours."""
    return [Line2D([], [], color=COLOURS[i % len(COLOURS)], label=f"eval {e}") for i, e in enumerate(evals)]


def _shade_floors(floors: list[tuple[Any, float]]) -> None:
    """Shade each panel below its floor, within the limits the data set (a floor far below stays off the axes)."""
    for ax, floor in floors:
        lo, hi = ax.get_ylim()
        if floor > lo:
            ax.axhspan(lo, min(floor, hi), color="0.88", zorder=0, linewidth=0, gid="reference-floor")
        ax.set_ylim(lo, hi)


def _accuracy(done: xr.Dataset) -> Figure:
    """Test accuracy against refinement: row = step size, column = train solver, colour = eval solver.

    Solid: batch-norm statistics of training; dashed: recalibrated under the evaluation
    solver. Horizontal lines: the adaptive reference, the same two ways.
    """
    kinds = [a for a in ACCURACIES if a[0] in done]
    rows = _rows(done)
    trains = list(done["train_solver"].values) if "train_solver" in done.dims else [None]
    evals = [str(e) for e in done["eval_solver"].values]
    entries = len(evals) + 2 * len(kinds)
    fig = new_figure(len(rows), len(trains), lines=entries, sharex=True, sharey=True)
    axes = np.array(fig.axes).reshape(len(rows), len(trains))
    r = done["refinement"].values
    # Accuracies stop at the study's accuracy_up_to: ticks where there are any.
    measured = done["eval_accuracy"].notnull().any([d for d in done["eval_accuracy"].dims if d != "refinement"])
    ticks = r[measured.values] if measured.any() else r
    counts = []
    for row, (row_title, sel_row) in zip(axes, rows, strict=True):
        for ax, train in zip(row, trains, strict=True):
            sel = {**sel_row, **({"train_solver": train} if train is not None else {})}
            for name, reference, style, ref_style, _ in kinds:
                for _, part, sub in groups(done[name].sel(sel), ["eval_solver"]):
                    mean, std, n = seed_stats(sub)
                    counts.append(n.values)
                    bars = ax.errorbar(
                        r,
                        mean.values,
                        yerr=std.values,
                        color=COLOURS[evals.index(str(part["eval_solver"])) % len(COLOURS)],
                        linestyle=style,
                        marker="o",
                        markersize=3,
                        capsize=2,
                    )
                    bars.lines[0].set_gid(name)
                if reference in done:
                    mean, _, _ = seed_stats(done[reference].sel(sel))
                    if np.isfinite(mean.values).any():
                        value = float(mean.mean())
                        ax.axhline(value, color="k", linestyle=ref_style, linewidth=1, gid=reference)
            log_axis(ax, "x", ticks, base=2)
            title = [f"trained with {train}" if train is not None else "", row_title]
            ax.set_title("\n".join(t for t in title if t), fontsize=8)
            note_diverged(ax, done, sel)
    shared_labels(fig, xlabel=label(done["refinement"], width=80), ylabel="test accuracy")
    handles = _eval_handles(evals)
    for _, reference, style, ref_style, text in kinds:
        handles.append(Line2D([], [], color="0.3", linestyle=style, label=text))
        if reference in done:
            handles.append(Line2D([], [], color="k", linestyle=ref_style, label=f"adaptive ref., {text}"))
    legend(axes[0, 0], inside=0, handles=handles)
    note_seeds(fig, counts)
    return fig
