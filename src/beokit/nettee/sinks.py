"""The relay's outputs: a sink per output, and the tap that keeps the stream.

A :class:`Sink` is one output (a child's data socket, the local ``-out``, a
discard) with its own pipe and writer thread, which drains each chunk into
the output with ``splice(2)`` (or ``read``/``write`` where the fd refuses
it).  A child's socket is non-blocking: the relay splices a chunk into it
itself when it takes the chunk whole, and wakes the thread only for what
does not fit (the thread then waits for room).  A :class:`Tap` is the one
output that copies the stream into Python's memory: the :class:`Ring` that
``-heal`` replays from and ``-digest`` hashes.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import threading
from collections.abc import Callable

from beokit.linux import (
    SPLICE_F_MORE,
    SPLICE_F_MOVE,
    SPLICE_F_NONBLOCK,
    make_pipe,
    zero_copy_available,
)

TAP_STEP = 256 << 10  # the tap copies and hashes this much at a time (stays in L2 cache)


def aligned_buffer(size: int) -> memoryview:
    """``size`` writable bytes starting on a page boundary (an anonymous mapping).

    Where the kernel copies into user memory (a ``read`` from a pipe, a socket
    or a file) the destination's alignment matters: on this project's AMD EPYC
    VMs ``copy_to_user`` (``rep movsb``) moved 1 GiB from page-aligned kernel
    pages in 0.44 s into a ``bytearray`` (whose data start 16 bytes into a
    page) and in 0.08-0.10 s into a page-aligned buffer (docs/nettee.md,
    "What -digest and -heal cost").  Kept as long as any view of it lives.
    """
    return memoryview(mmap.mmap(-1, max(size, 1)))[:size]


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
        # the relay's word that a chunk is in the pipe: an eventfd, not a
        # threading.Semaphore (its Condition: dozens of futex calls a chunk)
        self._work = -1
        self._pending = 0
        self._notify = -1
        self._buf: memoryview | None = None
        self._done = self._taken = 0
        self._thread: threading.Thread | None = None
        # a socket output (a child): the relay splices each chunk into it itself
        # when the socket takes it whole (try_inline), the thread only the rest
        self.inline = False
        self._writable: select.poll | None = None

    def open(self, size: int, notify_fd: int) -> int:
        self.pipe_r, self.pipe_w, self.capacity = make_pipe(size)
        self._notify = notify_fd
        if self.kind == "child" and not self.copy_mode:  # a data socket (a child; -process: the parent)
            os.set_blocking(self.fd, False)
            self.inline = True
            self._writable = select.poll()
            self._writable.register(self.fd, select.POLLOUT)
        self._work = os.eventfd(0, os.EFD_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.label}", daemon=True)
        self._thread.start()
        return self.capacity

    def give(self, n: int) -> None:
        self._pending = n
        os.eventfd_write(self._work, 1)

    def stop(self) -> None:
        if self._thread is not None:
            self.give(-1)
            self._thread.join()
            self._thread = None
        for fd in (self.pipe_r, self.pipe_w, self._work):
            if fd >= 0:
                os.close(fd)
        self.pipe_r = self.pipe_w = self._work = -1

    def kill(self) -> None:
        """Stop writing to this output (used when a peer is declared dead)."""
        self.alive = False

    def try_inline(self, n: int) -> int:
        """Splice what the socket takes now of a chunk of ``n`` bytes (never blocks,
        never raises: an error is met again by the writer thread, which handles it);
        the bytes moved.  A chunk the socket takes whole costs no thread wake-up."""
        done = 0
        while done < n and self.alive:
            try:
                k = os.splice(self.pipe_r, self.fd, min(n - done, self.maxwrite),
                              flags=SPLICE_F_MOVE | SPLICE_F_NONBLOCK)  # fmt: skip
            except OSError:
                break
            if k <= 0:
                break
            done += k
            self.sent += k
        return done

    def _run(self) -> None:
        while True:
            os.eventfd_read(self._work)  # blocks without the GIL
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
                except BlockingIOError:
                    self._wait_writable()  # an inline (non-blocking) socket is full
                    continue
                except OSError as exc:
                    if exc.errno == errno.EINVAL and self._done == 0 and self.sent == 0:
                        self.copy_mode = True  # this fd does not take splice
                        continue
                    raise
            else:
                if self._buf is None:
                    self._buf = aligned_buffer(min(self.maxwrite, 1 << 20))
                got = os.readv(self.pipe_r, [self._buf[: min(want, len(self._buf))]])
                self._taken += got
                k = write_all(self.fd, self._buf[:got])
            if k == 0:
                raise OSError(errno.EIO, "output accepted no data")
            if not self.copy_mode:
                self._taken += k
            self._done += k
            self.sent += k
            if not self.alive:
                raise OSError(errno.ECONNABORTED, "output abandoned")

    def _wait_writable(self) -> None:
        assert self._writable is not None
        self._writable.poll(1000)  # a cut() (shutdown) wakes it at once
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


def write_all(fd: int, data: memoryview) -> int:
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
        # page-aligned: the byte at stream offset p lies at p % size, so with a size
        # that is a multiple of the page size it has the same offset in its page here
        # as in the page the kernel holds it in (a file's page cache, a splice of it):
        # the cheap case of the kernel's copy (see aligned_buffer)
        self.buf = aligned_buffer(size)
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
