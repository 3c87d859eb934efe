"""nettee's wire protocol (pure logic, no I/O).

Two TCP connections join a parent to each child, on the child's PORT+1
(control) and PORT (data):

* **control** carries length-prefixed JSON messages both ways: the
  handshake (with an HMAC challenge-response when a shared secret is set),
  heartbeats, the end-of-stream byte count, failure notices and the final
  report of the child's whole subtree.
* **data** starts with a fixed 32-byte header (magic, a token bound to the
  control handshake, the stream offset) and then carries the raw stream,
  nothing else, so the kernel can splice it.  The parent ends it with
  ``shutdown(SHUT_WR)``; a close without the control ``end`` message is a
  network read failure, never a silent short file.

Handshake (child speaks first, so a wrong peer learns nothing)::

    child  -> parent   hello   {v, nonce_c, auth, name}
    parent -> child    join    {v, nonce_p, mac_p, name, session, path}
    child  -> parent   welcome {mac_c, name}          (or refuse {why})
    parent -> child    data connection: MAGIC token offset, then bytes

    mac_p = HMAC-SHA256(secret, "nettee-parent" | nonce_c | nonce_p)
    mac_c = HMAC-SHA256(secret, "nettee-child"  | nonce_p | nonce_c)
    token = HMAC-SHA256(secret or nonce_c, "nettee-data" | nonce_c | nonce_p)[:16]
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

# every name and reason a peer sends passes through printable before it is shown
from beokit.nettee.text import NAME_MAX as NAME_MAX
from beokit.nettee.text import printable as printable

VERSION = 1
MAGIC = b"NTEEDATA"
DATA_HEADER = struct.Struct("!8s16sQ")  # magic, token, stream offset
FRAME = struct.Struct("!I")
MAX_FRAME = 4 << 20  # a 1000-node report fits easily
TEXT_MAX = 1000  # a reason (why, detail) taken from a peer
CODE_MAX = 16  # an error code taken from a peer


class ProtocolError(Exception):
    """The peer sent something that is not nettee's protocol."""


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
}
_ORDER = list(Code)


# ---------------------------------------------------------------- framing


def encode(msg: dict) -> bytes:
    body = json.dumps(msg, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes is too large")
    return FRAME.pack(len(body)) + body


class FrameDecoder:
    """Feed bytes, get whole messages (dicts with a string ``t``)."""

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
                msg = json.loads(body)
            except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, absurd nesting
                raise ProtocolError(f"undecodable message: {str(exc)[:80]}") from None
            if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
                raise ProtocolError("message without a type")
            out.append(msg)
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


# ---------------------------------------------------------------- handshake


def _mac(secret: bytes, label: bytes, a: bytes, b: bytes) -> bytes:
    return hmac.new(secret, label + a + b, hashlib.sha256).digest()


def data_token(secret: bytes | None, nonce_c: bytes, nonce_p: bytes) -> bytes:
    return _mac(secret or nonce_c, b"nettee-data", nonce_c, nonce_p)[:16]


def hello(nonce_c: bytes, secret: bytes | None, name: str) -> dict:
    return {"t": "hello", "v": VERSION, "nonce": nonce_c.hex(), "auth": secret is not None,
            "name": name}  # fmt: skip


def _nonce(msg: dict, key: str = "nonce") -> bytes:
    try:
        value = bytes.fromhex(msg[key])
    except (KeyError, TypeError, ValueError):
        raise ProtocolError(f"{msg.get('t')} without a valid {key}") from None
    if len(value) < 16:
        raise ProtocolError(f"{msg.get('t')} nonce too short")
    return value


def answer_hello(msg: dict, nonce_p: bytes, secret: bytes | None, name: str, session: str,
                 path: list[str]) -> tuple[dict, bytes]:  # fmt: skip
    """Parent side: check the child's hello, build the join; returns (join, nonce_c)."""
    if msg.get("t") == "refuse":
        raise AuthError(f"refused: {printable(msg.get('why', 'no reason given'), TEXT_MAX)}")
    if msg.get("t") != "hello":
        raise ProtocolError(f"expected hello, got {msg.get('t')!r}")
    if msg.get("v") != VERSION:
        raise ProtocolError(f"protocol version {msg.get('v')!r}, this nettee speaks {VERSION}")
    nonce_c = _nonce(msg)
    if msg.get("auth") and secret is None:
        raise AuthError("it requires a shared secret and this node has none (set NETTEE_SECRET)",
                        "the parent has no shared secret and this node requires one")
    if not msg.get("auth") and secret is not None:
        raise AuthError("it has no shared secret and this node requires one",
                        "this node has no shared secret and the parent requires one "
                        "(set NETTEE_SECRET)")
    mac = _mac(secret, b"nettee-parent", nonce_c, nonce_p).hex() if secret else None
    join = {"t": "join", "v": VERSION, "nonce": nonce_p.hex(), "mac": mac, "name": name,
            "session": session, "path": path}  # fmt: skip
    return join, nonce_c


def check_join(msg: dict, nonce_c: bytes, secret: bytes | None, node_id: str) -> bytes:
    """Child side: verify the parent's join; returns nonce_p or raises."""
    if msg.get("t") != "join":
        raise ProtocolError(f"expected join, got {msg.get('t')!r}")
    if msg.get("v") != VERSION:
        raise ProtocolError(f"protocol version {msg.get('v')!r}, this nettee speaks {VERSION}")
    nonce_p = _nonce(msg)
    if secret is not None:
        mac = msg.get("mac")
        if not isinstance(mac, str):
            raise AuthError("parent sent no proof of the shared secret (is NETTEE_SECRET set there?)")
        try:
            got = bytes.fromhex(mac)
        except ValueError:
            raise AuthError("parent sent a malformed proof") from None
        if not hmac.compare_digest(got, _mac(secret, b"nettee-parent", nonce_c, nonce_p)):
            raise AuthError("parent failed the shared-secret challenge (wrong secret)")
    path = msg.get("path")
    if not isinstance(path, list):
        raise ProtocolError("join without a path")
    if node_id in path:
        raise ProtocolError("loop: this node is already upstream in the same chain")
    return nonce_p


def welcome(nonce_c: bytes, nonce_p: bytes, secret: bytes | None, name: str) -> dict:
    mac = _mac(secret, b"nettee-child", nonce_p, nonce_c).hex() if secret else None
    return {"t": "welcome", "mac": mac, "name": name}


def check_welcome(msg: dict, nonce_c: bytes, nonce_p: bytes, secret: bytes | None) -> str:
    """Parent side: verify the child's proof; returns the child's name."""
    if msg.get("t") == "refuse":
        raise AuthError(f"refused: {printable(msg.get('why', 'no reason given'), TEXT_MAX)}")
    if msg.get("t") != "welcome":
        raise ProtocolError(f"expected welcome, got {msg.get('t')!r}")
    if secret is not None:
        mac = msg.get("mac")
        want = _mac(secret, b"nettee-child", nonce_p, nonce_c)
        try:
            ok = isinstance(mac, str) and hmac.compare_digest(bytes.fromhex(mac), want)
        except ValueError:
            ok = False
        if not ok:
            raise AuthError("child failed the shared-secret challenge (wrong secret)")
    name = msg.get("name")
    return printable(name) if isinstance(name, str) and name else "?"


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

    def to_dict(self) -> dict:
        return {"name": self.name, "depth": self.depth, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "bytes_up": self.bytes_up, "codes": self.codes,
                "seconds": self.seconds,
                "detail": self.detail, "local_out": self.local_out,
                "fatal": self.fatal, "digest": self.digest}  # fmt: skip

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
                       digest=printable(d.get("digest", ""), TEXT_MAX))  # fmt: skip
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"bad node result: {exc}") from None


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


def parse_report(msg: dict) -> list[NodeResult]:
    """A child's report: the results of every node of its subtree, itself first."""
    if msg.get("t") != "report" or not isinstance(msg.get("nodes"), list) or not msg["nodes"]:
        raise ProtocolError("bad report")
    return [NodeResult.from_dict(d) for d in msg["nodes"]]


def report(nodes: list[NodeResult]) -> dict:
    return {"t": "report", "nodes": [n.to_dict() for n in nodes]}


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
