"""One call per command: the predicted time of a ``beo cast`` or a ``beo run``.

For the ``--dry-run`` of the CLIs (they print the plan and this prediction)
and for scripts.  Both return a :class:`Prediction`: ``.seconds`` and a
one-line ``.explain()``; ``.parts`` holds the breakdown.  The machine
figures behind them are :mod:`beokit.sim.machine`'s (measured on the
2-CPU box, see docs/scale.md); the network and the launch cost are
arguments, since neither can be known from here.

>>> p = predict_cast(100, 4 << 30, 10e9, chains=2)   # two chains share the root's port
>>> p.seconds > (4 << 30) / (10e9 / 8 / 2)
True
>>> predict_run(1000, 4, 0.1).explain()  # doctest: +ELLIPSIS
'beo run: 1000 hosts, tree k=4 (5 launch steps ...'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from beokit.sim import machine
from beokit.sim.cast import CastSpec, simulate_cast
from beokit.sim.launch import LaunchCosts, simulate_launch


@dataclass(frozen=True)
class Prediction:
    """A predicted time and what it is made of."""

    seconds: float
    command: str  # "beo cast" or "beo run"
    plan: str  # the plan in a few words
    parts: dict[str, float] = field(default_factory=dict)  # seconds (rates in bytes/s)
    assumptions: str = ""

    def explain(self) -> str:
        """One line: the plan, the prediction and its largest parts."""
        shown = [f"{k} {v:.2f} s" for k, v in self.parts.items()
                 if not k.endswith("rate") and v >= 0.005]  # fmt: skip
        rate = self.parts.get("rate")
        extra = f" at {rate / 1e6:.1f} MB/s" if rate else ""
        return (f"{self.command}: {self.plan}: predicted {_human(self.seconds)}{extra}"
                + (f" ({', '.join(shown)})" if shown else "")
                + (f"; {self.assumptions}" if self.assumptions else ""))  # fmt: skip


def _human(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "never"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def predict_run(n_hosts: int, k: int = 3, launch_cost: float | None = None, *,
                mode: str = "tree", steal: bool = False, shared_cores: float | None = None,
                slow_fraction: float = 0.0, slow_factor: float = 10.0,
                seed: int = 0, busy: bool = True) -> Prediction:  # fmt: skip
    """Predicted ``beo run`` time (first launch to last result) for ``n_hosts`` hosts.

    ``k``: fanout (tree) or window (flat).  ``launch_cost``: seconds one launch
    takes on an idle network (None: an ssh session as measured on this box,
    ~0.2 s).  ``mode``: tree, flat or sequential; ``steal``: the work-stealing
    variant of the tree.  ``shared_cores``: every host is on one machine with
    that many free cores (``-R exec``; ``launch_cost`` is then
    ``--launch-delay``); None: a cluster, each host its own CPU.
    ``slow_fraction`` of the hosts take ``slow_factor`` times longer.  ``busy``:
    beo run's tree (every node k launches in flight, :func:`beokit.launch.plan.
    busy_groups`); False: the k-ary tree of ``pack`` that beo cast launches.
    """
    if shared_cores is not None:
        costs = machine.box_launch(0.0 if launch_cost is None else launch_cost)
        where = f"one machine, {shared_cores:g} free cores"
    else:
        costs = machine.ssh_launch()
        if launch_cost is not None:  # the whole session as the user gave it
            costs = _with_session(costs, launch_cost)
        where = "a cluster (every host its own CPU)"
    r = simulate_launch(n_hosts, k, costs, mode=mode, steal=steal, shared_cores=shared_cores,
                        slow_fraction=slow_fraction, slow_factor=slow_factor, seed=seed,
                        busy=busy)  # fmt: skip
    per = costs.nominal() if mode == "tree" else costs.delay + costs.spawn_cpu + costs.client_cpu
    bound = r.depth * per
    shape = {"tree": f"tree k={k}", "flat": f"flat, window {k}", "sequential": "sequential"}[mode]
    plan = (f"{_count(n_hosts, 'host')}, {shape}{' with stealing' if r.steal else ''} "
            f"({_count(r.depth, 'launch step')} x {per:.3f} s = {bound:.2f} s bound)")  # fmt: skip
    parts = {"launch steps": bound, "root and CPU": max(0.0, r.seconds - bound)}
    return Prediction(r.seconds, "beo run", plan, parts, f"model of {where}")


def _count(n: int, noun: str) -> str:
    """``1 host``, ``2 hosts``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _with_session(costs: LaunchCosts, session: float) -> LaunchCosts:
    """``costs`` with one launch taking ``session`` seconds (the client's CPU kept in it)."""
    from dataclasses import replace

    return replace(costs, delay=max(0.0, session - costs.spawn_cpu - costs.client_cpu))


def predict_cast(n_nodes: int, size_bytes: int, rate_bps: float = 1e9, *, chains: int = 1,
                 fanout: int = 1, roots: int = 1, mtu: int = 1500,
                 launch_cost: float | None = None, launch_k: int = 3,
                 slow_fraction: float = 0.0, slow_factor: float = 0.5,
                 fail_fraction: float = 0.0, fail_kind: str = "crash", heal: bool = True,
                 retry: bool = True, node_rate: float = math.inf,
                 seed: int = 0) -> Prediction:  # fmt: skip
    """Predicted ``beo cast`` time for ``size_bytes`` to ``n_nodes`` receivers.

    ``rate_bps``: every port's line rate (bits/s, each way).  ``chains``: chains
    fed by each root (``--chains``); ``fanout``: children of every other node
    (1: chains, as beo cast builds them; 2+: a nettee tree); ``roots``: separate
    sources, each with its own port, the nodes split among them.  Launching
    the receivers: ``launch_cost`` seconds per launch through a tree of
    ``launch_k`` (None: an ssh session as measured here; 0: not counted).
    ``slow_fraction`` of the nodes take the stream at ``slow_factor`` of the
    port's rate; ``fail_fraction`` of them die mid-stream (``fail_kind``
    "crash": found by nettee's 5 s stall; "kill": at once) and are healed
    around (``heal``) and sent to again (``retry``).  ``node_rate``: bytes/s
    a node can write (its disk).
    """
    launch = 0.0
    if launch_cost != 0:
        launch = predict_run(n_nodes, launch_k, launch_cost, busy=False).seconds
    spec = CastSpec(n_nodes, size_bytes, roots=roots, chains=chains, fanout=fanout,
                    slow_fraction=slow_fraction, slow_factor=slow_factor, node_rate=node_rate,
                    fail_fraction=fail_fraction, fail_kind=fail_kind, heal=heal, retry=retry,
                    launch=launch, seed=seed)  # fmt: skip
    net = machine.cluster_network(rate_bps, mtu)
    r = simulate_cast(spec, net, machine.cluster_nettee())
    shape = (f"{chains} chain{'s' if chains > 1 else ''}" if fanout == 1
             else f"a tree of fanout {fanout} under {chains} root child(ren)")  # fmt: skip
    roots_said = "one root" if r.trees == 1 else f"each of {r.trees} roots"
    plan = (f"{size_bytes:,} bytes to {_count(n_nodes, 'node')}, {shape} from {roots_said}, "
            f"depth {r.depth}, {rate_bps / 1e9:g} Gbit/s ports")
    parts = {"launch": launch, "form": r.form, "stream": r.stream, "tail": r.tail,
             "reports": r.report, "retry": r.retry_seconds, "rate": r.rate}  # fmt: skip
    notes = []
    if r.failed:
        notes.append(f"{len(r.failed)} node(s) failed and were sent to again")
    notes.append("model of a switched cluster, docs/scale.md")
    return Prediction(r.seconds, "beo cast", plan, parts, "; ".join(notes))
