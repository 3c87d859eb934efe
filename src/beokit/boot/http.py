"""HTTP boot: a small read-only HTTP/1.1 file server inside the boot server's loop.

Same root rules as TFTP (``paths.resolve``: no ``..``, no absolute paths,
no symlinks out), the same virtual files (``nettee/<node>.conf``, a
generated ``boot.ipxe``), GET and HEAD, single ``Range: bytes=`` requests
(206 / 416), keep-alive. The bytes go by ``sendfile(2)`` (``loop.sendfile``)
in turns of 1 MiB, so clients starting together finish together. With a cap
(``tftp.bandwidth``) the turns are smaller and taken first come first served
from the same token bucket as TFTP, so HTTP and TFTP clients share one budget. Per-client bytes are counted for SIGUSR1.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from beokit.boot import paths
from beokit.boot.counters import Counters
from beokit.boot.fair import Load, TokenBucket
from beokit.boot.files import OpenFile

log = logging.getLogger("beokit.boot")
CHUNK = 1 << 20  # bytes per sendfile call: the unit of turn-taking between clients
MAX_HEADER = 16384  # bytes of a request head (line and headers); more: 431
MAX_HEADER_LINES = 100
IDLE = 30.0  # seconds to wait for a whole request head (the first, or the next: keep-alive)
SEND_STALL = 30.0  # seconds a reply may wait for the client to take any of it
MAX_CONNECTIONS = 512  # at once (fewer where the descriptor limit is low)
MAX_PER_ADDRESS = 128  # at once from one client address
GRACE = 1.0  # an idle connection younger than this is never pushed out for a new one
BACKLOG = 128  # listen() backlog, and the most connections asyncio accepts in one go
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class HttpContext:
    """What the HTTP server needs of the boot server, and nothing else.

    ``open_file(name)`` gives a requested name's file as TFTP serves it (virtual
    files included; raises ``paths.PathRefused``, ``FileNotFoundError`` or another
    ``OSError``) and ``close_file`` gives it back; ``bucket`` and ``load`` are the
    bandwidth budget shared with TFTP (a cap when ``bucket.rate > 0``); ``stats``
    takes the counters and rate-limited warnings.
    """

    bind: str
    open_file: Callable[[str], OpenFile]
    close_file: Callable[[OpenFile], None]
    bucket: TokenBucket
    load: Load
    stats: Counters


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``Range`` header -> (start, end inclusive); ``None`` = whole file; ValueError = 416."""
    m = RANGE_RE.match(value.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise ValueError(value)
    a, b = m.group(1), m.group(2)
    if not a:  # suffix: the last b bytes
        n = int(b)
        if n == 0:
            raise ValueError(value)
        return (max(size - n, 0), size - 1)
    start = int(a)
    end = min(int(b), size - 1) if b else size - 1
    if start >= size or end < start:
        raise ValueError(value)
    return (start, end)


class Conn:
    """One connection: its address, its task and transport, and since when it waits
    for a request head (``idle``; ``None`` while it is being answered)."""

    __slots__ = ("ip", "idle", "task", "transport")

    def __init__(self, ip: str, now: float) -> None:
        self.ip = ip
        self.idle: float | None = now
        self.task: asyncio.Task | None = None
        self.transport: asyncio.BaseTransport | None = None


def max_connections(nofile: int) -> int:
    """The connection cap for a soft descriptor limit: each connection may hold two
    descriptors (its socket and a file's), up to a backlog of pushed-out ones are
    still closing, and the rest of the server needs some."""
    return max(16, min(MAX_CONNECTIONS, (nofile - 2 * BACKLOG) // 2))


class HttpServer:
    """Connections are bounded (:data:`MAX_CONNECTIONS`, :data:`MAX_PER_ADDRESS`) where
    they are accepted: when full, a new connection pushes out the one that has waited
    longest for a request head (for at least :data:`GRACE`), else it is closed at
    once, before any transport or task exists for it. So idle or slowly talking
    connections (slowloris) never keep a client that asks out, and descriptors stay
    under the cap plus one backlog; a request head has :data:`IDLE` seconds and
    :data:`MAX_HEADER` bytes, and a reply that the client does not take for
    :data:`SEND_STALL` seconds ends its connection."""

    def __init__(self, ctx: HttpContext, port: int) -> None:
        self.ctx = ctx
        self.port = port
        self.sock: socket.socket | None = None
        self.clients: dict[str, dict] = {}  # peer -> {"bytes", "file", "since"}
        self.tasks: set[asyncio.Task] = set()
        self.conns: set[Conn] = set()
        self.per_address: dict[str, int] = {}
        self.max_conns = MAX_CONNECTIONS
        self.turns = asyncio.Lock()  # round robin of the HTTP clients under a cap

    async def start(self) -> None:
        import resource

        self.max_conns = max_connections(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.ctx.bind, self.port))
            s.listen(BACKLOG)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self.sock = s
        asyncio.get_running_loop().add_reader(s.fileno(), self._on_accept)

    def _on_accept(self) -> None:
        """Accept what waits (up to a backlog), each admitted or closed at once."""
        loop = asyncio.get_running_loop()
        assert self.sock is not None
        for _ in range(BACKLOG):
            try:
                s, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors or memory: pause, do not spin
                self.ctx.stats.warn("http-accept", "HTTP accept: %s (pausing 0.1 s)", e.strerror)
                loop.remove_reader(self.sock.fileno())
                loop.call_later(0.1, self._resume)
                return
            self.ctx.stats.count("http-connections")
            conn = self._admit(peer[0])
            if conn is None:
                self.ctx.stats.count("http-refused-full")
                s.close()
                continue
            s.setblocking(False)
            conn.task = loop.create_task(self._client(s, conn, f"{peer[0]}:{peer[1]}"))
            self.tasks.add(conn.task)

    def _resume(self) -> None:
        if self.sock is not None and self.sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._on_accept)

    def _admit(self, ip: str) -> Conn | None:
        """Make room for a new connection from ``ip``; None: none could be made."""
        now = time.monotonic()
        if self.per_address.get(ip, 0) >= MAX_PER_ADDRESS and not self._push_out(now, ip):
            return None
        if len(self.conns) >= self.max_conns and not self._push_out(now, None):
            return None
        conn = Conn(ip, now)
        self.conns.add(conn)
        self.per_address[ip] = self.per_address.get(ip, 0) + 1
        return conn

    def _push_out(self, now: float, ip: str | None) -> bool:
        """End the connection (of ``ip``, or any) that has waited longest for a request
        head, if it has waited at least GRACE; False if there is none."""
        oldest: Conn | None = None
        for c in self.conns:
            if c.idle is not None and (ip is None or c.ip == ip) and (
                    oldest is None or c.idle < oldest.idle):  # type: ignore[operator]  # fmt: skip
                oldest = c
        if oldest is None or now - oldest.idle < GRACE:  # type: ignore[operator]
            return False
        self._forget(oldest)
        if oldest.transport is not None:
            oldest.transport.abort()  # (its descriptor goes at the loop's next turn)
        if oldest.task is not None:
            oldest.task.cancel()
        self.ctx.stats.count("http-pushed-out")
        return True

    def _forget(self, conn: Conn) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            left = self.per_address.get(conn.ip, 1) - 1
            if left > 0:
                self.per_address[conn.ip] = left
            else:
                self.per_address.pop(conn.ip, None)

    async def stop(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _client(self, sock: socket.socket, conn: Conn, key: str) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        writer = None
        try:
            reader = asyncio.StreamReader(limit=MAX_HEADER, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
            conn.transport = transport
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            while await self._one(reader, writer, key, conn):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._forget(conn)
            self.clients.pop(key, None)
            self.tasks.discard(task)  # type: ignore[arg-type]
            if writer is None:
                if conn.transport is None:
                    sock.close()
            else:
                writer.close()  # (flushes what is left, for up to 2 s: a client that never
                try:  # reads would keep the descriptor, so then the connection is dropped)
                    await asyncio.wait_for(writer.wait_closed(), 2)
                except BaseException:  # noqa: BLE001 (cancelled, timed out, reset: all end here)
                    writer.transport.abort()

    async def _reply(self, writer: asyncio.StreamWriter, status: str, headers: dict[str, str],
                     body: bytes = b"") -> None:  # fmt: skip
        head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode() + b"\r\n" + body)
        await asyncio.wait_for(writer.drain(), SEND_STALL)

    async def _error(self, writer: asyncio.StreamWriter, status: str, keep: bool) -> bool:
        body = (status + "\n").encode()
        await self._reply(writer, status, {"Content-Type": "text/plain", "Content-Length":
                                           str(len(body)), "Connection":
                                           "keep-alive" if keep else "close"}, body)  # fmt: skip
        return keep

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   key: str, conn: Conn) -> bool:  # fmt: skip
        conn.idle = time.monotonic()  # waiting for a head: may be pushed out
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE)
        except (asyncio.LimitOverrunError, ValueError):
            await self._error(writer, "431 Request Header Fields Too Large", False)
            return False
        except asyncio.IncompleteReadError:
            return False
        conn.idle = None
        if len(head) > MAX_HEADER or head.count(b"\r\n") > MAX_HEADER_LINES + 2:
            await self._error(writer, "431 Request Header Fields Too Large", False)
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._error(writer, "400 Bad Request", False)
            return False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        keep = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        if method not in ("GET", "HEAD"):
            await self._error(writer, "405 Method Not Allowed", keep)
            return keep
        name = unquote(urlsplit(target).path)
        try:
            f = self.ctx.open_file(name)
        except paths.PathRefused as e:
            self.ctx.stats.warn("http-refused", "HTTP %s refused: %s", key, e)
            self.ctx.stats.count("http-refused")
            return await self._error(writer, "403 Forbidden", keep)
        except FileNotFoundError:
            return await self._error(writer, "404 Not Found", keep)
        except OSError:
            return await self._error(writer, "403 Forbidden", keep)
        try:
            size = f.size
            start, end = 0, size - 1
            status = "200 OK"
            hdrs = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                    "Connection": "keep-alive" if keep else "close",
                    "Date": email.utils.formatdate(usegmt=True)}  # fmt: skip
            if "range" in headers:
                try:
                    start, end = parse_range(headers["range"], size)
                    status = "206 Partial Content"
                    hdrs["Content-Range"] = f"bytes {start}-{end}/{size}"
                except ValueError:
                    hdrs["Content-Range"] = f"bytes */{size}"
                    hdrs["Content-Length"] = "0"
                    await self._reply(writer, "416 Range Not Satisfiable", hdrs)
                    return keep
            count = max(end - start + 1, 0)
            hdrs["Content-Length"] = str(count)
            await self._reply(writer, status, hdrs)
            if method == "GET" and count:
                await self._body(writer, f, start, count, key, name)
            self.ctx.stats.count("http-done")
        finally:
            self.ctx.close_file(f)
        return keep

    async def _body(self, writer: asyncio.StreamWriter, f: OpenFile, start: int, count: int,
                    key: str, name: str) -> None:  # fmt: skip
        bucket, load = self.ctx.bucket, self.ctx.load
        loop = asyncio.get_running_loop()
        acct = self.clients.setdefault(key, {"bytes": 0, "file": name, "since": time.monotonic()})
        acct["file"] = name
        fobj = None
        if f.fd >= 0:
            fobj = os.fdopen(os.dup(f.fd), "rb", buffering=0)
        try:
            off, left = start, count
            while left > 0:
                n = min(CHUNK, left)  # turns of 1 MiB: clients starting together end together
                if bucket.rate > 0:  # under a cap: smaller turns, taken in FIFO order
                    n = min(n, max(int(bucket.burst) // 4, 16384))
                    async with self.turns:  # asyncio.Lock wakes waiters first come first served
                        while not bucket.take(n, time.monotonic()):  # the shared cap
                            load.ran_dry()
                            await asyncio.sleep(max(bucket.wait_for(n), 0.001))
                if fobj is not None:  # (a client that takes nothing for SEND_STALL s: gone)
                    sent = await asyncio.wait_for(loop.sendfile(writer.transport, fobj, off, n),
                                                  SEND_STALL)  # fmt: skip
                else:
                    writer.write(f.read(off, n))
                    await asyncio.wait_for(writer.drain(), SEND_STALL)
                    sent = n
                off += sent
                left -= sent
                acct["bytes"] += sent
                load.count(sent)
                self.ctx.stats.count("http-bytes", sent)  # (the load counts TFTP's too)
                await asyncio.sleep(0)  # the next client's turn
        finally:
            if fobj is not None:
                fobj.close()
