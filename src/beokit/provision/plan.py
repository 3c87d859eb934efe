"""Provisioning plan (pure): each node's place in the chain or tree, its failover
list and its nettee command line.

``order`` names the hosts of the distribution; the first is the root (the machine
that holds the image: the boot server when it provisions), the others receive.
With ``fanout`` 1 the order is a chain; with 2+ a tree (node i's children are
i*fanout+1 .. i*fanout+fanout, as ``beo boot`` has always served it).

A node that never powers on must not stop the chain: each child of a node is
given as a failover list (nettee ``-next [a,b,c] -connf WAIT``): the child
itself, then the hosts that would have been below it along its first branch, so
that a parent whose child did not join within ``join_wait`` seconds takes the
grandchild instead.  ``failover`` hosts are tried per branch; more dead hosts in a
row than that cut the branch, and the hosts below it give up after
``parent_wait`` seconds (nettee ``-t``) and are named by the round.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

NETTEE_FLAGS: tuple[str, ...] = ("-heal", "-digest")  # every line: self-healing, end-to-end digest
DEFAULT_PORT = 7000
DEFAULT_JOIN_WAIT = 10.0
DEFAULT_FAILOVER = 3
DEFAULT_PARENT_WAIT = 600.0
MAX_HOSTLISTS = 8  # nettee's -next takes at most 8 hostlists


@dataclass(frozen=True)
class Topology:
    """The shape of one distribution (``[nettee]`` of the boot config)."""

    order: tuple[str, ...]
    fanout: int = 1
    port: int = DEFAULT_PORT
    join_wait: float = DEFAULT_JOIN_WAIT
    failover: int = DEFAULT_FAILOVER
    parent_wait: float = DEFAULT_PARENT_WAIT

    def index(self, name: str) -> int | None:
        try:
            return self.order.index(name)
        except ValueError:
            return None


@dataclass(frozen=True)
class NodePlan:
    """One host's place: its parent, its children and their failover lists."""

    name: str
    position: int
    upstream: str  # "" for the root
    children: tuple[str, ...]
    hostlists: tuple[tuple[str, ...], ...]  # one failover list per child

    @property
    def is_root(self) -> bool:
        return self.position == 0


def child_indices(i: int, fanout: int, n: int) -> list[int]:
    first = i * fanout + 1
    return [c for c in range(first, first + fanout) if c < n]


def parent_index(i: int, fanout: int) -> int | None:
    return None if i == 0 else (i - 1) // fanout


def failover_list(c: int, fanout: int, n: int, depth: int) -> list[int]:
    """Child ``c``, then its first child, that one's first child... (``depth`` in all)."""
    out = [c]
    while len(out) < depth:
        below = child_indices(out[-1], fanout, n)
        if not below:
            break
        out.append(below[0])
    return out


def node_plan(topo: Topology, name: str) -> NodePlan | None:
    i = topo.index(name)
    if i is None:
        return None
    n = len(topo.order)
    kids = child_indices(i, topo.fanout, n)
    parent = parent_index(i, topo.fanout)
    lists = tuple(tuple(topo.order[k] for k in failover_list(c, topo.fanout, n, topo.failover))
                  for c in kids)  # fmt: skip
    return NodePlan(name, i, "" if parent is None else topo.order[parent],
                    tuple(topo.order[c] for c in kids), lists)  # fmt: skip


def next_value(hostlists: tuple[tuple[str, ...], ...] | list[list[str]]) -> str:
    """nettee's -next: one entry per branch, a bracketed failover list when it has
    more than one host."""
    parts = []
    for hl in hostlists:
        parts.append(hl[0] if len(hl) == 1 else "[" + ",".join(hl) + "]")
    return ",".join(parts)


def _wait(seconds: float) -> str:
    return f"{seconds:g}"


def nettee_args(topo: Topology, plan: NodePlan,
                hostlists: tuple[tuple[str, ...], ...] | None = None) -> list[str]:  # fmt: skip
    """The nettee arguments (after the program name) common to every use of ``plan``:
    role, port, name, children with failover, waits, -heal -digest.  The caller adds
    the input (root) or the output (receiver).  ``hostlists`` overrides the plan's
    children (a follow-up round)."""
    lists = plan.hostlists if hostlists is None else hostlists
    args = ["-root"] if plan.is_root else []
    args += ["-port", str(topo.port), "-name", plan.name]
    if lists:
        # -connf: each host of a list gets join_wait s to join, then the next; a
        # branch none of whose hosts joins is dropped (never a wait forever); -w: a host
        # not on the network yet (no ARP answer: EHOSTUNREACH) is waited for like one
        # that refuses, within the same join_wait, instead of collapsing the tree (NNF)
        args += ["-next", next_value(lists), "-connf", _wait(topo.join_wait), "-w"]
    if not plan.is_root and topo.parent_wait > 0:
        args += ["-t", _wait(topo.parent_wait)]
    return args + list(NETTEE_FLAGS)


def command_line(topo: Topology, plan: NodePlan) -> str:
    """The ``command=`` line of the topology file: the root reads stdin (``-in -``),
    a receiver writes stdout until the node command gives it its target."""
    args = nettee_args(topo, plan)
    if plan.is_root:
        args += ["-in", "-"]
    return shlex.join(["nettee", *args])


def topology_file(topo: Topology, name: str) -> bytes | None:
    """``nettee/<name>.conf`` as beo boot serves it (None: not in the order)."""
    plan = node_plan(topo, name)
    if plan is None:
        return None
    lines = [
        f"# nettee topology for {name}, served by beo boot",
        f"node={name}",
        f"position={plan.position}",
        f"upstream={plan.upstream}",
        f"next={','.join(plan.children)}",
        f"failover={next_value(plan.hostlists)}",
        f"port={topo.port}",
        f"join_wait={_wait(topo.join_wait)}",
        f"parent_wait={_wait(topo.parent_wait)}",
        f"command={command_line(topo, plan)}",
    ]
    return ("\n".join(lines) + "\n").encode()


def parse_topology_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines (``#`` comments) -> dict; the node command's reading of it."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out


def followup_hostlists(names: list[str], fanout: int = MAX_HOSTLISTS) -> dict[str, list[list[str]]]:
    """A follow-up round for ``names`` (nodes that missed the first): the root feeds
    up to ``fanout`` of them directly, each feeds the next ones as a chain.  Returns
    each host's -next (the root under the key ``""``)."""
    branches = max(1, min(fanout, MAX_HOSTLISTS, len(names)))
    chains = [names[k::branches] for k in range(branches)]
    out: dict[str, list[list[str]]] = {"": [[c[0]] for c in chains if c]}
    for c in chains:
        for a, b in zip(c, c[1:], strict=False):
            out[a] = [[b]]
        if c:
            out.setdefault(c[-1], [])
    return out
