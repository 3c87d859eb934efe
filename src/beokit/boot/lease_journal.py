"""The lease journal's format, without I/O: events in, bytes out; bytes in, state out.

The lease database lives on disk as a journal (Kea's memfile design): one
line per lease event, appended, never rewritten in place.  A line is a
checksum and a JSON array::

    a79d3fbf ["format","beokit-boot-journal/1"]
    06ffbefe ["admit","52:54:01:00:00:07",23]
    764cf2d8 ["lease","52:54:01:00:00:07","127.0.8.23","node23",1796621735.4,"node",""]
    1f5b018e ["release","52:54:01:00:00:07"]

The checksum is the CRC-32 of the JSON bytes, in 8 hex digits, then one
space (``cut -c10- FILE | jq -c .`` reads the records).  The first line names
the format.  A ``lease`` record is the whole lease (key, address, name,
expiry as wall-clock seconds, kind, client id): a renewal is a new record,
the last one of a key wins; ``release`` forgets a key's lease; ``admit``
gives a key its permanent node number.  Expired leases need no record:
:func:`replay` drops every lease whose expiry has passed.

:func:`replay` reads records until the first one that is not whole and
correct, and says where it stopped and why: a crash while appending leaves
at most one unfinished last line (``torn``), which costs only the records of
that last write; anything else (a bad checksum with records after it) is
corruption, and the state is that of every record before it.  Truncating a
journal at any byte therefore replays to a prefix of its history.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from beokit.boot.leases import Lease

FORMAT = "beokit-boot-journal/1"
HEADER_FIELDS = ("format", FORMAT)
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def encode(fields: tuple | list) -> bytes:
    """One record: checksum, space, JSON array, newline."""
    body = _dumps(fields).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


_LEASE = '["lease","%s","%s","%s",%r,"%s","%s"]'


def encode_all(records: Iterable[tuple | list]) -> bytes:
    """Many records, in order, as one block of bytes (one write).

    A lease record whose strings need no escaping (MACs, addresses, DNS names, hex:
    what the server makes) is formatted directly — the same bytes as the JSON
    encoder's, in a quarter of the time; anything else goes through the encoder."""
    dumps, crc, lease = _dumps, zlib.crc32, _LEASE
    out = []
    for fields in records:
        text = None
        if (fields[0] == "lease" and len(fields) == 7 and type(fields[4]) is float
                and fields[4] - fields[4] == 0.0  # (finite: JSON spells inf and nan otherwise)
                and all(type(fields[i]) is str for i in (1, 2, 3, 5, 6))):  # fmt: skip
            text = lease % fields[1:]
            if text.count('"') != 12 or "\\" in text or not (text.isascii() and text.isprintable()):
                text = None
        body = (text or dumps(fields)).encode()
        out.append(b"%08x %s\n" % (crc(body), body))
    return b"".join(out)


HEADER = encode(HEADER_FIELDS)


def lease_record(x: Lease) -> tuple:
    return ("lease", x.key, x.ip, x.name, x.expires, x.kind, x.client_id)


def snapshot(admitted: dict[str, int], leases: Iterable[Lease], now: float) -> bytes:
    """A whole journal holding this state and nothing else (what compaction writes):
    the header, one ``admit`` per node number, one ``lease`` per unexpired lease."""
    recs: list[tuple] = [("admit", k, n) for k, n in admitted.items()]
    recs += [lease_record(x) for x in leases if x.expires > now]
    return HEADER + encode_all(recs)


@dataclass
class Replayed:
    """What a journal holds, and how far it could be read."""

    admitted: dict[str, int] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    records: int = 0  # whole, correct records read (the header included)
    end: int = 0  # the byte just past the last of them
    problem: str = ""  # why the replay stopped before the end ("" = it did not)
    torn: bool = False  # the problem is an unfinished last line (a crash while appending)
    dropped: int = 0  # leases left out because they had expired

    @property
    def corrupt(self) -> bool:
        """Records were lost: the replay stopped before the end for another reason than an
        unfinished last line."""
        return bool(self.problem) and not self.torn


class JournalError(ValueError):
    """The file is not a lease journal at all (its first line is not the header)."""


def _check(line: bytes) -> list:
    """The fields of one line (without its newline); ValueError saying what is wrong."""
    if len(line) < 11 or line[8] != 0x20:
        raise ValueError("not a record (no checksum)")
    try:
        crc = int(line[:8], 16)
    except ValueError:
        raise ValueError("not a record (no checksum)") from None
    body = line[9:]
    if zlib.crc32(body) != crc:
        raise ValueError("bad checksum")
    fields = json.loads(body)
    if not isinstance(fields, list) or not fields or not isinstance(fields[0], str):
        raise ValueError("not a record (no JSON array)")
    return fields


def _apply(st: Replayed, f: list) -> None:
    """One record onto the state; ValueError if its fields are not what its kind needs."""
    kind = f[0]
    if kind == "lease" and len(f) == 7:
        key, ip, name, expires, lkind, cid = f[1:]
        if not (isinstance(key, str) and isinstance(ip, str) and isinstance(name, str)
                and isinstance(expires, int | float) and isinstance(lkind, str)
                and isinstance(cid, str)):  # fmt: skip
            raise ValueError("bad lease record")
        st.leases[key] = Lease(key, ip, name, float(expires), lkind, cid)
    elif kind == "release" and len(f) == 2 and isinstance(f[1], str):
        st.leases.pop(f[1], None)
    elif kind == "admit" and len(f) == 3 and isinstance(f[1], str) and type(f[2]) is int:
        st.admitted[f[1]] = f[2]
    elif kind == "format":
        raise ValueError("a second header")
    else:
        raise ValueError(f"unknown record {kind!r}")


def replay(data: bytes, now: float) -> Replayed:
    """The state a journal's bytes hold at ``now`` (expired leases left out).

    Stops at the first line that is not a whole, correct record; ``problem`` then says
    which byte and why.  Raises :class:`JournalError` when the first whole line is not
    this format's header (not one of our files: nothing is assumed)."""
    st = Replayed()
    n, pos = len(data), 0
    while pos < n:
        nl = data.find(b"\n", pos)
        if nl < 0:
            st.problem, st.torn = f"unfinished last record at byte {pos}", True
            if pos == 0 and not HEADER.startswith(data):
                raise JournalError("not a beokit boot lease journal")
            break
        try:
            fields = _check(data[pos:nl])
            if st.records == 0:
                if fields != list(HEADER_FIELDS):
                    raise JournalError("not a beokit boot lease journal")
            else:
                _apply(st, fields)
        except JournalError:
            raise
        except ValueError as e:
            if st.records == 0:
                raise JournalError(f"not a beokit boot lease journal ({e})") from None
            st.problem = f"record at byte {pos}: {e}"
            break
        st.records += 1
        pos = st.end = nl + 1
    gone = [k for k, x in st.leases.items() if x.expires <= now]
    for k in gone:
        del st.leases[k]
    st.dropped = len(gone)
    return st
