"""What every study kind shares: the ``Study`` base class, its registry, cells, and training a cell.

A study kind is one class, in one module of ``odenet.studies.kinds``: a frozen dataclass
that derives from ``Study`` and declares

* ``kind`` — its name (the registry key, the CLI command, the spec's ``kind``);
* its grid fields (knobs: ``solvers``, ``depths``, …) and ``axes()`` — the cell
  dimensions and their values, in order;
* ``variables`` — what a cell stores besides the training history and outcome, each
  with long_name and units, and ``coords`` — the attributes of its own coordinates;
* ``measure(model, data, cell)`` — how one cell is computed;
* ``sets`` — the model fields its axes set (so front ends do not offer them), and
  ``command`` — whether it gets an ``odenet study KIND`` command (its grid fields can be
  written on a command line) or is run from TOML specs only.

Everything else is derived: the registry ``KINDS`` (filled when a subclass is defined),
the dataset schema, the store layout, the cell dispatch, the spec reader and the
command line. Construction validates the whole grid: every cell's ``ModelConfig`` is
built, so each compatibility rule is checked by the one function that states it, and a
bad cell is refused before anything is loaded or trained.
"""

from __future__ import annotations

import json
import math
import time
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass, replace
from functools import lru_cache
from itertools import product
from typing import Any, ClassVar

import numpy as np
import torch
import xarray as xr
from torch import nn

from odenet.data import DATASETS, TensorData, data_kind, load_dataset
from odenet.errors import NAME_ONLY, ConfigError, literal
from odenet.experiment import ModelConfig, build_model, check_fits
from odenet.knobs import check_choice, knob
from odenet.labels import Variable
from odenet.models.cifar import blocks_per_stage
from odenet.solvers import METHODS, UnknownSolverError, get_method
from odenet.studies.lists import parse_values, seeds_from
from odenet.studies.schema import COORDS, OUTCOME, OUTCOMES
from odenet.studies.store import Layout
from odenet.train import HISTORY, History, TrainConfig, torch_threads, train

__all__ = ["KINDS", "Cell", "Study", "Values", "last_recorded", "run_cell", "train_cell"]

Values = Mapping[str, Any]

# More cells than this in one study is a mistake (a log:…:100000 axis, --seeds 100000).
MAX_CELLS = 100_000

# kind name → class; filled by ``Study.__init_subclass__``.
KINDS: dict[str, type[Study]] = {}

_MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig))


@dataclass(frozen=True)
class Cell:
    """One unit of work: its index and labels along the cell dims and the configs it runs."""

    index: tuple[int, ...]
    labels: tuple[Any, ...]
    model: ModelConfig
    train: TrainConfig

    def describe(self, dims: Sequence[str]) -> str:
        return ", ".join(f"{d}={v}" for d, v in zip(dims, self.labels, strict=True))


@dataclass(frozen=True)
class Study:
    """What every study has: the data, the base model and training, the seeds."""

    kind: ClassVar[str] = ""
    variables: ClassVar[tuple[Variable, ...]] = ()
    coords: ClassVar[Mapping[str, tuple[str, str]]] = {}
    sets: ClassVar[tuple[str, ...]] = ()
    command: ClassVar[bool] = True  # has an ``odenet study KIND`` command (False: specs only)
    # Fields that may differ when a study is resumed: they do not change what a finished
    # cell means (the data folder may move, or be fixed after a failed start).
    incidental: ClassVar[tuple[str, ...]] = ("data_dir",)

    dataset: str = knob("digits", "Embedded, or a torchvision folder given by data_dir.", choices=lambda: DATASETS)
    data_dir: str | None = knob(None, "Folder holding cifar10/cifar100/mnist/fashion-mnist files.")
    model: ModelConfig = knob(default_factory=lambda: ModelConfig(depth=20))
    # One thread per cell: a cell's numbers then do not depend on how many threads, workers
    # or machines ran the study (the rounding of every sum depends on the thread count).
    train: TrainConfig = knob(default_factory=lambda: TrainConfig(threads=1))
    seeds: tuple[int, ...] = knob((0,), "Seeds: a count (3 → seeds 0, 1, 2) or a list such as 0,5,7.")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind", "")
        if kind:
            known = KINDS.get(kind)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise ValueError(f"study kind {kind!r} is already defined by {known.__module__}.{known.__qualname__}")
            KINDS[kind] = cls

    # -- construction ------------------------------------------------------------------
    def __post_init__(self) -> None:
        self._normalise()
        check_choice("dataset", self.dataset, DATASETS)
        if self.train.threads is None:
            # Cells of a study always run on a fixed thread count (recorded in its config).
            object.__setattr__(self, "train", replace(self.train, threads=1))
        _distinct("seeds", self.seeds)
        for seed in self.seeds:
            if seed < 0:
                raise ConfigError(
                    "{seeds}: " + str(seed) + " is not a seed; seeds are non-negative integers", seeds=NAME_ONLY
                )
        self.check()
        self._check_count()
        self._check_cells()
        self._check_size()

    def _normalise(self) -> None:
        """Grid fields as tuples of their element type, from any spelling of the list language."""
        for name, hint in field_types(type(self)).items():
            value = getattr(self, name)
            if name == "seeds":
                object.__setattr__(self, name, seeds_from(value))
            elif typing.get_origin(hint) is tuple and value is not None:
                element = typing.get_args(hint)[0]
                if element in (int, float, str):
                    object.__setattr__(self, name, parse_values(name, value, element))
                else:
                    object.__setattr__(self, name, tuple(value))

    def check(self) -> None:
        """Checks of the kind's own fields (each kind adds its own)."""

    def _grid(self) -> tuple[int, str]:
        sizes = {d: len(v) for d, v in self.axes().items()}
        return math.prod(sizes.values()), " × ".join(f"{n} {d}" for d, n in sizes.items())

    def _check_count(self) -> None:
        """At most ``MAX_CELLS`` cells (checked before the cells are built)."""
        cells, grid = self._grid()
        if cells > MAX_CELLS:
            raise ConfigError(
                f"the grid has {cells:,} cells ({grid}); a study holds at most {MAX_CELLS:,}: split it into "
                "several studies"
            )

    def _check_size(self) -> None:
        """A dataset this machine can hold (the store's template is built in memory)."""
        import psutil

        cells, grid = self._grid()
        inner = {d: len(v) for d, v in self.inner().items()}
        values = cells * sum(math.prod(inner[d] for d in var.dims) for var in self.schema())
        available = psutil.virtual_memory().available
        if values * 8 > available // 2:
            raise ConfigError(
                f"the study would store {values:,} values ({values * 8 / 2**30:.3g} GiB: {grid}, "
                + literal(", ".join(f"{n} {d}" for d, n in inner.items()))
                + f"), more than half of the {available / 2**30:.3g} GiB available: split the grid"
            )

    def _check_cells(self) -> None:
        kind = data_kind(self.dataset)
        dims = list(self.axes())
        fits: set[tuple[Any, ...]] = set()
        for cell in self.cells():
            try:
                cell.model.check_data(kind)
                key = (cell.model.depth, cell.model.width, cell.model.widen, cell.model.block)
                if key not in fits:
                    check_fits(cell.model, kind)
                    fits.add(key)
            except ConfigError as err:
                raise err.within(f"cell {cell.describe(dims)}") from None

    # -- the grid ----------------------------------------------------------------------
    def axes(self) -> dict[str, Sequence[Any]]:
        """The cell dimensions and their coordinate values, in order (seed last)."""
        raise NotImplementedError

    def inner(self) -> dict[str, Sequence[Any]]:
        """The inner dimensions a cell fills, and their coordinates."""
        return {"epoch": list(range(1, self.train.epochs + 1))}

    def extra_coords(self) -> dict[str, tuple[str, Sequence[Any]]]:
        """Non-index coordinates: name → (dimension, values)."""
        return {}

    def cell_configs(self, point: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
        """The configs of the cell at ``point`` (axis → label): by default an axis named
        like a ``ModelConfig`` field sets that field, and ``seed`` sets the training seed."""
        changes = {k: v for k, v in point.items() if k in _MODEL_FIELDS}
        return replace(self.model, **changes), replace(self.train, seed=point["seed"])

    def cells(self) -> list[Cell]:
        axes = self.axes()
        dims = list(axes)
        out = []
        for index in product(*(range(len(v)) for v in axes.values())):
            labels = tuple(axes[d][i] for d, i in zip(dims, index, strict=True))
            try:
                model, train_config = self.cell_configs(dict(zip(dims, labels, strict=True)))
            except ConfigError as err:
                raise err.within(f"cell {', '.join(f'{d}={v}' for d, v in zip(dims, labels, strict=True))}") from None
            out.append(Cell(tuple(index), labels, model, train_config))
        return out

    @classmethod
    def schema(cls) -> tuple[Variable, ...]:
        """Every variable a cell of this kind stores (besides the ``done`` mask)."""
        return HISTORY + OUTCOME + cls.variables

    def layout(self) -> Layout:
        return Layout(self.axes(), self.inner(), self.schema(), self.extra_coords(), {**COORDS, **self.coords})

    def measure(self, model: nn.Module, data: TensorData, cell: Cell) -> Values:
        """Compute one cell: train ``model`` (built from ``cell.model``) and measure it."""
        raise NotImplementedError

    def summarise(self, ds: xr.Dataset) -> xr.Dataset:
        """The finished dataset with what the kind derives from all its cells (a fit, a
        test across cells), written with the result. By default nothing is added. A
        variable added here must not share a name with a cell variable; it is derived
        again, never resumed from, when a study is continued."""
        return ds

    # -- helpers for kinds -------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **asdict(self)}, sort_keys=True)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default config of this kind, as ``to_json`` writes it (nested dicts).

        A resumed study whose stored config lacks an option added to odenet since it
        started accepts that option at its default (``StudyStore.open``).
        """
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.default is not MISSING:
                value = f.default
            elif f.default_factory is not MISSING:
                value = f.default_factory()
            else:
                continue
            values[f.name] = asdict(value) if is_dataclass(value) and not isinstance(value, type) else value
        return dict(json.loads(json.dumps(values, default=list)))

    @property
    def image(self) -> bool:
        return data_kind(self.dataset) == "image"

    def horizon_step(self, depth: int, horizon: float) -> float:
        """h = T / n at a fixed horizon T: n blocks per stage for conv nets, the depth for MLPs."""
        n = self.blocks(depth) // 3 if self.image else depth
        return horizon / n

    def check_design(self, horizon: float | None, step_sizes: Sequence[float] | None) -> None:
        """A step-size sweep: either ``step_sizes`` at fixed depth or a ``horizon``, not both."""
        if horizon is None:
            if step_sizes is not None:
                check_step_sizes("step_sizes", step_sizes)
            return
        if not (isinstance(horizon, (int, float)) and math.isfinite(horizon) and horizon > 0):
            raise ConfigError("{horizon} is not a positive number", horizon=horizon)
        if step_sizes:
            raise ConfigError(
                "give either {step_sizes} or a {horizon} (which sets h = horizon / blocks), not both",
                step_sizes=NAME_ONLY,
                horizon=NAME_ONLY,
            )

    def model_axis(self, name: str, values: Sequence[Any] | None) -> tuple[Any, ...]:
        """An axis over the ``ModelConfig`` field ``name``: ``values``, or the base model's value
        alone. Giving the axis and a non-default base value both is refused (which would win?)."""
        if values is None:
            return (getattr(self.model, name),)
        axis = f"{name}s"
        _distinct(axis, values)
        default = next(f.default for f in fields(ModelConfig) if f.name == name)
        if getattr(self.model, name) != default:
            raise ConfigError(
                "give either {" + name + "} (one value) or {" + axis + "} (an axis), not both",
                **{name: getattr(self.model, name), axis: NAME_ONLY},
            )
        return tuple(values)

    def blocks(self, depth: int) -> int:
        """Residual blocks of a network of this depth (3n for conv nets, depth for MLPs)."""
        return 3 * blocks_per_stage(depth, self.model.block) if self.image else depth


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every dataclass field of ``cls`` (annotations are strings here);
    ``X | None`` is read as ``X``. The spec reader and the normalisation of grid fields use it."""
    if cls not in _FIELD_TYPES:
        hints = typing.get_type_hints(cls)
        _FIELD_TYPES[cls] = {f.name: _strip_none(hints[f.name]) for f in fields(cls)}
    return _FIELD_TYPES[cls]


def _strip_none(hint: Any) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


# -- checks the kinds share --------------------------------------------------------------
def _distinct(name: str, values: Sequence[Any]) -> None:
    if len(values) == 0:
        raise ConfigError("{" + name + "}: the list is empty; give at least one value", **{name: NAME_ONLY})
    if len(set(values)) != len(values):
        shown = literal(", ".join(map(str, values)))
        raise ConfigError("{" + name + "}: " + shown + " repeats a value; give each once", **{name: NAME_ONLY})


def check_axis(name: str, values: Sequence[Any]) -> None:
    """A grid axis: at least one value, none twice."""
    _distinct(name, values)


def check_solvers(name: str, solvers: Sequence[str], fixed_only: bool = False) -> None:
    """Known solver names; with ``fixed_only``, no adaptive ones."""
    _distinct(name, solvers)
    for s in solvers:
        try:
            method = get_method(s)
        except UnknownSolverError:
            raise ConfigError(
                "{" + name + "}: " + literal(repr(s)) + " is not a known solver; choose one of: " + ", ".join(METHODS),
                **{name: NAME_ONLY},
            ) from None
        if fixed_only and method.adaptive:
            raise ConfigError(
                "{" + name + "}: " + s + " is adaptive; this study needs fixed-step solvers (euler, midpoint, rk4, …)",
                **{name: NAME_ONLY},
            )


def check_step_sizes(name: str, values: Sequence[float]) -> None:
    _distinct(name, values)
    for h in values:
        if not (math.isfinite(h) and h > 0):
            raise ConfigError(
                "{" + name + "}: " + repr(h) + " is not a positive step size (e.g. 0.1)", **{name: NAME_ONLY}
            )


def init_and_final(init: xr.Dataset, final: xr.Dataset) -> dict[str, xr.DataArray]:
    """Two measurements of the same probes stacked along ``when`` = init, final, by name."""
    both = xr.concat([init, final], dim="when", coords="minimal", compat="override")
    return {str(name): var for name, var in both.data_vars.items()}


def inner_blocks(epochs: int, blocks: int) -> dict[str, Sequence[Any]]:
    """epoch, when (init / final) and block: the inner dims of kinds that probe every block."""
    return {"epoch": list(range(1, epochs + 1)), "when": ["init", "final"], "block": list(range(blocks))}


# -- computing a cell --------------------------------------------------------------------
def run_cell(study: Study, cell: Cell) -> Values:
    """Compute one cell: load the data, build the model with the cell's seed, measure.

    The whole cell (probes before and after training too) runs on the cell's
    ``train.threads`` CPU threads, whichever process or machine computes it.
    """
    with torch_threads(cell.train.threads):
        data = cached_data(study.dataset, study.data_dir, cell.train.seed)
        torch.manual_seed(cell.train.seed)
        model = build_model(cell.model, data)
        return study.measure(model, data, cell)


@lru_cache(maxsize=4)
def cached_data(name: str, data_dir: str | None, seed: int) -> TensorData:
    """One load per process and seed: cells of one seed share the split."""
    return load_dataset(name, data_dir, False, seed=seed)


def train_cell(model: nn.Module, data: TensorData, cell: Cell) -> tuple[dict[str, Any], History]:
    """Train the cell's model; the history and outcome variables, and the history itself."""
    start = time.perf_counter()
    history = train(model, data, cell.train, progress=False)
    seconds = time.perf_counter() - start
    values: dict[str, Any] = {}
    for var in HISTORY:
        series = np.full(cell.train.epochs, np.nan)
        series[: history.epochs] = history.series[var.name]
        values[var.name] = series
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


def last_recorded(da: xr.DataArray, dim: str) -> xr.DataArray:
    """The last finite value along ``dim`` (NaN where there is none): a history that
    stopped early, or a NaN-padded one, ends at its last recorded epoch."""
    values = da.transpose(..., dim).values
    finite = np.isfinite(values)
    last = values.shape[-1] - 1 - np.argmax(finite[..., ::-1], axis=-1)
    out = np.take_along_axis(values, last[..., None], axis=-1)[..., 0]
    out = np.where(finite.any(axis=-1), out, np.nan)
    dims = [d for d in da.transpose(..., dim).dims if d != dim]
    return xr.DataArray(out, dims=dims, coords={d: da[d] for d in dims if d in da.coords})
