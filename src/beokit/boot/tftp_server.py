"""The TFTP side of ``beo boot``: read requests, transfers, pacing and timers.

The I/O driver of the pure state machine ``tftp.Transfer``.  A read request
(from the TFTP port's listener) opens its file (``files.open_served``, shared
snapshots), becomes a :class:`~beokit.boot.tftp_sessions.Session` in the
:class:`~beokit.boot.tftp_sessions.SessionTable`, and every datagram after
it goes through the one transfer socket (``tftp_socket.TransferSocket``):
:meth:`TftpServer.on_transfers` reads its ACKs a batch at a time, lets each
transfer choose its blocks and queues them for one ``sendmmsg``.  With a
bandwidth cap the ready transfers take turns from a token bucket (``fair``:
round robin, one packet each); without one, the transfers running well ahead
of the others are held back a tick while the server is behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable

from beokit.boot import fair, paths, tftp, tftp_socket
from beokit.boot.config import BootConfig
from beokit.boot.counters import Counters
from beokit.boot.files import FileTable, NetasciiRefused, OpenFile
from beokit.boot.tftp_sessions import MAX_UNCONFIRMED, STALL, Session, SessionTable
from beokit.boot.tftp_socket import ACK_SLOT, ACK_SLOTS, HEADER_ADDR, HEADER_VIEW, SLOT

FAST_ACKS = None  # beokit.boot._lockstep.acks, where it was built (see tftp.StateBase)
if tftp.COMPILED:
    from beokit.boot._lockstep import SLOT as _C_SLOT
    from beokit.boot._lockstep import acks as FAST_ACKS

    if _C_SLOT != SLOT:
        FAST_ACKS = None  # a stale build: the Python path

log = logging.getLogger("beokit.boot")
TICK = 0.1  # seconds between accounting ticks
DRAIN_ROUNDS = 4  # recvmmsg batches per loop callback (DHCP and DNS get their turn between)
BUSY_ACKS = 2  # ACKs per batch read, on average over a tick: the server is behind


class TftpServer:
    """Every TFTP transfer of the server.  ``open_file`` gives a requested name's
    file (``files.open_served`` with the current config); ``bucket`` and ``load``
    are the bandwidth budget shared with HTTP."""

    def __init__(self, cfg: BootConfig, stats: Counters, files: FileTable,
                 open_file: Callable[[str], OpenFile], bucket: fair.TokenBucket,
                 load: fair.Load) -> None:  # fmt: skip
        self.stats = stats
        self.files = files
        self.open_file = open_file
        self.bucket = bucket
        self.load = load
        self.table = SessionTable()
        self.sessions = self.table.sessions  # key -> session (the table's own dict)
        self.rr = fair.RoundRobin()
        self.parked: set[int] = set()  # transfers held back for a tick (fairness)
        self.polls = self.polled = 0  # batches read with ACKs waiting, and those ACKs
        self.stalled_now = 0  # stalled() as of the last tick (DHCP reads it per datagram)
        self.tx: tftp_socket.TransferSocket | None = None  # the transfers' shared socket (start opens it)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pump_handle: asyncio.TimerHandle | None = None
        self.configure(cfg)

    def configure(self, cfg: BootConfig) -> None:
        """Take the settings of a (re-read) config; transfers in flight keep theirs."""
        self.limits = tftp.Limits(cfg.max_blksize, cfg.max_windowsize, cfg.tftp_timeout,
                                  cfg.tftp_retries)  # fmt: skip
        self.fair = cfg.fair

    def start(self, loop: asyncio.AbstractEventLoop, bind: str) -> None:
        self.loop = loop
        self.tx = tftp_socket.TransferSocket(bind)
        loop.add_reader(self.tx.fd, self.on_transfers)

    def stop(self) -> None:
        """End every transfer and close the transfer socket."""
        if self.pump_handle is not None:
            self.pump_handle.cancel()
        for ss in list(self.table):
            ss.xfer.fail("server stopping")
            self.end_session(ss)
        if self.tx is not None:
            if self.loop is not None:
                self.loop.remove_reader(self.tx.fd)
            self.tx.close()

    # -- requests ------------------------------------------------------------
    def error(self, s: socket.socket, dest: tuple[str, int], code: int, msg: str) -> None:
        with contextlib.suppress(OSError):
            s.sendto(tftp.build_error(code, msg), dest)

    def on_request(self, listener: socket.socket, data: bytes, src: tuple[str, int]) -> None:
        """A datagram to the TFTP port: a read request starts a transfer."""
        self.stats.count("tftp-in")
        try:
            msg = tftp.parse(data)
        except tftp.TftpError as e:
            self.stats.count("tftp-malformed")
            log.debug("TFTP from %s: %s", src, e)
            return
        if not isinstance(msg, tftp.Request):
            return  # stray ACK/DATA to port 69: ignore (RFC 1350 says TID errors elsewhere)
        if msg.opcode == tftp.WRQ:
            self.error(listener, src, tftp.E_ACCESS, "read-only server")
            return
        if msg.mode != "octet" and msg.mode != "netascii":
            self.error(listener, src, tftp.E_ILLEGAL, "unsupported mode")
            return
        busy = self._refuse_transfer(src)
        if busy:
            self.stats.count("tftp-busy")
            self.error(listener, src, tftp.E_UNDEF, busy)
            return
        f = self._open(listener, msg, src)
        if f is not None:
            self._begin(msg, src, f)

    def _open(self, listener: socket.socket, msg: tftp.Request,
              src: tuple[str, int]) -> OpenFile | None:  # fmt: skip
        """The requested file (converted for netascii), or None: an ERROR went back."""
        try:
            f = self.open_file(msg.filename)
            if msg.mode == "netascii":
                f = self.files.netascii(f)
            return f
        except paths.PathRefused as e:
            self.stats.warn("tftp-refused", "TFTP %s:%d refused: %s", src[0], src[1], e)
            self.stats.count("tftp-refused")
            self.error(listener, src, tftp.E_ACCESS, "access violation")
        except NetasciiRefused as e:
            self.stats.count("tftp-netascii-refused")
            self.error(listener, src, tftp.E_UNDEF, str(e))
        except FileNotFoundError:
            log.info("TFTP %s:%d: %r not found", src[0], src[1], msg.filename)
            self.error(listener, src, tftp.E_NOTFOUND, "file not found")
        except OSError as e:
            self.stats.warn("tftp-unreadable", "TFTP %s:%d %r: %s", src[0], src[1],
                            msg.filename, e.strerror)  # fmt: skip
            self.error(listener, src, tftp.E_ACCESS, "cannot read file")
        return None

    def _begin(self, msg: tftp.Request, src: tuple[str, int], f: OpenFile) -> None:
        now = time.monotonic()
        accepted = tftp.negotiate(msg.options, f.size, self.limits)
        xfer = tftp.Transfer(f.size, msg.options, accepted, self.limits, now)
        assert self.tx is not None
        ss = Session(self.tx.sock, src, msg.filename, f, xfer, now)
        old = self.table.get(ss.key)
        if old is not None:  # the same client port asks again: it lost our first reply
            old.xfer.fail("restarted by a new request")
            self.end_session(old)
        if len(self.table.unconfirmed) >= MAX_UNCONFIRMED:
            for gone in self.table.overflow(MAX_UNCONFIRMED - 1):
                gone.xfer.fail("pushed out by newer requests (no ACK yet)")
                self.stats.count("tftp-pushed-out")
                self.end_session(gone)
        self.table.add(ss)
        self.stats.count("tftp-transfers")
        log.info("TFTP %s:%d <- %s (%d bytes, %s)", src[0], src[1], msg.filename, f.size,
                 accepted or "no options")  # fmt: skip
        self.make_ready(ss)

    def _refuse_transfer(self, src: tuple[str, int]) -> str:
        """Why a new request from ``src`` is refused now ("" = it is not); pushes out
        the transfer that makes room for it, if one has to go."""
        why, victim = self.table.refusal(src)
        if victim is not None:
            victim.xfer.fail("pushed out by newer requests from its address (no ACK yet)")
            self.stats.count("tftp-pushed-out")
            self.end_session(victim)
        return why

    # -- sending, one datagram at a time (a cap, parked transfers, no sendmmsg) ----------
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
            key = self.rr.pop()
            ss = self.sessions.get(key)  # type: ignore[arg-type]
            if ss is None:
                continue
            b = ss.xfer.ready()
            if b is None:
                continue
            need = (ss.xfer.block_range(b)[1] + 4) if b else 64
            if not self.bucket.take(need, now):
                self.load.ran_dry()
                self.rr.push_front(key)
                break
            self._send_block(ss, b, now)
            if ss.xfer.failed:
                self.end_session(ss)
            elif ss.xfer.ready() is not None:
                self.rr.push(key)
        if len(self.rr):
            assert self.loop is not None
            self.pump_handle = self.loop.call_later(max(self.bucket.wait_for(need), 0.001),
                                                    self.pump)  # fmt: skip

    # -- the transfer socket, a batch at a time --------------------------------------------
    def on_transfers(self) -> None:
        """Every transfer's ACKs arrive on the one transfer socket: read them a
        batch at a time (``recvmmsg``), choose the blocks each allows
        (``Transfer.ack_take``), queue the ready DATA datagrams and send them
        with one ``sendmmsg`` per batch. Bytes and packets are counted per tick
        from the transfers' own counters, not per packet.

        Nearly every datagram of a busy server is a lock-step client's ACK of
        the block it was sent last: ``Transfer.step`` answers it without
        ``ack_take``'s cases (``Transfer.expect`` says when), in C where
        :mod:`beokit.boot._lockstep` was built (:data:`FAST_ACKS`), else
        inline in :meth:`_lockstep`; :meth:`_on_slot` takes every other datagram.
        """
        tx = self.tx
        assert tx is not None
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
            if free and FAST_ACKS is not None:
                self._compiled(tx, n, now)
            else:
                tx.n = self._lockstep(tx, n, now, free)
            self._flush()

    def _compiled(self, tx: tftp_socket.TransferSocket, n: int, now: float) -> None:
        """The batch through the compiled lock-step path, Python taking every datagram
        it stops at."""
        i, j = 0, tx.n
        while True:
            i, j = FAST_ACKS(tx.slots, tx.rhdr, tx.shdr, tx.siov, i, n, j, tx.batch,
                             self.sessions, self.parked, HEADER_ADDR, tx.keep, now)  # fmt: skip
            if i >= n:
                break
            key, op, block = ACK_SLOT.unpack_from(tx.view, SLOT * i)
            j = self._on_slot(i, key, op, block, j, now, True)
            i += 1
        tx.n = j

    def _lockstep(self, tx: tftp_socket.TransferSocket, n: int, now: float, free: bool) -> int:
        """The batch in Python: lock-step ACKs answered inline (``Transfer.step``), every
        other datagram by :meth:`_on_slot`; returns the length of the send queue."""
        sessions, parked, on_slot, batch = self.sessions, self.parked, self._on_slot, tx.batch
        sq, iq, hb = tx.sq, tx.iq, HEADER_ADDR
        j = tx.n
        keep = tx.keep.append
        lens = tx.rlen[14 : n * 16 : 16]  # each datagram's length
        for i, (key, op, block) in enumerate(ACK_SLOTS.iter_unpack(tx.view[: n * SLOT])):
            ss = sessions.get(key)
            if (ss is None or not free or block != ss.xfer.expect or lens[i] != 4
                    or op != tftp.ACK or j == batch or not ss.base
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
        return j

    def _on_slot(self, i: int, key: int, op: int, block: int, j: int, now: float,
                 free: bool) -> int:  # fmt: skip
        """Received datagram ``i`` of the transfer socket, anything but a lock-step ACK
        ready to answer at once; returns the new length of the send queue (which it
        may have flushed)."""
        tx = self.tx
        assert tx is not None
        ss = self.sessions.get(key)
        if ss is None:
            self.stats.count("tftp-stray")  # not a transfer (or one that ended): ignore
            return j
        if op != tftp.ACK or tx.rlen[i * 16 + 14] != 4:
            tx.n = j
            self._on_datagram(ss, tx.payload(i), now)
            return tx.n
        parked = self.parked
        if not ss.base or not free or (parked and key in parked):  # a cap, parked, pread
            ss.xfer.on_ack(block, now)
            if ss.xfer.done:
                self.end_session(ss)
            elif key not in parked:
                self.make_ready(ss)  # (sends at once or through the round robin, not the queue)
            return j
        r = ss.xfer.ack_take(block, now)
        if not r:
            if ss.xfer.done:
                self.end_session(ss)
            return j
        return self._queue_window(ss, r, j)

    def _queue_window(self, ss: Session, blocks: range, j: int) -> int:
        """Queue the blocks a window allows (it may fill the queue on the way: then it
        is sent); returns the new length of the send queue."""
        tx = self.tx
        assert tx is not None
        x = ss.xfer
        sq, iq, hb, base = tx.sq, tx.iq, HEADER_ADDR, ss.base
        bs, size = x.blksize, x.size
        for b in blocks:
            if j == tx.batch:
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
        for owner, left, err in self.tx.flush():
            ss: Session = owner  # type: ignore[assignment]  (every owner queued is a session)
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
                self.stats.count("tftp-malformed")
                return
            if isinstance(msg, tftp.Ack):
                x.on_ack(msg.block, now)
            elif isinstance(msg, tftp.Error):
                x.fail(f"client error {msg.code}: {msg.message}")
            else:
                self.error(ss.sock, ss.peer, tftp.E_ILLEGAL, "expected an ACK")
        if x.done or x.failed:
            self.end_session(ss)
        elif ss.key in self.parked:
            return  # ahead of the others: its next block goes out at the next tick
        else:
            self.make_ready(ss)

    def end_session(self, ss: Session) -> None:
        if not self.table.remove(ss):
            return
        self.files.close(ss.file)
        self.rr.discard(ss.key)
        self.parked.discard(ss.key)
        x = ss.xfer
        self.load.count(x.bytes_sent - ss.counted_bytes, x.packets_sent - ss.counted_packets)
        secs = max(time.monotonic() - ss.started, 1e-6)
        if not x.done and not x.confirmed:  # (a forged request, or a client gone at once)
            self.stats.count("tftp-unconfirmed-ended")
            log.debug("TFTP %s:%d %s ended unconfirmed: %s", ss.peer[0], ss.peer[1], ss.name,
                      x.failed or "stopped")  # fmt: skip
        elif x.done:
            self.stats.count("tftp-done")
            log.info("TFTP %s:%d %s: %d bytes in %.2f s (%.1f MB/s, %d retransmits)",
                     ss.peer[0], ss.peer[1], ss.name, x.size, secs, x.size / secs / 1e6,
                     x.retransmits)  # fmt: skip
        else:
            self.stats.count("tftp-failed")
            self.stats.warn("tftp-failed", "TFTP %s:%d %s failed: %s", ss.peer[0], ss.peer[1],
                            ss.name, x.failed or "stopped")  # fmt: skip

    # -- every tick ------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Accounting, fairness, stalls, and the retransmission timers."""
        self.account()
        self.load.tick()
        self.rebalance(now)
        self.stalled_now = self.table.stalled(now)
        for ss in list(self.table):
            x = ss.xfer
            if now >= x.deadline and not x.done:
                if x.on_timer(now):
                    self.stats.count("tftp-retransmits")
                    self.make_ready(ss)
                else:
                    self.end_session(ss)

    def account(self) -> None:
        """Per-tick accounting: what each transfer sent since the last tick."""
        nbytes = npackets = 0
        for ss in self.table:
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
            self.stats.count("tftp-reads", polls)
            self.stats.count("tftp-read-datagrams", polled)
        if self.bucket.rate > 0:
            return self.load.saturation > 0
        return polls > 0 and polled >= BUSY_ACKS * polls

    def rebalance(self, now: float) -> None:
        """Each tick: park the transfers running well ahead of the median, release the rest."""
        busy = self.busy()
        parked: set = set()
        if self.fair and busy and len(self.sessions) > 1:
            progress = {}
            for key, ss in self.sessions.items():
                x = ss.xfer
                age = now - ss.started
                progress[key] = (x.bytes_sent / max(age, 1e-3), age,
                                 now - x.last_progress > STALL)  # fmt: skip
            parked = fair.parked(progress)
        released = self.parked - parked
        self.parked = parked
        for key in released:
            ss = self.sessions.get(key)
            if ss is not None:
                self.make_ready(ss)

    def state(self, now: float) -> dict:
        """The transfers and the load, for ``beo boot status``."""
        return {
            "transfers": self.table.rows(now),
            "tick": {
                "saturation": self.load.saturation,
                "stalled": self.table.stalled(now),
                "bytes_total": self.load.total_bytes,
                "packets_total": self.load.total_packets,
            },
            "unconfirmed": sum(1 for ss in self.table if not ss.xfer.confirmed),
        }
