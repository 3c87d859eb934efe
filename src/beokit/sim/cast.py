"""Model of distribution by nettee chains and trees (``beo cast``, ``nettee -next``).

How the real thing moves data (``docs/nettee.md``, ``docs/nettee-heal.md``,
``nettee/relay.py``), and what the model keeps of it:

* **One lockstep tree per source.**  A node hands a chunk to its outputs
  (each child's TCP socket, its local file) only when every output has
  finished the previous one, and TCP's window stops a parent whose child
  does not read.  Buffers are bounded (pipes of 1 MiB, socket buffers of a
  few MiB), so in the steady state *every node of a tree moves the stream at
  the rate of the slowest node or link of that tree*: chains fed by one
  root (``--chains``) are one tree; separate roots (sources) are separate
  trees.  :func:`chunk_chain` simulates chunk by chunk to check this.
* **Rates.**  A port carries ``rate_bps`` of Ethernet frames; TCP carries
  ``mtu - 52`` payload bytes (IP, TCP, timestamps) per ``mtu + overhead``
  bytes on the wire (``overhead`` 14 where ``tc tbf`` counts frames, 38 on
  a real wire: header, FCS, preamble, gap).  A node feeding ``f`` children
  gives each ``1/f`` of its port; a node's own speed (disk, CPU) caps it.
  On one machine (``shared_cores``) every node's CPU per byte comes out of
  the same cores.
* **Pipeline.**  A node hands a socket input on in chunks of 128 KiB or
  what arrived within 5 ms (``SO_RCVLOWAT`` batching), so the last byte
  reaches a node at depth d ``latency + (d - 1) x (min(chunk / r, 5 ms) +
  latency + queue + wake-up)`` after the root sent it.
* **Control plane.**  Forming the tree is a handshake per hop, in sequence
  down each branch, and a ``ready`` message up that names the whole subtree;
  at the end every node's report climbs the same way, each hop carrying the
  reports of its subtree: ``hop + entry x subtree`` per hop, both ways.
* **Failures** (``fail_fraction`` of the nodes, at uniform times during the
  stream).  A killed process is found at once (TCP reset, ``kill_detect``);
  a crashed host only by its silence (``-stall``, 5 s), and meanwhile its
  whole tree waits on it.  With ``-heal`` the parent adopts the dead node's
  children (``heal_resume``) and replays what was in flight (``heal_gap``
  bytes); the whole lockstep tree pauses meanwhile.  A dead node whose child
  is dead too: a crashed child answers no adoption for 3 s
  (``adopt_timeout``).  The dead nodes are sent to again afterwards when
  ``retry`` (``beo cast --retry``: a new round, with the chains re-planned
  as beo cast does; ``retry`` also means the failure was transient: the
  node is back).  Without ``-heal`` the tree collapses and its cast starts
  again from the first byte (to the failed node too if it is back).
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field

from beokit.sim.core import Simulator

FAIL_KINDS = ("crash", "kill")


def framing(mtu: int = 1500, overhead: int = 14) -> float:
    """TCP payload bytes per byte counted on the wire: (mtu - 52) / (mtu + overhead)."""
    if mtu < 576:
        raise ValueError(f"MTU {mtu} is below IPv4's minimum of 576")
    return (mtu - 52) / (mtu + overhead)


@dataclass(frozen=True)
class Network:
    """The data network: port rate (bits/s, each way), MTU, per-hop latency and queueing."""

    rate_bps: float
    mtu: int = 1500
    overhead: int = 38  # bytes a frame costs beyond the IP packet: 38 on a wire, 14 under tbf
    latency: float = 50e-6  # one way, node to node through the switch
    hop_queue: float = 0.0  # extra queueing delay a byte meets at every hop

    def __post_init__(self) -> None:
        if not self.rate_bps > 0:
            raise ValueError(f"port rate must be > 0 bit/s, not {self.rate_bps!r}")

    @property
    def payload(self) -> float:
        """TCP payload bytes per second one port carries."""
        return self.rate_bps / 8 * framing(self.mtu, self.overhead)


@dataclass(frozen=True)
class NetteeCosts:
    """nettee's own costs (seconds, bytes); defaults measured on this box (docs/scale.md)."""

    chunk: int = 128 << 10  # relay.BATCH
    batch_wait: float = 0.005  # relay.BATCH_WAIT
    wakeup: float = 50e-6  # a relay thread woken per chunk
    start: float = 0.25  # the root's own start and exit (interpreter, imports, reports out)
    form_hop: float = 0.004  # forming: handshake + data connection, per hop
    form_entry: float = 0.0  # forming: per node named in a ready message, per hop
    report_hop: float = 0.004  # end: a report relayed, per hop
    report_entry: float = 0.0  # end: per node report relayed, per hop
    recv_cpu: float = 0.0  # CPU s per byte of a receiving node (one box: shared cores)
    root_cpu: float = 0.0  # CPU s per byte of the root
    loop_cap: float = math.inf  # bytes/s one hop can carry at most (loopback: a memory copy)
    kill_detect: float = 0.008  # a killed peer found (reset; bench_heal: 7.8 ms)
    heal_resume: float = 0.020  # found -> data flowing again (bench_heal: 27.6 ms in all)
    stall: float = 5.0  # -stall: a silent (crashed) peer found after this long
    adopt_timeout: float = 3.0  # a grandchild that does not answer an adoption
    heal_gap: int = 4 << 20  # bytes replayed to an adopted grandchild (at most 11 MiB)
    finish: float = 0.0  # per node after the stream: fsync, rereading, commit


@dataclass
class CastSpec:
    """What to distribute, to how many nodes, in what shape, and what goes wrong."""

    nodes: int  # receiving nodes
    size: int  # bytes
    roots: int = 1  # independent sources, each with its own port
    chains: int = 1  # children of each root
    fanout: int = 1  # children of every other internal node (1: chains)
    slow_fraction: float = 0.0
    slow_factor: float = 0.5  # a slow node's rate, as a fraction of a port's payload rate
    spread: float = 0.0  # other nodes: rate uniform in [1 - spread, 1] of a port's
    node_rate: float = math.inf  # bytes/s a node can write (its disk); inf: not limiting
    fail_fraction: float = 0.0
    fail_kind: str = "crash"
    heal: bool = True
    retry: bool = True
    launch: float = 0.0  # seconds to start every receiver (beo run's tree), before the root
    shared_cores: float | None = None  # every node on one machine with this many cores
    others: float = 0.0  # cores other programs on that machine want (they compete fairly)
    seed: int = 0

    def check(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"need at least one receiving node, not {self.nodes}")
        if self.size < 1:
            raise ValueError(f"size must be at least one byte, not {self.size}")
        for name in ("roots", "chains", "fanout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        for name in ("slow_fraction", "fail_fraction", "spread"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0..1, not {getattr(self, name)!r}")
        if not 0 < self.slow_factor <= 1:
            raise ValueError(f"slow_factor must be within (0, 1], not {self.slow_factor!r}")
        if self.fail_kind not in FAIL_KINDS:
            raise ValueError(f"fail_kind must be one of {FAIL_KINDS}, not {self.fail_kind!r}")


@dataclass
class CastResult:
    """``seconds``: from the start (launch included) until every tree and retry finished."""

    seconds: float
    stream: float  # the slowest tree's stream, first byte out of the root to its last
    rate: float  # bytes/s of the slowest tree (before failures)
    depth: int  # deepest node (hops from its root)
    form: float  # forming the slowest tree's branches
    report: float  # its reports climbing
    tail: float  # the last byte's way from the root to the deepest node
    paused: float  # total pause of the slowest tree (failures)
    failed: list[int] = field(default_factory=list)  # nodes sent to again (retry) or lost
    retry_seconds: float = 0.0
    restarts: int = 0  # collapses (without -heal)
    trees: int = 1


# --------------------------------------------------------------- tree shape


def tree_sizes(nodes: int, roots: int) -> list[int]:
    """Nodes per root: contiguous, balanced (``plan_chains`` does the same for chains)."""
    return [nodes // roots + (1 if i < nodes % roots else 0) for i in range(min(roots, nodes))]


def _split(m: int, parts: int) -> list[int]:
    parts = min(parts, m)
    return [m // parts + (1 if i < m % parts else 0) for i in range(parts)]


@functools.lru_cache(maxsize=4096)
def _branch(m: int, fanout: int, hop: float, entry: float) -> tuple[float, int]:
    """(cost along the slowest path, depth) of a branch of ``m`` nodes whose head is
    one hop from its parent: ``hop + entry x m`` for that hop, then its children's."""
    if m <= 0:
        return 0.0, 0
    below = _split(m - 1, fanout) if m > 1 else []
    worst, deep = 0.0, 0
    for size in set(below):
        if fanout == 1:
            break
        cost, d = _branch(size, fanout, hop, entry)
        worst, deep = max(worst, cost), max(deep, d)
    if fanout == 1 and m > 1:  # a chain: the closed form, no recursion m deep
        rest = m - 1
        worst = rest * hop + entry * rest * (rest + 1) / 2
        deep = rest
    return hop + entry * m + worst, deep + 1


def branch_cost(m: int, fanout: int, hop: float, entry: float) -> float:
    """Control-plane time along the slowest path of a branch of ``m`` nodes."""
    return _branch(m, fanout, hop, entry)[0]


def tree_depth(m: int, chains: int, fanout: int) -> int:
    """Hops from the root to the deepest of ``m`` nodes."""
    return max((_branch(b, fanout, 0.0, 0.0)[1] for b in _split(m, chains)), default=0)


def tree_control(m: int, chains: int, fanout: int, hop: float, entry: float) -> float:
    return max((branch_cost(b, fanout, hop, entry) for b in _split(m, chains)), default=0.0)


# --------------------------------------------------------------- the stream


@dataclass
class _Tree:
    """One root's lockstep tree while it streams (a fluid: bytes sent, rate, pauses)."""

    index: int
    members: list[int]  # node ids
    size: int
    rate: float
    sent: float = 0.0
    since: float = 0.0  # when ``sent`` was last brought up to date
    paused_until: float = 0.0
    paused: float = 0.0
    done_at: float = -1.0
    restarts: int = 0
    stream_start: float = 0.0
    finish_event: object = None


class CastModel:
    """One cast: every tree streamed in one :class:`Simulator`; see :func:`simulate_cast`."""

    def __init__(self, spec: CastSpec, net: Network, costs: NetteeCosts) -> None:
        spec.check()
        self.spec, self.net, self.c = spec, net, costs
        self.sim = Simulator(spec.seed)
        rng = random.Random(spec.seed)
        self.caps = self._node_caps(rng)
        self.dead: set[int] = set()
        self.recovered: set[int] = set()  # without -heal: dead, back for the restart
        self.failures = self._draw_failures(rng)
        self.trees_sizes = tree_sizes(spec.nodes, spec.roots)

    # ------------------------------------------------------------ inputs

    def _node_caps(self, rng: random.Random) -> list[float]:
        """Bytes/s each node can take in and hand on (its own speed, not the links)."""
        s, port = self.spec, self.net.payload
        caps = [min(s.node_rate, port * (1 - s.spread * rng.random())) for _ in range(s.nodes)]
        slow = round(s.nodes * s.slow_fraction)
        for i in rng.sample(range(s.nodes), slow) if slow else ():
            caps[i] = min(caps[i], port * s.slow_factor)
        return caps

    def _draw_failures(self, rng: random.Random) -> list[tuple[float, int]]:
        """(fraction of the stream done, node) for every node that fails."""
        count = round(self.spec.nodes * self.spec.fail_fraction)
        picked = rng.sample(range(self.spec.nodes), count) if count else []
        return sorted((rng.random(), i) for i in picked)

    def link_rate(self, members: int) -> float:
        """The tree's rate from its links and from the shared CPU (no node caps)."""
        s, c, port = self.spec, self.c, self.net.payload
        rate = min(port / min(s.chains, members), c.loop_cap)
        if s.fanout > 1 and members > s.chains:
            rate = min(rate, port / s.fanout)
        if s.shared_cores is not None:
            per_byte = c.root_cpu * len(self.trees_sizes) + c.recv_cpu * s.nodes
            if per_byte > 0:
                rate = min(rate, self.cores_for_us() / per_byte)
        return rate

    def cores_for_us(self) -> float:
        """The shared machine's cores less the fair share of other programs' threads
        (every node's relay is one of our threads wanting the CPU)."""
        s = self.spec
        assert s.shared_cores is not None
        if s.others <= 0:
            return s.shared_cores
        theirs = math.ceil(s.others)
        ours = s.nodes + len(self.trees_sizes)
        return s.shared_cores - min(s.others, s.shared_cores * theirs / (ours + theirs))

    def tail(self, depth: int, rate: float) -> float:
        """The last byte's way from the root to a node ``depth`` hops down: the root's
        own send is the stream itself; every further hop stores and forwards a chunk."""
        if depth <= 0:
            return 0.0
        return self.net.latency + (depth - 1) * self.hop_delay(rate)

    def hop_delay(self, rate: float) -> float:
        """How long the last byte spends on one hop at ``rate`` (chunk, latency, queue)."""
        c = self.c
        return min(c.chunk / rate, c.batch_wait) + self.net.latency + self.net.hop_queue + c.wakeup

    # ------------------------------------------------------------ run

    def run(self) -> CastResult:
        s, c = self.spec, self.c
        trees, first = [], 0
        for i, m in enumerate(self.trees_sizes):
            members = list(range(first, first + m))
            first += m
            rate = min(self.link_rate(m), min(self.caps[j] for j in members))
            trees.append(_Tree(i, members, s.size, rate))
        self.tree_of = {j: t for t in trees for j in t.members}
        self.trees = trees
        for t in trees:
            self._begin(t, s.launch + c.start / 2 + self._form(len(t.members)))
        for frac, node in self.failures:
            t = self.tree_of[node]
            when = s.launch + c.start / 2 + self._form(len(t.members)) + frac * s.size / t.rate
            self.sim.at(when, self._fail, node)
        self.sim.run()
        return self._result()

    def _form(self, m: int) -> float:
        s, c = self.spec, self.c
        return tree_control(m, s.chains, s.fanout, c.form_hop, c.form_entry)

    def _report(self, m: int) -> float:
        s, c = self.spec, self.c
        return tree_control(m, s.chains, s.fanout, c.report_hop, c.report_entry)

    def _begin(self, t: _Tree, at: float, generation: int = 0) -> None:
        if generation != t.restarts:
            return  # a restart that a later collapse replaced
        t.sent, t.since, t.paused_until = 0.0, at, at
        t.stream_start = at
        self._schedule_end(t)

    def _advance(self, t: _Tree) -> None:
        now = self.sim.now
        start = max(t.since, t.paused_until)
        if now > start:
            t.sent = min(t.size, t.sent + (now - start) * t.rate)
        t.since = now

    def _schedule_end(self, t: _Tree) -> None:
        Simulator.cancel(t.finish_event)  # type: ignore[arg-type]
        start = max(self.sim.now, t.since, t.paused_until)
        t.finish_event = self.sim.at(start + (t.size - t.sent) / t.rate, self._end, t)

    def _end(self, t: _Tree) -> None:
        t.finish_event = None
        t.sent = t.size
        t.done_at = self.sim.now

    def _fail(self, node: int) -> None:
        t = self.tree_of[node]
        if t.done_at >= 0 or (node in self.dead and node not in self.recovered):
            return
        self.recovered.discard(node)
        self._advance(t)
        self.dead.add(node)
        c = self.c
        if not self.spec.heal:  # collapse; launch, form and stream again to the others
            self._collapse(t)
            return
        detect = c.stall if self.spec.fail_kind == "crash" else c.kill_detect
        pause = detect + c.heal_resume + c.heal_gap / t.rate
        child = node + 1  # in a chain the next node; good enough for a tree's first child
        while (self.spec.fanout == 1 and child in self.dead and child in self.tree_of
               and self.tree_of[child] is t):  # fmt: skip
            pause += c.adopt_timeout if self.spec.fail_kind == "crash" else c.kill_detect
            child += 1
        begin = max(self.sim.now, t.paused_until)
        t.paused_until = begin + pause
        t.paused += pause
        alive = [self.caps[j] for j in t.members if j not in self.dead]
        if alive:
            t.rate = min(self.link_rate(len(alive)), min(alive))
        self._schedule_end(t)

    def _collapse(self, t: _Tree) -> None:
        """Without -heal: the tree collapses and the cast starts again from the first byte,
        with the failed node too when it came back (``retry``: a transient failure)."""
        s, c = self.spec, self.c
        t.restarts += 1
        detect = c.stall if s.fail_kind == "crash" else c.kill_detect
        if s.retry:
            self.recovered.update(j for j in t.members if j in self.dead)
        alive = [j for j in t.members if j not in self.dead or j in self.recovered]
        if not alive:
            self._end(t)
            return
        t.rate = min(self.link_rate(len(alive)), min(self.caps[j] for j in alive))
        again = self.sim.now + detect + s.launch + c.start + self._form(len(alive))
        t.paused += again - self.sim.now
        Simulator.cancel(t.finish_event)  # type: ignore[arg-type]
        self.sim.at(again, self._begin, t, again, t.restarts)
        # failures still to come hit the new run at the same fraction of the stream
        # (their events are already scheduled at absolute times: close enough)

    # ------------------------------------------------------------ result

    def _result(self) -> CastResult:
        s, c = self.spec, self.c
        worst: tuple[float, _Tree, float, float, float] | None = None
        for t in self.trees:
            alive = [j for j in t.members
                     if j not in self.dead or j in self.recovered] or t.members  # fmt: skip
            depth = tree_depth(len(alive), s.chains, s.fanout)
            tail = self.tail(depth, t.rate)
            report = self._report(len(alive))
            end = t.done_at + tail + report + c.start / 2 + c.finish
            if worst is None or end > worst[0]:
                worst = (end, t, tail, report, depth)
        assert worst is not None
        end, t, tail, report, depth = worst
        failed = sorted(self.dead) if s.heal else []
        retry = 0.0
        if failed and s.retry:
            retry = self._retry(len(failed))
        stream = t.done_at - t.stream_start
        first_rate = min(self.link_rate(len(t.members)), min(self.caps[j] for j in t.members))
        return CastResult(end + retry, stream, first_rate, depth, self._form(len(t.members)),
                          report, tail, t.paused, failed, retry, t.restarts,
                          len(self.trees))  # fmt: skip

    def _retry(self, count: int) -> float:
        """A second round to the ``count`` dead nodes (nothing fails twice)."""
        s = self.spec
        again = CastSpec(count, s.size, roots=1, chains=min(s.chains, count), fanout=s.fanout,
                         node_rate=s.node_rate, launch=s.launch, shared_cores=s.shared_cores,
                         seed=s.seed + 1)  # fmt: skip
        return CastModel(again, self.net, self.c).run().seconds


def simulate_cast(spec: CastSpec, net: Network, costs: NetteeCosts | None = None) -> CastResult:
    """Simulate one cast (deterministic for a given ``spec.seed``)."""
    return CastModel(spec, net, costs or NetteeCosts()).run()


# ------------------------------------------------------------ chunk by chunk


def chunk_chain(nodes: int, size: int, link_rate: float, *, chunk: int = 128 << 10,
                latency: float = 50e-6, node_rates: list[float] | None = None,
                buffer_chunks: int = 16, fanout: int = 1) -> float:  # fmt: skip
    """Simulate a tree chunk by chunk; returns when the last node is done with the last
    byte (has handed it to every output: its children, its local write).

    Node 0 is the root (reads as fast as it is asked); nodes ``1..nodes`` receive.
    Node i's parent is ``(i - 1) // fanout`` (fanout 1: a chain).  Every node
    hands chunk j to all its outputs (each child's link at ``link_rate / fanout``,
    its local write at ``node_rates[i]``) only when every output has finished
    chunk j - 1 (the relay's lockstep), and only when each child has fewer than
    ``buffer_chunks`` chunks waiting (its socket buffer and pipe).  Slow, but
    exact for what it models: the check of the fluid model in the tests.
    """
    total = nodes + 1
    kids: list[list[int]] = [[] for _ in range(total)]
    for i in range(1, total):
        kids[(i - 1) // fanout].append(i)
    rates = [math.inf] + list(node_rates or [math.inf] * nodes)
    per_link = link_rate / max(1, max(len(k) for k in kids))
    n_chunks = -(-size // chunk)
    sizes = [chunk] * (n_chunks - 1) + [size - chunk * (n_chunks - 1)]
    sim = Simulator()
    have = [n_chunks if i == 0 else 0 for i in range(total)]  # chunks received
    handed = [0] * total  # chunks handed to the outputs (fully done: handed - busy)
    busy = [0] * total  # outputs still working on the current chunk
    last = [0.0]

    def try_hand(i: int) -> None:
        while not busy[i] and handed[i] < min(have[i], n_chunks):
            j = handed[i]
            if any(have[ch] - handed[ch] >= buffer_chunks for ch in kids[i]):
                return  # a child's buffer is full: TCP's window closed
            handed[i] += 1
            outs = [(ch, sizes[j] / per_link) for ch in kids[i]]
            if i and rates[i] < math.inf:
                outs.append((-1, sizes[j] / rates[i]))
            busy[i] = len(outs)
            for ch, t in outs:
                sim.after(t, sent, i, ch)
            if not outs and handed[i] == n_chunks:
                last[0] = max(last[0], sim.now)  # a tip that writes for free: done
            if i:  # the chunk left this node's input buffer: the parent may send more
                sim.after(0.0, try_hand, (i - 1) // fanout)

    def sent(i: int, ch: int) -> None:
        """An output of node i finished its chunk; a child gets it ``latency`` later."""
        busy[i] -= 1
        if ch >= 0:
            sim.after(latency, arrived, ch)
        if busy[i] == 0:
            if handed[i] == n_chunks and (i or not kids[i]):
                last[0] = max(last[0], sim.now)
            try_hand(i)

    def arrived(ch: int) -> None:
        have[ch] += 1
        try_hand(ch)

    try_hand(0)
    sim.run()
    if any(have[i] != n_chunks for i in range(total)):
        raise RuntimeError("chunk model stalled")  # pragma: no cover - a model bug
    return last[0]
