"""A nettee node: joins the tree, relays the stream, verifies, reports.

Life of a node (push flow)::

    non-root: listen on PORT (data) and PORT+1 (control); accept one parent
              (handshake, HMAC when a secret is set); the control listener
              stays open only to turn later callers away ("busy").
    all:      connect to each child hostlist (failover with -connf), wait
              until every child reports its subtree formed ("ready"), tell
              the parent ("ready" with the names of the whole subtree).
    all:      relay input -> children + local output (splice/tee).
    non-root: check the parent's "end" byte count against what arrived.
    all:      end each child's stream (shutdown + "end" with the count sent),
              wait for each child's report, compare counts (BBC), send the
              merged report up; the root prints the man page's lines.

A severe error collapses the tree: the node sends "fail" up and "abort"
down and exits 1 at once (the whole tree is down within a heartbeat).
``-colrf -colwf -conrf -conwf -connf`` turn the matching failures into
reported, handled ones.  Every wait is bounded: heartbeats every 0.5 s on
each control connection, and a peer silent for ``-stall`` seconds is dead.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import select
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from beokit import auth
from beokit.nettee import handshake, protocol
from beokit.nettee.command import SocketCommand
from beokit.nettee.gate import LOG_LINES, Expect, Gate, Handshake, listener, send_now
from beokit.nettee.hostlists import Endpoint, Hostlist
from beokit.nettee.log import NetteeLog
from beokit.nettee.messages import (
    Abort,
    Adopted,
    End,
    Fail,
    Heal,
    Hello,
    Join,
    Kid,
    Message,
    MessageDecoder,
    Ping,
    Ready,
    Refuse,
    Report,
    Welcome,
    encode,
)
from beokit.nettee.options import DATA_LOWAT, HEAL_SOCKBUF, MAX_NAME, Config, Role
from beokit.nettee.process import Feeder, start_process
from beokit.nettee.relay import (
    BATCH,
    ENDED,
    Adoption,
    FileHasher,
    Relay,
    RelayResult,
    Ring,
    Sink,
    Tap,
    zero_copy_available,
)
from beokit.nettee.source import Snapshot, change

HANDSHAKE_TIMEOUT = 10.0
HEARTBEAT = 0.5
CONNECT_RETRY = 0.2
END_WAIT = 10.0
HEAL_WAIT = 10.0  # -heal: how long an orphan waits for an ancestor to adopt it
ADOPT_TRY = 3.0  # -heal: how long a parent tries to reach one grandchild
REASON_WAIT = 1.0  # a child that closed its data socket: how long its own reason may take
MAX_OFFERS = 8  # welcomed would-be parents waiting for their data connection at once
MAX_ADOPTERS = 2  # -heal: authenticated adoptions served at once (each needs a thread)
DIGEST = "xxh3_128"
UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ETIMEDOUT,
               errno.EADDRNOTAVAIL}  # fmt: skip


class Fatal(Exception):
    """An unhandled failure: the node collapses the tree."""

    def __init__(self, code: protocol.Code | str, node: str, why: str) -> None:
        super().__init__(why)
        self.code = str(code)
        self.node = node
        self.why = why


class _Retry(Exception):
    pass


class _Unreachable(Exception):
    pass


class Peer:
    """A control connection: typed messages both ways, sends serialized."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.dec = MessageDecoder()
        self.lock = threading.Lock()
        self.last = time.monotonic()
        self.queue: list[Message] = []

    def send(self, msg: Message) -> bool:
        try:
            with self.lock:
                self.sock.sendall(encode(msg))
            return True
        except OSError:
            return False

    def drain(self, data: bytes) -> list[Message]:
        """Messages left over from the handshake, then those in ``data``."""
        msgs, self.queue = self.queue, []
        return msgs + self.dec.feed(data)

    def recv(self, timeout: float) -> Message:
        """Next message, within ``timeout`` seconds (handshake only)."""
        deadline = time.monotonic() + timeout
        while not self.queue:
            left = deadline - time.monotonic()
            if left <= 0:
                raise protocol.ProtocolError("timed out waiting for the peer")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise protocol.ProtocolError("timed out waiting for the peer") from None
            if not data:
                raise protocol.ProtocolError("connection closed during the handshake")
            self.queue.extend(self.dec.feed(data))
        self.sock.settimeout(None)
        return self.queue.pop(0)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class ChildLink:
    index: int
    hostlist: Hostlist
    endpoint: Endpoint | None = None
    name: str = ""
    peer: Peer | None = None
    data: socket.socket | None = None
    sink: Sink | None = None
    feeder: Feeder | None = None
    subtree: list[str] = field(default_factory=list)
    results: list[protocol.NodeResult] | None = None
    codes: list[str] = field(default_factory=list)
    failure: tuple[str, str, str] | None = None  # (node, code, why) when the branch failed
    ready: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    dead: bool = False
    progress: int = 0
    kids: tuple[Kid, ...] = ()  # -heal: the child's own children
    base: int = 0  # stream offset where this link's sink started (adopted links)
    adopted: bool = False

    @property
    def label(self) -> str:
        return self.name or (str(self.hostlist[0]) if self.hostlist else "?")


@dataclass(eq=False)
class _Offer:
    """A caller that passed the handshake; it becomes the parent once its data comes."""

    peer: Peer
    msg: Join
    name: str
    session: str
    path: list[str]
    expires: float
    expect: Expect | None = None


class _DataWait:
    """A data connection a node waits for (an adopter's): expected before the
    welcome goes out, so that it cannot arrive first."""

    def __init__(self, gate: Gate, token: bytes, offset: int) -> None:
        self.gate = gate
        self.got: list[socket.socket] = []
        self.arrived = threading.Event()
        self.expect = gate.expect(token, offset, self._take)

    def _take(self, sock: socket.socket) -> None:
        self.got.append(sock)
        self.arrived.set()

    def result(self, timeout: float) -> socket.socket:
        """The connection, within ``timeout`` seconds, or ProtocolError."""
        if not self.arrived.wait(timeout) and (self.gate.forget(self.expect)
                                               or not self.arrived.wait(1.0)):  # fmt: skip
            raise protocol.ProtocolError("parent never opened its data connection")
        return self.got[0]


def _peer(hs: Handshake) -> Peer:
    """A control connection the gate handed over, with whatever followed its first message."""
    peer = Peer(hs.sock, hs.addr)
    peer.dec, peer.queue = hs.decoder, list(hs.rest)
    return peer


def node_name(cfg: Config) -> str:
    """-name, else $MYHOSTNAME, $HOSTNAME, gethostname(); the last three made printable."""
    name = cfg.name or os.environ.get("MYHOSTNAME") or os.environ.get("HOSTNAME") or (
        socket.gethostname())  # fmt: skip
    return protocol.printable(name, MAX_NAME)


class Node:
    def __init__(self, cfg: Config, log: NetteeLog, secret: bytes | None, *,
                 in_fd: int | None, out_fd: int | None, out_is_file: bool,
                 local_fds: list[int] | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.log = log
        self.secret = secret
        self.name = node_name(cfg)
        self.node_id = uuid.uuid4().hex
        self.session = uuid.uuid4().hex if cfg.role is Role.ROOT else ""
        self.path: list[str] = []
        self.in_fd = in_fd
        self.local_fds = local_fds or []  # every -in source, for -process
        self.out_fd = out_fd
        self.out_is_file = out_is_file
        self.lock = threading.Lock()
        self.links: list[ChildLink] = []
        self.parent: Peer | None = None
        self.parent_name = ""
        self.data_in: socket.socket | None = None
        self.relay: Relay | None = None
        self.codes: list[str] = []
        self.fatal = False
        self.detail = ""
        self.end_event = threading.Event()
        self.end_bytes = -1
        self.end_short = ""  # set when the parent's stream was cut above it (-conrf)
        self.upstream_gone = threading.Event()  # parent failed and -conrf handled it
        self.report_sent = False
        self.collapsing = False
        self.started = time.monotonic()
        self.stream_start = 0.0
        self.gate: Gate | None = None  # serves the ports of a non-root node
        self._offers: list[_Offer] = []  # welcomed would-be parents, waiting for their data
        self._chosen: tuple[_Offer, socket.socket] | None = None  # the parent, with its data
        self._chosen_event = threading.Event()
        self._adopters = threading.BoundedSemaphore(MAX_ADOPTERS)  # -heal: adoptions at once
        self._stop = threading.Event()
        self.local: Sink | None = None
        self.stream_seconds = 0.0
        self.pull = cfg.flow == "pull"
        self.bytes_received: int | None = None  # set when the stream is not the relay's input
        self.up_sink: Sink | None = None
        self.stm_error: OSError | None = None  # set by the -stm input pump
        self.proc: subprocess.Popen | None = None  # -process CMD
        self.in_cmd: SocketCommand | None = None
        self.out_cmd: SocketCommand | None = None
        # -heal
        self.orphaned = threading.Event()  # parent lost mid-stream, waiting for an adopter
        self.gave_up = False  # nobody adopted this orphan in time
        self._adopt_lock = threading.Lock()
        self.heals: list[Heal] = []  # what this node healed, for the report
        self.tap: Tap | None = None
        self.stream_fd: int | None = None  # a regular file holding the stream, -1: none
        self.parent_bound = False  # the parent keeps an in-memory replay window
        self.file_hasher: FileHasher | None = None
        self.source_changed = ""  # the root's input file changed during the stream: why

    # ------------------------------------------------------------ entry

    def run(self) -> int:
        self._signals()
        try:
            if self.cfg.process is not None:
                return self._run_process()
            if self.cfg.role is Role.ROOT:
                return self._run_root()
            return self._run_child()
        except Fatal as f:
            self.collapse(f.code, f.node, f.why)
        return 1  # not reached

    def _signals(self) -> None:
        def ignored(signum: int, _frame: object) -> None:
            if not self.cfg.quiet:
                self.log.message(f"ignored signal {signal.Signals(signum).name}")

        def stop(signum: int, _frame: object) -> None:
            self.collapse(protocol.Code.SIG, self.name, f"stopped by {signal.Signals(signum).name}")

        signal.signal(signal.SIGHUP, ignored)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

    # ------------------------------------------------------------ roles

    def _run_root(self) -> int:
        self.path = [self.node_id]
        self._start_heartbeat()
        self._form_children()
        if self.cfg.inputs == ("socket",):
            self.in_cmd = SocketCommand(self.cfg.cmd or "", "in", self.cfg.buf_size)
            self.in_fd = self.in_cmd.fd
        assert self.in_fd is not None
        if self.cfg.stm is not None:
            self.in_fd = self._stm_filter(self.in_fd, self.cfg.stm.encode())
        source = self._source_snapshot()
        result = self._stream(self.in_fd, idle_timeout=0.0)
        if result.read_error is not None:
            self._local_read_failed(result.read_error)
        elif self.stm_error is not None:  # the -stm pump could not read the input
            self._local_read_failed(self.stm_error)
        elif source is not None:
            self._check_source(*source, result.bytes_in)
        if self.in_cmd is not None:
            failed = self.in_cmd.wait()
            if failed and protocol.Code.LRF.value not in self.codes:
                self._local_read_failed(OSError(0, failed))
        self._end_children()
        nodes = self._collect()
        return self._root_summary(nodes)

    def _run_child(self) -> int:
        self._listen()
        self._accept_parent()
        self._start_heartbeat()
        self._form_children()
        assert self.parent is not None and self.data_in is not None
        self.parent.send(self._ready())
        result = self._stream(self.data_in.fileno(), idle_timeout=self.cfg.timeout)
        if result.timed_out:
            self._parent_failed(f"no data from parent for {self.cfg.timeout:g} s (-t)")
        elif result.read_error is not None:
            self._parent_failed(f"read from parent: {result.read_error.strerror}")
        else:
            self._check_end(result.bytes_in)
        self._end_children()
        nodes = self._collect()
        if self.parent is not None and not self.upstream_gone.is_set():
            self.report_sent = True
            self.parent.send(self._report_msg(nodes))
        else:  # cut off from the root (-conrf): this node sums up its part of the tree
            self.log.error(f"cut off from the root: the failure report of the tree below {self.name}")
            self._print_summary(nodes)
        self._stop.set()
        if self.gate is not None and self.gate.rejected > LOG_LINES:
            self.log.error(f"{self.gate.rejected} connections from strangers rejected in all")
        self.log.message(
            f"done: {nodes[0].bytes_in} bytes received, {protocol.format_codes(self._all_codes(nodes))}"
        )
        return 1 if any(n.fatal for n in nodes) else 0

    def _run_process(self) -> int:
        """-process CMD (push or pull): CMD makes the stream from all inputs."""
        cfg = self.cfg
        root = cfg.role is Role.ROOT
        if root:
            self.path = [self.node_id]
        else:
            self._listen()
            self._accept_parent()
        self._start_heartbeat()
        self._form_children()
        if self.parent is not None:
            self.parent.send(self._ready())
        maxread, maxwrite = self._io_caps()
        sizes = {"buf_size": cfg.buf_size, "maxread": maxread, "maxwrite": maxwrite}
        feeders: list[Feeder] = []
        parent_feed: Feeder | None = None
        if self.pull:
            for link in self.links:
                if link.data is not None and not link.dead:
                    link.feeder = Feeder(f"child{link.index}", link.data.fileno(), **sizes)
                    feeders.append(link.feeder)
        elif self.data_in is not None:
            parent_feed = Feeder("parent", self.data_in.fileno(), idle_timeout=cfg.timeout,
                                 **sizes)  # fmt: skip
            feeders.append(parent_feed)
        for src, fd in zip(cfg.inputs, self.local_fds, strict=True):
            feeders.append(Feeder(f"-in {src}", fd, **sizes))
        for f in feeders:
            f.start()
        proc = start_process(cfg.process or "", feeders)
        assert proc.stdout is not None
        self.proc = proc
        if self.pull and self.data_in is not None:
            self.up_sink = Sink("parent", self.data_in.fileno(), "child", maxwrite=maxwrite,
                                on_error=lambda s, e: self._parent_failed(
                                    f"write to parent: {e.strerror}", protocol.Code.NWF))  # fmt: skip
        result = self._stream(proc.stdout.fileno(), idle_timeout=0.0)
        status = proc.wait()
        if result.read_error is not None or status != 0:
            why = (f"-process {cfg.process!r} exited with status {status}" if status
                   else f"reading -process output: {result.read_error}")  # fmt: skip
            self._local_read_failed(OSError(0, why))
        for f in feeders:
            r = f.join()
            if f is parent_feed and (r.timed_out or r.read_error is not None):
                self._parent_failed(f"no data from parent for {cfg.timeout:g} s (-t)"
                                    if r.timed_out else f"read from parent: {r.read_error}")  # fmt: skip
            elif r.read_error is not None and f.label.startswith("-in"):
                self._local_read_failed(r.read_error)
        if parent_feed is not None:
            self.bytes_received = parent_feed.received
            self._check_end(parent_feed.received)
        if self.up_sink is not None and self.data_in is not None:
            try:
                self.data_in.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if not self.pull:
            self._end_children()
        nodes = self._collect()
        if root:
            return self._root_summary(nodes)
        if self.parent is not None and not self.upstream_gone.is_set():
            self.report_sent = True
            self.parent.send(self._report_msg(nodes))
        self._stop.set()
        return 1 if any(n.fatal for n in nodes) else 0

    # ------------------------------------------------------------ parent side (accept)

    def _listen(self) -> None:
        cfg = self.cfg
        try:
            ctrl = listener(cfg.bind, cfg.port + 1)
            try:
                data = listener(cfg.bind, cfg.port)
            except OSError:
                ctrl.close()
                raise
        except OSError as exc:
            raise Fatal(protocol.Code.NRF, self.name,
                        f"cannot listen on {cfg.bind}:{cfg.port}/{cfg.port + 1}: {exc.strerror}") from None  # fmt: skip
        self.gate = Gate(ctrl, data, greet=self._greet, on_message=self._on_handshake,
                         log=self.log.error)  # fmt: skip
        self.gate.start()
        self.log.message(f"waiting for a parent on {cfg.bind}:{cfg.port} (+1 control)")

    def _accept_parent(self) -> None:
        """Wait (bounded by -t) until a caller passed the handshake and opened its data
        connection; the gate serves every caller meanwhile (see gate.py)."""
        assert self.gate is not None
        deadline = time.monotonic() + self.cfg.timeout if self.cfg.timeout > 0 else None
        while not self._chosen_event.wait(0.25):
            self._expire_offers()
            if deadline is not None and time.monotonic() > deadline:
                raise Fatal(protocol.Code.NRF, self.name,
                            f"no parent connected within {self.cfg.timeout:g} s (-t)")  # fmt: skip
        assert self._chosen is not None
        offer, data = self._chosen
        peer, msg = offer.peer, offer.msg
        self.parent_bound = msg.bound
        if self.parent_bound:  # the parent's replay window counts on our receive buffer
            data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, HEAL_SOCKBUF)
        peer.sock.settimeout(None)
        peer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer.last = time.monotonic()
        self.parent_name = offer.name
        self.session = offer.session
        self.path = offer.path + [self.node_id]
        self.data_in = data
        self.parent = peer
        if not self.cfg.heal:
            self.gate.close_data()  # with -heal an adopter connects here later
        threading.Thread(target=self._read_parent, args=(self.parent,), name="parent",
                         daemon=True).start()  # fmt: skip
        self.log.message(f"parent {self.parent_name} joined from {peer.name}")

    def _greet(self) -> tuple[bytes, bytes | None]:
        """What a new control connection hears first (gate thread): our hello, or,
        once this node has its parent, a refusal (with -heal: a hello marked busy,
        since the caller may be an ancestor come to adopt us)."""
        chosen = self._chosen
        nonce = auth.nonce()
        hello = handshake.hello(nonce, self.secret, self.name)
        if chosen is None:
            return encode(hello), nonce
        why = f"{self.name} is already in a chain under {chosen[0].name}"
        if not self.cfg.heal:
            return encode(Refuse(why, busy=chosen[0].session)), None
        return encode(dataclasses.replace(hello, busy=chosen[0].session, why=why)), nonce

    def _on_handshake(self, hs: Handshake) -> None:
        """The first message of a control connection (gate thread: must not block)."""
        assert self.gate is not None
        if self._chosen is None:
            self._offer_parent(hs)
        elif self.cfg.heal and isinstance(hs.msg, Join) and hs.msg.adopt:
            self._adoption_request(hs)
        else:  # a parent looking for a free node (it closes by itself), or a stranger
            self.gate.reject(hs, None)

    def _offer_parent(self, hs: Handshake) -> None:
        """A would-be parent's join: check it, welcome it, wait for its data connection."""
        assert self.gate is not None
        msg, nonce_c = hs.msg, hs.context
        try:
            nonce_p = handshake.check_join(msg, nonce_c, self.secret, self.node_id)
        except protocol.AuthError as exc:
            self.gate.reject(hs, f"authentication failed: parent at {hs.addr}: {exc}",
                             Refuse(f"authentication failed: {exc}"))  # fmt: skip
            return
        except protocol.ProtocolError as exc:
            self.gate.reject(hs, f"rejected connection from {hs.addr}: {exc}")
            return
        assert isinstance(msg, Join)
        peer = _peer(hs)
        offer = _Offer(peer, msg, name=msg.name or protocol.printable(hs.addr, MAX_NAME),
                       session=msg.session, path=list(msg.path),
                       expires=time.monotonic() + HANDSHAKE_TIMEOUT)  # fmt: skip
        token = handshake.data_token(self.secret, nonce_c, nonce_p)
        offer.expect = self.gate.expect(token, 0, lambda sock: self._parent_data(offer, sock))
        with self.lock:
            self._offers.append(offer)
            stale = self._offers[:-MAX_OFFERS] if len(self._offers) > MAX_OFFERS else []
        for old in stale:
            self._drop_offer(old, "too many would-be parents at once")
        if not send_now(peer.sock, encode(handshake.welcome(nonce_c, nonce_p, self.secret, self.name))):
            self._drop_offer(offer, "cannot send the welcome")

    def _parent_data(self, offer: _Offer, data: socket.socket) -> None:
        """A welcomed caller opened its data connection: it is our parent (gate thread)."""
        with self.lock:
            if self._chosen is not None or offer not in self._offers:
                data.close()
                return
            self._offers.remove(offer)
            others, self._offers = self._offers, []
            self._chosen = (offer, data)
        for other in others:
            self._drop_offer(other, None)
        self._chosen_event.set()

    def _drop_offer(self, offer: _Offer, why: str | None) -> None:
        assert self.gate is not None
        with self.lock:
            if offer in self._offers:
                self._offers.remove(offer)
        if offer.expect is not None:
            self.gate.forget(offer.expect)
        offer.peer.close()
        if why is not None:
            self.log.error(f"rejected parent {offer.name} at {offer.peer.name}: {why}")

    def _expire_offers(self) -> None:
        now = time.monotonic()
        with self.lock:
            late = [o for o in self._offers if o.expires < now]
        for offer in late:
            self._drop_offer(offer, "it never opened its data connection")

    def _read_parent(self, peer: Peer) -> None:
        why = "parent connection closed"
        try:
            data = b""
            while True:
                for msg in peer.drain(data):
                    if peer is not self.parent:
                        return  # replaced by an adopter (-heal)
                    peer.last = time.monotonic()
                    if isinstance(msg, End):
                        self.end_bytes = msg.sent
                        self.end_short = msg.short
                        self.end_event.set()
                    elif isinstance(msg, Abort):
                        if peer is not self.parent:
                            return  # a replaced parent (-heal)
                        why = f"aborted by parent: {msg.why}"
                        self._parent_failed(why, aborted=True)
                        return
                data = peer.sock.recv(65536)
                if not data:
                    break
        except (OSError, protocol.ProtocolError, ValueError) as exc:
            why = f"parent connection lost: {exc}"
        if not self.report_sent and peer is self.parent:
            self._parent_failed(why)

    def _parent_failed(self, why: str, code: protocol.Code = protocol.Code.NRF, aborted: bool = False) -> None:
        """The parent is gone (crash, stall, abort): NRF (NWF in pull), fatal unless -conrf."""
        if self.report_sent or self.upstream_gone.is_set():
            return
        if self.end_event.is_set() and not aborted:
            # the whole stream and its count arrived: nothing is lost here
            self.log.message(f"parent left after the end of the stream ({why})")
            self.upstream_gone.set()
            return
        if self.cfg.heal and not aborted and not self.gave_up and self.relay is not None:
            self._orphan(why)
            return
        if self.pull:
            code = protocol.Code.NWF
        if not (self.cfg.conwf if self.pull else self.cfg.conrf):
            self.collapse(code, self.name, why, tell_parent=not aborted)
            return
        with self.lock:
            self.codes.append(code.value)
            self.detail = why
        self.log.error(f"network read failure (NRF): {why}; -conrf: finishing locally")
        self.upstream_gone.set()
        if self.data_in is not None:
            try:
                self.data_in.shutdown(socket.SHUT_RDWR)  # ends the relay at what arrived
            except OSError:
                pass

    # ------------------------------------------------------------ -heal, child side

    def _orphan(self, why: str) -> None:
        """The parent died mid-stream: wait, bounded, for an ancestor to adopt us."""
        with self.lock:
            if self.orphaned.is_set():
                return
            self.orphaned.set()
        self.log.error(f"parent {self.parent_name} lost ({why}); -heal: waiting up to "
                       f"{HEAL_WAIT:g} s for an ancestor to adopt {self.name}")  # fmt: skip
        old = self.parent
        if self.data_in is not None:
            try:
                self.data_in.shutdown(socket.SHUT_RDWR)  # the relay reads to the end of it
            except OSError:
                pass
        if old is not None:
            old.close()

        def give_up() -> None:
            deadline = time.monotonic() + HEAL_WAIT
            while self.orphaned.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
            with self._adopt_lock:
                if not self.orphaned.is_set():
                    return  # adopted
                self.gave_up = True
            if self.relay is not None:
                self.relay.replace_input(None)
            self._parent_failed(f"{why}; no ancestor adopted this node within {HEAL_WAIT:g} s")

        threading.Thread(target=give_up, name="orphan", daemon=True).start()

    def _input_ended(self, error: OSError | None) -> bool:
        """Relay callback at the end of the parent's data: wait for an adopter?"""
        if isinstance(error, TimeoutError):  # -t: the parent sent nothing for that long
            self._parent_failed(f"no data from parent for {self.cfg.timeout:g} s (-t)")
            return self.orphaned.is_set() and not self.gave_up
        deadline = time.monotonic() + END_WAIT
        while not (self.end_event.is_set() or self.orphaned.is_set()):
            if time.monotonic() > deadline:
                return False
            self.end_event.wait(0.02)
        return self.orphaned.is_set() and not self.gave_up

    def _adoption_request(self, hs: Handshake) -> None:
        """An ancestor asks to adopt this -heal node (gate thread): check, then a worker."""
        assert self.gate is not None
        msg = hs.msg
        try:
            nonce_p = handshake.check_join(msg, hs.context, self.secret, self.node_id)
            assert isinstance(msg, Join)
            path = list(msg.path)
            # the adopter must be one of our ancestors (it may itself have been
            # re-parented meanwhile, so compare its own id, not its whole path)
            if msg.session != self.session or not path or path[-1] not in self.path[:-1]:
                raise protocol.ProtocolError("adoption by a node that is not an ancestor in this chain")
        except protocol.ProtocolError as exc:
            self.gate.reject(hs, f"refused an adoption from {hs.addr}: {exc}", Refuse(str(exc)))
            return
        if not self._adopters.acquire(blocking=False):
            why = "another adoption is under way"
            self.gate.reject(hs, f"refused an adoption from {hs.addr}: {why}", Refuse(why))
            return
        threading.Thread(target=self._adopted, args=(hs, nonce_p, path), name="adopt",
                         daemon=True).start()  # fmt: skip

    def _adopted(self, hs: Handshake, nonce_p: bytes, path: list[str]) -> None:
        """Complete an adoption: hold the stream, welcome the adopter with our byte
        count, take its data connection and read on from it."""
        peer = _peer(hs)
        nonce_c, msg, addr = hs.context, hs.msg, hs.addr
        assert isinstance(msg, Join)
        try:
            with self._adopt_lock:
                if self.gave_up or self.relay is None:
                    raise protocol.ProtocolError("too late to adopt this node")
                self._orphan(f"adopted by {msg.name}")
                deadline = time.monotonic() + HANDSHAKE_TIMEOUT
                while not self.relay.waiting_input.wait(0.05):
                    if time.monotonic() > deadline:
                        raise protocol.ProtocolError("the stream from the old parent did not end")
                have = self.relay.bytes_in
                welcome = handshake.welcome(nonce_c, nonce_p, self.secret, self.name, have)
                # the adopter connects as soon as it reads the welcome: expect it first
                assert self.gate is not None
                wait = _DataWait(self.gate, handshake.data_token(self.secret, nonce_c, nonce_p), have)
                try:
                    peer.sock.settimeout(HANDSHAKE_TIMEOUT)
                    peer.sock.sendall(encode(welcome))
                except OSError:
                    self.gate.forget(wait.expect)
                    raise
                data = wait.result(HANDSHAKE_TIMEOUT)
                self.parent_bound = msg.bound
                if self.parent_bound:
                    data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, HEAL_SOCKBUF)
                peer.sock.settimeout(None)
                peer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer.last = time.monotonic()
                self.parent = peer
                self.parent_name = msg.name or protocol.printable(addr, MAX_NAME)
                self.path = path + [self.node_id]
                self.data_in = data
                self.orphaned.clear()
                self.relay.replace_input(data.fileno())
            self.log.message(f"adopted by {self.parent_name}: resuming at byte {have}")
            threading.Thread(target=self._read_parent, args=(peer,), name="parent",
                             daemon=True).start()  # fmt: skip
            peer.send(self._ready())
        except (protocol.ProtocolError, OSError) as exc:
            self.log.error(f"refused an adoption from {addr}: {exc}")
            peer.send(Refuse(str(exc)))
            peer.close()
        finally:
            self._adopters.release()

    def _check_end(self, received: int) -> None:
        deadline = time.monotonic() + END_WAIT
        while not (self.end_event.is_set() or self.upstream_gone.is_set()):
            if time.monotonic() > deadline:
                self._parent_failed("stream ended without the parent's byte count")
                return
            self.end_event.wait(0.1)
        if self.end_event.is_set() and self.end_short:
            with self.lock:  # our parent finished with -conrf: the stream was cut above it
                self.codes.append(protocol.Code.NRF.value)
                self.fatal = self.fatal or not self.cfg.conrf
                self.detail = f"stream cut upstream ({self.end_short}), {received} bytes received"
            self.log.error(f"network read failure (NRF): the stream was cut upstream "
                           f"({self.end_short}); {received} bytes received")  # fmt: skip
        if self.end_event.is_set() and self.end_bytes != received:
            with self.lock:
                self.codes.append(protocol.Code.NRF.value)
                self.fatal = True
                self.detail = f"received {received} of {self.end_bytes} bytes"
            self.log.error(f"short stream: received {received} of {self.end_bytes} bytes")

    # ------------------------------------------------------------ child side (connect)

    def _form_children(self) -> None:
        if not self.cfg.next:
            return
        self.links = [ChildLink(i, hl) for i, hl in enumerate(self.cfg.next)]
        errors: list[Fatal] = []

        def join(link: ChildLink) -> None:
            try:
                self._join_child(link)
            except Fatal as f:
                errors.append(f)

        threads = [threading.Thread(target=join, args=(lk,), daemon=True) for lk in self.links]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        for link in self.links:
            while link.peer is not None and not link.ready.wait(0.2):
                pass
        joined = [lk for lk in self.links if lk.peer is not None and not lk.dead]
        self.log.message(
            f"tree formed below {self.name}: {len(self._subtree_names()) - 1} node(s) in "
            f"{len(joined)} branch(es)"
        )

    def _join_child(self, link: ChildLink) -> None:
        cfg = self.cfg
        for k, ep in enumerate(link.hostlist):
            if k > 0 and cfg.connf <= 0:
                break  # without -connf only the first host is tried
            # -connf: each candidate's time to join; else -t bounds it too (0: forever)
            wait = cfg.connf if cfg.connf > 0 else cfg.timeout
            deadline = time.monotonic() + wait if wait > 0 else None
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    if cfg.connf <= 0:
                        raise Fatal(protocol.Code.NNF, str(ep),
                                    f"child {ep} did not join within {cfg.timeout:g} s (-t)")  # fmt: skip
                    self.log.message(f"child {ep} did not join within {cfg.connf:g} s")
                    break
                try:
                    self._try_join(link, ep, deadline)
                    return
                except _Retry:
                    time.sleep(CONNECT_RETRY)
                except _Unreachable as exc:
                    if not cfg.wait_boot:
                        raise Fatal(protocol.Code.NNF, str(ep),
                                    f"child {ep} is not reachable ({exc}); -w waits for it") from None  # fmt: skip
                    time.sleep(1.0)
        # no candidate joined: the branch is dropped (only possible with -connf)
        names = ",".join(str(e) for e in link.hostlist)
        link.name = str(link.hostlist[0])
        link.dead = True
        link.codes.append(protocol.Code.NNF.value)
        link.failure = (link.name, protocol.Code.NNF.value, f"none of [{names}] joined")
        link.done.set()
        self.log.error(f"could not connect to child {link.index} [{names}]: NNF")

    def _try_join(self, link: ChildLink, ep: Endpoint, deadline: float | None,
                  adopt: bool = False) -> int:  # fmt: skip
        """Join (or, with ``adopt``, take over) a child; returns the bytes it holds."""
        host, port = ep.with_default(self.cfg.port)
        left = 3.0 if deadline is None else max(0.1, min(3.0, deadline - time.monotonic()))
        try:
            ctrl = socket.create_connection((host, port + 1), timeout=left)
        except ConnectionRefusedError:
            raise _Retry() from None
        except socket.gaierror as exc:
            raise _Unreachable(f"cannot resolve {host}: {exc.strerror}") from None
        except TimeoutError:
            raise _Unreachable("connection timed out") from None
        except OSError as exc:
            if exc.errno in UNREACHABLE:
                raise _Unreachable(exc.strerror) from None
            raise _Retry() from None
        peer = Peer(ctrl, str(ep))
        try:
            msg = peer.recv(HANDSHAKE_TIMEOUT)
            if not adopt and isinstance(msg, Hello) and msg.busy is not None:
                msg = Refuse(msg.why, busy=msg.busy)  # a -heal node that has a parent
            if isinstance(msg, Refuse) and msg.busy is not None:
                peer.close()
                if msg.busy and msg.busy == self.session:
                    raise Fatal(protocol.Code.NNF, str(ep), f"loop: {msg.why}")
                raise _Retry()
            nonce_p = auth.nonce()
            try:
                # bound: our replay window needs bounded socket buffers
                join, nonce_c = handshake.answer_hello(msg, nonce_p, self.secret, self.name,
                                                       self.session, self.path, adopt=adopt,
                                                       bound=self._bounded())  # fmt: skip
            except protocol.AuthError as exc:
                peer.send(Refuse(exc.for_peer))
                raise
            ctrl.sendall(encode(join))
            welcome = peer.recv(HANDSHAKE_TIMEOUT)
            name = handshake.check_welcome(welcome, nonce_c, nonce_p, self.secret)
            have = welcome.have if adopt and isinstance(welcome, Welcome) else 0
            data = _connect(host, port, HANDSHAKE_TIMEOUT,
                            HEAL_SOCKBUF if self._bounded() else 0)  # fmt: skip
            # at most DATA_LOWAT bytes wait unsent in each hop's send buffer: with
            # autotuning they were 1-3.6 MB a hop, drained after the last byte left the
            # root (0.04-0.15 s a hop at 200 Mbit/s, see docs/nettee.md "Pipeline latency")
            data.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, DATA_LOWAT)
            data.sendall(protocol.data_header(handshake.data_token(self.secret, nonce_c, nonce_p), have))
        except protocol.AuthError as exc:
            peer.close()
            raise Fatal(protocol.Code.NNF, str(ep), f"child {ep}: authentication failed: {exc}") from None
        except (protocol.ProtocolError, OSError, ValueError, TypeError) as exc:
            peer.close()
            self.log.message(f"child {ep}: handshake failed ({exc}); retrying")
            raise _Retry() from None
        data.settimeout(None)
        ctrl.settimeout(None)
        ctrl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer.name = name
        peer.last = time.monotonic()
        link.endpoint, link.name, link.peer, link.data = ep, name, peer, data
        self.log.message(f"child {link.index} [{name}] {'adopted' if adopt else 'joined'} at {ep}"
                         + (f", holding {have} bytes" if adopt else ""))  # fmt: skip
        threading.Thread(target=self._read_child, args=(link,), name=f"child{link.index}",
                         daemon=True).start()  # fmt: skip
        return have

    def _read_child(self, link: ChildLink) -> None:
        peer = link.peer
        assert peer is not None
        why = "connection lost"
        try:
            data = b""
            while True:
                for msg in peer.drain(data):
                    peer.last = time.monotonic()
                    if isinstance(msg, Ping):
                        link.progress = msg.received or 0
                    elif isinstance(msg, Ready):
                        link.subtree = list(msg.nodes) or [link.name]
                        if msg.kids is not None:
                            link.kids = msg.kids
                        link.ready.set()
                    elif isinstance(msg, Fail):
                        self._child_failed(link, msg.code, msg.node or link.name, msg.why)
                        return
                    elif isinstance(msg, Report):
                        link.results = list(msg.nodes)
                        with self.lock:
                            self.heals.extend(msg.heals)
                        link.done.set()
                        return
                data = peer.sock.recv(65536)
                if not data:
                    break
        except protocol.ProtocolError as exc:
            if exc.kind != Report.TYPE:
                why = f"connection lost: {exc}"
            else:  # a report that is not one: the child's status is unknown or bad
                link.codes.append(protocol.Code.BSTAT.value)
                link.failure = (link.name, protocol.Code.BSTAT.value, str(exc))
                link.done.set()
                return
        except OSError as exc:
            why = f"connection lost: {exc}"
        self._child_failed(link, (protocol.Code.NRF if self.pull else protocol.Code.NWF).value, link.name, why)

    def _child_write_failed(self, link: ChildLink, exc: OSError) -> None:
        """Writing to a child failed. If it closed its end (EPIPE, ECONNRESET) it is
        usually collapsing and its own reason (LWF below it, say) is on the control
        channel, a moment behind: the reader reports that, or NWF at the channel's end;
        this reports NWF only if neither came within :data:`REASON_WAIT`. Anything
        else, and -heal (which must hold the stream at once), is NWF now."""
        why = f"write: {exc.strerror}"
        healing = self.cfg.heal and not self.pull and self.relay is not None
        if healing or link.peer is None or exc.errno not in (errno.EPIPE, errno.ECONNRESET):
            self._child_failed(link, protocol.Code.NWF.value, link.name, why)
            return
        t = threading.Timer(REASON_WAIT, self._child_failed,
                            (link, protocol.Code.NWF.value, link.name, why))  # fmt: skip
        t.daemon = True
        t.start()

    def _child_failed(self, link: ChildLink, code: str, node: str, why: str) -> None:
        """A branch failed (write error, crash, stall, or a failure below it)."""
        with self.lock:
            if link.dead or link.done.is_set():
                return
            link.dead = True
            if node == link.name:
                link.codes.append(code)
            link.failure = (node, code, why)
        healing = (self.cfg.heal and not self.pull and node == link.name
                   and self.relay is not None)  # fmt: skip
        if healing:
            assert self.relay is not None
            self.relay.hold()  # read nothing more until the grandchildren are adopted
        carry_on = healing or (self.cfg.conrf if self.pull else self.cfg.conwf)
        if not carry_on:
            self.collapse(code, node, why, link=link)
            return
        how = "-heal" if healing else "-conrf" if self.pull else "-conwf"
        self.log.error(f"{protocol.child_line(link.index, link.label, link.codes)} ({node}: {why});"
                       f" {how}: carrying on without it")  # fmt: skip
        if healing and link.peer is not None:  # a stalled node learns it was replaced
            link.peer.send(Abort(f"declared dead by {self.name}: {why}"))
        self._cut(link)
        link.ready.set()
        if healing:
            threading.Thread(target=self._heal, args=(link, time.time()), name="heal",
                             daemon=True).start()  # fmt: skip
        link.done.set()

    # ------------------------------------------------------------ -heal, parent side

    def _report_msg(self, nodes: list[protocol.NodeResult]) -> Report:
        # what was healed in this subtree travels up to the root's -report
        return Report(tuple(nodes), tuple(self.heals))

    def _heal(self, dead: ChildLink, detected: float) -> None:
        """Adopt the dead child's children (or theirs, if they are dead too)."""
        relay = self.relay
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
                    self.log.error(f"-heal: could not adopt {kid.name}: {f.why}")
                    lost.append(kid.name)
                    todo.extend(kid.kids)
                    continue
                adopted.append(Adopted(kid.name, at))
        finally:
            event = Heal(dead.name, self.name, detected, time.time(), tuple(adopted), tuple(lost))
            with self.lock:
                dead.subtree = [dead.name]  # the others report for themselves
                self.heals.append(event)
            relay.release()
        took = event.resumed - detected
        self.log.error(f"-heal: {dead.name} is lost; adopted "
                       f"{', '.join(a.name for a in adopted) or 'nobody'}"
                       f" in {took * 1000:.0f} ms")  # fmt: skip

    def _adopt(self, kid: Kid) -> int:
        """Take over one grandchild: handshake, replay what it lacks, add its output."""
        ep = Endpoint(kid.host, kid.port)
        with self.lock:
            link = ChildLink(len(self.links), (ep,), name=kid.name, adopted=True)
            self.links.append(link)

        def lost(why: str) -> Fatal:
            return self._drop_adopted(link, protocol.Code.NNF, why)

        deadline = time.monotonic() + ADOPT_TRY
        have = -1
        while have < 0:
            if time.monotonic() > deadline:
                raise lost(f"not adopted: no answer within {ADOPT_TRY:g} s")
            try:
                have = self._try_join(link, ep, deadline, adopt=True)
            except (_Retry, _Unreachable):
                time.sleep(CONNECT_RETRY)
            except Fatal as f:
                raise lost(f"not adopted: {f.why}") from None
        assert link.data is not None and self.relay is not None
        data = link.data
        _, maxwrite = self._io_caps()
        link.sink = Sink(f"child{link.index}", data.fileno(), "child", maxwrite=maxwrite,
                         on_error=lambda s, e, lk=link: self._child_write_failed(lk, e))

        def replay(segments: list[memoryview]) -> None:
            data.settimeout(HANDSHAKE_TIMEOUT)
            try:
                for seg in segments:
                    data.sendall(seg)
            finally:
                data.settimeout(None)

        add = Adoption(link.sink, have, replay, self._reread(data))
        if not self.relay.adopt(add) or (add.done.wait(HANDSHAKE_TIMEOUT + 5)
                                         and add.why == ENDED):  # fmt: skip
            return self._adopt_late(link, add, data)
        if not add.done.is_set() or not add.ok:
            why = f"replay failed: {add.why or 'the relay did not take the output'}"
            raise self._drop_adopted(link, protocol.Code.NWF, why)
        link.base = add.position
        self.log.message(f"-heal: {link.name} resumed at byte {have}, "
                         f"{add.position - have} bytes replayed")  # fmt: skip
        return have

    def _drop_adopted(self, link: ChildLink, code: protocol.Code, why: str) -> Fatal:
        """An adoption failed: the link is dead and reported; returns the Fatal to raise."""
        with self.lock:
            link.dead = True
            link.codes.append(code.value)
            link.failure = (link.name, code.value, why)
        self._cut(link)
        link.ready.set()
        link.done.set()
        return Fatal(code, link.name, why)

    @staticmethod
    def _cut(link: ChildLink) -> None:
        """Stop writing to a child and shut its data and control connections."""
        if link.sink is not None:
            link.sink.kill()
        for sock in (link.data, link.peer.sock if link.peer else None):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _adopt_late(self, link: ChildLink, add: Adoption, data: socket.socket) -> int:
        """Adoption after the relay finished (a death at the very end of the stream):
        replay the rest from the window or the file here, then end the child's stream."""
        assert self.relay is not None
        total = self.relay.bytes_in
        try:
            self.relay.catch_up(add, total)
            data.shutdown(socket.SHUT_WR)
        except (OSError, ValueError) as exc:
            raise self._drop_adopted(link, protocol.Code.NWF, f"replay failed: {exc}") from None
        link.sink = None
        link.base = total
        if link.peer is not None:
            link.peer.send(End(total))
        self.log.message(f"-heal: {link.name} resumed at byte {add.offset} after the end, "
                         f"{total - add.offset} bytes replayed")  # fmt: skip
        return add.offset

    def _bounded(self) -> bool:
        """-heal: must this node's data sockets to its children have fixed buffers?

        An in-memory replay window covers only a bounded amount in flight, so
        a parent that keeps one (no regular file holds its stream), and a node
        whose parent keeps one, fix SO_SNDBUF/SO_RCVBUF (TCP autotuning off).
        Where the stream is in a file, replay comes from the file and the
        sockets keep autotuning.
        """
        if not self.cfg.heal:
            return False
        return self.parent_bound or self._stream_file() < 0

    def _stream_file(self) -> int:
        """A read-only fd on a regular file that holds the stream, or -1 (looked up once).

        The root's ``-in FILE``; a node's ``-out FILE``.  Opened anew through
        /proc so that reading it never moves the relay's own file offset.
        """
        if self.stream_fd is None:
            self.stream_fd = self._open_stream_file()
        return self.stream_fd

    def _open_stream_file(self) -> int:
        if self.cfg.role is Role.ROOT:
            fd = self.in_fd if self.cfg.stm is None and self.in_cmd is None else None
        else:
            fd = self.out_fd if self.out_is_file and self.out_cmd is None else None
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
        fd = self._stream_file()
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

    def _ready(self) -> Ready:
        return Ready(tuple(self._subtree_names()), self._kids() if self.cfg.heal else None)

    def _kids(self) -> tuple[Kid, ...]:
        """Where this node's children are, for an ancestor that must adopt them."""
        out = []
        for lk in self.links:
            if lk.peer is None or lk.dead or lk.endpoint is None:
                continue
            host, port = lk.endpoint.with_default(self.cfg.port)
            out.append(Kid(lk.name, host, port, lk.kids))
        return tuple(out)

    def _subtree_names(self) -> list[str]:
        names = [self.name]
        for link in self.links:
            names.extend(link.subtree if link.subtree else ([link.label] if link.peer else []))
        return names

    # ------------------------------------------------------------ streaming

    def _stm_filter(self, src: int, eos: bytes) -> int:
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

    def _io_caps(self) -> tuple[int, int]:
        """Per-call read/write caps.

        The man page's -buf_maxread/-buf_maxwrite (default 64 KiB) exist so one
        select() loop interleaves its inputs and outputs.  Here every output has
        its own thread, so on the zero-copy path the default is a whole buffer
        per call; values given on the command line are always honoured.
        """
        cfg = self.cfg
        wide = zero_copy_available()
        rd = cfg.buf_maxread if "-buf_maxread" in cfg.given or not wide else cfg.buf_size
        wr = cfg.buf_maxwrite if "-buf_maxwrite" in cfg.given or not wide else cfg.buf_size
        return rd, wr

    def _stream(self, in_fd: int, idle_timeout: float) -> RelayResult:
        cfg = self.cfg
        maxread, maxwrite = self._io_caps()
        if cfg.out == "socket":  # start COMMAND only once the tree has formed
            self.out_cmd = SocketCommand(cfg.cmd or "", "out", cfg.buf_size)
            self.out_fd, self.out_is_file = self.out_cmd.fd, False
        sinks: list[Sink] = [self.up_sink] if self.up_sink is not None else []
        for link in self.links:
            if link.data is None or link.dead or self.pull:
                continue
            link.sink = Sink(f"child{link.index}", link.data.fileno(), "child",
                             maxwrite=maxwrite,
                             on_error=lambda s, e, lk=link: self._child_write_failed(lk, e))
            sinks.append(link.sink)
        if self.out_fd is not None:
            if self.out_is_file:
                try:
                    os.ftruncate(self.out_fd, 0)
                except OSError:
                    pass  # a device or a pipe
            self.local = Sink("local", self.out_fd, "local", maxwrite=maxwrite,
                              on_error=self._local_write_failed, fsync=cfg.fsync)  # fmt: skip
            sinks.append(self.local)
        relay = Relay(in_fd, sinks, buf_size=cfg.buf_size, minread=cfg.buf_minread,
                      minwrite=cfg.buf_minwrite, maxread=maxread, maxwrite=maxwrite,
                      idle_timeout=idle_timeout, low_latency=cfg.stm is not None,
                      batch=0 if "-buf_minwrite" in cfg.given else BATCH)  # fmt: skip
        # -heal and -digest need the stream again: from a regular file that holds
        # it (the root's input, a node's output) at no copy, or else from a tap
        window = cfg.heal and bool(self.links)  # a parent keeps a replay window
        if window or cfg.digest:
            import xxhash  # a dependency of beokit; imported only when asked for

            stream_fd = self._stream_file()
            if stream_fd < 0:
                size = cfg.window if window else max(cfg.buf_size, 1 << 20)
                self.tap = relay.tap = Tap(Ring(size), xxhash.xxh3_128() if cfg.digest else None)
            elif cfg.digest:
                local = self.local
                progress = ((lambda: relay.bytes_in) if cfg.role is Role.ROOT
                            else (lambda: local.sent if local is not None else 0))  # fmt: skip
                self.file_hasher = FileHasher(stream_fd, progress, xxhash.xxh3_128())
        if cfg.heal and self.cfg.role is not Role.ROOT:
            relay.on_input_end = self._input_ended
        self.relay = relay
        self.stream_start = time.monotonic()
        self.log.message(f"streaming to {len(sinks)} output(s)"
                         f" ({'splice/tee' if self.relay.zero_copy else 'copy loop'})")  # fmt: skip
        result = self.relay.run()
        if self.local is not None:
            self.local.finish()
        if self.out_cmd is not None:
            self.out_cmd.end_input()
            failed = self.out_cmd.wait()
            if failed and self.local is not None and self.local.alive:
                self.local.alive = False
                self._local_write_failed(self.local, OSError(0, failed))
        self.stream_seconds = time.monotonic() - self.stream_start
        return result

    def _local_write_failed(self, sink: Sink, exc: OSError) -> None:
        dest = f"-cmd {self.cfg.cmd!r}" if self.out_cmd is not None else self.cfg.out
        why = exc.strerror if exc.errno == 0 else f"write to {dest}: {exc.strerror}"
        if not self.cfg.colwf:
            self.collapse(protocol.Code.LWF, self.name, why)
            return
        with self.lock:
            self.codes.append(protocol.Code.LWF.value)
            self.detail = why
        self.log.error(f"local write failure (LWF): {why}; -colwf: relaying on")

    def _local_read_failed(self, exc: OSError) -> None:
        src = f"-cmd {self.cfg.cmd!r}" if self.in_cmd is not None else ",".join(self.cfg.inputs)
        why = exc.strerror if exc.errno == 0 else f"read from {src}: {exc.strerror}"
        if not self.cfg.colrf:
            self.collapse(protocol.Code.LRF, self.name, why)
            return
        with self.lock:
            self.codes.append(protocol.Code.LRF.value)
            self.detail = why
        self.log.error(f"local read failure (LRF): {why}; -colrf: ending the stream here")

    def _source_snapshot(self) -> tuple[Snapshot, int] | None:
        """The root's input file as the stream starts, and the offset it starts at
        (None when the input is not a regular file read directly)."""
        if self.cfg.stm is not None or self.in_cmd is not None or self.in_fd is None:
            return None
        try:
            st = os.fstat(self.in_fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            return Snapshot.of(st), os.lseek(self.in_fd, 0, os.SEEK_CUR)
        except OSError:
            return None

    def _check_source(self, start: Snapshot, offset: int, read: int) -> None:
        """A source file that changed during the stream is LRF, fatal even with -colrf:
        every node holds bytes that match no version of it (see source.py)."""
        assert self.in_fd is not None
        try:
            why = change(start, offset, Snapshot.of(os.fstat(self.in_fd)), read)
        except OSError as exc:
            why = f"it cannot be examined any more ({exc.strerror})"
        if not why:
            return
        why = f"source {','.join(self.cfg.inputs)} changed during the stream: {why}"
        with self.lock:
            self.codes.append(protocol.Code.LRF.value)
            self.detail = why
            self.fatal = True
            self.source_changed = why
        self.log.error(f"local read failure (LRF): {why}")

    def _end_children(self) -> None:
        for link in self.links:
            if link.data is None or link.dead or link.peer is None:
                continue
            try:
                link.data.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            sent = link.base + (link.sink.sent if link.sink else 0)
            short = ""
            if self.upstream_gone.is_set() and not self.end_event.is_set():
                short = f"{self.name}: {self.detail}"  # -conrf: we finished early
            elif self.end_short:
                short = self.end_short
            elif self.source_changed:  # every node below holds a copy of no version
                short = f"{self.name}: {self.source_changed}"
            link.peer.send(End(sent, short))

    def _collect(self) -> list[protocol.NodeResult]:
        """Wait for every child's report; merge them under this node's own result."""
        for link in self.links:
            while not link.done.wait(0.2):
                pass
        out_bytes = self.local.sent if self.local is not None else 0
        produced = self.relay.bytes_in if self.relay else 0
        me = protocol.NodeResult(name=self.name, depth=0,
                          bytes_in=produced if self.bytes_received is None else self.bytes_received,
                          bytes_up=self.up_sink.sent if self.up_sink is not None else 0,
                          bytes_out=out_bytes, codes=protocol.sort_codes(self.codes),
                          seconds=round(self.stream_seconds, 3),
                          detail=self.detail, local_out=self.out_fd is not None,
                          fatal=self.fatal)  # fmt: skip
        hasher = None
        if self.file_hasher is not None:
            self.file_hasher.finish(self.relay.bytes_in if self.cfg.role is Role.ROOT
                                    else self.local.sent if self.local else 0)  # fmt: skip
            hasher = self.file_hasher.hasher if self.file_hasher.error is None else None
        elif self.tap is not None:
            hasher = self.tap.hasher
        if hasher is not None and not self.source_changed:  # a changed file: no digest
            me.digest = f"{DIGEST}:{hasher.hexdigest()}"  # type: ignore[attr-defined]
        nodes = [me]
        for link in self.links:
            if link.feeder is not None:
                link.feeder.join()
            sent = link.base + (link.sink.sent if link.sink else 0)
            if link.results is not None:
                sub = link.results
                head = sub[0]
                if self.pull:  # the child sent, we received
                    moved = link.feeder.received if link.feeder else 0
                    detail = f"sent {head.bytes_up} bytes, {moved} arrived"
                else:
                    moved, detail = sent, f"received {head.bytes_in} bytes, {sent} were sent"
                if protocol.check_counts(moved, sub, self.pull):
                    head.codes = protocol.sort_codes(head.codes + [protocol.Code.BBC.value])
                    head.fatal = True
                    head.detail = detail
                    link.codes.append(protocol.Code.BBC.value)
                for n in sub:
                    n.depth += 1
                nodes.extend(sub)
            else:
                nodes.extend(self._lost_branch(link))
        return nodes

    def _lost_branch(self, link: ChildLink) -> list[protocol.NodeResult]:
        """Results for a branch that sent no report: name every node in it."""
        node, code, why = link.failure or (link.label, protocol.Code.BSTAT.value, "no report")
        # we are still running, so -conwf/-connf handled the loss; a bad report was not handled
        fatal = code == protocol.Code.BSTAT.value
        names = link.subtree or [link.label]
        out = []
        for i, name in enumerate(names):
            depth = 1 if i == 0 else 2
            if name == node:
                out.append(protocol.NodeResult(name=name, depth=depth, codes=[code], detail=why,
                                        fatal=fatal))  # fmt: skip
            else:
                out.append(protocol.NodeResult(name=name, depth=depth, codes=[protocol.Code.BSTAT.value],
                                        fatal=fatal,
                                        detail=f"no report: branch lost at {node} ({code})"))  # fmt: skip
        if node not in names:
            out.insert(0, protocol.NodeResult(name=node, depth=2, codes=[code], detail=why, fatal=fatal))
        return out

    @staticmethod
    def _all_codes(nodes: list[protocol.NodeResult]) -> list[str]:
        return [c for n in nodes for c in n.codes]

    # ------------------------------------------------------------ root summary

    def _root_summary(self, nodes: list[protocol.NodeResult]) -> int:
        for n in protocol.check_digests(nodes):
            n.codes = protocol.sort_codes(n.codes + [protocol.Code.BDG.value])
            n.fatal = True
            n.detail = f"digest {n.digest} differs from the root's {nodes[0].digest}"
            for link in self.links:  # the child line of the branch that holds it
                if link.results and n in link.results:
                    link.codes.append(protocol.Code.BDG.value)
        self._print_summary(nodes)
        joined = [n for n in nodes[1:] if protocol.Code.NNF.value not in n.codes]
        status = 1 if any(n.fatal for n in nodes) else 0
        if self.links and not joined:
            self.log.error("no child joined: nothing was delivered")
            status = 1
        self._write_report(nodes, "ok" if status == 0 else "failed", self.stream_seconds)
        return status

    def _print_summary(self, nodes: list[protocol.NodeResult]) -> None:
        total = nodes[0].bytes_in
        secs = max(self.stream_seconds, 1e-9)
        failed = any(n.codes for n in nodes)
        say = self.log.error if failed else self.log.message
        for link in self.links:
            own = list(link.codes) + (link.results[0].codes if link.results else [])
            say(protocol.child_line(link.index, link.label, own))
        say(protocol.chain_line(self._all_codes(nodes[1:])))
        for n in nodes:
            if n.codes:
                self.log.error(f"node {n.name}: {protocol.format_codes(n.codes)} ({n.detail})")
        for n in nodes:
            self.log.message(f"node {n.name}: {n.bytes_in} bytes in, {n.bytes_out} out, "
                             f"{n.seconds:.2f} s, {protocol.format_codes(n.codes)}")  # fmt: skip
        verb = f"received {total} bytes from" if self.pull else f"sent {total} bytes to"
        joined = sum(1 for n in nodes[1:] if protocol.Code.NNF.value not in n.codes)
        self.log.message(f"{verb} {joined} node(s) in {secs:.2f} s "
                         f"({total / secs / 1e6:.1f} MB/s)")  # fmt: skip

    def _write_report(self, nodes: list[protocol.NodeResult], status: str, secs: float) -> None:
        if not self.cfg.report:
            return
        doc = {"status": status, "bytes": nodes[0].bytes_in if nodes else 0,
               "seconds": round(secs, 3), "session": self.session,
               "nodes": [n.to_dict() for n in nodes]}  # fmt: skip
        if self.heals:
            doc["heals"] = [h.to_json() for h in self.heals]
        path = self.cfg.report
        try:
            if os.path.exists(path) and not os.path.isfile(path):  # /dev/stdout: in place
                with open(path, "w") as fh:
                    json.dump(doc, fh, indent=1)
                return
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                json.dump(doc, fh, indent=1)
            os.replace(tmp, path)
        except OSError as exc:
            self.log.error(f"cannot write report {self.cfg.report}: {exc.strerror}")

    # ------------------------------------------------------------ heartbeat

    def _start_heartbeat(self) -> None:
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()

    def _silent(self, peer: Peer, now: float) -> bool:
        """Nothing heard from ``peer`` for -stall seconds, and nothing waiting to be read.

        The second condition matters after this process itself was stopped
        (SIGSTOP, a long swap-in): its peers' messages are queued, unread, and
        silence measured by the clock alone would accuse them wrongly.
        """
        if self.cfg.stall <= 0 or now - peer.last <= self.cfg.stall:
            return False
        try:
            readable, _, _ = select.select([peer.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return not readable

    def _heartbeat(self) -> None:
        last_status = time.monotonic()
        last_bytes = 0
        while not self._stop.wait(HEARTBEAT):
            now = time.monotonic()
            received = self.relay.bytes_in if self.relay else 0
            if self.parent is not None and not self.report_sent:
                self.parent.send(Ping(received))
                stalled = self._silent(self.parent, now)
                if stalled and not self.upstream_gone.is_set() and not self.end_event.is_set():
                    self._parent_failed(f"parent silent for {self.cfg.stall:g} s (stalled?)")
            for link in list(self.links):
                if link.peer is None or link.dead or link.done.is_set():
                    continue
                link.peer.send(Ping())
                if self._silent(link.peer, now):
                    self._child_failed(link, protocol.Code.NWF.value, link.name,
                                       f"silent for {self.cfg.stall:g} s (stalled?)")  # fmt: skip
            if self.log.on(8) and self.relay is not None and now - last_status >= 2.0:
                rate = (received - last_bytes) / (now - last_status) / 1e6
                self.log.status(f"status: {received} bytes, {rate:.1f} MB/s")
                last_status, last_bytes = now, received

    # ------------------------------------------------------------ collapse

    def collapse(self, code: str, node: str, why: str, link: ChildLink | None = None,
                 tell_parent: bool = True) -> None:  # fmt: skip
        """Unhandled failure: tell the parent and the children, exit 1 now."""
        with self.lock:
            if self.collapsing:
                return
            self.collapsing = True
        code = str(code)
        if link is not None:
            self.log.error(protocol.child_line(link.index, link.label, link.codes))
        self.log.error(f"{node}: {protocol.CODE_TEXT.get(code, code)} ({code}): {why}")
        self.log.error(protocol.chain_line([code]))
        self.log.error(f"collapsing the tree at {self.name}")
        if self.parent is not None and tell_parent:
            self.parent.send(Fail(code, node, why))
        for lk in self.links:
            if lk.peer is not None and lk is not link:
                lk.peer.send(Abort(f"{node}: {code}: {why}"))
        if self.cfg.role is Role.ROOT:
            self._write_report([protocol.NodeResult(name=node, depth=0, codes=[code], detail=why,
                                              fatal=True)], "collapsed", 0.0)  # fmt: skip
        for cmd in (self.in_cmd, self.out_cmd):
            if cmd is not None:
                cmd.kill()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.log.flush()
        os._exit(1)


TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux >= 3.12


def _connect(host: str, port: int, timeout: float, bufsize: int = 0) -> socket.socket:
    """A TCP connection; ``bufsize`` fixes SO_SNDBUF before connecting (-heal)."""
    if not bufsize:
        return socket.create_connection((host, port), timeout=timeout)
    err: OSError | None = None
    for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        s = socket.socket(family, kind, proto)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
            s.settimeout(timeout)
            s.connect(addr)
            return s
        except OSError as exc:
            err = exc
            s.close()
    raise err or OSError(errno.EHOSTUNREACH, f"no address for {host}")
