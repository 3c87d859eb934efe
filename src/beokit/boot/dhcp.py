"""DHCP wire format (RFC 2131/2132, PXE options of RFC 4578) and the reply logic.

Sans-IO: :func:`parse` turns a datagram into a :class:`Packet` (or raises
:class:`DhcpError`, and nothing else), :meth:`Packet.encode` turns it back,
and :class:`DhcpLogic` decides, for one received packet, which reply to send
where (and after what delay). The server (``listeners.py``) only moves bytes.

Full mode answers everything (addresses + boot information); proxy mode
(``--proxy``, the PXE specification's proxyDHCP) answers only PXE clients,
with boot information and no address, on port 67 and on the boot-server
port 4011.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from beokit.boot.config import PXE_PORT, BootConfig
from beokit.boot.leases import DECLINE_HOLD, Binding, LeaseDB
from beokit.errors import WireError

IPv4 = ipaddress.IPv4Address
ZERO = IPv4(0)
MAGIC = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
MIN_SIZE = HEADER.size + 4  # 240
BOOTP_MIN_REPLY = 300

BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MSG_NAMES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK",
             7: "RELEASE", 8: "INFORM"}  # fmt: skip

# option codes
PAD, END = 0, 255
OPT_SUBNET, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN, OPT_BROADCAST = 1, 3, 6, 12, 15, 28
OPT_VENDOR, OPT_REQUESTED_IP, OPT_LEASE, OPT_OVERLOAD, OPT_MSG_TYPE = 43, 50, 51, 52, 53
OPT_SERVER_ID, OPT_PARAMS, OPT_MESSAGE, OPT_MAX_SIZE, OPT_T1, OPT_T2 = 54, 55, 56, 57, 58, 59
OPT_VENDOR_CLASS, OPT_CLIENT_ID, OPT_TFTP_SERVER, OPT_BOOTFILE = 60, 61, 66, 67
OPT_USER_CLASS, OPT_ARCH, OPT_NDI, OPT_UUID, OPT_RELAY = 77, 93, 94, 97, 82
OPT_NETTEE = 224  # site-specific (RFC 3942): TFTP path of this node's nettee topology

# RFC 4578 / IANA processor architecture types (option 93)
ARCH_BIOS, ARCH_EFI_IA32, ARCH_EFI_BC, ARCH_EFI_X64 = 0, 6, 7, 9
ARCH_EFI_ARM64, ARCH_HTTP_X64, ARCH_HTTP_ARM64 = 11, 16, 19
ARCH_NAMES = {0: "bios", 6: "uefi-ia32", 7: "uefi-x64", 9: "uefi-x64", 10: "uefi-arm32",
              11: "uefi-arm64", 16: "http-x64", 19: "http-arm64"}  # fmt: skip
ZERO4 = bytes(4)


class DhcpError(WireError, ValueError):
    """A datagram that is not a well-formed DHCP/BOOTP message (a ``WireError``; still a
    ``ValueError`` for older callers)."""


def _ip(b: bytes) -> IPv4:
    return ZERO if b == ZERO4 else IPv4(b)


class _Accessors:
    """What a request says, from its options and hardware fields (shared by
    :class:`Packet` and the server's lean :class:`DhcpRequest`)."""

    htype: int
    hlen: int
    chaddr: bytes
    options: dict[int, bytes]

    @property
    def msg_type(self) -> int | None:
        v = self.options.get(OPT_MSG_TYPE)
        return v[0] if v and len(v) == 1 else None

    @property
    def mac(self) -> str:
        return self.chaddr[: min(self.hlen, 16)].hex(":")

    @property
    def client_key(self) -> str:
        """Identity of the client: its MAC, or its client-id without a usable MAC."""
        if self.htype == 1 and self.hlen == 6 and any(self.chaddr[:6]):
            return self.chaddr[:6].hex(":")
        cid = self.options.get(OPT_CLIENT_ID, b"")
        if cid:
            return "id:" + cid.hex()
        return "hw:" + self.chaddr[: min(self.hlen, 16)].hex()

    def opt_ip(self, code: int) -> IPv4 | None:
        v = self.options.get(code)
        return _ip(v) if v is not None and len(v) == 4 else None

    @property
    def vendor_class(self) -> bytes:
        return self.options.get(OPT_VENDOR_CLASS, b"")

    @property
    def is_pxe(self) -> bool:
        return self.vendor_class.startswith((b"PXEClient", b"HTTPClient"))

    @property
    def is_http_client(self) -> bool:
        return self.vendor_class.startswith(b"HTTPClient")

    @property
    def user_classes(self) -> list[bytes]:
        """Option 77: RFC 3004 length-prefixed list, or one plain string (iPXE's)."""
        v = self.options.get(OPT_USER_CLASS, b"")
        out, i = [], 0
        while i < len(v):
            n = v[i]
            if n == 0 or i + 1 + n > len(v):
                return [v]
            out.append(v[i + 1 : i + 1 + n])
            i += 1 + n
        return out

    @property
    def is_ipxe(self) -> bool:
        if OPT_USER_CLASS not in self.options:
            return False
        return (
            any(uc == b"iPXE" for uc in self.user_classes)
            or self.options.get(OPT_USER_CLASS) == b"iPXE"
        )

    @property
    def arch(self) -> int | None:
        v = self.options.get(OPT_ARCH)
        if v and len(v) >= 2:
            return struct.unpack("!H", v[:2])[0]
        vc = self.vendor_class
        if vc.startswith((b"PXEClient:Arch:", b"HTTPClient:Arch:")):
            try:
                return int(vc.split(b":")[2][:5])
            except (ValueError, IndexError):
                return None
        return None


@dataclass
class Packet(_Accessors):
    op: int = BOOTREPLY
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4 = ZERO
    yiaddr: IPv4 = ZERO
    siaddr: IPv4 = ZERO
    giaddr: IPv4 = ZERO
    chaddr: bytes = b"\x00" * 16
    sname: bytes = b""
    file: bytes = b""
    options: dict[int, bytes] = field(default_factory=dict)

    # -- encoding --------------------------------------------------------
    def encode(self, min_size: int = BOOTP_MIN_REPLY) -> bytes:
        head = HEADER.pack(self.op, self.htype, self.hlen, self.hops, self.xid, self.secs,
                           self.flags, self.ciaddr.packed, self.yiaddr.packed,
                           self.siaddr.packed, self.giaddr.packed, self.chaddr[:16].ljust(16, b"\0"),
                           self.sname[:63], self.file[:127])  # fmt: skip
        # message type first (some ROMs insist), then the rest in code order
        opts = [encode_option(c, self.options[c])
                for c in sorted(self.options, key=lambda c: (c != OPT_MSG_TYPE, c))]  # fmt: skip
        return b"".join((head, MAGIC, *opts, b"\xff")).ljust(min_size, b"\0")


def encode_option(code: int, value: bytes) -> bytes:
    """One option as it goes on the wire: code, length, value; a value over 255 bytes
    as several options of the same code (RFC 3396)."""
    if len(value) <= 255:
        return bytes((code, len(value))) + value
    return b"".join(bytes((code, len(value[i : i + 255]))) + value[i : i + 255]
                    for i in range(0, len(value), 255))  # fmt: skip


def _parse_options(buf: bytes, into: dict[int, bytes]) -> None:
    i, n = 0, len(buf)
    while i < n:
        code = buf[i]
        if code == PAD:
            i += 1
            continue
        if code == END:
            return
        if i + 1 >= n:
            raise DhcpError(f"option {code} truncated")
        length = buf[i + 1]
        if i + 2 + length > n:
            raise DhcpError(f"option {code} length {length} runs past the end")
        into[code] = into.get(code, b"") + buf[i + 2 : i + 2 + length]  # RFC 3396
        i += 2 + length


def parse(data: bytes) -> Packet:
    """Decode a DHCP (or plain BOOTP) datagram; :class:`DhcpError` if malformed."""
    if len(data) < HEADER.size:
        raise DhcpError(f"datagram of {len(data)} bytes is shorter than a BOOTP header")
    (op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, ch, sname, file) = HEADER.unpack_from(
        data
    )
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DhcpError(f"bad op {op}")
    if hlen > 16:
        raise DhcpError(f"bad hlen {hlen}")
    options: dict[int, bytes] = {}
    if len(data) >= MIN_SIZE and data[HEADER.size : MIN_SIZE] == MAGIC:
        _parse_options(data[MIN_SIZE:], options)
        overload = options.get(OPT_OVERLOAD, b"\0")[:1]
        if overload and overload[0] & 1:
            _parse_options(file, options)
            file = b""
        if overload and overload[0] & 2:
            _parse_options(sname, options)
            sname = b""
    return Packet(op, htype, hlen, hops, xid, secs, flags, _ip(ci), _ip(yi), _ip(si), _ip(gi),
                  ch, sname.split(b"\0", 1)[0], file.split(b"\0", 1)[0], options)  # fmt: skip


class DhcpRequest(_Accessors):
    """A request as the server reads it (:func:`parse_request`): the datagram, its
    options, and the header fields the replies copy, kept as bytes (no address objects:
    this is built for every datagram)."""

    __slots__ = ("data", "op", "htype", "hlen", "chaddr", "options", "ci", "gi")

    def __init__(self, data: bytes, options: dict[int, bytes]) -> None:
        self.data = data
        self.op, self.htype, self.hlen = data[0], data[1], data[2]
        self.ci, self.gi = data[12:16], data[24:28]
        self.chaddr = data[28:44]
        self.options = options


def parse_request(data: bytes) -> DhcpRequest:
    """:func:`parse` for the server: the same checks and options, fewer objects."""
    if len(data) < HEADER.size:
        raise DhcpError(f"datagram of {len(data)} bytes is shorter than a BOOTP header")
    if data[0] not in (BOOTREQUEST, BOOTREPLY):
        raise DhcpError(f"bad op {data[0]}")
    if data[2] > 16:
        raise DhcpError(f"bad hlen {data[2]}")
    options: dict[int, bytes] = {}
    if data[236:240] == MAGIC:
        _parse_options(data[240:], options)
        overload = options.get(OPT_OVERLOAD, b"\0")[:1]
        if overload and overload[0] & 1:
            _parse_options(data[108:236], options)
        if overload and overload[0] & 2:
            _parse_options(data[44:108], options)
    return DhcpRequest(data, options)


# ---------------------------------------------------------------------------
# Boot file selection
# ---------------------------------------------------------------------------


def boot_file(cfg: BootConfig, pkt: _Accessors, name: str = "") -> str:
    """The file (or URL) a PXE/HTTP/iPXE client should load next."""
    if pkt.is_ipxe and cfg.ipxe_script:
        if cfg.http_url:
            return cfg.http_url.rstrip("/") + "/" + cfg.ipxe_script.lstrip("/")
        return cfg.ipxe_script
    arch = pkt.arch
    if pkt.is_http_client and cfg.http_url:
        f = cfg.boot_arm64 if arch == ARCH_HTTP_ARM64 else cfg.boot_uefi
        return cfg.http_url.rstrip("/") + "/" + f.lstrip("/")
    if arch in (ARCH_EFI_BC, ARCH_EFI_X64, ARCH_HTTP_X64):
        return cfg.boot_uefi
    if arch in (ARCH_EFI_ARM64, ARCH_HTTP_ARM64):
        return cfg.boot_arm64
    return cfg.boot_bios


def nettee_path(name: str) -> str:
    """TFTP path of a node's nettee topology file (served from memory)."""
    return f"nettee/{name}.conf"


# ---------------------------------------------------------------------------
# Reply logic
# ---------------------------------------------------------------------------


class Reply(NamedTuple):
    data: bytes
    dest: tuple[str, int]  # address ("<broadcast>" = the subnet broadcast) and port
    delay: float
    about: tuple = ()  # (message name, what, request): the summary, made only if logged

    @property
    def summary(self) -> str:
        """E.g. ``OFFER 10.0.1.5 to 52:54:00:12:34:56`` (for the debug log)."""
        name, what, req = self.about
        return f"{name} {what} to {req.client_key}"


_TYPE_OPTION = {t: encode_option(OPT_MSG_TYPE, bytes([t])) for t in MSG_NAMES}
_NO_FILE = bytes(64 + 128)  # empty sname and file fields


class DhcpLogic:
    """Decides the reply to each request, against a :class:`LeaseDB`.

    Replies are built as bytes, field by field, from option encodings computed once
    per config (:meth:`_static`): the server builds thousands a second."""

    def __init__(self, cfg: BootConfig, db: LeaseDB, *, proxy: bool = False,
                 client_port: int = 68, server_port: int = 67) -> None:  # fmt: skip
        self.cfg = cfg
        self.db = db
        self.proxy = proxy
        self.client_port = client_port
        self.server_port = server_port
        self.counts: dict[str, int] = {}
        self.notice: Callable[[str], None] | None = None  # the server's warning (rate-limited)

    @property
    def cfg(self) -> BootConfig:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: BootConfig) -> None:
        """A new config (SIGHUP): the cached option encodings go with the old one."""
        self._cfg = cfg
        self._cache: dict[int, dict[int, bytes]] = {}  # lease time -> address options
        net = cfg.subnet
        self._net, self._mask = int(net.network_address), int(net.netmask)
        self._sid = cfg.server.packed
        self._sid_option = encode_option(OPT_SERVER_ID, self._sid)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # -- building --------------------------------------------------------
    def _static(self, lease_time: int) -> dict[int, bytes]:
        """The encoded options every address reply of this lease time carries."""
        key = lease_time
        opts = self._cache.get(key)
        if opts is None:
            cfg = self.cfg
            raw = {OPT_LEASE: struct.pack("!I", lease_time),
                   OPT_T1: struct.pack("!I", lease_time // 2),
                   OPT_T2: struct.pack("!I", lease_time * 7 // 8),
                   OPT_SUBNET: cfg.subnet.netmask.packed,
                   OPT_BROADCAST: cfg.broadcast.packed}  # fmt: skip
            if cfg.router is not None:
                raw[OPT_ROUTER] = cfg.router.packed
            if cfg.dns:
                raw[OPT_DNS] = b"".join(d.packed for d in cfg.dns)
            if cfg.domain:
                raw[OPT_DOMAIN] = cfg.domain.encode()
            opts = self._cache[key] = {c: encode_option(c, v) for c, v in raw.items()}
        return opts

    def _boot_info(self, req: _Accessors, opts: dict[int, bytes], name: str) -> bytes | None:
        """The boot options for this client into ``opts``; the ``file`` field's value
        (None: not a PXE or iPXE client, no boot server)."""
        cfg = self.cfg
        if name and cfg.nettee.order and name in cfg.nettee.position:
            opts[OPT_NETTEE] = encode_option(OPT_NETTEE, nettee_path(name).encode())
        if not (req.is_pxe or req.is_ipxe):
            return None
        f = boot_file(cfg, req, name).encode()
        opts[OPT_BOOTFILE] = encode_option(OPT_BOOTFILE, f)
        opts[OPT_TFTP_SERVER] = encode_option(OPT_TFTP_SERVER, str(cfg.server).encode())
        opts[OPT_VENDOR_CLASS] = encode_option(OPT_VENDOR_CLASS, b"HTTPClient"
                                               if req.is_http_client else b"PXEClient")  # fmt: skip
        if req.is_pxe and not req.is_http_client:
            # PXE_DISCOVERY_CONTROL = 8: use the boot file in this reply, no menu/discovery
            opts[OPT_VENDOR] = encode_option(OPT_VENDOR, bytes((6, 1, 8, END)))
        if OPT_UUID in req.options:
            opts[OPT_UUID] = encode_option(OPT_UUID, req.options[OPT_UUID])
        return f[:127]

    def _address(self, opts: dict[int, bytes], b: Binding, inform: bool = False) -> None:
        opts.update(self._static(b.lease_time))
        if inform:
            for code in (OPT_LEASE, OPT_T1, OPT_T2):
                del opts[code]
        if b.name:
            opts[OPT_HOSTNAME] = encode_option(OPT_HOSTNAME, b.name.encode())

    def _build(self, req: DhcpRequest, mtype: int, opts: dict[int, bytes], yiaddr: bytes = ZERO4,
               file: bytes | None = None) -> bytes:  # fmt: skip
        """The reply's bytes: the header copied from the request where RFC 2131 says so,
        the message type first, the other options in code order, padded to 300 bytes."""
        d = req.data
        opts[OPT_SERVER_ID] = self._sid_option
        if OPT_RELAY in req.options:  # RFC 3046: echo the relay agent information
            opts[OPT_RELAY] = encode_option(OPT_RELAY, req.options[OPT_RELAY])
        si = ZERO4 if file is None else self._sid  # (siaddr: the boot server)
        tail = _NO_FILE if not file else bytes(64) + file.ljust(128, b"\0")
        parts = [b"\x02", d[1:3], b"\x00", d[4:8], b"\x00\x00", d[10:16], yiaddr, si, d[24:28],
                 req.chaddr, tail, MAGIC, _TYPE_OPTION[mtype]]  # fmt: skip
        parts += [opts[c] for c in sorted(opts)]
        parts.append(b"\xff")
        return b"".join(parts).ljust(BOOTP_MIN_REPLY, b"\0")

    def _dest(self, req: DhcpRequest, mtype: int) -> tuple[str, int]:
        """RFC 2131 section 4.1, without ARP injection (no raw sockets): broadcast instead.
        A ``ciaddr`` outside the subnet (a forged one: a client on this segment has an
        address on it) gets the broadcast too, so that no reply is reflected off the net."""
        if req.gi != ZERO4:
            return (socket.inet_ntoa(req.gi), self.server_port)
        if mtype == NAK or req.ci == ZERO4:
            return ("<broadcast>", self.client_port)
        if int.from_bytes(req.ci, "big") & self._mask == self._net:
            return (socket.inet_ntoa(req.ci), self.client_port)
        return ("<broadcast>", self.client_port)

    def _reply(self, req: DhcpRequest, mtype: int, opts: dict[int, bytes], what: object, *,
               yiaddr: bytes = ZERO4, file: bytes | None = None, delay: float = 0.0,
               dest: tuple[str, int] | None = None) -> Reply:  # fmt: skip
        name = MSG_NAMES[mtype]
        self.counts[name] = self.counts.get(name, 0) + 1
        return Reply(self._build(req, mtype, opts, yiaddr, file), dest or self._dest(req, mtype),
                     delay, (name, what, req))  # fmt: skip

    def nak(self, req: DhcpRequest, why: str) -> Reply:
        opts = {OPT_MESSAGE: encode_option(OPT_MESSAGE, why.encode()[:255])}
        return self._reply(req, NAK, opts, f"({why})")

    # -- deciding --------------------------------------------------------
    def handle(self, data: bytes, src: tuple[str, int], now: float, *,
               defer: float = 0.0, port: int = 67) -> Reply | None:  # fmt: skip
        """One datagram in, at most one reply out. ``defer`` delays offers to newcomers."""
        try:
            req = parse_request(data)
        except DhcpError:
            self._count("malformed")
            return None
        if req.op != BOOTREQUEST or req.hlen == 0 and OPT_CLIENT_ID not in req.options:
            self._count("ignored")
            return None
        mtype = req.msg_type
        if self.proxy or port == PXE_PORT:
            return self._proxy(req, src, mtype, port)
        key = req.client_key
        if mtype == DISCOVER:
            return self._discover(req, key, now, defer)
        if mtype == REQUEST:
            return self._request(req, key, now)
        if mtype == DECLINE:
            self._decline(req, key, now)
            return None
        if mtype == RELEASE:
            self.db.release(key, socket.inet_ntoa(req.ci))
            self._count("RELEASE")
            return None
        if mtype == INFORM:
            opts: dict[int, bytes] = {}
            b = self.db.binding(key, now)
            if b is not None:
                self._address(opts, b, inform=True)
            file = self._boot_info(req, opts, b.name if b is not None else "")
            return self._reply(req, ACK, opts, "inform", file=file)
        self._count("ignored")
        return None

    def _discover(self, req: DhcpRequest, key: str, now: float, defer: float) -> Reply | None:
        b = self.db.binding(key, now, reserve=True)
        if b is None:
            self._count("pool-exhausted")
            return None
        opts: dict[int, bytes] = {}
        self._address(opts, b)
        file = self._boot_info(req, opts, b.name)
        newcomer = key not in self.db.leases and b.kind != "host"
        ip = b.ip.packed
        return self._reply(req, OFFER, opts, b.ip, yiaddr=ip, file=file,
                           delay=defer if newcomer else 0.0)  # fmt: skip

    def _request(self, req: DhcpRequest, key: str, now: float) -> Reply | None:
        sid = req.options.get(OPT_SERVER_ID)
        if sid is not None and len(sid) == 4 and sid != self._sid:
            self.db.forget_offer(key)  # the client chose another server
            self._count("other-server")
            return None
        wanted = req.opt_ip(OPT_REQUESTED_IP) or (_ip(req.ci) if req.ci != ZERO4 else None)
        b = self.db.binding(key, now)
        if wanted is None:
            return self.nak(req, "no address requested")
        if b is None:
            return self.nak(req, "no address available")
        if wanted != b.ip:
            if (sid is None or len(sid) != 4) and wanted not in self.cfg.subnet:
                return self.nak(req, f"{wanted} is not on this network")
            return self.nak(req, f"{wanted} is not yours (yours: {b.ip})")
        self.db.commit(key, b, now, req.options.get(OPT_CLIENT_ID, b"").hex())
        opts: dict[int, bytes] = {}
        self._address(opts, b)
        file = self._boot_info(req, opts, b.name)
        return self._reply(req, ACK, opts, b.ip, yiaddr=b.ip.packed, file=file)

    def _decline(self, req: DhcpRequest, key: str, now: float) -> None:
        """RFC 2131 section 4.3.3, from the client that holds the address only (see
        ``LeaseDB.decline``); one addressed to another server is not ours to take."""
        ip = req.opt_ip(OPT_REQUESTED_IP)
        sid = req.opt_ip(OPT_SERVER_ID)
        if ip is None or (sid is not None and sid != self.cfg.server):
            self._count("DECLINE-ignored")
            return
        done = self.db.decline(key, str(ip), now)
        if done == "ignored":
            self._count("DECLINE-ignored")
            return
        self._count("DECLINE")
        if self.notice is not None:  # RFC 2131: SHOULD notify the administrator
            where = (f"set aside for {DECLINE_HOLD:.0f} s" if done == "declined"
                     else "its fixed address: find the other host")  # fmt: skip
            self.notice(f"DHCPDECLINE: {key} reports {ip} in use by another host ({where})")

    def _proxy(self, req: DhcpRequest, src: tuple[str, int], mtype: int | None,
               port: int) -> Reply | None:  # fmt: skip
        """proxyDHCP: boot information only, and only to PXE clients."""
        if not req.is_pxe:
            self._count("proxy-ignored")
            return None
        b = self.db.binding(req.client_key, 0.0) if self.db.cfg.node_base else None
        name = b.name if b is not None and b.kind != "temporary" else ""
        opts: dict[int, bytes] = {}
        if port == PXE_PORT:
            if mtype not in (REQUEST, INFORM):
                return None
            file = self._boot_info(req, opts, name)
            self._count("proxy-ACK")
            return Reply(self._build(req, ACK, opts, file=file), src, 0.0,
                         ("proxy ACK", "(4011)", req))  # fmt: skip
        if mtype == DISCOVER:
            rtype = OFFER
        elif mtype == REQUEST and req.opt_ip(OPT_SERVER_ID) in (None, self.cfg.server):
            rtype = ACK
        else:
            return None
        file = self._boot_info(req, opts, name)
        return self._reply(req, rtype, opts, "proxy", file=file)
