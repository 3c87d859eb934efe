"""A node's stream: its outputs, the relay, the digest, and the checks at the end.

:meth:`Streamer.run` builds the sinks (each child's data socket, the local
``-out``, the parent in ``-flow pull``), the relay, and what ``-heal`` and
``-digest`` need (a replay window, or a hasher that follows a file), and
moves the stream.  After it: :meth:`Streamer.end_children` passes the end
of the stream (its byte count) on, :meth:`Streamer.check_end` compares what
arrived with the parent's count, and :meth:`Streamer.check_source` asks
whether the root's input file changed under the stream (source.py).
"""

from __future__ import annotations

import os
import select
import socket
import stat
import threading
import time
from typing import TYPE_CHECKING

from beokit.linux import zero_copy_available
from beokit.nettee.command import SocketCommand
from beokit.nettee.filehash import FileHasher
from beokit.nettee.links import ChildLink
from beokit.nettee.messages import End
from beokit.nettee.options import Role
from beokit.nettee.policy import Phase, Who
from beokit.nettee.relay import BATCH, Relay, RelayResult
from beokit.nettee.sinks import Ring, Sink, Tap
from beokit.nettee.source import Snapshot, change

if TYPE_CHECKING:
    from beokit.nettee.node import Node

END_WAIT = 10.0  # the parent's end after its data ended
DIGEST = "xxh3_128"


class Streamer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.local: Sink | None = None  # the local -out
        self.up_sink: Sink | None = None  # -flow pull: the parent
        self.tap: Tap | None = None
        self.file_hasher: FileHasher | None = None
        self.stm_error: OSError | None = None  # set by the -stm input pump
        self.source_changed = ""  # the root's input file changed during the stream: why
        self.started = 0.0
        self.seconds = 0.0

    def io_caps(self) -> tuple[int, int]:
        """Per-call read/write caps.

        The man page's -buf_maxread/-buf_maxwrite (default 64 KiB) exist so one
        select() loop interleaves its inputs and outputs.  Here every output has
        its own thread, so on the zero-copy path the default is a whole buffer
        per call; values given on the command line are always honoured.
        """
        cfg = self.node.cfg
        wide = zero_copy_available()
        rd = cfg.buf_maxread if "-buf_maxread" in cfg.given or not wide else cfg.buf_size
        wr = cfg.buf_maxwrite if "-buf_maxwrite" in cfg.given or not wide else cfg.buf_size
        return rd, wr

    def child_sink(self, link: ChildLink) -> Sink:
        assert link.data is not None
        return Sink(f"child{link.index}", link.data.fileno(), "child",
                    maxwrite=self.io_caps()[1],
                    on_error=lambda _s, e, lk=link: self.node.child_write_failed(lk, e))  # fmt: skip

    def _sinks(self) -> list[Sink]:
        node, cfg = self.node, self.node.cfg
        _, maxwrite = self.io_caps()
        sinks: list[Sink] = [self.up_sink] if self.up_sink is not None else []
        for link in node.links:
            if link.data is None or link.dead or node.pull:
                continue
            link.sink = self.child_sink(link)
            sinks.append(link.sink)
        if node.out_fd is not None:
            if node.out_is_file:
                try:
                    os.ftruncate(node.out_fd, 0)
                except OSError:
                    pass  # a device or a pipe
            self.local = Sink("local", node.out_fd, "local", maxwrite=maxwrite,
                              on_error=node.local_write_failed, fsync=cfg.fsync)  # fmt: skip
            sinks.append(self.local)
        return sinks

    def _tap_or_hasher(self, relay: Relay) -> None:
        """-heal and -digest need the stream again: from a regular file that holds it
        (the root's input, a node's output) at no copy, or else from a tap."""
        node, cfg = self.node, self.node.cfg
        window = cfg.heal and bool(node.links)  # a parent keeps a replay window
        if not (window or cfg.digest):
            return
        import xxhash  # a dependency of beokit; imported only when asked for

        stream_fd = node.healer.stream_file()
        if stream_fd < 0:
            size = cfg.window if window else max(cfg.buf_size, 1 << 20)
            self.tap = relay.tap = Tap(Ring(size), xxhash.xxh3_128() if cfg.digest else None)
        elif cfg.digest:
            local = self.local
            progress = ((lambda: relay.bytes_in) if cfg.role is Role.ROOT
                        else (lambda: local.sent if local is not None else 0))  # fmt: skip
            self.file_hasher = FileHasher(stream_fd, progress, xxhash.xxh3_128())

    def run(self, in_fd: int, idle_timeout: float) -> RelayResult:
        node, cfg = self.node, self.node.cfg
        maxread, maxwrite = self.io_caps()
        if cfg.out == "socket":  # start COMMAND only once the tree has formed
            node.out_cmd = SocketCommand(cfg.cmd or "", "out", cfg.buf_size)
            node.out_fd, node.out_is_file = node.out_cmd.fd, False
        sinks = self._sinks()
        relay = Relay(in_fd, sinks, buf_size=cfg.buf_size, minread=cfg.buf_minread,
                      minwrite=cfg.buf_minwrite, maxread=maxread, maxwrite=maxwrite,
                      idle_timeout=idle_timeout, low_latency=cfg.stm is not None,
                      batch=0 if "-buf_minwrite" in cfg.given else BATCH)  # fmt: skip
        self._tap_or_hasher(relay)
        if cfg.heal and cfg.role is not Role.ROOT:
            relay.on_input_end = node.healer.input_ended
        node.relay = relay
        node.move(Phase.STREAMING, {Phase.FORMING})
        self.started = time.monotonic()
        node.log.message(f"streaming to {len(sinks)} output(s)"
                         f" ({'splice/tee' if relay.zero_copy else 'copy loop'})")  # fmt: skip
        result = relay.run()
        if self.local is not None:
            self.local.finish()
        if node.out_cmd is not None:
            node.out_cmd.end_input()
            failed = node.out_cmd.wait()
            if failed and self.local is not None and self.local.alive:
                self.local.alive = False
                node.local_write_failed(self.local, OSError(0, failed))
        self.seconds = time.monotonic() - self.started
        return result

    def stm_filter(self, src: int, eos: bytes) -> int:
        """-stm at the root: pass each line on at once, end at the line EOS.

        A thread reads the input, forwards every complete line into a pipe the
        relay reads (so a line never waits for a buffer to fill), and closes
        the pipe at the EOS line, which is not passed on, or at end of input.
        """
        r, w = os.pipe()

        def pump() -> None:
            pending = b""
            try:
                while True:
                    try:
                        data = os.read(src, 65536)
                    except BlockingIOError:
                        select.select([src], [], [])
                        continue
                    if not data:
                        break
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    out = []
                    for line in lines:
                        if line.rstrip(b"\r") == eos:
                            if out:
                                os.write(w, b"".join(out))
                            return
                        out.append(line + b"\n")
                    if out:
                        os.write(w, b"".join(out))
                if pending and pending.rstrip(b"\r") != eos:
                    os.write(w, pending)
            except OSError as exc:
                self.stm_error = exc
            finally:
                os.close(w)

        threading.Thread(target=pump, name="stm", daemon=True).start()
        return r

    # ------------------------------------------------------------ after the stream

    def end_children(self) -> None:
        """Shut each child's data connection and send the end with the count sent."""
        node = self.node
        for link in node.links:
            if link.data is None or link.dead or link.peer is None:
                continue
            try:
                link.data.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            short = ""
            if node.phase is Phase.CUT_OFF and node.end is None:
                short = f"{node.name}: {node.own.detail}"  # -conrf: we finished early
            elif node.end is not None and node.end.short:
                short = node.end.short
            elif self.source_changed:  # every node below holds a copy of no version
                short = f"{node.name}: {self.source_changed}"
            link.peer.send(End(link.sent, short))

    def check_end(self, received: int) -> None:
        """Compare what arrived with the parent's end (its count, and whether it was cut)."""
        node = self.node
        if not node.wait_for(lambda: node.end is not None or node.phase is Phase.CUT_OFF,
                             END_WAIT):  # fmt: skip
            node.parent_failed("stream ended without the parent's byte count")
            return
        end = node.end
        if end is None:
            return
        if end.short:  # our parent finished with -conrf: the stream was cut above it
            node.record(Who.CUT_ABOVE, f"stream cut upstream ({end.short}), "
                        f"{received} bytes received")  # fmt: skip
            node.log.error(f"network read failure (NRF): the stream was cut upstream "
                           f"({end.short}); {received} bytes received")  # fmt: skip
        if end.sent != received:
            node.record(Who.SHORT, f"received {received} of {end.sent} bytes")
            node.log.error(f"short stream: received {received} of {end.sent} bytes")

    def source_snapshot(self) -> tuple[Snapshot, int] | None:
        """The root's input file as the stream starts, and the offset it starts at
        (None when the input is not a regular file read directly)."""
        node = self.node
        if node.cfg.stm is not None or node.in_cmd is not None or node.in_fd is None:
            return None
        try:
            st = os.fstat(node.in_fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            return Snapshot.of(st), os.lseek(node.in_fd, 0, os.SEEK_CUR)
        except OSError:
            return None

    def check_source(self, start: Snapshot, offset: int, read: int) -> None:
        """A source file that changed during the stream is LRF, fatal even with -colrf:
        every node holds bytes that match no version of it (see source.py)."""
        node = self.node
        assert node.in_fd is not None
        try:
            why = change(start, offset, Snapshot.of(os.fstat(node.in_fd)), read)
        except OSError as exc:
            why = f"it cannot be examined any more ({exc.strerror})"
        if not why:
            return
        why = f"source {','.join(node.cfg.inputs)} changed during the stream: {why}"
        self.source_changed = why
        node.record(Who.SOURCE, why)
        node.log.error(f"local read failure (LRF): {why}")

    def digest(self) -> str:
        """-digest: "xxh3_128:<hex>" of what this node wrote (root: read), or ""."""
        node = self.node
        hasher = None
        if self.file_hasher is not None:
            relay = node.relay
            self.file_hasher.finish((relay.bytes_in if relay else 0) if node.cfg.role is Role.ROOT
                                    else self.local.sent if self.local else 0)  # fmt: skip
            hasher = self.file_hasher.hasher if self.file_hasher.error is None else None
        elif self.tap is not None:
            hasher = self.tap.hasher
        if hasher is None or self.source_changed:  # a changed file: no digest
            return ""
        return f"{DIGEST}:{hasher.hexdigest()}"  # type: ignore[attr-defined]
