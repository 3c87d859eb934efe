"""Virtual cluster planning: names, addresses and the ``ip``/``tc`` commands.

Pure logic, no I/O.  A :class:`Spec` (what the user asked for) becomes a
:class:`ClusterPlan`: every namespace, every port, every address, and the exact
argv lists that build the cluster.  The driver runs those lists; the tests
read them.

Topology
--------

* Host ``i`` (1-based) is the network namespace ``{prefix}-host{i}``; the
  user calls it ``host{i}``.  Its NIC ``j`` is ``eth{j}`` inside it.
* NIC ``j`` of every host belongs to *network* ``j`` (a "rail", as in a
  multi-rail cluster): its own subnet, /20 number ``net + j`` of
  198.18.0.0/15 (``198.18.{16*j}.0/20`` with ``net`` 0), and its own
  switches.  With one switch per network, NIC ``j`` of every host is on
  switch ``j``.
* Each network has ``switches`` switches, namespaces ``{prefix}-sw{j}-{k}``,
  each holding a Linux bridge ``br0``.  Hosts fill the switches in blocks
  (like racks): host ``i`` on switch ``(i-1)*K // N``, so every switch gets
  N/K hosts (rounded down or up) in one block.  Switch ``k > 0`` is linked
  to switch 0 of its network by a trunk (``t{k}`` on switch 0, ``uplink``
  on switch ``k``) shaped at the trunk rate.
* The port of host ``i`` is ``h{i}`` in its switch.  Every port is shaped
  on both ends: ``eth{j}`` (what the host sends) and ``h{i}`` (what the host
  receives), so each host has the rate in and the rate out.
* The controller (the root namespace) gets a veth ``{prefix}-ctl`` into
  switch 0 of network 0, its last address (``198.18.15.254/20``), shaped like a host
  port, so ``ssh``/``nettee`` from the controller reach every host.  Nothing
  is routed: hosts have no default route, only their connected /20.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field

Argv = list[str]

BASE_NET = ipaddress.IPv4Network("198.18.0.0/15")
NIC_PREFIXLEN = 20  # 4094 addresses per network
MAX_HOSTS = 1000
MAX_NICS = 8
MAX_SWITCHES = 64
MAX_NETS = 32  # /20s in 198.18.0.0/15
CONTROLLER_INDEX = 4094  # last usable address of each /20
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
DEFAULT_PREFIX = "bk"
BRIDGE = "br0"
TBF_LATENCY = "50ms"
# A switch forwards frames; it does not run the host's firewall on them.  Where
# br_netfilter is loaded (Docker loads it), every bridged frame would go through
# iptables' hooks and a route lookup (~15 % of the CPU a UDP server spends on a
# datagram here): each switch namespace turns that off for itself.
BRIDGE_NF_OFF = ("for k in iptables ip6tables arptables; do "
                 "f=/proc/sys/net/bridge/bridge-nf-call-$k; [ ! -w $f ] || echo 0 > $f; done")
DEFAULT_MTU, MIN_MTU, MAX_MTU = 1500, 576, 65535


class PlanError(ValueError):
    """Bad input: the message names the bad value."""


# --- parsing -----------------------------------------------------------------

_RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kmgt]?)(bit|bps)?\s*$", re.I)
_RATE_MULT = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_rate(text: str) -> int:
    """``"100mbit"``, ``"1gbit"``, ``"1g"``, ``"500k"`` -> bits per second."""
    m = _RATE_RE.match(text)
    if not m:
        raise PlanError(f"bad rate {text!r} (e.g. 100mbit, 1gbit)")
    if (m.group(3) or "").lower() == "bps":
        raise PlanError(f"bad rate {text!r}: use bits, e.g. 100mbit (tc's 'bps' means bytes)")
    bps = int(float(m.group(1)) * _RATE_MULT[m.group(2).lower()])
    if bps < 8000:
        raise PlanError(f"bad rate {text!r}: at least 8kbit")
    if bps > 400 * 10**9:
        raise PlanError(f"bad rate {text!r}: at most 400gbit")
    return bps


def format_rate(bps: int) -> str:
    """Bits per second -> a short human form: ``100mbit``, ``1.5gbit``."""
    for unit, mult in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps >= mult:
            return f"{bps / mult:g}{unit}"
    return f"{bps}bit"


_DELAY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(us|ms|s)?\s*$", re.I)
_DELAY_MULT = {"us": 1, "ms": 1000, "s": 1_000_000}


def parse_delay(text: str) -> int:
    """``"0.2ms"``, ``"200us"``, ``"0"`` -> microseconds (one way, per port)."""
    m = _DELAY_RE.match(text)
    if not m:
        raise PlanError(f"bad delay {text!r} (e.g. 0.2ms, 200us)")
    unit = (m.group(2) or "ms").lower()
    us = round(float(m.group(1)) * _DELAY_MULT[unit])
    if us > 10_000_000:
        raise PlanError(f"bad delay {text!r}: at most 10s")
    return us


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise PlanError(
            f"bad name {prefix!r}: 1-8 characters, a lower-case letter then letters or digits"
        )
    return prefix


# --- the spec ----------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What the user asked for.  :meth:`validate` raises :class:`PlanError`."""

    n: int
    rate_bps: int = 10**9
    delay_us: int = 0
    switches: int = 1
    nics: int = 1
    prefix: str = DEFAULT_PREFIX
    trunk_rate_bps: int = 0  # 0: same as rate_bps
    controller: bool = True
    sshd: bool = False
    net: int = 0  # NIC j uses /20 number net + j of 198.18.0.0/15
    mtu: int = 1500  # every link of the cluster (9000: jumbo frames)

    def validate(self) -> Spec:
        check_prefix(self.prefix)
        if not 1 <= self.n <= MAX_HOSTS:
            raise PlanError(f"bad host count {self.n!r}: 1-{MAX_HOSTS}")
        if not 1 <= self.nics <= MAX_NICS:
            raise PlanError(f"bad NIC count {self.nics!r}: 1-{MAX_NICS}")
        if not 1 <= self.switches <= min(MAX_SWITCHES, self.n):
            raise PlanError(
                f"bad switch count {self.switches!r}: 1-{min(MAX_SWITCHES, self.n)} "
                f"(at most one per host)"
            )
        if self.rate_bps <= 0:
            raise PlanError(f"bad rate {self.rate_bps!r}")
        if self.delay_us < 0:
            raise PlanError(f"bad delay {self.delay_us!r}")
        if not MIN_MTU <= self.mtu <= MAX_MTU:
            raise PlanError(f"bad MTU {self.mtu!r}: {MIN_MTU}-{MAX_MTU}")
        if not 0 <= self.net <= MAX_NETS - self.nics:
            raise PlanError(f"bad network number {self.net!r}: 0-{MAX_NETS - self.nics} "
                            f"with {self.nics} NIC(s)")  # fmt: skip
        return self

    @property
    def trunk_bps(self) -> int:
        return self.trunk_rate_bps or self.rate_bps


# --- names and addresses -----------------------------------------------------


def host_name(i: int) -> str:
    return f"host{i}"


def host_ns(prefix: str, i: int) -> str:
    return f"{prefix}-host{i}"


def switch_name(j: int, k: int) -> str:
    return f"sw{j}-{k}"


def switch_ns(prefix: str, j: int, k: int) -> str:
    return f"{prefix}-{switch_name(j, k)}"


def nic_name(j: int) -> str:
    return f"eth{j}"


def port_name(i: int) -> str:
    return f"h{i}"


def controller_link(prefix: str) -> str:
    return f"{prefix}-ctl"


def network(j: int, net: int = 0) -> ipaddress.IPv4Network:
    """The subnet of NIC ``j``: /20 number ``net + j`` of 198.18.0.0/15 (``198.18.{16j}.0/20``)."""
    sub = ipaddress.IPv4Network((int(BASE_NET.network_address) + ((net + j) << 12),
                                 NIC_PREFIXLEN))  # fmt: skip
    if not sub.subnet_of(BASE_NET):
        raise PlanError(f"bad network number {net + j!r}: 0-{MAX_NETS - 1}")
    return sub


def address(j: int, i: int, net: int = 0) -> str:
    """Address of host ``i`` on NIC ``j``."""
    return str(network(j, net).network_address + i)


def controller_address(net: int = 0) -> str:
    """The controller's address, on NIC 0's network."""
    return str(network(0, net).network_address + CONTROLLER_INDEX)


def used_networks(route_text: str) -> set[int]:
    """Numbers of the /20s of 198.18.0.0/15 that ``ip -j route show`` already routes."""
    used = set()
    for r in json.loads(route_text or "[]"):
        try:
            dst = ipaddress.IPv4Network(r.get("dst", ""), strict=False)
        except ValueError:
            continue
        if dst.overlaps(BASE_NET):
            lo = max(int(dst.network_address), int(BASE_NET.network_address))
            hi = min(int(dst.broadcast_address), int(BASE_NET.broadcast_address))
            base = int(BASE_NET.network_address)
            used.update(range((lo - base) >> 12, ((hi - base) >> 12) + 1))
    return used


def pick_net(nics: int, used: set[int]) -> int:
    """The first ``net`` whose ``nics`` consecutive /20s are all free."""
    for net in range(MAX_NETS - nics + 1):
        if not used.intersection(range(net, net + nics)):
            return net
    raise PlanError("no free network left in 198.18.0.0/15 (other virtual clusters hold it)")


def switch_of(spec: Spec, i: int) -> int:
    """Switch (0-based) that host ``i`` (1-based) is plugged into: contiguous blocks
    of N/K hosts (the first ones one smaller when K does not divide N)."""
    return (i - 1) * spec.switches // spec.n


def parse_host(text: str, n: int, prefix: str) -> int:
    """``host3``, ``3`` or ``bk-host3`` -> 3.  Raises :class:`PlanError`."""
    t = text.removeprefix(f"{prefix}-").removeprefix("host")
    if not t.isdigit() or not 1 <= int(t) <= n:
        raise PlanError(f"bad host {text!r}: host1-host{n}")
    return int(t)


def parse_target(text: str, spec: Spec) -> str:
    """A host (``host3``, ``3``) or a switch (``sw0-1``) -> its namespace."""
    m = re.fullmatch(r"(?:[a-z0-9]+-)?sw(\d+)-(\d+)", text)
    if m and int(m.group(1)) < spec.nics and int(m.group(2)) < spec.switches:
        return switch_ns(spec.prefix, int(m.group(1)), int(m.group(2)))
    return host_ns(spec.prefix, parse_host(text, spec.n, spec.prefix))


# --- commands ----------------------------------------------------------------


def ip(ns: str | None, *args: str) -> Argv:
    return ["ip", *(["-n", ns] if ns else []), *args]


def tc(ns: str | None, *args: str) -> Argv:
    return ["tc", *(["-n", ns] if ns else []), *args]


def tbf_burst(rate_bps: int) -> int:
    """Bucket size in bytes: 4 ms at the rate, at least 128 KiB (two GSO packets)."""
    return max(128 * 1024, rate_bps // 8 * 4 // 1000)


def set_mtu(ns: str | None, dev: str, mtu: int) -> list[Argv]:
    """The MTU of one end of a link (nothing for the default 1500)."""
    return [] if mtu == DEFAULT_MTU else [ip(ns, "link", "set", "dev", dev, "mtu", str(mtu))]


def shape(ns: str | None, dev: str, rate_bps: int, delay_us: int = 0) -> list[Argv]:
    """Egress shaping of one end of a port: tbf at the rate, netem before it for delay."""
    tbf = ["tbf", "rate", f"{rate_bps}bit", "burst", str(tbf_burst(rate_bps)),
           "latency", TBF_LATENCY]  # fmt: skip
    if not delay_us:
        return [tc(ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", *tbf)]
    return [
        tc(ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
           "delay", f"{delay_us}us", "limit", "100000"),  # fmt: skip
        tc(ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf),
    ]


def reshape(ns: str | None, dev: str, rate_bps: int, delay_us: int = 0) -> list[Argv]:
    """Replace the shaping of one end of a port."""
    return [tc(ns, "qdisc", "del", "dev", dev, "root"), *shape(ns, dev, rate_bps, delay_us)]


@dataclass(frozen=True)
class Port:
    """One host NIC and the switch port it is plugged into."""

    host: int
    nic: int
    switch: int
    host_ns: str
    switch_ns: str
    dev: str  # inside host_ns
    port: str  # inside switch_ns
    address: str


@dataclass
class ClusterPlan:
    spec: Spec
    ports: list[Port] = field(default_factory=list)

    @classmethod
    def build(cls, spec: Spec) -> ClusterPlan:
        spec.validate()
        p = spec.prefix
        ports = [
            Port(i, j, switch_of(spec, i), host_ns(p, i), switch_ns(p, j, switch_of(spec, i)),
                 nic_name(j), port_name(i), address(j, i, spec.net))  # fmt: skip
            for i in range(1, spec.n + 1)
            for j in range(spec.nics)
        ]
        return cls(spec, ports)

    # names ---------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return self.spec.prefix

    def host_namespaces(self) -> list[str]:
        return [host_ns(self.prefix, i) for i in range(1, self.spec.n + 1)]

    def switch_namespaces(self) -> list[str]:
        return [switch_ns(self.prefix, j, k)
                for j in range(self.spec.nics) for k in range(self.spec.switches)]  # fmt: skip

    def namespaces(self) -> list[str]:
        return self.switch_namespaces() + self.host_namespaces()

    def network(self, j: int = 0) -> ipaddress.IPv4Network:
        return network(j, self.spec.net)

    def address(self, j: int, i: int) -> str:
        return address(j, i, self.spec.net)

    def controller_address(self) -> str:
        return controller_address(self.spec.net)

    def ports_of(self, i: int, nic: int | None = None) -> list[Port]:
        return [pt for pt in self.ports if pt.host == i and (nic is None or pt.nic == nic)]

    def etc_hosts(self) -> str:
        """``/etc/hosts`` for every host: ``hostN`` is NIC 0, ``hostN-ethJ`` NIC J."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        if self.spec.controller:
            lines.append(f"{self.controller_address()}\tcontroller")
        for pt in self.ports:
            names = f"{host_name(pt.host)}-{pt.dev}"
            if pt.nic == 0:
                names = f"{host_name(pt.host)} {names}"
            lines.append(f"{pt.address}\t{names}")
        return "\n".join(lines) + "\n"

    # commands ------------------------------------------------------------

    def create_commands(self) -> list[Argv]:
        """Every ``ip``/``tc`` command, in order, that builds the cluster."""
        s = self.spec
        cmds: list[Argv] = []
        for ns in self.switch_namespaces():
            cmds += [
                ["ip", "netns", "add", ns],
                ip(ns, "link", "set", "lo", "up"),
                ip(ns, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0",
                   "mcast_snooping", "0"),  # fmt: skip
                ip(ns, "link", "set", BRIDGE, "up"),
                ["ip", "netns", "exec", ns, "sh", "-c", BRIDGE_NF_OFF],
            ]
        for ns in self.host_namespaces():
            cmds += [["ip", "netns", "add", ns], ip(ns, "link", "set", "lo", "up")]
        for pt in self.ports:
            cmds += [
                ["ip", "link", "add", pt.dev, "netns", pt.host_ns, "type", "veth",
                 "peer", "name", pt.port, "netns", pt.switch_ns],  # fmt: skip
                *set_mtu(pt.host_ns, pt.dev, s.mtu),
                *set_mtu(pt.switch_ns, pt.port, s.mtu),
                ip(pt.host_ns, "addr", "add", f"{pt.address}/{NIC_PREFIXLEN}", "brd", "+",
                   "dev", pt.dev),  # fmt: skip
                ip(pt.switch_ns, "link", "set", "dev", pt.port, "master", BRIDGE, "up"),
                ip(pt.host_ns, "link", "set", "dev", pt.dev, "up"),
                *shape(pt.host_ns, pt.dev, s.rate_bps, s.delay_us),
                *shape(pt.switch_ns, pt.port, s.rate_bps, s.delay_us),
            ]
            if pt.nic == 0:  # multicast (udpcast) goes out of NIC 0
                cmds.append(ip(pt.host_ns, "route", "add", "224.0.0.0/4", "dev", pt.dev))
        for j in range(s.nics):
            core = switch_ns(self.prefix, j, 0)
            for k in range(1, s.switches):
                leaf = switch_ns(self.prefix, j, k)
                cmds += [
                    ["ip", "link", "add", f"t{k}", "netns", core, "type", "veth",
                     "peer", "name", "uplink", "netns", leaf],  # fmt: skip
                    *set_mtu(core, f"t{k}", s.mtu),
                    *set_mtu(leaf, "uplink", s.mtu),
                    ip(core, "link", "set", "dev", f"t{k}", "master", BRIDGE, "up"),
                    ip(leaf, "link", "set", "dev", "uplink", "master", BRIDGE, "up"),
                    *shape(core, f"t{k}", s.trunk_bps, s.delay_us),
                    *shape(leaf, "uplink", s.trunk_bps, s.delay_us),
                ]
        if s.controller:
            ctl, core = controller_link(self.prefix), switch_ns(self.prefix, 0, 0)
            cmds += [
                ["ip", "link", "add", ctl, "type", "veth", "peer", "name", "ctl",
                 "netns", core],  # fmt: skip
                *set_mtu(None, ctl, s.mtu),
                *set_mtu(core, "ctl", s.mtu),
                ["ip", "addr", "add", f"{self.controller_address()}/{NIC_PREFIXLEN}", "brd", "+",
                 "dev", ctl],  # fmt: skip
                ip(core, "link", "set", "dev", "ctl", "master", BRIDGE, "up"),
                ["ip", "link", "set", "dev", ctl, "up"],
                *shape(None, ctl, s.rate_bps, s.delay_us),
                *shape(core, "ctl", s.rate_bps, s.delay_us),
            ]
        return cmds

    def destroy_commands(self) -> list[Argv]:
        """Delete what :meth:`create_commands` made (processes are the driver's job)."""
        return teardown_commands(
            Leftovers(self.namespaces(), [controller_link(self.prefix)] if self.spec.controller
                      else [])  # fmt: skip
        )

    def link_commands(self, i: int, up: bool, nic: int | None = None) -> list[Argv]:
        """Pull (or plug back) the cable of host ``i`` at the switch end."""
        state = "up" if up else "down"
        return [ip(pt.switch_ns, "link", "set", "dev", pt.port, state) for pt in self.ports_of(i, nic)]

    def slow_commands(self, i: int, rate_bps: int, nic: int | None = None) -> list[Argv]:
        """Re-shape both ends of host ``i``'s ports to ``rate_bps``."""
        cmds: list[Argv] = []
        for pt in self.ports_of(i, nic):
            cmds += reshape(pt.host_ns, pt.dev, rate_bps, self.spec.delay_us)
            cmds += reshape(pt.switch_ns, pt.port, rate_bps, self.spec.delay_us)
        return cmds

    def to_json(self) -> dict:
        return {"spec": asdict(self.spec)}

    @classmethod
    def from_json(cls, data: dict) -> ClusterPlan:
        return cls.build(Spec(**data["spec"]))


# --- leftovers ---------------------------------------------------------------


@dataclass
class Leftovers:
    namespaces: list[str]
    links: list[str]

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.links)


def parse_netns_list(text: str) -> list[str]:
    """Names from ``ip netns list`` (``name (id: 3)`` or ``name``)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def parse_link_names(text: str) -> list[str]:
    """Interface names from ``ip -j link show`` (JSON) or ``ip -o link show``."""
    text = text.strip()
    if text.startswith("["):
        return [str(x["ifname"]) for x in json.loads(text)]
    names = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2 and parts[0].strip().isdigit():
            names.append(parts[1].strip().split("@")[0])
    return names


def find_leftovers(prefix: str, netns_text: str, link_text: str) -> Leftovers:
    """What belongs to the cluster ``prefix``: every name starting ``{prefix}-``.

    Prefixes cannot contain ``-``, so ``bk`` never matches ``bkt-host1``.
    """
    check_prefix(prefix)
    mine = f"{prefix}-"
    return Leftovers(
        sorted((n for n in parse_netns_list(netns_text) if n.startswith(mine)), key=_natural),
        sorted((n for n in parse_link_names(link_text) if n.startswith(mine)), key=_natural),
    )


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def teardown_commands(left: Leftovers) -> list[Argv]:
    """Delete leftover links (root namespace) and namespaces."""
    return [["ip", "link", "del", n] for n in left.links] + [
        ["ip", "netns", "del", n] for n in left.namespaces
    ]
