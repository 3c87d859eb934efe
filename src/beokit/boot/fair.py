"""Sharing the boot server's bandwidth, without I/O (the seed's progression).

Each timer tick the server counts the bytes and packets it sent and checks
that every active transfer received a packet in the last half second. With
no cap, transfers run as fast as their clients ACK. With a cap
(``tftp.bandwidth``), a :class:`TokenBucket` meters the bytes and
:class:`RoundRobin` hands the budget out one packet per ready transfer in
turn, so no client starves. When the cap is saturated for a while (the
bucket keeps running dry with transfers waiting), :class:`Load` says so and
the DHCP logic slightly defers offers to *newcomers* (clients with no lease
yet), so that nodes already booting finish first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` bytes/s, up to ``burst`` bytes saved up. ``rate`` 0 = unlimited."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float = 0.0

    def refill(self, now: float) -> None:
        if self.rate <= 0:
            return
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: int, now: float) -> bool:
        if self.rate <= 0:
            return True
        self.refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def wait_for(self, n: int) -> float:
        """Seconds until ``n`` bytes are available."""
        if self.rate <= 0 or self.tokens >= n:
            return 0.0
        return (n - self.tokens) / self.rate


class RoundRobin:
    """Ready queue of transfers: each gets one packet per turn."""

    def __init__(self) -> None:
        self._q: deque[Hashable] = deque()
        self._in: set[Hashable] = set()

    def push(self, item: Hashable) -> None:
        if item not in self._in:
            self._in.add(item)
            self._q.append(item)

    def push_front(self, item: Hashable) -> None:
        """Back at the head of the queue: it keeps its turn (the budget ran out)."""
        if item not in self._in:
            self._in.add(item)
            self._q.appendleft(item)

    def pop(self) -> Hashable | None:
        while self._q:
            item = self._q.popleft()
            self._in.discard(item)
            return item
        return None

    def discard(self, item: Hashable) -> None:
        if item in self._in:
            self._in.discard(item)
            self._q.remove(item)

    def __len__(self) -> int:
        return len(self._q)


@dataclass
class Load:
    """Per-tick accounting and the overload signal behind DHCP deferral."""

    cap_bytes_per_s: float = 0.0
    defer_max: float = 1.0
    tick_bytes: int = 0
    tick_packets: int = 0
    tick_starved: int = 0  # ticks in which the bucket ran dry with transfers waiting
    history: deque = field(default_factory=lambda: deque(maxlen=20))  # (bytes, packets, dry)
    dry_this_tick: bool = False
    total_bytes: int = 0
    total_packets: int = 0

    def count(self, nbytes: int, packets: int = 1) -> None:
        self.tick_bytes += nbytes
        self.tick_packets += packets
        self.total_bytes += nbytes
        self.total_packets += packets

    def ran_dry(self) -> None:
        self.dry_this_tick = True

    def tick(self) -> None:
        self.history.append((self.tick_bytes, self.tick_packets, self.dry_this_tick))
        self.tick_bytes = self.tick_packets = 0
        self.dry_this_tick = False

    @property
    def saturation(self) -> float:
        """Share of recent ticks in which the cap was the limit (0..1)."""
        if not self.history or self.cap_bytes_per_s <= 0:
            return 0.0
        return sum(1 for *_, dry in self.history if dry) / len(self.history)

    def dhcp_delay(self, stalled: int = 0) -> float:
        """Delay for an offer to a newcomer: 0 until half the ticks are saturated.

        ``stalled`` (transfers that got no packet in the last half second)
        pushes it to the maximum: booting nodes are already waiting.
        """
        s = self.saturation
        if stalled:
            return self.defer_max
        if s <= 0.5:
            return 0.0
        return round(self.defer_max * (s - 0.5) * 2, 3)


def parked(progress: dict[Hashable, tuple[float, float, bool]], lead: float = 1.15,
           min_age: float = 0.5) -> set[Hashable]:  # fmt: skip
    """Transfers to hold for one tick so that the others catch up (fairness without a cap).

    ``progress`` maps a transfer to (bytes/s since it began, age in seconds,
    stalled). A transfer running more than ``lead`` times the median rate of
    the live (not stalled) ones is parked; stalled transfers (no ACK in the
    last half second: a dead or very slow client) never hold anyone back.
    """
    live = sorted(
        rate for rate, age, stalled in progress.values() if not stalled and age >= min_age
    )
    if len(live) < 2:
        return set()
    median = live[len(live) // 2]
    return {k for k, (rate, age, stalled) in progress.items()
            if not stalled and age >= min_age and rate > lead * median}  # fmt: skip
