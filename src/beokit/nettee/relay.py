"""The byte path: one input fanned out to N outputs without Python copies.

On Linux the relay moves data with ``splice(2)`` and ``tee(2)``::

    input --splice--> P0 --tee--> P1 --splice--> output 1   (writer thread 1)
                         --tee--> P2 --splice--> output 2   (writer thread 2)
                         --splice (move)--> Pn --> output n (writer thread n)

The main thread fills the staging pipe P0 while the writer threads drain
the previous chunk into their outputs, so reading, the network and the
local disk all proceed at once.  A chunk is handed to an output only when
that output's pipe is empty, which makes every ``tee`` complete (a partial
tee could not be resumed: tee always copies from the head of the pipe).
Memory is bounded by (outputs + 1) pipes of ``buf_size`` bytes, whatever
the stream size.

Where splice is not available (another OS, ``BEOKIT_NO_SPLICE=1``) or an
fd refuses it (a terminal, an O_APPEND file), the same structure runs with
``read``/``write`` through a preallocated buffer instead.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
SPLICE_F_MOVE = 1
SPLICE_F_NONBLOCK = 2
SPLICE_F_MORE = 4
INLINE_MAX = 1 << 16  # low-latency mode writes chunks up to this size inline

_tee: Callable[..., int] | None = None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _tee = _libc.tee
    _tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
    _tee.restype = ctypes.c_ssize_t
except (OSError, AttributeError):  # pragma: no cover - non-Linux
    _tee = None


def zero_copy_available() -> bool:
    """True when splice/tee can carry the stream (Linux, not disabled)."""
    return (
        hasattr(os, "splice") and _tee is not None and os.environ.get("BEOKIT_NO_SPLICE") != "1"
    )


def tee(fd_in: int, fd_out: int, length: int) -> int:
    assert _tee is not None
    n = _tee(fd_in, fd_out, length, 0)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return n


def make_pipe(size: int) -> tuple[int, int, int]:
    """A pipe of (up to) ``size`` bytes; returns (read fd, write fd, capacity)."""
    r, w = os.pipe2(os.O_CLOEXEC) if hasattr(os, "pipe2") else os.pipe()
    cap = 65536
    if hasattr(fcntl, "F_SETPIPE_SZ") or os.uname().sysname == "Linux":
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, size)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: keep what we have
        try:
            cap = fcntl.fcntl(w, F_GETPIPE_SZ)
        except OSError:
            pass
    return r, w, cap


class Sink:
    """One output of the relay: a child's data socket, the local -out, or a discard.

    A writer thread drains the sink's pipe into its fd.  On a write error it
    records the error, calls ``on_error`` (which decides between collapse and
    carrying on) and from then on only discards.
    """

    def __init__(self, label: str, fd: int, kind: str, *, maxwrite: int,
                 on_error: Callable[[Sink, OSError], None] | None = None,
                 fsync: bool = False) -> None:  # fmt: skip
        self.label = label
        self.fd = fd
        self.kind = kind  # "child" | "local" | "discard"
        self.maxwrite = maxwrite
        self.on_error = on_error
        self.fsync = fsync
        self.sent = 0
        self.alive = True
        self.error: OSError | None = None
        self.copy_mode = not zero_copy_available()
        self.pipe_r = self.pipe_w = -1
        self.capacity = 0
        self._work = threading.Semaphore(0)
        self._pending = 0
        self._notify = -1
        self._buf: memoryview | None = None
        self._done = self._taken = 0
        self._thread: threading.Thread | None = None

    def open(self, size: int, notify_fd: int) -> int:
        self.pipe_r, self.pipe_w, self.capacity = make_pipe(size)
        self._notify = notify_fd
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.label}", daemon=True)
        self._thread.start()
        return self.capacity

    def give(self, n: int) -> None:
        self._pending = n
        self._work.release()

    def stop(self) -> None:
        if self._thread is not None:
            self.give(-1)
            self._thread.join()
            self._thread = None
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                os.close(fd)
        self.pipe_r = self.pipe_w = -1

    def kill(self) -> None:
        """Stop writing to this output (used when a peer is declared dead)."""
        self.alive = False

    def _run(self) -> None:
        while True:
            self._work.acquire()
            n = self._pending
            if n < 0:
                return
            self.drain(n)
            os.write(self._notify, (1).to_bytes(8, "little"))

    def drain(self, n: int) -> None:
        """Move a chunk of ``n`` bytes from the pipe to the output (or drop it).

        The writer thread calls it; so does the relay itself in low-latency mode.
        """
        if not self.alive:
            self._discard(n)
            return
        try:
            self._write(n)
        except OSError as exc:
            self.alive = False
            self.error = exc
            self._discard(n - self._taken)
            if self.on_error is not None:
                self.on_error(self, exc)

    def _write(self, n: int) -> None:
        self._done = 0  # bytes of this chunk written to the output
        self._taken = 0  # bytes of this chunk taken out of the pipe
        while self._done < n:
            want = min(n - self._done, self.maxwrite)
            if not self.copy_mode:
                flags = SPLICE_F_MOVE | (SPLICE_F_MORE if want < n - self._done else 0)
                try:
                    k = os.splice(self.pipe_r, self.fd, want, flags=flags)
                except OSError as exc:
                    if exc.errno == errno.EINVAL and self._done == 0 and self.sent == 0:
                        self.copy_mode = True  # this fd does not take splice
                        continue
                    raise
            else:
                if self._buf is None:
                    self._buf = memoryview(bytearray(min(self.maxwrite, 1 << 20)))
                got = os.readv(self.pipe_r, [self._buf[: min(want, len(self._buf))]])
                self._taken += got
                k = _write_all(self.fd, self._buf[:got])
            if k == 0:
                raise OSError(errno.EIO, "output accepted no data")
            if not self.copy_mode:
                self._taken += k
            self._done += k
            self.sent += k
            if not self.alive:
                raise OSError(errno.ECONNABORTED, "output abandoned")

    def _discard(self, n: int) -> None:
        """Empty the rest of a chunk from the pipe (never blocks)."""
        os.set_blocking(self.pipe_r, False)
        while n > 0:
            try:
                chunk = os.read(self.pipe_r, min(n, 1 << 16))
            except OSError:  # EAGAIN: nothing more is there
                return
            if not chunk:
                return
            n -= len(chunk)

    def finish(self) -> None:
        """Flush the local output to stable storage when asked (fsync)."""
        if self.fsync and self.alive and self.kind == "local":
            try:
                os.fsync(self.fd)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EROFS):
                    self.alive = False
                    self.error = exc
                    if self.on_error is not None:
                        self.on_error(self, exc)


def _write_all(fd: int, data: memoryview) -> int:
    done = 0
    while done < len(data):
        done += os.write(fd, data[done:])
    return done


@dataclass
class RelayResult:
    bytes_in: int
    eof: bool
    read_error: OSError | None = None
    timed_out: bool = False


class Relay:
    """Move one input to several sinks until end of input.

    ``idle_timeout`` (seconds, 0 = never) ends the relay when no input
    arrives for that long while the relay is ready to read.
    """

    def __init__(self, in_fd: int, sinks: list[Sink], *, buf_size: int, minread: int,
                 minwrite: int, maxread: int, maxwrite: int,
                 idle_timeout: float = 0.0, low_latency: bool = False) -> None:  # fmt: skip
        self.in_fd = in_fd
        self.low_latency = low_latency  # -stm: write small chunks inline, no thread wake-ups
        self.sinks = list(sinks)
        self.buf_size = buf_size
        self.minread = minread
        self.minwrite = minwrite
        self.maxread = maxread
        self.maxwrite = maxwrite
        self.idle_timeout = idle_timeout
        self.bytes_in = 0
        self.zero_copy = zero_copy_available()
        self._copy_in = not self.zero_copy
        self._discard: Sink | None = None
        self._evfd = -1

    @property
    def bytes_per_sink(self) -> dict[str, int]:
        return {s.label: s.sent for s in self.sinks}

    def _live(self) -> list[Sink]:
        live = [s for s in self.sinks if s.alive]
        if live:
            return live
        if self._discard is None:
            devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            self._discard = Sink("discard", devnull, "discard", maxwrite=self.maxwrite)
            self._discard.open(self.buf_size, self._evfd)
        return [self._discard]

    def run(self) -> RelayResult:
        self._evfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        r0, w0, cap = make_pipe(self.buf_size)
        for s in self.sinks:
            cap = min(cap, s.open(self.buf_size, self._evfd))
        if not self.zero_copy:
            cap = min(cap, 65536)  # a write to an idle pipe must never block
        buf = memoryview(bytearray(min(self.maxread, cap)))  # for inputs that refuse splice
        try:
            os.set_blocking(self.in_fd, False)
        except OSError:
            pass
        poller = select.poll()
        poller.register(self.in_fd, select.POLLIN)
        in_mask = select.POLLIN
        poller.register(self._evfd, select.POLLIN)
        filled = busy = 0
        eof = p0_full = False
        result = RelayResult(0, False)
        last_data = time.monotonic()
        try:
            while True:
                if eof and filled == 0 and busy == 0:
                    break
                if filled and busy == 0 and (filled >= self.minwrite or eof or p0_full
                                             or cap - filled < self.minread):  # fmt: skip
                    busy = self._distribute(r0, filled)
                    filled, p0_full = 0, False
                    continue
                can_read = not eof and not p0_full and cap - filled >= self.minread
                if can_read:
                    want = min(self.maxread, cap - filled)
                    try:
                        n = self._read(w0, want, buf)
                    except BlockingIOError:
                        n = -1
                    except OSError as exc:
                        result.read_error = exc
                        eof = True
                        continue
                    if n == 0:
                        eof = True
                        continue
                    if n > 0:
                        filled += n
                        self.bytes_in += n
                        last_data = time.monotonic()
                        continue
                    # EAGAIN: the input is empty, or P0 is full
                    if filled and poller.poll(0) and self._in_ready(poller):
                        p0_full = True
                        continue
                want_in = select.POLLIN if can_read else 0
                if want_in != in_mask:  # never poll the input while P0 cannot take more
                    poller.modify(self.in_fd, want_in)
                    in_mask = want_in
                timeout_ms = -1
                if can_read and self.idle_timeout > 0 and busy == 0:
                    left = last_data + self.idle_timeout - time.monotonic()
                    if left <= 0:
                        result.timed_out = True
                        break
                    timeout_ms = int(left * 1000) + 1
                events = poller.poll(timeout_ms)
                for fd, _ev in events:
                    if fd == self._evfd:
                        busy -= int.from_bytes(os.read(self._evfd, 8), "little")
                if busy:
                    last_data = time.monotonic()  # waiting on outputs is not idleness
        finally:
            for s in self.sinks:
                s.stop()
            if self._discard is not None:
                self._discard.stop()
                os.close(self._discard.fd)
            os.close(r0)
            os.close(w0)
            os.close(self._evfd)
        result.bytes_in = self.bytes_in
        result.eof = eof and result.read_error is None
        return result

    def _in_ready(self, poller: select.poll) -> bool:
        return any(fd == self.in_fd and ev & select.POLLIN for fd, ev in poller.poll(0))

    def _read(self, w0: int, want: int, buf: memoryview) -> int:
        if not self._copy_in:
            try:
                return os.splice(self.in_fd, w0, want,
                                 flags=SPLICE_F_MOVE | SPLICE_F_NONBLOCK | SPLICE_F_MORE)  # fmt: skip
            except OSError as exc:
                if exc.errno != errno.EINVAL or self.bytes_in:
                    raise
                self._copy_in = True  # e.g. a terminal on stdin
        got = os.readv(self.in_fd, [buf[:want]])
        if got:
            _write_all(w0, buf[:got])
        return got

    def _distribute(self, r0: int, n: int) -> int:
        live = self._live()
        if self.zero_copy:
            for s in live[:-1]:
                t = tee(r0, s.pipe_w, n)
                if t != n:  # cannot happen with an empty pipe of equal size
                    raise OSError(errno.EIO, f"tee copied {t} of {n} bytes")
            moved = 0
            while moved < n:
                moved += os.splice(r0, live[-1].pipe_w, n - moved, flags=SPLICE_F_MOVE)
        else:
            data = os.read(r0, n)
            while len(data) < n:
                data += os.read(r0, n - len(data))
            for s in live:
                _write_all(s.pipe_w, memoryview(data))
        if self.low_latency and n <= INLINE_MAX:
            for s in live:
                s.drain(n)
            return 0
        for s in live:
            s.give(n)
        return len(live)
