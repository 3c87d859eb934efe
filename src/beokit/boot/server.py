"""The ``beo boot`` server: one asyncio loop for DHCP, TFTP, DNS (and HTTP).

This is the I/O layer: it opens the sockets, feeds datagrams into the pure
logic (``dhcp``, ``tftp``, ``dns``, ``fair``, ``leases``) and carries out
what it decides. Nothing here blocks: every TFTP transfer uses one shared,
non-blocking UDP socket (the server's TID; clients are told apart by their
own address and port) read and written a batch at a time with
``recvmmsg``/``sendmmsg`` (:class:`Mmsg`); a DATA datagram is two pieces
the kernel gathers, its 4-byte header and its block where the file lies in
memory: a snapshot (files up to :data:`MEM_MAX`) or a read-only mapping of
the file (larger ones; ``os.pread`` where a file cannot be mapped), shared
by the transfers of that file version (re-opened when the file changes on
disk); the lease file is written atomically (temp file, fsync, rename) in a
worker thread.

Signals: SIGHUP re-reads the config and re-opens the listening sockets
(transfers in flight keep the transfer socket and go on); SIGUSR1 logs the
leases and the transfers; SIGTERM/SIGINT stop cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import json
import logging
import mmap
import os
import resource
import signal
import socket
import stat
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from beokit import linux
from beokit.boot import config as C
from beokit.boot import dns, fair, paths, tftp
from beokit.boot.dhcp import PXE_PORT, DhcpLogic
from beokit.boot.fair import Load, RoundRobin, TokenBucket
from beokit.boot.leases import LeaseDB
from beokit.errors import BeokitError

FAST_ACKS = None  # beokit.boot._lockstep.acks, where it was built (see tftp.StateBase)
if tftp.COMPILED:
    from beokit.boot._lockstep import SLOT as _C_SLOT
    from beokit.boot._lockstep import acks as FAST_ACKS

log = logging.getLogger("beokit.boot")
TICK = 0.1  # seconds between accounting ticks
STALL = 0.5  # a transfer that got nothing for this long is "stalled"
RECV_SIZE = 65536
DRAIN_ROUNDS = 4  # recvmmsg batches per loop callback (DHCP and DNS get their turn between)
BUSY_ACKS = 2  # ACKs per batch read, on average over a tick: the server is behind
MEM_MAX = 64 << 20  # files up to this size are served from a memory snapshot...
MEM_TOTAL = 512 << 20  # ...while all snapshots together stay under this (else a mapping)
NETASCII_KEEP = 64 << 20  # netascii copies kept after their last transfer (oldest go first)
# Bounds against floods (see docs/boot.md, "Threat model and floods")
MAX_TRANSFERS = 8192  # TFTP transfers at once; a request beyond gets ERROR "server busy"
MAX_PER_ADDRESS = 256  # TFTP transfers at once from one client address
MAX_UNCONFIRMED = 1024  # transfers whose client acknowledged nothing yet: the oldest goes
WARN_WINDOW, WARN_BURST = 10.0, 20  # per-datagram warnings: at most 20 a kind in 10 s
MAX_DEFERRED = 4096  # deferred DHCP offers waiting at once (more are dropped: clients retry)
NOFILE_WANT = 65536  # the soft RLIMIT_NOFILE the server raises itself to (up to the hard one)
# Every DATA header, built once, back to back: block b's is at 4 * (b & 0xFFFF)
HEADER_TABLE = b"".join(tftp.data_header(b) for b in range(65536))
HEADER_VIEW = memoryview(HEADER_TABLE)


@dataclass
class Options:
    """Command-line settings that are not in the config file."""

    config_path: Path
    bind: str = "0.0.0.0"
    interface: str = ""
    dhcp_port: int = 67
    tftp_port: int = 69
    dns_port: int = 53
    pxe_port: int = PXE_PORT
    http_port: int | None = None  # None: from the config (0 = off)
    proxy: bool = False
    no_dhcp: bool = False


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def read_all(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of ``fd`` (from the page cache: milliseconds)."""
    chunks, off = [], 0
    while off < size:
        b = os.pread(fd, min(size - off, 8 << 20), off)
        if not b:
            break
        chunks.append(b)
        off += len(b)
    return b"".join(chunks).ljust(size, b"\0")


class OpenFile:
    """A file being served: one descriptor shared by its transfers.

    Its bytes are in memory, where ``sendmmsg`` can gather a block straight
    from (:attr:`addr`, the address of byte 0): a snapshot (``data``: a file
    rewritten in place cannot tear a transfer in flight) or a read-only
    mapping of the file (``mm``: big files, only the page cache holds them).
    ``addr`` is 0 when neither could be had (``os.pread`` then, per block).
    Whoever holds this object keeps the memory valid: the send queues hold
    the sessions, which hold their file, until their batch has gone.
    """

    def __init__(self, key: tuple, fd: int, size: int, data: bytes | None = None,
                 mm: mmap.mmap | None = None) -> None:  # fmt: skip
        self.key = key
        self.fd = fd
        self.size = size
        self.data = data
        self.mm = mm
        self.addr = 0
        self.view: memoryview | None = None
        if data is not None:
            self.view = memoryview(data)
            self.addr = id(data) + BYTES_OFFSET
        elif mm is not None:
            self.view = memoryview(mm)
            self.addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        self.refs = 0
        self.counted = False  # a netascii copy: its size is in FileTable.mem_bytes

    def read(self, offset: int, n: int) -> bytes:
        if self.view is not None:
            return bytes(self.view[offset : offset + n])
        return os.pread(self.fd, n, offset)


def map_file(fd: int, size: int) -> mmap.mmap | None:
    """A private, never written mapping of a whole file (None: it cannot be mapped).

    ``ACCESS_COPY`` only so that ctypes will give its address; no page is ever
    copied.  The kernel gathers DATA blocks from it as from the page cache."""
    try:
        return mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):
        return None


class NetasciiRefused(Exception):
    """A netascii request for a file too big to convert in memory (``str``: the reason)."""


class FileTable:
    """Shared read-only descriptors, keyed by (device, inode, mtime, size).

    A file replaced or modified on disk gets a new key, so new requests see
    the new bytes while transfers in flight finish the version they began.
    """

    def __init__(self) -> None:
        self.files: dict[tuple, OpenFile] = {}
        self.mem_bytes = 0  # bytes held in snapshots (and netascii copies)
        self.idle: dict[tuple, OpenFile] = {}  # netascii copies no transfer uses, oldest first
        self.idle_bytes = 0
        self.conversions = 0  # netascii copies made

    def open(self, path: Path) -> OpenFile:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise paths.PathRefused(f"{str(path)!r} is not a regular file")
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            f = self.files.get(key)
            if f is not None:
                os.close(fd)
            else:
                data = mm = None
                if st.st_size <= MEM_MAX and self.mem_bytes + st.st_size <= MEM_TOTAL:
                    data = read_all(fd, st.st_size)  # a snapshot: no syscall per block, and
                    self.mem_bytes += st.st_size  # a file rewritten in place cannot tear it
                else:
                    mm = map_file(fd, st.st_size)
                f = self.files[key] = OpenFile(key, fd, st.st_size, data, mm)
                fd = -1
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        f.refs += 1
        return f

    def virtual(self, data: bytes) -> OpenFile:
        f = OpenFile(("virtual", id(data)), -1, len(data), data)
        f.refs = 1
        return f

    def netascii(self, f: OpenFile) -> OpenFile:
        """The netascii form of ``f`` (``tftp.to_netascii``), in place of ``f`` (whose
        reference it takes over): one converted copy per file version, shared, counted
        with the snapshots. :class:`NetasciiRefused` when it would not fit."""
        try:
            if f.fd < 0:  # a virtual file (small, generated): converted for this transfer
                return self.virtual(tftp.to_netascii(f.read(0, f.size)))
            key = ("netascii", *f.key)
            n = self.files.get(key)
            if n is not None and self.idle.pop(key, None) is n:
                self.idle_bytes -= n.size  # (kept from an earlier transfer: in use again)
            if n is None:
                if self.mem_bytes + 2 * f.size > MEM_TOTAL:
                    self._trim_idle(0)
                if f.size > MEM_MAX or self.mem_bytes + 2 * f.size > MEM_TOTAL:
                    raise NetasciiRefused(f"netascii needs a converted copy in memory; this "
                                          f"file is over the limit ({MEM_MAX:,} bytes): use "
                                          "octet (binary) mode")  # fmt: skip
                raw = f.data if f.data is not None else read_all(f.fd, f.size)
                data = tftp.to_netascii(raw)
                n = self.files[key] = OpenFile(key, -1, len(data), data)
                n.counted = True
                self.mem_bytes += len(data)
                self.conversions += 1
            n.refs += 1
            return n
        finally:
            self.close(f)

    def close(self, f: OpenFile) -> None:
        """Drop a transfer's reference; the last one closes the descriptor.  The
        snapshot or mapping goes with the object, once no queued datagram needs it."""
        f.refs -= 1
        if f.refs > 0:
            return
        if f.counted and self.files.get(f.key) is f:  # a netascii copy: kept a while, so
            self.idle[f.key] = f  # that requests repeated (or forged) do not convert again
            self.idle_bytes += f.size
            self._trim_idle(NETASCII_KEEP)
            return
        if self.files.get(f.key) is f:
            del self.files[f.key]
        if f.fd >= 0:
            os.close(f.fd)
            f.fd = -1
            if f.data is not None:
                self.mem_bytes -= f.size
        elif f.counted:
            f.counted = False
            self.mem_bytes -= f.size

    def _trim_idle(self, keep: int) -> None:
        """Drop unused netascii copies, oldest first, until at most ``keep`` bytes stay."""
        while self.idle and self.idle_bytes > keep:
            key = next(iter(self.idle))
            g = self.idle.pop(key)
            self.idle_bytes -= g.size
            if self.files.get(key) is g:
                del self.files[key]
            if g.counted:
                g.counted = False
                self.mem_bytes -= g.size

    def close_all(self) -> None:
        for f in list(self.files.values()):
            if f.fd >= 0:
                os.close(f.fd)
                f.fd = -1
        self.files.clear()
        self.idle.clear()
        self.idle_bytes = 0
        self.mem_bytes = 0


# ---------------------------------------------------------------------------
# TFTP transfers
# ---------------------------------------------------------------------------


def peer_key(ip: str, port: int) -> int:
    """A client's (address, port) as one int: the key of its transfer (the first
    8 bytes of its ``sockaddr_in``, as ``ACK_SLOT`` reads them)."""
    return int.from_bytes(sockaddr(ip, port)[:8], "big")


def sockaddr(ip: str, port: int) -> bytes:
    """``struct sockaddr_in`` of a client, for ``sendmmsg``."""
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", port)
        + socket.inet_aton(ip)
        + bytes(8)
    )


@dataclass(eq=False, slots=True)
class Session:
    sock: socket.socket  # the shared transfer socket (see Mmsg)
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
        self.name_buf = sockaddr(*self.peer)
        self.name_addr = id(self.name_buf) + BYTES_OFFSET

    def send(self, pkt: bytes) -> None:
        self.sock.sendto(pkt, self.peer)


# ---------------------------------------------------------------------------
# One socket for every transfer, read and written a batch at a time
# ---------------------------------------------------------------------------

BATCH = 256  # datagrams per recvmmsg/sendmmsg call
IOV_PER_MSG = 2  # a datagram = its header + its block (or one whole buffer, and nothing)
SLOT = 16 + 528  # per received datagram: sockaddr_in, then up to 528 bytes of payload
MSG_DONTWAIT = 0x40
BYTES_OFFSET = sys.getsizeof(b"") - 1  # where a bytes object's data begins (CPython)
HEADER_ADDR = id(HEADER_TABLE) + BYTES_OFFSET  # block b's DATA header: at + 4 * (b & 0xFFFF)
ACK_SLOT = struct.Struct("!Q8xHH")  # peer_key, opcode, block of a received slot
ACK_SLOTS = struct.Struct(f"!Q8xHH{SLOT - 20}x")  # the same, a whole slot: iter_unpack
PEER_SLOT = struct.Struct("!2xH4s")  # port, address of a received slot
if FAST_ACKS is not None and _C_SLOT != SLOT:
    FAST_ACKS = None  # a stale build: the Python path


def _libc_mmsg() -> tuple | None:
    """libc's sendmmsg/recvmmsg, if they, the mmsghdr layout (64 bytes, msg_len at
    byte 56: Mmsg writes the headers as 8-byte words) and the bytes layout are
    what we expect."""
    snd, rcv = linux.SENDMMSG, linux.RECVMMSG
    if snd is None or rcv is None:
        return None
    if ctypes.sizeof(linux.MMsgHdr) != 64 or linux.MMsgHdr.len.offset != 56:
        return None
    probe = b"beokit-probe"
    if ctypes.string_at(id(probe) + BYTES_OFFSET, len(probe)) != probe:
        return None
    return snd, rcv


class Mmsg:
    """The shared transfer socket (the server's TID for every transfer: clients
    are told apart by their own address and port) with batched I/O.

    ``recv()`` reads up to :data:`BATCH` datagrams with one ``recvmmsg``;
    :meth:`flush` sends the queued datagrams with one ``sendmmsg``: a busy
    server is preempted by the clients it wakes once per batch instead of once
    every few datagrams, and makes two system calls per batch.  The
    ``mmsghdr``/``iovec`` arrays are allocated once.  Every message has two
    iovecs: a DATA datagram is its header (from :data:`HEADER_TABLE`) and its
    block (in the file's snapshot or mapping), gathered by the kernel, so a
    datagram costs four integer stores and no copy or allocation here;
    :meth:`add` queues one whole buffer (an OACK: a ``bytes`` kept in
    :attr:`oacks` until sent) in the first iovec.  Without ``sendmmsg`` (or on
    another Python) it falls back to ``recvfrom``/``sendto`` per datagram.
    """

    def __init__(self, bind: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.sock.bind((bind, 0))
        except BaseException:
            self.sock.close()
            raise
        self.fd = self.sock.fileno()
        self.calls = _libc_mmsg()
        # sendmmsg side: mmsghdr[BATCH] (64 bytes each), 2 iovecs (16 bytes each) per message
        self.shdr = (ctypes.c_char * (64 * BATCH))()
        self.siov = (ctypes.c_char * (16 * IOV_PER_MSG * BATCH))()
        self.sq = memoryview(self.shdr).cast("B").cast("Q")  # 8 words per mmsghdr
        self.iq = memoryview(self.siov).cast("B").cast("Q")  # 4 words per message
        # recvmmsg side: headers, iovecs, and one slot (address + payload) per datagram
        self.rhdr = (ctypes.c_char * (64 * BATCH))()
        self.riov = (ctypes.c_char * (16 * BATCH))()
        self.slots = (ctypes.c_char * (SLOT * BATCH))()
        self.rq = memoryview(self.rhdr).cast("B").cast("Q")
        self.rlen = memoryview(self.rhdr).cast("B").cast("I")  # msg_len: word 14 of 16
        self.view = memoryview(self.slots).cast("B")
        sbase, rbase = ctypes.addressof(self.siov), ctypes.addressof(self.riov)
        slots = ctypes.addressof(self.slots)
        riq = memoryview(self.riov).cast("B").cast("Q")
        for i in range(BATCH):
            self.sq[i * 8 + 1] = 16  # msg_namelen
            self.sq[i * 8 + 2] = sbase + 32 * i  # msg_iov
            self.sq[i * 8 + 3] = IOV_PER_MSG  # msg_iovlen
            self.iq[i * 4 + 1] = 4  # the header's length (add() changes it: then dirty)
            self.rq[i * 8 + 0] = slots + SLOT * i  # msg_name
            self.rq[i * 8 + 1] = 16
            self.rq[i * 8 + 2] = rbase + 16 * i
            self.rq[i * 8 + 3] = 1
            riq[2 * i] = slots + SLOT * i + 16  # iov_base: the payload part of the slot
            riq[2 * i + 1] = SLOT - 16
        self.n = 0  # datagrams queued
        self.keep: list = []  # the owners (sessions) of the queued datagrams, in order
        self.oacks: list[bytes] = []  # queued OACKs, kept alive until sent
        self.dirty: list[int] = []  # messages whose first iovec is not a DATA header

    def recv(self) -> int:
        """Read a batch; the number of datagrams (0: none waiting)."""
        if self.calls is None:
            return self._recv_slow()
        # (msg_namelen comes back as 16, as set: an AF_INET socket)
        n = self.calls[1](self.fd, ctypes.addressof(self.rhdr), BATCH, MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, os.strerror(err))
        return n

    def _recv_slow(self) -> int:
        n = 0
        while n < BATCH:
            try:
                data, (ip, port) = self.sock.recvfrom(SLOT - 16)
            except (BlockingIOError, InterruptedError):
                break
            off = SLOT * n
            self.view[off : off + 16] = sockaddr(ip, port)
            self.view[off + 16 : off + 16 + len(data)] = data
            self.rlen[n * 16 + 14] = len(data)
            n += 1
        return n

    def datagram(self, i: int) -> tuple[tuple[str, int], bytes]:
        """The sender and the payload of received datagram ``i`` (the slow path)."""
        off = SLOT * i
        port, ip = PEER_SLOT.unpack_from(self.view, off)
        n = min(self.rlen[i * 16 + 14], SLOT - 16)
        return (socket.inet_ntoa(ip), port), bytes(self.view[off + 16 : off + 16 + n])

    def add(self, owner: Session, pkt: bytes) -> None:
        """Queue one whole datagram ``pkt`` (an OACK) of ``owner``, kept alive until
        sent; full: call :meth:`flush`.  (DATA blocks are written in place, see
        ``BootServer._on_transfers``.)"""
        i = self.n
        self.sq[i * 8] = owner.name_addr
        self.iq[i * 4] = id(pkt) + BYTES_OFFSET
        self.iq[i * 4 + 1] = len(pkt)
        self.iq[i * 4 + 3] = 0
        self.dirty.append(i)
        self.keep.append(owner)
        self.oacks.append(pkt)
        self.n = i + 1

    def flush(self) -> list[tuple]:
        """Send the queue; (owner, datagrams of it left from the failed one on, error)
        for each datagram that did not go out (an owner's queued blocks are consecutive:
        the last one is its transfer's ``next - 1``). Without sendmmsg nothing is queued."""
        n, self.n = self.n, 0
        keep, self.keep = self.keep, []
        if not n or self.calls is None:
            self._clean()
            return []
        failed = []
        i = 0
        addr = ctypes.addressof(self.shdr)
        while i < n:
            sent = self.calls[0](self.fd, addr + 64 * i, n - i, 0)
            if sent > 0:
                i += sent
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            owner = keep[i]
            failed.append((owner, keep[i:n].count(owner), OSError(err, os.strerror(err))))
            i += 1  # skip this one
        self._clean()
        return failed

    def _clean(self) -> None:
        """After a send: the OACKs go, their messages get a header's length back."""
        for i in self.dirty:
            self.iq[i * 4 + 1] = 4
        self.dirty.clear()
        self.oacks.clear()

    def close(self) -> None:
        self.sock.close()


class BootServer:
    def __init__(self, opts: Options, cfg: C.Config) -> None:
        self.opts = opts
        cfg = self.effective(cfg)
        self.cfg = cfg
        self.db = LeaseDB(cfg)
        self.logic = DhcpLogic(cfg, self.db, proxy=opts.proxy, client_port=opts.dhcp_port + 1,
                               server_port=opts.dhcp_port)  # fmt: skip
        self.files = FileTable()
        self.sessions: dict[int, Session] = {}  # fd -> session
        self.rr = RoundRobin()
        self.load = Load(cfg.bandwidth_bps / 8, cfg.defer_max)
        self.bucket = TokenBucket(cfg.bandwidth_bps / 8, max(cfg.bandwidth_bps / 8 * TICK, 65536))
        self.listeners: dict[str, socket.socket] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.pump_handle: asyncio.TimerHandle | None = None
        self.lease_write: asyncio.Future | None = None
        self.control_server: asyncio.AbstractServer | None = None
        self.http = None
        self.counters: dict[str, int] = {}
        self.started = time.monotonic()
        self.pending_replies: set[asyncio.TimerHandle] = set()
        self.parked: set[int] = set()  # transfers held back for a tick (fairness)
        self.polls = self.polled = 0  # batches read with ACKs waiting, and those ACKs
        self.tx: Mmsg | None = None  # the transfers' shared socket (opened by serve)
        self.fair = cfg.fair
        self.unconfirmed: dict[int, Session] = {}  # transfers in the order they began,
        # until they end or a flood pushes them out (confirmed ones are skipped then)
        self.per_address: dict[str, dict[int, Session]] = {}  # address -> its transfers
        self.stalled_now = 0  # stalled() as of the last tick (DHCP reads it per datagram)
        self.warned: dict[str, list] = {}  # kind -> [window start, warnings, suppressed]
        self.logic.notice = lambda text: self.warn("dhcp-decline", "%s", text)

    # -- helpers ---------------------------------------------------------
    def effective(self, cfg: C.Config) -> C.Config:
        """The config with the HTTP base URL filled in when HTTP boot is on."""
        port = self.opts.http_port if self.opts.http_port is not None else cfg.http_port
        if port and not cfg.http_url:
            cfg = dataclasses.replace(cfg, http_url=f"http://{cfg.server}:{port}/")
        return cfg

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def warn(self, kind: str, fmt: str, *args: object) -> None:
        """A warning caused by a datagram: at most ``WARN_BURST`` per kind in
        ``WARN_WINDOW`` seconds, then one line saying how many were left out (a flood
        must not fill the log)."""
        now = time.monotonic()
        w = self.warned.setdefault(kind, [now, 0, 0])
        if now - w[0] >= WARN_WINDOW:
            if w[2]:
                log.warning("%d more %s warnings in the last %.0f s (not shown)", w[2], kind,
                            now - w[0])  # fmt: skip
            w[:] = [now, 0, 0]
        if w[1] < WARN_BURST:
            w[1] += 1
            log.warning(fmt, *args)
        else:
            w[2] += 1

    @property
    def limits(self) -> tftp.Limits:
        c = self.cfg
        return tftp.Limits(c.max_blksize, c.max_windowsize, c.tftp_timeout, c.tftp_retries)

    def _udp(self, port: int, *, broadcast: bool = False) -> socket.socket:
        # No SO_REUSEADDR: a second server on the same port must fail, not share it.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if broadcast:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                if self.opts.interface:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                 self.opts.interface.encode())  # fmt: skip
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            s.setblocking(False)
            s.bind((self.opts.bind, port))
        except BaseException:
            s.close()
            raise
        return s

    # -- listening sockets -------------------------------------------------
    def open_listeners(self) -> None:
        """Open (or re-open) every listening socket; all or nothing.

        On a re-open (SIGHUP) the old sockets are closed first (the ports are
        not shared: no SO_REUSEADDR); datagrams arriving in between are lost
        and the clients retransmit, as they always must over UDP.
        """
        o = self.opts
        self.close_listeners()
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
        assert self.loop is not None
        for kind, s in new.items():
            self.loop.add_reader(s.fileno(), self._on_listener, kind, s)
        self.listeners = new

    def close_listeners(self) -> None:
        for s in self.listeners.values():
            if self.loop is not None:
                self.loop.remove_reader(s.fileno())
            s.close()
        self.listeners = {}

    def _on_listener(self, kind: str, s: socket.socket) -> None:
        for _ in range(64):  # drain a burst, then let others run
            try:
                data, src = s.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("%s socket: %s", kind, e)
                return
            try:
                if kind in ("dhcp", "pxe"):
                    self.on_dhcp(s, data, src, kind)
                elif kind == "tftp":
                    self.on_tftp_request(data, src)
                else:
                    self.on_dns(s, data, src)
            except Exception:  # a bug must not kill the server
                log.exception("%s: error handling a datagram from %s", kind, src)
                self.count(f"{kind}-errors")

    # -- DHCP --------------------------------------------------------------
    def stalled(self, now: float) -> int:
        return sum(1 for ss in self.sessions.values()
                   if ss.xfer.ready() is None and now - ss.xfer.last_progress > STALL
                   and not ss.xfer.done and ss.xfer.confirmed)  # fmt: skip
        # (a transfer nobody acknowledged yet is no booting node: forged requests must
        # not make the server defer the offers to newcomers)

    def on_dhcp(self, s: socket.socket, data: bytes, src: tuple[str, int], kind: str) -> None:
        now = time.time()
        self.count("dhcp-in")
        defer = self.load.dhcp_delay(self.stalled_now) if self.sessions else 0.0
        port = PXE_PORT if kind == "pxe" else 67  # whatever number --pxe-port gave it
        reply = self.logic.handle(data, src, now, defer=defer, port=port)
        if reply is None:
            return
        host, dport = reply.dest
        if host == "<broadcast>":
            host = str(self.cfg.broadcast) if not self.opts.interface else "255.255.255.255"
        log.debug("DHCP %s -> %s:%d", reply.summary, host, dport)

        def send() -> None:
            if s.fileno() < 0:
                return
            try:
                s.sendto(reply.data, (host, dport))
                self.count("dhcp-out")
            except OSError as e:
                self.warn("dhcp-send", "DHCP reply to %s:%d: %s", host, dport, e)

        if reply.delay > 0:
            assert self.loop is not None
            if len(self.pending_replies) >= MAX_DEFERRED:
                self.count("dhcp-deferred-dropped")  # the client retransmits its DISCOVER
                return
            self.count("dhcp-deferred")
            h = self.loop.call_later(reply.delay, send)
            self.pending_replies.add(h)
            self.loop.call_later(reply.delay + 0.01, self.pending_replies.discard, h)
        else:
            send()
        if self.db.changed:
            self.schedule_lease_write()

    # -- DNS ---------------------------------------------------------------
    def on_dns(self, s: socket.socket, data: bytes, src: tuple[str, int]) -> None:
        self.count("dns-in")
        out = dns.answer(data, self.db)
        if out is not None:
            with contextlib.suppress(OSError):
                s.sendto(out, src)

    # -- TFTP --------------------------------------------------------------
    def _tftp_error(self, s: socket.socket, dest: tuple[str, int], code: int, msg: str) -> None:
        with contextlib.suppress(OSError):
            s.sendto(tftp.build_error(code, msg), dest)

    def open_served(self, name: str) -> OpenFile:
        """A file by its requested name: virtual files (nettee topology, generated
        iPXE script when the root has none), else a real file under the root."""
        cfg = self.cfg
        nt = cfg.nettee
        if name.startswith("nettee/") and name.endswith(".conf") and nt.order:
            data = nt.file_for(name[len("nettee/") : -len(".conf")])
            if data is not None:
                return self.files.virtual(data)
        try:
            return self.files.open(paths.resolve(cfg.root, name))
        except FileNotFoundError:
            if cfg.kernel and cfg.ipxe_script and name.lstrip("/") == cfg.ipxe_script.lstrip("/"):
                return self.files.virtual(cfg.ipxe_text(cfg.http_url))
            raise

    def on_tftp_request(self, data: bytes, src: tuple[str, int]) -> None:
        listener = self.listeners["tftp"]
        self.count("tftp-in")
        try:
            msg = tftp.parse(data)
        except tftp.TftpError as e:
            self.count("tftp-malformed")
            log.debug("TFTP from %s: %s", src, e)
            return
        if not isinstance(msg, tftp.Request):
            return  # stray ACK/DATA to port 69: ignore (RFC 1350 says TID errors elsewhere)
        if msg.opcode == tftp.WRQ:
            self._tftp_error(listener, src, tftp.E_ACCESS, "read-only server")
            return
        if msg.mode != "octet" and msg.mode != "netascii":
            self._tftp_error(listener, src, tftp.E_ILLEGAL, "unsupported mode")
            return
        busy = self._refuse_transfer(src)
        if busy:
            self.count("tftp-busy")
            self._tftp_error(listener, src, tftp.E_UNDEF, busy)
            return
        try:
            f = self.open_served(msg.filename)
            if msg.mode == "netascii":
                f = self.files.netascii(f)
        except paths.PathRefused as e:
            self.warn("tftp-refused", "TFTP %s:%d refused: %s", src[0], src[1], e)
            self.count("tftp-refused")
            self._tftp_error(listener, src, tftp.E_ACCESS, "access violation")
            return
        except NetasciiRefused as e:
            self.count("tftp-netascii-refused")
            self._tftp_error(listener, src, tftp.E_UNDEF, str(e))
            return
        except FileNotFoundError:
            log.info("TFTP %s:%d: %r not found", src[0], src[1], msg.filename)
            self._tftp_error(listener, src, tftp.E_NOTFOUND, "file not found")
            return
        except OSError as e:
            self.warn("tftp-unreadable", "TFTP %s:%d %r: %s", src[0], src[1], msg.filename,
                      e.strerror)  # fmt: skip
            self._tftp_error(listener, src, tftp.E_ACCESS, "cannot read file")
            return
        now = time.monotonic()
        accepted = tftp.negotiate(msg.options, f.size, self.limits)
        xfer = tftp.Transfer(f.size, msg.options, accepted, self.limits, now)
        assert self.tx is not None
        ss = Session(self.tx.sock, src, msg.filename, f, xfer, now)
        old = self.sessions.get(ss.key)
        if old is not None:  # the same client port asks again: it lost our first reply
            old.xfer.fail("restarted by a new request")
            self.end_session(old)
        if len(self.unconfirmed) >= MAX_UNCONFIRMED:
            self._push_out_unconfirmed(MAX_UNCONFIRMED - 1)
        self.sessions[ss.key] = ss
        self.unconfirmed[ss.key] = ss
        self.per_address.setdefault(src[0], {})[ss.key] = ss
        self.count("tftp-transfers")
        log.info("TFTP %s:%d <- %s (%d bytes, %s)", src[0], src[1], msg.filename, f.size,
                 accepted or "no options")  # fmt: skip
        self.make_ready(ss)

    def _refuse_transfer(self, src: tuple[str, int]) -> str:
        """Why a new request from ``src`` is refused now ("" = it is not): too many
        transfers, or too many confirmed ones from its address (a request from the same
        port replaces that port's transfer and is always taken)."""
        if peer_key(*src) in self.sessions:
            return ""
        if len(self.sessions) >= MAX_TRANSFERS:
            return f"server busy: {MAX_TRANSFERS} transfers at once"
        mine = self.per_address.get(src[0])
        if mine is not None and len(mine) >= MAX_PER_ADDRESS:
            # its oldest unconfirmed transfer makes room (requests forged in the name of a
            # node must not keep that node out); only confirmed ones make it refuse
            for ss in mine.values():
                if not ss.xfer.confirmed:
                    ss.xfer.fail("pushed out by newer requests from its address (no ACK yet)")
                    self.count("tftp-pushed-out")
                    self.end_session(ss)
                    return ""
            return f"too many transfers from {src[0]} ({MAX_PER_ADDRESS} at once)"
        return ""

    def _push_out_unconfirmed(self, keep: int) -> None:
        """Keep at most ``keep`` transfers whose client has acknowledged nothing, by
        ending the oldest: such a client may not exist (a forged source address), and a
        real one that lost its OACK or first block asks again (RFC 1350 clients retry)."""
        uc = self.unconfirmed
        while len(uc) > keep:
            key = next(iter(uc))
            ss = uc.pop(key)
            if self.sessions.get(key) is ss and not ss.xfer.confirmed:
                ss.xfer.fail("pushed out by newer requests (no ACK yet)")
                self.count("tftp-pushed-out")
                self.end_session(ss)

    def _send_block(self, ss: Session, block: int, now: float) -> bool:
        x = ss.xfer
        try:
            if block == 0:
                pkt = tftp.build_oack(x.accepted)
                ss.sock.sendto(pkt, ss.peer)
                nbytes = len(pkt)
            else:
                off = (block - 1) * x.blksize
                n = min(x.blksize, x.size - off)
                view = ss.file.view
                h = (block & 0xFFFF) << 2
                header = HEADER_VIEW[h : h + 4]
                if view is not None:  # header + slice of the snapshot or mapping, no copy
                    ss.sock.sendmsg((header, view[off : off + n]), (), 0, ss.peer)
                else:
                    ss.sock.sendmsg((header, ss.file.read(off, n)), (), 0, ss.peer)
                nbytes = n + 4
        except (BlockingIOError, InterruptedError):
            return False  # socket buffer full: the retransmission timer covers it
        except OSError as e:
            x.fail(f"send: {e.strerror}")
            return False
        x.sent(block, nbytes, now)
        return True

    def make_ready(self, ss: Session) -> None:
        """Send what the transfer may send: at once without a cap, else via round robin."""
        now = time.monotonic()
        x = ss.xfer
        if ss.key in self.parked and not x.done:
            return
        if self.bucket.rate <= 0:
            while (b := x.ready()) is not None:
                if not self._send_block(ss, b, now):
                    break
            if x.failed:
                self.end_session(ss)
            return
        if x.ready() is not None:
            self.rr.push(ss.key)
            self.pump()

    def pump(self) -> None:
        """Spend the token bucket on ready transfers, one packet each in turn."""
        if self.pump_handle is not None:
            self.pump_handle.cancel()
            self.pump_handle = None
        now = time.monotonic()
        self.bucket.refill(now)
        need = 0
        while len(self.rr):
            fd = self.rr.pop()
            ss = self.sessions.get(fd)  # type: ignore[arg-type]
            if ss is None:
                continue
            b = ss.xfer.ready()
            if b is None:
                continue
            need = (ss.xfer.block_range(b)[1] + 4) if b else 64
            if not self.bucket.take(need, now):
                self.load.ran_dry()
                self.rr.push_front(fd)
                break
            self._send_block(ss, b, now)
            if ss.xfer.failed:
                self.end_session(ss)
            elif ss.xfer.ready() is not None:
                self.rr.push(fd)
        if len(self.rr):
            assert self.loop is not None
            self.pump_handle = self.loop.call_later(max(self.bucket.wait_for(need), 0.001),
                                                    self.pump)  # fmt: skip

    def _on_transfers(self) -> None:
        """Every transfer's ACKs arrive on the one transfer socket: read them a
        batch at a time (``recvmmsg``), choose the blocks each allows
        (``Transfer.ack_take``), queue the ready DATA datagrams and send them
        with one ``sendmmsg`` per batch. Bytes and packets are counted per tick
        from the transfers' own counters, not per packet.

        Nearly every datagram of a busy server is a lock-step client's ACK of
        the block it was sent last: ``Transfer.step`` answers it without
        ``ack_take``'s cases (``Transfer.expect`` says when), in C where
        :mod:`beokit.boot._lockstep` was built (:data:`FAST_ACKS`), else
        inline here; :meth:`_on_slot` takes every other datagram.
        """
        tx = self.tx
        assert tx is not None
        sessions = self.sessions
        slots = ACK_SLOTS.iter_unpack
        view, rlen, sq, iq = tx.view, tx.rlen, tx.sq, tx.iq
        hb = HEADER_ADDR
        on_slot = self._on_slot
        for _ in range(DRAIN_ROUNDS):  # while busy, serve ACKs without going back to select
            try:
                n = tx.recv()
            except OSError as e:
                log.warning("TFTP transfer socket: %s", e)
                return
            if not n:
                return
            self.polls += 1
            self.polled += n
            now = time.monotonic()
            # no cap: a window goes out as soon as it may (batched, when sendmmsg is there)
            free = self.bucket.rate <= 0 and tx.calls is not None
            parked = self.parked
            j = tx.n
            if free and FAST_ACKS is not None:
                i = 0
                while True:
                    i, j = FAST_ACKS(tx.slots, tx.rhdr, tx.shdr, tx.siov, i, n, j, BATCH,
                                     sessions, parked, hb, tx.keep, now)  # fmt: skip
                    if i >= n:
                        break
                    key, op, block = ACK_SLOT.unpack_from(view, SLOT * i)
                    j = on_slot(i, key, op, block, j, now, free)
                    i += 1
                tx.n = j
                self._flush()
                continue
            keep = tx.keep.append
            lens = rlen[14 : n * 16 : 16]  # each datagram's length
            for i, (key, op, block) in enumerate(slots(view[: n * SLOT])):
                ss = sessions.get(key)
                if (ss is None or not free or block != ss.xfer.expect or lens[i] != 4
                        or op != tftp.ACK or j == BATCH or not ss.base
                        or (parked and key in parked)):  # fmt: skip
                    j = on_slot(i, key, op, block, j, now, free)
                    keep = tx.keep.append  # (a new list if it flushed)
                    continue
                # a lock-step ACK: the next full block goes (Transfer.step)
                x = ss.xfer
                b = x.step(now)
                bs = x.blksize
                sq[j * 8] = ss.name_addr
                k = j * 4
                iq[k] = hb + ((b & 0xFFFF) << 2)
                iq[k + 2] = ss.base + (b - 1) * bs
                iq[k + 3] = bs
                keep(ss)
                j += 1
            tx.n = j
            self._flush()

    def _on_slot(self, i: int, key: int, op: int, block: int, j: int, now: float,
                 free: bool) -> int:  # fmt: skip
        """Received datagram ``i`` of the transfer socket, anything but a lock-step ACK
        ready to answer at once; returns the new length of the send queue (which it
        may have flushed)."""
        tx = self.tx
        assert tx is not None
        ss = self.sessions.get(key)
        if ss is None:
            self.count("tftp-stray")  # not a transfer (or one that ended): ignore
            return j
        if op != tftp.ACK or tx.rlen[i * 16 + 14] != 4:
            tx.n = j
            self._on_datagram(ss, tx.datagram(i)[1], now)
            return tx.n
        parked = self.parked
        base = ss.base
        if not base or not free or (parked and key in parked):  # a cap, parked, pread
            ss.xfer.on_ack(block, now)
            if ss.xfer.done:
                self.end_session(ss)
            elif key not in parked:
                self.make_ready(ss)  # (sends at once or through the round robin, not the queue)
            return j
        x = ss.xfer
        r = x.ack_take(block, now)
        if not r:
            if x.done:
                self.end_session(ss)
            return j
        sq, iq, hb = tx.sq, tx.iq, HEADER_ADDR
        bs, size = x.blksize, x.size
        for b in r:  # a window (or one block): it may fill the queue on the way
            if j == BATCH:
                tx.n = j
                self._flush()
                j = 0
            if not b:  # the OACK
                tx.n = j
                tx.add(ss, tftp.build_oack(x.accepted))
                j += 1
                continue
            sq[j * 8] = ss.name_addr
            k = j * 4
            at = (b - 1) * bs
            iq[k] = hb + ((b & 0xFFFF) << 2)
            iq[k + 2] = base + at
            iq[k + 3] = bs if at + bs <= size else size - at
            tx.keep.append(ss)
            j += 1
        return j

    def _flush(self) -> None:
        """Send the queued datagrams; rewind the transfers whose datagrams did not go out."""
        assert self.tx is not None
        for ss, left, err in self.tx.flush():
            if self.sessions.get(ss.key) is not ss:
                continue
            x = ss.xfer
            x.unsend(max(x.next - left, 0), x.next)  # the retransmission timer resends them
            if (
                not isinstance(err, (BlockingIOError, InterruptedError))
                and err.errno != errno.EAGAIN
            ):
                x.fail(f"send: {err.strerror}")
                self.end_session(ss)

    def _on_datagram(self, ss: Session, data: bytes, now: float) -> None:
        """Anything but a plain ACK on an uncapped, unparked transfer with ready datagrams."""
        x = ss.xfer
        if len(data) == 4 and data[1] == tftp.ACK and data[0] == 0:
            x.on_ack((data[2] << 8) | data[3], now)
        elif data:
            try:
                msg = tftp.parse(data)
            except tftp.TftpError:
                self.count("tftp-malformed")
                return
            if isinstance(msg, tftp.Ack):
                x.on_ack(msg.block, now)
            elif isinstance(msg, tftp.Error):
                x.fail(f"client error {msg.code}: {msg.message}")
            else:
                self._tftp_error(ss.sock, ss.peer, tftp.E_ILLEGAL, "expected an ACK")
        if x.done or x.failed:
            self.end_session(ss)
        elif ss.key in self.parked:
            return  # ahead of the others: its next block goes out at the next tick
        else:
            self.make_ready(ss)

    def end_session(self, ss: Session) -> None:
        fd = ss.key
        if self.sessions.get(fd) is not ss:
            return
        del self.sessions[fd]
        if self.unconfirmed.get(fd) is ss:
            del self.unconfirmed[fd]
        ip = ss.peer[0]
        mine = self.per_address.get(ip)
        if mine is not None:
            mine.pop(fd, None)
            if not mine:
                del self.per_address[ip]
        self.files.close(ss.file)
        self.rr.discard(fd)
        self.parked.discard(fd)
        x = ss.xfer
        self.load.count(x.bytes_sent - ss.counted_bytes, x.packets_sent - ss.counted_packets)
        secs = max(time.monotonic() - ss.started, 1e-6)
        if not x.done and not x.confirmed:  # (a forged request, or a client gone at once)
            self.count("tftp-unconfirmed-ended")
            log.debug("TFTP %s:%d %s ended unconfirmed: %s", ss.peer[0], ss.peer[1], ss.name,
                      x.failed or "stopped")  # fmt: skip
        elif x.done:
            self.count("tftp-done")
            log.info("TFTP %s:%d %s: %d bytes in %.2f s (%.1f MB/s, %d retransmits)",
                     ss.peer[0], ss.peer[1], ss.name, x.size, secs, x.size / secs / 1e6,
                     x.retransmits)  # fmt: skip
        else:
            self.count("tftp-failed")
            self.warn("tftp-failed", "TFTP %s:%d %s failed: %s", ss.peer[0], ss.peer[1],
                      ss.name, x.failed or "stopped")  # fmt: skip

    # -- timers ------------------------------------------------------------
    async def ticker(self) -> None:
        assert self.stopping is not None
        last_expire = 0.0
        while not self.stopping.is_set():
            await asyncio.sleep(TICK)
            now = time.monotonic()
            self.account()
            self.load.tick()
            self.rebalance(now)
            self.stalled_now = self.stalled(now)
            for ss in list(self.sessions.values()):
                x = ss.xfer
                if now >= x.deadline and not x.done:
                    if x.on_timer(now):
                        self.count("tftp-retransmits")
                        self.make_ready(ss)
                    else:
                        self.end_session(ss)
            if now - last_expire > 5:
                last_expire = now
                self.db.expire(time.time())
            if self.db.changed:
                self.schedule_lease_write()

    def account(self) -> None:
        """Per-tick accounting: what each transfer sent since the last tick."""
        nbytes = npackets = 0
        for ss in self.sessions.values():
            x = ss.xfer
            nbytes += x.bytes_sent - ss.counted_bytes
            npackets += x.packets_sent - ss.counted_packets
            ss.counted_bytes, ss.counted_packets = x.bytes_sent, x.packets_sent
        self.load.count(nbytes, npackets)

    def busy(self) -> bool:
        """Did the transfers have to wait for the server in the last tick?

        Busy: ACKs queue up (more than ``BUSY_ACKS`` per batch read on
        average), or a cap was the limit recently. Holding a transfer back then
        costs nothing (its turn goes to another); otherwise it would only leave
        the link or the server idle while a client waits.
        """
        polls, polled = self.polls, self.polled
        self.polls = self.polled = 0
        if polls:  # in the SIGUSR1 dump: datagrams per read, how far behind the server runs
            self.count("tftp-reads", polls)
            self.count("tftp-read-datagrams", polled)
        if self.bucket.rate > 0:
            return self.load.saturation > 0
        return polls > 0 and polled >= BUSY_ACKS * polls

    def rebalance(self, now: float) -> None:
        """Each tick: park the transfers running well ahead of the median, release the rest."""
        busy = self.busy()
        parked: set = set()
        if self.fair and busy and len(self.sessions) > 1:
            progress = {}
            for fd, ss in self.sessions.items():
                x = ss.xfer
                age = now - ss.started
                progress[fd] = (x.bytes_sent / max(age, 1e-3), age, now - x.last_progress > STALL)
            parked = fair.parked(progress)
        released = self.parked - parked
        self.parked = parked
        for fd in released:
            ss = self.sessions.get(fd)
            if ss is not None:
                self.make_ready(ss)

    # -- lease file ----------------------------------------------------------
    def schedule_lease_write(self) -> None:
        if self.cfg.lease_file is None or self.lease_write is not None:
            return
        assert self.loop is not None
        self.db.changed = False
        text = self.db.to_json()
        self.lease_write = self.loop.run_in_executor(None, write_atomic, self.cfg.lease_file, text)
        self.lease_write.add_done_callback(self._lease_written)

    def _lease_written(self, fut: asyncio.Future) -> None:
        self.lease_write = None
        exc = fut.exception()
        if exc is not None:
            log.error("cannot write the lease file %s: %s", self.cfg.lease_file, exc)
            self.db.changed = True
        elif self.db.changed:
            self.schedule_lease_write()

    def load_leases(self) -> None:
        p = self.cfg.lease_file
        if p is None or not p.exists():
            return
        try:
            self.db.load_json(p.read_text(), time.time())
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise C.ConfigError(f"bad lease file {str(p)!r}: {e}") from None
        log.info("restored %d leases and %d admitted nodes from %s", len(self.db.leases),
                 len(self.db.admitted), p)  # fmt: skip

    # -- control socket ------------------------------------------------------
    async def on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            try:
                req = json.loads(line)
                out = self.control(req)
            except (ValueError, TypeError, KeyError) as e:
                out = {"ok": False, "error": str(e)}
            writer.write(json.dumps(out).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), 5)
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    def control(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "admit":
            mac = C.normalize_mac(str(req["mac"]))
            n = req.get("node")
            got = self.db.admit(mac, None if n is None else int(n))
            self.schedule_lease_write()
            ip, name = self.cfg.node_ip(got), self.cfg.node_hostname(got)
            log.info("admitted %s as node %d (%s, %s)", mac, got, name, ip)
            return {"ok": True, "mac": mac, "node": got, "ip": str(ip), "name": name}
        if cmd == "dump":
            return {"ok": True, **self.state()}
        raise ValueError(f"unknown command {cmd!r}")

    # -- state ---------------------------------------------------------------
    def state(self) -> dict:
        now = time.monotonic()
        return {
            "uptime": round(now - self.started, 1),
            "counters": dict(sorted({**self.counters, **self.logic.counts}.items())),
            "leases": [vars(x) for x in self.db.leases.values()],
            "admitted": self.db.admitted,
            "transfers": [
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
            ],  # fmt: skip
            "tick": {
                "saturation": self.load.saturation,
                "stalled": self.stalled(now),
                "bytes_total": self.load.total_bytes,
                "packets_total": self.load.total_packets,
            },  # fmt: skip
            "open_files": len(self.files.files),
            "snapshot_bytes": self.files.mem_bytes,
            "http_clients": dict(self.http.clients) if self.http is not None else {},
            "http_connections": len(self.http.conns) if self.http is not None else 0,
            "declined": len(self.db.declined),
            "unconfirmed": sum(1 for ss in self.sessions.values() if not ss.xfer.confirmed),
            "deferred_offers": len(self.pending_replies),
        }

    def dump(self) -> None:
        st = self.state()
        log.warning("SIGUSR1 state: %d leases, %d transfers, counters %s", len(st["leases"]),
                    len(st["transfers"]), st["counters"])  # fmt: skip
        for x in st["leases"]:
            log.warning("  lease %s %s %s %s expires in %.0f s", x["key"], x["ip"], x["name"],
                        x["kind"], x["expires"] - time.time())  # fmt: skip
        for t in st["transfers"]:
            log.warning("  transfer %s %s %d/%d bytes", t["peer"], t["file"], t["bytes"], t["size"])
        for peer, c in st["http_clients"].items():
            log.warning("  http %s %s %d bytes", peer, c["file"], c["bytes"])

    def reload(self) -> None:
        try:
            cfg = self.effective(C.load(self.opts.config_path))
        except C.ConfigError as e:
            log.error("SIGHUP: keeping the old config: %s", e)
            return
        old_lease_file = self.cfg.lease_file
        self.cfg = cfg
        self.db.reconfigure(cfg)
        self.logic.cfg = cfg
        self.load.cap_bytes_per_s = cfg.bandwidth_bps / 8
        self.load.defer_max = cfg.defer_max
        self.fair = cfg.fair
        self.bucket.rate = cfg.bandwidth_bps / 8
        self.bucket.burst = max(cfg.bandwidth_bps / 8 * TICK, 65536)
        try:
            self.open_listeners()
        except OSError as e:
            log.error("SIGHUP: cannot re-open the sockets (%s); stopping", e)
            assert self.stopping is not None
            self.stopping.set()
        if cfg.lease_file != old_lease_file:
            self.db.changed = True
        log.warning("SIGHUP: config re-read from %s, sockets re-opened, %d transfers kept",
                    self.opts.config_path, len(self.sessions))  # fmt: skip

    # -- main ----------------------------------------------------------------
    async def serve(self, ready: asyncio.Event | None = None) -> None:
        raise_nofile()
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.load_leases()
        self.open_listeners()
        self.tx = Mmsg(self.opts.bind)
        self.loop.add_reader(self.tx.fd, self._on_transfers)
        if self.cfg.control is not None:
            with contextlib.suppress(FileNotFoundError):
                self.cfg.control.unlink()
            old = os.umask(0o077)
            try:
                self.control_server = await asyncio.start_unix_server(
                    self.on_control, path=str(self.cfg.control)
                )
            finally:
                os.umask(old)
        http_port = self.opts.http_port if self.opts.http_port is not None else self.cfg.http_port
        if http_port:
            from beokit.boot.http import HttpServer

            self.http = HttpServer(self, http_port)
            await self.http.start()
        for sig, fn in (
            (signal.SIGHUP, self.reload),
            (signal.SIGUSR1, self.dump),
            (signal.SIGTERM, self.stopping.set),
            (signal.SIGINT, self.stopping.set),
        ):
            self.loop.add_signal_handler(sig, fn)  # fmt: skip
        socks = ", ".join(f"{k} {s.getsockname()[0]}:{s.getsockname()[1]}"
                          for k, s in self.listeners.items())  # fmt: skip
        log.warning("beo boot serving (%s%s%s)", "proxyDHCP, " if self.opts.proxy else "", socks,
                    f", http :{http_port}" if http_port else "")  # fmt: skip
        log.info("TFTP lock-step path: %s", "compiled" if FAST_ACKS is not None else
                 "Python (beokit.boot._lockstep not built or BEOKIT_PURE_PYTHON set)")  # fmt: skip
        ticker = asyncio.create_task(self.ticker())
        if ready is not None:
            ready.set()
        try:
            await self.stopping.wait()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await self.shutdown()

    async def shutdown(self) -> None:
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                self.loop.remove_signal_handler(sig)  # type: ignore[union-attr]
        for h in self.pending_replies:
            h.cancel()
        if self.pump_handle is not None:
            self.pump_handle.cancel()
        for ss in list(self.sessions.values()):
            ss.xfer.fail("server stopping")
            self.end_session(ss)
        self.close_listeners()
        if self.tx is not None:
            self.loop.remove_reader(self.tx.fd)  # type: ignore[union-attr]
            self.tx.close()
        if self.http is not None:
            await self.http.stop()
        if self.control_server is not None:
            self.control_server.close()
            await self.control_server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.cfg.control.unlink()  # type: ignore[union-attr]
        if self.lease_write is not None:
            with contextlib.suppress(Exception):
                await self.lease_write
        if self.cfg.lease_file is not None:
            write_atomic(self.cfg.lease_file, self.db.to_json())
        self.files.close_all()
        log.warning("beo boot stopped")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old or the new file, whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def raise_nofile(want: int = NOFILE_WANT) -> int:
    """Raise the soft descriptor limit towards ``want`` (never past the hard one), as
    servers do: the HTTP connection cap is sized from it. Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < top:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
            soft = top
    return soft


def check_paths(cfg: C.Config, opts: Options | None = None) -> None:
    """Fail early (usage error, naming the key and value) on what would otherwise end
    the server later: a lease file or control socket in a directory that does not exist
    or cannot be written, a control socket path too long for AF_UNIX, an unknown
    ``--interface``."""
    for key, p in (("server.lease_file", cfg.lease_file), ("server.control", cfg.control)):
        if p is None:
            continue
        if not p.parent.is_dir():
            raise C.ConfigError(f"bad {key} {str(p)!r}: no directory {str(p.parent)!r}")
        if not os.access(p.parent, os.W_OK | os.X_OK):
            raise C.ConfigError(f"bad {key} {str(p)!r}: cannot write in {str(p.parent)!r}")
        if p.is_dir():
            raise C.ConfigError(f"bad {key} {str(p)!r}: a directory")
    if cfg.control is not None and len(os.fsencode(cfg.control)) > 107:
        raise C.ConfigError(f"bad server.control {str(cfg.control)!r}: longer than the "
                            "107 bytes of a Unix socket path")  # fmt: skip
    if opts is not None and opts.interface:
        try:
            socket.if_nametoindex(opts.interface)
        except OSError:
            raise C.ConfigError(f"bad --interface {opts.interface!r}: no such network "
                                "interface") from None  # fmt: skip


def check_bind(opts: Options) -> None:
    """Fail early (usage error) on ports already taken or not allowed."""
    for port in (opts.dhcp_port, opts.tftp_port, opts.dns_port):
        if port and port < 1024 and os.geteuid() != 0:
            raise C.ConfigError(f"port {port} needs root (use --dhcp-port/--tftp-port/"
                                "--dns-port above 1023 to test unprivileged)")  # fmt: skip


def run_server(opts: Options, cfg: C.Config) -> int:
    check_bind(opts)
    check_paths(cfg, opts)
    server = BootServer(opts, cfg)
    try:
        asyncio.run(server.serve())
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise C.ConfigError(f"cannot bind {opts.bind}: {e.strerror}") from None
        if e.errno == errno.ENODEV:
            raise C.ConfigError(f"bad --interface {opts.interface!r}: {e.strerror}") from None
        raise BeokitError(f"cannot serve: {e.strerror or e}") from None
    return 0
