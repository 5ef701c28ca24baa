"""Paper figures of a study result, chosen by its kind (``ds.attrs["study"]``).

``plot_study(ds, out_dir)`` writes every figure of the study as ``<kind>-<what>.png``
(and/or .svg, .pdf) and returns the paths; ``study_figures(ds)`` returns the
``matplotlib.figure.Figure`` objects by name, for a notebook or a test. Figures are
built with ``Figure`` directly, never ``pyplot``: no global state, no display needed.

Each figure module registers its kind with ``@figures_for(kind)`` (``FIGURES`` maps
kind → function); importing the modules below is what registers them. A kind with no
registered figures still plots, with the generic figures of ``odenet.plots.generic``:

===========  =====================================================================
kind         figures
===========  =====================================================================
depth        depth-accuracy, depth-train-loss, depth-curves, depth-grad-norm
stability    stability-regions, stability-accuracy, stability-max-R,
             stability-discretisation; stability-controls (norm or shortcut varied)
convergence  convergence-error, convergence-accuracy
compare      compare-summary; compare-learning-rate (several learning rates)
landscape    landscape-contours, landscape-slices, landscape-nonconvexity
lesion       lesion-single, lesion-random; lesion-paths (Euler residual cells)
width        width-accuracy (depth × width plane per lr), width-fit (regression)
shattered    shattered-curves, shattered-acf, shattered-lag1, shattered-slope
(any other)  <kind>-final, <kind>-history (generic: from the dataset's labels)
===========  =====================================================================

Only finished cells (``done == 1``) are drawn, so a running study can be plotted;
diverged cells are counted ("k/n diverged") rather than dropped. Every mean over seeds
is ``seed_stats``'s: error bars are the sample standard deviation (ddof = 1), none where
fewer than two seeds finished, and each figure says its n at the top. Cell dimensions
with one value (a study that does not vary the normalisation) are selected away; those
with several become lines or panels, labelled e.g. "norm=group, shortcut=B".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import xarray as xr
from matplotlib.figure import Figure

# The figure modules are imported for their registrations as much as for their names.
from odenet.plots.common import FORMATS, PlotError, label, open_result, provenance, save_figure, seed_stats
from odenet.plots.compare import compare_figures
from odenet.plots.convergence import convergence_figures
from odenet.plots.depth import depth_figures
from odenet.plots.generic import generic_figures
from odenet.plots.landscape import landscape_figures
from odenet.plots.lesion import lesion_figures
from odenet.plots.registry import FIGURES, FigureFunction, figures_for, unregister
from odenet.plots.shattered import shattered_figures
from odenet.plots.stability import stability_figures
from odenet.plots.width import width_figures

__all__ = [
    "FIGURES",
    "FORMATS",
    "FigureFunction",
    "PlotError",
    "compare_figures",
    "convergence_figures",
    "depth_figures",
    "figures_for",
    "generic_figures",
    "label",
    "landscape_figures",
    "lesion_figures",
    "open_result",
    "plot_study",
    "seed_stats",
    "shattered_figures",
    "stability_figures",
    "study_figures",
    "unregister",
    "width_figures",
]

# A kind becomes part of file names (<kind>-<what>.png), so it must be a plain name: no
# "/" that would write outside the output directory, no "." that would read as a suffix.
KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def study_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """Every figure of the study in ``ds``, by file stem (e.g. ``"depth-accuracy"``).

    The kind's registered figures, or the generic ones for a kind that has none.
    """
    kind = ds.attrs.get("study")
    if not isinstance(kind, str) or not KIND.fullmatch(kind):
        found = f"study = {kind!r}" if kind is not None else "no 'study' attribute"
        raise PlotError(
            f"not a study result ({found}); give a file written by `odenet study`, "
            f"whose 'study' attribute names its kind (e.g. {', '.join(FIGURES)})"
        )
    if "done" in ds and not (ds["done"] == 1).any():
        raise PlotError("no cell of the study has finished yet; plot again once the first one is done")
    return FIGURES.get(kind, generic_figures)(ds)


def plot_study(ds: xr.Dataset, out_dir: Path, formats: Sequence[str] = ("png",), *, dpi: int = 200) -> list[Path]:
    """Write every figure of the study in ``ds`` to ``out_dir`` (created) in each format.

    Files are ``<out_dir>/<kind>-<what>.<format>``; the result's provenance (odenet
    version, git commit, device) goes into each file's metadata. Returns the paths.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise PlotError(f"unknown format {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    figures = study_figures(ds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, fig in figures.items():
        written += save_figure(fig, out_dir / name, formats, description=provenance(ds), dpi=dpi)
    return written
