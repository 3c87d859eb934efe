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
import contextlib
import email.utils
import logging
import os
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from beokit.boot import paths

if TYPE_CHECKING:
    from beokit.boot.server import BootServer

log = logging.getLogger("beokit.boot")
CHUNK = 1 << 20  # bytes per sendfile call: the unit of turn-taking between clients
MAX_HEADER = 16384
IDLE = 30.0
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


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


class HttpServer:
    def __init__(self, boot: BootServer, port: int) -> None:
        self.boot = boot
        self.port = port
        self.server: asyncio.AbstractServer | None = None
        self.clients: dict[str, dict] = {}  # peer -> {"bytes", "file", "since"}
        self.tasks: set[asyncio.Task] = set()
        self.turns = asyncio.Lock()  # round robin of the HTTP clients under a cap

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, self.boot.opts.bind, self.port,
                                                 backlog=1024, reuse_address=True)  # fmt: skip

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self.tasks):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        peer = writer.get_extra_info("peername")
        key = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.boot.count("http-connections")
        try:
            while await self._one(reader, writer, key):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self.clients.pop(key, None)
            self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _reply(self, writer: asyncio.StreamWriter, status: str, headers: dict[str, str],
                     body: bytes = b"") -> None:  # fmt: skip
        head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()

    async def _error(self, writer: asyncio.StreamWriter, status: str, keep: bool) -> bool:
        body = (status + "\n").encode()
        await self._reply(writer, status, {"Content-Type": "text/plain", "Content-Length":
                                           str(len(body)), "Connection":
                                           "keep-alive" if keep else "close"}, body)  # fmt: skip
        return keep

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   key: str) -> bool:  # fmt: skip
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE)
        except asyncio.LimitOverrunError:
            await self._error(writer, "431 Request Header Fields Too Large", False)
            return False
        except asyncio.IncompleteReadError:
            return False
        if len(head) > MAX_HEADER:
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
            f = self.boot.open_served(name)
        except paths.PathRefused as e:
            log.warning("HTTP %s refused: %s", key, e)
            self.boot.count("http-refused")
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
            self.boot.count("http-done")
        finally:
            self.boot.files.close(f)
        return keep

    async def _body(self, writer: asyncio.StreamWriter, f, start: int, count: int, key: str,
                    name: str) -> None:  # fmt: skip
        boot = self.boot
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
                if boot.bucket.rate > 0:  # under a cap: smaller turns, taken in FIFO order
                    n = min(n, max(int(boot.bucket.burst) // 4, 16384))
                    async with self.turns:  # asyncio.Lock wakes waiters first come first served
                        while not boot.bucket.take(n, time.monotonic()):  # the shared cap
                            boot.load.ran_dry()
                            await asyncio.sleep(max(boot.bucket.wait_for(n), 0.001))
                if fobj is not None:
                    sent = await loop.sendfile(writer.transport, fobj, off, n)
                else:
                    writer.write(f.read(off, n))
                    await writer.drain()
                    sent = n
                off += sent
                left -= sent
                acct["bytes"] += sent
                boot.load.count(sent)
                await asyncio.sleep(0)  # the next client's turn
        finally:
            if fobj is not None:
                fobj.close()
