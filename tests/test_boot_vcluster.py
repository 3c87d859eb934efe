"""beo boot in a virtual cluster: busybox udhcpc, tftp-hpa and curl in other hosts."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from boot_helpers import Server
from vcluster_fixture import needs_vcluster, vcluster  # noqa: F401

pytestmark = [pytest.mark.root, needs_vcluster,
              pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox")]  # fmt: skip

RECORD = """#!/bin/sh
echo "$1 ip=$ip name=$hostname boot=$boot_file siaddr=$siaddr lease=$lease" >> "{log}"
case "$1" in bound|renew) ip addr add "$ip/$mask" dev "$interface" 2>/dev/null ;; esac
exit 0
"""


def config(tmp: Path, vc, macs: dict[str, int], extra: str = "") -> Path:
    net = vc.plan.network(0)
    base = net.network_address + 256
    pool_lo, pool_hi = net.network_address + 2560, net.network_address + 2815
    root = tmp / "root"
    root.mkdir()
    os.chmod(tmp, 0o755)
    m = "\n".join(f'"{k}" = {v}' for k, v in macs.items())
    p = tmp / "boot.toml"
    p.write_text(f"""
[server]
address = "{vc.addr(1)}"
root = "root"
lease_file = "leases.json"
control = "ctl.sock"
[network]
subnet = "{net}"
temporary_lease_time = 20
pool = "{pool_lo}-{pool_hi}"
[nodes]
base = "{base}"
count = 200
[nodes.macs]
{m}
{extra}
""")
    return p


def mac(vc, host: int) -> str:
    return vc.exec(host, "cat", "/sys/class/net/eth0/address").stdout.strip()


def udhcpc(vc, host: int, tmp: Path, *args: str) -> subprocess.Popen:
    log = tmp / f"udhcpc{host}.log"
    script = tmp / f"rec{host}.sh"
    script.write_text(RECORD.format(log=log))
    script.chmod(0o755)
    return vc.popen(host, "busybox", "udhcpc", "-i", "eth0", "-f", "-t", "5", "-T", "1",
                    "-s", str(script), "-p", str(tmp / f"udhcpc{host}.pid"), *args,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def wait_line(path: Path, needle: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in {path}: {path.read_text() if path.exists() else ''}")


def test_udhcpc_gets_configured_address_then_admit_moves_it(vcluster, tmp_path):  # noqa: F811
    vc = vcluster(n=3, rate="1gbit", prefix="bkb1")
    m2, m3 = mac(vc, 2), mac(vc, 3)
    cfg = config(tmp_path, vc, {m2: 5}, '[boot]\nipxe_script = "boot.ipxe"\n')
    (tmp_path / "root" / "pxelinux.0").write_bytes(os.urandom(40000))
    base = vc.plan.network(0).network_address + 256
    srv = Server(cfg, bind="0.0.0.0", ns=vc.ns(1),
                 ports={"dhcp": 67, "tftp": 69, "dns": 53, "pxe": 4011})  # fmt: skip
    procs = []
    try:
        # host2 is a known node (PXE vendor class): node 5, its name and its boot file
        procs.append(udhcpc(vc, 2, tmp_path, "-q", "-V", "PXEClient:Arch:00000:UNDI:002001"))
        text = wait_line(tmp_path / "udhcpc2.log", "bound")
        assert f"bound ip={base + 5} name=node5 boot=pxelinux.0 siaddr={vc.addr(1)}" in text
        # the same node without a client identifier (-C), as a UEFI ROM (option 93 = 7),
        # and as iPXE (user class "iPXE"): same address, boot file by client type
        for args, boot in (
            (["-C", "-V", "PXEClient:Arch:00007", "-x", "0x5d:0007"], "ipxe.efi"),
            (["-V", "PXEClient:Arch:00000", "-x", "0x4d:69505845"], "boot.ipxe"),
        ):
            (tmp_path / "udhcpc2.log").unlink()
            p = udhcpc(vc, 2, tmp_path, "-q", *args)
            procs.append(p)
            text = wait_line(tmp_path / "udhcpc2.log", "bound")
            assert f"bound ip={base + 5} name=node5 boot={boot} " in text, text
            p.wait(10)
        # host3 is unknown: a temporary lease from the pool...
        u3 = udhcpc(vc, 3, tmp_path)
        procs.append(u3)
        text = wait_line(tmp_path / "udhcpc3.log", "bound")
        assert "lease=20" in text and "name= " in text
        # ...until it is admitted: its renewal is NAKed and it comes back as node 7
        r = subprocess.run([sys.executable, "-m", "beokit.cli", "boot", "-c", str(cfg), "admit", m3,
                            "7"], capture_output=True, text=True, timeout=20)  # fmt: skip
        assert r.returncode == 0, r.stderr
        pid = int((tmp_path / "udhcpc3.pid").read_text())
        os.kill(pid, signal.SIGUSR1)  # renew now rather than at T1
        text = wait_line(tmp_path / "udhcpc3.log", f"bound ip={base + 7} name=node7", 20)
        assert "nak" in text
        # tftp-hpa and curl in host2 fetch the boot file byte-identical
        want = (tmp_path / "root" / "pxelinux.0").read_bytes()
        out = tmp_path / "got1"
        vc.exec(2, "tftp", vc.addr(1), "-m", "binary", "-c", "get", "pxelinux.0", str(out))
        assert out.read_bytes() == want
        out2 = tmp_path / "got2"
        vc.exec(3, "curl", "-sS", "--max-time", "20", "-o", str(out2),
                f"tftp://{vc.addr(1)}/pxelinux.0")  # fmt: skip
        assert out2.read_bytes() == want
        r = vc.exec(3, "curl", "-sS", "--max-time", "10", "--path-as-is", "-o", "/dev/null",
                    f"tftp://{vc.addr(1)}/../etc/passwd", check=False)  # fmt: skip
        assert r.returncode != 0
        srv.wait_log("refused")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        srv.stop()


PXE = """
import json, sys
from beokit.boot.loadgen import pxe_client
print(json.dumps(pxe_client("eth0", bytes.fromhex(sys.argv[1].replace(":", "")), arch=7)))
"""


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="needs dnsmasq")
def test_proxy_dhcp_beside_a_site_dhcp_server(vcluster, tmp_path):  # noqa: F811
    """host1: the site's DHCP (dnsmasq, addresses only); host2: beo boot --proxy; host3: clients."""
    import json

    vc = vcluster(n=3, rate="1gbit", prefix="bkb2")
    net = vc.plan.network(0)
    lo, hi = net.network_address + 3000, net.network_address + 3100
    site = vc.popen(1, "dnsmasq", "--no-daemon", "--port=0", "--conf-file=/dev/null",
                    f"--dhcp-range={lo},{hi},1h", "--no-ping", "--user=root",
                    f"--dhcp-leasefile={tmp_path}/site.leases", "--interface=eth0",
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    cfg = tmp_path / "p" / "boot.toml"
    cfg.parent.mkdir()
    (cfg.parent / "root").mkdir()
    (cfg.parent / "root" / "ipxe.efi").write_bytes(os.urandom(3000))
    cfg.write_text(f"""
[server]
address = "{vc.addr(2)}"
root = "root"
control = "ctl.sock"
[network]
subnet = "{net}"
[boot]
uefi = "ipxe.efi"
""")
    srv = Server(cfg, "--proxy", bind="0.0.0.0", ns=vc.ns(2),
                 ports={"dhcp": 67, "tftp": 69, "dns": 0, "pxe": 4011})  # fmt: skip
    u = None
    try:
        time.sleep(0.5)  # dnsmasq up
        r = vc.exec(3, sys.executable, "-c", PXE, mac(vc, 3), timeout=30)
        got = json.loads(r.stdout)
        by_server = {o["server"]: o for o in got["offers"]}
        # the address comes from the site's server, the boot file from beo boot
        assert by_server[vc.addr(1)]["yiaddr"] != "0.0.0.0"
        assert by_server[vc.addr(2)] == {"server": vc.addr(2), "yiaddr": "0.0.0.0",
                                         "file": "ipxe.efi", "vendor": "PXEClient"}  # fmt: skip
        assert got["ack"]["server"] == vc.addr(1)
        assert lo <= ipaddress.IPv4Address(got["ack"]["yiaddr"]) <= hi
        assert got["boot_ack"] == {"server": vc.addr(2), "file": "ipxe.efi",
                                   "siaddr": vc.addr(2)}  # fmt: skip
        # a plain udhcpc (no PXE options) is answered by the site's server only
        st0 = status(cfg)["counters"]
        u = udhcpc(vc, 3, tmp_path, "-q", "-n")
        text = wait_line(tmp_path / "udhcpc3.log", "bound")
        assert f"siaddr={vc.addr(1)}" in text or "boot= " in text
        st = status(cfg)
        assert st["counters"].get("proxy-ignored", 0) > st0.get("proxy-ignored", 0)
        assert st["counters"]["dhcp-out"] == st0["dhcp-out"]  # not one reply to udhcpc
    finally:
        if u is not None and u.poll() is None:
            u.kill()
        srv.stop()
        site.terminate()
        site.wait(10)


def status(cfg: Path) -> dict:
    import json

    r = subprocess.run([sys.executable, "-m", "beokit.cli", "boot", "-c", str(cfg), "status"],
                       capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
    return json.loads(r.stdout)
