"""A node's links to its parent and its children: control connections, what
each side knows of a branch, the readers of their messages and the heartbeat.

A :class:`Peer` is one control connection (typed messages both ways); a
:class:`ChildLink` is everything a node knows of one ``-next`` hostlist's
branch.  The readers turn each message into a call on the node
(``end_arrived``, ``parent_failed``, ``child_failed`` ...); what to do about a
failure is the policy's (policy.py), not theirs.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from beokit.nettee import protocol
from beokit.nettee.hostlists import Endpoint, Hostlist
from beokit.nettee.messages import (
    Abort,
    Await,
    End,
    Fail,
    Kid,
    Message,
    MessageDecoder,
    Ping,
    Ready,
    SubtreeReport,
    encode,
)
from beokit.nettee.policy import Phase
from beokit.nettee.process import Feeder
from beokit.nettee.sinks import Sink

if TYPE_CHECKING:
    from beokit.nettee.node import Node

HEARTBEAT = 0.5


class Fatal(Exception):
    """An unhandled failure: the node collapses the tree."""

    def __init__(self, code: protocol.Code | str, node: str, why: str) -> None:
        super().__init__(why)
        self.code = str(code)
        self.node = node
        self.why = why


class Peer:
    """A control connection: typed messages both ways, sends serialized."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.dec = MessageDecoder()
        self.lock = threading.Lock()
        self.last = time.monotonic()
        self.queue: list[Message] = []

    def send(self, msg: Message) -> bool:
        try:
            with self.lock:
                self.sock.sendall(encode(msg))
            return True
        except OSError:
            return False

    def drain(self, data: bytes) -> list[Message]:
        """Messages left over from the handshake, then those in ``data``."""
        msgs, self.queue = self.queue, []
        return msgs + self.dec.feed(data)

    def recv(self, timeout: float) -> Message:
        """Next message, within ``timeout`` seconds (handshake only)."""
        deadline = time.monotonic() + timeout
        while not self.queue:
            left = deadline - time.monotonic()
            if left <= 0:
                raise protocol.ProtocolError("timed out waiting for the peer")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise protocol.ProtocolError("timed out waiting for the peer") from None
            if not data:
                raise protocol.ProtocolError("connection closed during the handshake")
            self.queue.extend(self.dec.feed(data))
        self.sock.settimeout(None)
        return self.queue.pop(0)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass(frozen=True)
class BranchLoss:
    """Why a branch sent no report: where it failed (``node``), with what, and
    whether the branch's data is untrusted (``fatal``: the loss was not handled)."""

    node: str
    code: str
    why: str
    fatal: bool = False


@dataclass
class ChildLink:
    index: int
    hostlist: Hostlist
    endpoint: Endpoint | None = None
    name: str = ""
    peer: Peer | None = None
    data: socket.socket | None = None
    sink: Sink | None = None
    feeder: Feeder | None = None
    subtree: list[str] = field(default_factory=list)
    results: list[protocol.NodeResult] | None = None
    codes: list[str] = field(default_factory=list)
    failure: BranchLoss | None = None  # when the branch failed
    ready: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    dead: bool = False
    progress: int = 0
    kids: tuple[Kid, ...] = ()  # -heal: the child's own children
    base: int = 0  # stream offset where this link's sink started (adopted links)
    adopted: bool = False

    @property
    def label(self) -> str:
        return self.name or (str(self.hostlist[0]) if self.hostlist else "?")

    @property
    def addr(self) -> str:
        """Where the child was reached (host, or host:port)."""
        if self.endpoint is not None:
            return str(self.endpoint)
        return str(self.hostlist[0]) if self.hostlist else ""

    @property
    def sent(self) -> int:
        """Bytes of the stream sent to this child (from offset 0)."""
        return self.base + (self.sink.sent if self.sink else 0)

    def cut(self) -> None:
        """Stop writing to the child and shut its data and control connections."""
        if self.sink is not None:
            self.sink.kill()
        for sock in (self.data, self.peer.sock if self.peer else None):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# ---------------------------------------------------------------- readers


def read_parent(node: Node, peer: Peer) -> None:
    """The parent's messages: its end of stream, or an abort; a lost connection is a
    parent failure (unless this peer was replaced by an adopter meanwhile)."""
    why = "parent connection closed"
    try:
        data = b""
        while True:
            for msg in peer.drain(data):
                if peer is not node.parent:
                    return  # replaced by an adopter (-heal)
                peer.last = time.monotonic()
                if isinstance(msg, End):
                    node.end_arrived(msg)
                elif isinstance(msg, Abort):
                    node.parent_failed(f"aborted by parent: {msg.why}", aborted=True)
                    return
                elif isinstance(msg, Await):  # -stm_wait: report once the commands ended
                    node.await_arrived(msg)
            data = peer.sock.recv(65536)
            if not data:
                break
    except (OSError, protocol.ProtocolError) as exc:
        why = f"parent connection lost: {exc}"
    if peer is node.parent:
        node.parent_failed(why)


def read_child(node: Node, link: ChildLink) -> None:
    """A child's messages: heartbeats, its subtree formed, its report, or a failure."""
    peer = link.peer
    assert peer is not None
    why = "connection lost"
    try:
        data = b""
        while True:
            for msg in peer.drain(data):
                peer.last = time.monotonic()
                if isinstance(msg, Ping):
                    link.progress = msg.received or 0
                elif isinstance(msg, Ready):
                    link.subtree = list(msg.nodes) or [link.name]
                    if msg.kids is not None:
                        link.kids = msg.kids
                    link.ready.set()
                elif isinstance(msg, Fail):
                    node.child_failed(link, msg.code, msg.node or link.name, msg.why)
                    return
                elif isinstance(msg, SubtreeReport):
                    node.report_arrived(link, msg)
                    return
            data = peer.sock.recv(65536)
            if not data:
                break
    except protocol.ProtocolError as exc:
        if exc.kind == SubtreeReport.TYPE:  # a report that is not one: the child's status is bad
            node.report_arrived(link, None, str(exc))
            return
        why = f"connection lost: {exc}"
    except OSError as exc:
        why = f"connection lost: {exc}"
    code = protocol.Code.NRF if node.pull else protocol.Code.NWF
    node.child_failed(link, code.value, link.name, why)


# ---------------------------------------------------------------- heartbeat


class Heartbeat:
    """Pings every :data:`HEARTBEAT` seconds on each control connection; a peer
    silent for ``-stall`` seconds is dead; with ``-v 8`` a status line every 2 s."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="heartbeat", daemon=True).start()

    def silent(self, peer: Peer, now: float) -> bool:
        """Nothing heard from ``peer`` for -stall seconds, and nothing waiting to be read.

        The second condition matters after this process itself was stopped
        (SIGSTOP, a long swap-in): its peers' messages are queued, unread, and
        silence measured by the clock alone would accuse them wrongly.
        """
        stall = self.node.cfg.stall
        if stall <= 0 or now - peer.last <= stall:
            return False
        try:
            readable, _, _ = select.select([peer.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return not readable

    def _run(self) -> None:
        node = self.node
        last_status = time.monotonic()
        last_bytes = 0
        while not self.stop.wait(HEARTBEAT):
            now = time.monotonic()
            received = node.relay.bytes_in if node.relay else 0
            parent, phase = node.parent, node.phase
            if parent is not None and phase is not Phase.REPORTED:
                parent.send(Ping(received))
                if phase in (Phase.FORMING, Phase.STREAMING) and self.silent(parent, now):
                    node.parent_failed(f"parent silent for {node.cfg.stall:g} s (stalled?)")
            for link in list(node.links):
                if link.peer is None or link.dead or link.done.is_set():
                    continue
                link.peer.send(Ping())
                if self.silent(link.peer, now):
                    node.child_failed(link, protocol.Code.NWF.value, link.name,
                                      f"silent for {node.cfg.stall:g} s (stalled?)")  # fmt: skip
            if node.log.on(8) and node.relay is not None and now - last_status >= 2.0:
                rate = (received - last_bytes) / (now - last_status) / 1e6
                node.log.status(f"status: {received} bytes, {rate:.1f} MB/s")
                last_status, last_bytes = now, received
