"""beo boot, pure layers: config, leases, DHCP logic, TFTP state machine, paths, DNS."""

from __future__ import annotations

import ipaddress
import os
import struct
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from beokit.boot import config, dhcp, dns, fair, paths, tftp
from beokit.boot.export import dnsmasq_conf
from beokit.boot.leases import LeaseDB
from beokit.boot.loadgen import mac_of, pxe_options, request

IP = ipaddress.IPv4Address
BASE = {
    "server": {"address": "10.0.0.1", "root": "/srv/tftp"},
    "network": {"subnet": "10.0.0.0/16", "pool": "10.0.200.0-10.0.200.255",
                "temporary_lease_time": 30},
    "nodes": {"base": "10.0.1.0", "count": 100, "macs": {"52:54:00:00:00:01": 1}},
    "hosts": [{"mac": "52:54:00:00:01:00", "ip": "10.0.0.10", "name": "fileserver"}],
    "boot": {"ipxe_script": "boot.ipxe"},
}  # fmt: skip


def cfg(**over) -> config.BootConfig:
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for path, value in over.items():
        sec, key = path.split("__")
        doc.setdefault(sec, {})[key] = value
    return config.parse(doc, Path("/"))


def logic(c: config.BootConfig | None = None, **kw) -> dhcp.DhcpLogic:
    c = c or cfg()
    return dhcp.DhcpLogic(c, LeaseDB(c), **kw)


def mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def dora(lg: dhcp.DhcpLogic, m: bytes, now: float = 1000.0, extra=None) -> dhcp.Packet:
    offer = lg.handle(request(dhcp.DISCOVER, m, 1, "0.0.0.0", extra=extra), ("0.0.0.0", 68), now)
    assert offer is not None
    o = dhcp.parse(offer.data)
    assert o.msg_type == dhcp.OFFER
    ack = lg.handle(request(dhcp.REQUEST, m, 1, "0.0.0.0", requested=str(o.yiaddr),
                            server_id="10.0.0.1", extra=extra), ("0.0.0.0", 68), now)  # fmt: skip
    assert ack is not None
    a = dhcp.parse(ack.data)
    assert a.msg_type == dhcp.ACK and a.yiaddr == o.yiaddr
    return a


# -- config ------------------------------------------------------------------


@pytest.mark.parametrize(("over", "needle"), [
    ({"network__subnet": "10.0.0.0/33"}, "network.subnet"),
    ({"nodes__base": "10.1.0.0"}, "nodes.base"),
    ({"nodes__name": "node"}, "nodes.name"),
    ({"nodes__admit": "sometimes"}, "nodes.admit"),
    ({"network__pool": "10.0.1.50-10.0.1.60"}, "overlaps"),
    ({"tftp__bandwidth": "fast"}, "bandwidth"),
    ({"tftp__max_blksize": 7}, "tftp.max_blksize"),
    ({"server__colour": "red"}, "server.colour"),
])  # fmt: skip
def test_config_errors_name_the_key(over, needle):
    with pytest.raises(config.BootConfigError, match=needle.replace(".", r"\.")):
        cfg(**over)


def test_config_bad_mac_and_example_file_parses():
    with pytest.raises(config.BootConfigError, match="zz"):
        config.normalize_mac("zz:54:00:00:00:01")
    assert config.normalize_mac("52-54-00-AB-CD-EF") == "52:54:00:ab:cd:ef"
    ex = config.load(Path(__file__).parent.parent / "contrib" / "boot.example.toml")
    assert ex.node_ip(23) == IP("10.0.1.23") and ex.node_hostname(23) == "node23"
    assert ex.nettee.next_of("node5") == ["node6"]


def test_bad_toml_is_a_usage_error(tmp_path):
    p = tmp_path / "b.toml"
    p.write_text("[server\n")
    with pytest.raises(config.BootConfigError, match="bad TOML"):
        config.load(p)


# -- leases and DHCP ---------------------------------------------------------


def test_static_node_gets_linear_address_and_name():
    a = dora(logic(), mac("52:54:00:00:00:01"))
    assert a.yiaddr == IP("10.0.1.1")
    assert a.options[dhcp.OPT_HOSTNAME] == b"node1"
    assert struct.unpack("!I", a.options[dhcp.OPT_LEASE])[0] == 3600


def test_fixed_host():
    a = dora(logic(), mac("52:54:00:00:01:00"))
    assert a.yiaddr == IP("10.0.0.10") and a.options[dhcp.OPT_HOSTNAME] == b"fileserver"


def test_anonymous_offer_is_stable_without_state():
    lg = logic()
    m = mac_of(77)
    offers = set()
    for now in (1000.0, 1001.0, 1500.0):
        r = lg.handle(request(dhcp.DISCOVER, m, 1, "0.0.0.0"), ("0.0.0.0", 68), now)
        offers.add(dhcp.parse(r.data).yiaddr)
    assert len(offers) == 1
    # a fresh server (no state at all) offers the same address
    r = logic().handle(request(dhcp.DISCOVER, m, 1, "0.0.0.0"), ("0.0.0.0", 68), 0.0)
    assert dhcp.parse(r.data).yiaddr in offers
    assert IP("10.0.200.0") <= offers.pop() <= IP("10.0.200.255")


def test_many_anonymous_clients_get_distinct_addresses():
    lg = logic()
    got = {dora(lg, mac_of(i)).yiaddr for i in range(200)}
    assert len(got) == 200


def test_temporary_lease_then_admit_moves_the_node_at_renewal():
    lg = logic()
    m = mac_of(5)
    a = dora(lg, m)
    assert struct.unpack("!I", a.options[dhcp.OPT_LEASE])[0] == 30  # temporary
    temp = str(a.yiaddr)
    assert lg.db.admit("52:54:01:00:00:05", 42) == 42
    # the renewal (unicast, ciaddr = temporary address) is refused...
    renew = request(dhcp.REQUEST, m, 2, "0.0.0.0", ciaddr=temp)
    r = lg.handle(renew, (temp, 68), 1010.0)
    assert dhcp.parse(r.data).msg_type == dhcp.NAK
    assert r.dest == ("<broadcast>", 68)
    # ...and the next DORA gives node 42
    a = dora(lg, m, 1011.0)
    assert a.yiaddr == IP("10.0.1.42") and a.options[dhcp.OPT_HOSTNAME] == b"node42"
    with pytest.raises(ValueError, match="already belongs"):
        lg.db.admit("52:54:01:00:00:06", 42)


def test_auto_admit_gives_lowest_free_numbers():
    lg = logic(cfg(nodes__admit="auto"))
    assert dora(lg, mac_of(1)).yiaddr == IP("10.0.1.2")  # node 1 is taken by the config
    assert dora(lg, mac_of(2)).yiaddr == IP("10.0.1.3")
    assert lg.db.admitted == {"52:54:01:00:00:01": 2, "52:54:01:00:00:02": 3}


def test_client_id_with_or_without_maps_to_one_node():
    lg = logic()
    m = mac("52:54:00:00:00:01")
    with_id = {dhcp.OPT_CLIENT_ID: b"\x01" + m}
    other_id = {dhcp.OPT_CLIENT_ID: b"\xff\x00\x01\x02\x03"}
    ips = {dora(lg, m, extra=e).yiaddr for e in (with_id, None, other_id)}
    assert ips == {IP("10.0.1.1")}
    # a client without a hardware address (InfiniBand) is keyed by its client id
    p = dhcp.parse(request(dhcp.DISCOVER, b"", 1, "0.0.0.0", extra=other_id))
    p.hlen, p.htype = 0, 32
    assert p.client_key == "id:" + other_id[dhcp.OPT_CLIENT_ID].hex()


def test_request_for_another_server_or_address():
    lg = logic()
    m = mac("52:54:00:00:00:01")
    other = request(dhcp.REQUEST, m, 1, "0.0.0.0", requested="10.0.1.1", server_id="10.0.0.99")
    assert lg.handle(other, ("0.0.0.0", 68), 0.0) is None
    wrong = request(dhcp.REQUEST, m, 1, "0.0.0.0", requested="10.0.1.9")
    assert dhcp.parse(lg.handle(wrong, ("0.0.0.0", 68), 0.0).data).msg_type == dhcp.NAK


def test_lease_file_round_trip():
    lg = logic()
    dora(lg, mac_of(1))
    lg.db.admit("52:54:01:00:00:09", 9)
    text = lg.db.to_json()
    db2 = LeaseDB(cfg())
    db2.load_json(text, 1000.0)
    assert db2.admitted == {"52:54:01:00:00:09": 9}
    assert db2.leases.keys() == lg.db.leases.keys()
    db3 = LeaseDB(cfg())
    db3.load_json(text, 10**10)  # all expired
    assert not db3.leases and db3.admitted
    with pytest.raises(ValueError):
        db3.load_json('{"format": "other"}', 0)


@pytest.mark.parametrize(("arch", "vendor", "user", "want"), [
    (0, None, None, "pxelinux.0"),
    (7, None, None, "ipxe.efi"),
    (9, None, None, "ipxe.efi"),
    (11, None, None, "ipxe-arm64.efi"),
    (7, None, b"iPXE", "http://10.0.0.1:8080/boot.ipxe"),
    (16, b"HTTPClient:Arch:00016", None, "http://10.0.0.1:8080/ipxe.efi"),
])  # fmt: skip
def test_boot_file_by_architecture(arch, vendor, user, want):
    c = cfg(server__http_url="http://10.0.0.1:8080/")
    extra = pxe_options(arch, vendor)
    if user:
        extra[dhcp.OPT_USER_CLASS] = user
    a = dora(logic(c), mac("52:54:00:00:00:01"), extra=extra)
    assert a.file.decode() == want and a.options[dhcp.OPT_BOOTFILE] == want.encode()
    assert a.siaddr == IP("10.0.0.1")
    assert a.options[dhcp.OPT_VENDOR_CLASS] == (b"HTTPClient" if vendor else b"PXEClient")


def test_nettee_topology_option_and_file():
    c = cfg(nettee__order="node[1-7]", nettee__fanout=2)
    a = dora(logic(c), mac("52:54:00:00:00:01"))
    assert a.options[dhcp.OPT_NETTEE] == b"nettee/node1.conf"
    text = c.nettee.file_for("node2").decode()
    assert "next=node4,node5" in text and "upstream=node1" in text


def test_relay_reply_goes_to_giaddr_and_echoes_option_82():
    lg = logic()
    pkt = request(dhcp.DISCOVER, mac_of(3), 1, "10.0.0.254", extra={dhcp.OPT_RELAY: b"\x01\x02ab"})
    r = lg.handle(pkt, ("10.0.0.254", 67), 0.0)
    assert r.dest == ("10.0.0.254", 67)
    assert dhcp.parse(r.data).options[dhcp.OPT_RELAY] == b"\x01\x02ab"


def test_deferred_offer_only_for_newcomers():
    lg = logic()
    r = lg.handle(request(dhcp.DISCOVER, mac_of(1), 1, "0.0.0.0"), ("0.0.0.0", 68), 0.0, defer=0.5)
    assert r.delay == 0.5
    dora(lg, mac_of(1))
    r = lg.handle(request(dhcp.DISCOVER, mac_of(1), 1, "0.0.0.0"), ("0.0.0.0", 68), 0.0, defer=0.5)
    assert r.delay == 0.0


def test_proxy_answers_only_pxe_clients_without_address():
    lg = logic(proxy=True)
    m = mac_of(4)
    assert lg.handle(request(dhcp.DISCOVER, m, 1, "0.0.0.0"), ("0.0.0.0", 68), 0.0) is None
    r = lg.handle(request(dhcp.DISCOVER, m, 1, "0.0.0.0", extra=pxe_options(7)), ("0.0.0.0", 68), 0.0)
    p = dhcp.parse(r.data)
    assert p.msg_type == dhcp.OFFER and p.yiaddr == IP(0) and p.file == b"ipxe.efi"
    assert dhcp.OPT_LEASE not in p.options and p.options[dhcp.OPT_VENDOR_CLASS] == b"PXEClient"
    assert p.options[dhcp.OPT_VENDOR] == bytes((6, 1, 8, 255))
    # the boot-server request on port 4011 is answered to its sender
    req = request(dhcp.REQUEST, m, 2, "0.0.0.0", ciaddr="10.0.5.5", extra=pxe_options(0))
    r = lg.handle(req, ("10.0.5.5", 68), 0.0, port=dhcp.PXE_PORT)
    assert r.dest == ("10.0.5.5", 68) and dhcp.parse(r.data).msg_type == dhcp.ACK
    assert dhcp.parse(r.data).file == b"pxelinux.0"


def test_codec_round_trip_and_long_options():
    p = dhcp.parse(request(dhcp.DISCOVER, mac_of(1), 7, "0.0.0.0"))
    p.options[200] = bytes(range(256)) * 2  # RFC 3396: split and joined again
    q = dhcp.parse(p.encode())
    assert q.options[200] == p.options[200] and q.xid == 7 and q.mac == "52:54:01:00:00:01"
    with pytest.raises(dhcp.DhcpError):
        dhcp.parse(b"\x01" * 100)


# -- TFTP ----------------------------------------------------------------------


def test_tftp_parse_and_negotiate():
    m = tftp.parse(tftp.build_rrq("a/b", "octet", {"blksize": "9000", "tsize": "0",
                                                   "windowsize": "500", "bogus": "1"}))  # fmt: skip
    assert isinstance(m, tftp.Request) and m.filename == "a/b"
    got = tftp.negotiate(m.options, 12345, tftp.Limits(max_blksize=1468, max_windowsize=16))
    assert got == {"blksize": "1468", "tsize": "12345", "windowsize": "16"}
    for bad in (b"", b"\x00\x09xx", b"\x00\x01name\x00", b"\x00\x01n\x00weird\x00"):
        with pytest.raises(tftp.TftpError):
            tftp.parse(bad)


def run_transfer(size: int, accepted: dict, ack_loss: set[int] | None = None) -> tftp.Transfer:
    """Drive a Transfer like a perfect client; returns it finished."""
    x = tftp.Transfer(size, {}, accepted, tftp.Limits(), 0.0)
    now = 0.0
    got = 0
    for _ in range(10 * x.nblocks + 100):
        sent = []
        while (b := x.ready()) is not None:
            x.sent(b, 0, now)
            sent.append(b)
        if x.done:
            break
        if not sent:
            now = x.deadline
            assert x.on_timer(now)
            continue
        last = sent[-1]
        if sent[0] == 0:
            x.on_ack(0, now)
            continue
        if ack_loss and last in ack_loss:
            ack_loss.discard(last)
            continue
        got = last
        x.on_ack(last & 0xFFFF, now)
    assert x.done and got == x.nblocks
    return x


@pytest.mark.parametrize("size", [0, 511, 512, 513, 5000])
def test_transfer_sizes_and_last_short_block(size):
    x = run_transfer(size, {})
    assert x.nblocks == size // 512 + 1


def test_transfer_rolls_over_block_numbers():
    x = run_transfer(70000 * 8, {"blksize": "8"})
    assert x.nblocks > 65536


def test_transfer_window_and_lost_ack_and_retries():
    x = run_transfer(100000, {"blksize": "1000", "windowsize": "8"}, ack_loss={8, 40})
    assert x.retransmits == 2
    y = tftp.Transfer(10, {}, {}, tftp.Limits(timeout=1, retries=3), 0.0)
    y.sent(1, 14, 0.0)
    fires, t = [], y.deadline
    while y.on_timer(t):  # exponential backoff: 1, then 2, 4, 8 seconds
        fires.append(t)
        y.sent(1, 14, t)
        t = y.deadline
    assert fires == [1.0, 3.0, 7.0] and t == 15.0 and "3 retransmissions" in y.failed
    # duplicate ACKs never cause a resend (sorcerer's apprentice)
    z = tftp.Transfer(5000, {}, {}, tftp.Limits(), 0.0)
    z.sent(1, 516, 0)
    assert z.on_ack(1, 0) and not z.on_ack(1, 0) and z.ready() == 2


# -- paths -----------------------------------------------------------------------


def test_paths_refuse_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok").write_text("x")
    (tmp_path / "secret").write_text("no")
    os.symlink(tmp_path / "secret", root / "out")
    os.symlink("sub/ok", root / "in")
    assert paths.resolve(root, "sub/ok") == (root / "sub" / "ok").resolve()
    assert paths.resolve(root, "/sub/ok") == (root / "sub" / "ok").resolve()
    assert paths.resolve(root, "in").name == "ok"
    for bad in ("../secret", "sub/../../secret", "//etc/passwd", "out", "sub", "a\\b",
                "x\x00y", ""):  # fmt: skip
        with pytest.raises(paths.PathRefused):
            paths.resolve(root, bad)
    with pytest.raises(FileNotFoundError):
        paths.resolve(root, "missing")


# -- fairness --------------------------------------------------------------------


def test_token_bucket_round_robin_and_deferral():
    b = fair.TokenBucket(rate=1000, burst=1000, tokens=0, stamp=0)
    assert not b.take(500, 0.1) and b.take(500, 0.6) and b.wait_for(200) == pytest.approx(0.1)
    rr = fair.RoundRobin()
    for k in "abca":
        rr.push(k)
    assert [rr.pop() for _ in range(4)] == ["a", "b", "c", None]
    load = fair.Load(cap_bytes_per_s=1000, defer_max=1.0)
    assert load.dhcp_delay() == 0.0
    for _ in range(10):
        load.ran_dry()
        load.tick()
    assert load.dhcp_delay() == 1.0 and load.dhcp_delay(stalled=1) == 1.0


# -- DNS and export ----------------------------------------------------------------


def test_dns_a_ptr_nxdomain():
    db = LeaseDB(cfg())

    def ask(name, qtype="A"):
        return DNSRecord.parse(dns.answer(DNSRecord.question(name, qtype).pack(), db))

    assert str(ask("node23").rr[0].rdata) == "10.0.1.23"
    assert str(ask("node23.cluster.").rr[0].rdata) == "10.0.1.23"
    assert str(ask("fileserver.cluster").rr[0].rdata) == "10.0.0.10"
    assert str(ask("23.1.0.10.in-addr.arpa", "PTR").rr[0].rdata) == "node23.cluster."
    assert ask("node999.cluster").header.rcode == RCODE.NXDOMAIN
    assert ask("example.com").header.rcode == RCODE.REFUSED
    assert ask("node1", "AAAA").rr == [] and QTYPE.A == 1
    assert dns.answer(b"\x00garbage", db) is None


def test_export_dnsmasq():
    text = dnsmasq_conf(cfg(), {"52:54:01:00:00:09": 9})
    assert "dhcp-host=52:54:00:00:00:01,10.0.1.1,node1,3600s" in text
    assert "dhcp-host=52:54:01:00:00:09,10.0.1.9,node9,3600s" in text
    assert "dhcp-range=10.0.200.0,10.0.200.255,255.255.0.0,30s" in text
    assert "dhcp-boot=tag:ipxe,boot.ipxe" in text and "host-record=node100,10.0.1.100" in text


def test_parked_holds_only_the_transfers_running_ahead():
    progress = {"a": (10e6, 2.0, False), "b": (10e6, 2.0, False), "c": (13e6, 2.0, False),
                "dead": (0.0, 2.0, True), "new": (50e6, 0.1, False)}  # fmt: skip
    assert fair.parked(progress) == {"c"}
    assert fair.parked({"a": (1.0, 2.0, False)}) == set()
