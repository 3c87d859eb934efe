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
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

from beokit import framing
from beokit.errors import WireError
from beokit.launch import plan
from beokit.launch.backends import LOCAL, Backend, environ
from beokit.launch.leaf import EXIT_GRACE, run_leaf
from beokit.launch.listen import HelloListener, Slot
from beokit.launch.ship import zipapp_bytes
from beokit.launch.uplink import HEARTBEAT_TIMEOUT, ParentLink, bind_and_advertise, ssh_client
from beokit.launch.window import LaunchWindow
from beokit.net import host_port
from beokit.proc import ForkedCommand, ShellCommand, kill_group, request_fork

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Emit = Callable[[dict[str, Any]], None]

# The command's environment names the address this host reached its launch parent
# from: the node's address on the network of the tree (beo cast's receivers report
# it as their data address when the node's name means nothing to the root).
ADDRESS_ENV = "BEO_ADDR"
FORKED_AGENT = "beo-agent"  # what ps and top call an agent forked by the fork server


class Agent:
    """Launch ``groups`` (``window`` launches in flight), relay results to ``emit``.

    ``host`` is this agent's own host (None at the root, which runs no command);
    ``cfg`` is the run configuration every agent receives (command, fanout,
    timeouts, backend spec).
    """

    def __init__(self, host: str | None, groups: list[list[str]], window: int,
                 cfg: dict[str, Any], emit: Emit, bind: str, advertise: str,
                 payload: bytes | None = None, steps: list[int] | None = None) -> None:  # fmt: skip
        self.host = host
        self.payload = payload  # --input: every command's stdin (None: /dev/null)
        self.groups = groups
        # busy tree (plan.busy_groups): the launch steps each group's head has left,
        # passed on in its work message; None: children split their share with pack
        self.steps = steps
        # launches in flight: at most window; over a real remote backend (not exec, netns)
        # fewer while they come up slower than the first did (launch/window.py)
        self.window = LaunchWindow(window, adaptive=cfg["backend"].get("kind") not in LOCAL)
        self.fanout = max(1, window)
        # groups waiting for a launch slot, in launch order (re-parented and stolen
        # groups go first); the dispatcher in run() starts one thread per group
        self.queue: collections.deque[tuple[list[str], int | None]] = collections.deque()
        self.queue_cond = threading.Condition()
        self.busy_threads = 0  # group threads still running (they may queue more)
        self.launch_times: list[float] = []  # seconds each launch took until up
        # an agent's way up for relayed lines, passed on unchanged (None: the root,
        # which reads every message)
        self.raw: Callable[[bytes], None] | None = None
        self.steals = 0
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
        # readable (at its end) once close() was called: what blocking waits watch
        self.stop_fd, self._stop_w = os.pipe()
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
        if self.groups and not self._listen():
            self.groups, self.steps = [], None
        steps = self.steps if self.steps is not None else [None] * len(self.groups)
        self.queue.extend(zip(self.groups, steps, strict=True))
        threads = []
        try:
            # children first: their launches are on the critical path, our command is not
            threads = self._dispatch(self.host is not None)
            for t in threads:
                t.join()
        finally:
            self.close()
            if not any(t.is_alive() for t in threads):  # (interrupted: they may still poll it)
                os.close(self.stop_fd)

    def _dispatch(self, command: bool) -> list[threading.Thread]:
        """Start a thread per queued group, in order, each once a launch slot is free,
        until the queue is empty and no group thread can queue more; the threads."""
        threads = []
        while True:
            with self.queue_cond:
                while not self.queue and self.busy_threads and not self.closing:
                    self.queue_cond.wait()  # woken by requeue, a group's end, close
                if not self.queue or self.closing:
                    break
                group, steps = self.queue.popleft()
                self.busy_threads += 1
            while not self.window.acquire(timeout=1.0):
                if self.closing:
                    break
            t = threading.Thread(target=self._group_thread, args=(group, steps), daemon=True)
            t.start()
            threads.append(t)
            if command:  # our own command, once the first launch is under way
                threads.append(threading.Thread(target=self._run_command, daemon=True))
                threads[-1].start()
                command = False
        if command:
            threads.append(threading.Thread(target=self._run_command, daemon=True))
            threads[-1].start()
        return threads

    def requeue(self, group: list[str], steps: int | None) -> None:
        """Launch ``group`` (head + share) from here, before what is queued."""
        if group:
            with self.queue_cond:
                self.queue.appendleft((group, steps))
                self.queue_cond.notify_all()

    def _group_thread(self, group: list[str], steps: int | None) -> None:
        """One group, holding a launch slot from the dispatcher."""
        try:
            self._subtree(group, steps)
        finally:
            with self.queue_cond:
                self.busy_threads -= 1
                self.queue_cond.notify_all()

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
        with self.lock:
            if self._stop_w >= 0:
                os.close(self._stop_w)  # wakes every leaf's wait
                self._stop_w = -1
        with self.queue_cond:
            self.queue_cond.notify_all()
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

    def _subtree(self, group: list[str], steps: int | None) -> None:
        """Launch ``group``'s head (a launch slot is held), give it the rest; on
        failure re-parent: what was not launched is queued here again (the next
        host takes the head's place)."""
        head, rest = group[0], group[1:]
        if self.closing:
            self.window.release()
            return
        if not rest and not self.cfg.get("leaf_agents"):
            self.emit(run_leaf(self, head, held=True))
            return
        launch = _Launch(self, head, rest, steps)
        try:
            conn, proc, error = self._launch(launch)
        finally:
            launch.release()
        if conn is None:
            self.emit(plan.result(head, None, error=error))
            self.requeue(launch.rest, steps)  # re-parent
            return
        with self.lock:
            self.children.add(conn)
        try:
            left = self._relay(conn, head, launch.rest, steps)
        finally:
            with self.lock:
                self.children.discard(conn)
            conn.close()
            self._reap_launch(proc)
        self.requeue(left, steps)

    def _reap_launch(self, proc: Any) -> None:
        """A child agent is done (or lost): its launch process must end, bounded."""
        try:
            proc.wait(timeout=EXIT_GRACE)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.wait()
        with self.lock:
            self.launches.discard(proc)

    def forks(self) -> str | None:
        """The fork server's path, where agents are forked on this machine."""
        return self.cfg.get("forkserver") if self.backend.local else None

    def _netns(self, head: str) -> str | None:
        """-R netns with forked agents: the namespace ``head``'s agent enters first
        (OSError now if there is none: a forked agent's own errors reach nobody)."""
        if self.backend.kind != "netns" or not self.forks():
            return None
        from beokit.linux import NETNS_DIR

        name = self.backend.namespace(head)
        if not os.path.exists(os.path.join(NETNS_DIR, name)):
            raise OSError(f"no network namespace {name!r} (ip netns list)")
        return name

    def _start_agent(self, head: str, hdr: bytes) -> Any:
        """The process that becomes ``head``'s agent (OSError if it cannot start)."""
        forks = self.forks()
        if forks:
            # its stderr comes to us, as an ssh channel's would: why it failed
            r, w = os.pipe()
            try:
                proc = request_fork(forks, hdr, stderr=w)
            except OSError:
                os.close(r)
                raise
            finally:
                os.close(w)
            proc.stdout = os.fdopen(r, "rb")
            return proc
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

    def _launch(self, launch: _Launch) -> tuple[socket.socket | None, Any, str]:
        """Start ``head``'s agent and wait (bounded) for its hello: (connection, its
        launch process, "") or (None, None, why it failed)."""
        assert self.listener is not None
        head = launch.head
        token, slot = self.listener.expect()
        self.emit(plan.state(head, "launched"))
        if self.backend.delay:
            time.sleep(self.backend.delay)  # the simulated rsh/ssh handshake
        try:
            netns = self._netns(head)
            proc = self._start_agent(head, plan.header(token, self.parent_addr, head,
                                                       self.payload, netns))  # fmt: skip
        except OSError as exc:
            self.listener.forget(token)
            return None, None, f"cannot launch: {exc}"
        with self.lock:
            self.launches.add(proc)
        tail: collections.deque[str] = collections.deque(maxlen=3)
        reader = None
        if proc.stdout is not None:  # watch its launch channel (a forked one: its stderr)
            reader = threading.Thread(target=self._read_launch_output, args=(proc, tail, slot),
                                      daemon=True)  # fmt: skip
            reader.start()
        error = self._await_hello(slot, proc, reader, tail, launch)
        if error:
            self.listener.forget(token)
            if slot.conn is None:
                kill_group(proc)
                proc.wait()
                with self.lock:
                    self.launches.discard(proc)
                return None, None, error
        self.emit(plan.state(head, "running"))
        self.took(time.monotonic() - launch.start)
        assert slot.conn is not None
        return slot.conn, proc, ""

    def took(self, seconds: float) -> None:
        """A launch of ours was up after ``seconds`` (what an overdue one is measured by)."""
        with self.lock:
            self.launch_times.append(seconds)
        self.window.up(seconds)

    def overdue_after(self) -> float:
        """Seconds after which a launch is overdue: twice the median of our launches
        that came up (at least 50 ms more); inf until one has."""
        with self.lock:
            times = sorted(self.launch_times)
        if not times:
            return float("inf")
        typical = times[len(times) // 2]
        return max(STEAL_FACTOR * typical, typical + 0.05)

    def _await_hello(self, slot: Slot, proc: Any, reader: threading.Thread | None,
                     tail: collections.deque[str], launch: _Launch) -> str:  # fmt: skip
        """Wait for the child's hello: "" once it came, else why it will not.  The slot
        is set by the hello, by the end of the launch channel (the process ended:
        :meth:`_read_launch_output`) and by the listener's close; a launch with a
        share to steal looks again every STEAL_POLL seconds."""
        connect_timeout = float(self.cfg.get("connect_timeout", 10))
        deadline = time.monotonic() + connect_timeout
        steal = bool(launch.rest and self.cfg.get("steal"))
        poll = STEAL_POLL if steal else (None if reader is not None else CHANNEL_POLL)
        while True:
            left = deadline - time.monotonic()
            slot.ready.wait(max(0.0, left if poll is None else min(left, poll)))
            if slot.conn is not None:
                return ""
            if self.closing:
                return "launch cancelled"
            if steal:
                launch.steal_if_overdue()
            if slot.ready.is_set():  # its launch channel ended: the process is ending
                slot.ready.clear()  # (a hello after this is seen at the next look)
                if slot.conn is not None:
                    return ""
                try:
                    proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:  # it lives on without it: look again
                    poll = min(poll or CHANNEL_POLL, CHANNEL_POLL)
            if proc.poll() is not None:
                if reader is not None and reader.is_alive():
                    reader.join(1)
                rc = proc.returncode if getattr(proc, "status_known", True) else None
                return plan.launch_failed(rc, " ".join(tail) or "no message")
            if time.monotonic() >= deadline:
                return f"no contact within {connect_timeout:g} s"

    def _read_launch_output(self, proc: subprocess.Popen, tail: collections.deque[str],
                            slot: Slot) -> None:  # fmt: skip
        """Watch the launch channel: ship the zipapp on request, keep the last lines;
        at its end (the launch process ended) wake the launch waiting for the hello."""
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if not line.startswith(plan.SHIP_MARKER):
                    if text := line.decode(errors="replace").strip():
                        tail.append(text)
                    continue
                data = zipapp_bytes(tuple(self.cfg.get("ship") or ()))
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(b"%d\n" % len(data) + data)
                    proc.stdin.flush()
                except OSError:
                    pass
        finally:
            slot.ready.set()

    def _relay(self, conn: socket.socket, head: str, rest: list[str],
               steps: int | None = None) -> list[str]:  # fmt: skip
        """Relay the child's messages up until ``done``; return hosts to re-parent."""
        try:
            conn.sendall(framing.encode(plan.work(rest, self.cfg, steps)))
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
        """Pass the child's messages up: "" once it said done, else why it was lost.
        An agent passes them on as they came, the lines of one read in one write
        (:attr:`raw`); the root hands each to ``emit``."""
        lines = framing.LineBuffer(plan.MAX_LINE)
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
            out: list[bytes] = []
            try:
                for line in lines.lines(data):
                    msg = framing.decode(line)
                    t = msg["t"]
                    if t == "hb":
                        continue
                    if t == "done":
                        self._flush(out)
                        for host in sorted(missing):
                            self.emit(plan.result(host, None, error=f"no result (via {head})"))
                        return ""
                    if t == "st" and msg.get("s") == "launched":
                        launched.add(msg.get("h", ""))
                    elif t == "res":
                        missing.discard(msg.get("h", ""))
                    if self.raw is None:
                        self.emit(msg)
                    else:
                        out.append(line + b"\n")
            except WireError as exc:
                self._flush(out)
                return str(exc)
            self._flush(out)

    def _flush(self, out: list[bytes]) -> None:
        if out and self.raw is not None:
            self.raw(b"".join(out))


STEAL_FACTOR = 2.0  # a launch not up after this many typical launch times is overdue
STEAL_POLL = 0.05  # how often a launch with a share looks whether it is overdue
CHANNEL_POLL = 0.1  # how often a launch whose channel says nothing looks at its process


class _Launch:
    """One launch of a head with a share, holding a slot of the agent's window.

    Work stealing (``cfg["steal"]``): while the head is overdue (see
    :meth:`Agent.overdue_after`) and this agent has nothing else queued, its
    share is taken back and queued here (the agent's slots are idle: they
    launch it); the launch gives its slot up and goes on waiting for the
    head, which gets an empty share when it comes up and runs only its
    command.  The late head no longer holds its subtree back.
    """

    def __init__(self, agent: Agent, head: str, rest: list[str], steps: int | None) -> None:
        self.agent = agent
        self.head = head
        self.rest = rest
        self.steps = steps
        self.start = time.monotonic()
        self.held = True
        agent.window.begin()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.agent.window.release()

    def steal_if_overdue(self) -> None:
        agent = self.agent
        if time.monotonic() - self.start < agent.overdue_after():
            return
        with agent.queue_cond:
            if agent.queue:  # our slots have work of their own
                return
        share, self.rest = self.rest, []
        for group, steps in reversed(plan.busy_groups(share, agent.fanout, self.steps)):
            agent.requeue(group, steps)
        agent.steals += 1
        self.release()


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
    if hdr.get("netns"):  # forked on this machine for a host that is a namespace
        from beokit.linux import enter_netns  # preloaded by the fork server

        try:
            enter_netns(str(hdr["netns"]))
        except OSError as exc:
            print(f"beo agent {hdr['h']}: network namespace {hdr['netns']!r}: {exc}",
                  file=sys.stderr)  # fmt: skip
            return 1
    if phost == "@ssh":
        phost = ssh_client() or "127.0.0.1"
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
    fanout = int(cfg.get("fanout", 0))
    steps: list[int] | None = None
    if work.get("steps") is not None and fanout > 0:  # busy tree: k in flight
        pairs = plan.busy_groups(work["hosts"], fanout, int(work["steps"]))
        groups, steps, window = [g for g, _ in pairs], [s for _, s in pairs], fanout
    else:
        groups = plan.child_groups(work["hosts"], fanout)
        window = len(groups)
    address = str(parent.sock.getsockname()[0])
    bind, advertise = bind_and_advertise(cfg, address)
    agent = Agent(hdr["h"], groups, window, cfg, parent.send, bind, advertise, payload, steps)
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
