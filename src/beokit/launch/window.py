"""An agent's launch window: how many of its launches may be in flight at once.

A launch is in flight from its start until its host is up (a leaf's marker
line, an agent's hello) or it failed.  The window never holds more than
``limit`` (``-k``).  With ``adaptive`` (a real remote backend: ssh, rsh, a
template; not ``-R exec``, whose launches are local processes and a
simulated delay) it holds fewer while launches come up slower than the
first ones did, a delay-based window (as TCP Vegas):

- it starts at ``floor`` = 2 launches per CPU of this host (at least 4, at
  most ``limit``): this host's own share of a handshake (the client's key
  exchange) never queues on its CPUs at that;
- each launch that comes up within GROW times the fastest so far opens it by
  one (a window of w opens to 2w in one launch time, as a slow start);
- each one slower than SHRINK times the fastest closes it by one, not below
  ``floor``.

On one box, where every ssh handshake shares the CPUs with its sshd, 64
handshakes at once each take ~64/2 times as long as one and all end last:
64 hosts took 9-13 s at a window of 32 or 64 against 7-8 s at 8 (and clush's
7-9 s, whose single loop starts them no faster than it reaps them).  On a
cluster, where a handshake's time does not grow with the number in flight,
the window opens to ``limit`` in a few launch times.

A launch not up after ``stale_after()`` (four times the fastest, at least
0.5 s; 1 s before any came up) stops counting against the adaptive window,
only against ``limit``: hanging hosts do not hold the window shut.

The slot's start and end are keyed by the thread that holds it (each launch
runs in a thread of its own, which calls :meth:`begin` and :meth:`release`).

Standard library only (shipped with the agent).
"""

from __future__ import annotations

import math
import os
import threading
import time

GROW = 1.5  # a launch up within GROW x the fastest opens the window by one
SHRINK = 2.0  # one slower than SHRINK x the fastest closes it by one
PER_CPU = 2  # the adaptive window's floor: launches per CPU of this host (at least 4)
POLL = 0.05  # how often a waiting acquire looks again while launches may go stale


class LaunchWindow:
    """Slots for launches in flight: ``acquire`` (bounded by ``timeout``), ``begin``
    when the launch starts, ``release`` when it is up or failed, ``up(seconds)``
    with its time to come up (the window's measure)."""

    def __init__(self, limit: int, adaptive: bool = False, cpus: int | None = None) -> None:
        self.limit = max(1, limit)
        floor = max(4, PER_CPU * (cpus or os.cpu_count() or 1))
        self.floor = min(self.limit, floor) if adaptive else self.limit
        self.size = self.floor  # launches allowed in flight now (young ones)
        self.cond = threading.Condition()
        self.held = 0  # slots taken (never more than limit)
        self.starts: dict[int, float] = {}  # thread -> when its launch began
        self.fastest = math.inf

    # ---- slots
    def acquire(self, timeout: float | None = None) -> bool:
        """Take a slot (wait while the window is full; False after ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while not self._free():
                wait = POLL if self.starts and self.size < self.limit else None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    wait = left if wait is None else min(wait, left)
                self.cond.wait(wait)
            self.held += 1
            return True

    def begin(self) -> None:
        """The calling thread's launch starts now (it holds a slot)."""
        with self.cond:
            self.starts[threading.get_ident()] = time.monotonic()

    def release(self) -> None:
        """The calling thread's launch is up, failed or given up: its slot is free."""
        with self.cond:
            self.held = max(0, self.held - 1)
            self.starts.pop(threading.get_ident(), None)
            self.cond.notify_all()

    def up(self, seconds: float) -> None:
        """A launch came up ``seconds`` after it began: open or close the window."""
        with self.cond:
            if self.floor >= self.limit:
                return
            self.fastest = min(self.fastest, seconds)
            if seconds <= GROW * self.fastest:
                self.size = min(self.limit, self.size + 1)
            elif seconds > SHRINK * self.fastest:
                self.size = max(self.floor, self.size - 1)
            self.cond.notify_all()

    # ---- what is free
    def stale_after(self) -> float:
        """Seconds after which a launch not up no longer counts against ``size``."""
        return 1.0 if self.fastest == math.inf else max(0.5, 4 * self.fastest)

    def _free(self) -> bool:
        if self.held >= self.limit:
            return False
        if self.size >= self.limit:
            return True
        now, stale = time.monotonic(), self.stale_after()
        old = sum(1 for t in self.starts.values() if now - t >= stale)
        return self.held - old < self.size
