"""TFTP (RFC 1350) with options (RFC 2347/2348/2349) and windowsize (RFC 7440), sans-IO.

:func:`parse` decodes a datagram (raising :class:`TftpError`, and nothing
else), the ``build_*`` functions encode, :func:`negotiate` answers a
request's options, and :class:`Transfer` is the state machine of one
read-only transfer: which blocks to send now, what an ACK means, when to
retransmit (exponential backoff, bounded tries). After an OACK nothing but
the OACK goes out until the client acknowledges it (ACK 0), whatever window
was negotiated (RFC 7440 section 4, RFC 2347), so a request with a forged
source address draws only OACKs. :func:`to_netascii` converts a file for a
``netascii`` request. Block numbers roll over
past 65535 (to 0, as tftp-hpa, curl and dnsmasq do), so files of any size
go through with any block size.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from beokit.errors import WireError

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
# error codes
E_UNDEF, E_NOTFOUND, E_ACCESS, E_FULL, E_ILLEGAL, E_TID, E_EXISTS, E_USER, E_OPTION = range(9)

DEFAULT_BLKSIZE = 512
MAX_NAME = 512


class TftpError(WireError, ValueError):
    """A malformed TFTP datagram (a ``WireError``; still a ``ValueError`` for older callers)."""


@dataclass(frozen=True)
class Request:
    opcode: int  # RRQ or WRQ
    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Ack:
    block: int


@dataclass(frozen=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True)
class Oack:
    options: dict[str, str]


Message = Request | Ack | Error | Data | Oack


def parse(data: bytes) -> Message:
    """Decode one TFTP datagram; :class:`TftpError` if malformed."""
    if len(data) < 4:
        raise TftpError(f"datagram of {len(data)} bytes is too short")
    opcode = struct.unpack_from("!H", data)[0]
    if opcode in (RRQ, WRQ):
        if data[-1:] != b"\0":
            raise TftpError("request not NUL-terminated")
        fields = data[2:-1].split(b"\0")
        if len(fields) < 2 or len(fields) % 2:
            raise TftpError("request needs a file name, a mode and option pairs")
        try:
            texts = [f.decode("ascii") for f in fields]
        except UnicodeDecodeError:
            raise TftpError("non-ASCII request") from None
        name, mode = texts[0], texts[1].lower()
        if not name or len(name) > MAX_NAME:
            raise TftpError(f"bad file name length {len(name)}")
        if mode not in ("octet", "netascii", "mail"):
            raise TftpError(f"bad mode {mode!r}")
        opts: dict[str, str] = {}
        for k, v in zip(texts[2::2], texts[3::2], strict=True):
            opts.setdefault(k.lower(), v)
        return Request(opcode, name, mode, opts)
    if opcode == ACK:
        if len(data) != 4:
            raise TftpError(f"ACK of {len(data)} bytes")
        return Ack(struct.unpack_from("!H", data, 2)[0])
    if opcode == ERROR:
        code = struct.unpack_from("!H", data, 2)[0]
        msg = data[4:].split(b"\0", 1)[0].decode("ascii", "replace")
        return Error(code, msg)
    if opcode == DATA:
        return Data(struct.unpack_from("!H", data, 2)[0], bytes(data[4:]))
    if opcode == OACK:
        fields = data[2:].split(b"\0")
        if fields[-1:] == [b""]:
            fields = fields[:-1]
        if len(fields) % 2:
            raise TftpError("OACK needs option pairs")
        try:
            texts = [f.decode("ascii").lower() for f in fields]
        except UnicodeDecodeError:
            raise TftpError("non-ASCII OACK") from None
        return Oack(dict(zip(texts[::2], texts[1::2], strict=True)))
    raise TftpError(f"bad opcode {opcode}")


def build_data(block: int, payload: bytes) -> bytes:
    return struct.pack("!HH", DATA, block & 0xFFFF) + payload


def data_header(block: int) -> bytes:
    return struct.pack("!HH", DATA, block & 0xFFFF)


def build_ack(block: int) -> bytes:
    return struct.pack("!HH", ACK, block & 0xFFFF)


def build_error(code: int, message: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + message.encode("ascii", "replace")[:200] + b"\0"


def build_oack(options: dict[str, str]) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in options.items())
    return struct.pack("!H", OACK) + body


def build_rrq(name: str, mode: str = "octet", options: dict[str, str] | None = None) -> bytes:
    body = name.encode() + b"\0" + mode.encode() + b"\0"
    for k, v in (options or {}).items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    return struct.pack("!H", RRQ) + body


def to_netascii(data: bytes) -> bytes:
    """``data`` as netascii (RFC 1350, after RFC 764): CR becomes CR NUL, then LF
    becomes CR LF. A netascii client (tftp-hpa's default mode) turns it back into
    exactly ``data``; the block count and ``tsize`` are those of the result."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


NOTHING = range(0)  # no block to send

# The fields Transfer.step() moves on: a compiled base class holds them where
# beokit.boot._lockstep was built (the server's hot path then steps transfers
# in C), a slotted one here otherwise (or with BEOKIT_PURE_PYTHON=1 set).
HOT_FIELDS = ("next", "acked", "expect", "nblocks", "blksize", "packets_sent", "bytes_sent",
              "timeout", "last_progress", "deadline")  # fmt: skip


class _PyState:
    __slots__ = HOT_FIELDS


def _state_base() -> type:
    if os.environ.get("BEOKIT_PURE_PYTHON"):
        return _PyState
    try:
        from beokit.boot._lockstep import State
    except ImportError:
        return _PyState
    if set(HOT_FIELDS) != {k for k in vars(State) if not k.startswith("_")}:
        return _PyState  # a stale build
    return State


StateBase = _state_base()
COMPILED = StateBase is not _PyState


@dataclass(frozen=True)
class Limits:
    max_blksize: int = 1468
    max_windowsize: int = 64
    timeout: float = 1.0
    retries: int = 5


def negotiate(options: dict[str, str], size: int, limits: Limits) -> dict[str, str]:
    """The options to acknowledge (RFC 2347: unknown or bad ones are ignored)."""
    out: dict[str, str] = {}
    for k, v in options.items():
        if not v.isdigit() or len(v) > 12:
            continue
        n = int(v)
        if k == "blksize" and n >= 8:
            out[k] = str(min(n, limits.max_blksize, 65464))
        elif k == "tsize" and n == 0:
            out[k] = str(size)
        elif k == "timeout" and 1 <= n <= 255:
            out[k] = str(n)
        elif k == "windowsize" and 1 <= n <= 65535:
            out[k] = str(min(n, limits.max_windowsize))
    return out


class Transfer(StateBase):  # type: ignore[valid-type, misc]
    """One read transfer. Blocks are numbered 1..``nblocks`` (absolute, no wrap).

    The driver calls :meth:`ready` to learn which block to send next (or
    ``0`` for the OACK), :meth:`sent` after sending it, :meth:`on_ack` for
    every ACK, and :meth:`on_timer` when :attr:`deadline` passes. The hot
    path uses :meth:`take` instead of ``ready``/``sent``: every block the
    window allows now, in one call (and :meth:`unsend` for those the socket
    refused), and :meth:`ack_take` for an ACK and what it lets go out.

    Lock-step clients (window 1: every PXE ROM, curl, tftp-hpa) get one more
    shortcut, since nearly every datagram a busy server reads is one of theirs:
    :attr:`expect` is the wire number of the ACK that simply lets the next full
    block go (-1 when anything else may happen: a window, a retransmission,
    the last block, the end), and :meth:`step` is :meth:`ack_take` for that
    ACK, without the cases.  Every other method re-arms :attr:`expect`;
    :meth:`fail` ends a transfer from outside.
    """

    __slots__ = ("size", "accepted", "window", "retries", "oack", "oack_len", "tries",
                 "started", "done", "failed", "retransmits")  # fmt: skip
    FIELDS = HOT_FIELDS + __slots__  # the whole state

    def __getstate__(self) -> dict:  # (copy and pickle: the compiled base has no default)
        return {k: getattr(self, k) for k in self.FIELDS}

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def __init__(self, size: int, options: dict[str, str], accepted: dict[str, str],
                 limits: Limits, now: float) -> None:  # fmt: skip
        self.size = size
        self.accepted = accepted
        self.blksize = int(accepted.get("blksize", DEFAULT_BLKSIZE))
        self.window = int(accepted.get("windowsize", 1))
        self.timeout = float(accepted.get("timeout", limits.timeout))
        self.retries = limits.retries
        self.nblocks = size // self.blksize + 1  # the last one is short (maybe empty)
        self.oack = bool(accepted)
        self.oack_len = len(build_oack(accepted)) if accepted else 0
        self.acked = -1 if self.oack else 0  # highest block acknowledged (0 = OACK)
        self.next = 0 if self.oack else 1  # next block to send
        self.tries = 0
        self.started = now
        self.last_progress = now
        self.deadline = now + self.timeout
        self.done = False
        self.failed = ""
        self.bytes_sent = 0
        self.packets_sent = 0
        self.retransmits = 0
        self.expect = -1  # see step()

    def _arm(self) -> None:
        """Set :attr:`expect`: lock-step, one block out (``next - 1``), none lost,
        and the block after it full and not the last (so step() has no case to decide)."""
        n = self.next
        if (self.window == 1 and self.tries == 0 and n >= 2 and self.acked == n - 2
                and n < self.nblocks and not self.done and not self.failed):  # fmt: skip
            self.expect = (n - 1) & 0xFFFF
        else:
            self.expect = -1

    def step(self, now: float) -> int:
        """The ACK numbered :attr:`expect` arrived: the block to send now (marked as sent).

        Only when ``expect`` matched: it is then ``ack_take(expect, now)``'s one
        block, with the same state afterwards (the property tests check it).
        """
        b = self.next
        self.acked = b - 1
        self.next = b + 1
        self.expect = b & 0xFFFF if b + 1 < self.nblocks else -1
        self.last_progress = now
        self.deadline = now + self.timeout
        self.packets_sent += 1
        self.bytes_sent += self.blksize + 4
        return b

    @property
    def confirmed(self) -> bool:
        """The client acknowledged the OACK or a block: it receives at the address it
        sent from (the requester of a spoofed RRQ never does)."""
        return self.acked >= (0 if self.oack else 1)

    def fail(self, why: str) -> None:
        """End the transfer from outside (a send error, the client's ERROR, a restart)."""
        if not self.failed:
            self.failed = why
        self.expect = -1

    def block_range(self, block: int) -> tuple[int, int]:
        off = (block - 1) * self.blksize
        return off, min(self.blksize, self.size - off)

    def ready(self) -> int | None:
        """The next block to send now (0 = the OACK), or ``None`` (window full/done)."""
        if self.done or self.failed:
            return None
        if self.next == 0:
            return 0
        limit = min(self.acked + self.window if self.acked >= 0 else 0, self.nblocks)
        return self.next if self.next <= limit else None

    def sent(self, block: int, nbytes: int, now: float) -> None:
        self.next = block + 1
        self.packets_sent += 1
        self.bytes_sent += nbytes
        self.deadline = now + self.timeout * (1 << self.tries)
        self._arm()

    def span_bytes(self, first: int, last: int) -> int:
        """Bytes on the wire for blocks ``first..last`` (0 = the OACK)."""
        if last < first:
            return 0
        n = 0
        if first == 0:
            n, first = self.oack_len, 1
            if last < 1:
                return n
        bs = self.blksize
        return n + min(self.size, last * bs) - (first - 1) * bs + 4 * (last - first + 1)

    def take(self, now: float) -> range:
        """Every block the window allows now, marked as sent (``ready``/``sent`` in a loop)."""
        if self.done or self.failed:
            return NOTHING
        first = self.next
        # nothing but the OACK until its ACK (RFC 7440 section 4, RFC 2347): a spoofed
        # request must not draw a window of DATA to the address it names
        last = self.acked + self.window if self.acked >= 0 else 0
        if last > self.nblocks:
            last = self.nblocks
        if first > last:
            return NOTHING
        self.next = last + 1
        self.packets_sent += last - first + 1
        self.bytes_sent += self.span_bytes(first, last)
        self.deadline = now + self.timeout * (1 << self.tries)
        self._arm()
        return range(first, last + 1)

    def ack_take(self, wire_block: int, now: float) -> range:
        """:meth:`on_ack` then :meth:`take`, in one call: the server's per-packet path.

        The two bodies are inlined (a Python call costs as much as the rest);
        the property tests check it against the two calls.
        """
        if self.done or self.failed:
            return NOTHING
        acked = self.acked
        hi = self.next - 1
        if acked == -1 and wire_block == 0 and hi >= 0:
            k = 0
        else:
            k = hi - ((hi - wire_block) & 0xFFFF)
            if k <= acked or k <= 0 or k > hi:
                k = -1  # duplicate or stale: never retransmit on it (RFC 1123)
        nb = self.nblocks
        if k >= 0:
            self.acked = acked = k
            self.tries = 0
            self.last_progress = now
            if k >= nb:
                self.done = True
                self.expect = -1
                return NOTHING
            self.next = k + 1
            self.deadline = now + self.timeout
        first = self.next
        last = acked + self.window if acked >= 0 else 0  # (the OACK's ACK first: see take)
        if last > nb:
            last = nb
        if first > last:
            self._arm()
            return NOTHING
        self.next = last + 1
        self.packets_sent += last - first + 1
        if first == last and 0 < last < nb:  # one full block: lock-step clients
            self.bytes_sent += self.blksize + 4
        else:
            self.bytes_sent += self.span_bytes(first, last)
        self.deadline = now + self.timeout * (1 << self.tries)
        self._arm()
        return range(first, last + 1)

    def unsend(self, first: int, stop: int) -> None:
        """Blocks ``first`` up to ``stop`` (excluded) of a :meth:`take` did not go out:
        they are the next to send (now if the driver retries, else at the deadline)."""
        if first >= stop:
            return
        self.next = first
        self.packets_sent -= stop - first
        self.bytes_sent -= self.span_bytes(first, stop - 1)
        self._arm()

    def on_ack(self, wire_block: int, now: float) -> bool:
        """An ACK arrived; True if it moved the transfer on."""
        if self.done or self.failed:
            return False
        lo, hi = max(self.acked, 0), self.next - 1  # acks worth anything: (acked, sent]
        if self.acked == -1 and wire_block == 0 and self.next >= 1:
            k = 0
        else:
            k = hi - ((hi - wire_block) & 0xFFFF)  # latest block <= hi with this wire number
            if k <= lo or k > hi:
                return False  # duplicate or stale: never retransmit on it (RFC 1123)
        self.acked = k
        self.tries = 0
        self.last_progress = now
        if k >= self.nblocks:
            self.done = True
            self.expect = -1
            return True
        self.next = k + 1  # RFC 7440: resume right after the last block received
        self.deadline = now + self.timeout
        self._arm()
        return True

    def on_timer(self, now: float) -> bool:
        """The deadline passed: rewind to resend (True) or give up (False)."""
        if self.done or self.failed or now < self.deadline:
            return not self.failed
        self.tries += 1
        self.expect = -1  # a retransmission: the slow path until the next progress
        if self.tries > self.retries:
            self.failed = f"no ACK after {self.retries} retransmissions"
            return False
        self.retransmits += 1
        self.next = self.acked + 1 if self.acked >= 0 else 0
        self.deadline = now + self.timeout * (1 << self.tries)
        return True
