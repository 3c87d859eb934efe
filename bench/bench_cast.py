#!/usr/bin/env python3
"""Benchmark beo cast against the peers, in the same run.

On the virtual cluster (root): N + 1 hosts on one switch, every port shaped
at B (``--rate``); host1 is the head node that holds the S-byte image
(``--size``) and sends it to host2..host{N+1}.  For each N (``--nodes``):

* ``beo cast`` (receivers launched through ``ip netns exec``, fresh secret,
  digests, fsync), wall time of the whole command, launch included;
* a chain of plain ``nettee`` started by hand (receivers first, then the
  root; the root's time);
* udpcast: ``udp-receiver`` on every node, ``udp-sender --max-bitrate
  0.95*B`` (multicast on the virtual switch; a 224.0.0.0/4 route in every
  host), the sender's time;
* a star copy: N parallel ``scp`` from the head node (real OpenSSH).

Each time is printed with its ratio to the lower bound S/B, in one table,
and drawn as a PNG (time vs N).  ``--runs K`` runs every tool but the star
copy K times, rotating their order from run to run (the first tool after a
pause pays for memory the host has to hand back to this VM), and reports the
median; the star copy, bound by the head node's one port, runs once.
``--loopback`` (no root needed): receivers on 127.0.3.x, beo cast vs a
hand-started nettee chain vs N parallel ``cp``.

    python bench/bench_cast.py                       # 64 MiB, 200 Mbit/s, N = 8, 16
    python bench/bench_cast.py --size 256M --rate 200mbit
    python bench/bench_cast.py --loopback --size 256M
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from beokit.cli import parse_size  # noqa: E402
from beokit.net import free_port  # noqa: E402
from beokit.nettee.localchain import nettee_command  # noqa: E402

PREFIX = "bkcb"
WORK = Path("/dev/shm") / "bkcb-bench"


def sh(argv: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def same(src: Path, outs: list[Path]) -> bool:
    size = src.stat().st_size
    if any(not o.exists() or o.stat().st_size != size for o in outs):
        return False
    return sh(["cmp", str(src), str(outs[-1])]).returncode == 0


def clean(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.chmod(out, 0o777)


# ------------------------------------------------------------- vcluster


class Cluster:
    def __init__(self, n: int, rate: str, mtu: int = 1500) -> None:
        from beokit.vcluster import driver, plan

        driver.down(PREFIX)
        self.state = driver.up(plan.Spec(n=n, rate_bps=plan.parse_rate(rate), prefix=PREFIX,
                                         sshd=True, mtu=mtu))  # fmt: skip
        self.rate_bps = plan.parse_rate(rate)
        self.ssh_config = self.state.ssh_config
        for i in range(1, n + 1):  # multicast for udpcast: a route in every host
            sh(self.ns(i) + ["ip", "route", "add", "224.0.0.0/4", "dev", "eth0"])

    @staticmethod
    def ns(i: int) -> list[str]:
        return ["ip", "netns", "exec", f"{PREFIX}-host{i}"]

    def down(self) -> None:
        from beokit.vcluster import driver

        driver.down(PREFIX)


def run_cast(cl: Cluster | None, src: Path, n: int, out: Path) -> tuple[float, float, float]:
    """beo cast: (wall seconds, root nettee seconds, launch seconds incl. the command's start)."""
    if cl is not None:
        argv = cl.ns(1) + [sys.executable, "-m", "beokit.cli", "cast", "--json", "-R",
                           f"ip netns exec {PREFIX}-{{host}} sh -c {{cmd}}", "--remote-python",
                           sys.executable, str(src), f"host[2-{n + 1}]", "--to",
                           f"{out}/cast-{{host}}"]  # fmt: skip
    else:
        argv = [sys.executable, "-m", "beokit.cli", "cast", "--json", "-R", "exec", str(src),
                f"127.0.3.[2-{n + 1}]", "--to", f"{out}/cast-{{host}}"]  # fmt: skip
    t0 = time.monotonic()
    cp = sh(argv, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    doc = json.loads(cp.stdout) if cp.stdout.strip() else {}
    if cp.returncode != 0 or doc.get("failed"):
        raise RuntimeError(f"beo cast failed ({cp.returncode}): {cp.stderr[-800:]}")
    # launching = the command's own start-up (wall - elapsed: interpreter, imports)
    # + starting every receiver (launch_seconds)
    return wall, float(doc["seconds"]), wall - float(doc["elapsed"]) + float(doc["launch_seconds"])


def run_nettee(cl: Cluster | None, src: Path, n: int, out: Path) -> float:
    """A chain of plain nettee started by hand: receivers first, then the root (timed)."""
    hosts = (
        [f"host{i}" for i in range(2, n + 2)] if cl else [f"127.0.3.{i}" for i in range(2, n + 2)]
    )
    port = free_port(["127.0.0.1"]) if cl else free_port(hosts)
    procs = []
    for k in range(n - 1, -1, -1):
        args = nettee_command() + ["-port", str(port), "-name", hosts[k], "-out",
                                   str(out / f"nt-{hosts[k]}")]  # fmt: skip
        if k + 1 < n:
            args += ["-next", f"{hosts[k + 1]}:{port}"]
        if cl:
            args = cl.ns(k + 2) + args
        else:
            args += ["-bind", hosts[k]]
        procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL))
    root = nettee_command() + ["-root", "-port", str(port), "-next", f"{hosts[0]}:{port}",
                               "-in", str(src)]  # fmt: skip
    if cl:
        root = cl.ns(1) + root
    t0 = time.monotonic()
    cp = sh(root)
    secs = time.monotonic() - t0
    for p in procs:
        p.wait(timeout=60)
    if cp.returncode != 0 or not same(src, [out / f"nt-{h}" for h in hosts]):
        raise RuntimeError(f"nettee chain failed: {cp.stderr[-500:]}")
    return secs


def run_udpcast(cl: Cluster, src: Path, n: int, out: Path) -> float:
    """udp-receiver on every node, then udp-sender (timed) until all have the file."""
    base = 9300
    recv = []
    for i in range(2, n + 2):
        recv.append(subprocess.Popen(
            cl.ns(i) + ["udp-receiver", "--interface", "eth0", "--nokbd", "--portbase", str(base),
                        "--file", str(out / f"udp-host{i}")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
    mbit = int(cl.rate_bps * 0.95 / 1e6)
    t0 = time.monotonic()
    cp = sh(cl.ns(1) + ["udp-sender", "--interface", "eth0", "--nokbd", "--portbase", str(base),
                        "--min-receivers", str(n), "--max-wait", "30", "--max-bitrate",
                        f"{mbit}m", "--file", str(src)], timeout=600)  # fmt: skip
    secs = time.monotonic() - t0
    for p in recv:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    if cp.returncode != 0 or not same(src, [out / f"udp-host{i}" for i in range(2, n + 2)]):
        raise RuntimeError(f"udpcast failed: {cp.stderr[-500:]}")
    return secs


def run_star(cl: Cluster | None, src: Path, n: int, out: Path) -> float:
    """Star copy from the head node: N parallel scp (or cp on loopback)."""
    t0 = time.monotonic()
    procs = []
    for i in range(2, n + 2):
        if cl:
            argv = cl.ns(1) + ["scp", "-q", "-F", str(cl.ssh_config), str(src),
                               f"host{i}:{out}/scp-host{i}"]  # fmt: skip
        else:
            argv = ["cp", str(src), str(out / f"scp-host{i}")]
        procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE))
    errs = [p.communicate(timeout=900)[1] for p in procs]
    secs = time.monotonic() - t0
    if any(p.returncode for p in procs) or not same(
        src, [out / f"scp-host{i}" for i in range(2, n + 2)]
    ):
        raise RuntimeError(f"star copy failed: {[e[-200:] for e in errs if e]}")
    return secs


# ------------------------------------------------------------------ plot


def plot(results: dict[str, dict[int, float]], sizes: list[int], bound: float | None,
         title: str, png: str, mtu: int = 1500) -> None:  # fmt: skip
    """Time vs N for every tool; beside it, on the virtual cluster, each chain tool's
    time / S/B (the star copy would flatten it) and TCP's own floor at this MTU."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    names = list(results)
    fig, axes = plt.subplots(1, 2 if bound else 1, figsize=(11 if bound else 6, 4))
    ax = axes[0] if bound else axes
    for k in names:
        ax.plot(sizes, [results[k][n] for n in sizes], marker="o", label=k)
    if bound:
        ax.axhline(bound, color="grey", linestyle="--", label="S/B")
    ax.set_xlabel("N (receiving nodes)")
    ax.set_ylabel("seconds")
    ax.set_title(title, fontsize=10)
    ax.set_xticks(sizes)
    ax.legend()
    if bound:
        ax2 = axes[1]
        for k in names:
            if not k.startswith("star"):
                ax2.plot(sizes, [results[k][n] / bound for n in sizes], marker="o", label=k)
        ax2.axhline(1.05, color="grey", linestyle=":", label="goal 1.05 (plus launch)")
        # tbf counts whole frames; TCP carries MTU - 52 bytes (IP, TCP, timestamps) in each
        ax2.axhline((mtu + 14) / (mtu - 52), color="black", linestyle="--",
                    label=f"TCP's floor at MTU {mtu}")  # fmt: skip
        ax2.set_xlabel("N (receiving nodes)")
        ax2.set_ylabel("time / (S/B)")
        ax2.set_title("the chain tools against the bound S/B", fontsize=10)
        ax2.set_xticks(sizes)
        ax2.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"plot: {png}")


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--size",
        type=parse_size,
        default=parse_size("64M"),
        help="image size (default 64M; 256M, 1G)",
    )
    ap.add_argument("--rate", default="200mbit", help="per-port rate B (default 200mbit)")
    ap.add_argument("--nodes", default="8,16", help="N values (default 8,16)")
    ap.add_argument("--mtu", type=int, default=1500,
                    help="MTU of the virtual cluster (default 1500; 9000: jumbo frames)")  # fmt: skip
    ap.add_argument("--loopback", action="store_true", help="127.0.3.x, no root, no shaping")
    ap.add_argument("--no-star", action="store_true", help="skip the star copy (slowest)")
    ap.add_argument("--runs", type=int, default=1,
                    help="runs of each tool but the star copy, order rotated; median (default 1)")
    ap.add_argument("--png", default=str(HERE / "bench_cast.png"), help="plot file")
    args = ap.parse_args()
    sizes = [int(x) for x in args.nodes.split(",")]
    loop = args.loopback or os.geteuid() != 0
    clean(WORK)
    src = WORK / "src.bin"
    with open(src, "wb") as fh:
        left = args.size
        while left:
            chunk = os.urandom(min(left, 1 << 22))
            fh.write(chunk)
            left -= len(chunk)
    out = WORK / "out"
    cl = None if loop else Cluster(max(sizes) + 1, args.rate, args.mtu)
    bound = args.size * 8 / cl.rate_bps if cl else None
    results: dict[str, dict[int, float]] = {}
    stream: dict[int, float] = {}
    launch: dict[int, float] = {}
    samples: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    try:
        for n in sizes:
            tools = [("beo cast", lambda n=n: run_cast(cl, src, n, out)),
                     ("nettee by hand", lambda n=n: run_nettee(cl, src, n, out))]  # fmt: skip
            if cl:
                tools.append(("udpcast", lambda n=n: run_udpcast(cl, src, n, out)))
            star = None
            if not args.no_star:
                star = ("star scp" if cl else "star cp", lambda n=n: run_star(cl, src, n, out))
            for k in range(max(args.runs, 1)):
                order = tools[k % len(tools) :] + tools[: k % len(tools)]
                if star and k == 0:
                    order.append(star)
                for name, fn in order:
                    clean(out)
                    got = fn()
                    got = got if isinstance(got, tuple) else (got,)
                    samples.setdefault((name, n), []).append(got)
                    print(f"  N={n} run {k + 1} {name}: {got[0]:.2f} s", file=sys.stderr,
                          flush=True)  # fmt: skip
            for (name, m), got in samples.items():
                if m != n:
                    continue
                mid = sorted(got)[(len(got) - 1) // 2]  # the median run (the lower one of two)
                results.setdefault(name, {})[n] = mid[0]
                if len(mid) == 3:
                    stream[n], launch[n] = mid[1], mid[2]
    finally:
        shutil.rmtree(WORK, ignore_errors=True)  # the source, the outputs, the directory
        if cl:
            cl.down()
    size = f"{args.size / (1 << 20):.0f} MiB"
    print(
        f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f}"
    )
    if args.runs > 1:
        print(f"(median of {args.runs} runs, order rotated; the star copy ran once)")
        for (name, n), got in samples.items():
            print(f"  N={n} {name}: " + " ".join(f"{g[0]:.2f}" for g in got))
    if cl:
        print(f"\n## virtual cluster, S = {size}, B = {args.rate} per port, MTU {args.mtu}, "
              f"S/B = {bound:.2f} s\n")  # fmt: skip
    else:
        print(f"\n## loopback (127.0.3.x, no shaping), S = {size}\n")
    names = list(results)
    ref = "S/B" if cl else "nettee by hand"
    head = ["N", *(f"{k} s ({'/ S/B' if cl else '/ nettee'})" for k in names)]
    if cl:
        head += ["beo cast minus launch s / S/B (goal <= 1.05)", "root nettee s / S/B"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for n in sizes:
        base = bound if cl else results["nettee by hand"][n]
        cells = [str(n)] + [f"{results[k][n]:.2f} ({results[k][n] / base:.2f}x)" for k in names]
        if cl:
            net = results["beo cast"][n] - launch[n]
            cells.append(f"{net:.2f} ({net / base:.2f}x; launch {launch[n]:.2f})")
            cells.append(f"{stream[n]:.2f} ({stream[n] / base:.2f}x)")
        print("| " + " | ".join(cells) + " |")
    star = next((k for k in names if k.startswith("star")), None)
    if star and cl:
        for n in sizes:
            speedup = results[star][n] / results["beo cast"][n]
            print(f"\nN={n}: beo cast is {speedup:.1f}x faster than the {star} "
                  f"(goal >= 0.9 x N = {0.9 * n:.1f}x)", end="")  # fmt: skip
        print()
    print(
        f"\n(times in seconds; ratio to {ref}; beo cast includes launching every receiver, "
        "digests and fsync)"
    )
    plot(results, sizes, bound, f"{size} to N nodes" + (f", {args.rate} per port, MTU "
                                                        f"{args.mtu}" if cl else ", loopback"),
         args.png, args.mtu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
