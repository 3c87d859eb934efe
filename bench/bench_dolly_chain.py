#!/usr/bin/env python3
"""The nettee chain against dolly on one virtual cluster, in the same run (issue 22).

Root only: a ``beo vcluster`` of N + 1 hosts on one switch, every port shaped
at ``--rate`` (``--rate none``: no shaping, the veth's own speed: CPU-bound).
host1 holds an S-byte image in /dev/shm and sends it to host2..host{N+1},
every receiver writing /dev/null.  For each size of ``--sizes`` and N of
``--nodes``, each tool ``--runs`` times, the order rotated run by run:

* **dolly** (``--dolly PATH``, else built from ../shared/peers/dolly-src.tar.gz;
  skipped with the reason where it cannot be): a client started in every
  receiver's namespace and waited for until it listens, then the server;
  the server's wall time;
* **nettee** (the plain chain) and **nettee -heal -digest** (with a shared
  secret, as beo cast runs it; ``--tools`` adds ``digest``: -digest alone):
  every receiver started (the tip first) and waited for until it listens,
  then the root; the root's wall time, from its start to its exit;
* ``--tools cold``: the plain chain with the receivers started together
  with the root (nobody waits: the start-up of N interpreters is in the time).

For every nettee run the root's and the tip's ``NETTEE_EVENT_FD`` events
give the phases on one clock (seconds after the root was started): the
tree formed (the root's ``formed``), the first byte at the tip, the root's
input ended, the last byte at the tip, the root's end (after every report
came up).  CPU seconds (user + system) of every process from ``wait4``, per
GiB: the root, the receivers' mean, the tip.  The load average is printed
before and after each case.

    flock /tmp/beokit-netns.lock python3 bench/bench_dolly_chain.py
    python3 bench/bench_dolly_chain.py --sizes 100M,1G --nodes 3,16 --runs 3
    python3 bench/bench_dolly_chain.py --rate none --sizes 1G --nodes 3 --tools dolly,nettee,digest,heal
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _cast_tools import build_dolly, make_source, wait_listening  # noqa: E402
from _netns import netns_lock  # noqa: E402

from beokit.cli import parse_size  # noqa: E402

PREFIX = "bkdc"
WORK = Path("/dev/shm") / "bkdc-bench"
GIB = 1 << 30
PORT = 7700
DOLLY_PORT = 9998  # dolly's clients listen on 9997 (data) and 9998 (control)
TOOLS = ("dolly", "nettee", "digest", "heal", "cold")
LABELS = {"dolly": "dolly", "nettee": "nettee", "digest": "nettee -digest",
          "heal": "nettee -heal -digest", "cold": "nettee, receivers started with the root"}  # fmt: skip
FLAGS = {"nettee": [], "digest": ["-digest"], "heal": ["-heal", "-digest"], "cold": []}
PHASES = ("formed", "first at tip", "root read all", "last at tip", "root end")


@dataclass
class Run:
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)  # host -> CPU seconds
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds after the start


def ns(i: int) -> list[str]:
    return ["ip", "netns", "exec", f"{PREFIX}-host{i}"]


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# ------------------------------------------------------------------ processes


def wait_cpu(p: subprocess.Popen, timeout: float) -> tuple[int, float]:
    """Wait for ``p`` (killed after ``timeout``): its exit status and CPU seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            p.kill()
        time.sleep(0.002)


def stop_everything(n: int) -> None:
    """Nothing of a failed run may hold a port into the next one."""
    for i in range(1, n + 2):
        cp = subprocess.run(["ip", "netns", "pids", f"{PREFIX}-host{i}"], capture_output=True,
                            text=True)  # fmt: skip
        for pid in cp.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def read_events(fd: int) -> list[dict]:
    with os.fdopen(fd, "rb") as fh:
        return [json.loads(line) for line in fh.read().splitlines() if line.strip()]


# ----------------------------------------------------------------------- dolly


def run_dolly(dolly: str, src: Path, n: int) -> Run:
    """A client per receiver, each listening before the server starts; the server's time."""
    clients = [subprocess.Popen(ns(i) + [dolly, "-q"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for i in range(2, n + 2)]  # fmt: skip
    try:
        wait_listening(clients, DOLLY_PORT)
    except RuntimeError:
        for c in clients:
            c.kill()
        raise
    hosts = ",".join(f"host{i}" for i in range(2, n + 2))
    t0 = time.monotonic()
    server = subprocess.Popen(ns(1) + [dolly, "-s", "-q", "-H", hosts, "-I", str(src), "-O",
                                       "/dev/null"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    rc, cpu = wait_cpu(server, 1800)
    run = Run(time.monotonic() - t0, {"host1": cpu})
    for i, c in zip(range(2, n + 2), clients, strict=True):
        crc, run.cpu[f"host{i}"] = wait_cpu(c, 60)
        rc = rc or crc
    if rc != 0:
        err = server.stderr.read().decode(errors="replace") if server.stderr else ""
        raise RuntimeError(f"dolly failed ({rc}): {err[-300:]}")
    return run


# ---------------------------------------------------------------------- nettee


def nettee_exe() -> list[str]:
    exe = Path(sys.executable).parent / "nettee"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "beokit.nettee.cli"]


def _spawn(argv: list[str], env: dict[str, str], events: bool) -> tuple[subprocess.Popen, int]:
    """A process; with ``events`` its NETTEE_EVENT_FD pipe's read end (else -1)."""
    if not events:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stderr=subprocess.PIPE), -1  # fmt: skip
    r, w = os.pipe()
    p = subprocess.Popen(argv, env={**env, "NETTEE_EVENT_FD": str(w)}, pass_fds=[w],
                         stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    os.close(w)
    return p, r


def start_receivers(n: int, flags: list[str], env: dict[str, str]) -> tuple[list, int]:
    """host{N+1} (the tip) down to host2; the processes and the tip's event pipe."""
    procs: list[tuple[str, subprocess.Popen]] = []
    tip_r = -1
    for i in range(n + 1, 1, -1):
        argv = ns(i) + nettee_exe() + ["-port", str(PORT), "-name", f"host{i}", "-out",
                                       "/dev/null", "-t", "60", *flags]  # fmt: skip
        if i <= n:
            argv += ["-next", f"host{i + 1}"]
        p, r = _spawn(argv, env, events=i == n + 1)
        tip_r = r if i == n + 1 else tip_r
        procs.append((f"host{i}", p))
    return procs, tip_r


def run_chain(src: Path, n: int, flags: list[str], warm: bool) -> Run:
    """Receivers host2..host{N+1} (``warm``: waited for until they listen), then the
    root on host1; the root's time from its start to its exit, and the phases."""
    env = dict(os.environ)
    if flags:
        env["NETTEE_SECRET"] = os.urandom(32).hex()  # as beo cast runs them
    if warm:
        procs, tip_r = start_receivers(n, flags, env)
        wait_listening([p for _, p in procs], PORT + 1)
    t0 = time.monotonic()
    if not warm:
        procs, tip_r = start_receivers(n, flags, env)
    root, root_r = _spawn(ns(1) + nettee_exe() + ["-root", "-port", str(PORT), "-next", "host2",
                                                  "-in", str(src), "-v", "1", *flags], env,
                          events=True)  # fmt: skip
    rc, cpu = wait_cpu(root, 1800)
    run = Run(time.monotonic() - t0, {"host1": cpu})
    for host, p in procs:
        prc, run.cpu[host] = wait_cpu(p, 60)
        rc = rc or prc
    root_ev, tip_ev = read_events(root_r), read_events(tip_r)
    if rc != 0 or not root_ev or root_ev[-1].get("status") != "NONE":
        err = root.stderr.read().decode(errors="replace") if root.stderr else ""
        raise RuntimeError(f"nettee chain failed ({rc}): {err[-400:]}")
    run.phases = phases(t0, root_ev, tip_ev)
    return run


def phases(t0: float, root_ev: list[dict], tip_ev: list[dict]) -> dict[str, float]:
    """Each phase in seconds after ``t0`` (the root's start), from the events."""
    root_end, tip_end = root_ev[-1], tip_ev[-1]

    def at(end: dict, t: float) -> float:
        return end["start"] + t - t0

    formed = next(e for e in root_ev if e["event"] == "formed")
    return {"formed": at(root_end, formed["t"]), "first at tip": at(tip_end, tip_end["first"]),
            "root read all": at(root_end, root_end["eof"]),
            "last at tip": at(tip_end, tip_end["relayed"]),
            "root end": at(root_end, root_end["t"])}  # fmt: skip


# -------------------------------------------------------------------- cluster


class Cluster:
    def __init__(self, hosts: int, rate: str) -> None:
        from beokit.vcluster import driver, plan

        driver.down(PREFIX)
        bps = plan.parse_rate("10gbit" if rate == "none" else rate)
        self.state = driver.up(plan.Spec(n=hosts, rate_bps=bps, prefix=PREFIX))
        self.rate_bps = 0 if rate == "none" else bps
        if rate == "none":  # no tbf on either end of any port: the veth's own speed
            for pt in self.state.plan.ports:
                for where, dev in ((pt.host_ns, pt.dev), (pt.switch_ns, pt.port)):
                    subprocess.run(["ip", "netns", "exec", where, "tc", "qdisc", "del", "dev",
                                    dev, "root"], capture_output=True)  # fmt: skip

    def down(self) -> None:
        from beokit.vcluster import driver

        driver.down(PREFIX)


# ----------------------------------------------------------------- measuring


def measure(tools: list[tuple[str, Callable[[], Run]]], runs: int, n: int) -> dict[str, list[Run]]:
    """Every tool ``runs`` times, the order rotated; a failed run is retried once."""
    got: dict[str, list[Run]] = {name: [] for name, _ in tools}
    for k in range(runs):
        order = tools[k % len(tools):] + tools[: k % len(tools)]
        for name, fn in order:
            for attempt in (1, 2):
                try:
                    r = fn()
                    break
                except RuntimeError as exc:
                    stop_everything(n)
                    print(f"    {name}: {exc}", file=sys.stderr)
                    if attempt == 2:
                        raise
            got[name].append(r)
            ph = " ".join(f"{p} {r.phases[p]:.2f}" for p in PHASES if p in r.phases)
            print(f"    run {k + 1} {LABELS[name]}: {r.seconds:.2f} s {ph}  (load {load()})",
                  file=sys.stderr, flush=True)  # fmt: skip
    return got


def summary(runs: list[Run], n: int, size: int) -> dict:
    gib = size / GIB
    recv = [statistics.median(r.cpu[f"host{i}"] for r in runs) / gib for i in range(2, n + 2)]
    out = {"seconds": statistics.median(r.seconds for r in runs),
           "all": [round(r.seconds, 3) for r in runs],
           "cpu_root": statistics.median(r.cpu["host1"] for r in runs) / gib,
           "cpu_recv": statistics.mean(recv), "cpu_tip": recv[-1]}  # fmt: skip
    if runs[0].phases:
        out["phases"] = {p: statistics.median(r.phases[p] for r in runs) for p in PHASES}
    return out


def print_case(size: int, n: int, rate_bps: int, res: dict[str, dict], loads: tuple[str, str]) -> None:
    line = f", S/B = {size * 8 / rate_bps:.2f} s" if rate_bps else ", unshaped (CPU-bound)"
    print(f"\n### {size >> 20} MiB to {n} nodes{line}; load {loads[0]} before, {loads[1]} after\n")
    ref = res.get("dolly", {}).get("seconds")
    print("| tool | median s | / dolly | runs | formed | first at tip | root read all | "
          "last at tip | root end | CPU s/GiB root | receivers' mean | tip |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in res.items():
        ph = r.get("phases")
        cells = [f"{ph[p]:.2f}" for p in PHASES] if ph else ["-"] * len(PHASES)
        ratio = f"{r['seconds'] / ref:.2f}" if ref else "-"
        print(f"| {LABELS[name]} | {r['seconds']:.2f} | {ratio} | "
              f"{' '.join(f'{x:.2f}' for x in r['all'])} | {' | '.join(cells)} | "
              f"{r['cpu_root']:.2f} | {r['cpu_recv']:.2f} | {r['cpu_tip']:.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100M,1G", help="image sizes (default 100M,1G)")
    ap.add_argument("--nodes", default="3,16", help="receiver counts N (default 3,16)")
    ap.add_argument("--rate", default="200mbit", help="per-port rate, or none (default 200mbit)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each tool, median (default 3)")
    ap.add_argument("--tools", default="dolly,nettee,heal",
                    help=f"of {','.join(TOOLS)} (default dolly,nettee,heal)")
    ap.add_argument("--dolly", metavar="PATH", help="a dolly binary (default: build one)")
    ap.add_argument("--json", type=Path, help="write every result here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_dolly_chain: needs root (network namespaces)", file=sys.stderr)
        return 2
    tools = args.tools.split(",")
    if bad := [t for t in tools if t not in TOOLS]:
        ap.error(f"unknown tool {bad[0]!r}")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    nodes = [int(x) for x in args.nodes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bkdc-dolly-") as build:
        dolly, why = build_dolly(args.dolly, Path(build)) if "dolly" in tools else (None, "")
        if why:
            print(why, file=sys.stderr)
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir(parents=True)
        print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
              f"load {load()}, {time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
        with netns_lock():
            cl = Cluster(max(nodes) + 1, args.rate)
            try:
                for size in sizes:
                    src = WORK / "src.bin"
                    make_source(src, size)
                    for n in nodes:
                        tl: list[tuple[str, Callable[[], Run]]] = []
                        for t in tools:
                            if t == "dolly" and dolly:
                                tl.append((t, lambda n=n, s=src: run_dolly(dolly, s, n)))
                            elif t != "dolly":
                                tl.append((t, lambda n=n, s=src, t=t: run_chain(
                                    s, n, FLAGS[t], warm=t != "cold")))  # fmt: skip
                        before = load()
                        print(f"  {size >> 20} MiB to {n} nodes (load {before}):", file=sys.stderr)
                        got = measure(tl, args.runs, n)
                        res = {k: summary(v, n, size) for k, v in got.items()}
                        print_case(size, n, cl.rate_bps, res, (before, load()))
                        sys.stdout.flush()
                        results.append({"size": size, "nodes": n, "rate": args.rate,
                                        "load": [before, load()], "tools": res})  # fmt: skip
            finally:
                stop_everything(max(nodes))
                cl.down()
                shutil.rmtree(WORK, ignore_errors=True)
    if why:
        print(f"\n{why}")
    print(f"\n(median of {args.runs} run(s), order rotated; phases: seconds after the root "
          "was started; -heal -digest runs with a shared secret)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
