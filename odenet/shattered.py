"""Shattered gradients: how a network's input gradient decorrelates along a line through input space.

Balduzzi et al. (2017), "The Shattered Gradients Problem: If resnets are the answer, then
what is the question?" (ICML), take a network with scalar input and output and sample
the derivative of the output over a fine 1-D grid of inputs. For a shallow ReLU network
the derivative curve is like brown noise (a random walk: neighbouring points have
nearly the same gradient); as a *plain* network grows deeper it turns into white noise
(neighbours are uncorrelated: the gradient is "shattered"), while a residual network's
stays correlated (their Figs. 1–2).

For a network of any input the same curve is taken along a line between two inputs,

    x(s) = x0 + s·(x1 − x0),   s ∈ [0, 1],   g(s) = d f_c(x(s)) / ds = ∇f_c(x(s))·(x1 − x0),

with f_c one class logit (a scalar-input network with x0, x1 the ends of an interval is
Balduzzi et al.'s own setting). Three numbers describe a curve g_0 … g_{n−1}:

* ``autocorrelation``: the sample autocorrelation function r_k (Box & Jenkins), the
  statistic of Balduzzi et al.'s Fig. 2: 1 at lag 0; for white noise ≈ 0 at every
  other lag; for brown noise it stays near 1 and decays slowly;
* ``lag1``: r_1 alone, the one-number summary of the depth trend;
* ``spectral_slope``: β in P(f) ∝ |2 sin πf|^β, fitted to the periodogram: 0 for white
  noise and −2 for brown noise (the exact spectra of the discrete processes).

The curve is measured in eval mode on a float64 copy of the model, so the model is never
changed and every grid point is an independent input (batch norm uses its running
statistics): the derivative of the *sum* of the grid's logits with respect to each
point's s is then that point's derivative, and one backward pass gives the whole grid.
An untrained network's running statistics are the defaults (mean 0, variance 1), which
make eval-mode batch norm the identity — not the network training sees; calibrate them
first (``odenet.norms.calibrate_batchnorm``), as the shattered study does.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from odenet.blocks import ode_blocks
from odenet.labels import Variable, labelled

__all__ = [
    "SHATTERING",
    "autocorrelation",
    "gradient_curve",
    "lag1",
    "line_grid",
    "missing_shattering",
    "shattering",
    "spectral_slope",
]

# Grid points per backward pass: bounds the memory of the activations kept for it.
CHUNK = 256

# What ``shattering`` returns, declared once: the study schema is derived from these.
SHATTERING: tuple[Variable, ...] = (
    Variable("grad_curve", ("line", "s"), "derivative of the line's class logit along the line, d logit / ds", "1"),
    Variable("grad_acf", ("line", "lag"), "autocorrelation of the gradient curve", "1"),
    Variable("grad_lag1", ("line",), "lag-1 autocorrelation of the gradient curve", "1"),
    Variable("grad_spectral_slope", ("line",), "spectral slope of the gradient curve, P ~ |2 sin pi f|^slope", "1"),
)


def line_grid(points: int) -> Tensor:
    """s_i = i / (points − 1), i = 0 … points − 1: the grid of positions on [0, 1], float64 (points,)."""
    if points < 2:
        raise ValueError(f"a gradient curve needs at least 2 grid points, not {points}")
    return torch.linspace(0.0, 1.0, points, dtype=torch.float64)


def _eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(torch.float64).eval()


def _device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _curve(net: nn.Module, x0: Tensor, x1: Tensor, s: Tensor, logit: int, chunk: int) -> Tensor:
    """d f_logit(x0 + s (x1 − x0)) / ds at every s, on an eval-mode float64 ``net``."""
    device = _device(net)
    x0 = x0.to(device, torch.float64)
    d = x1.to(device, torch.float64) - x0
    # An adaptive solver chooses its steps for the whole batch at once, which couples the
    # points of a batch; one point per pass keeps them independent.
    if any(block.method.adaptive for block in ode_blocks(net)):
        chunk = 1
    parts = []
    for part in s.to(device).split(chunk):
        leaf = part.clone().requires_grad_(True)
        x = x0 + leaf.view(-1, *([1] * x0.dim())) * d
        (g,) = torch.autograd.grad(net(x)[:, logit].sum(), leaf)
        parts.append(g.detach())
    return torch.cat(parts)


def gradient_curve(
    model: nn.Module, x0: Tensor, x1: Tensor, points: int = 256, logit: int = 0, chunk: int = CHUNK
) -> Tensor:
    """g(s_i) = d f_logit(x(s)) / ds at s_i = i / (points − 1), along x(s) = x0 + s (x1 − x0).

    The directional derivative ∇f_logit(x(s))·(x1 − x0) of one class logit of ``model``
    (Balduzzi et al. 2017's gradient curve, along a line instead of a scalar input).
    x0, x1: one input each, (…) without the batch dimension → (points,) float64.
    Eval mode on a float64 copy: the model is untouched and the grid points are
    independent, so one backward pass of the summed logits gives ``chunk`` points at
    once (with an adaptive solver, whose step control couples a batch, one per pass).
    """
    if x0.shape != x1.shape:
        raise ValueError(f"the ends of the line differ in shape: {tuple(x0.shape)} and {tuple(x1.shape)}")
    return _curve(_eval_copy(model), x0, x1, line_grid(points), logit, chunk)


def autocorrelation(curve: np.ndarray, max_lag: int) -> np.ndarray:
    """The sample autocorrelation r_0 … r_max_lag of each curve along the last axis.

        r_k = Σ_{i=0}^{n−1−k} (g_i − ḡ)(g_{i+k} − ḡ) / Σ_{i=0}^{n−1} (g_i − ḡ)²

    the standard (Box & Jenkins) estimator, mean removed and normalised by the lag-0 sum,
    so r_0 = 1 and |r_k| ≤ 1; the autocorrelation function of Balduzzi et al. (2017),
    Fig. 2. White noise has r_k ≈ 0 for k ≥ 1 (spread 1/√n); a random walk keeps r_k
    near 1. curve: (…, n) → (…, max_lag + 1); NaN for a constant curve (no variance, no
    correlation).
    """
    g = np.asarray(curve, dtype=np.float64)
    n = g.shape[-1]
    if not 0 <= max_lag < n:
        raise ValueError(f"max_lag must lie in [0, {n - 1}] for curves of {n} points, not {max_lag}")
    g = g - g.mean(axis=-1, keepdims=True)
    energy = (g * g).sum(axis=-1)
    sums = np.stack([(g[..., : n - k] * g[..., k:]).sum(axis=-1) for k in range(max_lag + 1)], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(energy[..., None] > 0, sums / energy[..., None], np.nan)


def lag1(curve: np.ndarray) -> np.ndarray:
    """r_1 of each curve (``autocorrelation`` at lag 1): (…, n) → (…)."""
    return autocorrelation(curve, 1)[..., 1]


def spectral_slope(curve: np.ndarray) -> np.ndarray:
    """β of each curve: the least-squares slope of log P(f_k) against log |2 sin πf_k|.

    P is the periodogram |DFT(g − ḡ)|² at the Fourier frequencies f_k = k / n, 0 < k < n/2
    (no mean, no Nyquist term). |2 sin πf|^β is the exact spectrum of the k-fold sum of
    white noise (β = −2k), so white noise gives β ≈ 0 and brown noise (a random walk)
    β ≈ −2 over the whole band; at low f it is the usual power law f^β (Balduzzi et al.
    2017 contrast the two noises; the regressor is Geweke & Porter-Hudak's, 1983). Each
    log P(f_k) scatters with variance π²/6 (log of an exponential variable), so β's
    standard error is √(π²/6 / Σ_k (x_k − x̄)²), x_k = log |2 sin πf_k|: about 0.14 for
    n = 256. curve: (…, n), n ≥ 5 → (…); NaN for a constant curve.
    """
    g = np.asarray(curve, dtype=np.float64)
    n = g.shape[-1]
    if n < 5:
        raise ValueError(f"a spectral slope needs at least 5 points (two frequencies), not {n}")
    g = g - g.mean(axis=-1, keepdims=True)
    k = np.arange(1, (n + 1) // 2)
    power = np.abs(np.fft.rfft(g, axis=-1)[..., k]) ** 2
    x = np.log(2 * np.sin(math.pi * k / n))
    x = x - x.mean()
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant curve: log 0, then NaN
        slope = (np.log(power) * x).sum(axis=-1) / (x * x).sum()
    return np.where(np.isfinite(slope), slope, np.nan)


def shattering(
    model: nn.Module,
    x0: Tensor,
    x1: Tensor,
    logits: Tensor,
    points: int = 256,
    max_lag: int = 32,
    chunk: int = CHUNK,
) -> xr.Dataset:
    """Gradient curves along several lines, their autocorrelation, lag-1 correlation and spectral slope.

    x0, x1: (lines, …) the ends of each line; logits: (lines,) the class whose logit is
    differentiated along each. Returns the ``SHATTERING`` variables over ``line``, ``s``
    (the grid, ``line_grid(points)``) and ``lag`` (0 … max_lag). Eval mode on one float64
    copy of ``model`` (see ``gradient_curve``).
    """
    if x0.shape != x1.shape or x0.shape[0] != logits.shape[0]:
        raise ValueError(
            f"x0 {tuple(x0.shape)}, x1 {tuple(x1.shape)} and logits {tuple(logits.shape)} must have one row per line"
        )
    net = _eval_copy(model)
    s = line_grid(points)
    curves = np.stack(
        [_curve(net, a, b, s, int(c), chunk).cpu().numpy() for a, b, c in zip(x0, x1, logits, strict=True)]
    ).reshape(len(logits), points)
    values = {
        "grad_curve": curves,
        "grad_acf": autocorrelation(curves, max_lag),
        "grad_lag1": lag1(curves),
        "grad_spectral_slope": spectral_slope(curves),
    }
    return labelled(SHATTERING, values, _coords(len(logits), points, max_lag))


def missing_shattering(lines: int, points: int, max_lag: int) -> xr.Dataset:
    """``shattering``'s dataset with every value missing (for a network that diverged)."""
    sizes = {"line": lines, "s": points, "lag": max_lag + 1}
    values = {v.name: np.full([sizes[d] for d in v.dims], v.fill) for v in SHATTERING}
    return labelled(SHATTERING, values, _coords(lines, points, max_lag))


def _coords(lines: int, points: int, max_lag: int) -> dict[str, np.ndarray]:
    return {"line": np.arange(lines), "s": line_grid(points).numpy(), "lag": np.arange(max_lag + 1)}
