"""``beo dshd``: the load daemon (asyncio; UDP gossip, TCP status and best ports).

A coordinator: it holds the configuration, the membership table
(:mod:`beokit.dsh.state`) and the gossip state machine
(:mod:`beokit.dsh.gossip`), both pure, and the counters; the UDP side is
:class:`~beokit.dsh.rounds.GossipRounds` (one timer: drain, measure, send), the
TCP side :class:`~beokit.dsh.queries.QueryServer` (admission, challenge), and
what the ports answer, SIGHUP (reload) and SIGUSR1 (dump) are here.
Starting one (options, privileges, the background) is :mod:`beokit.dsh.service`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import time

from beokit import metrics
from beokit.dsh import gossip, packet, state
from beokit.dsh.config import DshdConfig, Loaded, load_config
from beokit.dsh.measure import LoadMeter
from beokit.dsh.queries import QueryServer
from beokit.dsh.rounds import GossipRounds
from beokit.dsh.sockets import DshdSockets, open_sockets
from beokit.errors import BeokitError

log = logging.getLogger("beokit.dshd")

COUNTERS = ("sent", "received", "rejected", "bad", "queries", "best", "refused", "send_errors",
            "own", "shed", "busy", "handshake_timeouts", "rounds")  # fmt: skip


class Daemon:
    """One dshd: the table, its sockets and its timers."""

    def __init__(self, cfg: DshdConfig, loaded: Loaded) -> None:
        self.cfg = cfg
        self.loaded = loaded
        self.table = state.Table(
            loaded.specs, loaded.self_name, period=cfg.period, expire_periods=cfg.expire,
            extra_load=cfg.extra_load, score=loaded.score, keep_marks=loaded.secret is not None,
        )  # fmt: skip
        self.table.set_members(loaded.specs, loaded.addresses)
        self.rng = random.Random()
        self.gossip = gossip.Gossip(self.table, loaded.secret, gossip.Params(fanout=cfg.fanout),
                                    self.rng)  # fmt: skip
        self.stats = dict.fromkeys(COUNTERS, 0)
        self.meter = LoadMeter(cfg.period, cfg.jobs_dir, cfg.load_file)
        self.rounds = GossipRounds(cfg, self.table, self.gossip, self.meter, self.stats, self.rng)
        self.queries = QueryServer(self, self.stats)
        self.sockets: DshdSockets | None = None
        self.exporter: metrics.Exporter | None = None
        self.stop_event: asyncio.Event | None = None
        self._own_addresses()

    # ---- configuration
    @property
    def secret(self) -> bytes | None:
        return self.loaded.secret

    @property
    def full_view(self) -> bool:
        """Does every member's report reach this daemon each period (see gossip.py)?"""
        return self.rounds.full_view

    def _own_addresses(self) -> None:
        """The job files that mean this node (all of them when bound to every address)."""
        ld = self.loaded
        own = {ld.addresses[ld.self_name], ld.self_name, self.cfg.bind}
        self.meter.own_addrs = None if self.cfg.bind == "0.0.0.0" else own

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
        old_self = self.table.self_name
        try:
            self.table.self_name = loaded.self_name
            self.table.set_members(loaded.specs, loaded.addresses)
        except state.ClusterFileError as e:
            self.table.self_name = old_self
            log.error("SIGHUP: keeping the old configuration: %s", e)
            return
        self.table.score = loaded.score
        self.table.keep_marks = loaded.secret is not None
        self.table.forget_marks()  # a member whose clock went back gets in again
        self.gossip.secret = loaded.secret
        self.gossip.members_changed()
        self.loaded = loaded
        self._own_addresses()
        self.rounds.set_targets()
        log.info("SIGHUP: %d members from %s", len(loaded.specs), self.cfg.cluster_file)

    # ---- what the ports say
    def snapshot(self, now: float, all_members: bool = True) -> dict:
        """The table as plain data, and how it is filled (the status port's JSON).
        Not ``all_members`` and a partial view: only the members up are listed."""
        snap = self.table.snapshot(now, only_up=not (all_members or self.full_view))
        p = self.gossip.params
        snap["view"] = "full" if self.full_view else "partial"
        snap["gossip"] = ({"mode": "broadcast", "send_to": list(self.cfg.send_to)}
                          if self.rounds.broadcast else
                          {"mode": "gossip", "fanout": p.fanout, "rounds": p.rounds,
                           "candidates": p.candidates, "extra": p.extra})  # fmt: skip
        return snap

    def counters(self) -> dict[str, int]:
        """The daemon's counters and the gossip's (the status JSON's "stats")."""
        return dict(self.stats, **self.gossip.stats)

    def answer(self, purpose: str, word: str) -> bytes:
        """What the status or best port answers (every report that has arrived taken)."""
        now = time.monotonic()
        self.rounds.catch_up(now)
        if purpose == "best":
            return self._best(now)
        # "json": every member; "top" (beo top) and text: in a partial view only those up
        snap = self.snapshot(now, all_members=word == "json")
        snap["stats"] = dict(self.counters(), connections=len(self.queries.conns),
                             unauthenticated=self.queries.unauthenticated())  # fmt: skip
        if word in ("json", "top"):
            return json.dumps(snap).encode() + b"\n"
        return state.format_status(snap).encode()

    def _best(self, now: float) -> bytes:
        """The best port: the best member's line, and the extra-load bump on it."""
        m = self.table.best(now)
        if m is None:  # cannot happen while we run: this node is always up
            return b"error no member up\n"
        score = float(self.table.score(m, self.table.extra_load, now))
        self.table.bump(m, now)
        self.stats["best"] += 1
        local = m.name == self.table.self_name
        log.debug("best: %s (score %.3f)", m.name, score)
        return packet.format_best(m.name, m.address, score, local).encode()

    def dump(self) -> None:
        """SIGUSR1: the table and counters into the log."""
        snap = self.snapshot(time.monotonic(), all_members=False)
        log.warning("state dump (SIGUSR1): %s, %d TCP connections (%d not authenticated), "
                    "%d tasks\n%s", json.dumps(self.counters()), len(self.queries.conns),
                    self.queries.unauthenticated(), len(asyncio.all_tasks()),
                    state.format_status(snap).rstrip())  # fmt: skip

    def metrics(self) -> list[metrics.Metric]:
        """What --metrics-port serves (Prometheus text format)."""
        self.rounds.catch_up(time.monotonic())
        c = self.counters()
        out = [
            metrics.gauge("beokit_dshd_members", "members in the cluster file",
                          self.table.size),
            metrics.gauge("beokit_dshd_members_up", "members with a fresh report",
                          self.table.up_count()),
            metrics.counter("beokit_dshd_gossip_packets_total", "gossip datagrams",
                            c["received"], direction="in").add(c["sent"], direction="out"),
            metrics.counter("beokit_dshd_rejected_packets_total", "datagrams refused (not a "
                            "member's address, bad signature, replayed or stale)", c["rejected"]),
            metrics.counter("beokit_dshd_bad_packets_total", "datagrams that are not a report",
                            c["bad"]),
            metrics.counter("beokit_dshd_queries_total", "TCP connections accepted on the "
                            "status and best ports", c["queries"]),
            metrics.counter("beokit_dshd_best_answers_total", "least-loaded nodes named on "
                            "the best port", c["best"]),
            metrics.counter("beokit_dshd_refused_connections_total", "TCP connections refused "
                            "(authentication, admission, shed, busy)", c["refused"] + c["shed"]
                            + c["busy"]),
            metrics.counter("beokit_dshd_send_errors_total", "datagrams the kernel refused",
                            c["send_errors"]),
            metrics.counter("beokit_dshd_rounds_total", "gossip rounds", c["rounds"]),
            metrics.gauge("beokit_dshd_connections", "TCP connections open",
                          len(self.queries.conns)),
        ]  # fmt: skip
        return out

    # ---- sockets (bound before the loop starts, so -b reports bind errors)
    def bind(self) -> None:
        self.sockets = open_sockets(self.cfg)
        self.rounds.attach(self.sockets.gossip)
        if self.cfg.metrics_port is not None:
            self.exporter = metrics.Exporter(self.metrics)
            try:
                self.exporter.bind(self.cfg.bind, self.cfg.metrics_port)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        if self.sockets is not None:
            self.sockets.close()
        if self.exporter is not None:
            self.exporter.stop()

    # ---- main
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        assert self.sockets is not None
        self.queries.start(*self.sockets.tcp)
        if self.exporter is not None:
            await self.exporter.start()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.dump)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        log.info("dshd %s: %d members, bind %s, UDP %d, status %d, best %d, period %g s%s",
                 self.table.self_name, self.table.size, self.cfg.bind,
                 self.cfg.gossip_port, self.cfg.status_port, self.cfg.best_port,
                 self.cfg.period, ", authenticated" if self.loaded.secret else "")  # fmt: skip
        self.rounds.start()
        try:
            await self.stop_event.wait()
        finally:
            self.rounds.stop()
            self.queries.stop()
            self.close()
            log.info("dshd %s: stopped", self.table.self_name)

