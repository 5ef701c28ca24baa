"""Measurements on a residual network, block by block.

A block is one residual unit in forward order: a step of an ``ODEBlock`` or a stage
``Transition``. For every block these probes measure

* the leading eigenvalues λ of the field Jacobian ∂F_k/∂x at the block's input state,
  matrix-free (ARPACK's implicitly restarted Arnoldi on Jacobian–vector products), and
  ``max |R(hλ)|`` with the solver's stability function R: a value above 1 means the step
  h·λ lies outside the method's region of absolute stability (Haber & Ruthotto 2017,
  "Stable architectures for deep neural networks");
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
from odenet.solvers import Method

__all__ = [
    "GRADIENTS",
    "SPECTRUM",
    "calibrate_batchnorm",
    "gradient_norms",
    "leading_eigenvalues",
    "probe_blocks",
    "stability_factor",
]

# Up to this many unknowns the Jacobian is formed column by column and all its
# eigenvalues are computed densely; ARPACK needs n well above 2k + 1 anyway.
DENSE_LIMIT = 256

# What each probe returns, declared once: the study schema is derived from these.
SPECTRUM: tuple[Variable, ...] = (
    Variable("eig_real", ("block", "eig"), "real part of a leading eigenvalue of the field Jacobian", "1"),
    Variable("eig_imag", ("block", "eig"), "imaginary part of a leading eigenvalue of the field Jacobian", "1"),
    Variable("max_abs_R", ("block",), "max |R(hλ)| over the leading eigenvalues", "1"),
    Variable("amplification", ("block",), "amplification of a small input perturbation by the block", "1"),
    Variable(
        "perturbation_growth",
        ("block",),
        "growth of a small perturbation of the first block's input up to the block's output",
        "1",
    ),
    Variable("activation_rms", ("block",), "root-mean-square of the block's input activations", "1"),
)
GRADIENTS: tuple[Variable, ...] = (
    Variable("block_grad_norm", ("block",), "2-norm of the loss gradient with respect to the block's own weights", "1"),
    Variable("state_grad_norm", ("block",), "2-norm of the loss gradient with respect to the block's input state", "1"),
)


def _steppable(model: ResidualNetwork) -> bool:
    return all(not m.method.adaptive for m in model.body if isinstance(m, ODEBlock))


def _coords(blocks: int, k: int | None = None) -> dict[str, np.ndarray]:
    coords = {"block": np.arange(blocks)}
    if k is not None:
        coords["eig"] = np.arange(k)
    return coords


def missing(variables: tuple[Variable, ...], blocks: int, k: int = 0) -> xr.Dataset:
    """A probe's dataset with every value missing (for a network that diverged)."""
    sizes = {"block": blocks, "eig": k}
    values = {v.name: np.full([sizes[d] for d in v.dims], v.fill) for v in variables}
    return labelled(variables, values, _coords(blocks, k if any("eig" in v.dims for v in variables) else None))


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: Tensor, batch_size: int = 256) -> nn.Module:
    """Set batch-norm running statistics to the exact averages over ``x`` (in place).

    A freshly initialised network has running statistics 0 and 1, which is not what it
    computes in training; probes of an untrained network in eval mode need these first.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i : i + batch_size])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return model


def leading_eigenvalues(
    f: Callable[[Tensor | float, Tensor], Tensor],
    t: float,
    x: Tensor,
    k: int = 4,
    tol: float = 1e-3,
    max_matvecs: int = 600,
    seed: int = 0,
) -> np.ndarray:
    """The k eigenvalues of largest modulus of J = ∂f(t, x)/∂x, largest first.

    J is applied through forward-mode Jacobian–vector products (dual tensors), never
    formed, unless x has at most ``DENSE_LIMIT`` entries. For a batch x the Jacobian is
    block diagonal over samples (eval mode), so these are the leading eigenvalues over
    the batch. Eigenvalues ARPACK did not converge are NaN. x: (batch, …) → complex (k,).
    """
    x = x.detach()
    n = x.numel()
    tt = torch.tensor(t, dtype=x.dtype, device=x.device)  # fields get t as a tensor, as in the solvers

    def matvec(v: np.ndarray) -> np.ndarray:
        tangent = torch.as_tensor(np.ascontiguousarray(v, dtype=np.float64)).reshape(x.shape).to(x)
        _, jv = _jvp(lambda y: f(tt, y), x, tangent)
        return jv.reshape(-1).to(torch.float64).cpu().numpy()

    out = np.full(k, np.nan + 1j * np.nan, dtype=np.complex128)
    if n <= DENSE_LIMIT:
        jac = np.stack([matvec(e) for e in np.eye(n)], axis=1)
        lam = np.linalg.eigvals(jac)
    else:
        op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(n)
        ncv = min(n - 1, max(2 * k + 1, 20))
        try:
            lam = eigs(op, k=k, which="LM", tol=tol, ncv=ncv, v0=v0, maxiter=max(1, max_matvecs // ncv),
                       return_eigenvectors=False)  # fmt: skip
        except ArpackNoConvergence as err:
            lam = err.eigenvalues
        except ArpackError:
            return out
    lam = np.asarray(lam, dtype=np.complex128)
    lam = lam[np.argsort(-np.abs(lam), kind="stable")][:k]
    out[: len(lam)] = lam
    return out


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
    lam = eigenvalues[np.isfinite(eigenvalues)]
    if lam.size == 0:
        return math.nan
    return float(np.max(np.abs(method.tableau.stability_function(h * lam))))


def _device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _rms(x: Tensor) -> Tensor:
    return x.pow(2).mean().sqrt()


@torch.no_grad()
def probe_blocks(model: nn.Module, x: Tensor, k: int = 4, tol: float = 1e-3, seed: int = 0) -> xr.Dataset:
    """Spectra, perturbation growth and activation sizes of every block, in eval mode.

    Works on a float64 copy of ``model``; batch norm uses its running statistics (call
    ``calibrate_batchnorm`` on an untrained network first). Fixed-step solvers only.
    x: (batch, …) network inputs, a handful of samples is enough. Returns the ``SPECTRUM``
    variables over ``block`` (and ``eig``, largest modulus first); NaN where a block has
    no such value (a transition has no field Jacobian).
    """
    if not isinstance(model, ResidualNetwork) or not _steppable(model):
        raise ValueError("block probes need a ResidualNetwork whose ODE blocks use fixed-step solvers")
    net = copy.deepcopy(model).to(torch.float64).eval()
    blocks = units(net)
    m = len(blocks)
    eig = np.full((m, k), np.nan + 1j * np.nan, dtype=np.complex128)
    factor, amp, growth, act = (np.full(m, np.nan) for _ in range(4))
    generator = torch.Generator().manual_seed(seed)
    x = x.to(_device(net), torch.float64)
    state: dict[str, Tensor] = {}

    def visit(i: int, unit: Unit, xi: Tensor) -> Tensor:
        if "dx0" not in state:
            d = torch.randn(xi.shape, generator=generator, dtype=xi.dtype).to(xi.device)
            state["dx"] = state["dx0"] = d / _rms(d)
        act[i] = float(_rms(xi))
        f, method = unit.field(), unit.method
        if f is not None and method is not None:
            eig[i] = leading_eigenvalues(f, unit.time, xi, k=k, tol=tol, seed=seed + i)
            factor[i] = stability_factor(method, unit.step_size, eig[i])
        dx = state["dx"]
        out, dout = _jvp(unit, xi, dx)
        amp[i] = float(dout.norm() / dx.norm())
        growth[i] = float(dout.norm() / state["dx0"].norm())
        state["dx"] = dout
        return out

    walk(net, x, visit)
    values = {"eig_real": eig.real, "eig_imag": eig.imag, "max_abs_R": factor, "amplification": amp,
              "perturbation_growth": growth, "activation_rms": act}  # fmt: skip
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
