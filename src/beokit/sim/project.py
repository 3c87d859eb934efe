"""Projections to 1,000 and 10,000 nodes: tables (markdown) and PNG plots.

    python3 -m beokit.sim project [--nodes 10000] [--size 4G] [--seeds 5] [--png-dir docs]

Three parts: the time to image the nodes (``beo cast``: chains, trees, one
or several roots, at 1, 10 and 25 GbE, clean and with 1 % slow nodes and
0.1 % failures), the time to launch (``beo run`` over ssh: k, with and
without work stealing, clean and with 1 % slow hosts) and dshd's gossip
(traffic and staleness, all-to-all against push gossip).  Every figure
comes from :mod:`beokit.sim` with the machine figures of
:mod:`beokit.sim.machine`; the assumptions are printed with the tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from beokit.sim import machine
from beokit.sim.cast import CastSpec, simulate_cast, tree_depth, tree_sizes
from beokit.sim.gossip import GossipParams, alltoall, simulate_gossip
from beokit.sim.launch import simulate_launch

GiB = 1 << 30
KS = (2, 3, 4, 6, 8, 16, 32)


@dataclass(frozen=True)
class Shape:
    """A distribution topology for N nodes."""

    label: str
    roots: int
    chains: int  # per root
    fanout: int = 1


def shapes(n: int) -> list[Shape]:
    """Chains of 32, 100 and 1000 nodes from 1, 10 or 100 roots; one chain; a binary tree."""
    out = [Shape(f"one chain of {n:,}", 1, 1)]
    for length in (1000, 100, 32):
        total = math.ceil(n / length)
        if length >= n:
            continue
        for roots in (1, 10, 100):
            if roots <= total:
                out.append(Shape(f"{total} chains of {length}, {roots} root{'s' * (roots > 1)}",
                                 roots, math.ceil(total / roots)))  # fmt: skip
    out.append(Shape("binary tree (nettee -next a,b), 1 root", 1, 2, 2))
    return out


def _cast(n: int, size: int, rate: float, shape: Shape, degraded: bool, seed: int,
          launch: float) -> float:  # fmt: skip
    spec = CastSpec(n, size, roots=shape.roots, chains=shape.chains, fanout=shape.fanout,
                    slow_fraction=0.01 if degraded else 0.0, slow_factor=0.5,
                    fail_fraction=0.001 if degraded else 0.0, fail_kind="crash",
                    launch=launch, seed=seed)  # fmt: skip
    return simulate_cast(spec, machine.cluster_network(rate), machine.cluster_nettee()).seconds


def cast_table(n: int, size: int, seeds: int, launch: float) -> tuple[str, dict]:
    """Markdown and the figures for the plot."""
    rates = machine.RATES
    head = ("| topology | depth |" + "".join(f" {r} clean | {r} degraded |" for r in rates))
    lines = [head, "|---|---|" + "---|---|" * len(rates)]
    data: dict[str, dict[str, tuple[float, float]]] = {}
    for shape in shapes(n):
        depth = tree_depth(tree_sizes(n, shape.roots)[0], shape.chains, shape.fanout)
        cells = []
        for name, rate in rates.items():
            clean = _cast(n, size, rate, shape, False, 0, launch)
            bad = [_cast(n, size, rate, shape, True, s, launch) for s in range(seeds)]
            med = statistics.median(bad)
            data.setdefault(shape.label, {})[name] = (clean, med)
            cells.append(f" {_t(clean)} | {_t(med)} ({_t(min(bad))}-{_t(max(bad))}) |")
        lines.append(f"| {shape.label} | {depth} |" + "".join(cells))
    return "\n".join(lines), data


def _t(s: float) -> str:
    if not math.isfinite(s):
        return "inf"
    return f"{s:.1f} s" if s < 600 else f"{s / 60:.0f} min"


def launch_table(ns: Sequence[int], seeds: int) -> tuple[str, dict]:
    costs = machine.ssh_launch()
    lines = ["| N | mode | " + " | ".join(f"k={k}" for k in KS) + " |",
             "|---|---|" + "---|" * len(KS)]  # fmt: skip
    data: dict[tuple[int, str], list[float]] = {}
    for n in ns:
        for label, steal, slow in (("tree", False, 0.0), ("tree, 1 % slow hosts", False, 0.01),
                                   ("tree + stealing, 1 % slow hosts", True, 0.01)):  # fmt: skip
            row = []
            for k in KS:
                runs = [simulate_launch(n, k, costs, steal=steal, slow_fraction=slow,
                                        slow_factor=10.0, seed=s).seconds
                        for s in range(seeds if slow else 1)]  # fmt: skip
                row.append(statistics.median(runs))
            data[(n, label)] = row
            lines.append(f"| {n} | {label} | " + " | ".join(f"{t:.2f}" for t in row) + " |")
        flat = [simulate_launch(n, w, costs, mode="flat").seconds for w in (32, 64, 128)]
        lines.append(f"| {n} | flat, window 32 / 64 / 128 | "
                     + " / ".join(f"{t:.1f}" for t in flat) + " |" + " |" * (len(KS) - 1))
    return "\n".join(lines), data


def gossip_table(ns: Sequence[int], losses: Sequence[float] = (0.0, 0.05),
                 trials: int = 1) -> tuple[str, list]:  # fmt: skip
    head = ("| N | design | loss | datagrams/s per daemon (in+out) | bytes/s per daemon | "
            "datagrams/s, whole network | best answer: 50 % / 99 % / all of the tables (s) | "
            "table coverage | dead member gone (s) |")  # fmt: skip
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    results = []
    for n in ns:
        for loss in losses:
            p = GossipParams(n=n, loss=loss, trials=trials)
            for r in (alltoall(p), simulate_gossip(p)):
                results.append((loss, r))
                lines.append(f"| {n} | {r.design} | {loss * 100:.0f} % | {r.msgs_per_s:,.1f} | "
                             f"{r.bytes_per_s / 1e3:,.1f} kB | {r.cluster_msgs_per_s:,.0f} | "
                             f"{r.best_p50:.2f} / {r.best_p99:.2f} / {r.best_all:.2f} | "
                             f"{r.coverage * 100:.0f} % | {r.dead_detect:.1f} |")  # fmt: skip
    return "\n".join(lines), results


# ------------------------------------------------------------------ plots


def _plt():  # noqa: ANN202 - matplotlib, or None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_cast(path: Path, data: dict, n: int, size: int) -> None:
    plt = _plt()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    labels = list(data)
    for ax, kind, idx in ((axes[0], "clean", 0), (axes[1], "1 % slow, 0.1 % failures", 1)):
        x = range(len(labels))
        width = 0.27
        for j, rate in enumerate(machine.RATES):
            ax.barh([i + (j - 1) * width for i in x], [data[lb][rate][idx] for lb in labels],
                    height=width, label=rate)  # fmt: skip
        ax.set_yticks(list(x))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("seconds to image every node (log)")
        ax.set_title(f"{n:,} nodes, {size / GiB:g} GiB: {kind}", fontsize=10)
        ax.invert_yaxis()
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_launch(path: Path, data: dict) -> None:
    plt = _plt()
    if plt is None:
        return
    ns = sorted({n for n, _ in data})
    fig, axes = plt.subplots(1, len(ns), figsize=(6 * len(ns), 4.5))
    for ax, n in zip(axes if len(ns) > 1 else [axes], ns, strict=True):
        for (m, label), row in data.items():
            if m == n:
                ax.plot(KS, row, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(KS)
        ax.set_xticklabels([str(k) for k in KS])
        ax.set_xlabel("k (children per node)")
        ax.set_ylabel("seconds, first launch to last result")
        ax.set_title(f"beo run over ssh, {n:,} hosts (model)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_gossip(path: Path, ns: Sequence[int], trials: int = 1) -> None:
    plt = _plt()
    if plt is None:
        return
    grid = sorted(set(ns) | {100, 300, 1000, 3000, 10000})
    a2a = [alltoall(GossipParams(n=n)) for n in grid]
    push = [simulate_gossip(GossipParams(n=n, trials=trials)) for n in grid]
    lossy = [simulate_gossip(GossipParams(n=n, loss=0.05, trials=trials)) for n in grid]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.plot(grid, [r.msgs_per_s for r in a2a], marker="o", label="all-to-all (dshd before)")
    ax1.plot(grid, [r.msgs_per_s for r in push], marker="o", label="push gossip")
    ax1.axhline(50, color="grey", linestyle=":", label="goal: < 50 datagrams/s")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("members")
    ax1.set_ylabel("datagrams/s per daemon (in + out)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3, which="both")
    ax2.plot(grid, [r.best_p99 for r in a2a], marker="o", label="all-to-all, 99 % of tables")
    ax2.plot(grid, [r.best_p99 for r in push], marker="o", label="push gossip, 99 %")
    ax2.plot(grid, [r.best_all for r in push], marker="x", label="push gossip, all tables")
    ax2.plot(grid, [r.best_all for r in lossy], marker="x", label="push gossip, 5 % loss, all")
    ax2.axhline(3 * 1.5, color="grey", linestyle=":", label="goal: 3 periods")
    ax2.set_xscale("log")
    ax2.set_xlabel("members")
    ax2.set_ylabel("seconds until the best answer reflects a load change")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    from beokit.cli import parse_size

    ap = argparse.ArgumentParser(prog="python3 -m beokit.sim project",
                                 description="Projections of beokit to 1,000 and 10,000 nodes "
                                             "(model; docs/scale.md)")  # fmt: skip
    ap.add_argument("--nodes", type=int, default=10_000, help="nodes to image (default 10000)")
    ap.add_argument("--size", type=parse_size, default=4 * GiB, help="image size (default 4G)")
    ap.add_argument("--seeds", type=int, default=5,
                    help="runs (seeds) of every degraded case; the median is shown (default 5)")
    ap.add_argument("--png-dir", type=Path, help="draw scale-cast.png, scale-launch.png and "
                                                 "scale-gossip.png here")  # fmt: skip
    ap.add_argument("--parts", default="cast,launch,gossip", help="comma list (default all)")
    a = ap.parse_args(argv)
    if a.nodes < 2 or a.seeds < 1:
        ap.error("--nodes must be >= 2 and --seeds >= 1")
    parts = set(a.parts.split(","))
    when = dt.date.today().isoformat()
    cmd = "python3 -m beokit.sim project " + " ".join(argv if argv is not None else sys.argv[1:])
    if "cast" in parts:
        launch_k = 8
        launch = simulate_launch(a.nodes, launch_k, machine.ssh_launch(), busy=False).seconds
        text, data = cast_table(a.nodes, a.size, a.seeds, launch)
        out(f"## Time to image {a.nodes:,} nodes with {a.size / GiB:g} GiB ({cmd.strip()}, "
            f"{when})\n")  # fmt: skip
        out(f"Launch of every receiver over ssh (tree k={launch_k}) included: {launch:.1f} s. "
            "Degraded: 1 % of the nodes take the stream at half the port rate, 0.1 % crash "
            f"mid-stream (healed around after nettee's 5 s stall, sent to again after); median "
            f"of {a.seeds} seeds (range).\n")  # fmt: skip
        out(text + "\n")
        if a.png_dir:
            plot_cast(a.png_dir / "scale-cast.png", data, a.nodes, a.size)
    if "launch" in parts:
        ns = sorted({1000, a.nodes})
        text, ldata = launch_table(ns, a.seeds)
        out(f"## Launch time, beo run over ssh ({cmd.strip()}, {when})\n")
        c = machine.ssh_launch()
        out(f"One launch: {c.delay + c.client_cpu:.3f} s ssh session ({c.client_cpu:.3f} s of it "
            f"the client's CPU on the parent, {c.spawn_cpu * 1e3:.2f} ms the parent's Popen) + "
            f"{c.agent_cpu:.3f} s interpreter for an agent; "
            f"the root reads {c.msgs_per_host} messages a host at {c.root_msg_cpu * 1e6:.0f} us "
            f"each. Slow hosts: 10x. Seconds, first launch to last result; median of "
            f"{a.seeds} seeds where hosts are slow.\n")  # fmt: skip
        out(text + "\n")
        if a.png_dir:
            plot_launch(a.png_dir / "scale-launch.png", ldata)
    if "gossip" in parts:
        ns = sorted({100, 1000, a.nodes})
        text, _ = gossip_table(ns, trials=a.seeds)
        out(f"## dshd gossip ({cmd.strip()}, {when})\n")
        out("Period 1.5 s, expiry 3 periods; push gossip: 4 rounds a period, fanout 4 (2 of "
            "them to members heard from within the expiry), 8 candidates + 4 more per "
            "datagram, no anti-entropy. Best answer: until a table's answer names a member "
            "that became the least loaded (the arrival there of the first datagram with the "
            f"news); median of {a.seeds} spreads.\n")  # fmt: skip
        out(text + "\n")
        if a.png_dir:
            plot_gossip(a.png_dir / "scale-gossip.png", ns, a.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
