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

import errno
import mmap
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from beokit.linux import (
    SPLICE_F_MORE,
    SPLICE_F_MOVE,
    SPLICE_F_NONBLOCK,
    make_pipe,
    tee,
    zero_copy_available,
)

INLINE_MAX = 1 << 16  # low-latency mode writes chunks up to this size inline
BATCH = 128 << 10  # a socket input is handed on in chunks of at least this much...
BATCH_WAIT = 0.005  # ...or of what arrived within this many seconds of a chunk's first byte
IDLE_LOOK = 0.02  # batching, nothing in hand: look for a trickle below SO_RCVLOWAT this often
TAP_STEP = 256 << 10  # the tap copies and hashes this much at a time (stays in L2 cache)


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


class Ring:
    """The last ``size`` bytes of the stream, addressed by absolute offset.

    The replay window of ``-heal``: a parent re-sends from it what an adopted
    grandchild lost with its dead parent.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = memoryview(bytearray(size))
        self.end = 0  # absolute offset just past the newest byte

    @property
    def start(self) -> int:
        return max(0, self.end - self.size)

    def free(self, n: int) -> list[memoryview]:
        """Where the next ``n`` (<= size) bytes go: one or two slices of the buffer."""
        at = self.end % self.size
        first = min(n, self.size - at)
        return [self.buf[at : at + first]] + ([self.buf[: n - first]] if n > first else [])

    def segments(self, start: int, stop: int) -> list[memoryview]:
        """Slices holding the bytes [start, stop); they must lie within the window."""
        if not self.start <= start <= stop <= self.end:
            raise ValueError(f"[{start}, {stop}) is outside the window [{self.start}, {self.end})")
        out, pos = [], start
        while pos < stop:
            at = pos % self.size
            k = min(stop - pos, self.size - at)
            out.append(self.buf[at : at + k])
            pos += k
        return out


class Tap(Sink):
    """An output that keeps the stream in user space: digest and replay window.

    It is the one place where the stream is copied into Python's memory
    (one ``readv`` per chunk from its pipe into the ring); the digest is
    computed over the ring in place, no second copy.
    """

    def __init__(self, ring: Ring, hasher: object | None) -> None:
        super().__init__("tap", -1, "tap", maxwrite=ring.size)
        self.ring = ring
        self.hasher = hasher

    def _write(self, n: int) -> None:
        self._done = self._taken = 0
        while self._done < n:
            want = min(n - self._done, self.ring.size, TAP_STEP)
            got = os.readv(self.pipe_r, self.ring.free(want))
            if got == 0:
                raise OSError(errno.EIO, "tap pipe ended early")
            if self.hasher is not None:
                for seg in self.ring.free(got):
                    self.hasher.update(seg)  # type: ignore[attr-defined]
            self.ring.end += got
            self._done += got
            self._taken += got
            self.sent += got


class FileHasher:
    """Digest of a regular file that is being written (or read) by the relay.

    Where the stream lands in a regular file (a node's ``-out FILE``, the
    root's ``-in FILE``), the digest needs no copy: a thread follows the
    file as it grows and hashes it through ``mmap`` from the page cache.
    ``progress()`` says how many bytes of the file hold the stream so far.
    """

    WINDOW = 64 << 20  # bytes mapped at a time
    PERIOD = 0.05  # seconds between looks at the file: a few MB behind, one mmap per look

    def __init__(self, fd: int, progress: Callable[[], int], hasher: object) -> None:
        self.fd = fd
        self.progress = progress
        self.hasher = hasher
        self.hashed = 0
        self.error: OSError | None = None
        self._final = -1
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="file-digest", daemon=True)
        self._thread.start()

    def _hash_to(self, target: int) -> None:
        page = mmap.ALLOCATIONGRANULARITY
        while self.hashed < target:
            base = self.hashed - self.hashed % page
            stop = min(target, base + self.WINDOW)
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # fault in at once
            with mmap.mmap(self.fd, stop - base, flags=flags, prot=mmap.PROT_READ,
                           offset=base) as m:  # fmt: skip
                with memoryview(m) as mv:
                    self.hasher.update(mv[self.hashed - base :])  # type: ignore[attr-defined]
            self.hashed = stop

    def _run(self) -> None:
        try:
            while True:
                final = self._final
                self._hash_to(self.progress() if final < 0 else final)
                if final >= 0:
                    return
                self._wake.wait(self.PERIOD)
        except (OSError, ValueError) as exc:  # the file shrank or vanished under us
            self.error = exc if isinstance(exc, OSError) else OSError(0, str(exc))

    def finish(self, total: int) -> None:
        """Hash up to ``total`` bytes and stop."""
        self._final = total
        self._wake.set()
        self._thread.join()


ENDED = "the stream has ended"


@dataclass
class Adoption:
    """A sink to add to a running relay at a chunk boundary, after a replay.

    ``replay(segments)`` sends the stream from ``offset`` up to the relay's
    position (the bytes the new output missed); ``reread(offset, stop)``
    (root, seekable input) covers bytes older than the window.  ``done``
    is set with ``ok`` and ``why`` once the relay has decided.
    """

    sink: Sink
    offset: int
    replay: Callable[[list[memoryview]], None]
    reread: Callable[[int, int], None] | None = None
    position: int = -1
    ok: bool = False
    why: str = ""
    done: threading.Event = field(default_factory=threading.Event)


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
                 idle_timeout: float = 0.0, low_latency: bool = False,
                 batch: int = 0) -> None:  # fmt: skip
        self.in_fd = in_fd
        self.low_latency = low_latency  # -stm: write small chunks inline, no thread wake-ups
        # batch > 0: gather a socket input into chunks of at least ``batch`` bytes (the
        # kernel wakes us only then: SO_RCVLOWAT), or whatever came within BATCH_WAIT;
        # a trickle turns the low-water mark off until a full chunk comes again
        self.batch = batch
        self.lowat = 1  # the input's SO_RCVLOWAT now (1: wake on any byte)
        self._quiet = False  # the last poll timed out
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
        # -heal and -digest
        self.tap: Tap | None = None
        self.on_input_end: Callable[[OSError | None], bool] | None = None
        self.waiting_input = threading.Event()  # input lost, a replacement may come
        self._lock = threading.Lock()
        self._holds = 0
        self._adds: list[Adoption] = []
        self._inputs: list[int | None] = []
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.finished = False

    # ---- called from other threads (-heal)

    def hold(self) -> None:
        """Stop reading new input until :meth:`release` (a heal is under way)."""
        with self._lock:
            self._holds += 1

    def release(self) -> None:
        with self._lock:
            self._holds -= 1
        self._poke()

    def adopt(self, add: Adoption) -> bool:
        """Add an output at the next chunk boundary, after replaying what it lacks.

        False when the relay has already finished: the caller replays itself.
        """
        with self._lock:
            if self.finished:
                return False
            self._adds.append(add)
        self._poke()
        return True

    def replace_input(self, fd: int | None) -> None:
        """Go on reading from ``fd`` (or end, with None) after ``on_input_end``."""
        with self._lock:
            self._inputs.append(fd)
        self._poke()

    def _poke(self) -> None:
        with self._lock:
            if self._wake >= 0:  # -1: the relay has finished
                os.eventfd_write(self._wake, 1)

    def _apply_adds(self) -> None:
        with self._lock:
            adds, self._adds = self._adds, []
        for add in adds:
            add.position = self.bytes_in
            try:
                self.catch_up(add, add.position)
                add.sink.open(self.buf_size, self._evfd)
                self.sinks.append(add.sink)
                add.ok = True
            except (OSError, ValueError) as exc:
                add.why = str(exc)
            add.done.set()

    def catch_up(self, add: Adoption, pos: int) -> None:
        """Send ``add`` the stream from its offset up to ``pos``: from the window, else by
        ``add.reread``; ValueError/OSError when neither holds those bytes."""
        if add.offset > pos:
            raise ValueError(f"the output has {add.offset} bytes, more than the {pos} read here")
        if add.offset == pos:
            return
        ring = self.tap.ring if self.tap is not None else None
        if ring is not None and add.offset >= ring.start:
            add.replay(ring.segments(add.offset, pos))
        elif add.reread is not None:
            add.reread(add.offset, pos)
        else:
            have = f"[{ring.start}, {ring.end})" if ring else "none"
            raise ValueError(f"offset {add.offset} is older than the replay window {have}")

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
        if self.tap is not None:
            self.sinks.append(self.tap)
        for s in self.sinks:
            cap = min(cap, s.open(self.buf_size, self._evfd))
        if not self.zero_copy:
            cap = min(cap, 65536)  # a write to an idle pipe must never block
        buf = memoryview(bytearray(min(self.maxread, cap)))  # for inputs that refuse splice
        try:
            os.set_blocking(self.in_fd, False)
        except OSError:
            pass
        batch = self._batching()
        poller = select.poll()
        poller.register(self.in_fd, select.POLLIN)
        in_mask = select.POLLIN
        poller.register(self._evfd, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        filled = busy = 0
        since = 0.0  # when the first byte of the chunk in P0 arrived (batching)
        eof = p0_full = asked = looked = False
        result = RelayResult(0, False)
        last_data = time.monotonic()
        try:
            while True:
                if busy == 0 and self._adds:
                    if filled:  # hand out what P0 holds first: adds start at a boundary
                        busy = self._distribute(r0, filled)
                        filled, p0_full = 0, False
                        continue
                    self._apply_adds()
                if self.waiting_input.is_set():
                    with self._lock:
                        new = self._inputs.pop(0) if self._inputs else -1
                    if new is None:  # no replacement: end here
                        self.waiting_input.clear()
                    elif new >= 0:  # a new parent took over: read on from it
                        self.waiting_input.clear()
                        poller.unregister(self.in_fd)
                        self.in_fd = new
                        os.set_blocking(new, False)
                        batch = self._batching()
                        poller.register(new, select.POLLIN)
                        in_mask = select.POLLIN
                        eof, asked, result.read_error = False, False, None
                        last_data = time.monotonic()
                        continue
                    else:
                        busy -= self._wait(poller, -1)
                        continue
                if eof and filled == 0 and busy == 0:
                    if not asked and self.on_input_end is not None:
                        asked = True
                        if self.on_input_end(result.read_error):
                            self.waiting_input.set()  # wait for a replacement input
                            continue
                    if self._holds == 0 and not self._adds:
                        break
                if filled and busy == 0 and (filled >= self.minwrite or eof or p0_full
                                             or cap - filled < self.minread) and (
                        not batch or filled >= batch or eof or p0_full
                        or time.monotonic() - since >= BATCH_WAIT):  # fmt: skip
                    if batch and self.lowat == 1 and filled >= batch // 2:
                        self._set_lowat(batch)  # chunks fill up again: back to bulk
                    busy = self._distribute(r0, filled)
                    filled, p0_full = 0, False
                    continue
                can_read = (not eof and not p0_full and cap - filled >= self.minread
                            and self._holds == 0)  # fmt: skip
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
                        if not filled:
                            since = time.monotonic()
                        if looked:
                            looked = False
                            self._set_lowat(1)  # a trickle: found by looking, not woken
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
                        if not asked and self.on_input_end is not None:
                            asked = True  # a silent input may be replaced (-heal)
                            if self.on_input_end(TimeoutError("no data")):
                                eof = True
                                self.waiting_input.set()
                                continue
                        result.timed_out = True
                        break
                    timeout_ms = int(left * 1000) + 1
                look = bool(batch) and can_read and not filled and self.lowat > 1
                if batch and can_read and (filled or look):
                    # the chunk in P0 goes at its deadline; below SO_RCVLOWAT the kernel
                    # does not wake us, so look for a trickle every IDLE_LOOK
                    due = BATCH_WAIT - (time.monotonic() - since) if filled else IDLE_LOOK
                    ms = max(int(due * 1000) + 1, 1)
                    timeout_ms = ms if timeout_ms < 0 else min(timeout_ms, ms)
                busy -= self._wait(poller, timeout_ms)
                looked = look and self._quiet
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
            with self._lock:
                adds, self._adds = self._adds, []
                os.close(self._wake)
                self._wake = -1
                self.finished = True
            for add in adds:  # never leave an adopter waiting: it replays itself
                add.why = ENDED
                add.done.set()
        result.bytes_in = self.bytes_in
        result.eof = eof and result.read_error is None
        return result

    def _batching(self) -> int:
        """The chunk size to gather from the input: ``batch`` for a TCP socket (its
        SO_RCVLOWAT set to it), else 0 (a pipe, a file, a terminal: no batching)."""
        self.lowat = 1
        if self.batch <= 0 or self.low_latency or self._copy_in:
            return 0
        return self.batch if self._set_lowat(self.batch) else 0

    def _set_lowat(self, n: int) -> bool:
        try:
            sock = socket.socket(fileno=self.in_fd)
        except OSError:
            return False  # not a socket
        try:
            if sock.type != socket.SOCK_STREAM:
                return False
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
        except OSError:
            return False
        finally:
            sock.detach()
        self.lowat = n
        return True

    def _wait(self, poller: select.poll, timeout_ms: int) -> int:
        """Poll; returns how many outputs finished their chunk (``_quiet``: nothing woke it)."""
        done = 0
        events = poller.poll(timeout_ms)
        self._quiet = not events
        for fd, _ev in events:
            if fd == self._evfd:
                done += int.from_bytes(os.read(self._evfd, 8), "little")
            elif fd == self._wake:
                try:
                    os.eventfd_read(self._wake)
                except BlockingIOError:
                    pass
        return done

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
