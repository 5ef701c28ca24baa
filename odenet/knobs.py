"""Knobs: the fields of odenet's config dataclasses, and the checks they share.

A knob is a dataclass field with its default and a one-line help text in its metadata.
Front ends are generated from knobs: the command line (``odenet_cli.options``) makes one
option per knob, with the field's name, type, default and help, and the TOML spec reader
accepts the same names. So a default or a help text is written once, here in the
library, next to the rule that checks the value.

Metadata keys: ``help`` (the sentence), ``off`` (for a bool: the name of its False state,
e.g. ``plain`` for ``residual``), ``choices`` (a callable returning the valid names, for
a string whose values come from a registry), ``cli`` (False: not a command-line option).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import MISSING, field
from typing import Any

from odenet.errors import ConfigError

__all__ = ["check_choice", "check_count", "check_finite", "knob"]


def knob(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    off: str | None = None,
    choices: Callable[[], Iterable[str]] | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with its help text (and how a front end shows it)."""
    metadata = {"help": help, "off": off, "choices": choices, "cli": cli}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_finite(name: str, value: Any, minimum: float = 0.0, *, strict: bool = True) -> float:
    """A finite number above ``minimum`` (or at least it, with ``strict=False``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = f"{'>' if strict else '≥'} {minimum:g}"
        raise ConfigError("{" + name + "} is not a finite number " + bound, **{name: value})
    return float(value)


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """An integer of at least ``minimum`` (bools are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError("{" + name + "} is not an integer ≥ " + str(minimum), **{name: value})
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """One of ``choices``; the message lists them."""
    options = list(choices)
    if value not in options:
        raise ConfigError(
            "{" + name + "} is not known; choose one of: " + ", ".join(map(str, options)), **{name: value}
        )
