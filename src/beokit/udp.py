"""Batched UDP: many datagrams per system call, one class for every pillar.

:class:`UdpBatch` wraps a non-blocking IPv4 UDP socket (the caller creates,
binds and owns its options) and reads and writes it a batch at a time with
``recvmmsg(2)``/``sendmmsg(2)`` (bound in :mod:`beokit.linux`).  Where those
calls are missing (not Linux, another libc, another pointer size, ENOSYS) the
same methods fall back to one ``recvmsg``/``sendmsg``/``sendto`` per datagram,
with the same results; :attr:`UdpBatch.batched` says which path runs.  Every
buffer is allocated once, in the constructor.

Receiving::

    b = UdpBatch(sock, batch=256, size=2048, timestamps=True)
    n = b.recv()                       # up to `batch` datagrams, 0 when none waits
    for data, (ip, port), stamp in b.received(n):
        ...                            # stamp: the kernel's arrival time (wall
                                       # clock) with timestamps=True, else None

``recv`` reads into fixed *slots* of ``16 + size`` bytes: the sender's
``sockaddr_in`` then the payload.  Per datagram: :meth:`~UdpBatch.length`,
:meth:`~UdpBatch.source`, :meth:`~UdpBatch.payload`, :meth:`~UdpBatch.stamp`,
:meth:`~UdpBatch.truncated` (longer than ``size``: cut).  A hot loop can read
the slots in place: ``b.view`` (bytes of every slot, slot ``i`` at
``b.slot * i``) and ``b.rlen`` (the ``mmsghdr`` array as 32-bit words:
``msg_len`` of datagram ``i`` at ``[16 * i + 14]``, ``msg_flags`` at
``[16 * i + 12]``).

Sending, a queue of datagrams sent with one ``sendmmsg`` by :meth:`flush`::

    name = sockaddr_in("10.0.0.7", 69)  # a bytes object, held by whoever queues it
    b.queue(owner, name, data)          # whole datagrams; b.full: flush first
    for owner, left, err in b.flush():  # the datagrams that did not go out
        ...                             # left: owner's queued datagrams from that one on

``owner`` is any object the caller wants back with a failure (a session, a
request); queued bytes are held until sent.  A hot path can write messages in
place instead of calling :meth:`queue`: message ``j`` is ``b.sq[8 * j]``
(``msg_name``: the address of a ``sockaddr_in`` that stays alive until the
flush) and its ``iovs`` iovecs ``b.iq[2 * (iovs * j + k)]`` (base address) and
``[... + 1]`` (length); then ``b.keep.append(owner)`` and ``b.n = j + 1``.
Every message has ``iovs`` iovecs (the kernel gathers them into one
datagram), so a header and a block can be sent from where each lies, with no
copy: beo boot's TFTP transfer socket does that (two iovecs a message,
:class:`beokit.boot.tftp_socket.TransferSocket`), and its compiled lock-step
path writes the arrays directly (their layout: 64-byte ``mmsghdr``,
``msg_len`` at byte 56, 16-byte iovecs; :func:`batch_calls` checks it).

The same datagram to many destinations (gossip)::

    b.set_destinations([("10.0.0.2", 7), ("10.0.0.3", 7)])  # packed once
    errors = b.send_all(data)           # failures counted, b.last_error says why

A failing destination (full buffer, unreachable) is skipped and counted; the
others still get the datagram.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys
from collections.abc import Sequence

from beokit import linux

BYTES_OFFSET = sys.getsizeof(b"") - 1  # where a bytes object's data begins (CPython)
MMSGHDR = 64  # bytes of one struct mmsghdr (LP64): 8 words
SOCKADDR = 16  # bytes of a struct sockaddr_in
MSG_TRUNC = 0x20
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python 3.11 lacks it
_SIZE_T = ctypes.sizeof(ctypes.c_size_t)
_CMSG_HDR = _SIZE_T + 8  # struct cmsghdr: cmsg_len (size_t), cmsg_level, cmsg_type (int)
_TIMESPEC = 2 * ctypes.sizeof(ctypes.c_long)
CMSG_SPACE = (_CMSG_HDR + _TIMESPEC + _SIZE_T - 1) // _SIZE_T * _SIZE_T  # one timestamp
_CMSG = struct.Struct(f"={'Q' if _SIZE_T == 8 else 'I'}ii{'qq' if _TIMESPEC == 16 else 'ii'}")
_PEER = struct.Struct("!2xH4s")  # port, address of a sockaddr_in
NAME_CACHE = 4096  # source addresses kept as text, by default (bounded: spoofed sources)


def address_of(data: bytes) -> int:
    """Where the bytes of a ``bytes`` object lie (CPython); the object must stay alive
    while anything uses the address."""
    return id(data) + BYTES_OFFSET


def sockaddr_in(ip: str, port: int) -> bytes:
    """``struct sockaddr_in`` of an IPv4 address and port (OSError: not an address)."""
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + \
        bytes(8)  # fmt: skip


def batch_calls() -> tuple | None:
    """libc's (sendmmsg, recvmmsg), if they exist and the layouts the batches are built
    with hold (a 64-byte ``mmsghdr`` with ``msg_len`` at byte 56, a ``bytes`` object's
    data at :data:`BYTES_OFFSET`); None otherwise: one call per datagram."""
    snd, rcv = linux.SENDMMSG, linux.RECVMMSG
    if snd is None or rcv is None:
        return None
    if ctypes.sizeof(linux.MMsgHdr) != MMSGHDR or linux.MMsgHdr.len.offset != 56:
        return None
    probe = b"beokit-probe"
    if ctypes.string_at(address_of(probe), len(probe)) != probe:
        return None
    return snd, rcv


CALLS = batch_calls()


def enable_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp each datagram with its arrival time (SO_TIMESTAMPNS)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def _stamp(level: int, kind: int, sec: int, nsec: int) -> float | None:
    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
        return sec + nsec * 1e-9
    return None


class UdpBatch:
    """A non-blocking IPv4 UDP socket read and written a batch at a time (see the
    module's documentation for the whole interface).

    ``batch``: datagrams per ``recvmmsg`` and per ``sendmmsg``; ``size``: the longest
    payload read whole; ``iovs``: iovecs per queued message; ``timestamps``: each
    datagram's arrival time (SO_TIMESTAMPNS, set on the socket here); ``names``:
    source addresses kept as text (a full cache starts again: spoofed sources cannot
    grow it); ``use_mmsg``: False forces the one-call-per-datagram path.
    """

    def __init__(self, sock: socket.socket, *, batch: int = 64, size: int = 2048,
                 iovs: int = 1, timestamps: bool = False, names: int = NAME_CACHE,
                 use_mmsg: bool = True) -> None:  # fmt: skip
        self.sock = sock
        self.fd = sock.fileno()
        self.batch, self.size, self.iovs = batch, size, iovs
        self.slot = SOCKADDR + size
        self.calls = CALLS if use_mmsg else None
        self.timestamps = timestamps and enable_timestamps(sock)
        self.ctrl_space = CMSG_SPACE if self.timestamps else 0
        self._setup_recv()
        self._setup_send()
        self._names: dict[bytes, str] = {}
        self.names = names
        self._fan: tuple | None = None  # (mmsghdr array, names, count) of set_destinations
        self.dests: list[tuple[str, int]] = []
        self.last_error: OSError | None = None

    @property
    def batched(self) -> bool:
        """True while ``recvmmsg``/``sendmmsg`` carry the batches."""
        return self.calls is not None

    # ------------------------------------------------------------ receiving

    def _setup_recv(self) -> None:
        batch, slot = self.batch, self.slot
        self.slots = (ctypes.c_char * (slot * batch))()
        self.rhdr = (ctypes.c_char * (MMSGHDR * batch))()
        self.riov = (ctypes.c_char * (16 * batch))()
        self.ctrl = (ctypes.c_char * max(self.ctrl_space * batch, 1))()
        self.view = memoryview(self.slots).cast("B")
        self.rq = memoryview(self.rhdr).cast("B").cast("Q")
        self.rlen = memoryview(self.rhdr).cast("B").cast("I")
        self._ctrl_view = memoryview(self.ctrl).cast("B")
        slots, riov = ctypes.addressof(self.slots), ctypes.addressof(self.riov)
        ctrl = ctypes.addressof(self.ctrl)
        riq = memoryview(self.riov).cast("B").cast("Q")
        for i in range(batch):
            self.rq[i * 8 + 0] = slots + slot * i  # msg_name: the start of the slot
            self.rq[i * 8 + 1] = SOCKADDR
            self.rq[i * 8 + 2] = riov + 16 * i
            self.rq[i * 8 + 3] = 1
            if self.ctrl_space:
                self.rq[i * 8 + 4] = ctrl + self.ctrl_space * i
                self.rq[i * 8 + 5] = self.ctrl_space
            riq[2 * i] = slots + slot * i + SOCKADDR  # the payload part of the slot
            riq[2 * i + 1] = self.size
        self._stamps: list[float | None] = [None] * batch  # (the path without recvmmsg)
        self._read = 0  # datagrams of the last batch (their msg_controllen to reset)

    def recv(self) -> int:
        """Read a batch into the slots; the number of datagrams (0: none waiting).
        OSError on a socket error other than "nothing to read"."""
        if self.calls is None:
            return self._recv_each()
        if self._read and self.ctrl_space:  # the kernel wrote what it used: room again
            rq, space = self.rq, self.ctrl_space
            for i in range(self._read):
                rq[i * 8 + 5] = space
        n = self.calls[1](self.fd, ctypes.addressof(self.rhdr), self.batch, linux.MSG_DONTWAIT,
                          None)  # fmt: skip
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0
            if err == errno.ENOSYS:  # no kernel support: one call per datagram from now on
                self.calls = None
                return self._recv_each()
            raise OSError(err, os.strerror(err))
        self._read = n
        return n

    def _recv_each(self) -> int:
        n = 0
        view, rlen, slot = self.view, self.rlen, self.slot
        while n < self.batch:
            try:
                data, anc, flags, (ip, port) = self.sock.recvmsg(self.size, self.ctrl_space)
            except (BlockingIOError, InterruptedError):
                break
            off = slot * n
            view[off : off + SOCKADDR] = sockaddr_in(ip, port)
            view[off + SOCKADDR : off + SOCKADDR + len(data)] = data
            rlen[n * 16 + 14] = len(data)
            rlen[n * 16 + 12] = flags
            self._stamps[n] = None
            for level, kind, cdata in anc:
                if len(cdata) >= _TIMESPEC:
                    sec, nsec = struct.unpack_from("qq" if _TIMESPEC == 16 else "ii", cdata)
                    self._stamps[n] = _stamp(level, kind, sec, nsec)
            n += 1
        return n

    def length(self, i: int) -> int:
        """Bytes of datagram ``i`` in its slot (at most ``size``)."""
        return min(self.rlen[i * 16 + 14], self.size)

    def truncated(self, i: int) -> bool:
        """Datagram ``i`` was longer than ``size``: its slot holds the first ``size`` bytes."""
        return bool(self.rlen[i * 16 + 12] & MSG_TRUNC)

    def payload(self, i: int) -> bytes:
        off = self.slot * i + SOCKADDR
        return bytes(self.view[off : off + self.length(i)])

    def _ip(self, raw: bytes) -> str:
        ip = self._names.get(raw)
        if ip is None:
            if len(self._names) >= self.names:
                self._names.clear()
            ip = self._names[raw] = socket.inet_ntoa(raw)
        return ip

    def source(self, i: int) -> tuple[str, int]:
        """The sender of datagram ``i``: (address, port)."""
        port, raw = _PEER.unpack_from(self.view, self.slot * i)
        return self._ip(raw), port

    def datagram(self, i: int) -> tuple[tuple[str, int], bytes]:
        """(sender, payload) of datagram ``i``."""
        return self.source(i), self.payload(i)

    def stamp(self, i: int) -> float | None:
        """The kernel's arrival time of datagram ``i`` (wall clock; None without timestamps)."""
        if not self.ctrl_space:
            return None
        if self.calls is None:
            return self._stamps[i]
        if self.rq[i * 8 + 5] < _CMSG.size:
            return None
        _len, level, kind, sec, nsec = _CMSG.unpack_from(self._ctrl_view, self.ctrl_space * i)
        return _stamp(level, kind, sec, nsec)

    def received(self, n: int) -> list[tuple[bytes, tuple[str, int], float | None]]:
        """The first ``n`` datagrams of the last batch: (payload, (address, port), arrival
        time or None) each, in arrival order.  Each payload is copied once, from its slot
        (not the whole slot: a slot is as long as the longest datagram)."""
        slot, size, view = self.slot, self.size, self.view
        lens = self.rlen[14 : n * 16 : 16]
        names, name, peer = self._names, self._ip, _PEER.unpack_from
        stamps = [self.stamp(i) for i in range(n)] if self.ctrl_space else [None] * n
        out = []
        for i in range(n):
            at = slot * i
            port, raw = peer(view, at)
            data = bytes(view[at + SOCKADDR : at + SOCKADDR + min(lens[i], size)])
            out.append((data, (names.get(raw) or name(raw), port), stamps[i]))
        return out

    # -------------------------------------------------------------- sending

    def _setup_send(self) -> None:
        batch, iovs = self.batch, self.iovs
        self.shdr = (ctypes.c_char * (MMSGHDR * batch))()
        self.siov = (ctypes.c_char * (16 * iovs * batch))()
        self.sq = memoryview(self.shdr).cast("B").cast("Q")  # 8 words per mmsghdr
        self.iq = memoryview(self.siov).cast("B").cast("Q")  # 2 words per iovec
        base = ctypes.addressof(self.siov)
        for i in range(batch):
            self.sq[i * 8 + 1] = SOCKADDR  # msg_namelen
            self.sq[i * 8 + 2] = base + 16 * iovs * i  # msg_iov
            self.sq[i * 8 + 3] = iovs  # msg_iovlen
        self.n = 0  # datagrams queued
        self.keep: list = []  # the owner of each queued datagram, in order
        self._held: list[bytes] = []  # what queue() was given, alive until sent
        self._dirty: list[int] = []  # messages queue() filled

    @property
    def full(self) -> bool:
        return self.n >= self.batch

    def queue(self, owner: object, name: bytes, data: bytes) -> None:
        """Queue the whole datagram ``data`` to ``name`` (a ``sockaddr_in``, see
        :func:`sockaddr_in`); both ``bytes``, held until sent.  BufferError when full:
        :meth:`flush` first."""
        i = self.n
        if i >= self.batch:
            raise BufferError("send queue full: flush first")
        if type(name) is not bytes or type(data) is not bytes or len(name) != SOCKADDR:
            raise TypeError("queue(): name a 16-byte sockaddr_in and data, both bytes")
        k = 2 * self.iovs * i
        self.sq[i * 8] = address_of(name)
        self.iq[k] = address_of(data)
        self.iq[k + 1] = len(data)
        for m in range(1, self.iovs):  # (the other iovecs: empty)
            self.iq[k + 2 * m + 1] = 0
        self._held += (name, data)
        self._dirty.append(i)
        self.keep.append(owner)
        self.n = i + 1

    def flush(self) -> list[tuple[object, int, OSError]]:
        """Send the queue; for each datagram that did not go out: (its owner, the owner's
        queued datagrams from that one on, the error).  The queue is empty after."""
        n, self.n = self.n, 0
        keep, self.keep = self.keep, []
        failed: list[tuple[object, int, OSError]] = []
        if n:
            failed = self._sendmmsg(n, keep) if self.calls is not None else \
                self._send_each(0, n, keep)  # fmt: skip
        if self._dirty:
            self.restore(self._dirty)
            self._dirty.clear()
        self._held.clear()
        return failed

    def restore(self, dirty: list[int]) -> None:
        """After a flush, with the messages :meth:`queue` filled: a subclass whose hot
        path presets parts of its messages puts them back here (nothing to do here)."""

    def _sendmmsg(self, n: int, keep: list) -> list[tuple[object, int, OSError]]:
        failed = []
        i = 0
        addr = ctypes.addressof(self.shdr)
        while i < n:
            sent = self.calls[0](self.fd, addr + MMSGHDR * i, n - i, 0)  # type: ignore[index]
            if sent > 0:
                i += sent
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err == errno.ENOSYS:  # no kernel support: one call per datagram from now on
                self.calls = None
                return failed + self._send_each(i, n, keep)
            owner = keep[i]
            failed.append((owner, keep[i:n].count(owner), OSError(err, os.strerror(err))))
            i += 1  # skip this one
        return failed

    def _send_each(self, start: int, n: int, keep: list) -> list[tuple[object, int, OSError]]:
        """The queue without sendmmsg: one sendmsg per message, its iovecs read back."""
        failed = []
        for i in range(start, n):
            port, raw = _PEER.unpack(ctypes.string_at(self.sq[i * 8], 8)[:8])
            k = 2 * self.iovs * i
            parts = [ctypes.string_at(self.iq[k + 2 * m], self.iq[k + 2 * m + 1])
                     for m in range(self.iovs) if self.iq[k + 2 * m + 1]]  # fmt: skip
            try:
                self.sock.sendmsg(parts, (), 0, (socket.inet_ntoa(raw), port))
            except OSError as e:
                owner = keep[i]
                failed.append((owner, keep[i:n].count(owner), e))
        return failed

    # ------------------------------------------------------------- fan-out

    def set_destinations(self, dests: Sequence[tuple[str, int]]) -> None:
        """The destinations of :meth:`send_all`, their addresses packed once here."""
        self.dests = list(dests)
        self._fan = None
        if self.calls is None or len(self.dests) < 2:
            return
        try:
            names = b"".join(sockaddr_in(ip, port) for ip, port in self.dests)
        except (OSError, ValueError, struct.error):  # not all IPv4 literals: sendto each
            return
        buf = ctypes.create_string_buffer(names, len(names))
        msgs = (ctypes.c_char * (MMSGHDR * len(self.dests)))()
        words = memoryview(msgs).cast("B").cast("Q")
        iov = (ctypes.c_char * 16)()  # one iovec for every message: the datagram
        at, iov_at = ctypes.addressof(buf), ctypes.addressof(iov)
        for i in range(len(self.dests)):
            words[i * 8] = at + SOCKADDR * i  # msg_name
            words[i * 8 + 1] = SOCKADDR
            words[i * 8 + 2] = iov_at
            words[i * 8 + 3] = 1
        self._fan = (msgs, buf, iov, memoryview(iov).cast("B").cast("Q"))

    def send_all(self, data: bytes) -> int:
        """Send ``data`` to every destination of :meth:`set_destinations`; the number of
        sends that failed (each skipped; :attr:`last_error` says why)."""
        fan = self._fan
        if fan is None or self.calls is None:
            return self._sendto_each(data, 0)
        msgs, _names, _iov, iovw = fan
        iovw[0], iovw[1] = address_of(data), len(data)
        fd, n, off, errors = self.fd, len(self.dests), 0, 0
        at = ctypes.addressof(msgs)
        while off < n:
            k = self.calls[0](fd, at + MMSGHDR * off, n - off, 0)
            if k > 0:
                off += k
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if k == 0 or err == errno.ENOSYS:  # cannot happen / no kernel support
                self.calls = None
                return errors + self._sendto_each(data, off)
            errors += 1  # this destination failed: skip it
            self.last_error = OSError(err, os.strerror(err))
            off += 1
        return errors

    def _sendto_each(self, data: bytes, start: int) -> int:
        sendto, errors = self.sock.sendto, 0
        for dest in self.dests[start:]:
            try:
                sendto(data, dest)
            except OSError as e:
                errors += 1
                self.last_error = e
        return errors

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
