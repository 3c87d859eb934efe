"""Pure logic of beo cast: topology, dolly config, command lines, verdicts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beokit.cast import channel, dollytab, plan, verdict
from beokit.errors import UsageError
from beokit.hostlist import expand


@given(st.integers(1, 200), st.integers(1, 20))
def test_chains_are_a_balanced_partition_in_order(n: int, k: int) -> None:
    hosts = [f"n{i}" for i in range(n)]
    chains = plan.plan_chains(hosts, k)
    assert [h for c in chains for h in c.hosts] == hosts
    assert len(chains) == min(n, k)
    sizes = [len(c.hosts) for c in chains]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert len({c.label for c in chains}) == len(chains)


def test_default_is_one_linear_chain() -> None:
    (c,) = plan.plan_chains(["a", "b", "c"])
    assert c.hosts == ["a", "b", "c"]
    assert plan.links([c]) == {"a": "b", "b": "c", "c": None}


def test_bad_chain_count() -> None:
    with pytest.raises(UsageError, match="--chains 0"):
        plan.plan_chains(["a"], 0)


@given(st.integers(1, 60), st.integers(1, 6), st.data())
def test_replan_keeps_shape_without_dead_hosts(n: int, k: int, data: st.DataObject) -> None:
    hosts = [f"n{i}" for i in range(n)]
    chains = plan.plan_chains(hosts, k)
    alive = set(data.draw(st.lists(st.sampled_from(hosts), unique=True)))
    again = plan.replan(chains, alive)
    assert [h for c in again for h in c.hosts] == [h for h in hosts if h in alive]
    assert all(c.hosts for c in again)
    nxt = plan.links(again)
    assert set(nxt) == alive and sum(v is None for v in nxt.values()) == len(again)


def test_topology_file_one_chain_per_switch() -> None:
    text = """# rack layout
    sw0: host[1-4]
    sw1: host[5-8] via={host}-eth1   # second rail
    host9
    """
    hosts = expand("host[1-9]")
    chains = plan.parse_topology(text, hosts, expand)
    assert [c.label for c in chains] == ["sw0", "sw1", "chain2"]
    assert chains[1].hosts == expand("host[5-8]") and chains[1].data_name("host5") == "host5-eth1"
    assert chains[0].data_name("host1") == "host1"


def test_topology_hosts_outside_the_set_are_left_out() -> None:
    chains = plan.parse_topology("a: n[1-4]\nb: n[5-8]\n", ["n2", "n6"], expand)
    assert [c.hosts for c in chains] == [["n2"], ["n6"]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n[1-2]\n", "n3 is in no chain"),
        ("n[1-3]\nn3\n", "n3 is in chain"),
        ("x: via={host}-ib\n", "no hosts"),
        ("n[1-3] via=ib\n", "needs {host}"),
    ],
)
def test_bad_topology_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        plan.parse_topology(text, expand("n[1-3]"), expand)


DOLLYTAB = """infile /dev/sda5
outfile /dev/sda5
server node1
firstclient node2
lastclient node5
clients 4
node2
node3
node4
node5
endconfig
"""


def test_dollytab_is_read() -> None:
    cfg = dollytab.parse_dollytab(DOLLYTAB)
    assert (cfg.infile, cfg.outfile, cfg.server) == ("/dev/sda5", "/dev/sda5", "node1")
    assert cfg.hosts == ["node2", "node3", "node4", "node5"] and not cfg.compressed
    assert dollytab.dolly_dest(cfg) == "/dev/sda5"


def test_dollytab_on_one_line_with_options() -> None:
    # the form of openSUSE's sample dolly.conf: words, not lines
    text = ("compressed infile /srv/img.gz outfile /dev/sdb segsize 4096 server node1 "
            "hyphennormal fanout 2 firstclient n1 lastclient n2 clients 2 n1 n2 endconfig")  # fmt: skip
    cfg = dollytab.parse_dollytab(text)
    assert cfg.compressed and cfg.fanout == 2 and cfg.hosts == ["n1", "n2"]
    assert dollytab.dolly_dest(cfg) == "|gunzip -c > /dev/sdb"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "missing infile"),
        ("infile a outfile b firstclient x lastclient y clients 1 x endconfig", "lastclient 'y'"),
        ("infile a outfile b firstclient x lastclient x clients 2 x endconfig", "only 1 host"),
        ("infile a outfile b firstclient x lastclient x clients 1 x y", "expected 'endconfig'"),
        ("infile a outfile b add 2 firstclient x", "'add'"),
        ("infile a outfile b bogus 1", "unknown entry 'bogus'"),
        ("infile a outfile b firstclient x lastclient x clients zero", "bad clients 'zero'"),
        ("infile a split outfile b", "split"),
        ("outfile b", "expected 'infile'"),
    ],
)
def test_bad_dollytab_names_the_entry(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        dollytab.parse_dollytab(text)


@given(st.text(max_size=200))
def test_dollytab_parser_never_crashes(text: str) -> None:
    try:
        dollytab.parse_dollytab(text)
    except UsageError:
        pass


def test_dest_kinds_and_host_expansion() -> None:
    assert plan.dest_kind("/tmp/x", "file") == "file"
    assert plan.dest_kind("/srv", "dir") == "dir"
    assert plan.dest_kind("|tar -x", "stdin") == "cmd"
    assert channel.expand_dest("/tmp/{host}/img", "n1") == "/tmp/n1/img"
    with pytest.raises(UsageError):
        plan.dest_kind("|  ", "file")


def test_resilience_flags_in_one_place() -> None:
    both = set(plan.RESILIENCE_FLAGS)
    assert plan.resilience_args(True, both) == ["-heal", "-digest", "-colwf"]
    assert plan.resilience_args(False, both) == ["-digest", "-conwf", "-conrf", "-colwf"]
    assert plan.resilience_args(True, set()) == ["-conwf", "-conrf", "-colwf"]


def test_command_lines() -> None:
    args = plan.receiver_args(host="n2", port=7000, dest="/d/n2", kind="file", child="10.0.0.3",
                              bind="127.0.3.2", extra=["-colwf"])  # fmt: skip
    assert args == ["-port", "7000", "-name", "n2", "-v", "5", "-bind", "127.0.3.2",
                    "-next", "10.0.0.3:7000", "-out", "/d/n2", "-colwf"]  # fmt: skip
    tip = plan.receiver_args(host="n9", port=7000, dest="/srv", kind="dir", child=None,
                             bind=None, extra=[], as_root=True)  # fmt: skip
    assert "-next" not in tip and tip[tip.index("-out") + 1] == "socket"
    assert "--same-owner" in tip[tip.index("-cmd") + 1]
    cmd = plan.receiver_args(host="n9", port=1, dest="|gunzip > x", kind="cmd", child=None,
                             bind=None, extra=[])  # fmt: skip
    assert cmd[-1] == "gunzip > x"
    root = plan.root_args(children=["a", "::1"], port=7000, report="/r.json", extra=[])
    assert root[root.index("-next") + 1] == "a:7000,[::1]:7000"
    assert "--exclude=*.o" in plan.tar_create("/src", ["*.o"])


def _report(nodes: list[dict]) -> dict:
    return {"status": "ok", "bytes": 100, "nodes": [{"name": "root", "bytes_in": 100}] + nodes}


def test_rows_all_good() -> None:
    chains = plan.plan_chains(["a", "b"])
    up = {"t": "up"}
    report = _report([{"name": h, "bytes_out": 100, "seconds": 1.0, "codes": []} for h in "ab"])
    res = {h: {"rc": 0, "bytes": 100, "fsync": "ok", "digest": "ff"} for h in "ab"}
    rows = verdict.rows(["a", "b"], chains, launch={"a": up, "b": up}, report=report, results=res,
                     source_digest="FF", stream_bytes=100, kind="file")  # fmt: skip
    assert [r.status for r in rows] == ["OK", "OK"] and [r.digest for r in rows] == ["ok", "ok"]
    assert rows[0].rate == pytest.approx(1e-4) and verdict.exit_status(rows) == 0


def test_rows_name_every_failure() -> None:
    hosts = ["a", "b", "c", "d", "e", "f"]
    chains = plan.plan_chains(hosts)
    launch = {h: {"t": "up"} for h in hosts}
    launch["e"] = {"t": "fail", "code": "LWF", "why": "cannot write /x: Permission denied"}
    del launch["f"]  # never answered
    nodes = [{"name": "a", "bytes_out": 100, "seconds": 1, "codes": []},
             {"name": "b", "bytes_out": 50, "seconds": 1, "codes": ["NWF"], "detail": "lost"},
             {"name": "c", "bytes_out": 100, "seconds": 1, "codes": []}]  # fmt: skip
    res = {"a": {"rc": 0, "bytes": 100, "fsync": "ok", "digest": "00"},
           "b": {"rc": -9, "bytes": 50, "fsync": "ok"},
           "c": {"rc": 0, "bytes": 100, "fsync": "fsync /x: Input/output error", "digest": "ff"},
           "d": {"rc": 0, "bytes": 100, "fsync": "ok", "digest": "ff"}}  # fmt: skip
    rows = verdict.rows(hosts, chains, launch=launch, report=_report(nodes), results=res,
                     source_digest="ff", stream_bytes=100, kind="file")  # fmt: skip
    got = {r.host: r.codes for r in rows}
    assert got == {"a": ["BDG"], "b": ["NWF", "LOST", "SHORT"], "c": ["SYNC"],
                   "d": ["BSTAT"], "e": ["LWF"], "f": ["DOWN"]}  # fmt: skip
    assert "Permission denied" in rows[4].detail and verdict.exit_status(rows) == 1
    assert verdict.retry_hosts(rows) == ["a", "b", "c", "d", "e"]


def test_a_collapsed_chain_says_why_on_every_node_it_never_reached() -> None:
    """The root could not reach the chain's head (a name only the nodes resolve): each
    node says so, with the option that fixes it, not only "not in the root's report";
    and the title says nothing was sent, not that SOURCE is empty."""
    from beokit.cast.cli import _title
    from beokit.cast.job import CastOutcome

    detail = ("child host2:7000 is not reachable (cannot resolve host2: Name or service "
              "not known); -w waits for it")  # fmt: skip
    report = {"status": "collapsed", "bytes": 0, "nodes": [
        {"name": "host2:7000", "codes": ["NNF"], "fatal": True, "detail": detail}]}  # fmt: skip
    why = verdict.collapse_reason(report)
    assert why.startswith("the chain collapsed at host2:7000: child host2:7000 is not reach")
    assert why.endswith("--resolve names the nodes' data addresses")
    rows = verdict.rows(["host2", "host3"], plan.plan_chains(["host2", "host3"]),
                        launch={h: {"t": "up"} for h in ("host2", "host3")}, report=report,
                        results={}, source_digest=None, stream_bytes=None, kind="file")  # fmt: skip
    assert all(r.codes[0] == "BSTAT" and why in r.detail for r in rows)
    assert verdict.collapse_reason(_report([])) == "" and verdict.collapse_reason(None) == ""

    class J:
        source, dest, hosts = "img", "/x", ["host2", "host3"]

    title = _title(J(), CastOutcome(rows, stream_seconds=0.02, collapsed=why), None)
    assert title == f"beo cast img -> /x: nothing sent to 2 node(s): {why}"
    assert "SOURCE is empty" in _title(J(), CastOutcome(rows, stream_seconds=0.01), None)


def test_merge_and_eta() -> None:
    first = [verdict.Row("a"), verdict.Row("b", codes=["NWF"], status="NWF")]
    again = [verdict.Row("b", attempt=2)]
    merged = verdict.merge(first, again)
    assert [r.ok for r in merged] == [True, True] and merged[1].attempt == 2
    assert plan.eta(25, 100, 1.0) == pytest.approx(3.0)
    assert plan.eta(0, 100, 1.0) is None and plan.eta(5, None, 1.0) is None


def test_hosts_file() -> None:
    names = plan.parse_hosts_file("198.18.0.1 host1 h1 # c\n\n198.18.0.2 host2\n")
    assert names == {"host1": "198.18.0.1", "h1": "198.18.0.1", "host2": "198.18.0.2"}
    with pytest.raises(UsageError, match="bad address 'host1'"):
        plan.parse_hosts_file("host1 198.18.0.1\n")


SNAP = {"ino": 7, "dev": 1, "size": 100, "mtime_ns": 5, "ctime_ns": 6}


@pytest.mark.parametrize(("after", "sent", "words"), [
    (dict(SNAP), 100, ""),
    (dict(SNAP), None, ""),
    (dict(SNAP, size=40, mtime_ns=9), 40, "from 100 to 40 bytes"),
    (dict(SNAP, size=140, mtime_ns=9), 140, "from 100 to 140 bytes"),
    (dict(SNAP, mtime_ns=9, ctime_ns=9), 100, "written to"),
    (dict(SNAP, ino=8), 100, "replaced"),
    (dict(SNAP), 60, "60 bytes were sent; it had 100"),
    ({"missing": 1}, None, "can no longer be read"),
])  # fmt: skip
def test_source_change(after: dict, sent: int | None, words: str) -> None:
    why = verdict.source_change(SNAP, after, sent)
    assert (why == "") == (words == "") and words in why
    if why:
        assert why.startswith("SOURCE changed during the stream: ")
    assert verdict.source_change(None, None, 5) == ""  # stdin, a directory: nothing to compare
    block = {"ino": 3, "dev": 1, "size": 100, "block": 1}  # no times: a device's node keeps them
    assert verdict.source_change(block, dict(block), 100) == ""


def test_a_changed_source_fails_every_started_node_and_settle_says_what_dest_holds() -> None:
    rows = [verdict.Row("a", digest="ok"), verdict.Row("b", codes=["NWF"], status="NWF", digest="-"),
            verdict.Row("c", codes=["LWF"], status="LWF", digest="n/a")]  # fmt: skip
    verdict.fail_all(rows, "", "SOURCE changed during the stream: replaced")
    assert [r.codes for r in rows] == [["CHANGED"], ["NWF", "CHANGED"], ["LWF"]]
    verdict.settle(rows, {"a": {"t": "discarded", "dest": "unchanged"},
                       "b": {"t": "discarded", "dest": "partial", "bytes": 10}})  # fmt: skip
    assert [r.dest for r in rows] == ["unchanged", "partial", "unchanged"]
    ok = [verdict.Row("a"), verdict.Row("b"), verdict.Row("c")]
    verdict.settle(ok, {"a": {"t": "committed", "ok": True, "dest": "new"},
                     "b": {"t": "committed", "ok": False, "why": "cannot rename",
                           "dest": "unchanged"}})  # fmt: skip
    assert [(r.status, r.dest) for r in ok] == [("OK", "new"), ("LWF", "unchanged"),
                                                ("LOST", "unknown")]  # fmt: skip


def test_interrupted_rows_name_every_node() -> None:
    hosts = ["a", "b", "c", "d", "e", "f"]
    launch = {h: {"t": "up"} for h in "abcd"}
    launch["e"] = {"t": "fail", "code": "LWF", "why": "no room"}
    finals = {"a": {"t": "committed", "ok": True, "dest": "new"},
              "b": {"t": "aborted", "dest": "unchanged"},
              "c": {"t": "aborted", "dest": "partial", "bytes": 4096}}  # fmt: skip
    rows = verdict.interrupted_rows(hosts, plan.plan_chains(hosts), launch=launch, finals=finals,
                                 results={"a": {"bytes": 9, "seconds": 1.0}},
                                 signame="SIGTERM")  # fmt: skip
    got = {r.host: (r.status, r.dest) for r in rows}
    assert got == {"a": ("OK", "new"), "b": ("SIG", "unchanged"), "c": ("SIG", "partial"),
                   "d": ("SIG", "unknown"), "e": ("LWF", "unchanged"),
                   "f": ("SIG", "unchanged")}  # fmt: skip
    detail = {r.host: r.detail for r in rows}
    assert detail["c"] == "beo cast stopped by SIGTERM: DEST holds a partial copy " \
                          "(4,096 bytes, written in place)"
    assert "no answer" in detail["d"] and "not started" in detail["f"]
    assert rows[0].bytes == 9


def test_dry_run_prints_the_plan_and_the_prediction_and_starts_nothing(
        tmp_path, capsys) -> None:  # fmt: skip
    """Names no resolver knows (nothing is reached: no callback address is looked for),
    three chains, 10 Gbit/s: the plan and beokit.sim's predicted time."""
    from beokit.cli import main

    src = tmp_path / "image.bin"
    src.write_bytes(b"x" * 4096)
    rc = main(["cast", "--dry-run", "--chains", "3", "--rate", "10gbit", str(src),
               "nowhere[1-300]", "--to", "/tmp/image.bin"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].endswith("(file, 4,096 bytes) -> /tmp/image.bin on 300 node(s), -R ssh")
    assert lines[1] == "  chain0: 100 node(s): root -> nowhere1 -> nowhere2 -> ... -> nowhere100"
    assert lines[4].startswith("  launch: a tree of fanout 8, 3 step(s) deep")
    assert "-heal" in lines[5] and "-digest" in lines[5]
    assert lines[6].startswith("  predicted: beo cast: 4,096 bytes to 300 nodes, 3 chains")
    assert "10 Gbit/s ports: predicted " in lines[6]


def test_dry_run_of_stdin_has_no_prediction(capsys) -> None:
    from beokit.cli import main

    rc = main(["cast", "--dry-run", "-", "n[1-3]", "--to", "/x"])
    out = capsys.readouterr().out
    assert rc == 0 and "predicted: not known (SOURCE is stdin" in out
