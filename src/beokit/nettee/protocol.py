"""nettee's wire protocol: the layers under the messages (pure logic, no I/O).

Two TCP connections join a parent to each child, on the child's PORT+1
(control) and PORT (data):

* **control** carries length-prefixed JSON frames both ways; each frame is
  one typed message of :mod:`beokit.nettee.messages` (the handshake of
  :mod:`beokit.nettee.handshake`, heartbeats, the end-of-stream byte count,
  failure notices and the final report of the child's whole subtree).
* **data** starts with a fixed 32-byte header (magic, a token bound to the
  control handshake, the stream offset) and then carries the raw stream,
  nothing else, so the kernel can splice it.  The parent ends it with
  ``shutdown(SHUT_WR)``; a close without the control ``end`` message is a
  network read failure, never a silent short file.

This module holds what the others build on: the man page's error codes,
the decode errors, the framing, the data header, and a node's result with
the rules that compare results (byte counts, digests).
"""

from __future__ import annotations

import hmac
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from beokit.errors import WireError

# every name and reason a peer sends passes through printable before it is shown
from beokit.nettee.text import NAME_MAX as NAME_MAX
from beokit.nettee.text import printable as printable
from beokit.proc import signal_name

VERSION = 1
MAGIC = b"NTEEDATA"
DATA_HEADER = struct.Struct("!8s16sQ")  # magic, token, stream offset
FRAME = struct.Struct("!I")
MAX_FRAME = 4 << 20  # a 1000-node report fits easily
TEXT_MAX = 1000  # a reason (why, detail) taken from a peer
CODE_MAX = 16  # an error code taken from a peer
ADDR_MAX = 300  # a node's address (host or host:port) taken from a peer


class ProtocolError(WireError):
    """The peer sent something that is not nettee's protocol.

    ``kind`` is the type of the message that failed to decode, when it had
    one (a bad ``report`` is the child's BSTAT, not a lost connection).
    """

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


class AuthError(ProtocolError):
    """The shared-secret challenge failed; the message says which side lacks what.

    ``for_peer`` is the same fact worded for the other side, sent in a refuse.
    """

    def __init__(self, message: str, for_peer: str = "") -> None:
        super().__init__(message)
        self.for_peer = for_peer or message


class Code(StrEnum):
    """The man page's error codes."""

    NONE = "NONE"
    NWF = "NWF"  # network write failure
    LWF = "LWF"  # local write failure
    NRF = "NRF"  # network read failure
    LRF = "LRF"  # local read failure
    BBC = "BBC"  # child returned incorrect byte count
    BSTAT = "BSTAT"  # child returned unknown or bad status
    NNF = "NNF"  # could not connect to (one or more) child nodes
    SIG = "SIG"  # beokit: the node was stopped by SIGINT/SIGTERM
    BDG = "BDG"  # beokit: the node's digest differs from the root's (-digest)
    CMDF = "CMDF"  # beokit: a command run by beo exec failed, or did not complete (-stm_wait)


CODE_TEXT = {
    Code.NONE: "no errors",
    Code.NWF: "network write failure",
    Code.LWF: "local write failure",
    Code.NRF: "network read failure",
    Code.LRF: "local read failure",
    Code.BBC: "child returned incorrect byte count",
    Code.BSTAT: "child returned unknown or bad status",
    Code.NNF: "could not connect to (one or more) child nodes",
    Code.SIG: "stopped by a signal",
    Code.BDG: "child wrote data whose digest differs from the root's",
    Code.CMDF: "a command failed on the node (beo exec), or did not complete in -stm_wait",
}
_ORDER = list(Code)


# ---------------------------------------------------------------- framing


def encode_frame(obj: dict) -> bytes:
    """One frame: a 4-byte length, then compact JSON (messages.encode builds ``obj``)."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes is too large")
    return FRAME.pack(len(body)) + body


class FrameDecoder:
    """Feed bytes, get whole frames (JSON objects with a string ``t``);
    :class:`beokit.nettee.messages.MessageDecoder` turns them into messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        self._buf += data
        out = []
        while len(self._buf) >= FRAME.size:
            (size,) = FRAME.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes announced (max {MAX_FRAME})")
            if len(self._buf) < FRAME.size + size:
                break
            body = bytes(self._buf[FRAME.size : FRAME.size + size])
            del self._buf[: FRAME.size + size]
            try:
                obj = json.loads(body)
            except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, absurd nesting
                raise ProtocolError(f"undecodable message: {str(exc)[:80]}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
                raise ProtocolError("message without a type")
            out.append(obj)
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


# ---------------------------------------------------------------- data connection


def data_header(token: bytes, offset: int = 0) -> bytes:
    return DATA_HEADER.pack(MAGIC, token, offset)


def parse_data_header(raw: bytes, token: bytes) -> int:
    """Check a data connection's header; returns the stream offset."""
    if len(raw) != DATA_HEADER.size:
        raise ProtocolError("short data header")
    magic, got, offset = DATA_HEADER.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError("not a nettee data connection")
    if not hmac.compare_digest(got, token):
        raise AuthError("data connection with a wrong token")
    return offset


# ---------------------------------------------------------------- reports


@dataclass
class NodeResult:
    """What one node of the tree did, as the root finally sees it."""

    name: str
    depth: int
    bytes_in: int = 0  # bytes of the stream this node received (or read, at the root)
    bytes_out: int = 0  # bytes written to its local -out
    bytes_up: int = 0  # -flow pull: bytes sent to its parent
    codes: list[str] = field(default_factory=list)  # failures of this node
    seconds: float = 0.0
    detail: str = ""
    local_out: bool = True
    fatal: bool = False  # an unhandled failure: this node's output cannot be trusted
    digest: str = ""  # -digest: "xxh3_128:<hex>" of what the node wrote (root: read)
    addr: str = ""  # where the node was reached (its parent's -next entry; the root's -bind)
    cmds: Commands | None = None  # -stm with beo exec: what its commands did

    def to_dict(self) -> dict:
        out = {"name": self.name, "depth": self.depth, "bytes_in": self.bytes_in,
               "bytes_out": self.bytes_out, "bytes_up": self.bytes_up, "codes": self.codes,
               "seconds": self.seconds,
               "detail": self.detail, "local_out": self.local_out,
               "fatal": self.fatal, "digest": self.digest, "addr": self.addr}  # fmt: skip
        if self.cmds is not None:
            out["cmds"] = self.cmds.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> NodeResult:
        if not isinstance(d, dict) or not isinstance(d.get("codes"), list):
            raise ProtocolError("bad node result: not an object with a list of codes")
        try:
            return cls(name=printable(d["name"]), depth=int(d["depth"]),
                       bytes_in=int(d["bytes_in"]), bytes_out=int(d["bytes_out"]),
                       bytes_up=int(d.get("bytes_up", 0)),
                       codes=[printable(c, CODE_MAX) for c in d["codes"]],
                       seconds=float(d["seconds"]),
                       detail=printable(d.get("detail", ""), TEXT_MAX),
                       local_out=bool(d.get("local_out", True)),
                       fatal=bool(d.get("fatal", False)),
                       digest=printable(d.get("digest", ""), TEXT_MAX),
                       addr=printable(d.get("addr", ""), ADDR_MAX),
                       cmds=Commands.from_dict(d["cmds"]) if "cmds" in d else None)  # fmt: skip
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise ProtocolError(f"bad node result: {exc}") from None


# ---------------------------------------------------------------- commands (-stm, beo exec)

CMD_TEXT_MAX = 200  # a command's text as reported
OUTPUT_MAX = 1000  # the tail of a command's output that may travel up (beo exec --report-output)
CMDS_LISTED = 20  # commands listed per node (failures first); the counts cover them all
MAX_COUNT_CMD = (1 << 63) - 1


def printable_lines(value: object, limit: int) -> str:
    """Like :func:`printable`, but newlines stay newlines (command output); at most
    ``limit`` characters, the last ones kept."""
    text = value if isinstance(value, str) else str(value)
    text = "\n".join(printable(line, limit) for line in text[-limit:].split("\n"))
    return text[-limit:]


def _int(d: dict, key: str, lo: int = 0, hi: int = MAX_COUNT_CMD) -> int:
    v = d.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{key} {printable(repr(v), 40)} is out of range")
    return v



@dataclass(frozen=True)
class CommandResult:
    """One command a node's executor ran: its sequence number in the stream (from 1),
    its text, how it ended (``status``: the exit status, or minus the signal that
    killed it; None: not ended) and the tail of its output (if asked for)."""

    seq: int
    cmd: str
    status: int | None = None
    out: str = ""

    @property
    def failed(self) -> bool:
        return self.status is not None and self.status != 0

    def how(self) -> str:
        """How it ended, in words: 'exit status 3', 'killed by SIGKILL', 'still running'."""
        if self.status is None:
            return "not completed"
        if self.status < 0:
            return f"killed by signal {-self.status} ({signal_name(-self.status)})"
        return f"exit status {self.status}"

    def to_dict(self) -> dict:
        out: dict = {"seq": self.seq, "cmd": self.cmd, "status": self.status}
        if self.out:
            out["out"] = self.out
        return out

    @classmethod
    def from_dict(cls, d: object) -> CommandResult:
        if not isinstance(d, dict) or not isinstance(d.get("cmd"), str):
            raise ValueError("a command that is not an object with a text")
        status = d.get("status")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)
                                   or not -128 <= status <= 255):  # fmt: skip
            raise ValueError(f"status {printable(repr(status), 40)} is not an exit status")
        out = d.get("out", "")
        return cls(_int(d, "seq"), printable(d["cmd"], CMD_TEXT_MAX), status,
                   printable_lines(out, OUTPUT_MAX) if isinstance(out, str) else "")  # fmt: skip


@dataclass(frozen=True)
class Commands:
    """What a node's executor (beo exec) did with the lines of a -stm stream:
    ``received`` commands, ``done`` of them ended, ``failed`` of those failed;
    ``listed``: at most :data:`CMDS_LISTED` of them (every failure first, then,
    with --report-output, the others); ``ended``: the executor said it is done
    (every command it received has ended); ``waited``: the node waited for it
    (-stm_wait) and ``expired``: that wait ran out."""

    received: int = 0
    done: int = 0
    failed: int = 0
    listed: tuple[CommandResult, ...] = ()
    ended: bool = False
    waited: bool = False
    expired: bool = False

    @property
    def complete(self) -> bool:
        return self.ended and self.done == self.received

    @property
    def running(self) -> int:
        return self.received - self.done

    def to_dict(self) -> dict:
        return {"received": self.received, "done": self.done, "failed": self.failed,
                "listed": [c.to_dict() for c in self.listed], "ended": self.ended,
                "waited": self.waited, "expired": self.expired}  # fmt: skip

    @classmethod
    def from_dict(cls, d: object) -> Commands:
        if not isinstance(d, dict) or not isinstance(d.get("listed", []), list):
            raise ValueError("cmds is not an object with a list of commands")
        listed = d.get("listed", [])[:CMDS_LISTED]
        flags = []
        for key in ("ended", "waited", "expired"):
            v = d.get(key, False)
            if not isinstance(v, bool):
                raise ValueError(f"cmds {key} is not true or false")
            flags.append(v)
        return cls(_int(d, "received"), _int(d, "done"), _int(d, "failed"),
                   tuple(CommandResult.from_dict(c) for c in listed), *flags)  # fmt: skip

    def without_output(self) -> Commands:
        """The same, the outputs dropped and only failures listed (a report too large)."""
        return replace(self, listed=tuple(replace(c, out="") for c in self.listed if c.failed))


def sort_codes(codes: Iterable[str]) -> list[str]:
    """Deduplicate and order codes as the man page lists them; NONE drops out."""
    s = {c for c in codes if c != Code.NONE.value}
    known = [c.value for c in _ORDER if c.value in s]
    return known + sorted(s - set(known))


def format_codes(codes: Iterable[str]) -> str:
    ordered = sort_codes(codes)
    return " ".join(ordered) if ordered else Code.NONE.value


def child_line(index: int, name: str, codes: Iterable[str]) -> str:
    return f"Failures detected in child {index} [{name}]: {format_codes(codes)}"


def chain_line(codes: Iterable[str]) -> str:
    return f"Failures detected in chain: {format_codes(codes)}"




def check_counts(moved: int, results: list[NodeResult], pull: bool = False) -> list[str]:
    """Codes the parent assigns its child after comparing byte counts.

    ``moved``: bytes the parent sent to the child (push) or received from it
    (pull); the child's report says what it received (push) or sent (pull).
    """
    if not results:
        return [Code.BBC.value]
    head = results[0]
    return [] if (head.bytes_up if pull else head.bytes_in) == moved else [Code.BBC.value]


def check_digests(nodes: list[NodeResult]) -> list[NodeResult]:
    """Root side of -digest: the nodes whose digest differs from the root's.

    ``nodes[0]`` is the root.  A node is compared when it wrote a local
    output, reported a digest, holds the whole stream (same byte count) and
    has no local write failure (whose output is known to be short anyway).
    """
    if not nodes or not nodes[0].digest:
        return []
    root = nodes[0]
    bad = []
    for n in nodes[1:]:
        if not (n.local_out and n.digest) or Code.LWF.value in n.codes:
            continue
        if n.bytes_in == root.bytes_in and n.digest != root.digest:
            bad.append(n)
    return bad
