"""Prometheus metrics of a long-running beokit server, in the plain text format.

No dependency: the text exposition format (version 0.0.4) is a few lines per
metric, and the server is an asyncio TCP listener answering ``GET /metrics``
over HTTP/1.0, in the loop the server already runs. A server adopts it with::

    exporter = metrics.Exporter(collect)          # collect() -> list[Metric]
    exporter.bind(address, port)                  # before forking: errors show
    await exporter.start()                        # in the running loop
    ...
    exporter.stop()

Unauthenticated and read-only, like every Prometheus exporter: bind it to a
management address or keep the port behind the firewall (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from beokit.errors import UsageError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST = 8192  # bytes of request line and headers read, at most
REQUEST_TIMEOUT = 5.0  # seconds a client has to send its request
MAX_CLIENTS = 16  # scrapes served at once; more are closed at once


@dataclass
class Metric:
    """One metric family: a name, its type, its help and its samples (labels -> value)."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Metric:
        self.samples.append((labels, value))
        return self


def counter(name: str, help_text: str, value: float | None = None, **labels: str) -> Metric:
    """A counter (``name`` should end in ``_total``), with one sample if ``value`` is given."""
    m = Metric(name, "counter", help_text)
    return m.add(value, **labels) if value is not None else m


def gauge(name: str, help_text: str, value: float | None = None, **labels: str) -> Metric:
    m = Metric(name, "gauge", help_text)
    return m.add(value, **labels) if value is not None else m


def from_counts(name: str, help_text: str, counts: dict[str, int],
                label: str = "event") -> Metric:  # fmt: skip
    """One counter family from a dict of named counts (``{"tftp-done": 3}`` ->
    ``name{event="tftp-done"} 3``): how a server with a counts dict (beo boot's
    ``Counters.counts``) exports every count it keeps, new ones included."""
    family = Metric(name, "counter", help_text)
    for key in sorted(counts):
        family.add(counts[key], **{label: key})
    return family


def _escape(text: str, quote: bool = False) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(families: Iterable[Metric]) -> bytes:
    """The text exposition of ``families`` (``# HELP``, ``# TYPE``, one line a sample)."""
    lines = []
    for m in families:
        lines.append(f"# HELP {m.name} {_escape(m.help)}")
        lines.append(f"# TYPE {m.name} {m.kind}")
        for labels, value in m.samples:
            text = ",".join(f'{k}="{_escape(str(v), quote=True)}"' for k, v in labels.items())
            lines.append(f"{m.name}{{{text}}} {_number(value)}" if text else
                         f"{m.name} {_number(value)}")  # fmt: skip
    return ("\n".join(lines) + "\n").encode()


def response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
    return head.encode() + body


def answer(request_line: bytes, collect: Callable[[], Iterable[Metric]]) -> bytes:
    """The HTTP response to one request line (pure but for ``collect``)."""
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return response("400 Bad Request", b"bad request\n")
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return response("405 Method Not Allowed", b"GET /metrics\n")
    if target == "/metrics":
        body = render(collect())
        resp = response("200 OK", body, CONTENT_TYPE)
        return resp[: len(resp) - len(body)] if method == "HEAD" else resp
    if target == "/":
        return response("200 OK", b"beokit metrics: GET /metrics (Prometheus text format)\n")
    return response("404 Not Found", b"not found: GET /metrics\n")


class Exporter:
    """``GET /metrics`` on one TCP port, served from the running asyncio loop."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.collect = collect
        self.sock: socket.socket | None = None
        self.server: asyncio.AbstractServer | None = None
        self.clients = 0
        self.scrapes = 0

    def bind(self, address: str, port: int) -> None:
        """Bind the listening socket now (a bad port fails before the server starts)."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise UsageError(f"bad --metrics-port {port}: cannot listen on "
                             f"{address}:{port}: {exc.strerror}") from None  # fmt: skip
        sock.setblocking(False)
        self.sock = sock

    @property
    def port(self) -> int:
        assert self.sock is not None
        return int(self.sock.getsockname()[1])

    async def start(self) -> None:
        assert self.sock is not None
        self.server = await asyncio.start_server(self._client, sock=self.sock, limit=MAX_REQUEST)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        elif self.sock is not None:
            self.sock.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= MAX_CLIENTS:
            writer.close()
            return
        self.clients += 1
        try:
            data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            writer.write(answer(data.split(b"\r\n", 1)[0], self.collect))
            self.scrapes += 1
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):  # fmt: skip
            pass
        finally:
            self.clients -= 1
            with contextlib.suppress(OSError):
                writer.close()
