"""The I/O driver of ``beo cast``: receivers, the root nettee, the feeder.

One run (:func:`run_once`):

1. start :mod:`beokit.cast.receiver` on every node through a launcher
   backend (``-R ssh|rsh|exec|TEMPLATE``, :mod:`beokit.launch.backends`);
   hand each a fresh per-run secret, its DEST and its checks on the
   backend's stdin (the ssh channel), never on a command line;
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
from beokit.cast.receiver import nettee_argv
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
    bind_local: bool = False  # -R exec: each receiver listens on its host's address
    as_root: bool = True


@dataclass
class Outcome:
    rows: list[Row]
    bytes: int = 0
    seconds: float = 0.0  # the root nettee's life: start, chain forming, stream, reports
    stream_seconds: float = 0.0  # the stream alone, as the root nettee measured it
    launch_seconds: float = 0.0
    digest: str | None = None
    algo: str | None = None
    flags: list[str] = field(default_factory=list)
    root_log: list[str] = field(default_factory=list)
    error: str = ""


# --------------------------------------------------------------- nettee


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
    """One node's receiver, through the backend: JSON lines both ways."""

    def __init__(self, host: str, argv: list[str], env: dict[str, str] | None) -> None:
        self.host = host
        self.hello: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self.progress = 0
        self.answered = threading.Event()
        self.finished = threading.Event()
        self.err: collections.deque[str] = collections.deque(maxlen=10)
        try:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, start_new_session=True)  # fmt: skip
        except OSError as exc:
            self.proc = None
            self.hello = {"t": "fail", "code": "DOWN", "why": f"cannot launch: {exc}"}
            self.answered.set()
            self.finished.set()
            return
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue  # a login banner, a shell's noise
            if not isinstance(msg, dict):
                continue
            t = msg.get("t")
            if t in ("up", "fail") and self.hello is None:
                self.hello = msg
                self.answered.set()
            elif t == "progress":
                self.progress = int(msg.get("bytes") or 0)
            elif t == "result":
                self.result = msg
                self.finished.set()
        # the channel closed: whatever was not said will not be
        if self.hello is None:
            self.proc.wait()
            time.sleep(0.05)  # let the stderr reader catch the last message
            why = " ".join(list(self.err)[-2:]) or "no message"
            self.hello = {"t": "fail", "code": "DOWN",
                          "why": f"receiver did not start (exit {self.proc.returncode}): {why}"}  # fmt: skip
            self.answered.set()
        self.finished.set()

    def _read_err(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line:
                self.err.append(line)

    def send(self, msg: dict[str, Any]) -> bool:
        if self.proc is None or self.proc.stdin is None:
            return False
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def close(self, grace: float = 3.0) -> None:
        """Close the channel (the receiver stops nettee and exits); kill if it lingers."""
        if self.proc is None:
            return
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()


# --------------------------------------------------------------- feeder


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


def start_receivers(job: Job, hosts: list[str], common: dict[str, Any],
                    binds: dict[str, str]) -> dict[str, Receiver]:  # fmt: skip
    """Launch the receiver on every host; write each its start message (with the secret)."""
    remote = f"{job.remote_python} -m beokit.cast.receiver"
    local_env: dict[str, str] = {}
    if job.backend.kind == "exec":  # this machine: no site set-up (see receiver.nettee_argv)
        remote = f"{job.remote_python} -S -m beokit.cast.receiver"
        local_env = nettee_argv()[1]
    receivers: dict[str, Receiver] = {}
    for h in hosts:
        env = dict(os.environ, BEO_HOST=h, **local_env) if job.backend.kind == "exec" else None
        r = Receiver(h, job.backend.argv(h, remote), env)
        receivers[h] = r
        r.send(dict(common, host=h, dest=plan.expand_dest(job.dest, h), bind=binds.get(h)))
    return receivers


def await_answers(receivers: dict[str, Receiver], deadline: float, timeout: float) -> None:
    """Wait (until ``deadline``) for every receiver's up/fail; the silent ones are DOWN."""
    for r in receivers.values():
        if not r.answered.wait(max(0.0, deadline - time.monotonic())):
            r.hello = {"t": "fail", "code": "DOWN", "why": f"no contact within {timeout:g} s"}
            r.answered.set()
            r.close(grace=0.5)


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
    receivers = start_receivers(job, hosts, {"secret": secret, "kind": kind, "digest": algo,
                                             "fsync": job.fsync, "progress": job.progress_nodes},
                                binds)  # fmt: skip
    await_answers(receivers, t0 + job.connect_timeout, job.connect_timeout)
    launch = {h: dict(r.hello or {}) for h, r in receivers.items()}
    alive = {h for h, m in launch.items() if m.get("t") == "up"}
    live_chains = plan.replan(chains, alive)
    launch_seconds = time.monotonic() - t0
    out = Outcome(rows=[], algo=algo, flags=extra, launch_seconds=launch_seconds)
    if not live_chains:
        for r in receivers.values():
            r.close()
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
    boot, more = nettee_argv()
    argv = boot + plan.root_args(children=heads, port=port, report=report_path,
                                             extra=extra)  # fmt: skip
    env = dict(os.environ, NETTEE_SECRET=secret, **more)
    stage(f"streaming to {len(alive)} node(s) in {len(live_chains)} chain(s)")
    start = time.monotonic()
    root = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)  # fmt: skip
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
    feeder = Feeder(job, root.stdin, algo)
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
            time.sleep(0.1)
    except KeyboardInterrupt:
        root.send_signal(signal.SIGTERM)
        root.wait()
        for r in receivers.values():
            r.close()
        work.cleanup()
        raise
    root.wait()
    seconds = time.monotonic() - start
    feeder.thread.join(timeout=10)
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
