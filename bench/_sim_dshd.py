"""One real dshd among N members whose gossip is dshd's own state machine (for bench_sim.py).

The N - 1 other members are :mod:`beokit.dsh.gossip_sim` (dshd's pure
``Gossip`` and ``Table``, real bytes and MACs) run ahead on a simulated
clock, with one member standing in the real daemon's place (its name, its
address): every datagram that the simulation sends to that member is then
sent to the real daemon on loopback, from its sender's own address
(127.3.x.y), at its simulated time from the start of the replay.  The real
daemon takes them as it would from real members; what it sends back is
counted and dropped (its part in the others' gossip is played by the
simulated member in its place, which got the same datagrams).

During the replay ``changes`` members become idle one after the other (the
only best of the cluster: loads 2.0-2.9 on 2 CPUs score 1.5-1.95, an idle
member 1.0), each for 2 periods, 4 periods apart, and the daemon's best port
is asked every 10 ms from the change on: the seconds until it names the
member, once per change (one table's time, a different draw each change:
what the model's "half of the tables" is the median of).  The simulated
member in the daemon's place gives its own time for the same change (the
same datagrams in: the real daemon's sockets, rounds and answers against
the state machine's), and every simulated table's median; a simulated table
is looked at as the daemon answers, every datagram that has arrived taken
first (``beokit.sim.gossip.answer_times``).

    measure(n, period, fanout, loss) -> {"msgs_per_s", "best_one", ...}
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import resource
import selectors
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_dsh_scale import BEO, DAEMON, SECRET, Queries, _open, free_port, poll, sim_addr

from beokit.dsh.gossip import Gossip, Params
from beokit.dsh.gossip_sim import SimCluster, SimConfig, SimNode
from beokit.dsh.state import MemberSpec, Roster, Table
from beokit.sim.gossip import answer_times

WARM = 4  # periods before the first change (the expiry and one more)
GAP = 3.5  # periods between changes
HOLD = 2  # periods a member stays idle (then back at its load)


class _Cluster(SimCluster):
    """SimCluster with the real daemon's name and address at index 0 (load weight 100:
    never the best), and every datagram sent to index 0 kept for the replay."""

    def __init__(self, cfg: SimConfig, loads: list[float]) -> None:  # SimCluster's, other names
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.now = 0.0
        self.names = [DAEMON] + [sim_addr(i) for i in range(cfg.n - 1)]
        self.addresses = list(self.names)
        self.by_address = {a: i for i, a in enumerate(self.addresses)}
        specs = [MemberSpec(DAEMON, 100.0)] + [MemberSpec(n) for n in self.names[1:]]
        roster = Roster(specs, dict(zip(self.names, self.addresses, strict=True)))
        self.nodes = []
        for i, name in enumerate(self.names):
            t = Table(roster, name, period=cfg.period, expire_periods=cfg.expire,
                      keep_marks=cfg.secret is not None)  # fmt: skip
            g = Gossip(t, cfg.secret, cfg.params, random.Random(self.rng.random()))
            self.nodes.append(SimNode(i, t, g, loads[i], 0.0))
        self.round = cfg.period / cfg.params.rounds
        self._heap = [(self.rng.uniform(0, self.round), i) for i in range(cfg.n)]
        heapq.heapify(self._heap)
        self._probes = []
        self.lost = 0
        self.to_daemon: list[tuple[float, bytes, str]] = []
        self.watch: tuple[float, str] | None = None  # (change time, idle member)
        self.heard: dict[int, float] = {}

    def _wake(self, node: SimNode, now: float) -> None:
        if node.index == 0:
            self.to_daemon += node.inbox
        if self.watch is not None and node.index not in self.heard and node.inbox:
            answer_times(node, self.watch[1], self.watch[0], self.heard)
        super()._wake(node, now)


def plan(n: int, period: float, fanout: int, loss: float, changes: int, seed: int
         ) -> tuple[_Cluster, list[tuple[float, int]], list[float], list[float]]:  # fmt: skip
    """Run the simulation ahead: the changes (time, member), and per change the time of
    the member in the daemon's place and the median of every simulated table."""
    cfg = SimConfig(n=n, period=period, loss=loss, secret=SECRET, seed=seed,
                    params=Params(fanout=fanout))  # fmt: skip
    loads = [2.0 + (i % 10) * 0.1 for i in range(n)]
    c = _Cluster(cfg, loads)
    rng = random.Random(seed)
    # each changed member's name sorts before the earlier ones': a table that still
    # holds an earlier one's idle report (until it expires) answers the new one
    who = sorted(rng.sample(range(1, n), changes), key=c.names.__getitem__, reverse=True)
    sched = [((WARM + k * GAP) * period, x) for k, x in enumerate(who)]
    slot, tables = [], []
    for t, x in sched:
        c.run_until(t)
        c.set_load(x, 0.0)
        c.watch, c.heard = (t, c.names[x]), {}
        c.run_until(t + HOLD * period)
        slot.append(c.heard.get(0, math.inf))
        times = [c.heard.get(i, math.inf) for i in range(n) if i != x]
        tables.append(statistics.median(times))
        c.watch = None
        c.set_load(x, loads[x])
    c.run_until(c.now + period)
    c.to_daemon += c.nodes[0].inbox
    return c, sched, slot, tables


_CALLS = itertools.count(1)


def measure(n: int, period: float, fanout: int, loss: float, changes: int = 10,
            seed: int | None = None) -> dict[str, float]:  # fmt: skip
    """One run (seed: 1, 2, ... by call unless given: each run other draws)."""
    seed = next(_CALLS) if seed is None else seed
    c, sched, slot, tables = plan(n, period, fanout, loss, changes, seed)
    sends = sorted(c.to_daemon)
    with tempfile.TemporaryDirectory(prefix="bench-sim-dshd-") as tmp_:
        tmp = Path(tmp_)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 256)), hard))
        gport = free_port([DAEMON, *c.names[1:60], c.names[-1]])
        sport, bport = free_port([DAEMON]), free_port([DAEMON])
        (tmp / "cluster").write_text(f"{DAEMON} 100\n" + "".join(f"{a}\n" for a in c.names[1:]))
        (tmp / "secret").write_bytes(SECRET)
        socks: dict[str, socket.socket] = {}
        sel = selectors.EpollSelector()
        for a in c.names[1:]:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((a, gport))
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            socks[a] = s
        d = subprocess.Popen([*BEO, "dshd", "-f", str(tmp / "cluster"), "--bind", DAEMON,
                              "-g", str(gport), "-t", str(sport), "-r", str(bport), "--period",
                              str(period), "--expire", "3", "--extra-load", "0",
                              "--secret-file", str(tmp / "secret"), "--log", str(tmp / "dshd.log")],
                             stdin=subprocess.DEVNULL)  # fmt: skip
        ports = Queries(sport, bport)
        try:
            if math.isnan(poll(lambda: _open(DAEMON, sport), 60, 0.2)):
                raise RuntimeError(f"dshd ({n}) did not start")
            got = _replay(sends, sched, c.names, socks, sel, ports, (DAEMON, gport), period)
        finally:
            ports.close()
            d.terminate()
            d.wait(20)
            for s in socks.values():
                s.close()
    fin = [x for x in got["seen"] if x < math.inf]
    return {"msgs_per_s": got["msgs_per_s"],
            "best_one": statistics.median(got["seen"]) if len(fin) * 2 > len(got["seen"]) else math.inf,
            "seen": got["seen"], "slot": slot, "tables": tables,
            "slot_one": statistics.median(slot), "tables_p50": statistics.median(tables)}  # fmt: skip


def _replay(sends: list[tuple[float, bytes, str]], sched: list[tuple[float, int]],
            names: list[str], socks: dict[str, socket.socket], sel: selectors.BaseSelector,
            ports: Queries, dest: tuple[str, int], period: float) -> dict:  # fmt: skip
    """Send each datagram at its simulated time from the start; ask the best port every
    10 ms from each change until it names the changed member (at most HOLD periods)."""
    t0 = time.monotonic()
    i, out, back = 0, 0, 0
    seen: list[float] = []
    k = 0
    count_from = WARM * period  # traffic counted once the tables are full
    counted_out = counted_in = 0
    next_ask = 0.0
    end = sends[-1][0] if sends else 0.0
    while True:
        now = time.monotonic() - t0
        while i < len(sends) and sends[i][0] <= now:
            _, data, src = sends[i]
            try:
                socks[src].sendto(data, dest)
                out += 1
                counted_out += sends[i][0] >= count_from
            except OSError:
                pass
            i += 1
        for key, _ in sel.select(0):
            s = key.fileobj
            while True:
                try:
                    s.recv(4096)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    break
                back += 1
                counted_in += now >= count_from
        if k < len(sched) and now >= sched[k][0] and now >= next_ask:
            t_change, x = sched[k]
            asked = time.monotonic() - t0
            if ports.best() == names[x]:
                seen.append(asked - t_change)
                k += 1
            elif asked - t_change > HOLD * period:
                seen.append(math.inf)
                k += 1
            next_ask = asked + 0.01
        if i >= len(sends) and k >= len(sched):
            break
        wake = min(sends[i][0] if i < len(sends) else end, next_ask if k < len(sched) else end)
        time.sleep(max(0.0, min(0.005, wake - (time.monotonic() - t0))))
    span = max(1e-9, (time.monotonic() - t0) - count_from)
    return {"seen": seen, "msgs_per_s": (counted_out + counted_in) / span}
