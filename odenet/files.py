"""Writing result files so that neither a reader nor Ctrl-C ever sees half of one.

A file is written beside its destination and moved into place (``os.replace`` is atomic
on one file system). Interrupts are held back while the file is written: an interrupt
raised inside a library's constructor (h5netcdf, h5py) leaves a half-built object whose
finaliser prints a traceback at exit, and a half-written temporary file behind it. The
interrupt is delivered, unchanged, as soon as the file is in place.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["deferred_interrupts", "write_atomically"]

_HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the duration of the block, then deliver them.

    The first held signal is passed to the handler that was installed before the block
    (Python's own, or a program's), so the program reacts exactly as it would have a
    moment earlier. Outside the main thread Python cannot install handlers; there the
    block runs unprotected (signals only ever reach the main thread's handlers anyway).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)

    previous: dict[int, Any] = {}
    try:
        for sig in _HELD:
            previous[int(sig)] = signal.signal(sig, hold)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if seen:
            _deliver(seen[0], previous[seen[0]])


def _deliver(signum: int, handler: Any) -> None:
    """Run what ``handler`` would have done for ``signum``."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL or handler is None:
        signal.raise_signal(signum)  # the default action (SIGINT's default is KeyboardInterrupt)
    # SIG_IGN: the signal was to be ignored, so it is


def write_atomically(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` for a temporary path beside ``path``, then move it to ``path``.

    Interrupts are deferred until the file is in place (or the write failed and the
    temporary file is gone), so an interrupted program keeps either the old file or the
    new one, never half of either, and exits without a finaliser's traceback.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with deferred_interrupts():
        try:
            write(tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
