"""``-digest`` where the stream lands in a regular file: hash the file as it grows.

A node's ``-out FILE`` and the root's ``-in FILE`` hold the stream, so the
digest needs no copy of it in the relay: a thread follows the file and
hashes what the relay has moved so far (``progress()``), a few MB behind.

It reads with ``pread`` into one reused buffer, not through a memory map:
a file truncated under a map (someone shrinks the root's source during the
stream) raises SIGBUS at the next access, which kills the process; ``pread``
just returns fewer bytes, and the hasher records the error (the root then
reports the changed source as LRF, see source.py).  The buffer is page-aligned
and every read but the last starts at a page boundary of the file: the
kernel's copy then runs 4-5x faster than into a ``bytearray`` (sinks.aligned_buffer).
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Callable

from beokit.nettee.sinks import aligned_buffer

BLOCK = 256 << 10  # bytes read and hashed at a time: one reused buffer that stays in L2
PAGE = mmap.PAGESIZE


class FileHasher:
    """Digest of a regular file that is being written (or read) by the relay.

    ``progress()`` says how many bytes of the file hold the stream so far.
    """

    PERIOD = 0.05  # seconds between looks at the file

    def __init__(self, fd: int, progress: Callable[[], int], hasher: object) -> None:
        self.fd = fd
        self.progress = progress
        self.hasher = hasher
        self.hashed = 0
        self.error: OSError | None = None
        self._buf = aligned_buffer(BLOCK)
        self._final = -1
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="file-digest", daemon=True)
        self._thread.start()

    def _hash_to(self, target: int) -> None:
        view = self._buf
        while self.hashed < target:
            want = min(target - self.hashed, BLOCK)
            got = os.preadv(self.fd, [view[:want]], self.hashed)
            if got <= 0:
                raise OSError(errno.EIO, f"the file ends at {self.hashed} bytes, "
                                         f"{target} were written to it")  # fmt: skip
            self.hasher.update(view[:got])  # type: ignore[attr-defined]
            self.hashed += got

    def _run(self) -> None:
        try:
            while True:
                final = self._final
                # while the file grows, only whole pages: every read starts on one
                self._hash_to(self.progress() // PAGE * PAGE if final < 0 else final)
                if final >= 0:
                    return
                self._wake.wait(self.PERIOD)
        except OSError as exc:  # the file shrank or vanished under us
            self.error = exc

    def finish(self, total: int) -> None:
        """Hash up to ``total`` bytes and stop."""
        self._final = total
        self._wake.set()
        self._thread.join()
