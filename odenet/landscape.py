"""Loss landscapes: filter-normalised slices of the loss around trained weights.

Li, Xu, Taylor, Studer & Goldstein (2018), "Visualizing the Loss Landscape of Neural
Nets" (NeurIPS). Around the trained weights θ the loss is drawn along random directions,

    1-D:  f(α) = L(θ + αδ),          2-D:  f(α, β) = L(θ + αδ + βη),   α, β ∈ [−1, 1],

where δ and η have the shapes of the parameters, Gaussian entries, and are *filter
normalised* (Li et al., Sec. 4): each filter d_{i,j} (an output-channel slice of a conv
weight, a row of a linear weight) is rescaled to the norm of the same filter of θ,
d_{i,j} ← d_{i,j} / ‖d_{i,j}‖ · ‖θ_{i,j}‖. That removes the scale invariance a
network with batch norm (or ReLUs) has, so slices of different networks are comparable.
Biases and normalisation parameters (every parameter with at most one dimension) get
the direction zero, as Li et al. do ("ignore biasbn" in their code): they are not moved.

Batch-norm statistics at a perturbed point (``batch_norm``):

``"batch"``    the perturbed network's own statistics on the evaluation batch: every
               batch norm normalises with the batch statistics of its input under the
               perturbed weights. That is recalibrating batch norm (``odenet.norms.
               calibrate_batchnorm``) at every grid point on the evaluation batch, up to
               Bessel's factor n/(n − 1) in the variance (n = examples × pixels), at no
               extra cost. The default: it is the loss of the network θ + αδ + βη.
``"running"``  the trained network's running statistics, unchanged over the grid (eval
               mode), which is what Li et al.'s code does (``evaluation.py`` calls
               ``net.eval()``). Those statistics belong to θ, not to the perturbed network.

Frozen batch norm (``odenet.norms.FrozenBatchNorm``) follows the same choice.

Evaluation is batched: the evaluation batch (x, y) is one fixed tensor on the model's
device, the grid points are evaluated ``chunk`` at a time by ``torch.func.vmap`` over
stacked parameter sets (``torch.func.functional_call``), and losses stay on the device
until one read at the end. A model with an adaptive ODE block (torchdiffeq's step-size
control cannot be vmapped) falls back to a loop over points, still without a host read
per point; a point where the adaptive solver gives up is NaN.

Non-convexity. Li et al. (Fig. 7) map |λ_min / λ_max| of the full Hessian at every grid
point. Here, exactly and cheaply, ``slice_curvature`` takes the 2×2 Hessian of the 2-D
slice itself by central differences on the grid, and ``negative_fraction`` counts the
interior grid points where it has a negative eigenvalue. ``hessian_extremes`` estimates
the full Hessian's extreme eigenvalues at the centre θ only (Lanczos on Hessian–vector
products), the ratio of Fig. 7 at the one point where it costs a few backward passes.

Nothing here changes the model: the work is done on a copy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import Tensor, nn
from torch.func import functional_call, vmap

from odenet.blocks import SolverError, ode_blocks
from odenet.labels import Variable, labelled
from odenet.norms import FrozenBatchNorm

__all__ = [
    "BATCH_NORM_MODES",
    "Direction",
    "HessianExtremes",
    "SliceCurvature",
    "filter_normalised_direction",
    "grid",
    "hessian_extremes",
    "loss_surface",
    "slice_curvature",
]

# A direction in weight space: parameter name → a tensor of that parameter's shape.
Direction = Mapping[str, Tensor]
BatchNormMode = Literal["batch", "running"]
BATCH_NORM_MODES: tuple[str, ...] = ("batch", "running")

# Grid points evaluated together by default: on a CPU a vmapped grouped convolution is
# no faster per point than one at a time beyond a few; on a GPU larger chunks pay.
DEFAULT_CHUNK = 4

# Coordinates of a surface: the steps along δ and η, in units of the filter-normalised directions.
COORD_ATTRS = {
    "alpha": {"long_name": "step alpha along the first filter-normalised direction", "units": "1"},
    "beta": {"long_name": "step beta along the second filter-normalised direction", "units": "1"},
}


def _moving(p: Tensor) -> bool:
    """Whether a parameter moves along a direction: filters do; biases and norm parameters (≤ 1-d) do not."""
    return p.dim() > 1


def filter_normalised_direction(model: nn.Module, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A random direction δ with every filter scaled to the norm of the same filter of θ.

    Li et al. (2018), Sec. 4: δ has Gaussian entries and the shapes of the parameters;
    for every parameter θ of two or more dimensions and every filter i (index along the
    first dimension: an output channel of a conv weight (out, in, kh, kw), a row of a
    linear weight (out, in)), δ_i ← δ_i / ‖δ_i‖ · ‖θ_i‖. Parameters of at most one
    dimension (biases, batch-norm and group-norm weights and biases) get δ = 0: they are
    left where training put them, as Li et al.'s ``ignore='biasbn'``. A filter of θ that
    is zero gets a zero direction.

    generator: a CPU ``torch.Generator`` (the direction is drawn on the CPU, then moved
    to each parameter's device, so a seed gives the same direction on every device).
    Returns parameter name → tensor, for every named parameter of ``model``.
    """
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not _moving(p):
                out[name] = torch.zeros_like(p)
                continue
            d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            dims = tuple(range(1, p.dim()))
            theta_norm = torch.linalg.vector_norm(p.detach(), dim=dims, keepdim=True)
            d_norm = torch.linalg.vector_norm(d, dim=dims, keepdim=True)
            out[name] = d * (theta_norm / d_norm)
    return out


def grid(points: int, span: float = 1.0) -> np.ndarray:
    """``points`` equally spaced steps in [−span, span] (Li et al. plot α, β ∈ [−1, 1])."""
    return np.linspace(-span, span, points)


# -- evaluation --------------------------------------------------------------------------
def _device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        return p.dtype
    return torch.get_default_dtype()


def _evaluation_copy(model: nn.Module, batch_norm: str) -> nn.Module:
    """A copy of ``model`` that computes the loss as ``batch_norm`` says, and never updates statistics.

    ``"batch"``: every batch norm forgets its running statistics (so it normalises with
    the batch's, in train mode, and has nothing to update: what
    ``torch.func.replace_all_batch_norm_modules_`` does, which vmap needs), frozen ones
    included. ``"running"``: eval mode.
    """
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {', '.join(BATCH_NORM_MODES)}, not {batch_norm!r}")
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(False)
        p.grad = None
    if batch_norm == "running":
        return net.eval()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
            m.track_running_stats = False
            if isinstance(m, FrozenBatchNorm):
                m.calibrating = True  # normalise with the batch's statistics, like the others
    return net.train()


def _vmappable(model: nn.Module) -> bool:
    """vmap needs fixed-step blocks: torchdiffeq's adaptive control updates state in place."""
    return not any(block.method.adaptive for block in ode_blocks(model))


def _check_directions(model: nn.Module, directions: Sequence[Direction]) -> None:
    shapes = {name: p.shape for name, p in model.named_parameters()}
    for k, d in enumerate(directions):
        missing = sorted(set(shapes) - set(d))
        unknown = sorted(set(d) - set(shapes))
        if missing or unknown:
            raise ValueError(f"direction {k} does not match the parameters (missing {missing}, unknown {unknown})")
        for name, shape in shapes.items():
            if d[name].shape != shape:
                raise ValueError(f"direction {k}: {name} is {tuple(d[name].shape)}, the parameter {tuple(shape)}")


@torch.no_grad()
def _evaluate(
    net: nn.Module,
    directions: Sequence[Direction],
    coefficients: Tensor,
    x: Tensor,
    y: Tensor,
    chunk: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean cross-entropy and accuracy of ``net`` at θ + Σₖ cₖ dₖ for every row c of ``coefficients`` (P, K).

    Returns two float64 arrays (P,), read from the device once.
    """
    params = {name: p.detach() for name, p in net.named_parameters()}
    moving = [name for name in params if any(bool(d[name].any()) for d in directions)]
    fixed = {name: p for name, p in params.items() if name not in moving}
    steps = {name: [d[name].to(params[name]) for d in directions] for name in moving}

    def at(c: Tensor) -> tuple[Tensor, Tensor]:
        # c: (K,) one grid point; every moving parameter is θ + Σₖ cₖ dₖ.
        point = dict(fixed)
        for name in moving:
            value = params[name]
            for k, d in enumerate(steps[name]):
                value = value + c[k] * d
            point[name] = value
        logits = functional_call(net, point, (x,))
        return F.cross_entropy(logits, y), (logits.argmax(dim=1) == y).sum()

    n = coefficients.shape[0]
    loss = torch.empty(n, dtype=torch.float64, device=x.device)
    correct = torch.empty(n, dtype=torch.float64, device=x.device)
    if _vmappable(net):
        batched = vmap(at)
        for start in range(0, n, chunk):
            part_loss, part_correct = batched(coefficients[start : start + chunk])
            loss[start : start + chunk] = part_loss
            correct[start : start + chunk] = part_correct
    else:
        for i in range(n):  # adaptive blocks: one point at a time, still no host read per point
            try:
                loss[i], correct[i] = at(coefficients[i])
            except SolverError:
                loss[i], correct[i] = math.nan, math.nan
    values = torch.stack([loss, correct / len(y)]).cpu().numpy()
    return values[0], values[1]


def loss_surface(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    directions: Sequence[Direction],
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray | None = None,
    *,
    chunk: int = DEFAULT_CHUNK,
    batch_norm: BatchNormMode = "batch",
) -> xr.Dataset:
    """The loss and accuracy of ``model`` on (x, y) at θ + αδ (1-D) or θ + αδ + βη (2-D).

    x: (batch, …) network inputs, y: (batch,) class indices — one fixed evaluation batch,
    moved once to the model's device (and x to its dtype). directions: (δ,) for a 1-D
    slice over ``alphas``, (δ, η) for a 2-D one over ``alphas`` × ``betas`` (usually
    ``filter_normalised_direction``; any mapping of parameter names to tensors of their
    shapes). chunk: grid points per vmapped call (bounds the memory: chunk × the
    activations of one forward pass). batch_norm: ``"batch"`` or ``"running"`` (the
    module docstring says which statistics each uses).

    Returns ``loss`` (mean cross-entropy, nat) and ``accuracy`` over ``alpha`` (and
    ``beta``), with labelled coordinates. The model itself is not changed.
    """
    two = betas is not None
    if len(directions) != (2 if two else 1):
        want = 2 if two else 1
        raise ValueError(f"a {want}-D slice needs {want} direction(s), got {len(directions)}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, not {chunk!r}")
    _check_directions(model, directions)
    a = np.asarray(alphas, dtype=np.float64)
    b = np.asarray(betas, dtype=np.float64) if two else np.zeros(1)
    if a.ndim != 1 or b.ndim != 1 or not (a.size and b.size):
        raise ValueError("alphas and betas must be non-empty 1-d sequences of steps")
    net = _evaluation_copy(model, batch_norm)
    device, dtype = _device(net), _dtype(net)
    x, y = x.to(device, dtype), y.to(device)
    mesh = np.stack(np.meshgrid(a, b, indexing="ij"), axis=-1).reshape(-1, 2)  # (A·B, 2), alpha-major
    coefficients = torch.as_tensor(mesh[:, : 2 if two else 1], dtype=dtype, device=device)
    loss, accuracy = _evaluate(net, directions, coefficients, x, y, chunk)
    dims: tuple[str, ...] = ("alpha", "beta") if two else ("alpha",)
    shape = (a.size, b.size) if two else (a.size,)
    variables = (
        Variable("loss", dims, "mean cross-entropy on the evaluation batch", "nat"),
        Variable("accuracy", dims, "accuracy on the evaluation batch", "1"),
    )
    coords = {"alpha": ("alpha", a, COORD_ATTRS["alpha"])}
    if two:
        coords["beta"] = ("beta", b, COORD_ATTRS["beta"])
    return labelled(variables, {"loss": loss.reshape(shape), "accuracy": accuracy.reshape(shape)}, coords)


# -- curvature of the slice ----------------------------------------------------------------
@dataclass(frozen=True)
class SliceCurvature:
    """Eigenvalues of the 2×2 Hessian of a 2-D slice f(α, β) at every grid point.

    lam_min, lam_max: (A, B), the smaller and larger eigenvalue of
    [[f_αα, f_αβ], [f_αβ, f_ββ]] from central differences; NaN on the edge of the grid,
    where a central difference has no neighbour.
    """

    lam_min: np.ndarray
    lam_max: np.ndarray

    def negative_fraction(self, tol: float = 0.0) -> float:
        """Share of the interior grid points where the slice curves down: λ_min < −tol.

        0 for a convex slice (a bowl), 1 for a saddle everywhere. A basin whose walls level
        off far from θ (the loss saturating) curves down near the rim too, so the fraction
        of a trained network is rarely 0: compare networks on the same grid, and read the
        map ``lam_min`` for where. With ``tol = 0`` a region flat to rounding counts either
        way; ``tol`` (in the loss's units) sets the curvature that counts. NaN if the grid
        has no interior point.
        """
        inner = self.lam_min[np.isfinite(self.lam_min)]
        return float(np.mean(inner < -tol)) if inner.size else math.nan


def _spacing(name: str, values: np.ndarray) -> float:
    steps = np.diff(values)
    if values.ndim != 1 or values.size < 3 or not np.all(steps > 0):
        raise ValueError(f"{name} must be at least 3 increasing steps, got {values.tolist()}")
    h = float(steps.mean())
    if not np.allclose(steps, h, rtol=1e-6, atol=0.0):
        raise ValueError(f"{name} must be equally spaced (central differences); got spacings {steps.tolist()}")
    return h


def slice_curvature(
    loss: np.ndarray, alphas: Sequence[float] | np.ndarray, betas: Sequence[float] | np.ndarray
) -> SliceCurvature:
    """The 2×2 Hessian of the slice f(α, β) at every interior grid point, and its eigenvalues.

    loss: (A, B), f at alphas × betas, both equally spaced (steps hα, hβ). With
    f_{i,j} = f(α_i, β_j), at each interior point

        f_αα = (f_{i+1,j} − 2f_{i,j} + f_{i−1,j}) / hα²
        f_ββ = (f_{i,j+1} − 2f_{i,j} + f_{i,j−1}) / hβ²
        f_αβ = (f_{i+1,j+1} − f_{i+1,j−1} − f_{i−1,j+1} + f_{i−1,j−1}) / (4 hα hβ)

    (second order; exact for quadratics), and λ = (f_αα + f_ββ)/2 ± √(((f_αα − f_ββ)/2)² + f_αβ²).
    The slice is non-convex where λ_min < 0 (``SliceCurvature.negative_fraction``).
    """
    f = np.asarray(loss, dtype=np.float64)
    a, b = np.asarray(alphas, dtype=np.float64), np.asarray(betas, dtype=np.float64)
    ha, hb = _spacing("alphas", a), _spacing("betas", b)
    if f.shape != (a.size, b.size):
        raise ValueError(f"loss has shape {f.shape}, the grid {(a.size, b.size)}")
    c = f[1:-1, 1:-1]
    faa = (f[2:, 1:-1] - 2 * c + f[:-2, 1:-1]) / ha**2
    fbb = (f[1:-1, 2:] - 2 * c + f[1:-1, :-2]) / hb**2
    fab = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / (4 * ha * hb)
    mean, radius = (faa + fbb) / 2, np.hypot((faa - fbb) / 2, fab)
    lam_min, lam_max = np.full(f.shape, np.nan), np.full(f.shape, np.nan)
    lam_min[1:-1, 1:-1], lam_max[1:-1, 1:-1] = mean - radius, mean + radius
    return SliceCurvature(lam_min, lam_max)


# -- the full Hessian at the centre ---------------------------------------------------------
@dataclass(frozen=True)
class HessianExtremes:
    """Extreme eigenvalues of the loss Hessian at θ, estimated by Lanczos (Ritz values).

    lam_min, lam_max: the smallest and largest Ritz values after ``steps`` Lanczos steps
    (λ_max is approached from below, λ_min from above: |λ_min| is not overestimated);
    residual_min, residual_max: ‖Hv − λv‖ of each Ritz pair (v unit), so an eigenvalue of
    H lies within that distance of each; ratio: |λ_min / λ_max| (Li et al. 2018, Fig. 7).
    """

    lam_min: float
    lam_max: float
    residual_min: float
    residual_max: float
    steps: int

    @property
    def ratio(self) -> float:
        return abs(self.lam_min / self.lam_max) if self.lam_max != 0 else math.nan


def hessian_extremes(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int = 20,
    generator: torch.Generator | None = None,
    *,
    batch_norm: BatchNormMode = "batch",
) -> HessianExtremes:
    """Smallest and largest eigenvalue of ∇²L(θ) over the filter weights, by ``steps`` Lanczos steps.

    L is the mean cross-entropy on (x, y) (batch, …), (batch,), with batch norm as in
    ``loss_surface``; the Hessian is taken over the parameters a filter-normalised
    direction moves (two or more dimensions), as in Li et al.'s ``hess_vec_prod.py``.
    One forward and backward pass builds the gradient graph; each step is then one
    Hessian–vector product (a backward pass through it). Lanczos with full
    reorthogonalisation, in float64; the start vector is Gaussian from ``generator``.
    Models whose blocks use the adjoint method cannot be differentiated twice.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, not {steps!r}")
    if any(block.adjoint for block in ode_blocks(model)):
        raise ValueError("the adjoint method gives no second derivatives; use a model without adjoint blocks")
    net = _evaluation_copy(model, batch_norm)
    device, dtype = _device(net), _dtype(net)
    x, y = x.to(device, dtype), y.to(device)
    named = dict(net.named_parameters())
    names = [n for n, p in named.items() if _moving(p)]
    theta = {n: named[n].detach().clone().requires_grad_(True) for n in names}
    fixed = {n: p.detach() for n, p in named.items() if n not in theta}
    with torch.enable_grad():
        loss = F.cross_entropy(functional_call(net, {**fixed, **theta}, (x,)), y)
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True, allow_unused=True)
    used = [(n, g) for n, g in zip(names, grads, strict=True) if g is not None and g.requires_grad]
    sizes = [theta[n].numel() for n in names]
    total = sum(sizes)

    def hvp(v: Tensor) -> Tensor:
        parts = dict(zip(names, torch.split(v.to(dtype), sizes), strict=True))
        with torch.enable_grad():
            hv = torch.autograd.grad(
                [g for _, g in used],
                [theta[n] for n in names],
                grad_outputs=[parts[n].view_as(theta[n]) for n, _ in used],
                retain_graph=True,
                allow_unused=True,
            )
        flat = [h.reshape(-1) if h is not None else torch.zeros(s, dtype=dtype, device=device)
                for h, s in zip(hv, sizes, strict=True)]  # fmt: skip
        return torch.cat(flat).to(torch.float64)

    q = torch.randn(total, generator=generator, dtype=torch.float64).to(device)
    basis = [q / torch.linalg.vector_norm(q)]
    alpha: list[float] = []
    beta: list[float] = []
    for j in range(min(steps, total)):
        w = hvp(basis[j])
        alpha.append(float(basis[j] @ w))  # one host read per Hessian–vector product
        Q = torch.stack(basis)
        for _ in range(2):  # full reorthogonalisation; twice is enough (Parlett)
            w = w - Q.T @ (Q @ w)
        beta.append(float(torch.linalg.vector_norm(w)))
        if beta[-1] <= 1e-12 * max(1.0, max(abs(v) for v in alpha)):
            break  # an invariant subspace: its Ritz values are eigenvalues
        basis.append(w / beta[-1])
    a, b = np.array(alpha), np.array(beta)
    m = a.size
    T = np.diag(a) + np.diag(b[: m - 1], 1) + np.diag(b[: m - 1], -1)
    ritz, vectors = np.linalg.eigh(T)
    # Residual of a Ritz pair (Paige): ‖H Q s − θ Q s‖ = β_m |s_m| for the last step's β_m.
    residuals = abs(b[m - 1]) * np.abs(vectors[-1, :])
    return HessianExtremes(float(ritz[0]), float(ritz[-1]), float(residuals[0]), float(residuals[-1]), m)
