#!/usr/bin/env python3
"""Recovery time of ``nettee -heal``, and what healing saves against nettee 0.2's collapse.

One invocation::

    python3 bench/bench_heal.py [--nodes 6] [--size 1G] [--runs 5] [--kill-after 0.5]

A chain of N nodes on loopback (root 127.0.0.1, receivers 127.0.0.2..N, each
``-out /dev/null``), a source file in /dev/shm, a shared secret and
``-heal -digest`` on every node.  ``--kill-after`` seconds after the root
starts streaming (the tree is formed), node 3 (the second receiver) is killed with SIGKILL; with ``--double``
node 5 is killed at the same moment too (two non-adjacent failures).

Measured, per run, from the root's ``-report`` (``heals``: when the parent
noticed, when the flow resumed, wall clock):

* detection: kill -> the parent declares the child dead;
* recovery: kill -> the grandchild is adopted and the stream flows again
  (goal < 1 s on loopback);
* total: the whole distribution, every survivor verified by digest.

The peer, in the same invocation, is nettee without ``-heal`` (the nettee 0.2
behaviour, and dolly's): the same kill collapses the chain; the administrator
restarts the survivors and sends everything again.  Its total is the
collapsed run plus the rerun.  Printed: both totals and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_chain import (
    BenchError,
    addr,
    become_subreaper,
    group,
    human,
    make_source,
    pick_port,
    tail,
)

from beokit.cli import parse_size


def chain(exe: str, g, hosts: list[int], port: int, src: Path, report: Path,
          extra: list[str], env: dict) -> tuple[object, list]:  # fmt: skip
    """Start receivers on ``hosts`` (chain order) and the root; returns (root, receivers)."""
    procs = {}
    for k in range(len(hosts) - 1, -1, -1):
        i = hosts[k]
        argv = [exe, "-bind", addr(i), "-port", str(port)]
        if k + 1 < len(hosts):
            argv += ["-next", addr(hosts[k + 1])]
        argv += ["-out", "/dev/null", "-name", f"node{i}", "-t", "30", *extra]
        procs[i] = g.start(f"node{i}", argv, env)
    for i in hosts[::-1]:
        g.wait_listening(procs[i], addr(i), (port, port + 1))
    root = g.start("node1", [exe, "-root", "-port", str(port), "-next", addr(hosts[0]), "-in",
                             str(src), "-v", "5", "-report", str(report), "-name", "node1",
                             *extra], env)  # fmt: skip
    return root, [procs[i] for i in hosts]


def streaming(root, timeout: float) -> None:
    """Wait until the root logs that the stream has started (the tree is formed)."""
    deadline = time.monotonic() + timeout
    while b"streaming to" not in root.err.read_bytes():
        if time.monotonic() > deadline:
            raise BenchError("the root did not start streaming\n" + tail(root))
        time.sleep(0.005)


def run_heal(exe: str, src: Path, size: int, nodes: int, victims: list[int], kill_after: float,
             port: int, logdir: Path, env: dict) -> dict:  # fmt: skip
    report = logdir / "report.json"
    with group(logdir) as g:
        t0 = time.monotonic()
        root, recv = chain(exe, g, list(range(2, nodes + 1)), port, src, report,
                           ["-heal", "-digest"], env)  # fmt: skip
        start = time.monotonic()
        streaming(root, 30)
        time.sleep(kill_after)
        killed_at = time.time()
        for v in victims:
            os.killpg(recv[v - 2].pid, signal.SIGKILL)  # the group: GNU time and nettee
        g.wait_all(120)
        total = time.monotonic() - start
        setup = start - t0
        bad = [p for p in g.procs if p.status != 0 and p not in [recv[v - 2] for v in victims]]
        if bad:
            raise BenchError("non-zero exit: " + ", ".join(f"{p.name}={p.status}" for p in bad)
                             + "\n" + "\n".join(tail(p, 3000) for p in g.procs))  # fmt: skip
        doc = json.loads(report.read_text())
    names = {f"node{v}" for v in victims}
    nodes_ok = [n for n in doc["nodes"] if n["name"] not in names]
    if any(n["bytes_in"] != size or n["codes"] for n in nodes_ok):
        raise BenchError(f"a survivor is incomplete: {nodes_ok}")
    if len({n["digest"] for n in nodes_ok}) != 1:
        raise BenchError("survivors' digests differ")
    heals = doc.get("heals", [])
    if sorted(h["dead"] for h in heals) != sorted(names):
        raise BenchError(f"expected heals of {sorted(names)}, report has {heals}\n"
                         + tail(root, 4000))  # fmt: skip
    offsets = [a["offset"] for h in heals for a in h["adopted"]]
    if not offsets or max(offsets) == 0 or max(offsets) >= size:
        raise BenchError(f"the kill did not land mid-stream (offsets {offsets}); "
                         "change --kill-after or --size")  # fmt: skip
    return {"total": total, "setup": setup,
            "detect": max(h["detected"] for h in heals) - killed_at,
            "recover": max(h["resumed"] for h in heals) - killed_at,
            "offsets": offsets}  # fmt: skip


def run_classic(exe: str, src: Path, size: int, nodes: int, victims: list[int],
                kill_after: float, port: int, logdir: Path, env: dict) -> dict:  # fmt: skip
    """nettee without -heal: the kill collapses the chain; restart the survivors, send again."""
    (logdir / "a").mkdir()
    (logdir / "b").mkdir()
    with group(logdir / "a") as g:
        root, recv = chain(exe, g, list(range(2, nodes + 1)), port, src, logdir / "a.json",
                           ["-digest"], env)  # fmt: skip
        start = time.monotonic()
        streaming(root, 30)
        time.sleep(kill_after)
        for v in victims:
            os.killpg(recv[v - 2].pid, signal.SIGKILL)  # the group: GNU time and nettee
        g.wait_all(120)
        collapsed = time.monotonic() - start
        if root.status == 0:
            raise BenchError("the chain without -heal did not collapse (kill came too late?)")
    survivors = [i for i in range(2, nodes + 1) if i not in victims]
    report = logdir / "b.json"
    with group(logdir / "b") as g:
        t1 = time.monotonic()
        root, recv = chain(exe, g, survivors, port, src, report, ["-digest"], env)
        g.wait_all(120)
        rerun = time.monotonic() - t1
        if any(p.status != 0 for p in g.procs):
            raise BenchError("the rerun failed\n" + tail(root))
    doc = json.loads(report.read_text())
    if any(n["bytes_in"] != size for n in doc["nodes"]):
        raise BenchError("the rerun is incomplete")
    return {"total": collapsed + rerun, "collapse": collapsed, "rerun": rerun}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=6, help="nodes incl. the root (default 6)")
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"), help="default 1G")
    ap.add_argument("--runs", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--kill-after", type=float, default=0.5,
                    help="seconds after the stream starts (default 0.5)")  # fmt: skip
    ap.add_argument("--double", action="store_true",
                    help="also kill node 5 at the same time (needs --nodes >= 7)")  # fmt: skip
    ap.add_argument("--nettee", default="nettee", help="nettee executable")
    ap.add_argument("--baseline", metavar="EXE",
                    help="also run the heal case with this executable (an older checkout), "
                         "interleaved, and print the change against it")  # fmt: skip
    ap.add_argument("--json", type=Path, help="write the runs here as JSON")
    args = ap.parse_args(argv)
    if args.nodes < (7 if args.double else 4):
        ap.error(f"--nodes must be at least {7 if args.double else 4}")
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    victims = [3, 5] if args.double else [3]
    src = Path(f"/dev/shm/beokit-bench-{args.size}.bin")
    env = dict(os.environ, NETTEE_SECRET=os.urandom(16).hex())
    env.pop("BEOKIT_NO_SPLICE", None)
    become_subreaper()
    heal: list[dict] = []
    classic: list[dict] = []
    base: list[dict] = []
    created = False
    try:
        created = make_source(src, args.size)
        used: set[int] = set()
        hosts = [addr(i) for i in range(1, args.nodes + 1)]
        with tempfile.TemporaryDirectory(prefix="bench-heal-") as tmp:
            for k in range(1, args.runs + 1):
                d = Path(tmp) / f"heal{k}"
                d.mkdir()
                h = run_heal(args.nettee, src, args.size, args.nodes, victims, args.kill_after,
                             pick_port(hosts, used), d, env)  # fmt: skip
                heal.append(h)
                d = Path(tmp) / f"classic{k}"
                d.mkdir()
                c = run_classic(args.nettee, src, args.size, args.nodes, victims,
                                args.kill_after, pick_port(hosts, used), d, env)  # fmt: skip
                classic.append(c)
                if args.baseline:
                    d = Path(tmp) / f"baseline{k}"
                    d.mkdir()
                    base.append(run_heal(args.baseline, src, args.size, args.nodes, victims,
                                         args.kill_after, pick_port(hosts, used), d, env))  # fmt: skip
                    b = base[-1]
                    print(f"run {k}/{args.runs}: baseline heal detect {b['detect'] * 1000:6.1f} "
                          f"ms, recover {b['recover'] * 1000:6.1f} ms, total {b['total']:6.3f} s",
                          flush=True)  # fmt: skip
                print(f"run {k}/{args.runs}: heal detect {h['detect'] * 1000:6.1f} ms, recover "
                      f"{h['recover'] * 1000:6.1f} ms, total {h['total']:6.3f} s | without "
                      f"-heal: collapse {c['collapse']:.3f} s + rerun {c['rerun']:.3f} s",
                      flush=True)  # fmt: skip
    except BenchError as exc:
        print(f"bench_heal: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if created:
            src.unlink(missing_ok=True)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print()
    print(f"{args.nodes}-node chain on loopback, {human(args.size)}, node(s) "
          f"{', '.join(f'node{v}' for v in victims)} SIGKILLed {args.kill_after:g} s after the "
          f"start, {args.runs} runs, {os.cpu_count()} CPUs")  # fmt: skip
    print("| measure | median | worst |")
    print("|---|---|---|")
    for key, label in (("detect", "heal: kill -> failure detected"),
                       ("recover", "heal: kill -> flow resumed (goal < 1 s)")):  # fmt: skip
        print(f"| {label} | {med(heal, key) * 1000:.1f} ms | "
              f"{max(h[key] for h in heal) * 1000:.1f} ms |")  # fmt: skip
    print(f"| heal: whole distribution, survivors verified | {med(heal, 'total'):.3f} s | "
          f"{max(h['total'] for h in heal):.3f} s |")  # fmt: skip
    print(f"| without -heal: collapse + rerun to the survivors | {med(classic, 'total'):.3f} s | "
          f"{max(c['total'] for c in classic):.3f} s |")  # fmt: skip
    print(f"healing is {med(classic, 'total') / med(heal, 'total'):.2f}x faster than collapse "
          f"and rerun (medians, same invocation)")  # fmt: skip
    for key, label, unit in (("detect", "detected", 1000), ("recover", "resumed", 1000),
                             ("total", "whole distribution", 1)):  # fmt: skip
        if base:
            new, old = med(heal, key), med(base, key)
            print(f"against the baseline, same run: {label} {new * unit:.3f} vs "
                  f"{old * unit:.3f} {'ms' if unit > 1 else 's'} ({(new / old - 1) * 100:+.1f} %)")
    if args.json:
        args.json.write_text(json.dumps({"heal": heal, "classic": classic, "baseline": base},
                                        indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
