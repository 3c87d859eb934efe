"""beokit.sim: the discrete-event core and the models, against closed forms (pure, fast)."""

from __future__ import annotations

import math

import pytest

from beokit.sim import machine as M
from beokit.sim.cast import (
    CastSpec,
    NetteeCosts,
    Network,
    branch_cost,
    chunk_chain,
    framing,
    simulate_cast,
)
from beokit.sim.core import CpuPool, SimulationError, Simulator
from beokit.sim.gossip import GossipParams, alltoall, real_gossip, simulate_gossip
from beokit.sim.launch import LaunchCosts, plan_stats, simulate_launch
from beokit.sim.predict import Prediction, predict_cast, predict_run

MiB = 1 << 20

# ------------------------------------------------------------------ the core


def test_events_run_in_time_order_and_ties_in_scheduling_order() -> None:
    sim = Simulator()
    seen: list[str] = []
    sim.at(2.0, seen.append, "c")
    sim.at(1.0, seen.append, "a")
    sim.at(1.0, seen.append, "b")  # same time: after "a", scheduled first
    sim.after(0.5, lambda: sim.after(0.5, seen.append, "a2"))  # at 1.0, scheduled last
    assert sim.run() == 2.0
    assert seen == ["a", "b", "a2", "c"]


def test_cancel_until_and_refusals() -> None:
    sim = Simulator()
    seen: list[int] = []
    ev = sim.after(1.0, seen.append, 1)
    sim.after(3.0, seen.append, 3)
    Simulator.cancel(ev)
    assert sim.run(until=2.0) == 2.0 and seen == [] and sim.pending == 1
    assert sim.run() == 3.0 and seen == [3]
    with pytest.raises(SimulationError):
        sim.at(1.0, seen.append, 0)  # in the past
    with pytest.raises(SimulationError):
        sim.after(float("nan"), seen.append, 0)


def test_a_seed_makes_a_run_repeatable() -> None:
    def trace(seed: int) -> list[float]:
        sim = Simulator(seed)
        out: list[float] = []

        def tick() -> None:
            out.append(sim.now)
            if len(out) < 50:
                sim.after(sim.rng.expovariate(1.0), tick)

        sim.after(0.0, tick)
        sim.run()
        return out

    assert trace(7) == trace(7)
    assert trace(7) != trace(8)


def test_processor_sharing_and_the_gil_cap() -> None:
    sim = Simulator()
    pool = CpuPool(sim, cores=2)
    done: dict[str, float] = {}
    for name in ("a", "b", "c", "d"):  # four threads on two cores: each at half speed
        pool.submit(1.0, lambda n=name: done.__setitem__(n, sim.now))
    sim.run()
    assert all(t == pytest.approx(2.0) for t in done.values())
    assert pool.busy == pytest.approx(4.0)

    sim = Simulator()
    pool = CpuPool(sim, cores=2)
    done.clear()
    pool.submit(1.0, lambda: done.__setitem__("g1", sim.now), group="proc")
    pool.submit(1.0, lambda: done.__setitem__("g2", sim.now), group="proc")
    pool.submit(1.0, lambda: done.__setitem__("own", sim.now))
    sim.run()
    # one process's two threads share one core (its GIL); the other process has the other
    assert done["own"] == pytest.approx(1.0)
    assert done["g1"] == pytest.approx(2.0) and done["g2"] == pytest.approx(2.0)


def test_an_unbounded_pool_still_caps_a_group() -> None:
    sim = Simulator()
    pool = CpuPool(sim, cores=None)
    done: list[float] = []
    for _ in range(3):
        pool.submit(1.0, lambda: done.append(sim.now), group="root")
    pool.submit(1.0, lambda: done.append(sim.now))
    sim.run()
    assert sorted(done) == pytest.approx([1.0, 3.0, 3.0, 3.0])


# ------------------------------------------------------------------ distribution

BARE = NetteeCosts(start=0.0, form_hop=0.0, report_hop=0.0, wakeup=0.0)


def test_framing_is_tcp_payload_per_wire_byte() -> None:
    assert framing(1500, 14) == pytest.approx(1448 / 1514)
    assert framing(1500, 38) == pytest.approx(1448 / 1538)
    assert framing(9000, 14) == pytest.approx(8948 / 9014)
    with pytest.raises(ValueError):
        framing(100)


@pytest.mark.parametrize("nodes", [1, 2, 8, 40])
def test_a_chain_streams_in_size_over_rate_plus_a_hop_per_node(nodes: int) -> None:
    net = Network(1e9, latency=50e-6)
    size = 64 * MiB
    b = net.payload
    hop = (128 << 10) / b + 50e-6
    got = simulate_cast(CastSpec(nodes, size), net, BARE).seconds
    assert got == pytest.approx(size / b + 50e-6 + (nodes - 1) * hop)
    # the chunk-by-chunk simulation of the same chain agrees
    assert chunk_chain(nodes, size, b, latency=50e-6) == pytest.approx(got, rel=0.01)


def test_the_slowest_node_sets_the_rate_of_its_whole_tree() -> None:
    """A tee hands a chunk on only when every output took the last one: one slow leaf of a
    binary tree slows every node (chunk by chunk), as the fluid model assumes."""
    b = 100e6
    size = 32 * MiB
    rates = [math.inf] * 14
    rates[13] = b / 4  # a leaf that writes at a quarter of the port
    chunked = chunk_chain(14, size, b, fanout=2, node_rates=rates)
    assert chunked == pytest.approx(size / (b / 4), rel=0.05)
    net = Network(b * 8 / framing(1500, 38), latency=50e-6)
    spec = CastSpec(14, size, chains=2, fanout=2, slow_fraction=1 / 14, slow_factor=0.25)
    fluid = simulate_cast(spec, net, BARE)
    assert fluid.rate == pytest.approx(b / 4)
    assert fluid.seconds == pytest.approx(chunked, rel=0.05)


def test_chains_share_the_root_port_and_roots_do_not() -> None:
    net = Network(10e9)
    size = 1 << 30
    one = simulate_cast(CastSpec(100, size), net, BARE)
    four = simulate_cast(CastSpec(100, size, chains=4), net, BARE)
    roots = simulate_cast(CastSpec(100, size, roots=4), net, BARE)
    assert four.rate == pytest.approx(one.rate / 4)
    assert roots.rate == pytest.approx(one.rate) and roots.trees == 4
    assert four.depth == roots.depth == 25 and one.depth == 100


def test_the_control_plane_grows_with_the_subtree_each_message_names() -> None:
    # a chain of m: every hop costs hop + entry x (nodes below it, itself included)
    assert branch_cost(5, 1, 1.0, 0.0) == pytest.approx(5.0)
    assert branch_cost(5, 1, 0.0, 1.0) == pytest.approx(5 + 4 + 3 + 2 + 1)
    # a tree: the slowest path, each hop naming its own subtree
    assert branch_cost(7, 2, 1.0, 0.0) == pytest.approx(3.0)
    assert branch_cost(7, 2, 0.0, 1.0) == pytest.approx(7 + 3 + 1)


def test_a_killed_node_pauses_its_tree_for_detection_heal_and_replay() -> None:
    net = Network(1e9)
    costs = NetteeCosts(start=0, form_hop=0, report_hop=0, kill_detect=0.01, heal_resume=0.02,
                        heal_gap=4 * MiB)  # fmt: skip
    size = 256 * MiB
    clean = simulate_cast(CastSpec(10, size), net, costs)
    hurt = simulate_cast(CastSpec(10, size, fail_fraction=0.1, fail_kind="kill", retry=False),
                         net, costs)  # fmt: skip
    pause = 0.01 + 0.02 + 4 * MiB / net.payload
    assert hurt.failed and hurt.paused == pytest.approx(pause)
    # one node fewer: the tail is one hop shorter
    assert hurt.seconds == pytest.approx(clean.seconds + pause - costs.chunk / net.payload
                                         - costs.wakeup - net.latency, rel=1e-6)  # fmt: skip


def test_crashes_wait_for_the_stall_and_a_retry_sends_again() -> None:
    net = Network(1e9)
    size = 256 * MiB
    kill = simulate_cast(CastSpec(50, size, fail_fraction=0.02, fail_kind="kill", retry=False),
                         net)  # fmt: skip
    crash = simulate_cast(CastSpec(50, size, fail_fraction=0.02, retry=False), net)
    assert crash.seconds - kill.seconds == pytest.approx(5.0 - 0.008, rel=1e-3)  # one node
    again = simulate_cast(CastSpec(50, size, fail_fraction=0.02), net)
    assert again.retry_seconds > size / net.payload  # a whole second round
    assert again.seconds == pytest.approx(crash.seconds + again.retry_seconds)


def test_healing_beats_collapse_and_rerun() -> None:
    """Dead nodes (no retry): -heal loses a pause, a collapse the stream so far."""
    net = Network(1e9)
    spec = dict(nodes=200, size=512 * MiB, fail_fraction=0.01, fail_kind="kill", retry=False)
    for seed in range(5):
        heal = simulate_cast(CastSpec(**spec, seed=seed), net)  # type: ignore[arg-type]
        collapse = simulate_cast(CastSpec(**spec, heal=False, seed=seed), net)  # type: ignore[arg-type]
        assert collapse.restarts == 2 and not collapse.failed
        assert heal.seconds < collapse.seconds


def test_bad_cast_specs_are_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="chains"):
        CastSpec(10, 1, chains=0).check()
    with pytest.raises(ValueError, match="fail_kind"):
        CastSpec(10, 1, fail_kind="meteor").check()
    with pytest.raises(ValueError, match="port rate"):
        Network(0)


# ------------------------------------------------------------------ launch

FREE = LaunchCosts(delay=0.1, spawn_cpu=0.0, watch_cpu=0.0, agent_cpu=0.0, leaf_cpu=0.0, relay_cpu=0.0,
                   root_msg_cpu=0.0, hop_latency=0.0)  # fmt: skip


@pytest.mark.parametrize(("n", "k"), [(1, 4), (10, 3), (100, 32), (147, 32), (1000, 64)])
def test_a_flat_launch_takes_a_launch_per_window(n: int, k: int) -> None:
    got = simulate_launch(n, k, FREE, mode="flat")
    assert got.seconds == pytest.approx(math.ceil(n / k) * 0.1)
    assert got.leaves == n and got.agents == 0


def test_sequential_is_n_launches() -> None:
    assert simulate_launch(25, 4, FREE, mode="sequential").seconds == pytest.approx(2.5)


@pytest.mark.parametrize(("n", "k"), [(16, 2), (16, 4), (147, 3), (147, 4), (1000, 4)])
def test_a_tree_takes_its_depth_in_launches_and_cpu_only_adds(n: int, k: int) -> None:
    free = simulate_launch(n, k, FREE)
    assert free.seconds == pytest.approx(free.depth * 0.1)
    agents, leaves, _hops = plan_stats(n, k)
    assert (free.agents, free.leaves) == (agents, leaves)
    costly = simulate_launch(n, k, M.box_launch(0.1))
    assert costly.seconds > free.seconds
    assert costly.cpu_seconds > 0


def test_shared_cores_queue_the_launches_cpu() -> None:
    costs = M.box_launch(0.1)
    box = simulate_launch(500, 4, costs, shared_cores=2.0)
    cluster = simulate_launch(500, 4, costs)
    # as the 1000-host run: the CPU of every host on two cores, not the depth
    assert box.seconds > 1.5 * cluster.seconds
    assert box.seconds >= box.cpu_seconds / 2
    assert box.seconds > 2 * box.depth * 0.1


def test_stealing_rebalances_around_a_slow_head() -> None:
    costs = LaunchCosts(delay=0.2, spawn_cpu=0.001, agent_cpu=0.02, leaf_cpu=0.001,
                        relay_cpu=0.0001, root_msg_cpu=0.0001)  # fmt: skip
    slow = {0: 20.0}  # the first head (its share: a third of the hosts) answers 20x late
    from beokit.sim.launch import LaunchModel

    plain = LaunchModel(300, 3, costs, slow=slow).run()
    steal = LaunchModel(300, 3, costs, slow=slow, steal=True).run()
    clean = LaunchModel(300, 3, costs).run()
    own = 20 * (0.2 + 0.001 + 0.02)  # the slow host's own launch: nobody can shorten it
    assert steal.steals == 1
    # without stealing its 99 hosts wait for it: 4 more launch steps after it is up
    assert plain.seconds > own + 3 * 0.2
    # with stealing they are launched beside it: the run ends with the slow host
    assert own <= steal.seconds < own + clean.seconds / 4


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_stealing_is_never_slower_in_the_model(k: int) -> None:
    costs = LaunchCosts(delay=0.2, spawn_cpu=0.001, agent_cpu=0.05, leaf_cpu=0.001,
                        relay_cpu=0.0001, root_msg_cpu=0.0001)  # fmt: skip
    for seed in range(8):
        for n in (30, 150):
            plain = simulate_launch(n, k, costs, slow_fraction=0.03, seed=seed)
            steal = simulate_launch(n, k, costs, slow_fraction=0.03, seed=seed, steal=True)
            assert steal.seconds <= plain.seconds + 1e-9, (seed, n)
        # without slow hosts nothing is overdue: the very same run
        assert simulate_launch(200, k, costs, steal=True).seconds == pytest.approx(
            simulate_launch(200, k, costs).seconds)


def test_bad_launch_values_are_refused() -> None:
    with pytest.raises(ValueError, match="fanout"):
        simulate_launch(10, 0)
    with pytest.raises(ValueError, match="mode"):
        simulate_launch(10, 2, mode="star")
    with pytest.raises(ValueError, match="slow fraction"):
        simulate_launch(10, 2, slow_fraction=2.0)


# ------------------------------------------------------------------ gossip


def test_alltoall_traffic_grows_with_the_cluster_and_gossip_does_not() -> None:
    small, big = GossipParams(n=100), GossipParams(n=2000)
    assert alltoall(big).msgs_per_s == pytest.approx(alltoall(small).msgs_per_s * 1999 / 99)
    g_small, g_big = simulate_gossip(small), simulate_gossip(big)
    assert g_small.msgs_per_s == g_big.msgs_per_s == pytest.approx(2 * 4 * 4 / 1.5)
    assert g_big.msgs_per_s < 50


@pytest.mark.parametrize("loss", [0.0, 0.2])
def test_gossip_news_reaches_every_table_within_a_few_periods(loss: float) -> None:
    p = GossipParams(n=1500, loss=loss, seed=5)
    r = simulate_gossip(p)
    assert math.isfinite(r.best_all)
    assert r.best_p50 <= r.best_p99 <= r.best_all <= 3 * p.period
    # an epidemic: about log(N) / log(1 + fanout) rounds for most of the tables
    rounds = math.log(p.n) / math.log(1 + p.fanout * (1 - loss))
    assert r.best_p50 <= (rounds + 2) * p.period / p.rounds
    assert r.dead_detect == pytest.approx(p.expire * p.period)


def test_gossip_model_agrees_with_dshds_state_machine() -> None:
    """The model against dshd's own Gossip and Table (beokit.dsh.gossip_sim) at 60
    members, 8 spreads each: the harness makes the idle member the only best (the
    loads of an earlier harness tied a tenth of the cluster with it: 2-5x slower)
    and looks at a table as the daemon answers, at the arrival of the news."""
    pytest.importorskip("beokit.dsh.gossip_sim")
    real = [real_gossip(GossipParams(n=60, seed=s)) for s in range(1, 9)]
    model = simulate_gossip(GossipParams(n=60, trials=40))
    for attr in ("best_p50", "best_p99", "best_all"):
        got = sorted(getattr(r, attr) for r in real)
        median = (got[3] + got[4]) / 2
        assert getattr(model, attr) == pytest.approx(median, rel=0.25), attr
    assert model.msgs_per_s == pytest.approx(real[0].msgs_per_s, rel=0.05)


def test_gossip_answer_changes_at_the_arrival_of_the_news() -> None:
    """A table answers the news when it arrives (the daemon drains its socket before
    answering), not at its next round: with one round a period (1.5 s between a
    member's rounds) half the tables still answer within a round or so."""
    p = GossipParams(n=40, rounds=1, fanout=8, trials=9)
    r = simulate_gossip(p)
    # the origin's next round (0.75 s on average), then the news arrives at once at
    # its 8 targets; a relay waits for its own next round (another 0.75 s)
    assert r.best_p50 < 2.2 * p.period
    assert simulate_gossip(GossipParams(n=5, fanout=4, trials=9)).best_all < 1.1 * 1.5 / 4
    with pytest.raises(ValueError, match="partners"):
        simulate_gossip(GossipParams(n=50, partners=-1))


def test_gossip_coverage_is_whole_when_every_member_hears_every_other() -> None:
    assert simulate_gossip(GossipParams(n=12)).coverage == 1.0
    assert simulate_gossip(GossipParams(n=5000, seed=2)).coverage < 0.2


# ------------------------------------------------------------------ predictions


def test_predictions_say_what_they_are_in_one_line() -> None:
    cast = predict_cast(64, 1 << 30, 10e9, chains=2, launch_cost=0)
    assert isinstance(cast, Prediction) and cast.seconds > (1 << 30) / (10e9 / 8)
    line = cast.explain()
    assert "\n" not in line and "predicted" in line and "64 nodes" in line
    run = predict_run(1000, 4, 0.1)
    assert run.seconds >= 5 * 0.1 and "k=4" in run.explain()
    box = predict_run(147, 4, 0.1, shared_cores=2.0)
    assert box.seconds > predict_run(147, 4, 0.1, shared_cores=None).seconds * 0.5
    with pytest.raises(ValueError):
        predict_cast(0, 1)
