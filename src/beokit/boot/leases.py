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

Identity is the hardware address (``chaddr``) for Ethernet, whatever client
identifier is or is not sent (PXE ROMs send one, many OS clients do not, or
the reverse): one NIC, one node. Clients without a usable hardware address
(InfiniBand, ``hlen`` 0) are keyed by their client identifier.
"""

from __future__ import annotations

import ipaddress
import json
import zlib
from dataclasses import asdict, dataclass
from typing import Any

from beokit.boot.config import BootConfig

IPv4 = ipaddress.IPv4Address
OFFER_HOLD = 60.0
POOL_OFFER_HOLD = 10.0  # seconds a pool address offered to a client is held for it  # seconds an auto-admit offer reserves its node number
DECLINE_HOLD = 600.0  # seconds a declined pool address is skipped
DECLINE_SHARE = 4  # at most 1/4 of the pool is held as declined at once (oldest forgotten)
FORMAT = "beokit-boot-leases/1"


@dataclass
class Lease:
    """One client's lease. Never changed in place (a renewal is a new ``Lease``): the
    journal's compaction reads a snapshot of the table in another thread."""

    key: str  # MAC "52:54:..." or "id:<hex client id>"
    ip: str
    name: str
    expires: float
    kind: str  # host | node | temporary
    client_id: str = ""


@dataclass(frozen=True)
class Binding:
    """What a client should have now (not yet a lease)."""

    ip: IPv4
    name: str
    kind: str  # host | node | temporary
    lease_time: int
    node: int | None = None


class LeaseDB:
    """All DHCP state of the server: admitted nodes and active leases."""

    def __init__(self, cfg: BootConfig) -> None:
        self.cfg = cfg
        self.admitted: dict[str, int] = {}  # key -> node number (beyond the config's)
        self.leases: dict[str, Lease] = {}
        self.offers: dict[str, tuple[int, float]] = {}  # auto-admit reservations
        self.declined: dict[str, float] = {}  # pool ip -> until
        self.pool_offers: dict[str, tuple[str, float]] = {}  # pool ip -> (key, until)
        self.by_ip: dict[str, str] = {}  # leased ip -> key
        # The changes since the journal last took them, one tuple each (its record's fields:
        # ``lease_journal``): ("lease", key, ip, name, expires, kind, client id),
        # ("release", key), ("admit", key, n). Expiry needs none.
        self.events: list[tuple] = []
        self.reconfigure(cfg)

    def reconfigure(self, cfg: BootConfig) -> None:
        self.cfg = cfg
        self._hosts = {h.mac: h for h in cfg.hosts}
        self._ip_owner: dict[str, str] = {str(h.ip): h.mac for h in cfg.hosts}
        self._nodes: dict[str, int] = dict(self.admitted)
        self._nodes.update(cfg.node_macs)
        self._node_owner = {n: k for k, n in self._nodes.items()}

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

    def _pool_ip(self, key: str, now: float, reserve: bool = False) -> IPv4 | None:
        """Hash of the key into the pool, probing past addresses held by others.

        The same client always hashes to the same start, so repeated DISCOVERs
        get the same offer; an offer is held for a few seconds (``reserve``)
        so that a thousand clients booting at once do not collide on it.
        """
        cfg = self.cfg
        if cfg.pool is None:
            return None
        lease = self.leases.get(key)
        if lease and lease.kind == "temporary" and lease.expires > now:
            return IPv4(lease.ip)
        size = cfg.pool_size
        start = zlib.crc32(key.encode()) % size
        for k in range(size):
            ip = cfg.pool[0] + (start + k) % size
            s = str(ip)
            if self._taken(s, key, now):
                continue
            if reserve:
                self.pool_offers[s] = (key, now + POOL_OFFER_HOLD)
            return ip
        return None

    def _free_node(self, key: str, now: float) -> int | None:
        held = {n for k, (n, t) in self.offers.items() if t > now and k != key}
        for n in range(1, self.cfg.node_count + 1):
            if n not in self._node_owner and n not in held:
                return n
        return None

    def binding(self, key: str, now: float, *, reserve: bool = False) -> Binding | None:
        """The address this client should have; ``None`` when none is free."""
        cfg = self.cfg
        h = self._hosts.get(key)
        if h is not None:
            return Binding(h.ip, h.name, "host", cfg.lease_time)
        n = self._nodes.get(key)
        if n is None and cfg.admit == "auto" and cfg.node_base is not None:
            held = self.offers.get(key)
            n = held[0] if held and held[1] > now else self._free_node(key, now)
            if n is not None and reserve:
                self.offers[key] = (n, now + OFFER_HOLD)
        if n is not None:
            return Binding(cfg.node_ip(n), cfg.node_hostname(n), "node", cfg.lease_time, n)
        ip = self._pool_ip(key, now, reserve)
        if ip is None:
            return None
        return Binding(ip, "", "temporary", cfg.temporary_lease_time)

    # -- changes ---------------------------------------------------------
    def commit(self, key: str, b: Binding, now: float, client_id: str = "") -> Lease:
        """A DHCPACK: record the lease (and an auto-admitted node number)."""
        if b.kind == "node" and b.node is not None and key not in self._nodes:
            self.admit(key, b.node)
        self.offers.pop(key, None)
        lease = Lease(key, str(b.ip), b.name, now + b.lease_time, b.kind, client_id)
        old = self.leases.get(key)
        if old is not None and self.by_ip.get(old.ip) == key:
            del self.by_ip[old.ip]
        self.leases[key] = lease
        self.by_ip[lease.ip] = key
        self.pool_offers.pop(lease.ip, None)
        self.events.append(("lease", key, lease.ip, lease.name, lease.expires, lease.kind,
                            client_id))  # fmt: skip
        return lease

    def release(self, key: str, ip: str) -> bool:
        lease = self.leases.get(key)
        if lease is None or lease.ip != ip:
            return False
        del self.leases[key]
        if self.by_ip.get(ip) == key:
            del self.by_ip[ip]
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
        pool = self.cfg.pool
        if pool is None:
            return False
        try:
            a = IPv4(ip)
        except ValueError:
            return False
        return pool[0] <= a <= pool[1]

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
            del self.pool_offers[ip]
        if not self.in_pool(ip):
            return "fixed"
        self.declined.pop(ip, None)  # (re-insert: the dict's order is the declines' age)
        self.declined[ip] = now + DECLINE_HOLD
        cap = max(1, self.cfg.pool_size // DECLINE_SHARE)
        while len(self.declined) > cap:
            del self.declined[next(iter(self.declined))]
        return "declined"

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
            n = self._free_node(key, float("inf"))
            if n is None:
                raise ValueError(f"no free node number (nodes.count = {cfg.node_count})")
        if not 0 <= n <= cfg.node_count:
            raise ValueError(f"node number {n} outside 0-{cfg.node_count}")
        owner = self._node_owner.get(n)
        if owner is not None and owner != key:
            raise ValueError(f"node {n} already belongs to {owner}")
        if key in cfg.node_macs and cfg.node_macs[key] != n:
            raise ValueError(f"{key} is node {cfg.node_macs[key]} in the config")
        if current is not None and current != n:
            self._node_owner.pop(current, None)
        self.admitted[key] = n
        self._nodes[key] = n
        self._node_owner[n] = key
        for k, (m, _t) in list(self.offers.items()):
            if m == n and k != key:
                del self.offers[k]
        self.events.append(("admit", key, n))
        return n

    def expire(self, now: float) -> int:
        """Drop expired leases, offers and declines; the number of leases dropped."""
        gone = [k for k, x in self.leases.items() if x.expires <= now]
        for k in gone:
            ip = self.leases.pop(k).ip
            if self.by_ip.get(ip) == k:
                del self.by_ip[ip]
        for ip in [ip for ip, (_, t) in self.pool_offers.items() if t <= now]:
            del self.pool_offers[ip]
        for k in [k for k, (_, t) in self.offers.items() if t <= now]:
            del self.offers[k]
        for ip in [ip for ip, t in self.declined.items() if t <= now]:
            del self.declined[ip]
        return len(gone)

    # -- names (for DNS) -------------------------------------------------
    def name_to_ip(self, name: str) -> IPv4 | None:
        name = name.lower().rstrip(".")
        dom = "." + self.cfg.domain.lower()
        if dom != "." and name.endswith(dom):
            name = name[: -len(dom)]
        for h in self.cfg.hosts:
            if h.name.lower() == name:
                return h.ip
        n = self.cfg.node_of_name(name)
        return None if n is None else self.cfg.node_ip(n)

    def ip_to_name(self, ip: IPv4) -> str | None:
        for h in self.cfg.hosts:
            if h.ip == ip:
                return h.name
        n = self.cfg.node_of_ip(ip)
        return None if n is None else self.cfg.node_hostname(n)

    # -- persistence (the journal: ``lease_journal``, ``lease_file``) ------
    def restore(self, admitted: dict[str, int], leases: dict[str, Lease]) -> None:
        """Start from this state (a replayed journal): no change recorded."""
        self.admitted = dict(admitted)
        self.leases = dict(leases)
        self.by_ip = {x.ip: x.key for x in self.leases.values()}
        self.reconfigure(self.cfg)
        self.events = []

    def to_json(self) -> str:
        """The JSON export (``beo boot --dump-leases``; the lease file of the previous
        version): admitted node numbers and active leases."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "admitted": dict(sorted(self.admitted.items())),
            "leases": [asdict(x) for x in sorted(self.leases.values(), key=lambda x: x.key)],
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
            lease = Lease(**{k: item[k] for k in Lease.__dataclass_fields__ if k in item})
            if lease.expires > now:
                leases[lease.key] = lease
        self.restore(admitted, leases)
