#!/usr/bin/env python3
"""Benchmark beo cast against dolly (and the other peers), in the same run.

On the virtual cluster (root): N + 1 hosts on one switch, every port shaped
at B (``--rate``); host1 is the head node that holds the S-byte image and
sends it to host2..host{N+1}.  The default suite (issue 22), for every size
of ``--sizes`` and N of ``--nodes``:

* **dolly** (built from ../shared/peers in this run; ``--dolly PATH`` to
  give one; skipped with the reason where it cannot be built): its clients
  started beforehand, one per host; the server's time;
* **nettee by hand**: a chain of plain ``nettee`` (receivers first, then
  the root; the root's time);
* **beo cast**: the whole command (its start-up, every receiver launched
  into its host's namespace with ``-R netns:bkcb-{host}``, or with
  ``--cast-rcmd template`` through an ``ip netns exec`` template, a fresh secret, ``-heal -digest``, fsync, the
  checks), with its launch, the root nettee's life and its stream.

Destinations: ``/dev/null`` (the network path) and, separately, a file per
host in /dev/shm (``--dests null,file``; file runs whose copies would
hold more than ``--file-max`` bytes at once are left out, said so).  Then
the CPU-bound case (``--cpu-size``, 3 nodes, ``/dev/null``, the veth ports
of host1-4 unshaped: no tbf): dolly, plain nettee, ``-digest``, ``-heal
-digest`` and beo cast with its defaults, with CPU seconds per GiB per node
(root, every receiver) from each process's rusage.

``--runs K`` runs each tool K times, order rotated, and reports the median.
``--suite star`` is the earlier comparison (beo cast, nettee by hand,
udpcast, a star of scp); ``--loopback`` runs without root on 127.0.3.x.
The cluster is built under the shared namespace lock
(/tmp/beokit-netns.lock), held for the whole run.

    python bench/bench_cast.py                        # the issue 22 suite
    python bench/bench_cast.py --sizes 100M --nodes 3,16 --runs 3
    python bench/bench_cast.py --suite star --sizes 512M --nodes 8,16
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import _cast_tools as tools  # noqa: E402
from _cast_tools import PREFIX, Run, make_source, ns  # noqa: E402
from _netns import netns_lock  # noqa: E402

from beokit.cli import parse_size  # noqa: E402
from beokit.net import free_port  # noqa: E402

WORK = Path("/dev/shm") / "bkcb-bench"
GIB = 1 << 30


def sh(argv: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def clean(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.chmod(out, 0o777)


def fresh_bytecode() -> None:
    """As an installed beokit has: every module compiled, and kept (this box's
    environment sets PYTHONDONTWRITEBYTECODE; a receiver would compile nettee anew)."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    compileall.compile_dir(str(HERE.parent / "src" / "beokit"), quiet=1)


def machine() -> str:
    return (f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, load "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min)")  # fmt: skip


# ------------------------------------------------------------- vcluster


class Cluster:
    def __init__(self, n: int, rate: str, mtu: int = 1500, sshd: bool = False) -> None:
        from beokit.vcluster import driver, plan

        driver.down(PREFIX)
        self.state = driver.up(plan.Spec(n=n, rate_bps=plan.parse_rate(rate), prefix=PREFIX,
                                         sshd=sshd, mtu=mtu))  # fmt: skip
        self.rate_bps = plan.parse_rate(rate)
        self.ssh_config = self.state.ssh_config

    def unshape(self, hosts: list[int]) -> None:
        """No tbf on these hosts' ports, either end: the veth's own speed (CPU-bound)."""
        for pt in self.state.plan.ports:
            if pt.host in hosts:
                sh(["ip", "netns", "exec", pt.host_ns, "tc", "qdisc", "del", "dev", pt.dev, "root"])
                sh(["ip", "netns", "exec", pt.switch_ns, "tc", "qdisc", "del", "dev", pt.port,
                    "root"])  # fmt: skip

    def down(self) -> None:
        from beokit.vcluster import driver

        driver.down(PREFIX)


# ------------------------------------------------------------ measuring


def measure(tools_: list[tuple[str, Callable[[], Run]]], runs: int,
            out: Path | None) -> dict[str, list[Run]]:  # fmt: skip
    """Every tool ``runs`` times, the order rotated run by run; a failed run is
    retried once (then the benchmark stops: nothing is reported that did not work)."""
    got: dict[str, list[Run]] = {name: [] for name, _ in tools_}
    for k in range(runs):
        order = tools_[k % len(tools_):] + tools_[: k % len(tools_)]
        for name, fn in order:
            for attempt in (1, 2):
                if out is not None:
                    clean(out)
                try:
                    r = fn()
                    break
                except RuntimeError as exc:
                    tools.stop_everything_in(list(range(1, 18)))
                    print(f"    {name}: {exc}", file=sys.stderr)
                    if attempt == 2:
                        raise
            got[name].append(r)
            more = " ".join(f"{k} {v:.2f}" for k, v in r.extra.items())
            print(f"    run {k + 1} {name}: {r.seconds:.2f} s {more}", file=sys.stderr, flush=True)
    if out is not None:
        clean(out)
    return got


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]


# ------------------------------------------------------------- the suite


def shaped_case(dolly: str | None, size: int, n: int, dest: str, runs: int,
                src: Path) -> dict[str, Run]:  # fmt: skip
    out = WORK / "out" if dest == "file" else None
    port = free_port(["127.0.0.1"])
    tl: list[tuple[str, Callable[[], Run]]] = []
    if dolly:
        tl.append(("dolly", lambda: tools.run_dolly(dolly, src, n, out)))
    tl.append(("nettee by hand", lambda: tools.run_nettee(src, n, out, [], port)))
    tl.append(("beo cast", lambda: tools.run_cast(src, n, out, [])))
    print(f"  {size >> 20} MiB to {n} nodes, {dest}:", file=sys.stderr, flush=True)
    return {name: median_run(rs) for name, rs in measure(tl, runs, out).items()}


def print_shaped(results: list[tuple[int, int, str, dict[str, Run]]], bound_of: Callable[[int], float],
                 rate: str) -> None:  # fmt: skip
    print(f"\n## {rate} per port, MTU 1500: whole commands against dolly (seconds)\n")
    print("| case | S/B | dolly | nettee by hand (/ dolly; goal <= 1) | beo cast whole "
          "(/ dolly; goal <= 1.10) | launch | root nettee | stream | after the stream |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, n, dest, r in results:
        d = r.get("dolly")
        ref = d.seconds if d else None

        def cell(x: float, ref: float | None = ref) -> str:
            return f"{x:.2f}" + (f" ({x / ref:.2f}x)" if ref else "")

        c = r["beo cast"]
        print(f"| {size >> 20} MiB -> {n}, {dest} | {bound_of(size):.2f} | "
              f"{f'{ref:.2f}' if ref else 'skipped'} | {cell(r['nettee by hand'].seconds)} | "
              f"{cell(c.seconds)} | {c.extra['launch']:.2f} | {c.extra['root']:.2f} | "
              f"{c.extra['stream']:.2f} | {c.extra['after']:.2f} |")


def cpu_case(cl: Cluster, dolly: str | None, size: int, runs: int, src: Path) -> dict[str, Run]:
    n = 3
    cl.unshape(list(range(1, n + 2)))
    port = free_port(["127.0.0.1"])
    tl: list[tuple[str, Callable[[], Run]]] = []
    if dolly:
        tl.append(("dolly", lambda: tools.run_dolly(dolly, src, n, None)))
    for name, flags in (("nettee", []), ("nettee -digest", ["-digest"]),
                        ("nettee -heal -digest", ["-heal", "-digest"])):  # fmt: skip
        tl.append((name, lambda flags=flags: tools.run_nettee(src, n, None, flags, port)))
    tl.append(("beo cast", lambda: tools.run_cast(src, n, None, [])))
    print(f"  CPU-bound: {size >> 20} MiB to {n} nodes, /dev/null, unshaped:", file=sys.stderr)
    return {name: median_run(rs) for name, rs in measure(tl, runs, None).items()}


def print_cpu(r: dict[str, Run], size: int) -> None:
    gib = size / GIB
    print(f"\n## CPU-bound: {size >> 20} MiB to 3 nodes, /dev/null, unshaped veth\n")
    ref = r["dolly"].seconds if "dolly" in r else None
    print("| tool | seconds | dolly / tool (goal for beo cast >= 4) | CPU s/GiB: root | "
          "host2 | host3 | host4 (tip) | receivers' mean |")
    print("|---|---|---|---|---|---|---|---|")
    for name, run in r.items():
        speed = f"{ref / run.seconds:.2f}x" if ref else "-"
        if name == "beo cast":  # its rusage holds only what it reaped: not its receivers
            print(f"| {name} | {run.seconds:.2f} | {speed} | (the command's own "
                  f"{run.cpu['tree'] / gib:.2f}; receivers not reaped by it) | - | - | - | - |")
            continue
        recv = [run.cpu[f"host{i}"] / gib for i in (2, 3, 4)]
        print(f"| {name} | {run.seconds:.2f} | {speed} | {run.cpu['host1'] / gib:.2f} | "
              + " | ".join(f"{c:.2f}" for c in recv) + f" | {statistics.mean(recv):.2f} |")


def dolly_suite(args: argparse.Namespace) -> int:
    sizes = [] if args.sizes == "none" else [parse_size(s) for s in args.sizes.split(",")]
    nodes = [int(x) for x in args.nodes.split(",")]
    dests = args.dests.split(",")
    fresh_bytecode()
    with tempfile.TemporaryDirectory(prefix="bkcb-dolly-") as build:
        dolly, why = tools.build_dolly(args.dolly, Path(build))
        if why:
            print(f"beo bench: {why}", file=sys.stderr)
        clean(WORK)
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(machine(), file=sys.stderr)
        results, cpu = [], None
        with netns_lock():
            cl = Cluster(max(nodes + [3 if args.cpu_size else 1]) + 1, args.rate)
            try:
                for size in sizes:
                    src = WORK / "src.bin"
                    make_source(src, size)
                    for n in nodes:
                        for dest in dests:
                            if dest == "file" and size * (n + 1) > args.file_max:
                                print(f"  ({size >> 20} MiB to {n} files left out: "
                                      f"{size * n >> 20} MiB of copies > --file-max)",
                                      file=sys.stderr)  # fmt: skip
                                continue
                            r = shaped_case(dolly, size, n, dest, args.runs, src)
                            results.append((size, n, dest, r))
                if args.cpu_size:
                    src = WORK / "src.bin"
                    make_source(src, args.cpu_size)
                    cpu = cpu_case(cl, dolly, args.cpu_size, args.runs, src)
            finally:
                cl.down()
                shutil.rmtree(WORK, ignore_errors=True)
    print(machine())
    if why:
        print(why)
    rate_bps = cl.rate_bps
    if results:
        print_shaped(results, lambda s: s * 8 / rate_bps, args.rate)
    if cpu is not None:
        print_cpu(cpu, args.cpu_size)
    print(f"\n(median of {args.runs} run(s), of an even number the faster middle one; "
          "order rotated; beo cast: -heal -digest, a fresh secret, fsync and checks; "
          "'launch' = its own start-up + every receiver up, "
          "'after the stream' = whole - launch - root nettee)")  # fmt: skip
    if args.json:
        save_json(args, started, results, cpu, rate_bps)
    return 0


def _run_dict(r: Run) -> dict:
    return {"seconds": r.seconds, "cpu": r.cpu, "extra": r.extra}


def save_json(args: argparse.Namespace, started: str, results: list, cpu: dict[str, Run] | None,
              rate_bps: int) -> None:  # fmt: skip
    """The run's figures, for --plot-from (one figure from several invocations)."""
    doc = {"command": "python3 bench/bench_cast.py " + " ".join(sys.argv[1:]),
           "started": started, "ended": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load_end": os.getloadavg()[0], "rate": args.rate, "rate_bps": rate_bps,
           "runs": args.runs,
           "shaped": [{"size": s, "nodes": n, "dest": d,
                       "tools": {k: _run_dict(v) for k, v in r.items()}}
                      for s, n, d, r in results],
           "cpu_size": args.cpu_size,
           "cpu": {k: _run_dict(v) for k, v in cpu.items()} if cpu else None}  # fmt: skip
    Path(args.json).write_text(json.dumps(doc, indent=1))


def plot_from(files: list[str], png: str) -> int:
    """One figure from the --json of one or more runs: every shaped case against
    dolly (beo cast's launch shown apart), and the CPU-bound case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = [json.loads(Path(f).read_text()) for f in files]
    cases = [(d, c) for d in docs for c in d["shaped"]]
    cpu = next((d for d in docs if d.get("cpu")), None)
    fig, axes = plt.subplots(1, 2 if cpu else 1, figsize=(13 if cpu else 8, 4.8),
                             gridspec_kw={"width_ratios": [2.2, 1]} if cpu else None)  # fmt: skip
    ax = axes[0] if cpu else axes
    names, width = ["dolly", "nettee by hand", "beo cast"], 0.27
    colors = {"dolly": "#888888", "nettee by hand": "#4c72b0", "beo cast": "#dd8452"}
    for k, (_d, c) in enumerate(cases):
        ref = c["tools"].get("dolly", {}).get("seconds")
        for j, name in enumerate(names):
            t = c["tools"].get(name)
            if not t:
                continue
            x = k + (j - 1) * width
            y = t["seconds"] / ref if ref else 0
            ax.bar(x, y, width, color=colors[name], label=name if k == 0 else None)
            if name == "beo cast" and ref:
                ax.bar(x, t["extra"]["launch"] / ref, width, color="#8c3b12",
                       label="beo cast: launch" if k == 0 else None)  # fmt: skip
            ax.text(x, y + 0.01, f"{t['seconds']:.2f}", ha="center", fontsize=7, rotation=90)
    ax.axhline(1.10, color="#dd8452", ls="--", lw=0.8, label="goal for beo cast: dolly + 10 %")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{c['size'] >> 20} MiB\n-> {c['nodes']}, {c['dest']}" for _d, c in cases])
    ax.set_ylabel("time / dolly's (same run; seconds on the bars)")
    ax.set_ylim(0, 1.5)
    ax.set_title(f"{docs[0]['rate']} per port, MTU 1500")
    ax.legend(fontsize=7, loc="upper left")
    if cpu:
        ax2 = axes[1]
        items = list(cpu["cpu"].items())
        ax2.barh([k for k, _ in items], [v["seconds"] for _k, v in items],
                 color=["#888888" if k == "dolly" else "#4c72b0" if k != "beo cast" else "#dd8452"
                        for k, _ in items])  # fmt: skip
        for i, (_k, v) in enumerate(items):
            ax2.text(v["seconds"], i, f" {v['seconds']:.2f} s", va="center", fontsize=8)
        ax2.invert_yaxis()
        ax2.set_xlabel("seconds")
        ax2.set_title(f"CPU-bound: {cpu['cpu_size'] >> 20} MiB -> 3, unshaped")
    dates = sorted({d["ended"] for d in docs})
    fig.suptitle(f"beo cast vs dolly 0.72, one virtual cluster ({', '.join(dates)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")
    return 0


# ------------------------------------------------------- the star suite


def run_udpcast(cl: Cluster, src: Path, n: int, out: Path) -> Run:
    """udp-receiver on every node, then udp-sender (timed) until all have the file."""
    base = 9300
    for i in range(1, n + 2):  # multicast on the virtual switch: a route in every host
        sh(ns(i) + ["ip", "route", "replace", "224.0.0.0/4", "dev", "eth0"])
    recv = [subprocess.Popen(ns(i) + ["udp-receiver", "--interface", "eth0", "--nokbd",
                                      "--portbase", str(base), "--file", str(out / f"udp-host{i}")],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for i in range(2, n + 2)]  # fmt: skip
    mbit = int(cl.rate_bps * 0.95 / 1e6)
    t0 = time.monotonic()
    cp = sh(ns(1) + ["udp-sender", "--interface", "eth0", "--nokbd", "--portbase", str(base),
                     "--min-receivers", str(n), "--max-wait", "30", "--max-bitrate",
                     f"{mbit}m", "--file", str(src)], timeout=1800)  # fmt: skip
    secs = time.monotonic() - t0
    for p in recv:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    if cp.returncode != 0 or not tools.same(src, [out / f"udp-host{i}" for i in range(2, n + 2)]):
        raise RuntimeError(f"udpcast failed: {cp.stderr[-500:]}")
    return Run(secs)


def run_star(cl: Cluster, src: Path, n: int, out: Path) -> Run:
    """Star copy from the head node: N parallel scp."""
    t0 = time.monotonic()
    procs = [subprocess.Popen(ns(1) + ["scp", "-q", "-F", str(cl.ssh_config), str(src),
                                       f"host{i}:{out}/scp-host{i}"],
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(2, n + 2)]  # fmt: skip
    errs = [p.communicate(timeout=1800)[1] for p in procs]
    secs = time.monotonic() - t0
    if any(p.returncode for p in procs) or not tools.same(
            src, [out / f"scp-host{i}" for i in range(2, n + 2)]):  # fmt: skip
        raise RuntimeError(f"star copy failed: {[e[-200:] for e in errs if e]}")
    return Run(secs)


def star_suite(args: argparse.Namespace) -> int:
    """beo cast, nettee by hand, udpcast and a star of scp, files in /dev/shm."""
    size = parse_size(args.sizes.split(",")[0])
    nodes = [int(x) for x in args.nodes.split(",")]
    fresh_bytecode()
    clean(WORK)
    src, out = WORK / "src.bin", WORK / "out"
    make_source(src, size)
    rows = []
    with netns_lock():
        cl = Cluster(max(nodes) + 1, args.rate, args.mtu, sshd=not args.no_star)
        try:
            for n in nodes:
                port = free_port(["127.0.0.1"])
                tl: list[tuple[str, Callable[[], Run]]] = [
                    ("beo cast", lambda n=n: tools.run_cast(src, n, out, [])),
                    ("nettee by hand", lambda n=n, p=port: tools.run_nettee(src, n, out, [], p)),
                    ("udpcast", lambda n=n: run_udpcast(cl, src, n, out))]  # fmt: skip
                got = {k: median_run(v) for k, v in measure(tl, args.runs, out).items()}
                if not args.no_star:
                    got["star scp"] = measure([("star scp", lambda n=n: run_star(cl, src, n, out))],
                                              1, out)["star scp"][0]  # fmt: skip
                rows.append((n, got))
        finally:
            cl.down()
            shutil.rmtree(WORK, ignore_errors=True)
    bound = size * 8 / cl.rate_bps
    print(machine())
    print(f"\n## virtual cluster, S = {size >> 20} MiB, B = {args.rate} per port, MTU {args.mtu}, "
          f"S/B = {bound:.2f} s\n")  # fmt: skip
    names = list(rows[0][1])
    print("| N | " + " | ".join(f"{k} s (/ S/B)" for k in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for n, got in rows:
        print(f"| {n} | " + " | ".join(f"{got[k].seconds:.2f} ({got[k].seconds / bound:.2f}x)"
                                       for k in names) + " |")  # fmt: skip
    return 0


def loopback_suite(args: argparse.Namespace) -> int:
    """No root: beo cast -R exec on 127.0.3.x against a chain started by hand."""
    size = parse_size(args.sizes.split(",")[0])
    fresh_bytecode()
    clean(WORK)
    src = WORK / "src.bin"
    make_source(src, size)
    print(machine())
    print(f"\n## loopback (127.0.3.x, no shaping), S = {size >> 20} MiB, /dev/null\n")
    print("| N | beo cast whole s | launch | stream | nettee by hand s |")
    print("|---|---|---|---|---|")
    try:
        for n in (int(x) for x in args.nodes.split(",")):
            hosts = [f"127.0.3.{i}" for i in range(2, n + 2)]
            t0 = time.monotonic()
            cp = sh([sys.executable, "-m", "beokit.cli", "cast", "--json", "-R", "exec", str(src),
                     f"127.0.3.[2-{n + 1}]", "--to", "/dev/null"])  # fmt: skip
            wall = time.monotonic() - t0
            doc = json.loads(cp.stdout)
            launch = wall - doc["elapsed"] + doc["launch_seconds"]
            port = free_port(hosts)
            procs = [subprocess.Popen(tools.nettee_argv() + ["-bind", h, "-port", str(port),
                                                             "-out", "/dev/null"]
                                      + (["-next", f"{hosts[k + 1]}:{port}"] if k + 1 < n else []))
                     for k, h in reversed(list(enumerate(hosts)))]  # fmt: skip
            t1 = time.monotonic()
            sh(tools.nettee_argv() + ["-root", "-port", str(port), "-next", f"{hosts[0]}:{port}",
                                      "-in", str(src)])  # fmt: skip
            hand = time.monotonic() - t1
            for p in procs:
                p.wait(timeout=60)
            print(f"| {n} | {wall:.2f} | {launch:.2f} | {doc['stream_seconds']:.2f} | {hand:.2f} |")
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=("dolly", "star"), default="dolly")
    ap.add_argument("--sizes", default="100M,1G",
                    help="image sizes (default 100M,1G; none: only the CPU-bound case)")
    ap.add_argument("--nodes", default="3,16", help="N values (default 3,16)")
    ap.add_argument("--dests", default="null,file", help="null, file or both (default both)")
    ap.add_argument("--file-max", type=parse_size, default=parse_size("4G"),
                    help="file runs whose copies hold more than this at once are left out "
                    "(default 4G; the box has to hold them in /dev/shm)")  # fmt: skip
    ap.add_argument("--cpu-size", type=lambda t: 0 if t == "0" else parse_size(t),
                    default=parse_size("1G"),
                    help="the CPU-bound case's size (default 1G; 0: leave it out)")  # fmt: skip
    ap.add_argument("--cast-rcmd", choices=("netns", "template"), default="netns",
                    help="beo cast's receivers: -R netns:PATTERN (default) or the template "
                    "'ip netns exec PATTERN sh -c {cmd}'")  # fmt: skip
    ap.add_argument("--rate", default="200mbit", help="per-port rate B (default 200mbit)")
    ap.add_argument("--mtu", type=int, default=1500, help="(star suite) MTU, 9000: jumbo")
    ap.add_argument("--dolly", metavar="PATH", help="a dolly binary (default: build one)")
    ap.add_argument("--runs", type=int, default=1, help="runs of each tool, median (default 1)")
    ap.add_argument("--no-star", action="store_true", help="(star suite) no scp star")
    ap.add_argument("--loopback", action="store_true", help="127.0.3.x, no root, no shaping")
    ap.add_argument("--json", metavar="PATH", help="(dolly suite) also write the figures here")
    ap.add_argument("--plot-from", metavar="JSON,...",
                    help="draw --png from the --json of earlier runs (nothing is run)")
    ap.add_argument("--png", metavar="PATH", default="docs/bench_cast_dolly.png",
                    help="with --plot-from: the figure (default docs/bench_cast_dolly.png)")
    args = ap.parse_args()
    tools.CAST_RCMD = args.cast_rcmd
    if args.plot_from:
        return plot_from(args.plot_from.split(","), args.png)
    if args.loopback or os.geteuid() != 0:
        return loopback_suite(args)
    return dolly_suite(args) if args.suite == "dolly" else star_suite(args)


if __name__ == "__main__":
    sys.exit(main())
