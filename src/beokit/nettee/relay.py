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
the stream size.  The outputs are sinks.py's; ``-heal`` adds outputs to a
running relay (:class:`Adoption`) and replaces its input.

Where splice is not available (another OS, ``BEOKIT_NO_SPLICE=1``) or an
fd refuses it (a terminal, an O_APPEND file), the same structure runs with
``read``/``write`` through a preallocated buffer instead.
"""

from __future__ import annotations

import errno
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
from beokit.nettee.sinks import Sink, Tap, aligned_buffer, write_all

INLINE_MAX = 1 << 16  # low-latency mode writes chunks up to this size inline
BATCH = 128 << 10  # a socket input is handed on in chunks of at least this much...
BATCH_WAIT = 0.005  # ...or of what arrived within this many seconds of a chunk's first byte
IDLE_LOOK = 0.02  # batching, nothing in hand: look for a trickle below SO_RCVLOWAT this often
# A socket stream relayed to a child: its first chunk waits for HOLD bytes, or HOLD_WAIT
# seconds after its first byte: a cushion that stays in this node's output queue for the
# whole stream, so a late wake-up of this relay does not leave the link to its child idle
# (time such a link loses is lost for every node below; docs/nettee.md, "Pipeline latency").
HOLD = 256 << 10
HOLD_WAIT = 0.010
AGAIN, NEXT, STOP = "again", "next", "stop"  # what a step of the relay's loop says


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


@dataclass
class _Loop:
    """The relay loop's state between two steps."""

    poller: select.poll
    r0: int  # the staging pipe P0
    w0: int
    cap: int  # bytes P0 (and every output pipe) holds
    buf: memoryview  # for inputs that refuse splice
    batch: int
    result: RelayResult
    in_mask: int = select.POLLIN
    filled: int = 0  # bytes in P0
    busy: int = 0  # outputs still writing the last chunk
    since: float = 0.0  # when the first byte of the chunk in P0 arrived (batching)
    holding: bool = False  # the stream's first chunk is held back (HOLD)
    eof: bool = False
    p0_full: bool = False
    asked: bool = False  # on_input_end was asked about this input
    looked: bool = False  # a trickle was looked for (not woken by the kernel)
    last_data: float = field(default_factory=time.monotonic)


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
        # when (time.monotonic) the first byte came in, the input ended, every output had it
        self.first_at = self.eof_at = self.done_at = 0.0

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
        loop = self._open()
        try:
            while True:
                step = NEXT
                for part in (self._step_adds, self._step_input, self._step_end,
                             self._step_distribute, self._step_read, self._step_wait):  # fmt: skip
                    step = part(loop)
                    if step is not NEXT:
                        break
                if step is STOP:
                    break
        finally:
            self._close(loop)
            self.done_at = time.monotonic()
        result = loop.result
        result.bytes_in = self.bytes_in
        result.eof = loop.eof and result.read_error is None
        return result

    def _open(self) -> _Loop:
        self._evfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        r0, w0, cap = make_pipe(self.buf_size)
        if self.tap is not None:
            self.sinks.append(self.tap)
        for s in self.sinks:
            cap = min(cap, s.open(self.buf_size, self._evfd))
        if not self.zero_copy:
            cap = min(cap, 65536)  # a write to an idle pipe must never block
        buf = aligned_buffer(min(self.maxread, cap))  # for inputs that refuse splice
        try:
            os.set_blocking(self.in_fd, False)
        except OSError:
            pass
        poller = select.poll()
        poller.register(self.in_fd, select.POLLIN)
        poller.register(self._evfd, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        batch = self._batching()
        return _Loop(poller, r0, w0, cap, buf, batch, RelayResult(0, False),
                     holding=batch > 0 and any(s.kind == "child" for s in self.sinks))  # fmt: skip

    def _close(self, loop: _Loop) -> None:
        for s in self.sinks:
            s.stop()
        if self._discard is not None:
            self._discard.stop()
            os.close(self._discard.fd)
        os.close(loop.r0)
        os.close(loop.w0)
        os.close(self._evfd)
        with self._lock:
            adds, self._adds = self._adds, []
            os.close(self._wake)
            self._wake = -1
            self.finished = True
        for add in adds:  # never leave an adopter waiting: it replays itself
            add.why = ENDED
            add.done.set()

    def _hand_out(self, loop: _Loop) -> None:
        loop.busy = self._distribute(loop.r0, loop.filled)
        loop.filled, loop.p0_full = 0, False

    def _step_adds(self, loop: _Loop) -> str:
        """Outputs to add (-heal) go in at a chunk boundary, once every output is idle."""
        if loop.busy or not self._adds:
            return NEXT
        if loop.filled:  # hand out what P0 holds first: adds start at a boundary
            self._hand_out(loop)
            return AGAIN
        self._apply_adds()
        return NEXT

    def _step_input(self, loop: _Loop) -> str:
        """The input was lost (-heal): wait for its replacement, or for word to end."""
        if not self.waiting_input.is_set():
            return NEXT
        with self._lock:
            new = self._inputs.pop(0) if self._inputs else -1
        if new is None:  # no replacement: end here
            self.waiting_input.clear()
            return NEXT
        if new < 0:
            loop.busy -= self._wait(loop.poller, -1)
            return AGAIN
        self.waiting_input.clear()  # a new parent took over: read on from it
        loop.poller.unregister(self.in_fd)
        self.in_fd = new
        os.set_blocking(new, False)
        loop.batch = self._batching()
        loop.poller.register(new, select.POLLIN)
        loop.in_mask = select.POLLIN
        loop.eof, loop.asked, loop.result.read_error = False, False, None
        loop.last_data = time.monotonic()
        return AGAIN

    def _step_end(self, loop: _Loop) -> str:
        """At the end of the input, with everything written: ask whether another input
        comes (-heal); else stop, once no heal holds the relay."""
        if not (loop.eof and loop.filled == 0 and loop.busy == 0):
            return NEXT
        if not loop.asked and self.on_input_end is not None:
            loop.asked = True
            if self.on_input_end(loop.result.read_error):
                self.waiting_input.set()  # wait for a replacement input
                return AGAIN
        if self._holds == 0 and not self._adds:
            return STOP
        return NEXT

    def _step_distribute(self, loop: _Loop) -> str:
        """Hand the chunk in P0 to the outputs when it is due."""
        filled, batch = loop.filled, loop.batch
        if not filled or loop.busy:
            return NEXT
        full = loop.p0_full or loop.cap - filled < self.minread  # P0 takes no more
        if loop.holding:  # until HOLD bytes, HOLD_WAIT, a full P0 or the input's end
            if (filled < HOLD and not (loop.eof or full)
                    and time.monotonic() - loop.since < HOLD_WAIT):  # fmt: skip
                return NEXT
            loop.holding = False
        due = filled >= self.minwrite or loop.eof or full
        if not due or (batch and not (filled >= batch or loop.eof or full
                                      or time.monotonic() - loop.since >= BATCH_WAIT)):  # fmt: skip
            return NEXT
        if batch and self.lowat == 1 and filled >= batch // 2:
            self._set_lowat(batch)  # chunks fill up again: back to bulk
        self._hand_out(loop)
        return AGAIN

    def _can_read(self, loop: _Loop) -> bool:
        return (not loop.eof and not loop.p0_full and loop.cap - loop.filled >= self.minread
                and self._holds == 0)  # fmt: skip

    def _step_read(self, loop: _Loop) -> str:
        """Read what the input has into P0 (never blocks)."""
        if not self._can_read(loop):
            return NEXT
        try:
            n = self._read(loop.w0, min(self.maxread, loop.cap - loop.filled), loop.buf)
        except BlockingIOError:
            n = -1
        except OSError as exc:
            loop.result.read_error = exc
            loop.eof = True
            return AGAIN
        if n == 0:
            loop.eof = True
            self.eof_at = self.eof_at or time.monotonic()
            return AGAIN
        if n > 0:
            if not loop.filled:
                loop.since = time.monotonic()
                self.first_at = self.first_at or loop.since
            if loop.looked:
                loop.looked = False
                self._set_lowat(1)  # a trickle: found by looking, not woken
            loop.filled += n
            self.bytes_in += n
            loop.last_data = time.monotonic()
            return AGAIN
        # EAGAIN: the input is empty, or P0 is full
        if loop.filled and loop.poller.poll(0) and self._in_ready(loop.poller):
            loop.p0_full = True
            return AGAIN
        return NEXT

    def _step_wait(self, loop: _Loop) -> str:
        """Nothing to do now: wait for the input, an output, a poke or a deadline."""
        can_read = self._can_read(loop)
        want_in = select.POLLIN if can_read else 0
        if want_in != loop.in_mask:  # never poll the input while P0 cannot take more
            loop.poller.modify(self.in_fd, want_in)
            loop.in_mask = want_in
        timeout_ms = -1
        if can_read and self.idle_timeout > 0 and loop.busy == 0:
            left = loop.last_data + self.idle_timeout - time.monotonic()
            if left <= 0:
                if not loop.asked and self.on_input_end is not None:
                    loop.asked = True  # a silent input may be replaced (-heal)
                    if self.on_input_end(TimeoutError("no data")):
                        loop.eof = True
                        self.waiting_input.set()
                        return AGAIN
                loop.result.timed_out = True
                return STOP
            timeout_ms = int(left * 1000) + 1
        batch = loop.batch
        look = bool(batch) and can_read and not loop.filled and self.lowat > 1
        if batch and can_read and (loop.filled or look):
            # the chunk in P0 goes at its deadline; below SO_RCVLOWAT the kernel
            # does not wake us, so look for a trickle every IDLE_LOOK
            wait = HOLD_WAIT if loop.holding else BATCH_WAIT
            due = wait - (time.monotonic() - loop.since) if loop.filled else IDLE_LOOK
            ms = max(int(due * 1000) + 1, 1)
            timeout_ms = ms if timeout_ms < 0 else min(timeout_ms, ms)
        loop.busy -= self._wait(loop.poller, timeout_ms)
        loop.looked = look and self._quiet
        if loop.busy:
            loop.last_data = time.monotonic()  # waiting on outputs is not idleness
        return AGAIN

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
            write_all(w0, buf[:got])
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
                write_all(s.pipe_w, memoryview(data))
        if self.low_latency and n <= INLINE_MAX:
            for s in live:
                s.drain(n)
            return 0
        busy = 0
        for s in live:
            left = n - s.try_inline(n) if s.inline else n
            if left:
                s.give(left)
                busy += 1
        return busy
