"""Model of ``beo run``'s launch tree (and of a work-stealing variant).

What the model follows, from ``launch/plan.py`` and ``launch/agent.py``:

* the root splits the hosts with :func:`beokit.launch.plan.pack` (the same
  function, imported, so the model's tree is the launcher's tree); a group
  of one host is a *leaf* (no agent: the parent runs the command through
  the backend), a larger group's head is an *agent* that gets the rest of
  the group as its share once it has connected back, and splits it again;
* every launch costs a latency (``delay``: the ``--launch-delay`` sleep, or
  ssh's round trips and the remote sshd) and CPU: the parent's
  (``spawn_cpu``: Popen; ``client_cpu``: an ssh client), a fork server's
  (``fork_cpu``, ``-R exec`` agents), then the new host's (``agent_cpu``
  until an agent says hello; ``leaf_cpu`` for a command);
* an agent launches all its groups at once (one thread each) and runs its
  own command beside them (``spawn_cpu`` + ``leaf_cpu``);
* the parent watches each host it started (``watch_cpu``: its thread, the
  command's output); every host sends ``msgs_per_host`` messages up
  (launched, running, result); every agent on the way relays them
  (``relay_cpu`` each; the agent that watched the host encodes and sends
  them, ``emit_cpu`` each), the root reads them (``root_msg_cpu``), each hop
  adds ``hop_latency``; an agent launching an agent spends
  ``agent_launch_cpu`` on it (the fork request, the channel's reader, the
  hello, the relay's thread) where a leaf costs ``spawn_cpu``.  The run
  ends when the last result reaches the root;
* a live agent (until its whole subtree has reported) burns
  ``agent_idle_cpu`` of a core waiting (its heartbeat; 0 on this box since
  agents sleep in the kernel): it matters only where the hosts share cores;
* ``flat``: every host is a leaf launched by the root, ``k`` launches in
  flight (pdsh's window); ``sequential``: the same with one in flight.

CPU is a :class:`~beokit.sim.core.CpuPool`: one pool for every process when
the hosts share one machine (``shared_cores``: ``-R exec`` on this box),
else one pool per host (``node_cores``, default unbounded).  The Python
work of one process (the root, an agent, the fork server) is one group of
the pool: it never gets more than one core (the GIL).

**Work stealing** (``steal=True``; the policy a real launcher could adopt,
modelled so it can be compared): a head's share stays with its parent until
the head connects back.  A launch that is *overdue* (not up after
``steal_after`` times the nominal launch time) gives its whole share to an
*idle* node (the root or an agent whose own launches have all completed),
which launches it (``pack`` again, ``k`` at a time) after one round trip
(``steal_rtt``); the late head, when it comes up, runs only its command.
Stolen shares can be stolen again.  Idle thieves are taken shallowest
first, overdue shares largest first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from beokit.launch.plan import busy_depth, busy_groups, pack, tree_depth
from beokit.sim.core import CpuPool, Simulator

MODES = ("tree", "flat", "sequential")


@dataclass(frozen=True)
class LaunchCosts:
    """What one launch costs, in seconds (see ``docs/scale.md`` for how each was measured)."""

    delay: float = 0.1  # latency that uses no local CPU (--launch-delay; ssh's handshake)
    spawn_cpu: float = 0.0003  # the parent's Python per launch, until the host is up (Popen)
    watch_cpu: float = 0.0006  # the parent's Python per host after that (its thread, output)
    client_cpu: float = 0.0  # the launch's client process on the parent's node (ssh)
    fork_cpu: float = 0.0  # a fork server's CPU per agent (-R exec)
    agent_cpu: float = 0.004  # an agent from its start to its hello
    leaf_cpu: float = 0.001  # a command's own CPU (sh -c true)
    relay_cpu: float = 0.0001  # one message relayed by one agent
    # an agent's own share of a host it launched and watches: each of its messages
    # encoded and sent (None: relay_cpu); its Python per agent launch, from the
    # fork to the relay set up (None: spawn_cpu).  Measured per agent, docs/scale.md
    emit_cpu: float | None = None
    agent_launch_cpu: float | None = None
    root_msg_cpu: float = 0.0002  # one message read by the root
    agent_idle_cpu: float = 0.0  # cores a live agent burns waiting (its heartbeat)
    hop_latency: float = 50e-6  # one way between a parent and a child
    msgs_per_host: int = 3  # launched, running, result

    def nominal(self) -> float:
        """A launch's time on an idle machine: from its start to the host being up."""
        return (self.delay + self.spawn_cpu + self.client_cpu + self.fork_cpu
                + self.agent_cpu + 2 * self.hop_latency)  # fmt: skip


@dataclass
class LaunchResult:
    """``seconds``: first launch to the last result at the root (``beo run --json``'s
    ``elapsed``)."""

    seconds: float
    n: int
    k: int
    mode: str
    steal: bool
    depth: int  # launch steps of the static plan (mode's depth)
    agents: int
    leaves: int
    steals: int
    cpu_seconds: float
    last_up: float  # when the last host was up (its command started)
    slow_hosts: int = 0
    events: int = 0


@dataclass
class _Node:
    """The root (host -1) or an agent: what it launches and what it still owes."""

    host: int
    depth: int
    parent: _Node | None
    pool: CpuPool
    outstanding: int = 0  # hosts of its subtree (itself too) whose result has not passed
    in_flight: int = 0
    # groups waiting for a slot, with the steps their head has left (None: pack)
    queued: list[tuple[list[int], int | None]] = field(default_factory=list)
    window: int = 1 << 30
    idle_since: float = -1.0  # >= 0: an idle thief
    overdue: list[_Launch] = field(default_factory=list)  # its late launches, not robbed yet


@dataclass
class _Launch:
    parent: _Node
    head: int
    share: list[int]
    start: float
    agent: bool  # decided when the launch starts: a head with a share gets an agent
    up: bool = False
    steps: int | None = None  # busy tree: the launch steps the head has left
    released: bool = False  # its slot was given up (its share stolen)


class LaunchModel:
    """One launch of ``n`` hosts; :meth:`run` returns a :class:`LaunchResult`."""

    FORK_SERVER = "fork server"

    def __init__(self, n: int, k: int, costs: LaunchCosts, *, mode: str = "tree",
                 steal: bool = False, shared_cores: float | None = None,
                 node_cores: float | None = None, slow: dict[int, float] | None = None,
                 steal_after: float = 2.0, steal_rtt: float | None = None,
                 others: float = 0.0, seed: int = 0, busy: bool = True) -> None:  # fmt: skip
        if n < 1:
            raise ValueError(f"need at least one host, not {n}")
        if k < 1:
            raise ValueError(f"fanout must be >= 1, not {k}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
        self.n, self.k, self.c, self.mode = n, k, costs, mode
        self.steal = steal and mode == "tree"
        self.busy = busy and mode == "tree"  # beo run's tree (plan.busy_groups); else pack
        self.sim = Simulator(seed)
        self.shared = CpuPool(self.sim, shared_cores) if shared_cores is not None else None
        if self.shared is not None and others > 0:  # other programs on the same machine
            self.shared.set_competition(others)
        self.node_cores = node_cores
        self.slow = slow or {}
        self.steal_after = steal_after * costs.nominal()
        self.steal_rtt = (steal_rtt if steal_rtt is not None
                          else 2 * costs.hop_latency + 2 * costs.relay_cpu)  # fmt: skip
        self.results = 0
        self.last_result = 0.0
        self.last_up = 0.0
        self.agents = self.leaves = self.steals = 0
        self.live_agents = 0
        self.overdue: list[_Launch] = []
        self.idle: list[_Node] = []
        self.pools: list[CpuPool] = []
        self.fork_pool = self.shared or CpuPool(self.sim, None)

    # ---------------------------------------------------------------- pools

    def _pool(self, host: int) -> CpuPool:
        if self.shared is not None:
            return self.shared
        pool = CpuPool(self.sim, None if host < 0 else self.node_cores,
                       speed=1.0 / self.slow.get(host, 1.0))  # fmt: skip
        self.pools.append(pool)
        return pool

    # ---------------------------------------------------------------- run

    def run(self) -> LaunchResult:
        root = _Node(-1, 0, None, self._pool(-1), outstanding=self.n)
        hosts = list(range(self.n))
        if self.mode == "tree":
            groups = self._split(hosts, None)
            if self.busy:
                root.window = self.k
        else:
            groups = [([h], None) for h in hosts]
            root.window = self.k if self.mode == "flat" else 1
        self._start(root, groups)
        self.sim.run()
        if self.results != self.n:
            raise RuntimeError(f"model lost hosts: {self.results} of {self.n} results")
        pools = [self.shared] if self.shared is not None else [*self.pools, self.fork_pool]
        tree = busy_depth(self.n, self.k) if self.busy else tree_depth(self.n, self.k)
        depth = tree if self.mode == "tree" else (
            -(-self.n // self.k) if self.mode == "flat" else self.n)  # fmt: skip
        return LaunchResult(self.last_result, self.n, self.k, self.mode, self.steal, depth,
                            self.agents, self.leaves, self.steals,
                            sum(p.busy for p in pools), self.last_up, len(self.slow),
                            self.sim.processed)  # fmt: skip

    def _split(self, share: list[int], steps: int | None) -> list[tuple[list[int], int | None]]:
        """What a node launches for ``share``: the busy tree's groups (k in flight), or
        pack's k groups (all at once)."""
        if self.busy:
            return list(busy_groups(share, self.k, steps))
        return [(g, None) for g in pack(share, self.k)]

    def _start(self, node: _Node, groups: list[tuple[list[int], int | None]]) -> None:
        node.idle_since = -1.0
        node.queued.extend(groups)
        self._pump(node)

    def _pump(self, node: _Node) -> None:
        while node.queued and node.in_flight < node.window:
            group, steps = node.queued.pop(0)
            node.in_flight += 1
            launch = _Launch(node, group[0], group[1:], self.sim.now, len(group) > 1,
                             steps=steps)  # fmt: skip
            delay = self.c.delay * self.slow.get(launch.head, 1.0)
            self.sim.after(delay, self._spawn, launch)
            if self.steal and launch.share:
                self.sim.after(self.steal_after, self._overdue, launch)
        if not node.queued and node.overdue:  # its slots are free: take a late share back
            self._rob(node.overdue.pop(0))
        if not node.queued and node.in_flight == 0:
            self._became_idle(node)

    def _spawn(self, launch: _Launch) -> None:
        """The parent's Python, its client process (ssh), a fork server (exec agents)."""
        parent, c = launch.parent, self.c
        spawn = c.spawn_cpu
        if launch.agent and c.agent_launch_cpu is not None and parent.parent is not None:
            spawn = c.agent_launch_cpu  # an agent launching an agent (the root: measured apart)
        steps: list[tuple[CpuPool, float, object]] = [(parent.pool, spawn, parent.host)]
        if c.client_cpu:
            steps.append((parent.pool, c.client_cpu, None))
        if launch.agent and c.fork_cpu:
            steps.append((self.fork_pool, c.fork_cpu, self.FORK_SERVER))
        self._chain(steps, lambda: self._started(launch))

    def _chain(self, steps: list[tuple[CpuPool, float, object]], done: Callable[[], None]) -> None:
        """Run CPU ``steps`` (pool, work, group) one after the other, then ``done``."""
        if not steps:
            done()
            return
        pool, work, group = steps[0]
        pool.submit(work, lambda: self._chain(steps[1:], done), group)

    def _started(self, launch: _Launch) -> None:
        pool = self._pool(launch.head)
        if not launch.agent:  # a leaf: up once it exists, runs its command
            self.leaves += 1
            self._up(launch)
            self._command(pool, launch.parent)
            return
        self.agents += 1
        pool.submit(self.c.agent_cpu, lambda: self.sim.after(self.c.hop_latency, self._hello,
                                                             launch, pool), launch.head)  # fmt: skip

    def _hello(self, launch: _Launch, pool: CpuPool) -> None:
        self._up(launch)
        parent = launch.parent
        share, launch.share = launch.share, []  # what is left of it (stealing)
        node = _Node(launch.head, parent.depth + 1, parent, pool, outstanding=1 + len(share))
        if self.busy:
            node.window = self.k
        if launch in self.overdue:
            self.overdue.remove(launch)
        if launch in parent.overdue:
            parent.overdue.remove(launch)
        self._live(+1)

        def work() -> None:
            self._start(node, self._split(share, launch.steps) if share else [])
            pool.submit(self.c.spawn_cpu, lambda: self._command(pool, node), node.host)

        self.sim.after(self.c.hop_latency, work)

    def _up(self, launch: _Launch) -> None:
        launch.up = True
        self.last_up = max(self.last_up, self.sim.now)
        if launch.released:  # robbed: its slot was given up then
            return
        parent = launch.parent
        parent.in_flight -= 1
        self._pump(parent)

    def _live(self, delta: int) -> None:
        self.live_agents += delta
        if self.shared is not None and self.c.agent_idle_cpu:
            self.shared.set_background(self.live_agents * self.c.agent_idle_cpu)

    # ------------------------------------------------------------ results

    def _command(self, pool: CpuPool, first: _Node) -> None:
        """Run a host's command (its own process); ``first`` handles its messages
        (the leaf's parent, which runs it; an agent itself), then up to the root."""
        pool.submit(self.c.leaf_cpu, lambda: self._relay(first))

    def _relay(self, node: _Node, first: bool = True) -> None:
        """A host's messages at ``node`` (``first``: the parent that watched it)."""
        c = self.c
        watch = c.watch_cpu if first else 0.0
        if node.parent is None:  # the root reads them
            node.pool.submit(watch + c.msgs_per_host * c.root_msg_cpu, self._result, node.host)
            return

        def passed() -> None:
            self._passed(node)
            self.sim.after(c.hop_latency, self._relay, node.parent, False)

        per_msg = c.emit_cpu if first and c.emit_cpu is not None else c.relay_cpu
        node.pool.submit(watch + c.msgs_per_host * per_msg, passed, node.host)

    def _passed(self, node: _Node, count: int = 1) -> None:
        """``count`` results went past ``node``: once all of its subtree's have, it ends."""
        node.outstanding -= count
        if node.outstanding == 0 and node.parent is not None:
            self._live(-1)

    def _result(self) -> None:
        self.results += 1
        self.last_result = self.sim.now

    # ------------------------------------------------------------ stealing

    def _overdue(self, launch: _Launch) -> None:
        if launch.up or not launch.share:
            return
        if self.busy:  # as the launcher does: its parent takes the share back, once idle
            launch.parent.overdue.append(launch)
            self._pump(launch.parent)
            return
        self.overdue.append(launch)
        self._match()

    def _rob(self, launch: _Launch) -> None:
        """The busy tree's stealing (launch/agent.py ``_Launch``): a late head's parent,
        its queue empty, launches the head's share itself and gives the late launch's
        slot up; the head, once up, runs only its command."""
        if launch.up or not launch.share:
            return
        parent, share, launch.share = launch.parent, launch.share, []
        self.steals += 1
        launch.released = True
        parent.in_flight -= 1
        self._start(parent, self._split(share, launch.steps))

    def _became_idle(self, node: _Node) -> None:
        if not self.steal or node.idle_since >= 0:
            return
        node.idle_since = self.sim.now
        self.idle.append(node)
        self._match()

    def _match(self) -> None:
        while self.overdue and self.idle:
            victim = max(self.overdue, key=lambda la: (len(la.share), -la.start))
            self.overdue.remove(victim)
            thief = min(self.idle, key=lambda nd: (nd.depth, nd.idle_since))
            self.idle.remove(thief)
            share, victim.share = victim.share, []
            self.steals += 1
            self._move(victim.parent, thief, len(share))
            thief.idle_since = -2.0  # busy: taken, its launches start after the round trip
            self.sim.after(self.steal_rtt, self._start, thief, self._split(share, None))

    def _move(self, old: _Node, new: _Node, count: int) -> None:
        """``count`` results will pass through ``new`` and its ancestors, not ``old``'s."""
        up: _Node | None = old
        while up is not None:
            up.outstanding -= count
            if up.outstanding == 0 and up.parent is not None:  # pragma: no cover - kept busy
                self._live(-1)
            up = up.parent
        up = new
        while up is not None:
            up.outstanding += count
            up = up.parent


def simulate_launch(n: int, k: int, costs: LaunchCosts | None = None, *, mode: str = "tree",
                    steal: bool = False, shared_cores: float | None = None,
                    node_cores: float | None = None, slow_fraction: float = 0.0,
                    slow_factor: float = 10.0, steal_after: float = 2.0, others: float = 0.0,
                    seed: int = 0, busy: bool = True) -> LaunchResult:  # fmt: skip
    """Simulate one launch; ``slow_fraction`` of the hosts (drawn with ``seed``) are
    ``slow_factor`` times slower to launch and to run (their delay and their CPU).
    ``others``: cores other programs want on the shared machine (they compete as
    threads of their own)."""
    costs = costs or LaunchCosts()
    slow = pick_slow(n, slow_fraction, slow_factor, seed)
    model = LaunchModel(n, k, costs, mode=mode, steal=steal, shared_cores=shared_cores,
                        node_cores=node_cores, slow=slow, steal_after=steal_after,
                        others=others, seed=seed, busy=busy)  # fmt: skip
    return model.run()


def pick_slow(n: int, fraction: float, factor: float, seed: int) -> dict[int, float]:
    """``round(n * fraction)`` hosts, drawn with ``seed``, each ``factor`` times slower."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"slow fraction must be within 0..1, not {fraction!r}")
    count = round(n * fraction)
    if count == 0:
        return {}
    import random

    return dict.fromkeys(random.Random(seed ^ 0x5EED).sample(range(n), count), factor)


def best_plan(n: int, costs: LaunchCosts, *, ks: tuple[int, ...] = (2, 3, 4, 6, 8, 16, 32),
              node_cores: float | None = None,
              evaluate: Callable[..., LaunchResult] | None = None) -> tuple[str, int, float]:  # fmt: skip
    """The fastest (mode, k, seconds) among trees and flat windows for ``n`` hosts: the
    automatic flat/tree choice, from N and the launch costs."""
    run = evaluate or simulate_launch
    best = ("tree", 2, math.inf)
    for mode in ("tree", "flat"):
        for k in ks if mode == "tree" else (32, 64, 128):
            if k > n and mode == "flat":
                continue
            t = run(n, k, costs, mode=mode, node_cores=node_cores).seconds
            if t < best[2]:
                best = (mode, k, t)
    return best


def box_costs(costs: LaunchCosts, delay: float) -> LaunchCosts:
    """``costs`` with the simulated handshake ``delay`` (``--launch-delay``)."""
    return replace(costs, delay=delay)


def plan_stats(n: int, k: int, busy: bool = True) -> tuple[int, int, int]:
    """(agents, leaves, relay hops) of the static tree of ``n`` hosts (``busy``: beo
    run's busy tree; else pack's): a relay hop is a host's message passing through
    one agent that is not the root."""
    agents = leaves = hops = 0
    stack: list[tuple[list[int], int, int | None]] = [(list(range(n)), 0, None)]
    while stack:
        share, above, steps = stack.pop()
        groups = busy_groups(share, k, steps) if busy else [(g, None) for g in pack(share, k)]
        for group, sub in groups:
            hops += above
            if len(group) == 1:
                leaves += 1
            else:
                agents += 1
                stack.append((group[1:], above + 1, sub))
    return agents, leaves, hops
