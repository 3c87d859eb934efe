"""beo run on the virtual cluster (root): a template that reaches other hosts.

``-R 'ip netns exec PREFIX-{host} sh -c {cmd}'`` runs every agent in another
host's network namespace, as ssh would run it on another machine: the
agents must call back to an address that works there and listen on their
own host's addresses, never on the root's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from vcluster_fixture import VCluster, make_cluster, needs_vcluster

from beokit.vcluster import plan

pytestmark = [needs_vcluster, pytest.mark.root]
PREFIX = "bkl"
BEO = [sys.executable, "-m", "beokit.cli", "run"]


@pytest.fixture(scope="module")
def vc() -> Iterator[VCluster]:
    cluster = make_cluster(5, "1gbit", PREFIX)
    try:
        yield cluster
    finally:
        cluster.down()


def _run(*args: str, ns: list[str] | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    return subprocess.run([*(ns or []), *BEO, *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, **(env or {})))  # fmt: skip


def _template(vc: VCluster) -> str:
    return f"ip netns exec {vc.prefix}-{{host}} sh -c {{cmd}}"


def test_listen_is_the_roots_address_not_the_agents(vc: VCluster) -> None:
    """--listen ADDR from the controller: agents used to bind ADDR on their own host
    (Errno 99, a traceback on a channel nobody read; every host 'lost')."""
    ctl = plan.controller_address(vc.plan.spec.net)
    cp = _run("-R", _template(vc), "--listen", ctl, "--remote-python", sys.executable,
              "-k", "2", "--json", "host[1-5]", "--", "ip -4 -o addr show eth0 | wc -l",
              env={"SSH_CONNECTION": f"{ctl} 40000 {ctl} 22"})  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    res = json.loads(cp.stdout)["results"]
    assert {h: r["stdout"] for h, r in res.items()} == {f"host{i}": "1\n" for i in range(1, 6)}


def test_no_listen_calls_back_to_an_address_not_the_host_name(vc: VCluster) -> None:
    """From host1 (where host2.. resolve): agents are told host1's address on the route
    to them, not this machine's host name (unknown inside the cluster)."""
    cp = _run("-R", _template(vc), "--remote-python", sys.executable, "-k", "2", "-b",
              "host[2-5]", "--", "echo up", ns=vc.argv(1))  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == "---------------\nhost[2-5] (4)\n---------------\nup\n"


def test_no_address_for_the_hosts_says_listen(vc: VCluster) -> None:
    """From the controller, host names mean nothing: one line, the option that fixes it
    (before: agents told this machine's host name, unknown in the cluster).  With no
    agent to launch (every host a leaf) no address is needed.  (The busy tree launches 4
    hosts at k=2 from the root alone, so ``--leaf-agents`` asks for agents here.)"""
    cp = _run("-R", _template(vc), "-k", "2", "--leaf-agents", "host[2-5]", "--", "true")
    assert cp.returncode == 2
    assert cp.stderr.count("\n") == 1 and "--listen" in cp.stderr, cp.stderr
    leaves = _run("-R", _template(vc), "host[2-3]", "--", "true")
    assert leaves.returncode == 0, leaves.stderr


def test_netns_backend_forks_each_agent_into_its_hosts_namespace(vc: VCluster) -> None:
    """-R netns:PATTERN: agents forked from one preloaded server, each entering its
    host's namespace as ``ip netns exec`` would (network, /sys, /etc/netns/NAME):
    every host sees its own address and its own /etc/hosts, none the root's."""
    probe = ("ip -4 -o addr show eth0 | awk '{print $4}'; readlink /proc/self/ns/net; "
             "ls /sys/class/net | tr '\\n' ' '; echo; grep -c host1 /etc/hosts")  # fmt: skip
    # no --listen: the root finds its address through /etc/netns/NAME/hosts
    cp = _run("-R", f"netns:{vc.prefix}-{{host}}", "--leaf-agents", "-k", "2", "--json",
              "host[1-5]", "--", probe)  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    res = json.loads(cp.stdout)["results"]
    lines = {h: r["stdout"].splitlines() for h, r in res.items()}
    assert {h: ln[0] for h, ln in lines.items()} == {
        f"host{i}": f"{vc.addr(i)}/20" for i in range(1, 6)}
    assert len({ln[1] for ln in lines.values()}) == 5  # five namespaces
    assert os.readlink("/proc/self/ns/net") not in {ln[1] for ln in lines.values()}
    assert all(ln[2].split() == ["eth0", "lo"] for ln in lines.values()), lines
    assert all(ln[3] != "0" for ln in lines.values())  # the namespace's /etc/hosts


def test_netns_backend_without_agents_and_its_errors(vc: VCluster) -> None:
    """Flat, no agents: each leaf through ``ip netns exec``; a host with no namespace
    is named with the reason; a bad pattern is one line and status 2."""
    cp = _run("-R", f"netns:{vc.prefix}-{{host}}", "--json", "host[2-3],nohost", "--",
              "ip -4 -o addr show eth0 | awk '{print $4}'")  # fmt: skip
    assert cp.returncode != 0
    res = json.loads(cp.stdout)["results"]
    assert res["host2"]["stdout"] == f"{vc.addr(2)}/20\n"
    assert res["host3"]["stdout"] == f"{vc.addr(3)}/20\n"
    assert res["nohost"]["rc"] != 0
    assert f"{vc.prefix}-nohost" in res["nohost"]["stderr"] + str(res["nohost"].get("error"))
    ctl = plan.controller_address(vc.plan.spec.net)
    forked = _run("-R", f"netns:{vc.prefix}-{{host}}", "--listen", ctl, "--leaf-agents",
                  "--json", "host2,nohost", "--", "true")  # fmt: skip
    assert forked.returncode != 0
    bad = json.loads(forked.stdout)["results"]["nohost"]
    assert f"{vc.prefix}-nohost" in bad["stderr"] + str(bad.get("error")), bad
    for pattern in ("netns:bk-host", "netns:a/{host}"):
        cp = _run("-R", pattern, "host2", "--", "true")
        assert cp.returncode == 2 and cp.stderr.count("\n") == 1, cp.stderr
        assert pattern in cp.stderr


def test_a_forked_agents_error_reaches_the_report(vc: VCluster) -> None:
    """A forked agent (-R netns) that cannot call its parent back says why in the
    host's result, as an ssh channel's output would (its stderr comes back through
    the fork server): here --listen 127.0.0.1, which is every namespace's own
    loopback, not this machine's."""
    cp = _run("-R", f"netns:{vc.prefix}-{{host}}", "--listen", "127.0.0.1", "--leaf-agents",
              "--connect-timeout", "5", "--json", "host[1-2]", "--", "true")  # fmt: skip
    assert cp.returncode != 0
    res = json.loads(cp.stdout)["results"]
    for h in ("host1", "host2"):
        err = str(res[h].get("error"))
        assert err.startswith(f"launch failed: beo agent {h}: parent 127.0.0.1:"), err
        assert "Connection refused" in err, err
