"""``beo dshd``'s TCP ports: accept, admit or shed, the challenge, the request, the answer.

A text protocol, usable with ``telnet``/``nc``: without a secret the status
port waits REQUEST_WAIT for a request word (``json``, ``top``; nothing: the
text table) and the best port answers at once; with one, both send ``auth
NONCE`` first and serve only a client that proves the secret
(:mod:`beokit.dsh.packet`: the MACs; :mod:`beokit.auth` underneath), and sign
the answer when the client gave a nonce of its own.

The server accepts by itself (ACCEPT_BATCH a wake-up) so that every
connection meets the admission table (:mod:`beokit.dsh.admission`) the moment
it is accepted: an unauthenticated peer holds a slot for at most
HANDSHAKE_TIMEOUT (with a secret) or REQUEST_WAIT (without one) and is shed
first when the table is full; a shed or refused connection reads "error
busy", never zero bytes. Open TCP connections: at most MAX_CONNECTIONS +
ACCEPT_BATCH (shed ones close when their task next runs; until then nothing
more is accepted).

What the answers say is the daemon's business (:class:`Answers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from beokit.dsh import packet
from beokit.dsh.admission import Admission
from beokit.errors import WireError

log = logging.getLogger("beokit.dshd")

MAX_CONNECTIONS = 128  # TCP queries held at once (both ports); who is shed: admission.py
MAX_PER_SOURCE = 32  # connections of one source address that have not proved the secret
HANDSHAKE_TIMEOUT = 1.0  # with a secret: the answer to the challenge must come within this
QUERY_TIMEOUT = 3.0  # a TCP client must finish within this
LINE_MAX = 4096  # a request line longer than this ends the connection
REQUEST_WAIT = 0.25  # status port without a secret: wait this long for "json"/"text"
BUSY = b"error busy\n"  # what a shed or refused connection reads (never zero bytes)
ACCEPT_BATCH = 32  # connections accepted (and admitted) per wake-up of a TCP port
ACCEPT_PAUSE = 0.1  # a port whose accept failed (out of fds) rests this long


class Answers(Protocol):
    """What the daemon gives the ports."""

    @property
    def secret(self) -> bytes | None: ...

    def answer(self, purpose: str, word: str) -> bytes:
        """The answer of the ``purpose`` port ("status", "best") to request ``word``."""
        ...


@dataclass(slots=True)
class QueryConn:
    """One TCP query in progress (its key in the admission table)."""

    key: int
    sock: socket.socket
    source: str
    task: asyncio.Task | None = None
    answered: bool = False  # the answer (or an error line) is being sent
    shed: bool = False  # closed to make room for another connection
    sign: tuple[str, str, str] | None = None  # (purpose, nonce, client nonce): MAC the answer


async def read_line(sock: socket.socket) -> bytes:
    """The peer's first line (with its newline); what came before EOF if none.

    Plain ``loop.sock_recv`` on the socket, no transport or stream objects:
    a connection leaves no reference cycle behind (asyncio 3.11's socket
    transport is one), so a flood of them is freed as it goes, not at the
    next full garbage collection. Raises :class:`WireError` past LINE_MAX bytes.
    (Not :class:`beokit.framing.LineBuffer`: an empty line is an answer here, and
    a request cut by the end of the stream is still read.)
    """
    loop = asyncio.get_running_loop()
    buf = b""
    while b"\n" not in buf:
        if len(buf) > LINE_MAX:
            raise WireError("request line too long")
        chunk = await loop.sock_recv(sock, LINE_MAX)
        if not chunk:
            return buf
        buf += chunk
    return buf[: buf.index(b"\n") + 1]


Serve = Callable[[QueryConn], Awaitable[bytes]]


class QueryServer:
    """The status and best ports of one daemon; ``stats`` counts queries, refusals..."""

    def __init__(self, answers: Answers, stats: dict[str, int]) -> None:
        self.answers = answers
        self.stats = stats
        self.admission = Admission(MAX_CONNECTIONS, MAX_PER_SOURCE)
        self.conns: dict[int, QueryConn] = {}
        self.closed = False
        self._listening: list[socket.socket] = []
        self._last_accept_log = -1e9
        self._last_shed_log = -1e9

    def start(self, status: socket.socket, best: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for lsock, purpose in ((status, "status"), (best, "best")):
            serve = self._server(purpose)
            loop.add_reader(lsock, self._on_accept, lsock, serve)
            self._listening.append(lsock)

    def stop(self) -> None:
        self.closed = True
        loop = asyncio.get_running_loop()
        for lsock in self._listening:
            loop.remove_reader(lsock)

    def unauthenticated(self) -> int:
        return self.admission.pending()

    # ---- accepting
    def _on_accept(self, lsock: socket.socket, serve: Serve) -> None:
        """The listening socket is readable: accept, admit (shedding) or refuse."""
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            if len(self.conns) >= MAX_CONNECTIONS + ACCEPT_BATCH:
                return  # shed ones still closing: the kernel queue waits a loop turn
            try:
                sock, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of fds or buffers: pause this port a moment
                self._accept_failed(lsock, serve, e)
                return
            self.stats["queries"] += 1
            key, shed = self.admission.admit(peer[0])
            for k in shed:
                self._shed(k)
            if key is None:  # every slot holds an authenticated client
                self.stats["busy"] += 1
                with contextlib.suppress(OSError):
                    sock.send(BUSY, socket.MSG_DONTWAIT)
                sock.close()
                continue
            sock.setblocking(False)
            conn = self.conns[key] = QueryConn(key, sock, peer[0])
            conn.task = loop.create_task(self._serve(conn, serve))  # held: not collected

    def _accept_failed(self, lsock: socket.socket, serve: Serve, e: OSError) -> None:
        if e.errno == errno.ECONNABORTED:  # gone before we took it: next one
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if now - self._last_accept_log > 10.0:
            self._last_accept_log = now
            log.warning("accept on port %d: %s; pausing it for %g s",
                        lsock.getsockname()[1], e.strerror or e, ACCEPT_PAUSE)  # fmt: skip
        loop.remove_reader(lsock)
        loop.call_later(ACCEPT_PAUSE, self._listen_again, lsock, serve)

    def _listen_again(self, lsock: socket.socket, serve: Serve) -> None:
        if not self.closed and lsock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(lsock, self._on_accept, lsock, serve)

    def _shed(self, key: int) -> None:
        """Close a pending connection to make room: "error busy" if it has no answer yet."""
        conn = self.conns.get(key)
        if conn is None or conn.shed:
            return
        conn.shed = True
        self.stats["shed"] += 1
        now = time.monotonic()
        if now - self._last_shed_log > 10.0:  # a flood must not flood the log
            self._last_shed_log = now
            log.warning("TCP connections full: closing unauthenticated ones ('error busy'; "
                        "%d so far, this one from %s)", self.stats["shed"], conn.source)  # fmt: skip
        if not conn.answered:
            with contextlib.suppress(OSError):
                conn.sock.send(BUSY, socket.MSG_DONTWAIT)
        with contextlib.suppress(OSError):  # its task wakes up (EOF, EPIPE) and closes it
            conn.sock.shutdown(socket.SHUT_RDWR)

    # ---- serving
    async def _serve(self, conn: QueryConn, serve: Serve) -> None:
        """One admitted connection: serve it, close it, free its slot."""
        try:
            answer = await asyncio.wait_for(serve(conn), QUERY_TIMEOUT)
            secret = self.answers.secret
            if answer and conn.sign is not None and secret is not None:
                answer = packet.sign_answer(secret, *conn.sign, answer)
            if answer and not conn.shed:
                await asyncio.wait_for(self._send(conn, answer), QUERY_TIMEOUT)
        except (TimeoutError, OSError, WireError) as e:  # slow, gone, or too long a line
            log.debug("query: %s", e)
        finally:
            del self.conns[conn.key]
            self.admission.done(conn.key)
            conn.sock.close()  # an answer not sent by now is dropped: no fd kept

    async def _send(self, conn: QueryConn, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(conn.sock, data)

    def _server(self, purpose: str) -> Serve:
        async def serve(conn: QueryConn) -> bytes:
            word = await self._request(conn, purpose)
            if word is None:
                return b""
            conn.answered = True
            return self.answers.answer(purpose, word)

        return serve

    async def _request(self, conn: QueryConn, purpose: str) -> str | None:
        """The request word (None: nothing to answer: an error line has been sent, or
        the connection was shed). With a secret, after the challenge; without one the
        status port waits REQUEST_WAIT for it and the best port reads nothing."""
        if self.answers.secret is not None:
            return await self._challenge(conn, purpose)
        if purpose == "best":
            return ""
        try:
            line = await asyncio.wait_for(read_line(conn.sock), REQUEST_WAIT)
            word = line.decode(errors="replace").strip()
        except TimeoutError:
            word = ""
        return None if conn.shed else word

    async def _challenge(self, conn: QueryConn, purpose: str) -> str | None:
        """With a secret: challenge, check the answer; return the request word or None
        (then an error line has been sent, or the connection was shed)."""
        secret = self.answers.secret
        assert secret is not None
        nonce = packet.new_nonce()
        await self._send(conn, f"auth {nonce}\n".encode())
        try:
            raw = await asyncio.wait_for(read_line(conn.sock), HANDSHAKE_TIMEOUT)
        except TimeoutError:
            self.stats["handshake_timeouts"] += 1
            conn.answered = True
            await self._send(conn, f"error no answer to the challenge within "
                                   f"{HANDSHAKE_TIMEOUT:g} s\n".encode())  # fmt: skip
            return None
        if conn.shed:  # shut down under it to make room: it has read "error busy"
            return None
        line = raw.decode(errors="replace")
        ok, word = packet.check_query(secret, purpose, nonce, line)
        if not ok:
            self.stats["refused"] += 1
            conn.answered = True
            await self._send(conn, b"error authentication failed\n")
            return None
        self.admission.serving(conn.key)
        cnonce = packet.query_cnonce(line)
        if cnonce is not None:  # the client checks who answers: sign the answer
            conn.sign = (purpose, nonce, cnonce)
        return word
