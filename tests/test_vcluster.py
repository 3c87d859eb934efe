"""The virtual cluster for real (root): bandwidth, sharing, faults, sshd, teardown."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import vcluster_fixture
from vcluster_fixture import TEST_PREFIX, VCluster, iperf3, needs_iperf3, needs_vcluster

from beokit.vcluster import driver, plan

pytestmark = [needs_vcluster, pytest.mark.root]
vcluster = vcluster_fixture.vcluster
vcluster8 = vcluster_fixture.vcluster8

RATE = 100e6

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError as e:
    print(e); sys.exit(1)
"""

LISTEN = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
while True:
    s.accept()[0].close()
"""


def assert_nothing_left(prefix: str) -> None:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert not [n for n in plan.parse_netns_list(netns) if n.startswith(f"{prefix}-")], netns
    assert not [n for n in plan.parse_link_names(links) if n.startswith(f"{prefix}-")], links
    assert not list(Path("/etc/netns").glob(f"{prefix}-*"))
    assert not driver.state_dir(prefix).exists()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@needs_iperf3
def test_iperf3_between_two_hosts_measures_the_rate(vcluster8: VCluster) -> None:
    (bps,) = iperf3(vcluster8, [(2, 1)])
    assert abs(bps - RATE) <= 0.10 * RATE, f"{bps / 1e6:.1f} Mbit/s at 100mbit"


@needs_iperf3
def test_two_senders_share_the_receivers_port(vcluster8: VCluster) -> None:
    a, b = iperf3(vcluster8, [(3, 5), (4, 5)])
    assert abs((a + b) - RATE) <= 0.10 * RATE, (a / 1e6, b / 1e6)
    for x in (a, b):
        assert 0.30 * RATE <= x <= 0.70 * RATE, (a / 1e6, b / 1e6)


@needs_iperf3
def test_slow_reshapes_one_port(vcluster8: VCluster) -> None:
    vcluster8.slow(8, "20mbit")
    try:
        (bps,) = iperf3(vcluster8, [(8, 7)], seconds=2)
        assert abs(bps - 20e6) <= 0.15 * 20e6, f"{bps / 1e6:.1f} Mbit/s at 20mbit"
    finally:
        vcluster8.slow(8, "100mbit")


def test_link_down_stops_traffic_and_up_restores_it(vcluster8: VCluster) -> None:
    vc = vcluster8
    server = vc.popen(6, sys.executable, "-c", LISTEN, vc.addr(6), "7000")
    try:
        vc.wait_listening(6, 7000)

        def connect() -> int:
            return vc.exec(7, sys.executable, "-c", CONNECT, vc.addr(6), "7000", "1",
                           check=False).returncode  # fmt: skip

        assert connect() == 0
        vc.link(6, up=False)
        st = driver.status(vc.state)
        assert st["hosts"][5]["nics"][0]["link"].startswith("down")
        assert connect() != 0
        vc.link(6, up=True)
        deadline = time.monotonic() + 5
        while connect() != 0:
            assert time.monotonic() < deadline, "link up did not restore traffic"
        assert driver.status(vc.state)["hosts"][5]["nics"][0]["link"] == "up"
    finally:
        vc.link(6, up=True)
        server.kill()
        server.wait()


def test_kill_ends_every_process_in_a_host(vcluster8: VCluster) -> None:
    vc = vcluster8
    procs = [vc.popen(7, "sleep", "300") for _ in range(3)]
    other = vc.popen(6, "sleep", "300")
    deadline = time.monotonic() + 5
    while len(vc.pids(7)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(vc.pids(7)) >= 3
    assert vc.kill(7) >= 3
    assert [p.wait(timeout=5) for p in procs] == [-9, -9, -9]
    assert vc.pids(7) == []
    assert other.poll() is None  # other hosts untouched
    other.kill()
    other.wait()


def test_hosts_are_isolated_from_the_outside(vcluster8: VCluster) -> None:
    routes = vcluster8.exec(1, "ip", "-4", "route").stdout
    assert "default" not in routes
    assert str(vcluster8.plan.network(0)) in routes


def test_switches_do_not_run_the_hosts_firewall(vcluster8: VCluster) -> None:
    """Where br_netfilter is loaded, bridged frames skip iptables in every switch."""
    checked = 0
    for ns in vcluster8.plan.switch_namespaces():
        for k in ("iptables", "ip6tables", "arptables"):
            r = subprocess.run(["ip", "netns", "exec", ns, "cat",
                                f"/proc/sys/net/bridge/bridge-nf-call-{k}"],
                               capture_output=True, text=True)  # fmt: skip
            if r.returncode == 0:  # (no such file: br_netfilter is not loaded)
                assert r.stdout.strip() == "0", (ns, k)
                checked += 1
    if not checked:
        pytest.skip("br_netfilter is not loaded on this host: there is nothing to turn off")


def test_sshd_and_teardown_leave_nothing(vcluster) -> None:
    prefix = TEST_PREFIX + "s"
    vc = vcluster(n=3, rate="100mbit", prefix=prefix, sshd=True, switches=2)
    cfg = vc.state.ssh_config
    assert cfg and Path(cfg).is_file()
    sshd_pids = [p for i in range(1, 4) for p in vc.pids(i)]
    assert len(sshd_pids) == 3
    # from the controller (root namespace) through the ssh_config
    for host in ("host1", "host3"):
        r = subprocess.run(["ssh", "-F", cfg, host, "ip", "-4", "-br", "addr"],
                           capture_output=True, text=True, timeout=20)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert vc.plan.address(0, int(host[-1])) in r.stdout
    # host to host, across the trunk, by name (/etc/netns/NS/hosts)
    r = vc.exec(1, "ssh", "-F", cfg, "host3", "hostname", "-I", timeout=20, check=False)
    assert r.returncode == 0 and vc.addr(3) in r.stdout, r.stderr
    # a crash: the state file is gone, `down` still finds everything by prefix
    (driver.state_dir(prefix) / "state.json").unlink()
    report = vc.down()
    assert len(report.namespaces) == 3 + 2 and report.links == [plan.controller_link(prefix)]
    assert report.processes >= 3
    assert not report.remaining
    assert not [p for p in sshd_pids if alive(p)]
    assert_nothing_left(prefix)


def test_cli_up_status_down(tmp_path: Path) -> None:
    prefix = TEST_PREFIX + "c"
    beo = [sys.executable, "-m", "beokit.cli", "vcluster"]
    try:
        r = subprocess.run([*beo, "up", "-n", "2", "--rate", "50mbit", "--name", prefix],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = subprocess.run([*beo, "up", "-n", "2", "--name", prefix], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        assert r.returncode == 1 and "already up" in r.stderr
        r = subprocess.run([*beo, "status", "--name", prefix], capture_output=True, text=True)
        assert r.returncode == 0 and "50mbit" in r.stdout and "host2" in r.stdout
        r = subprocess.run([*beo, "status", "--json", "--name", prefix], capture_output=True,
                           text=True)  # fmt: skip
        addr2 = json.loads(r.stdout)["hosts"][1]["nics"][0]["address"]
        assert ipaddress.IPv4Address(addr2) in plan.BASE_NET
        r = subprocess.run([*beo, "exec", "--name", prefix, "host2", "--", "sh", "-c",
                            "ip -br addr; exit 3"], capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 3 and f"{addr2}/20" in r.stdout
        r = subprocess.run([*beo, "link", "down", "host9", "--name", prefix],
                           capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 2 and "'host9'" in r.stderr and len(r.stderr.splitlines()) == 1
    finally:
        r = subprocess.run([*beo, "down", "--name", prefix], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_nothing_left(prefix)


def test_failure_midway_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = TEST_PREFIX + "r"
    driver.down(prefix)
    orig = plan.ClusterPlan.create_commands
    monkeypatch.setattr(plan.ClusterPlan, "create_commands",
                        lambda self: [*orig(self), ["ip", "link", "set", "dev", "bkt-nosuch0", "up"]])  # fmt: skip
    with pytest.raises(driver.VClusterError, match="bkt-nosuch0"):
        driver.up(plan.Spec(n=2, rate_bps=10**8, prefix=prefix))
    assert_nothing_left(prefix)


def test_bad_input_creates_nothing() -> None:
    prefix = TEST_PREFIX + "b"
    r = subprocess.run([sys.executable, "-m", "beokit.cli", "vcluster", "up", "-n", "3",
                        "--switches", "4", "--name", prefix], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "switch count 4" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert_nothing_left(prefix)


def test_several_clusters_and_nics_at_once(vcluster, vcluster8: VCluster) -> None:
    a = vcluster(n=2, nics=2)
    b = vcluster(n=2, switches=2)
    nets = {str(vc.plan.network(j)) for vc in (a, b, vcluster8) for j in range(vc.plan.spec.nics)}
    assert len(nets) == 4  # each cluster got its own /20s
    for vc, nic in ((a, 0), (a, 1), (b, 0)):
        server = vc.popen(2, sys.executable, "-c", LISTEN, vc.addr(2, nic), "7001")
        try:
            vc.wait_listening(2, 7001)
            r = vc.exec(1, sys.executable, "-c", CONNECT, vc.addr(2, nic), "7001", "2",
                        check=False)  # fmt: skip
            assert r.returncode == 0, (vc.prefix, nic, r.stdout)
            # and from the controller, on network 0
            if nic == 0:
                r = subprocess.run([sys.executable, "-c", CONNECT, vc.addr(2), "7001", "2"],
                                   capture_output=True, text=True)  # fmt: skip
                assert r.returncode == 0, (vc.prefix, r.stdout)
        finally:
            server.kill()
            server.wait()


JUMBO_RECV = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(5)
print(len(s.recv(65536)))
"""
JUMBO_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO: no fragments
for _ in range(20):
    s.sendto(b"j" * 8972, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.1)
"""


def _jumbo_crosses(vc: VCluster, sender: int | None) -> bool:
    """Does an unfragmented 8972-byte UDP datagram reach host2 (from host1 or the controller)?"""
    rx = vc.popen(2, sys.executable, "-c", JUMBO_RECV, vc.addr(2), "7009",
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.3)
    argv = [sys.executable, "-c", JUMBO_SEND, vc.addr(2), "7009"]
    if sender is None:
        tx = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    else:
        tx = vc.exec(sender, *argv, check=False)
    out, _ = rx.communicate(timeout=10)
    return tx.returncode == 0 and out.strip() == "8972"


def test_jumbo_frames_pass_only_with_mtu_9000(vcluster) -> None:
    """--mtu 9000: an unfragmented 8972-byte datagram crosses host -> switch -> trunk ->
    switch -> host, and from the controller; with the default 1500 it cannot leave."""
    jumbo = vcluster(n=2, switches=2, mtu=9000)
    normal = vcluster(n=2)
    assert _jumbo_crosses(jumbo, 1)
    assert _jumbo_crosses(jumbo, None)
    assert not _jumbo_crosses(normal, 1)
    mtu = subprocess.run(["ip", "-n", jumbo.ns(1), "-j", "link", "show", "eth0"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(mtu.stdout)[0]["mtu"] == 9000
