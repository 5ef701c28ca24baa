"""What one cell of a study computes. Plain functions of (study, cell) → arrays, so a Dask
worker can run them; nothing here writes files.

Every cell trains one network with ``odenet.train.train`` (divergence and solver
failures are recorded by the history, never raised), then:

* depth: per-block gradient norms at initialisation and after training;
* stability: the block probes of ``odenet.probes`` at initialisation and after training;
* convergence: re-evaluates the trained weights in float64 with other solvers and step
  counts against an adaptive reference;
* compare: nothing more (accuracy, parameters and NFE come from training).
"""

from __future__ import annotations

import copy
import math
import time
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from odenet.blocks import ODEBlock, SolverError
from odenet.data import TensorData, load_dataset
from odenet.experiment import build_model
from odenet.models.common import ResidualNetwork
from odenet.probes import BlockProbe, calibrate_batchnorm, gradient_norms, probe_blocks
from odenet.studies.schema import OUTCOMES
from odenet.studies.spec import Cell, ConvergenceStudy, StabilityStudy, Study
from odenet.train import History, evaluate, resolve_device, train

__all__ = ["fit_order", "run_cell"]

Values = dict[str, Any]

# Samples whose gradient norms are measured, and those that calibrate batch norm before
# an untrained network is probed in eval mode.
GRAD_SAMPLES = 256
CALIBRATION_SAMPLES = 1024
# Test samples whose stage outputs are compared with the reference.
ERROR_SAMPLES = 64


def run_cell(study: Study, cell: Cell, threads: int | None = None) -> Values:
    """Compute one cell; the returned arrays have the variable's inner shape (blocks may be fewer)."""
    if threads is not None:
        torch.set_num_threads(threads)
    data = _data(study.dataset, study.data_dir, cell.train.seed)
    torch.manual_seed(cell.train.seed)
    model = build_model(cell.model, data)
    if study.kind == "depth":
        return _depth(model, data, cell)
    if study.kind == "stability":
        assert isinstance(study, StabilityStudy)
        return _stability(model, data, cell, study)
    if study.kind == "convergence":
        assert isinstance(study, ConvergenceStudy)
        return _convergence(model, data, cell, study)
    if study.kind == "compare":
        values, history = _train(model, data, cell)
        last = history.epochs - 1
        values["nfe_forward_final"] = history.nfe_forward[last] if last >= 0 else math.nan
        values["nfe_backward_final"] = history.nfe_backward[last] if last >= 0 else math.nan
        return values
    raise ValueError(f"unknown study kind {study.kind!r}")


@lru_cache(maxsize=4)
def _data(name: str, data_dir: str | None, seed: int) -> TensorData:
    # One load per worker process and seed: cells of one seed share the split.
    return load_dataset(name, data_dir, False, seed=seed)


def _train(model: nn.Module, data: TensorData, cell: Cell) -> tuple[Values, History]:
    start = time.perf_counter()
    history = train(model, data, cell.train, progress=False)
    seconds = time.perf_counter() - start
    epochs = cell.train.epochs
    values: Values = {}
    for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "wall_time",
                 "nfe_forward", "nfe_backward", "grad_norm"):  # fmt: skip
        series = np.full(epochs, np.nan)
        series[: history.epochs] = getattr(history, name)
        values[name] = series
    failed = history.reason.startswith("solver failed")
    outcome = "completed" if not history.diverged else "solver_failed" if failed else "diverged"
    values |= {
        "outcome": OUTCOMES.index(outcome),
        "diverged": int(history.diverged),
        "diverged_epoch": history.diverged_epoch or 0,
        "final_test_accuracy": history.test_accuracy[-1] if history.epochs and not history.diverged else math.nan,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_time": seconds,
    }
    return values, history


def _grad_batch(data: TensorData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return data.x_train[:GRAD_SAMPLES].to(device), data.y_train[:GRAD_SAMPLES].to(device)


def _depth(model: nn.Module, data: TensorData, cell: Cell) -> Values:
    device = resolve_device(cell.train.device)
    model.to(device)
    x, y = _grad_batch(data, device)
    init = gradient_norms(model, x, y)
    values, history = _train(model, data, cell)
    final = _safe(lambda: gradient_norms(model, x, y), len(init[0]), history)
    values["block_grad_norm"] = np.stack([init[0], final[0]])
    values["state_grad_norm"] = np.stack([init[1], final[1]])
    return values


def _safe(measure: Any, blocks: int, history: History) -> tuple[np.ndarray, np.ndarray]:
    # A diverged network has non-finite weights: its measurements are missing, not errors.
    if history.diverged:
        return np.full(blocks, np.nan), np.full(blocks, np.nan)
    result: tuple[np.ndarray, np.ndarray] = measure()
    return result


def _stability(model: nn.Module, data: TensorData, cell: Cell, study: StabilityStudy) -> Values:
    device = resolve_device(cell.train.device)
    model.to(device)
    probe = study.probe
    xs = data.x_train[: probe.samples].to(device)
    x, y = _grad_batch(data, device)
    calibrated = calibrate_batchnorm(copy.deepcopy(model), data.x_train[:CALIBRATION_SAMPLES].to(device))
    before = probe_blocks(calibrated, xs, k=probe.eigenvalues, tol=probe.tol, seed=cell.train.seed)
    grads_before = gradient_norms(model, x, y)
    values, history = _train(model, data, cell)
    blocks = len(before.max_abs_R)
    if history.diverged:
        after = _missing(blocks, probe.eigenvalues)
        grads_after = (np.full(blocks, np.nan), np.full(blocks, np.nan))
    else:
        after = probe_blocks(model, xs, k=probe.eigenvalues, tol=probe.tol, seed=cell.train.seed)
        grads_after = gradient_norms(model, x, y)
    values["eig_real"] = np.stack([before.eigenvalues.real, after.eigenvalues.real])
    values["eig_imag"] = np.stack([before.eigenvalues.imag, after.eigenvalues.imag])
    for name in ("max_abs_R", "amplification", "perturbation_growth", "activation_rms"):
        values[name] = np.stack([getattr(before, name), getattr(after, name)])
    values["block_grad_norm"] = np.stack([grads_before[0], grads_after[0]])
    values["state_grad_norm"] = np.stack([grads_before[1], grads_after[1]])
    return values


def _missing(blocks: int, k: int) -> BlockProbe:
    nan = np.full(blocks, np.nan)
    return BlockProbe(np.full((blocks, k), np.nan + 0j), nan, nan, nan, nan)


def _convergence(model: nn.Module, data: TensorData, cell: Cell, study: ConvergenceStudy) -> Values:
    values, history = _train(model, data, cell)
    shape_eval = (len(study.eval_solvers), len(study.refinements))
    error = np.full((*shape_eval, study.stages), np.nan)
    accuracy, loss, nfe = (np.full(shape_eval, np.nan) for _ in range(3))
    order = np.full((len(study.eval_solvers), study.stages), np.nan)
    values |= {"error": error, "eval_accuracy": accuracy, "eval_loss": loss, "eval_nfe": nfe, "order": order}
    values |= {"reference_accuracy": math.nan, "reference_nfe": math.nan}
    if history.diverged:
        return values
    assert isinstance(model, ResidualNetwork)
    device = resolve_device(cell.train.device)
    tol = study.reference_tol
    # Stage errors in float64 on a few test samples, so that the reference's own error
    # (≈ reference_tol) and the high-order methods' errors at 8n steps are not drowned by
    # single-precision round-off. Accuracies in float32 on the whole test set, with the
    # reference at a tolerance float32 can resolve: a class decision needs no more.
    net64 = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    net32 = copy.deepcopy(model).to(device=device, dtype=torch.float32).eval()
    x64 = data.x_test[:ERROR_SAMPLES].to(device, torch.float64)
    x, y = data.x_test.to(device, torch.float32), data.y_test.to(device)
    try:
        inputs, outputs = _stage_states(_with(net64, _reference(study, tol)), x64)
        reference32 = _with(net32, _reference(study, max(tol, 1e-5)))
        _, values["reference_accuracy"] = evaluate(reference32, x, y)
        values["reference_nfe"] = _nfe(reference32)
    except SolverError:
        return values
    steps = [b.steps for b in net64.body if isinstance(b, ODEBlock)]
    for i, solver in enumerate(study.eval_solvers):
        for j, r in enumerate(study.refinements):

            def refine(b: ODEBlock, s: str = solver, r: float = r) -> ODEBlock:
                return b.with_solver(s, steps=max(1, round(r * b.steps)))

            stages = [b for b in _with(net64, refine).body if isinstance(b, ODEBlock)]
            with torch.no_grad():
                for s, block in enumerate(stages):
                    error[i, j, s] = float((block(inputs[s]) - outputs[s]).norm() / outputs[s].norm())
            candidate = _with(net32, refine)
            loss[i, j], accuracy[i, j] = evaluate(candidate, x, y)
            nfe[i, j] = _nfe(candidate)
        for s, n in enumerate(steps):
            m = np.array([max(1, round(r * n)) for r in study.refinements], dtype=float)
            order[i, s] = fit_order(m, error[i, :, s], floor=10 * tol, use=np.asarray(study.refinements) >= 1)
    return values


def _reference(study: ConvergenceStudy, tol: float) -> Any:
    def swap(b: ODEBlock) -> ODEBlock:
        return b.with_solver(study.reference, rtol=tol, atol=tol, adjoint=False)

    return swap


def _with(net: ResidualNetwork, swap: Any) -> ResidualNetwork:
    """The same network (shared modules) with every ODE block replaced by ``swap(block)``."""
    body = nn.Sequential(*[swap(m) if isinstance(m, ODEBlock) else m for m in net.body])
    return ResidualNetwork(net.stem, body, net.head).eval()


@torch.no_grad()
def _stage_states(net: ResidualNetwork, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Inputs and outputs of every ODE block along ``net``'s own trajectory."""
    inputs, outputs = [], []
    z = net.stem(x)
    for m in net.body:
        if isinstance(m, ODEBlock):
            inputs.append(z)
            z = m(z)
            outputs.append(z)
        else:
            z = m(z)
    return inputs, outputs


def _nfe(net: nn.Module) -> float:
    """Function evaluations of the last forward pass, over all ODE blocks."""
    return float(sum(b.nfe_forward for b in net.modules() if isinstance(b, ODEBlock)))


def fit_order(steps: np.ndarray, error: np.ndarray, floor: float = 0.0, use: np.ndarray | None = None) -> float:
    """Empirical order p from error ≈ C·steps^(−p): least squares on log–log points.

    Points at or below ``floor`` (the reference's own error) or not finite are left
    out; NaN when fewer than two remain.
    """
    ok = np.isfinite(error) & (error > floor)
    if use is not None:
        ok &= use
    if ok.sum() < 2 or len(set(steps[ok])) < 2:
        return math.nan
    slope = np.polyfit(np.log(steps[ok]), np.log(error[ok]), 1)[0]
    return float(-slope)
