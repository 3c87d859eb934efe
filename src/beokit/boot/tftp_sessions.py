"""The TFTP transfers in flight: one :class:`Session` per client, and their bounds.

No sockets here.  :class:`SessionTable` keys the transfers by the client's
(address, port) (:func:`peer_key`: the server has one transfer socket, so a
transfer is told apart by the client's end alone) and decides the bounds
against floods (docs/boot.md, "Threat model and floods"): at most
:data:`MAX_TRANSFERS` at once, :data:`MAX_PER_ADDRESS` from one address and
:data:`MAX_UNCONFIRMED` that no client acknowledged yet.  It says which
transfer has to go; ending it (its file, its counters, its log line) is the
server's (``tftp_server.TftpServer.end_session``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

from beokit import udp
from beokit.boot import tftp
from beokit.boot.files import OpenFile

STALL = 0.5  # a transfer that got nothing for this long is "stalled"
MAX_TRANSFERS = 8192  # TFTP transfers at once; a request beyond gets ERROR "server busy"
MAX_PER_ADDRESS = 256  # TFTP transfers at once from one client address
MAX_UNCONFIRMED = 1024  # transfers whose client acknowledged nothing yet: the oldest goes


def peer_key(ip: str, port: int) -> int:
    """A client's (address, port) as one int: the key of its transfer (the first
    8 bytes of its ``sockaddr_in``, as ``tftp_socket.ACK_SLOT`` reads them)."""
    return int.from_bytes(udp.sockaddr_in(ip, port)[:8], "big")


@dataclass(eq=False, slots=True)
class Session:
    sock: socket.socket  # the shared transfer socket (see tftp_socket)
    peer: tuple[str, int]
    name: str
    file: OpenFile
    xfer: tftp.Transfer
    started: float
    key: int = -1  # peer_key(peer): the key in sessions, parked and the round robin
    base: int = 0  # file.addr: where the file's bytes are in memory (0: pread)
    counted_bytes: int = 0  # what the per-tick accounting already has of xfer.bytes_sent
    counted_packets: int = 0
    name_buf: bytes = b""  # sockaddr_in of the peer, kept alive: sendmmsg reads it by address
    name_addr: int = 0

    def __post_init__(self) -> None:
        self.key = peer_key(*self.peer)
        self.base = self.file.addr if self.file is not None else 0
        self.name_buf = udp.sockaddr_in(*self.peer)
        self.name_addr = udp.address_of(self.name_buf)

    def send(self, pkt: bytes) -> None:
        self.sock.sendto(pkt, self.peer)


class SessionTable:
    """The transfers by :func:`peer_key`, in the order they began, with the ones no
    client acknowledged yet and the ones of each client address."""

    def __init__(self) -> None:
        self.sessions: dict[int, Session] = {}
        self.unconfirmed: dict[int, Session] = {}  # in the order they began, until they
        # end or a flood pushes them out (confirmed ones are skipped then)
        self.per_address: dict[str, dict[int, Session]] = {}  # address -> its transfers

    def __len__(self) -> int:
        return len(self.sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(self.sessions.values())

    def get(self, key: int) -> Session | None:
        return self.sessions.get(key)

    def refusal(self, src: tuple[str, int]) -> tuple[str, Session | None]:
        """Whether a new request from ``src`` is taken: ("", None) yes; ("", ss) yes,
        once ``ss`` (its address's oldest unacknowledged transfer) is pushed out;
        (reason, None) no: too many transfers, or too many acknowledged ones from its
        address.  A request from the port of a transfer replaces it: always taken."""
        if peer_key(*src) in self.sessions:
            return "", None
        if len(self.sessions) >= MAX_TRANSFERS:
            return f"server busy: {MAX_TRANSFERS} transfers at once", None
        mine = self.per_address.get(src[0])
        if mine is not None and len(mine) >= MAX_PER_ADDRESS:
            # its oldest unconfirmed transfer makes room (requests forged in the name of a
            # node must not keep that node out); only confirmed ones make it refuse
            for ss in mine.values():
                if not ss.xfer.confirmed:
                    return "", ss
            return f"too many transfers from {src[0]} ({MAX_PER_ADDRESS} at once)", None
        return "", None

    def overflow(self, keep: int) -> list[Session]:
        """The oldest transfers no client acknowledged, beyond ``keep`` of them: to be
        pushed out (a forged source never acknowledges; a real client that lost its
        OACK or first block asks again, as RFC 1350 clients do)."""
        uc = self.unconfirmed
        out = []
        while len(uc) > keep:
            key = next(iter(uc))
            ss = uc.pop(key)
            if self.sessions.get(key) is ss and not ss.xfer.confirmed:
                out.append(ss)
        return out

    def add(self, ss: Session) -> None:
        self.sessions[ss.key] = ss
        self.unconfirmed[ss.key] = ss
        self.per_address.setdefault(ss.peer[0], {})[ss.key] = ss

    def remove(self, ss: Session) -> bool:
        """Forget ``ss``; False if it was not (or no longer) in the table."""
        key = ss.key
        if self.sessions.get(key) is not ss:
            return False
        del self.sessions[key]
        if self.unconfirmed.get(key) is ss:
            del self.unconfirmed[key]
        ip = ss.peer[0]
        mine = self.per_address.get(ip)
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self.per_address[ip]
        return True

    def stalled(self, now: float) -> int:
        """Acknowledged transfers waiting for their client for over :data:`STALL` s.
        (A transfer nobody acknowledged yet is no booting node: forged requests must
        not make the server defer the offers to newcomers.)"""
        return sum(1 for ss in self.sessions.values()
                   if ss.xfer.ready() is None and now - ss.xfer.last_progress > STALL
                   and not ss.xfer.done and ss.xfer.confirmed)  # fmt: skip

    def rows(self, now: float) -> list[dict]:
        """The transfers for ``beo boot status``."""
        return [
            {
                "peer": f"{ss.peer[0]}:{ss.peer[1]}",
                "file": ss.name,
                "bytes": ss.xfer.bytes_sent,
                "size": ss.xfer.size,
                "blksize": ss.xfer.blksize,
                "window": ss.xfer.window,
                "retransmits": ss.xfer.retransmits,
                "age": round(now - ss.started, 2),
            }
            for ss in self.sessions.values()
        ]  # fmt: skip
