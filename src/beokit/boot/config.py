"""The ``beo boot`` configuration: a TOML file read with :mod:`tomllib`.

Pure: :func:`parse` turns the decoded TOML table into a checked
:class:`BootConfig`, raising :class:`BootConfigError` (a ``UsageError``: one line,
exit status 2) that names the bad key and value. See
``contrib/boot.example.toml`` for every key. :class:`ServerOptions` holds the
server's command-line settings (ports, bind address, proxy mode).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beokit.errors import UsageError
from beokit.provision.plan import Topology, topology_file

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.I)
_RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([kmg]?)(bit|b|bps)?\s*$", re.I)
_RATE_MULT = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
MAX_RATE = 10**13  # bits/s (10 Tbit/s): beyond is a typo, not a cap
MAX_ORDER = 65536  # names in nettee.order
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


PXE_PORT = 4011  # the PXE boot-server port (proxyDHCP requests)


@dataclass
class ServerOptions:
    """The server's command-line settings that are not in the config file."""

    config_path: Path
    bind: str = "0.0.0.0"
    interface: str = ""
    dhcp_port: int = 67
    tftp_port: int = 69
    dns_port: int = 53
    pxe_port: int = PXE_PORT
    http_port: int | None = None  # None: from the config (0 = off)
    metrics_port: int | None = None  # None: from the config (0 = off)
    proxy: bool = False
    no_dhcp: bool = False


class BootConfigError(UsageError):
    """A bad configuration value (names the key and the value)."""


def normalize_mac(text: str) -> str:
    """``52-54-00-AB-CD-EF`` / ``5254.00ab.cdef`` -> ``52:54:00:ab:cd:ef``."""
    hexdigits = re.sub(r"[^0-9a-fA-F]", "", text)
    mac = ":".join(hexdigits[i : i + 2] for i in range(0, len(hexdigits), 2)).lower()
    if len(hexdigits) != 12 or not MAC_RE.match(mac) or re.search(r"[^0-9a-fA-F:.\-]", text):
        raise BootConfigError(f"bad MAC address {text!r} (e.g. 52:54:00:12:34:56)")
    return mac


def parse_rate(text: str | int) -> int:
    """Bandwidth in bits/s: ``800mbit``, ``1g``, ``0`` (no cap)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if not 0 <= text <= MAX_RATE:
            raise BootConfigError(f"bad bandwidth {text!r}: 0-{MAX_RATE} bits/s")
        return text
    m = _RATE_RE.match(str(text))
    bps = float(m.group(1)) * _RATE_MULT[m.group(2).lower()] if m else -1.0
    if not 0 <= bps <= MAX_RATE:
        shown = repr(text) if len(str(text)) <= 40 else repr(str(text)[:40]) + "..."
        raise BootConfigError(f"bad bandwidth {shown} (e.g. 800mbit, 1g, 0 for no cap; "
                          "at most 10000g)")  # fmt: skip
    return int(bps)


@dataclass(frozen=True)
class Host:
    mac: str
    ip: ipaddress.IPv4Address
    name: str


@dataclass(frozen=True)
class Nettee:
    """The next distribution's topology, handed to each node (see docs/boot.md and
    docs/provision.md): the first name of ``order`` is the root."""

    order: tuple[str, ...] = ()
    fanout: int = 1
    port: int = 7000
    join_wait: float = 10.0
    failover: int = 3
    parent_wait: float = 600.0

    @functools.cached_property
    def position(self) -> dict[str, int]:
        """Each host's place in ``order`` (a dict: ``name in order`` is asked for every
        DHCP reply, with up to 65,536 hosts)."""
        return {name: i for i, name in enumerate(self.order)}

    @functools.cached_property
    def topology(self) -> Topology:
        return Topology(self.order, self.fanout, self.port, self.join_wait, self.failover,
                        self.parent_wait)  # fmt: skip

    def next_of(self, name: str) -> list[str]:
        """The hosts ``name`` forwards to: its children in a tree of ``fanout``."""
        i = self.position.get(name)
        if i is None:
            return []
        first = i * self.fanout + 1
        return list(self.order[first : first + self.fanout])

    def file_for(self, name: str) -> bytes | None:
        if name not in self.position:
            return None
        return topology_file(self.topology, name)


@dataclass(frozen=True)
class Provision:
    """``[provision]``: what a round sends and when it starts (docs/provision.md)."""

    image: Path | None = None
    target: str = ""  # on each node: a file, a block device, or dir:PATH (a tar unpacked)
    start_after: int = 0  # start once this many nodes are ready (0: every node of the order)
    start_wait: float = 120.0  # ... or after this many seconds, whoever is ready
    report_port: int = 0  # UDP port of the round's reports (0: nettee.port + 2)
    follow_up: bool = True  # nodes that come after the round get a round of their own

    def report_port_of(self, nettee_port: int) -> int:
        return self.report_port or nettee_port + 2


@dataclass(frozen=True)
class BootConfig:
    server: ipaddress.IPv4Address
    root: Path
    subnet: ipaddress.IPv4Network
    lease_file: Path | None = None
    control: Path | None = None
    router: ipaddress.IPv4Address | None = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    domain: str = "cluster"
    lease_time: int = 3600
    temporary_lease_time: int = 30
    pool: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None = None
    node_base: ipaddress.IPv4Address | None = None
    node_count: int = 0
    node_name: str = "node{n}"
    admit: str = "manual"
    node_macs: dict[str, int] = field(default_factory=dict)
    hosts: tuple[Host, ...] = ()
    boot_bios: str = "pxelinux.0"
    boot_uefi: str = "ipxe.efi"
    boot_arm64: str = "ipxe-arm64.efi"
    ipxe_script: str = ""
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    http_port: int = 0
    http_url: str = ""
    metrics_port: int = 0  # Prometheus text format on BIND:PORT/metrics (0 = off)
    bandwidth_bps: int = 0
    max_blksize: int = 1468
    max_windowsize: int = 64
    tftp_timeout: float = 1.0
    tftp_retries: int = 5
    defer_max: float = 1.0
    fair: bool = True
    nettee: Nettee = field(default_factory=Nettee)
    provision: Provision | None = None

    # -- derived ---------------------------------------------------------
    def node_ip(self, n: int) -> ipaddress.IPv4Address:
        assert self.node_base is not None
        return self.node_base + n

    def node_hostname(self, n: int) -> str:
        return self.node_name.format(n=n)

    def node_of_ip(self, ip: ipaddress.IPv4Address) -> int | None:
        if self.node_base is None:
            return None
        n = int(ip) - int(self.node_base)
        return n if 0 <= n <= self.node_count else None

    def node_of_name(self, name: str) -> int | None:
        if self.node_base is None:
            return None
        pat = re.escape(self.node_name).replace(r"\{n\}", r"([0-9]+)")
        pat = re.sub(r"\\\{n:0?(\d+)d\\\}", r"([0-9]+)", pat)
        m = re.fullmatch(pat, name, re.I)
        if not m:
            return None
        n = int(m.group(1))
        return n if 0 <= n <= self.node_count and self.node_hostname(n) == name else None

    def ipxe_text(self, http_base: str) -> bytes:
        """The generated iPXE script: kernel and initrd over HTTP (TFTP only for iPXE)."""
        base = http_base.rstrip("/")
        lines = ["#!ipxe", "# generated by beo boot: TFTP loaded iPXE, HTTP brings the rest"]
        lines.append(f"kernel {base}/{self.kernel.lstrip('/')} {self.cmdline}".rstrip())
        if self.initrd:
            lines.append(f"initrd {base}/{self.initrd.lstrip('/')}")
        lines.append("boot")
        return ("\n".join(lines) + "\n").encode()

    @property
    def pool_size(self) -> int:
        return 0 if self.pool is None else int(self.pool[1]) - int(self.pool[0]) + 1

    @property
    def broadcast(self) -> ipaddress.IPv4Address:
        return self.subnet.broadcast_address


def _ip(table: dict, key: str, where: str) -> ipaddress.IPv4Address:
    value = table[key]
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        raise BootConfigError(f"bad {where}.{key} {value!r}: an IPv4 address") from None


def _int(table: dict, key: str, where: str, lo: int, hi: int, default: int) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BootConfigError(f"bad {where}.{key} {value!r}: an integer {lo}-{hi}")
    return value


def _float(table: dict, key: str, where: str, lo: float, hi: float, default: float) -> float:
    value = table.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise BootConfigError(f"bad {where}.{key} {value!r}: a number {lo}-{hi}")
    return float(value)


def _str(table: dict, key: str, where: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise BootConfigError(f"bad {where}.{key} {value!r}: a string")
    return value


def _known(table: dict, where: str, keys: set[str]) -> None:
    for k in table:
        if k not in keys:
            raise BootConfigError(f"unknown key {where}.{k} (known: {', '.join(sorted(keys))})")


def parse(doc: dict[str, Any], base_dir: Path | None = None) -> BootConfig:
    """Check a decoded TOML document; relative paths are taken from ``base_dir``."""
    _known(doc, "config", {"server", "network", "nodes", "hosts", "boot", "tftp", "nettee",
                      "provision"})  # fmt: skip
    base_dir = base_dir or Path.cwd()
    srv, net, nodes = doc.get("server", {}), doc.get("network", {}), doc.get("nodes", {})
    boot, tftp, nt = doc.get("boot", {}), doc.get("tftp", {}), doc.get("nettee", {})
    _known(srv, "server", {"address", "root", "lease_file", "control", "http_port", "http_url",
                           "metrics_port"})  # fmt: skip
    _known(net, "network", {"subnet", "router", "dns", "domain", "lease_time",
                            "temporary_lease_time", "pool"})  # fmt: skip
    _known(nodes, "nodes", {"base", "count", "name", "admit", "macs"})
    _known(boot, "boot", {"bios", "uefi", "arm64", "ipxe_script", "kernel", "initrd", "cmdline"})
    _known(tftp, "tftp", {"bandwidth", "max_blksize", "max_windowsize", "timeout", "retries",
                          "defer_max", "fair"})  # fmt: skip
    _known(nt, "nettee", {"order", "fanout", "port", "join_wait", "failover", "parent_wait"})
    kw = _server_and_network(srv, net, base_dir)
    kw.update(_nodes(nodes, kw))
    kw["hosts"] = _hosts(doc.get("hosts", []))
    kw.update(_boot(boot))
    kw.update(_tftp(tftp))
    if nt:
        kw["nettee"] = _nettee(nt)
    if "provision" in doc:
        kw["provision"] = _provision(doc["provision"], kw["nettee"] if nt else None, base_dir)
    return BootConfig(**kw)


def _server_and_network(srv: dict, net: dict, base_dir: Path) -> dict[str, Any]:
    """[server] and [network]: the keyword arguments of :class:`BootConfig` they give."""
    for key in ("address", "root"):
        if key not in srv:
            raise BootConfigError(f"missing server.{key}")
    if "subnet" not in net:
        raise BootConfigError("missing network.subnet")
    try:
        subnet = ipaddress.IPv4Network(str(net["subnet"]), strict=False)
    except ValueError:
        raise BootConfigError(f"bad network.subnet {net['subnet']!r}: e.g. 10.0.0.0/16") from None
    server = _ip(srv, "address", "server")

    def path(table: dict, key: str, where: str) -> Path | None:
        if key not in table or table[key] == "":
            return None
        return base_dir / _str(table, key, where, "")

    kw: dict[str, Any] = {
        "server": server,
        "root": path(srv, "root", "server"),
        "subnet": subnet,
        "lease_file": path(srv, "lease_file", "server"),
        "control": path(srv, "control", "server"),
        "http_port": _int(srv, "http_port", "server", 0, 65535, 0),
        "http_url": _str(srv, "http_url", "server", ""),
        "metrics_port": _int(srv, "metrics_port", "server", 0, 65535, 0),
        "domain": _str(net, "domain", "network", "cluster"),
        "lease_time": _int(net, "lease_time", "network", 60, 10**7, 3600),
        "temporary_lease_time": _int(net, "temporary_lease_time", "network", 10, 10**7, 30),
    }
    assert kw["root"] is not None
    if "router" in net:
        kw["router"] = _ip(net, "router", "network")
    dns = net.get("dns", [str(server)])
    if not isinstance(dns, list):
        raise BootConfigError(f"bad network.dns {dns!r}: a list of addresses")
    kw["dns"] = tuple(_ip({"dns": d}, "dns", "network") for d in dns)
    if "pool" in net:
        text = _str(net, "pool", "network", "")
        lo_hi = text.split("-")
        try:
            lo, hi = (ipaddress.IPv4Address(x.strip()) for x in lo_hi)
        except ValueError:
            raise BootConfigError(f"bad network.pool {text!r}: e.g. 10.0.9.0-10.0.9.255") from None
        if hi < lo or lo not in subnet or hi not in subnet:
            raise BootConfigError(f"bad network.pool {text!r}: a range inside {subnet}")
        kw["pool"] = (lo, hi)
    return kw


def _nodes(nodes: dict, kw: dict[str, Any]) -> dict[str, Any]:
    """[nodes], checked against the subnet and pool already in ``kw``."""
    out: dict[str, Any] = {}
    subnet = kw["subnet"]
    if "base" in nodes:
        base = _ip(nodes, "base", "nodes")
        count = _int(nodes, "count", "nodes", 0, 65000, 0)
        if base not in subnet or base + count not in subnet:
            raise BootConfigError(f"bad nodes.base {str(base)!r}: nodes 0-{count} leave {subnet}")
        out.update(node_base=base, node_count=count)
        pool = kw.get("pool")
        if pool and not (int(pool[1]) < int(base) or int(pool[0]) > int(base) + count):
            raise BootConfigError(f"network.pool overlaps the node addresses {base}+0..{count}")
    name = _str(nodes, "name", "nodes", "node{n}")
    try:
        sample = name.format(n=7)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError):
        raise BootConfigError(
            f"bad nodes.name {name!r}: a pattern with {{n}}, e.g. node{{n:03d}}"
        ) from None
    if "{n" not in name or not NAME_RE.match(sample):
        raise BootConfigError(f"bad nodes.name {name!r}: a pattern with {{n}}, e.g. node{{n:03d}}")
    out["node_name"] = name
    admit = _str(nodes, "admit", "nodes", "manual")
    if admit not in ("manual", "auto"):
        raise BootConfigError(f"bad nodes.admit {admit!r}: manual or auto")
    out["admit"] = admit
    macs = nodes.get("macs", {})
    if not isinstance(macs, dict):
        raise BootConfigError("bad nodes.macs: a table MAC = node number")
    node_macs: dict[str, int] = {}
    numbers: set[int] = set()
    for mac, n in macs.items():
        m = normalize_mac(mac)
        n = _int({mac: n}, mac, "nodes.macs", 0, out.get("node_count", 0), 0)
        if n in numbers:
            raise BootConfigError(f"bad nodes.macs.{mac}: node {n} given twice")
        numbers.add(n)
        node_macs[m] = n
    if node_macs and "node_base" not in out:
        raise BootConfigError("nodes.macs needs nodes.base")
    out["node_macs"] = node_macs
    return out


def _hosts(hosts: Any) -> tuple[Host, ...]:
    """[[hosts]]: fixed addresses and names."""
    if not isinstance(hosts, list):
        raise BootConfigError("bad hosts: an array of tables [[hosts]]")
    hs = []
    for i, h in enumerate(hosts):
        where = f"hosts[{i}]"
        if not isinstance(h, dict):
            raise BootConfigError(f"bad {where}: a table")
        _known(h, where, {"mac", "ip", "name"})
        for key in ("mac", "ip", "name"):
            if key not in h:
                raise BootConfigError(f"missing {where}.{key}")
        hname = _str(h, "name", where, "")
        if not NAME_RE.match(hname):
            raise BootConfigError(f"bad {where}.name {hname!r}")
        hs.append(Host(normalize_mac(_str(h, "mac", where, "")), _ip(h, "ip", where), hname))
    return tuple(hs)


def _boot(boot: dict) -> dict[str, Any]:
    """[boot]: boot file names (at most 127 bytes: the BOOTP file field), kernel line."""
    out: dict[str, Any] = {}
    for key, attr in (("bios", "boot_bios"), ("uefi", "boot_uefi"), ("arm64", "boot_arm64"),
                      ("ipxe_script", "ipxe_script")):  # fmt: skip
        value = _str(boot, key, "boot", BootConfig.__dataclass_fields__[attr].default)  # type: ignore[arg-type]
        if len(value.encode()) > 127:
            raise BootConfigError(f"bad boot.{key} {value!r}: at most 127 bytes")
        out[attr] = value
    for key in ("kernel", "initrd", "cmdline"):
        out[key] = _str(boot, key, "boot", "")
    for key in ("bios", "uefi", "arm64", "ipxe_script", "kernel", "initrd", "cmdline"):
        value = _str(boot, key, "boot", "")
        if _CONTROL_RE.search(value):  # (a line break would add lines to the iPXE script)
            raise BootConfigError(f"bad boot.{key} {value!r}: control characters")
    return out


def _tftp(tftp: dict) -> dict[str, Any]:
    """[tftp]: the cap, option limits, timers and fairness."""
    out = {
        "bandwidth_bps": parse_rate(tftp.get("bandwidth", 0)),
        "max_blksize": _int(tftp, "max_blksize", "tftp", 512, 65464, 1468),
        "max_windowsize": _int(tftp, "max_windowsize", "tftp", 1, 256, 64),
        "tftp_timeout": _float(tftp, "timeout", "tftp", 0.05, 255, 1.0),
        "tftp_retries": _int(tftp, "retries", "tftp", 1, 20, 5),
        "defer_max": _float(tftp, "defer_max", "tftp", 0, 10, 1.0),
    }
    fair_ = tftp.get("fair", True)
    if not isinstance(fair_, bool):
        raise BootConfigError(f"bad tftp.fair {fair_!r}: true or false")
    out["fair"] = fair_
    return out


def _nettee(nt: dict) -> Nettee:
    """[nettee]: the topology handed to the nodes."""
    order = nt.get("order", "")
    if not isinstance(order, str) or not order:
        raise BootConfigError(f"bad nettee.order {order!r}: a node set, e.g. node[1-100]")
    from beokit.hostlist import expand

    if _nodeset_bound(order) > MAX_ORDER:
        raise BootConfigError(f"bad nettee.order {order!r}: more than {MAX_ORDER} names")
    names: list[str] = []
    for piece in _top_level(order):  # each piece in turn: the first name is the root
        names.extend(expand(piece))
    if len(set(names)) != len(names):
        raise BootConfigError(f"bad nettee.order {order!r}: a name appears twice")
    return Nettee(
        order=tuple(names),
        fanout=_int(nt, "fanout", "nettee", 1, 64, 1),
        port=_int(nt, "port", "nettee", 1, 65533, 7000),  # PORT, PORT+1 and reports at PORT+2
        join_wait=_float(nt, "join_wait", "nettee", 0.5, 3600, 10.0),
        failover=_int(nt, "failover", "nettee", 1, 16, 3),
        parent_wait=_float(nt, "parent_wait", "nettee", 0, 86400, 600.0),
    )


_TARGET_RE = re.compile(r"^(dir:)?/[^\x00-\x1f\x7f]*$")


def _provision(pv: Any, nt: Nettee | None, base_dir: Path) -> Provision:
    """[provision]: checked in full before anything starts (one line naming the key)."""
    if not isinstance(pv, dict):
        raise BootConfigError(f"bad provision {pv!r}: a table")
    _known(pv, "provision", {"image", "target", "start_after", "start_wait", "report_port",
                             "follow_up"})  # fmt: skip
    if nt is None:
        raise BootConfigError("bad provision: needs a [nettee] section (order = the server, "
                              "then the nodes)")  # fmt: skip
    image = _str(pv, "image", "provision", "")
    path = (base_dir / image) if image else None
    if path is not None and not path.is_file():
        raise BootConfigError(f"bad provision.image {image!r}: no such file")
    target = _str(pv, "target", "provision", "")
    if not _TARGET_RE.match(target) or target in ("/", "dir:"):
        raise BootConfigError(f"bad provision.target {target!r}: an absolute file or device "
                              "path, or dir:/PATH (a tar unpacked there)")  # fmt: skip
    receivers = len(nt.order) - 1
    follow = pv.get("follow_up", True)
    if not isinstance(follow, bool):
        raise BootConfigError(f"bad provision.follow_up {follow!r}: true or false")
    return Provision(
        image=path,
        target=target,
        start_after=_int(pv, "start_after", "provision", 0, max(receivers, 0), 0),
        start_wait=_float(pv, "start_wait", "provision", 0, 86400, 120.0),
        report_port=_int(pv, "report_port", "provision", 0, 65535, 0),
        follow_up=follow,
    )


def _top_level(pattern: str) -> list[str]:
    """``boot,node[1-3]`` -> ``["boot", "node[1-3]"]`` (commas inside brackets kept)."""
    out, depth, cur = [], 0, ""
    for ch in pattern:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in [*out, cur] if p.strip()]


def _nodeset_bound(pattern: str) -> int:
    """An upper bound of the names a NodeSet pattern expands to, from its text alone
    (expanding ``node[1-99999999]`` would take minutes): the product, over its bracket
    groups, of the numbers each names."""
    total = 1
    for group in re.findall(r"\[([^\]]*)\]", pattern):
        n = 0
        for part in group.split(","):
            lo, _, hi = (x.strip()[:12] for x in part.split("/")[0].partition("-"))
            if lo.isdigit() and hi.isdigit():
                n += max(int(hi) - int(lo), 0) + 1
            else:
                n += 1
        total *= max(n, 1)
        if total > MAX_ORDER:
            return total
    return total


def load(path: str | Path) -> BootConfig:
    """Read and check a TOML config file."""
    p = Path(path)
    try:
        text = p.read_bytes().decode()
    except OSError as e:
        raise BootConfigError(f"cannot read config {str(p)!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise BootConfigError(f"config {str(p)!r} is not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BootConfigError(f"bad TOML in {str(p)!r}: {e}") from None
    return parse(doc, p.resolve().parent)
