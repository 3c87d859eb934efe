"""Virtual cluster planning, without root: names, addresses, commands, leftovers, CLI input."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beokit.vcluster import plan


def spec(**kw) -> plan.Spec:
    kw.setdefault("n", 8)
    kw.setdefault("rate_bps", 10**8)
    return plan.Spec(**kw)


# --- parsing -----------------------------------------------------------------


@pytest.mark.parametrize("text,bps", [
    ("100mbit", 10**8), ("1gbit", 10**9), ("1g", 10**9), ("1.5Gbit", 1_500_000_000),
    ("500k", 500_000), ("10000", 10_000), (" 20 mbit ", 2 * 10**7), ("40gbit", 4 * 10**10),
])  # fmt: skip
def test_parse_rate(text: str, bps: int) -> None:
    assert plan.parse_rate(text) == bps


@pytest.mark.parametrize("text", ["", "fast", "100mbps", "-1mbit", "0", "1bit", "1x", "999tbit"])
def test_parse_rate_rejects_and_names_the_value(text: str) -> None:
    with pytest.raises(plan.PlanError, match=repr(text).replace("\\", "\\\\").replace("(", r"\(")):
        plan.parse_rate(text)


def test_format_rate() -> None:
    assert [plan.format_rate(x) for x in (10**8, 10**9, 1_500_000_000, 64_000, 999)] == [
        "100mbit", "1gbit", "1.5gbit", "64kbit", "999bit"]  # fmt: skip


@pytest.mark.parametrize("text,us", [("0.2ms", 200), ("200us", 200), ("1s", 10**6), ("0", 0),
                                     ("3", 3000)])  # fmt: skip
def test_parse_delay(text: str, us: int) -> None:
    assert plan.parse_delay(text) == us


@pytest.mark.parametrize("text", ["slow", "1h", "-1ms", "11s"])
def test_parse_delay_rejects(text: str) -> None:
    with pytest.raises(plan.PlanError, match="bad delay"):
        plan.parse_delay(text)


@pytest.mark.parametrize("prefix", ["", "BK", "b-k", "1bk", "toolongname", "bk_1"])
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(plan.PlanError, match="bad name"):
        plan.check_prefix(prefix)


@pytest.mark.parametrize("kw,msg", [
    ({"n": 0}, "host count 0"), ({"n": 1001}, "host count 1001"), ({"nics": 9}, "NIC count 9"),
    ({"n": 3, "switches": 4}, "switch count 4"), ({"prefix": "X"}, "'X'"),
    ({"net": 31, "nics": 2}, "network number 31"), ({"mtu": 100}, "MTU 100"),
])  # fmt: skip
def test_spec_validation_names_the_value(kw: dict, msg: str) -> None:
    with pytest.raises(plan.PlanError, match=msg):
        plan.ClusterPlan.build(spec(**kw))


# --- names and addresses -----------------------------------------------------


def interface_names(cluster: plan.ClusterPlan) -> set[str]:
    """Every interface name any command creates or names."""
    names = set()
    for argv in cluster.create_commands():
        for k, a in enumerate(argv[:-1]):
            if a in ("dev", "name") or (a == "add" and argv[k - 1] == "link"):
                names.add(argv[k + 1])
    return names


def test_largest_names_fit_in_15_characters() -> None:
    cluster = plan.ClusterPlan.build(spec(n=plan.MAX_HOSTS, nics=plan.MAX_NICS,
                                          switches=plan.MAX_SWITCHES, prefix="abcdefgh"))  # fmt: skip
    names = interface_names(cluster)
    assert {"eth7", "h1000", "t63", "uplink", "abcdefgh-ctl", "br0"} <= names
    assert max(len(n) for n in names) <= 15


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), nics=st.integers(1, 4), switches=st.integers(1, 8),
       net=st.integers(0, 28))  # fmt: skip
def test_addresses_are_unique_and_inside_198_18_0_0_15(n: int, nics: int, switches: int,
                                                       net: int) -> None:  # fmt: skip
    switches = min(switches, n)
    cluster = plan.ClusterPlan.build(spec(n=n, nics=nics, switches=switches, net=net))
    addrs = [ipaddress.IPv4Address(pt.address) for pt in cluster.ports]
    addrs.append(ipaddress.IPv4Address(cluster.controller_address()))
    assert len(set(addrs)) == len(addrs) == n * nics + 1
    assert all(a in plan.BASE_NET for a in addrs)
    for pt in cluster.ports:  # NIC j on network j, on one of network j's switches
        assert ipaddress.IPv4Address(pt.address) in cluster.network(pt.nic)
        assert pt.switch_ns == plan.switch_ns("bk", pt.nic, pt.switch) and pt.switch < switches
    # every switch gets hosts, in blocks
    assert {pt.switch for pt in cluster.ports} == set(range(switches))
    order = [pt.switch for pt in cluster.ports if pt.nic == 0]
    assert order == sorted(order)
    # every namespace carries the prefix, once
    assert len(set(cluster.namespaces())) == n + nics * switches
    assert all(ns.startswith("bk-") for ns in cluster.namespaces())


def test_default_layout() -> None:
    cluster = plan.ClusterPlan.build(spec(n=4))
    assert [pt.address for pt in cluster.ports] == ["198.18.0.1", "198.18.0.2", "198.18.0.3",
                                                 "198.18.0.4"]  # fmt: skip
    assert cluster.controller_address() == "198.18.15.254"
    assert cluster.namespaces() == ["bk-sw0-0", "bk-host1", "bk-host2", "bk-host3", "bk-host4"]
    assert str(plan.ClusterPlan.build(spec(n=4, nics=2, net=3)).network(1)) == "198.18.64.0/20"
    assert "198.18.0.3\thost3 host3-eth0" in cluster.etc_hosts()


def test_pick_net_skips_networks_already_routed() -> None:
    routes = json.dumps([{"dst": "default"}, {"dst": "198.18.0.0/20"}, {"dst": "10.0.0.0/8"},
                         {"dst": "198.18.32.0/19"}])  # fmt: skip
    used = plan.used_networks(routes)
    assert used == {0, 2, 3}
    assert plan.pick_net(1, used) == 1
    assert plan.pick_net(2, used) == 4
    assert plan.used_networks(json.dumps([{"dst": "198.0.0.0/8"}])) == set(range(32))
    with pytest.raises(plan.PlanError, match="no free network"):
        plan.pick_net(1, set(range(32)))


@pytest.mark.parametrize("text,ns", [("host3", "bk-host3"), ("3", "bk-host3"),
                                     ("bk-host8", "bk-host8"), ("sw0-1", "bk-sw0-1")])  # fmt: skip
def test_targets(text: str, ns: str) -> None:
    assert plan.parse_target(text, spec(n=8, switches=2)) == ns


@pytest.mark.parametrize("text", ["host9", "host0", "node1", "sw0-2", "", "x-host1"])
def test_bad_targets_name_the_value(text: str) -> None:
    with pytest.raises(plan.PlanError, match=repr(text)):
        plan.parse_target(text, spec(n=8, switches=2))


# --- commands ----------------------------------------------------------------


def shaped(cmds: list[list[str]]) -> list[tuple[str | None, str]]:
    """(namespace, device) of every root qdisc added."""
    out = []
    for c in cmds:
        if c[0] == "tc" and "root" in c and "add" in c:
            ns = c[2] if c[1] == "-n" else None
            out.append((ns, c[c.index("dev") + 1]))
    return out


def test_every_port_is_shaped_on_both_ends() -> None:
    cluster = plan.ClusterPlan.build(spec(n=5, switches=2, nics=2))
    cmds = cluster.create_commands()
    ends = shaped(cmds)
    for pt in cluster.ports:
        assert (pt.host_ns, pt.dev) in ends and (pt.switch_ns, pt.port) in ends
    assert (None, "bk-ctl") in ends and ("bk-sw0-0", "ctl") in ends
    assert ("bk-sw0-0", "t1") in ends and ("bk-sw0-1", "uplink") in ends
    assert ("bk-sw1-0", "t1") in ends and ("bk-sw1-1", "uplink") in ends
    assert len(ends) == len(set(ends)) == 2 * (10 + 2 + 1)
    rates = {c[c.index("rate") + 1] for c in cmds if "tbf" in c}
    assert rates == {"100000000bit"}
    assert not any("netem" in c for c in cmds)
    # namespaces come before the links into them; nothing is routed outside
    first_link = next(k for k, c in enumerate(cmds) if c[:3] == ["ip", "link", "add"])
    assert all(c[:3] != ["ip", "netns", "add"] for c in cmds[first_link:])
    assert not any("default" in c or "via" in c for c in cmds)


def test_delay_and_trunk_rate() -> None:
    cluster = plan.ClusterPlan.build(spec(n=4, switches=2, delay_us=200, trunk_rate_bps=10**9))
    cmds = cluster.create_commands()
    netem = [c for c in cmds if "netem" in c]
    assert len(netem) == len(shaped(cmds)) and all("200us" in c for c in netem)
    trunk = [c for c in cmds if "tbf" in c and ("t1" in c or "uplink" in c)]
    assert len(trunk) == 2 and all("1000000000bit" in c for c in trunk)


def test_mtu_on_every_link_end() -> None:
    cluster = plan.ClusterPlan.build(spec(n=3, switches=2, mtu=9000))
    cmds = cluster.create_commands()
    set_mtu = {(c[2] if c[1] == "-n" else None, c[c.index("dev") + 1])
               for c in cmds if "mtu" in c}  # fmt: skip
    assert set_mtu == set(shaped(cmds))  # every link end that is shaped also gets the MTU
    assert all(c[-1] == "9000" for c in cmds if "mtu" in c)
    assert not any("mtu" in c for c in plan.ClusterPlan.build(spec(n=3, switches=2)).create_commands())


def test_no_controller() -> None:
    cluster = plan.ClusterPlan.build(spec(n=2, controller=False))
    assert not any("bk-ctl" in c for c in cluster.create_commands())
    assert "controller" not in cluster.etc_hosts()
    assert cluster.destroy_commands() == [["ip", "netns", "del", ns] for ns in cluster.namespaces()]


def test_faults() -> None:
    cluster = plan.ClusterPlan.build(spec(n=4, nics=2))
    assert cluster.link_commands(3, up=False) == [
        ["ip", "-n", "bk-sw0-0", "link", "set", "dev", "h3", "down"],
        ["ip", "-n", "bk-sw1-0", "link", "set", "dev", "h3", "down"]]  # fmt: skip
    assert cluster.link_commands(3, up=True, nic=1) == [
        ["ip", "-n", "bk-sw1-0", "link", "set", "dev", "h3", "up"]]  # fmt: skip
    slow = cluster.slow_commands(2, 10**7, nic=0)
    assert slow[0] == ["tc", "-n", "bk-host2", "qdisc", "del", "dev", "eth0", "root"]
    assert shaped(slow) == [("bk-host2", "eth0"), ("bk-sw0-0", "h2")]
    assert all("10000000bit" in c for c in slow if "tbf" in c)


def test_destroy_covers_everything_created() -> None:
    cluster = plan.ClusterPlan.build(spec(n=3, switches=3))
    created = {c[3] for c in cluster.create_commands() if c[:3] == ["ip", "netns", "add"]}
    destroy = cluster.destroy_commands()
    assert destroy[0] == ["ip", "link", "del", "bk-ctl"]
    assert {c[3] for c in destroy[1:]} == created


def test_plan_json_round_trip() -> None:
    cluster = plan.ClusterPlan.build(spec(n=3, nics=2, delay_us=5, net=4, sshd=True))
    again = plan.ClusterPlan.from_json(json.loads(json.dumps(cluster.to_json())))
    assert again.spec == cluster.spec and again.create_commands() == cluster.create_commands()


# --- leftovers ---------------------------------------------------------------

NETNS = "bkt-host1\nbk-host10 (id: 4)\nbk-sw0-0 (id: 3)\nbk-host2\nother\nbkhost3\n"
LINKS = """1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT
5: bk-ctl@if11: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc tbf state UP mode DEFAULT
6: bkt-ctl@if3: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN mode DEFAULT
"""


def test_find_leftovers_by_prefix() -> None:
    left = plan.find_leftovers("bk", NETNS, LINKS)
    assert left.namespaces == ["bk-host2", "bk-host10", "bk-sw0-0"]
    assert left.links == ["bk-ctl"]
    assert plan.teardown_commands(left) == [
        ["ip", "link", "del", "bk-ctl"], ["ip", "netns", "del", "bk-host2"],
        ["ip", "netns", "del", "bk-host10"], ["ip", "netns", "del", "bk-sw0-0"]]  # fmt: skip
    other = plan.find_leftovers("bkt", NETNS, LINKS)
    assert other.namespaces == ["bkt-host1"] and other.links == ["bkt-ctl"]
    assert not plan.find_leftovers("zz", NETNS, LINKS)


def test_link_names_from_json() -> None:
    text = json.dumps([{"ifname": "lo"}, {"ifname": "bk-ctl"}])
    assert plan.parse_link_names(text) == ["lo", "bk-ctl"]


# --- the command line (bad input is caught before anything is touched) ------


@pytest.mark.parametrize("args,bad", [
    (["up", "-n", "0"], "'0'"), (["up", "-n", "x"], "'x'"), (["up", "-n", "3", "--rate", "fast"], "'fast'"),
    (["up", "-n", "3", "--delay", "soon"], "'soon'"), (["up", "-n", "3", "--nics", "99"], "'99'"),
    (["up", "-n", "2", "--switches", "3"], "switch count 3"), (["up", "-n", "2", "--name", "A-b"], "'A-b'"),
    (["up"], "-n/--hosts"), (["link", "sideways", "host1"], "'sideways'"), (["frobnicate"], "'frobnicate'"),
    (["up", "-n", "2", "--mtu", "70000"], "'70000'"), (["slow", "host1", "1parsec"], "'1parsec'"), (["kill", "host1", "-s", "NOPE"], "'NOPE'"),
])  # fmt: skip
def test_cli_bad_input_is_one_line_exit_2(args: list[str], bad: str) -> None:
    r = subprocess.run([sys.executable, "-m", "beokit.cli", "vcluster", *args],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and bad in r.stderr, r.stderr
    assert r.stdout == ""


def test_cli_help() -> None:
    r = subprocess.run([sys.executable, "-m", "beokit.cli", "vcluster", "up", "--help"],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0 and "--rate" in r.stdout and "--sshd" in r.stdout


def test_missing_cluster_names_the_up_command_with_its_name(tmp_path, monkeypatch) -> None:
    """`beo vcluster status --name nc` with no such cluster says how to start that one."""
    import pytest

    from beokit.vcluster import driver

    monkeypatch.setattr(driver, "state_dir", lambda prefix: tmp_path / prefix)
    with pytest.raises(driver.VClusterError, match=r"`beo vcluster up --name nc`"):
        driver.State.load("nc")
    with pytest.raises(driver.VClusterError, match=r"`beo vcluster up`"):
        driver.State.load("bk")
