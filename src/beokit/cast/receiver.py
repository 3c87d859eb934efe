"""The program ``beo cast`` starts on every node: ``python3 -m beokit.cast.receiver``.

It is started through the tree launcher (:mod:`beokit.launch`, as ``beo run``
does), which gives it the run's spec on stdin (``--input``: inside the ssh
channel, never on a command line): ``{"secret", "callback", "dest", "kind",
"digest", "fsync", "progress", "bind_local"}`` (the same for every node; its
own bind address comes in the root's ``ok``).  Its host name is
``$BEO_HOST``.  It then calls the cast root back at ``callback`` over TCP,
both sides prove they know the secret (:mod:`beokit.cast.channel`), and the
rest is one JSON object a line over that connection (:mod:`beokit.framing`):

1. node -> root: the node checks that it can do its part (the bind address
   exists, DEST can be created and written) and says ``{"t": "up"}`` or
   ``{"t": "fail", "code", "why"}``.
2. root -> node: ``{"t": "go", "args": [...]}`` (nettee's arguments) or
   ``{"t": "cancel"}``.  The node runs nettee with the secret in its
   environment (``NETTEE_SECRET``), optionally sends
   ``{"t": "progress", "bytes"}`` twice a second.
3. When nettee ends: fsync DEST (file, device: ``fsync``; directory:
   ``syncfs``), then, if asked (nettee without ``-digest``), reread a file
   DEST and hash it; answer ``{"t": "result", "rc", "bytes", "fsync",
   "digest", "seconds", "why"}``.  Only then does the root count the node
   as done: data is on stable storage before a node reports success.

If the root goes away (the connection closes) the node stops nettee and
exits, so nothing is left running; the launcher then ends too.

This program runs on the nodes, inside the launch tree's agent (forked from
it: :data:`ENTRY`), or on its own (``python3 -m beokit.cast.receiver``).  It
imports the standard library and beokit's ``auth``, ``errors``, ``framing``,
``net``, ``proc`` and ``cast.channel`` before it answers (the fewer, the
sooner it is up: every node pays them), then nettee (and ``linux``) while
the other nodes start.  Where beokit is not installed the launcher ships
these modules (:data:`SHIPPED`, with the agent's).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from beokit import framing, net
from beokit.cast import channel
from beokit.errors import WireError
from beokit.proc import ForkedChild, describe_exit, fork_python

if TYPE_CHECKING:
    import queue

ENTRY = "beokit.cast.receiver:main"  # what the launch tree's agents fork (beokit.proc.ForkedCommand)
ENTRY_NAME = "beo-receiver"  # its name in ps and top (/proc/PID/comm)
# What the launcher ships to a node whose Python lacks beokit, besides the agent's
# own modules (beokit.launch.ship.AGENT_MODULES): this program and nettee.
SHIPPED = ("auth.py", "linux.py", "cast/__init__.py", "cast/channel.py", "cast/receiver.py",
           "nettee/")  # fmt: skip

PROGRESS_EVERY = 0.5
HASH_CHUNK = 1 << 20
CONNECT_TIMEOUT = 10.0  # reaching the root and its handshake


class ChannelError(Exception):
    """The cast root could not be reached or did not prove it knows the secret."""


class _Fatal(ChannelError):
    """The root answered, but not with the secret: no second try."""


class Channel:
    """The authenticated connection to the cast root: JSON lines both ways."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.rfile = conn.makefile("rb")
        self.lock = threading.Lock()
        self.node: dict[str, Any] = {}  # this node's own part of the spec (the root's ok)

    @classmethod
    def connect(cls, callback: str, secret: str, host: str,
                timeout: float = CONNECT_TIMEOUT) -> Channel:  # fmt: skip
        """Reach the root and prove the secret both ways, within ``timeout`` seconds.

        A connection the root closes before its handshake ends (the root's hub
        sheds the oldest waiting connections under a flood) is tried again;
        a refused connection, or a root that cannot prove the secret, is not.
        """
        deadline = time.monotonic() + timeout
        pause = 0.05
        while True:
            try:
                return cls._handshake(callback, secret, host, deadline)
            except (ConnectionRefusedError, _Fatal):
                raise
            except (OSError, ChannelError):
                if time.monotonic() + pause >= deadline:
                    raise
            time.sleep(pause)
            pause = min(1.0, pause * 2)

    @classmethod
    def _handshake(cls, callback: str, secret: str, host: str, deadline: float) -> Channel:
        left = max(0.1, deadline - time.monotonic())
        conn = socket.create_connection(net.split_host_port(callback), timeout=left)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            chan = cls(conn)
            challenge = chan.read()
            theirs = challenge.get("nonce")
            if challenge.get("t") != "challenge" or not isinstance(theirs, str):
                raise ChannelError("no challenge from the root")
            ours = channel.nonce()
            chan.say(channel.hi(secret, host, theirs, ours))
            ok = chan.read()
            if not ok:
                raise ChannelError("the root closed the connection during the handshake")
            if ok.get("t") != "ok" or not channel.mac_ok(secret, ok.get("mac"), "root", ours,
                                                         theirs, host):  # fmt: skip
                raise _Fatal(f"the root refused us or did not prove the secret: {ok}")
            conn.settimeout(None)
            if isinstance(ok.get("node"), dict):
                chan.node = ok["node"]
            return chan
        except BaseException:
            conn.close()
            raise

    def read(self) -> dict[str, Any]:
        """The next message; ``{}`` at the end of the connection."""
        try:
            return framing.read_message(self.rfile, channel.MAX_SPEC) or {}
        except WireError as exc:
            raise ChannelError(f"from the root: {exc}") from None

    def say(self, msg: dict[str, Any]) -> None:
        data = framing.encode(msg)
        with self.lock:
            self.conn.sendall(data)


def has_xxhash() -> bool:
    """Can nettee's -digest (xxh3-128) run here?  (A node with only the standard
    library cannot: beo cast then runs the chain without it.)"""
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return False
    return True


def start_nettee(args: list[str], env: dict[str, str], events: int = -1) -> ForkedChild:
    """nettee, forked from this receiver, which imported it while the launch went on.

    Starting a fresh interpreter and importing nettee costs ~0.2 s of CPU; a
    cast starts every node's nettee at the same moment ("go"), so on a box
    shared by many nodes those starts queued on the cores, inside the cast's
    time.  A fork of the preloaded receiver starts in ~1 ms
    (:func:`beokit.proc.fork_python`).  The child is named ``nettee``
    (``/proc/PID/comm``: what ``ps -e``, ``top`` and ``pkill nettee`` see);
    its command line stays the receiver's; its stderr is the returned
    child's ``stderr`` (a pipe).
    """
    from beokit.nettee.cli import main as nettee_main

    r, w = os.pipe()
    if events >= 0:
        env = dict(env, NETTEE_EVENT_FD=str(events))
    try:
        pid = fork_python(lambda: nettee_main(args), name="nettee", stderr=w, env=env,
                          argv=["nettee", *args],
                          pass_fds=(events,) if events >= 0 else ())  # fmt: skip
    except OSError:
        os.close(r)
        raise
    finally:
        os.close(w)
    return ForkedChild(pid, os.fdopen(r, "rb"))


def preload() -> None:
    """Import nettee now, during the launch, so that :func:`start_nettee` starts at once."""
    import beokit.nettee.cli  # noqa: F401


class Output:
    """Where this node's nettee writes, and what becomes of it.

    A file DEST (absent, or a regular file) is written under a temporary
    name beside it, ``.NAME.beo-cast-XXXXXXXX`` in DEST's directory, and
    renamed over DEST only when the root says the copy is verified
    (:meth:`commit`); a failed or interrupted cast removes it
    (:meth:`discard`) and leaves DEST as it was.  A DEST symlink is followed
    (the file it names is replaced).  The temporary file gets an existing
    DEST's permission bits (and, as root, its owner).  A device, a FIFO, a
    directory tree (tar), a ``|command`` and ``in_place`` are written in
    place: on failure they hold whatever arrived.
    """

    def __init__(self, dest: str, kind: str, in_place: bool = False) -> None:
        self.dest = dest
        self.kind = kind
        self.in_place = in_place or kind != "file"
        self.path = dest  # what nettee writes
        self.final = dest  # what a temporary copy replaces
        self.temp: str | None = None
        self.committed = False
        self.written = False  # nettee was started on it
        self.removed: int | None = None  # bytes of the temporary copy discard() removed

    def prepare(self) -> None:
        """Create what nettee will write (OSError if it cannot be)."""
        import stat

        if self.kind == "dir":
            import tempfile

            os.makedirs(self.dest, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".beo-cast-", dir=self.dest)
            os.close(fd)
            os.unlink(probe)
            return
        if self.kind != "file":
            return
        parent = os.path.dirname(self.dest)
        if parent:
            os.makedirs(parent, exist_ok=True)
        try:
            st: os.stat_result | None = os.stat(self.dest)
        except FileNotFoundError:
            st = None
        if self.in_place or (st is not None and not stat.S_ISREG(st.st_mode)):
            self.in_place = True  # a device, a FIFO: written where it is
            fd = os.open(self.dest, os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)
            return
        self.final = os.path.realpath(self.dest) if os.path.islink(self.dest) else self.dest
        folder, name = os.path.split(self.final)
        temp = os.path.join(folder, f".{name[:200]}.beo-cast-{os.urandom(4).hex()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.temp = self.path = temp
        try:
            if st is not None:
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
                if os.geteuid() == 0:
                    os.fchown(fd, st.st_uid, st.st_gid)
        finally:
            os.close(fd)

    def commit(self, fsync: bool) -> str | None:
        """Move a verified temporary copy over DEST; None, or why it failed."""
        if self.temp is None or self.committed:
            self.committed = True
            return None
        try:
            os.rename(self.temp, self.final)
        except OSError as exc:
            return f"cannot rename {self.temp} to {self.final}: {exc.strerror}"
        self.committed = True
        self.temp = None
        if fsync:  # the rename itself on stable storage
            try:
                fd = os.open(os.path.dirname(self.final) or ".", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                return f"fsync of {os.path.dirname(self.final)}: {exc.strerror}"
        return None

    def discard(self) -> None:
        """Remove an uncommitted temporary copy (DEST stays as it was)."""
        if self.temp is not None:
            try:
                self.removed = os.stat(self.temp).st_size
                os.unlink(self.temp)
            except OSError:
                pass
            self.temp = None

    def state(self) -> dict[str, Any]:
        """What DEST holds now: ``new`` (this cast's verified copy), ``unchanged``
        (as before the cast) or ``partial`` (written in place, incomplete)."""
        import stat

        if self.committed:
            return {"dest": "new"}
        if self.temp is not None or not self.in_place or not self.written:
            return {"dest": "unchanged", "removed": self.removed}
        out: dict[str, Any] = {"dest": "partial"}
        if self.kind == "file":
            try:
                st = os.stat(self.dest)
                if stat.S_ISREG(st.st_mode):
                    out["bytes"] = st.st_size
            except OSError:
                pass
        return out


def check(spec: dict[str, Any], out: Output) -> tuple[str, str] | None:
    """Can this node do its part?  None, or (code, why)."""
    bind = spec.get("bind")
    if bind:
        try:
            info = socket.getaddrinfo(bind, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return "DOWN", f"unknown host {bind!r}: {exc.strerror}"
        family, _, _, _, addr = info[0]
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((addr[0], 0))
        except OSError as exc:
            return "DOWN", f"cannot listen on {addr[0]}: {exc.strerror}"
    try:
        out.prepare()
    except (OSError, ValueError) as exc:
        where = str(getattr(exc, "filename", None) or out.dest)
        why = getattr(exc, "strerror", None) or str(exc)
        if ".beo-cast-" not in os.path.basename(where):
            return "LWF", f"cannot write {where}: {why}"
        folder = os.path.dirname(where) or "."
        # DEST itself may be writable where a new file beside it cannot be made
        hint = "; --in-place writes DEST itself" if os.access(out.dest, os.W_OK) else ""
        return "LWF", f"cannot write {out.dest}: no new file in {folder}: {why}{hint}"
    return None


def sync(dest: str, kind: str) -> str:
    """Flush DEST to stable storage: 'ok', 'skipped' or the error."""
    if kind == "cmd":
        return "skipped"
    try:
        fd = os.open(dest, os.O_RDONLY | (os.O_DIRECTORY if kind == "dir" else 0))
    except OSError as exc:
        return f"cannot open {dest}: {exc.strerror}"
    try:
        if kind == "dir":
            from beokit import linux

            try:
                linux.syncfs(fd)
            except OSError as exc:
                return f"syncfs {dest}: {exc.strerror}"
        else:
            os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (22, 30):  # EINVAL/EROFS: a pipe or a read-only special file
            return f"fsync {dest}: {exc.strerror}"
    finally:
        os.close(fd)
    return "ok"


def file_digest(dest: str, algo: str) -> str | None:
    try:
        h = channel.hasher(algo)
    except (ImportError, ValueError):
        return None
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(dest, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def main() -> int:
    raw = sys.stdin.buffer.read(channel.MAX_SPEC + 1)
    try:
        spec = json.loads(raw)
        secret = str(spec["secret"])
        callback = str(spec["callback"])
    except (ValueError, KeyError, TypeError):
        print("beo cast receiver: no valid spec on stdin (started by beo cast?)", file=sys.stderr)
        return 2
    host = os.environ.get("BEO_HOST") or socket.gethostname()
    # a SIGTERM (the launcher, an administrator) ends us through the finally clauses
    # below: nettee stopped, a temporary copy removed
    signal.signal(signal.SIGTERM, _terminated)
    try:
        chan = Channel.connect(callback, secret, host)
    except (OSError, ValueError, ChannelError) as exc:
        print(f"beo cast receiver {host}: cannot reach the cast root at {callback}: {exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    spec = channel.host_spec(spec, host, chan.node)
    out = Output(str(spec["dest"]), str(spec["kind"]), bool(spec.get("in_place")))
    try:
        return serve(chan, spec, secret, host, out)
    except (OSError, ChannelError) as exc:  # the root went away: nothing more to say
        print(f"beo cast receiver {host}: {exc}", file=sys.stderr)
        return 1
    finally:
        out.discard()  # unless committed: DEST stays as it was
        chan.conn.close()


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _stop(proc: ForkedChild, done: threading.Event) -> None:
    """Stop nettee (its process group): SIGTERM, then SIGKILL after 1 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        if not done.wait(1.0):
            os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class NetteeRun:
    """This node's nettee, forked, and how it ended.

    Its end is known from its ``end`` event (``NETTEE_EVENT_FD``, written just
    before it exits, with its exit status), not from its exit: the receiver
    fsyncs and reports while nettee's own clean-up runs (a few tens of ms a
    node, which on one box of many nodes added up after every stream).  A
    nettee that failed is also waited for, so that its log is complete.
    """

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        import collections

        events_r, events_w = os.pipe()
        try:
            self.proc = start_nettee(args, env, events_w)
        except OSError:
            os.close(events_r)
            raise
        finally:
            os.close(events_w)
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self.exited = threading.Event()  # the process is gone (reaped)
        self.ended = threading.Event()  # its end event, or its exit
        self.status: int | None = None  # the end event's exit status
        self.logger = threading.Thread(target=self._read_log, daemon=True)
        self.logger.start()
        threading.Thread(target=self._read_events, args=(events_r,), daemon=True).start()
        threading.Thread(target=self._reap, daemon=True).start()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.tail.append(raw.decode(errors="replace").rstrip())

    def _read_events(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as fh:
            for line in fh:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == "end":
                    status = event.get("exit")
                    if isinstance(status, int):
                        self.status = status
                        self.ended.set()

    def _reap(self) -> None:
        self.proc.wait()
        self.exited.set()
        self.ended.set()

    def wait(self) -> int:
        """Its exit status, as soon as it is known; a failure waits for its exit (and log)."""
        self.ended.wait()
        if not self.exited.is_set() and self.status != 0:
            self.exited.wait(2.0)
        if self.exited.is_set():
            self.logger.join(timeout=2)
            assert self.proc.returncode is not None
            return self.proc.returncode
        assert self.status is not None
        return self.status


def serve(chan: Channel, spec: dict[str, Any], secret: str, host: str, out: Output) -> int:
    """Check, answer, run nettee on "go", report, then act on the root's verdict."""
    import queue

    say = chan.say
    problem = check(spec, out)
    if problem is not None:
        say({"t": "fail", "code": problem[0], "why": problem[1], "host": host})
        return 1
    say({"t": "up", "host": host, "pid": os.getpid(), "out": out.path,
         "atomic": out.temp is not None, "xxhash": has_xxhash(),
         # the address this node reached its launch parent from: its data address
         # when its name means nothing to the root (ssh_config aliases)
         "addr": os.environ.get("BEO_ADDR", "")})  # fmt: skip
    preload()  # while the other nodes start
    go = chan.read() or {"t": "cancel"}
    if go.get("t") != "go":
        out.discard()
        if go.get("t") == "abort":
            say({"t": "aborted", "host": host, **out.state()})
        return 0
    if "digest" in go:  # the root decides it once every node has answered
        spec = dict(spec, digest=go["digest"])
    inbox: queue.Queue[dict[str, Any]] = queue.Queue()
    try:
        run = NetteeRun([str(a) for a in go["args"]], {"NETTEE_SECRET": secret, "BEO_HOST": host})
    except OSError as exc:
        say({"t": "result", "rc": 127, "why": f"cannot run nettee: {exc}", "host": host})
        return 1
    out.written = True
    try:
        res = _stream(chan, spec, host, out, run, inbox)
    finally:
        if not run.ended.is_set():  # an exception (SIGTERM): nettee must not outlive us
            _stop(run.proc, run.exited)
    if res is None:  # aborted, or the root went away
        out.discard()
        say({"t": "aborted", "host": host, **out.state()})
        return 0
    say(res)
    return _verdict(say, host, out, inbox, float(spec.get("verdict_wait") or 600.0),
                    bool(spec.get("fsync", True)))  # fmt: skip


def _stream(chan: Channel, spec: dict[str, Any], host: str, out: Output, run: NetteeRun,
            inbox: queue.Queue[dict[str, Any]]) -> dict[str, Any] | None:  # fmt: skip
    """Wait for nettee, then fsync (and hash); the result, or None if the root said abort."""
    dest, kind = out.path, out.kind
    start = time.monotonic()
    aborted = threading.Event()

    def listen() -> None:
        """The root's messages, in order; on abort or its end, stop nettee."""
        while True:
            try:
                msg = chan.read()
            except (OSError, ChannelError):
                msg = {}
            if msg.get("t") not in ("abort", None):
                inbox.put(msg)
                continue
            aborted.set()
            inbox.put({"t": "abort"})
            if not run.ended.is_set():
                _stop(run.proc, run.exited)
            return

    def progress() -> None:
        while not run.ended.wait(PROGRESS_EVERY):
            try:
                chan.say({"t": "progress", "bytes": os.stat(dest).st_size})
            except OSError:
                pass  # not created yet (or the root is gone: listen() acts)

    threading.Thread(target=listen, daemon=True).start()
    if spec.get("progress") and kind == "file":
        threading.Thread(target=progress, daemon=True).start()
    rc = run.wait()
    if aborted.is_set():
        return None
    return _result(spec, host, out, rc, time.monotonic() - start, list(run.tail))


def _result(spec: dict[str, Any], host: str, out: Output, rc: int, seconds: float,
            tail: list[str]) -> dict[str, Any]:  # fmt: skip
    """After nettee: the node's result, once DEST is fsynced (and reread, if asked)."""
    import stat

    dest, kind = out.path, out.kind
    res: dict[str, Any] = {"t": "result", "host": host, "rc": rc, "seconds": round(seconds, 3),
                           "bytes": None, "fsync": None, "digest": None}  # fmt: skip
    errors = [ln for ln in tail if "nettee" in ln and ("failure" in ln or "error" in ln.lower())]
    if rc != 0:
        res["why"] = (errors or tail or [describe_exit(rc, "nettee")])[-1]
    regular = False
    if kind == "file":
        try:
            st = os.stat(dest)
            regular = stat.S_ISREG(st.st_mode)
            res["bytes"] = st.st_size if regular else None
        except OSError as exc:
            res["why"] = f"{dest}: {exc.strerror}"
    res["fsync"] = sync(dest, kind) if spec.get("fsync", True) else "skipped"
    if rc == 0 and regular and spec.get("digest"):
        try:
            res["digest"] = file_digest(dest, str(spec["digest"]))
        except OSError as exc:
            res["why"] = f"cannot reread {dest}: {exc.strerror}"
    res["log"] = tail[-5:]
    return res


def _verdict(say: Any, host: str, out: Output, inbox: queue.Queue[dict[str, Any]],
             wait: float, fsync: bool) -> int:  # fmt: skip
    """The root's last word: commit (rename into place), discard or abort."""
    import queue

    try:
        msg = inbox.get(timeout=wait)
    except queue.Empty:
        msg = {"t": "discard"}  # no verdict: the copy is not known to be good
    if msg.get("t") == "commit":
        why = out.commit(fsync)
        say({"t": "committed", "host": host, "ok": why is None, "why": why or "",
             **out.state()})  # fmt: skip
        return 0 if why is None else 1
    out.discard()
    t = "aborted" if msg.get("t") == "abort" else "discarded"
    say({"t": t, "host": host, **out.state()})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(1)
