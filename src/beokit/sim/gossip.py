"""Model of dshd's gossip: traffic, staleness of the best-node answer, coverage, expiry.

Two designs, by their parameters:

* **every member to every member** (dshd until issue 24): each period a
  daemon sends its report to the N - 1 others and receives N - 1: its
  traffic grows with N, its table is complete and at most a period old.
* **push gossip** (the redesign, ``dsh/gossip.py``): ``rounds`` times a
  period a daemon sends ``fanout`` datagrams to members in turn; each
  carries its own report, the ``candidates`` least-loaded members it knows
  and ``extra`` more (recently demoted, then random); every ``digest_every``
  periods (0: never) it swaps a digest of its whole table with one random
  member (anti-entropy).  Traffic does not grow with N; news spreads as an
  epidemic.

:func:`simulate_gossip` is event-based where the answer depends on chance
(how fast a member that became the least loaded reaches every table, with
``loss`` of the datagrams lost) and closed-form where it does not (traffic,
coverage, expiry).  The spread is simulated on :class:`~beokit.sim.core.Simulator`:
every member wakes once a round at its own phase (jittered +-10 %, as the
daemon does), and a member that knows the news pushes it to ``fanout``
members taken in turn from its own shuffled pass over the cluster; a member
takes a datagram at its next wake (the best port answers from the table,
which changes then) and passes the news on in that same wake.

Swapping in the real state machine: anything with the signature of
:func:`simulate_gossip` (``GossipParams -> GossipResult``) can be passed to
the projections; :func:`real_gossip` drives dshd's own pure ``Gossip`` and
``Table`` through ``beokit.dsh.gossip_sim`` (when that module is there) and
returns the same figures, so the two can be compared point by point.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from beokit.sim.core import Simulator

IP_UDP = 28  # bytes of IPv4 + UDP header per datagram
REPORT_BYTES = 52 + 16 + 10  # packet.py: fixed part, MAC, a short name
ENTRY_BYTES = 52 + 16 + 10 + 2  # a relayed report inside a gossip datagram (its own MAC, age)
DIGEST_ENTRY = 12  # a digest's entry: a hash of the name, a (time, seq) mark


@dataclass(frozen=True)
class GossipParams:
    """One design point; the defaults are dshd's (period 1.5 s, expiry 3 periods) and the
    redesign's (4 rounds a period, fanout 4, 8 candidates, 4 extra)."""

    n: int
    period: float = 1.5
    rounds: int = 4  # rounds a period
    fanout: int = 4  # datagrams sent per round
    candidates: int = 8  # least-loaded members in each datagram
    extra: int = 4  # more members per datagram (recently demoted, random)
    loss: float = 0.0  # probability that a datagram is lost
    expire: int = 3  # periods without news before a member is down
    digest_every: float = 0.0  # periods between anti-entropy exchanges (0: none)
    latency: float = 0.0002  # seconds a datagram takes
    jitter: float = 0.1
    seed: int = 1

    def check(self) -> None:
        if self.n < 2:
            raise ValueError(f"a gossip needs at least 2 members, not {self.n}")
        if not self.period > 0 or self.rounds < 1 or self.fanout < 1:
            raise ValueError("period must be > 0, rounds and fanout >= 1")
        if not 0 <= self.loss < 1:
            raise ValueError(f"loss must be within [0, 1), not {self.loss!r}")


@dataclass
class GossipResult:
    """Per daemon and per second, and the times news takes (seconds)."""

    design: str
    n: int
    msgs_per_s: float  # datagrams in + out per daemon per second
    bytes_per_s: float  # bytes in + out per daemon per second (IP and UDP included)
    best_p50: float  # load change -> half of the members answer the new best
    best_p99: float  # ... 99 % of them
    best_all: float  # ... all of them (inf: not within the simulated horizon)
    dead_detect: float  # a member stops -> it has left every table (upper bound)
    dead_best: float  # the best member dies -> no table still answers it (upper bound)
    coverage: float  # fraction of the cluster a table holds up at a time (steady state)
    cluster_msgs_per_s: float  # datagrams per second on the whole network


def alltoall(p: GossipParams) -> GossipResult:
    """dshd before issue 24: every report to every other member, once a period."""
    p.check()
    per_s = 2 * (p.n - 1) / p.period
    size = IP_UDP + REPORT_BYTES
    # a report sent at a member's phase arrives at once: the answer changes at the next
    # report of the changed member, on average half a period after the change
    lost_tail = _geometric_wait(p.loss, 0.99) * p.period
    return GossipResult("all-to-all", p.n, per_s, per_s * size, 0.5 * p.period,
                        0.99 * p.period + lost_tail, p.period + _geometric_wait(p.loss, 1 - 1 / p.n) * p.period,
                        p.expire * p.period, p.expire * p.period, 1.0,
                        p.n * (p.n - 1) / p.period)  # fmt: skip


def _geometric_wait(loss: float, q: float) -> float:
    """Extra tries before a datagram lost with probability ``loss`` gets through, at
    quantile ``q`` (0 when nothing is lost)."""
    if loss <= 0:
        return 0.0
    return max(0.0, math.ceil(math.log(1 - q) / math.log(loss)) - 1)


def _spread(p: GossipParams, horizon_periods: float = 40.0) -> list[float]:
    """Seconds from the change until each other member has heard (event-based)."""
    sim = Simulator(p.seed)
    rng = sim.rng
    rnd = p.period / p.rounds
    heard = [math.inf] * p.n
    origin = 0
    heard[origin] = 0.0
    informed = [False] * p.n
    informed[origin] = True
    m = p.n - 1
    passes: dict[int, list[int]] = {}  # member -> [a, b, t]: its pass over the others

    def targets(i: int) -> list[int]:
        """The next ``fanout`` members of i's pass: a fresh pseudo-shuffle (an affine
        permutation a x t + b mod N - 1) each pass, every other member once a pass."""
        out = []
        for _ in range(min(p.fanout, m)):
            st = passes.get(i)
            if st is None or st[2] >= m:
                a = rng.randrange(1, m) if m > 1 else 1
                while math.gcd(a, m) != 1:
                    a = rng.randrange(1, m)
                st = passes[i] = [a, rng.randrange(m), 0]
            x = (st[0] * st[2] + st[1]) % m
            st[2] += 1
            out.append(x if x < i else x + 1)
        return out

    count = [1]

    def wake(i: int) -> None:
        for j in targets(i):
            if rng.random() >= p.loss:
                sim.after(p.latency, arrive, j)
        if count[0] < p.n and sim.now < horizon_periods * p.period:
            sim.after(rnd * rng.uniform(1 - p.jitter, 1 + p.jitter), wake, i)

    def arrive(j: int) -> None:
        if not informed[j]:
            informed[j] = True
            # the daemon takes its datagrams when it wakes (its own phase in the round):
            # its table, and so its best port, has the news from then, and it passes the
            # news on in that same wake
            sim.after(rng.uniform(0, rnd), take, j)

    def take(j: int) -> None:
        heard[j] = sim.now
        count[0] += 1
        wake(j)

    sim.after(rng.uniform(0, rnd), wake, origin)  # the changed member's next round
    sim.run(until=horizon_periods * p.period)
    return [t for i, t in enumerate(heard) if i != origin]


def _coverage(p: GossipParams) -> float:
    """Fraction of the members a table holds up: those it heard of within the expiry."""
    if p.n - 1 <= p.fanout * p.rounds:  # every member hears from every other each period
        return 1.0
    heard_per_period = p.fanout * p.rounds * (1 + p.extra) * (1 - p.loss)
    window = heard_per_period * p.expire
    frac = 1 - math.exp(-window / (p.n - 1))  # random members, with repeats
    if p.digest_every > 0:  # a peer's whole table every digest_every periods
        frac = max(frac, min(1.0, p.expire / p.digest_every))
    return min(1.0, (p.candidates + (p.n - 1) * frac) / p.n)


def simulate_gossip(p: GossipParams) -> GossipResult:
    """The push-gossip design at one point (see the module's docstring)."""
    p.check()
    sent_per_s = p.fanout * p.rounds / p.period
    per_s = 2 * sent_per_s  # as many in, on average
    entries = 1 + p.candidates + p.extra
    size = IP_UDP + 8 + entries * ENTRY_BYTES
    digest = 0.0
    if p.digest_every > 0:  # one exchange each way, of the whole table, split in datagrams
        table_bytes = p.n * DIGEST_ENTRY
        datagrams = math.ceil(table_bytes / 1400)
        digest = 2 * (table_bytes + datagrams * IP_UDP) / (p.digest_every * p.period)
        per_s += 2 * datagrams / (p.digest_every * p.period)
    times = sorted(_spread(p))
    finite = [t for t in times if t < math.inf]
    p50 = statistics.median(times) if len(finite) * 2 >= len(times) else math.inf
    p99 = times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)]
    # a member that stops: every table drops it once its newest report is expire periods old
    dead = p.expire * p.period
    return GossipResult("push gossip", p.n, per_s, per_s * size + digest, p50, p99, times[-1],
                        dead, dead, _coverage(p), p.n * sent_per_s)  # fmt: skip


def real_gossip(p: GossipParams, *, warmup_periods: float = 10.0,
                horizon_periods: float = 20.0) -> GossipResult:  # fmt: skip
    """The same figures from dshd's own state machine (``beokit.dsh.gossip_sim``).

    ImportError when that module (issue 24's gossip) is not in this tree.
    """
    from beokit.dsh.gossip import Params
    from beokit.dsh.gossip_sim import SimCluster, SimConfig

    p.check()
    cfg = SimConfig(n=p.n, period=p.period, expire=p.expire, loss=p.loss, latency=p.latency,
                    jitter=p.jitter, seed=p.seed,
                    params=Params(fanout=p.fanout, rounds=p.rounds, candidates=p.candidates,
                                  extra=p.extra))  # fmt: skip
    loads = [1.0 + (i % 10) * 0.1 for i in range(p.n)]
    loads[0] = 9.0  # nobody's best before the change, everybody's after it
    c = SimCluster(cfg, loads)
    c.run_until(warmup_periods * p.period)
    sent0 = sum(nd.sent for nd in c.nodes)
    got0 = sum(nd.received for nd in c.nodes)
    bytes0 = sum(nd.sent_bytes for nd in c.nodes)
    t0 = c.now
    c.set_load(0, 0.0)
    best = c.names[0]
    heard: dict[int, float] = {}
    step = p.period / p.rounds / 4
    while c.now < t0 + horizon_periods * p.period and len(heard) < p.n - 1:
        c.run_until(c.now + step)
        for i in range(1, p.n):
            if i not in heard and c.best(i) == best:
                heard[i] = c.now - t0
    span = c.now - t0
    sent = sum(nd.sent for nd in c.nodes) - sent0
    got = sum(nd.received for nd in c.nodes) - got0
    sent_bytes = sum(nd.sent_bytes for nd in c.nodes) - bytes0
    times = sorted(heard.get(i, math.inf) for i in range(1, p.n))
    cover = statistics.mean(len(c.up(i)) for i in range(0, p.n, max(1, p.n // 50))) / p.n
    p99 = times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)]
    return GossipResult("dshd state machine", p.n, (sent + got) / span / p.n,
                        (2 * sent_bytes + (sent + got) * IP_UDP) / span / p.n,
                        statistics.median(times), p99, times[-1], p.expire * p.period,
                        p.expire * p.period, cover, sent / span)  # fmt: skip


Backend = Callable[[GossipParams], GossipResult]


def compare(ns: list[int], backend: Backend = simulate_gossip, **kw: float) -> list[GossipResult]:
    """All-to-all and ``backend`` at each N (``kw``: GossipParams fields)."""
    out = []
    for n in ns:
        p = GossipParams(n=n, **kw)  # type: ignore[arg-type]
        out += [alltoall(p), backend(p)]
    return out
