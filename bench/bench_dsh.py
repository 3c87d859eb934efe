#!/usr/bin/env python3
"""Benchmark beo dshd/dsh: gossip convergence and CPU at scale, placement, decision time.

Part 1: one real ``beo dshd`` (authenticated packets, default period 1.5 s)
in a cluster of N members; the other N-1 members are impersonated by one
helper process (one UDP socket per member on 127.3.x.y). With gossip (the
default, bench_dsh_scale.py's generator): the periods until the best port
names a member that became idle and stops naming it once busy, datagrams in
and out, the daemon's CPU. With --send-to (broadcast mode, where every member
sends its report to every daemon each period): time until the daemon has
every member (join), time until a load change of every member shows
(change), reports in and out, CPU.

Part 2: placement on a synthetic job mix (discrete-time simulation driving
the real :class:`beokit.dsh.state.Table`, with reports every period, so the
information is as stale as in the cluster): least-loaded with the extra-load
bump (dshd's default), least-loaded without it, and random placement;
makespan and mean job time, ratio random / dshd.

Part 3 (root, OpenSSH): the time to pick a node: one query to the local
dshd vs polling every node's /proc/loadavg with clush over ssh (what the
procps cluster tools did on every call, per the seed).

    python bench/bench_dsh.py [--sizes 10,100,1000] [--window 10] [--period 1.5]
                              [--jobs 400] [--no-ssh]

(bench/bench_dsh_scale.py: the same daemon at 10,000 members, against the design
before issue 24, and every member's table in simulation; docs/bench-dsh.png.)
"""

from __future__ import annotations

import argparse
import heapq
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from beokit.dsh import packet, state
from beokit.dsh.client import query

BEO = [sys.executable, "-m", "beokit.cli"]
DAEMON = "127.0.1.250"
SECRET = b"bench-secret"


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


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, ns resolution (schedstat), else clock ticks (stat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Simulator:
    """N-1 members, each reporting once per period at its own phase.

    A process of its own, so that parsing the daemon's status here does not
    delay the reports (the GIL)."""

    def __init__(self, n: int, dest: tuple[str, int], period: float) -> None:
        self.n, self.dest, self.period = n, dest, period
        self._load = mp.Value("d", 0.5)
        self._sent = mp.Value("q", 0)
        self._stop = mp.Event()
        self._ready = mp.Event()
        self._go = mp.Event()
        self.proc = mp.Process(target=self._run, daemon=True)

    @property
    def load(self) -> float:
        return float(self._load.value)

    @load.setter
    def load(self, v: float) -> None:
        self._load.value = v

    @property
    def sent(self) -> int:
        return int(self._sent.value)

    def bind(self) -> None:
        self.proc.start()
        if not self._ready.wait(60):
            raise RuntimeError("simulator did not start")

    def start(self) -> None:
        self._go.set()

    def _run(self) -> None:
        socks = []
        for i in range(self.n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((sim_addr(i), self.dest[1]))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            socks.append(s)
        self._ready.set()
        self._go.wait()
        rng = random.Random(1)
        t0 = time.monotonic()
        heap = [(t0 + rng.uniform(0, self.period), i) for i in range(self.n)]
        heapq.heapify(heap)
        seq = 0
        while not self._stop.is_set():
            t, i = heap[0]
            now = time.monotonic()
            if t > now:
                time.sleep(min(t - now, 0.05))
                continue
            heapq.heapreplace(heap, (t + self.period, i))
            seq += 1
            load = self._load.value
            r = packet.Report(sim_addr(i), seq, int(time.time() * 1000), load, load, load, 4, 0,
                         8 << 20, 4 << 20, int(self.period * 1000))  # fmt: skip
            try:
                socks[i].sendto(packet.encode(r, SECRET), self.dest)
                with self._sent.get_lock():
                    self._sent.value += 1
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._go.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def status(port: int) -> dict:
    return json.loads(query(DAEMON, port, "status", "json", SECRET, 10.0))


def wait_until(cond, timeout: float) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.05)
    return float("nan")


def gossip_run(n: int, period: float, window: float, tmp: Path, send_to: str = "") -> dict:
    sims = n - 1
    addrs = [DAEMON] + [sim_addr(i) for i in range(sims)]
    gport = free_port(addrs[:50])
    sport, bport = free_port([DAEMON]), free_port([DAEMON])
    (tmp / "cluster").write_text("".join(f"{a}\n" for a in addrs))
    (tmp / "secret").write_bytes(SECRET)
    d = subprocess.Popen([*BEO, "dshd", "-f", str(tmp / "cluster"), "--bind", DAEMON, "-g",
                          str(gport), "-t", str(sport), "-r", str(bport), "--period",
                          str(period), "--expire", "3", "--secret-file", str(tmp / "secret"),
                          "--log", str(tmp / f"dshd-{n}.log"),
                          *(["--send-to", send_to] if send_to else [])],
                         stdin=subprocess.DEVNULL)  # fmt: skip
    sim = Simulator(sims, (DAEMON, gport), period)
    try:
        sim.bind()
        wait_until(lambda: _open(DAEMON, sport), 20)
        time.sleep(period)  # the daemon's own first reports, then the others start
        sim.start()
        join = wait_until(lambda: status(sport)["up"] == n, 20 * period)
        time.sleep(period)
        sim.load = 7.0
        change = wait_until(lambda: all(m.get("load1") == 7.0 for m in status(sport)["members"]
                                        if not m["self"]), 20 * period)  # fmt: skip
        time.sleep(period)
        out0 = status(sport)["stats"]["sent"]
        c0, t0, sent0 = cpu_seconds(d.pid), time.monotonic(), sim.sent
        time.sleep(window)
        c1, t1, sent1 = cpu_seconds(d.pid), time.monotonic(), sim.sent
        cpu = (c1 - c0) / (t1 - t0) * 100
        st = status(sport)
        return {"n": n, "mode": "broadcast" if send_to else "direct", "join": join / period,
                "change": change / period, "cpu": cpu, "rx_rate": (sent1 - sent0) / (t1 - t0),
                "tx_rate": (st["stats"]["sent"] - out0) / (t1 - t0),
                "up": st["up"], "rejected": st["stats"]["rejected"]}  # fmt: skip
    finally:
        sim.close()
        d.terminate()
        d.wait(10)


def _open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- placement


def placement(policy: str, jobs: int, seed: int, slots: int = 24,
              period: float = 1.5) -> tuple[float, float]:  # fmt: skip
    """Makespan and mean job time of a ``make -jSLOTS`` build of ``jobs`` jobs.

    16 nodes of 2 CPUs: 4 fast (load weight 1), 8 medium (1.5), 4 slow (3);
    5 of them carry a background load. A job's work is log-normal (median
    2 s on a fast node, a few up to ~20 s); a node shares its CPUs among its
    jobs and its background load. A new job starts as soon as one ends, as
    make does; every node reports every period (stale information, as in a
    cluster). Placement through the real :class:`beokit.dsh.state.Table`.
    """
    rng = random.Random(seed)
    weights = [1.0] * 4 + [1.5] * 8 + [3.0] * 4
    names = [f"n{i}" for i in range(len(weights))]
    background = {names[i]: b for i, b in ((1, 2.0), (5, 1.0), (6, 3.0), (9, 2.0), (13, 1.0))}
    specs = [state.MemberSpec(nm, w) for nm, w in zip(names, weights, strict=True)]
    table = state.Table(specs, names[0], period=period, extra_load=0.0 if policy == "plain" else 1.0)
    table.set_members(specs, {nm: nm for nm in names})
    running: dict[str, list[list[float]]] = {nm: [] for nm in names}  # [remaining, start]
    work = [rng.lognormvariate(0.7, 0.8) for _ in range(jobs)]
    dt, now, nxt_report, k, done = 0.01, 0.0, 0.0, 0, []

    def report(nm: str, seq: int) -> packet.Report:
        load = background.get(nm, 0.0) + len(running[nm])
        return packet.Report(nm, seq, seq, load, load, load, 2, len(running[nm]))

    seq = 0
    while k < jobs or any(running.values()):
        if now >= nxt_report:
            seq += 1
            for nm in names:
                r = report(nm, seq)
                if nm == names[0]:
                    table.set_self(r, now)
                else:
                    table.receive(r, nm, now)
            nxt_report += period
        while k < jobs and sum(len(v) for v in running.values()) < slots:
            if policy == "random":
                nm = rng.choice(names)
            else:
                m = table.best(now)
                assert m is not None
                table.bump(m, now)
                nm = m.name
            running[nm].append([work[k], now])
            k += 1
        for i, nm in enumerate(names):
            here = running[nm]
            if not here:
                continue
            share = min(1.0, 2.0 / (len(here) + background.get(nm, 0.0)))
            step = share / weights[i] * dt
            for j in here:
                j[0] -= step
            for j in [j for j in here if j[0] <= 0]:
                here.remove(j)
                done.append(now + dt - j[1])
        now += dt
    return now, statistics.mean(done)


def placement_table(jobs: int, seeds: int) -> dict:
    out = {}
    for policy in ("dshd", "plain", "random"):
        runs = [placement(policy, jobs, seed) for seed in range(seeds)]
        out[policy] = (statistics.mean(r[0] for r in runs), statistics.mean(r[1] for r in runs))
    return out


# --------------------------------------------------------------- decision time


def decision_time(hosts: int, tmp: Path) -> dict | None:
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if os.geteuid() != 0 or not os.path.exists(sshd_bin) or not shutil.which("clush"):
        print("(part 3 skipped: needs root, sshd and clush)\n")
        return None
    addrs = [f"127.0.1.{i}" for i in range(1, hosts + 1)]
    port = free_port(addrs)
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)],
                       check=True)  # fmt: skip
    (tmp / "authorized_keys").write_text((tmp / "user_key.pub").read_text())
    (tmp / "sshd_config").write_text(
        "".join(f"ListenAddress {a}:{port}\n" for a in addrs)
        + f"HostKey {tmp}/host_key\nAuthorizedKeysFile {tmp}/authorized_keys\n"
        f"PidFile {tmp}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nMaxStartups 100\nLogLevel ERROR\n")  # fmt: skip
    ssh_opts = (f"-p {port} -i {tmp}/user_key -o StrictHostKeyChecking=no "
                "-o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR")  # fmt: skip
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(tmp / "sshd_config")],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    gport, sport, bport = free_port(addrs), free_port(addrs), free_port(addrs)
    (tmp / "cl").write_text("".join(f"{a}\n" for a in addrs))
    daemons = [subprocess.Popen([*BEO, "dshd", "-f", str(tmp / "cl"), "--bind", a, "-g",
                                 str(gport), "-t", str(sport), "-r", str(bport), "--log",
                                 str(tmp / f"d{a}.log")], stdin=subprocess.DEVNULL)
               for a in addrs]  # fmt: skip
    try:
        wait_until(lambda: _open(addrs[0], sport), 20)
        time.sleep(3)
        t0 = time.monotonic()
        k = 100
        for _ in range(k):
            query(addrs[0], bport, "best", "", None, 5.0)
        ours = (time.monotonic() - t0) / k
        env = dict(os.environ)
        cmd = ["clush", "-w", ",".join(addrs), "-o", ssh_opts, "cat", "/proc/loadavg"]
        runs = []
        for _ in range(5):
            t0 = time.monotonic()
            cp = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
            runs.append(time.monotonic() - t0)
            if cp.returncode != 0 or len(cp.stdout.splitlines()) != hosts:
                print(f"(clush failed: {cp.stderr[-300:]})")
                return None
        return {"hosts": hosts, "dshd": ours, "clush": statistics.median(runs)}
    finally:
        for d in daemons:
            d.terminate()
        for d in daemons:
            d.wait(10)
        sshd.terminate()
        sshd.wait(10)


# --------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,100,1000", help="cluster sizes (default 10,100,1000)")
    p.add_argument("--period", type=float, default=1.5, help="report period (default 1.5)")
    p.add_argument("--window", type=float, default=10.0, help="CPU window, s (default 10)")
    p.add_argument("--jobs", type=int, default=400, help="jobs in the mix (default 400)")
    p.add_argument("--seeds", type=int, default=3, help="job mixes averaged (default 3)")
    p.add_argument("--ssh-hosts", type=int, default=4, help="hosts for part 3 (default 4)")
    p.add_argument("--no-ssh", action="store_true", help="skip part 3")
    p.add_argument("--broadcast", default="127.255.255.255", metavar="ADDR",
                   help="also run the largest size with --send-to ADDR (default "
                   "127.255.255.255, loopback's broadcast; '' to skip)")  # fmt: skip
    a = p.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]

    print(f"## 1. one dshd among N members (N-1 impersonated), period {a.period:g} s, "
          f"authenticated, CPU over {a.window:g} s\n")  # fmt: skip
    print("| N | reports by | idle member best / join (periods) | busy member dropped / load "
          "change seen (periods) | datagrams in/s | out/s | dshd CPU (% of a core) |")
    print("|---|---|---|---|---|---|---|")
    from bench_dsh_scale import daemon_run  # the generator of the gossip (same folder)

    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bkd-bench-") as d:
            r = daemon_run(n, "gossip", a.period, a.window, Path(d), None)
        print(f"| {n} | gossip | {r['idle']:.2f} | {r['busy']:.2f} | {r['in']:.0f} | "
              f"{r['out']:.0f} | {r['cpu_sched']:.2f} |", flush=True)  # fmt: skip
    for n in sizes[-1:] if a.broadcast else []:
        with tempfile.TemporaryDirectory(prefix="bkd-bench-") as d:
            r = gossip_run(n, a.period, a.window, Path(d), a.broadcast)
        print(f"| {n} | broadcast | {r['join']:.2f} | {r['change']:.2f} | {r['rx_rate']:.0f} | "
              f"{r['tx_rate']:.1f} | {r['cpu']:.2f} |", flush=True)  # fmt: skip

    print(f"\n## 2. placement: make -j24 of {a.jobs} jobs on 16 nodes of 2 CPUs (load weights "
          f"1/1.5/3, 5 with background load), mean of {a.seeds} mixes\n")  # fmt: skip
    pt = placement_table(a.jobs, a.seeds)
    print("| policy | makespan (s) | mean job time (s) |")
    print("|---|---|---|")
    for pol, label in (("dshd", "least-loaded + extra load (dshd)"),
                       ("plain", "least-loaded, no extra load"), ("random", "random")):  # fmt: skip
        print(f"| {label} | {pt[pol][0]:.1f} | {pt[pol][1]:.1f} |")
    print(f"\nrandom / dshd: makespan x{pt['random'][0] / pt['dshd'][0]:.2f}, "
          f"mean job time x{pt['random'][1] / pt['dshd'][1]:.2f}")  # fmt: skip

    if not a.no_ssh:
        print(f"\n## 3. time to pick a node, {a.ssh_hosts} hosts on loopback\n")
        with tempfile.TemporaryDirectory(prefix="bkd-bench-ssh-") as d:
            dt = decision_time(a.ssh_hosts, Path(d))
        if dt:
            print("| method | seconds per decision |")
            print("|---|---|")
            print(f"| dshd best port (one TCP query) | {dt['dshd'] * 1000:.2f} ms |")
            print(f"| clush -w HOSTS cat /proc/loadavg (ssh poll) | {dt['clush'] * 1000:.0f} ms |")
            print(f"\nclush / dshd: x{dt['clush'] / dt['dshd']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
