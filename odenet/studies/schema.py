"""What every study stores: shared coordinates and the outcome variables.

A study dataset has *cell* dimensions (one training run or evaluation per combination,
e.g. solver × depth × arch × seed) and *inner* dimensions filled by each cell (epoch,
block, when, eig, …). A variable's full dimensions are the cell dimensions followed by
its own. Every variable carries ``long_name`` and ``units`` (CF conventions);
``outcome`` carries CF ``flag_values``/``flag_meanings``.

Each study kind declares its own variables and coordinates (``odenet.studies.kinds``);
``variables(kind)`` reads them from the kind. What is here is what all kinds share.
"""

from __future__ import annotations

from odenet.labels import Variable

__all__ = ["COORDS", "OUTCOME", "OUTCOMES", "Variable", "coordinates", "variables"]

# Outcome of a cell's training run (CF flag variable).
OUTCOMES = ("completed", "diverged", "solver_failed")

# Coordinates that several kinds use: long_name and units (values are set by each study).
COORDS: dict[str, tuple[str, str]] = {
    "solver": ("solver of every block", ""),
    "depth": ("network depth (layers)", "1"),
    "seed": ("random seed (weights, data split, batch order)", "1"),
    "step_size": ("step size h of every block", "1"),
    "epoch": ("epoch", "1"),
    "block": ("residual block index (0 = first, in forward order)", "1"),
    "when": ("moment of measurement (init: before training; final: after)", ""),
    "eig": ("rank of the eigenvalue by modulus (0 = largest)", "1"),
}

OUTCOME: tuple[Variable, ...] = (
    Variable("outcome", (), "outcome of training", "", "int64"),
    Variable("diverged", (), "training diverged or its solver failed (1) or not (0)", "1", "int64"),
    Variable("diverged_epoch", (), "epoch in which training diverged", "1", "int64"),
    Variable("final_test_accuracy", (), "test accuracy after training", "1"),
    Variable("parameters", (), "number of trainable parameters", "1", "int64"),
    Variable("train_time", (), "wall-clock time of training", "s"),
)


def variables(kind: str) -> tuple[Variable, ...]:
    """The variables a study of ``kind`` stores (besides the ``done`` mask)."""
    from odenet.studies.base import KINDS

    if kind not in KINDS:
        raise ValueError(f"unknown study kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return KINDS[kind].schema()


def coordinates(kind: str) -> dict[str, tuple[str, str]]:
    """long_name and units of every coordinate a study of ``kind`` may have."""
    from odenet.studies.base import KINDS

    if kind not in KINDS:
        raise ValueError(f"unknown study kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return {**COORDS, **KINDS[kind].coords}
