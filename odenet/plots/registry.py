"""Which function draws the figures of which study kind: one registry, filled where the figures live.

Each figure module says which kind it draws with ``@figures_for("depth")`` beside its
function, so adding a study kind means adding a module, not editing a list elsewhere
that could fall out of step. A kind without registered figures is still plotted, with
the generic figures of ``odenet.plots.generic``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import xarray as xr
from matplotlib.figure import Figure

__all__ = ["FIGURES", "FigureFunction", "figures_for", "unregister"]

# A study's figures: the dataset in, the figures by file stem (e.g. "depth-accuracy") out.
FigureFunction = Callable[[xr.Dataset], dict[str, Figure]]
F = TypeVar("F", bound=FigureFunction)

# Study kind → the function that draws its figures; filled by ``figures_for``.
FIGURES: dict[str, FigureFunction] = {}


def figures_for(kind: str) -> Callable[[F], F]:
    """Decorator: ``fn`` draws the figures of studies whose ``attrs["study"]`` is ``kind``.

    Registering the same function again is harmless (a module imported twice); a second,
    different function for one kind is refused, since one of the two would be silently
    ignored and its figures never drawn.
    """

    def register(fn: F) -> F:
        known = FIGURES.get(kind)
        if known is not None and known is not fn:
            raise ValueError(
                f"figures for study kind {kind!r} are already drawn by {known.__module__}.{known.__qualname__}; "
                f"call odenet.plots.unregister({kind!r}) first to replace them"
            )
        FIGURES[kind] = fn
        return fn

    return register


def unregister(kind: str) -> FigureFunction | None:
    """Forget the figures of ``kind`` (it falls back to the generic ones); return the function, if any.

    Unknown kinds are ignored so that a test can clean up unconditionally.
    """
    return FIGURES.pop(kind, None)
