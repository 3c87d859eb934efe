"""The launcher's I/O driver: a :class:`Node` launches its children and relays.

The root (``beo run``) and every agent run the same :class:`Node`:

1. for each group of hosts (head + share), launch the head through the
   backend with a fresh random token on its stdin, wait (bounded) until it
   connects back and says hello with that token, send it its share;
2. relay what comes up from that child (progress, results, heartbeats) to
   its own parent, until the child says ``done``;
   a head with no share (a *leaf*) gets no agent: the backend process runs
   the command itself and this node reads its output and exit status
   (:meth:`Node._leaf`), as pdsh does;
3. if a head cannot be launched (down, refused, hanging), report it by name
   and launch the next host of its group in its place: the subtree is
   re-parented to this node.  If a child is lost later, the hosts of its
   share that were never launched are re-parented the same way, the others
   are reported lost.

Every child proceeds at its own pace: one thread per child (the seed's
multi-threaded design).  Every wait is bounded: connect timeout, heartbeat
timeout, the user's command timeout.  Standard library only.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Emit = Callable[[dict[str, Any]], None]

from beokit.launch import plan
from beokit.launch.backends import Backend, environ, fork_agent, set_shipped, zipapp_bytes

HEARTBEAT_EVERY = 1.0
HEARTBEAT_TIMEOUT = 10.0  # a child silent this long is lost
HELLO_TIMEOUT = 5.0  # an accepted connection must say hello within this
EXIT_GRACE = 5.0  # a finished child's launch process must exit within this


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    """Write ``data`` to ``proc``'s stdin and close it, from a thread of its own:
    the command may read it late (or never) while we read its output."""

    def write() -> None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(data)
            proc.stdin.close()
        except (OSError, ValueError):
            pass  # it ended already (or does not read): its reader sees the end

    threading.Thread(target=write, daemon=True).start()


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Slot:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.conn: socket.socket | None = None


class Node:
    """Launch ``groups`` (``window`` launches in flight), relay results to ``emit``.

    ``host`` is this node's own name (None at the root, which runs no command);
    ``cfg`` is the run configuration every agent receives (command, fanout,
    timeouts, backend spec).
    """

    def __init__(self, host: str | None, groups: list[list[str]], window: int,
                 cfg: dict[str, Any], emit: Emit, bind: str, advertise: str,
                 payload: bytes | None = None) -> None:  # fmt: skip
        self.host = host
        self.payload = payload  # --input: every command's stdin (None: /dev/null)
        self.groups = groups
        self.window = threading.Semaphore(max(1, window))
        self.cfg = cfg
        self.backend = Backend.from_spec(cfg["backend"])
        self.emit_lock = threading.Lock()
        self._emit = emit
        self.bind = bind
        self.advertise = advertise
        self.pending: dict[str, _Slot] = {}
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.closing = False
        self.command: subprocess.Popen | None = None
        # --barrier: commands wait for release() (root: all hosts up; agents: go)
        self.barrier = bool(cfg.get("barrier"))
        self.released = threading.Event()
        self.released_at = 0.0
        self.waiting: list[Callable[[], None]] = []  # what release() starts

    def emit(self, msg: dict[str, Any]) -> None:
        with self.emit_lock:
            self._emit(msg)

    # ------------------------------------------------------------- run

    def run(self) -> None:
        """Launch every group and run the command; return when all have ended."""
        threads = []
        if self.groups:
            self.listener = socket.create_server((self.bind, 0), backlog=128)
            self.parent_addr = f"{self.advertise}:{self.listener.getsockname()[1]}"
            threading.Thread(target=self._accept, daemon=True).start()
        # children first: their launches are on the critical path, our command is not
        threads += [threading.Thread(target=self._subtree, args=(g,), daemon=True)
                    for g in self.groups]  # fmt: skip
        if self.host is not None:
            threads.append(threading.Thread(target=self._run_command, daemon=True))
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        finally:
            self.close()

    def close(self) -> None:
        """Stop listening; kill whatever this node launched and still runs."""
        self.closing = True
        if self.listener is not None:
            self.listener.close()
        with self.lock:
            procs = list(self.procs)
        if self.command is not None and self.command.poll() is None:
            procs.append(self.command)
        for p in procs:
            if p.poll() is None:
                _killpg(p)

    def release(self) -> None:
        """--barrier: start the command here and pass go to every child (once)."""
        with self.lock:
            if self.released.is_set():
                return
            self.released_at = time.monotonic()
            self.released.set()
            waiting, self.waiting = self.waiting, []
        for start in waiting:
            start()

    def _on_release(self, start: Callable[[], None]) -> None:
        """Call ``start`` at release (at once if released already)."""
        with self.lock:
            if not self.released.is_set():
                self.waiting.append(start)
                return
        start()

    # --------------------------------------------------------- command

    def _run_command(self) -> None:
        assert self.host is not None
        timeout = self.cfg.get("timeout") or None
        while self.barrier and not self.released.wait(1.0):
            if self.closing:
                return
        feed = subprocess.DEVNULL if self.payload is None else subprocess.PIPE
        try:
            self.command = subprocess.Popen(
                ["/bin/sh", "-c", self.cfg["command"]], stdin=feed,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ(self.host),
                start_new_session=True)  # fmt: skip
        except OSError as exc:
            self.emit(plan.result(self.host, None, error=f"cannot run command: {exc}"))
            return
        error = None
        try:
            out, err = self.command.communicate(self.payload, timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(self.command)
            out, err = self.command.communicate()
            error = f"command timed out after {timeout:g} s"
        rc = self.command.returncode if error is None else None
        self.emit(plan.result(self.host, rc, out.decode(errors="replace"),
                              err.decode(errors="replace"), error))  # fmt: skip

    # ------------------------------------------------------- listening

    PER_SOURCE = 64  # unauthenticated connections waiting for their hello, per address
    MAX_PENDING = 512  # ... and in all; past either, the oldest of that address goes

    def _accept(self) -> None:
        """Accept and read every child's hello in this one thread (a selector).

        A stranger's connection costs a socket, never a thread: it must say
        hello within HELLO_TIMEOUT, at most PER_SOURCE wait per source address
        and MAX_PENDING in all (the oldest of the address, or of the address
        holding the most, is closed first).
        """
        import selectors

        assert self.listener is not None
        listener = self.listener
        listener.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        waiting: dict[socket.socket, tuple[float, str, bytearray]] = {}  # oldest first

        def drop(conn: socket.socket) -> None:
            waiting.pop(conn, None)
            sel.unregister(conn)
            conn.close()

        def admit(conn: socket.socket, source: str) -> None:
            mine = [c for c, w in waiting.items() if w[1] == source]
            if len(mine) >= self.PER_SOURCE:
                drop(mine[0])
            elif len(waiting) >= self.MAX_PENDING:
                counts = collections.Counter(w[1] for w in waiting.values())
                greedy = counts.most_common(1)[0][0]
                drop(next(c for c, w in waiting.items() if w[1] == greedy))
            conn.setblocking(False)
            waiting[conn] = (time.monotonic() + HELLO_TIMEOUT, source, bytearray())
            sel.register(conn, selectors.EVENT_READ)

        try:
            while not self.closing:
                for key, _ in sel.select(0.5):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is listener:
                        for _ in range(64):
                            try:
                                conn, peer = listener.accept()
                            except BlockingIOError:
                                break
                            admit(conn, str(peer[0]))
                        continue
                    self._hello_bytes(sock, waiting, drop, sel)
                now = time.monotonic()
                for conn in [c for c, w in waiting.items() if w[0] <= now]:
                    drop(conn)
        except OSError:
            pass  # the listener was closed: this node is ending
        finally:
            for conn in list(waiting):
                drop(conn)
            sel.close()

    def _hello_bytes(self, conn: socket.socket, waiting: dict, drop: Callable,
                     sel: Any) -> None:  # fmt: skip
        """More bytes of a waiting connection's hello; hand it over once complete."""
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf = waiting[conn][2]
        buf += data
        if not data or (b"\n" not in buf and len(buf) >= 4096):
            drop(conn)
            return
        if b"\n" not in buf:
            return
        waiting.pop(conn)
        sel.unregister(conn)
        try:
            msg = plan.decode(bytes(buf).partition(b"\n")[0])
        except plan.ProtocolError:
            conn.close()
            return
        token = msg.get("token")
        with self.lock:
            # a dict lookup of a 128-bit random one-time token: nothing to learn
            # from its timing, and it is removed on first use
            slot = None
            if msg["t"] == "hello" and isinstance(token, str):
                slot = self.pending.pop(token, None)
        if slot is None:
            conn.close()  # wrong or replayed token: not one of ours
            return
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        slot.conn = conn
        slot.ready.set()

    # -------------------------------------------------------- children

    def _subtree(self, group: list[str]) -> None:
        """Launch ``group``'s head, give it the rest; re-parent on failure."""
        while group and not self.closing:
            head, rest = group[0], group[1:]
            if not rest and not self.cfg.get("leaf_agents"):
                self.emit(self._leaf(head))
                return
            with self.window:
                conn, proc, error = self._launch(head)
            if conn is None:
                self.emit(plan.result(head, None, error=error))
                group = rest  # re-parent: the next host takes the head's place
                continue
            assert proc is not None
            try:
                group = self._relay(conn, head, rest)
            finally:
                conn.close()
                try:
                    proc.wait(timeout=EXIT_GRACE)
                except subprocess.TimeoutExpired:
                    _killpg(proc)
                    proc.wait()
                with self.lock:
                    self.procs.discard(proc)

    # ----------------------------------------------------------- leaves

    def _leaf(self, host: str) -> dict[str, Any]:
        """Run the command on a leaf host through the backend itself, as pdsh does.

        A host with no share needs no agent: the backend process runs the
        command (see :meth:`Backend.leaf_command`) and this node reads its
        output and exit status.  The marker line ends the connect timeout
        (down: the backend exits first; hanging: no marker in time).
        Returns the host's result message.
        """
        self.window.acquire()
        held = True
        try:
            self.emit(plan.state(host, "launched"))
            if self.backend.delay:
                time.sleep(self.backend.delay)  # the simulated rsh/ssh handshake
            if self.closing:
                return plan.result(host, None, error="launch cancelled")
            local = self.backend.kind == "exec"  # a local process: up once it exists
            command = self.cfg["command"]
            payload = self.payload
            if local:
                argv, env = ["/bin/sh", "-c", command], environ(host)
                if self.barrier:  # wait for the go line, then run the command
                    rest = "" if payload is not None else " </dev/null"
                    argv = ["/bin/sh", "-c", f'read _go || exit 125; exec /bin/sh -c "$0"{rest}',
                            command]  # fmt: skip
            else:
                argv = self.backend.argv(host, self.backend.leaf_command(
                    host, command, self.barrier, stdin=payload is not None))  # fmt: skip
                env = None
            piped = self.barrier or payload is not None
            try:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
                                        env=env, start_new_session=True)  # fmt: skip
            except OSError as exc:
                return plan.result(host, None, error=f"cannot launch: {exc}")
            with self.lock:
                self.procs.add(proc)
            if payload is not None and not self.barrier:
                _feed(proc, payload)
            try:
                res, held = self._leaf_io(host, proc, up=local)
                return res
            finally:
                if proc.poll() is None:
                    _killpg(proc)
                proc.wait()
                with self.lock:
                    self.procs.discard(proc)
        finally:
            if held:
                self.window.release()

    def _leaf_io(self, host: str, proc: subprocess.Popen,
                 up: bool = False) -> tuple[dict[str, Any], bool]:  # fmt: skip
        """Read a leaf's stdout/stderr to the end with bounded waits.

        ``up``: the command runs already (no marker to wait for: exec backend).
        Returns (result, whether the launch window slot is still held).
        """
        import selectors

        assert proc.stdout is not None and proc.stderr is not None
        connect_timeout = float(self.cfg.get("connect_timeout", 10))
        timeout = float(self.cfg.get("timeout") or 0)
        bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        out_fd = proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        held = True
        start = 0
        deadline = time.monotonic() + connect_timeout
        go = threading.Event()  # --barrier: the go line was written to the leaf

        def running() -> float:
            """The leaf is up: free the window slot; the new deadline."""
            nonlocal held
            self.window.release()
            held = False
            self.emit(plan.state(host, "running"))
            if self.barrier:
                self._on_release(lambda: self._go_leaf(proc, go))
            return time.monotonic() + timeout if timeout else float("inf")

        if up:
            deadline = running()
        error = None
        try:
            while sel.get_map() and error is None:
                if self.closing:
                    error = "launch cancelled" if not up else "cancelled"
                    break
                if self.barrier and up and not go.is_set():
                    deadline = float("inf")  # --timeout counts from the release
                elif self.barrier and up and deadline == float("inf") and timeout:
                    deadline = self.released_at + timeout
                wait = deadline - time.monotonic()
                if wait <= 0:
                    error = (f"command timed out after {timeout:g} s" if up
                             else f"no contact within {connect_timeout:g} s")  # fmt: skip
                    break
                for key, _ in sel.select(min(wait, 1.0)):
                    data = os.read(key.fd, 1 << 16)
                    if not data:
                        sel.unregister(key.fd)
                        continue
                    bufs[key.fd] += data
                    if key.fd == out_fd and not up:
                        i = bufs[out_fd].find(plan.LEAF_MARKER + b"\n")
                        if i >= 0 and (i == 0 or bufs[out_fd][i - 1 : i] == b"\n"):
                            up = True
                            start = i + len(plan.LEAF_MARKER) + 1
                            deadline = running()
        finally:
            sel.close()
        if error is not None:
            _killpg(proc)
            if not up:
                return plan.result(host, None, error=error), held
        else:
            try:
                proc.wait(timeout=EXIT_GRACE)  # the pipes are closed: it is ending
            except subprocess.TimeoutExpired:
                _killpg(proc)
        proc.wait()
        raw = bytes(bufs[out_fd][start:])
        status: int | None = proc.returncode
        if self.backend.kind == "rsh" and up:  # the status comes as the last stdout line
            raw, status = plan.split_status(raw)
            if status is None and error is None:
                error = "rsh: the remote exit status did not arrive (connection lost?)"
        out = raw.decode(errors="replace")
        err = bufs[proc.stderr.fileno()].decode(errors="replace")
        if not up:
            lines = [ln.strip() for ln in (bytes(bufs[out_fd]).decode(errors="replace")
                                           + "\n" + err).splitlines() if ln.strip()]  # fmt: skip
            why = " ".join(lines[-3:]) or "no message"
            error = f"launch failed (exit {proc.returncode}): {why}"
            return plan.result(host, None, error=error), held
        rc = status if error is None else None
        return plan.result(host, rc, out, err, error), held

    def _go_leaf(self, proc: subprocess.Popen, go: threading.Event) -> None:
        """--barrier: write the go line to a waiting leaf (its command starts)."""
        _feed(proc, b"go\n" + (self.payload or b""))
        go.set()

    def _launch(self, head: str) -> tuple[socket.socket | None, subprocess.Popen | None, str]:
        token = os.urandom(16).hex()
        slot = _Slot()
        with self.lock:
            self.pending[token] = slot
        self.emit(plan.state(head, "launched"))
        if self.backend.delay:
            time.sleep(self.backend.delay)  # the simulated rsh/ssh handshake
        hdr = plan.header(token, self.parent_addr, head, self.payload)
        forks = self.cfg.get("forkserver") if self.backend.kind == "exec" else None
        try:
            if forks:
                proc: Any = fork_agent(forks, hdr)
            else:
                proc = subprocess.Popen(self.backend.argv(head, self.backend.agent_command()),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        except OSError as exc:
            with self.lock:
                self.pending.pop(token, None)
            return None, None, f"cannot launch: {exc}"
        with self.lock:
            self.procs.add(proc)
        tail: collections.deque[str] = collections.deque(maxlen=3)
        reader = threading.Thread(target=self._read_launch_output, args=(proc, tail), daemon=True)
        if not forks:
            try:
                assert proc.stdin is not None
                proc.stdin.write(hdr)
                proc.stdin.flush()
            except OSError:
                pass  # the process died already: seen below
            reader.start()
        deadline = time.monotonic() + float(self.cfg.get("connect_timeout", 10))
        error = ""
        while not slot.ready.wait(0.02):
            if self.closing:
                error = "launch cancelled"
            elif proc.poll() is not None:
                if reader.is_alive():
                    reader.join(1)
                why = " ".join(tail) or "no message"
                error = f"launch failed (exit {proc.returncode}): {why}"
            elif time.monotonic() > deadline:
                error = f"no contact within {self.cfg.get('connect_timeout', 10):g} s"
            if error:
                with self.lock:
                    self.pending.pop(token, None)
                if not slot.ready.is_set():
                    _killpg(proc)
                    proc.wait()
                    with self.lock:
                        self.procs.discard(proc)
                    return None, None, error
                break
        self.emit(plan.state(head, "running"))
        assert slot.conn is not None
        return slot.conn, proc, ""

    def _read_launch_output(self, proc: subprocess.Popen, tail: collections.deque[str]) -> None:
        """Watch the launch channel: ship the zipapp on request, keep the last lines."""
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(plan.SHIP_MARKER):
                data = zipapp_bytes()
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(b"%d\n" % len(data) + data)
                    proc.stdin.flush()
                except OSError:
                    pass
                continue
            text = line.decode(errors="replace").strip()
            if text:
                tail.append(text)

    def _relay(self, conn: socket.socket, head: str, rest: list[str]) -> list[str]:
        """Relay the child's messages up until ``done``; return hosts to re-parent."""
        try:
            conn.sendall(plan.encode(plan.work(rest, self.cfg)))
        except OSError as exc:
            self.emit(plan.result(head, None, error=f"lost after launch: {exc}"))
            return rest
        if self.barrier:

            def go() -> None:
                try:
                    conn.sendall(plan.encode(plan.GO))
                except OSError:
                    pass  # lost: the relay loop below sees it

            self._on_release(go)
        missing = {head, *rest}
        launched: set[str] = {head}
        decoder = plan.Decoder()
        conn.settimeout(HEARTBEAT_TIMEOUT)
        reason = ""
        while not reason:
            try:
                data = conn.recv(1 << 16)
            except TimeoutError:
                reason = f"no heartbeat for {HEARTBEAT_TIMEOUT:g} s"
                break
            except OSError as exc:
                reason = f"connection lost: {exc}"
                break
            if not data:
                reason = "connection closed"
                break
            try:
                msgs = decoder.feed(data)
            except plan.ProtocolError as exc:
                reason = str(exc)
                break
            for msg in msgs:
                t = msg["t"]
                if t == "hb":
                    continue
                if t == "done":
                    for host in sorted(missing):
                        self.emit(plan.result(host, None, error=f"no result (via {head})"))
                    return []
                if t == "st" and msg.get("s") == "launched":
                    launched.add(msg.get("h", ""))
                elif t == "res":
                    missing.discard(msg.get("h", ""))
                self.emit(msg)
        lost = [h for h in sorted(missing) if h in launched]
        for host in lost:
            self.emit(plan.result(host, None, error=f"lost: {head}: {reason}"))
        return [h for h in rest if h not in launched]


# ------------------------------------------------------------------ agent


def shipped(path: str) -> None:
    """Called by the bootstrap when it ran us from a shipped zipapp at ``path``."""
    with open(path, "rb") as fh:
        set_shipped(fh.read())
    os.unlink(path)  # every module the agent needs is imported already


def _local_addresses() -> tuple[str | None, str | None]:
    """(parent's address, our address) as sshd saw them, if we came over ssh."""
    conn = os.environ.get("SSH_CONNECTION", "").split()
    if len(conn) == 4:
        return conn[0], conn[2]
    return None, None


def main(header_line: bytes | None = None) -> int:
    """Agent entry point: connect back, get work, launch, run, report."""
    if header_line is None:
        header_line = sys.stdin.buffer.readline()
    try:
        hdr = plan.parse_header(header_line)
        phost, pport = plan.split_parent(hdr["parent"])
        payload = plan.header_payload(hdr)
    except plan.ProtocolError as exc:
        print(f"beo agent: {exc}", file=sys.stderr)
        return 2
    ssh_client, ssh_server = _local_addresses()
    if phost == "@ssh":
        phost = ssh_client or "127.0.0.1"
    try:
        up = socket.create_connection((phost, pport), timeout=10)
        # small messages, relayed at once: no Nagle (with delayed ACKs it held
        # a second message ~40 ms at every level)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.sendall(plan.encode(plan.hello(hdr["token"], hdr["h"])))
        up.settimeout(30)
        decoder = plan.Decoder()
        msgs: list[dict[str, Any]] = []
        while not msgs:
            data = up.recv(1 << 16)
            if not data:
                raise ConnectionError("parent closed the connection")
            msgs = decoder.feed(data)
    except (OSError, plan.ProtocolError) as exc:
        print(f"beo agent {hdr['h']}: parent {phost}:{pport}: {exc}", file=sys.stderr)
        return 1
    if msgs[0]["t"] != "work":
        print(f"beo agent: expected work, got {msgs[0]['t']!r}", file=sys.stderr)
        return 1
    cfg = msgs[0]["cfg"]
    groups = plan.child_groups(msgs[0]["hosts"], int(cfg.get("fanout", 0)))
    bind = ssh_server or cfg.get("agent_bind", "127.0.0.1")
    send_lock = threading.Lock()
    finished = threading.Event()
    node: Node

    def abort(why: str) -> None:
        print(f"beo agent {hdr['h']}: {why}; stopping", file=sys.stderr)
        node.close()
        os._exit(1)

    def send(msg: dict[str, Any]) -> None:
        try:
            with send_lock:
                up.sendall(plan.encode(msg))
        except OSError as exc:
            abort(f"parent lost: {exc}")

    def heartbeat() -> None:
        while True:
            time.sleep(HEARTBEAT_EVERY)
            send(plan.HEARTBEAT)

    def watch_parent() -> None:
        if any(m["t"] == "go" for m in msgs[1:]):
            node.release()
        while True:
            try:
                data = up.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data and not finished.is_set():
                abort("parent closed the connection")
            if not data:
                return
            try:
                if any(m["t"] == "go" for m in decoder.feed(data)):
                    node.release()
            except plan.ProtocolError as exc:
                abort(f"parent: {exc}")

    advertise = hdr["h"] if bind in ("0.0.0.0", "::") else bind
    node = Node(hdr["h"], groups, len(groups), cfg, send, bind, advertise, payload)
    threading.Thread(target=heartbeat, daemon=True).start()
    threading.Thread(target=watch_parent, daemon=True).start()
    node.run()
    finished.set()
    send(plan.DONE)
    with send_lock:
        up.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
