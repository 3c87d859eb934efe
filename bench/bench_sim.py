#!/usr/bin/env python3
"""Calibrate the simulator (beokit.sim) against real runs on this machine.

Every point runs ``--runs`` times (median; the spread is printed) and is
printed beside the model's prediction with the error in per cent.  The
model's machine parameters are *measured* first, by runs of their own (the
``params`` part), and then used to predict the other points:

* launch CPU per leaf and per agent: ``beo run -R exec --launch-delay 0``
  with the whole run in a cpuacct cgroup (every process of it, agents forked
  by the fork server too), CPU against N; an agent's own work per relayed
  line, per leaf it runs and per agent it launches: every agent of trees of
  1000 hosts accounts for its CPU at its exit (``AGENT_ACCT``, forked by the
  fork server in place of the agent's entry point, which it wraps), and a
  least-squares fit over them; what a live agent burns waiting, from its
  threads' CPU in /proc while the agents of a tree wait in ``sleep``;
* nettee: the CPU per byte of a chain (GNU time of every process, 1 GiB
  through chains of 2 and 6 nodes), the control plane (1 KiB through
  chains of 1..48 receivers: start + a x hops; the per-node cost of the
  messages that name a whole subtree, ``ready`` and ``report``, from
  nettee's own encoder and decoder), the loopback rate of one hop;
* the virtual cluster: TCP's payload rate through one shaped port (the
  framing efficiency) and the queue every hop holds (``tc -s qdisc``
  backlog sampled on every port during a 16-node chain);
* the machine's load: the CPU that *other* processes use during each run
  (``/proc/stat`` less our cgroup) is taken off the 2 cores the model's
  one-box runs share.

Parts (``--parts``): ``params`` (always run first when a later part needs
it), ``run`` (beo run -R exec --launch-delay 0.1 at several N and k),
``chain`` (loopback nettee chains), ``vcluster`` (nettee chains on a shaped
virtual cluster, root only, under the namespace lock; also a node killed
mid-stream under ``-heal``), ``gossip`` (the model against dshd's pure state
machine, and against one real daemon among N - 1 members played by that state
machine, ``_sim_dshd.py``, or any ``--gossip-bench MODULE:FUNC``, e.g.
``bench_dsh_scale:daemon_run``, dshd's own benchmark).

    python3 bench/bench_sim.py                      # params, run, chain (no root needed)
    python3 bench/bench_sim.py --parts params,run,chain,vcluster --runs 3 --json cal.json
    python3 bench/bench_sim.py --project --png-dir docs   # = python3 -m beokit.sim project
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from beokit.sim import machine as M  # noqa: E402
from beokit.sim.cast import CastSpec, NetteeCosts, Network, simulate_cast  # noqa: E402
from beokit.sim.launch import simulate_launch  # noqa: E402

BEO = [sys.executable, "-m", "beokit.cli"]
NCPU = os.cpu_count() or 1
CGROOT = Path("/sys/fs/cgroup/cpuacct")
MiB, GiB = 1 << 20, 1 << 30

# ------------------------------------------------------------------ measuring


def _box_busy() -> float:
    """CPU-seconds the whole machine has been busy (all cores, /proc/stat)."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Our CPU (a cpuacct cgroup this process and all it starts belong to) and the
    CPU every other process of the machine uses meanwhile.  With ``quiet`` > 0 every
    span first waits (up to ``quiet`` s) for the others to use under ``max_others``
    cores; :func:`steady` repeats a run they disturbed (up to ``retries`` times)."""

    def __init__(self, quiet: float = 0.0, max_others: float = 0.3, retries: int = 3) -> None:
        self.path: Path | None = None
        self.wait = quiet
        self.max_others = max_others
        self.retries = retries
        if os.geteuid() == 0 and (CGROOT / "cgroup.procs").exists():
            path = CGROOT / f"beokit-bench-sim-{os.getpid()}"
            try:
                path.mkdir(exist_ok=True)
                (path / "cgroup.procs").write_text(str(os.getpid()))
                self.path = path
            except OSError:
                self.path = None
        if self.path is None:
            print("(no cpuacct cgroup: our CPU from getrusage; agents of the fork server "
                  "are not counted)", file=sys.stderr)  # fmt: skip

    def ours(self) -> float:
        if self.path is not None:
            return int((self.path / "cpuacct.usage").read_text()) / 1e9
        import resource

        r = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return sum(x.ru_utime + x.ru_stime for x in r)

    @contextlib.contextmanager
    def span(self) -> Iterator[dict[str, float]]:
        """``with meter.span() as m:`` ... then m["wall"], m["cpu"], m["others"] (cores)."""
        got: dict[str, float] = {}
        if self.wait > 0:
            self.quiet(self.max_others, self.wait)
        w0, c0, b0 = time.monotonic(), self.ours(), _box_busy()
        yield got
        wall = time.monotonic() - w0
        cpu = self.ours() - c0
        busy = _box_busy() - b0
        got.update(wall=wall, cpu=cpu, others=max(0.0, (busy - cpu) / wall) if wall else 0.0)

    def quiet(self, limit: float, wait: float) -> float:
        """Wait (at most ``wait`` s) until other processes use under ``limit`` cores over
        half a second; returns what they used last."""
        deadline = time.monotonic() + wait
        while True:
            w0, c0, b0 = time.monotonic(), self.ours(), _box_busy()
            time.sleep(0.5)
            m = {"others": (_box_busy() - b0 - self.ours() + c0) / (time.monotonic() - w0)}
            if m["others"] < limit or time.monotonic() > deadline:
                return m["others"]

    def close(self) -> None:
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            (CGROOT / "cgroup.procs").write_text(str(os.getpid()))
        for _ in range(50):  # leftover processes of a run may take a moment to go
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


@dataclass
class Point:
    """One calibration point: measured runs, the model's prediction for each run."""

    part: str
    label: str
    measured: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)
    note: str = ""
    unit: str = "s"
    others: list[float] = field(default_factory=list)  # cores other programs used in each run
    cpu: list[float] = field(default_factory=list)  # CPU-seconds of each run (ours)
    cpu_model: list[float] = field(default_factory=list)  # and the model's
    pooled: float | None = None  # the median of every sample of every run (else of the runs)

    @property
    def med(self) -> float:
        return statistics.median(self.measured) if self.pooled is None else self.pooled

    @property
    def pred(self) -> float:
        return statistics.median(self.model)

    @property
    def error(self) -> float:
        return self.pred / self.med - 1

    @property
    def spread(self) -> float:
        """(max - min) / median of the measured runs."""
        return (max(self.measured) - min(self.measured)) / self.med


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x -> (a, b)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


# ------------------------------------------------------------------ beo run


# beo run's own CLI, run in a wrapper that prints the root process's CPU when it exits
# (its threads, not its children): the root's share of a run's CPU
ROOT_WRAP = """
import atexit, os, resource, runpy, sys
def _root_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    sys.stderr.write("BENCH-SIM-ROOT-CPU %f\\n" % (r.ru_utime + r.ru_stime))
atexit.register(_root_cpu)
if os.environ.get("BENCH_SIM_AGENTS"):  # the fork server forks AGENT_ACCT's main
    sys.path.insert(0, os.environ["BENCH_SIM_AGENTS"])
    from beokit import proc
    _start = proc.start_fork_server
    proc.start_fork_server = lambda path, target, *a, **kw: _start(
        path, "bench_sim_agent_acct:main", *a, **kw)
sys.argv = ["beo"] + sys.argv[1:]
runpy.run_module("beokit.cli", run_name="__main__")
"""


# every forked agent, at its exit: its CPU (since its fork), the leaves and agents it
# launched, the lines it relayed, its life (one line in $BENCH_SIM_AGENTS/out/PID)
AGENT_ACCT = """
import os, resource, time
from beokit.launch import agent as A
N = {"leaves": 0, "agents": 0, "relayed": 0}
def _count(key, fn, many=None):
    def wrapped(*a, **kw):
        N[key] += 1 if many is None else len(a[many])
        return fn(*a, **kw)
    return wrapped
A.run_leaf = _count("leaves", A.run_leaf)
A.Agent._launch = _count("agents", A.Agent._launch)
A.Agent._flush = _count("relayed", A.Agent._flush, many=1)
def main(line):
    t0, real = time.monotonic(), os._exit
    def exit_(rc):
        r = resource.getrusage(resource.RUSAGE_SELF)
        out = os.path.join(os.environ["BENCH_SIM_AGENTS"], "out", str(os.getpid()))
        with open(out, "w") as fh:
            fh.write("%f %d %d %d %f\\n" % (r.ru_utime + r.ru_stime, N["leaves"],
                     N["agents"], N["relayed"], time.monotonic() - t0))
        real(rc)
    os._exit = exit_
    return A.main(line)
"""


def agent_fit(meter: Meter, runs: int, n: int = 1000) -> dict[str, float]:
    """Least squares over every agent of ``runs`` trees (k=2 and k=4, ``n`` hosts,
    --launch-delay 0.1) of its CPU = base + leaf x leaves it ran + child x agents it
    launched + relay x lines it relayed: what an agent's parent-side work costs."""
    rows: list[list[float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sim-acct-") as tmp:
        Path(tmp, "bench_sim_agent_acct.py").write_text(AGENT_ACCT)
        os.makedirs(Path(tmp, "out"))
        os.environ["BENCH_SIM_AGENTS"] = tmp
        try:
            for _ in range(runs):
                for k in (2, 4):
                    beo_run(meter, ["--tree", "-k", str(k), "--launch-delay", "0.1", f"n[1-{n}]"])
        finally:
            del os.environ["BENCH_SIM_AGENTS"]
        for f in Path(tmp, "out").iterdir():
            rows.append([float(x) for x in f.read_text().split()])
    ys = [r[0] for r in rows]
    xs = [[1.0, r[1], r[2], r[3]] for r in rows]
    base, leaf, child, relay = _least_squares(xs, ys)
    return {"base": base, "leaf": leaf, "child": child, "relay": relay, "agents": len(rows)}


def live_agent_cpu() -> tuple[float, int, float]:
    """What a live agent burns waiting: the agents of ``beo run -k 2 'n[1-200]' --
    sleep 6`` (children of its fork server), their threads' CPU
    (/proc/PID/task/*/schedstat) from 2 s to 5 s into the run.  (Cores a second
    each, agents, seconds watched.)"""

    def ppid(pid: str) -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]

    def agents() -> dict[str, int]:
        got = {}
        for pid in os.listdir("/proc"):
            try:
                if (not pid.isdigit() or Path(f"/proc/{pid}/comm").read_text().strip()
                        != "beo-agent" or ppid(ppid(pid)) != str(run.pid)):
                    continue  # fmt: skip
                got[pid] = sum(int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
                               for t in os.listdir(f"/proc/{pid}/task"))  # fmt: skip
            except (OSError, ValueError):
                pass  # gone meanwhile
        return got

    cmd = [sys.executable, "-m", "beokit.cli", "run", "-R", "exec", "-k", "2",
           "--launch-delay", "0", "n[1-200]", "--", "sleep", "6"]  # fmt: skip
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(2.0)
        a, t0 = agents(), time.monotonic()
        time.sleep(3.0)
        b, t1 = agents(), time.monotonic()
    finally:
        run.wait(timeout=60)
    both = [p for p in a if p in b]
    spent = sum(b[p] - a[p] for p in both) / 1e9
    return (spent / len(both) / (t1 - t0) if both else 0.0), len(both), t1 - t0


def agent_costs(meter: Meter, runs: int, spawn: float, watch: float,
                log: Callable[[str], None]) -> dict[str, float]:  # fmt: skip
    """An agent's parent-side costs, from :func:`agent_fit`: a relayed line
    (``relay_cpu``), a message it sends for a host it watches (``emit_cpu``: what a
    leaf costs it beyond the root's Popen and watching, over 3 messages), an agent
    it launches (``agent_launch_cpu``)."""
    fit = agent_fit(meter, runs)
    emit = max(0.0, (fit["leaf"] - spawn - watch) / 3)
    log(f"  -> every agent of {runs} trees k=2 and k=4 of 1000 hosts ({fit['agents']:.0f} "
        f"agents, least squares): {fit['base'] * 1e3:.2f} ms + {fit['leaf'] * 1e3:.2f} ms a "
        f"leaf it ran + {fit['child'] * 1e3:.2f} ms an agent it launched + "
        f"{fit['relay'] * 1e6:.0f} us a line it relayed; a message it sends for a leaf "
        f"{emit * 1e6:.0f} us")  # fmt: skip
    return {"relay_cpu": max(0.0, fit["relay"]), "emit_cpu": emit,
            "agent_launch_cpu": max(0.0, fit["child"])}  # fmt: skip


def _least_squares(xs: list[list[float]], ys: list[float]) -> list[float]:
    """The normal equations, solved by Gaussian elimination (a few unknowns)."""
    m = len(xs[0])
    a = [[sum(x[i] * x[j] for x in xs) for j in range(m)]
         + [sum(x[i] * y for x, y in zip(xs, ys, strict=True))] for i in range(m)]  # fmt: skip
    for c in range(m):
        p = max(range(c, m), key=lambda r: abs(a[r][c]))
        a[c], a[p] = a[p], a[c]
        for r in range(m):
            if r != c and a[c][c]:
                f = a[r][c] / a[c][c]
                a[r] = [v - f * w for v, w in zip(a[r], a[c], strict=True)]
    return [a[i][m] / a[i][i] if a[i][i] else 0.0 for i in range(m)]


DISCARDED = [0]  # runs thrown away because other programs used the machine meanwhile


def steady(meter: Meter, fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``fn()`` again (at most ``meter.retries`` more times) while other programs used
    more than ``meter.max_others`` cores during it; the last run is kept regardless.
    A run that failed (RuntimeError: on a machine this loaded a launch can time out)
    is tried again the same way, and the error raised if the last one fails too."""
    for _ in range(meter.retries):
        try:
            got = fn()
        except RuntimeError as exc:
            print(f"  (a run failed, tried again: {str(exc).splitlines()[0][:120]})")
            DISCARDED[0] += 1
            continue
        if got["others"] <= meter.max_others:
            return got
        DISCARDED[0] += 1
    return fn()


def beo_run(meter: Meter, args: list[str], cmd: str = "true") -> dict[str, float]:
    """One ``beo run --json -R exec ARGS -- CMD``: elapsed, CPU (ours, the root's), others."""
    return steady(meter, lambda: _beo_run(meter, args, cmd))


def _beo_run(meter: Meter, args: list[str], cmd: str) -> dict[str, float]:
    with meter.span() as m:
        cp = subprocess.run([sys.executable, "-c", ROOT_WRAP, "run", "--json", "-R", "exec",
                             *args, "--", cmd], capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)  # fmt: skip
    if cp.returncode != 0:
        raise RuntimeError(f"beo run {' '.join(args)} failed: {cp.stderr[-400:]}")
    doc = json.loads(cp.stdout)
    root = [ln for ln in cp.stderr.splitlines() if ln.startswith("BENCH-SIM-ROOT-CPU")]
    return {**m, "elapsed": float(doc["elapsed"]), "root": float(root[-1].split()[1])}


SPAWN_PROBE = """
import gc, os, resource, subprocess, sys
def cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime
n = 300
s0, c0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
for _ in range(n):
    p = subprocess.Popen(["/bin/sh", "-c", "true"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    p.communicate()
s1, c1 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
from beokit.launch import agent  # what the fork server holds before it forks
gc.collect(); gc.freeze()
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
s2, c2 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
print((s1 - s0) / n, (c1 - c0) / n, (s2 - s1) / n, (c2 - c1) / n)
"""


def spawn_costs() -> tuple[float, float, float, float]:
    """(Popen in the parent, ``sh -c true`` itself, a fork of the agent's interpreter in
    the parent, that child's exit) in CPU-seconds, from getrusage around 300 of each.
    Popen and the fork are the parent's and the fork server's share of a launch before
    the host is up; ``sh`` and the exit are printed for comparison with the runs."""
    out = subprocess.run([sys.executable, "-c", SPAWN_PROBE], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()  # fmt: skip
    return tuple(float(x) for x in out)  # type: ignore[return-value]


def launch_params(meter: Meter, runs: int, log: Callable[[str], None]) -> dict[str, float]:
    """The launch's CPU, piece by piece (see the module's docstring and docs/scale.md)."""
    sizes = (100, 400)

    def slopes(args: list[str], cmd: str = "true") -> dict[str, float]:
        """Per host: slope of our CPU and of the root's own CPU from N=100 to N=400."""
        med = {}
        for n in sizes:
            got = [beo_run(meter, [*args, f"n[1-{n}]"], cmd) for _ in range(runs)]
            med[n] = {key: statistics.median(g[key] for g in got) for key in got[0]}
        span = sizes[1] - sizes[0]
        return {"cpu": (med[sizes[1]]["cpu"] - med[sizes[0]]["cpu"]) / span,
                "root": (med[sizes[1]]["root"] - med[sizes[0]]["root"]) / span,
                "base": med[sizes[0]]["cpu"] - sizes[0] * (med[sizes[1]]["cpu"]
                                                           - med[sizes[0]]["cpu"]) / span}  # fmt: skip

    spawn, _sh, fork, exit_ = spawn_costs()
    flat = ["--flat", "-k", "32", "--launch-delay", "0"]
    leaf = slopes(flat)
    agent = slopes([*flat, "--leaf-agents"])
    tree = slopes(["--tree", "-k", "4", "--launch-delay", "0"])
    msg = max(0.0, tree["root"] / 3)  # the root of a tree only reads its hosts' messages
    watch = max(0.0, leaf["root"] - spawn - 3 * msg)  # the rest of a parent's work on a leaf
    leaf_cpu = max(0.0, leaf["cpu"] - leaf["root"])  # the leaf itself (sh, kernel)
    agent_cpu = max(0.0, agent["cpu"] - agent["root"] - fork - spawn - watch - leaf_cpu)
    idle, live, window = live_agent_cpu()
    base = (leaf["base"] + agent["base"]) / 2
    fit = agent_costs(meter, runs, spawn, watch, log)
    out = {"spawn_cpu": spawn, "watch_cpu": watch, "leaf_cpu": leaf_cpu, "fork_cpu": fork,
           "exit_cpu": exit_, "root_msg_cpu": msg, "agent_cpu": agent_cpu,
           "agent_idle_cpu": idle, "run_base_cpu": base, **fit}  # fmt: skip
    log(f"launch CPU, per host (N={sizes[0]} -> {sizes[1]}, median of {runs}; 'root' is "
        f"beo run's own process): every host a leaf {leaf['cpu'] * 1e3:.2f} ms, root "
        f"{leaf['root'] * 1e3:.2f} ms; every host an agent {agent['cpu'] * 1e3:.2f} ms, root "
        f"{agent['root'] * 1e3:.2f} ms; tree k=4 root {tree['root'] * 1e3:.3f} ms")  # fmt: skip
    log(f"  -> Popen {spawn * 1e3:.2f} ms and a fork of the agent's interpreter "
        f"{fork * 1e3:.2f} ms in the parent (getrusage of 300 each); a message read by the "
        f"root {msg * 1e6:.0f} us; the rest of a parent's work on a leaf {watch * 1e3:.2f} ms; "
        f"the leaf itself {leaf_cpu * 1e3:.2f} ms; an agent from its fork to its hello "
        f"{agent_cpu * 1e3:.2f} ms")  # fmt: skip
    log(f"  -> live agents: {live} agents of a tree k=2 of 200 hosts waiting in `sleep 6`, "
        f"their threads' CPU from /proc over {window:.1f} s: {idle * 1e3:.3f} ms a second "
        f"each")  # fmt: skip
    return out


RUN_POINTS = [(16, 2, "tree"), (16, 4, "tree"), (147, 2, "tree"), (147, 4, "tree"),
              (147, 32, "flat"), (1000, 2, "tree"), (1000, 4, "tree"),
              (1000, 32, "flat")]  # fmt: skip


def part_run(meter: Meter, p: dict[str, float], runs: int, delay: float,
             log: Callable[[str], None]) -> list[Point]:  # fmt: skip
    points = []
    costs = M.box_launch(delay, p)
    for n, k, mode in RUN_POINTS:
        pt = Point("run", f"beo run -R exec --launch-delay {delay:g} --{mode} -k {k}, N={n}")
        for _ in range(runs):
            got = beo_run(meter, [f"--{mode}", "-k", str(k), "--launch-delay", str(delay),
                                  f"n[1-{n}]"])  # fmt: skip
            pt.measured.append(got["elapsed"])
            pt.others.append(got["others"])
            pt.cpu.append(got["cpu"])
            sim = simulate_launch(n, k, costs, mode=mode, shared_cores=NCPU,
                                  others=got["others"])  # fmt: skip
            pt.model.append(sim.seconds)
            pt.cpu_model.append(sim.cpu_seconds + p["run_base_cpu"])
        log(_line(pt))
        points.append(pt)
    return points


def ssh_params(meter: Meter, log: Callable[[str], None], sessions: int = 12) -> dict[str, float]:
    """One ``ssh host true`` through a private sshd on loopback: its wall time, the client's
    CPU (getrusage of our children) and the server's (the rest of our cgroup's), one at a
    time; and a fresh interpreter importing the launch agent (an agent's start over ssh)."""
    import resource

    import bench_run

    def children() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sim-ssh-") as tmp:
        started = bench_run.start_sshd(Path(tmp), ["127.0.0.2"])
        if started is None:
            log("(ssh figures skipped: no sshd or not root; the defaults stay)")
        else:
            proc, args = started
            try:
                walls, clients, totals = [], [], []
                for _ in range(sessions):
                    c0 = children()
                    with meter.span() as m:
                        subprocess.run(["ssh", *args, "s1", "true"], check=True, timeout=30,
                                       capture_output=True)  # fmt: skip
                    walls.append(m["wall"])
                    clients.append(children() - c0)
                    totals.append(m["cpu"])
            finally:
                proc.terminate()
                proc.wait(5)
            out["ssh_session"] = statistics.median(walls)
            out["ssh_client_cpu"] = statistics.median(clients)
            server = statistics.median(t - c for t, c in zip(totals, clients, strict=True))
            log(f"ssh session on loopback (median of {sessions}, one at a time): "
                f"{out['ssh_session'] * 1e3:.0f} ms, client CPU "
                f"{out['ssh_client_cpu'] * 1e3:.0f} ms, sshd's {server * 1e3:.0f} ms")  # fmt: skip
    starts = []
    for _ in range(5):
        c0 = children()
        subprocess.run([sys.executable, "-c", "from beokit.launch import agent"], check=True)
        starts.append(children() - c0)
    out["python_start"] = statistics.median(starts)
    log(f"a fresh interpreter importing the launch agent: {out['python_start'] * 1e3:.0f} ms "
        f"of CPU (median of 5)")  # fmt: skip
    return out


# ------------------------------------------------------------------ nettee on loopback


def _bench_chain():  # noqa: ANN202 - the module, imported late (it sets up nothing at import)
    import bench_chain

    return bench_chain


@contextlib.contextmanager
def source(size: int) -> Iterator[Path]:
    bc = _bench_chain()
    path = Path(f"/dev/shm/beokit-bench-sim-{size}.bin")
    bc.make_source(path, size)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def chain_once(meter: Meter, src: Path, size: int, receivers: int) -> dict[str, float]:
    """A chain of plain nettee on 127.0.0.1..N+1, outputs /dev/null: root start to all exited."""
    return steady(meter, lambda: _chain_once(meter, src, size, receivers))


def _chain_once(meter: Meter, src: Path, size: int, receivers: int) -> dict[str, float]:
    bc = _bench_chain()
    exe = shutil.which("nettee") or str(Path(sys.executable).parent / "nettee")
    hosts = [bc.addr(i) for i in range(1, receivers + 2)]
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        port = bc.pick_port(hosts, set())
        with meter.span() as m:
            r = bc.run_nettee(exe, src, size, receivers + 1, port, Path(tmp), 120 + size / 5e7,
                              splice=True)  # fmt: skip
    return {**m, "seconds": r.seconds, "procs_cpu": r.cpu_s}


CTRL_HOPS = (1, 8, 24, 48)


def nettee_params(meter: Meter, runs: int, log: Callable[[str], None]) -> dict[str, float]:
    """Per-byte CPU, one hop's loopback rate, and the control plane per hop."""
    out: dict[str, float] = {}
    size = GiB
    with source(size) as src:
        two = [chain_once(meter, src, size, 1) for _ in range(runs)]
        six = [chain_once(meter, src, size, 5) for _ in range(runs)]
    c2 = statistics.median(r["procs_cpu"] for r in two)
    c6 = statistics.median(r["procs_cpu"] for r in six)
    out["root_tip_cpu"] = c2 / size  # root + tip, per byte
    out["mid_cpu"] = (c6 - c2) / (4 * size)  # each node between them, per byte
    # one hop on loopback: the 2-node chain's rate, its control plane taken off later
    out["two_node_seconds"] = statistics.median(r["seconds"] for r in two)
    tiny = 1024
    med = []
    with source(tiny) as src:
        for hops in CTRL_HOPS:
            med.append(statistics.median(chain_once(meter, src, tiny, hops)["seconds"]
                                         for _ in range(runs)))  # fmt: skip
    start, per_hop = fit_line([float(h) for h in CTRL_HOPS], med)
    form_entry, report_entry = entry_costs()
    out.update(nettee_start=start, ctrl_hop=per_hop, form_entry=form_entry,
               report_entry=report_entry)  # fmt: skip
    rate = size / max(1e-3, out["two_node_seconds"] - start - per_hop)
    # the 2-node rate is bound by one hop (memory copies), not by the cores it had
    out["loop_cap"] = rate
    log(f"nettee CPU (GNU time of every process, 1 GiB, median of {runs}): 2 nodes "
        f"{c2:.2f} s, 6 nodes {c6:.2f} s -> root+tip {out['root_tip_cpu'] * 1e9:.3f} ns/B, "
        f"each middle node {out['mid_cpu'] * 1e9:.3f} ns/B; one loopback hop "
        f"{rate / 1e9:.2f} GB/s")  # fmt: skip
    log("nettee control plane (1 KiB, root start to every process gone), receivers "
        + ", ".join(f"{h}: {t * 1e3:.0f} ms" for h, t in zip(CTRL_HOPS, med, strict=True))
        + f" -> {start * 1e3:.0f} ms + {per_hop * 1e3:.2f} ms x hops")
    log(f"nettee messages that name a subtree, per node and per hop (the real encode/decode, "
        f"10,000 nodes): ready {form_entry * 1e6:.2f} us, report {report_entry * 1e6:.2f} us")
    return out


ENTRY_PROBE = """
import time
m = 10_000
names = [f"node{i:05d}.cluster.example" for i in range(m)]
try:  # nettee's typed messages (messages.py): the classes whose TYPE is ready, report
    from beokit.nettee import messages as MS
    kinds = {getattr(c, "TYPE", None): c for c in vars(MS).values() if isinstance(c, type)}
    try:
        from beokit.nettee.report import NodeResult
    except ImportError:
        from beokit.nettee.protocol import NodeResult
    results = tuple(NodeResult(name=n, depth=i + 1, bytes_in=1 << 30, bytes_out=1 << 30,
                               seconds=12.3, digest="xxh3_128:" + "0" * 32)
                    for i, n in enumerate(names))
    ready = lambda: MS.encode(kinds["ready"](tuple(names)))
    report = lambda: MS.encode(kinds["report"](results))
    read = lambda frame: MS.MessageDecoder().feed(frame)
except ImportError:  # the dict messages before them (protocol.py)
    from beokit.nettee import protocol as NP
    results = [NP.NodeResult(n, i + 1, 1 << 30, 1 << 30, seconds=12.3,
                             digest="xxh3_128:" + "0" * 32) for i, n in enumerate(names)]
    ready = lambda: NP.encode({"t": "ready", "nodes": names})
    report = lambda: NP.encode(NP.report(results))
    read = lambda frame: [NP.parse_report(x) if x["t"] == "report" else x
                          for x in NP.FrameDecoder().feed(frame)]
def per_entry(make):
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        read(make())
        best = min(best, time.perf_counter() - t0)
    return best / m
print(per_entry(ready), per_entry(report))
"""


def entry_costs() -> tuple[float, float]:
    """CPU per node named, per hop: a ``ready`` (names) and a ``report`` (results) of 10,000
    nodes encoded by one node and decoded by its parent, with nettee's own code (in a
    child process: the beokit under measurement)."""
    out = subprocess.run([sys.executable, "-c", ENTRY_PROBE], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()  # fmt: skip
    return float(out[0]), float(out[1])


LOOP_NET = Network(8e12, overhead=14, latency=20e-6)  # loopback: no port to speak of


CHAIN_POINTS = [(2, 256 * MiB), (4, 256 * MiB), (8, 256 * MiB), (16, 256 * MiB),
                (4, GiB), (8, GiB), (16, GiB)]  # fmt: skip


def part_chain(meter: Meter, p: dict[str, float], runs: int,
               log: Callable[[str], None]) -> list[Point]:  # fmt: skip
    costs = M.box_nettee(p)
    net = replace(LOOP_NET, latency=p["hop_latency"])
    points = []
    for size in sorted({s for _, s in CHAIN_POINTS}):
        with source(size) as src:
            for n, s in CHAIN_POINTS:
                if s != size:
                    continue
                pt = Point("chain", f"nettee chain on loopback, {n} receivers, "
                                    f"{size // MiB} MiB")  # fmt: skip
                for _ in range(runs):
                    got = chain_once(meter, src, size, n)
                    pt.measured.append(got["seconds"])
                    pt.others.append(got["others"])
                    pt.cpu.append(got["cpu"])
                    spec = CastSpec(n, size, shared_cores=NCPU, others=got["others"])
                    pt.model.append(simulate_cast(spec, net, costs).seconds)
                log(_line(pt))
                points.append(pt)
    return points


def tcp_latency(addr: str = "127.0.0.1", rounds: int = 2000) -> float:
    """One-way latency of a TCP hop (half a ping-pong round trip, median of batches)."""
    srv = socket.create_server((addr, 0))
    port = srv.getsockname()[1]

    def echo() -> None:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(64):
            conn.sendall(data)
        conn.close()

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    c = socket.create_connection((addr, port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    batches = []
    for _ in range(rounds // 100):
        t0 = time.perf_counter()
        for _ in range(100):
            c.sendall(b"x")
            c.recv(64)
        batches.append((time.perf_counter() - t0) / 100 / 2)
    c.close()
    t.join(5)
    srv.close()
    return statistics.median(batches)


# ------------------------------------------------------------------ virtual cluster

PREFIX = "bksim"
VC_RATE = 200e6
VC_POINTS = [(2, 64 * MiB), (4, 64 * MiB), (8, 64 * MiB), (16, 64 * MiB),
             (2, 256 * MiB), (8, 256 * MiB), (16, 256 * MiB)]  # fmt: skip


def _ns(i: int) -> list[str]:
    return ["ip", "netns", "exec", f"{PREFIX}-host{i}"]


def vc_up(hosts: int) -> None:
    from beokit.vcluster import driver
    from beokit.vcluster import plan as VP

    driver.down(PREFIX)
    driver.up(VP.Spec(n=hosts, rate_bps=int(VC_RATE), prefix=PREFIX))


def vc_down() -> None:
    from beokit.vcluster import driver

    driver.down(PREFIX)


def vc_framing(log: Callable[[str], None]) -> float:
    """Payload rate of one TCP stream host1 -> host2 through the shaped ports / the rate."""
    size = 48 * MiB
    server = ("import socket,time,sys\ns=socket.create_server(('0.0.0.0',5999))\n"
              "c,_=s.accept()\nn=0\nt0=None\nwhile True:\n d=c.recv(1<<20)\n if not d: break\n"
              " n+=len(d)\n if t0 is None and n>=8<<20: t0=time.monotonic(); n0=n\n"
              "print((n-n0)/(time.monotonic()-t0))\n")  # fmt: skip
    client = (f"import socket\nc=socket.create_connection(('host2',5999))\nb=bytes(1<<20)\n"
              f"for _ in range({size // MiB}): c.sendall(b)\nc.close()\n")  # fmt: skip
    srv = subprocess.Popen(_ns(2) + [sys.executable, "-c", server], stdout=subprocess.PIPE,
                           text=True)  # fmt: skip
    time.sleep(0.5)
    subprocess.run(_ns(1) + [sys.executable, "-c", client], check=True, timeout=120)
    out, _ = srv.communicate(timeout=60)
    eff = float(out) / (VC_RATE / 8)
    log(f"virtual cluster framing: one TCP stream carries {float(out) / 1e6:.2f} MB/s of "
        f"payload through {VC_RATE / 1e6:.0f} Mbit/s ports: {eff:.4f} of the rate "
        f"(1448/1514 = {1448 / 1514:.4f})")  # fmt: skip
    return eff


def vc_latency(log: Callable[[str], None]) -> float:
    """One-way latency host1 -> host2 (TCP ping-pong / 2, Python both ends)."""
    server = ("import socket\ns=socket.create_server(('0.0.0.0',5998))\nc,_=s.accept()\n"
              "c.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\n"
              "while (d:=c.recv(64)): c.sendall(d)\n")  # fmt: skip
    client = ("import socket,time,statistics\nc=socket.create_connection(('host2',5998))\n"
              "c.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\nb=[]\n"
              "for _ in range(20):\n t=time.perf_counter()\n for _ in range(100):\n"
              "  c.sendall(b'x'); c.recv(64)\n b.append((time.perf_counter()-t)/200)\n"
              "print(statistics.median(b))\n")  # fmt: skip
    srv = subprocess.Popen(_ns(2) + [sys.executable, "-c", server])
    time.sleep(0.5)
    out = subprocess.run(_ns(1) + [sys.executable, "-c", client], capture_output=True,
                         text=True, timeout=60, check=True).stdout  # fmt: skip
    srv.wait(timeout=10)
    one_way = float(out)
    log(f"virtual cluster latency (ping-pong / 2, host1 -> host2): {one_way * 1e6:.0f} us")
    return one_way


def vc_chain(src: Path, receivers: int, out: Path, extra: list[str] | None = None,
             kill: tuple[int, float] | None = None, logs: list[str] | None = None) -> float:
    """nettee by hand on host2..: receivers first, the root on host1 timed (start to exit).

    ``kill`` = (receiver index, seconds after the root starts): SIGKILL that receiver.
    ``logs``: the receivers' stderr is appended to it.
    """
    from beokit.nettee.localchain import nettee_command

    port = 7700
    procs = []
    extra = extra or []
    for k in range(receivers, 0, -1):
        args = _ns(k + 1) + nettee_command() + ["-port", str(port), "-name", f"host{k + 1}",
                                                "-out", str(out / f"host{k + 1}"), *extra]  # fmt: skip
        if k < receivers:
            args += ["-next", f"host{k + 2}:{port}"]
        procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, text=True,
                                      stderr=subprocess.DEVNULL if logs is None
                                      else subprocess.PIPE))  # fmt: skip
    time.sleep(0.3 + 0.03 * receivers)
    root = _ns(1) + nettee_command() + ["-root", "-port", str(port), "-next",
                                        f"host2:{port}", "-in", str(src), *extra]  # fmt: skip
    t0 = time.monotonic()
    rp = subprocess.Popen(root, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill is not None:
        idx, after = kill
        time.sleep(after)
        procs[receivers - idx].kill()
    _, err = rp.communicate(timeout=900)
    secs = time.monotonic() - t0
    for p in procs:
        try:
            _, perr = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            _, perr = p.communicate()
        if logs is not None and perr:
            logs.append(perr)
    if rp.returncode != 0:
        raise RuntimeError(f"root nettee failed ({rp.returncode}): {err[-400:]}")
    for f in out.iterdir():
        f.unlink()
    return secs


def vc_queue(src: Path, receivers: int, out: Path, log: Callable[[str], None]) -> float:
    """Mean queueing delay per hop: tc backlog of every shaped port, sampled mid-stream."""
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        time.sleep(3.0)
        while not done.is_set():
            total = 0
            for i in range(2, receivers + 1):  # hops 2..: every sending host's eth0
                r = subprocess.run(_ns(i) + ["tc", "-s", "qdisc", "show", "dev", "eth0"],
                                   capture_output=True, text=True)  # fmt: skip
                total += _backlog(r.stdout)
                r = subprocess.run(["ip", "netns", "exec", f"{PREFIX}-sw0-0", "tc", "-s",
                                    "qdisc", "show", "dev", f"h{i + 1}"],
                                   capture_output=True, text=True)  # fmt: skip
                total += _backlog(r.stdout)
            samples.append(total / max(1, receivers - 1))
            time.sleep(0.5)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    vc_chain(src, receivers, out)
    done.set()
    t.join(30)
    per_hop = statistics.median(samples) if samples else 0.0
    payload = VC_RATE / 8
    log(f"virtual cluster queue: {len(samples)} samples of every port's tbf backlog during "
        f"a {receivers}-receiver chain: median {per_hop / 1e3:.0f} kB a hop = "
        f"{per_hop / payload * 1e3:.1f} ms at the port rate")  # fmt: skip
    return per_hop / payload


def _backlog(text: str) -> int:
    for line in text.splitlines():
        words = line.split()
        if "backlog" in words:
            value = words[words.index("backlog") + 1]
            mult = {"K": 1000, "M": 10**6}.get(value[-2:-1], 1)
            return int(float(value.rstrip("bKM")) * mult)
    return 0


def part_vcluster(p: dict[str, float], runs: int, log: Callable[[str], None]) -> list[Point]:
    if os.geteuid() != 0:
        log("(vcluster part skipped: needs root)")
        return []
    sys.path.insert(0, str(HERE))
    from _netns import netns_lock

    points: list[Point] = []
    work = Path("/dev/shm/bksim-bench")
    shutil.rmtree(work, ignore_errors=True)
    (work / "out").mkdir(parents=True)
    os.chmod(work / "out", 0o777)
    with netns_lock():
        try:
            vc_up(max(n for n, _ in VC_POINTS) + 1)
            eff = vc_framing(log)
            p["vc_framing"] = eff
            p["vc_latency"] = vc_latency(log)
            overhead = round(1448 / eff - 1500)  # the frame overhead that rate implies
            with source(256 * MiB) as big:
                p["vc_queue"] = vc_queue(big, 16, work / "out", log)
            net = Network(VC_RATE, overhead=overhead, latency=p["vc_latency"],
                          hop_queue=p["vc_queue"])  # fmt: skip
            costs = replace(M.box_nettee(p), recv_cpu=0.0, root_cpu=0.0)
            for size in sorted({s for _, s in VC_POINTS}):
                with source(size) as src:
                    for n, s in VC_POINTS:
                        if s == size:
                            points.append(_vc_point(src, n, size, net, costs, runs, work, log))
                    if size == 64 * MiB:
                        points.append(_vc_heal_point(src, size, net, costs, runs, work, log))
        finally:
            vc_down()
            shutil.rmtree(work, ignore_errors=True)
    return points


def _vc_point(src: Path, n: int, size: int, net: Network, costs: NetteeCosts, runs: int,
              work: Path, log: Callable[[str], None]) -> Point:  # fmt: skip
    pt = Point("vcluster", f"nettee chain, vcluster 200 Mbit/s, {n} receivers, "
                           f"{size // MiB} MiB")  # fmt: skip
    for _ in range(runs):
        pt.measured.append(vc_chain(src, n, work / "out"))
        pt.model.append(simulate_cast(CastSpec(n, size), net, costs).seconds)
    log(_line(pt))
    return pt


def _vc_heal_point(src: Path, size: int, net: Network, costs: NetteeCosts, runs: int,
                   work: Path, log: Callable[[str], None]) -> Point:  # fmt: skip
    """A receiver killed mid-stream under -heal.  The bytes the adopter replays (its log:
    "N bytes replayed") are measured by a probe run first and given to the model."""
    import re

    n, victim, after = 8, 4, 1.0
    pt = Point("vcluster", f"nettee -heal chain, vcluster, {n} receivers, {size // MiB} MiB, "
                           f"receiver {victim} killed {after:g} s in")  # fmt: skip
    secret = work / "secret"
    secret.write_text("bench-sim-secret\n")
    extra = ["-heal", "-secret_file", str(secret), "-v", "5"]

    def replayed(logs: list[str]) -> int:
        got = [int(m) for text in logs for m in re.findall(r"(\d+) bytes replayed", text)]
        return max(got, default=0)

    probe: list[str] = []
    vc_chain(src, n, work / "out", extra, kill=(victim, after), logs=probe)
    gap = replayed(probe)
    costs = replace(costs, heal_gap=gap)
    log(f"  heal probe: the adopter replayed {gap:,} bytes")
    for _ in range(runs):
        logs: list[str] = []
        pt.measured.append(vc_chain(src, n, work / "out", extra, kill=(victim, after),
                                    logs=logs))  # fmt: skip
        spec = CastSpec(n, size, fail_fraction=1 / n, fail_kind="kill", retry=False)
        pt.model.append(CastModelAt(spec, net, costs, node=victim - 1, at=after))
        pt.note += f"{replayed(logs):,} B replayed; "
    log(_line(pt) + f" ({pt.note.strip('; ')})")
    return pt


def CastModelAt(spec: CastSpec, net: Network, costs: NetteeCosts, *, node: int,  # noqa: N802
                at: float) -> float:  # fmt: skip
    """The model with one given node killed ``at`` seconds after the root started."""
    from beokit.sim.cast import CastModel

    model = CastModel(spec, net, costs)
    t_form = costs.start / 2 + model._form(spec.nodes)
    rate = min(model.link_rate(spec.nodes), min(model.caps))
    frac = max(0.0, (at - t_form) * rate / spec.size)
    model.failures = [(min(frac, 0.999), node)]
    return model.run().seconds


# ------------------------------------------------------------------ gossip hook


SM_SEEDS = {200: 24, 1000: 12}  # spreads of dshd's state machine (simulated: seeds, not timed)
MODEL_TRIALS = 100  # spreads of the model per point (median)


def part_gossip(runs: int, hook: str, log: Callable[[str], None]) -> list[Point]:
    """The gossip model against (1) dshd's own pure state machine, when this tree has it
    (``beokit.dsh.gossip_sim``: real packets, real tables, simulated clock; SM_SEEDS
    spreads, whatever --runs), and (2) a measurement of real daemons through ``hook`` =
    ``MODULE:FUNC`` (a module in bench/): ``FUNC(n, period, fanout, loss) -> {"msgs_per_s":
    ..., "best_one": ...}``, figures of one real daemon among n members; by default
    ``_sim_dshd.measure`` (one real daemon, the other members dshd's state machine,
    replayed on loopback; ``bench_dsh_scale:daemon_run``: dshd's own benchmark, whose
    members are a stand-in epidemic and which looks at one change a run)."""
    from beokit.sim.gossip import GossipParams, real_gossip, simulate_gossip

    points: list[Point] = []
    for n in (200, 1000):
        try:
            import concurrent.futures as cf

            seeds = range(1, max(runs, SM_SEEDS[n]) + 1)
            with cf.ProcessPoolExecutor(NCPU) as pool:  # a simulation: every core
                real = list(pool.map(real_gossip, [GossipParams(n=n, seed=s) for s in seeds]))
        except ImportError:
            log("(gossip: no beokit.dsh.gossip_sim in this tree: no state-machine comparison)")
            break
        model = simulate_gossip(GossipParams(n=n, trials=MODEL_TRIALS))
        for attr, what, unit in (("msgs_per_s", "datagrams/s per daemon", "/s"),
                                 ("best_p50", "best answer changed in half the tables", "s"),
                                 ("best_p99", "... in 99 % of them", "s")):  # fmt: skip
            pt = Point("gossip", f"dshd state machine (pure), {n} members: {what}", unit=unit)
            pt.measured = [getattr(r, attr) for r in real]
            pt.model = [getattr(model, attr)]
            log(_line(pt))
            points.append(pt)
    measure = _gossip_hook(hook)
    if measure is None:
        log(f"(gossip: no {hook} here: the measurement of real daemons plugs in there, "
            f"FUNC(n, period, fanout, loss) -> {{'msgs_per_s': ..., 'best_one': ...}})")  # fmt: skip
        return points
    for n in (100, 1000):
        p = GossipParams(n=n, trials=MODEL_TRIALS)
        got = [measure(n, p.period, p.fanout, p.loss) for _ in range(runs)]
        model = simulate_gossip(p)
        for g in got:
            if "slot" in g:
                log(f"  one real dshd among {n}: its answer after each change "
                    + " ".join(f"{x:.2f}" for x in g["seen"]) + "; the state machine in its place, "
                    "same datagrams: " + " ".join(f"{x:.2f}" for x in g["slot"])
                    + "; every simulated table, median: "
                    + " ".join(f"{x:.2f}" for x in g["tables"]))  # fmt: skip
        for key, attr, what, unit in (
                ("msgs_per_s", "msgs_per_s", "datagrams/s in + out", "/s"),
                ("best_one", "best_p50", "its best answer names a member that became idle "
                                         "(model: half of the tables)", "s")):  # fmt: skip
            if key not in got[0]:
                continue
            pt = Point("gossip", f"one real dshd among {n} members: {what}", unit=unit)
            if key == "best_one" and "seen" in got[0]:  # every change of every run: one median
                pt.label += f", {len(got[0]['seen'])} changes a run"
                pt.measured = [float(g[key]) for g in got]
                pt.pooled = statistics.median(x for g in got for x in g["seen"])
            else:
                pt.measured = [float(g[key]) for g in got]
            pt.model = [getattr(model, attr)]
            log(_line(pt))
            points.append(pt)
    return points


def _gossip_hook(hook: str) -> Callable[..., dict[str, float]] | None:
    """``MODULE:FUNC`` of bench/, FUNC(n, period, fanout, loss) -> figures; or dshd's own
    benchmark, bench_dsh_scale.py, read through its ``daemon_run``."""
    module, _, func = hook.partition(":")
    try:
        fn = getattr(__import__(module), func or "measure")
    except (ImportError, AttributeError):
        return None
    if module != "bench_dsh_scale":
        return fn

    def measure(n: int, period: float, _fanout: int, _loss: float) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="bench-sim-dsh-") as tmp:
            row = fn(n, "gossip", period, 10.0, Path(tmp), None)
        return {"msgs_per_s": row["in"] + row["out"], "best_one": row["idle"] * period}

    return measure


# ------------------------------------------------------------------ report


def _line(pt: Point) -> str:
    runs = " ".join(f"{x:.3f}" for x in pt.measured)
    cpu = (f", CPU {statistics.median(pt.cpu):.2f} s (model {statistics.median(pt.cpu_model):.2f})"
           if pt.cpu and pt.cpu_model else "")  # fmt: skip
    u = pt.unit
    return (f"  {pt.label}: measured {pt.med:.3f} {u} (runs {runs}; spread "
            f"{pt.spread * 100:.0f} %), model {pt.pred:.3f} {u}, error {pt.error * 100:+.1f} %, "
            f"others used "
            f"{statistics.median(pt.others) if pt.others else 0:.2f} cores{cpu}")  # fmt: skip


def table(points: list[Point]) -> str:
    head = "| point | measured (median) | runs | spread | model | error | others' cores |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for pt in points:
        others = f"{statistics.median(pt.others):.2f}" if pt.others else "-"
        flag = "" if abs(pt.error) <= 0.15 else " **over 15 %**"
        u = " s" if pt.unit == "s" else pt.unit
        lines.append(f"| {pt.label} | {pt.med:.3f}{u} | "
                     f"{' '.join(f'{x:.2f}' for x in pt.measured)} | {pt.spread * 100:.0f} % | "
                     f"{pt.pred:.3f}{u} | {pt.error * 100:+.1f} %{flag} | {others} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    ap.add_argument("--parts", default="params,run,chain",
                    help="comma list of params,run,chain,vcluster,gossip (default params,run,chain)")
    ap.add_argument("--runs", type=int, default=3, help="runs per point (median; default 3)")
    ap.add_argument("--delay", type=float, default=0.1, help="beo run --launch-delay (0.1)")
    ap.add_argument("--json", type=Path, help="write parameters and points here")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="before every run wait up to this long for the other processes of "
                         "the machine to use under --max-others cores (default 30 s; 0: never)")
    ap.add_argument("--max-others", type=float, default=0.3,
                    help="a run during which other programs used more cores than this is "
                         "repeated (default 0.3)")
    ap.add_argument("--retries", type=int, default=3,
                    help="times a disturbed run is repeated before it is kept (default 3)")  # fmt: skip
    ap.add_argument("--params", type=Path, help="take the parameters from this --json file")
    ap.add_argument("--gossip-bench", default="_sim_dshd:measure",
                    metavar="MODULE:FUNC",
                    help="the measurement of real dshd daemons (a module in bench/; default: "
                         "one real daemon among dshd's state machines, _sim_dshd.py; "
                         "bench_dsh_scale:daemon_run: dshd's own benchmark)")  # fmt: skip
    ap.add_argument("--snapshot", metavar="REV",
                    help="measure the beokit of this git revision (git archive into a temporary "
                         "directory, first on PYTHONPATH of every process started), not the "
                         "working tree that others may be editing")  # fmt: skip
    ap.add_argument("--project", action="store_true",
                    help="print the projections instead (python3 -m beokit.sim project)")
    ap.add_argument("--png-dir", type=Path, help="with --project: draw the PNG plots here")
    a = ap.parse_args(argv)
    if a.project:
        from beokit.sim.project import main as project_main

        return project_main(["--png-dir", str(a.png_dir)] if a.png_dir else [])
    parts = [x for x in a.parts.split(",") if x]
    bad = [x for x in parts if x not in ("params", "run", "chain", "vcluster", "gossip")]
    if bad or a.runs < 1:
        ap.error(f"bad --parts {bad}" if bad else "--runs must be >= 1")
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # the cgroup and snapshot are cleaned up

    signal.signal(signal.SIGTERM, stop)
    started = dt.datetime.now()
    load0 = os.getloadavg()
    with contextlib.ExitStack() as stack:
        under = stack.enter_context(_snapshot(a.snapshot)) if a.snapshot else None
        return _measure(a, parts, started, load0, under)


@contextlib.contextmanager
def _snapshot(rev: str) -> Iterator[str]:
    """``git archive REV`` into a temporary directory, first on every child's PYTHONPATH."""
    repo = HERE.parent
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", rev], check=True,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-sim-tree-") as tmp:
        archive = subprocess.Popen(["git", "-C", str(repo), "archive", commit],
                                   stdout=subprocess.PIPE)  # fmt: skip
        subprocess.run(["tar", "-x", "-C", tmp], stdin=archive.stdout, check=True)
        archive.wait()
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = f"{tmp}/src" + (f":{old}" if old else "")
        _model_plans_like(Path(tmp) / "src/beokit/launch/plan.py")
        try:
            yield f"{rev} ({commit})"
        finally:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old


def _model_plans_like(path: Path) -> None:
    """The model splits hosts with the measured tree's own ``pack`` (its launch/plan.py
    run in a child process: the plan of every N and k the model asks for)."""
    import beokit.sim.launch as SL

    probe = (f"import json, sys; sys.path.insert(0, {str(path.parent.parent.parent)!r})\n"
             "from beokit.launch.plan import pack\n"
             "for line in sys.stdin:\n"
             "    n, k = map(int, line.split())\n"
             "    print(json.dumps([len(g) for g in pack(list(range(n)), k)]), flush=True)\n")
    child = subprocess.Popen([sys.executable, "-c", probe], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    cache: dict[tuple[int, int], list[int]] = {}

    def pack(hosts: list, k: int) -> list[list]:
        key = (len(hosts), k)
        if key not in cache:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(f"{len(hosts)} {k}\n")
            child.stdin.flush()
            cache[key] = json.loads(child.stdout.readline())
        out, at = [], 0
        for size in cache[key]:
            out.append(hosts[at : at + size])
            at += size
        return out

    SL.pack = pack  # type: ignore[assignment]


def _measure(a: argparse.Namespace, parts: list[str], started: dt.datetime,
             load0: tuple[float, float, float], under: str | None) -> int:  # fmt: skip
    def log(text: str) -> None:
        print(text, flush=True)

    print(f"bench_sim: {NCPU} CPUs, python {sys.version.split()[0]}, {started:%Y-%m-%d %H:%M}, "
          f"load {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, {a.runs} runs a point, "
          f"measuring {under or 'the working tree'}")  # fmt: skip
    meter = Meter(a.quiet_wait, a.max_others, a.retries)
    p: dict[str, float] = dict(M.BOX_PARAMS)
    points: list[Point] = []
    try:
        if a.params:
            p.update(json.loads(a.params.read_text())["params"])
        if "params" in parts:
            p["hop_latency"] = tcp_latency()
            log(f"loopback TCP one-way latency (ping-pong / 2, Python both ends): "
                f"{p['hop_latency'] * 1e6:.1f} us")  # fmt: skip
            p.update(launch_params(meter, a.runs, log))
            p.update(ssh_params(meter, log))
            p.update(nettee_params(meter, a.runs, log))
        if "run" in parts:
            points += part_run(meter, p, a.runs, a.delay, log)
        if "chain" in parts:
            points += part_chain(meter, p, a.runs, log)
        if "vcluster" in parts:
            points += part_vcluster(p, a.runs, log)
        if "gossip" in parts:
            points += part_gossip(a.runs, a.gossip_bench, log)
    finally:
        meter.close()
    load1 = os.getloadavg()
    print(f"\n## model against measurement ({started:%Y-%m-%d %H:%M}, {NCPU} CPUs, load "
          f"{load0[0]:.2f} before / {load1[0]:.2f} after, median of {a.runs})\n")  # fmt: skip
    print(table(points))
    print(f"\n{DISCARDED[0]} run(s) discarded and repeated: other programs used more than "
          f"{meter.max_others:g} cores during them")  # fmt: skip
    worst = max((abs(pt.error) for pt in points), default=0.0)
    within = sum(abs(pt.error) <= 0.15 for pt in points)
    print(f"\n{within} of {len(points)} points within 15 %; worst {worst * 100:.1f} %")
    print("\nparameters: " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(p.items())))
    if a.json:
        a.json.write_text(json.dumps({"date": started.isoformat(timespec="seconds"),
                                      "params": p, "points": [asdict(x) for x in points]},
                                     indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
