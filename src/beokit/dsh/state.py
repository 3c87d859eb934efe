"""The cluster file, the membership table, scoring and the extra-load bump (pure).

Nothing here reads a clock or a socket: callers pass ``now`` (seconds, a
monotonic clock) and the reports they received.

A report comes either straight from its member (:meth:`Table.receive`, which
checks the source address) or relayed by another member with its age
(:meth:`Table.relay`). Either way the table keeps, per member, the newest
report and when it was made (``origin``, on this daemon's clock): a member is
up while that is less than the expiry ago, whoever brought the report.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib
import operator
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from beokit.dsh.packet import Report
from beokit.errors import UsageError
from beokit.hostlist import expand


class ClusterFileError(UsageError):
    """A bad cluster file line or option value: a usage error (one line, exit 2)."""


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """One line of the cluster file: ``NAME [LOADWEIGHT [MEMWEIGHT]]``."""

    name: str
    load_weight: float = 1.0
    mem_weight: float = 1.0


def _weight(text: str, what: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ClusterFileError(f"{where}: bad {what} {text!r}") from None
    if not 0 < v < 1e6:
        raise ClusterFileError(f"{where}: bad {what} {text!r}: must be > 0")
    return v


def parse_cluster(text: str, source: str = "cluster file") -> list[MemberSpec]:
    """Parse a cluster file.

    One member a line: a name (or a ClusterShell NodeSet such as ``n[1-8]``,
    every node getting the line's weights), then an optional load weight
    (how much slower than the reference machine: 2.0 needs twice the time)
    and an optional memory weight (higher: faster memory). ``#`` starts a
    comment. The seed's one-line form ``a 1.0 1.0 b 2.0 2.0 c 2.0`` (several
    members on a line) is accepted too.
    """
    members: dict[str, MemberSpec] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        where = f"{source}:{lineno}"
        i = 0
        while i < len(words):
            name = words[i]
            i += 1
            nums: list[str] = []
            while i < len(words) and len(nums) < 2 and _is_number(words[i]):
                nums.append(words[i])
                i += 1
            if _is_number(name):
                raise ClusterFileError(f"{where}: bad member name {name!r}")
            lw = _weight(nums[0], "load weight", where) if nums else 1.0
            mw = _weight(nums[1], "memory weight", where) if len(nums) > 1 else 1.0
            try:
                names = expand(name) if "[" in name or "," in name else [name]
            except UsageError as e:
                raise ClusterFileError(f"{where}: {e}") from None
            for n in names:
                if len(n.encode()) > 255:
                    raise ClusterFileError(f"{where}: member name too long {n[:40]!r}...")
                members[n] = MemberSpec(n, lw, mw)
    if not members:
        raise ClusterFileError(f"{source}: no members")
    return list(members.values())


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return word.lower() not in ("inf", "nan", "infinity", "-inf", "+inf")


# ------------------------------------------------------------------ members


@dataclass(slots=True)
class Member:
    """What this daemon knows about one member."""

    spec: MemberSpec
    address: str = ""
    report: Report | None = None
    heard: float | None = None  # local monotonic time of the last accepted report
    up: bool = False
    extra: list[float] = field(default_factory=list)  # bump times, local clock
    accepted: int = 0
    rejected: int = 0
    forget_mark: bool = False  # take its next report whatever its time (SIGHUP)
    origin: float | None = None  # when the report was made, on this daemon's clock
    raw: bytes | None = None  # the report as its origin signed it (to relay it)
    base: float | None = None  # its score without bumps (to rank candidates; None: not yet)
    tie: int = -1  # tie-break among equal scores, salted per daemon (-1: not yet: ranked() sets it)
    hop_mark: tuple[int, int] | None = None  # (ms, seq) of its newest gossip datagram

    @property
    def name(self) -> str:
        return self.spec.name

    def extra_load(self, per_bump: float) -> float:
        return per_bump * len(self.extra)


ScoreFn = Callable[["Member", float, float], float]


def score_load(m: Member, extra_load: float, _now: float = 0.0) -> float:
    """Expected run time of one more job, in units of the reference machine.

    The effective load is the largest of the 1-minute load average and the
    number of running dsh jobs (the load average lags by a minute), plus the
    local extra-load bumps. A job on a node with a free CPU takes one load
    weight; past that it shares the CPUs: ``weight * (load + 1) / cpus``.
    """
    r = m.report
    if r is None:
        return float("inf")
    load = max(r.load1, float(r.jobs)) + m.extra_load(extra_load)
    cpus = max(1, r.cpus)
    return m.spec.load_weight * max(1.0, (load + 1.0) / cpus)


def score_loadmem(m: Member, extra_load: float, now: float = 0.0) -> float:
    """:func:`score_load` plus a memory term: the used fraction of memory,
    divided by the memory weight (faster memory costs less), so that a node
    about to swap loses against an equally loaded one with free memory."""
    r = m.report
    base = score_load(m, extra_load, now)
    if r is None or r.mem_total_kb <= 0:
        return base
    used = 1.0 - min(1.0, r.mem_free_kb / r.mem_total_kb)
    return base + used / m.spec.mem_weight


def score_jobs(m: Member, extra_load: float, _now: float = 0.0) -> float:
    """Running dsh jobs (plus bumps) per CPU, times the load weight."""
    r = m.report
    if r is None:
        return float("inf")
    return m.spec.load_weight * (r.jobs + m.extra_load(extra_load)) / max(1, r.cpus)


SCORES: dict[str, ScoreFn] = {"load": score_load, "loadmem": score_loadmem, "jobs": score_jobs}


def score_function(name: str) -> ScoreFn:
    """A named scorer, or ``MODULE:FUNC`` imported (called as FUNC(member, extra, now))."""
    if name in SCORES:
        return SCORES[name]
    if ":" not in name:
        raise ClusterFileError(f"bad score {name!r}: load, loadmem, jobs or MODULE:FUNC")
    mod, _, fn = name.partition(":")
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ClusterFileError(f"bad score {name!r}: {e}") from None
    if not callable(f):
        raise ClusterFileError(f"bad score {name!r}: not callable")
    return f  # type: ignore[no-any-return]


# -------------------------------------------------------------------- table


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A membership change: ``kind`` is "up", "down" or "reject" (the gossip adds
    "bad": a datagram that could not be decoded, and "own": this node's broadcast)."""

    kind: str
    name: str
    detail: str = ""


_NONE: list[MemberEvent] = []  # shared empty answer: never appended to


class Roster:
    """Every member of the cluster file: its spec and the address its datagrams come
    from (its name where none is given). Read only once built: the tables of a
    simulation share one (a table holds state only for the members it has heard of
    or looked at, so N tables of N members cost N x (members heard of), not N²)."""

    __slots__ = ("specs", "addresses")

    def __init__(self, specs: Iterable[MemberSpec], addresses: dict[str, str] | None = None,
                 ) -> None:  # fmt: skip
        self.specs = {s.name: s for s in specs}
        self.addresses = addresses or {}

    def address(self, name: str) -> str:
        return self.addresses.get(name, name)

    def __len__(self) -> int:
        return len(self.specs)

    def __contains__(self, name: object) -> bool:
        return name in self.specs


class _Members(dict[str, Member]):
    """name -> :class:`Member`, made from the roster the first time ``members[name]``
    asks for it (KeyError: not a member). ``get`` and ``in`` see only the members
    made so far: use :meth:`Table.member` and ``name in table.roster``."""

    __slots__ = ("roster",)

    def __init__(self, roster: Roster) -> None:
        super().__init__()
        self.roster = roster

    def __missing__(self, name: str) -> Member:
        m = self[name] = Member(self.roster.specs[name], self.roster.address(name))
        return m


_rank = operator.attrgetter("base", "tie")  # (score without bumps, tie): ranked() sets both


class Table:
    """The membership table of one daemon.

    ``self_name`` is this node; its report is set with :meth:`set_self`
    (measured locally, never from the network).
    """

    def __init__(
        self,
        specs: Iterable[MemberSpec] | Roster,
        self_name: str,
        *,
        period: float = 1.5,
        expire_periods: int = 3,
        extra_load: float = 1.0,
        extra_hold: float | None = None,
        score: ScoreFn = score_load,
        keep_marks: bool = False,
        salt: bytes | None = None,
        addresses: dict[str, str] | None = None,
    ) -> None:
        self.self_name = self_name
        # ties among equal scores are broken by a hash salted per daemon, so that
        # daemons forward different ones of many idle members (not all the same)
        self.salt = self_name.encode() if salt is None else salt
        # True (with a secret): a down member's last (time, seq) still refuses older
        # reports, so that a captured report replayed later cannot bring it back
        self.keep_marks = keep_marks
        self.period = period
        self.expire_periods = expire_periods
        self.extra_load = extra_load
        # a bump is cleared by the first report received at least this long after it
        self.extra_hold = period if extra_hold is None else extra_hold
        self.score = score
        self.roster = Roster(())
        # the members this table has heard of or looked at (made on first use)
        self.members: dict[str, Member] = _Members(self.roster)
        self.up_set: dict[str, Member] = {}  # the members up: all that is scanned per period
        # (origin, name) of every member up but this node, one entry each, oldest
        # first: tick() looks at those whose entry is past the expiry, not at them all
        self._expiry: list[tuple[float, str]] = []
        self._bumped: dict[str, Member] = {}  # members with extra-load bumps
        self.unknown_rejected = 0
        self.set_members(specs, addresses)

    # ---- configuration
    def set_members(
        self, specs: Iterable[MemberSpec] | Roster, addresses: dict[str, str] | None = None
    ) -> None:
        """(Re)define the members, keeping what is known about those that stay.

        A :class:`Roster` is taken as it is (shared, not copied); the work here is
        O(members known to this table), not O(members of the cluster): a
        simulation builds one table per member."""
        roster = specs if isinstance(specs, Roster) else Roster(specs, addresses)
        if self.self_name not in roster.specs:
            raise ClusterFileError(f"this node {self.self_name!r} is not a member")
        members = _Members(roster)
        for name, m in self.members.items():
            spec = roster.specs.get(name)
            if spec is not None:
                m.spec = spec
                m.address = roster.addresses.get(name, m.address or name)
                members[name] = m
        self.roster, self.members = roster, members
        members[self.self_name]  # noqa: B018  (made now: set_self and tick use it)
        self.up_set = {n: m for n, m in self.members.items() if m.up}
        for m in self.up_set.values():  # the weights may have changed
            m.base = None
        self._expiry = [(m.origin, n) for n, m in self.up_set.items()  # type: ignore[misc]
                        if n != self.self_name and m.origin is not None]  # fmt: skip
        heapq.heapify(self._expiry)
        self._bumped = {n: m for n, m in self.members.items() if m.extra}

    @property
    def size(self) -> int:
        """The number of members of the cluster (this node included)."""
        return len(self.roster.specs)

    def member(self, name: str) -> Member | None:
        """Member ``name`` (made from the roster if this table had none yet), or None:
        not a member."""
        m = self.members.get(name)
        if m is None and name in self.roster.specs:
            m = self.members[name]
        return m

    def address_of(self, name: str) -> str:
        """Where member ``name``'s datagrams come from (and go to)."""
        m = self.members.get(name)
        return m.address if m is not None else self.roster.address(name)

    @property
    def expire_after(self) -> float:
        return self.expire_periods * self.period

    # ---- inputs
    def set_self(self, report: Report, now: float, raw: bytes | None = None) -> list[MemberEvent]:
        """This node's own report, measured here (``raw``: as encoded, to send it)."""
        m = self.members[self.self_name]
        events = [] if m.up else [MemberEvent("up", m.name, "self")]
        m.report, m.heard, m.up, m.origin, m.raw = report, now, True, now, raw
        m.base = None
        self.up_set[m.name] = m
        self._clear_bumps(m, now)
        return events

    def _tie(self, name: str) -> int:
        return int.from_bytes(hashlib.blake2s(name.encode(), digest_size=8,
                                              key=self.salt[:32]).digest(), "big")  # fmt: skip

    def _base(self, m: Member, now: float) -> float:
        try:
            return float(self.score(m, 0.0, now))
        except Exception:  # a custom scorer that fails ranks last (the answer still calls it)
            return float("inf")

    def receive(self, report: Report, source: str, now: float, raw: bytes | None = None,
                age: float = 0.0) -> list[MemberEvent]:  # fmt: skip
        """Take a report that came from address ``source`` (its member's own datagram;
        ``age``: how long before ``now`` the member made it, as it says).

        Accepted only from a member, from that member's address, never for
        this node itself, and only if newer than the last one (no replays;
        with ``keep_marks`` also while the member is down).
        (Called for every datagram: the usual case, a known member that is
        up, is the first branch.)
        """
        name = report.name
        m = self.members.get(name)
        if m is not None and m.up and source == m.address and name != self.self_name:
            old = m.report
            sent = report.sent_ms
            if old is not None and (
                sent > old.sent_ms or (sent == old.sent_ms and report.seq > old.seq)
            ):
                origin = now - age
                m.report, m.heard, m.raw = report, now, raw
                if m.origin is None or origin > m.origin:
                    m.origin = origin
                m.base = None  # scored when ranked (gossip), not for every report
                m.accepted += 1
                if m.extra:
                    self._clear_bumps(m, m.origin)
                return _NONE
        return self._receive_slow(report, source, now, raw, age)

    def is_news(self, m: Member, sent_ms: int, seq: int) -> bool:
        """Would a report of ``m`` made at (sent_ms, seq) be taken (not old, not a replay)?"""
        old = m.report
        if old is None or not (m.up or (self.keep_marks and not m.forget_mark)):
            return True
        return sent_ms > old.sent_ms or (sent_ms == old.sent_ms and seq > old.seq)

    def relay(self, report: Report, now: float, age: float, raw: bytes | None = None
              ) -> list[MemberEvent]:  # fmt: skip
        """Take a report of another member that a member relayed: made ``age`` seconds
        before ``now`` (as the relays count). No address check (it comes from a
        relay); the rest as :meth:`receive`. A report older than the expiry is
        not taken: its member would be down at once."""
        m = self.members.get(report.name)
        if m is None:
            m = self.member(report.name)
        if m is None:
            self.unknown_rejected += 1
            return [MemberEvent("reject", report.name, "not a member (relayed)")]
        if m.name == self.self_name or age > self.expire_after:
            return _NONE
        if not self.is_news(m, report.sent_ms, report.seq):
            return _NONE
        return self._take(m, report, now, raw, age)

    def _take(self, m: Member, report: Report, now: float, raw: bytes | None,
              age: float) -> list[MemberEvent]:  # fmt: skip
        events = _NONE if m.up else [MemberEvent("up", m.name)]
        origin = now - age
        if m.up and m.origin is not None and m.origin > origin:
            origin = m.origin  # a newer report was not made before an older one
        if not m.up:
            heapq.heappush(self._expiry, (origin, m.name))
        m.report, m.heard, m.up, m.forget_mark = report, now, True, False
        m.origin, m.raw = origin, raw
        m.base = None
        self.up_set[m.name] = m
        m.accepted += 1
        if m.extra:
            self._clear_bumps(m, origin)
        return events

    def _receive_slow(self, report: Report, source: str, now: float, raw: bytes | None = None,
                      age: float = 0.0) -> list[MemberEvent]:  # fmt: skip
        m = self.member(report.name)
        if m is None:
            self.unknown_rejected += 1
            return [MemberEvent("reject", report.name, f"not a member (from {source})")]
        if m.name == self.self_name:
            m.rejected += 1
            return [MemberEvent("reject", m.name, f"claims to be this node (from {source})")]
        if source != m.address:
            m.rejected += 1
            return [MemberEvent("reject", m.name, f"from {source}, not its address {m.address}")]
        if not self.is_news(m, report.sent_ms, report.seq):
            m.rejected += 1
            return [MemberEvent("reject", m.name, "old or replayed report")]
        return self._take(m, report, now, raw, age)

    def forget_marks(self) -> None:
        """Let each down member's next report in whatever its time (for a member
        whose clock went back while it was down; SIGHUP calls this)."""
        for m in self.members.values():
            if not m.up:
                m.forget_mark = True
                m.hop_mark = None

    def _clear_bumps(self, m: Member, made: float) -> None:
        """Drop the bumps that a report made at ``made`` covers (made a hold after them)."""
        if m.extra:
            m.extra = [t for t in m.extra if made - t < self.extra_hold]

    def tick(self, now: float) -> list[MemberEvent]:
        """Expire members whose newest report is more than ``expire_periods`` periods
        old, and stale bumps. Only the members whose entry in the expiry heap is
        that old are looked at (an entry is where the member's report was when it
        came up: one that reported since gets an entry at its newest report), so a
        tick costs O(log up) per member expiring or refreshed, not O(up)."""
        events: list[MemberEvent] = []
        limit = self.expire_after
        cutoff = now - limit
        heap, up = self._expiry, self.up_set
        while heap and heap[0][0] < cutoff:
            _, name = heapq.heappop(heap)
            m = up.get(name)
            if m is None or name == self.self_name:
                continue  # (not up any more: a reload)
            if m.origin >= cutoff:  # type: ignore[operator]
                heapq.heappush(heap, (m.origin, name))  # type: ignore[arg-type]
                continue
            del up[name]
            m.up = False
            m.extra.clear()
            self._bumped.pop(name, None)
            events.append(MemberEvent("down", name, f"not heard from for {now - m.origin:.1f} s"))  # type: ignore[operator]
        if self._bumped:  # a node that never reports again must not keep its bumps
            hold = max(limit, 2 * self.extra_hold)
            for name, m in list(self._bumped.items()):
                if m.extra:
                    m.extra = [t for t in m.extra if now - t < hold]
                if not m.extra:
                    del self._bumped[name]
        return events

    # ---- outputs
    def scores(self, now: float) -> list[tuple[float, str]]:
        out = []
        for m in self.up_set.values():
            if m.report is not None:
                out.append((float(self.score(m, self.extra_load, now)), m.name))
        out.sort()
        return out

    def ranked(self, k: int, now: float = 0.0) -> list[Member]:
        """The ``k`` best members up by their score without bumps (ties: salted hash)."""
        for m in self.up_set.values():
            if m.base is None:
                m.base = self._base(m, now)
                if m.tie < 0:
                    m.tie = self._tie(m.name)
        return heapq.nsmallest(k, self.up_set.values(), key=_rank)

    def best(self, now: float, rng: random.Random | None = None) -> Member | None:
        """The member with the lowest score (ties: at random with ``rng``, else by name)."""
        lo, tied = float("inf"), []  # one pass (every answer): no sort of them all
        score, extra = self.score, self.extra_load
        for m in self.up_set.values():
            if m.report is not None:
                s = float(score(m, extra, now))
                if s < lo:
                    lo, tied = s, [m.name]
                elif s == lo:
                    tied.append(m.name)
        if not tied:
            return None
        tied.sort()
        name = rng.choice(tied) if rng is not None and len(tied) > 1 else tied[0]
        return self.members[name]

    def bump(self, m: Member, now: float) -> None:
        """Count one more job on ``m`` until its next report covers it."""
        if self.extra_load > 0:
            m.extra.append(now)
            self._bumped[m.name] = m

    def up_count(self) -> int:
        return len(self.up_set)

    def snapshot(self, now: float, only_up: bool = False) -> dict:
        """The table as plain data (the status port's JSON); ``only_up``: the rows of
        the members up only (``members_total`` still counts them all)."""
        rows = []
        if only_up:
            listed: Iterable[Member] = self.up_set.values()
        else:  # every member; those never heard of as they would be made
            got, roster = self.members, self.roster
            listed = (got.get(n) or Member(s, roster.address(n)) for n, s in roster.specs.items())
        for m in listed:
            r = m.report
            row: dict = {
                "name": m.name, "address": m.address, "up": m.up,
                "self": m.name == self.self_name,
                "age": None if m.origin is None else round(now - m.origin, 3),
                "load_weight": m.spec.load_weight, "mem_weight": m.spec.mem_weight,
                "extra": round(m.extra_load(self.extra_load), 3),
            }  # fmt: skip
            if r is not None:
                row.update(
                    load1=round(r.load1, 2), load5=round(r.load5, 2), load15=round(r.load15, 2),
                    cpus=r.cpus, jobs=r.jobs, mem_total_kb=r.mem_total_kb,
                    mem_free_kb=r.mem_free_kb,
                    score=round(float(self.score(m, self.extra_load, now)), 3) if m.up else None,
                )  # fmt: skip
            rows.append(row)
        return {
            "node": self.self_name, "period": self.period, "expire_periods": self.expire_periods,
            "extra_load": self.extra_load, "up": self.up_count(),
            "members_total": self.size, "members": rows,
        }  # fmt: skip


def format_status(snap: dict) -> str:
    """The status port's text answer: one line per member listed, a header."""
    total = snap.get("members_total", len(snap["members"]))
    note = ""
    if len(snap["members"]) < total:
        note = (f"; partial view: the {total - snap['up']} members without a report under "
                f"{snap['expire_periods'] * snap['period']:g} s old here are not listed")
    lines = [f"# dshd {snap['node']}: {snap['up']}/{total} up, "
             f"period {snap['period']:g} s{note}",
             f"{'name':<20} {'state':<5} {'load1':>6} {'load5':>6} {'load15':>6} {'cpus':>4} "
             f"{'jobs':>4} {'extra':>5} {'memfree':>9} {'score':>7} {'age':>6}"]  # fmt: skip
    for r in snap["members"]:
        state = "up" if r["up"] else "down"
        if "load1" in r:
            mem = f"{r['mem_free_kb'] // 1024}M"
            score = "-" if r.get("score") is None else f"{r['score']:.3f}"
            age = "-" if r["age"] is None else f"{r['age']:.1f}"
            lines.append(f"{r['name']:<20} {state:<5} {r['load1']:>6.2f} {r['load5']:>6.2f} "
                         f"{r['load15']:>6.2f} {r['cpus']:>4} {r['jobs']:>4} {r['extra']:>5.1f} "
                         f"{mem:>9} {score:>7} {age:>6}")  # fmt: skip
        else:
            lines.append(f"{r['name']:<20} {state:<5} (never heard from)")
    return "\n".join(lines) + "\n"
