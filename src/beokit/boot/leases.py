"""Address assignment and leases, without I/O.

Who gets which address (first match wins):

1. ``[[hosts]]`` entries: fixed MAC -> address/name (file servers, switches).
2. Nodes: a MAC with a node number N (from ``nodes.macs`` in the config or
   from ``beo boot admit``, persisted in the lease file) gets
   ``nodes.base + N`` and the name ``nodes.name`` (``node{n}``): BeoNSS-style
   linear numbering, so ``node23`` is node0's address + 23.
3. Unknown MACs: with ``nodes.admit = "auto"`` the lowest free node number
   (reserved for the offer, committed on REQUEST); otherwise a *temporary*
   address from the pool, picked by a hash of the MAC (repeated DISCOVERs
   get the same offer with no state kept), leased for
   ``temporary_lease_time`` seconds until ``beo boot admit`` gives the node
   its number. Its next renewal is then NAKed and it comes back for its node
   address.

Every per-packet question is O(1) in the size of the tables (the server
holds 20,000 leases and more): a client's own lease and offer are found by
its key; the first free pool address from the hash, and the lowest free node
number, by a :class:`~beokit.boot.free_map.FreeMap` that counts the holders
of each address (lease, offer, decline, fixed host) and node number (owner,
offer); expiry pops a heap of lease ends and the fronts of the offer and
decline tables, which are kept in the order they expire.

Identity is the hardware address (``chaddr``) for Ethernet, whatever client
identifier is or is not sent (PXE ROMs send one, many OS clients do not, or
the reverse): one NIC, one node. Clients without a usable hardware address
(InfiniBand, ``hlen`` 0) are keyed by their client identifier.
"""

from __future__ import annotations

import heapq
import ipaddress
import json
import socket
import zlib
from typing import Any, NamedTuple

from beokit.boot.config import BootConfig
from beokit.boot.free_map import FreeMap

IPv4 = ipaddress.IPv4Address
OFFER_HOLD = 60.0  # seconds an auto-admit offer reserves its node number
POOL_OFFER_HOLD = 10.0  # seconds a pool address offered to a client is held for it
DECLINE_HOLD = 600.0  # seconds a declined pool address is skipped
DECLINE_SHARE = 4  # at most 1/4 of the pool is held as declined at once (oldest forgotten)
FORMAT = "beokit-boot-leases/1"


class Lease(NamedTuple):
    """One client's lease: a tuple, never changed in place (a renewal is a new
    ``Lease``), so that the journal's compaction can read a snapshot of the table in
    another thread; and a tuple of strings and a number is one the garbage collector
    stops tracking, so that 20,000 leases do not lengthen its full passes."""

    key: str  # MAC "52:54:..." or "id:<hex client id>"
    ip: str
    name: str
    expires: float
    kind: str  # host | node | temporary
    client_id: str = ""


class Binding(NamedTuple):
    """What a client should have now (not yet a lease)."""

    ip: IPv4
    name: str
    kind: str  # host | node | temporary
    lease_time: int
    node: int | None = None
    text: str = ""  # the address as text, when the table had it at hand ("" otherwise)


class LeaseDB:
    """All DHCP state of the server: admitted nodes and active leases.

    The tables are public for reading (``status``, tests); change them through the
    methods only, which keep the occupancy maps and the expiry order with them."""

    def __init__(self, cfg: BootConfig) -> None:
        self.cfg = cfg
        self.admitted: dict[str, int] = {}  # key -> node number (beyond the config's)
        self.leases: dict[str, Lease] = {}
        self.offers: dict[str, tuple[int, float]] = {}  # auto-admit holds, in expiry order
        self.declined: dict[str, float] = {}  # pool ip -> until, in expiry order
        self.pool_offers: dict[str, tuple[str, float]] = {}  # pool ip -> (key, until), same
        self.offer_of: dict[str, str] = {}  # key -> the pool ip it was offered
        self.by_ip: dict[str, str] = {}  # leased ip -> key
        # The changes since the journal last took them, one tuple each (its record's fields:
        # ``lease_journal``): ("lease", key, ip, name, expires, kind, client id),
        # ("release", key), ("admit", key, n). Expiry needs none.
        self.events: list[tuple] = []
        self._expiry: list[tuple[float, str]] = []  # heap of (lease end, key); stale ones too
        self.reconfigure(cfg)

    def reconfigure(self, cfg: BootConfig) -> None:
        """A new config (start, SIGHUP): the fixed tables and both maps, rebuilt (O(N))."""
        self.cfg = cfg
        self._hosts = {h.mac: h for h in cfg.hosts}
        self._ip_owner: dict[str, str] = {str(h.ip): h.mac for h in cfg.hosts}
        self._host_by_name = {h.name.lower(): h.ip for h in cfg.hosts}
        self._host_by_ip = {h.ip: h.name for h in cfg.hosts}
        self._nodes: dict[str, int] = dict(self.admitted)
        self._nodes.update(cfg.node_macs)
        self._node_owner = {n: k for k, n in self._nodes.items()}
        self._pool_lo = int(cfg.pool[0]) if cfg.pool is not None else 0
        self._pool_size = cfg.pool_size
        self.pool_map = FreeMap(self._pool_size)
        for table in (self.by_ip, self.pool_offers, self.declined, self._ip_owner):
            for ip in table:
                self._take_ip(ip)
        self.node_map = FreeMap(cfg.node_count + 1 if cfg.node_base is not None else 0)
        if self.node_map.size:
            self.node_map.take(0)  # (never given automatically: numbering starts at 1)
        for n in self._node_owner:
            self._take_node(n)
        for n, _until in self.offers.values():
            self._take_node(n)

    # -- the occupancy maps ----------------------------------------------
    def _pool_index(self, ip: str) -> int:
        """The offset of ``ip`` in the pool, -1 outside it."""
        try:
            i = int.from_bytes(socket.inet_aton(ip), "big") - self._pool_lo
        except OSError:
            return -1
        return i if 0 <= i < self._pool_size else -1

    def _take_ip(self, ip: str) -> None:
        i = self._pool_index(ip)
        if i >= 0:
            self.pool_map.take(i)

    def _give_ip(self, ip: str) -> None:
        i = self._pool_index(ip)
        if i >= 0:
            self.pool_map.give(i)

    def _take_node(self, n: int) -> None:
        if 0 <= n < self.node_map.size:
            self.node_map.take(n)

    def _give_node(self, n: int) -> None:
        if 0 <= n < self.node_map.size:
            self.node_map.give(n)

    def _set_lease_ip(self, ip: str, key: str) -> None:
        if ip not in self.by_ip:
            self._take_ip(ip)
        self.by_ip[ip] = key

    def _drop_lease_ip(self, ip: str, key: str) -> None:
        if self.by_ip.get(ip) == key:
            del self.by_ip[ip]
            self._give_ip(ip)

    def _set_pool_offer(self, ip: str, key: str, until: float) -> None:
        old = self.pool_offers.pop(ip, None)  # (re-inserted: the table stays in expiry order)
        if old is None:
            self._take_ip(ip)
        elif old[0] != key and self.offer_of.get(old[0]) == ip:
            del self.offer_of[old[0]]
        prev = self.offer_of.get(key)
        if prev is not None and prev != ip:
            self._drop_pool_offer(prev)
        self.pool_offers[ip] = (key, until)
        self.offer_of[key] = ip

    def _drop_pool_offer(self, ip: str) -> None:
        held = self.pool_offers.pop(ip, None)
        if held is not None:
            self._give_ip(ip)
            if self.offer_of.get(held[0]) == ip:
                del self.offer_of[held[0]]

    def _set_node_offer(self, key: str, n: int, until: float) -> None:
        old = self.offers.pop(key, None)
        if old is not None:
            self._give_node(old[0])
        self.offers[key] = (n, until)
        self._take_node(n)

    def _drop_node_offer(self, key: str) -> None:
        old = self.offers.pop(key, None)
        if old is not None:
            self._give_node(old[0])

    def forget_offer(self, key: str) -> None:
        """The client chose another server, or took its lease: its holds go (a node
        number for auto-admission, a pool address)."""
        self._drop_node_offer(key)
        ip = self.offer_of.get(key)
        if ip is not None:
            self._drop_pool_offer(ip)

    def _set_owner(self, key: str, n: int) -> None:
        current = self._nodes.get(key)
        if current is not None and current != n and self._node_owner.get(current) == key:
            del self._node_owner[current]
            self._give_node(current)
        if self._node_owner.get(n) != key:
            self._node_owner[n] = key
            self._take_node(n)
        self._nodes[key] = n

    # -- queries ---------------------------------------------------------
    def node_of(self, key: str) -> int | None:
        return self._nodes.get(key)

    def owner_of_node(self, n: int) -> str | None:
        return self._node_owner.get(n)

    def _taken(self, ip: str, key: str, now: float) -> bool:
        owner = self.by_ip.get(ip)
        if owner is not None and owner != key and self.leases[owner].expires > now:
            return True
        held = self.pool_offers.get(ip)
        if held is not None and held[0] != key and held[1] > now:
            return True
        return ip in self._ip_owner or self.declined.get(ip, 0) > now

    def _pool_ip(self, key: str, now: float, reserve: bool = False) -> str | None:
        """The client's pool address (text): the one it holds (lease, then offer), else the
        first free one at or after the hash of its key, wrapping round.

        The same client always hashes to the same start, so repeated DISCOVERs get the
        same offer; an offer is held for a few seconds (``reserve``) so that a thousand
        clients booting at once do not collide on it.
        """
        if self.cfg.pool is None:
            return None
        lease = self.leases.get(key)
        ip: str | None = None
        if lease is not None and lease.kind == "temporary" and self._pool_index(lease.ip) >= 0:
            if lease.expires > now:
                return lease.ip
            if not self._taken(lease.ip, key, now):
                ip = lease.ip  # (expired, not swept yet, nobody else's: the same again)
        if ip is None:
            ip = self.offer_of.get(key)  # (its time may have run out: the same again)
            if ip is not None and self.pool_offers[ip][1] <= now and self._taken(ip, key, now):
                ip = None
        if ip is None:
            i = self.pool_map.first_free(zlib.crc32(key.encode()) % self._pool_size)
            if i is None and self.expire(now):  # (addresses whose time ran out: free now)
                i = self.pool_map.first_free(zlib.crc32(key.encode()) % self._pool_size)
            if i is None:
                return None
            ip = socket.inet_ntoa((self._pool_lo + i).to_bytes(4, "big"))
        if reserve:
            self._set_pool_offer(ip, key, now + POOL_OFFER_HOLD)
        return ip

    def _free_node(self, now: float) -> int | None:
        """The lowest node number nobody owns or holds (auto-admission)."""
        n = self.node_map.first_free(1)
        if n is None and self.expire(now):
            n = self.node_map.first_free(1)
        return n

    def binding(self, key: str, now: float, *, reserve: bool = False) -> Binding | None:
        """The address this client should have; ``None`` when none is free."""
        cfg = self.cfg
        h = self._hosts.get(key)
        if h is not None:
            return Binding(h.ip, h.name, "host", cfg.lease_time)
        n = self._nodes.get(key)
        if n is None and cfg.admit == "auto" and cfg.node_base is not None:
            held = self.offers.get(key)
            n = held[0] if held and held[1] > now else self._free_node(now)
            if n is not None and reserve:
                self._set_node_offer(key, n, now + OFFER_HOLD)
        if n is not None:
            return Binding(cfg.node_ip(n), cfg.node_hostname(n), "node", cfg.lease_time, n)
        ip = self._pool_ip(key, now, reserve)
        if ip is None:
            return None
        return Binding(IPv4(int.from_bytes(socket.inet_aton(ip), "big")), "", "temporary",
                       cfg.temporary_lease_time, None, ip)  # fmt: skip

    # -- changes ---------------------------------------------------------
    def commit(self, key: str, b: Binding, now: float, client_id: str = "") -> Lease:
        """A DHCPACK: record the lease (and an auto-admitted node number)."""
        if b.kind == "node" and b.node is not None and key not in self._nodes:
            self.admit(key, b.node)
        self.forget_offer(key)
        ip = b.text or str(b.ip)
        lease = Lease(key, ip, b.name, now + b.lease_time, b.kind, client_id)
        old = self.leases.get(key)
        if old is not None and old.ip != ip:
            self._drop_lease_ip(old.ip, key)
        self.leases[key] = lease
        self._set_lease_ip(ip, key)
        self._drop_pool_offer(ip)
        self._push_expiry(lease)
        self.events.append(("lease", key, ip, lease.name, lease.expires, lease.kind, client_id))
        return lease

    def _push_expiry(self, lease: Lease) -> None:
        heap = self._expiry
        heapq.heappush(heap, (lease.expires, lease.key))
        if len(heap) > 2 * len(self.leases) + 1024:  # renewals left stale entries: rebuild
            self._expiry = [(x.expires, k) for k, x in self.leases.items()]
            heapq.heapify(self._expiry)

    def release(self, key: str, ip: str) -> bool:
        lease = self.leases.get(key)
        if lease is None or lease.ip != ip:
            return False
        del self.leases[key]
        self._drop_lease_ip(ip, key)
        self.events.append(("release", key))
        return True

    def holds(self, key: str, ip: str, now: float) -> bool:
        """Does client ``key`` hold ``ip``: its lease, the offer it was made, or its
        fixed (host or node) address? O(1): no pool probing."""
        lease = self.leases.get(key)
        if lease is not None and lease.ip == ip and lease.expires > now:
            return True
        held = self.pool_offers.get(ip)
        if held is not None and held[0] == key and held[1] > now:
            return True
        h = self._hosts.get(key)
        if h is not None:
            return str(h.ip) == ip
        n = self._nodes.get(key)
        if n is None:
            offer = self.offers.get(key)
            n = offer[0] if offer is not None and offer[1] > now else None
        return n is not None and self.cfg.node_base is not None and str(self.cfg.node_ip(n)) == ip

    def in_pool(self, ip: str) -> bool:
        return self._pool_index(ip) >= 0

    def decline(self, key: str, ip: str, now: float) -> str:
        """A DHCPDECLINE of ``ip`` from ``key`` (RFC 2131 section 4.3.3: the client found
        the address in use). Only the client that holds the address (lease, offer or
        fixed address) can decline it; anyone else's DECLINE is ignored. A pool address
        is skipped for ``DECLINE_HOLD`` seconds, at most a quarter of the pool at once
        (the oldest decline is forgotten first), so neither forged DECLINEs nor a flood
        of real ones can empty the pool or grow the table past the pool's size.

        Returns what was done: ``"declined"`` (a pool address set aside),
        ``"fixed"`` (a node or host address: it cannot be replaced, the administrator
        must find the other user) or ``"ignored"``.
        """
        if not self.holds(key, ip, now):
            return "ignored"
        self.release(key, ip)
        held = self.pool_offers.get(ip)
        if held is not None and held[0] == key:
            self._drop_pool_offer(ip)
        if not self.in_pool(ip):
            return "fixed"
        if self.declined.pop(ip, None) is None:  # (re-inserted: the order is the declines' age)
            self._take_ip(ip)
        self.declined[ip] = now + DECLINE_HOLD
        cap = max(1, self._pool_size // DECLINE_SHARE)
        while len(self.declined) > cap:
            self._drop_declined(next(iter(self.declined)))
        return "declined"

    def _drop_declined(self, ip: str) -> None:
        if self.declined.pop(ip, None) is not None:
            self._give_ip(ip)

    def admit(self, key: str, n: int | None = None) -> int:
        """Give ``key`` a permanent node number (the lowest free one by default).

        Raises ``ValueError`` naming the problem. Its temporary lease stays
        until it expires or the client's next renewal is NAKed.
        """
        cfg = self.cfg
        if cfg.node_base is None:
            raise ValueError("no nodes.base in the config: nothing to admit into")
        if key in self._hosts:
            raise ValueError(f"{key} is a fixed [[hosts]] entry")
        current = self._nodes.get(key)
        if n is None:
            if current is not None:
                return current
            # (an administrator's admission: offers' holds do not count; O(count), rare)
            n = next((m for m in range(1, cfg.node_count + 1) if m not in self._node_owner), None)
            if n is None:
                raise ValueError(f"no free node number (nodes.count = {cfg.node_count})")
        if not 0 <= n <= cfg.node_count:
            raise ValueError(f"node number {n} outside 0-{cfg.node_count}")
        owner = self._node_owner.get(n)
        if owner is not None and owner != key:
            raise ValueError(f"node {n} already belongs to {owner}")
        if key in cfg.node_macs and cfg.node_macs[key] != n:
            raise ValueError(f"{key} is node {cfg.node_macs[key]} in the config")
        self.admitted[key] = n
        self._set_owner(key, n)
        for k in [k for k, (m, _t) in self.offers.items() if m == n and k != key]:
            self._drop_node_offer(k)
        self.events.append(("admit", key, n))
        return n

    def expire(self, now: float) -> int:
        """Drop expired leases, offers and declines; the number of leases dropped.
        O(what expired): the heap of lease ends, the fronts of the other tables."""
        gone = 0
        heap, leases = self._expiry, self.leases
        while heap and heap[0][0] <= now:
            _t, key = heapq.heappop(heap)
            x = leases.get(key)
            if x is not None and x.expires <= now:
                del leases[key]
                self._drop_lease_ip(x.ip, key)
                gone += 1
        for table, drop in ((self.pool_offers, self._drop_pool_offer),
                            (self.offers, self._drop_node_offer)):  # fmt: skip
            while table:
                k, v = next(iter(table.items()))
                if v[1] > now:
                    break
                drop(k)
        while self.declined:
            ip, until = next(iter(self.declined.items()))
            if until > now:
                break
            self._drop_declined(ip)
        return gone

    # -- names (for DNS) -------------------------------------------------
    def name_to_ip(self, name: str) -> IPv4 | None:
        name = name.lower().rstrip(".")
        dom = "." + self.cfg.domain.lower()
        if dom != "." and name.endswith(dom):
            name = name[: -len(dom)]
        ip = self._host_by_name.get(name)
        if ip is not None:
            return ip
        n = self.cfg.node_of_name(name)
        return None if n is None else self.cfg.node_ip(n)

    def ip_to_name(self, ip: IPv4) -> str | None:
        name = self._host_by_ip.get(ip)
        if name is not None:
            return name
        n = self.cfg.node_of_ip(ip)
        return None if n is None else self.cfg.node_hostname(n)

    # -- persistence (the journal: ``lease_journal``, ``lease_file``) ------
    def restore(self, admitted: dict[str, int], leases: dict[str, Lease]) -> None:
        """Start from this state (a replayed journal): no change recorded."""
        self.admitted = dict(admitted)
        self.leases = dict(leases)
        self.by_ip = {x.ip: x.key for x in self.leases.values()}
        self._expiry = [(x.expires, k) for k, x in self.leases.items()]
        heapq.heapify(self._expiry)
        self.reconfigure(self.cfg)
        self.events = []

    def to_json(self) -> str:
        """The JSON export (``beo boot --dump-leases``; the lease file of the previous
        version): admitted node numbers and active leases."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "admitted": dict(sorted(self.admitted.items())),
            "leases": [x._asdict() for x in sorted(self.leases.values(), key=lambda x: x.key)],
        }
        return json.dumps(doc, indent=1) + "\n"

    def load_json(self, text: str, now: float) -> None:
        """Restore from :meth:`to_json` (expired leases are dropped). ``ValueError`` if bad.
        The lease file of the previous version is this JSON: read once, then journaled."""
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not a beokit boot lease file")
        admitted = {str(k): int(v) for k, v in doc.get("admitted", {}).items()}
        leases = {}
        for item in doc.get("leases", []):
            lease = Lease(**{k: item[k] for k in Lease._fields if k in item})
            if lease.expires > now:
                leases[lease.key] = lease
        self.restore(admitted, leases)
