"""``-digest`` where the stream lands in a regular file: hash the file as it grows."""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable


class FileHasher:
    """Digest of a regular file that is being written (or read) by the relay.

    Where the stream lands in a regular file (a node's ``-out FILE``, the
    root's ``-in FILE``), the digest needs no copy: a thread follows the
    file as it grows and hashes it through ``mmap`` from the page cache.
    ``progress()`` says how many bytes of the file hold the stream so far.
    """

    WINDOW = 64 << 20  # bytes mapped at a time
    PERIOD = 0.05  # seconds between looks at the file: a few MB behind, one mmap per look

    def __init__(self, fd: int, progress: Callable[[], int], hasher: object) -> None:
        self.fd = fd
        self.progress = progress
        self.hasher = hasher
        self.hashed = 0
        self.error: OSError | None = None
        self._final = -1
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="file-digest", daemon=True)
        self._thread.start()

    def _hash_to(self, target: int) -> None:
        page = mmap.ALLOCATIONGRANULARITY
        while self.hashed < target:
            base = self.hashed - self.hashed % page
            stop = min(target, base + self.WINDOW)
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # fault in at once
            with mmap.mmap(self.fd, stop - base, flags=flags, prot=mmap.PROT_READ,
                           offset=base) as m:  # fmt: skip
                with memoryview(m) as mv:
                    self.hasher.update(mv[self.hashed - base :])  # type: ignore[attr-defined]
            self.hashed = stop

    def _run(self) -> None:
        try:
            while True:
                final = self._final
                self._hash_to(self.progress() if final < 0 else final)
                if final >= 0:
                    return
                self._wake.wait(self.PERIOD)
        except (OSError, ValueError) as exc:  # the file shrank or vanished under us
            self.error = exc if isinstance(exc, OSError) else OSError(0, str(exc))

    def finish(self, total: int) -> None:
        """Hash up to ``total`` bytes and stop."""
        self._final = total
        self._wake.set()
        self._thread.join()
