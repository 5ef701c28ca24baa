"""What each study stores: dimensions, variables, their units and long names.

A study dataset has *cell* dimensions (one training run or evaluation per combination,
e.g. solver × depth × arch × seed) and *inner* dimensions filled by each cell (epoch,
block, when, eig, …). A variable's full dimensions are the cell dimensions followed by
its inner ones. Every variable carries ``long_name`` and ``units`` (CF conventions);
``outcome`` carries CF ``flag_values``/``flag_meanings``.

Cell dimensions per kind (in order):

* depth:        solver, depth, arch, seed
* stability:    solver, step_size, depth, seed   (with a fixed horizon: solver, depth, seed,
                and ``step_size`` is a coordinate along ``depth``)
* convergence:  train_solver, step_size, seed
* compare:      model, seed
"""

from __future__ import annotations

from dataclasses import dataclass

from odenet.train import HISTORY_VARIABLES

__all__ = ["COORDS", "OUTCOMES", "Variable", "variables"]

# Outcome of a cell's training run (CF flag variable).
OUTCOMES = ("completed", "diverged", "solver_failed")


@dataclass(frozen=True)
class Variable:
    """One stored variable: inner dimensions, dtype, CF attributes."""

    name: str
    dims: tuple[str, ...]
    long_name: str
    units: str
    dtype: str = "float64"  # "float64" (fill NaN) or "int64" (fill -1)


# Coordinates: long_name and units (values are set by each study).
COORDS: dict[str, tuple[str, str]] = {
    "solver": ("solver of every block", ""),
    "train_solver": ("solver the network was trained with", ""),
    "eval_solver": ("solver the trained weights are evaluated with", ""),
    "depth": ("network depth (layers)", "1"),
    "arch": ("architecture (residual: skip connections; plain: none)", ""),
    "seed": ("random seed (weights, data split, batch order)", "1"),
    "step_size": ("step size h of every block", "1"),
    "model": ("model variant", ""),
    "epoch": ("epoch", "1"),
    "block": ("residual block index (0 = first, in forward order)", "1"),
    "when": ("moment of measurement (init: before training; final: after)", ""),
    "eig": ("rank of the eigenvalue by modulus (0 = largest)", "1"),
    "refinement": ("evaluation steps / training steps", "1"),
    "stage": ("network stage (ODE block) index", "1"),
}

_HISTORY = tuple(Variable(name, ("epoch",), long_name, units) for name, (long_name, units) in HISTORY_VARIABLES.items())

_OUTCOME = (
    Variable("outcome", (), "outcome of training", "", "int64"),
    Variable("diverged", (), "training diverged or its solver failed (1) or not (0)", "1", "int64"),
    Variable("diverged_epoch", (), "epoch in which training diverged", "1", "int64"),
    Variable("final_test_accuracy", (), "test accuracy after training", "1"),
    Variable("parameters", (), "number of trainable parameters", "1", "int64"),
    Variable("train_time", (), "wall-clock time of training", "s"),
)

_BLOCK_GRADS = (
    Variable(
        "block_grad_norm",
        ("when", "block"),
        "2-norm of the loss gradient with respect to the block's own weights",
        "1",
    ),
    Variable(
        "state_grad_norm",
        ("when", "block"),
        "2-norm of the loss gradient with respect to the block's input state",
        "1",
    ),
)

_PROBES = (
    Variable("eig_real", ("when", "block", "eig"), "real part of a leading eigenvalue of the field Jacobian", "1"),
    Variable("eig_imag", ("when", "block", "eig"), "imaginary part of a leading eigenvalue of the field Jacobian", "1"),
    Variable("max_abs_R", ("when", "block"), "max |R(hλ)| over the leading eigenvalues", "1"),
    Variable("amplification", ("when", "block"), "amplification of a small input perturbation by the block", "1"),
    Variable(
        "perturbation_growth",
        ("when", "block"),
        "growth of a small perturbation of the first block's input up to the block's output",
        "1",
    ),
    Variable("activation_rms", ("when", "block"), "root-mean-square of the block's input activations", "1"),
)

_CONVERGENCE = (
    Variable(
        "error",
        ("eval_solver", "refinement", "stage"),
        "relative 2-norm error of the stage output against the adaptive reference",
        "1",
    ),
    Variable("eval_accuracy", ("eval_solver", "refinement"), "test accuracy with the evaluation solver", "1"),
    Variable("eval_loss", ("eval_solver", "refinement"), "test cross-entropy with the evaluation solver", "nat"),
    Variable("eval_nfe", ("eval_solver", "refinement"), "ODE-block function evaluations per forward pass", "1"),
    Variable("order", ("eval_solver", "stage"), "empirical order fitted to error against steps (log–log)", "1"),
    Variable("reference_accuracy", (), "test accuracy with the adaptive reference solver", "1"),
    Variable("reference_nfe", (), "function evaluations of the reference per forward pass", "1"),
)

_COMPARE = (
    Variable("nfe_forward_final", (), "function evaluations per training batch in the last epoch, forward", "1"),
    Variable("nfe_backward_final", (), "function evaluations per training batch in the last epoch, backward", "1"),
)


def variables(kind: str) -> tuple[Variable, ...]:
    """The variables a study of ``kind`` stores (besides the ``done`` mask)."""
    if kind == "depth":
        return _HISTORY + _OUTCOME + _BLOCK_GRADS
    if kind == "stability":
        return _HISTORY + _OUTCOME + _BLOCK_GRADS + _PROBES
    if kind == "convergence":
        return _HISTORY + _OUTCOME + _CONVERGENCE
    if kind == "compare":
        return _HISTORY + _OUTCOME + _COMPARE
    raise ValueError(f"unknown study kind {kind!r}; choose depth, stability, convergence or compare")
