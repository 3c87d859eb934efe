"""An agent's link to its launch parent (:class:`ParentLink`) and where it listens.

Hello and work come down once; then results, progress and heartbeats go up
(one write at a time: what piled up goes in one write) and ``go``/``stop``
come down.  Losing the parent stops the agent.

Standard library only (shipped with the agent, :mod:`beokit.launch.ship`).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from beokit import framing
from beokit.errors import WireError
from beokit.launch import plan
from beokit.proc import signal_name

if TYPE_CHECKING:
    from typing import Any

    from beokit.launch.agent import Agent

# a heartbeat goes up after HEARTBEAT_EVERY seconds in which nothing else did (any
# line up proves the agent alive): an idle agent wakes once in that time, no more
HEARTBEAT_EVERY = 2.0
HEARTBEAT_TIMEOUT = 10.0  # a child silent this long is lost


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
        # what goes up is written by one thread at a time, whatever piled up in one
        # write: the thread that finds no write under way writes, the others queue
        # for it (under load, relayed results travel in batches; no writer thread
        # to wake for each)
        self._pending: list[bytes] = []
        self._wake = threading.Condition(self.lock)
        self._writing = False
        self._sent_at = time.monotonic()  # when a line last went up (heartbeats: after)

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
        agent.raw = self.send_raw
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda signum, _f: self.abort(f"stopped by {signal_name(signum)}"))
        threading.Thread(target=self._heartbeat, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def send(self, msg: dict[str, Any]) -> None:
        self.send_raw(framing.encode(msg))

    def send_raw(self, data: bytes) -> None:
        """Lines for the parent: written now, or queued for the write under way."""
        with self.lock:
            self._pending.append(data)
            self._sent_at = time.monotonic()
            if self._writing:
                return  # its writer takes them next
            self._writing = True
        while True:
            with self.lock:
                if not self._pending:
                    self._writing = False
                    self._wake.notify_all()
                    return
                data, self._pending = b"".join(self._pending), []
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.abort(f"parent lost: {exc}")  # returns only while another ends us
                with self.lock:
                    self._pending, self._writing = [], False
                    self._wake.notify_all()
                return

    def finish(self) -> None:
        """Our subtree is done: say so (after everything queued) and hang up."""
        self.finished.set()
        self.send(plan.DONE)
        deadline = time.monotonic() + HEARTBEAT_TIMEOUT
        with self.lock:
            while (self._pending or self._writing) and time.monotonic() < deadline:
                self._wake.wait(0.5)
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
        """A heartbeat once HEARTBEAT_EVERY seconds passed with nothing else sent."""
        due = time.monotonic() + HEARTBEAT_EVERY
        while True:
            time.sleep(max(0.0, due - time.monotonic()))
            with self.lock:
                due = self._sent_at + HEARTBEAT_EVERY
            if time.monotonic() >= due:
                self.send(plan.HEARTBEAT)
                due = time.monotonic() + HEARTBEAT_EVERY

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


def ssh_client() -> str | None:
    """The address our parent's ssh came from, if sshd started us (``@ssh``)."""
    conn = os.environ.get("SSH_CONNECTION", "").split()
    return conn[0] if len(conn) == 4 else None


def bind_and_advertise(cfg: dict[str, Any], address: str) -> tuple[str, str]:
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
