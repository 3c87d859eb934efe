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
pull's ratio to the chain) and, with --plot, a PNG of time against N.  Run as
root, under `flock /tmp/h/bench.lock`; the vcluster takes /tmp/beokit-netns.lock.

    python3 bench/bench_provision.py --nodes 8,16,32 --size 64M --plot docs/bench-provision.png
"""

from __future__ import annotations

import argparse
import hashlib
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


def wait_all(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    return [p.wait(max(1.0, deadline - time.monotonic())) for p in procs]


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
        codes = wait_all([rnd, *nodes])
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
        boot.terminate()
        boot.wait(10)


NGINX_CONF = """daemon off; worker_processes 2; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  server {{ listen {port}; root {root}; }} }}
"""


def run_pull(vc: driver.State, url: str, image: Path, n: int, outdir: Path) -> float:
    want = hashlib.sha256(image.read_bytes()).hexdigest()
    nodes = []
    t0 = time.monotonic()
    for h in range(2, n + 2):
        out = outdir / f"out{h}.bin"
        nodes.append(ns_popen(plan.host_ns(PREFIX, h), ["sh", "-c",
                     f"curl -sS --max-time 800 -o {out} {url} && sha256sum {out} | "
                     f"grep -q {want}"]))  # fmt: skip
    codes = wait_all(nodes)
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
        return run_pull(vc, f"http://{server}:{port}/{image.name}", image, n, outdir)
    finally:
        srv.terminate()
        srv.wait(10)


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
    for m, style in (("chain", "o-"), ("http-beo", "s--"), ("http-nginx", "^--")):
        if all(m in r for _, r in rows):
            ax.plot(ns, [r[m] for _, r in rows], style, label=m)
    ax.plot(ns, [bound] * len(ns), ":", label="S/B (one copy at line rate)")
    ax.set_xlabel("nodes N")
    ax.set_ylabel("seconds, all nodes bound -> all verified")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="8,16,32")
    ap.add_argument("--size", type=parse_size, default=parse_size("64M"))
    ap.add_argument("--rate", default="200mbit")
    ap.add_argument("--methods", default="chain,http-beo,http-nginx")
    ap.add_argument("--plot", metavar="PNG")
    args = ap.parse_args()
    methods = args.methods.split(",")
    bound = args.size * 8 / plan.parse_rate(args.rate)
    print(f"# bench_provision {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
          f"S={args.size >> 20} MiB, B={args.rate}, S/B={bound:.2f} s; load {os.getloadavg()}")
    rows = []
    with netns_lock():
        for n in (int(x) for x in args.nodes.split(",")):
            rows.append((n, one_size(n, args.size, args.rate, methods)))
    print("\n| N | chain s | chain / (S/B) | HTTP beo boot s | HTTP nginx s | nginx / chain | beo / chain |")
    print("|---|---|---|---|---|---|---|")
    for n, r in rows:
        c = r.get("chain", float("nan"))
        hb, hn = r.get("http-beo", float("nan")), r.get("http-nginx", float("nan"))
        print(f"| {n} | {c:.2f} | {c / bound:.2f} | {hb:.2f} | {hn:.2f} | {hn / c:.1f} | {hb / c:.1f} |")
    print("\n| N | chain: join s | stream s (formed -> root's end) | stream / (S/B) | last verify s |")
    print("|---|---|---|---|---|")
    for n, (join, stream, tail) in sorted(PHASES.items()):
        print(f"| {n} | {join:.2f} | {stream:.2f} | {stream / bound:.2f} | {tail:.2f} |")
    print(f"# load after: {os.getloadavg()}")
    if args.plot:
        plot(rows, bound, args.plot, f"S = {args.size >> 20} MiB, ports {args.rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
