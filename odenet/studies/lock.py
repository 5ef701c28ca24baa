"""One writer per study result: a lock file next to it, and stale locks recognised.

``StoreLock(out)`` creates ``out + ".lock"`` atomically (written to a private file, then
hard-linked into place, so a reader never sees a half-written lock) holding the writer's
process id, host and start time. A second writer is refused with the holder named. A
lock left by a process that no longer runs on this host (SIGKILL, a crash) is stale and
is taken over; a lock from another host cannot be checked and is reported with the
command that removes it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from odenet.errors import literal
from odenet.studies.store import StoreError

__all__ = ["StoreLock"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class StoreLock:
    """The writer's lock on the result ``path`` (and its store ``path.zarr``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).with_name(Path(path).name + ".lock")
        self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _stale(self, holder: dict[str, Any] | None) -> bool:
        if holder is None:  # unreadable: written by no odenet (locks are created whole)
            return True
        pid = holder.get("pid")
        return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)

    def acquire(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        try:
            for _ in range(2):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    holder = self._holder()
                    if self._stale(holder):
                        self.path.unlink(missing_ok=True)
                        continue
                    assert holder is not None
                    raise StoreError(
                        literal(
                            f"{self.path.with_suffix('')} is being written by process {holder.get('pid')} on "
                            f"{holder.get('host')} since {holder.get('since')}; wait for it to finish (then resume "
                            f"if cells are missing), or, if that process is gone, delete {self.path}"
                        )
                    ) from None
                self.held = True
                return
            raise StoreError(literal(f"could not take the lock {self.path}; delete it if no study is running"))
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
