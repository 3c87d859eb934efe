"""The relay gathers a socket input into chunks (SO_RCVLOWAT + a deadline).

Real TCP connections on loopback feed a :class:`Relay` whose output is a pipe
read by a thread; the relay's chunks are counted.  A slow bulk stream must go
out in few large chunks (one thread wake-up per chunk is the relay's CPU
cost at low rates); a trickle must still come out promptly (the deadline and
the trickle mode); and the bytes must be the same either way.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import pytest

from beokit.nettee import relay
from beokit.nettee.sinks import Sink

pytestmark = pytest.mark.skipif(not relay.zero_copy_available(), reason="splice/tee not available")


class Counting(relay.Relay):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.chunks: list[int] = []

    def _distribute(self, r0: int, n: int) -> int:
        self.chunks.append(n)
        return super()._distribute(r0, n)

    def _open(self):  # noqa: ANN202
        loop = super()._open()
        self.held = loop.holding  # whether this relay holds its first chunk (HOLD)
        return loop


class Harness:
    """A TCP connection into a relay; the relay's one output is a pipe we read."""

    def __init__(self, batch: int) -> None:
        ls = socket.create_server(("127.0.0.1", 0))
        self.tx = socket.create_connection(ls.getsockname())
        self.rx, _ = ls.accept()
        ls.close()
        self.out_r, out_w = os.pipe()
        self.sink = Sink("out", out_w, "local", maxwrite=1 << 20)
        self.relay = Counting(self.rx.fileno(), [self.sink], buf_size=1 << 20, minread=128,
                              minwrite=1, maxread=1 << 20, maxwrite=1 << 20,
                              batch=batch)  # fmt: skip
        self.got = bytearray()
        self.arrivals: list[tuple[float, int]] = []  # (time, total bytes so far)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.result: relay.RelayResult | None = None
        self.runner = threading.Thread(target=self._run, daemon=True)
        self.runner.start()
        self.out_w = out_w

    def _run(self) -> None:
        self.result = self.relay.run()
        os.close(self.out_w)

    def _read(self) -> None:
        while chunk := os.read(self.out_r, 1 << 20):
            self.got += chunk
            self.arrivals.append((time.monotonic(), len(self.got)))

    def wait_for(self, total: int, timeout: float) -> float:
        """Seconds until the output holds ``total`` bytes (AssertionError after timeout)."""
        t0 = time.monotonic()
        while len(self.got) < total:
            assert time.monotonic() - t0 < timeout, f"{len(self.got)} of {total} bytes came out"
            time.sleep(0.001)
        return time.monotonic() - t0

    def close(self) -> None:
        self.tx.close()
        self.runner.join(10)
        self.reader.join(10)
        self.rx.close()
        os.close(self.out_r)
        assert self.result is not None and self.result.eof


def paced(sock: socket.socket, data: bytes, piece: int, rate: float) -> None:
    """Send ``data`` in ``piece``-byte writes at about ``rate`` bytes/s."""
    t0 = time.monotonic()
    for off in range(0, len(data), piece):
        sock.sendall(data[off : off + piece])
        ahead = t0 + (off + piece) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


def test_slow_bulk_stream_goes_out_in_large_chunks() -> None:
    data = os.urandom(4 << 20)
    h = Harness(relay.BATCH)
    try:
        paced(h.tx, data, 16 << 10, 20e6)  # 20 MB/s in 16 KiB writes: 256 writes
    finally:
        h.close()
    assert bytes(h.got) == data
    # unbatched, nearly every write would be a chunk of its own (~256 of 16 KiB)
    assert len(h.relay.chunks) <= len(data) // (relay.BATCH // 4), h.relay.chunks
    assert sum(h.relay.chunks) == len(data)


def test_without_batching_every_write_is_a_chunk() -> None:
    """The control case of the test above: it shows what batching saves."""
    data = os.urandom(2 << 20)
    h = Harness(0)
    try:
        paced(h.tx, data, 16 << 10, 20e6)
    finally:
        h.close()
    assert bytes(h.got) == data
    assert len(h.relay.chunks) > len(data) // (relay.BATCH // 4)


def test_a_trickle_comes_out_promptly() -> None:
    h = Harness(relay.BATCH)
    try:
        h.tx.sendall(b"x" * 100)  # far below SO_RCVLOWAT: the kernel will not wake us
        assert h.wait_for(100, 2.0) < 1.0
        sent = 100
        for _ in range(20):  # a trickle: one small write every 30 ms
            h.tx.sendall(b"y" * 10)
            sent += 10
            assert h.wait_for(sent, 2.0) < 0.5
            time.sleep(0.03)
        assert h.relay.lowat == 1  # it switched to waking on every byte
        h.tx.sendall(os.urandom(4 << 20))  # bulk again
        h.wait_for(sent + (4 << 20), 10.0)
    finally:
        h.close()
    assert h.relay.lowat == relay.BATCH  # large chunks again: back to the low-water mark
    assert h.got[:100] == b"x" * 100 and h.got[100:300] == b"y" * 200


def test_a_pause_mid_chunk_does_not_hold_the_bytes_back() -> None:
    h = Harness(relay.BATCH)
    try:
        h.tx.sendall(os.urandom(relay.BATCH * 3 + 1000))  # three chunks and a remainder
        h.wait_for(relay.BATCH * 3 + 1000, 2.0)
    finally:
        h.close()
    assert len(h.got) == relay.BATCH * 3 + 1000


class ChildHarness:
    """A relay from a TCP input to a child's data socket (a second TCP connection),
    as a node relays to its child; the child reads at the pace the test sets."""

    def __init__(self, buf_size: int = 1 << 20) -> None:
        ls = socket.create_server(("127.0.0.1", 0))
        self.tx = socket.create_connection(ls.getsockname())
        self.rx, _ = ls.accept()
        self.child_tx = socket.create_connection(ls.getsockname())
        self.child_rx, _ = ls.accept()
        ls.close()
        self.sink = Sink("child0", self.child_tx.fileno(), "child", maxwrite=1 << 20)
        self.relay = Counting(self.rx.fileno(), [self.sink], buf_size=buf_size, minread=128,
                              minwrite=1, maxread=1 << 20, maxwrite=1 << 20,
                              batch=relay.BATCH)  # fmt: skip
        self.result: relay.RelayResult | None = None
        self.runner = threading.Thread(target=self._run, daemon=True)
        self.runner.start()

    def _run(self) -> None:
        self.result = self.relay.run()
        self.child_tx.shutdown(socket.SHUT_WR)

    def sink_waiting(self) -> bool:
        """Whether the child's writer thread waits for room (its socket is full)."""
        frame = sys._current_frames().get(self.sink._thread.ident if self.sink._thread else 0)
        while frame is not None:
            if frame.f_code.co_name == "_wait_writable":
                return True
            frame = frame.f_back
        return False

    def read_all(self, pause: float = 0.0) -> bytes:
        got = bytearray()
        while chunk := self.child_rx.recv(1 << 16):
            got += chunk
            if pause:
                time.sleep(pause)
        return bytes(got)


def test_a_child_socket_takes_chunks_inline_and_a_slow_child_gets_every_byte() -> None:
    """A chunk the child's socket takes whole goes in from the relay's own thread
    (no writer-thread wake-up); a slow child's full socket leaves the rest to the
    writer thread, which waits for room: every byte arrives, in order."""
    h = ChildHarness()
    data = os.urandom(24 << 20)
    feeder = threading.Thread(target=lambda: (h.tx.sendall(data), h.tx.close()), daemon=True)
    feeder.start()
    try:
        got = h.read_all(pause=0.002)  # slower than the relay: its socket fills
    finally:
        feeder.join(10)
        h.runner.join(10)
    assert h.sink.inline and os.get_blocking(h.child_tx.fileno()) is False
    assert got == data and h.sink.sent == len(data)
    assert h.result is not None and h.result.eof


def test_a_cut_child_ends_the_writer_thread_that_waits_for_room() -> None:
    """A child that stops reading, then is cut (kill + shutdown, as a dead peer is):
    the writer thread waiting for room in its socket ends within a second."""
    h = ChildHarness()
    h.tx.settimeout(10)

    def feed() -> None:
        try:  # far more than the child's socket holds: blocks until the cut
            h.tx.sendall(os.urandom(16 << 20))
        except OSError:
            pass
        finally:
            h.tx.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    deadline = time.monotonic() + 5
    while not h.sink_waiting():
        assert time.monotonic() < deadline, "the relay never filled the child's socket"
        time.sleep(0.05)
    h.sink.kill()
    h.child_tx.shutdown(socket.SHUT_RDWR)
    t0 = time.monotonic()
    h.runner.join(5)
    feeder.join(10)
    assert not h.runner.is_alive() and time.monotonic() - t0 < 2.0
    assert not h.sink.alive and h.sink.error is not None


def test_the_first_chunk_to_a_child_is_held_for_a_cushion_and_a_short_stream_still_ends() -> None:
    """Relaying to a child, the stream's first chunk waits for HOLD bytes (or
    HOLD_WAIT): the cushion that keeps the child's link busy when the relay wakes
    late.  Later chunks are not held; a stream shorter than HOLD comes out whole
    at its end (or at the deadline), and a relay with no child does not hold."""
    h = ChildHarness()
    data = os.urandom(relay.HOLD * 4 + 777)
    feeder = threading.Thread(target=lambda: (h.tx.sendall(data), h.tx.close()), daemon=True)
    feeder.start()
    try:
        got = h.read_all()
    finally:
        feeder.join(10)
        h.runner.join(10)
    assert got == data
    assert h.relay.held
    assert h.relay.chunks[0] >= relay.HOLD, h.relay.chunks  # the cushion went out at once

    short = ChildHarness()  # fewer bytes than HOLD, the input left open: the deadline
    short.tx.sendall(b"z" * 1000)
    t0 = time.monotonic()
    first = short.child_rx.recv(1 << 16)
    assert first and time.monotonic() - t0 < 1.0
    short.tx.close()
    rest = short.read_all()
    short.runner.join(10)
    assert first + rest == b"z" * 1000

    plain = Harness(relay.BATCH)  # a local output only: nothing to hold for
    try:
        plain.tx.sendall(b"q" * 1000)
        plain.wait_for(1000, 2.0)
    finally:
        plain.close()
    assert not plain.relay.held
    assert plain.relay.chunks[0] == 1000


def test_a_pipe_smaller_than_the_cushion_does_not_stall_the_first_chunk() -> None:
    """-buf_size below HOLD: the staging pipe fills before the cushion is whole;
    the chunk then goes (no wait for bytes that cannot come in)."""
    h = ChildHarness(buf_size=64 << 10)
    data = os.urandom(2 << 20)
    h.tx.settimeout(5.0)  # a stalled relay fails the test instead of hanging it
    h.tx.sendall(data[: 1 << 20])  # the input stays open: only the full pipe can release it
    got = bytearray()
    h.child_rx.settimeout(5.0)
    while len(got) < 1 << 20:
        got += h.child_rx.recv(1 << 16)  # socket.timeout here: the relay stalled
    h.tx.sendall(data[1 << 20 :])
    h.tx.close()
    h.child_rx.settimeout(None)
    got += h.read_all()
    h.runner.join(10)
    assert bytes(got) == data
    assert h.relay.chunks[0] <= 64 << 10, h.relay.chunks
