"""beo boot's compiled TFTP lock-step path (``beokit.boot._lockstep``) against Python's.

``acks()`` must do exactly what ``Transfer.step`` and the queueing in
``TftpServer.on_transfers`` do, stop exactly where Python has to decide, and
never crash on any bytes a client may send.  The Python path itself runs in the
server tests (with ``BEOKIT_PURE_PYTHON=1`` and with ``FAST_ACKS`` off).
"""

from __future__ import annotations

import copy
import ctypes
import os
import shutil
import subprocess
import sys
import sysconfig
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beokit.boot import tftp, tftp_server, tftp_sessions, tftp_socket

SRC = Path(__file__).resolve().parents[1] / "src"
built = pytest.mark.skipif(
    tftp_server.FAST_ACKS is None,
    reason="beokit.boot._lockstep was not built (no C compiler or Python headers)",
)


def test_extension_is_built_where_a_compiler_and_headers_are():
    """Where cc and Python.h exist the install builds the compiled path (CI has both)."""
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which("cc") is None or not header.exists():
        pytest.skip("no C compiler or no Python.h here: the install skips the extension")
    if os.environ.get("BEOKIT_PURE_PYTHON"):
        pytest.skip("BEOKIT_PURE_PYTHON is set")
    assert tftp.COMPILED and tftp_server.FAST_ACKS is not None
    assert tftp.Transfer.__mro__[1].__module__ == "beokit.boot._lockstep"


def test_pure_python_switch():
    """BEOKIT_PURE_PYTHON=1: the slotted Python base and no compiled path, in a new process."""
    code = ("from beokit.boot import tftp, tftp_server; "
            "print(tftp.COMPILED, tftp_server.FAST_ACKS, tftp.Transfer.__mro__[1].__name__)")  # fmt: skip
    env = {**os.environ, "BEOKIT_PURE_PYTHON": "1", "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout  # fmt: skip
    assert out.split() == ["False", "None", "_PyState"]


class Sess:
    """What acks() reads of a session."""

    __slots__ = ("xfer", "base", "name_addr")

    def __init__(self, xfer: tftp.Transfer, base: int, name_addr: int) -> None:
        self.xfer, self.base, self.name_addr = xfer, base, name_addr


class Buffers:
    """The arrays of a TransferSocket, without a socket."""

    def __init__(self, batch: int) -> None:
        self.slots = (ctypes.c_char * (tftp_socket.SLOT * batch))()
        self.rhdr = (ctypes.c_char * (64 * batch))()
        self.shdr = (ctypes.c_char * (64 * batch))()
        self.siov = (ctypes.c_char * (32 * batch))()
        self.view = memoryview(self.slots).cast("B")
        self.rlen = memoryview(self.rhdr).cast("B").cast("I")
        self.sq = memoryview(self.shdr).cast("B").cast("Q")
        self.iq = memoryview(self.siov).cast("B").cast("Q")

    def put(self, i: int, key: int, payload: bytes) -> None:
        off = tftp_socket.SLOT * i
        self.view[off : off + 8] = key.to_bytes(8, "big")
        p = payload[: tftp_socket.SLOT - 16]
        self.view[off + 16 : off + 16 + len(p)] = p
        self.rlen[i * 16 + 14] = len(payload)

    def message(self, j: int) -> tuple[int, int, int, int, int]:
        return (self.sq[j * 8], self.iq[j * 4], self.iq[j * 4 + 1], self.iq[j * 4 + 2],
                self.iq[j * 4 + 3])  # fmt: skip


def reference(buf: Buffers, i: int, n: int, j: int, batch: int,
              sessions: dict, parked: set, hb: int, now: float) -> tuple[int, int, list]:  # fmt: skip
    """What TftpServer.on_transfers does in Python for the lock-step case, stopping
    where it would call _on_slot."""
    out = []
    while i < n and j < batch:
        key, op, block = tftp_socket.ACK_SLOT.unpack_from(buf.view, tftp_socket.SLOT * i)
        ss = sessions.get(key)
        if (buf.rlen[i * 16 + 14] != 4 or op != tftp.ACK or ss is None or key in parked
                or block != ss.xfer.expect or not ss.base or not ss.name_addr):  # fmt: skip
            break
        x = ss.xfer
        b = x.step(now)
        out.append((key, (ss.name_addr, hb + ((b & 0xFFFF) << 2), 4,
                          ss.base + (b - 1) * x.blksize, x.blksize)))  # fmt: skip
        i += 1
        j += 1
    return i, j, out


def transfers(draw_sizes: list[tuple[int, int]]) -> list[tftp.Transfer]:
    xs = []
    for size, blksize in draw_sizes:
        acc = {"blksize": str(blksize)} if blksize != 512 else {}
        x = tftp.Transfer(size, {}, acc, tftp.Limits(retries=1000), 0.0)
        x.take(0.0)  # the first block (or the OACK) is out
        if x.next == 1:  # the OACK went: its ACK lets block 1 go
            x.ack_take(0, 0.0)
        xs.append(x)
    return xs


DATAGRAM = st.one_of(
    st.tuples(st.integers(0, 3), st.just("good")),  # session k's expected ACK
    st.tuples(st.integers(0, 3), st.sampled_from(["stale", "error", "long", "short"])),
    st.tuples(st.just(-1), st.just("stray")),
    st.tuples(st.just(-1), st.binary(max_size=600)),  # any bytes from anyone
)


@built
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 300_000), st.sampled_from([8, 512, 1468])),
                min_size=1, max_size=4),
       st.lists(DATAGRAM, max_size=60), st.integers(1, 64), st.integers(0, 63),
       st.sets(st.integers(0, 3), max_size=2), st.floats(0, 1e6))  # fmt: skip
def test_acks_is_step_and_queue_and_stops_where_python_decides(
        sizes, datagrams, batch, j0, parked_idx, now):  # fmt: skip
    j0 = min(j0, batch)
    xs = transfers(sizes)
    keys = [tftp_sessions.peer_key(f"127.0.9.{k + 1}", 40000 + k) for k in range(len(xs))]
    buf = Buffers(max(batch, len(datagrams), 1))
    # the payloads follow the transfers as Python would move them (good ACKs stay good)
    shadow = copy.deepcopy(xs)
    for i, (k, kind) in enumerate(datagrams):
        k = k % len(xs) if k >= 0 else -1
        key = keys[k] if k >= 0 else 0xDEAD_BEEF
        if isinstance(kind, bytes):
            buf.put(i, key, kind)
            continue
        x = shadow[k] if k >= 0 else None
        expect = x.expect if x is not None and x.expect >= 0 else 7
        payload = {
            "good": tftp.build_ack(expect),
            "stale": tftp.build_ack((expect + 3) & 0xFFFF),
            "error": b"\x00\x05\x00\x00no\x00",
            "long": tftp.build_ack(expect) + b"\x00",
            "short": tftp.build_ack(expect)[:3],
            "stray": tftp.build_ack(expect),
        }[kind]
        if kind == "good" and x is not None and x.expect >= 0:
            x.step(now)
        buf.put(i, key, payload)
    n = len(datagrams)
    parked = {keys[k] for k in parked_idx if k < len(xs)}
    hb = 0x7F00_0000_0000
    ref_sessions = {key: Sess(x, 0x1000_0000 * (k + 1), 0x2000 + 16 * k)
                    for k, (key, x) in enumerate(zip(keys, copy.deepcopy(xs), strict=True))}  # fmt: skip
    c_sessions = {key: Sess(x, 0x1000_0000 * (k + 1), 0x2000 + 16 * k)
                  for k, (key, x) in enumerate(zip(keys, xs, strict=True))}  # fmt: skip
    want_i, want_j, want = reference(buf, 0, n, j0, batch, ref_sessions, parked, hb, now)
    keep: list = []
    got_i, got_j = tftp_server.FAST_ACKS(buf.slots, buf.rhdr, buf.shdr, buf.siov, 0, n, j0, batch,
                               c_sessions, parked, hb, keep, now)  # fmt: skip
    assert (got_i, got_j) == (want_i, want_j)
    assert [buf.message(j0 + m) for m in range(got_j - j0)] == [m for _, m in want]
    assert [id(s) for s in keep] == [id(c_sessions[k]) for k, _ in want]
    for key in keys:
        a, b = ref_sessions[key].xfer, c_sessions[key].xfer
        assert {f: getattr(a, f) for f in tftp.Transfer.FIELDS} == \
            {f: getattr(b, f) for f in tftp.Transfer.FIELDS}  # fmt: skip


@built
def test_acks_goes_on_from_where_python_took_over():
    """A whole lock-step run of one transfer, each block once and in order, two good ACKs
    and a stale one per batch: it stops at the stale one (and again if called there)."""
    x = transfers([(1468 * 40 + 5, 1468)])[0]
    key = tftp_sessions.peer_key("127.0.9.1", 40000)
    sess = {key: Sess(x, 0x5000_0000, 0x3000)}
    buf = Buffers(3)
    blocks: list[int] = []
    while x.expect >= 0:
        e = x.expect
        for i, w in enumerate([e, e + 1, e + 5]):
            buf.put(i, key, tftp.build_ack(w & 0xFFFF))
        keep: list = []
        i, j = tftp_server.FAST_ACKS(buf.slots, buf.rhdr, buf.shdr, buf.siov, 0, 3, 0, 3, sess, set(),
                           0, keep, 1.0)  # fmt: skip
        assert (i, j) == (2, 2) or (x.expect == -1 and (i, j) == (1, 1))
        blocks += [(buf.message(m)[3] - 0x5000_0000) // 1468 + 1 for m in range(j)]
        assert keep == [sess[key]] * j
        assert tftp_server.FAST_ACKS(buf.slots, buf.rhdr, buf.shdr, buf.siov, i, 3, j, 3, sess, set(),
                           0, keep, 1.0) == (i, j)  # fmt: skip
    assert blocks == list(range(2, x.nblocks))  # block 1 went with take(); the last is short
    assert x.next == x.nblocks and x.expect == -1  # the last block is Python's to send


@built
def test_acks_rejects_bad_arguments_without_crashing():
    buf = Buffers(4)
    x = transfers([(10_000, 512)])[0]
    args = [buf.slots, buf.rhdr, buf.shdr, buf.siov, 0, 4, 0, 4, {}, set(), 0, [], 0.0]
    with pytest.raises(ValueError, match="slots"):
        tftp_server.FAST_ACKS(bytearray(10), *args[1:])
    with pytest.raises(ValueError, match="shdr"):
        tftp_server.FAST_ACKS(*args[:7], 8, *args[8:])  # a batch bigger than the arrays
    with pytest.raises(ValueError):
        tftp_server.FAST_ACKS(*args[:4], 3, 2, *args[6:])  # i > n
    with pytest.raises(TypeError):
        tftp_server.FAST_ACKS(*args[:8], [], *args[9:])  # sessions not a dict
    with pytest.raises(TypeError):
        tftp_server.FAST_ACKS(*args[:3])
    with pytest.raises(BufferError):  # read-only buffers
        tftp_server.FAST_ACKS(bytes(tftp_socket.SLOT * 4), *args[1:])
    # a session without the attributes: the error comes out, nothing is queued
    key = tftp_sessions.peer_key("127.0.9.1", 40000)
    buf.put(0, key, tftp.build_ack(x.expect))
    keep: list = []
    with pytest.raises(AttributeError):
        tftp_server.FAST_ACKS(*args[:4], 0, 1, 0, 4, {key: object()}, set(), 0, keep, 0.0)
    assert keep == []


@built
def test_acks_leaks_no_references():
    """Every reference acks() takes it gives back (keep holds one per queued message
    until the send, as the Python path does), over many calls."""
    x = transfers([(1468 * 30_000, 1468)])[0]
    key = tftp_sessions.peer_key("127.0.9.1", 40000)
    ss = Sess(x, 0x5000_0000, 0x3000)
    sess = {key: ss}
    buf = Buffers(1)
    parked = {tftp_sessions.peer_key("127.0.9.2", 40000)}  # a non-empty set: the membership test runs
    refs = sys.getrefcount(ss), sys.getrefcount(x), sys.getrefcount(key)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(20_000):
        buf.put(0, key, tftp.build_ack(x.expect))
        keep: list = []
        assert tftp_server.FAST_ACKS(buf.slots, buf.rhdr, buf.shdr, buf.siov, 0, 1, 0, 1, sess, parked,
                           0, keep, 1.0) == (1, 1)  # fmt: skip
        assert keep == [ss]
        del keep
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert (sys.getrefcount(ss), sys.getrefcount(x), sys.getrefcount(key)) == refs
    assert grown < 64 * 1024  # a leaked key int per call would be ~640 KB
