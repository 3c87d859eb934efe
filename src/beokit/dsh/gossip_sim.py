"""Many dshd gossip state machines in one process, on a simulated clock (pure: no sockets).

Each simulated member is what a daemon is without its sockets: a
:class:`~beokit.dsh.state.Table` and a :class:`~beokit.dsh.gossip.Gossip`,
woken once a round (a period / ``rounds``, jittered +-10 % as the daemon
does) to take the datagrams that arrived, measure itself, expire, and send.
Datagrams are the real bytes (MACs included when there is a secret); the
network delivers each after ``latency`` seconds or loses it with probability
``loss``. Wall clocks may be skewed per member (``skew``): the gossip uses
them only to order one sender's datagrams and reports.

The pure tests (tests/test_dsh_gossip.py) and the scale benchmark
(bench/bench_dsh_scale.py) drive it; it is also the reference for driving
:class:`~beokit.dsh.gossip.Gossip` from another event loop::

    c = SimCluster(SimConfig(n=2000, loss=0.05))
    c.run_until(10 * c.cfg.period)
    c.set_load(17, 0.0)                     # member 17 becomes idle
    c.run_until(c.now + 3 * c.cfg.period)
    all(c.best(i) == c.names[17] for i in c.alive())
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from beokit.dsh import packet
from beokit.dsh.gossip import Gossip, Params
from beokit.dsh.state import MemberSpec, Roster, Table


@dataclass
class SimConfig:
    n: int
    period: float = 1.5
    expire: int = 3
    params: Params = field(default_factory=Params)
    loss: float = 0.0  # probability that a datagram is lost
    latency: float = 0.0002  # seconds from send to arrival
    jitter: float = 0.1  # each round lasts (1 +- jitter) * period / rounds
    secret: bytes | None = None
    skew: float = 0.0  # each member's wall clock is off by up to +-skew seconds
    cpus: int = 2
    seed: int = 1


@dataclass
class SimNode:
    index: int
    table: Table
    gossip: Gossip
    load: float
    clock_offset: float
    alive: bool = True
    seq: int = 0
    inbox: list[tuple[float, bytes, str]] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    sent_bytes: int = 0
    max_in_round: int = 0  # most datagrams taken in one wake-up
    max_bytes: int = 0  # the longest datagram it sent
    last_report: float | None = None  # when it last measured itself (its newest report)


class SimCluster:
    """``cfg.n`` members gossiping on a simulated clock (``now``, seconds)."""

    def __init__(self, cfg: SimConfig, loads: list[float] | None = None) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.now = 0.0
        self.names = [f"n{i:05d}" for i in range(cfg.n)]
        self.addresses = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(cfg.n)]
        self.by_address = {a: i for i, a in enumerate(self.addresses)}
        # one roster for all: each table holds only the members it heard of
        roster = Roster([MemberSpec(n) for n in self.names],
                        dict(zip(self.names, self.addresses, strict=True)))  # fmt: skip
        loads = loads if loads is not None else [1.0] * cfg.n
        self.nodes: list[SimNode] = []
        for i, name in enumerate(self.names):
            t = Table(roster, name, period=cfg.period, expire_periods=cfg.expire,
                      keep_marks=cfg.secret is not None)  # fmt: skip
            g = Gossip(t, cfg.secret, cfg.params, random.Random(self.rng.random()))
            off = self.rng.uniform(-cfg.skew, cfg.skew)
            self.nodes.append(SimNode(i, t, g, loads[i], off))
        self.round = cfg.period / cfg.params.rounds
        self._heap = [(self.rng.uniform(0, self.round), i) for i in range(cfg.n)]
        heapq.heapify(self._heap)
        self._probes: list[tuple[float, int, Callable[[], None]]] = []
        self.lost = 0

    # ---- the world
    def alive(self) -> list[int]:
        return [n.index for n in self.nodes if n.alive]

    def set_load(self, i: int, load: float) -> None:
        self.nodes[i].load = load

    def kill(self, i: int) -> None:
        """Member ``i`` stops: it sends nothing more and takes nothing."""
        self.nodes[i].alive = False
        self.nodes[i].inbox.clear()

    def best(self, i: int) -> str | None:
        """What member ``i``'s best port would answer now (without bumping it)."""
        n = self.nodes[i]
        n.table.tick(self.now)
        m = n.table.best(self.now)
        return None if m is None else m.name

    def up(self, i: int) -> set[str]:
        """The members up in member ``i``'s table now."""
        n = self.nodes[i]
        n.table.tick(self.now)
        return set(n.table.up_set)

    # ---- the clock
    def at(self, t: float, probe: Callable[[], None]) -> None:
        """Call ``probe()`` when the simulated clock reaches ``t`` (between wake-ups),
        whatever :meth:`run_until` call gets there: a look at a set time while
        another measurement is under way."""
        heapq.heappush(self._probes, (t, len(self._probes), probe))

    def run_until(self, t: float) -> None:
        """Wake every member whose round comes before ``t``, in time order (and call
        the probes set with :meth:`at` on the way)."""
        while self._probes and self._probes[0][0] <= t:
            when, _, probe = heapq.heappop(self._probes)
            self._run(when)
            probe()
        self._run(t)

    def _run(self, t: float) -> None:
        heap, jitter = self._heap, self.cfg.jitter
        while heap and heap[0][0] <= t:
            when, i = heapq.heappop(heap)
            self.now = when
            if self.nodes[i].alive:
                self._wake(self.nodes[i], when)
            nxt = when + self.round * self.rng.uniform(1 - jitter, 1 + jitter)
            heapq.heappush(heap, (nxt, i))
        self.now = t

    def _wake(self, node: SimNode, now: float) -> None:
        g, table = node.gossip, node.table
        taken = 0
        if node.inbox:
            inbox, node.inbox = node.inbox, []
            for arrival, data, src in inbox:
                g.on_datagram(data, src, arrival)
            taken = len(inbox)
        node.received += taken
        node.max_in_round = max(node.max_in_round, taken)
        node.seq += 1
        wall_ms = int((now + node.clock_offset + 1e6) * 1000)
        load = node.load
        g.set_self(packet.Report(table.self_name, node.seq, wall_ms, load, load, load, self.cfg.cpus,
                            0, 1 << 24, 1 << 23, int(self.cfg.period * 1000)), now)  # fmt: skip
        node.last_report = now
        table.tick(now)
        src = self.addresses[node.index]
        for out in g.round(now, wall_ms):
            node.sent += 1
            node.sent_bytes += len(out.data)
            node.max_bytes = max(node.max_bytes, len(out.data))
            if self.cfg.loss and self.rng.random() < self.cfg.loss:
                self.lost += 1
                continue
            dest = self.nodes[self.by_address[out.address]]
            if dest.alive:
                dest.inbox.append((now + self.cfg.latency, out.data, src))


# ------------------------------------------------------------ a scenario


@dataclass
class GossipOutcome:
    """What :func:`scenario` measured (times in periods, of the simulated clock)."""

    n: int
    period: float
    idle_best: float  # periods until every table's best answer names a newly idle member
    busy_demoted: float  # ...until none names it once it is busy again
    dead_up_before: int  # tables that had a dead member (the best) up just before it died
    dead_up_late: int  # ...still up 0.05 s before its last report was 3 periods old
    dead_late_error: float  # the most any table dated that report after it was made (s)
    dead_gone: bool  # in no table 3 periods + 5 ms after its last report
    sent_per_period: list[float]  # per member
    received_per_period: list[float]
    max_bytes: int
    max_in_round: int
    table_sizes: list[int]  # members up in a table (a sample of tables)


def first_everywhere(c: SimCluster, pred: Callable[[int], bool], limit: float) -> float:
    """Simulated seconds until ``pred(i)`` held at some point for every live member
    (checked every third of a round); inf if not within ``limit``."""
    start, pending = c.now, set(c.alive())
    while pending and c.now < start + limit:
        c.run_until(c.now + c.round / 3)
        pending = {i for i in pending if not pred(i)}
    return c.now - start if not pending else math.inf


def scenario(n: int, loss: float, seed: int = 3, secret: bytes | None = None) -> GossipOutcome:
    """The tests' and the benchmark's run: N members (loads 2-6 on 2 CPUs) gossip for
    3 periods; then the best member dies and, at the same moment, a middling member
    becomes idle (the best), then busy once every table names it; the dead member's
    last report ages meanwhile, and every table is looked at 0.05 s before and 5 ms
    after its expiry. Every table is looked at every third of a round. (About 6
    periods of simulated time in all: the measurements overlap, each as it was
    when they ran one after the other, 10.5 periods; the cost is the simulation's,
    ~16 datagrams per member and period.)"""
    cfg = SimConfig(n=n, loss=loss, secret=secret, seed=seed)
    rng = random.Random(seed)
    loads = [rng.uniform(2.0, 6.0) for _ in range(n)]  # 2 CPUs: scores 1.5 to 3.5
    c = SimCluster(cfg, loads)
    per = cfg.period
    c.run_until(3 * per)
    x = n // 3
    name = c.names[x]
    d = min((i for i in range(n) if i != x), key=lambda i: c.nodes[i].load)
    dname = c.names[d]
    before = sum(dname in c.up(i) for i in c.alive())
    c.kill(d)  # the best member dies...
    last = c.nodes[d].last_report
    assert last is not None
    expire = cfg.expire * per
    seen: dict[str, object] = {}

    def look_late() -> None:
        late = [c.nodes[i].table.members[dname] for i in c.alive() if dname in c.up(i)]
        seen["late"] = len(late)
        seen["error"] = max((m.origin or 0.0) - last for m in late) if late else 0.0

    def look_gone() -> None:
        seen["gone"] = all(dname not in c.up(i) for i in c.alive())

    c.at(last + expire - 0.05, look_late)
    c.at(last + expire + 0.005, look_gone)
    c.set_load(x, 0.0)  # ...and x is idle now: the best of the cluster (score 1.0)
    idle = first_everywhere(c, lambda i: c.best(i) == name, 6 * per)
    c.set_load(x, 9.0)  # ...and busy again (score 5.0)
    busy = first_everywhere(c, lambda i: c.best(i) != name, 6 * per)
    c.run_until(max(c.now, last + expire + 0.005))
    late, error, gone = int(seen["late"]), float(seen["error"]), bool(seen["gone"])  # type: ignore[call-overload,arg-type]
    periods = c.now / per
    return GossipOutcome(
        n, per, idle / per, busy / per, before, late, error, gone,
        [nd.sent / periods for nd in c.nodes if nd.alive],
        [nd.received / periods for nd in c.nodes if nd.alive],
        max(nd.max_bytes for nd in c.nodes), max(nd.max_in_round for nd in c.nodes),
        [len(c.up(i)) for i in c.alive()[:: max(1, n // 100)]],
    )  # fmt: skip
