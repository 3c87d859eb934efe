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
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

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



class DhcpError(WireError, ValueError):
    """A datagram that is not a well-formed DHCP/BOOTP message (a ``WireError``; still a
    ``ValueError`` for older callers)."""


def _ip(b: bytes) -> IPv4:
    return IPv4(b)


@dataclass
class Packet:
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

    # -- accessors -------------------------------------------------------
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
            return self.mac
        cid = self.options.get(OPT_CLIENT_ID, b"")
        if cid:
            return "id:" + cid.hex()
        return "hw:" + self.chaddr[: min(self.hlen, 16)].hex()

    def opt_ip(self, code: int) -> IPv4 | None:
        v = self.options.get(code)
        return IPv4(v) if v is not None and len(v) == 4 else None

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

    # -- encoding --------------------------------------------------------
    def encode(self, min_size: int = BOOTP_MIN_REPLY) -> bytes:
        head = HEADER.pack(self.op, self.htype, self.hlen, self.hops, self.xid, self.secs,
                           self.flags, self.ciaddr.packed, self.yiaddr.packed,
                           self.siaddr.packed, self.giaddr.packed, self.chaddr[:16].ljust(16, b"\0"),
                           self.sname[:63], self.file[:127])  # fmt: skip
        opts = bytearray(MAGIC)
        # message type first (some ROMs insist), then the rest in code order
        for code in sorted(self.options, key=lambda c: (c != OPT_MSG_TYPE, c)):
            value = self.options[code]
            for i in range(0, max(len(value), 1), 255):  # RFC 3396 long options
                chunk = value[i : i + 255]
                opts += bytes((code, len(chunk))) + chunk
        opts.append(END)
        data = head + bytes(opts)
        return data.ljust(min_size, b"\0")


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


# ---------------------------------------------------------------------------
# Boot file selection
# ---------------------------------------------------------------------------


def boot_file(cfg: BootConfig, pkt: Packet, name: str = "") -> str:
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


@dataclass(frozen=True)
class Reply:
    data: bytes
    dest: tuple[str, int]  # address ("<broadcast>" = the subnet broadcast) and port
    delay: float
    summary: str


class DhcpLogic:
    """Decides the reply to each request, against a :class:`LeaseDB`."""

    def __init__(self, cfg: BootConfig, db: LeaseDB, *, proxy: bool = False,
                 client_port: int = 68, server_port: int = 67) -> None:  # fmt: skip
        self.cfg = cfg
        self.db = db
        self.proxy = proxy
        self.client_port = client_port
        self.server_port = server_port
        self.counts: dict[str, int] = {}
        self.notice: Callable[[str], None] | None = None  # the server's warning (rate-limited)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # -- building --------------------------------------------------------
    def _base(self, req: Packet, mtype: int) -> Packet:
        cfg = self.cfg
        rep = Packet(op=BOOTREPLY, htype=req.htype, hlen=req.hlen, xid=req.xid, flags=req.flags,
                     ciaddr=req.ciaddr, giaddr=req.giaddr, chaddr=req.chaddr)  # fmt: skip
        rep.options[OPT_MSG_TYPE] = bytes([mtype])
        rep.options[OPT_SERVER_ID] = cfg.server.packed
        if OPT_RELAY in req.options:  # RFC 3046: echo the relay agent information
            rep.options[OPT_RELAY] = req.options[OPT_RELAY]
        return rep

    def _boot_info(self, req: Packet, rep: Packet, name: str) -> None:
        cfg = self.cfg
        if not (req.is_pxe or req.is_ipxe):
            if name and cfg.nettee.order and name in cfg.nettee.position:
                rep.options[OPT_NETTEE] = nettee_path(name).encode()
            return
        f = boot_file(cfg, req, name)
        rep.siaddr = cfg.server
        rep.file = f.encode()[:127]
        rep.options[OPT_BOOTFILE] = f.encode()
        rep.options[OPT_TFTP_SERVER] = str(cfg.server).encode()
        rep.options[OPT_VENDOR_CLASS] = b"HTTPClient" if req.is_http_client else b"PXEClient"
        if req.is_pxe and not req.is_http_client:
            # PXE_DISCOVERY_CONTROL = 8: use the boot file in this reply, no menu/discovery
            rep.options[OPT_VENDOR] = bytes((6, 1, 8, END))
        if OPT_UUID in req.options:
            rep.options[OPT_UUID] = req.options[OPT_UUID]
        if name and cfg.nettee.order and name in cfg.nettee.position:
            rep.options[OPT_NETTEE] = nettee_path(name).encode()

    def _address_options(self, rep: Packet, b: Binding) -> None:
        cfg = self.cfg
        rep.yiaddr = b.ip
        rep.options[OPT_LEASE] = struct.pack("!I", b.lease_time)
        rep.options[OPT_T1] = struct.pack("!I", b.lease_time // 2)
        rep.options[OPT_T2] = struct.pack("!I", b.lease_time * 7 // 8)
        rep.options[OPT_SUBNET] = cfg.subnet.netmask.packed
        rep.options[OPT_BROADCAST] = cfg.broadcast.packed
        if cfg.router is not None:
            rep.options[OPT_ROUTER] = cfg.router.packed
        if cfg.dns:
            rep.options[OPT_DNS] = b"".join(d.packed for d in cfg.dns)
        if cfg.domain:
            rep.options[OPT_DOMAIN] = cfg.domain.encode()
        if b.name:
            rep.options[OPT_HOSTNAME] = b.name.encode()

    def _dest(self, req: Packet, rep: Packet, mtype: int, src: tuple[str, int]) -> tuple[str, int]:
        """RFC 2131 section 4.1, without ARP injection (no raw sockets): broadcast instead.
        A ``ciaddr`` outside the subnet (a forged one: a client on this segment has an
        address on it) gets the broadcast too, so that no reply is reflected off the net."""
        if req.giaddr != ZERO:
            return (str(req.giaddr), self.server_port)
        if mtype == NAK:
            return ("<broadcast>", self.client_port)
        if req.ciaddr != ZERO and req.ciaddr in self.cfg.subnet:
            return (str(req.ciaddr), self.client_port)
        return ("<broadcast>", self.client_port)

    def _reply(self, req: Packet, rep: Packet, src: tuple[str, int], delay: float,
               what: str) -> Reply:  # fmt: skip
        mtype = rep.msg_type or 0
        self._count(MSG_NAMES.get(mtype, "?"))
        size = BOOTP_MIN_REPLY
        return Reply(rep.encode(size), self._dest(req, rep, mtype, src), delay,
                     f"{MSG_NAMES.get(mtype)} {what} to {req.client_key}")  # fmt: skip

    def nak(self, req: Packet, src: tuple[str, int], why: str) -> Reply:
        rep = self._base(req, NAK)
        rep.options[OPT_MESSAGE] = why.encode()[:255]
        return self._reply(req, rep, src, 0.0, f"({why})")

    # -- deciding --------------------------------------------------------
    def handle(self, data: bytes, src: tuple[str, int], now: float, *,
               defer: float = 0.0, port: int = 67) -> Reply | None:  # fmt: skip
        """One datagram in, at most one reply out. ``defer`` delays offers to newcomers."""
        try:
            req = parse(data)
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
        cid = req.options.get(OPT_CLIENT_ID, b"").hex()
        if mtype == DISCOVER:
            b = self.db.binding(key, now, reserve=True)
            if b is None:
                self._count("pool-exhausted")
                return None
            rep = self._base(req, OFFER)
            self._address_options(rep, b)
            self._boot_info(req, rep, b.name)
            newcomer = key not in self.db.leases and b.kind != "host"
            return self._reply(req, rep, src, defer if newcomer else 0.0, str(b.ip))
        if mtype == REQUEST:
            sid = req.opt_ip(OPT_SERVER_ID)
            if sid is not None and sid != self.cfg.server:
                self.db.forget_offer(key)  # the client chose another server
                self._count("other-server")
                return None
            wanted = req.opt_ip(OPT_REQUESTED_IP) or (req.ciaddr if req.ciaddr != ZERO else None)
            b = self.db.binding(key, now)
            if wanted is None:
                return self.nak(req, src, "no address requested")
            if b is None:
                return self.nak(req, src, "no address available")
            if wanted != b.ip:
                if sid is None and wanted not in self.cfg.subnet:
                    return self.nak(req, src, f"{wanted} is not on this network")
                return self.nak(req, src, f"{wanted} is not yours (yours: {b.ip})")
            self.db.commit(key, b, now, cid)
            rep = self._base(req, ACK)
            self._address_options(rep, b)
            self._boot_info(req, rep, b.name)
            return self._reply(req, rep, src, 0.0, str(b.ip))
        if mtype == DECLINE:
            self._decline(req, key, now)
            return None
        if mtype == RELEASE:
            self.db.release(key, str(req.ciaddr))
            self._count("RELEASE")
            return None
        if mtype == INFORM:
            rep = self._base(req, ACK)
            b = self.db.binding(key, now)
            name = b.name if b is not None else ""
            if b is not None:
                self._address_options(rep, b)
                rep.yiaddr = ZERO
                for code in (OPT_LEASE, OPT_T1, OPT_T2):
                    rep.options.pop(code, None)
            self._boot_info(req, rep, name)
            return self._reply(req, rep, src, 0.0, "inform")
        self._count("ignored")
        return None

    def _decline(self, req: Packet, key: str, now: float) -> None:
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

    def _proxy(self, req: Packet, src: tuple[str, int], mtype: int | None,
               port: int) -> Reply | None:  # fmt: skip
        """proxyDHCP: boot information only, and only to PXE clients."""
        if not req.is_pxe:
            self._count("proxy-ignored")
            return None
        b = self.db.binding(req.client_key, 0.0) if self.db.cfg.node_base else None
        name = b.name if b is not None and b.kind != "temporary" else ""
        if port == PXE_PORT:
            if mtype not in (REQUEST, INFORM):
                return None
            rep = self._base(req, ACK)
            self._boot_info(req, rep, name)
            self._count("proxy-ACK")
            return Reply(rep.encode(), src, 0.0, f"proxy ACK (4011) to {req.client_key}")
        if mtype == DISCOVER:
            rep = self._base(req, OFFER)
        elif mtype == REQUEST and req.opt_ip(OPT_SERVER_ID) in (None, self.cfg.server):
            rep = self._base(req, ACK)
        else:
            return None
        rep.yiaddr = ZERO
        self._boot_info(req, rep, name)
        return self._reply(req, rep, src, 0.0, "proxy")
