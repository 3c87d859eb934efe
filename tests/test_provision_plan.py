"""Provisioning plan and [provision] config (pure): every generated nettee line is
one nettee's own parser accepts, with the root, the port, failover lists, bounded
waits, -heal and -digest."""

from __future__ import annotations

import shlex

import pytest

from beokit.boot import config
from beokit.nettee import options
from beokit.provision import plan

BASE = {"server": {"address": "10.0.0.1", "root": "."}, "network": {"subnet": "10.0.0.0/16"}}


def cfg(nettee: dict | None = None, provision: dict | None = None, tmp=None) -> config.BootConfig:
    doc = dict(BASE)
    if nettee is not None:
        doc["nettee"] = nettee
    if provision is not None:
        doc["provision"] = provision
    return config.parse(doc, tmp)


def parsed(line: str) -> options.NetteeConfig:
    words = shlex.split(line)
    assert words[0] == "nettee"
    return options.parse_args(words[1:])


@pytest.mark.parametrize("fanout", [1, 2, 3])
@pytest.mark.parametrize("failover", [1, 3])
def test_every_served_command_line_is_valid_nettee(fanout, failover):
    c = cfg({"order": "boot,node[1-20]", "fanout": fanout, "port": 7100, "failover": failover,
             "join_wait": 4, "parent_wait": 300})
    for i, name in enumerate(c.nettee.order):
        text = c.nettee.file_for(name).decode()
        keys = plan.parse_topology_file(text)
        nc = parsed(keys["command"])
        assert nc.port == 7100 and nc.name == name and nc.heal and nc.digest
        assert nc.root == (i == 0)
        kids = c.nettee.next_of(name)
        assert [hl[0].host for hl in nc.next] == kids
        assert keys["next"] == ",".join(kids)
        if kids:
            assert nc.connf == 4 and nc.wait_boot
            assert all(1 <= len(hl) <= failover for hl in nc.next)
        if i == 0:
            assert nc.inputs == ("-",)
        else:
            assert nc.timeout == 300 and nc.out == "-"


def test_chain_failover_lists_skip_ahead():
    c = cfg({"order": "boot,node[1-6]"})
    nc = parsed(plan.parse_topology_file(c.nettee.file_for("node2").decode())["command"])
    assert [[e.host for e in hl] for hl in nc.next] == [["node3", "node4", "node5"]]
    tip = parsed(plan.parse_topology_file(c.nettee.file_for("node6").decode())["command"])
    assert tip.next == () and tip.timeout == 600
    near = parsed(plan.parse_topology_file(c.nettee.file_for("node5").decode())["command"])
    assert [[e.host for e in hl] for hl in near.next] == [["node6"]]


def test_tree_failover_follows_the_first_branch():
    topo = plan.Topology(tuple(f"n{i}" for i in range(15)), fanout=2, failover=3)
    p = plan.node_plan(topo, "n0")
    assert p.hostlists == (("n1", "n3", "n7"), ("n2", "n5", "n11"))


def test_followup_round_lines_are_valid():
    names = [f"node{i}" for i in range(1, 12)]
    topo = plan.Topology(("boot", *names))
    got = plan.followup_hostlists(names)
    assert len(got[""]) == 8 and got["node1"] == [["node9"]] and got["node9"] == []
    for name, lists in got.items():
        p = plan.node_plan(topo, name or "boot")
        args = plan.nettee_args(topo, p, tuple(tuple(hl) for hl in lists))
        nc = options.parse_args(args + (["-in", "-"] if not name else []))
        assert [[e.host for e in hl] for hl in nc.next] == lists


@pytest.mark.parametrize(("section", "needle"), [
    ({"target": "relative/x"}, "provision.target"),
    ({"target": "/dev/vda", "image": "nope.img"}, "provision.image"),
    ({"target": "/dev/vda", "start_after": 99}, "provision.start_after"),
    ({"target": "/dev/vda", "start_wait": -1}, "provision.start_wait"),
    ({"target": "/dev/vda", "follow_up": "yes"}, "provision.follow_up"),
    ({"target": "/dev/vda", "colour": 1}, "provision.colour"),
    ({"target": "/dev/vda", "report_port": 70000}, "provision.report_port"),
])  # fmt: skip
def test_bad_provision_values_name_the_key(section, needle, tmp_path):
    with pytest.raises(config.BootConfigError, match=needle.replace(".", r"\.")):
        cfg({"order": "boot,node[1-4]"}, section, tmp_path)


def test_provision_needs_nettee_and_parses(tmp_path):
    with pytest.raises(config.BootConfigError, match=r"\[nettee\]"):
        cfg(None, {"target": "/dev/vda"}, tmp_path)
    (tmp_path / "img").write_bytes(b"x")
    c = cfg({"order": "boot,node[1-4]"}, {"target": "dir:/newroot", "image": "img",
                                          "start_after": 3}, tmp_path)  # fmt: skip
    assert c.provision.image == tmp_path / "img" and c.provision.start_after == 3
    assert c.provision.report_port_of(c.nettee.port) == 7002
