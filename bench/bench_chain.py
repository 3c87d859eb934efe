#!/usr/bin/env python3
"""Benchmark an N-node nettee chain on loopback against a socat|tee|socat chain.

One invocation does everything::

    python3 bench/bench_chain.py [--nodes 4] [--size 2G] [--runs 3] [--png FILE]

1. A source file of random bytes is made in /dev/shm (reused when it already
   exists with the right size; removed at the end unless ``--keep``).
2. nettee: node i (i = 2..N) runs ``nettee -bind 127.0.0.i -port P
   [-next 127.0.0.(i+1)] -out /dev/null``; the root on 127.0.0.1 runs
   ``nettee -root -port P -next 127.0.0.2 -in SRC -v 5 -report FILE``.  The
   root is one of the N nodes, so 4 nodes = root + 3 receivers.  Receivers are
   started first (tip first) and waited for until they listen; the clock runs
   from the start of the root until every process has exited.  Every exit
   status must be 0 and the report must say ``ok`` with ``bytes_in == size``
   on every node.
3. socat: the same topology with ``socat -u TCP-LISTEN:P,bind=A,reuseaddr
   STDOUT | tee /dev/null | socat -u STDIN TCP:NEXT:P`` on middle nodes,
   ``socat -u TCP-LISTEN:... STDOUT | wc -c`` at the tip (the count is
   checked; ``--socat-tip devnull`` writes to /dev/null instead, unchecked)
   and ``socat -u OPEN:SRC TCP:127.0.0.2:P`` at the root.  ``--socat-block N``
   adds ``-b N`` to every socat (its default block is 8 KiB).
4. nettee again with ``BEOKIT_NO_SPLICE=1`` (the portable copy loop).
5. On request (``--tools nettee,digest,heal``): nettee with ``-digest`` and a
   shared secret (every node hashes its stream with xxh3-128, the root
   compares), and with ``-heal -digest`` and a secret (plus the replay
   window); their cost is printed against plain nettee from the same run.

Each tool runs ``--runs`` times (interleaved); the median is reported with the
end-to-end rate (GB/s, 1 GB = 1e9 bytes), the throughput ratio against socat,
the CPU seconds (user + system) of all the run's processes, and the peak RSS
of the receivers and of the root (GNU ``/usr/bin/time -f "%M %U %S"``
around every process, when installed: the largest process of any receiver
node; for a socat node that is the largest of bash/socat/tee/wc).

Every process runs in its own session with a timeout; on any error or signal
all of them are killed (whole process groups), so nothing is left behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from beokit.cli import parse_size  # the same size syntax as `beo demo --size`

LISTEN_TIMEOUT = 20.0  # seconds for the receivers to start listening
POLL = 0.002  # seconds between waitpid polls (timing resolution)
# Peak RSS comes from GNU time (%M).  rusage from our own wait4 is useless: a child
# forked from this Python keeps the parent's RSS as a floor for ru_maxrss across exec.
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
TOOLS = ("nettee", "socat", "copy", "digest", "heal")
DEFAULT_TOOLS = ("nettee", "socat", "copy")
LABELS = {"nettee": "nettee (splice)", "socat": "socat+tee+socat", "copy": "nettee (copy loop)",
          "digest": "nettee -digest +secret", "heal": "nettee -heal -digest +secret"}  # fmt: skip
# extra options of the verified variants; they run with a shared secret in NETTEE_SECRET
VARIANTS = {"digest": ["-digest"], "heal": ["-heal", "-digest"]}


class BenchError(RuntimeError):
    """A run failed: wrong exit status, bad report, short stream, timeout."""


# ------------------------------------------------------------------ helpers


def human(n: int) -> str:
    for unit, mult in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= mult and n % mult == 0:
            return f"{n // mult} {unit}"
    return f"{n} B"


def addr(i: int) -> str:
    return f"127.0.0.{i}"


def make_source(path: Path, size: int) -> bool:
    """Write ``size`` random bytes to ``path`` unless it already has that size.

    Returns True when the file was created here.
    """
    if path.is_file() and path.stat().st_size == size:
        print(f"source: reusing {path} ({human(size)})", flush=True)
        return False
    free = shutil.disk_usage(path.parent).free
    if free < size + (64 << 20):
        raise BenchError(f"not enough space in {path.parent}: {free} bytes free, need {size}")
    print(f"source: writing {human(size)} of random bytes to {path} ...", flush=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    chunk = 16 << 20
    try:
        with open(tmp, "wb") as fh:
            left = size
            while left:
                n = min(chunk, left)
                fh.write(os.urandom(n))
                left -= n
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _bindable(host: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_port(hosts: Sequence[str], used: set[int]) -> int:
    """A port P such that P and P+1 can be bound on every host (below the ephemeral range)."""
    for _ in range(500):
        p = random.randrange(20000, 32000, 2)
        if p in used or p + 1 in used:
            continue
        if all(_bindable(h, q) for h in hosts for q in (p, p + 1)):
            used.update((p, p + 1))
            return p
    raise BenchError("no free port pair found")


def _proc_tcp_key(host: str, port: int) -> str:
    raw = socket.inet_aton(host)
    if sys.byteorder == "little":
        raw = raw[::-1]
    return f"{raw.hex().upper()}:{port:04X}"


def listening(host: str, port: int) -> bool:
    """True when a socket listens on host:port (read from /proc/net/tcp, no connection)."""
    want = _proc_tcp_key(host, port)
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            f = line.split()
            if len(f) > 3 and f[1] == want and f[3] == "0A":
                return True
    return False


# ------------------------------------------------------------------ processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    rss: Path
    status: int | None = None  # exit code (negative: killed by that signal)
    maxrss_kib: int = 0
    cpu_s: float = 0.0  # user + system seconds (GNU time, children included)
    ended: float = 0.0

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Group:
    """Processes of one run; each in its own session so that killpg reaches pipelines."""

    logdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        out, err = self.logdir / f"{name}.out", self.logdir / f"{name}.err"
        rss = self.logdir / f"{name}.rss"
        if TIME:  # measure peak RSS from a small parent (see TIME)
            argv = [TIME, "-f", "%M %U %S", "-o", str(rss), *argv]
        with open(out, "wb") as fo, open(err, "wb") as fe:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                 env=env, start_new_session=True)  # fmt: skip
        proc = Proc(name, p, out, err, rss)
        self.procs.append(proc)
        return proc

    def _reap(self, proc: Proc, flags: int) -> bool:
        if proc.status is not None:
            return True
        try:
            pid, status = os.waitpid(proc.pid, flags)
        except ChildProcessError:
            proc.status, proc.ended = -999, time.monotonic()
            return True
        if pid == 0:
            return False
        proc.ended = time.monotonic()
        proc.status = os.waitstatus_to_exitcode(status)
        proc.popen.returncode = proc.status  # keep Popen from waiting again
        try:  # GNU time writes "Command exited with non-zero status N" first, if so
            rss, user, system = proc.rss.read_text().split()[-3:]
            proc.maxrss_kib, proc.cpu_s = int(rss), float(user) + float(system)
        except (OSError, ValueError):
            proc.maxrss_kib, proc.cpu_s = 0, 0.0
        return True

    def alive(self, proc: Proc) -> bool:
        return not self._reap(proc, os.WNOHANG)

    def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pending = [p for p in self.procs if not self._reap(p, os.WNOHANG)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"timeout after {timeout:g} s; still running: "
                                 + ", ".join(p.name for p in pending))  # fmt: skip
            time.sleep(POLL)

    def wait_listening(self, proc: Proc, host: str, ports: Sequence[int]) -> None:
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while not all(listening(host, p) for p in ports):
            if not self.alive(proc):
                raise BenchError(f"{proc.name} exited ({proc.status}) before listening\n"
                                 + tail(proc))  # fmt: skip
            if time.monotonic() > deadline:
                raise BenchError(f"{proc.name} did not listen on {host}:{ports} "
                                 f"within {LISTEN_TIMEOUT:.0f} s")  # fmt: skip
            time.sleep(0.01)

    def kill_all(self) -> None:
        """SIGTERM, then SIGKILL, every process group of this run that still has members.

        Killing the ``time`` wrapper orphans its child; as a child subreaper this
        script inherits such orphans and reaps them here, so no zombie is left.
        """
        if all(p.status is not None for p in self.procs):
            return  # every leader exited normally: bash/time waited for their children
        groups = [p.pid for p in self.procs]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in groups:
                try:
                    os.killpg(pgid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                self._reap_any()
                groups = [g for g in groups if _group_exists(g)]
                if not groups and all(p.status is not None for p in self.procs):
                    return
                time.sleep(0.01)

    def _reap_any(self) -> None:
        """Reap every exited child: tracked ones get their status, orphans just go."""
        byid = {p.pid: p for p in self.procs if p.status is None}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in byid:
                proc = byid[pid]
                proc.ended, proc.status = time.monotonic(), os.waitstatus_to_exitcode(status)
                proc.popen.returncode = proc.status


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def become_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphans of our children are reparented to us."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@contextmanager
def group(logdir: Path) -> Iterator[Group]:
    g = Group(logdir)
    try:
        yield g
    finally:
        g.kill_all()


def tail(proc: Proc, n: int = 1500) -> str:
    parts = []
    for path in (proc.out, proc.err):
        try:
            text = path.read_text(errors="replace")[-n:]
        except OSError:
            continue
        if text.strip():
            parts.append(f"--- {path.name}\n{text}")
    return "\n".join(parts)


def check_exits(g: Group) -> None:
    bad = [p for p in g.procs if p.status != 0]
    if bad:
        raise BenchError("non-zero exit: " + ", ".join(f"{p.name}={p.status}" for p in bad)
                         + "\n" + "\n".join(tail(p) for p in bad))  # fmt: skip


# ------------------------------------------------------------------ one run


@dataclass
class Run:
    seconds: float
    recv_rss_kib: int
    root_rss_kib: int
    cpu_s: float = 0.0  # user + system of every process of the run


def run_nettee(exe: str, src: Path, size: int, nodes: int, port: int, logdir: Path,
               timeout: float, splice: bool, extra: Sequence[str] = (),
               out_dir: Path | None = None) -> Run:  # fmt: skip
    env = dict(os.environ)
    env.pop("BEOKIT_NO_SPLICE", None)
    env.pop("NETTEE_SECRET", None)
    if not splice:
        env["BEOKIT_NO_SPLICE"] = "1"
    if extra:
        env["NETTEE_SECRET"] = os.urandom(16).hex()
    report = logdir / "report.json"
    with group(logdir) as g:
        receivers = []
        for i in range(nodes, 1, -1):  # tip first
            argv = [exe, "-bind", addr(i), "-port", str(port)]
            if i < nodes:
                argv += ["-next", addr(i + 1)]
            out = str(out_dir / f"node{i}.out") if out_dir else "/dev/null"
            argv += ["-out", out, "-name", f"node{i}", *extra]
            receivers.append(g.start(f"node{i}", argv, env))
        for i, proc in zip(range(nodes, 1, -1), receivers, strict=True):
            g.wait_listening(proc, addr(i), (port, port + 1))
        argv = [exe, "-root", "-port", str(port), "-next", addr(2), "-in", str(src),
                "-v", "5", "-report", str(report), "-name", "node1", *extra]  # fmt: skip
        t0 = time.monotonic()
        root = g.start("node1", argv, env)
        g.wait_all(timeout)
        seconds = max(p.ended for p in g.procs) - t0
        check_exits(g)
    try:
        doc = json.loads(report.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read report {report}: {exc}\n{tail(root)}") from None
    if doc.get("status") != "ok":
        raise BenchError(f"report status {doc.get('status')!r}\n{tail(root)}")
    got = [(n.get("name"), n.get("bytes_in")) for n in doc.get("nodes", [])]
    if len(got) != nodes or any(b != size for _, b in got):
        raise BenchError(f"report byte counts {got}, expected {nodes} nodes x {size}")
    if "-digest" in extra and len({n.get("digest") for n in doc["nodes"]}) != 1:
        raise BenchError(f"digests differ: {[n.get('digest') for n in doc['nodes']]}")
    return Run(seconds, max(p.maxrss_kib for p in receivers), root.maxrss_kib,
               sum(p.cpu_s for p in g.procs))


def run_socat(exe: str, src: Path, size: int, nodes: int, port: int, logdir: Path,
              timeout: float, tip_mode: str, block: int | None = None) -> Run:  # fmt: skip
    if any(c in str(src) for c in ":,!"):
        raise BenchError(f"socat cannot take {src} in OPEN: (':' ',' or '!' in the path)")
    sx = [exe, "-u"] + (["-b", str(block)] if block else [])
    sh = shlex.join(sx)
    with group(logdir) as g:
        receivers = []
        for i in range(nodes, 1, -1):  # tip first; a middle node connects on start
            listen = f"TCP-LISTEN:{port},bind={addr(i)},reuseaddr"
            if i == nodes and tip_mode == "devnull":
                argv = [*sx, listen, "OPEN:/dev/null"]
            else:
                if i == nodes:
                    pipe = f"{sh} {listen} STDOUT | wc -c"
                else:
                    pipe = (f"{sh} {listen} STDOUT | tee /dev/null | "
                            f"{sh} STDIN TCP:{addr(i + 1)}:{port}")  # fmt: skip
                argv = ["bash", "-c", f"set -o pipefail; {pipe}"]
            proc = g.start(f"node{i}", argv)
            receivers.append(proc)
            g.wait_listening(proc, addr(i), (port,))
        argv = [*sx, f"OPEN:{src}", f"TCP:{addr(2)}:{port}"]
        t0 = time.monotonic()
        root = g.start("node1", argv)
        g.wait_all(timeout)
        seconds = max(p.ended for p in g.procs) - t0
        check_exits(g)
    if tip_mode == "wc":
        tip = receivers[0]
        text = tip.out.read_text().strip()
        if text != str(size):
            raise BenchError(f"socat tip counted {text!r} bytes, expected {size}")
    return Run(seconds, max(p.maxrss_kib for p in receivers), root.maxrss_kib,
               sum(p.cpu_s for p in g.procs))


# ------------------------------------------------------------------ report


@dataclass
class Row:
    tool: str
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def cpu(self) -> str:
        """Median CPU seconds (user + system) of all the run's processes."""
        cpu = statistics.median(r.cpu_s for r in self.runs)
        return f"{cpu:.2f}" if cpu else "-"

    @property
    def recv_rss(self) -> str:
        kib = max(r.recv_rss_kib for r in self.runs)
        return f"{kib / 1024:.1f}" if kib else "-"

    @property
    def root_rss(self) -> str:
        kib = max(r.root_rss_kib for r in self.runs)
        return f"{kib / 1024:.1f}" if kib else "-"


def table(rows: list[Row], nodes: int, size: int) -> str:
    socat = next((r for r in rows if r.tool == "socat" and r.runs), None)
    head = ("tool", "nodes", "bytes", "median s", "GB/s", "vs socat", "CPU s",
            "recv RSS MiB", "root RSS MiB", "runs (s)")  # fmt: skip
    lines = []
    for r in rows:
        ratio = f"{socat.median / r.median:.2f}x" if socat else "-"
        lines.append((LABELS[r.tool], str(nodes), str(size), f"{r.median:.3f}",
                      f"{size / r.median / 1e9:.3f}", ratio, r.cpu, r.recv_rss, r.root_rss,
                      " ".join(f"{x.seconds:.2f}" for x in r.runs)))  # fmt: skip
    widths = [max(len(h), *(len(line[k]) for line in lines)) for k, h in enumerate(head)]

    def fmt(cells: Sequence[str]) -> str:
        out = []
        for k, c in enumerate(cells):
            out.append(c.ljust(widths[k]) if k in (0, len(cells) - 1) else c.rjust(widths[k]))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), sep, *(fmt(line) for line in lines)])


def draw_png(path: Path, rows: list[Row], nodes: int, size: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--png: matplotlib is not importable; {path} not drawn (pip install matplotlib)")
        return
    names = [LABELS[r.tool] for r in rows]
    rates = [size / r.median / 1e9 for r in rows]
    lo = [rate - size / max(x.seconds for x in r.runs) / 1e9 for rate, r in zip(rates, rows, strict=True)]  # fmt: skip
    hi = [size / min(x.seconds for x in r.runs) / 1e9 - rate for rate, r in zip(rates, rows, strict=True)]  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(names, rates, yerr=[lo, hi], capsize=6,
                  color=["tab:blue", "tab:gray", "tab:cyan"][: len(rows)])  # fmt: skip
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in rates], padding=3)
    ax.set_ylabel("GB/s end to end (median, min-max bars)")
    ax.set_title(f"{nodes}-node chain on loopback, {human(size)} from /dev/shm, "
                 f"{os.cpu_count()} CPUs, {dt.date.today()}")  # fmt: skip
    ax.set_ylim(0, max(r + h for r, h in zip(rates, hi, strict=True)) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart written to {path}")


# ------------------------------------------------------------------ main


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=4, help="nodes incl. the root (default 4)")
    ap.add_argument("--size", type=parse_size, default=parse_size("2G"),
                    help="stream size, K/M/G/T = binary multiples (default 2G)")  # fmt: skip
    ap.add_argument("--runs", type=int, default=3, help="repetitions per tool (default 3)")
    ap.add_argument("--png", type=Path, help="draw a bar chart here (needs matplotlib)")
    ap.add_argument("--json", type=Path, help="write all run times here as JSON")
    ap.add_argument("--src", type=Path, help="source file (default /dev/shm/beokit-bench-SIZE.bin)")
    ap.add_argument("--keep", action="store_true", help="keep the source file afterwards")
    ap.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                    help=f"comma list of {','.join(TOOLS)} (default "
                         f"{','.join(DEFAULT_TOOLS)})")  # fmt: skip
    ap.add_argument("--socat-tip", choices=("wc", "devnull"), default="wc",
                    help="socat tip: count bytes with wc -c (checked) or write to /dev/null")  # fmt: skip
    ap.add_argument("--socat-block", type=parse_size, metavar="N",
                    help="socat -b N (transfer block; socat's default is 8192)")  # fmt: skip
    ap.add_argument("--out-dir", type=Path, metavar="DIR",
                    help="nettee receivers write files here (e.g. /dev/shm) instead of "
                         "/dev/null; removed after each run")  # fmt: skip
    ap.add_argument("--timeout", type=float, help="per run (default 60 s + 20 s per GiB)")
    ap.add_argument("--nettee", default=shutil.which("nettee"), help="nettee executable")
    ap.add_argument("--baseline", metavar="EXE",
                    help="also run every nettee tool with this executable (an older checkout, "
                         "e.g. a script running it from a git worktree), interleaved, and print "
                         "the change against it")  # fmt: skip
    ap.add_argument("--socat", default=shutil.which("socat"), help="socat executable")
    args = ap.parse_args(argv)

    if not 2 <= args.nodes <= 254:
        ap.error("--nodes must be 2..254")
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    tools = [t for t in args.tools.split(",") if t]
    if not tools or any(t not in TOOLS for t in tools):
        ap.error(f"--tools takes a comma list of {', '.join(TOOLS)}")
    if any(t != "socat" for t in tools) and not args.nettee:
        ap.error("nettee is not on PATH (pip install -e .) - or give --nettee")
    if "socat" in tools and not args.socat:
        ap.error("socat is not on PATH (apt-get install socat) - or give --socat")
    size, nodes = args.size, args.nodes
    if args.baseline:  # the same tools with the baseline executable, interleaved
        for t in [t for t in tools if t != "socat"]:
            LABELS[f"old-{t}"] = f"{LABELS[t]} [baseline]"
            if t in VARIANTS:
                VARIANTS[f"old-{t}"] = VARIANTS[t]
            tools.append(f"old-{t}")
    if args.socat_block:
        LABELS["socat"] = f"socat -b {args.socat_block}+tee+socat"
    width = max(len(LABELS[t]) for t in tools)
    timeout = args.timeout or 60.0 + 20.0 * size / (1 << 30)
    src: Path = args.src or Path(f"/dev/shm/beokit-bench-{size}.bin")

    become_subreaper()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    rows = [Row(t) for t in tools]
    used: set[int] = set()
    created = False
    load0 = os.getloadavg()[0]
    try:
        created = make_source(src, size)
        with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
            hosts = [addr(i) for i in range(1, nodes + 1)]
            for k in range(1, args.runs + 1):
                for row in rows:  # interleaved, so drift hits every tool alike
                    logdir = Path(tmp) / f"{row.tool}-{k}"
                    logdir.mkdir()
                    port = pick_port(hosts, used)
                    if row.tool == "socat":
                        r = run_socat(args.socat, src, size, nodes, port, logdir, timeout,
                                      args.socat_tip, args.socat_block)  # fmt: skip
                    else:
                        old = row.tool.startswith("old-")
                        r = run_nettee(args.baseline if old else args.nettee, src, size, nodes,
                                       port, logdir, timeout,
                                       splice=row.tool.removeprefix("old-") != "copy",
                                       extra=VARIANTS.get(row.tool, ()),
                                       out_dir=args.out_dir)  # fmt: skip
                        for f in args.out_dir.glob("node*.out") if args.out_dir else ():
                            f.unlink()
                    row.runs.append(r)
                    print(f"run {k}/{args.runs} {LABELS[row.tool]:<{width}} {r.seconds:7.3f} s "
                          f"{size / r.seconds / 1e9:6.3f} GB/s  ok", flush=True)  # fmt: skip
    except BenchError as exc:
        print(f"bench_chain: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"bench_chain: interrupted ({exc or 'SIGINT'}); processes killed", file=sys.stderr)
        return 130
    finally:
        if (created or args.src is None) and not args.keep:
            src.unlink(missing_ok=True)

    print()
    dest = f"files in {args.out_dir}" if args.out_dir else "/dev/null"
    print(f"{nodes}-node chain (root + {nodes - 1} receivers -> {dest}) on loopback, "
          f"{human(size)} source in {src.parent}, {os.cpu_count()} CPUs, "
          f"median of {args.runs}, {dt.datetime.now():%Y-%m-%d %H:%M}, "
        f"load avg {load0:.2f} before / {os.getloadavg()[0]:.2f} after")  # fmt: skip
    print(table(rows, nodes, size))
    base = next((r for r in rows if r.tool == "nettee"), None)
    for r in rows:
        if r.tool in VARIANTS and base is not None and not r.tool.startswith("old-"):
            cost = r.median / base.median - 1
            print(f"cost of {LABELS[r.tool]} against plain nettee, same run: "
                  f"{cost * 100:+.1f} % time (median {r.median:.3f} s vs {base.median:.3f} s)")
    by_tool = {r.tool: r for r in rows}
    for r in rows:
        old = by_tool.get(f"old-{r.tool}")
        if old is not None:
            print(f"{LABELS[r.tool]} against the baseline, same run: "
                  f"{(r.median / old.median - 1) * 100:+.1f} % time (median {r.median:.3f} s vs "
                  f"{old.median:.3f} s; runs {' '.join(f'{x.seconds:.2f}' for x in r.runs)} vs "
                  f"{' '.join(f'{x.seconds:.2f}' for x in old.runs)})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({
            "date": dt.datetime.now().isoformat(timespec="seconds"), "nodes": nodes,
            "bytes": size, "cpus": os.cpu_count(), "socat_tip": args.socat_tip,
            "socat_block": args.socat_block,
            "tools": {r.tool: [x.__dict__ for x in r.runs] for r in rows}}, indent=1))  # fmt: skip
    if args.png:
        draw_png(args.png, rows, nodes, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
