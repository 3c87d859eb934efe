"""The TFTP transfer socket: every transfer's datagrams, a batch per system call.

One non-blocking UDP socket is the server's TID for every transfer (clients are
told apart by their own address and port).  :class:`TransferSocket` is a
:class:`beokit.udp.UdpBatch` laid out for TFTP: a received slot is the
sender's ``sockaddr_in`` and up to 528 bytes (an ACK is 4; :data:`ACK_SLOT`
reads the peer key, opcode and block of a slot in one unpack), and every
queued message has two iovecs that the kernel gathers into one DATA datagram:
its 4-byte header, from :data:`HEADER_TABLE` (block ``b``'s at
``HEADER_ADDR + 4 * (b & 0xFFFF)``; the first iovec's length is always 4 for
that), and its block, where the file lies in memory (``files.OpenFile.addr``).
So a datagram costs four integer stores and no copy or allocation.  The
compiled lock-step path (``beokit.boot._lockstep.acks``) writes these arrays
directly; its layout constants are checked against these at import
(``tftp_server.FAST_ACKS``).  :meth:`TransferSocket.add` queues a whole
datagram (an OACK) in the first iovec; the header length comes back after the
flush (:meth:`TransferSocket.restore`).
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

from beokit import udp
from beokit.boot import tftp

if TYPE_CHECKING:
    from beokit.boot.tftp_sessions import Session

BATCH = 256  # datagrams per recvmmsg/sendmmsg call
IOV_PER_MSG = 2  # a datagram = its header + its block (or one whole buffer, and nothing)
SLOT = 16 + 528  # per received datagram: sockaddr_in, then up to 528 bytes of payload
HEADER_LEN = 4
# Every DATA header, built once, back to back: block b's is at 4 * (b & 0xFFFF)
HEADER_TABLE = b"".join(tftp.data_header(b) for b in range(65536))
HEADER_VIEW = memoryview(HEADER_TABLE)
HEADER_ADDR = udp.address_of(HEADER_TABLE)  # block b's DATA header: at + 4 * (b & 0xFFFF)
ACK_SLOT = struct.Struct("!Q8xHH")  # peer_key, opcode, block of a received slot
ACK_SLOTS = struct.Struct(f"!Q8xHH{SLOT - 20}x")  # the same, a whole slot: iter_unpack


class TransferSocket(udp.UdpBatch):
    """The shared transfer socket, bound to ``bind`` on a port of the kernel's choice
    (see the module's documentation for the layout)."""

    def __init__(self, bind: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((bind, 0))
        except BaseException:
            sock.close()
            raise
        super().__init__(sock, batch=BATCH, size=SLOT - 16, iovs=IOV_PER_MSG)
        for i in range(self.batch):
            self.iq[i * 4 + 1] = HEADER_LEN  # the header's length (add() changes it)

    def restore(self, dirty: list[int]) -> None:
        for i in dirty:  # OACKs went out: their messages get a header's length back
            self.iq[i * 4 + 1] = HEADER_LEN

    def add(self, owner: Session, pkt: bytes) -> None:
        """Queue one whole datagram ``pkt`` (an OACK) of ``owner``, kept alive until
        sent; full: flush first.  (DATA blocks are written in place, see
        ``TftpServer.on_transfers``.)"""
        self.queue(owner, owner.name_buf, pkt)
