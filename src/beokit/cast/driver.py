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
from beokit.cast.hub import Hub, Receiver
from beokit.cast.plan import Chain, Row
from beokit.errors import UsageError
from beokit.launch.backends import Backend
from beokit.nettee.localchain import free_port
from beokit.proc import Interrupted, SignalGuard

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
    in_place: bool = False  # a file DEST is written in place, not renamed into place


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
    changed: str = ""  # why SOURCE is known to have changed during the stream
    interrupted: str = ""  # the signal's name when the cast was interrupted


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

__all__ = ["Hub", "Receiver", "Job", "Outcome", "Interrupted", "SignalGuard", "run_once"]


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
        from beokit.launch.agent import Agent

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
        self.node = Agent(None, the_plan.groups, the_plan.window, cfg, self._emit, addr,
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
        self.changed = ""  # tar saw a file change as it read it
        self.tar: subprocess.Popen | None = None
        self.tar_log: collections.deque[str] = collections.deque(maxlen=20)
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
                                        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)  # fmt: skip
            threading.Thread(target=self._tar_log, args=(self.tar,), daemon=True).start()
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
                self._end_tar()

    def _tar_log(self, tar: subprocess.Popen) -> None:
        """tar's messages: kept (the last 20) and passed on to our stderr."""
        assert tar.stderr is not None
        for raw in tar.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.tar_log.append(line)
            print(line, file=sys.stderr)

    def _end_tar(self) -> None:
        """GNU tar's exit status 1 ("some files differ"): a file changed as tar read it
        (it checks each file's size, mtime and ctime before and after reading it)."""
        assert self.tar is not None
        if self.error:
            self.tar.kill()
        rc = self.tar.wait()
        if rc == 1 and not self.error:
            said = [ln for ln in self.tar_log if ln.startswith("tar:")]
            self.changed = "a file changed while tar read it" + (f" ({said[-1]})" if said else "")
        elif rc != 0 and not self.error:
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


def source_snapshot(job: Job) -> dict[str, int] | None:
    """What SOURCE looks like now (a file or a device), to compare after the stream.

    A regular file: size, mtime, ctime, inode and device; a block device: its
    size (a write to a device leaves its node's times alone).  None for stdin
    and a directory (tar checks every file it reads: :meth:`Feeder._end_tar`)
    or when SOURCE cannot be looked at (the caller then has nothing to compare).
    """
    if job.source_kind != "file":
        return None
    try:
        st = os.stat(job.source)
        snap = {"ino": st.st_ino, "dev": st.st_dev, "size": st.st_size}
        if stat.S_ISBLK(st.st_mode):
            fd = os.open(job.source, os.O_RDONLY)
            try:
                snap["size"] = os.lseek(fd, 0, os.SEEK_END)
            finally:
                os.close(fd)
            snap["block"] = 1
        else:
            snap.update(mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
        return snap
    except OSError:
        return {"missing": 1}


ABORT_WAIT = 10.0  # on interruption, every receiver's account of its DEST within this


def run_once(job: Job, hosts: list[str], chains: list[Chain], *, attempt: int = 1,
             on_progress: Progress | None = None,
             on_stage: Callable[[str], None] | None = None) -> Outcome:  # fmt: skip
    """Distribute the source to ``hosts`` along ``chains``; one row per host.

    On :class:`Interrupted` (raised by a :class:`SignalGuard`), every node is
    told to stop and asked what its DEST holds, and the exception leaves
    with ``outcome`` set to a row per node that says so.
    """
    cast = _Cast(job, hosts, chains, attempt, on_progress, on_stage)
    done: Outcome | None = None
    try:
        done = cast.run()
        return done
    except Interrupted as exc:
        exc.outcome = cast.abort(exc.name)
        raise
    finally:
        try:
            cast.release()
        except Interrupted as exc:  # the signal came during the clean-up: finish it
            cast.release()
            if done is not None:  # the run itself had ended: its rows are what happened
                done.interrupted = exc.name
                exc.outcome = done
            raise


class _Cast:
    """One run of :func:`run_once`: what it started, so that any end can clean up."""

    def __init__(self, job: Job, hosts: list[str], chains: list[Chain], attempt: int,
                 on_progress: Progress | None,
                 on_stage: Callable[[str], None] | None) -> None:  # fmt: skip
        self.job, self.hosts, self.chains, self.attempt = job, hosts, chains, attempt
        self.on_progress = on_progress
        self.stage = on_stage or (lambda _s: None)
        self.extra = plan.resilience_args(job.heal, nettee_flags())
        self.algo = None if plan.DIGEST_FLAG in self.extra else digest_algo()
        self.kind = plan.dest_kind(job.dest, job.source_kind)
        self.receivers = {h: Receiver(h) for h in hosts}
        self.root_nettee: RootNettee | None = None
        self.root_started = False
        self.hub: Hub | None = None
        self.launcher: Launch | None = None
        self.feeder: Feeder | FileProgress | None = None
        self.work: tempfile.TemporaryDirectory[str] | None = None
        self.launch: dict[str, dict[str, Any]] = {}
        self.before: dict[str, int] | None = None  # SOURCE when the stream started
        self.after: dict[str, int] | None = None  # ... and when it ended

    # ------------------------------------------------------------ phases

    def run(self) -> Outcome:
        job = self.job
        secret = secrets.token_hex(32)
        binds = {h: _address(job, h) for h in self.hosts} if job.bind_local else {}
        port = self._port(binds)
        t0 = time.monotonic()
        self.stage(f"starting receivers on {len(self.hosts)} node(s)")
        direct = direct_source(job, self.algo)
        self.root_nettee = RootNettee(secret, stdin=not direct)
        failed = self._start_receivers(secret, binds)
        if failed is not None:
            return failed
        alive = {h for h, m in self.launch.items() if m.get("t") == "up"}
        live_chains = plan.replan(self.chains, alive)
        assert self.launcher is not None and self.hub is not None
        out = Outcome(rows=[], algo=self.algo, flags=self.extra,
                      launch_seconds=time.monotonic() - t0, launch_depth=self.launcher.depth,
                      refused=self.hub.refused)  # fmt: skip
        if not live_chains:
            out.rows = self._rows(report=None, results={}, digest=None, stream=None)
            plan.settle(out.rows, {})
            out.error = "no node could be started"
            return out
        self._go(live_chains, alive, port, binds)
        report, seconds, log = self._stream(live_chains, port, direct)
        self._finish(out, alive, report, seconds, log)
        return out

    def _port(self, binds: dict[str, str]) -> int:
        if self.job.port:
            return self.job.port
        if self.job.bind_local:
            addrs = sorted({a for a in binds.values() if plan.is_loopback(a)})
            return free_port(addrs or ["127.0.0.1"])
        return secrets.SystemRandom().randrange(20000, 60000)

    def _start_receivers(self, secret: str, binds: dict[str, str]) -> Outcome | None:
        """Hub, spec, launch, answers; an Outcome if nothing can go on."""
        job = self.job
        addr = callback_address(job, self.hosts)
        try:
            self.hub = Hub(secret, self.receivers, addr)
        except OSError as exc:
            out = Outcome(rows=[], algo=self.algo, flags=self.extra)
            out.error = f"cannot listen on {addr} for the receivers: {exc.strerror}"
            self.launch = {h: {"t": "fail", "code": "DOWN", "why": out.error} for h in self.hosts}
            out.rows = self._rows(report=None, results={}, digest=None, stream=None)
            plan.settle(out.rows, {})
            return out
        spec = plan.receiver_spec(secret=secret, callback=self.hub.address, dest=job.dest,
                                  kind=self.kind, digest=self.algo, fsync=job.fsync,
                                  progress=job.progress_nodes, bind_local=job.bind_local,
                                  resolve={h: binds[h] for h in self.hosts if h in binds
                                           and binds[h] != h},
                                  in_place=job.in_place,
                                  verdict_wait=job.finish_timeout + 60)  # fmt: skip
        payload = json.dumps(spec, separators=(",", ":")).encode()
        if len(payload) > plan.MAX_SPEC:  # thousands of --resolve entries: say so, start nothing
            raise UsageError(f"the receivers' spec is {len(payload)} bytes, more than "
                             f"{plan.MAX_SPEC}: too many --resolve entries for one run")  # fmt: skip
        self.launcher = Launch(job, self.hosts, payload, addr, self.receivers)
        # every launch step has its own connect timeout: the deepest host may need them all
        budget = job.connect_timeout * max(1, self.launcher.depth)
        await_answers(self.receivers, time.monotonic() + budget, budget)
        self.hub.stop_accepting()
        self.launch = {h: dict(r.hello or {}) for h, r in self.receivers.items()}
        return None

    def _go(self, live_chains: list[Chain], alive: set[str], port: int,
            binds: dict[str, str]) -> None:  # fmt: skip
        """Tell every node its nettee arguments (its child in the chain)."""
        job = self.job
        nxt = plan.links(live_chains)
        via = {h: c for c in live_chains for h in c.hosts}
        for h in sorted(alive):
            child = nxt.get(h)
            child_addr = _address(job, via[h].data_name(child)) if child else None
            dest = str(self.launch[h].get("out") or plan.expand_dest(job.dest, h))
            args = plan.receiver_args(host=h, port=port, dest=dest, kind=self.kind,
                                      child=child_addr, bind=binds.get(h), extra=self.extra,
                                      as_root=job.as_root)  # fmt: skip
            self.receivers[h].send({"t": "go", "args": args})

    def _stream(self, live_chains: list[Chain], port: int,
                direct: bool) -> tuple[dict[str, Any] | None, float, list[str]]:  # fmt: skip
        """Start the root nettee and feed it; (its report, its life in seconds, its log)."""
        job = self.job
        assert self.root_nettee is not None
        self.work = tempfile.TemporaryDirectory(prefix="beo-cast-")
        report_path = os.path.join(self.work.name, "report.json")
        heads = [_address(job, c.data_name(c.hosts[0])) for c in live_chains]
        alive = sum(len(c.hosts) for c in live_chains)
        self.stage(f"streaming to {alive} node(s) in {len(live_chains)} chain(s)")
        self.before = source_snapshot(job)
        start = time.monotonic()
        self.root_nettee.start(plan.root_args(children=heads, port=port, report=report_path,
                                              extra=self.extra,
                                              source=os.path.abspath(job.source) if direct
                                              else "-"))  # fmt: skip
        self.root_started = True
        root = self.root_nettee.proc
        log: collections.deque[str] = collections.deque(maxlen=200)
        formed = threading.Event()
        logger = threading.Thread(target=_read_root_log, args=(root, log, formed), daemon=True)
        logger.start()
        self.feeder = FileProgress(job, root) if direct else Feeder(job, root.stdin, self.algo)
        self.feeder.start()
        self._watch_root(root, start, formed, log)
        seconds = time.monotonic() - start
        self.feeder.join(timeout=10)
        logger.join(timeout=2)
        self.after = source_snapshot(job)
        self._progress()
        try:
            with open(report_path) as fh:
                report = json.load(fh)
        except (OSError, ValueError):
            report = None
        return report, seconds, list(log)

    def _watch_root(self, root: subprocess.Popen, start: float, formed: threading.Event,
                    log: collections.deque[str]) -> None:  # fmt: skip
        """Until the root nettee exits: progress, and the chain-forming deadline."""
        form_deadline = start + self.job.connect_timeout + FORM_GRACE
        while root.poll() is None:
            self._progress()
            if not formed.is_set() and time.monotonic() > form_deadline:
                log.append(f"beo cast: the chain did not form within "
                           f"{form_deadline - start:.0f} s; stopping")  # fmt: skip
                _stop_process(root)
                return
            try:
                root.wait(timeout=0.1)  # returns the moment the root exits
            except subprocess.TimeoutExpired:
                pass

    def _progress(self) -> None:
        if self.on_progress is not None and self.feeder is not None:
            self.on_progress(self.feeder.bytes,
                             {h: r.progress for h, r in self.receivers.items()})  # fmt: skip

    def _finish(self, out: Outcome, alive: set[str], report: dict[str, Any] | None,
                seconds: float, log: list[str]) -> None:  # fmt: skip
        """Every node's result, the verdict, then commit the good copies, discard the rest."""
        feeder = self.feeder
        assert feeder is not None
        self.stage("waiting for every node's fsync and result")
        end = time.monotonic() + self.job.finish_timeout
        for h in alive:
            self.receivers[h].finished.wait(max(0.0, end - time.monotonic()))
        results = {h: r.result for h, r in self.receivers.items() if r.result is not None}
        stream = None
        if report is not None and report.get("status") == "ok":
            stream = int(report.get("bytes") or 0)
        elif report is not None and not feeder.error:
            stream = feeder.bytes
        if isinstance(feeder, FileProgress) and stream is not None:
            feeder.last = stream  # the root's own count, not the last offset polled
        out.rows = self._rows(report=report, results=results, digest=feeder.digest, stream=stream)
        out.bytes = feeder.bytes
        out.seconds = seconds
        out.stream_seconds = float((report or {}).get("seconds") or 0.0)
        root_node = ((report or {}).get("nodes") or [{}])[0]
        out.digest = feeder.digest or (root_node.get("digest") if isinstance(root_node, dict)
                                       else None)  # fmt: skip
        out.root_log = log
        if feeder.error:
            out.error = feeder.error
        elif report is None:
            out.error = "the root nettee wrote no report: " + (log[-1] if log else "no message")
        completed = report is not None and report.get("status") == "ok"
        sent = stream if completed else None  # the root's own count of a whole stream
        tar_saw = feeder.changed if isinstance(feeder, Feeder) else ""
        out.changed = tar_saw or plan.source_change(self.before, self.after, sent)
        plan.fail_all(out.rows, out.error, out.changed)
        self._settle(out.rows, alive)

    def _settle(self, rows: list[Row], alive: set[str]) -> None:
        """Commit (rename into place) every verified copy, discard the others: bounded."""
        self.stage("moving every verified copy into place")
        verdict = {r.host: r.ok for r in rows}
        asked = [h for h in alive if self.receivers[h].send(
            {"t": "commit" if verdict.get(h) else "discard"})]
        end = time.monotonic() + self.job.finish_timeout
        for h in asked:
            self.receivers[h].settled.wait(max(0.0, end - time.monotonic()))
        plan.settle(rows, {h: r.final for h, r in self.receivers.items() if r.final})

    def _rows(self, *, report: dict[str, Any] | None, results: dict[str, dict[str, Any]],
              digest: str | None, stream: int | None) -> list[Row]:  # fmt: skip
        return plan.rows(self.hosts, self.chains, launch=self.launch, report=report,
                         results=results, source_digest=digest, stream_bytes=stream,
                         kind=self.kind, attempt=self.attempt)  # fmt: skip

    # ------------------------------------------------------------ endings

    def abort(self, signame: str) -> Outcome:
        """Interrupted: stop the stream, ask every node to stop and say what DEST holds."""
        self.stage(f"interrupted ({signame}): stopping every node")
        if self.hub is not None:
            self.hub.stop_accepting()  # no receiver joins a run that is ending
        if self.root_started and self.root_nettee is not None:
            _stop_process(self.root_nettee.proc)
        if not self.launch:
            self.launch = {h: dict(r.hello or {}) for h, r in self.receivers.items()}
        asked = [r for r in self.receivers.values() if r.send({"t": "abort"})]
        end = time.monotonic() + ABORT_WAIT
        for r in asked:
            r.settled.wait(max(0.0, end - time.monotonic()))
        out = Outcome(rows=[], algo=self.algo, flags=self.extra, interrupted=signame)
        out.rows = plan.interrupted_rows(
            self.hosts, self.chains, launch=self.launch,
            finals={h: r.final for h, r in self.receivers.items() if r.final},
            results={h: r.result for h, r in self.receivers.items() if r.result},
            signame=signame, attempt=self.attempt)  # fmt: skip
        out.error = f"interrupted by {signame}"
        return out

    def release(self) -> None:
        """Whatever ended the run: nothing of it is left running (each step bounded).

        The hub goes first: every receiver's connection closes, so each one
        still waiting removes its temporary copy and exits on its own before
        the launch tree is asked to end (and, after its grace, killed).
        """
        if self.root_nettee is not None:
            if self.root_started:
                _stop_process(self.root_nettee.proc)
            else:
                self.root_nettee.cancel()
        if self.hub is not None:
            self.hub.close()
        if self.launcher is not None:
            self.launcher.close()
        if self.feeder is not None:
            self.feeder.join(timeout=5)
        if self.work is not None:
            self.work.cleanup()


def _read_root_log(root: subprocess.Popen, log: collections.deque[str],
                   formed: threading.Event) -> None:  # fmt: skip
    assert root.stderr is not None
    for raw in root.stderr:
        line = raw.decode(errors="replace").rstrip()
        log.append(line)
        if "tree formed" in line:
            formed.set()


def _stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def remote_python_default(backend: Backend) -> str:
    """The python that runs the receiver on the nodes."""
    if backend.kind == "exec":
        return shlex.quote(sys.executable)
    return "python3"
