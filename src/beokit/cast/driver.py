"""The I/O driver of ``beo cast``: receivers, the root nettee, the feeder.

One run (:func:`run_once`):

1. start :mod:`beokit.cast.receiver` on every node through the tree
   launcher (:mod:`beokit.launch`, what ``beo run`` does: O(log N) ssh hops,
   backend ``-R ssh|rsh|exec|TEMPLATE``); the run's spec, with a fresh
   per-run secret, rides to every receiver on its stdin inside the launch
   channels (``--input``), never on a command line.  Every receiver calls
   this root back over TCP (:class:`Hub`), both sides prove the secret, and
   the rest of the run goes over that connection;
2. wait (bounded by ``connect_timeout``) for every node's answer; nodes that
   cannot be started or cannot write DEST are reported and left out, and
   the chains are planned over the others (:func:`plan.replan`);
3. tell every node its nettee arguments (its child in the chain), start the
   root nettee, and feed it from the source (file, device, stdin, or
   ``tar`` of a directory), counting and hashing what goes in;
4. wait for the root's ``-report`` and every node's own result (after its
   fsync) and turn them into one row per node (:func:`plan.rows`).
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from beokit.cast import plan
from beokit.cast.plan import Chain, Row
from beokit.errors import UsageError
from beokit.launch.backends import Backend
from beokit.nettee.localchain import free_port

CHUNK = 1 << 20
FORM_GRACE = 15.0  # after go, the root must have formed the tree within this (+connect timeout)


@dataclass
class Job:
    """Everything one cast needs; built by the command from its arguments."""

    source: str  # a path, or "-" for stdin
    source_kind: str  # file | stdin | dir
    hosts: list[str]
    chains: list[Chain]
    dest: str
    backend: Backend
    remote_python: str
    port: int | None = None
    heal: bool = True
    fsync: bool = True
    excludes: list[str] = field(default_factory=list)
    progress_nodes: bool = False
    connect_timeout: float = 10.0
    finish_timeout: float = 120.0
    resolve: dict[str, str] = field(default_factory=dict)
    fanout: int = 8  # the launch tree's k
    listen: str = ""  # where receivers call back (default: see callback_address)
    bind_local: bool = False  # -R exec: each receiver listens on its host's address
    as_root: bool = True


@dataclass
class Outcome:
    rows: list[Row]
    bytes: int = 0
    seconds: float = 0.0  # the root nettee's life: start, chain forming, stream, reports
    stream_seconds: float = 0.0  # the stream alone, as the root nettee measured it
    launch_seconds: float = 0.0
    launch_depth: int = 0  # ssh hops in sequence of the launch tree
    refused: int = 0  # callback connections that failed the handshake
    digest: str | None = None
    algo: str | None = None
    flags: list[str] = field(default_factory=list)
    root_log: list[str] = field(default_factory=list)
    error: str = ""


# --------------------------------------------------------------- nettee


def site_free_path() -> str:
    """``PYTHONPATH`` for this interpreter run without site (``-S``): no .pth processing.

    A python's site set-up costs ~100 ms of CPU; a cast starts a receiver per
    node, and on one box (``-R exec``) they all queue on the same cores.  The
    receivers and nettee need only the standard library and beokit, so this
    interpreter's ``sys.path`` is all they need.
    """
    return os.pathsep.join(p for p in sys.path if p)


def nettee_flags() -> set[str]:
    """The resilience flags given to every nettee of a run (this beokit's nettee has both).

    ``BEOKIT_CAST_FLAGS`` (tests) runs as if nettee knew only the listed ones
    (``""``: none), to exercise the fallback used with ``--no-heal``.
    """
    forced = os.environ.get("BEOKIT_CAST_FLAGS")
    if forced is not None:
        return {f for f in forced.split(",") if f in plan.RESILIENCE_FLAGS}
    return set(plan.RESILIENCE_FLAGS)


def digest_algo() -> str:
    """The hash the feeder and the receivers use when nettee has no -digest."""
    try:
        import xxhash  # noqa: F401

        return "xxh3_128"
    except ImportError:
        return "blake2b"


# ------------------------------------------------------------ receivers


class Receiver:
    """One node's receiver, seen from the root: its callback connection (JSON lines)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.hello: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self.progress = 0
        self.answered = threading.Event()
        self.finished = threading.Event()
        self.conn: socket.socket | None = None
        self.lock = threading.Lock()

    def attach(self, conn: socket.socket, rfile: Any) -> None:
        self.conn = conn
        threading.Thread(target=self._read, args=(rfile,), daemon=True).start()

    def fail(self, code: str, why: str) -> None:
        """No answer will come: the node is out (once)."""
        with self.lock:
            if self.hello is None:
                self.hello = {"t": "fail", "code": code, "why": why}
        self.answered.set()
        self.finished.set()

    def _read(self, rfile: Any) -> None:
        try:
            for raw in rfile:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                t = msg.get("t")
                if t in ("up", "fail") and self.hello is None:
                    with self.lock:
                        self.hello = msg
                    self.answered.set()
                elif t == "progress":
                    self.progress = int(msg.get("bytes") or 0)
                elif t == "result":
                    self.result = msg
                    self.finished.set()
        except (OSError, ValueError):
            pass
        # the connection closed: whatever was not said will not be
        self.fail("DOWN", "the receiver closed its connection before answering")

    def send(self, msg: dict[str, Any]) -> bool:
        if self.conn is None:
            return False
        try:
            self.conn.sendall((json.dumps(msg) + "\n").encode())
            return True
        except OSError:
            return False

    def close(self) -> None:
        """Close the connection: the receiver stops nettee (if any) and exits."""
        if self.conn is not None:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.conn.close()


class Hub:
    """Where receivers call back: accept, authenticate, hand each to its Receiver.

    A connection must answer the challenge within HELLO_TIMEOUT with a valid
    MAC for a host of this run that has no connection yet; anything else is
    closed without a word.
    """

    HELLO_TIMEOUT = 10.0

    def __init__(self, secret: str, receivers: dict[str, Receiver], addr: str) -> None:
        self.secret = secret
        self.receivers = receivers
        self.sock = socket.create_server((addr, 0), backlog=1024)
        host, port = self.sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._greet, args=(conn,), daemon=True).start()

    def _greet(self, conn: socket.socket) -> None:
        rfile = None
        try:
            conn.settimeout(self.HELLO_TIMEOUT)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nonce = os.urandom(16).hex()
            conn.sendall((json.dumps({"t": "challenge", "nonce": nonce}) + "\n").encode())
            rfile = conn.makefile("rb")
            hi = json.loads(rfile.readline(4096) or b"{}")
            host, theirs = hi.get("host"), hi.get("nonce")
            r = self.receivers.get(host) if isinstance(host, str) else None
            if (hi.get("t") != "hi" or r is None or not isinstance(theirs, str)
                    or not plan.mac_ok(self.secret, hi.get("mac"), "node", nonce, theirs, host)):
                raise PermissionError("not a receiver of this run")  # fmt: skip
            with r.lock:
                if r.conn is not None or r.hello is not None:
                    raise PermissionError(f"{host} is connected already")
                r.conn = conn
            mac = plan.channel_mac(self.secret, "root", theirs, nonce, host)
            conn.sendall((json.dumps({"t": "ok", "mac": mac}) + "\n").encode())
            conn.settimeout(None)
            r.attach(conn, rfile)
        except (OSError, ValueError, AttributeError):
            self.refused += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def callback_address(job: Job, hosts: list[str]) -> str:
    """This machine's address as the nodes reach it: ``--listen``, else the source
    address of the route to the first node (127.0.0.1 on one machine)."""
    if job.listen:
        return job.listen
    if job.backend.kind == "exec":
        return "127.0.0.1"
    for h in hosts:
        try:
            info = socket.getaddrinfo(_address(job, h), 9, type=socket.SOCK_DGRAM)
        except OSError:
            continue
        family, _, _, _, sa = info[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(sa)  # UDP: no packet; the kernel picks the route and source
                return str(probe.getsockname()[0])
            except OSError:
                continue
    return "0.0.0.0"


class Launch:
    """The receivers, started through the tree launcher (a :class:`launch.agent.Node`)."""

    def __init__(self, job: Job, hosts: list[str], payload: bytes, addr: str,
                 receivers: dict[str, Receiver]) -> None:  # fmt: skip
        from beokit.launch import plan as lplan
        from beokit.launch.agent import Node

        self.receivers = receivers
        command = f"{job.remote_python} -m beokit.cast.receiver"
        if job.backend.kind == "exec":  # this machine: no site set-up (see site_free_path)
            path = shlex.quote(site_free_path())
            command = f"PYTHONPATH={path} {job.remote_python} -S -m beokit.cast.receiver"
        the_plan = lplan.root_plan("tree", hosts, job.fanout)
        self.depth = lplan.depth("tree", len(hosts), job.fanout)
        cfg = {"command": command, "fanout": the_plan.child_fanout, "timeout": 0,
               "connect_timeout": job.connect_timeout, "backend": job.backend.spec(),
               # agents listen for their own children on their own host: all of its
               # addresses (advertising their name), or loopback on this machine
               "agent_bind": "127.0.0.1" if job.backend.kind == "exec" else "0.0.0.0",
               "leaf_agents": False, "barrier": False}  # fmt: skip
        advertise = addr
        if addr in ("0.0.0.0", "::"):
            advertise = "@ssh" if job.backend.kind == "ssh" else socket.gethostname()
        self.node = Node(None, the_plan.groups, the_plan.window, cfg, self._emit, addr,
                         advertise, payload)  # fmt: skip
        self.thread = threading.Thread(target=self.node.run, daemon=True)
        self.thread.start()

    def _emit(self, msg: dict[str, Any]) -> None:
        if msg.get("t") != "res":
            return
        r = self.receivers.get(str(msg.get("h")))
        if r is None:
            return
        if r.conn is not None:
            return  # it called back: its connection tells the rest (and its end)
        if msg.get("error") or msg.get("rc") != 0:
            lines = [ln.strip() for ln in str(msg.get("err") or "").splitlines() if ln.strip()]
            why = msg.get("error") or (lines[-1] if lines else f"exit status {msg.get('rc')}")
            r.fail("DOWN", f"receiver did not start: {why}")
        else:
            r.fail("DOWN", "the receiver ended without calling back")

    def close(self, grace: float = 5.0) -> None:
        """Every receiver has been told to end: wait for the tree, kill what lingers."""
        self.thread.join(grace)
        if self.thread.is_alive():
            self.node.close()
            self.thread.join(2.0)


# --------------------------------------------------------------- feeder


def direct_source(job: Job, algo: str | None) -> bool:
    """Can the root nettee read SOURCE itself (``-in FILE``)?

    Yes for a regular file when nettee computes the digest (-digest): no
    feeder copy, and with -heal the root replays a dead child's bytes from
    the file (sendfile) instead of keeping an in-memory window of the stream.
    """
    if job.source_kind != "file" or algo is not None:
        return False
    try:
        return stat.S_ISREG(os.stat(job.source).st_mode)
    except OSError:
        return False


class FileProgress:
    """Progress of a root nettee that reads SOURCE itself: its file offset."""

    def __init__(self, job: Job, proc: subprocess.Popen) -> None:
        self.path = os.path.realpath(job.source)
        self.pid = proc.pid
        self.fd: str | None = None
        self.last = 0
        self.digest: str | None = None
        self.error = ""

    def start(self) -> None:
        """Nothing to run: the root nettee reads the file."""

    def join(self, timeout: float) -> None:
        """Nothing to wait for."""

    @property
    def bytes(self) -> int:
        try:
            if self.fd is None:
                for fd in os.listdir(f"/proc/{self.pid}/fd"):
                    if os.readlink(f"/proc/{self.pid}/fd/{fd}") == self.path:
                        self.fd = fd
                        break
            if self.fd is not None:
                with open(f"/proc/{self.pid}/fdinfo/{self.fd}") as fh:
                    self.last = max(self.last, int(fh.readline().split()[1]))  # "pos: N"
        except (OSError, ValueError, IndexError):
            pass  # not open yet, or ended: the last value stands
        return self.last


class Feeder:
    """Copies the source into the root nettee's stdin, counting (and hashing)."""

    def __init__(self, job: Job, sink: Any, algo: str | None) -> None:
        self.job = job
        self.sink = sink
        self.algo = algo
        self.bytes = 0
        self.digest: str | None = None
        self.error = ""
        self.tar: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _open(self) -> int:
        if self.job.source_kind == "stdin":
            return sys.stdin.fileno()
        if self.job.source_kind == "dir":
            self.tar = subprocess.Popen(plan.tar_create(self.job.source, self.job.excludes),
                                        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
            assert self.tar.stdout is not None
            return self.tar.stdout.fileno()
        return os.open(self.job.source, os.O_RDONLY)

    def _run(self) -> None:
        from beokit.cast.receiver import hasher

        fd = -1
        out = self.sink.fileno()
        try:
            fd = self._open()
            h = hasher(self.algo) if self.algo else None
            if h is None and hasattr(os, "splice"):
                self._splice(fd, out)
            else:
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                while n := os.readv(fd, [buf]):
                    if h is not None:
                        h.update(view[:n])
                    done = 0
                    while done < n:
                        done += os.write(out, view[done:n])
                    self.bytes += n
                if h is not None:
                    self.digest = h.hexdigest()
        except BrokenPipeError:
            self.error = "the root nettee stopped reading"
        except OSError as exc:
            self.error = f"cannot read {self.job.source}: {exc.strerror}"
        finally:
            try:
                self.sink.close()
            except OSError:
                pass
            if fd >= 0 and self.job.source_kind == "file":
                os.close(fd)
            if self.tar is not None:
                if self.error:
                    self.tar.kill()
                rc = self.tar.wait()
                if rc != 0 and not self.error:
                    self.error = f"tar exited with status {rc} reading {self.job.source}"

    def _splice(self, fd: int, out: int) -> None:
        """Zero-copy: nettee computes the digest itself (-digest)."""
        while True:
            try:
                n = os.splice(fd, out, CHUNK)
            except OSError as exc:
                if exc.errno == 22:  # EINVAL: this fd pair cannot splice; copy instead
                    while data := os.read(fd, CHUNK):
                        os.write(out, data)
                        self.bytes += len(data)
                    return
                raise
            if n == 0:
                return
            self.bytes += n


def source_size(job: Job) -> int | None:
    """Bytes the stream will carry, when known (a directory: an estimate)."""
    if job.source_kind == "stdin":
        return None
    if job.source_kind == "dir":
        total = 0
        for dirpath, _dirs, files in os.walk(job.source):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                    total += min(st.st_size, st.st_blocks * 512) + 512
                except OSError:
                    pass
        return total
    st = os.stat(job.source)
    if stat.S_ISBLK(st.st_mode):
        fd = os.open(job.source, os.O_RDONLY)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    return st.st_size


# ------------------------------------------------------------------ run

Progress = Callable[[int, dict[str, int]], None]


def _address(job: Job, name: str) -> str:
    return job.resolve.get(name, name)


class RootNettee:
    """The root's nettee, started (and importing) while the receivers launch.

    Its arguments (the chain heads) are known only when every node has
    answered; they follow on a pipe, so the ~0.2 s of interpreter start-up
    and imports is spent during the launch, not in the stream's time.
    """

    BOOT = ("import json, os, sys\nfrom beokit.nettee.cli import main\n"
            "with os.fdopen(int(sys.argv[1])) as f:\n    a = json.loads(f.readline() or 'null')\n"
            "sys.exit(0 if a is None else main(a))")  # fmt: skip

    def __init__(self, secret: str, stdin: bool = True) -> None:
        r, self._args = os.pipe()
        env = dict(os.environ, NETTEE_SECRET=secret, PYTHONPATH=site_free_path())
        try:
            self.proc = subprocess.Popen([sys.executable, "-S", "-c", self.BOOT, str(r)],
                                         stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, env=env, pass_fds=(r,),
                                         start_new_session=True)  # fmt: skip
        finally:
            os.close(r)

    def start(self, args: list[str]) -> None:
        with os.fdopen(self._args, "w") as fh:
            fh.write(json.dumps(args) + "\n")

    def cancel(self) -> None:
        """Not needed after all: it reads no arguments and exits 0."""
        try:
            os.close(self._args)
        except OSError:
            pass
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def await_answers(receivers: dict[str, Receiver], deadline: float, timeout: float) -> None:
    """Wait (until ``deadline``) for every receiver's up/fail; the silent ones are DOWN."""
    for r in receivers.values():
        if not r.answered.wait(max(0.0, deadline - time.monotonic())):
            r.fail("DOWN", f"no contact within {timeout:g} s")
            r.close()


def run_once(job: Job, hosts: list[str], chains: list[Chain], *, attempt: int = 1,
             on_progress: Progress | None = None,
             on_stage: Callable[[str], None] | None = None) -> Outcome:  # fmt: skip
    """Distribute the source to ``hosts`` along ``chains``; one row per host."""
    stage = on_stage or (lambda _s: None)
    supported = nettee_flags()
    extra = plan.resilience_args(job.heal, supported)
    algo = None if plan.DIGEST_FLAG in extra else digest_algo()
    secret = secrets.token_hex(32)
    kind = plan.dest_kind(job.dest, job.source_kind)
    binds = {h: _address(job, h) for h in hosts} if job.bind_local else {}
    if job.port:
        port = job.port
    elif job.bind_local:
        addrs = sorted({a for a in binds.values() if plan.is_loopback(a)})
        port = free_port(addrs or ["127.0.0.1"])
    else:
        port = secrets.SystemRandom().randrange(20000, 60000)
    t0 = time.monotonic()
    stage(f"starting receivers on {len(hosts)} node(s)")
    direct = direct_source(job, algo)
    root_nettee = RootNettee(secret, stdin=not direct)
    receivers = {h: Receiver(h) for h in hosts}
    addr = callback_address(job, hosts)
    try:
        hub = Hub(secret, receivers, addr)
    except OSError as exc:
        root_nettee.cancel()
        out = Outcome(rows=[], algo=algo, flags=extra)
        out.error = f"cannot listen on {addr} for the receivers: {exc.strerror}"
        launch_fail = {h: {"t": "fail", "code": "DOWN", "why": out.error} for h in hosts}
        out.rows = plan.rows(hosts, chains, launch=launch_fail, report=None, results={},
                             source_digest=None, stream_bytes=None, kind=kind,
                             attempt=attempt)  # fmt: skip
        return out
    spec = plan.receiver_spec(secret=secret, callback=hub.address, dest=job.dest, kind=kind,
                              digest=algo, fsync=job.fsync, progress=job.progress_nodes,
                              bind_local=job.bind_local,
                              resolve={h: binds[h] for h in hosts if h in binds
                                       and binds[h] != h})  # fmt: skip
    payload = json.dumps(spec, separators=(",", ":")).encode()
    if len(payload) > plan.MAX_SPEC:  # thousands of --resolve entries: say so, start nothing
        root_nettee.cancel()
        hub.close()
        raise UsageError(f"the receivers' spec is {len(payload)} bytes, more than "
                         f"{plan.MAX_SPEC}: too many --resolve entries for one run")  # fmt: skip
    launcher = Launch(job, hosts, payload, addr, receivers)
    # every launch step has its own connect timeout: the deepest host may need them all
    budget = job.connect_timeout * max(1, launcher.depth)
    await_answers(receivers, t0 + budget, budget)
    hub.close()
    launch = {h: dict(r.hello or {}) for h, r in receivers.items()}
    alive = {h for h, m in launch.items() if m.get("t") == "up"}
    live_chains = plan.replan(chains, alive)
    launch_seconds = time.monotonic() - t0
    out = Outcome(rows=[], algo=algo, flags=extra, launch_seconds=launch_seconds,
                  launch_depth=launcher.depth, refused=hub.refused)  # fmt: skip
    if not live_chains:
        root_nettee.cancel()
        for r in receivers.values():
            r.close()
        launcher.close()
        out.rows = plan.rows(hosts, chains, launch=launch, report=None, results={},
                             source_digest=None, stream_bytes=None, kind=kind,
                             attempt=attempt)  # fmt: skip
        out.error = "no node could be started"
        return out
    nxt = plan.links(live_chains)
    via = {h: c for c in live_chains for h in c.hosts}
    for h in sorted(alive):
        child = nxt.get(h)
        child_addr = _address(job, via[h].data_name(child)) if child else None
        args = plan.receiver_args(host=h, port=port, dest=plan.expand_dest(job.dest, h),
                                  kind=kind, child=child_addr, bind=binds.get(h), extra=extra,
                                  as_root=job.as_root)  # fmt: skip
        receivers[h].send({"t": "go", "args": args})
    work = tempfile.TemporaryDirectory(prefix="beo-cast-")
    report_path = os.path.join(work.name, "report.json")
    heads = [_address(job, c.data_name(c.hosts[0])) for c in live_chains]
    stage(f"streaming to {len(alive)} node(s) in {len(live_chains)} chain(s)")
    start = time.monotonic()
    root_nettee.start(plan.root_args(children=heads, port=port, report=report_path, extra=extra,
                                     source=os.path.abspath(job.source) if direct else "-"))  # fmt: skip
    root = root_nettee.proc
    log: collections.deque[str] = collections.deque(maxlen=200)
    formed = threading.Event()

    def read_root_log() -> None:
        assert root.stderr is not None
        for raw in root.stderr:
            line = raw.decode(errors="replace").rstrip()
            log.append(line)
            if "tree formed" in line:
                formed.set()

    logger = threading.Thread(target=read_root_log, daemon=True)
    logger.start()
    feeder: Feeder | FileProgress = (FileProgress(job, root) if direct
                                     else Feeder(job, root.stdin, algo))  # fmt: skip
    feeder.start()
    form_deadline = start + job.connect_timeout + FORM_GRACE
    try:
        while root.poll() is None:
            if on_progress is not None:
                on_progress(feeder.bytes, {h: r.progress for h, r in receivers.items()})
            if not formed.is_set() and time.monotonic() > form_deadline:
                log.append(f"beo cast: the chain did not form within "
                           f"{form_deadline - start:.0f} s; stopping")  # fmt: skip
                root.send_signal(signal.SIGTERM)
                try:
                    root.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    root.kill()
                break
            try:
                root.wait(timeout=0.1)  # returns the moment the root exits
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        root.send_signal(signal.SIGTERM)
        root.wait()
        for r in receivers.values():
            r.close()
        launcher.close(grace=2.0)
        work.cleanup()
        raise
    root.wait()
    seconds = time.monotonic() - start
    feeder.join(timeout=10)
    logger.join(timeout=2)
    if on_progress is not None:
        on_progress(feeder.bytes, {h: r.progress for h, r in receivers.items()})
    stage("waiting for every node's fsync and result")
    end = time.monotonic() + job.finish_timeout
    for h in alive:
        receivers[h].finished.wait(max(0.0, end - time.monotonic()))
    results = {h: r.result for h, r in receivers.items() if r.result is not None}
    for r in receivers.values():
        r.close()
    launcher.close()
    try:
        with open(report_path) as fh:
            report = json.load(fh)
    except (OSError, ValueError):
        report = None
    work.cleanup()
    stream = None
    if report is not None and report.get("status") == "ok":
        stream = int(report.get("bytes") or 0)
    elif report is not None and not feeder.error:
        stream = feeder.bytes
    if direct and stream is not None:
        feeder.last = stream  # the root's own count, not the last offset polled
    out.rows = plan.rows(hosts, chains, launch=launch, report=report, results=results,
                         source_digest=feeder.digest, stream_bytes=stream, kind=kind,
                         attempt=attempt)  # fmt: skip
    out.bytes = feeder.bytes
    out.seconds = seconds
    out.stream_seconds = float((report or {}).get("seconds") or 0.0)
    root_node = ((report or {}).get("nodes") or [{}])[0]
    out.digest = feeder.digest or (root_node.get("digest") if isinstance(root_node, dict) else None)
    out.root_log = list(log)
    if feeder.error:
        out.error = feeder.error
    elif report is None:
        out.error = "the root nettee wrote no report: " + (log[-1] if log else "no message")
    if out.error:
        for row in out.rows:
            if row.ok:
                plan._add(row, "LRF", out.error)
                row.status = " ".join(row.codes)
    return out


def remote_python_default(backend: Backend) -> str:
    """The python that runs the receiver on the nodes."""
    if backend.kind == "exec":
        return shlex.quote(sys.executable)
    return "python3"
