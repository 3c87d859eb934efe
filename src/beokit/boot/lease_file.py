"""The lease file: the lease database restored at start, written whenever it changes.

Each write is atomic (a temporary file of its own, fsync, rename: a crash
leaves the old file or the new one, whole) and runs in a worker thread, one at
a time: changes made while a write runs are written by the next one.  Once
:meth:`LeaseFile.close` has begun no new write starts; it waits for the one in
flight, then writes the final state itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

from beokit.boot.config import BootConfigError
from beokit.boot.leases import LeaseDB

log = logging.getLogger("beokit.boot")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old or the new file, whole.

    The temporary file has a name of its own (``.NAME.XXXXXXXX.tmp`` beside it), so
    that two writers never share one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class LeaseFile:
    """Where ``db`` is kept (``path``: None = nowhere; the config may change it)."""

    def __init__(self, path: Path | None, db: LeaseDB) -> None:
        self.path = path
        self.db = db
        self.writing: asyncio.Future | None = None
        self.closing = False

    def load(self) -> None:
        """Restore the leases (a usage error, naming the file, if it is not one of ours)."""
        p = self.path
        if p is None or not p.exists():
            return
        try:
            self.db.load_json(p.read_text(), time.time())
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise BootConfigError(f"bad lease file {str(p)!r}: {e}") from None
        log.info("restored %d leases and %d admitted nodes from %s", len(self.db.leases),
                 len(self.db.admitted), p)  # fmt: skip

    def schedule(self) -> None:
        """Write the database soon (in a worker thread), unless a write runs (the next
        one then takes the changes) or the server is stopping."""
        if self.path is None or self.writing is not None or self.closing:
            return
        self.db.changed = False
        text = self.db.to_json()
        loop = asyncio.get_running_loop()
        self.writing = loop.run_in_executor(None, write_atomic, self.path, text)
        self.writing.add_done_callback(self._written)

    def _written(self, fut: asyncio.Future) -> None:
        self.writing = None
        exc = fut.exception()
        if exc is not None:
            log.error("cannot write the lease file %s: %s", self.path, exc)
            self.db.changed = True  # (the next tick tries again)
        elif self.db.changed:
            self.schedule()

    async def close(self) -> None:
        """No new write; wait for the one in flight; write the final state."""
        self.closing = True
        if self.writing is not None:
            with contextlib.suppress(Exception):
                await self.writing
        if self.path is not None:
            write_atomic(self.path, self.db.to_json())
