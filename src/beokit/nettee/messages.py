"""nettee's control messages, typed (pure logic, no I/O).

Every frame on a control connection is one of the frozen dataclasses
below, and there is one way in and one way out, as with h11's events:
:func:`encode` (a message to the bytes of one frame) and :func:`decode`
(a frame's JSON object to a message).  Each type has one writer
(:data:`WRITERS`) and one reader (:data:`READERS`); a reader checks every
field it takes (type, range, length) and makes every text a peer sent
printable and bounded, so what reaches the node is well-formed.  Anything
else is :class:`~beokit.nettee.protocol.ProtocolError` naming the message
and the field.  An unknown type is an error too: all nodes of a chain run
the same protocol version, which the handshake checks first.

    child  -> parent   Hello    (first, on the control connection)
    parent -> child    Join
    child  -> parent   Welcome  (or Refuse)
    child  -> parent   Ready    (the subtree below it has formed)
    both ways          Ping     (heartbeat; child -> parent carries its byte count)
    parent -> child    End      (the stream's byte count, after the data)
    parent -> child    Await    (-stm_wait: report only once the commands have ended)
    child  -> parent   SubtreeReport (report: the results of its whole subtree)
    parent -> child    Abort    (collapse, downwards)
    child  -> parent   Fail     (collapse, upwards)

To add a message: a frozen dataclass with a ``TYPE``, a writer and a
reader registered below, a round-trip case in tests/test_protocol.py, and a
line in the protocol table of docs/nettee.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from beokit.nettee.protocol import (
    CODE_MAX,
    NAME_MAX,
    TEXT_MAX,
    VERSION,
    FrameDecoder,
    NodeResult,
    ProtocolError,
    encode_frame,
    printable,
)

MAX_COUNT = (1 << 63) - 1  # a byte count or offset
ID_MAX = 64  # a node id or session id (uuid4 hex: 32)
HOST_MAX = 255  # a host name or address in a Kid


# ---------------------------------------------------------------- the messages


@dataclass(frozen=True)
class Hello:
    """The greeting of a node on its control port.  ``busy``: the session of
    the chain it is already in (a ``-heal`` node, which still greets
    callers because one may be an ancestor come to adopt it)."""

    TYPE: ClassVar[str] = "hello"
    nonce: bytes
    auth: bool
    name: str
    busy: str | None = None
    why: str = ""


@dataclass(frozen=True)
class Join:
    """A parent's answer to a hello.  ``mac`` is the proof of the secret as
    sent (hex text; None: no secret).  ``path``: node ids from the root.
    ``adopt``: an ancestor taking over (-heal); ``bound``: the parent keeps
    an in-memory replay window and needs bounded socket buffers."""

    TYPE: ClassVar[str] = "join"
    nonce: bytes
    mac: str | None
    name: str
    session: str
    path: tuple[str, ...]
    adopt: bool = False
    bound: bool = False


@dataclass(frozen=True)
class Welcome:
    """The child accepts the parent; ``have``: bytes it holds (an adoption)."""

    TYPE: ClassVar[str] = "welcome"
    mac: str | None
    name: str
    have: int = 0


@dataclass(frozen=True)
class Refuse:
    """No: ``why``; ``busy`` the session of the chain the node is in."""

    TYPE: ClassVar[str] = "refuse"
    why: str
    busy: str | None = None


@dataclass(frozen=True)
class Kid:
    """Where a node's child listens, for an ancestor that must adopt it (-heal)."""

    name: str
    host: str
    port: int
    kids: tuple[Kid, ...] = ()


@dataclass(frozen=True)
class Ready:
    """The subtree below the sender has formed: the names of all its nodes,
    and (-heal) where its children are (``kids``; None: not sent)."""

    TYPE: ClassVar[str] = "ready"
    nodes: tuple[str, ...]
    kids: tuple[Kid, ...] | None = None


@dataclass(frozen=True)
class Ping:
    """Heartbeat; from a child it carries the bytes received so far."""

    TYPE: ClassVar[str] = "ping"
    received: int | None = None


@dataclass(frozen=True)
class End:
    """The parent's data connection has ended after ``sent`` bytes.  ``short``:
    the stream was cut above the parent (who and why)."""

    TYPE: ClassVar[str] = "end"
    sent: int
    short: str = ""


@dataclass(frozen=True)
class Await:
    """-stm_wait (from the root, passed down the tree): a node whose executor
    (beo exec) reports to it sends its report only once every command it
    received has ended, or ``seconds`` after its end of stream (0: no limit)."""

    TYPE: ClassVar[str] = "await"
    seconds: float = 0.0


@dataclass(frozen=True)
class Abort:
    """Collapse: the parent is going down; ``why`` says where it started."""

    TYPE: ClassVar[str] = "abort"
    why: str


@dataclass(frozen=True)
class Fail:
    """Collapse: ``node`` (the sender or one below it) failed with ``code``."""

    TYPE: ClassVar[str] = "fail"
    code: str
    node: str
    why: str


@dataclass(frozen=True)
class Adopted:
    name: str
    offset: int


@dataclass(frozen=True)
class Heal:
    """One -heal event: ``by`` adopted the children of ``dead`` (Unix times)."""

    dead: str
    by: str
    detected: float
    resumed: float
    adopted: tuple[Adopted, ...] = ()
    lost: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"dead": self.dead, "by": self.by, "detected": self.detected,
                "adopted": [{"name": a.name, "offset": a.offset} for a in self.adopted],
                "lost": list(self.lost), "resumed": self.resumed}  # fmt: skip


@dataclass(frozen=True)
class SubtreeReport:
    """The results of the sender's whole subtree, itself first, and what was
    healed in it (for the root's -report)."""

    TYPE: ClassVar[str] = "report"
    nodes: tuple[NodeResult, ...]
    heals: tuple[Heal, ...] = ()


Message = (Hello | Join | Welcome | Refuse | Ready | Ping | End | Await | Abort | Fail
           | SubtreeReport)


# ---------------------------------------------------------------- writers


def _write_hello(m: Hello) -> dict:
    out = {"v": VERSION, "nonce": m.nonce.hex(), "auth": m.auth, "name": m.name}
    if m.busy is not None:
        out["busy"], out["why"] = m.busy, m.why
    return out


def _write_join(m: Join) -> dict:
    out: dict[str, Any] = {"v": VERSION, "nonce": m.nonce.hex(), "mac": m.mac, "name": m.name,
                           "session": m.session, "path": list(m.path)}  # fmt: skip
    if m.adopt:
        out["adopt"] = True
    if m.bound:
        out["bound"] = True
    return out


def _write_welcome(m: Welcome) -> dict:
    out: dict[str, Any] = {"mac": m.mac, "name": m.name}
    if m.have:
        out["have"] = m.have
    return out


def _write_refuse(m: Refuse) -> dict:
    return {"why": m.why} if m.busy is None else {"why": m.why, "busy": m.busy}


def _kid(k: Kid) -> dict:
    return {"name": k.name, "host": k.host, "port": k.port, "kids": [_kid(c) for c in k.kids]}


def _write_ready(m: Ready) -> dict:
    out: dict[str, Any] = {"nodes": list(m.nodes)}
    if m.kids is not None:
        out["kids"] = [_kid(k) for k in m.kids]
    return out


def _write_report(m: SubtreeReport) -> dict:
    out: dict[str, Any] = {"nodes": [n.to_dict() for n in m.nodes]}
    if m.heals:
        out["heals"] = [h.to_json() for h in m.heals]
    return out


WRITERS: dict[type, Callable[[Any], dict]] = {
    Hello: _write_hello,
    Join: _write_join,
    Welcome: _write_welcome,
    Refuse: _write_refuse,
    Ready: _write_ready,
    Ping: lambda m: {} if m.received is None else {"bytes": m.received},
    End: lambda m: {"bytes": m.sent, "short": m.short} if m.short else {"bytes": m.sent},
    Await: lambda m: {"seconds": m.seconds},
    Abort: lambda m: {"why": m.why},
    Fail: lambda m: {"code": m.code, "node": m.node, "why": m.why},
    SubtreeReport: _write_report,
}


def encode(msg: Message) -> bytes:
    """The one way out: a message as the bytes of one frame."""
    return encode_frame({"t": msg.TYPE, **WRITERS[type(msg)](msg)})


# ---------------------------------------------------------------- readers


class _Fields:
    """Typed access to one frame's fields; every failure names the message and field."""

    def __init__(self, obj: dict) -> None:
        self.obj = obj
        self.kind = obj["t"]

    def bad(self, key: str, what: str) -> ProtocolError:
        return ProtocolError(f"{self.kind} with a bad {key}: {what}", self.kind)

    def text(self, key: str, limit: int = TEXT_MAX, default: str = "") -> str:
        """A text made printable; absent or not a string: ``default``."""
        value = self.obj.get(key)
        return printable(value, limit) if isinstance(value, str) else default

    def optional_text(self, key: str, limit: int) -> str | None:
        if key not in self.obj or self.obj[key] is None:
            return None
        return self.text(key, limit)

    def count(self, key: str, default: int | None = None) -> int:
        value = self.obj.get(key, default)
        if value is None and default is None:
            raise self.bad(key, "missing")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            raise self.bad(key, f"{printable(repr(value), 40)} is not a byte count")
        return value

    def flag(self, key: str) -> bool:
        value = self.obj.get(key, False)
        if not isinstance(value, bool):
            raise self.bad(key, "not true or false")
        return value

    def nonce(self) -> bytes:
        try:
            value = bytes.fromhex(self.obj["nonce"])
        except (KeyError, TypeError, ValueError):
            raise ProtocolError(f"{self.kind} without a valid nonce", self.kind) from None
        if len(value) < 16:
            raise ProtocolError(f"{self.kind} nonce too short", self.kind)
        return value

    def proof(self) -> str | None:
        """A proof of the secret as sent: hex text (checked later), None if absent."""
        value = self.obj.get("mac")
        return value[:256] if isinstance(value, str) else None

    def version(self) -> None:
        v = self.obj.get("v")
        if v != VERSION or isinstance(v, bool):
            raise ProtocolError(f"protocol version {v!r}, this nettee speaks {VERSION}", self.kind)

    def items(self, key: str, default: list | None = None) -> list:
        value = self.obj.get(key, default)
        if not isinstance(value, list):
            raise self.bad(key, "not a list")
        return value


def _read_hello(f: _Fields) -> Hello:
    f.version()
    nonce = f.nonce()
    return Hello(nonce, f.flag("auth"), f.text("name", NAME_MAX),
                 busy=f.optional_text("busy", ID_MAX), why=f.text("why"))  # fmt: skip


def _read_join(f: _Fields) -> Join:
    f.version()
    nonce = f.nonce()
    if not isinstance(f.obj.get("path"), list):
        raise ProtocolError("join without a path", f.kind)
    path = f.items("path")
    if not all(isinstance(p, str) and len(p) <= ID_MAX for p in path):
        raise f.bad("path", "not a list of node ids")
    return Join(nonce, f.proof(), f.text("name", NAME_MAX), f.text("session", ID_MAX),
                tuple(path), adopt=f.flag("adopt"), bound=f.flag("bound"))  # fmt: skip


def _read_kid(f: _Fields, obj: object) -> Kid:
    if not isinstance(obj, dict):
        raise f.bad("kids", "not a list of objects")
    host, port, kids = obj.get("host"), obj.get("port"), obj.get("kids", [])
    if not isinstance(host, str) or not host or len(host) > HOST_MAX:
        raise f.bad("kids", "a child without a host")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65534:
        raise f.bad("kids", "a child without a valid port")
    if not isinstance(kids, list):
        raise f.bad("kids", "not a list")
    name = obj.get("name")
    return Kid(printable(name) if isinstance(name, str) else "?", host, port,
               tuple(_read_kid(f, k) for k in kids))  # fmt: skip


def _read_ready(f: _Fields) -> Ready:
    names = f.obj.get("nodes")
    nodes = tuple(printable(n) for n in names if isinstance(n, str)) if isinstance(names, list) else ()
    kids = None
    if "kids" in f.obj:
        kids = tuple(_read_kid(f, k) for k in f.items("kids"))
    return Ready(nodes, kids)


def _read_await(f: _Fields) -> Await:
    t = f.obj.get("seconds", 0.0)
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 1e9:
        raise f.bad("seconds", f"{printable(repr(t), 40)} is not a number of seconds")
    return Await(float(t))


def _read_heal(f: _Fields, obj: object) -> Heal:
    if not isinstance(obj, dict):
        raise f.bad("heals", "not a list of objects")
    sub = _Fields({**obj, "t": f.kind})
    adopted = []
    for a in sub.items("adopted", []):
        if not isinstance(a, dict):
            raise f.bad("heals", "an adoption that is not an object")
        entry = _Fields({**a, "t": f.kind})
        adopted.append(Adopted(entry.text("name", NAME_MAX, "?"), entry.count("offset", 0)))
    lost = tuple(printable(n) for n in sub.items("lost", []) if isinstance(n, str))
    times = []
    for key in ("detected", "resumed"):
        t = obj.get(key, 0.0)
        if isinstance(t, bool) or not isinstance(t, int | float) or t != t or abs(t) > 1e11:
            raise f.bad("heals", f"{key} is not a time")
        times.append(float(t))
    return Heal(sub.text("dead", NAME_MAX, "?"), sub.text("by", NAME_MAX, "?"), times[0],
                times[1], tuple(adopted), lost)  # fmt: skip


def _read_report(f: _Fields) -> SubtreeReport:
    nodes = f.obj.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise ProtocolError("bad report", f.kind)
    try:
        results = tuple(NodeResult.from_dict(d) for d in nodes)
    except ProtocolError as exc:
        raise ProtocolError(str(exc), f.kind) from None
    heals = f.obj.get("heals", [])
    heals = tuple(_read_heal(f, h) for h in heals) if isinstance(heals, list) else ()
    return SubtreeReport(results, heals)


READERS: dict[str, Callable[[_Fields], Message]] = {
    Hello.TYPE: _read_hello,
    Join.TYPE: _read_join,
    Welcome.TYPE: lambda f: Welcome(f.proof(), f.text("name", NAME_MAX), f.count("have", 0)),
    Refuse.TYPE: lambda f: Refuse(f.text("why", default="no reason given"),
                                  f.optional_text("busy", ID_MAX)),  # fmt: skip
    Ready.TYPE: _read_ready,
    Ping.TYPE: lambda f: Ping(f.count("bytes") if "bytes" in f.obj else None),
    End.TYPE: lambda f: End(f.count("bytes"), f.text("short")),
    Await.TYPE: _read_await,
    Abort.TYPE: lambda f: Abort(f.text("why", default="?")),
    Fail.TYPE: lambda f: Fail(f.text("code", CODE_MAX, "BSTAT") or "BSTAT",
                              f.text("node", NAME_MAX), f.text("why")),  # fmt: skip
    SubtreeReport.TYPE: _read_report,
}


def decode(obj: dict) -> Message:
    """The one way in: a frame's object (with a string ``t``) as a message."""
    kind = obj.get("t")
    reader = READERS.get(kind) if isinstance(kind, str) else None
    if reader is None:
        raise ProtocolError(f"unknown message type {printable(repr(kind), 40)}")
    try:
        return reader(_Fields(obj))
    except RecursionError:
        raise ProtocolError(f"{kind} nested too deeply", kind) from None


class MessageDecoder:
    """Feed bytes from a control connection, get whole messages."""

    def __init__(self) -> None:
        self.frames = FrameDecoder()

    def feed(self, data: bytes) -> list[Message]:
        return [decode(obj) for obj in self.frames.feed(data)]

    @property
    def pending(self) -> int:
        return self.frames.pending
