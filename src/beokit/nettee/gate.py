"""A node's listening ports: every caller held, bounded, until it proves itself.

nettee 0.2 served its ports one caller at a time, and so did beokit until
issue 19: one idle TCP connection to a node's data port held the node for
the whole header wait, and its real parent, unanswered, declared it dead.
Here one thread, the gate, owns both listeners and every connection that
has not yet said who it is:

* a control connection is greeted at once (the node's ``hello``, or a
  ``refuse`` when the node is busy) and then has :data:`PENDING_WAIT`
  seconds to send its first message, at most :data:`FIRST_FRAME_MAX` bytes;
  that message goes to the node (``on_message``), which decides;
* a data connection has as long to send its 32-byte header, which must
  carry a token the node :meth:`Gate.expect`\\ s (bound to a control
  handshake that passed); anything else is closed.

At most :data:`PENDING_MAX` such connections are held, at most
:data:`PER_SOURCE` of them from one address.  A new connection is never
refused for want of room: the oldest one of its own address makes room,
or, when the pool is full, the oldest one of the address that holds the
most.  So a flood from one address (an attacker cannot spoof a TCP
source) never pushes out another address's handshake, and a genuine
parent, whose answer follows the greeting within a round trip, is served
while thousands of idle callers come and go.  Memory, descriptors and
threads stay bounded: one thread, :data:`PENDING_MAX` sockets and
:data:`PENDING_MAX` x :data:`FIRST_FRAME_MAX` bytes of buffers at most.

:class:`Pool` is the policy (pure: keys, addresses and times in, keys to
drop out); :class:`Gate` is the driver (a ``selectors`` loop).
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from beokit.nettee import protocol
from beokit.nettee.messages import Message, MessageDecoder, encode

PENDING_MAX = 64  # connections held before they proved themselves, both ports together
PER_SOURCE = 16  # of them from one address
PENDING_WAIT = 5.0  # seconds to send the first control message or the data header
FIRST_FRAME_MAX = 256 << 10  # a join carries the path of node ids from the root: ~7000 deep
BACKLOG = 1024  # listen(2) backlog (the kernel caps it at net.core.somaxconn)
ACCEPT_BATCH = 64  # connections accepted per wake-up before the held ones are served
LOG_LINES = 20  # rejections logged one by one; after that they are only counted


# ---------------------------------------------------------------- policy (pure)


class Pool:
    """Which held connections to drop: bounded in total, per address and in time.

    Keys are anything hashable; entries are kept oldest first.
    """

    def __init__(self, size: int = PENDING_MAX, per_source: int = PER_SOURCE,
                 wait: float = PENDING_WAIT) -> None:  # fmt: skip
        self.size = size
        self.per_source = per_source
        self.wait = wait
        self._entries: dict[Hashable, tuple[str, float]] = {}
        self._count: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def add(self, key: Hashable, source: str, now: float) -> list[Hashable]:
        """Hold ``key`` from address ``source``; returns the keys dropped to make room."""
        victim = None
        if self._count.get(source, 0) >= self.per_source:
            victim = self._oldest(source)
        elif len(self._entries) >= self.size:
            most = max(self._count.values())
            victim = next(k for k, (s, _) in self._entries.items() if self._count[s] == most)
        dropped = [] if victim is None else [victim]
        for k in dropped:
            self.remove(k)
        self._entries[key] = (source, now)
        self._count[source] = self._count.get(source, 0) + 1
        return dropped

    def _oldest(self, source: str) -> Hashable:
        return next(k for k, (s, _) in self._entries.items() if s == source)

    def remove(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            left = self._count[entry[0]] - 1
            if left:
                self._count[entry[0]] = left
            else:
                del self._count[entry[0]]

    def expired(self, now: float) -> list[Hashable]:
        """Keys held for :attr:`wait` seconds or more (they are removed)."""
        out = []
        for key, (_, since) in self._entries.items():
            if now - since < self.wait:
                break  # oldest first: the rest are younger
            out.append(key)
        for key in out:
            self.remove(key)
        return out

    def next_expiry(self) -> float | None:
        for _, since in self._entries.values():
            return since + self.wait
        return None


# ---------------------------------------------------------------- driver


@dataclass(eq=False)
class Handshake:
    """A control connection whose first message arrived; the node owns it now.

    ``context`` is what the greeting callback returned with the greeting
    (the node's nonce); ``rest`` and ``decoder`` hold anything that came
    after the first message.  The socket is blocking again.
    """

    sock: socket.socket
    addr: str
    context: Any
    msg: Message
    rest: list[Message]
    decoder: MessageDecoder


@dataclass(eq=False)
class Expect:
    """A data connection the node waits for: its token and stream offset."""

    token: bytes
    offset: int
    on_data: Callable[[socket.socket], None]


@dataclass(eq=False)
class _Held:
    sock: socket.socket
    addr: str
    kind: str  # "control" | "data"
    context: Any = None
    got: int = 0  # bytes received so far
    header: bytearray = field(default_factory=bytearray)
    decoder: MessageDecoder = field(default_factory=MessageDecoder)


Greet = Callable[[], tuple[bytes, Any]]


class Gate:
    """One thread serving a node's control and data listeners (see the module doc).

    ``greet()`` returns the bytes to send a new control connection and a
    context; a context of None closes the connection after the greeting
    (a busy node turning callers away).  ``on_message(handshake)`` runs in
    the gate's thread and must not block.  ``log(line)`` reports rejected
    connections (the first :data:`LOG_LINES`; :attr:`rejected` counts all).
    """

    def __init__(self, ctrl: socket.socket, data: socket.socket | None, *, greet: Greet,
                 on_message: Callable[[Handshake], None], log: Callable[[str], None],
                 pool: Pool | None = None) -> None:  # fmt: skip
        self.greet = greet
        self.on_message = on_message
        self._log = log
        self.pool = pool or Pool()
        self.rejected = 0
        self.turned_away = 0
        self._lock = threading.Lock()
        self._expects: list[Expect] = []
        self._close_data = False
        self._stopping = False
        self._ctrl = ctrl
        self._data = data
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        for lst, kind in ((ctrl, "control"), (data, "data")):
            if lst is not None:
                lst.setblocking(False)
                self._sel.register(lst, selectors.EVENT_READ, kind)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="gate", daemon=True)

    # ---- called from the node's threads

    def start(self) -> None:
        self._thread.start()

    def expect(self, token: bytes, offset: int, on_data: Callable[[socket.socket], None]) -> Expect:
        """Hand the data connection with this token and offset to ``on_data`` (gate thread)."""
        exp = Expect(token, offset, on_data)
        with self._lock:
            self._expects.append(exp)
        return exp

    def forget(self, exp: Expect) -> bool:
        """Stop waiting for ``exp``; False if its connection was already handed over."""
        with self._lock:
            if exp in self._expects:
                self._expects.remove(exp)
                return True
            return False

    def close_data(self) -> None:
        """Close the data listener and drop the data connections held (a node with its parent)."""
        self._close_data = True
        self._poke()

    def stop(self) -> None:
        self._stopping = True
        self._poke()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5.0)

    def reject(self, hs: Handshake, why: str | None, reply: Message | None = None) -> None:
        """Close a handed-over control connection, with an optional last message."""
        if reply is not None:
            send_now(hs.sock, encode(reply))
        _close(hs.sock)
        if why is not None:
            self._note(why)

    # ---- the gate's thread

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _run(self) -> None:
        try:
            while not self._stopping:
                nxt = self.pool.next_expiry()
                timeout = 1.0 if nxt is None else min(1.0, max(0.0, nxt - time.monotonic()))
                for key, _ in self._sel.select(timeout):
                    try:
                        self._event(key)
                    except Exception as exc:  # the gate must outlive any one caller
                        self._log(f"gate: {type(exc).__name__}: {exc}")
                if self._close_data and self._data is not None:
                    self._drop_data_listener()
                for held in self.pool.expired(time.monotonic()):
                    self._drop(held, f"sent nothing usable within {self.pool.wait:g} s")  # type: ignore[arg-type]
        finally:
            self._shutdown()

    def _event(self, key: selectors.SelectorKey) -> None:
        what = key.data
        if what == "wake":
            _drain(self._wake_r)
        elif isinstance(what, _Held):
            if what in self.pool:  # not dropped earlier in this same round
                self._readable(what)
        else:
            self._accept(key.fileobj, what)  # type: ignore[arg-type]

    def _accept(self, lst: socket.socket, kind: str) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = lst.accept()
            except OSError:  # EAGAIN: none left; EMFILE, ECONNABORTED: next time
                return
            sock.setblocking(False)
            held = _Held(sock, f"{addr[0]}:{addr[1]}", kind)
            if kind == "control":
                payload, held.context = self.greet()
                if not send_now(sock, payload) or held.context is None:
                    self.turned_away += 1
                    _close(sock)
                    continue
            for old in self.pool.add(held, addr[0], time.monotonic()):
                self._drop(old, "dropped to make room for newer connections")  # type: ignore[arg-type]
            self._sel.register(sock, selectors.EVENT_READ, held)
            self._readable(held)  # a data header is usually there already

    def _readable(self, held: _Held) -> None:
        want = protocol.DATA_HEADER.size - len(held.header) if held.kind == "data" else 65536
        try:
            chunk = held.sock.recv(want)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop(held, exc.strerror or "receive failed")
            return
        if not chunk:
            self._drop(held, "closed before it said anything" if held.got else None)
            return
        held.got += len(chunk)
        if held.kind == "data":
            held.header += chunk
            if len(held.header) == protocol.DATA_HEADER.size:
                self._match(held)
            return
        try:
            msgs = held.decoder.feed(chunk)
        except protocol.ProtocolError as exc:
            self._drop(held, str(exc))
            return
        if msgs:
            self._release(held)
            held.sock.setblocking(True)
            hs = Handshake(held.sock, held.addr, held.context, msgs[0], msgs[1:], held.decoder)
            try:
                self.on_message(hs)
            except Exception as exc:  # the gate must outlive any one caller
                self.reject(hs, f"rejected connection from {held.addr}: {exc}")
        elif held.decoder.pending > FIRST_FRAME_MAX:
            self._drop(held, f"first message longer than {FIRST_FRAME_MAX} bytes")

    def _match(self, held: _Held) -> None:
        exp, why = self._claim(bytes(held.header))
        if exp is None:
            self._drop(held, f"data connection {why}")
            return
        self._release(held)
        held.sock.setblocking(True)
        exp.on_data(held.sock)

    def _claim(self, raw: bytes) -> tuple[Expect | None, str]:
        """The expectation a data header answers (removed), or None and why not."""
        if raw[: len(protocol.MAGIC)] != protocol.MAGIC:
            return None, "that is not nettee's"
        with self._lock:
            for exp in self._expects:
                try:
                    offset = protocol.parse_data_header(raw, exp.token)
                except protocol.ProtocolError:
                    continue  # another handshake's token
                if offset != exp.offset:
                    return None, f"at offset {offset}, {exp.offset} expected"
                self._expects.remove(exp)
                return exp, ""
        return None, "with a wrong token"

    def _release(self, held: _Held) -> None:
        """Stop holding ``held``: the node takes it over."""
        self.pool.remove(held)
        self._sel.unregister(held.sock)

    def _drop(self, held: _Held, why: str | None) -> None:
        self.pool.remove(held)
        try:
            self._sel.unregister(held.sock)
        except (KeyError, ValueError):
            pass
        _close(held.sock)
        if why is not None:
            self._note(f"rejected {held.kind} connection from {held.addr}: {why}")

    def _note(self, line: str) -> None:
        self.rejected += 1
        if self.rejected <= LOG_LINES:
            self._log(line)
        if self.rejected == LOG_LINES:
            self._log("further rejected connections are counted, not logged")

    def _drop_data_listener(self) -> None:
        assert self._data is not None
        self._sel.unregister(self._data)
        _close(self._data)
        self._data = None
        for key in list(self._sel.get_map().values()):
            if isinstance(key.data, _Held) and key.data.kind == "data":
                self._drop(key.data, None)

    def _shutdown(self) -> None:
        for key in list(self._sel.get_map().values()):
            if isinstance(key.data, _Held):
                self.pool.remove(key.data)
                _close(key.data.sock)
        for lst in (self._ctrl, self._data):
            if lst is not None:
                _close(lst)
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def send_now(sock: socket.socket, payload: bytes) -> bool:
    """Send a short message without ever waiting (a fresh socket's buffer takes it)."""
    try:
        return sock.send(payload, socket.MSG_DONTWAIT) == len(payload)
    except OSError:
        return False


def listener(addr: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(BACKLOG)
    return s


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
