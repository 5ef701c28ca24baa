"""Lesions: solvers × depths × residual/plain × seeds, units deleted at test time (Veit et al. 2016).

Veit, Wilber & Belongie (2016), "Residual networks behave like ensembles of relatively
shallow networks": after training, delete one block at a time (Fig. 3) and k random
blocks (Fig. 4a), and record the test accuracy. A residual network loses little from
any one block; a plain one collapses. For a residual net deleting a block is skipping
that step, x ↦ x, with any tableau (for Euler, the deletion of the residual branch);
for a plain net the layer is taken out and its input passed on. Stage transitions are
replaced by their shortcut and reported apart; a plain net's cannot be deleted
(``odenet.lesions`` states each case). Euler residual cells also get the exact
path-length decomposition of the loss gradient (Fig. 6, with the difference stated
there); other cells store NaN for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from odenet.data import TensorData
from odenet.errors import NAME_ONLY, ConfigError
from odenet.knobs import check_count, knob
from odenet.labels import Variable
from odenet.lesions import (
    INTACT,
    PATHS,
    RANDOM,
    SINGLE,
    lesion_accuracy,
    path_gradients,
    random_lesions,
    single_lesions,
)
from odenet.solvers import METHODS, get_method
from odenet.studies.base import Cell, Values, train_cell
from odenet.studies.kinds.depth import ArchGrid, gradient_batch
from odenet.train import resolve_device

__all__ = ["LesionStudy"]


@dataclass(frozen=True)
class LesionStudy(ArchGrid):
    """Lesions: solvers × depths × arch (residual / plain) × seeds, fixed-step solvers only.

    Per cell: the training history and outcome; after training, on the test set in eval
    mode, the intact accuracy, the accuracy with each unit deleted (``block``; steps and
    transitions in separate variables, ``is_transition`` saying which is which) and with
    k = 0 … ``max_deleted`` random steps deleted (``deleted``: mean and sample std over
    ``subsets`` random sets, and how many sets); on ``grad_samples`` training examples,
    the norm of the loss gradient carried by the paths through k residual branches
    (``path_length``; Euler residual cells only). A shallower network fills fewer
    blocks; the rest is NaN (−1 for ``is_transition``).
    """

    kind: ClassVar[str] = "lesion"
    variables: ClassVar[tuple[Variable, ...]] = (INTACT, *SINGLE, *RANDOM, *PATHS)
    coords: ClassVar[Mapping[str, tuple[str, str]]] = {
        **ArchGrid.coords,
        "deleted": ("number k of ODE steps deleted at random", "1"),
        "path_length": ("path length: residual branches a gradient path passes through", "1"),
    }

    fixed_steps: ClassVar[bool] = True

    solvers: tuple[str, ...] = knob(("euler", "midpoint"), "Fixed-step solvers, e.g. euler,midpoint,rk4.")
    depths: tuple[int, ...] = knob((20, 32), "Depths (6n+2 for conv nets, blocks for MLPs).")
    max_deleted: int = knob(10, "Largest number k of ODE steps deleted at random.")
    subsets: int = knob(10, "Random sets of k deleted steps per k (every set when there are fewer).")
    grad_samples: int = knob(256, "Training examples whose gradient is split by path length (Euler residual cells).")

    def check(self) -> None:
        for name in self.solvers:
            if name in METHODS and get_method(name).adaptive:
                raise ConfigError(
                    "{solvers}: " + name + " is adaptive: its solve has no steps to delete; lesions need "
                    "fixed-step solvers (euler, midpoint, rk4, …)",
                    solvers=NAME_ONLY,
                )
        super().check()
        check_count("max_deleted", self.max_deleted, minimum=0)
        check_count("subsets", self.subsets)
        check_count("grad_samples", self.grad_samples)

    def inner(self) -> dict[str, Sequence[Any]]:
        blocks = max(self.blocks(d) for d in self.depths)
        return {
            "epoch": list(range(1, self.train.epochs + 1)),
            "block": list(range(blocks)),
            "deleted": list(range(self.max_deleted + 1)),
            "path_length": list(range(blocks + 1)),
        }

    def measure(self, model: nn.Module, data: TensorData, cell: Cell) -> Values:
        device = resolve_device(cell.train.device)
        model.to(device)
        values, history = train_cell(model, data, cell)
        if history.diverged:  # every lesion variable keeps its fill value (NaN, −1)
            return values
        x, y = data.features(data.x_test.to(device)), data.y_test.to(device)
        single = single_lesions(model, x, y)
        random = random_lesions(model, x, y, self.max_deleted, self.subsets, seed=cell.train.seed)
        paths = path_gradients(model, *gradient_batch(data, self.grad_samples, device))
        measured = single.merge(random).merge(paths)
        return {
            **values,
            "intact_accuracy": lesion_accuracy(model, x, y),
            **{str(name): var for name, var in measured.data_vars.items()},
        }
