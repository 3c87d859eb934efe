#!/usr/bin/env python3
"""Inject real faults into real nettee chains and check the outcome of every case.

One invocation runs the whole matrix and prints a table::

    python3 bench/fault_matrix.py [--markdown] [--case SUBSTRING] [--size MiB] [--keep]

The chain is a root and four receivers on loopback addresses, as in
``beokit.nettee.localchain``::

    root 127.0.0.1 -> n2 127.0.0.2 -> n3 127.0.0.3 -> n4 127.0.0.4 -> n5 127.0.0.5 (tip)

The root reads its stream (48 MiB of random bytes) from stdin, written by a
*feeder* process at a controlled rate (256 KiB, then a 10 ms sleep: about
23 MB/s here) so a fault lands "during" the stream reliably; each receiver writes ``-out nK.out`` in the
case's directory; every node logs with ``-v 5`` to ``nK.log`` and the root
writes ``-report report.json``.  Every node runs with ``-stall 2`` and every
receiver with ``-t 3`` (a receiver whose parent never comes gives up).

Faults, each one real:

``none``     no fault: the baseline.
``kill2/kill3/kill5``  SIGKILL of the root-adjacent node, the middle node, the tip:
    ``before`` the root starts (the chain never forms); ``during`` the stream
    (once the tip's file holds 4 MiB); at the ``end``: the feeder writes its
    last chunk, sleeps its 10 ms (by then every node holds the whole stream),
    closes the pipe -- the root's input ends -- and sends SIGKILL to the
    victim itself, microseconds later, so the kill lands after the input
    ended and before any node could pass the end-of-stream count on.
``lwf``      n3 writes ``-out /dev/full`` (a local write failure at the first write).
``lwftmpfs`` n3 writes into a 4 MiB tmpfs (root only; mounted and unmounted here).
``lrf``      the root's stdin is a TCP socket whose peer resets the connection
    (SO_LINGER 0 close) half way: the root's read fails with ECONNRESET.
``nnfalt``   n3 has ``-next [127.0.0.9,127.0.0.4] -connf 1``: nothing runs on .9,
    so n3 routes around it to n4.
``nnfnone``  n3 has ``-next [127.0.0.9,127.0.0.8] -connf 1``: no candidate lives,
    the branch is dropped (NNF); n4 and n5 are left without a parent.
``stop3``    SIGSTOP of n3 during the stream (SIGCONT at cleanup, then it must exit).

Option sets: ``default`` (no continue option), ``conwf``/``conrf``/``colwf`` on
every node, ``colrf`` on the root, ``connf`` (``-connf 1`` on every node) and
``all`` (``-conwf -conrf -colwf -colrf`` on every node), ``heal`` (``-heal`` on
every node: the kills during and at the end of the stream, and the stop).

Recorded per case: each node's exit status, whether it exited within
``--bound`` seconds of the fault (otherwise it is killed and flagged hung),
which receivers hold byte-identical output (against what the root read: the
feeder's data, or for ``lrf`` the prefix the root reports), which nodes the
root names (report JSON and log lines) with which codes, and the time from the
fault to the last exit.

The invariant, checked in every case: each receiver holds byte-identical
complete output, or is named with a failure code by the root (report JSON
``nodes[*].codes``, or the root's log lines), or the root itself collapsed
(or never finished) and the receiver did not claim success either (non-zero
exit), or it is an orphan (it never joined; the root names the dropped
branch NNF).  Anything else is a *silent* short or corrupt file.

The expected outcome of every case is in ``EXPECT`` (used by
``tests/test_fault_matrix.py``); cases where nettee misbehaves carry ``bug``.
Every process runs in its own session and is killed (by its process id) at the
end of its case, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from beokit.nettee.localchain import free_port, nettee_command

MiB = 1 << 20
ROOT = 1
RECEIVERS = (2, 3, 4, 5)
NODES = (ROOT, *RECEIVERS)
ADDR = {k: f"127.0.0.{k}" for k in range(1, 10)}
NAME = {ROOT: "root", **{k: f"n{k}" for k in RECEIVERS}}
STALL = 2.0  # -stall on every node
PARENT_WAIT = 3.0  # -t on every receiver
POLL = 0.002

ALL = ["-conwf", "-conrf", "-colwf", "-colrf"]
OPTION_SETS: dict[str, tuple[list[str], list[str]]] = {  # (root args, receiver args)
    "default": ([], []),
    "conwf": (["-conwf"], ["-conwf"]),
    "conrf": (["-conrf"], ["-conrf"]),
    "colwf": (["-colwf"], ["-colwf"]),
    "colrf": (["-colrf"], []),
    "connf": (["-connf", "1"], ["-connf", "1"]),
    "all": (ALL, ALL),
    "heal": (["-heal"], ["-heal"]),
}

# The feeder: writes SRC to fd FD, CHUNK bytes every INTERVAL s.  RESET > 0: FD is a
# TCP socket, reset (SO_LINGER 0 close) once RESET bytes are written.  VICTIM > 0: at
# the end, wait until the file TIP holds the whole stream (at most 2 s, less than -t),
# close FD (the root's input ends) and SIGKILL VICTIM at once; STAMP gets the time of
# the kill and the bytes the root had not read yet.
FEEDER = r"""
import fcntl, os, signal, socket, struct, sys, termios, time
src, chunk, interval, reset, fd, victim, stamp, tip = sys.argv[1:9]
chunk, interval, reset, fd, victim = int(chunk), float(interval), int(reset), int(fd), int(victim)
sent = 0
with open(src, "rb") as fh:
    while True:
        if reset and sent >= reset:
            sock = socket.socket(fileno=fd)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST: the reader's next read fails with ECONNRESET
            sys.exit(0)
        data = fh.read(chunk)
        if not data:
            break
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        sent += len(data)
        time.sleep(interval)
deadline = time.monotonic() + 2.0
while victim and time.monotonic() < deadline:
    try:
        if os.stat(tip).st_size >= sent:
            break
    except OSError:
        pass
    time.sleep(0.001)
buf = bytearray(4)
fcntl.ioctl(fd, termios.FIONREAD, buf)
os.close(fd)  # the root's input ends here
if victim:
    os.kill(victim, signal.SIGKILL)
    with open(stamp, "w") as out:
        out.write(f"{time.monotonic()!r} {struct.unpack('i', buf)[0]}")
"""


# ---------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Case:
    fault: str  # none | kill | stop | lwf | lwftmpfs | lrf | nnfalt | nnfnone
    victim: int = 0  # node index (kill, stop)
    when: str = ""  # before | during | end (kill)
    optset: str = "default"

    @property
    def id(self) -> str:
        what = f"{self.fault}{self.victim or ''}" + (f"-{self.when}" if self.when else "")
        return f"{what}-{self.optset}"


def build_cases() -> list[Case]:
    cases: list[Case] = [Case("none")]
    for when in ("before", "during", "end"):
        sets = (
            ("default", "connf", "all")
            if when == "before"
            else ("default", "conwf", "conrf", "all")
        )
        for victim in (2, 3, 5):
            cases += [Case("kill", victim, when, s) for s in sets]
    for when in ("during", "end"):  # -heal acts once the stream flows
        cases += [Case("kill", victim, when, "heal") for victim in (2, 3, 5)]
    cases += [Case("stop", 3, "during", s) for s in ("default", "conwf", "conrf", "all", "heal")]
    cases += [Case("lwf", 0, "", s) for s in ("default", "colwf", "all")]
    cases += [Case("lwftmpfs", 0, "", s) for s in ("default", "colwf", "all")]
    cases += [Case("lrf", 0, "", s) for s in ("default", "colrf", "all")]
    cases += [Case("nnfalt", 0, "", s) for s in ("default", "all")]
    cases += [Case("nnfnone", 0, "", s) for s in ("default", "all")]
    return cases


CASES = build_cases()


@dataclass(frozen=True)
class Expect:
    """What a case must show.

    ``exits``: R 2 3 4 5 -- ``0``/``1`` an exit status (``01``: either), ``K`` the
    SIGKILLed victim, ``S`` the stopped victim (any status after SIGCONT, but it must
    exit), ``H`` hangs by design (still running at the bound), ``*`` anything.
    ``full``: the receivers that hold identical output, exactly (``3?``: may or may
    not).  ``named``: ``"3:NWF 4:BSTAT"``, codes the root must name each node with
    (a subset; ``R`` is the root).  ``status``: the report's status (``none`` = no
    report).  ``prompt``: every node but the victim exits within this many seconds
    of the fault.  ``bug``: the case shows a bug in nettee (strict xfail in the
    tests); the other fields then say what a correct nettee would do.
    """

    exits: str
    full: str = ""
    named: str = ""
    status: str = ""
    prompt: float | None = None
    bug: str = ""


KILL_PROMPT = 2.0  # the "prompt collapse" goal: every survivor is gone within 2 s of a kill
STOP_PROMPT = STALL + 2.0  # a stopped node is found by its silence (-stall)

def _expectations() -> dict[str, Expect]:
    e: dict[str, Expect] = {"none-default": Expect("0 0 0 0 0", "2 3 4 5", "", "ok")}
    # before: the chain never forms.  Without -connf the man page waits forever for the
    # first host of a hostlist: the root (kill2, no -t) waits by design; a receiver's
    # -t bounds its wait for its children too (NNF), and nodes left without a parent
    # give up after -t.
    for s in ("default", "all"):
        e[f"kill2-before-{s}"] = Expect("H K 1 1 1", "", "", "none")
    e["kill3-before-default"] = Expect("1 1 K 1 1", "", "3:NNF", "collapsed")
    e["kill5-before-default"] = Expect("1 1 1 1 K", "", "5:NNF", "collapsed")
    # with -conwf everywhere the node above the one that gave up carries on without it
    e["kill3-before-all"] = Expect("0 1 K 1 1", "", "2:BSTAT 3:NNF", "ok")
    e["kill5-before-all"] = Expect("0 0 0 1 K", "2 3", "4:BSTAT 5:NNF", "ok")
    # -connf dropped the root's only branch: nothing was delivered, the root fails
    e["kill2-before-connf"] = Expect("1 K 1 1 1", "", "2:NNF", "failed")
    e["kill3-before-connf"] = Expect("0 0 K 1 1", "2", "3:NNF", "ok")
    e["kill5-before-connf"] = Expect("0 0 0 0 K", "2 3 4", "5:NNF", "ok")
    # during: the tip holds --trigger MiB.  end: the root's input has ended and every
    # node holds the whole stream, but the victim dies before it passes the end-of-stream
    # count on, so the nodes below it cannot verify their data (NRF) unless -conrf.
    lost = {2: "2:NWF 3:BSTAT 4:BSTAT 5:BSTAT", 3: "3:NWF 4:BSTAT 5:BSTAT", 5: "5:NWF"}
    for w in ("during", "end"):
        full = {2: "2? 3 4 5", 3: "2 3? 4 5", 5: "2 3 4 5?"} if w == "end" else {}
        f2, f3, f5 = full.get(2, ""), full.get(3, "2"), full.get(5, "2 3 4")
        e[f"kill2-{w}-default"] = Expect("1 K 1 1 1", full.get(2, ""), "2:NWF", "collapsed",
                                         KILL_PROMPT)  # fmt: skip
        e[f"kill3-{w}-default"] = Expect("1 1 K 1 1", full.get(3, ""), "3:NWF", "collapsed",
                                         KILL_PROMPT)  # fmt: skip
        e[f"kill5-{w}-default"] = Expect("1 1 1 1 K", full.get(5, ""), "5:NWF", "collapsed",
                                         KILL_PROMPT)  # fmt: skip
        e[f"kill2-{w}-conwf"] = Expect("0 K 1 1 1", f2, lost[2], "ok")
        e[f"kill3-{w}-conwf"] = Expect("0 0 K 1 1", f3, lost[3], "ok")
        e[f"kill5-{w}-conwf"] = Expect("0 0 0 0 K", f5, lost[5], "ok")
        e[f"kill5-{w}-conrf"] = Expect("1 1 1 1 K", full.get(5, ""), "5:NWF", "collapsed")
        e[f"kill2-{w}-all"] = Expect("0 K 0 0 0", f2, lost[2], "ok")
        e[f"kill3-{w}-all"] = Expect("0 0 K 0 0", f3, lost[3], "ok")
        e[f"kill5-{w}-all"] = Expect("0 0 0 0 K", f5, lost[5], "ok")
    e["kill2-end-conrf"] = Expect("1 K 0 0 0", "2? 3 4 5", "2:NWF", "collapsed")
    e["kill3-end-conrf"] = Expect("1 1 K 0 0", "2 3? 4 5", "3:NWF", "collapsed")
    e["kill2-during-conrf"] = Expect("1 K * * *", "", "2:NWF", "collapsed")
    e["kill3-during-conrf"] = Expect("1 1 K * *", "", "3:NWF", "collapsed")
    # -heal: the dead node's parent adopts its child; only the victim misses data
    # (the stream goes on after the fault, so no promptness bound; at the end the
    # victim may already hold everything, as in the other "end" cases)
    heal_full = {"during": {2: "3 4 5", 3: "2 4 5", 5: "2 3 4"},
                 "end": {2: "2? 3 4 5", 3: "2 3? 4 5", 5: "2 3 4 5?"}}  # fmt: skip
    for w, full in heal_full.items():
        e[f"kill2-{w}-heal"] = Expect("0 K 0 0 0", full[2], "2:NWF", "ok")
        e[f"kill3-{w}-heal"] = Expect("0 0 K 0 0", full[3], "3:NWF", "ok")
        e[f"kill5-{w}-heal"] = Expect("0 0 0 0 K", full[5], "5:NWF", "ok")
    # the stopped node is replaced after -stall; on SIGCONT it reads the abort and exits
    e["stop3-during-heal"] = Expect("0 0 S 0 0", "2 4 5", "3:NWF", "ok")
    # a stopped middle node: found by its silence after -stall
    e["stop3-during-default"] = Expect("1 1 S 1 1", "", "3:NWF", "collapsed", STOP_PROMPT)
    e["stop3-during-conwf"] = Expect("0 0 S 1 1", "2", lost[3], "ok")
    e["stop3-during-conrf"] = Expect("1 1 S * *", "", "3:NWF", "collapsed")
    e["stop3-during-all"] = Expect("0 0 S 0 0", "2", lost[3], "ok")
    # local write failure on n3 (/dev/full, or a full 4 MiB tmpfs)
    for f in ("lwf", "lwftmpfs"):
        e[f"{f}-default"] = Expect("1 1 1 1 1", "", "3:LWF", "collapsed", KILL_PROMPT)
        e[f"{f}-colwf"] = Expect("0 0 0 0 0", "2 4 5", "3:LWF", "ok")
        e[f"{f}-all"] = Expect("0 0 0 0 0", "2 4 5", "3:LWF", "ok")
    # local read failure at the root (ECONNRESET on its stdin): with -colrf the stream
    # ends there; every receiver holds exactly what the root read and the root says LRF
    e["lrf-default"] = Expect("1 1 1 1 1", "", "R:LRF", "collapsed", KILL_PROMPT)
    e["lrf-colrf"] = Expect("0 0 0 0 0", "2 3 4 5", "R:LRF", "ok")
    e["lrf-all"] = Expect("0 0 0 0 0", "2 3 4 5", "R:LRF", "ok")
    # formation: n3 routes around a host that never starts; or no candidate at all
    for s in ("default", "all"):
        e[f"nnfalt-{s}"] = Expect("0 0 0 0 0", "2 3 4 5", "", "ok")
        e[f"nnfnone-{s}"] = Expect("0 0 0 1 1", "2 3", "127.0.0.9:NNF", "ok")
    return e


EXPECT = _expectations()


# ---------------------------------------------------------------- options and outcome


@dataclass
class Options:
    source: Path | None = None  # the stream (made in the workdir when None)
    size: int = 48 * MiB
    chunk: int = 256 * 1024
    interval: float = 0.010
    trigger: int = 4 * MiB  # "during": the tip's file holds this much
    bound: float = 10.0  # seconds after the fault for every process to exit
    resume_wait: float = 5.0  # a stopped victim, once resumed, must exit within this
    keep: bool = False  # keep outputs (they are deleted after checking)


@dataclass
class NodeOutcome:
    index: int
    tag: str = "-"  # exit status, K (killed victim), H (hung, killed at the bound)
    exit: int | None = None
    seconds: float | None = None  # exit time after the fault
    hung: bool = False
    state: str = ""  # full | prefix | empty | corrupt | longer | missing | device; "" (root)
    size: int = 0
    named: list[str] = field(default_factory=list)
    covered: str = ""  # complete | named | tree failed | orphan | SILENT


@dataclass
class Outcome:
    case: Case
    nodes: dict[int, NodeOutcome]
    status: str  # report status or "none"
    ref_bytes: int  # what the root read (the reference the outputs are compared with)
    fault_to_last_exit: float | None
    fault_note: str  # what was true when the fault landed
    named_other: dict[str, list[str]]  # named names that are not nodes (127.0.0.9 ...)
    violations: list[str]
    workdir: Path
    skipped: str = ""
    error: str = ""  # the harness could not run the case as intended

    @property
    def hung(self) -> list[int]:
        return [k for k, n in self.nodes.items() if n.hung]

    @property
    def invariant_ok(self) -> bool:
        return not self.violations

    def exits(self) -> str:
        return " ".join(self.nodes[k].tag for k in NODES)

    def full(self) -> str:
        return " ".join(str(k) for k in RECEIVERS if self.nodes[k].state == "full")

    def named(self) -> str:
        parts = [f"{'R' if k == ROOT else k}:{'+'.join(n.named)}" for k, n in self.nodes.items()
                 if n.named]  # fmt: skip
        parts += [f"{name}:{'+'.join(c)}" for name, c in self.named_other.items()]
        return " ".join(parts) or "-"

    def short(self) -> str:
        out = []
        for k in RECEIVERS:
            n = self.nodes[k]
            if n.state != "full":
                out.append(
                    f"{k}:{n.state}" + (f"({n.size / MiB:.1f}M)" if n.state == "prefix" else "")
                )
        return " ".join(out) or "-"


# ---------------------------------------------------------------- running one case


class _Procs:
    """Every process of a case, each in its own session; killed by pid at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(args, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def kill(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # its own session: the group is just it
            except ProcessLookupError:
                pass
            p.wait()

    def kill_all(self) -> None:
        for p in self.procs:
            self.kill(p)


def _wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(POLL)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_has(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def make_source(path: Path, size: int) -> Path:
    if not path.exists() or path.stat().st_size != size:
        with open(path, "wb") as fh:
            left = size
            while left:
                n = min(left, 4 * MiB)
                fh.write(os.urandom(n))
                left -= n
    return path


def run_case(case: Case, options: Options, workdir: str | Path) -> Outcome:
    """Run one case of the matrix in ``workdir`` (created) and check it."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    opt = options
    source = opt.source or make_source(work / "source.bin", opt.size)
    total = source.stat().st_size
    if case.fault == "lwftmpfs" and os.geteuid() != 0:
        return Outcome(case, {k: NodeOutcome(k) for k in NODES}, "none", total, None, "", {}, [],
                       work, skipped="needs root to mount a tmpfs")  # fmt: skip

    port = free_port([ADDR[k] for k in range(1, 10)])
    outs = {k: work / f"n{k}.out" for k in RECEIVERS}
    logs = {k: work / f"n{k}.log" for k in NODES}
    report = work / "report.json"
    stamp = work / "feeder.kill"
    for p in [*outs.values(), *logs.values(), report, stamp]:
        p.unlink(missing_ok=True)
    root_set, node_set = OPTION_SETS[case.optset]
    cmd = nettee_command()
    procs = _Procs()
    tmpfs: Path | None = None
    fault_note = ""
    t_fault: float | None = None
    nodes: dict[int, subprocess.Popen] = {}
    exit_at: dict[int, float] = {}
    hung: set[int] = set()
    error = ""
    try:
        if case.fault == "lwftmpfs":
            tmpfs = work / "tmpfs"
            tmpfs.mkdir(exist_ok=True)
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(tmpfs)], check=True
            )
            outs[3] = tmpfs / "n3.out"
        for k in reversed(RECEIVERS):
            args = cmd + ["-bind", ADDR[k], "-port", str(port), "-name", NAME[k], "-out",
                          str(outs[k]), "-v", "5", "-log", str(logs[k]), "-stall", f"{STALL:g}",
                          "-t", f"{PARENT_WAIT:g}"]  # fmt: skip
            if k < RECEIVERS[-1]:
                args += ["-next", ADDR[k + 1]]
            args += node_set
            if k == 3 and case.fault == "lwf":
                outs[3] = Path("/dev/full")
                args += ["-out", str(outs[3])]
            if k == 3 and case.fault == "nnfalt":
                args += ["-next", f"[{ADDR[9]},{ADDR[4]}]", "-connf", "1"]
            if k == 3 and case.fault == "nnfnone":
                args += ["-next", f"[{ADDR[9]},{ADDR[8]}]", "-connf", "1"]
            nodes[k] = procs.start(args)
        for k in RECEIVERS:
            _wait_for(lambda k=k: _log_has(logs[k], "waiting for a parent")
                      or nodes[k].poll() is not None, 20, f"n{k} to listen")  # fmt: skip
            if nodes[k].poll() is not None:
                raise RuntimeError(f"n{k} exited at start: {nodes[k].returncode}")

        if case.when == "before":
            os.kill(nodes[case.victim].pid, signal.SIGKILL)
            nodes[case.victim].wait()
            t_fault = time.monotonic()
            fault_note = "before the root started"

        # the feeder and the root's stdin
        if case.fault == "lrf":
            lst = socket.create_server((ADDR[1], 0))
            client = socket.create_connection(lst.getsockname())
            server, _ = lst.accept()
            lst.close()
            feeder = procs.start([sys.executable, "-c", FEEDER, str(source), str(opt.chunk),
                                  str(opt.interval), str(total // 2), str(server.fileno()),
                                  "0", "", ""], pass_fds=(server.fileno(),))  # fmt: skip
            server.close()  # the feeder holds the only reference: its close resets
            root_stdin = client.fileno()
        else:
            pipe_r, pipe_w = os.pipe()
            victim_pid = nodes[case.victim].pid if case.when == "end" else 0
            feeder = procs.start([sys.executable, "-c", FEEDER, str(source), str(opt.chunk),
                                  str(opt.interval), "0", "1", str(victim_pid), str(stamp),
                                  str(outs[RECEIVERS[-1]])],
                                 stdout=pipe_w)  # fmt: skip
            os.close(pipe_w)
            root_stdin = pipe_r
        args = cmd + ["-root", "-port", str(port), "-next", ADDR[2], "-in", "-", "-name",
                      NAME[ROOT], "-report", str(report), "-v", "5", "-log", str(logs[ROOT]),
                      "-stall", f"{STALL:g}"] + root_set  # fmt: skip
        nodes[ROOT] = procs.start(args, stdin=root_stdin)
        t_root = time.monotonic()
        if case.fault == "lrf":
            client.close()
        else:
            os.close(pipe_r)  # the root holds the only read end: a dead root stops the feeder

        def alive() -> list[int]:
            return [k for k in NODES if nodes[k].poll() is None]

        # the fault
        victim = nodes.get(case.victim)
        try:
            if case.when in ("during", "end"):
                assert victim is not None
                tip = outs[RECEIVERS[-1]]
                if case.when == "during":
                    _wait_for(lambda: _size(tip) >= opt.trigger or len(alive()) < len(NODES), 30,
                              "the stream to reach the tip")  # fmt: skip
                    up = alive()
                    os.kill(victim.pid, signal.SIGSTOP if case.fault == "stop" else signal.SIGKILL)
                    t_fault = time.monotonic()
                    fault_note = f"tip at {_size(tip) / MiB:.1f} MiB"
                    if len(up) < len(NODES):
                        gone = ", ".join(NAME[k] for k in NODES if k not in up)
                        fault_note += f"; TOO LATE: {gone} had exited"
                else:
                    # the feeder closes the root's input and kills the victim at once
                    _wait_for(lambda: feeder.poll() is not None, 60, "the feeder to finish")
                    if stamp.exists():
                        when, unread = stamp.read_text().split()
                        t_fault = float(when)
                        fault_note = (f"input ended, {unread} B unread; tip "
                                      f"{'complete' if _size(tip) == total else 'INCOMPLETE'}")  # fmt: skip
                    else:
                        t_fault = time.monotonic()
                        fault_note = "TOO LATE: the feeder stopped before the end"
                if _log_has(logs[case.victim], "done:"):
                    fault_note += f"; TOO LATE: n{case.victim} had finished"
            elif case.fault == "lrf":
                _wait_for(lambda: feeder.poll() is not None, 60, "the feeder to reset")
                t_fault = time.monotonic()
                fault_note = f"reset at {total // 2 / MiB:.1f} MiB"
            elif case.fault == "lwf":
                _wait_for(lambda: _log_has(logs[ROOT], "streaming to") or nodes[ROOT].poll() is not None,
                          30, "the stream to start")  # fmt: skip
                t_fault = time.monotonic()
                fault_note = "stream start"
            elif case.fault == "lwftmpfs":
                assert tmpfs is not None
                _wait_for(lambda: os.statvfs(tmpfs).f_bavail == 0 or len(alive()) < len(NODES), 30,
                          "the tmpfs to fill")  # fmt: skip
                t_fault = time.monotonic()
                fault_note = f"tmpfs full at {_size(outs[3]) / MiB:.1f} MiB"
            elif t_fault is None:  # formation faults (and no fault): the root's start
                t_fault = t_root
                fault_note = "root start"
        except TimeoutError as exc:  # the fault never came: say so, clean up, check
            error = f"harness: {exc}"
            t_fault = time.monotonic()
            fault_note = error

        # wait for every process (the stopped victim aside) within the bound
        waiting = [k for k in NODES if not (case.fault == "stop" and k == case.victim)]
        deadline = t_fault + opt.bound
        while True:
            now = time.monotonic()
            for k in waiting:
                if k not in exit_at and nodes[k].poll() is not None:
                    exit_at[k] = now
            if all(k in exit_at for k in waiting) or now > deadline:
                break
            time.sleep(POLL)
        for k in waiting:
            if k not in exit_at:
                hung.add(k)
                procs.kill(nodes[k])
        if case.fault == "stop" and victim is not None:
            os.kill(victim.pid, signal.SIGCONT)
            t_cont = time.monotonic()
            try:
                victim.wait(timeout=opt.resume_wait)
                exit_at[case.victim] = time.monotonic()
                fault_note += (
                    f"; SIGCONT: n{case.victim} exits in {exit_at[case.victim] - t_cont:.2f} s"
                )
            except subprocess.TimeoutExpired:
                hung.add(case.victim)
                procs.kill(victim)
    finally:
        procs.kill_all()
        if tmpfs is not None:
            out3 = outs[3]
            if out3.exists():  # keep what n3 wrote, for the check below
                shutil.copyfile(out3, work / "n3.out")
            outs[3] = work / "n3.out"
            subprocess.run(["umount", str(tmpfs)], check=False)

    out = _check(case, opt, work, source, total, nodes, exit_at, hung, t_fault, fault_note,
                 outs, logs, report)  # fmt: skip
    out.error = error
    return out


# ---------------------------------------------------------------- checking


_CHILD_LINE = re.compile(r"Failures detected in child \d+ \[([^\]]*)\]: ([A-Z]+(?: [A-Z]+)*)")
_COLLAPSE_LINE = re.compile(r"^(\S+): [a-z ]+ \(([A-Z]+)\): ")
_NODE_LINE = re.compile(r"^node (\S+): ([A-Z]+(?: [A-Z]+)*) \(")
_NNF_LINE = re.compile(r"could not connect to child \d+ \[([^\]]*)\]: NNF")


def _index_of(name: str) -> int | None:
    for k in NODES:
        if name in (NAME[k], ADDR[k]):
            return k
    return None


def named_by_root(report: dict | None, root_log: str) -> dict[str, set[str]]:
    """Every name the root associates with a failure code (report and log lines)."""
    named: dict[str, set[str]] = {}

    def add(name: str, codes: list[str]) -> None:
        codes = [c for c in codes if c != "NONE"]
        if codes:
            named.setdefault(name, set()).update(codes)

    if report:
        for n in report.get("nodes", []):
            add(str(n.get("name")), [str(c) for c in n.get("codes", [])])
    for raw in root_log.splitlines():
        line = raw.removeprefix("nettee: ")
        if m := _CHILD_LINE.search(line):
            add(m.group(1), m.group(2).split())
        if m := _COLLAPSE_LINE.match(line):
            add(m.group(1), [m.group(2)])
        if m := _NODE_LINE.match(line):
            add(m.group(1), m.group(2).split())
        if m := _NNF_LINE.search(line):
            for name in m.group(1).split(","):
                add(name, ["NNF"])
    return named


def _classify(path: Path, source: Path, ref_bytes: int) -> tuple[str, int]:
    if not path.is_file():
        return "device", 0  # /dev/full
    try:
        size = path.stat().st_size
    except OSError:
        return "missing", 0
    if size == 0:
        return ("full" if ref_bytes == 0 else "empty"), 0
    with open(path, "rb") as got, open(source, "rb") as want:
        left = min(size, ref_bytes)
        while left:
            n = min(left, 4 * MiB)
            if got.read(n) != want.read(n):
                return "corrupt", size
            left -= n
    if size > ref_bytes:
        return "longer", size
    return ("full" if size == ref_bytes else "prefix"), size


def _check(case: Case, opt: Options, work: Path, source: Path, total: int,
           procs: dict[int, subprocess.Popen], exit_at: dict[int, float], hung: set[int],
           t_fault: float | None, fault_note: str, outs: dict[int, Path], logs: dict[int, Path],
           report_path: Path) -> Outcome:  # fmt: skip
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        report = None
    status = str(report.get("status")) if report else "none"
    root_log = logs[ROOT].read_text(errors="replace") if logs[ROOT].exists() else ""
    named = named_by_root(report, root_log)
    for k in RECEIVERS:  # a node cut off from the root (-conrf) reports the tree below it
        log = logs[k].read_text(errors="replace") if logs[k].exists() else ""
        if "cut off from the root" in log:
            for name, codes in named_by_root(None, log).items():
                named.setdefault(name, set()).update(codes)
    # what the root read: the feeder's data, or (a read failure) the count it reports
    ref_bytes = total
    if case.fault == "lrf" and report and status != "collapsed":
        ref_bytes = int(report.get("bytes", total))
        fault_note += f"; the root read {ref_bytes / MiB:.1f} MiB"

    nodes: dict[int, NodeOutcome] = {}
    for k in NODES:
        p = procs.get(k)
        n = NodeOutcome(k)
        if p is not None:
            n.exit = p.returncode
            n.hung = k in hung
            if n.hung:
                n.tag = "H"
            elif k == case.victim and case.fault == "kill":
                n.tag = "K"
            elif k == case.victim and case.fault == "stop":
                n.tag = f"S{p.returncode}"
            else:
                n.tag = str(p.returncode)
            if k in exit_at and t_fault is not None:
                n.seconds = exit_at[k] - t_fault
        codes: set[str] = set()
        for name in (NAME[k], ADDR[k]):
            codes |= named.get(name, set())
        n.named = sorted(codes)
        if k != ROOT:
            n.state, n.size = _classify(outs[k], source, ref_bytes)
        nodes[k] = n
    others = {name: sorted(c) for name, c in named.items() if _index_of(name) is None}

    # the invariant
    violations: list[str] = []
    summary = status in ("ok", "failed")  # the root finished and summed up every node
    nnf_named = any("NNF" in c for c in named.values())
    for k in RECEIVERS:
        n = nodes[k]
        log = logs[k].read_text(errors="replace") if logs[k].exists() else ""
        orphan = "joined from" not in log and n.exit != 0
        if n.state == "full":
            n.covered = "complete"
        elif n.named:
            n.covered = "named"
        elif not summary and n.exit != 0:
            n.covered = "tree failed"
        elif orphan and nnf_named and n.state == "empty":
            n.covered = "orphan"
        else:
            n.covered = "SILENT"
            violations.append(f"n{k}: {n.state} output ({n.size} of {ref_bytes} bytes), exit "
                              f"{n.tag}, not named by the root (report {status})")  # fmt: skip
    ends = [exit_at[k] for k in exit_at if k != case.victim or case.fault != "stop"]
    last = (max(ends) - t_fault) if ends and t_fault is not None and not hung else None
    if not opt.keep:
        for k in RECEIVERS:
            if outs[k].parent == work and outs[k].is_file():
                outs[k].unlink(missing_ok=True)
    return Outcome(case, nodes, status, ref_bytes, last, fault_note, others, violations, work)


# ---------------------------------------------------------------- expectations


def check_expected(out: Outcome, exp: Expect) -> list[str]:
    """Differences between an outcome and what the case must show."""
    bad: list[str] = []
    for k, want in zip(NODES, exp.exits.split(), strict=True):
        n = out.nodes[k]
        ok = (want == "*" or (want == "H" and n.hung) or (want == "K" and n.tag == "K")
              or (want == "S" and n.tag.startswith("S") and not n.hung)
              or (want.isdigit() and not n.hung and k != out.case.victim
                  and str(n.exit) in want))  # fmt: skip
        if not ok:
            bad.append(f"{NAME[k]} exit {n.tag}, expected {want}")
    if exp.full != "*":
        must = {w for w in exp.full.split() if not w.endswith("?")}
        may = {w.rstrip("?") for w in exp.full.split()}
        got_full = set(out.full().split())
        if not must <= got_full <= may:
            bad.append(f"identical outputs on {' '.join(sorted(got_full)) or 'none'}, "
                       f"expected {exp.full or 'none'}")  # fmt: skip
    for item in exp.named.split():
        who, codes = item.split(":")
        got = out.named_other.get(who, [])
        if who == "R":
            got = out.nodes[ROOT].named
        elif who.isdigit():
            got = out.nodes[int(who)].named
        missing = set(codes.split("+")) - set(got)
        if missing:
            bad.append(f"{who} not named with {'+'.join(sorted(missing))} (named: {got})")
    if exp.status and out.status != exp.status:
        bad.append(f"report status {out.status}, expected {exp.status}")
    if exp.prompt is not None:
        for k in NODES:
            n = out.nodes[k]
            if k == out.case.victim:
                continue
            if n.hung or n.seconds is None or n.seconds > exp.prompt:
                when = "never" if n.seconds is None else f"{n.seconds:.2f} s"
                bad.append(f"{NAME[k]} did not exit within {exp.prompt:g} s (exit {n.tag} "
                           f"at {when})")  # fmt: skip
    if out.error:
        bad.append(out.error)
    if "TOO LATE" in out.fault_note:
        bad.append(f"the fault did not land as intended: {out.fault_note}")
    return bad


# ---------------------------------------------------------------- the table


COLUMNS = ["case", "fault landed", "exits R 2 3 4 5", "identical", "short", "named by root", "report",
           "fault→last exit", "invariant", "expected"]  # fmt: skip


def row(out: Outcome) -> list[str]:
    if out.skipped:
        return [out.case.id, "-", "-", "-", "-", "-", "-", "-", "skipped", out.skipped]
    exp = EXPECT.get(out.case.id)
    diff = check_expected(out, exp) if exp else ["no expectation"]
    if exp and exp.bug:
        verdict = "BUG (known)" if diff or out.violations else "BUG fixed?"
    else:
        verdict = "yes" if not diff else "NO: " + "; ".join(diff)
    last = "-" if out.fault_to_last_exit is None else f"{out.fault_to_last_exit:.2f} s"
    hung = f" hung:{','.join(NAME[k] for k in out.hung)}" if out.hung else ""
    silent = [f"n{k} ({n.state} {n.size / MiB:.1f}M, exit {n.tag})"
              for k, n in out.nodes.items() if n.covered == "SILENT"]  # fmt: skip
    inv = "ok" if out.invariant_ok else "SILENT: " + ", ".join(silent)
    return [out.case.id, out.fault_note, out.exits() + hung, out.full() or "-", out.short(), out.named(),
            out.status, last, inv, verdict]  # fmt: skip


def render(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*COLUMNS)] + [fmt.format(*r) for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--case", action="append", default=[],
                    help="run only cases whose id contains this (repeatable)")  # fmt: skip
    ap.add_argument("--list", action="store_true", help="list the case ids")
    ap.add_argument("--size", type=int, default=48, help="stream size in MiB (default 48)")
    ap.add_argument(
        "--bound", type=float, default=10.0, help="seconds for every exit after a fault"
    )
    ap.add_argument("--workdir", help="keep every case's logs here (default: a temporary "
                    "directory, removed unless a case fails)")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the outputs too")
    args = ap.parse_args(argv)
    cases = [c for c in CASES if not args.case or any(s in c.id for s in args.case)]
    if args.list:
        print("\n".join(c.id for c in cases))
        return 0
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    base.mkdir(parents=True, exist_ok=True)
    opt = Options(size=args.size * MiB, bound=args.bound, keep=args.keep)
    opt.source = make_source(base / "source.bin", opt.size)
    rows = []
    failures = 0
    try:
        for c in cases:
            t0 = time.monotonic()
            try:
                out = run_case(c, opt, base / c.id)
            except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
                rows.append([c.id] + ["-"] * (len(COLUMNS) - 2) + [f"NO: harness error: {exc}"])
                failures += 1
                print(f"{c.id}: harness error: {exc}", file=sys.stderr, flush=True)
                continue
            r = row(out)
            rows.append(r)
            if not r[-1].startswith(("yes", "BUG (known)", "skipped")):
                failures += 1
            print(f"{c.id}: {time.monotonic() - t0:.1f} s; {r[1]}; {r[2]} | {r[-1]}",
                  file=sys.stderr, flush=True)  # fmt: skip
    finally:
        if failures:
            print(f"the logs of every case are in {base}", file=sys.stderr)
        elif not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    print(render(rows, args.markdown))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
