"""Where the receivers of ``beo cast`` call the root back: one thread, bounded.

Every receiver connects to the root's :class:`Hub`, both prove the run's
secret (:mod:`beokit.cast.channel`: the handshake, on :mod:`beokit.auth`),
and the node's messages (JSON lines, :mod:`beokit.framing`) then arrive
over that connection to its :class:`Receiver`.

The hub is one thread around one selector: it accepts, challenges,
authenticates and then reads every receiver.  Someone on the network who
connects without the secret costs a socket and a few hundred bytes, never a
thread, and cannot hold one for long or in numbers:

* an unauthenticated connection must send its ``hi`` line (at most
  :data:`~beokit.cast.channel.HELLO_MAX` bytes) within :attr:`Hub.HELLO_TIMEOUT`;
* at most :attr:`Hub.PER_SOURCE` of them wait at a time per source address,
  and :attr:`Hub.MAX_PENDING` in all; past either bound the oldest waiting
  connection of that source (or of the source holding the most) is closed.
  A receiver answers its challenge in one round trip, so it is not the
  oldest for long; one that is closed all the same connects again
  (:meth:`beokit.cast.receiver.Channel.connect` retries until its deadline).
"""

from __future__ import annotations

import collections
import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from beokit import framing, net
from beokit.cast import channel
from beokit.errors import WireError

SEND_TIMEOUT = 10.0  # a message to a receiver (tiny) must leave within this


class Receiver:
    """One node's receiver, seen from the root: what it said over its connection.

    Messages (see :mod:`beokit.cast.receiver`): ``up``/``fail`` (its check),
    ``progress``, ``result`` (after the stream and the fsync), and the answer
    to the root's last word: ``committed`` (DEST renamed into place),
    ``aborted`` (what it left behind) or ``discarded``.
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self.hello: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None
        self.progress = 0
        self.answered = threading.Event()
        self.finished = threading.Event()
        self.settled = threading.Event()  # its answer to commit/discard/abort, or its end
        self.conn: socket.socket | None = None
        self.node: dict[str, Any] = {}  # what is its own, sent in the handshake's ok
        self.lock = threading.Lock()
        self._lines = framing.LineBuffer(channel.MSG_MAX)

    def fail(self, code: str, why: str) -> None:
        """No answer will come: the node is out (once)."""
        with self.lock:
            if self.hello is None:
                self.hello = {"t": "fail", "code": code, "why": why}
        self.answered.set()
        self.finished.set()
        self.settled.set()

    def feed(self, data: bytes) -> bool:
        """Bytes from the connection; False if the receiver broke the protocol
        (a line longer than :data:`~beokit.cast.channel.MSG_MAX`).  A line that
        is not a message is skipped."""
        try:
            lines = self._lines.lines(data)
        except WireError:
            return False
        for line in lines:
            try:
                self._message(framing.decode(line))
            except WireError:
                continue
        return True

    def _message(self, msg: dict[str, Any]) -> None:
        t = msg["t"]
        if t in ("up", "fail") and self.hello is None:
            with self.lock:
                self.hello = msg
            self.answered.set()
        elif t == "progress":
            try:
                self.progress = int(msg.get("bytes") or 0)
            except (TypeError, ValueError):
                pass
        elif t == "result":
            self.result = msg
            self.finished.set()
        elif t in ("committed", "aborted", "discarded"):
            self.final = msg
            self.settled.set()

    def ended(self) -> None:
        """The connection closed: whatever was not said will not be."""
        self.fail("DOWN", "the receiver closed its connection before answering")

    def send(self, msg: dict[str, Any]) -> bool:
        if self.conn is None:
            return False
        try:
            self.conn.sendall(framing.encode(msg))
            return True
        except OSError:
            return False

    def close(self) -> None:
        """End the connection (the hub closes the socket): the receiver cleans up and exits."""
        if self.conn is not None:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class _Pending:
    """An accepted connection that has not proved the secret yet."""

    conn: socket.socket
    source: str
    nonce: str
    deadline: float
    buf: bytearray = field(default_factory=bytearray)


class Hub:
    """Accept, authenticate and read every receiver's connection in one thread.

    A connection must answer the challenge within HELLO_TIMEOUT with a valid
    MAC for a host of this run that has no connection yet; anything else is
    closed without a word (and counted in :attr:`refused`).  See the module
    docstring for the bounds under a flood.
    """

    HELLO_TIMEOUT = 5.0
    PER_SOURCE = 64
    MAX_PENDING = 512

    def __init__(self, secret: str, receivers: dict[str, Receiver], addr: str) -> None:
        self.secret = secret
        self.receivers = receivers
        self.sock = socket.create_server((addr, 0), family=net.family(addr), backlog=1024)
        self.sock.setblocking(False)
        host, port = self.sock.getsockname()[:2]
        self.port = int(port)
        self.address = net.host_port(host, port)
        self.refused = 0  # connections closed unauthenticated (bad MAC, silent, evicted)
        self.peak_pending = 0
        self.pending: dict[socket.socket, _Pending] = {}  # oldest first
        self.by_source: dict[str, collections.OrderedDict[socket.socket, None]] = {}
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._accepting = True
        self._running = True
        self.sel.register(self.sock, selectors.EVENT_READ, self._on_accept)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self.thread = threading.Thread(target=self._loop, name="cast-hub", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------- control

    def stop_accepting(self) -> None:
        """No more receivers: close the port and every connection still unauthenticated."""
        self._accepting = False
        self._wake()

    def close(self) -> None:
        """Stop: every socket of the hub is closed (receivers' connections too)."""
        self._accepting = False
        self._running = False
        self._wake()
        if threading.current_thread() is not self.thread:
            self.thread.join(5.0)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed (the loop has ended)

    def _on_wake(self, sock: socket.socket) -> None:
        try:
            sock.recv(4096)
        except OSError:
            pass

    # ------------------------------------------------------------- loop

    def _loop(self) -> None:
        try:
            while self._running:
                if not self._accepting and self.sock.fileno() >= 0:
                    self._close_listener()
                timeout = 1.0
                if self.pending:
                    first = next(iter(self.pending.values()))
                    timeout = min(timeout, max(0.0, first.deadline - time.monotonic()))
                for key, _ in self.sel.select(timeout):
                    handler: Callable[[Any], None] = key.data
                    handler(key.fileobj)
                self._expire(time.monotonic())
        finally:
            self._close_all()

    def _close_listener(self) -> None:
        self.sel.unregister(self.sock)
        self.sock.close()
        for conn in list(self.pending):
            self._drop(conn)

    def _close_all(self) -> None:
        for key in list(self.sel.get_map().values()):
            owner = getattr(key.data, "__self__", None)
            if isinstance(owner, _Reading):
                owner.end()
            elif key.fileobj is not self._wake_r:
                self._unregister(key.fileobj)  # type: ignore[arg-type]
                key.fileobj.close()  # type: ignore[union-attr]
        self.pending.clear()
        self.by_source.clear()
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _expire(self, now: float) -> None:
        while self.pending:
            conn, p = next(iter(self.pending.items()))
            if p.deadline > now:
                return
            self._drop(conn)

    # -------------------------------------------------------- accepting

    def _on_accept(self, sock: socket.socket) -> None:
        for _ in range(64):  # a batch, then the others get their turn
            try:
                conn, peer = sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self.pending:
                    self._drop(next(iter(self.pending)))  # make room: the oldest waiter goes
                return
            self._admit(conn, str(peer[0]))

    def _admit(self, conn: socket.socket, source: str) -> None:
        mine = self.by_source.setdefault(source, collections.OrderedDict())
        if len(mine) >= self.PER_SOURCE:
            self._drop(next(iter(mine)))
        elif len(self.pending) >= self.MAX_PENDING:
            greedy = max(self.by_source.values(), key=len)
            self._drop(next(iter(greedy)))
            mine = self.by_source.setdefault(source, collections.OrderedDict())
        nonce = channel.nonce()
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.send(framing.encode(channel.challenge(nonce)))
        except OSError:
            self.refused += 1
            conn.close()
            return
        self.pending[conn] = _Pending(conn, source, nonce, time.monotonic() + self.HELLO_TIMEOUT)
        mine[conn] = None
        self.peak_pending = max(self.peak_pending, len(self.pending))
        self.sel.register(conn, selectors.EVENT_READ, self._on_hello)

    def _forget(self, conn: socket.socket) -> _Pending | None:
        p = self.pending.pop(conn, None)
        if p is not None:
            mine = self.by_source.get(p.source)
            if mine is not None:
                mine.pop(conn, None)
                if not mine:
                    del self.by_source[p.source]
        return p

    def _drop(self, conn: socket.socket) -> None:
        """Close an unauthenticated connection without a word."""
        if self._forget(conn) is not None:
            self.refused += 1
        self._unregister(conn)
        conn.close()

    def _on_hello(self, conn: socket.socket) -> None:
        p = self.pending.get(conn)
        if p is None:
            return
        try:
            data = conn.recv(channel.HELLO_MAX)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        p.buf += data
        if not data or (b"\n" not in p.buf and len(p.buf) >= channel.HELLO_MAX):
            self._drop(conn)
            return
        if b"\n" not in p.buf:
            return
        line, _, rest = bytes(p.buf).partition(b"\n")
        got = self._authenticate(p, line)
        if got is None:
            self._drop(conn)
            return
        r, theirs = got
        self._forget(conn)
        self.sel.unregister(conn)
        try:
            conn.settimeout(SEND_TIMEOUT)  # main-thread sends wait (bounded); reads follow select
            conn.sendall(framing.encode(channel.ok(self.secret, r.host, p.nonce, theirs, r.node)))
        except OSError:
            conn.close()
            r.ended()
            return
        reading = _Reading(self, r, conn)
        self.sel.register(conn, selectors.EVENT_READ, reading.on_readable)
        if rest:
            reading.take(rest)

    def _authenticate(self, p: _Pending, line: bytes) -> tuple[Receiver, str] | None:
        """The receiver a valid ``hi`` line names (claimed for this connection) and its
        nonce, or None."""
        try:
            hi = framing.decode(line)
        except WireError:
            return None
        host, theirs = hi.get("host"), hi.get("nonce")
        r = self.receivers.get(host) if isinstance(host, str) else None
        if (hi["t"] != "hi" or r is None or not isinstance(theirs, str) or len(theirs) > 64
                or not channel.mac_ok(self.secret, hi.get("mac"), "node", p.nonce, theirs, host)):
            return None  # fmt: skip
        with r.lock:
            if r.conn is not None or r.hello is not None:
                return None  # connected already (or given up): a second one is refused
            r.conn = p.conn
        return r, theirs

    def _unregister(self, conn: socket.socket) -> None:
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass


class _Reading:
    """An authenticated receiver's connection, read by the hub's loop."""

    def __init__(self, hub: Hub, receiver: Receiver, conn: socket.socket) -> None:
        self.hub = hub
        self.receiver = receiver
        self.conn = conn

    def on_readable(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(1 << 16)
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            data = b""
        if data:
            self.take(data)
        else:
            self.end()

    def take(self, data: bytes) -> None:
        if not self.receiver.feed(data):
            self.receiver.close()  # a line beyond MSG_MAX: not a receiver of ours

    def end(self) -> None:
        self.hub._unregister(self.conn)
        self.conn.close()
        self.receiver.ended()
