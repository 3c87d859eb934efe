"""``beo dshd``'s sockets, bound before the event loop starts (so ``-b`` reports bind errors).

One UDP socket for the gossip (and the reports of broadcast mode), one more
per ``--send-to`` group that a bound socket would not see (a multicast group
joined, a broadcast address), and the two listening TCP ports.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
from dataclasses import dataclass, field

from beokit.dsh.config import DshdConfig
from beokit.errors import BeokitError

SOCK_BUF = 4 << 20  # UDP receive/send buffers: a 1000-member burst fits many times
LISTEN_BACKLOG = 512  # the kernel's queue of connections not yet accepted
_IP_MTU_DISCOVER, _IP_PMTUDISC_DO = 10, 2  # Linux <netinet/in.h>; Python 3.11 lacks them


@dataclass
class DshdSockets:
    """The daemon's sockets: ``udp`` (bound to --bind), ``extra_udp`` (--send-to
    groups), ``status`` and ``best`` (listening)."""

    udp: socket.socket
    extra_udp: list[socket.socket] = field(default_factory=list)
    tcp: list[socket.socket] = field(default_factory=list)  # status, best

    @property
    def gossip(self) -> list[socket.socket]:
        """Every UDP socket that receives reports."""
        return [self.udp, *self.extra_udp]

    def close(self) -> None:
        for s in [self.udp, *self.extra_udp, *self.tcp]:
            s.close()


def big_buffers(s: socket.socket) -> None:
    """SOCK_BUF for both directions; as root past net.core.[rw]mem_max (FORCE)."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):  # fmt: skip
        try:
            if force is None:
                raise OSError
            s.setsockopt(socket.SOL_SOCKET, force, SOCK_BUF)
        except OSError:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, plain, SOCK_BUF)


def _gossip_socket(cfg: DshdConfig) -> socket.socket:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        big_buffers(u)
        # DF set: the kernel skips the per-packet IP ID hash (reports are < 400 bytes)
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                u.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
        u.bind((cfg.bind, cfg.gossip_port))
        u.setblocking(False)
    except OSError:
        u.close()
        raise
    return u


def _group_socket(cfg: DshdConfig, u: socket.socket, addr: str) -> socket.socket | None:
    """The socket that receives what is sent to ``addr`` (a --send-to group), if the
    gossip socket ``u`` does not; a multicast group is joined (TTL 1, looped)."""
    multicast = ipaddress.IPv4Address(addr).is_multicast
    if multicast:
        u.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        u.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        if cfg.bind != "0.0.0.0":
            u.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(cfg.bind))
    elif cfg.bind == "0.0.0.0":  # a socket bound to every address sees the broadcasts
        return None
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        r.bind((addr, cfg.gossip_port))
        if multicast:
            mreq = socket.inet_aton(addr) + socket.inet_aton(cfg.bind)
            r.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        big_buffers(r)
        r.setblocking(False)
    except OSError:
        r.close()
        raise
    return r


def _listener(cfg: DshdConfig, port: int) -> socket.socket:
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((cfg.bind, port))
        t.listen(LISTEN_BACKLOG)
        t.setblocking(False)
    except OSError:
        t.close()
        raise
    return t


def open_sockets(cfg: DshdConfig) -> DshdSockets:
    """Every socket of the daemon, bound; :class:`BeokitError` naming the addresses and
    ports if one cannot be (nothing is left open then)."""
    opened: list[socket.socket] = []
    try:
        socks = DshdSockets(_gossip_socket(cfg))
        opened.append(socks.udp)
        for addr in cfg.send_to:
            r = _group_socket(cfg, socks.udp, addr)
            if r is not None:
                opened.append(r)
                socks.extra_udp.append(r)
        for port in (cfg.status_port, cfg.best_port):
            opened.append(_listener(cfg, port))
            socks.tcp.append(opened[-1])
    except OSError as e:
        for s in opened:
            s.close()
        raise BeokitError(f"cannot bind {cfg.bind} (UDP {cfg.gossip_port}, TCP "
                          f"{cfg.status_port}/{cfg.best_port}): {e.strerror}") from None  # fmt: skip
    return socks
