"""Simulated DHCP clients for tests and benchmarks (acting as a relay agent).

Many clients from one process and one socket: the socket is bound to the
relay address ``giaddr`` on the server's port, every request carries that
``giaddr``, and servers (beo boot, dnsmasq) send their replies there (RFC
2131 section 4.1). This works on loopback, unprivileged, with no broadcast.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from beokit.boot import dhcp, tftp


def mac_of(i: int, prefix: bytes = b"\x52\x54\x01") -> bytes:
    return prefix + i.to_bytes(3, "big")


def request(mtype: int, mac: bytes, xid: int, giaddr: str, *, requested: str | None = None,
            server_id: str | None = None, ciaddr: str = "0.0.0.0",
            extra: dict[int, bytes] | None = None) -> bytes:  # fmt: skip
    p = dhcp.Packet(op=dhcp.BOOTREQUEST, xid=xid, chaddr=mac.ljust(16, b"\0"),
                 giaddr=ipaddress.IPv4Address(giaddr), ciaddr=ipaddress.IPv4Address(ciaddr),
                 hops=1)  # fmt: skip
    p.options[dhcp.OPT_MSG_TYPE] = bytes([mtype])
    p.options[dhcp.OPT_PARAMS] = bytes([1, 3, 6, 12, 15, 28, 51, 54, 66, 67])
    if requested:
        p.options[dhcp.OPT_REQUESTED_IP] = ipaddress.IPv4Address(requested).packed
    if server_id:
        p.options[dhcp.OPT_SERVER_ID] = ipaddress.IPv4Address(server_id).packed
    p.options.update(extra or {})
    return p.encode()


@dataclass
class Result:
    bound: dict[bytes, str] = field(default_factory=dict)  # mac -> address
    names: dict[bytes, str] = field(default_factory=dict)
    files: dict[bytes, str] = field(default_factory=dict)
    elapsed: float = 0.0
    sent: int = 0
    naks: int = 0


def dora(server: tuple[str, int], giaddr: str, n: int, *, timeout: float = 30.0,
         retry: float = 1.0, first: int = 0, extra: dict[int, bytes] | None = None,
         rcvbuf: int = 1 << 22) -> Result:  # fmt: skip
    """``n`` clients do DISCOVER/OFFER/REQUEST/ACK at once; time until all are bound."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((giaddr, server[1]))
    s.setblocking(False)
    res = Result()
    macs = {first + i: mac_of(first + i) for i in range(n)}
    xid_of = {mac: 0x1000_0000 + i for i, mac in macs.items()}
    state: dict[bytes, tuple[str, str | None]] = {m: ("discover", None) for m in macs.values()}
    by_xid = {x: m for m, x in xid_of.items()}
    last_sent: dict[bytes, float] = {}
    t0 = time.monotonic()
    deadline = t0 + timeout

    def send(mac: bytes) -> None:
        st, offered = state[mac]
        if st == "discover":
            pkt = request(dhcp.DISCOVER, mac, xid_of[mac], giaddr, extra=extra)
        else:
            pkt = request(dhcp.REQUEST, mac, xid_of[mac], giaddr, requested=offered,
                          server_id=server_id, extra=extra)  # fmt: skip
        while True:
            try:
                s.sendto(pkt, server)
                break
            except BlockingIOError:
                select.select([], [s], [], 0.1)
        res.sent += 1
        last_sent[mac] = time.monotonic()

    server_id: str | None = None
    try:
        for mac in macs.values():
            send(mac)
        while len(res.bound) < n:
            now = time.monotonic()
            if now > deadline:
                break
            r, _, _ = select.select([s], [], [], 0.05)
            if r:
                for _ in range(256):
                    try:
                        data = s.recv(4096)
                    except BlockingIOError:
                        break
                    try:
                        p = dhcp.parse(data)
                    except dhcp.DhcpError:
                        continue
                    mac = by_xid.get(p.xid)
                    if mac is None or mac in res.bound:
                        continue
                    t = p.msg_type
                    if t == dhcp.OFFER and state[mac][0] == "discover":
                        sid = p.opt_ip(dhcp.OPT_SERVER_ID)
                        server_id = str(sid) if sid else server_id
                        state[mac] = ("request", str(p.yiaddr))
                        send(mac)
                    elif t == dhcp.ACK and state[mac][0] == "request":
                        res.bound[mac] = str(p.yiaddr)
                        res.names[mac] = p.options.get(dhcp.OPT_HOSTNAME, b"").decode()
                        res.files[mac] = p.file.decode(errors="replace")
                    elif t == dhcp.NAK:
                        res.naks += 1
                        state[mac] = ("discover", None)
                        send(mac)
            now = time.monotonic()
            for mac, t in list(last_sent.items()):
                if mac not in res.bound and now - t > retry:
                    send(mac)
    finally:
        s.close()
    res.elapsed = time.monotonic() - t0
    return res


def pxe_options(arch: int = 0, vendor: bytes | None = None) -> dict[int, bytes]:
    """Options a PXE ROM sends: vendor class PXEClient:Arch:xxxxx, option 93, UUID."""
    vc = vendor or f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()
    return {dhcp.OPT_VENDOR_CLASS: vc, dhcp.OPT_ARCH: struct.pack("!H", arch),
            dhcp.OPT_NDI: b"\x01\x02\x01", dhcp.OPT_UUID: b"\x00" + bytes(16)}  # fmt: skip


def pxe_client(iface: str, mac: bytes, *, arch: int = 0, wait: float = 2.0,
               client_port: int = 68, server_port: int = 67,
               pxe_port: int = 4011) -> dict:  # fmt: skip
    """A scripted PXE ROM on ``iface`` (root, in a namespace): the proxyDHCP dance.

    Broadcast a DISCOVER with the PXE options, collect the offers for ``wait``
    seconds, take the address from the offer that has one, REQUEST it, then ask
    the proxy (the offer with a boot file and no address) on its boot-server
    port. Returns what each step got.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    s.bind(("0.0.0.0", client_port))
    s.settimeout(0.2)
    out: dict = {"offers": [], "ack": None, "boot_ack": None}
    extra = pxe_options(arch)
    xid = 0x5EED0001

    def send(pkt: bytes, dest: tuple[str, int]) -> None:
        s.sendto(pkt, dest)

    def collect(seconds: float, want: int | None = None) -> list[dhcp.Packet]:
        got, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data, src = s.recvfrom(4096)
            except TimeoutError:
                continue
            try:
                p = dhcp.parse(data)
            except dhcp.DhcpError:
                continue
            if p.op == dhcp.BOOTREPLY and p.xid == xid and (want is None or p.msg_type == want):
                got.append(p)
                if want is not None:
                    break
        return got

    def pkt(mtype: int, **kw) -> bytes:
        p = dhcp.parse(request(mtype, mac, xid, "0.0.0.0", extra=extra, **kw))
        p.flags = 0x8000  # broadcast replies: this client has no address yet
        p.hops = 0
        return p.encode()

    try:
        send(pkt(dhcp.DISCOVER), ("255.255.255.255", server_port))
        offers = collect(wait)
        for p in offers:
            out["offers"].append({"server": str(p.opt_ip(dhcp.OPT_SERVER_ID)), "yiaddr": str(p.yiaddr),
                                  "file": p.file.decode(), "vendor": p.vendor_class.decode()})  # fmt: skip
        addr = next((p for p in offers if p.yiaddr != dhcp.ZERO), None)
        proxy = next((p for p in offers if p.yiaddr == dhcp.ZERO and p.file), None)
        if addr is not None:
            send(pkt(dhcp.REQUEST, requested=str(addr.yiaddr),
                     server_id=str(addr.opt_ip(dhcp.OPT_SERVER_ID))), ("255.255.255.255", server_port))  # fmt: skip
            acks = collect(wait, dhcp.ACK)
            if acks:
                out["ack"] = {"yiaddr": str(acks[0].yiaddr),
                              "server": str(acks[0].opt_ip(dhcp.OPT_SERVER_ID))}  # fmt: skip
        if proxy is not None:
            sid = str(proxy.opt_ip(dhcp.OPT_SERVER_ID))
            ciaddr = out["ack"]["yiaddr"] if out["ack"] else "0.0.0.0"
            send(pkt(dhcp.REQUEST, ciaddr=ciaddr), (sid, pxe_port))
            acks = collect(wait, dhcp.ACK)
            if acks:
                out["boot_ack"] = {"server": sid, "file": acks[0].file.decode(),
                                   "siaddr": str(acks[0].siaddr)}  # fmt: skip
    finally:
        s.close()
    return out


def tftp_get(server: tuple[str, int], name: str, *, blksize: int = 1468, windowsize: int = 16,
             timeout: float = 2.0, sink: bool = True, bind: str = "") -> tuple[int, str]:  # fmt: skip
    """A TFTP client that asks for RFC 7440 windowsize (as UEFI firmware does).

    Returns (bytes received, sha256 hex, or "" when ``sink``). ACKs the last
    in-order block at the end of each window; a lost block makes it ACK what
    it has, and the server resends from there. Works against servers that
    ignore the option too (lock-step, window 1).
    """
    import hashlib

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        if bind:
            s.bind((bind, 0))
        s.settimeout(timeout)
        opts = {"blksize": str(blksize), "tsize": "0"}
        if windowsize > 1:
            opts["windowsize"] = str(windowsize)
        s.sendto(tftp.build_rrq(name, "octet", opts), server)
        h = None if sink else hashlib.sha256()
        total = _receive_file(s, blksize, h)
        return total, (h.hexdigest() if h is not None else "")
    finally:
        s.close()


def _receive_file(s: socket.socket, blksize: int, h: Any) -> int:
    """The blocks of a requested file, acknowledged window by window; bytes received.
    ``h``: a hash object fed with them (or None)."""
    peer = None
    blk, window, got, total, since_ack = blksize, 1, 0, 0, 0
    last_ack = b""
    tries = 0
    negotiated = False
    while True:
        try:
            data, src = s.recvfrom(65536)
        except TimeoutError:
            tries += 1
            if tries > 5:
                raise
            if last_ack and peer:
                s.sendto(last_ack, peer)
            continue
        if peer is None:
            peer = src
            s.connect(peer)
        elif src != peer:
            continue
        tries = 0
        op = data[1]
        if op == tftp.OACK:
            o = tftp.parse(data)
            blk = int(o.options.get("blksize", 512))
            window = int(o.options.get("windowsize", 1))
            negotiated = True
            last_ack = tftp.build_ack(0)
            s.send(last_ack)
            continue
        if op == tftp.ERROR:
            raise OSError(f"TFTP error: {tftp.parse(data)}")
        if op != tftp.DATA:
            continue
        if not negotiated:  # DATA without an OACK: the server ignored the options
            blk, window, negotiated = 512, 1, True
        block = (data[2] << 8) | data[3]
        if block == (got + 1) & 0xFFFF:
            got += 1
            payload = data[4:]
            total += len(payload)
            if h is not None:
                h.update(payload)
            since_ack += 1
            last = len(payload) < blk
            if last or since_ack >= window:
                last_ack = tftp.build_ack(block)
                s.send(last_ack)
                since_ack = 0
            if last:
                return total
        else:  # out of order: say what we have, the server rewinds
            last_ack = tftp.build_ack(got & 0xFFFF)
            s.send(last_ack)
            since_ack = 0
