"""How the tree forms: a node accepts its parent, and joins its children.

Upwards (:class:`ParentGate`): a non-root node listens on PORT (data) and
PORT+1 (control) through the gate (gate.py), greets each caller, checks a
would-be parent's join, welcomes it and takes the first welcomed caller
whose data connection arrives; later callers are turned away ("busy"), or,
with ``-heal``, handed to the healer when they come to adopt.

Downwards (:class:`Joiner`): a node connects to each ``-next`` hostlist
(failover with ``-connf``, waiting for a host to boot with ``-w``), does
the parent side of the handshake and opens the data connection; then it
waits until every branch reports itself formed (``ready``).
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from beokit import auth
from beokit.nettee import handshake, protocol
from beokit.nettee.gate import Expect, Gate, Handshake, listener, send_now
from beokit.nettee.hostlists import Endpoint
from beokit.nettee.links import ChildLink, Fatal, Peer, read_child, read_parent
from beokit.nettee.messages import Hello, Join, Refuse, Welcome, encode
from beokit.nettee.options import DATA_LOWAT, HEAL_SOCKBUF, MAX_NAME
from beokit.nettee.policy import Action, Failure, Phase, Who, decide

if TYPE_CHECKING:
    from beokit.nettee.node import Node

HANDSHAKE_TIMEOUT = 10.0
CONNECT_RETRY = 0.2  # the longest pause between two tries to join a child
FIRST_RETRY = 0.01  # the first pause (doubled each try): a child forked a moment after
                    # its parent (beo cast starts every node at once) listens within ms
MAX_OFFERS = 8  # welcomed would-be parents waiting for their data connection at once
UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ETIMEDOUT,
               errno.EADDRNOTAVAIL}  # fmt: skip
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux >= 3.12


class Retry(Exception):
    """Try this host again in a moment (refused, busy, a failed handshake)."""


class Unreachable(Exception):
    """No route to the host, or no such name."""


def peer_of(hs: Handshake) -> Peer:
    """A control connection the gate handed over, with whatever followed its first message."""
    peer = Peer(hs.sock, hs.addr)
    peer.dec, peer.queue = hs.decoder, list(hs.rest)
    return peer


@dataclass(eq=False)
class Offer:
    """A caller that passed the handshake; it becomes the parent once its data comes."""

    peer: Peer
    msg: Join
    name: str
    expires: float
    expect: Expect | None = None


class DataWait:
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


def take_parent(node: Node, peer: Peer, join: Join, data: socket.socket) -> None:
    """Make ``peer`` (with its data connection) this node's parent."""
    node.parent_bound = join.bound
    if join.bound:  # the parent's replay window counts on our receive buffer
        data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, HEAL_SOCKBUF)
    peer.sock.settimeout(None)
    peer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    peer.last = time.monotonic()
    node.parent_name = join.name or protocol.printable(peer.name, MAX_NAME)
    node.path = list(join.path) + [node.node_id]
    node.data_in = data
    node.parent = peer


def follow_parent(node: Node, peer: Peer) -> None:
    """Read the parent's messages (a thread), once it is this node's parent."""
    threading.Thread(target=read_parent, args=(node, peer), name="parent", daemon=True).start()


class ParentGate:
    """The upward side of formation: serve the ports until a parent is chosen."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.gate: Gate | None = None
        self._offers: list[Offer] = []  # welcomed would-be parents, waiting for their data
        self._chosen: tuple[Offer, socket.socket] | None = None  # the parent, with its data
        self._chosen_event = threading.Event()

    def listen(self) -> None:
        cfg, node = self.node.cfg, self.node
        try:
            ctrl = listener(cfg.bind, cfg.port + 1)
            try:
                data = listener(cfg.bind, cfg.port)
            except OSError:
                ctrl.close()
                raise
        except OSError as exc:
            raise Fatal(protocol.Code.NRF, node.name,
                        f"cannot listen on {cfg.bind}:{cfg.port}/{cfg.port + 1}: {exc.strerror}") from None  # fmt: skip
        self.gate = Gate(ctrl, data, greet=self._greet, on_message=self._on_handshake,
                         log=node.log.error)  # fmt: skip
        self.gate.start()
        node.log.message(f"waiting for a parent on {cfg.bind}:{cfg.port} (+1 control)")

    def accept(self) -> None:
        """Wait (bounded by -t) until a caller passed the handshake and opened its data
        connection; the gate serves every caller meanwhile (see gate.py)."""
        node, cfg = self.node, self.node.cfg
        assert self.gate is not None
        deadline = time.monotonic() + cfg.timeout if cfg.timeout > 0 else None
        while not self._chosen_event.wait(0.25):
            self._expire_offers()
            if deadline is not None and time.monotonic() > deadline:
                raise Fatal(protocol.Code.NRF, node.name,
                            f"no parent connected within {cfg.timeout:g} s (-t)")  # fmt: skip
        assert self._chosen is not None
        offer, data = self._chosen
        node.session = offer.msg.session
        take_parent(node, offer.peer, offer.msg, data)
        node.parent_name = offer.name
        follow_parent(node, offer.peer)
        if not cfg.heal:
            self.gate.close_data()  # with -heal an adopter connects here later
        node.log.message(f"parent {node.parent_name} joined from {offer.peer.name}")

    def _greet(self) -> tuple[bytes, bytes | None]:
        """What a new control connection hears first (gate thread): our hello, or,
        once this node has its parent, a refusal (with -heal: a hello marked busy,
        since the caller may be an ancestor come to adopt us)."""
        node, chosen = self.node, self._chosen
        nonce = auth.nonce()
        if chosen is None:
            return encode(handshake.hello(nonce, node.secret, node.name)), nonce
        why = f"{node.name} is already in a chain under {chosen[0].name}"
        busy = chosen[0].msg.session
        if not node.cfg.heal:
            return encode(Refuse(why, busy=busy)), None
        return encode(Hello(nonce, node.secret is not None, node.name, busy=busy, why=why)), nonce

    def _on_handshake(self, hs: Handshake) -> None:
        """The first message of a control connection (gate thread: must not block)."""
        assert self.gate is not None
        if self._chosen is None:
            self._offer_parent(hs)
        elif self.node.cfg.heal and isinstance(hs.msg, Join) and hs.msg.adopt:
            self.node.healer.adoption_request(hs)
        else:  # a parent looking for a free node (it closes by itself), or a stranger
            self.gate.reject(hs, None)

    def _offer_parent(self, hs: Handshake) -> None:
        """A would-be parent's join: check it, welcome it, wait for its data connection."""
        node, gate = self.node, self.gate
        assert gate is not None
        msg, nonce_c = hs.msg, hs.context
        try:
            nonce_p = handshake.check_join(msg, nonce_c, node.secret, node.node_id)
        except protocol.AuthError as exc:
            gate.reject(hs, f"authentication failed: parent at {hs.addr}: {exc}",
                        Refuse(f"authentication failed: {exc}"))  # fmt: skip
            return
        except protocol.ProtocolError as exc:
            gate.reject(hs, f"rejected connection from {hs.addr}: {exc}")
            return
        assert isinstance(msg, Join)
        peer = peer_of(hs)
        offer = Offer(peer, msg, name=msg.name or protocol.printable(hs.addr, MAX_NAME),
                      expires=time.monotonic() + HANDSHAKE_TIMEOUT)  # fmt: skip
        token = handshake.data_token(node.secret, nonce_c, nonce_p)
        offer.expect = gate.expect(token, 0, lambda sock: self._parent_data(offer, sock))
        with node.lock:
            self._offers.append(offer)
            stale = self._offers[:-MAX_OFFERS] if len(self._offers) > MAX_OFFERS else []
        for old in stale:
            self._drop_offer(old, "too many would-be parents at once")
        welcome = handshake.welcome(nonce_c, nonce_p, node.secret, node.name)
        if not send_now(peer.sock, encode(welcome)):
            self._drop_offer(offer, "cannot send the welcome")

    def _parent_data(self, offer: Offer, data: socket.socket) -> None:
        """A welcomed caller opened its data connection: it is our parent (gate thread)."""
        with self.node.lock:
            if self._chosen is not None or offer not in self._offers:
                data.close()
                return
            self._offers.remove(offer)
            others, self._offers = self._offers, []
            self._chosen = (offer, data)
        for other in others:
            self._drop_offer(other, None)
        self._chosen_event.set()

    def _drop_offer(self, offer: Offer, why: str | None) -> None:
        assert self.gate is not None
        with self.node.lock:
            if offer in self._offers:
                self._offers.remove(offer)
        if offer.expect is not None:
            self.gate.forget(offer.expect)
        offer.peer.close()
        if why is not None:
            self.node.log.error(f"rejected parent {offer.name} at {offer.peer.name}: {why}")

    def _expire_offers(self) -> None:
        now = time.monotonic()
        with self.node.lock:
            late = [o for o in self._offers if o.expires < now]
        for offer in late:
            self._drop_offer(offer, "it never opened its data connection")


def connect(host: str, port: int, timeout: float, bufsize: int = 0) -> socket.socket:
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


def _open_control(host: str, port: int, deadline: float | None) -> socket.socket:
    left = 3.0 if deadline is None else max(0.1, min(3.0, deadline - time.monotonic()))
    try:
        return socket.create_connection((host, port + 1), timeout=left)
    except ConnectionRefusedError:
        raise Retry() from None
    except socket.gaierror as exc:
        raise Unreachable(f"cannot resolve {host}: {exc.strerror}") from None
    except TimeoutError:
        raise Unreachable("connection timed out") from None
    except OSError as exc:
        if exc.errno in UNREACHABLE:
            raise Unreachable(exc.strerror) from None
        raise Retry() from None


class Joiner:
    """The downward side of formation: join each child (or, -heal, adopt one)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def form_children(self) -> None:
        node = self.node
        if not node.cfg.next:
            return
        node.links = [ChildLink(i, hl) for i, hl in enumerate(node.cfg.next)]
        errors: list[Fatal] = []

        def join(link: ChildLink) -> None:
            try:
                self._join_child(link)
            except Fatal as f:
                errors.append(f)

        if len(node.links) == 1:  # a chain: join the one child here, no thread to start
            join(node.links[0])
        else:
            threads = [threading.Thread(target=join, args=(lk,), daemon=True) for lk in node.links]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        for link in node.links:
            while link.peer is not None and not link.ready.wait(0.2):
                pass

    def _join_child(self, link: ChildLink) -> None:
        node, cfg = self.node, self.node.cfg
        for k, ep in enumerate(link.hostlist):
            if k > 0 and cfg.connf <= 0:
                break  # without -connf only the first host is tried
            # -connf: each candidate's time to join; else -t bounds it too (0: forever)
            wait = cfg.connf if cfg.connf > 0 else cfg.timeout
            deadline = time.monotonic() + wait if wait > 0 else None
            pause = FIRST_RETRY
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    if cfg.connf <= 0:
                        raise Fatal(protocol.Code.NNF, str(ep),
                                    f"child {ep} did not join within {cfg.timeout:g} s (-t)")  # fmt: skip
                    node.log.message(f"child {ep} did not join within {cfg.connf:g} s")
                    break
                try:
                    self.try_join(link, ep, deadline)
                    return
                except Retry:
                    time.sleep(pause)
                    pause = min(CONNECT_RETRY, pause * 2)
                except Unreachable as exc:
                    d = decide(Failure(Who.UNREACHABLE, Phase.FORMING), node.options)
                    if d.action is not Action.RETRY:
                        raise Fatal(d.code, str(ep),
                                    f"child {ep} is not reachable ({exc}); -w waits for it") from None  # fmt: skip
                    time.sleep(1.0)
        self._no_join(link)

    def _no_join(self, link: ChildLink) -> None:
        """No candidate joined (only possible with -connf): the branch is dropped."""
        node = self.node
        names = ",".join(str(e) for e in link.hostlist)
        d = decide(Failure(Who.NO_JOIN, Phase.FORMING), node.options)
        link.name = str(link.hostlist[0])
        if d.action is Action.COLLAPSE:
            raise Fatal(d.code, link.name, f"none of [{names}] joined")
        node.drop_branch(link, d, link.name, f"none of [{names}] joined")
        node.log.error(f"could not connect to child {link.index} [{names}]: NNF")

    def try_join(self, link: ChildLink, ep: Endpoint, deadline: float | None,
                 adopt: bool = False) -> int:  # fmt: skip
        """Join (or, with ``adopt``, take over) a child; returns the bytes it holds."""
        node = self.node
        host, port = ep.with_default(node.cfg.port)
        ctrl = _open_control(host, port, deadline)
        peer = Peer(ctrl, str(ep))
        try:
            name, have, nonce_c, nonce_p = self._handshake(peer, ep, adopt)
            bounded = node.healer.bounded()
            data = connect(host, port, HANDSHAKE_TIMEOUT, HEAL_SOCKBUF if bounded else 0)
            # at most DATA_LOWAT bytes wait unsent in each hop's send buffer: with
            # autotuning they were 1-3.6 MB a hop, drained after the last byte left the
            # root (0.04-0.15 s a hop at 200 Mbit/s, see docs/nettee.md "Pipeline latency")
            data.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, DATA_LOWAT)
            token = handshake.data_token(node.secret, nonce_c, nonce_p)
            data.sendall(protocol.data_header(token, have))
        except protocol.AuthError as exc:
            peer.close()
            raise Fatal(protocol.Code.NNF, str(ep), f"child {ep}: authentication failed: {exc}") from None
        except (protocol.ProtocolError, OSError) as exc:
            peer.close()
            node.log.message(f"child {ep}: handshake failed ({exc}); retrying")
            raise Retry() from None
        data.settimeout(None)
        ctrl.settimeout(None)
        ctrl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer.name = name
        peer.last = time.monotonic()
        link.endpoint, link.name, link.peer, link.data = ep, name, peer, data
        node.log.message(f"child {link.index} [{name}] {'adopted' if adopt else 'joined'} at {ep}"
                         + (f", holding {have} bytes" if adopt else ""))  # fmt: skip
        threading.Thread(target=read_child, args=(node, link), name=f"child{link.index}",
                         daemon=True).start()  # fmt: skip
        return have

    def _handshake(self, peer: Peer, ep: Endpoint, adopt: bool) -> tuple[str, int, bytes, bytes]:
        """The parent side of the handshake: (child's name, bytes it holds, nonces)."""
        node = self.node
        msg = peer.recv(HANDSHAKE_TIMEOUT)
        if not adopt and isinstance(msg, Hello) and msg.busy is not None:
            msg = Refuse(msg.why, busy=msg.busy)  # a -heal node that has a parent
        if isinstance(msg, Refuse) and msg.busy is not None:
            peer.close()
            if msg.busy and msg.busy == node.session:
                raise Fatal(protocol.Code.NNF, str(ep), f"loop: {msg.why}")
            raise Retry()
        nonce_p = auth.nonce()
        try:
            # bound: our replay window needs bounded socket buffers
            join, nonce_c = handshake.answer_hello(msg, nonce_p, node.secret, node.name,
                                                   node.session, node.path, adopt=adopt,
                                                   bound=node.healer.bounded())  # fmt: skip
        except protocol.AuthError as exc:
            peer.send(Refuse(exc.for_peer))
            raise
        peer.sock.sendall(encode(join))
        welcome = peer.recv(HANDSHAKE_TIMEOUT)
        name = handshake.check_welcome(welcome, nonce_c, nonce_p, node.secret)
        have = welcome.have if adopt and isinstance(welcome, Welcome) else 0
        return name, have, nonce_c, nonce_p
