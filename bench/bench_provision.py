#!/usr/bin/env python3
"""Provisioning: the chain of `beo boot provision` against every node pulling the
image over HTTP (from beo boot's HTTP server, and from nginx: the Warewulf way).

A vcluster of N+1 hosts (host1: the server) with shaped ports (--rate, default
200 Mbit/s). For each N:

* chain: beo boot (TFTP: topology files), `beo boot provision IMAGE`, and
  `beo provision node` in each node namespace; the time from the round's start
  (every node ready: the "all nodes bound" moment) to the last node verified
  (sha256 read back from its target), taken from the round's own log;
* http-beo / http-nginx: every node runs `curl -o TARGET URL && sha256sum
  TARGET` at once; the time from the launch to the last digest checked.

Prints one table (with the bound S/B, the chain's ratio to it, and the HTTP
pull's ratio to the chain), the chain's phases with the CPU seconds of the
round and every node (wait4: user + system, nettee included), and with --plot
a PNG of time against N; --json keeps the figures, --plot-from draws one PNG
from the --json of several invocations.  Run as root, under `flock
/tmp/beokit-bench.lock`; the vcluster takes /tmp/beokit-netns.lock.

    python3 bench/bench_provision.py --nodes 8,16 --size 256M --json a.json
    python3 bench/bench_provision.py --nodes 32 --size 256M --json b.json
    python3 bench/bench_provision.py --plot-from a.json,b.json --plot docs/bench-provision.png
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _netns import netns_lock  # noqa: E402

from beokit.cli import parse_size  # noqa: E402
from beokit.vcluster import driver, plan  # noqa: E402

PREFIX = "bkbp"
NGINX_PORT = 8081
HTTP_PORT = 8080
TIMEOUT = 900
PHASES: dict[int, tuple[float, float, float]] = {}  # N -> (join, stream, verify tail) of the chain
CPU: dict[tuple[int, str], float] = {}  # (N, method) -> CPU s of every process of the run


def boot_config(tmp: Path, net, server: str, n: int, image: Path) -> Path:
    first = server.rsplit(".", 1)[0]  # nodes by address: 198.18.x.2 .. N+1 (no resolver needed)
    cfg = tmp / "boot.toml"
    cfg.write_text(f"""
[server]
address = "{server}"
root = "{image.parent}"
control = "{tmp}/ctl.sock"
http_port = {HTTP_PORT}
[network]
subnet = "{net}"
[nettee]
order = "boot,{first}.[2-{n + 1}]"
join_wait = 5
parent_wait = 300
[provision]
image = "{image}"
target = "/nonexistent"
start_after = {n}
start_wait = 120
""")
    return cfg


def ns_popen(ns: str, argv: list[str], **kw) -> subprocess.Popen:
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)


def wait_all(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> tuple[list[int], float]:
    """Exit codes and the CPU seconds (user + system, waited-for children included:
    `ip netns exec` execs the command) of ``procs``; killed after ``timeout``."""
    deadline = time.monotonic() + timeout
    codes: dict[int, int] = {}
    cpu = 0.0
    while len(codes) < len(procs):
        for p in procs:
            if p.pid in codes:
                continue
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = codes[p.pid] = os.waitstatus_to_exitcode(status)
                cpu += ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            for p in procs:
                if p.pid not in codes:
                    p.kill()
            raise SystemExit(f"bench_provision: still running after {timeout:g} s")
        time.sleep(0.02)
    return [codes[p.pid] for p in procs], cpu


def stop_cpu(p: subprocess.Popen) -> float:
    """Stop a server and return its CPU seconds."""
    p.terminate()
    try:
        return wait_all([p], 10)[1]
    except SystemExit:
        return float("nan")


def run_chain(vc: driver.State, tmp: Path, image: Path, n: int, outdir: Path) -> float:
    """Seconds from the round's start (every node ready) to the last verified."""
    server = plan.address(0, 1, vc.plan.spec.net)
    cfg = boot_config(tmp, plan.network(0, vc.plan.spec.net), server, n, image)
    ns1 = plan.host_ns(PREFIX, 1)
    boot = ns_popen(ns1, [sys.executable, "-m", "beokit.cli", "boot", "-c", str(cfg), "--dhcp-port",
                          "0", "--dns-port", "0", "--http-port", "0"])  # fmt: skip
    time.sleep(1.5)
    log = tmp / "round.log"
    try:
        rnd = ns_popen(ns1, [sys.executable, "-m", "beokit.cli", "boot", "-c", str(cfg), "provision"],
                       stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
        nodes = []
        for h in range(2, n + 2):
            addr = plan.address(0, h, vc.plan.spec.net)
            nodes.append(ns_popen(plan.host_ns(PREFIX, h), [
                sys.executable, "-m", "beokit.cli", "provision", "node", "--name", addr,
                "--server", server, "--target", str(outdir / f"out{h}.bin"), "--wait", "600"]))
        codes, CPU[n, "chain"] = wait_all([rnd, *nodes])
        text = log.read_text()
        if codes[0] != 0:
            raise SystemExit(f"chain N={n} failed:\n{text[-2000:]}")
        def at(pattern: str) -> float:
            return float(re.search(r"\[\s*([0-9.]+)\] " + pattern, text).group(1))

        start = at("round 1: starting")
        ends = [float(t) for t in re.findall(r"\[\s*([0-9.]+)\] \S+ verified", text)]
        PHASES[n] = (at("root: tree formed") - start, at("round 1: root ended") - at(
            "root: tree formed"), max(ends) - at("round 1: root ended"))
        return max(ends) - start
    finally:
        CPU[n, "chain"] = CPU.get((n, "chain"), 0.0) + stop_cpu(boot)


NGINX_CONF = """daemon off; worker_processes 2; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  server {{ listen {port}; root {root}; }} }}
"""


def run_pull(vc: driver.State, url: str, image: Path, n: int, outdir: Path, kind: str) -> float:
    want = hashlib.sha256(image.read_bytes()).hexdigest()
    nodes = []
    t0 = time.monotonic()
    for h in range(2, n + 2):
        out = outdir / f"out{h}.bin"
        nodes.append(ns_popen(plan.host_ns(PREFIX, h), ["sh", "-c",
                     f"curl -sS --max-time 800 -o {out} {url} && sha256sum {out} | "
                     f"grep -q {want}"]))  # fmt: skip
    codes, cpu = wait_all(nodes)
    CPU[n, kind] = CPU.get((n, kind), 0.0) + cpu
    took = time.monotonic() - t0
    if any(codes):
        raise SystemExit(f"http pull N={n} from {url}: {codes.count(1)} node(s) failed")
    return took


def with_server(vc: driver.State, tmp: Path, image: Path, n: int, outdir: Path, kind: str) -> float:
    server = plan.address(0, 1, vc.plan.spec.net)
    ns1 = plan.host_ns(PREFIX, 1)
    if kind == "nginx":
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=NGINX_PORT, root=image.parent))
        srv = ns_popen(ns1, ["nginx", "-c", str(conf)])
        port = NGINX_PORT
    else:
        cfg = boot_config(tmp, plan.network(0, vc.plan.spec.net), server, n, image)
        srv = ns_popen(ns1, [sys.executable, "-m", "beokit.cli", "boot", "-c", str(cfg),
                             "--dhcp-port", "0", "--dns-port", "0", "--tftp-port", "0"])  # fmt: skip
        port = HTTP_PORT
    time.sleep(1.5)
    try:
        return run_pull(vc, f"http://{server}:{port}/{image.name}", image, n, outdir,
                        f"http-{kind}")
    finally:
        CPU[n, f"http-{kind}"] = CPU.get((n, f"http-{kind}"), 0.0) + stop_cpu(srv)


def clean(outdir: Path) -> None:
    for p in outdir.glob("out*.bin"):
        p.unlink()


def one_size(n: int, size: int, rate: str, methods: list[str]) -> dict[str, float]:
    spec = plan.Spec(n=n + 1, rate_bps=plan.parse_rate(rate), prefix=PREFIX)
    driver.down(PREFIX)
    vc = driver.up(spec)
    out: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-provision") as t:
            tmp = Path(t)
            os.chmod(tmp, 0o755)
            (tmp / "img").mkdir()
            image = tmp / "img" / "image.bin"
            with open(image, "wb") as fh:
                for _ in range(size >> 20):
                    fh.write(os.urandom(1 << 20))
            outdir = Path(tempfile.mkdtemp(prefix="bpv", dir="/dev/shm"))
            try:
                for m in methods:
                    clean(outdir)
                    if m == "chain":
                        out[m] = run_chain(vc, tmp, image, n, outdir)
                    else:
                        out[m] = with_server(vc, tmp, image, n, outdir, m.removeprefix("http-"))
                    print(f"  N={n} {m}: {out[m]:.2f} s", flush=True)
            finally:
                shutil.rmtree(outdir, ignore_errors=True)
    finally:
        driver.down(PREFIX)
    return out


def plot(rows: list[tuple[int, dict[str, float]]], bound: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ns = [n for n, _ in rows]
    for m, style, label in (("chain", "o-", "chain (beo boot provision)"),
                            ("http-beo", "s--", "HTTP pull from beo boot"),
                            ("http-nginx", "^--", "HTTP pull from nginx")):  # fmt: skip
        pts = [(n, r[m]) for n, r in rows if m in r]
        if pts:
            ax.plot([n for n, _ in pts], [t for _, t in pts], style, label=label)
    ax.plot(ns, [bound] * len(ns), ":", label="S/B (one copy at line rate)")
    ax.plot(ns, [n * bound for n in ns], ":", color="grey", label="N x S/B")
    ax.set_xlabel("nodes N")
    ax.set_ylabel("seconds, all nodes bound -> all verified")
    ax.set_yscale("log")
    ax.set_xticks(ns)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def tables(doc: dict) -> None:
    """The figures of one or more runs as markdown tables, with the issue's goals."""
    bound = doc["bound"]
    nan = float("nan")
    print("\n| N | chain s | chain / (S/B) | goal 1.1 S/B + join | HTTP beo boot s | HTTP nginx s "
          "| beo / chain | nginx / chain | goal 0.8 N |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, r in sorted((int(k), v) for k, v in doc["rows"].items()):
        c, hb, hn = r.get("chain", nan), r.get("http-beo", nan), r.get("http-nginx", nan)
        ph = doc["phases"].get(str(n))
        goal = f"{1.1 * bound + ph[0]:.2f} ({'met' if c <= 1.1 * bound + ph[0] else 'missed'})" \
            if ph else "-"
        best = min(hb, hn) if hb == hb and hn == hn else (hb if hb == hb else hn)
        sp = f"{0.8 * n:.1f} ({'met' if best / c >= 0.8 * n else 'missed'})" if best == best else "-"
        print(f"| {n} | {c:.2f} | {c / bound:.2f} | {goal} | {hb:.2f} | {hn:.2f} | {hb / c:.1f} "
              f"| {hn / c:.1f} | {sp} |")
    print("\n| N | chain: join s | stream s (formed -> root's end) | stream / (S/B) | last verify s "
          "| CPU s: chain | HTTP beo | HTTP nginx |")
    print("|---|---|---|---|---|---|---|---|")
    for n, (join, stream, tail) in sorted((int(k), v) for k, v in doc["phases"].items()):
        cpu = doc["cpu"].get(str(n), {})
        print(f"| {n} | {join:.2f} | {stream:.2f} | {stream / bound:.2f} | {tail:.2f} "
              f"| {cpu.get('chain', nan):.1f} | {cpu.get('http-beo', nan):.1f} "
              f"| {cpu.get('http-nginx', nan):.1f} |")


def merge(paths: list[str]) -> dict:
    doc: dict = {"rows": {}, "phases": {}, "cpu": {}, "runs": []}
    for p in paths:
        d = json.loads(Path(p).read_text())
        if doc.get("bound") not in (None, d["bound"]):
            raise SystemExit(f"bench_provision: {p} has S/B {d['bound']}, not {doc['bound']}")
        doc["bound"], doc["title"] = d["bound"], d["title"]
        for k in ("rows", "phases", "cpu"):
            for n, v in d[k].items():
                doc[k].setdefault(n, {} if isinstance(v, dict) else v)
                if isinstance(v, dict):
                    doc[k][n].update(v)
                else:
                    doc[k][n] = v
        doc["runs"] += d["runs"]
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="8,16,32")
    ap.add_argument("--size", type=parse_size, default=parse_size("64M"))
    ap.add_argument("--rate", default="200mbit")
    ap.add_argument("--methods", default="chain,http-beo,http-nginx")
    ap.add_argument("--plot", metavar="PNG")
    ap.add_argument("--json", metavar="PATH", help="also write the figures here")
    ap.add_argument("--plot-from", metavar="JSON,...",
                    help="tables and --plot from the --json of earlier runs (nothing is run)")
    args = ap.parse_args()
    if args.plot_from:
        doc = merge(args.plot_from.split(","))
        for r in doc["runs"]:
            print(f"# {r}")
    else:
        methods = args.methods.split(",")
        bound = args.size * 8 / plan.parse_rate(args.rate)
        head = (f"bench_provision {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
                f"N={args.nodes}, S={args.size >> 20} MiB, B={args.rate}, S/B={bound:.2f} s; "
                f"load before {open('/proc/loadavg').read().split()[0]}")  # fmt: skip
        print(f"# {head}", flush=True)
        rows = []
        with netns_lock():
            for n in (int(x) for x in args.nodes.split(",")):
                rows.append((n, one_size(n, args.size, args.rate, methods)))
        head += f", after {open('/proc/loadavg').read().split()[0]}"
        doc = {"bound": bound, "title": f"S = {args.size >> 20} MiB, ports {args.rate}",
               "runs": [head], "rows": {str(n): r for n, r in rows},
               "phases": {str(n): list(v) for n, v in PHASES.items()}, "cpu": {}}
        for (n, m), v in CPU.items():
            doc["cpu"].setdefault(str(n), {})[m] = round(v, 2)
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"# load after: {open('/proc/loadavg').read().strip()}")
    tables(doc)
    if args.plot:
        rows = sorted((int(k), v) for k, v in doc["rows"].items())
        plot(rows, doc["bound"], args.plot, doc["title"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
