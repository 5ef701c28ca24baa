"""Study specifications as TOML files (``studies/NAME.toml``).

A spec names its kind, the grid and the settings that differ from the defaults::

    kind = "depth"              # depth | stability | convergence | compare
    out = "degradation.nc"      # relative to the spec file
    dataset = "digits"
    seeds = 3                   # 0, 1, 2 (or a list)
    solvers = ["euler"]
    depths = [20, 32, 44, 56, 110]
    archs = ["residual", "plain"]

    [model]                     # odenet.experiment.ModelConfig fields
    block = "preact"

    [train]                     # odenet.train.TrainConfig fields
    epochs = 15

A ``compare`` spec lists its variants as ``[[models]]`` tables with a ``name`` and
``ModelConfig`` fields (over ``[model]``); a ``stability`` spec may add ``[probe]``.
Unknown keys are errors, so a typo never silently runs the default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from odenet.experiment import ModelConfig
from odenet.studies.spec import CompareStudy, ConvergenceStudy, DepthStudy, ProbeConfig, StabilityStudy, Study, Variant
from odenet.train import TrainConfig

__all__ = ["KINDS", "SpecFile", "load_study", "seeds_from"]

KINDS: dict[str, type[Study]] = {
    "depth": DepthStudy,
    "stability": StabilityStudy,
    "convergence": ConvergenceStudy,
    "compare": CompareStudy,
}


@dataclass(frozen=True)
class SpecFile:
    """A parsed spec: the study, where its result goes, how many local workers to use."""

    study: Study
    out: Path
    workers: int = 1


def seeds_from(value: int | list[int]) -> tuple[int, ...]:
    """``3`` → (0, 1, 2); a list is taken as given."""
    if isinstance(value, bool):
        raise ValueError(f"seeds: {value!r} is neither a count nor a list of seeds")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"seeds: {value} is not a positive count; give e.g. 3 (seeds 0, 1, 2) or a list of seeds")
        return tuple(range(value))
    return tuple(value)


def load_study(path: str | Path) -> SpecFile:
    """Read and validate a spec; every problem is a ``ValueError`` naming the file and the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    try:
        return _parse(raw, path)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def _parse(raw: dict[str, Any], path: Path) -> SpecFile:
    raw = dict(raw)
    kind = raw.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"kind = {kind!r}; set kind to one of: {', '.join(KINDS)}")
    cls = KINDS[kind]
    out = Path(raw.pop("out", f"{path.stem}.nc"))
    workers = raw.pop("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers = {workers!r}; give a positive integer")
    model = _table(ModelConfig, raw.pop("model", {}), "model", ModelConfig(depth=20))
    args: dict[str, Any] = {"model": model}
    args["train"] = _table(TrainConfig, raw.pop("train", {}), "train", TrainConfig())
    if "seeds" in raw:
        args["seeds"] = seeds_from(raw.pop("seeds"))
    if cls is StabilityStudy and "probe" in raw:
        args["probe"] = _table(ProbeConfig, raw.pop("probe"), "probe", ProbeConfig())
    if cls is CompareStudy:
        args["variants"] = tuple(_variant(t, model) for t in raw.pop("models", []))
    allowed = {f.name for f in fields(cls)} - {"model", "train", "seeds", "probe", "variants"}
    for key, value in raw.items():
        if key not in allowed:
            valid = sorted(allowed | {"kind", "out", "workers", "seeds", "model", "train"})
            raise ValueError(f"unknown key {key!r} for a {kind} study; valid keys: {', '.join(valid)}")
        args[key] = tuple(value) if isinstance(value, list) else value
    out = out if out.is_absolute() else path.parent / out
    return SpecFile(cls(**args), out, workers)


def _table(cls: type, table: Any, name: str, base: Any) -> Any:
    if not isinstance(table, dict):
        raise ValueError(f"[{name}] must be a table")
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - valid)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in [{name}]; valid keys: {', '.join(sorted(valid))}")
    return replace(base, **table)


def _variant(table: Any, base: ModelConfig) -> Variant:
    if not isinstance(table, dict) or "name" not in table:
        raise ValueError('every [[models]] entry needs a name, e.g. name = "ODE-Net"')
    table = dict(table)
    name = str(table.pop("name"))
    return Variant(name, _table(ModelConfig, table, f"models.{name}", base))
