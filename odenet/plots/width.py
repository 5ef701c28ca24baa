"""Figures of a width study: accuracy over the depth × width plane, and the fitted trade-off.

Cells are depth × widen × learning_rate × seed (Zagoruyko & Komodakis 2016). The plane
is drawn once per learning rate (the rate is a design variable of the regression, not a
nuisance tuned away); the fit's coefficients are drawn with ±2 standard errors.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from odenet.plots.common import finished, new_figure, note_seeds, require, seed_stats
from odenet.plots.registry import figures_for
from odenet.studies.kinds.width import RESPONSES, TERMS, width_fit

__all__ = ["width_figures"]

_RESPONSE_LABELS = {
    "test_accuracy_pct": "test accuracy [percentage points]",
    "log10_train_loss": "log₁₀ final training loss",
}


@figures_for("width")
def width_figures(ds: xr.Dataset) -> dict[str, Figure]:
    """width-accuracy: mean test accuracy over depth × widen, one panel per learning rate,
    each cell annotated with its mean (and parameter count); width-fit: the regression's
    coefficients ± 2 SE for both responses, with R² and n. A running study is fitted on
    the cells finished so far."""
    require(ds, "depth", "widen", "learning_rate", "final_test_accuracy", "parameters", "train_loss")
    done = finished(ds)
    fit = ds if "fit_coef" in ds else width_fit(ds)
    return {"width-accuracy": _plane(done), "width-fit": _coefficients(fit)}


def _plane(done: xr.Dataset) -> Figure:
    mean, _, n = seed_stats(100 * done["final_test_accuracy"])
    params, _, _ = seed_stats(done["parameters"])
    lrs = done["learning_rate"].values
    fig = new_figure(1, len(lrs), width=3.4, height=3.0)
    axes = fig.axes
    finite = mean.values[np.isfinite(mean.values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    image = None
    for ax, lr in zip(axes, lrs, strict=True):
        m = mean.sel(learning_rate=lr).transpose("depth", "widen")
        p = params.sel(learning_rate=lr).transpose("depth", "widen")
        image = ax.imshow(m.values, origin="lower", cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
        for i in range(m.sizes["depth"]):
            for j in range(m.sizes["widen"]):
                value = float(m.values[i, j])
                if np.isfinite(value):
                    text = f"{value:.1f}\n{float(p.values[i, j]) / 1e6:.2g}M"
                    colour = "w" if value < (lo + hi) / 2 else "k"
                    ax.text(j, i, text, ha="center", va="center", fontsize=6, color=colour)
        ax.set_xticks(range(m.sizes["widen"]), [str(int(k)) for k in m["widen"].values])
        ax.set_yticks(range(m.sizes["depth"]), [str(int(d)) for d in m["depth"].values])
        ax.set_xlabel("widening factor k")
        ax.set_title(f"lr = {lr:g}", fontsize="small")
    axes[0].set_ylabel("depth")
    if image is not None:
        fig.colorbar(image, ax=axes, label="test accuracy [%]", shrink=0.9)
    note_seeds(fig, [n], spread=False, prefix="cell: mean test accuracy [%] and parameters")
    return fig


def _coefficients(fit: xr.Dataset) -> Figure:
    fig = new_figure(1, len(RESPONSES), width=3.8, height=3.0)
    terms = [t for t in TERMS if t != "intercept"]
    for ax, response in zip(fig.axes, RESPONSES, strict=True):
        coef = fit["fit_coef"].sel(response=response, term=terms).values
        se = fit["fit_se"].sel(response=response, term=terms).values
        y = np.arange(len(terms))
        ax.errorbar(coef, y, xerr=2 * se, fmt="o", color="C0", capsize=2)
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_yticks(y, [t.replace("log2_", "") for t in terms], fontsize=7)
        ax.invert_yaxis()
        r2 = float(fit["fit_r2"].sel(response=response))
        n = int(fit["fit_n"].sel(response=response))
        ax.set_title(f"R² = {r2:.2f}, n = {n} runs", fontsize="small")
        ax.set_xlabel(f"Δ {_RESPONSE_LABELS[response]}\nper doubling (± 2 SE)", fontsize="small")
    fig.suptitle("OLS on centred log₂ depth, width k, lr with interactions", x=0.01, ha="left", fontsize="small")
    return fig
