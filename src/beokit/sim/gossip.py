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
coverage, expiry).  The spread is simulated on :class:`~beokit.sim.core.Simulator`
as the daemon does it (``dsh/gossip.py``): every member wakes once a round at
its own phase (jittered +-10 %) and sends ``fanout`` datagrams, ``partners``
of them to members taken at random among those whose datagrams came within
the expiry, the others to the next members of its own shuffled pass over
the cluster; the whole cluster's traffic is simulated (it is what the
partners are drawn from), from an expiry and a period before the change.
The changed member's next report (its next round) carries the change; a
member that holds it sends it in every datagram (the new least-loaded
member is among the ``candidates`` of every table that has it).  A member
passes the news on from its next round after it arrived (it takes its
datagrams when it wakes, and sends in that same wake); its best port
answers it as soon as it has arrived: the daemon takes every datagram that
has arrived before it answers (``DshDaemon.answer`` ->
``GossipRounds.catch_up``), so the staleness of an answer is the arrival of
the first datagram with the news, not the member's next round.

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
from dataclasses import dataclass, replace
from typing import Any

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
    partners: int = 2  # of the fanout, to members whose datagrams came within the expiry
    loss: float = 0.0  # probability that a datagram is lost
    expire: int = 3  # periods without news before a member is down
    digest_every: float = 0.0  # periods between anti-entropy exchanges (0: none)
    trials: int = 1  # spreads simulated (seeds seed, seed + 1, ...): the median is reported
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
        if self.partners < 0 or self.trials < 1:
            raise ValueError("partners must be >= 0 and trials >= 1")


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


def _spread(p: GossipParams, horizon_periods: float = 40.0,
            warmup_periods: float | None = None) -> list[float]:  # fmt: skip
    """Seconds from the change until each other member's best answer names the new best:
    until the first datagram with the news arrives there (event-based; see the
    module's docstring).

    Every member gossips from the start (its datagrams are what its partners are
    drawn from); the change happens after ``warmup_periods`` (default: the expiry
    and one period more, so that every member's list of recent senders is as it
    stays)."""
    sim = Simulator(p.seed)
    rng = sim.rng
    rnd = p.period / p.rounds
    expire = p.expire * p.period
    warm = p.expire + 1.0 if warmup_periods is None else warmup_periods
    t0 = warm * p.period
    m = p.n - 1
    want = min(p.fanout, m)
    partners = min(p.partners, want) if want < m else 0
    news = [math.inf] * p.n  # when the first datagram with the news arrives at each member
    relays = [math.inf] * p.n  # ...when it has taken it (its next round): it passes it on
    origin = 0
    passes: dict[int, list] = {}  # member -> [position, swaps]: its pass over the others
    senders: list[dict[int, float]] = [{} for _ in range(p.n)]  # member -> {sender: arrival}
    left = [m]

    def next_in_pass(i: int) -> int:
        """The next member of i's pass over the others: a shuffle drawn as it goes
        (Fisher-Yates, one step a target, as the daemon's), every other member once
        a pass, a new order each pass (the swaps kept sparse: O(draws), not O(N))."""
        st = passes.get(i)
        if st is None or st[0] >= m:
            st = passes[i] = [0, {}]
        pos, swaps = st
        j = pos + rng.randrange(m - pos)
        x = swaps.get(j, j)
        swaps[j] = swaps.get(pos, pos)
        st[0] = pos + 1
        return x if x < i else x + 1

    def targets(i: int, now: float) -> list[int]:
        """``partners`` at random among the members whose datagrams came within the
        expiry, the rest from the pass (distinct), as the daemon's ``targets``."""
        out: list[int] = []
        if partners:
            pool = senders[i]
            old = [s for s, t in pool.items() if now - t > expire]
            for s in old:
                del pool[s]
            if pool:
                out = rng.sample(list(pool), min(len(pool), partners))
        while len(out) < want:
            j = next_in_pass(i)
            if j not in out:
                out.append(j)
        return out

    def wake(i: int) -> None:
        now = sim.now
        if relays[i] == math.inf and (news[i] <= now or i == origin and now >= t0):
            relays[i] = now  # took the news (the origin: made its report): sends it now
        carries = relays[i] <= now
        arrive = now + p.latency
        for j in targets(i, now):
            if p.loss and rng.random() < p.loss:
                continue
            senders[j][i] = arrive
            if carries and news[j] == math.inf:  # the first datagram with the news
                news[j] = arrive
                left[0] -= j != origin
        if left[0] > 0 and now < t0 + horizon_periods * p.period:
            sim.after(rnd * rng.uniform(1 - p.jitter, 1 + p.jitter), wake, i)

    for i in range(p.n):
        sim.after(rng.uniform(0, rnd), wake, i)
    sim.run(until=t0 + horizon_periods * p.period)
    return [t - t0 for i, t in enumerate(news) if i != origin]


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


def _quantiles(times: list[float]) -> tuple[float, float, float]:
    """(50 %, 99 %, all) of the times members took (inf: not within the horizon)."""
    times = sorted(times)
    finite = [t for t in times if t < math.inf]
    p50 = statistics.median(times) if len(finite) * 2 >= len(times) else math.inf
    p99 = times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)]
    return p50, p99, times[-1]


def simulate_gossip(p: GossipParams) -> GossipResult:
    """The push-gossip design at one point (see the module's docstring); the staleness
    figures are the median over ``p.trials`` spreads (seeds ``seed``, ``seed`` + 1, ...)."""
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
    runs = [_quantiles(_spread(replace(p, seed=p.seed + k))) for k in range(max(1, p.trials))]
    p50, p99, last = (statistics.median(q) for q in zip(*runs, strict=True))
    # a member that stops: every table drops it once its newest report is expire periods old
    dead = p.expire * p.period
    return GossipResult("push gossip", p.n, per_s, per_s * size + digest, p50, p99, last,
                        dead, dead, _coverage(p), p.n * sent_per_s)  # fmt: skip


def real_gossip(p: GossipParams, *, warmup_periods: float | None = None,
                horizon_periods: float = 20.0) -> GossipResult:  # fmt: skip
    """The same figures from dshd's own state machine (``beokit.dsh.gossip_sim``), for
    one spread (seed ``p.seed``).

    The loads make the changed member the only best after the change and nobody's
    before: 2.0-2.9 on 2 CPUs (dshd's score max(1, (load + 1) / cpus): 1.5-1.95),
    the member at 9.0 (5.0), then at 0.0 (1.0).  (A load of 1.0 or less scores
    1.0 on 2 CPUs, the score of an idle member: a cluster with loads from 1.0 has
    a tenth of its members tied with the idle one, which then spreads only where
    a tie-break happens to rank it among the candidates.)  Each table is looked
    at as the daemon's best port would answer: every datagram that has arrived
    taken first (:func:`answer_times`), so a table's time is the arrival of the
    first datagram with the news, as in the model.  ImportError when ``beokit.dsh.gossip_sim``
    (issue 24's gossip) is not in this tree.
    """
    from beokit.dsh.gossip import Params
    from beokit.dsh.gossip_sim import SimCluster, SimConfig, SimNode

    p.check()
    cfg = SimConfig(n=p.n, period=p.period, expire=p.expire, loss=p.loss, latency=p.latency,
                    jitter=p.jitter, seed=p.seed,
                    params=Params(fanout=p.fanout, rounds=p.rounds, candidates=p.candidates,
                                  extra=p.extra, partners=p.partners))  # fmt: skip
    loads = [2.0 + (i % 10) * 0.1 for i in range(p.n)]
    loads[0] = 9.0
    heard: dict[int, float] = {}
    watch: list[float] = []  # [t0] once the load has changed

    class Cluster(SimCluster):
        def _wake(self, node: SimNode, now: float) -> None:
            if watch and node.index and node.index not in heard and node.inbox:
                answer_times(node, best, watch[0], heard)
            super()._wake(node, now)

    c = Cluster(cfg, loads)
    best = c.names[0]
    warm = p.expire + 1.0 if warmup_periods is None else warmup_periods
    c.run_until(warm * p.period)
    sent0 = sum(nd.sent for nd in c.nodes)
    got0 = sum(nd.received for nd in c.nodes)
    bytes0 = sum(nd.sent_bytes for nd in c.nodes)
    t0 = c.now
    c.set_load(0, 0.0)
    watch.append(t0)
    while c.now < t0 + horizon_periods * p.period and len(heard) < p.n - 1:
        c.run_until(c.now + p.period)
    span = c.now - t0
    ranked = c.nodes[1].table.scores(c.now)
    if ranked[0][1] != best or len(ranked) > 1 and not ranked[0][0] < ranked[1][0]:
        raise RuntimeError(f"real_gossip: {best} is not the only best of a table: {ranked[:3]}")
    sent = sum(nd.sent for nd in c.nodes) - sent0
    got = sum(nd.received for nd in c.nodes) - got0
    sent_bytes = sum(nd.sent_bytes for nd in c.nodes) - bytes0
    p50, p99, last = _quantiles([heard.get(i, math.inf) for i in range(1, p.n)])
    cover = statistics.mean(len(c.up(i)) for i in range(0, p.n, max(1, p.n // 50))) / p.n
    return GossipResult("dshd state machine", p.n, (sent + got) / span / p.n,
                        (2 * sent_bytes + (sent + got) * IP_UDP) / span / p.n,
                        p50, p99, last, p.expire * p.period,
                        p.expire * p.period, cover, sent / span)  # fmt: skip


def answer_times(node: Any, name: str, t0: float, heard: dict[int, float]) -> None:
    """Take a ``gossip_sim.SimNode``'s inbox now, one datagram at a time in order of
    arrival, as the daemon does before it answers; ``heard[index]``: the arrival
    (seconds after ``t0``) of the first after which its best answer is ``name``."""
    inbox, node.inbox = node.inbox, []
    for arrival, data, src in sorted(inbox, key=lambda x: x[0]):
        node.gossip.on_datagram(data, src, arrival)
        if node.index not in heard:
            m = node.table.best(arrival)
            if m is not None and m.name == name:
                heard[node.index] = arrival - t0
    node.received += len(inbox)
    node.max_in_round = max(node.max_in_round, len(inbox))


Backend = Callable[[GossipParams], GossipResult]


def compare(ns: list[int], backend: Backend = simulate_gossip, **kw: float) -> list[GossipResult]:
    """All-to-all and ``backend`` at each N (``kw``: GossipParams fields)."""
    out = []
    for n in ns:
        p = GossipParams(n=n, **kw)  # type: ignore[arg-type]
        out += [alltoall(p), backend(p)]
    return out
