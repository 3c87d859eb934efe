"""Structured events for programs that drive nettee (``NETTEE_EVENT_FD``).

If the environment variable ``NETTEE_EVENT_FD`` holds the number of an
open, writable file descriptor, the node writes one JSON object per line to
it at these moments:

* ``{"event": "formed", "t": S, "children": N, "nodes": M}``: the whole tree
  below this node has joined (at the root: the chain is formed); ``nodes``
  counts this node and every node below it;
* ``{"event": "healed", "t": S, "lost": NAME, "adopted_by": NAME, ...}``: a
  ``-heal`` adoption completed here (the node that adopted writes it);
* ``{"event": "end", "t": S, "status": "NONE" | CODE, "bytes": N, ...}``:
  just before the process exits (``status``: the first of the codes this
  node saw, in the man page's order; ``codes``: all of them; ``exit``: the
  exit status; ``digest``: this node's ``-digest``, "xxh3_128:<hex>", or "");
  where the stream ran: ``first``, ``eof`` and ``relayed``
  (when its first byte came in, its input ended, and every output of this
  node had the last byte; each in seconds since the node started, like
  ``t``), and ``start``, the node's start on the machine's monotonic clock
  (``CLOCK_MONOTONIC``: one clock for every process of a machine), so that
  a program can put the nodes of one machine on one time line.

``t`` is seconds since the node started.  Readers must ignore keys they do
not know.  Writing never holds the node up for long: a descriptor that
cannot take a line within :data:`WRITE_WAIT` seconds, or whose reader is
gone (EPIPE), is given up and nothing more is written to it; that is never
a failure of the stream.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time

ENV = "NETTEE_EVENT_FD"
WRITE_WAIT = 1.0


class Events:
    """The event writer; without ``NETTEE_EVENT_FD`` (or with a bad one) it does nothing."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.fd = -1
        text = env.get(ENV, "")
        if text.isdigit():
            fd = int(text)
            try:
                os.fstat(fd)
                os.set_inheritable(fd, False)  # not for -cmd/-process children
                self.fd = fd
            except OSError:
                pass

    def since(self, clock: float) -> float:
        """``clock`` (a ``time.monotonic()``) in seconds since the node started."""
        return round(clock - self.started, 4)

    def emit(self, event: str, **fields: object) -> None:
        if self.fd < 0:
            return
        doc = {"event": event, "t": round(time.monotonic() - self.started, 4), **fields}
        line = (json.dumps(doc, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self.fd < 0:
                return
            try:
                _, ready, _ = select.select([], [self.fd], [], WRITE_WAIT)
                if not ready:
                    raise BlockingIOError("no room for an event line")
                done = 0
                while done < len(line):
                    done += os.write(self.fd, line[done:])
            except (OSError, ValueError):  # EPIPE, EBADF, a stuck reader: stop writing
                self.fd = -1
