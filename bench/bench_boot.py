#!/usr/bin/env python3
"""Benchmark beo boot against dnsmasq, same cluster, same clients, same run.

A 2-host virtual cluster (``beo vcluster``, prefix ``bkbb``, 10 Gbit/s
ports): the server (beo boot, then dnsmasq configured by
``beo boot --export-dnsmasq`` for the same cluster) runs in host1 on the
standard ports, the clients in host2.

1. DHCP: N simulated clients (default 1000) do DISCOVER/OFFER/REQUEST/ACK at
   once through one relay-agent socket (RFC 2131 retransmission: 4 s, then
   8 s...); time until all are bound. Scenarios: "known" (every MAC is a
   node in the config, dnsmasq gets 1000 dhcp-host lines) and "anonymous"
   (sequential MACs, addresses from a pool).
2. TFTP: C curl clients (``--tftp-blksize 1468``) fetch the same S-byte file
   at once: aggregate throughput, slowest and fastest client, fairness
   (fastest time / slowest time).

    python bench/bench_boot.py                       # 1000 DHCP, 20 x 8 MiB TFTP, 20 x 16 MiB HTTP
    python bench/bench_boot.py --tftp-clients 100 --tftp-size 30M   # issue 10 sizes
    python bench/bench_boot.py --http-clients 100 --http-size 100M  # issue 11 sizes
    python bench/bench_boot.py --png docs/bench-boot.png
    git worktree add /tmp/wt-old HEAD~3   # before/after a change, same run:
    python bench/bench_boot.py --dhcp-clients 0 --http-clients 0 --no-dnsmasq \
        --old-src /tmp/wt-old/src --tftp-clients 100 --tftp-size 30M --rounds 5

Needs root (network namespaces) and dnsmasq.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from beokit.vcluster import driver
from beokit.vcluster import plan as P

PREFIX = "bkbb"
PY = sys.executable
OLD = "beo boot (old)"  # --old-src: the same server from another source tree

DORA = """
import json, sys
from beokit.boot import loadgen as L
r = L.dora((sys.argv[1], 67), sys.argv[2], int(sys.argv[3]), timeout=float(sys.argv[4]),
           retry=4.0, first=int(sys.argv[5]))
print(json.dumps({"bound": len(r.bound), "elapsed": r.elapsed, "sent": r.sent, "naks": r.naks,
                  "ips": sorted(set(r.bound.values()))[:3]}))
"""

FETCH = """
import json, os, subprocess, sys, time
url, n, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t0 = time.monotonic()
procs = [subprocess.Popen(["curl", "-sS", "--max-time", "900", "--tftp-blksize", "1468", "-o",
                           "/dev/null", "-w", "%{size_download}", url], stdout=subprocess.PIPE)
         for i in range(n)]
index = {p.pid: i for i, p in enumerate(procs)}
ends = [None] * n
while None in ends:  # sleep in wait() until a client ends: no polling beside the clients
    pid, status = os.wait()
    if pid in index:
        i = index[pid]
        procs[i].returncode = os.waitstatus_to_exitcode(status)
        ends[i] = (time.monotonic() - t0, procs[i].returncode, int(procs[i].stdout.read() or 0))
print(json.dumps(ends))
"""


WINFETCH = """
import json, subprocess, sys, time
host, n, window, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
start = time.time() + 2.0 + 0.05 * n  # every client starts at the same instant, after its start-up
child = (
    "import json, sys, time\\n"
    "from beokit.boot.loadgen import tftp_get\\n"
    "start = float(sys.argv[1])\\n"
    "time.sleep(max(start - time.time(), 0))\\n"
    "n, _ = tftp_get((sys.argv[2], 69), sys.argv[3], windowsize=int(sys.argv[4]))\\n"
    "print(json.dumps([time.time() - start, 0, n]))\\n"
)
procs = [subprocess.Popen([sys.executable, "-c", child, str(start), host, name, window],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for _ in range(n)]
out = []
for p in procs:
    text = p.communicate(timeout=1800)[0]
    out.append(json.loads(text) if p.returncode == 0 and text else [0, 1, 0])
print(json.dumps(out))
"""


def parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.upper().rstrip("B")
    return int(float(t[:-1]) * mult[t[-1]]) if t[-1:] in mult else int(t)


class Bench:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp = tmp
        self.args = args
        driver.down(PREFIX)
        self.state = driver.up(P.Spec(n=2, rate_bps=10**10, prefix=PREFIX))
        self.net = self.state.plan.network(0)
        self.srv = self.state.plan.address(0, 1)
        self.cli = self.state.plan.address(0, 2)
        self.root = tmp / "root"
        self.root.mkdir()
        os.chmod(tmp, 0o755)

    def ns(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", P.host_ns(PREFIX, i)]

    def config(self, n_known: int) -> Path:
        net = self.net.network_address
        macs = "\n".join(f'"52:54:01:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}" = '
                         f"{i + 1}" for i in range(n_known))  # fmt: skip
        p = self.tmp / f"boot{n_known}.toml"
        p.write_text(f"""
[server]
address = "{self.srv}"
root = "root"
[network]
subnet = "{self.net}"
temporary_lease_time = 3600
pool = "{net + 2048}-{net + 4093}"
[nodes]
base = "{net + 1}"
count = 1500
[nodes.macs]
{macs}
""")
        return p

    def start_beo(self, cfg: Path, src: str | None = None) -> subprocess.Popen:
        """beo boot in host1; ``src``: from that source tree (PYTHONPATH) instead."""
        log = open(self.tmp / "beo.log", "ab")  # noqa: SIM115
        env = None if src is None else {**os.environ, "PYTHONPATH": src}
        p = subprocess.Popen([*self.ns(1), PY, "-m", "beokit.cli", "boot", "-c", str(cfg)],
                             stdout=log, stderr=log, cwd=self.tmp, env=env)  # fmt: skip
        self.wait_port(p, "67" if "dhcp" in str(cfg) else "69")
        return p

    def start_dnsmasq(self, cfg: Path) -> subprocess.Popen:
        conf = self.tmp / "dnsmasq.conf"
        text = subprocess.run([PY, "-m", "beokit.cli", "boot", "-c", str(cfg),
                               "--export-dnsmasq"], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
        leases = self.tmp / "dnsmasq.leases"
        leases.unlink(missing_ok=True)
        conf.write_text(
            text + f"port=0\nuser=root\ndhcp-leasefile={leases}\n"
            "dhcp-lease-max=100000\ntftp-max=10000\nquiet-dhcp\nquiet-tftp\n"
        )
        log = open(self.tmp / "dnsmasq.log", "ab")  # noqa: SIM115
        p = subprocess.Popen([*self.ns(1), "dnsmasq", "--no-daemon", f"--conf-file={conf}"],
                             stdout=log, stderr=log)  # fmt: skip
        self.wait_port(p, "69")
        return p

    def wait_port(self, p: subprocess.Popen, port: str) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            out = subprocess.run([*self.ns(1), "ss", "-Hlun", f"sport = :{port}"],
                                 capture_output=True, text=True).stdout  # fmt: skip
            if out.strip():
                time.sleep(0.2)
                return
            if p.poll() is not None:
                raise RuntimeError(f"server exited {p.returncode}; see {self.tmp}")
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    @staticmethod
    def stop(p: subprocess.Popen) -> None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def dora(self, n: int, first: int) -> dict:
        cp = subprocess.run([*self.ns(2), PY, "-c", DORA, self.srv, self.cli, str(n),
                             str(self.args.dhcp_timeout), str(first)],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
        if cp.returncode:
            raise RuntimeError(cp.stderr)
        return json.loads(cp.stdout)

    def fetch(self, n: int, url: str = "") -> list[tuple[float, int]]:
        """n curls at once in host2; (seconds, exit status) each, status 99 if short."""
        url = url or f"tftp://{self.srv}/image"
        cp = subprocess.run([*self.ns(2), PY, "-c", FETCH, url, str(n), "-"],
                            capture_output=True, text=True, timeout=3600)  # fmt: skip
        want = (self.root / "image").stat().st_size
        return [(t, rc if size == want else (rc or 99)) for t, rc, size in json.loads(cp.stdout)]

    def fetch_window(self, n: int, window: int) -> list[tuple[float, int]]:
        """n RFC 7440 clients (beokit.boot.loadgen.tftp_get) in host2, started together."""
        cp = subprocess.run([*self.ns(2), PY, "-c", WINFETCH, self.srv, str(n), str(window),
                             "image"], capture_output=True, text=True, timeout=3600)  # fmt: skip
        want = (self.root / "image").stat().st_size
        return [(t, rc if size == want else (rc or 99)) for t, rc, size in json.loads(cp.stdout)]

    def down(self) -> None:
        driver.down(PREFIX)


def run(args: argparse.Namespace) -> dict:
    results: dict = {"dhcp": {}, "tftp": {}, "window": {}}
    with tempfile.TemporaryDirectory(prefix="bkbb-") as d:
        b = Bench(Path(d), args)
        try:
            n = args.dhcp_clients
            servers = [("beo boot", b.start_beo)]
            if args.old_src:
                servers.append((OLD, lambda c: b.start_beo(c, args.old_src)))
            if not args.no_dnsmasq:
                servers.append(("dnsmasq", b.start_dnsmasq))
            for scenario, known, first in (("known", n, 0), ("anonymous", 0, 0)) if n else ():
                cfg = b.config(known)
                for name, start in servers:
                    p = start(cfg)
                    try:
                        r = b.dora(n, first)
                    finally:
                        b.stop(p)
                    results["dhcp"][(scenario, name)] = r
                    print(f"  dhcp {scenario:9s} {name:8s}: {r['bound']}/{n} bound in "
                          f"{r['elapsed']:.2f} s ({r['sent']} packets, {r['naks']} NAKs)",
                          file=sys.stderr)  # fmt: skip
            size = args.tftp_size
            with open(b.root / "image", "wb") as f:
                f.write(os.urandom(size))
            os.chmod(b.root / "image", 0o644)
            cfg = b.config(0)
            results["rounds"] = []
            for rnd in range(args.rounds):  # alternate the order: the box's load drifts
                results["rounds"].append({})
                for name, start in servers[:: -1 if rnd % 2 else 1]:  # fmt: skip
                    p = start(cfg)
                    try:
                        cpu0 = cpu_seconds(p.pid)
                        t0 = time.monotonic()
                        ends = b.fetch(args.tftp_clients)
                        wall = time.monotonic() - t0
                        cpu1 = cpu_seconds(p.pid)
                        if args.window and rnd == 0:
                            w = b.fetch_window(args.tftp_clients, args.window)
                            results["window"][name] = summarize(w, size, 0.0)
                            print(f"  tftp windowsize {args.window} {name}: "
                              f"{results['window'][name]}", file=sys.stderr)  # fmt: skip
                    finally:
                        b.stop(p)
                    ok = [t for t, rc in ends if rc == 0]
                    r = {
                        "ok": len(ok),
                        "slowest": max(ok, default=0),
                        "fastest": min(ok, default=0),
                        "aggregate": len(ok) * size / max(max(ok, default=1), 1e-9),
                        "wall": wall,
                        "user": cpu1[0] - cpu0[0],
                        "sys": cpu1[1] - cpu0[1],
                        "mb": len(ok) * size / 1e6,
                    }
                    if rnd == 0:
                        results["tftp"][name] = r
                    results["rounds"][-1][name] = r
                    print(f"  tftp round {rnd + 1} {name:8s}: {len(ok)}/{args.tftp_clients} ok, "
                      f"slowest {r['slowest']:.2f} s, fastest {r['fastest']:.2f} s, server CPU "
                      f"{r['user']:.2f} s user + {r['sys']:.2f} s system",
                      file=sys.stderr)  # fmt: skip
            if args.http_clients:
                results["http"] = http_part(b, args)
        finally:
            b.down()
    return results


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far (/proc/PID/stat)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / hz, int(f[12]) / hz


def summarize(ends: list, size: int, wall: float) -> dict:
    ok = [t for t, rc in ends if rc == 0]
    return {"ok": len(ok), "slowest": max(ok, default=0), "fastest": min(ok, default=0),
            "aggregate": len(ok) * size / max(max(ok, default=1), 1e-9), "wall": wall}  # fmt: skip


def http_part(b: Bench, args: argparse.Namespace) -> dict:
    """Issue 11: HTTP vs TFTP from the same beo boot, and vs python3 -m http.server."""
    size = args.http_size
    with open(b.root / "image", "wb") as f:
        f.write(os.urandom(size))
    os.chmod(b.root / "image", 0o644)
    cfg = b.config(0)
    out: dict = {}
    log = open(b.tmp / "beo-http.log", "ab")  # noqa: SIM115
    p = subprocess.Popen([*b.ns(1), PY, "-m", "beokit.cli", "boot", "-c", str(cfg),
                          "--http-port", "8080", "--dhcp-port", "0", "--dns-port", "0"],
                         stdout=log, stderr=log, cwd=b.tmp)  # fmt: skip
    try:
        b.wait_port(p, "69")
        for name, url, n in (
            ("beo boot HTTP", f"http://{b.srv}:8080/image", args.http_clients),
            ("beo boot TFTP", f"tftp://{b.srv}/image", args.http_tftp_clients),
        ):
            t0 = time.monotonic()
            ends = b.fetch(n, url)
            out[name] = summarize(ends, size, time.monotonic() - t0)
            print(f"  {name}: {out[name]}", file=sys.stderr)
    finally:
        b.stop(p)
    p = subprocess.Popen([*b.ns(1), PY, "-m", "http.server", "8000", "--bind", b.srv,
                          "--directory", str(b.root)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = subprocess.run([*b.ns(1), "ss", "-Hltn", "sport = :8000"], capture_output=True,
                               text=True).stdout  # fmt: skip
            if r.strip():
                break
            time.sleep(0.05)
        t0 = time.monotonic()
        ends = b.fetch(args.http_clients, f"http://{b.srv}:8000/image")
        out["python http.server"] = summarize(ends, size, time.monotonic() - t0)
        print(f"  http.server: {out['python http.server']}", file=sys.stderr)
    finally:
        b.stop(p)
    return out


def report(res: dict, args: argparse.Namespace) -> None:
    if args.dhcp_clients:
        report_dhcp(res, args)
    report_tftp(res, args)
    if res["window"]:
        report_window(res, args)
    if "http" in res:
        report_http(res, args)


def report_dhcp(res: dict, args: argparse.Namespace) -> None:
    n = args.dhcp_clients
    names = list(dict.fromkeys(name for _, name in res["dhcp"]))
    print(f"\n## DHCP: {n} clients doing DORA at once (time until all bound)\n")
    print("| scenario | " + " | ".join(names) + " | " +
          " | ".join(f"{x} / beo boot" for x in names[1:]) + " |")  # fmt: skip
    print("|---" * (2 * len(names)) + "|")

    def cell(r: dict) -> str:
        done = "" if r["bound"] == n else f" ({r['bound']}/{n} bound, stopped)"
        return f"{r['elapsed']:.2f} s, {r['naks']} NAKs{done}"

    for scenario in ("known", "anonymous"):
        rs = [res["dhcp"][(scenario, name)] for name in names]
        ratios = [f"{r['elapsed'] / rs[0]['elapsed']:.1f}x" for r in rs[1:]]
        print(f"| {scenario} | " + " | ".join(cell(r) for r in rs) + " | " +
              " | ".join(ratios) + " |")  # fmt: skip


def _cpu_per_mb(r: dict) -> float:
    return (r["user"] + r["sys"]) / max(r["mb"], 1e-9)


def report_tftp(res: dict, args: argparse.Namespace) -> None:
    mib = args.tftp_size / (1 << 20)
    print(f"\n## TFTP: {args.tftp_clients} curl clients x {mib:g} MiB, blksize 1468\n")
    print("| round | server | ok | aggregate MB/s | slowest s | fastest s | fairness "
          "(fastest/slowest) | server CPU user + sys s | CPU ms per MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for i, rnd in enumerate(res["rounds"]):
        for name, r in rnd.items():
            fair = r["fastest"] / r["slowest"] if r["slowest"] else 0
            print(f"| {i + 1} | {name} | {r['ok']} | {r['aggregate'] / 1e6:.1f} | "
                  f"{r['slowest']:.2f} | {r['fastest']:.2f} | {fair:.2f} | {r['user']:.2f} + "
                  f"{r['sys']:.2f} | {_cpu_per_mb(r) * 1000:.2f} |")  # fmt: skip
    for other in ("dnsmasq", OLD):
        if other not in res["rounds"][0]:
            continue
        ratios = [rnd["beo boot"]["aggregate"] / rnd[other]["aggregate"] for rnd in res["rounds"]]
        cpu = [_cpu_per_mb(rnd["beo boot"]) / _cpu_per_mb(rnd[other]) for rnd in res["rounds"]]
        med = lambda xs: f" (median {statistics.median(xs):.2f})" if len(xs) > 1 else ""  # noqa: E731
        print(f"\nthroughput ratio beo boot / {other}: " + ", ".join(f"{x:.2f}" for x in ratios)
              + med(ratios))  # fmt: skip
        print(f"server CPU per MB, beo boot / {other}: " + ", ".join(f"{x:.2f}" for x in cpu)
              + med(cpu))  # fmt: skip


def report_window(res: dict, args: argparse.Namespace) -> None:
    mib = args.tftp_size / (1 << 20)
    print(f"\n## TFTP: {args.tftp_clients} RFC 7440 clients (windowsize {args.window}, "
          f"blksize 1468) x {mib:g} MiB, started together\n")  # fmt: skip
    print("| server | ok | aggregate MB/s | slowest s | fastest s | fairness |")
    print("|---|---|---|---|---|---|")
    for name, r in res["window"].items():
        fair = r["fastest"] / r["slowest"] if r["slowest"] else 0
        print(f"| {name} | {r['ok']} | {r['aggregate'] / 1e6:.1f} | {r['slowest']:.2f} | "
              f"{r['fastest']:.2f} | {fair:.2f} |")  # fmt: skip
    if "dnsmasq" not in res["window"]:
        return
    a, d = res["window"]["beo boot"], res["window"]["dnsmasq"]
    print(
        f"\nwindowsize throughput ratio beo boot / dnsmasq: "
        f"{a['aggregate'] / d['aggregate']:.2f} (dnsmasq ignores windowsize)"
    )


def report_http(res: dict, args: argparse.Namespace) -> None:
    h = res["http"]
    mib = args.http_size / (1 << 20)
    print(f"\n## HTTP boot: {args.http_clients} HTTP clients x {mib:g} MiB "
          f"({args.http_tftp_clients} over TFTP, blksize 1468)\n")  # fmt: skip
    print("| server | clients ok | aggregate MB/s | slowest s | fastest s | fairness |")
    print("|---|---|---|---|---|---|")
    for name, r in h.items():
        fair = r["fastest"] / r["slowest"] if r["slowest"] else 0
        print(f"| {name} | {r['ok']} | {r['aggregate'] / 1e6:.1f} | {r['slowest']:.2f} | "
              f"{r['fastest']:.2f} | {fair:.2f} |")  # fmt: skip
    ht, tt = h["beo boot HTTP"]["aggregate"], h["beo boot TFTP"]["aggregate"]
    hs = h["python http.server"]["aggregate"]
    print(f"\nHTTP / TFTP aggregate: {ht / tt:.1f}x; beo boot HTTP / http.server: "
          f"{ht / hs:.2f}x")  # fmt: skip


def plot(res: dict, args: argparse.Namespace, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    sc = ["known", "anonymous"]
    rounds = res["rounds"]
    for k, name in enumerate(("beo boot", "dnsmasq")):
        ax1.bar([i + k * 0.4 for i in range(2)],
                [res["dhcp"][(s, name)]["elapsed"] for s in sc], 0.4, label=name)  # fmt: skip
        for i, s in enumerate(sc):  # how many were bound when the run ended
            r = res["dhcp"][(s, name)]
            ax1.annotate(f"{r['bound']}/{args.dhcp_clients}", (i + k * 0.4, r["elapsed"]),
                         ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax2.bar([i + k * 0.4 for i in range(len(rounds))],
                [r[name]["aggregate"] / 1e6 for r in rounds], 0.4, label=name)  # fmt: skip
    ax1.set_xticks([0.2, 1.2], sc)
    ax1.set_yscale("log")
    ax1.set_ylabel("seconds until all bound (log scale)")
    ax1.set_title(f"DHCP, {args.dhcp_clients} clients at once (bars: bound/clients)")
    ax1.legend()
    ax2.set_xticks([i + 0.2 for i in range(len(rounds))],
                   [f"round {i + 1}" for i in range(len(rounds))])  # fmt: skip
    ax2.set_ylabel("aggregate MB/s (clients x size / slowest)")
    ax2.set_title(f"TFTP, {args.tftp_clients} curl x {args.tftp_size >> 20} MiB, "
                  "servers alternating")  # fmt: skip
    top = max(r[n]["aggregate"] for r in rounds for n in ("beo boot", "dnsmasq")) / 1e6
    for i, r in enumerate(rounds):  # the ratio of the round above its pair of bars
        ratio = r["beo boot"]["aggregate"] / max(r["dnsmasq"]["aggregate"], 1)
        ax2.annotate(f"{ratio:.2f}x", (i + 0.2, top * 1.02), ha="center", fontsize=8)
    ax2.set_ylim(0, top * 1.25)
    ax2.legend(loc="upper left", ncol=2, title="beo boot / dnsmasq above each round",
               title_fontsize=8, fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dhcp-clients", type=int, default=1000)
    ap.add_argument(
        "--dhcp-timeout",
        type=float,
        default=20.0,
        help="stop a DHCP run after this many seconds (default 20)",
    )
    ap.add_argument("--tftp-clients", type=int, default=20)
    ap.add_argument("--tftp-size", type=parse_size, default=parse_size("8M"))
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="TFTP comparison rounds, alternating which server goes first (default 1); "
        "the box's load drifts, so each round compares the two back to back",
    )
    ap.add_argument(
        "--window",
        type=int,
        default=0,
        help="also run RFC 7440 Python clients (loadgen.tftp_get) with this windowsize, "
        "e.g. 16 (default 0: skip)",
    )
    ap.add_argument("--http-clients", type=int, default=20, help="HTTP clients (0 = skip)")
    ap.add_argument(
        "--http-tftp-clients",
        type=int,
        default=20,
        help="TFTP clients in the HTTP comparison (default 20)",
    )
    ap.add_argument("--http-size", type=parse_size, default=parse_size("16M"))
    ap.add_argument("--png", metavar="FILE", help="also draw the results")
    ap.add_argument("--old-src", metavar="DIR", help="also run beo boot from this source tree "
                    "(PYTHONPATH=DIR, e.g. a git worktree's src) in each TFTP round: before/after")
    ap.add_argument("--no-dnsmasq", action="store_true", help="leave dnsmasq out of the TFTP "
                    "rounds (with --old-src: old against new only)")  # fmt: skip
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("dnsmasq") is None:
        sys.exit("bench_boot: needs root (network namespaces) and dnsmasq")
    res = run(args)
    report(res, args)
    if args.png and args.dhcp_clients and not args.no_dnsmasq:
        plot(res, args, args.png)
    elif args.png:
        print("--png needs the DHCP part and dnsmasq: no plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
