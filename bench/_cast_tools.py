"""The tools bench_cast.py runs on the virtual cluster, each measured the same way.

Every runner returns a :class:`Run`: the wall time the tool is judged by and
the CPU seconds of each process it started (from ``wait4``'s rusage, so a
process's own children that it reaped count as its own).  Host ``1`` is the
head node that holds SOURCE; hosts ``2..N+1`` receive.  A destination is
``/dev/null`` (the network path alone) or a file per host in /dev/shm.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE.parent.parent / "shared" / "peers"  # ../shared/peers beside the work tree
PREFIX = "bkcb"


@dataclass
class Run:
    """One run of one tool."""

    seconds: float  # what the tool is judged by (see each runner)
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds
    extra: dict[str, float] = field(default_factory=dict)  # launch, stream, ... (beo cast)


# ---------------------------------------------------------------- processes


def wait_cpu(p: subprocess.Popen, timeout: float) -> tuple[int, float]:
    """Wait for ``p`` (killed after ``timeout``); (exit status, its CPU seconds with
    those of the children it reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            p.kill()
        time.sleep(0.01)


def ns(i: int) -> list[str]:
    return ["ip", "netns", "exec", f"{PREFIX}-host{i}"]


def same(src: Path, outs: list[Path]) -> bool:
    size = src.stat().st_size
    if any(not o.exists() or o.stat().st_size != size for o in outs):
        return False
    return subprocess.run(["cmp", str(src), str(outs[-1])], capture_output=True).returncode == 0


# ------------------------------------------------------------------- dolly


def build_dolly(given: str | None, work: Path) -> tuple[str | None, str]:
    """(dolly's path, "") or (None, why it is skipped): ``given``, else built from
    ../shared/peers/dolly-src.tar.gz into ``work``."""
    if given:
        if os.access(given, os.X_OK):
            return given, ""
        return None, f"--dolly {given} is not an executable"
    tar = PEERS / "dolly-src.tar.gz"
    if not tar.exists():
        return None, f"dolly skipped: no {tar}"
    if shutil.which("make") is None or shutil.which("cc") is None:
        return None, "dolly skipped: no make or cc to build it (apt-get install build-essential)"
    subprocess.run(["tar", "xzf", str(tar), "-C", str(work)], check=True)
    cp = subprocess.run(["make", "-C", str(work / "dolly")], capture_output=True, text=True)
    exe = work / "dolly" / "dolly"
    if cp.returncode != 0 or not exe.exists():
        last = (cp.stderr.strip().splitlines() or ["no message"])[-1]
        return None, f"dolly skipped: it did not build ({last}; it needs libssl-dev)"
    return str(exe), ""


def run_dolly(dolly: str, src: Path, n: int, out: Path | None) -> Run:
    """dolly's clients started first, one per host (they listen on 9997/9998), each
    writing into its own directory bind-mounted at the same path (``ip netns exec``
    gives every client a mount namespace of its own); the server's time."""
    hosts = [f"host{i}" for i in range(2, n + 2)]
    dest = "/dev/null"
    if out is not None:
        (out / "d").mkdir(parents=True, exist_ok=True)
        dest = str(out / "d" / "img")
    clients = []
    for i in range(2, n + 2):
        cmd = f"exec {dolly} -q"
        if out is not None:
            (out / f"host{i}").mkdir()
            cmd = f"mount --bind {out}/host{i} {out}/d && {cmd}"
        clients.append(subprocess.Popen(ns(i) + ["sh", "-c", cmd], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
    # every client listening (as a user would start them beforehand): a fixed 0.5 s
    # was too short for 32 clients on this box, and dolly's server then hung
    wait_listening(clients, 9997)
    wait_listening(clients, 9998)
    t0 = time.monotonic()
    server = subprocess.Popen(ns(1) + [dolly, "-s", "-H", ",".join(hosts), "-I", str(src), "-O",
                                       dest], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)  # fmt: skip
    rc, cpu = wait_cpu(server, 1800)
    secs = time.monotonic() - t0
    if rc != 0:  # e.g. stock dolly 0.72: "Too many clients (32), max is 16." (MAXFANOUT)
        for c in clients:
            c.kill()
            c.wait()
        err = server.stderr.read().decode(errors="replace") if server.stderr else ""
        raise RuntimeError(f"dolly's server failed ({rc}): {err.strip()[-300:]}")
    run = Run(secs, {"host1": cpu})
    for i, c in zip(range(2, n + 2), clients, strict=True):
        crc, run.cpu[f"host{i}"] = wait_cpu(c, 60)
        rc = rc or crc
    if rc != 0 or (out is not None and not same(src, [out / h / "img" for h in hosts])):
        raise RuntimeError(f"dolly failed ({rc})")
    return run


# ------------------------------------------------------------------ nettee


def nettee_argv() -> list[str]:
    exe = Path(sys.executable).parent / "nettee"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "beokit.nettee.cli"]


def make_source(path: Path, size: int) -> None:
    """SIZE random bytes (nothing compresses or dedups them on the way)."""
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 22))
            fh.write(chunk)
            left -= len(chunk)


def listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` (in its own network namespace) listens on TCP ``port``."""
    want = f":{port:04X} "
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as fh:
                for line in fh:
                    cols = line.split()
                    if len(cols) > 3 and cols[3] == "0A" and (cols[1] + " ").endswith(want):
                        return True
        except OSError:
            pass
    return False


def wait_listening(procs: list[subprocess.Popen], port: int, timeout: float = 60) -> None:
    """Every receiver up and listening (as dolly's clients are, started beforehand)."""
    deadline = time.monotonic() + timeout
    for p in procs:
        while not listening(p.pid, port):
            if p.poll() is not None:
                raise RuntimeError(f"a receiver exited ({p.returncode}) before it listened")
            if time.monotonic() > deadline:
                raise RuntimeError(f"a receiver did not listen within {timeout:g} s")
            time.sleep(0.005)


def run_nettee(src: Path, n: int, out: Path | None, flags: list[str], port: int) -> Run:
    """A chain of nettee started by hand: receivers first (tip first), waited for until
    each listens (as dolly's clients are started beforehand), then the root (its time:
    its start-up, forming the chain, the stream, the reports)."""
    hosts = [f"host{i}" for i in range(2, n + 2)]
    env = dict(os.environ)
    if "-heal" in flags or "-digest" in flags:
        env["NETTEE_SECRET"] = os.urandom(32).hex()  # as beo cast runs them
    procs = []
    for k in range(n - 1, -1, -1):
        dest = "/dev/null" if out is None else str(out / f"nt-{hosts[k]}")
        args = nettee_argv() + ["-port", str(port), "-name", hosts[k], "-out", dest, *flags]
        if k + 1 < n:
            args += ["-next", f"{hosts[k + 1]}:{port}"]
        procs.append((hosts[k], subprocess.Popen(ns(k + 2) + args, stdin=subprocess.DEVNULL,
                                                 env=env)))  # fmt: skip
    wait_listening([q for _h, q in procs], port)
    root = ns(1) + nettee_argv() + ["-root", "-port", str(port), "-next", f"{hosts[0]}:{port}",
                                    "-in", str(src), "-v", "1", *flags]  # fmt: skip
    t0 = time.monotonic()
    p = subprocess.Popen(root, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    rc, cpu = wait_cpu(p, 1800)
    secs = time.monotonic() - t0
    run = Run(secs, {"host1": cpu})
    for h, q in procs:
        qrc, run.cpu[h] = wait_cpu(q, 60)
        rc = rc or qrc
    if rc != 0 or (out is not None and not same(src, [out / f"nt-{h}" for h in hosts])):
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        raise RuntimeError(f"nettee chain failed ({rc}): {err[-400:]}")
    return run


# --------------------------------------------------------------- beo cast


# how beo cast starts its receivers on the virtual cluster: "netns" (-R netns:PATTERN,
# agents forked into the hosts' namespaces) or "template" (-R 'ip netns exec ... {cmd}',
# a new interpreter a node, as over any other template)
CAST_RCMD = "netns"


def cast_rcmd() -> list[str]:
    if CAST_RCMD == "netns":
        return ["-R", f"netns:{PREFIX}-{{host}}"]
    return ["-R", f"ip netns exec {PREFIX}-{{host}} sh -c {{cmd}}", "--remote-python",
            sys.executable]  # fmt: skip


def run_cast(src: Path, n: int, out: Path | None, extra: list[str]) -> Run:
    """beo cast from host1, every receiver launched into its host (:func:`cast_rcmd`):
    the whole command's wall time; launch (the command's own start-up and every
    receiver up), the root nettee's life and its stream from its --json."""
    dest = "/dev/null" if out is None else f"{out}/cast-{{host}}"
    argv = ns(1) + [sys.executable, "-m", "beokit.cli", "cast", "--json", *cast_rcmd(),
                    *extra, str(src), f"host[2-{n + 1}]", "--to", dest]  # fmt: skip
    with tempfile.TemporaryFile() as doc_file:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=doc_file,
                             stderr=subprocess.PIPE)  # fmt: skip
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        rc, cpu = wait_cpu(p, 1800)
        wall = time.monotonic() - t0
        doc_file.seek(0)
        text = doc_file.read().decode()
    doc = json.loads(text) if text.strip() else {}
    if rc != 0 or doc.get("failed"):
        raise RuntimeError(f"beo cast failed ({rc}): {err[-800:]}")
    if out is not None and not same(src, [out / f"cast-host{i}" for i in range(2, n + 2)]):
        raise RuntimeError("beo cast: a copy differs")
    launch = wall - float(doc["elapsed"]) + float(doc["launch_seconds"])
    root = float(doc["seconds"])
    return Run(wall, {"tree": cpu}, {"launch": launch, "root": root,
                                     "stream": float(doc["stream_seconds"]),
                                     "after": wall - launch - root})  # fmt: skip


def stop_everything_in(hosts: list[int]) -> None:
    """Nothing of a failed run may hold a port into the next one."""
    for i in hosts:
        out = subprocess.run(["ip", "netns", "pids", f"{PREFIX}-host{i}"], capture_output=True,
                             text=True).stdout.split()  # fmt: skip
        for pid in out:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
