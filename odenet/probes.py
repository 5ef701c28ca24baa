"""Measurements on a residual network, block by block.

A block is one residual unit in forward order: a step of an ``ODEBlock`` or a stage
``Transition``. For every step these probes measure, at the step's input state x:

* eigenvalues λ of the field Jacobian J = ∂F_k/∂x, matrix-free (ARPACK's implicitly
  restarted Arnoldi on Jacobian–vector products), chosen twice: by largest modulus
  (where a step leaves a method's stability region first) and by largest real part (the
  directions the ODE itself expands fastest). With each set: ARPACK's tolerance, how many
  converged, and the residual ‖Jv − λv‖ / (‖v‖·ρ) of each pair (ρ the largest |λ| found);
* ``max_abs_R`` = max |R(hλ)| over those eigenvalues with the method's stability
  function R (Haber & Ruthotto 2017). Above 1 is *not* by itself a discretisation
  failure: for Re λ > 0 the exact flow grows too (|e^{hλ}| > 1) and every consistent
  method must follow it. So also ``max_abs_flow`` = max |e^{hλ}| and ``excess_growth`` =
  max |R(hλ)| / max(1, |e^{hλ}|): the growth the discretisation adds beyond the exact
  flow's (or beyond none, where the flow decays). Above 1 means the solver, not the ODE,
  amplifies that direction;
* ``step_radius``: the spectral radius of the Jacobian of the whole step x ↦ Φ_h(x) with
  the block's own tableau (every stage, the nonlinearity included), matrix-free. For a
  linear field it equals max |R(hλ)| over the *whole* spectrum, while the eigenvalue
  sets above give only a lower bound. ``flow_radius`` = e^{h·max Re λ} is the same
  quantity for the exact flow of the linearised field, and ``step_excess`` =
  step_radius / max(1, flow_radius) the discretisation's share;
* how much the block amplifies a small perturbation of its input (forward-mode AD: the
  exact linearisation, no finite-difference step to tune), and how a perturbation of the
  first block's input has grown by the block's output;
* the root-mean-square of the activations entering the block;
* the 2-norm of the loss gradient with respect to the block's own weights and with
  respect to its input state (the gradient that reaches it — the vanishing-gradient
  question).

Probes never change the model: they work on a float64 copy. Spectra and perturbations
are measured in eval mode (batch-norm running statistics, so samples are independent
and the field is a fixed function); gradients in train mode, as training sees them.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
import xarray as xr
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigs
from torch import Tensor, nn

from odenet.blocks import ODEBlock
from odenet.labels import Variable, labelled
from odenet.models.common import ResidualNetwork, Unit, units, walk
from odenet.norms import calibrate_batchnorm
from odenet.solvers import Method

__all__ = [
    "GRADIENTS",
    "SELECTIONS",
    "SPECTRUM",
    "Eigenvalues",
    "calibrate_batchnorm",
    "eigenvalues",
    "field_eigenvalues",
    "gradient_norms",
    "growth_factors",
    "jacobian_matvec",
    "leading_eigenvalues",
    "probe_blocks",
    "stability_factor",
]

# Up to this many unknowns the Jacobian is formed column by column and all its
# eigenvalues are computed densely; ARPACK needs n well above 2k + 1 anyway.
DENSE_LIMIT = 256

# What each probe returns, declared once: the study schema is derived from these.
SPECTRUM: tuple[Variable, ...] = (
    Variable("eig_real", ("block", "select", "eig"), "real part of an eigenvalue of the field Jacobian", "1"),
    Variable("eig_imag", ("block", "select", "eig"), "imaginary part of an eigenvalue of the field Jacobian", "1"),
    Variable(
        "eig_residual",
        ("block", "select", "eig"),
        "relative residual |Jv - lambda v| / (|v| rho) of the eigenpair",
        "1",
    ),
    Variable("eig_converged", ("block", "select"), "eigenvalues ARPACK converged", "1"),
    Variable("max_abs_R", ("block",), "max |R(h lambda)| over the computed eigenvalues", "1"),
    Variable("max_abs_flow", ("block",), "max |exp(h lambda)| over the computed eigenvalues (exact flow)", "1"),
    Variable(
        "excess_growth",
        ("block",),
        "max |R(h lambda)| / max(1, |exp(h lambda)|): growth the discretisation adds to the exact flow's",
        "1",
    ),
    Variable(
        "step_radius", ("block",), "spectral radius of the Jacobian of the one-step map (the block's tableau)", "1"
    ),
    Variable("step_radius_residual", ("block",), "relative residual of the step map's leading eigenpair", "1"),
    Variable("flow_radius", ("block",), "exp(h max Re lambda): spectral radius of the linearised exact flow", "1"),
    Variable("step_excess", ("block",), "step_radius / max(1, flow_radius)", "1"),
    Variable("amplification", ("block",), "amplification of a small input perturbation by the block", "1"),
    Variable(
        "perturbation_growth",
        ("block",),
        "growth of a small perturbation of the first block's input up to the block's output",
        "1",
    ),
    Variable("activation_rms", ("block",), "root-mean-square of the block's input activations", "1"),
)
# The two eigenvalue selections (coordinate ``select``): ARPACK's ``which``.
SELECTIONS = {"modulus": "LM", "real_part": "LR"}
GRADIENTS: tuple[Variable, ...] = (
    Variable("block_grad_norm", ("block",), "2-norm of the loss gradient with respect to the block's own weights", "1"),
    Variable("state_grad_norm", ("block",), "2-norm of the loss gradient with respect to the block's input state", "1"),
)


def _steppable(model: ResidualNetwork) -> bool:
    return all(not m.method.adaptive for m in model.body if isinstance(m, ODEBlock))


def _coords(blocks: int, k: int | None = None) -> dict[str, np.ndarray]:
    coords = {"block": np.arange(blocks)}
    if k is not None:
        coords["select"] = np.array(list(SELECTIONS))
        coords["eig"] = np.arange(k)
    return coords


def missing(variables: tuple[Variable, ...], blocks: int, k: int = 0) -> xr.Dataset:
    """A probe's dataset with every value missing (for a network that diverged)."""
    sizes = {"block": blocks, "select": len(SELECTIONS), "eig": k}
    values = {v.name: np.full([sizes[d] for d in v.dims], v.fill) for v in variables}
    return labelled(variables, values, _coords(blocks, k if any("eig" in v.dims for v in variables) else None))


@dataclass(frozen=True)
class Eigenvalues:
    """Eigenvalues of an operator chosen by ``which``, with how far to trust them.

    values: complex (k,), ordered by the selection (largest first), NaN where ARPACK did
    not converge; residuals: (k,) ‖Av − λv‖/‖v‖ of each pair (NaN where missing);
    converged: how many are finite; which: ``"LM"`` or ``"LR"``; tol: ARPACK's relative
    tolerance (0 for a dense solve).
    """

    values: np.ndarray
    residuals: np.ndarray
    converged: int
    which: str
    tol: float


def _order(values: np.ndarray, which: str) -> np.ndarray:
    key = -np.abs(values) if which == "LM" else -values.real
    return np.argsort(key, kind="stable")


def eigenvalues(
    matvec: Callable[[np.ndarray], np.ndarray],
    n: int,
    k: int = 4,
    which: str = "LM",
    tol: float = 1e-3,
    max_matvecs: int = 2000,
    seed: int = 0,
) -> Eigenvalues:
    """k eigenvalues of the real n×n operator ``matvec`` by ``which`` (LM: largest modulus,
    LR: largest real part), with their residuals.

    Up to ``DENSE_LIMIT`` unknowns the matrix is formed and solved densely (exact to
    round-off); beyond, ARPACK runs with relative tolerance ``tol`` and at most about
    ``max_matvecs`` products. Unconverged eigenvalues are NaN.
    """
    if which not in ("LM", "LR"):
        raise ValueError(f"which must be 'LM' or 'LR', not {which!r}")
    values = np.full(k, np.nan + 1j * np.nan, dtype=np.complex128)
    residuals = np.full(k, np.nan)
    if n <= DENSE_LIMIT:
        matrix = np.stack([matvec(e) for e in np.eye(n)], axis=1)
        lam, vecs = np.linalg.eig(matrix)
        used = 0.0
    else:
        op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(n)
        # A wide Krylov space: with 20 vectors ARPACK can settle on a wrong largest-real-part
        # set (a conjugate pair counted twice) on spectra like those of conv fields.
        ncv = min(n - 1, max(2 * k + 1, 40))
        used = tol
        try:
            lam, vecs = eigs(op, k=min(k, n - 2), which=which, tol=tol, ncv=ncv, v0=v0,
                             maxiter=max(1, max_matvecs // ncv))  # fmt: skip
        except ArpackNoConvergence as err:
            lam, vecs = err.eigenvalues, err.eigenvectors
        except ArpackError:
            return Eigenvalues(values, residuals, 0, which, used)
    lam = np.asarray(lam, dtype=np.complex128)
    order = _order(lam, which)[:k]
    for i, j in enumerate(order):
        v = vecs[:, j]
        av = matvec(np.ascontiguousarray(v.real)) + 1j * matvec(np.ascontiguousarray(v.imag))
        values[i] = lam[j]
        residuals[i] = float(np.linalg.norm(av - lam[j] * v) / np.linalg.norm(v))
    return Eigenvalues(values, residuals, int(np.isfinite(values).sum()), which, used)


def jacobian_matvec(f: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[np.ndarray], np.ndarray]:
    """v ↦ (∂f/∂x)(x)·v on flat float64 arrays, by forward-mode AD (J is never formed)."""
    x = x.detach()

    def matvec(v: np.ndarray) -> np.ndarray:
        tangent = torch.from_numpy(np.array(v, dtype=np.float64)).reshape(x.shape).to(x)  # a copy ARPACK can't alias
        _, jv = _jvp(f, x, tangent)
        return jv.reshape(-1).to(torch.float64).cpu().numpy()

    return matvec


def field_eigenvalues(
    f: Callable[[Tensor | float, Tensor], Tensor],
    t: float,
    x: Tensor,
    k: int = 4,
    which: str = "LM",
    tol: float = 1e-3,
    max_matvecs: int = 2000,
    seed: int = 0,
) -> Eigenvalues:
    """Eigenvalues of J = ∂f(t, x)/∂x chosen by ``which``. For a batch x the Jacobian is
    block diagonal over samples (eval mode), so these are the extreme ones over the batch."""
    tt = torch.tensor(t, dtype=x.dtype, device=x.device)  # fields get t as a tensor, as in the solvers
    matvec = jacobian_matvec(lambda y: f(tt, y), x)
    return eigenvalues(matvec, x.numel(), k, which, tol, max_matvecs, seed)


def leading_eigenvalues(
    f: Callable[[Tensor | float, Tensor], Tensor],
    t: float,
    x: Tensor,
    k: int = 4,
    tol: float = 1e-3,
    max_matvecs: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """The k eigenvalues of largest modulus of J = ∂f(t, x)/∂x, largest first (NaN where
    not converged). x: (batch, …) → complex (k,). ``field_eigenvalues`` adds residuals."""
    return field_eigenvalues(f, t, x, k, "LM", tol, max_matvecs, seed).values


def _jvp(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """(f(x), J_f(x)·v) by forward-mode AD on dual tensors (cheaper than torch.func.jvp
    for a single product: no function transform is built per call)."""
    with torch.no_grad(), fwAD.dual_level(), warnings.catch_warnings():
        # The first dual tensor makes torch load its JVP decompositions, which torch itself
        # still builds with the deprecated torch.jit.script: not odenet's to fix or show.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
        out = fwAD.unpack_dual(f(fwAD.make_dual(x, v)))
        return out.primal, out.tangent


def stability_factor(method: Method, h: float, eigenvalues: np.ndarray) -> float:
    """max |R(hλ)| over the finite eigenvalues (NaN if none): > 1 is outside the region."""
    return growth_factors(method, h, eigenvalues)[0]


def growth_factors(method: Method, h: float, eigenvalues: np.ndarray) -> tuple[float, float, float]:
    """(max |R(hλ)|, max |e^{hλ}|, max |R(hλ)| / max(1, |e^{hλ}|)) over the finite eigenvalues.

    The first is the classical criterion (> 1: outside the region of absolute stability);
    the second is the exact flow's growth over one step; the third is the growth the
    discretisation adds beyond the flow's, or beyond none where the flow decays: for
    Re λ ≤ 0 it is |R(hλ)|, for Re λ > 0 the ratio |R(hλ)| / |e^{hλ}| (≤ 1 for every
    method on the positive real axis, whose R is a truncated exponential series). NaN
    if no eigenvalue is finite.
    """
    lam = eigenvalues[np.isfinite(eigenvalues)]
    if lam.size == 0:
        return math.nan, math.nan, math.nan
    r = np.abs(method.tableau.stability_function(h * lam))
    flow = np.exp(h * lam.real)
    return float(r.max()), float(flow.max()), float((r / np.maximum(1.0, flow)).max())


def _device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _rms(x: Tensor) -> Tensor:
    return x.pow(2).mean().sqrt()


@torch.no_grad()
def probe_blocks(model: nn.Module, x: Tensor, k: int = 4, tol: float = 1e-3, seed: int = 0) -> xr.Dataset:
    """Spectra, step-map radii, perturbation growth and activation sizes of every block, in eval mode.

    Works on a float64 copy of ``model``; batch norm uses its running statistics (call
    ``calibrate_batchnorm`` on an untrained network first). Fixed-step solvers only.
    x: (batch, …) network inputs, a handful of samples is enough. ``k`` eigenvalues per
    selection (largest modulus, largest real part) at ARPACK tolerance ``tol``. Returns
    the ``SPECTRUM`` variables over ``block`` (and ``select``, ``eig``, largest first);
    NaN where a block has no such value (a transition has no field Jacobian).
    """
    if not isinstance(model, ResidualNetwork) or not _steppable(model):
        raise ValueError("block probes need a ResidualNetwork whose ODE blocks use fixed-step solvers")
    net = copy.deepcopy(model).to(torch.float64).eval()
    blocks = units(net)
    m, sets = len(blocks), len(SELECTIONS)
    eig = np.full((m, sets, k), np.nan + 1j * np.nan, dtype=np.complex128)
    residual = np.full((m, sets, k), np.nan)
    converged = np.full((m, sets), np.nan)
    names = ("max_abs_R", "max_abs_flow", "excess_growth", "step_radius", "step_radius_residual", "flow_radius",
             "step_excess", "amplification", "perturbation_growth", "activation_rms")  # fmt: skip
    per_block = {name: np.full(m, np.nan) for name in names}
    generator = torch.Generator().manual_seed(seed)
    x = x.to(_device(net), torch.float64)
    state: dict[str, Tensor] = {}

    def visit(i: int, unit: Unit, xi: Tensor) -> Tensor:
        if "dx0" not in state:
            d = torch.randn(xi.shape, generator=generator, dtype=xi.dtype).to(xi.device)
            state["dx"] = state["dx0"] = d / _rms(d)
        per_block["activation_rms"][i] = float(_rms(xi))
        f, method = unit.field(), unit.method
        if f is not None and method is not None:
            h = unit.step_size
            found = [field_eigenvalues(f, unit.time, xi, k, which, tol, seed=seed + i) for which in SELECTIONS.values()]
            lam = np.concatenate([e.values for e in found])
            rho = float(np.nanmax(np.abs(lam))) if np.isfinite(lam).any() else math.nan
            for j, e in enumerate(found):
                eig[i, j], residual[i, j], converged[i, j] = e.values, e.residuals / rho, e.converged
            factors = growth_factors(method, h, lam)
            per_block["max_abs_R"][i], per_block["max_abs_flow"][i], per_block["excess_growth"][i] = factors
            finite = lam[np.isfinite(lam)]
            flow_radius = math.exp(h * float(finite.real.max())) if finite.size else math.nan
            step = eigenvalues(jacobian_matvec(unit, xi), xi.numel(), k=2, which="LM", tol=tol, seed=seed + i)
            radius = float(np.abs(step.values[0]))
            per_block["step_radius"][i] = radius
            per_block["step_radius_residual"][i] = step.residuals[0] / radius
            per_block["flow_radius"][i] = flow_radius
            per_block["step_excess"][i] = radius / max(1.0, flow_radius)
        dx = state["dx"]
        out, dout = _jvp(unit, xi, dx)
        per_block["amplification"][i] = float(dout.norm() / dx.norm())
        per_block["perturbation_growth"][i] = float(dout.norm() / state["dx0"].norm())
        state["dx"] = dout
        return out

    walk(net, x, visit)
    values = {"eig_real": eig.real, "eig_imag": eig.imag, "eig_residual": residual, "eig_converged": converged,
              **per_block}  # fmt: skip
    return labelled(SPECTRUM, values, _coords(m, k))


def gradient_norms(model: nn.Module, x: Tensor, y: Tensor) -> xr.Dataset:
    """‖∂L/∂θ_k‖ (``block_grad_norm``) and ‖∂L/∂x_k‖ (``state_grad_norm``) for every block k.

    On one batch, in train mode.

    θ_k are the block's own weights (NaN when every step shares one weight set), x_k its
    input state (NaN when an adaptive solver gives no states between blocks). L is the
    mean cross-entropy. Works on a float64 copy, so the model's running statistics and
    gradients are untouched. x: (batch, …), y: (batch,) class indices.
    """
    if not isinstance(model, ResidualNetwork):
        raise ValueError(f"gradient probes need an odenet ResidualNetwork, not {type(model).__name__}")
    net = copy.deepcopy(model).to(torch.float64).train()
    net.zero_grad(set_to_none=True)
    blocks = units(net)
    states: list[Tensor] = []
    x, y = x.to(_device(net), torch.float64), y.to(_device(net))

    def visit(i: int, unit: Unit, xi: Tensor) -> Tensor:
        xi.retain_grad()
        states.append(xi)
        return unit(xi)

    logits = walk(net, x, visit) if _steppable(net) else net(x)
    F.cross_entropy(logits, y).backward()
    theta = np.full(len(blocks), np.nan)
    state = np.full(len(blocks), np.nan)
    for i, unit in enumerate(blocks):
        owner = unit.weights()
        if owner is not None:
            grads = [p.grad for p in owner.parameters() if p.grad is not None]
            theta[i] = float(torch.sqrt(sum((g.pow(2).sum() for g in grads), torch.zeros((), dtype=torch.float64))))
    for i, xi in enumerate(states):
        if xi.grad is not None:
            state[i] = float(xi.grad.norm())
    return labelled(GRADIENTS, {"block_grad_norm": theta, "state_grad_norm": state}, _coords(len(blocks)))
