"""Pure logic of beo run: splitting, schedules, wire messages, gathering."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beokit import framing
from beokit.errors import WireError
from beokit.launch import plan


@given(st.integers(0, 300), st.integers(1, 8))
def test_split_is_balanced_partition(n: int, k: int) -> None:
    hosts = [f"n{i}" for i in range(n)]
    groups = plan.split(hosts, k)
    assert [h for g in groups for h in g] == hosts
    assert len(groups) == min(n, k)
    assert all(groups) and (not groups or max(map(len, groups)) - min(map(len, groups)) <= 1)


@given(st.integers(0, 300), st.integers(1, 8))
def test_pack_is_partition_with_few_agents(n: int, k: int) -> None:
    hosts = [f"n{i}" for i in range(n)]
    groups = plan.pack(hosts, k)
    assert [h for g in groups for h in g] == hosts
    assert len(groups) == min(n, k) and all(groups)

    def agents(share: list[str], f) -> int:  # hosts that get a share: run an agent
        return sum(bool(g[1:]) + agents(g[1:], f) for g in f(share, k)) if share else 0

    assert agents(hosts, plan.pack) <= agents(hosts, plan.split)
    if k > 1:
        assert agents(hosts, plan.pack) <= -(-n // k) + plan.tree_depth(n, k)


def _tree_depth(hosts: list[str], k: int) -> int:
    """Depth of the tree the launcher really builds (root plan, then child_groups)."""
    groups = plan.root_plan("tree", hosts, k).groups
    return max((1 + _sub(g[1:], k) for g in groups), default=0)


def _sub(share: list[str], k: int) -> int:
    return max((1 + _sub(g[1:], k) for g in plan.child_groups(share, k)), default=0)


@pytest.mark.parametrize("n", [1, 2, 5, 16, 32, 147, 1000])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_built_tree_has_optimal_depth(n: int, k: int) -> None:
    assert _tree_depth([f"n{i}" for i in range(n)], k) == plan.tree_depth(n, k)


def test_depth_of_modes() -> None:
    assert plan.tree_depth(147, 2) == 7 and plan.tree_depth(147, 3) == 5
    assert plan.tree_depth(147, 4) == 4 and plan.tree_depth(32, 3) == 3
    assert plan.depth("flat", 147, 32) == 5
    assert plan.depth("sequential", 147, 1) == plan.depth("ring", 147, 1) == 147


def test_root_plans() -> None:
    hosts = ["a", "b", "c", "d"]
    assert plan.root_plan("flat", hosts, 2) == plan.LaunchPlan([["a"], ["b"], ["c"], ["d"]], 2, 0)
    assert plan.root_plan("sequential", hosts, 9).window == 1
    assert plan.root_plan("ring", hosts, 3) == plan.LaunchPlan([hosts], 1, 1)
    assert plan.child_groups(["x", "y"], 0) == []
    with pytest.raises(ValueError):
        plan.root_plan("star", hosts, 2)
    with pytest.raises(ValueError):
        plan.split(hosts, 0)


messages = st.one_of(
    st.builds(plan.hello, st.text(), st.text()),
    st.builds(plan.state, st.text(), st.sampled_from(["launched", "running"])),
    st.builds(plan.result, st.text(), st.one_of(st.none(), st.integers(-255, 255)),
              st.text(), st.text(), st.one_of(st.none(), st.text())),  # fmt: skip
    st.builds(plan.work, st.lists(st.text()), st.fixed_dictionaries({"command": st.text()})),
)


@given(st.lists(messages), st.integers(1, 50))
def test_decoder_reassembles_any_chunking(msgs: list[dict], chunk: int) -> None:
    wire = b"".join(framing.encode(m) for m in msgs)
    dec = framing.LineDecoder(plan.MAX_LINE)
    out = []
    for i in range(0, len(wire), chunk):
        out += dec.feed(wire[i : i + chunk])
    assert out == msgs


@given(st.binary())
def test_decoder_never_crashes_on_garbage(data: bytes) -> None:
    try:
        framing.LineDecoder(max_line=1000).feed(data)
    except WireError:
        pass


def test_header_round_trip_and_errors() -> None:
    hdr = plan.parse_header(plan.header("t0k", "127.0.0.1:99", "n1"))
    assert (hdr["token"], hdr["parent"], hdr["h"]) == ("t0k", "127.0.0.1:99", "n1")
    assert plan.split_parent(hdr["parent"]) == ("127.0.0.1", 99)
    with pytest.raises(WireError):
        plan.parse_header(framing.encode({"t": "header", "v": 99}))
    with pytest.raises(WireError):
        plan.split_parent("nohost")
    with pytest.raises(WireError):
        framing.LineDecoder(max_line=10).feed(b"x" * 20)


@given(st.binary(max_size=4096))
def test_header_carries_input_bytes(data: bytes) -> None:
    hdr = plan.parse_header(plan.header("t", "a:1", "n1", data))
    assert plan.header_payload(hdr) == data
    assert plan.header_payload(plan.parse_header(plan.header("t", "a:1", "n1"))) is None
    with pytest.raises(WireError):
        plan.header_payload({"in": "not base64!"})


def test_gather_folds_identical_outputs_like_clush() -> None:
    outs = {"n1": "a\n", "n2": "a\n", "n3": "b\n", "n10": "a\n", "n4": ""}
    assert plan.gather(outs) == [("n[1-2,10]", 3, "a\n"), ("n3", 1, "b\n")]
    res = {"n1": plan.result("n1", 0), "n2": plan.result("n2", 3), "n3": plan.result("n3", 3),
           "n4": plan.result("n4", None, error="no contact within 2 s")}  # fmt: skip
    assert plan.gather_codes(res) == [("n[2-3]", "exited with exit code 3"),
                                      ("n4", "no contact within 2 s")]  # fmt: skip


def test_tally_counts() -> None:
    t = plan.Tally(3)
    for m in (plan.state("a", "launched"), plan.state("a", "running"), plan.state("b", "launched")):
        t.apply(m)
    assert t.counts() == {"total": 3, "launched": 2, "running": 1, "done": 0, "failed": 0}
    t.apply(plan.result("a", 0))
    t.apply(plan.result("b", None, error="down"))
    assert t.counts()["done"] == 1 and t.counts()["failed"] == 1 and t.finished == 2


def _busy_tree(share: list[str], k: int, steps: int | None) -> tuple[list[str], int, int]:
    """(every host the busy tree launches, in order; its agents; its depth in steps)."""
    seen: list[str] = []
    agents = depth = 0
    for j, (group, left) in enumerate(plan.busy_groups(share, k, steps)):
        step = j // k + 1
        seen.append(group[0])
        sub, sub_agents, sub_depth = _busy_tree(group[1:], k, left)
        seen += sub
        agents += sub_agents + (len(group) > 1)
        depth = max(depth, step + sub_depth)
    return seen, agents, depth


@pytest.mark.parametrize(("n", "k"), [(1, 1), (2, 1), (7, 1), (5, 4), (12, 3), (20, 3),
                                      (147, 4), (1000, 4), (1000, 2), (3000, 8)])  # fmt: skip
def test_busy_tree_reaches_every_host_once_in_its_depth_with_fewer_agents(n: int, k: int) -> None:
    hosts = [f"n{i}" for i in range(n)]
    seen, agents, depth = _busy_tree(hosts, k, None)
    assert sorted(seen) == sorted(hosts)  # a partition: every host once
    assert depth == plan.busy_depth(n, k) <= plan.tree_depth(n, k)
    assert agents == plan.busy_agents(hosts, k)
    assert agents <= agents_of_pack(hosts, k)
    # every node keeps k launches in flight: a child in slot j starts in step j // k + 1
    groups = plan.busy_groups(hosts, k)
    assert [s for _, s in groups] == [depth - 1 - j // k for j in range(len(groups))]


def agents_of_pack(hosts: list[str], k: int) -> int:
    return sum(1 + agents_of_pack(g[1:], k) for g in plan.pack(hosts, k) if len(g) > 1)


def test_busy_tree_of_the_issues_run_and_the_auto_choice() -> None:
    hosts = [f"n{i}" for i in range(1000)]
    assert plan.busy_agents(hosts, 4) == 144 < agents_of_pack(hosts, 4) == 249
    assert plan.root_plan("tree", hosts, 4, busy=True).window == 4
    assert len(plan.root_plan("tree", hosts, 4, busy=True).groups) == 20  # 4 a step, 5 steps
    assert plan.choose_mode(64, 0.2, 0.05) == ("flat", 64)  # one window: nothing is shallower
    assert plan.choose_mode(1000, 0.2, 0.05) == ("tree", 3)
    assert plan.choose_mode(1000, 0.1, 0.004, window=500) == ("flat", 500)


def test_launch_window_adapts_to_how_fast_launches_come_up() -> None:
    """-R exec: a plain window of k. A real remote backend: it starts at 2 launches per
    CPU (at least 4), opens by one per launch up about as fast as the fastest, closes
    by one (not below its floor) per one much slower; a launch not up after
    stale_after() stops holding it shut (only k does)."""
    import threading

    from beokit.launch.window import LaunchWindow

    plain = LaunchWindow(32, adaptive=False, cpus=2)
    assert all(plain.acquire(timeout=0) for _ in range(32)) and not plain.acquire(timeout=0)
    w = LaunchWindow(32, adaptive=True, cpus=2)
    assert w.size == w.floor == 4 and LaunchWindow(3, adaptive=True, cpus=2).floor == 3
    assert all(w.acquire(timeout=0) for _ in range(4)) and not w.acquire(timeout=0.02)
    w.up(0.2)  # the fastest so far
    w.up(0.25)  # within 1.5x: one more each
    assert w.size == 6 and w.acquire(timeout=0) and w.acquire(timeout=0)
    assert not w.acquire(timeout=0.02)
    for _ in range(5):
        w.up(1.0)  # 5x the fastest: handshakes queue on the CPUs
    assert w.size == 4
    for _ in range(6):
        w.release()
    # four launches that hang: once stale (4 x the fastest, 0.8 s) they hold only k
    began = threading.Semaphore(0)
    stop = threading.Event()

    def hang() -> None:
        assert w.acquire(timeout=5)
        w.begin()
        began.release()
        stop.wait(10)
        w.release()

    hung = [threading.Thread(target=hang) for _ in range(4)]
    for t in hung:
        t.start()
    for _ in hung:
        assert began.acquire(timeout=5)
    assert w.held == 4 and not w.acquire(timeout=0.02)
    assert w.acquire(timeout=5) and w.held == 5  # they went stale
    stop.set()
    for t in hung:
        t.join(5)
    assert w.held == 1 and not w.starts
