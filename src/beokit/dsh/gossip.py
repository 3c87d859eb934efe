"""Gossip whose cost per node does not grow with the cluster (pure: no clock, no socket).

Every round (``rounds`` a period) a daemon sends one datagram to each of
``fanout`` members: ``partners`` of them taken at random among the members
whose datagrams came within the expiry (alive: when most of the cluster file
is switched off the live ones still gossip among themselves), the others in
turn from a shuffled list of all the others (every member is visited once
per pass, in a new order each pass). A datagram carries, each as its origin
signed it and with its age:

1. the sender's own report, measured this round;
2. the ``candidates`` least-loaded members the sender knows (by score
   without bumps; ties by a hash salted per daemon, so that of many idle
   members different daemons forward different ones);
3. up to ``extra`` more: members that left the sender's candidates within
   the last period (so that "the best node is busy now" spreads as fast as
   "this node is idle"), then members taken at random among those it knows
   to be up (so that each table also knows some of the rest of the cluster).

A report is taken if it is newer than the one the table holds (the origin's
(time, seq), checked before its MAC is) and younger than the expiry; the
table keeps when it was made, on its own clock: the arrival time minus the
age the relays counted. A member is up while its newest report is younger
than the expiry, so a member that stops reporting leaves every table at most
the expiry after its last report, whoever relayed what. Datagrams out per
round: ``fanout``; in: ``fanout`` on average; a round's work is bounded by the
members up in this table (the candidates, the members it hears from and the
sample), not by the cluster.

Driving it (the daemon does this; a simulator can do the same)::

    g = Gossip(table, secret, Params(), random.Random(seed))
    g.set_self(report, now)                  # this node's report, each round
    for out in g.round(now, wall_ms):        # -> [Outgoing(name, address, data)]
        send(out.address, out.data)
    events = g.on_datagram(data, source_address, arrival_time)
    events += table.tick(now)                # expiry

``now`` is any monotonic clock in seconds (the simulator's own), ``wall_ms``
the sender's wall clock (it orders the datagrams of one sender).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import NamedTuple

from beokit.dsh import packet
from beokit.dsh.state import Member, MemberEvent, Table

FANOUT = 4
PARTNERS = 2
ROUNDS = 4
CANDIDATES = 8
EXTRA = 4


@dataclass(frozen=True, slots=True)
class Params:
    """How much each daemon gossips (the defaults are the docs' arithmetic)."""

    fanout: int = FANOUT  # datagrams sent per round
    partners: int = PARTNERS  # of them, to members that sent to this one lately
    rounds: int = ROUNDS  # rounds per period
    candidates: int = CANDIDATES  # least-loaded members in each datagram
    extra: int = EXTRA  # then recently demoted members, then a random sample
    max_datagram: int = packet.MAX_DATAGRAM  # bytes a datagram is filled up to


class Outgoing(NamedTuple):
    """One datagram to send: to member ``name``, at ``address``."""

    name: str
    address: str
    data: bytes


class Gossip:
    """One daemon's gossip: what to send each round, what to take from a datagram."""

    def __init__(self, table: Table, secret: bytes | None = None, params: Params | None = None,
                 rng: random.Random | None = None) -> None:  # fmt: skip
        self.table = table
        self.secret = secret
        self.params = params or Params()
        self.rng = rng or random.Random()
        self.hop_seq = 0
        self.stats = {"records": 0, "duplicate": 0}  # reports taken as news, not news
        self._order: list[str] = []
        self._pos = 0
        self._top: list[str] = []  # the candidates of the last round
        self._senders: dict[str, float] = {}  # member -> when its last datagram came
        self._demoted: dict[str, float] = {}  # name -> when it left the candidates

    # ---- configuration
    @property
    def full_view(self) -> bool:
        """Does every member send to every other at least once a period (so that a
        member missing from the table is one that stopped reporting)?"""
        p, others = self.params, self.table.size - 1
        return others <= p.fanout or others <= (p.fanout - p.partners) * p.rounds

    def members_changed(self) -> None:
        """After :meth:`Table.set_members`: a new round-robin pass, no stale names."""
        self._order, self._pos = [], 0
        roster = self.table.roster
        self._top = [n for n in self._top if n in roster]
        self._demoted = {n: t for n, t in self._demoted.items() if n in roster}

    # ---- this node
    def set_self(self, report: packet.Report, now: float) -> list[MemberEvent]:
        """This node's report (measured now): signed once, sent in every datagram."""
        return self.table.set_self(report, now, packet.encode(report, self.secret))

    def targets(self, now: float | None = None) -> list[str]:
        """This round's ``fanout`` destinations (distinct, never self): up to
        ``partners`` taken at random among the members that sent to this one
        within the expiry (members known to be alive, and as random as the
        senders are: no member is everyone's partner), the others the next of
        the round-robin pass over all members (which finds the rest)."""
        members, me, p = self.table.roster.specs, self.table.self_name, self.params
        want = min(p.fanout, len(members) - 1)
        out: list[str] = []
        if now is not None and want < len(members) - 1 and p.partners:
            limit = self.table.expire_after
            self._senders = {n: t for n, t in self._senders.items()
                             if now - t <= limit and n in members}  # fmt: skip
            pool = list(self._senders)
            out = self.rng.sample(pool, min(len(pool), p.partners, want))
        order = self._order
        while len(out) < want:
            if self._pos >= len(order):
                order = self._order = list(members)
                self._pos = 0
            # a shuffle drawn as it goes (Fisher-Yates, one step a target): a pass
            # costs O(1) a round, not O(members) at its start
            pos = self._pos
            j = pos + self.rng.randrange(len(order) - pos)
            name = order[j]
            order[j] = order[pos]
            order[pos] = name
            self._pos = pos + 1
            if name != me and name in members and name not in out:
                out.append(name)
        return out

    def round(self, now: float, wall_ms: int) -> list[Outgoing]:
        """The datagrams of one round (none before this node's first report)."""
        table, p = self.table, self.params
        me = table.members[table.self_name]
        if me.raw is None or me.origin is None:
            return []
        ranked = [m for m in table.ranked(p.candidates + 2, now) if m is not me]
        self._note_demoted([m.name for m in ranked[: p.candidates]], now)
        hot = [table.members[n] for n in sorted(self._demoted, key=self._demoted.__getitem__,
                                                reverse=True)]  # fmt: skip
        targets = self.targets(now)
        pool = list(table.up_set.values())
        want = min(len(pool), p.extra + 2)  # a few more: some are taken already
        if len(pool) >= want * len(targets):  # one draw: a different sample for each
            picks = self.rng.sample(pool, want * len(targets))
            samples = [picks[i * want : (i + 1) * want] for i in range(len(targets))]
        else:
            samples = [self.rng.sample(pool, want) for _ in targets]
        cands, hot_recs = self._entries(ranked, now), self._entries(hot, now)
        own = self._entries([me], now)[0]
        out = []
        for dest, sample in zip(targets, samples, strict=True):
            records = self._records(own, dest, cands, hot_recs, self._entries(sample, now))
            self.hop_seq = (self.hop_seq + 1) & 0xFFFFFFFF
            data = packet.encode_gossip(table.self_name, dest, self.hop_seq, wall_ms, records,
                                   self.secret)  # fmt: skip
            out.append(Outgoing(dest, table.address_of(dest), data))
        return out

    def _entries(self, members: list[Member], now: float) -> list[tuple[str, int, bytes]]:
        """(name, age ms, report) of the members whose report can still be relayed; the
        age rounded up (never younger than it is, however many hops)."""
        limit = self.table.expire_after
        return [(m.name, math.ceil((now - m.origin) * 1000), m.raw) for m in members
                if m.raw is not None and m.origin is not None and now - m.origin <= limit]  # fmt: skip

    def _note_demoted(self, top: list[str], now: float) -> None:
        """Remember the members that just left the candidates (for one period)."""
        now_top = set(top)
        for name in self._top:
            if name not in now_top:
                self._demoted[name] = now
        for name in top:
            self._demoted.pop(name, None)
        keep = self.table.period
        up = self.table.up_set
        self._demoted = {n: t for n, t in self._demoted.items() if now - t < keep and n in up}
        self._top = top

    def _records(self, own: tuple[str, int, bytes], dest: str,
                 cands: list[tuple[str, int, bytes]], hot: list[tuple[str, int, bytes]],
                 sample: list[tuple[str, int, bytes]]) -> list[tuple[int, bytes]]:  # fmt: skip
        """What goes to ``dest``: own report, candidates, then demoted and sampled
        members; each member once, never ``dest`` itself, within the datagram size."""
        p = self.params
        room = p.max_datagram - (packet.GOSSIP_HEAD_LEN + len(own[0].encode()) + len(dest.encode())
                                 + (packet.MAC_LEN if self.secret else 0))  # fmt: skip
        chosen = {dest, own[0]}
        room -= packet.RECORD_OVERHEAD + len(own[2])
        records = [(own[1], own[2])] if room >= 0 else []
        extra = 0
        for group in (cands, hot, sample):
            most = p.candidates if group is cands else p.extra - extra
            n = 0
            for name, age, raw in group:
                if n >= most:
                    break
                if name in chosen or packet.RECORD_OVERHEAD + len(raw) > room:
                    continue
                chosen.add(name)
                room -= packet.RECORD_OVERHEAD + len(raw)
                records.append((age, raw))
                n += 1
            if group is not cands:
                extra += n
        return records

    # ---- receiving
    def on_datagram(self, data: bytes, source: str, now: float) -> list[MemberEvent]:
        """A datagram from address ``source`` that arrived at ``now``: a gossip
        datagram (version 3) or a member's own report (version 2: broadcast mode,
        older daemons). Events: "up", "reject", "bad" (could not be decoded) and
        "own" (our own broadcast back)."""
        if packet.version_of(data) == packet.GOSSIP_VERSION:
            return self._on_gossip(data, source, now)
        try:
            report = packet.decode(data, self.secret)
        except packet.PacketError as e:
            return [MemberEvent("bad", source, str(e))]
        if report.name == self.table.self_name:
            return [MemberEvent("own", report.name)]
        return self.table.receive(report, source, now, data)

    def _on_gossip(self, data: bytes, source: str, now: float) -> list[MemberEvent]:
        table, secret = self.table, self.secret
        try:
            d = packet.decode_gossip(data, secret)
        except packet.PacketError as e:
            return [MemberEvent("bad", source, str(e))]
        why = self._check_sender(d, source)
        if why is not None:
            return [MemberEvent("reject", d.sender, why)]
        self._senders[d.sender] = now
        members, me = table.members, table.self_name
        keep_marks, limit = table.keep_marks, table.expire_after
        events: list[MemberEvent] = []
        news = 0
        for age_ms, raw, name, sent, seq in d.records:
            if name is None:
                events.append(MemberEvent("bad", source, f"a record from {d.sender}: not a report"))
                continue
            m = members.get(name)
            if m is None:
                m = table.member(name)
            if m is None:
                table.unknown_rejected += 1
                events.append(MemberEvent("reject", name, f"not a member (relayed by {d.sender})"))
                continue
            old = m.report  # is it news? (Table.is_news, inlined: most records are not)
            if (name == me or (old is not None and (m.up or (keep_marks and not m.forget_mark))
                               and (sent < old.sent_ms or (sent == old.sent_ms and seq <= old.seq))
                               )):  # fmt: skip
                continue
            age = age_ms / 1000
            if age > limit and name != d.sender:
                continue  # too old to make its member up
            try:
                report = packet.decode(raw, secret)
            except packet.PacketError as e:
                events.append(MemberEvent("bad", source, f"report of {name} from {d.sender}: {e}"))
                continue
            news += 1
            if name == d.sender:
                got = table.receive(report, source, now, raw, age)
            else:
                got = table.relay(report, now, age, raw)
            if got:
                events.extend(got)
        st = self.stats
        st["records"] += news
        st["duplicate"] += len(d.records) - news
        return events

    def _check_sender(self, d: packet.Datagram, source: str) -> str | None:
        """Why a datagram cannot be taken (None: it can): a member, from its own
        address, sent to this node, newer than its last (with a secret)."""
        table = self.table
        m = table.member(d.sender)
        if m is None:
            table.unknown_rejected += 1
            return f"not a member (from {source})"
        if m.name == table.self_name:
            m.rejected += 1
            return f"claims to be this node (from {source})"
        if source != m.address:
            m.rejected += 1
            return f"from {source}, not its address {m.address}"
        if d.dest != table.self_name:
            m.rejected += 1
            return f"sent to {d.dest[:80]!r}, not to this node"
        if self.secret is not None:  # a datagram replayed to its own destination
            mark = (d.hop_ms, d.hop_seq)
            if m.hop_mark is not None and mark <= m.hop_mark:
                m.rejected += 1
                return "old or replayed datagram"
            m.hop_mark = mark
        return None
