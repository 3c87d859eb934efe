"""The server's listening UDP ports, and the DHCP and DNS glue.

:class:`Listeners` opens the well-known ports (DHCP, proxyDHCP's 4011, TFTP
requests, DNS) all or nothing, reads each a batch at a time
(:class:`beokit.udp.UdpBatch`: one ``recvmmsg`` for up to :data:`BATCH`
datagrams), hands each datagram to its protocol and sends the immediate
replies of a batch with one ``sendmmsg``.  The decisions are the pure
modules': ``dhcp.DhcpLogic`` (which reply, where, after what delay),
``dhcp_queue.DhcpQueue`` (which request next under load) and ``dns.answer``;
a TFTP request goes to ``tftp_server.TftpServer``.

DHCP goes through the queue: each time a DHCP port is readable, everything
waiting in the kernel (up to :data:`DRAIN` datagrams) is read into the
queue, stamped with the kernel's arrival time, then at most :data:`SERVE`
requests are answered in the queue's order (exchanges in progress first,
late DISCOVERs dropped) and their replies sent with one ``sendmmsg``; what
is left waits for the next turn of the loop, after the other sockets and the
timers.  Here too: the delay of a deferred DHCP offer (a timer, bounded by
:data:`MAX_DEFERRED`), the broadcast address, the counters.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from beokit import udp
from beokit.boot import dns
from beokit.boot.config import PXE_PORT, BootConfig, ServerOptions
from beokit.boot.counters import Counters
from beokit.boot.dhcp import DhcpLogic, Reply
from beokit.boot.dhcp_queue import DhcpQueue
from beokit.boot.leases import LeaseDB

log = logging.getLogger("beokit.boot")
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
BATCH = 64  # datagrams per read of a listening socket (then the others get their turn)
SIZE = 4096  # the longest datagram read whole; a longer one is dropped (and counted)
MAX_DEFERRED = 4096  # deferred DHCP offers waiting at once (more are dropped: clients retry)
DRAIN = 4096  # DHCP datagrams read into the queue per readable event, at most
SERVE = 256  # DHCP requests answered per turn of the loop (then the others get theirs)
RCVBUF = 8 << 20  # receive buffer of the listening sockets (SO_RCVBUFFORCE as root)
NAMES = 4096  # reply destinations kept packed (then the cache starts again)


class Listeners:
    """The listening sockets and what arrives on them.

    ``on_tftp(sock, data, src)`` takes a datagram to the TFTP port;
    ``dhcp_delay()`` says how long to defer an offer to a newcomer now;
    ``leases_changed()`` is called when a DHCP datagram changed the lease database.
    """

    def __init__(self, opts: ServerOptions, cfg: BootConfig, stats: Counters, db: LeaseDB,
                 logic: DhcpLogic, *, on_tftp: Callable[[socket.socket, bytes, tuple], None],
                 dhcp_delay: Callable[[], float], leases_changed: Callable[[], None]) -> None:  # fmt: skip
        self.opts, self.cfg, self.stats, self.db, self.logic = opts, cfg, stats, db, logic
        self.on_tftp, self.dhcp_delay, self.leases_changed = on_tftp, dhcp_delay, leases_changed
        self.batches: dict[str, udp.UdpBatch] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending_replies: set[asyncio.TimerHandle] = set()
        self.queue = DhcpQueue()
        self.serving = False  # a turn of answering DHCP requests is scheduled
        self._dests: dict[tuple[str, int], tuple[tuple, bytes]] = {}  # -> (owner, sockaddr)

    def _udp(self, port: int, *, broadcast: bool = False) -> socket.socket:
        # No SO_REUSEADDR: a second server on the same port must fail, not share it.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if broadcast:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                if self.opts.interface:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                 self.opts.interface.encode())  # fmt: skip
            try:  # (root: past net.core.rmem_max, so that a burst waits instead of being lost)
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            s.setblocking(False)
            s.bind((self.opts.bind, port))
        except BaseException:
            s.close()
            raise
        return s

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open (or re-open) every listening socket; all or nothing.

        On a re-open (SIGHUP) the old sockets are closed first (the ports are
        not shared: no SO_REUSEADDR); datagrams arriving in between are lost
        and the clients retransmit, as they always must over UDP.
        """
        o = self.opts
        self.loop = loop
        self.close()
        new: dict[str, socket.socket] = {}
        try:
            if not o.no_dhcp and o.dhcp_port:
                new["dhcp"] = self._udp(o.dhcp_port, broadcast=True)
                if o.proxy and o.pxe_port:
                    new["pxe"] = self._udp(o.pxe_port, broadcast=True)
            if o.tftp_port:
                new["tftp"] = self._udp(o.tftp_port)
            if o.dns_port:
                new["dns"] = self._udp(o.dns_port)
        except OSError:
            for s in new.values():
                s.close()
            raise
        for kind, s in new.items():
            b = self.batches[kind] = udp.UdpBatch(s, batch=BATCH, size=SIZE,
                                                  timestamps=kind in ("dhcp", "pxe"))  # fmt: skip
            if kind in ("dhcp", "pxe"):
                loop.add_reader(s.fileno(), self._on_dhcp_readable, kind, b)
            else:
                loop.add_reader(s.fileno(), self._on_readable, kind, b)

    def close(self) -> None:
        for b in self.batches.values():
            if self.loop is not None:
                self.loop.remove_reader(b.fd)
            b.close()
        self.batches = {}

    def stop(self) -> None:
        """Close the sockets; deferred replies are not sent."""
        for h in self.pending_replies:
            h.cancel()
        self.close()

    def names(self) -> str:
        """The ports, for the start-up line: ``dhcp 0.0.0.0:67, tftp ...``."""
        return ", ".join(f"{k} {b.sock.getsockname()[0]}:{b.sock.getsockname()[1]}"
                         for k, b in self.batches.items())  # fmt: skip

    def _on_readable(self, kind: str, b: udp.UdpBatch) -> None:
        """A batch of TFTP requests or DNS queries (then the other sockets get their
        turn), and the replies."""
        try:
            n = b.recv()
        except OSError as e:
            log.warning("%s socket: %s", kind, e)
            return
        for i in range(n):
            src = b.source(i)
            if b.truncated(i):
                self.stats.count(f"{kind}-truncated")
                continue
            try:
                if kind == "tftp":
                    self.on_tftp(b.sock, b.payload(i), src)
                else:
                    self.on_dns(b, b.payload(i), src)
            except Exception:  # a bug must not kill the server
                log.exception("%s: error handling a datagram from %s", kind, src)
                self.stats.count(f"{kind}-errors")
        if b.n:
            self._flush(b)

    # -- DHCP ---------------------------------------------------------------------------------
    def _on_dhcp_readable(self, kind: str, b: udp.UdpBatch) -> None:
        """Read everything waiting (up to :data:`DRAIN`) into the queue, then answer."""
        port = PXE_PORT if kind == "pxe" else 67  # whatever number --pxe-port gave it
        push, read = self.queue.push, 0
        while read < DRAIN:
            try:
                n = b.recv()
            except OSError as e:
                log.warning("%s socket: %s", kind, e)
                break
            if not n:
                break
            read += n
            flags = b.rlen[12 : 16 * n : 16]
            now = time.time()
            for i, (data, src, stamp) in enumerate(b.received(n)):
                if flags[i] & udp.MSG_TRUNC:
                    self.stats.count(f"{kind}-truncated")
                    continue
                push((data, src, port, kind), data, stamp or now)
            if n < b.batch:
                break
        if read:
            self.stats.count("dhcp-in", read)
        self.serve_dhcp()

    def serve_dhcp(self) -> None:
        """Answer up to :data:`SERVE` queued requests, in the queue's order; the rest on the
        next turn of the loop."""
        self.serving = False
        q, logic, db = self.queue, self.logic, self.db
        now = time.time()
        defer = self.dhcp_delay()
        used: set[udp.UdpBatch] = set()
        for _ in range(SERVE):
            item = q.pop(now)
            if item is None:
                break
            data, src, port, kind = item
            b = self.batches.get(kind)
            if b is None:  # (its socket was closed: SIGHUP, stop)
                continue
            try:
                reply = logic.handle(data, src, now, defer=defer, port=port)
                if reply is not None:
                    self._send_dhcp(b, reply)
                    used.add(b)
            except Exception:  # a bug must not kill the server
                log.exception("dhcp: error handling a datagram from %s", src)
                self.stats.count("dhcp-errors")
        for b in used:
            if b.n:
                self._flush(b)
        if db.events:
            self.leases_changed()
        if q and not self.serving and self.loop is not None:
            self.serving = True
            self.loop.call_soon(self.serve_dhcp)

    def _send_dhcp(self, b: udp.UdpBatch, reply: Reply) -> None:
        host, dport = reply.dest
        if host == "<broadcast>":
            host = str(self.cfg.broadcast) if not self.opts.interface else "255.255.255.255"
        if log.isEnabledFor(logging.DEBUG):
            log.debug("DHCP %s -> %s:%d", reply.summary, host, dport)
        if reply.delay > 0:
            self._defer(b.sock, reply, host, dport)
        else:
            self._reply(b, "dhcp", reply.data, host, dport)

    def _flush(self, b: udp.UdpBatch) -> None:
        """Send the queued replies; count the DHCP ones that went out."""
        sent = sum(1 for what in b.keep if what[0] == "dhcp")
        for (what, host, port), _left, err in b.flush():  # type: ignore[misc]
            if what == "dhcp":
                sent -= 1
                self.stats.warn("dhcp-send", "DHCP reply to %s:%d: %s", host, port, err)
        if sent:
            self.stats.count("dhcp-out", sent)

    def _reply(self, b: udp.UdpBatch, what: str, data: bytes, host: str, port: int) -> None:
        """Queue a reply for the end of the batch (sent at once if the queue is full)."""
        if b.full:
            self._flush(b)
        dest = self._dests.get((host, port))
        if dest is None or dest[0][0] != what:
            try:
                name = udp.sockaddr_in(host, port)
            except OSError as e:
                if what == "dhcp":
                    self.stats.warn("dhcp-send", "DHCP reply to %s:%d: %s", host, port, e)
                return
            if len(self._dests) >= NAMES:
                self._dests.clear()
            dest = self._dests[(host, port)] = ((what, host, port), name)
        b.queue(dest[0], dest[1], data if type(data) is bytes else bytes(data))  # (dnslib: bytearray)

    def _defer(self, s: socket.socket, reply: Reply, host: str, dport: int) -> None:
        """Send an offer to a newcomer later (bounded: the client retransmits)."""
        assert self.loop is not None
        if len(self.pending_replies) >= MAX_DEFERRED:
            self.stats.count("dhcp-deferred-dropped")  # the client retransmits its DISCOVER
            return

        def send() -> None:
            if s.fileno() < 0:
                return
            try:
                s.sendto(reply.data, (host, dport))
                self.stats.count("dhcp-out")
            except OSError as e:
                self.stats.warn("dhcp-send", "DHCP reply to %s:%d: %s", host, dport, e)

        self.stats.count("dhcp-deferred")
        h = self.loop.call_later(reply.delay, send)
        self.pending_replies.add(h)
        self.loop.call_later(reply.delay + 0.01, self.pending_replies.discard, h)

    # -- DNS ----------------------------------------------------------------------------------
    def on_dns(self, b: udp.UdpBatch, data: bytes, src: tuple[str, int]) -> None:
        self.stats.count("dns-in")
        out = dns.answer(data, self.db)
        if out is not None:
            self._reply(b, "dns", out, *src)
