"""The round's book, the report datagrams and the lease (pure)."""

from __future__ import annotations

import pytest

from beokit.provision import lease, report


def test_report_and_answer_round_trip_and_bad_datagrams():
    r = report.StageReport("node3", "receiving", 2, 12345, "", "")
    assert report.decode_report(report.encode_report(r)) == r
    a = report.Answer(2, True, [["node4", "node5"]], "ab" * 32, 99, target="/dev/vda")
    assert report.decode_answer(report.encode_answer(a)) == a
    for bad in (b"x", b"[]", b'{"v": 1, "node": "n", "stage": "dancing"}',
                b'{"v": 1, "node": "", "stage": "ready"}', b'{"v": 1, "node": "n", "stage": '
                b'"ready", "bytes": -1}'):  # fmt: skip
        with pytest.raises(report.BadReport):
            report.decode_report(bad)


def book() -> report.RoundBook:
    b = report.RoundBook(("n1", "n2", "n3"), sha256="s", size=10)
    b.begin({"": [["n1", "n2"]], "n1": [["n2", "n3"]], "n2": [["n3"]], "n3": []})
    return b


def test_members_go_late_nodes_wait_for_the_follow_up():
    b = book()
    a = b.on_report(report.StageReport("n1", "booted"), 0.0)
    assert a.go and a.round == 1 and a.next == [["n2", "n3"]] and a.sha256 == "s"
    b.on_report(report.StageReport("n1", "ready", 1), 0.1)
    assert not b.should_start(0, 0.0, 5.0, 1.0)  # waits for all three...
    assert b.should_start(0, 0.0, 5.0, 5.0)  # ...or start_wait with one ready
    assert b.should_start(1, 0.0, 5.0, 1.0)  # start_after = 1
    b.streaming = True
    late = b.on_report(report.StageReport("n2", "booted"), 1.0)
    assert not late.go and late.round == 2
    assert b.on_report(report.StageReport("n1", "verified", 1, 10), 2.0).stop  # taken: stop
    follow = b.finish_round({"n1": ("NONE", 10)}, 3.0)
    assert follow == ["n2"] and b.nodes["n3"].stage == "absent"
    assert not b.on_report(report.StageReport("n2", "booted"), 3.1).go  # round 1 is closed
    b.next_round({"": [["n2"]], "n2": []})
    a = b.on_report(report.StageReport("n2", "booted"), 4.0)
    assert a.go and a.round == 2 and a.next == []
    assert b.on_report(report.StageReport("n1", "verified", 1, 10), 4.0).stop


def test_a_member_the_stream_never_reached_is_missed_and_a_dead_one_failed():
    b = book()
    for n in ("n1", "n2", "n3"):
        b.on_report(report.StageReport(n, "booted"), 0.0)
    b.streaming = True
    late = b.finish_round({"n1": ("NONE", 10), "n2": ("NWF", 4)}, 1.0)
    assert b.nodes["n2"].stage == "failed" and b.nodes["n2"].code == "NWF"
    assert b.nodes["n3"].stage == "missed" and late == ["n3"]
    assert report.decode_answer(report.encode_answer(b.on_report(report.StageReport("x", "booted"),
                                                                   2.0))).stop  # fmt: skip


def test_lease_from_udhcpc_environment():
    text = "ip=10.0.1.7\nhostname='node7'\nsiaddr=10.0.0.1\nopt224=6e65747465652f6e6f6465372e636f6e66\n"
    got = lease.from_env(lease.parse_env_text(text))
    assert got == lease.NodeLease("node7", "10.0.0.1", "nettee/node7.conf", "10.0.1.7")
    only = lease.from_env({"serverid": "10.0.0.1", "opt224": "nettee/node9.conf"})
    assert only.name == "node9"
    with pytest.raises(lease.LeaseError, match="siaddr"):
        lease.from_env({"hostname": "node1"})
    with pytest.raises(lease.LeaseError, match=r"\.\."):
        lease.from_env({"hostname": "node1", "siaddr": "10.0.0.1", "opt224": "../etc/passwd"})
