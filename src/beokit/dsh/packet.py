"""The dshd state report on the wire, and the query handshake of the TCP ports (pure).

One UDP datagram per report, big-endian::

    magic "BKdS" | version u8 | flags u8 | name length u8 | reserved u8
    seq u32 | sent time ms u64 (sender's wall clock)
    load1 load5 load15 f32 | cpus u16 | jobs u16
    mem total KiB u64 | mem free KiB u64 | period ms u32
    name (UTF-8) | [MAC: 16 bytes, keyed BLAKE2s of everything before, when flags & 1]

A receiver with a secret accepts only packets whose MAC checks; a receiver
without one ignores the MAC. Freshness (replays) is the membership table's
business: :mod:`beokit.dsh.state` keeps the newest (time, seq) per member.

The gossip datagram (version 3, :func:`encode_gossip`) carries such reports,
each still signed by its origin, from one member to another::

    magic "BKdS" | version 3 u8 | flags u8 | sender length u8 | dest length u8
    hop seq u32 | hop time ms u64 (the sender's wall clock) | count u16 | reserved u16
    sender name | dest name
    count x (age ms u32 | length u16 | a version-2 report, its origin's MAC included)
    [MAC: 16 bytes, keyed BLAKE2s of everything before (another personalization)]

The age is the relay's: how long ago the origin made the report, as far as
the relays know (each adds the time the report spent with it). The hop MAC
covers the ages, the names and the hop counter; the origin's MAC covers the
report, so a relay cannot change a load.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from typing import Any, NamedTuple, NoReturn

from beokit import auth
from beokit.errors import WireError

MAGIC = b"BKdS"
VERSION = 2  # 1: HMAC-SHA256[:16]; 2: keyed BLAKE2s-128 (same layout otherwise)
FLAG_MAC = 1
MAC_LEN = 16
MAX_NAME = 255
_HEAD = struct.Struct("!4sBBBBIQfffHHQQI")
HEAD_LEN = _HEAD.size  # 52
MAX_PACKET = HEAD_LEN + MAX_NAME + MAC_LEN
_INF = float("inf")
_unpack = _HEAD.unpack_from
_new = tuple.__new__
_compare = hmac.compare_digest


class PacketError(WireError, ValueError):
    """A datagram that is not a valid state report (or fails authentication), or an
    answer of a port that is not what a dshd says."""


class Report(NamedTuple):
    """One node's state, as it sends it (a named tuple: cheap to build, 1000s a second)."""

    name: str
    seq: int = 0
    sent_ms: int = 0
    load1: float = 0.0
    load5: float = 0.0
    load15: float = 0.0
    cpus: int = 1
    jobs: int = 0
    mem_total_kb: int = 0
    mem_free_kb: int = 0
    period_ms: int = 1500


# The MAC is keyed BLAKE2s (RFC 7693) with a 16-byte output: BLAKE2 in keyed
# mode is a MAC by design (no HMAC construction needed), the output length
# and the personalization string are part of its parameter block (so this is
# not a truncation, and not the same function as any other use of the
# secret). The keyed state is set up once per secret; a MAC is then one state
# copy and one short update: about 0.4 us where HMAC-SHA256 through OpenSSL
# took 0.7 us with precomputed pads and 1.6-3.5 us with hmac.digest (wire
# version 1), twice that in the daemon's cache-cold batches.
MAC_PERSON = b"bkdshrep"
GOSSIP_PERSON = b"bkdsgsp3"  # the hop MAC of a gossip datagram: never the same as a report's
_KEYS: dict[bytes, Any] = {}
_GKEYS: dict[bytes, Any] = {}


def mac_key(secret: bytes) -> bytes:
    """The BLAKE2s key for a secret: the secret itself if at most 32 bytes, else
    its SHA-256 (as HMAC does with a key longer than a block)."""
    return secret if len(secret) <= 32 else hashlib.sha256(secret).digest()


def _keyed(secret: bytes, keys: dict[bytes, Any] = _KEYS, person: bytes = MAC_PERSON) -> Any:
    h = keys.get(secret)
    if h is None:
        h = hashlib.blake2s(key=mac_key(secret), digest_size=MAC_LEN, person=person)
        if len(keys) >= 16:  # a few secrets in a process's life (SIGHUP): stay small
            keys.clear()
        keys[secret] = h
    return h


def _mac(secret: bytes, data: bytes) -> bytes:
    """BLAKE2s-128(key=mac_key(secret), person=MAC_PERSON) of ``data``."""
    h = (_KEYS.get(secret) or _keyed(secret)).copy()
    h.update(data)
    return h.digest()


def _f32(x: float) -> float:
    if not math.isfinite(x) or x < 0:
        return 0.0
    return min(x, 3.0e38)


def encode(r: Report, secret: bytes | None = None) -> bytes:
    """The datagram for ``r``; with ``secret``, authenticated."""
    name = r.name.encode()
    if not 0 < len(name) <= MAX_NAME:
        raise PacketError(f"bad node name {r.name!r}: 1-{MAX_NAME} bytes")
    head = _HEAD.pack(
        MAGIC, VERSION, FLAG_MAC if secret else 0, len(name), 0,
        r.seq & 0xFFFFFFFF, max(0, r.sent_ms) & 0xFFFFFFFFFFFFFFFF,
        _f32(r.load1), _f32(r.load5), _f32(r.load15),
        max(0, min(r.cpus, 0xFFFF)), max(0, min(r.jobs, 0xFFFF)),
        max(0, min(r.mem_total_kb, 2**64 - 1)), max(0, min(r.mem_free_kb, 2**64 - 1)),
        max(0, min(r.period_ms, 0xFFFFFFFF)),
    )  # fmt: skip
    data = head + name
    return data + _mac(secret, data) if secret else data


def decode(data: bytes, secret: bytes | None = None) -> Report:
    """Parse a datagram; raise :class:`PacketError` if malformed or not authentic.

    With ``secret`` the packet must carry a MAC that checks. (The hot path of
    a daemon at 1000 members: one unpack, one combined check, the MAC with
    precomputed key states; the precise error is worked out only on failure.)
    """
    if len(data) < HEAD_LEN:
        raise PacketError(f"short packet ({len(data)} bytes)")
    (magic, version, flags, nlen, _res, seq, sent, l1, l5, l15, cpus, jobs, mt, mf,
     period) = _unpack(data)  # fmt: skip
    end = HEAD_LEN + nlen
    mac_len = MAC_LEN if flags & FLAG_MAC else 0
    if (
        magic != MAGIC
        or version != VERSION
        or nlen == 0
        or len(data) != end + mac_len
        or (secret is not None and not mac_len)
    ):
        _why(magic, version, nlen, len(data) == end + mac_len)
    if secret is not None:
        h = (_KEYS.get(secret) or _keyed(secret)).copy()
        h.update(data[:end])
        if not _compare(h.digest(), data[end:]):
            raise PacketError("bad MAC")
    try:
        name = data[HEAD_LEN:end].decode()
    except UnicodeDecodeError:
        raise PacketError("bad node name encoding") from None
    if not (0.0 <= l1 < _INF and 0.0 <= l5 < _INF and 0.0 <= l15 < _INF):  # NaN fails too
        raise PacketError("bad load value")
    return _new(Report, (name, seq, sent, l1, l5, l15, cpus, jobs, mt, mf, period))


def _why(magic: bytes, version: int, nlen: int, length_ok: bool) -> NoReturn:
    """The precise error for a packet that failed decode's combined check."""
    if magic != MAGIC:
        raise PacketError("not a dshd packet (bad magic)")
    if version != VERSION:
        raise PacketError(f"unsupported version {version}")
    if nlen == 0 or not length_ok:
        raise PacketError("bad packet length")
    raise PacketError("unauthenticated packet")


# ------------------------------------------------------------ gossip datagrams

GOSSIP_VERSION = 3
_GHEAD = struct.Struct("!4sBBBBIQHH")
GOSSIP_HEAD_LEN = _GHEAD.size  # 24
_REC = struct.Struct("!IH")  # age ms, length of the report
RECORD_OVERHEAD = _REC.size  # 6
MAX_DATAGRAM = 1400  # what a sender puts in one datagram: an Ethernet frame, with room
MAX_AGE_MS = 0xFFFFFFFF
_KEY = struct.Struct("!4sBBBBIQ")  # the first fields of a report: enough to order it


class Datagram(NamedTuple):
    """A decoded gossip datagram: who sent it to whom, and the reports it carries.

    Each record is (age ms, report bytes as its origin signed them, and the
    report's name, sent ms and seq read without checking its MAC: enough to
    see whether it is news); the name is None for a record that cannot be a
    report."""

    sender: str
    dest: str
    hop_seq: int
    hop_ms: int
    records: list[tuple[int, bytes, str | None, int, int]]


def version_of(data: bytes) -> int:
    """The wire version of a datagram (0 if it is not one of ours)."""
    return data[4] if len(data) > 4 and data[:4] == MAGIC else 0


def gossip_size(sender: str, dest: str, reports: list[bytes], secret: bytes | None) -> int:
    """The length :func:`encode_gossip` gives (to fill a datagram up to a size)."""
    return (GOSSIP_HEAD_LEN + len(sender.encode()) + len(dest.encode())
            + sum(RECORD_OVERHEAD + len(r) for r in reports) + (MAC_LEN if secret else 0))  # fmt: skip


def encode_gossip(sender: str, dest: str, hop_seq: int, hop_ms: int,
                  records: list[tuple[int, bytes]], secret: bytes | None = None) -> bytes:  # fmt: skip
    """The gossip datagram from ``sender`` to ``dest`` carrying ``records`` ((age ms,
    report bytes) pairs); with ``secret``, the hop MAC is added (each report keeps
    its own, from its origin)."""
    s, d = sender.encode(), dest.encode()
    if not (0 < len(s) <= MAX_NAME and 0 < len(d) <= MAX_NAME):
        raise PacketError(f"bad node name {sender!r} or {dest!r}: 1-{MAX_NAME} bytes")
    if len(records) > 0xFFFF:
        raise PacketError("too many records")
    parts = [_GHEAD.pack(MAGIC, GOSSIP_VERSION, FLAG_MAC if secret else 0, len(s), len(d),
                         hop_seq & 0xFFFFFFFF, max(0, hop_ms) & 0xFFFFFFFFFFFFFFFF,
                         len(records), 0), s, d]  # fmt: skip
    rec = _REC.pack
    for age, raw in records:
        parts.append(rec(max(0, min(age, MAX_AGE_MS)), len(raw)))
        parts.append(raw)
    data = b"".join(parts)
    if secret:
        h = (_GKEYS.get(secret) or _keyed(secret, _GKEYS, GOSSIP_PERSON)).copy()
        h.update(data)
        data += h.digest()
    return data


def decode_gossip(data: bytes, secret: bytes | None = None) -> Datagram:
    """Parse a gossip datagram; raise :class:`PacketError` if malformed or not authentic.

    Only the framing and the hop MAC are checked here: each report is checked
    (its origin's MAC) by whoever takes it (:func:`decode`), and only if it is
    news (:func:`report_key` orders it without the MAC)."""
    n = len(data)
    if n < GOSSIP_HEAD_LEN:
        raise PacketError(f"short packet ({n} bytes)")
    magic, version, flags, slen, dlen, hop_seq, hop_ms, count, _res = _GHEAD.unpack_from(data)
    if magic != MAGIC:
        raise PacketError("not a dshd packet (bad magic)")
    if version != GOSSIP_VERSION:
        raise PacketError(f"unsupported version {version}")
    end = n - (MAC_LEN if flags & FLAG_MAC else 0)
    if secret is not None:
        if not flags & FLAG_MAC:
            raise PacketError("unauthenticated packet")
        if end < GOSSIP_HEAD_LEN:
            raise PacketError("bad packet length")
        h = (_GKEYS.get(secret) or _keyed(secret, _GKEYS, GOSSIP_PERSON)).copy()
        h.update(data[:end])
        if not _compare(h.digest(), data[end:]):
            raise PacketError("bad MAC")
    at = GOSSIP_HEAD_LEN + slen + dlen
    if slen == 0 or dlen == 0 or at > end:
        raise PacketError("bad packet length")
    try:
        sender = data[GOSSIP_HEAD_LEN : GOSSIP_HEAD_LEN + slen].decode()
        dest = data[GOSSIP_HEAD_LEN + slen : at].decode()
    except UnicodeDecodeError:
        raise PacketError("bad node name encoding") from None
    records = []
    rec, key = _REC.unpack_from, _KEY.unpack_from
    for _ in range(count):
        if at + RECORD_OVERHEAD > end:
            raise PacketError("bad packet length")
        age, length = rec(data, at)
        at += RECORD_OVERHEAD
        if length < HEAD_LEN or at + length > end:
            raise PacketError("bad record length")
        magic, version, flags, nlen, _res, seq, sent = key(data, at)
        name = None
        if (magic == MAGIC and version == VERSION and nlen
                and length == HEAD_LEN + nlen + (MAC_LEN if flags & FLAG_MAC else 0)):  # fmt: skip
            try:
                name = data[at + HEAD_LEN : at + HEAD_LEN + nlen].decode()
            except UnicodeDecodeError:
                pass
        records.append((age, data[at : at + length], name, sent, seq))
        at += length
    if at != end:
        raise PacketError("bad packet length")
    return Datagram(sender, dest, hop_seq, hop_ms, records)


def report_key(raw: bytes) -> tuple[str, int, int]:
    """(name, sent ms, seq) of a version-2 report, without checking its MAC: enough
    to see whether it is news. Raise :class:`PacketError` if it cannot be a report."""
    if len(raw) < HEAD_LEN:
        raise PacketError(f"short packet ({len(raw)} bytes)")
    magic, version, flags, nlen, _res, seq, sent = _KEY.unpack_from(raw)
    if (magic != MAGIC or version != VERSION or nlen == 0
            or len(raw) != HEAD_LEN + nlen + (MAC_LEN if flags & FLAG_MAC else 0)):  # fmt: skip
        raise PacketError("not a report")
    try:
        return raw[HEAD_LEN : HEAD_LEN + nlen].decode(), sent, seq
    except UnicodeDecodeError:
        raise PacketError("bad node name encoding") from None


# --------------------------------------------------------------- TCP queries
#
# Without a secret the status and best ports answer at once (seed: "telnetting
# to stport gives the state info"). With one, the daemon first sends
# ``auth NONCE\n`` and the client answers ``MAC [REQUEST [CNONCE]]\n`` where MAC
# is :func:`beokit.auth.mac` (HMAC-SHA256, parts length-prefixed) of the label
# QUERY_LABEL, PURPOSE and NONCE, in hex; anything else is refused. With CNONCE
# (the client's own nonce) the daemon ends its answer with ``mac HEX\n``, the
# MAC of ANSWER_LABEL, PURPOSE, NONCE, CNONCE and ANSWER: the client knows the
# answer comes from a holder of the secret, for this query (a recorded answer
# does not fit a new CNONCE). The labels tell the two directions apart.

QUERY_LABEL = "beo-dsh/2 query"  # 2: through beokit.auth (1: "beokit-dsh-PURPOSE:NONCE")
ANSWER_LABEL = "beo-dsh/2 answer"
_NONCE_OK = frozenset("0123456789abcdef")


def new_nonce() -> str:
    """A fresh nonce for a challenge or a client's CNONCE (32 hex digits)."""
    return auth.nonce().hex()


def query_mac(secret: bytes, purpose: str, nonce: str) -> str:
    """The hex answer to the daemon's challenge for a ``status`` or ``best`` query."""
    return auth.mac(secret, QUERY_LABEL, purpose, nonce).hex()


def check_query(secret: bytes, purpose: str, nonce: str, line: str) -> tuple[bool, str]:
    """Check a client's answer line; return (authentic, request word)."""
    parts = line.split()
    if not parts:
        return False, ""
    ok = auth.verify(secret, QUERY_LABEL, parts[0], purpose, nonce)
    return ok, (parts[1] if len(parts) > 1 else "")


def query_cnonce(line: str) -> str | None:
    """The client's nonce in its answer line (1-64 lowercase hex digits), or None."""
    parts = line.split()
    c = parts[2] if len(parts) > 2 else ""
    return c if 0 < len(c) <= 64 and set(c) <= _NONCE_OK else None


def answer_mac(secret: bytes, purpose: str, nonce: str, cnonce: str, answer: bytes) -> str:
    """The daemon's MAC over its answer to one query (the ``mac HEX`` line)."""
    return auth.mac(secret, ANSWER_LABEL, purpose, nonce, cnonce, answer).hex()


def sign_answer(secret: bytes, purpose: str, nonce: str, cnonce: str, answer: bytes) -> bytes:
    """``answer`` (ended by a newline, added if missing), then its ``mac HEX`` line."""
    if not answer.endswith(b"\n"):
        answer += b"\n"
    return answer + f"mac {answer_mac(secret, purpose, nonce, cnonce, answer)}\n".encode()


def check_answer(secret: bytes, purpose: str, nonce: str, cnonce: str, data: bytes) -> bytes:
    """The answer of a signed reply; raise :class:`PacketError` unless its MAC checks."""
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1  # the start of the last line
    body, last = data[:cut], data[cut:]
    if not (body and last.startswith(b"mac ") and last.endswith(b"\n")):
        raise PacketError("answer not signed (a dshd without answer MACs, or not a dshd)")
    mac = last[4:-1].decode("ascii", errors="replace")
    if not auth.verify(secret, ANSWER_LABEL, mac, purpose, nonce, cnonce, body):
        raise PacketError("answer signed with another secret (or changed on the way)")
    return body


_NAME_BAD = frozenset(" \t\r\n\x00/\\'\"`$;&|<>()*?[]{}!#~")


def check_node_name(name: str) -> str:
    """A node name fit for ``ssh NAME``: no option (leading "-"), no shell or space
    characters, no control characters, 1-255 bytes; raise :class:`PacketError`."""
    if (
        not name
        or len(name.encode()) > MAX_NAME
        or name.startswith("-")
        or any(c in _NAME_BAD or not c.isprintable() for c in name)
    ):
        raise PacketError(f"bad node name {name[:80]!r}")
    return name


def format_best(name: str, address: str, score: float, local: bool) -> str:
    """The best port's answer line: ``best NAME ADDRESS SCORE self|other``."""
    return f"best {name} {address} {score:.3f} {'self' if local else 'other'}\n"


def parse_best(line: str) -> tuple[str, str, float, bool]:
    """Inverse of :func:`format_best`; raise :class:`PacketError` otherwise."""
    parts = line.split()
    if len(parts) != 5 or parts[0] != "best" or parts[4] not in ("self", "other"):
        raise PacketError(f"unexpected answer {line.strip()[:80]!r}")
    try:
        score = float(parts[3])
    except ValueError:
        raise PacketError(f"unexpected answer {line.strip()[:80]!r}") from None
    return check_node_name(parts[1]), parts[2], score, parts[4] == "self"
