"""``-heal``: a dead node's parent adopts its children, and the stream resumes.

Parent side (:meth:`Healer.heal`): when a child dies mid-stream the relay
holds its input, the parent connects to each grandchild (from the child's
``ready``: :class:`~beokit.nettee.messages.Kid`), learns how many bytes it
holds (``Welcome.have``), replays what it lacks from the replay window or
the stream's file, and adds it as an output at a chunk boundary.

Child side (:meth:`Healer.orphan`, :meth:`Healer.adoption_request`): a
node whose parent died waits, bounded by :data:`HEAL_WAIT`, for an
ancestor to adopt it; the adopter's data connection replaces the old one
and the relay reads on.  docs/nettee-heal.md tells the whole story.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from beokit.nettee import handshake, protocol
from beokit.nettee.formation import (
    CONNECT_RETRY,
    HANDSHAKE_TIMEOUT,
    DataWait,
    Retry,
    Unreachable,
    follow_parent,
    peer_of,
    take_parent,
)
from beokit.nettee.gate import Handshake
from beokit.nettee.hostlists import Endpoint
from beokit.nettee.links import BranchLoss, ChildLink, Fatal
from beokit.nettee.messages import Adopted, End, Heal, Join, Kid, Refuse, encode
from beokit.nettee.options import Role
from beokit.nettee.policy import Phase
from beokit.nettee.relay import ENDED, Adoption

if TYPE_CHECKING:
    from beokit.nettee.node import Node

HEAL_WAIT = 10.0  # how long an orphan waits for an ancestor to adopt it
ADOPT_TRY = 3.0  # how long a parent tries to reach one grandchild
MAX_ADOPTERS = 2  # authenticated adoptions served at once (each needs a thread)
END_WAIT = 10.0  # the parent's end after its data ended


class Healer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.heals: list[Heal] = []  # what was healed in this subtree, for the report
        self._adopters = threading.BoundedSemaphore(MAX_ADOPTERS)
        self._adopt_lock = threading.Lock()
        self._stream_fd: int | None = None  # a regular file holding the stream, -1: none

    # ------------------------------------------------------------ child side

    def orphan(self, why: str) -> None:
        """The parent died mid-stream: wait, bounded, for an ancestor to adopt us."""
        node = self.node
        if not node.move(Phase.ORPHANED, {Phase.STREAMING, Phase.ENDED}):
            return  # already an orphan, or past adoption
        node.log.error(f"parent {node.parent_name} lost ({why}); -heal: waiting up to "
                       f"{HEAL_WAIT:g} s for an ancestor to adopt {node.name}")  # fmt: skip
        old = node.parent
        if node.data_in is not None:
            try:
                node.data_in.shutdown(socket.SHUT_RDWR)  # the relay reads to the end of it
            except OSError:
                pass
        if old is not None:
            old.close()
        threading.Thread(target=self._give_up, args=(why,), name="orphan", daemon=True).start()

    def _give_up(self, why: str) -> None:
        node = self.node
        node.wait_for(lambda: node.phase is not Phase.ORPHANED, HEAL_WAIT)
        with self._adopt_lock:
            if node.phase is not Phase.ORPHANED:
                return  # adopted
            if node.relay is not None:
                node.relay.replace_input(None)
            node.parent_failed(f"{why}; no ancestor adopted this node within {HEAL_WAIT:g} s",
                               no_adopter=True)  # fmt: skip

    def input_ended(self, error: OSError | None) -> bool:
        """Relay callback at the end of the parent's data: wait for an adopter?"""
        node = self.node
        if isinstance(error, TimeoutError):  # -t: the parent sent nothing for that long
            node.parent_failed(f"no data from parent for {node.cfg.timeout:g} s (-t)")
            return node.phase is Phase.ORPHANED
        node.wait_for(lambda: node.end is not None or node.phase is Phase.ORPHANED, END_WAIT)
        return node.phase is Phase.ORPHANED

    def adoption_request(self, hs: Handshake) -> None:
        """An ancestor asks to adopt this node (gate thread): check, then a worker."""
        node = self.node
        gate = node.parents.gate
        assert gate is not None
        msg = hs.msg
        try:
            nonce_p = handshake.check_join(msg, hs.context, node.secret, node.node_id)
            assert isinstance(msg, Join)
            # the adopter must be one of our ancestors (it may itself have been
            # re-parented meanwhile, so compare its own id, not its whole path)
            if msg.session != node.session or not msg.path or msg.path[-1] not in node.path[:-1]:
                raise protocol.ProtocolError("adoption by a node that is not an ancestor in this chain")
        except protocol.ProtocolError as exc:
            gate.reject(hs, f"refused an adoption from {hs.addr}: {exc}", Refuse(str(exc)))
            return
        if not self._adopters.acquire(blocking=False):
            why = "another adoption is under way"
            gate.reject(hs, f"refused an adoption from {hs.addr}: {why}", Refuse(why))
            return
        threading.Thread(target=self._adopted, args=(hs, nonce_p), name="adopt",
                         daemon=True).start()  # fmt: skip

    def _adopted(self, hs: Handshake, nonce_p: bytes) -> None:
        """Complete an adoption: hold the stream, welcome the adopter with our byte
        count, take its data connection and read on from it."""
        node = self.node
        peer = peer_of(hs)
        nonce_c, msg, addr = hs.context, hs.msg, hs.addr
        assert isinstance(msg, Join)
        try:
            with self._adopt_lock:
                relay = node.relay
                if relay is None or node.phase not in (Phase.STREAMING, Phase.ORPHANED,
                                                       Phase.ENDED):  # fmt: skip
                    raise protocol.ProtocolError("too late to adopt this node")
                self.orphan(f"adopted by {msg.name}")
                deadline = time.monotonic() + HANDSHAKE_TIMEOUT
                while not relay.waiting_input.wait(0.05):
                    if time.monotonic() > deadline:
                        raise protocol.ProtocolError("the stream from the old parent did not end")
                have = relay.bytes_in
                # the adopter connects as soon as it reads the welcome: expect it first
                gate = node.parents.gate
                assert gate is not None
                wait = DataWait(gate, handshake.data_token(node.secret, nonce_c, nonce_p), have)
                try:
                    peer.sock.settimeout(HANDSHAKE_TIMEOUT)
                    welcome = handshake.welcome(nonce_c, nonce_p, node.secret, node.name, have)
                    peer.sock.sendall(encode(welcome))
                except OSError:
                    gate.forget(wait.expect)
                    raise
                data = wait.result(HANDSHAKE_TIMEOUT)
                take_parent(node, peer, msg, data)
                node.adopted()
                relay.replace_input(data.fileno())
            node.log.message(f"adopted by {node.parent_name}: resuming at byte {have}")
            follow_parent(node, peer)
            peer.send(node.reporter.ready())
        except (protocol.ProtocolError, OSError) as exc:
            node.log.error(f"refused an adoption from {addr}: {exc}")
            peer.send(Refuse(str(exc)))
            peer.close()
        finally:
            self._adopters.release()

    # ------------------------------------------------------------ parent side

    def heal(self, dead: ChildLink, detected: float) -> None:
        """Adopt the dead child's children (or theirs, if they are dead too)."""
        node = self.node
        relay = node.relay
        assert relay is not None
        adopted: list[Adopted] = []
        lost: list[str] = []
        try:
            todo = list(dead.kids)
            while todo:
                kid = todo.pop(0)
                try:
                    at = self._adopt(kid)
                except Fatal as f:
                    node.log.error(f"-heal: could not adopt {kid.name}: {f.why}")
                    lost.append(kid.name)
                    todo.extend(kid.kids)
                    continue
                adopted.append(Adopted(kid.name, at))
        finally:
            event = Heal(dead.name, node.name, detected, time.time(), tuple(adopted), tuple(lost))
            with node.lock:
                dead.subtree = [dead.name]  # the others report for themselves
                self.heals.append(event)
            relay.release()
        took = event.resumed - detected
        names = ", ".join(a.name for a in adopted)
        node.log.error(f"-heal: {dead.name} is lost; adopted {names or 'nobody'}"
                       f" in {took * 1000:.0f} ms")  # fmt: skip
        node.events.emit("healed", lost=dead.name, adopted_by=node.name,
                         adopted=[a.name for a in adopted])  # fmt: skip

    def _adopt(self, kid: Kid) -> int:
        """Take over one grandchild: handshake, replay what it lacks, add its output."""
        node = self.node
        ep = Endpoint(kid.host, kid.port)
        with node.lock:
            link = ChildLink(len(node.links), (ep,), name=kid.name, adopted=True)
            node.links.append(link)
        deadline = time.monotonic() + ADOPT_TRY
        have = -1
        while have < 0:
            if time.monotonic() > deadline:
                raise self._drop(link, protocol.Code.NNF, f"not adopted: no answer within {ADOPT_TRY:g} s")
            try:
                have = node.joiner.try_join(link, ep, deadline, adopt=True)
            except (Retry, Unreachable):
                time.sleep(CONNECT_RETRY)
            except Fatal as f:
                raise self._drop(link, protocol.Code.NNF, f"not adopted: {f.why}") from None
        assert link.data is not None and node.relay is not None
        data = link.data
        link.sink = node.streamer.child_sink(link)

        def replay(segments: list[memoryview]) -> None:
            data.settimeout(HANDSHAKE_TIMEOUT)
            try:
                for seg in segments:
                    data.sendall(seg)
            finally:
                data.settimeout(None)

        add = Adoption(link.sink, have, replay, self._reread(data))
        if not node.relay.adopt(add) or (add.done.wait(HANDSHAKE_TIMEOUT + 5)
                                         and add.why == ENDED):  # fmt: skip
            return self._adopt_late(link, add, data)
        if not add.done.is_set() or not add.ok:
            why = f"replay failed: {add.why or 'the relay did not take the output'}"
            raise self._drop(link, protocol.Code.NWF, why)
        link.base = add.position
        node.log.message(f"-heal: {link.name} resumed at byte {have}, "
                         f"{add.position - have} bytes replayed")  # fmt: skip
        return have

    def _drop(self, link: ChildLink, code: protocol.Code, why: str) -> Fatal:
        """An adoption failed: the link is dead and reported; returns the Fatal to raise."""
        with self.node.lock:
            link.dead = True
            link.codes.append(code.value)
            link.failure = BranchLoss(link.name, code.value, why)
        link.cut()
        link.ready.set()
        link.done.set()
        return Fatal(code, link.name, why)

    def _adopt_late(self, link: ChildLink, add: Adoption, data: socket.socket) -> int:
        """Adoption after the relay finished (a death at the very end of the stream):
        replay the rest from the window or the file here, then end the child's stream."""
        node = self.node
        assert node.relay is not None
        total = node.relay.bytes_in
        try:
            node.relay.catch_up(add, total)
            data.shutdown(socket.SHUT_WR)
        except (OSError, ValueError) as exc:
            raise self._drop(link, protocol.Code.NWF, f"replay failed: {exc}") from None
        link.sink = None
        link.base = total
        if link.peer is not None:
            link.peer.send(End(total))
        node.log.message(f"-heal: {link.name} resumed at byte {add.offset} after the end, "
                         f"{total - add.offset} bytes replayed")  # fmt: skip
        return add.offset

    def kids(self) -> tuple[Kid, ...]:
        """Where this node's children are, for an ancestor that must adopt them."""
        node = self.node
        out = []
        for lk in node.links:
            if lk.peer is None or lk.dead or lk.endpoint is None:
                continue
            host, port = lk.endpoint.with_default(node.cfg.port)
            out.append(Kid(lk.name, host, port, lk.kids))
        return tuple(out)

    # ------------------------------------------------------------ the replay's source

    def bounded(self) -> bool:
        """Must this node's data sockets to its children have fixed buffers?

        An in-memory replay window covers only a bounded amount in flight, so
        a parent that keeps one (no regular file holds its stream), and a node
        whose parent keeps one, fix SO_SNDBUF/SO_RCVBUF (TCP autotuning off).
        Where the stream is in a file, replay comes from the file and the
        sockets keep autotuning.
        """
        if not self.node.cfg.heal:
            return False
        return self.node.parent_bound or self.stream_file() < 0

    def stream_file(self) -> int:
        """A read-only fd on a regular file that holds the stream, or -1 (looked up once).

        The root's ``-in FILE``; a node's ``-out FILE``.  Opened anew through
        /proc so that reading it never moves the relay's own file offset.
        """
        if self._stream_fd is None:
            self._stream_fd = self._open_stream_file()
        return self._stream_fd

    def _open_stream_file(self) -> int:
        node, cfg = self.node, self.node.cfg
        if cfg.role is Role.ROOT:
            fd = node.in_fd if cfg.stm is None and node.in_cmd is None else None
        else:
            fd = node.out_fd if node.out_is_file and node.out_cmd is None else None
        if fd is None:
            return -1
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return -1
            return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1

    def _reread(self, data: socket.socket) -> Callable[[int, int], None] | None:
        """Replay from the stream's file (no window needed, no copy): sendfile."""
        fd = self.stream_file()
        if fd < 0:
            return None

        def reread(start: int, stop: int) -> None:
            if stop == start:
                return  # the child holds everything sent so far
            # socket.sendfile waits (bounded by the timeout) when the socket is full;
            # it moves the offset of this private file description only
            with os.fdopen(os.dup(fd), "rb") as fh:
                data.settimeout(HANDSHAKE_TIMEOUT)
                try:
                    sent = data.sendfile(fh, start, stop - start)
                finally:
                    data.settimeout(None)
            if sent != stop - start:
                raise OSError(errno.EIO, f"replay: the file held {start + sent} bytes, not {stop}")

        return reread

