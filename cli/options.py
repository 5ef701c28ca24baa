"""Click options generated from odenet's config dataclasses, and errors shown with flags.

Every knob of a config (``odenet.knobs.knob``) becomes one option: ``step_size`` →
``--step-size``, its type from the annotation (``Literal`` → ``Choice``, ``bool`` → a flag
pair, a tuple → a list in odenet's list language, parsed by the library), its default
and help from the field. Nothing here restates a default or a rule: the dataclass holds
the default, and constructing it checks the value. ``Flags`` maps a ``ConfigError``'s
parameter names to the flags of the command that raised it — the one place where
library names become command-line names.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass, replace
from typing import Any

import click
from click.core import ParameterSource

from odenet.errors import NAME_ONLY, ConfigError

__all__ = ["Flags", "Knob", "build", "knobs_of"]


@dataclass(frozen=True)
class Knob:
    """One command-line option made from a dataclass field.

    path: where the value goes (``("model", "depth")``); param: click's parameter name.
    """

    path: tuple[str, ...]
    param: str
    option: click.Option


def _kebab(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(hint: Any) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _default(f: Field[Any], defaults: Any) -> Any:
    if defaults is not None:
        return getattr(defaults, f.name)
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _show(value: Any) -> str | bool:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return False if value is None else str(value)


def _option(f: Field[Any], hint: Any, param: str, default: Any) -> click.Option:
    meta = f.metadata
    help_text = str(meta.get("help", ""))
    kind = _unwrap_optional(hint)
    flag = _kebab(param)
    if kind is bool:
        off = meta.get("off")
        if off:
            decl = f"{flag}/--{off}"
        elif default:
            decl = f"{flag}/--no-{param.replace('_', '-')}"
        else:  # a switch that is off unless given
            return click.Option([flag, param], is_flag=True, default=False, help=help_text)
        return click.Option([decl, param], default=bool(default), help=help_text, show_default=True)
    if typing.get_origin(kind) is typing.Literal:
        choices = [str(c) for c in typing.get_args(kind)]
        return click.Option([flag, param], type=click.Choice(choices), default=default, help=help_text,
                            show_default=True)  # fmt: skip
    if typing.get_origin(kind) is tuple:
        # The library parses the list language (``odenet.studies.lists``), as for TOML specs.
        return click.Option([flag, param], type=str, default=None, help=help_text, show_default=_show(default))
    choices_of = meta.get("choices")
    if choices_of is not None:
        help_text = f"{help_text} One of: {', '.join(choices_of())}."
    click_type = {int: click.INT, float: click.FLOAT}.get(kind, click.STRING)
    return click.Option(
        [flag, param], type=click_type, default=default, help=help_text, show_default=default is not None
    )


def knobs_of(
    cls: type,
    *,
    defaults: Any = None,
    path: tuple[str, ...] = (),
    prefix: str = "",
    exclude: Iterable[str] = (),
) -> list[Knob]:
    """One option per knob of ``cls`` (recursing into nested config dataclasses).

    defaults: an instance whose values are shown as defaults (e.g. a study's base model);
    exclude: field names (or dotted paths) that the command sets otherwise.
    """
    skip = set(exclude)
    hints = typing.get_type_hints(cls)
    out: list[Knob] = []
    for f in fields(cls):
        dotted = ".".join((*path, f.name))
        if f.name in skip or dotted in skip or not f.metadata.get("cli", True):
            continue
        hint = _unwrap_optional(hints[f.name])
        default = _default(f, defaults)
        if is_dataclass(hint):
            # model and train are flat on the command line; other nested configs are prefixed.
            inner = "" if f.name in ("model", "train") else f"{prefix}{f.name}_"
            out += knobs_of(hint, defaults=default, path=(*path, f.name), prefix=inner, exclude=skip)
            continue
        param = prefix + f.name
        out.append(Knob((*path, f.name), param, _option(f, hints[f.name], param, default)))
    return out


def build(cls: type, base: Any, knobs: Iterable[Knob], values: Mapping[str, Any], **fixed: Any) -> Any:
    """``base`` (an instance of ``cls``) with the knobs the user gave on the command line.

    Options left at their default are not passed, so the dataclass's own default (or the
    spec's value) holds; nested configs are rebuilt with ``replace`` and so re-validated.
    """
    ctx = click.get_current_context()
    changes: dict[tuple[str, ...], Any] = {}
    for knob in knobs:
        source = ctx.get_parameter_source(knob.param)
        if source is not None and source is not ParameterSource.DEFAULT:
            changes[knob.path] = values[knob.param]
    return _apply(base, changes, fixed)


def _apply(obj: Any, changes: Mapping[tuple[str, ...], Any], fixed: Mapping[str, Any]) -> Any:
    direct = {path[0]: value for path, value in changes.items() if len(path) == 1}
    nested: dict[str, dict[tuple[str, ...], Any]] = {}
    for path, value in changes.items():
        if len(path) > 1:
            nested.setdefault(path[0], {})[path[1:]] = value
    for name, inner in nested.items():
        direct[name] = _apply(getattr(obj, name), inner, {})
    return replace(obj, **direct, **fixed)


class Flags:
    """How a command writes a library parameter: the one map from names to flags."""

    def __init__(self, knobs: Iterable[Knob], extra: Mapping[str, str] | None = None) -> None:
        self.options: dict[str, click.Option] = {}
        for knob in knobs:
            self.options.setdefault(knob.path[-1], knob.option)
            self.options[knob.param] = knob.option
        self.extra = dict(extra or {})

    def __call__(self, param: str, value: Any) -> str:
        option = self.options.get(param)
        if option is None:
            if param in self.extra:
                flag = self.extra[param]
                return flag if value is NAME_ONLY or value is True else f"{flag} {value}"
            return param if value is NAME_ONLY else f"{param}={value!r}"
        if value is NAME_ONLY:
            return option.opts[0]
        if option.is_flag:
            return option.opts[0] if value else (option.secondary_opts or [f"not {option.opts[0]}"])[0]
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        return f"{option.opts[0]} {value}"

    def usage(self, err: ConfigError) -> click.UsageError:
        """The library's sentence with this command's flags: a usage error (exit 2)."""
        return click.UsageError(err.render(self))
