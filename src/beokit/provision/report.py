"""What nodes and the round's server say to each other, and the round's book (pure).

Nodes report over UDP, one JSON object per datagram, to the boot server's
report port (``provision.report_port``, default ``nettee.port + 2``)::

    {"v": 1, "node": "node7", "stage": "receiving", "round": 1, "bytes": 123, ...}

at every change of stage and once a second meanwhile (a lost datagram is
repeated by the next).  The server answers each with what the node is to do::

    {"v": 1, "round": 1, "go": true, "next": [["node8", "node9", "node10"]],
     "sha256": "...", "size": 67108864}

``go`` false: wait (a round is streaming without this node; it will be in the
follow-up).  ``next``: the node's children for this round (its failover lists).
The :class:`RoundBook` holds every node's stage and decides the answers, when a
round starts, who missed it and the verdict; the driver (``round.py``) only moves
datagrams and processes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

VERSION = 1
MAX_DATAGRAM = 8192

# A node's stages, in order. The first two come from the boot server's own tables
# (its lease, its HTTP/TFTP transfers), the others from the node command.
STAGES = ("offered", "kernel", "booted", "ready", "joined", "receiving", "written",
          "verified")  # fmt: skip
FINAL = ("verified", "failed")
ALL_STAGES = (*STAGES, "failed", "missed", "absent")


class BadReport(ValueError):
    """A datagram that is not a report."""


@dataclass(frozen=True)
class StageReport:
    node: str
    stage: str
    round: int = 0
    bytes: int = 0
    code: str = ""
    detail: str = ""


def encode_report(r: StageReport) -> bytes:
    d = {"v": VERSION, "node": r.node, "stage": r.stage, "round": r.round, "bytes": r.bytes}
    if r.code:
        d["code"] = r.code
    if r.detail:
        d["detail"] = r.detail[:400]
    return json.dumps(d).encode()


def decode_report(data: bytes) -> StageReport:
    try:
        d = json.loads(data)
    except ValueError:
        raise BadReport("not JSON") from None
    if not isinstance(d, dict) or d.get("v") != VERSION:
        raise BadReport("not a version-1 report")
    node, stage = d.get("node"), d.get("stage")
    if not isinstance(node, str) or not node or len(node) > 253:
        raise BadReport(f"bad node {node!r}")
    if stage not in ALL_STAGES:
        raise BadReport(f"bad stage {stage!r}")
    rnd, nbytes = d.get("round", 0), d.get("bytes", 0)
    if not isinstance(rnd, int) or not isinstance(nbytes, int) or rnd < 0 or nbytes < 0:
        raise BadReport("bad round or bytes")
    return StageReport(node, stage, rnd, nbytes, str(d.get("code", ""))[:32],
                  str(d.get("detail", ""))[:400])  # fmt: skip


@dataclass(frozen=True)
class Answer:
    round: int
    go: bool
    next: list[list[str]] | None = None
    sha256: str = ""
    size: int = 0
    stop: bool = False  # the node is done (verified) or not in the order: exit
    target: str = ""  # provision.target (a node's --target overrides it)
    xxh3: str = ""  # xxh3_128 of the image, pinned with the sha256 (a faster read-back)


def encode_answer(a: Answer) -> bytes:
    d: dict = {"v": VERSION, "round": a.round, "go": a.go, "sha256": a.sha256, "size": a.size}
    if a.next is not None:
        d["next"] = a.next
    if a.stop:
        d["stop"] = True
    if a.target:
        d["target"] = a.target
    if a.xxh3:
        d["xxh3"] = a.xxh3
    return json.dumps(d).encode()


def decode_answer(data: bytes) -> Answer:
    try:
        d = json.loads(data)
    except ValueError:
        raise BadReport("not JSON") from None
    if not isinstance(d, dict) or d.get("v") != VERSION:
        raise BadReport("not a version-1 answer")
    nxt = d.get("next")
    if nxt is not None and not (isinstance(nxt, list) and all(
            isinstance(hl, list) and hl and all(isinstance(h, str) for h in hl) for hl in nxt)):
        raise BadReport(f"bad next {nxt!r}")
    return Answer(int(d.get("round", 0)), bool(d.get("go")), nxt, str(d.get("sha256", "")),
                  int(d.get("size", 0)), bool(d.get("stop", False)),
                  str(d.get("target", "")), str(d.get("xxh3", "")))  # fmt: skip


@dataclass
class NodeState:
    name: str
    stage: str = "absent"
    round: int = 0
    bytes: int = 0
    code: str = ""
    detail: str = ""
    seen: float = 0.0  # monotonic time of its last report
    reported: bool = False  # it has reported at least once
    since: float = 0.0  # when it entered this stage


@dataclass
class RoundBook:
    """Every node's stage and the rounds' decisions.  ``order`` are the receivers."""

    order: tuple[str, ...]
    sha256: str = ""
    size: int = 0
    round: int = 1
    streaming: bool = False  # the current round's root runs
    closed: bool = False  # the current round has ended: nobody joins it any more
    plans: dict[str, list[list[str]]] = field(default_factory=dict)  # this round's -next
    members: set[str] = field(default_factory=set)  # nodes told to go in this round
    nodes: dict[str, NodeState] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)  # a node's reports came from
    reached: set[str] = field(default_factory=set)  # the last round's stream reached these
    events: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in self.order:
            self.nodes.setdefault(name, NodeState(name))

    def set_stage(self, name: str, stage: str, now: float, **kw: object) -> None:
        st = self.nodes[name]
        if st.stage != stage:
            st.stage, st.since = stage, now
            self.events.append(f"{name} {stage}" + (f" {kw.get('code')}" if kw.get("code") else ""))
        for k, v in kw.items():
            setattr(st, k, v)

    def on_report(self, r: StageReport, now: float) -> Answer:
        st = self.nodes.get(r.node)
        if st is None:
            return Answer(self.round, False, stop=True)
        st.seen, st.reported = now, True
        if st.stage == "verified" or (st.stage == "failed" and r.stage != "booted"):
            return Answer(st.round, False, stop=True)
        if r.round == self.round or r.stage == "booted":
            self.set_stage(r.node, r.stage, now, bytes=r.bytes, code=r.code, detail=r.detail)
            if r.stage in FINAL:  # taken: the node may stop now (it reports once a second)
                return Answer(st.round, False, stop=True)
        if r.node in self.members or (not self.streaming and not self.closed
                                      and r.node in self.plans):
            self.members.add(r.node)
            st.round = self.round
            return Answer(self.round, True, self.plans.get(r.node, []), self.sha256, self.size)
        later = self.streaming or self.closed
        return Answer(self.round + (1 if later else 0), False, sha256=self.sha256,
                      size=self.size)  # fmt: skip

    def ready(self) -> list[str]:
        return [n for n in self.order if n in self.members and self.nodes[n].stage == "ready"]

    def should_start(self, want: int, started: float, wait: float, now: float) -> bool:
        """Start once ``want`` members are ready (every receiver when 0), or after
        ``wait`` seconds with at least one."""
        ready = len(self.ready())
        goal = want or len([n for n in self.plans if n])
        return ready >= goal or (ready > 0 and now - started >= wait)

    def finish_round(self, results: dict[str, tuple[str, int]], now: float) -> list[str]:
        """The root's per-node results (name -> (code, bytes)) in; members the tree did
        not reach are 'missed'; returns the nodes for a follow-up round."""
        self.streaming, self.closed = False, True
        for name in self.members:
            st = self.nodes[name]
            code, _ = results.get(name, ("", 0))
            if st.stage in FINAL:
                continue
            if name not in results:
                self.set_stage(name, "missed", now, code="NNF", detail="not reached this round")
            elif code not in ("", "NONE"):
                self.set_stage(name, "failed", now, code=code)
        self.reached = {n for n, (code, _) in results.items() if code in ("", "NONE")}
        return self.late()

    def late(self) -> list[str]:
        """Nodes that reported but were not reached by the last round (a follow-up's)."""
        return [n for n in self.order if self.nodes[n].stage in ("booted", "ready", "missed")
                and self.nodes[n].reported and n not in self.reached]  # fmt: skip

    def begin(self, plans: dict[str, list[list[str]]]) -> None:
        self.plans = plans
        self.members = set()
        self.closed = False

    def next_round(self, plans: dict[str, list[list[str]]]) -> None:
        self.round += 1
        self.begin(plans)

    def summary(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for n in self.order:
            out.setdefault(self.nodes[n].stage, []).append(n)
        return out

    def table(self, now: float | None = None) -> list[dict]:
        now = time.monotonic() if now is None else now
        return [{"node": s.name, "stage": s.stage, "round": s.round, "bytes": s.bytes,
                 "code": s.code, "detail": s.detail,
                 "last_report": round(now - s.seen, 1) if s.reported else None}
                for s in self.nodes.values()]  # fmt: skip
