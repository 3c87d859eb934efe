"""``beo dshd``'s gossip driver: one timer that drains the UDP sockets and sends the rounds.

Around the pure state machine (:mod:`beokit.dsh.gossip` and
:mod:`beokit.dsh.state`): every round it measures this node, sends what the
gossip says to send (or, in broadcast mode, once a period the same report to
every ``--send-to`` group), and feeds every datagram that arrived, dated by
the kernel's arrival stamp, to the state machine; the events that come back
are counted and logged (rejections at most every 10 s).

The sockets are read and written a batch at a time through
:class:`beokit.udp.UdpBatch` (``recvmmsg``/``sendmmsg``, one call per datagram
where they are missing).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time

from beokit.dsh import packet
from beokit.dsh.config import DshdConfig
from beokit.dsh.gossip import Gossip
from beokit.dsh.measure import LoadMeter
from beokit.dsh.state import MemberEvent, Table
from beokit.udp import UdpBatch

log = logging.getLogger("beokit.dshd")

RX_MAX_INTERVAL = 1.0  # the gossip sockets are drained every round, and at least once a second
RX_FILL = 0.5  # ...and before the socket buffer is this full (broadcast mode: N a period)
RX_TRUESIZE = 1024  # kernel memory per queued report (measured: 832 bytes on loopback)
RX_BATCH = 512  # datagrams per recvmmsg
RX_SIZE = 2048  # > packet.MAX_DATAGRAM and an Ethernet frame: a valid datagram is never cut
NAMES = 4096  # source addresses kept as text, besides one per member


class GossipRounds:
    """The daemon's UDP side: its timer, its receive batches, its sends."""

    def __init__(self, cfg: DshdConfig, table: Table, gossip: Gossip, meter: LoadMeter,
                 stats: dict[str, int], rng: random.Random) -> None:  # fmt: skip
        self.cfg, self.table, self.gossip, self.meter = cfg, table, gossip, meter
        self.stats = stats  # the daemon's counters: this counts sent, received, rejected...
        self.rng = rng
        self.udp: socket.socket | None = None
        self.rx: list[UdpBatch] = []
        self.rx_buffer = 1 << 20
        self.dests: list[tuple[str, int]] = []
        self.next_send = 0.0  # the next round
        self.next_broadcast = 0.0  # broadcast mode: the next period's report
        self.last_drain = 0.0
        self.timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self.closed = False
        self._last_reject_log = 0.0

    # ---- configuration
    @property
    def broadcast(self) -> bool:
        """--send-to: each period's report to the groups, no gossip (the old way)."""
        return bool(self.cfg.send_to)

    @property
    def full_view(self) -> bool:
        """Does every member's report reach this daemon each period (see gossip.py)?"""
        return self.broadcast or self.gossip.full_view

    def attach(self, sockets: list[socket.socket]) -> None:
        """Read these sockets (the first also sends) a batch at a time; the arrival
        stamps only where relayed reports need them (gossip, not broadcast mode)."""
        names = NAMES + self.table.size  # every member's address, and room
        self.udp = sockets[0]
        self.rx = [UdpBatch(s, batch=RX_BATCH, size=RX_SIZE, timestamps=not self.broadcast,
                            names=names) for s in sockets]  # fmt: skip
        self.rx_buffer = min(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) for s in sockets)
        self.set_targets()

    def set_targets(self) -> None:
        """Broadcast mode: the groups each period's report goes to (packed once)."""
        self.dests = [(a, self.cfg.gossip_port) for a in self.cfg.send_to]
        if self.rx:
            self.rx[0].set_destinations(self.dests)

    def start(self) -> None:
        self.next_send = self.last_drain = time.monotonic()
        self.timer = asyncio.get_running_loop().call_soon(self.on_timer)

    def stop(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()

    # ---- the timer
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
            n = max(1, self.table.size)
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
                    self._round(now)
                except Exception:  # ...nor one bad round the reports
                    log.exception("dshd: sending the report failed")
        finally:
            if not self.closed:
                at = min(now + self.rx_interval(), self.next_send)
                self.timer = loop.call_at(at, self.on_timer)

    def _round(self, now: float) -> None:
        if not self.broadcast:
            self.gossip_round(now)
        elif now >= self.next_broadcast:
            self.next_broadcast = now + self.cfg.period * self.rng.uniform(0.9, 1.1)
            self.send_report(now)
            self.log_events(self.table.tick(now))
        else:
            self.log_events(self.table.tick(now))

    # ---- sending
    def measure(self, now: float) -> packet.Report:
        return self.meter.report(self.table.self_name, now)

    def send_report(self, now: float) -> None:
        """Broadcast mode: measure, encode once, send the same bytes to every group."""
        self.log_events(self.gossip.set_self(self.measure(now), now))
        data = self.table.members[self.table.self_name].raw
        assert self.rx and data is not None
        tx = self.rx[0]
        errors = tx.send_all(data)  # full buffer, unreachable: the next period retries
        if errors:
            log.debug("%d of %d sends failed: %s", errors, len(self.dests), tx.last_error)
        self.stats["sent"] += len(self.dests) - errors
        self.stats["send_errors"] += errors

    def gossip_round(self, now: float) -> None:
        """Gossip mode: measure, then this round's datagrams to ``fanout`` members."""
        self.log_events(self.gossip.set_self(self.measure(now), now))
        self.log_events(self.table.tick(now))
        assert self.udp is not None
        port, sendto = self.cfg.gossip_port, self.udp.sendto
        for out in self.gossip.round(now, int(time.time() * 1000)):
            try:
                sendto(out.data, (out.address, port))
                self.stats["sent"] += 1
            except OSError as e:  # full buffer, unreachable: other members, other rounds
                self.stats["send_errors"] += 1
                log.debug("send to %s: %s", out.name, e)

    # ---- receiving
    def catch_up(self, now: float) -> None:
        """Before an answer: every report that has arrived taken, no member past its
        expiry."""
        self.drain_all(now)
        self.log_events(self.table.tick(now))

    def drain_all(self, now: float) -> None:
        """Take every datagram that has arrived (the timer, and before answering a query)."""
        try:
            for rx in self.rx:
                self.drain(rx, now)
        except Exception:  # never let one bad batch stop the daemon
            log.exception("dshd: reading reports failed")
        self.last_drain = now

    def drain(self, rx: UdpBatch, now: float) -> None:
        """Read every queued datagram; each is dated by the kernel's arrival stamp
        (the ages of relayed reports count the time it waited in the socket).
        A report sent alone (version 2: broadcast mode, N of them a period) takes
        the lean path Gossip.on_datagram takes for it, inlined here."""
        on_datagram, recv, received, batch = self.gossip.on_datagram, rx.recv, rx.received, rx.batch
        decode, receive, secret = packet.decode, self.table.receive, self.gossip.secret
        self_name, version, error = self.table.self_name, packet.VERSION, packet.PacketError
        wall = time.time()
        waited_max = max(0.0, now - self.last_drain) + 0.05  # a wall clock step is no wait
        n = own = 0
        try:
            for _ in range(1000):  # a bound, not a limit in practice: the buffer holds less
                try:
                    k = recv()
                except OSError as e:
                    log.debug("recvmmsg: %s", e)
                    return
                n += k
                for data, (src, _port), stamp in received(k):
                    if len(data) > 4 and data[4] == version:
                        try:
                            report = decode(data, secret)
                        except error as e:
                            self.stats["bad"] += 1
                            self.reject(f"{src}: {e}", now)
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
                        self.log_events(events)
                if k < batch:  # the queue is empty
                    return
        finally:
            self.stats["received"] += n
            self.stats["own"] += own

    # ---- what the state machine says
    def reject(self, what: str, now: float) -> None:
        self.stats["rejected"] += 1
        if now - self._last_reject_log > 10.0:  # a flood must not flood the log
            self._last_reject_log = now
            log.warning("ignored packet %s (%d ignored so far)", what, self.stats["rejected"])
        else:
            log.debug("ignored packet %s", what)

    def log_events(self, events: list[MemberEvent]) -> None:
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
                self.reject(f"{e.name}: {e.detail}", time.monotonic())
            else:
                self.reject(f"from {e.name!r}: {e.detail}", time.monotonic())
