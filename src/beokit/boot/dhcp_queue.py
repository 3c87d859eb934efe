"""DHCP requests waiting for their turn, and the rule for an overloaded server: no I/O.

When requests arrive faster than the server answers them, answering them in
arrival order makes the goodput collapse: the queue grows until every answer
comes after its client has stopped waiting, and all the work is lost.  The
server instead reads everything that has arrived into this queue (so the
kernel's buffer does not overflow) and answers by a fixed rule:

1. **Exchanges in progress first.**  REQUEST, DECLINE, RELEASE and INFORM
   (class "urgent") before DISCOVER and anything else (class "new"): a REQUEST
   completes an exchange the server has already paid an OFFER for, a DISCOVER
   only starts one.  So when the server can answer C requests a second, about
   C / 2 exchanges complete every second, however many more DISCOVERs come.
2. **Arrival order within a class** (no client overtakes another of its class).
3. **Late DISCOVERs are dropped, not answered**: one that waited more than
   :data:`DISCOVER_DEADLINE` seconds since the kernel received it — its client
   has retransmitted or is about to (RFC 2131 clients after 4 s, iPXE and
   perfdhcp give up on an answer after 1 s: 0.8 s leaves the reply and the
   REQUEST time to travel), and an answer now would cost as much as a useful
   one.  Anything that waited more than :data:`STALE` seconds is dropped too.
4. **Bounded**: at most :data:`LIMIT` requests wait; past that the oldest
   DISCOVER makes room (or, with only exchanges in progress waiting, the
   arriving request is dropped).

Every request dropped is counted by reason (``dhcp-shed-late``,
``dhcp-shed-stale``, ``dhcp-shed-full``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

DISCOVER_DEADLINE = 0.8  # seconds a DISCOVER may wait before it is dropped unanswered
STALE = 3.0  # seconds any request may wait
LIMIT = 16384  # requests waiting at once
URGENT = frozenset((3, 4, 7, 8))  # REQUEST, DECLINE, RELEASE, INFORM
_MSG_TYPE = 53


def message_type(data: bytes) -> int | None:
    """The DHCP message type of a datagram, looked up cheaply: option 53 is almost always
    the first option; otherwise the options are walked (None: none found)."""
    if len(data) > 242 and data[240] == _MSG_TYPE and data[241] == 1:
        return data[242]
    i, n = 240, len(data)
    while i + 1 < n:
        code = data[i]
        if code == 0:
            i += 1
            continue
        if code == 255:
            return None
        if code == _MSG_TYPE and data[i + 1] == 1 and i + 2 < n:
            return data[i + 2]
        i += 2 + data[i + 1]
    return None


class DhcpQueue:
    """The waiting requests (each an opaque item with its arrival time) and the rule
    above; ``counts`` says what was dropped and why."""

    def __init__(self, *, deadline: float = DISCOVER_DEADLINE, stale: float = STALE,
                 limit: int = LIMIT) -> None:  # fmt: skip
        self.deadline, self.stale, self.limit = deadline, stale, limit
        self.urgent: deque[tuple[float, Any]] = deque()
        self.new: deque[tuple[float, Any]] = deque()
        self.counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.urgent) + len(self.new)

    def _drop(self, why: str) -> None:
        self.counts[why] = self.counts.get(why, 0) + 1

    def push(self, item: Any, data: bytes, arrived: float) -> None:
        """Queue a request that arrived at ``arrived`` (seconds, the clock :meth:`pop`
        is given)."""
        if len(self.urgent) + len(self.new) >= self.limit:
            if not self.new:
                self._drop("dhcp-shed-full")
                return
            self.new.popleft()
            self._drop("dhcp-shed-full")
        if message_type(data) in URGENT:
            self.urgent.append((arrived, item))
        else:
            self.new.append((arrived, item))

    def pop(self, now: float) -> Any | None:
        """The next request to answer at ``now``, by the rule; None when none waits."""
        urgent, new = self.urgent, self.new
        while urgent:
            arrived, item = urgent.popleft()
            if now - arrived <= self.stale:
                return item
            self._drop("dhcp-shed-stale")
        while new:
            arrived, item = new.popleft()
            if now - arrived <= self.deadline:
                return item
            self._drop("dhcp-shed-late")
        return None
