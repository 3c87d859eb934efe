"""``beo provision node``: what a freshly booted node runs to receive its image.

1. From its DHCP lease (``--lease FILE``: udhcpc's environment, see
   :mod:`beokit.provision.lease`) it learns its name, the server and the path of
   its topology file (option 224), and fetches that file (TFTP, or HTTP).
2. It reports to the server's round (UDP, :mod:`beokit.provision.report`) and is
   told its round, its children (failover lists), the pinned sha256 and size.
3. It runs its nettee receiver with the topology's port and waits, ``-heal
   -digest -fsync``, writing to the target: a file or block device, or
   ``dir:PATH`` (a tar unpacked there); reports ready, joined, receiving (bytes).
4. When the stream ends it compares the target with the digest pinned at the
   round's start: a file or device is read back, except a regular file on a
   memory filesystem (tmpfs), which nettee -digest already hashed from the file
   as it was written (``--read-back`` reads it again anyway); it reports
   verified or failed with the code.  A round that went on without it (it
   booted late): it waits for the follow-up round the server gives it.  Every
   wait is bounded (``--wait``).

Exit status: 0 verified, 1 failed or given up, 2 bad input.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from beokit.errors import BeokitError, UsageError
from beokit.provision import lease as lease_mod
from beokit.provision import plan, report
from beokit.provision.fetch import fetch

STATUS_RE = re.compile(r"status: (\d+) bytes")
REPORT_EVERY = 1.0  # a report at every change of stage, else once a second
POLL = 0.05  # s between looks where no event wakes the loop (before nettee listens)
FINAL_TRIES = 5  # unanswered final reports before the node stops saying it


@dataclass
class NodeOptions:
    lease: lease_mod.NodeLease
    target: str = ""  # "" = the server's provision.target
    tftp_port: int = 69
    http_base: str = ""
    report_port: int = 0  # 0 = from the topology file
    wait: float = 0.0  # overall bound; 0 = parent_wait + start margin
    nettee: list[str] = field(default_factory=lambda: [sys.executable, "-m", "beokit.nettee.cli"])
    bind: str = ""
    verbose: bool = False
    read_back: bool = False  # read the target back even where nettee's digest is that check


class NetteeReceiver:
    """One run of the node's nettee: its events, its progress, its end."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        rfd, wfd = os.pipe()
        env = {**env, "NETTEE_EVENT_FD": str(wfd)}
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, pass_fds=(wfd,), env=env,
                                     start_new_session=True)  # fmt: skip
        os.close(wfd)
        self.formed = False
        self.finished = False  # the node command has taken its end
        self.end: dict | None = None
        self.bytes = 0
        self.tail: list[str] = []
        self.started = time.monotonic()
        self.changed = threading.Event()  # formed, first bytes, or its event pipe closed (exit)
        self.readers = [threading.Thread(target=self._events, args=(rfd,), daemon=True),
                        threading.Thread(target=self._log, daemon=True)]  # fmt: skip
        for t in self.readers:
            t.start()

    def _events(self, fd: int) -> None:
        import json

        with os.fdopen(fd, "rb") as fh:
            for line in fh:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == "formed":
                    self.formed = True
                    self.changed.set()
                elif ev.get("event") == "end":
                    self.end = ev
        try:  # the pipe closes as nettee exits: its status follows at once
            self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            pass  # a grandchild holds the pipe: the node's loop looks at its next report
        self.changed.set()

    def _log(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            m = STATUS_RE.search(line)
            if m:
                first = not self.bytes
                self.bytes = int(m.group(1))
                if first:
                    self.changed.set()  # the node's stage moves on to receiving
                continue
            self.tail = (self.tail + [line])[-8:]

    def done(self) -> bool:
        return self.proc.poll() is not None

    def drain(self, timeout: float = 1.0) -> None:
        """After the exit: until its end event and last log lines are read (both pipes
        at EOF; a grandchild holding one open is given ``timeout`` s at most)."""
        deadline = time.monotonic() + timeout
        for t in self.readers:
            t.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            import signal

            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def listening(port: int) -> bool:
    """Something listens on TCP ``port`` here (/proc/net/tcp, no connection made:
    a probe would count as a stranger at the nettee gate)."""
    want = f":{port:04X} "
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) > 3 and (parts[1] + " ").endswith(want) and parts[3] == "0A":
                        return True
        except OSError:
            continue
    return False


def output_args(target: str) -> list[str]:
    """nettee's local output for a target: a file or device (fsync'ed), or a directory
    the stream (a tar) is unpacked into."""
    if target.startswith("dir:"):
        d = target[4:]
        return ["-out", "socket", "-cmd", f"mkdir -p {shlex.quote(d)} && tar -C {shlex.quote(d)} "
                "-x -f - && sync"]  # fmt: skip
    return ["-out", target, "-fsync"]


def _hasher(sha256: str, xxh3: str) -> tuple[object, str, str]:
    """xxh3_128 when the round pinned one and xxhash is here (10x faster to read
    back), else sha256."""
    if xxh3:
        try:
            import xxhash

            return xxhash.xxh3_128(), xxh3, "xxh3_128"
        except ImportError:
            pass
    return hashlib.sha256(), sha256, "sha256"


MEMORY_FS = frozenset({"tmpfs", "ramfs"})
_OCTAL = re.compile(r"\\([0-7]{3})")  # mountinfo's escapes: \040 a space, \011 a tab, ...


def filesystem_type(path: str) -> str:
    """The type of the filesystem ``path`` is on (/proc/self/mountinfo: the last
    mount at the longest mount point above it), or "" if unknown."""
    path = os.path.realpath(path)
    best, kind = -1, ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if " - " not in line or len(fields) < 5:
                    continue
                mp = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
                under = path == mp or path.startswith(mp.rstrip("/") + "/")
                if under and len(mp) >= best:
                    best, kind = len(mp), line.split(" - ", 1)[1].split()[0]
    except OSError:
        return ""
    return kind


def hashed_as_written(target: str, xxh3: str, stream_digest: str) -> str:
    """Why nettee's own digest is the read-back, or "" when it is not.

    nettee -digest on a regular file hashes the file itself as it grows (pread
    behind the writer, nettee/filehash.py).  On a memory filesystem there is no
    medium under the page cache, so reading it again after the stream would hash
    the same pages a second time, at every node at once when the stream ends."""
    if not (xxh3 and stream_digest == f"xxh3_128:{xxh3}"):
        return ""
    try:
        if not stat.S_ISREG(os.stat(target).st_mode):
            return ""
    except OSError:
        return ""
    fs = filesystem_type(target)
    if fs not in MEMORY_FS:
        return ""
    return f"xxh3_128 {xxh3[:16]}... hashed from {target} as nettee wrote it ({fs})"


def verify(target: str, size: int, sha256: str, xxh3: str = "", stream_digest: str = "",
           read_back: bool = False) -> tuple[bool, str]:
    """Compare the target with the digest pinned when the round started: from
    nettee's own hash of the file where that is the same check (a memory
    filesystem, see hashed_as_written), else by reading the target back (its
    first ``size`` bytes).  ``read_back``: always read it back."""
    if target.startswith("dir:") or not (sha256 or xxh3):
        return True, "nettee -digest agreed (no file to read back)"
    why = "" if read_back else hashed_as_written(target, xxh3, stream_digest)
    if why:
        return True, why
    h, want, kind = _hasher(sha256, xxh3)
    left = size
    try:
        with open(target, "rb") as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            while left > 0:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    break
                h.update(chunk)  # type: ignore[attr-defined]
                left -= len(chunk)
    except OSError as e:
        return False, f"cannot read {target} back: {e.strerror}"
    if left > 0:
        return False, f"{target} holds {size - left} of {size} bytes"
    got = h.hexdigest()  # type: ignore[attr-defined]
    if got != want:
        return False, f"{kind} of {target} is {got[:16]}..., the image's {want[:16]}..."
    return True, f"{kind} {want[:16]}... read back from {target}"


class NodeCommand:
    """The node's loop: report, take the round's orders, run nettee, verify."""

    def __init__(self, opts: NodeOptions, topo: dict[str, str]) -> None:
        self.opts = opts
        self.topo = topo
        self.name = opts.lease.name
        self.port = int(topo.get("port", plan.DEFAULT_PORT))
        rport = opts.report_port or int(topo.get("report_port", 0)) or self.port + 2
        self.server = (opts.lease.server, rport)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(REPORT_EVERY)
        self.stage, self.round, self.code, self.detail = "booted", 0, "", ""
        self.recv: NetteeReceiver | None = None
        self.answer: report.Answer | None = None
        parent_wait = float(topo.get("parent_wait", plan.DEFAULT_PARENT_WAIT))
        self.deadline = time.monotonic() + (opts.wait or parent_wait + 600)

    def say(self, text: str) -> None:
        if self.opts.verbose:
            sys.stderr.write(f"beo provision node {self.name}: {text}\n")

    def exchange(self) -> report.Answer | None:
        nbytes = self.recv.bytes if self.recv is not None else 0
        msg = report.encode_report(report.StageReport(self.name, self.stage, self.round, nbytes,
                                                 self.code, self.detail))  # fmt: skip
        try:
            self.sock.sendto(msg, self.server)
            while True:
                data, peer = self.sock.recvfrom(report.MAX_DATAGRAM)
                if peer[0] == self.server[0]:
                    return report.decode_answer(data)
        except (TimeoutError, report.BadReport):
            return None
        except OSError as e:  # no route yet, ICMP refused: the server is not there (yet)
            self.say(f"report to {self.server}: {e.strerror}")
            time.sleep(REPORT_EVERY)
            return None

    def nettee_argv(self, ans: report.Answer) -> list[str]:
        topo = plan.Topology((self.name,), port=self.port,
                             join_wait=float(self.topo.get("join_wait", plan.DEFAULT_JOIN_WAIT)),
                             parent_wait=float(self.topo.get("parent_wait",
                                                             plan.DEFAULT_PARENT_WAIT)))  # fmt: skip
        me = plan.NodePlan(self.name, int(self.topo.get("position", 1)) or 1, "", (), ())
        lists = tuple(tuple(hl) for hl in (ans.next or []))
        args = plan.nettee_args(topo, me, lists) + ["-v", "13"]
        if self.opts.bind:
            args += ["-bind", self.opts.bind]
        return self.opts.nettee + args + output_args(self.target(ans))

    def target(self, ans: report.Answer | None) -> str:
        return self.opts.target or (ans.target if ans is not None else "")

    def start_round(self, ans: report.Answer) -> None:
        if self.recv is not None:
            self.recv.stop()
        self.round, self.answer = ans.round, ans
        self.stage, self.code, self.detail = "booted", "", ""
        if not self.target(ans):
            raise UsageError("no target: give --target or set provision.target on the server")
        argv = self.nettee_argv(ans)
        self.say(f"round {ans.round}: {shlex.join(argv[len(self.opts.nettee):])}")
        self.recv = NetteeReceiver(argv, dict(os.environ))

    def step(self) -> None:
        """Move the stage on from what the receiver shows."""
        r = self.recv
        if r is None or self.stage in report.FINAL:
            return
        if self.stage == "booted" and listening(self.port):
            self.stage = "ready"
        if r.formed and self.stage in ("booted", "ready"):
            self.stage = "joined"
        if r.bytes and self.stage in ("ready", "joined"):
            self.stage = "receiving"
        if r.done() and not r.finished:
            r.finished = True
            r.drain()
            self.finish(r)

    def finish(self, r: NetteeReceiver) -> None:
        end = r.end or {}
        status, got = end.get("status", ""), int(end.get("bytes", 0) or 0)
        r.bytes = got or r.bytes
        # exit 0: the stream completed here (failures below handled, e.g. NNF: a
        # neighbour that never booted); the read-back decides
        if r.proc.returncode == 0 and got:
            assert self.answer is not None
            self.stage = "written"
            ok, why = verify(self.target(self.answer), self.answer.size or got, self.answer.sha256,
                             self.answer.xxh3, str(end.get("digest", "")), self.opts.read_back)
            self.stage, self.code, self.detail = ("verified", "", why) if ok else ("failed", "BDG", why)
        elif not r.formed and not got:
            self.stage, self.code = "missed", status or "NRF"
            self.detail = "no parent came this round: waiting for the next"
        else:
            self.stage, self.code = "failed", status or f"exit {r.proc.returncode}"
            self.detail = "; ".join(r.tail[-3:])[:400]
        self.say(f"{self.stage} {self.code} {self.detail}")

    def run(self) -> int:
        unanswered = 0
        sent: tuple[str, int] | None = None  # (stage, round) last reported
        sent_at = -REPORT_EVERY
        while time.monotonic() < self.deadline:
            self.step()
            now = time.monotonic()
            # every answer used to be followed by the next report at once: each node
            # and the round's server spun at ~20,000 datagrams/s, which at 32 nodes on
            # two cores slowed the stream itself
            if (self.stage, self.round) == sent and now - sent_at < REPORT_EVERY:
                if self.recv is not None and not self.recv.finished and self.stage != "booted":
                    # asleep until nettee has formed, its first bytes came, it exited,
                    # or the next report is due: at N = 32, 20 looks a second at every
                    # node took 0.07 of a core from the stream
                    self.recv.changed.wait(sent_at + REPORT_EVERY - now)
                    self.recv.changed.clear()
                else:  # booted: nettee not listening yet (no event says when)
                    time.sleep(POLL)
                continue
            sent, sent_at = (self.stage, self.round), now
            ans = self.exchange()
            if ans is None:
                unanswered += 1
                if self.stage in report.FINAL and unanswered >= FINAL_TRIES:
                    break  # said often enough; the server's round has ended
                continue
            unanswered = 0
            if ans.stop:
                break
            if ans.go and ans.round != self.round:
                self.start_round(ans)
        else:
            self.say("gave up waiting (--wait)")
        if self.recv is not None:
            self.recv.stop()
        return 0 if self.stage == "verified" else 1


def run_node(opts: NodeOptions) -> int:
    lease = opts.lease
    try:
        text = fetch(lease.server, lease.topology, tftp_port=opts.tftp_port,
                     http_base=opts.http_base)  # fmt: skip
    except OSError as e:
        raise BeokitError(f"cannot fetch the topology: {e}") from None
    topo = plan.parse_topology_file(text.decode(errors="replace"))
    if topo.get("node") not in (None, lease.name):
        raise UsageError(f"the topology file {lease.topology} is for {topo.get('node')!r}, "
                         f"not {lease.name!r}")  # fmt: skip
    return NodeCommand(opts, topo).run()


def read_lease(path: str) -> dict[str, str]:
    try:
        return lease_mod.parse_env_text(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read --lease {path!r}: {e.strerror}") from None
