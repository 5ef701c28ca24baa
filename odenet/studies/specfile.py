"""Study specifications as TOML files (``studies/NAME.toml``).

A spec names its kind, the grid and the settings that differ from the defaults::

    kind = "depth"              # any registered kind: odenet.studies.KINDS
    out = "degradation.nc"      # relative to the spec file
    workers = 2                 # local Dask workers (optional)
    dataset = "digits"
    seeds = 3                   # 0, 1, 2 (or a list)
    solvers = ["euler"]
    depths = [20, 32, 44, 56, 110]
    step_sizes = "log:0.03:3:5" # the list language of the command line works here too

    [model]                     # odenet.experiment.ModelConfig fields
    block = "preact"

    [train]                     # odenet.train.TrainConfig fields
    epochs = 15

The keys are the fields of the kind's class, read from the class itself: a field whose
type is a config dataclass is a table (``[model]``, ``[train]``, ``[probe]``), a tuple of
one is an array of tables (``[[models]]``, read by the element type's ``from_table``),
anything else a value. Unknown keys are errors, so a typo never silently runs the default.
"""

from __future__ import annotations

import tomllib
import typing
from dataclasses import MISSING, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from odenet.errors import NAME_ONLY, ConfigError, literal
from odenet.studies.base import KINDS, Study, field_types

__all__ = ["SpecFile", "load_study", "toml_name"]

# Keys of a spec that are not fields of the study: where the result goes, how it runs.
_RUN_KEYS = ("kind", "out", "workers")


@dataclass(frozen=True)
class SpecFile:
    """A parsed spec: the study, where its result goes, how many local workers to use."""

    study: Study
    out: Path
    workers: int = 1


def toml_name(param: str, value: Any) -> str:
    """How a spec writes a parameter: ``step_size = 0.0``."""
    if value is NAME_ONLY:
        return param
    if isinstance(value, bool):
        return f"{param} = {str(value).lower()}"
    if isinstance(value, str):
        return f'{param} = "{value}"'
    return f"{param} = {value!r}"


def load_study(path: str | Path) -> SpecFile:
    """Read and validate a spec; every problem is a ``ConfigError`` naming the file and the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read {_literal(path)}: {_literal(err.strerror or err)}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{_literal(path)} is not valid TOML: {_literal(err)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{_literal(path)} is not a UTF-8 text file; give a .toml spec") from None
    try:
        return _parse(raw, path)
    except ConfigError as err:
        raise err.within(str(path)) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{_literal(path)}: {_literal(err)}") from None


def _literal(text: Any) -> str:
    return literal(str(text))


def _parse(raw: dict[str, Any], path: Path) -> SpecFile:
    raw = dict(raw)
    kind = raw.pop("kind", None)
    if kind not in KINDS:
        raise ConfigError("{kind} is not a study kind; set kind to one of: " + ", ".join(KINDS), kind=kind)
    cls = KINDS[kind]
    out = raw.pop("out", f"{path.stem}.nc")
    if not isinstance(out, str):
        raise ConfigError("{out} is not a file name", out=out)
    workers = raw.pop("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("{workers} is not a positive integer", workers=workers)
    study = cls(**_arguments(cls, raw, kind))
    target = Path(out)
    return SpecFile(study, target if target.is_absolute() else path.parent / target, workers)


def _arguments(cls: type[Study], raw: dict[str, Any], kind: str) -> dict[str, Any]:
    types = field_types(cls)
    unknown = [k for k in raw if k not in types]
    if unknown:
        valid = sorted({*types, *_RUN_KEYS})
        raise ConfigError(f"unknown key {unknown[0]!r} for a {kind} study; valid keys: " + ", ".join(valid))
    args: dict[str, Any] = {}
    # Tables first, in field order, so that an array of tables can build on them (a
    # [[models]] entry starts from [model]).
    for f in fields(cls):
        if f.name not in raw:
            continue
        hint: Any = types[f.name]
        value = raw[f.name]
        if is_dataclass(hint):
            args[f.name] = _table(typing.cast(type, hint), value, f.name, _default(cls, f.name))
        elif typing.get_origin(hint) is tuple and is_dataclass(typing.get_args(hint)[0]):
            element = typing.get_args(hint)[0]
            if not isinstance(value, list):
                raise ConfigError("{" + f.name + "} must be an array of tables ([[" + f.name + "]])", **{f.name: value})
            base = args.get("model", _default(cls, "model"))
            args[f.name] = tuple(element.from_table(t, base) for t in value)
        else:
            args[f.name] = tuple(value) if isinstance(value, list) else value
    return args


def _default(cls: type[Study], name: str) -> Any:
    for f in fields(cls):
        if f.name == name:
            return f.default_factory() if f.default_factory is not MISSING else f.default
    raise KeyError(name)


def _table(cls: type, table: Any, name: str, base: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError("[" + name + "] must be a table")
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - valid)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in [{name}]; valid keys: " + ", ".join(sorted(valid)))
    try:
        return replace(base, **table)
    except ConfigError as err:
        raise err.within(f"[{name}]") from None
