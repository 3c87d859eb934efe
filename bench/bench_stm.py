#!/usr/bin/env python3
"""Line propagation latency through a 20-node -stm chain, against a socat chain.

    python3 bench/bench_stm.py [--nodes 20] [--lines 100] [--interval 0.02]

Both chains run on loopback addresses (root 127.0.0.1, node i on 127.0.0.i),
every receiver's stdout read by this script, which stamps each line's
arrival.  The root is fed one line every ``--interval`` seconds; the latency
of a line at a node is arrival - send (same clock).  Printed: median and
worst latency at the tip (the last node) and the mean over all nodes, for
nettee (``-stm EOS``) and for a ``socat | tee | socat`` chain, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

from beokit.nettee.localchain import free_port, nettee_command


def reader(proc: subprocess.Popen, stream: str, arrivals: dict[str, float]) -> None:
    f = getattr(proc, stream)
    for raw in f:
        arrivals.setdefault(raw.decode().strip(), time.monotonic())


def wait_listening(addr: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as fh:
            want = f"{socket.inet_aton(addr)[::-1].hex().upper()}:{port:04X}"
            if any(line.split()[1] == want and line.split()[3] == "0A" for line in fh.readlines()[1:]):
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {addr}:{port}")


def run_chain(kind: str, n: int, lines: int, interval: float) -> list[dict[str, float]]:
    addrs = [f"127.0.0.{i}" for i in range(2, n + 1)]
    port = free_port(addrs)
    arrivals: list[dict[str, float]] = [{} for _ in addrs]
    procs: list[subprocess.Popen] = []
    threads = []
    env = dict(os.environ, NETTEE_SECRET="bench-stm")
    try:
        for k in range(len(addrs) - 1, -1, -1):
            a = addrs[k]
            nxt = addrs[k + 1] if k + 1 < len(addrs) else None
            if kind == "nettee":
                args = nettee_command() + ["-bind", a, "-port", str(port), "-stm", "EOS", "-out", "-"]
                p = subprocess.Popen(args + (["-next", nxt] if nxt else []), stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
                stream = "stdout"
            else:
                listen = f"socat -u TCP-LISTEN:{port},bind={a},reuseaddr STDOUT"
                cmd = (f"{listen} | tee /dev/stderr | socat -u STDIN TCP:{nxt}:{port}" if nxt
                       else listen)
                p = subprocess.Popen(["bash", "-c", cmd], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if not nxt else subprocess.DEVNULL,
                                     stderr=subprocess.PIPE if nxt else None, start_new_session=True)
                stream = "stderr" if nxt else "stdout"
                wait_listening(a, port)
            procs.append(p)
            t = threading.Thread(target=reader, args=(p, stream, arrivals[k]), daemon=True)
            t.start()
            threads.append(t)
        if kind == "nettee":
            root = subprocess.Popen(nettee_command() + ["-root", "-port", str(port), "-next",
                                    addrs[0], "-stm", "EOS", "-v", "5"], stdin=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, start_new_session=True)
            assert root.stderr is not None
            for raw in root.stderr:  # the root streams once the whole chain has formed
                if b"tree formed" in raw:
                    break
            threading.Thread(target=root.stderr.read, daemon=True).start()
        else:
            root = subprocess.Popen(["socat", "-u", "STDIN", f"TCP:{addrs[0]}:{port}"],
                                    stdin=subprocess.PIPE, start_new_session=True)
        procs.append(root)
        assert root.stdin is not None
        time.sleep(0.3)
        sent: dict[str, float] = {}
        for i in range(lines):
            line = f"cmd-{i}"
            sent[line] = time.monotonic()
            root.stdin.write(f"{line}\n".encode())
            root.stdin.flush()
            time.sleep(interval)
        root.stdin.write(b"EOS\n" if kind == "nettee" else b"")
        root.stdin.close()
        for p in procs:
            p.wait(timeout=30)
        for t in threads:
            t.join(timeout=5)
        return [{line: arr[line] - sent[line] for line in sent if line in arr} for arr in arrivals]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def summary(lat: list[dict[str, float]], lines: int) -> tuple[float, float, float, int]:
    tip = sorted(lat[-1].values())
    all_ = [v for d in lat for v in d.values()]
    missing = sum(lines - len(d) for d in lat)
    return statistics.median(tip) * 1e3, max(tip) * 1e3, statistics.mean(all_) * 1e3, missing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=20, help="nodes incl. the root (default 20)")
    ap.add_argument("--lines", type=int, default=100, help="commands sent (default 100)")
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between lines")
    args = ap.parse_args()
    rows = []
    for kind in ("nettee", "socat"):
        lat = run_chain(kind, args.nodes, args.lines, args.interval)
        rows.append((kind, *summary(lat, args.lines)))
    print(f"\nline latency through a {args.nodes}-node chain on loopback, {args.lines} lines, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print("| chain | tip median ms | tip worst ms | mean over nodes ms | lines lost |")
    print("|---|---|---|---|---|")
    for kind, med, worst, mean, missing in rows:
        label = "nettee -stm (authenticated)" if kind == "nettee" else "socat | tee | socat"
        print(f"| {label} | {med:.2f} | {worst:.2f} | {mean:.2f} | {missing} |")
    ratio = rows[1][1] / rows[0][1]
    print(f"\nsocat median / nettee median = {ratio:.2f}")
    return 0 if rows[0][4] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
