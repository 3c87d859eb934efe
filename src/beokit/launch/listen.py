"""Where an agent's children call back: one thread reads every child's hello.

Each launch gets a fresh random token (:meth:`HelloListener.expect`), which
the child receives on its stdin inside the launch channel and sends back as
its first line (``{"t": "hello", "token", "h"}``) over TCP.  A connection
whose hello carries a pending token is handed to the thread that launched
that child; anything else is closed without a word.

A stranger's connection costs a socket, never a thread: it must say hello
within :attr:`HelloListener.HELLO_TIMEOUT`, at most
:attr:`HelloListener.PER_SOURCE` wait per source address and
:attr:`HelloListener.MAX_PENDING` in all (past either, the oldest of that
address, or of the address holding the most, is closed first).

Standard library only (shipped with the agent).
"""

from __future__ import annotations

import collections
import os
import selectors
import socket
import threading
import time

from beokit import framing, net
from beokit.errors import WireError

HELLO_MAX = 4096  # a hello line is short


class Slot:
    """One launch waiting for its child's hello: ``conn`` once ``ready``.  ``ready`` is
    also set with no ``conn`` when none will come from here (the listener closed) or
    the launch's channel ended (see ``Agent._await_hello``)."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.conn: socket.socket | None = None


class HelloListener:
    """Listen on ``bind`` (an ephemeral port); hand each child's connection to its launch."""

    HELLO_TIMEOUT = 5.0  # an accepted connection must say hello within this
    PER_SOURCE = 64  # unauthenticated connections waiting for their hello, per address
    MAX_PENDING = 512  # ... and in all; past either, the oldest of that address goes

    def __init__(self, bind: str, backlog: int = 128) -> None:
        self.sock = socket.create_server((bind, 0), family=net.family(bind), backlog=backlog)
        self.port: int = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.slots: dict[str, Slot] = {}
        self.closing = False
        self._sel = selectors.DefaultSelector()
        # close() wakes the loop through this pipe: the loop sleeps in the kernel
        # until a connection, a hello's deadline or close, never on a timer
        self._wake_r, self._wake_w = os.pipe()
        # connection -> (deadline, source address, bytes so far), oldest first
        self._waiting: dict[socket.socket, tuple[float, str, bytearray]] = {}

    def start(self) -> None:
        threading.Thread(target=self._loop, name="beo-hello", daemon=True).start()

    def close(self) -> None:
        with self.lock:
            if self.closing:
                return
            self.closing = True
            for slot in self.slots.values():  # the launches waiting for a hello: none comes
                slot.ready.set()
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass  # the loop ended already (its end of the pipe is closed)
            os.close(self._wake_w)
        self.sock.close()

    def expect(self) -> tuple[str, Slot]:
        """A fresh one-time token and the slot its child's connection will fill."""
        token = os.urandom(16).hex()
        slot = Slot()
        with self.lock:
            self.slots[token] = slot
        return token, slot

    def forget(self, token: str) -> None:
        """The launch gave up: a late hello with this token is a stranger's."""
        with self.lock:
            self.slots.pop(token, None)

    # ---------------------------------------------------------------- loop

    def _loop(self) -> None:
        sock = self.sock
        sock.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self.closing:
                # the oldest waiting hello's deadline first (_waiting is in order)
                first = next(iter(self._waiting.values()), None)
                wait = None if first is None else max(0.0, first[0] - time.monotonic())
                for key, _ in self._sel.select(wait):
                    conn = key.fileobj
                    if conn == self._wake_r:
                        continue
                    assert isinstance(conn, socket.socket)
                    if conn is sock:
                        self._accept_some()
                    else:
                        self._hello_bytes(conn)
                now = time.monotonic()
                for conn in [c for c, w in self._waiting.items() if w[0] <= now]:
                    self._drop(conn)
        except OSError:
            pass  # the listener was closed: this node is ending
        finally:
            for conn in list(self._waiting):
                self._drop(conn)
            self._sel.close()
            os.close(self._wake_r)

    def _accept_some(self) -> None:
        for _ in range(64):  # a batch, then the waiting connections get their turn
            try:
                conn, peer = self.sock.accept()
            except BlockingIOError:
                return
            self._admit(conn, str(peer[0]))

    def _admit(self, conn: socket.socket, source: str) -> None:
        mine = [c for c, w in self._waiting.items() if w[1] == source]
        if len(mine) >= self.PER_SOURCE:
            self._drop(mine[0])
        elif len(self._waiting) >= self.MAX_PENDING:
            counts = collections.Counter(w[1] for w in self._waiting.values())
            greedy = counts.most_common(1)[0][0]
            self._drop(next(c for c, w in self._waiting.items() if w[1] == greedy))
        conn.setblocking(False)
        self._waiting[conn] = (time.monotonic() + self.HELLO_TIMEOUT, source, bytearray())
        self._sel.register(conn, selectors.EVENT_READ)

    def _drop(self, conn: socket.socket) -> None:
        self._waiting.pop(conn, None)
        self._sel.unregister(conn)
        conn.close()

    def _hello_bytes(self, conn: socket.socket) -> None:
        """More bytes of a waiting connection's hello; hand it over once complete."""
        try:
            data = conn.recv(HELLO_MAX)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf = self._waiting[conn][2]
        buf += data
        if not data or (b"\n" not in buf and len(buf) >= HELLO_MAX):
            self._drop(conn)
            return
        if b"\n" not in buf:
            return
        self._waiting.pop(conn)
        self._sel.unregister(conn)
        slot = self._claim(bytes(buf).partition(b"\n")[0])
        if slot is None:
            conn.close()  # garbage, a wrong or a replayed token: not one of ours
            return
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        slot.conn = conn
        slot.ready.set()

    def _claim(self, line: bytes) -> Slot | None:
        """The slot a hello line's token names (removed: a token is good once)."""
        try:
            msg = framing.decode(line)
        except WireError:
            return None
        token = msg.get("token")
        if msg["t"] != "hello" or not isinstance(token, str):
            return None
        with self.lock:
            # a dict lookup of a 128-bit random one-time token: nothing to learn
            # from its timing, and it is removed on first use
            return self.slots.pop(token, None)
