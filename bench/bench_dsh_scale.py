#!/usr/bin/env python3
"""Benchmark dshd at scale: one real daemon among N members, the others impersonated.

Part 1 (for each N in --sizes): a real ``beo dshd`` (authenticated, period
1.5 s, expiry 3 periods) in a cluster of N members on loopback; the other
N-1 are impersonated by one load-generator process (a UDP socket per member
on 127.3.x.y, so that each datagram comes from its member's address):

* **gossip** (this design): the members push to the daemon as the gossip
  gives it, ``fanout`` datagrams a round in all, from members taken in turn;
  each datagram holds what that member would hold: its own report, the
  least-loaded reports, members that just left them, a random sample, each
  signed by its origin and as old as the gossip makes it (how long a report
  takes to reach that member: from an epidemic run at N, the same fanout and
  round). The generator reads every datagram the daemon sends (and checks
  them: authentic, for that member, never a dead member's report past its
  expiry).
* **old** (``--old-tree DIR``, the code before issue 24, e.g. from ``git
  archive``): every member sends its report to the daemon once a period and
  the daemon sends its own to every member, as the old design did.
* **baseline** (``--baseline-tree DIR``): the gossip as above, with the daemon
  of another source tree (an earlier commit's worktree): the same run before
  and after a change of the daemon's inside. ``--repeat K`` alternates the
  designs K times per size and prints medians (the box is shared: noise).

Measured: the daemon's CPU over --window s from /proc/PID/stat (utime +
stime; schedstat for the digits), datagrams and bytes in and out per
second (counted by the generator, both ways), members up in the daemon's
table; the periods until the best port names a member that became idle,
and until it stops naming it once busy; the time from a dead member's last
report until the daemon's table has it down.

Part 2 (--sim-sizes): every status table: the gossip state machines of all
N members in one process on a simulated clock (beokit.dsh.gossip_sim, 5 %
loss): the same convergence and expiry for every member's table.

    python bench/bench_dsh_scale.py [--sizes 1000,10000] [--old-tree /tmp/dsh-old]
                                    [--window 30] [--sim-sizes 1000] [--plot docs/bench-dsh.png]
                                    [--baseline-tree /tmp/wt-old --repeat 3]
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import multiprocessing as mp
import os
import random
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from beokit.dsh import gossip, packet
from beokit.dsh.client import query

BEO = [sys.executable, "-m", "beokit.cli"]
DAEMON = "127.0.1.250"
SECRET = b"bench-secret"
CPUS = 2


def sim_addr(i: int) -> str:
    return f"127.3.{i // 250}.{i % 250 + 1}"


def free_port(addrs: list[str]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        try:
            for a in addrs:
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as t:
                        t.bind((a, p))
            return p
        except OSError:
            continue


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime + stime from /proc/PID/stat, in clock ticks' seconds; schedstat's ns)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    stat = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        sched = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        sched = stat
    return stat, sched


def epidemic_delays(n: int, fanout: int, round_s: float, seed: int = 7) -> list[float]:
    """How long a new report takes to reach each member: push gossip at N (each
    informed member sends to ``fanout`` random members at each of its rounds,
    rounds jittered +-10 %), from a random member's next round."""
    rng = random.Random(seed)
    informed = [math.inf] * n
    informed[0] = 0.0
    heap = [(rng.uniform(0, round_s), i) for i in range(n)]
    heapq.heapify(heap)
    left = n - 1
    while left and heap[0][0] < 40 * round_s:
        t, i = heapq.heappop(heap)
        if informed[i] <= t:
            for _ in range(fanout):
                j = rng.randrange(n)
                if informed[j] == math.inf:
                    informed[j] = t + 0.0002
                    left -= 1
        heapq.heappush(heap, (t + round_s * rng.uniform(0.9, 1.1), i))
    return sorted(d for d in informed[1:] if d < math.inf)


# ------------------------------------------------------------ the generator


class Model:
    """The cluster as the impersonated members see it: loads, report versions, deaths.

    Member i makes a report every round at its own phase (version v at
    ``t0 + phase_i + v * round``); a member s holds, of member c, the newest
    version made at least ``delay(s, c)`` before (a delay from the epidemic
    run: the gossip's own spread), so a change reaches the members, and the
    daemon through them, as fast as the gossip carries it."""

    def __init__(self, n: int, period: float, t0: float, wall0: float, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.n, self.period = n, period
        self.round = period / gossip.ROUNDS
        self.expire = 3 * period
        self.t0, self.wall0 = t0, wall0
        self.names = [sim_addr(i) for i in range(n)]
        self.phase = [rng.uniform(0, self.round) for _ in range(n)]
        self.loads: list[list[tuple[float, float]]] = [[(-1e9, rng.uniform(2.0, 6.0))]
                                                       for _ in range(n)]  # fmt: skip
        self.dead: dict[int, float] = {}  # member -> time of its last report
        self.changed: set[int] = set()
        self.delays = epidemic_delays(n + 1, gossip.FANOUT, self.round)
        self._signed: dict[tuple[int, int], bytes] = {}
        self._salt = rng.getrandbits(32)

    def load_at(self, i: int, t: float) -> float:
        for when, load in reversed(self.loads[i]):
            if when <= t:
                return load
        return self.loads[i][0][1]

    def set_load(self, i: int, load: float, now: float) -> None:
        self.loads[i].append((now, load))
        self.changed.add(i)

    def version(self, i: int, t: float) -> int | None:
        """The newest version member i had made by time t (None: none, or dead before)."""
        if i in self.dead:
            t = min(t, self.dead[i])
        v = math.floor((t - self.t0 - self.phase[i]) / self.round)
        return v if v >= 0 else None

    def made(self, i: int, v: int) -> float:
        return self.t0 + self.phase[i] + v * self.round

    def kill(self, i: int, now: float) -> float:
        v = self.version(i, now)
        last = self.made(i, v if v is not None else 0)
        self.dead[i] = last
        return last

    def delay(self, s: int, c: int) -> float:
        h = (s * 1_000_003 + c * 7_919 + self._salt) % len(self.delays)
        return self.delays[h]

    def record(self, c: int, v: int, now: float) -> tuple[int, bytes]:
        """(age ms, signed report) of member c's version v."""
        key = (c, v)
        raw = self._signed.get(key)
        made = self.made(c, v)
        if raw is None:
            load = self.load_at(c, made)
            r = packet.Report(self.names[c], v + 1, int(self.wall0 * 1000 + (made - self.t0) * 1000),
                         load, load, load, CPUS, 0, 8 << 20, 4 << 20, int(self.period * 1000))  # fmt: skip
            raw = packet.encode(r, SECRET)
            if len(self._signed) > 200_000:
                self._signed.clear()
            self._signed[key] = raw
        return math.ceil((now - made) * 1000), raw

    def score(self, c: int, t: float) -> float:
        return max(1.0, (self.load_at(c, t) + 1) / CPUS)

    def held(self, s: int, c: int, now: float) -> int | None:
        """The version of c that member s holds at ``now`` (None: none fresh)."""
        if c == s:
            return self.version(s, now)
        v = self.version(c, now - self.delay(s, c))
        if v is None or now - self.made(c, v) > self.expire:
            return None
        return v

    def push(self, s: int, now: float, rng: random.Random, pool: list[int]) -> list[tuple[int, bytes]]:
        """What member s sends the daemon now: own, candidates, demoted, sample."""
        own = self.held(s, s, now)
        if own is None:
            return []
        out = [self.record(s, own, now)]
        ranked = []
        for c in pool:
            if c == s:
                continue
            v = self.held(s, c, now)
            if v is not None:
                made = self.made(c, v)
                ranked.append((self.score(c, made), (c * 2_654_435_761 + s) & 0xFFFFFF, c, v))
        ranked.sort()
        cands = ranked[: gossip.CANDIDATES]
        out += [self.record(c, v, now) for *_, c, v in cands]
        taken = {s} | {c for *_, c, _ in cands}
        extra = 0
        for *_, c, v in ranked[gossip.CANDIDATES :]:  # left the candidates within a period
            if extra < gossip.EXTRA and c in self.changed and now - self.made(c, v) < self.period:
                out.append(self.record(c, v, now))
                taken.add(c)
                extra += 1
        for _ in range(4 * gossip.EXTRA):
            if extra >= gossip.EXTRA:
                break
            c = rng.randrange(self.n)
            v = self.held(s, c, now) if c not in taken else None
            if v is not None:
                out.append(self.record(c, v, now))
                extra += 1
            taken.add(c)
        return out

    def pool(self, now: float) -> list[int]:
        """Members that can be candidates somewhere: the least loaded now, those whose
        load changed, the dead (while their last report lives)."""
        best = sorted(range(self.n), key=lambda c: self.score(c, now))[: 3 * gossip.CANDIDATES]
        return sorted(set(best) | self.changed | set(self.dead))


class Generator:
    """The N-1 impersonated members, in a process of their own (so that the
    benchmark's queries do not delay them)."""

    def __init__(self, n: int, gport: int, period: float, mode: str) -> None:
        self.n, self.gport, self.period, self.mode = n, gport, period, mode
        self.parent, self.child = mp.Pipe()
        self.proc = mp.Process(target=self._main, daemon=True)

    def start(self) -> None:
        self.proc.start()
        if not self.parent.poll(120):
            raise RuntimeError("generator did not start")
        msg = self.parent.recv()
        if msg != "ready":
            raise RuntimeError(f"generator: {msg}")

    def ask(self, *cmd: object) -> object:
        self.parent.send(cmd)
        if not self.parent.poll(30):
            raise RuntimeError(f"generator did not answer {cmd}")
        return self.parent.recv()

    def close(self) -> None:
        try:
            self.parent.send(("stop",))
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()

    # ---- in the child
    def _main(self) -> None:
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            socks = []
            sel = selectors.EpollSelector()
            for i in range(self.n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((sim_addr(i), self.gport))
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, i)
                socks.append(s)
        except OSError as e:
            self.child.send(f"cannot bind {self.n} sockets: {e}")
            return
        self.child.send("ready")
        _Run(self, socks, sel).loop()


class _Run:
    def __init__(self, g: Generator, socks: list[socket.socket], sel: selectors.BaseSelector):
        self.g, self.socks, self.sel = g, socks, sel
        self.rng = random.Random(2)
        now = time.monotonic()
        self.model = Model(g.n, g.period, now, time.time())
        self.counts = {"out": 0, "in": 0, "out_bytes": 0, "in_bytes": 0, "bad": 0,
                       "records_in": 0, "dead_relayed_late": 0, "dead_relayed": 0}  # fmt: skip
        self.hop_seq = 0
        self.order: list[int] = []
        self.next_push = now
        self.direct = [(now + self.rng.uniform(0, g.period), i) for i in range(g.n)]
        heapq.heapify(self.direct)
        self.pool: list[int] = []
        self.pool_at = -1.0
        self.dest = (DAEMON, g.gport)

    def loop(self) -> None:
        while True:
            if self.g.child.poll():
                if not self._command(self.g.child.recv()):
                    return
            now = time.monotonic()
            due = self._send_due(now)
            for key, _ in self.sel.select(max(0.0, min(due - time.monotonic(), 0.02))):
                self._drain(key.fileobj, key.data)  # type: ignore[arg-type]

    def _command(self, cmd: tuple) -> bool:
        m, now, out = self.model, time.monotonic(), None
        if cmd[0] == "stop":
            return False
        if cmd[0] == "load":
            m.set_load(cmd[1], cmd[2], now)
            self.pool_at = -1.0
        elif cmd[0] == "kill":
            out = now - m.kill(cmd[1], now)  # how long ago it made its last report
            self.pool_at = -1.0
        elif cmd[0] == "counts":
            out = dict(self.counts, t=now)
        elif cmd[0] == "loads":
            out = [m.load_at(i, now) for i in range(m.n)]
        self.g.child.send(out)
        return True

    def _send_due(self, now: float) -> float:
        """Send what is due; return when the next send is."""
        if self.g.mode == "old":
            return self._send_direct(now)
        m = self.model
        gap = m.round / gossip.FANOUT  # the daemon gets FANOUT datagrams a round
        if now - self.pool_at > m.round:
            self.pool, self.pool_at = m.pool(now), now
        while self.next_push <= now:
            self.next_push += gap * self.rng.uniform(0.5, 1.5)
            if not self.order:  # every member in turn, a new order each pass
                self.order = list(range(m.n))
                self.rng.shuffle(self.order)
            s = self.order.pop()
            if s in m.dead:
                continue
            records = m.push(s, now, self.rng, self.pool)
            if not records:
                continue
            self.hop_seq += 1
            data = packet.encode_gossip(m.names[s], DAEMON, self.hop_seq, int(time.time() * 1000),
                                   records, SECRET)  # fmt: skip
            self._sendto(s, data)
        return self.next_push

    def _send_direct(self, now: float) -> float:
        """The old design: every member's own report to the daemon once a period."""
        m, heap = self.model, self.direct
        while heap[0][0] <= now:
            t, i = heapq.heapreplace(heap, (heap[0][0] + m.period, heap[0][1]))
            if i in m.dead:
                continue
            load = m.load_at(i, now)
            self.hop_seq += 1
            r = packet.Report(m.names[i], self.hop_seq, int(time.time() * 1000), load, load, load,
                         CPUS, 0, 8 << 20, 4 << 20, int(m.period * 1000))  # fmt: skip
            self._sendto(i, packet.encode(r, SECRET))
        return heap[0][0]

    def _sendto(self, i: int, data: bytes) -> None:
        try:
            self.socks[i].sendto(data, self.dest)
            self.counts["out"] += 1
            self.counts["out_bytes"] += len(data)
        except OSError:
            pass

    def _drain(self, s: socket.socket, i: int) -> None:
        m = self.model
        while True:
            try:
                data = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            now = time.monotonic()
            self.counts["in"] += 1
            self.counts["in_bytes"] += len(data)
            if self.g.mode == "old":
                continue
            try:
                d = packet.decode_gossip(data, SECRET)
            except packet.PacketError:
                self.counts["bad"] += 1
                continue
            if d.dest != m.names[i] or d.sender != DAEMON:
                self.counts["bad"] += 1
            self.counts["records_in"] += len(d.records)
            for age, _raw, name, _sent, _seq in d.records:
                c = _index(name or "")
                if c in m.dead:  # a dead member's report: never past its expiry
                    self.counts["dead_relayed"] += 1
                    true_age = now - m.dead[c]
                    if true_age > m.expire + 0.005 or age / 1000 < true_age - 0.005:
                        self.counts["dead_relayed_late"] += 1


def _index(name: str) -> int:
    """Inverse of sim_addr (-1 for another name)."""
    parts = name.split(".")
    if len(parts) != 4 or parts[:2] != ["127", "3"]:
        return -1
    return int(parts[2]) * 250 + int(parts[3]) - 1


# ------------------------------------------------------------ one run


class Queries:
    """The daemon's status and best ports, asked by the client of the daemon's own
    source tree (the ports' MACs changed in issue 20: each client speaks its own
    tree's; a baseline tree's client runs in a helper process)."""

    HELPER = ("import json, sys\n"
              "from beokit.dsh.client import query\n"
              "host, secret = sys.argv[1], bytes.fromhex(sys.argv[2])\n"
              "for line in sys.stdin:\n"
              "    port, purpose, request, timeout = json.loads(line)\n"
              "    try:\n"
              "        out = {'ok': query(host, port, purpose, request, secret, timeout)}\n"
              "    except Exception as e:\n"
              "        out = {'error': repr(e)}\n"
              "    print(json.dumps(out), flush=True)\n")  # fmt: skip

    def __init__(self, sport: int, bport: int, tree: str | None = None) -> None:
        self.sport, self.bport = sport, bport
        self.helper: subprocess.Popen | None = None
        if tree:
            env = dict(os.environ, PYTHONPATH=str(Path(tree, "src")))
            argv = [sys.executable, "-c", self.HELPER, DAEMON, SECRET.hex()]
            self.helper = subprocess.Popen(argv, env=env,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           text=True)  # fmt: skip

    def ask(self, port: int, purpose: str, request: str, timeout: float) -> str:
        if self.helper is None:
            return query(DAEMON, port, purpose, request, SECRET, timeout)
        assert self.helper.stdin is not None and self.helper.stdout is not None
        self.helper.stdin.write(json.dumps([port, purpose, request, timeout]) + "\n")
        self.helper.stdin.flush()
        out = json.loads(self.helper.stdout.readline())
        if "error" in out:
            raise RuntimeError(f"query {purpose}: {out['error']}")
        return str(out["ok"])

    def status(self) -> dict:
        return json.loads(self.ask(self.sport, "status", "json", 20.0))

    def best(self) -> str:
        return self.ask(self.bport, "best", "best", 5.0).split()[1]

    def close(self) -> None:
        if self.helper is not None:
            self.helper.stdin.close()  # type: ignore[union-attr]
            self.helper.wait(10)


def poll(cond, timeout: float, step: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return math.nan


def daemon_run(n: int, mode: str, period: float, window: float, tmp: Path,
               tree: str | None) -> dict:  # fmt: skip
    """One real daemon among ``n`` members ("gossip": this code; "base": the gossip of
    --baseline-tree; "old": the all-to-all daemon of --old-tree)."""
    sims = n - 1
    addrs = [DAEMON] + [sim_addr(i) for i in range(sims)]
    gport = free_port([DAEMON, *addrs[1:60], addrs[-1]])
    sport, bport = free_port([DAEMON]), free_port([DAEMON])
    (tmp / "cluster").write_text("".join(f"{a}\n" for a in addrs))
    (tmp / "secret").write_bytes(SECRET)
    env = dict(os.environ)
    if mode != "gossip":
        env["PYTHONPATH"] = str(Path(tree or "", "src"))
    gen = Generator(sims, gport, period, "old" if mode == "old" else "gossip")
    ports = Queries(sport, bport, tree if mode != "gossip" else None)
    gen.start()
    d = subprocess.Popen([*BEO, "dshd", "-f", str(tmp / "cluster"), "--bind", DAEMON, "-g",
                          str(gport), "-t", str(sport), "-r", str(bport), "--period",
                          str(period), "--expire", "3", "--extra-load", "0", "--secret-file",
                          str(tmp / "secret"), "--log", str(tmp / f"dshd-{mode}-{n}.log")],
                         stdin=subprocess.DEVNULL, env=env)  # fmt: skip
    try:
        if math.isnan(poll(lambda: _open(DAEMON, sport), 60, 0.2)):
            raise RuntimeError(f"dshd ({mode}, {n}) did not start")
        time.sleep(4 * period)  # warm up: the table fills
        return _measure(n, mode, period, window, d.pid, gen, ports)
    finally:
        ports.close()
        gen.close()
        d.terminate()
        d.wait(20)


def _measure(n: int, mode: str, period: float, window: float, pid: int, gen: Generator,
             ports: Queries) -> dict:  # fmt: skip
    up0 = ports.status()["up"]
    c0, (s0, h0) = gen.ask("counts"), cpu_seconds(pid)
    time.sleep(window)
    c1, (s1, h1) = gen.ask("counts"), cpu_seconds(pid)
    assert isinstance(c0, dict) and isinstance(c1, dict)
    dt = c1["t"] - c0["t"]
    row = {"n": n, "mode": mode, "window": dt, "up": up0, "bad": c1["bad"],
           "cpu_stat": (s1 - s0) / dt * 100, "cpu_sched": (h1 - h0) / dt * 100,
           "in": (c1["out"] - c0["out"]) / dt, "out": (c1["in"] - c0["in"]) / dt,
           "in_bytes": (c1["out_bytes"] - c0["out_bytes"]) / dt,
           "out_bytes": (c1["in_bytes"] - c0["in_bytes"]) / dt}  # fmt: skip
    loads = gen.ask("loads")
    assert isinstance(loads, list)
    x = sorted(range(len(loads)), key=loads.__getitem__)[len(loads) // 2]  # a middling one
    gen.ask("load", x, 0.0)  # idle now: the best of the cluster
    row["idle"] = poll(lambda: ports.best() == sim_addr(x), 10 * period) / period
    gen.ask("load", x, 9.0)  # busy again
    row["busy"] = poll(lambda: ports.best() != sim_addr(x), 10 * period) / period
    time.sleep(period)
    row.update(_death(gen, ports, period))
    c2 = gen.ask("counts")
    assert isinstance(c2, dict)
    row["dead_relayed"], row["dead_relayed_late"] = c2["dead_relayed"], c2["dead_relayed_late"]
    return row


def _death(gen: Generator, ports: Queries, period: float) -> dict:
    """The best member dies: how old its last report is when the daemon has it down,
    the oldest it was seen up, and whether it was up at any look past its expiry."""
    dead = ports.best()
    di = _index(dead)
    if di < 0:
        return {}
    since = float(gen.ask("kill", di))  # type: ignore[arg-type]
    last = time.monotonic() - since  # when it made its last report (on our clock)
    expire = 3 * period
    oldest_up, up_late, down_at = 0.0, 0, math.nan
    while time.monotonic() - last < expire + 3 * period:
        t_ask = time.monotonic()
        rows = {m["name"]: m for m in ports.status()["members"]}
        if rows[dead]["up"]:
            oldest_up = max(oldest_up, rows[dead]["age"])
            up_late += t_ask - last > expire + 0.05  # asked after its expiry: must be down
        elif math.isnan(down_at):
            down_at = time.monotonic() - last
            break
        time.sleep(0.05)
    return {"dead_gone": down_at, "dead_oldest_up": oldest_up, "dead_up_late": up_late}


def _open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# ------------------------------------------------------------ every table


def sim_run(n: int, loss: float) -> dict:
    """Part 2: every member's table, in the simulation (the tests' scenario)."""
    from beokit.dsh.gossip_sim import scenario

    t0 = time.process_time()
    o = scenario(n, loss, secret=SECRET)
    return {"n": n, "loss": loss, "o": o, "cpu": time.process_time() - t0}


# --------------------------------------------------------------------- main


LABELS = {"gossip": "gossip (new)", "base": "gossip (baseline tree)", "old": "all-to-all (old)"}


def part1(a: argparse.Namespace) -> list[dict]:
    """One real daemon among N members, for each size, design and repetition."""
    sizes = [int(x) for x in a.sizes.split(",") if x]
    modes = ["gossip"] + (["base"] if a.baseline_tree else []) + (["old"] if a.old_tree else [])
    print(f"## 1. one real dshd among N members (N-1 impersonated), period {a.period:g} s, "
          f"expiry 3 periods, authenticated; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
          f"; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| N | design | CPU % of a core (stat / schedstat) | datagrams in/s | out/s | in+out/s "
          "| KB/s in | KB/s out | members up here | idle member best after (periods) "
          "| busy member dropped after (periods) | dead member: oldest report seen up / "
          "down seen after its last report (s) | goal: < 1 %, < 50/s, <= 3 periods, "
          "<= expiry |")
    print("|" + "---|" * 13)
    rows = []
    for n in sizes:
        for rep in range(a.repeat):
            for mode in modes if rep % 2 == 0 else modes[::-1]:
                tree = a.baseline_tree if mode == "base" else a.old_tree
                with tempfile.TemporaryDirectory(prefix="bkd-scale-") as d:
                    r = daemon_run(n, mode, a.period, a.window, Path(d), tree)
                r["load"] = os.getloadavg()[0]
                rows.append(r)
                print_row(r, a.period)
    for r in rows:
        if r["mode"] != "old":
            print(f"\nN={r['n']} ({LABELS[r['mode']]}): the generator read {r['bad']} bad "
                  f"datagrams from the daemon; the daemon relayed the dead member's report "
                  f"{r['dead_relayed']} times, {r['dead_relayed_late']} of them past its expiry "
                  f"or dated too young; the daemon's table was seen up past the expiry "
                  f"{r.get('dead_up_late')} times; {r['up']} members up in the daemon's table")
    if a.repeat > 1 or len(modes) > 1:
        print_medians(rows, sizes, modes)
    return rows


def print_row(r: dict, period: float) -> None:
    total = r["in"] + r["out"]
    ok = (r["cpu_stat"] < 1.0 and total < 50 and r["idle"] <= 3 and r["busy"] <= 3
          and r.get("dead_oldest_up", math.inf) <= 3 * period
          and r.get("dead_up_late", 1) == 0)  # fmt: skip
    print(f"| {r['n']} | {LABELS[r['mode']]} | "
          f"{r['cpu_stat']:.2f} / {r['cpu_sched']:.2f} | {r['in']:.1f} | {r['out']:.1f} | "
          f"{total:.1f} | {r['in_bytes'] / 1000:.1f} | {r['out_bytes'] / 1000:.1f} | "
          f"{r['up']} | {r['idle']:.2f} | {r['busy']:.2f} | "
          f"{r.get('dead_oldest_up', math.nan):.2f} / {r.get('dead_gone', math.nan):.2f} | "
          f"{'yes' if ok else 'no'} |", flush=True)


def print_medians(rows: list[dict], sizes: list[int], modes: list[str]) -> None:
    """Per size and design: the median CPU (and its range), datagrams, convergence."""
    print("\n| N | design | runs | CPU % of a core (schedstat), median [min-max] | datagrams "
          "in+out/s | idle best (periods) | busy dropped (periods) | load average |")
    print("|" + "---|" * 8)
    for n in sizes:
        for mode in modes:
            rs = [r for r in rows if r["n"] == n and r["mode"] == mode]
            cpu = [r["cpu_sched"] for r in rs]
            print(f"| {n} | {LABELS[mode]} | {len(rs)} | {statistics.median(cpu):.2f} "
                  f"[{min(cpu):.2f}-{max(cpu):.2f}] | "
                  f"{statistics.median(r['in'] + r['out'] for r in rs):.1f} | "
                  f"{statistics.median(r['idle'] for r in rs):.2f} | "
                  f"{statistics.median(r['busy'] for r in rs):.2f} | "
                  f"{min(r['load'] for r in rs):.1f}-{max(r['load'] for r in rs):.1f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000", help="cluster sizes (default 1000,10000)")
    p.add_argument("--period", type=float, default=1.5, help="report period (default 1.5)")
    p.add_argument("--window", type=float, default=30.0, help="CPU window, s (default 30)")
    p.add_argument("--old-tree", metavar="DIR",
                   help="also run the old design from this source tree (git archive of the "
                   "commit before issue 24, with src/beokit)")  # fmt: skip
    p.add_argument("--sim-sizes", default="1000", help="part 2 sizes ('' to skip)")
    p.add_argument("--plot", metavar="PNG", help="draw CPU and datagrams against N")
    p.add_argument("--plot-from", metavar="FILE",
                   help="only draw --plot from the part-1 table of an earlier run's output")  # fmt: skip
    p.add_argument("--baseline-tree", metavar="DIR",
                   help="also run the gossip daemon of this source tree (with src/beokit; "
                   "e.g. a git worktree of an earlier commit), interleaved: before/after")  # fmt: skip
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="run every size and design K times, the designs alternating "
                   "(default 1); medians at the end")  # fmt: skip
    a = p.parse_args()
    if a.plot_from:
        plot(rows_of(Path(a.plot_from).read_text()), a.plot or "bench-dsh.png")
        return 0
    rows = part1(a)
    sim_sizes = [int(x) for x in a.sim_sizes.split(",") if x]
    if any(n > SIM_MAX for n in sim_sizes):
        print(f"\n(part 2 skips sizes above {SIM_MAX}: ~0.4 MB and ~10-20 ms of CPU per "
              "simulated member and period: the tables share one roster and hold the ~300 "
              "members each heard of)")
        sim_sizes = [n for n in sim_sizes if n <= SIM_MAX]
    if sim_sizes:
        print("\n## 2. every table: all N members' gossip in one process, simulated clock, "
              "5 % loss\n")
        print("| N | idle member best in every table (periods) | busy member dropped in every "
              "table (periods) | dead member: tables with it up before / 0.05 s before expiry "
              "/ after expiry | datagrams out per member per period | in | largest datagram "
              "(bytes) | members up per table |")
        print("|" + "---|" * 8)
        for n in sim_sizes:
            s = sim_run(n, 0.05)
            o = s["o"]
            print(f"| {n} | {o.idle_best:.2f} | {o.busy_demoted:.2f} | {o.dead_up_before} / "
                  f"{o.dead_up_late} / {0 if o.dead_gone else 'some'} | "
                  f"{min(o.sent_per_period):.1f}-{max(o.sent_per_period):.1f} | "
                  f"{min(o.received_per_period):.1f}-{max(o.received_per_period):.1f} | "
                  f"{o.max_bytes} | {min(o.table_sizes)}-{max(o.table_sizes)} |", flush=True)
    if a.plot:
        plot(rows, a.plot)
    return 0


SIM_MAX = 12_000  # 10,000 members: ~4 GB (before the shared roster: N² members, 24 GB at 10,000)


def rows_of(text: str) -> list[dict]:
    """The part-1 rows (N, design, CPU, datagrams) of a run's printed table."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and cells[0].isdigit() and "(" in cells[1]:
            mode = "base" if "baseline" in cells[1] else "gossip" if "new" in cells[1] else "old"
            rows.append({"n": int(cells[0]), "mode": mode,
                         "cpu_stat": float(cells[2].split("/")[0]), "in": float(cells[3]),
                         "out": float(cells[4])})  # fmt: skip
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for mode, label, mark in (("old", "all-to-all (before)", "s--"), ("gossip", "gossip", "o-")):
        rs = [r for r in rows if r["mode"] == mode]
        if not rs:
            continue
        ns = [r["n"] for r in rs]
        ax[0].plot(ns, [r["cpu_stat"] for r in rs], mark, label=label)
        ax[1].plot(ns, [r["in"] + r["out"] for r in rs], mark, label=label)
    ax[0].axhline(1.0, color="r", ls=":", label="goal 1 %")
    ax[0].set(xscale="log", yscale="log", xlabel="members", ylabel="dshd CPU (% of a core)")
    ax[1].axhline(50, color="r", ls=":", label="goal 50/s")
    ax[1].set(xscale="log", yscale="log", xlabel="members", ylabel="datagrams in + out per s")
    for a in ax:
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"\n(plot: {path})")


if __name__ == "__main__":
    sys.exit(main())
