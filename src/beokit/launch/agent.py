"""The launcher's I/O driver: an :class:`Agent` launches its children and relays.

The root (``beo run``) and every agent on the nodes run the same :class:`Agent`:

1. for each group of hosts (head + share), launch the head through the
   backend with a fresh random token on its stdin, wait (bounded) until it
   connects back and says hello with that token
   (:class:`~beokit.launch.listen.HelloListener`), send it its share;
2. relay what comes up from that child (progress, results, heartbeats) to
   its own parent, until the child says ``done``;
   a head with no share (a *leaf*) gets no agent: the backend process runs
   the command itself and this agent reads its output and exit status
   (:func:`~beokit.launch.leaf.run_leaf`), as pdsh does;
3. if a head cannot be launched (down, refused, hanging), report it by name
   and launch the next host of its group in its place: the subtree is
   re-parented to this agent.  If a child is lost later, the hosts of its
   share that were never launched are re-parented the same way, the others
   are reported lost.

Every child proceeds at its own pace: one thread per child (the seed's
multi-threaded design).  Every wait is bounded: connect timeout, heartbeat
timeout, the user's command timeout.  :func:`main` is the entry point of an
agent on a node (:data:`~beokit.launch.backends.BOOTSTRAP` calls it).

Standard library only (:mod:`beokit.launch.ship` lists what is shipped).
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

from beokit import framing
from beokit.errors import WireError
from beokit.launch import plan
from beokit.launch.backends import Backend, environ
from beokit.launch.leaf import EXIT_GRACE, run_leaf
from beokit.launch.listen import HelloListener, Slot
from beokit.launch.ship import zipapp_bytes
from beokit.net import host_port
from beokit.proc import ForkedCommand, ShellCommand, kill_group, request_fork, signal_name

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Emit = Callable[[dict[str, Any]], None]

# The command's environment names the address this host reached its launch parent
# from: the node's address on the network of the tree (beo cast's receivers report
# it as their data address when the node's name means nothing to the root).
ADDRESS_ENV = "BEO_ADDR"
HEARTBEAT_EVERY = 1.0
HEARTBEAT_TIMEOUT = 10.0  # a child silent this long is lost
FORKED_AGENT = "beo-agent"  # what ps and top call an agent forked by the fork server


class Agent:
    """Launch ``groups`` (``window`` launches in flight), relay results to ``emit``.

    ``host`` is this agent's own host (None at the root, which runs no command);
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
        self.address = ""  # this host's address toward its parent (BEO_ADDR of its command)
        self.parent_addr = ""
        self.leaves: set[subprocess.Popen] = set()  # leaf processes (killed on close)
        self.launches: set[Any] = set()  # agents' launch processes
        self.children: set[socket.socket] = set()  # connections of launched agents
        self.lock = threading.Lock()
        self.listener: HelloListener | None = None
        self.closing = False
        self.command: ShellCommand | None = None
        # --barrier: commands wait for release() (root: all hosts up; agents: go)
        self.barrier = bool(cfg.get("barrier"))
        self.released = threading.Event()
        self.released_at = 0.0
        self.waiting: list[Callable[[], None]] = []  # what release() starts

    def emit(self, msg: dict[str, Any]) -> None:
        with self.emit_lock:
            self._emit(msg)

    def track(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.leaves.add(proc)

    def untrack(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.leaves.discard(proc)

    # ------------------------------------------------------------- run

    def run(self) -> None:
        """Launch every group and run the command; return when all have ended."""
        threads = []
        if self.groups and not self._listen():
            self.groups = []
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

    def _listen(self) -> bool:
        """Listen for the children's hellos; if this host cannot, every host of the
        groups is failed with the reason (the root shows it) and False."""
        try:
            self.listener = HelloListener(self.bind)
        except OSError as exc:
            where = f"on {self.host}" if self.host else "here"
            why = (f"not launched: cannot listen {where} on {self.bind or 'all addresses'} "
                   f"for the launch tree: {exc.strerror or exc}")  # fmt: skip
            for group in self.groups:
                for h in group:
                    self.emit(plan.result(h, None, error=why))
            return False
        self.parent_addr = host_port(self.advertise, self.listener.port)
        self.listener.start()
        return True

    def close(self) -> None:
        """Stop: no more launches; our command and leaves are killed; every launched
        agent is told to stop and loses its connection to us (it then kills its
        own command and subtree and exits; its thread here waits EXIT_GRACE for
        that, then kills its launch process)."""
        self.closing = True
        if self.listener is not None:
            self.listener.close()
        with self.lock:
            children, leaves = list(self.children), list(self.leaves)
        for conn in children:
            try:
                conn.sendall(framing.encode(plan.STOP))  # a few bytes: never blocks
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.command is not None:
            self.command.kill()
        for p in leaves:
            if p.poll() is None:
                kill_group(p)

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

    def on_release(self, start: Callable[[], None]) -> None:
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
        env = environ(self.host)
        if self.address:
            env[ADDRESS_ENV] = self.address
        try:
            entry = self.cfg.get("entry")
            if entry:  # a Python program: forked from this agent, which imported it
                self.command = ForkedCommand(str(entry), env=env, input=self.payload,
                                             name=str(self.cfg.get("entry_name") or ""))  # fmt: skip
            else:
                self.command = ShellCommand(self.cfg["command"], env=env, input=self.payload)
        except (OSError, ImportError) as exc:
            self.emit(plan.result(self.host, None, error=f"cannot run command: {exc}"))
            return
        if self.closing:  # close() came while it started: it may have missed it
            self.command.kill()
        done = self.command.finish(timeout)
        self.emit(plan.result(self.host, done.returncode, done.out.decode(errors="replace"),
                              done.err.decode(errors="replace"), done.error))  # fmt: skip

    # -------------------------------------------------------- children

    def _subtree(self, group: list[str]) -> None:
        """Launch ``group``'s head, give it the rest; re-parent on failure."""
        while group and not self.closing:
            head, rest = group[0], group[1:]
            if not rest and not self.cfg.get("leaf_agents"):
                self.emit(run_leaf(self, head))
                return
            with self.window:
                conn, proc, error = self._launch(head)
            if conn is None:
                self.emit(plan.result(head, None, error=error))
                group = rest  # re-parent: the next host takes the head's place
                continue
            with self.lock:
                self.children.add(conn)
            try:
                group = self._relay(conn, head, rest)
            finally:
                with self.lock:
                    self.children.discard(conn)
                conn.close()
                self._reap_launch(proc)

    def _reap_launch(self, proc: Any) -> None:
        """A child agent is done (or lost): its launch process must end, bounded."""
        try:
            proc.wait(timeout=EXIT_GRACE)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.wait()
        with self.lock:
            self.launches.discard(proc)

    def _start_agent(self, head: str, hdr: bytes) -> Any:
        """The process that becomes ``head``'s agent (OSError if it cannot start)."""
        forks = self.cfg.get("forkserver") if self.backend.kind == "exec" else None
        if forks:
            return request_fork(forks, hdr)
        proc = subprocess.Popen(self.backend.argv(head, self.backend.agent_command()),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            assert proc.stdin is not None
            proc.stdin.write(hdr)
            proc.stdin.flush()
        except OSError:
            pass  # the process died already: seen by the caller
        return proc

    def _launch(self, head: str) -> tuple[socket.socket | None, Any, str]:
        """Start ``head``'s agent and wait (bounded) for its hello: (connection, its
        launch process, "") or (None, None, why it failed)."""
        assert self.listener is not None
        token, slot = self.listener.expect()
        self.emit(plan.state(head, "launched"))
        if self.backend.delay:
            time.sleep(self.backend.delay)  # the simulated rsh/ssh handshake
        try:
            proc = self._start_agent(head, plan.header(token, self.parent_addr, head,
                                                       self.payload))  # fmt: skip
        except OSError as exc:
            self.listener.forget(token)
            return None, None, f"cannot launch: {exc}"
        with self.lock:
            self.launches.add(proc)
        tail: collections.deque[str] = collections.deque(maxlen=3)
        reader = None
        if proc.stdout is not None:  # not a forked agent: watch its launch channel
            reader = threading.Thread(target=self._read_launch_output, args=(proc, tail),
                                      daemon=True)  # fmt: skip
            reader.start()
        error = self._await_hello(slot, proc, reader, tail)
        if error:
            self.listener.forget(token)
            if not slot.ready.is_set():
                kill_group(proc)
                proc.wait()
                with self.lock:
                    self.launches.discard(proc)
                return None, None, error
        self.emit(plan.state(head, "running"))
        assert slot.conn is not None
        return slot.conn, proc, ""

    def _await_hello(self, slot: Slot, proc: Any, reader: threading.Thread | None,
                     tail: collections.deque[str]) -> str:  # fmt: skip
        """Wait for the child's hello: "" once it came, else why it will not."""
        connect_timeout = float(self.cfg.get("connect_timeout", 10))
        deadline = time.monotonic() + connect_timeout
        while not slot.ready.wait(0.02):
            if self.closing:
                return "launch cancelled"
            if proc.poll() is not None:
                if reader is not None and reader.is_alive():
                    reader.join(1)
                return plan.launch_failed(proc.returncode, " ".join(tail) or "no message")
            if time.monotonic() > deadline:
                return f"no contact within {connect_timeout:g} s"
        return ""

    def _read_launch_output(self, proc: subprocess.Popen, tail: collections.deque[str]) -> None:
        """Watch the launch channel: ship the zipapp on request, keep the last lines."""
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(plan.SHIP_MARKER):
                data = zipapp_bytes(tuple(self.cfg.get("ship") or ()))
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
            conn.sendall(framing.encode(plan.work(rest, self.cfg)))
        except OSError as exc:
            self.emit(plan.result(head, None, error=f"lost after launch: {exc}"))
            return rest
        if self.barrier:

            def go() -> None:
                try:
                    conn.sendall(framing.encode(plan.GO))
                except OSError:
                    pass  # lost: the relay loop below sees it

            self.on_release(go)
        missing = {head, *rest}
        launched: set[str] = {head}
        reason = self._relay_until_done(conn, head, missing, launched)
        if not reason:
            return []
        lost = [h for h in sorted(missing) if h in launched]
        for host in lost:
            self.emit(plan.result(host, None, error=f"lost: {head}: {reason}"))
        return [h for h in rest if h not in launched]

    def _relay_until_done(self, conn: socket.socket, head: str, missing: set[str],
                          launched: set[str]) -> str:  # fmt: skip
        """Pass the child's messages up: "" once it said done, else why it was lost."""
        decoder = framing.LineDecoder(plan.MAX_LINE)
        conn.settimeout(HEARTBEAT_TIMEOUT)
        while True:
            try:
                data = conn.recv(1 << 16)
            except TimeoutError:
                return f"no heartbeat for {HEARTBEAT_TIMEOUT:g} s"
            except OSError as exc:
                return f"connection lost: {exc}"
            if not data:
                return "connection closed"
            try:
                msgs = decoder.feed(data)
            except WireError as exc:
                return str(exc)
            for msg in msgs:
                t = msg["t"]
                if t == "hb":
                    continue
                if t == "done":
                    for host in sorted(missing):
                        self.emit(plan.result(host, None, error=f"no result (via {head})"))
                    return ""
                if t == "st" and msg.get("s") == "launched":
                    launched.add(msg.get("h", ""))
                elif t == "res":
                    missing.discard(msg.get("h", ""))
                self.emit(msg)


# ------------------------------------------------------------------ agent


class ParentLink:
    """An agent's connection to its parent: hello and work, then messages up
    (results, heartbeats) and ``go`` down.  Losing it stops the agent."""

    def __init__(self, sock: socket.socket, host: str, first: list[dict[str, Any]],
                 decoder: framing.LineDecoder) -> None:  # fmt: skip
        self.sock = sock
        self.host = host
        self.first = first  # the work message, and a go that came with it
        self.decoder = decoder
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.agent: Agent | None = None
        self._stopping = threading.Lock()

    @classmethod
    def connect(cls, parent: tuple[str, int], token: str, host: str) -> ParentLink:
        """Say hello with our token; return once the parent sent our work."""
        sock = socket.create_connection(parent, timeout=10)
        # small messages, relayed at once: no Nagle (with delayed ACKs it held
        # a second message ~40 ms at every level)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(framing.encode(plan.hello(token, host)))
        sock.settimeout(30)
        decoder = framing.LineDecoder(plan.MAX_LINE)
        msgs: list[dict[str, Any]] = []
        while not msgs:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("parent closed the connection")
            msgs = decoder.feed(data)
        return cls(sock, host, msgs, decoder)

    def start(self, agent: Agent) -> None:
        """Heartbeats up, the parent watched; SIGTERM/SIGHUP stop the agent."""
        self.agent = agent
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda signum, _f: self.abort(f"stopped by {signal_name(signum)}"))
        threading.Thread(target=self._heartbeat, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def send(self, msg: dict[str, Any]) -> None:
        try:
            with self.lock:
                self.sock.sendall(framing.encode(msg))
        except OSError as exc:
            self.abort(f"parent lost: {exc}")

    def finish(self) -> None:
        """Our subtree is done: say so and hang up."""
        self.finished.set()
        self.send(plan.DONE)
        with self.lock:
            self.sock.close()

    def abort(self, why: str) -> None:
        """Stop everything this agent started, now, and exit (``why`` "": quietly,
        as the parent asked).  Once: a second call returns while the first ends us."""
        if not self._stopping.acquire(blocking=False):
            return
        if why:
            print(f"beo agent {self.host}: {why}; stopping", file=sys.stderr)
        if self.agent is not None:
            self.agent.close()
        os._exit(1)

    def _heartbeat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_EVERY)
            self.send(plan.HEARTBEAT)

    def _obey(self, msgs: list[dict[str, Any]]) -> None:
        """The parent's word: ``stop`` (end quietly) or ``go`` (--barrier)."""
        assert self.agent is not None
        kinds = {m["t"] for m in msgs}
        if "stop" in kinds:
            self.abort("")
        if "go" in kinds:
            self.agent.release()

    def _watch(self) -> None:
        self._obey(self.first[1:])
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data and not self.finished.is_set():
                self.abort("parent closed the connection")
            if not data:
                return
            try:
                self._obey(self.decoder.feed(data))
            except WireError as exc:
                self.abort(f"parent: {exc}")


def _ssh_client() -> str | None:
    """The address our parent's ssh came from, if sshd started us (``@ssh``)."""
    conn = os.environ.get("SSH_CONNECTION", "").split()
    return conn[0] if len(conn) == 4 else None


def _bind_and_advertise(cfg: dict[str, Any], address: str) -> tuple[str, str]:
    """Where this agent listens for its children and the address it tells them.

    ``address`` is this host's end of its connection to its parent: an
    address of this host on the tree's network, which its children (on that
    network too) can reach.  The agent listens on every address of that
    family, not on the parent's ``--listen`` address (which is not this
    host's), unless the run names one (``agent_bind``: 127.0.0.1 with
    ``-R exec``).
    """
    bind = str(cfg.get("agent_bind") or "")
    if bind and bind not in ("0.0.0.0", "::"):
        return bind, bind
    return ("::" if ":" in address else "0.0.0.0"), address


def main(header_line: bytes | None = None) -> int:
    """Agent entry point: connect back, get work, launch, run, report."""
    if header_line is None:
        header_line = sys.stdin.buffer.readline()
    try:
        hdr = plan.parse_header(header_line)
        phost, pport = plan.split_parent(hdr["parent"])
        payload = plan.header_payload(hdr)
    except WireError as exc:
        print(f"beo agent: {exc}", file=sys.stderr)
        return 2
    if phost == "@ssh":
        phost = _ssh_client() or "127.0.0.1"
    try:
        parent = ParentLink.connect((phost, pport), hdr["token"], hdr["h"])
    except (OSError, WireError) as exc:
        print(f"beo agent {hdr['h']}: parent {host_port(phost, pport)}: {exc}", file=sys.stderr)
        return 1
    work = parent.first[0]
    if work["t"] != "work":
        print(f"beo agent: expected work, got {work['t']!r}", file=sys.stderr)
        return 1
    cfg = work["cfg"]
    groups = plan.child_groups(work["hosts"], int(cfg.get("fanout", 0)))
    address = str(parent.sock.getsockname()[0])
    bind, advertise = _bind_and_advertise(cfg, address)
    agent = Agent(hdr["h"], groups, len(groups), cfg, parent.send, bind, advertise, payload)
    agent.address = address
    parent.start(agent)
    agent.run()
    parent.finish()
    # nothing of ours is left to clean up: skip the interpreter's own (tens of ms a node)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
