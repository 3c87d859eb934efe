"""The boot server's counters and its rate-limited warnings, shared by its parts.

Every part (the listeners, TFTP, HTTP) counts what happens (``tftp-done``,
``dhcp-deferred``...: ``beo boot status`` and SIGUSR1 show them) and warns
about datagrams through one :class:`Counters`, so that a flood of one kind of
bad datagram cannot fill the log.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("beokit.boot")
WARN_WINDOW, WARN_BURST = 10.0, 20  # per-datagram warnings: at most 20 a kind in 10 s


class Counters:
    """Named event counts, and warnings at most :data:`WARN_BURST` per kind in
    :data:`WARN_WINDOW` seconds."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.warned: dict[str, list] = {}  # kind -> [window start, warnings, suppressed]

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def warn(self, kind: str, fmt: str, *args: object) -> None:
        """A warning caused by a datagram: at most ``WARN_BURST`` per kind in
        ``WARN_WINDOW`` seconds, then one line saying how many were left out (a flood
        must not fill the log)."""
        now = time.monotonic()
        w = self.warned.setdefault(kind, [now, 0, 0])
        if now - w[0] >= WARN_WINDOW:
            if w[2]:
                log.warning("%d more %s warnings in the last %.0f s (not shown)", w[2], kind,
                            now - w[0])  # fmt: skip
            w[:] = [now, 0, 0]
        if w[1] < WARN_BURST:
            w[1] += 1
            log.warning(fmt, *args)
        else:
            w[2] += 1
