"""``beo dshd``: the load daemon (asyncio; UDP gossip, TCP status and best ports).

Thin driver around :mod:`beokit.dsh.gossip`, :mod:`beokit.dsh.state` and
:mod:`beokit.dsh.packet`: every round it measures this node, sends what the
gossip state machine says to send, feeds the received datagrams (with their
arrival times) to it, and answers the two TCP ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import json
import logging
import os
import random
import secrets
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

from beokit.dsh import gossip as G
from beokit.dsh import packet as P
from beokit.dsh import state as S
from beokit.dsh.admission import Admission
from beokit.errors import EXIT_OK, BeokitError, UsageError
from beokit.mmsg import RECVMMSG as _RECVMMSG
from beokit.mmsg import SENDMMSG as _SENDMMSG
from beokit.mmsg import IOVec as _IOVec
from beokit.mmsg import MMsgHdr as _MMsgHdr

log = logging.getLogger("beokit.dshd")

RX_MAX_INTERVAL = 1.0  # the gossip sockets are drained every round, and at least once a second
RX_FILL = 0.5  # ...and before the socket buffer is this full (broadcast mode: N a period)
RX_TRUESIZE = 1024  # kernel memory per queued report (measured: 832 bytes on loopback)
RX_GOSSIP_TRUESIZE = 2304  # ...per queued gossip datagram (up to 1400 bytes)
SOCK_BUF = 4 << 20  # UDP receive/send buffers: a 1000-member burst fits many times
MAX_CONNECTIONS = 128  # TCP queries held at once (both ports); who is shed: admission.py
MAX_PER_SOURCE = 32  # connections of one source address that have not proved the secret
HANDSHAKE_TIMEOUT = 1.0  # with a secret: the answer to the challenge must come within this
QUERY_TIMEOUT = 3.0  # a TCP client must finish within this
LINE_MAX = 4096  # a request line longer than this ends the connection
REQUEST_WAIT = 0.25  # status port without a secret: wait this long for "json"/"text"
BUSY = b"error busy\n"  # what a shed or refused connection reads (never zero bytes)
LISTEN_BACKLOG = 512  # the kernel's queue of connections not yet accepted
ACCEPT_BATCH = 32  # connections accepted (and admitted) per wake-up of a TCP port
ACCEPT_PAUSE = 0.1  # a port whose accept failed (out of fds) rests this long
SECRET_ENV = "BEO_DSH_SECRET"


def read_secret(path: str | None) -> bytes | None:
    """The shared secret from FILE, else $BEO_DSH_SECRET, else None."""
    if path:
        try:
            with open(path, "rb") as f:
                data = f.read().strip()
        except OSError as e:
            raise UsageError(f"bad secret file {path!r}: {e.strerror}") from None
        if not data:
            raise UsageError(f"bad secret file {path!r}: empty")
        return data
    env = os.environ.get(SECRET_ENV, "").strip()
    return env.encode() if env else None


def resolve(name: str) -> str:
    """An IPv4 address for a member name (the name itself if it is one)."""
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as e:
        raise UsageError(f"cannot resolve member {name!r}: {e}") from None
    return str(infos[0][4][0])


@dataclass
class Config:
    cluster_file: str
    bind: str
    name: str | None
    period: float
    expire: int
    extra_load: float
    score: str
    send_to: list[str]
    load_file: str | None
    jobs_dir: str
    secret_file: str | None
    gossip_port: int
    status_port: int
    best_port: int
    fanout: int = G.FANOUT


@dataclass
class Loaded:
    """What the cluster file and the options give, checked."""

    specs: list[S.MemberSpec]
    addresses: dict[str, str]
    self_name: str
    secret: bytes | None
    score: S.ScoreFn
    targets: list[str] = field(default_factory=list)


def load_config(cfg: Config) -> Loaded:
    """Read and check everything; raise :class:`UsageError` naming the bad value."""
    try:
        with open(cfg.cluster_file, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"bad cluster file {cfg.cluster_file!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"bad cluster file {cfg.cluster_file!r}: not UTF-8 text") from None
    try:
        specs = S.parse_cluster(text, cfg.cluster_file)
        score = S.score_function(cfg.score)
    except S.ConfigError as e:
        raise UsageError(str(e)) from None
    addresses = {s.name: resolve(s.name) for s in specs}
    if cfg.name is not None:
        if cfg.name not in addresses:
            raise UsageError(f"bad --name {cfg.name!r}: not in {cfg.cluster_file}")
        self_name = cfg.name
    else:
        by_addr = [n for n, a in addresses.items() if a == cfg.bind]
        host = socket.gethostname()
        cands = by_addr or [n for n in addresses if n in (host, host.split(".")[0])]
        if not cands:
            raise UsageError(f"this node (bind {cfg.bind}, host name {host!r}) is not in "
                             f"{cfg.cluster_file}; give --name")  # fmt: skip
        self_name = cands[0]
    for a in cfg.send_to:
        try:
            ipaddress.IPv4Address(a)
        except ValueError:
            raise UsageError(f"bad --send-to address {a!r}") from None
    secret = read_secret(cfg.secret_file)
    return Loaded(specs, addresses, self_name, secret, score)


def _big_buffers(s: socket.socket) -> None:
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


# ------------------------------------------------------------------ sending

_IP_MTU_DISCOVER, _IP_PMTUDISC_DO = 10, 2  # Linux <netinet/in.h>; Python 3.11 lacks them


class MultiSender:
    """The same datagram to many IPv4 destinations in one system call.

    ``sendmmsg(2)`` through ctypes: the destinations' addresses are packed
    once (here), each period's report is copied into one buffer that every
    message points at, and the kernel sends up to 1024 messages a call.
    That saves, per destination, the Python call, the address parsing and
    the system call entry (about 1 us of 3.5). Where sendmmsg is missing
    (not Linux, no glibc symbol) it falls back to a ``sendto`` loop; a
    destination that fails (full buffer, unreachable) is counted and
    skipped, as with sendto, and the next period retries.
    """

    def __init__(self, sock: socket.socket, dests: list[tuple[str, int]],
                 use_mmsg: bool = True) -> None:  # fmt: skip
        self.sock, self.dests = sock, list(dests)
        self.last_error: OSError | None = None
        n = len(self.dests)
        self._fn = _SENDMMSG if use_mmsg and n > 1 else None
        if self._fn is None:
            return
        addrs = b"".join(
            struct.pack("=H", socket.AF_INET) + struct.pack("!H", port)
            + socket.inet_aton(addr) + bytes(8)
            for addr, port in self.dests
        )  # fmt: skip
        self._names = ctypes.create_string_buffer(addrs, len(addrs))
        self._data = ctypes.create_string_buffer(P.MAX_PACKET)
        self._iov = _IOVec(ctypes.addressof(self._data), 0)
        self._msgs = (_MMsgHdr * n)()
        base, iov = ctypes.addressof(self._names), ctypes.addressof(self._iov)
        for i, m in enumerate(self._msgs):
            m.hdr.name, m.hdr.namelen, m.hdr.iov, m.hdr.iovlen = base + 16 * i, 16, iov, 1
        self._msgs_at = ctypes.addressof(self._msgs)
        self._size = ctypes.sizeof(_MMsgHdr)

    def send(self, data: bytes) -> int:
        """Send ``data`` to every destination; return how many sends failed."""
        if self._fn is None:
            return self._send_each(data)
        if len(data) > P.MAX_PACKET:
            raise ValueError("datagram too long")
        ctypes.memmove(self._data, data, len(data))
        self._iov.len = len(data)
        fd, n, off, errors = self.sock.fileno(), len(self.dests), 0, 0
        while off < n:
            k = self._fn(fd, self._msgs_at + off * self._size, n - off, 0)
            if k > 0:
                off += k
                continue
            err = ctypes.get_errno()
            if k == 0 or err == errno.ENOSYS:  # cannot happen / no kernel support
                self._fn = None
                return errors + self._send_each(data, off)
            errors += 1  # this destination failed: skip it
            self.last_error = OSError(err, os.strerror(err))
            off += 1
        return errors

    def _send_each(self, data: bytes, start: int = 0) -> int:
        sendto, errors = self.sock.sendto, 0
        for dest in self.dests[start:]:
            try:
                sendto(data, dest)
            except OSError as e:
                errors += 1
                self.last_error = e
        return errors


_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python 3.11 lacks it
_SIZE_T = ctypes.sizeof(ctypes.c_size_t)
_CMSG_HDR = _SIZE_T + 8  # struct cmsghdr: cmsg_len (size_t), cmsg_level, cmsg_type (int)
_TIMESPEC = 2 * ctypes.sizeof(ctypes.c_long)
_CMSG_SPACE = (_CMSG_HDR + _TIMESPEC + _SIZE_T - 1) // _SIZE_T * _SIZE_T


def enable_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp each datagram with its arrival time (SO_TIMESTAMPNS)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


class MultiReceiver:
    """Queued datagrams of a non-blocking IPv4 UDP socket, many per system call.

    ``recvmmsg(2)`` through ctypes into fixed buffers (``slots`` datagrams of
    up to ``SLOT`` bytes, longer ones are cut, which no valid datagram is);
    the batch is copied out in one piece and split with precompiled structs,
    and the source addresses come as 4 raw bytes, turned into text through a
    small cache (no getnameinfo per datagram, as socket.recvfrom does). With
    SO_TIMESTAMPNS on the socket each datagram also comes with the kernel's
    arrival time (wall clock, seconds): the gossip ages count the time a
    datagram waited in the socket. Without recvmmsg, a recvmsg loop gives the
    same answers.
    """

    SLOT = 2048  # > P.MAX_DATAGRAM and an Ethernet frame: a valid datagram is never cut

    def __init__(self, sock: socket.socket, slots: int = 512, use_mmsg: bool = True,
                 cache: int = 4096, stamps: bool = True) -> None:  # fmt: skip
        self.sock, self.slots, self.cache, self.stamps = sock, slots, cache, stamps
        self._fn = _RECVMMSG if use_mmsg else None
        self._names: dict[bytes, str] = {}
        if self._fn is None:
            return
        slot = self.SLOT
        self._bufs = ctypes.create_string_buffer(slots * slot)
        self._addrs = ctypes.create_string_buffer(slots * 16)
        self._ctrl = ctypes.create_string_buffer(slots * _CMSG_SPACE)
        self._iovs = (_IOVec * slots)()
        self._msgs = (_MMsgHdr * slots)()
        bufs, addrs = ctypes.addressof(self._bufs), ctypes.addressof(self._addrs)
        ctrl = ctypes.addressof(self._ctrl)
        for i in range(slots):
            self._iovs[i].base, self._iovs[i].len = bufs + i * slot, slot
            h = self._msgs[i].hdr
            h.name, h.namelen = addrs + 16 * i, 16
            h.iov, h.iovlen = ctypes.addressof(self._iovs[i]), 1
            if stamps:  # room for the arrival stamp (SO_TIMESTAMPNS)
                h.control, h.controllen = ctrl + _CMSG_SPACE * i, _CMSG_SPACE
        size, off = ctypes.sizeof(_MMsgHdr), _MMsgHdr.len.offset
        cl = _MMsgHdr.hdr.offset + type(self._msgs[0].hdr).controllen.offset
        szt = "Q" if _SIZE_T == 8 else "I"
        self._msize = size
        # (msg_controllen, msg_len) of one mmsghdr
        self._len = struct.Struct(f"={cl}x{szt}{off - cl - _SIZE_T}xI{size - off - 4}x")
        self._src = struct.Struct("=4x4s8x")  # sin_addr of one sockaddr_in
        self._cmsg = struct.Struct(f"={szt}ii{'qq' if _TIMESPEC == 16 else 'ii'}"
                                   f"{_CMSG_SPACE - _CMSG_HDR - _TIMESPEC}x")  # fmt: skip
        self._cl_off = cl
        self._msgs_view = memoryview(self._msgs).cast("B")
        self._addrs_view = memoryview(self._addrs).cast("B")
        self._ctrl_view = memoryview(self._ctrl).cast("B")
        self._bufs_at, self._msgs_at = bufs, ctypes.addressof(self._msgs)

    def _name(self, raw: bytes) -> str:
        src = socket.inet_ntoa(raw)
        if len(self._names) >= self.cache:  # spoofed sources must not grow it without end
            self._names.clear()
        self._names[raw] = src
        return src

    def recv(self) -> list[tuple[bytes, str, float | None]]:
        """Up to ``slots`` (datagram, source address, arrival time or None) triples;
        [] when none is queued. The arrival time is the kernel's (wall clock)."""
        if self._fn is None:
            return self._recv_each()
        k = self._fn(self.sock.fileno(), self._msgs_at, self.slots, socket.MSG_DONTWAIT, None)
        if k <= 0:
            err = ctypes.get_errno()
            if k == 0 or err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return []
            if err == errno.ENOSYS:  # no kernel support: recvmsg from now on
                self._fn = None
                return self._recv_each()
            raise OSError(err, os.strerror(err))
        slot, names, name = self.SLOT, self._names, self._name
        blob = ctypes.string_at(self._bufs_at, k * slot)
        out = []
        at = 0
        lens = self._len.iter_unpack(self._msgs_view[: k * self._msize])
        srcs = self._src.iter_unpack(self._addrs_view[: k * 16])
        if not self.stamps:
            for (_clen, n), (raw,) in zip(lens, srcs, strict=True):
                out.append((blob[at : at + n], names.get(raw) or name(raw), None))
                at += slot
            return out
        stamps = self._cmsg.iter_unpack(self._ctrl_view[: k * _CMSG_SPACE])
        for i, ((clen, n), (raw,), (_l, level, kind, sec, nsec)) in enumerate(
                zip(lens, srcs, stamps, strict=True)):  # fmt: skip
            ts = None
            if clen == _CMSG_SPACE and level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                ts = sec + nsec * 1e-9
            elif clen != _CMSG_SPACE:  # the kernel wrote another length: give the room back
                struct.pack_into("Q" if _SIZE_T == 8 else "I", self._msgs_view,
                                 i * self._msize + self._cl_off, _CMSG_SPACE)  # fmt: skip
            out.append((blob[at : at + n], names.get(raw) or name(raw), ts))
            at += slot
        return out

    def _recv_each(self) -> list[tuple[bytes, str, float | None]]:
        out = []
        recvmsg, size = self.sock.recvmsg, self.SLOT
        room = _CMSG_SPACE if self.stamps else 0
        for _ in range(self.slots):
            try:
                data, anc, _flags, (src, _port) = recvmsg(size, room)
            except (BlockingIOError, InterruptedError):
                break
            ts = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and \
                        len(cdata) >= _TIMESPEC:  # fmt: skip
                    sec, nsec = struct.unpack_from("qq" if _TIMESPEC == 16 else "ii", cdata)
                    ts = sec + nsec * 1e-9
            out.append((data, src, ts))
        return out


# ---------------------------------------------------------------- measuring


def _read(path: str) -> str:
    with open(path, "rb") as f:  # utf-8 is built in: no codec import after dropping root
        return f.read(65536).decode(errors="replace")


def measure_proc() -> dict:
    """Load averages, CPUs and memory of this machine from /proc."""
    l1, l5, l15 = (float(x) for x in _read("/proc/loadavg").split()[:3])
    mem = {}
    for line in _read("/proc/meminfo").splitlines():
        k, _, v = line.partition(":")
        if k in ("MemTotal", "MemAvailable", "MemFree"):
            mem[k] = int(v.split()[0])
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    return {"load1": l1, "load5": l5, "load15": l15, "cpus": cpus,
            "mem_total_kb": mem.get("MemTotal", 0),
            "mem_free_kb": mem.get("MemAvailable", mem.get("MemFree", 0))}  # fmt: skip


def parse_load_file(text: str) -> dict:
    """A simulated load: ``LOAD1 [LOAD5 LOAD15]`` or a JSON object with any of
    load1, load5, load15, cpus, mem_total_kb, mem_free_kb, jobs."""
    text = text.strip()
    if text.startswith("{"):
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not an object")
        keys = ("load1", "load5", "load15", "cpus", "mem_total_kb", "mem_free_kb", "jobs")
        out = {k: d[k] for k in keys if k in d}
        for k, v in out.items():
            if not isinstance(v, int | float) or v < 0:
                raise ValueError(f"bad {k} {v!r}")
        return out
    nums = [float(x) for x in text.split()]
    if not 1 <= len(nums) <= 3 or any(not 0 <= x < 1e6 for x in nums):
        raise ValueError(f"bad load {text[:40]!r}")
    l1 = nums[0]
    return {"load1": l1, "load5": nums[1] if len(nums) > 1 else l1,
            "load15": nums[2] if len(nums) > 2 else l1}  # fmt: skip


def count_jobs(jobs_dir: str, own: set[str] | None) -> int:
    """dsh jobs running here: files ``ADDR.PID`` in ``jobs_dir`` whose process lives.

    ``own``: the addresses that mean this node (None: every file counts)."""
    try:
        names = os.listdir(jobs_dir)
    except OSError:
        return 0
    n = 0
    for fn in names:
        addr, _, pid = fn.rpartition(".")
        if not pid.isdigit() or (own is not None and addr not in own):
            continue
        if os.path.exists(f"/proc/{pid}"):
            n += 1
        else:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(jobs_dir, fn))
    return n


# ------------------------------------------------------------------- daemon


@dataclass(slots=True)
class _Conn:
    """One TCP query in progress (its key in the admission table)."""

    key: int
    sock: socket.socket
    source: str
    task: asyncio.Task | None = None
    answered: bool = False  # the answer (or an error line) is being sent
    shed: bool = False  # closed to make room for another connection
    sign: tuple[str, str, str] | None = None  # (purpose, nonce, client nonce): MAC the answer


async def _read_line(sock: socket.socket) -> bytes:
    """The peer's first line (with its newline); what came before EOF if none.

    Plain ``loop.sock_recv`` on the socket, no transport or stream objects:
    a connection leaves no reference cycle behind (asyncio 3.11's socket
    transport is one), so a flood of them is freed as it goes, not at the
    next full garbage collection. Raises ValueError past LINE_MAX bytes.
    """
    loop = asyncio.get_running_loop()
    buf = b""
    while b"\n" not in buf:
        if len(buf) > LINE_MAX:
            raise ValueError("request line too long")
        chunk = await loop.sock_recv(sock, LINE_MAX)
        if not chunk:
            return buf
        buf += chunk
    return buf[: buf.index(b"\n") + 1]


class Daemon:
    """One dshd: the table, its sockets and its timers."""

    def __init__(self, cfg: Config, loaded: Loaded) -> None:
        self.cfg = cfg
        self.loaded = loaded
        self.table = S.Table(
            loaded.specs, loaded.self_name, period=cfg.period, expire_periods=cfg.expire,
            extra_load=cfg.extra_load, score=loaded.score, keep_marks=loaded.secret is not None,
        )  # fmt: skip
        self.table.set_members(loaded.specs, loaded.addresses)
        self.seq = 0
        self.rng = random.Random()
        self.gossip = G.Gossip(self.table, loaded.secret, G.Params(fanout=cfg.fanout), self.rng)
        self.udp: socket.socket | None = None
        self.extra_udp: list[socket.socket] = []
        self.admission = Admission(MAX_CONNECTIONS, MAX_PER_SOURCE)
        self.conns: dict[int, _Conn] = {}
        self.stats = {"sent": 0, "received": 0, "rejected": 0, "bad": 0, "queries": 0,
                      "best": 0, "refused": 0, "send_errors": 0, "own": 0, "shed": 0,
                      "busy": 0, "handshake_timeouts": 0, "rounds": 0}  # fmt: skip
        self.load_file_error: str | None = None
        self._proc: dict | None = None  # the last /proc (or load file) reading
        self._proc_at = 0.0
        self.stop_event: asyncio.Event | None = None
        self._last_reject_log = 0.0
        self._last_accept_log = -1e9
        self._last_shed_log = -1e9
        self._own_addrs: set[str] | None = None
        self.closed = False
        self.rx: list[MultiReceiver] = []
        self.rx_buffer = 1 << 20
        self.next_send = 0.0  # the next round
        self.next_broadcast = 0.0  # broadcast mode: the next period's report
        self.last_drain = 0.0
        self.timer: asyncio.Handle | None = None
        self._set_targets()

    # ---- configuration
    @property
    def broadcast(self) -> bool:
        """--send-to: each period's report to the groups, no gossip (the old way)."""
        return bool(self.cfg.send_to)

    @property
    def full_view(self) -> bool:
        """Does every member's report reach this daemon each period (see gossip.py)?"""
        return self.broadcast or self.gossip.full_view

    def _set_targets(self) -> None:
        ld = self.loaded
        self.targets = list(self.cfg.send_to)
        self.dests = [(a, self.cfg.gossip_port) for a in self.targets]
        self.sender: MultiSender | None = None  # built for the socket at the next send
        own = {ld.addresses[ld.self_name], ld.self_name, self.cfg.bind}
        self._own_addrs = None if self.cfg.bind == "0.0.0.0" else own

    def reload(self) -> None:
        """SIGHUP: re-read the cluster file (and the secret); keep going on errors."""
        try:
            loaded = load_config(self.cfg)
        except BeokitError as e:
            log.error("SIGHUP: keeping the old configuration: %s", e)
            return
        if loaded.self_name != self.loaded.self_name and self.cfg.name is None:
            log.warning("SIGHUP: this node is now %r (was %r)", loaded.self_name,
                        self.loaded.self_name)  # fmt: skip
        try:
            old_self = self.table.self_name
            self.table.self_name = loaded.self_name
            self.table.set_members(loaded.specs, loaded.addresses)
        except S.ConfigError as e:
            self.table.self_name = old_self
            log.error("SIGHUP: keeping the old configuration: %s", e)
            return
        self.table.score = loaded.score
        self.table.keep_marks = loaded.secret is not None
        self.table.forget_marks()  # a member whose clock went back gets in again
        self.gossip.secret = loaded.secret
        self.gossip.members_changed()
        self.loaded = loaded
        self._set_targets()
        log.info("SIGHUP: %d members from %s", len(loaded.specs), self.cfg.cluster_file)

    def snapshot(self, now: float, all_members: bool = True) -> dict:
        """The table as plain data, and how it is filled (the status port's JSON).
        Not ``all_members`` and a partial view: only the members up are listed."""
        snap = self.table.snapshot(now, only_up=not (all_members or self.full_view))
        p = self.gossip.params
        snap["view"] = "full" if self.full_view else "partial"
        snap["gossip"] = ({"mode": "broadcast", "send_to": list(self.cfg.send_to)}
                          if self.broadcast else
                          {"mode": "gossip", "fanout": p.fanout, "rounds": p.rounds,
                           "candidates": p.candidates, "extra": p.extra})  # fmt: skip
        return snap

    def dump(self) -> None:
        """SIGUSR1: the table and counters into the log."""
        snap = self.snapshot(time.monotonic(), all_members=False)
        log.warning("state dump (SIGUSR1): %s, %d TCP connections (%d not authenticated), "
                    "%d tasks\n%s", json.dumps(dict(self.stats, **self.gossip.stats)), len(self.conns),
                    self.admission.pending(), len(asyncio.all_tasks()),
                    S.format_status(snap).rstrip())  # fmt: skip

    # ---- sockets (bound before the loop starts, so -b reports bind errors)
    def bind(self) -> None:
        cfg = self.cfg
        try:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            _big_buffers(u)
            # DF set: the kernel skips the per-packet IP ID hash (reports are < 400 bytes)
            if sys.platform.startswith("linux"):
                with contextlib.suppress(OSError):
                    u.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
            u.bind((cfg.bind, cfg.gossip_port))
            u.setblocking(False)
            if not cfg.send_to:
                enable_timestamps(u)
            self.udp = u
            for addr in cfg.send_to:
                ip = ipaddress.IPv4Address(addr)
                if ip.is_multicast:
                    u.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
                    u.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
                    if cfg.bind != "0.0.0.0":
                        u.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                     socket.inet_aton(cfg.bind))  # fmt: skip
                    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    r.bind((addr, cfg.gossip_port))
                    iface = cfg.bind if cfg.bind != "0.0.0.0" else "0.0.0.0"
                    mreq = socket.inet_aton(addr) + socket.inet_aton(iface)
                    r.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                    _big_buffers(r)
                    r.setblocking(False)
                    self.extra_udp.append(r)
                elif cfg.bind != "0.0.0.0":  # broadcast: a bound socket does not see it
                    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    r.bind((addr, cfg.gossip_port))
                    _big_buffers(r)
                    r.setblocking(False)
                    self.extra_udp.append(r)
            self._tcp = []
            for port in (cfg.status_port, cfg.best_port):
                t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                t.bind((cfg.bind, port))
                t.listen(LISTEN_BACKLOG)
                t.setblocking(False)
                self._tcp.append(t)
        except OSError as e:
            self.close()
            raise BeokitError(f"cannot bind {cfg.bind} (UDP {cfg.gossip_port}, TCP "
                              f"{cfg.status_port}/{cfg.best_port}): {e.strerror}") from None  # fmt: skip

    def close(self) -> None:
        for s in [self.udp, *self.extra_udp, *getattr(self, "_tcp", [])]:
            if s is not None:
                s.close()

    # ---- gossip
    def measure(self, now: float | None = None) -> P.Report:
        """This node's report: /proc (or the load file) read once a period (the
        kernel's load averages move every 5 s), the dsh jobs counted each round."""
        now = time.monotonic() if now is None else now
        if self._proc is None or now - self._proc_at >= 0.9 * self.cfg.period:
            self._proc, self._proc_at = self._read_load(), now
        d = self._proc
        jobs = count_jobs(self.cfg.jobs_dir, self._own_addrs)
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return P.Report(
            self.table.self_name, self.seq, int(time.time() * 1000),
            float(d["load1"]), float(d["load5"]), float(d["load15"]), int(d["cpus"]),
            int(d.get("jobs", jobs)), int(d["mem_total_kb"]), int(d["mem_free_kb"]),
            int(self.cfg.period * 1000),
        )  # fmt: skip

    def _read_load(self) -> dict:
        d = measure_proc()
        if self.cfg.load_file:
            try:
                d.update(parse_load_file(_read(self.cfg.load_file)))
                if self.load_file_error:
                    log.info("load file %s readable again", self.cfg.load_file)
                self.load_file_error = None
            except (OSError, ValueError) as e:
                if self.load_file_error is None:
                    log.warning("load file %s: %s; using /proc", self.cfg.load_file, e)
                self.load_file_error = str(e)
        return d

    def send_report(self, now: float) -> None:
        """Broadcast mode: measure, encode once, send the same bytes to every group."""
        report = self.measure(now)
        self._log_events(self.gossip.set_self(report, now))
        data = self.table.members[self.table.self_name].raw
        assert self.udp is not None and data is not None
        if self.sender is None:
            try:
                self.sender = MultiSender(self.udp, self.dests)
            except (OSError, ValueError) as e:  # an address sendmmsg cannot take: sendto
                log.warning("sendmmsg not used: %s", e)
                self.sender = MultiSender(self.udp, self.dests, use_mmsg=False)
        errors = self.sender.send(data)  # full buffer, unreachable: the next period retries
        if errors:
            log.debug("%d of %d sends failed: %s", errors, len(self.dests),
                      self.sender.last_error)  # fmt: skip
        self.stats["sent"] += len(self.dests) - errors
        self.stats["send_errors"] += errors

    def gossip_round(self, now: float) -> None:
        """Gossip mode: measure, then this round's datagrams to ``fanout`` members."""
        self._log_events(self.gossip.set_self(self.measure(now), now))
        self._log_events(self.table.tick(now))
        assert self.udp is not None
        port, sendto = self.cfg.gossip_port, self.udp.sendto
        for out in self.gossip.round(now, int(time.time() * 1000)):
            try:
                sendto(out.data, (out.address, port))
                self.stats["sent"] += 1
            except OSError as e:  # full buffer, unreachable: other members, other rounds
                self.stats["send_errors"] += 1
                log.debug("send to %s: %s", out.name, e)

    def round_interval(self) -> float:
        return self.cfg.period / self.gossip.params.rounds

    def rx_interval(self) -> float:
        """How often the gossip sockets are drained: every round, at least once every
        RX_MAX_INTERVAL, and (broadcast mode, where every member's report comes here
        each period) often enough that one interval's reports fill at most RX_FILL
        of the socket's receive buffer (4 MiB as root; net.core.rmem_max otherwise).
        With gossip what comes in does not depend on the number of members."""
        period = self.cfg.period
        interval = min(self.round_interval(), RX_MAX_INTERVAL)
        if self.broadcast:
            n = max(1, len(self.table.members))
            interval = min(interval, period * self.rx_buffer * RX_FILL / RX_TRUESIZE / n)
        return max(0.01, interval)

    def on_timer(self) -> None:
        """The daemon's one timer: drain the gossip sockets, gossip when due, re-arm.

        No reader callbacks: one wake-up reads a whole batch (one clock read,
        no epoll_ctl) and the round's datagrams go out from the same wake-up.
        """
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        try:
            self.drain_all(now)
            if now >= self.next_send:
                self.next_send = now + self.round_interval() * self.rng.uniform(0.9, 1.1)
                self.stats["rounds"] += 1
                try:
                    if not self.broadcast:
                        self.gossip_round(now)
                    elif now >= self.next_broadcast:
                        self.next_broadcast = now + self.cfg.period * self.rng.uniform(0.9, 1.1)
                        self.send_report(now)
                        self._log_events(self.table.tick(now))
                    else:
                        self._log_events(self.table.tick(now))
                except Exception:  # ...nor one bad round the reports
                    log.exception("dshd: sending the report failed")
        finally:
            if not self.closed:
                at = min(now + self.rx_interval(), self.next_send)
                self.timer = loop.call_at(at, self.on_timer)

    def drain_all(self, now: float) -> None:
        """Take every datagram that has arrived (the timer, and before answering a query)."""
        try:
            for rx in self.rx:
                self.drain(rx, now)
        except Exception:  # never let one bad batch stop the daemon
            log.exception("dshd: reading reports failed")
        self.last_drain = now

    def drain(self, rx: MultiReceiver, now: float) -> None:
        """Read every queued datagram; each is dated by the kernel's arrival stamp
        (the ages of relayed reports count the time it waited in the socket).
        A report sent alone (version 2: broadcast mode, N of them a period) takes
        the lean path Gossip.on_datagram takes for it, inlined here."""
        on_datagram, recv = self.gossip.on_datagram, rx.recv
        decode, receive, secret = P.decode, self.table.receive, self.loaded.secret
        self_name, version = self.table.self_name, P.VERSION
        wall = time.time()
        waited_max = max(0.0, now - self.last_drain) + 0.05  # a wall clock step is no wait
        n = own = 0
        try:
            for _ in range(1000):  # a bound, not a limit in practice: the buffer holds less
                try:
                    batch = recv()
                except OSError as e:
                    log.debug("recvmmsg: %s", e)
                    return
                n += len(batch)
                for data, src, stamp in batch:
                    if len(data) > 4 and data[4] == version:
                        try:
                            report = decode(data, secret)
                        except P.PacketError as e:
                            self.stats["bad"] += 1
                            self._reject(f"{src}: {e}", now)
                            continue
                        if report.name == self_name:
                            own += 1  # our broadcast coming back (or a fake: ignored too)
                            continue
                        events = receive(report, src, now, data)
                    else:
                        at = now if stamp is None else now - min(max(0.0, wall - stamp),
                                                                 waited_max)  # fmt: skip
                        events = on_datagram(data, src, at)
                    if events:
                        self._log_events(events)
                if len(batch) < rx.slots:  # the queue is empty
                    return
        finally:
            self.stats["received"] += n
            self.stats["own"] += own

    def _reject(self, what: str, now: float) -> None:
        self.stats["rejected"] += 1
        if now - self._last_reject_log > 10.0:  # a flood must not flood the log
            self._last_reject_log = now
            log.warning("ignored packet %s (%d ignored so far)", what, self.stats["rejected"])
        else:
            log.debug("ignored packet %s", what)

    def _log_events(self, events: list[S.Event]) -> None:
        for e in events:
            kind = e.kind
            if kind == "up":  # partial view: members come and go with the gossip
                log.log(logging.INFO if self.full_view or e.detail else logging.DEBUG,
                        "member %s is up%s", e.name, f" ({e.detail})" if e.detail else "")  # fmt: skip
            elif kind == "down":
                log.log(logging.WARNING if self.full_view else logging.DEBUG,
                        "member %s is down: %s", e.name, e.detail)  # fmt: skip
            elif kind == "own":
                self.stats["own"] += 1  # our broadcast coming back (or a fake: ignored too)
            elif kind == "bad":
                self.stats["bad"] += 1
                self._reject(f"{e.name}: {e.detail}", time.monotonic())
            else:
                self._reject(f"from {e.name!r}: {e.detail}", time.monotonic())

    # ---- TCP queries
    #
    # The daemon accepts by itself (ACCEPT_BATCH a wake-up) so that every
    # connection meets the admission table (admission.py) the moment it is
    # accepted: an unauthenticated peer holds a slot for at most
    # HANDSHAKE_TIMEOUT (with a secret) or REQUEST_WAIT (without one) and is shed
    # first when the table is full; a shed or refused connection reads
    # "error busy", never zero bytes. Open TCP connections: at most
    # MAX_CONNECTIONS + ACCEPT_BATCH (shed ones close when their task next runs;
    # until then nothing more is accepted).

    def _on_accept(self, lsock: socket.socket, serve) -> None:  # type: ignore[no-untyped-def]
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
            conn = self.conns[key] = _Conn(key, sock, peer[0])
            conn.task = loop.create_task(self._serve(conn, serve))  # held: not collected

    def _accept_failed(self, lsock: socket.socket, serve, e: OSError) -> None:  # type: ignore[no-untyped-def]
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

    def _listen_again(self, lsock: socket.socket, serve) -> None:  # type: ignore[no-untyped-def]
        if not self.closed and lsock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(lsock, self._on_accept, lsock, serve)

    async def _serve(self, conn: _Conn, serve) -> None:  # type: ignore[no-untyped-def]
        """One admitted connection: serve it, close it, free its slot."""
        try:
            answer = await asyncio.wait_for(serve(conn), QUERY_TIMEOUT)
            secret = self.loaded.secret
            if answer and conn.sign is not None and secret is not None:
                answer = P.sign_answer(secret, *conn.sign, answer)
            if answer and not conn.shed:
                await asyncio.wait_for(self._send(conn, answer), QUERY_TIMEOUT)
        except (TimeoutError, OSError, ValueError) as e:  # slow, gone, or too long a line
            log.debug("query: %s", e)
        finally:
            del self.conns[conn.key]
            self.admission.done(conn.key)
            conn.sock.close()  # an answer not sent by now is dropped: no fd kept

    async def _send(self, conn: _Conn, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(conn.sock, data)

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

    async def _challenge(self, conn: _Conn, purpose: str) -> str | None:
        """With a secret: challenge, check the answer; return the request word or None
        (then an error line has been sent, or the connection was shed)."""
        secret = self.loaded.secret
        assert secret is not None
        nonce = secrets.token_hex(16)
        await self._send(conn, f"auth {nonce}\n".encode())
        try:
            raw = await asyncio.wait_for(_read_line(conn.sock), HANDSHAKE_TIMEOUT)
        except TimeoutError:
            self.stats["handshake_timeouts"] += 1
            conn.answered = True
            await self._send(conn, f"error no answer to the challenge within "
                                   f"{HANDSHAKE_TIMEOUT:g} s\n".encode())  # fmt: skip
            return None
        if conn.shed:  # shut down under it to make room: it has read "error busy"
            return None
        line = raw.decode(errors="replace")
        ok, word = P.check_query(secret, purpose, nonce, line)
        if not ok:
            self.stats["refused"] += 1
            conn.answered = True
            await self._send(conn, b"error authentication failed\n")
            return None
        self.admission.serving(conn.key)
        cnonce = P.query_cnonce(line)
        if cnonce is not None:  # the client checks who answers: sign the answer
            conn.sign = (purpose, nonce, cnonce)
        return word

    async def serve_status(self, conn: _Conn) -> bytes:
        """The status port: the table, as text or (``json``) JSON."""
        if self.loaded.secret is not None:
            word = await self._challenge(conn, "status")
            if word is None:
                return b""
        else:
            try:
                line = await asyncio.wait_for(_read_line(conn.sock), REQUEST_WAIT)
                word = line.decode(errors="replace").strip()
            except TimeoutError:
                word = ""
            if conn.shed:
                return b""
        now = time.monotonic()
        self.drain_all(now)  # the answer includes every report that has arrived
        self._log_events(self.table.tick(now))  # ...and no member past its expiry
        # "json": every member; "top" (beo top) and text: in a partial view only those up
        snap = self.snapshot(now, all_members=word == "json")
        snap["stats"] = dict(self.stats, **self.gossip.stats, connections=len(self.conns),
                             unauthenticated=self.admission.pending())  # fmt: skip
        conn.answered = True
        if word in ("json", "top"):
            return json.dumps(snap).encode() + b"\n"
        return S.format_status(snap).encode()

    async def serve_best(self, conn: _Conn) -> bytes:
        """The best port: the best member's line, and the extra-load bump on it."""
        if self.loaded.secret is not None and await self._challenge(conn, "best") is None:
            return b""
        now = time.monotonic()
        self.drain_all(now)  # decide on every report that has arrived
        self._log_events(self.table.tick(now))
        m = self.table.best(now)
        conn.answered = True
        if m is None:  # cannot happen while we run: this node is always up
            return b"error no member up\n"
        score = float(self.table.score(m, self.table.extra_load, now))
        self.table.bump(m, now)
        self.stats["best"] += 1
        local = m.name == self.table.self_name
        log.debug("best: %s (score %.3f)", m.name, score)
        return P.format_best(m.name, m.address, score, local).encode()

    # ---- main
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        assert self.udp is not None
        cache = 4096 + len(self.table.members)  # every member's address, and room
        stamps = not self.broadcast  # the ages of relayed reports (reports come direct else)
        self.rx = [MultiReceiver(s, cache=cache, stamps=stamps)
                   for s in [self.udp, *self.extra_udp]]  # fmt: skip
        self.rx_buffer = min(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) for s in
                             [self.udp, *self.extra_udp])  # fmt: skip
        status, best = self._tcp
        loop.add_reader(status, self._on_accept, status, self.serve_status)
        loop.add_reader(best, self._on_accept, best, self.serve_best)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.dump)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        log.info("dshd %s: %d members, bind %s, UDP %d, status %d, best %d, period %g s%s",
                 self.table.self_name, len(self.table.members), self.cfg.bind,
                 self.cfg.gossip_port, self.cfg.status_port, self.cfg.best_port,
                 self.cfg.period, ", authenticated" if self.loaded.secret else "")  # fmt: skip
        self.next_send = self.last_drain = time.monotonic()
        self.timer = loop.call_soon(self.on_timer)
        try:
            await self.stop_event.wait()
        finally:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
            for t in self._tcp:
                loop.remove_reader(t)
            self.close()
            log.info("dshd %s: stopped", self.table.self_name)


def _check_user(user: str) -> int:
    import pwd

    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise UsageError(f"bad --user {user!r}: no such user") from None
    if os.getuid() != uid and os.geteuid() != 0:
        raise UsageError(f"bad --user {user!r}: only root can change user")
    return uid


def _drop_privileges(user: str) -> None:
    import grp
    import pwd

    pw = pwd.getpwnam(user)
    if os.getuid() == pw.pw_uid:
        return
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    os.setgroups(groups)
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)


def _daemonize(print_pid: bool) -> None:
    """Fork to the background (double fork, new session, stdio on /dev/null)."""
    r, w = os.pipe()
    if os.fork() > 0:  # the command's process: report the daemon's pid, exit
        os.close(w)
        pid = os.read(r, 32).decode().strip()
        if print_pid and pid:
            print(pid, flush=True)
        os._exit(0)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.write(w, f"{os.getpid()}\n".encode())
    os.close(w)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def setup_logging(path: str | None, verbose: int, background: bool) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if path:
        handler: logging.Handler = logging.FileHandler(path)
    elif background and os.path.exists("/dev/log"):
        from logging.handlers import SysLogHandler

        handler = SysLogHandler("/dev/log")
    else:
        handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s dshd[%(process)d] %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger("beokit.dshd")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _abs(path: str | None) -> str | None:
    return os.path.abspath(path) if path else path


def main(args: argparse.Namespace) -> int:
    # absolute paths: -b changes to / and SIGHUP re-reads from there
    cfg = Config(
        cluster_file=os.path.abspath(args.cluster_file), bind=args.bind, name=args.name, period=args.period,
        expire=args.expire, extra_load=args.extra_load, score=args.score,
        send_to=list(args.send_to), load_file=_abs(args.load_file), jobs_dir=os.path.abspath(args.jobs_dir),
        secret_file=_abs(args.secret_file), gossip_port=args.gossip_port,
        status_port=args.status_port, best_port=args.best_port, fanout=args.fanout,
    )  # fmt: skip
    try:
        ipaddress.IPv4Address(cfg.bind)
    except ValueError:
        raise UsageError(f"bad --bind address {cfg.bind!r}") from None
    if args.status_port == args.best_port:
        raise UsageError(f"bad --best-port {args.best_port}: same as the status port")
    if args.log:
        try:
            open(args.log, "a").close()
        except OSError as e:
            raise UsageError(f"bad --log file {args.log!r}: {e.strerror}") from None
    user = args.user or ("nobody" if args.background and os.geteuid() == 0 else None)
    if user:
        _check_user(user)
    loaded = load_config(cfg)
    daemon = Daemon(cfg, loaded)
    daemon.bind()
    # the log is opened first: after dropping root it may not be writable any more
    setup_logging(_abs(args.log), args.verbose + 1, args.background)
    if user:
        try:
            _drop_privileges(user)
        except BaseException:
            daemon.close()
            raise
    if args.background:
        _daemonize(args.print_pid)
    try:
        asyncio.run(daemon.run())
    except Exception:
        log.exception("dshd: crashed")
        raise
    return EXIT_OK
