"""The list language of study grids, shared by TOML specs and the command line.

A grid axis is written the same way everywhere:

* ``20,32,56`` or a TOML list ``[20, 32, 56]`` — the values as given;
* ``log:START:STOP:COUNT`` — COUNT log-spaced numbers from START to STOP (both > 0),
  rounded to 6 significant digits, e.g. ``log:0.03:3:5`` → 0.03, 0.0949, 0.3, 0.949, 3;
* for seeds, a single count ``3`` means seeds 0, 1, 2 (a list is taken as given).

``parse_values`` turns any of these into a tuple of the axis's element type; errors are
``ConfigError``s naming the parameter, so each front end shows its own spelling of it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from odenet.errors import NAME_ONLY, ConfigError, literal

__all__ = ["log_spaced", "parse_values", "seeds_from"]

_LOG = re.compile(r"\s*log:([^:]+):([^:]+):([^:]+)\s*")


def log_spaced(start: float, stop: float, count: int) -> tuple[float, ...]:
    """``count`` values from ``start`` to ``stop``, evenly spaced in log, 6 significant digits."""
    if count == 1:
        return (start,)
    return tuple(float(f"{start * (stop / start) ** (i / (count - 1)):.6g}") for i in range(count))


def _element(name: str, item: Any, kind: type) -> Any:
    shown = literal(repr(item))
    if kind is str:
        if not isinstance(item, str):
            raise ConfigError("{" + name + "}: " + shown + " is not a name", **{name: NAME_ONLY})
        return item.strip()
    if kind is int:
        try:
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise ValueError
            return int(item.strip() if isinstance(item, str) else item)
        except (TypeError, ValueError):
            raise ConfigError(
                "{" + name + "}: " + shown + " is not an integer; write a comma-separated list such as 20,32,56",
                **{name: NAME_ONLY},
            ) from None
    try:
        if isinstance(item, bool):
            raise ValueError
        return float(item.strip() if isinstance(item, str) else item)
    except (TypeError, ValueError):
        raise ConfigError(
            "{" + name + "}: " + shown + " is not a number; write a list such as 0.1,0.3,1 or log:0.01:1:7",
            **{name: NAME_ONLY},
        ) from None


def parse_values(name: str, value: Any, kind: type) -> tuple[Any, ...]:
    """A grid axis as a tuple of ``kind`` (int, float or str) from any accepted spelling.

    name: the parameter (for messages). value: a string in the list language, a list or
    tuple, or a single value.
    """
    if isinstance(value, str):
        match = _LOG.fullmatch(value)
        if match and kind is float:
            try:
                lo, hi, n = float(match[1]), float(match[2]), int(match[3])
            except ValueError:
                raise ConfigError(
                    "{" + name + "}: write log:START:STOP:COUNT, e.g. log:0.01:1:7", **{name: NAME_ONLY}
                ) from None
            if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi) and 1 <= n <= 10_000):
                raise ConfigError(
                    "{" + name + "}: log-spaced values need finite START, STOP > 0 and 1 ≤ COUNT ≤ 10000",
                    **{name: NAME_ONLY},
                )
            return log_spaced(lo, hi, n)
        items: Sequence[Any] = [item for item in value.split(",") if item.strip()]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        items = [value]
    return tuple(_element(name, item, kind) for item in items)


def seeds_from(value: Any) -> tuple[int, ...]:
    """``3`` or ``"3"`` → (0, 1, 2); a list (or ``"0,5,7"``) is taken as given."""
    if isinstance(value, str) and "," not in value:
        value = value.strip()
        if not value.lstrip("-").isdigit():
            raise ConfigError("{seeds}: give a count (3 → seeds 0, 1, 2) or a list such as 0,5,7", seeds=value)
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(
                "{seeds} is not a positive count; give e.g. 3 (seeds 0, 1, 2) or a list of seeds", seeds=value
            )
        return tuple(range(value))
    return parse_values("seeds", value, int)
