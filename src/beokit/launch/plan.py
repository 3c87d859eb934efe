"""Pure logic of the tree launcher: no sockets, no processes.

* splitting a host list among k children and the schedules of the four
  modes (tree, flat, sequential, ring);
* the wire messages of the launcher protocol: one JSON object a line
  (:mod:`beokit.framing`), built by the functions below and checked by
  :func:`parse_header`; decode errors are :class:`~beokit.errors.WireError`;
* progress counting (:class:`Tally`) and output gathering (:func:`gather`),
  which folds identical outputs into one block with the NodeSet that
  printed them, like ``clush -b``.

This module is shipped to nodes where beokit is not installed, so it imports
only the standard library and beokit's shipped modules at module level
(ClusterShell lazily, at the root).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from beokit import framing, net
from beokit.errors import WireError
from beokit.proc import describe_exit

if TYPE_CHECKING:
    from typing import Any

MODES = ("tree", "flat", "sequential", "ring", "auto")
PROTOCOL = 1
MAX_LINE = 64 << 20  # one message (a host's output) is at most 64 MiB of JSON
SHIP_MARKER = b"BEOKIT-SHIP"
LEAF_MARKER = b"BEOKIT-UP"  # a leaf host's first stdout line: it is up, its command starts
# rsh does not carry the remote exit status back: a leaf run through rsh prints
# "\n" + STATUS_MARKER + status + "\n" last, and the parent strips that line
STATUS_MARKER = b"BEOKIT-EXIT="
# --input: bytes every command gets on its stdin.  They travel inside each
# child's header line (its ssh/rsh stdin), never in the TCP work message, so a
# secret in them crosses only the launch channels.
MAX_INPUT = 256 << 10
MAX_HEADER = 2 * MAX_INPUT


def split_status(out: bytes) -> tuple[bytes, int | None]:
    """(output without the status trailer, status) of an rsh leaf; None: no trailer."""
    i = out.rfind(b"\n" + STATUS_MARKER)
    if i < 0 or not out.endswith(b"\n"):
        return out, None
    value = out[i + 1 + len(STATUS_MARKER) : -1]
    if not value.isdigit():
        return out, None
    return out[:i], int(value)


# --------------------------------------------------------------- schedules


def split(hosts: list[str], k: int) -> list[list[str]]:
    """Split ``hosts`` into at most ``k`` contiguous, balanced, non-empty groups.

    The first host of each group is the child that gets launched; the rest of
    the group is that child's share, which it splits again.  Balanced groups
    give the shallowest k-ary launch tree.

    >>> split(["a", "b", "c", "d", "e"], 2)
    [['a', 'b', 'c'], ['d', 'e']]
    """
    if k < 1:
        raise ValueError(f"fanout must be >= 1, not {k}")
    n = len(hosts)
    parts = min(k, n)
    groups = []
    start = 0
    for i in range(parts):
        size = n // parts + (1 if i < n % parts else 0)
        groups.append(hosts[start : start + size])
        start += size
    return groups


def pack(hosts: list[str], k: int) -> list[list[str]]:
    """Split ``hosts`` into at most ``k`` contiguous groups: fewest agents, same depth.

    Like :func:`split`, the tree stays as shallow as possible (every group's
    share fits in one launch step less), but groups are filled up to a full
    subtree first and the last slots get single hosts: a host with no share
    is a *leaf* that runs the command without an agent (cheap), so the tree
    has about N/k agents instead of up to N - N/k with balanced groups
    (147 hosts, k=4: 36 agents, not 84).

    >>> [len(g) for g in pack([f"n{i}" for i in range(147)], 4)]
    [85, 60, 1, 1]
    """
    if k < 1:
        raise ValueError(f"fanout must be >= 1, not {k}")
    n = len(hosts)
    if n == 0:
        return []
    full = 1 + reach(tree_depth(n, k) - 1, k)  # a head and a share one step shallower
    groups = []
    start = 0
    for slot in range(min(k, n), 0, -1):
        size = min(full, n - start - (slot - 1))  # leave one host for every slot after
        groups.append(hosts[start : start + size])
        start += size
    return groups


def busy_depth(n: int, k: int) -> int:
    """Launch steps to reach ``n`` hosts when every node that is up keeps ``k``
    launches in flight until its share is done: (k+1)^d - 1 hosts in d steps."""
    if n <= 0:
        return 0
    d = 0
    while (k + 1) ** d - 1 < n:
        d += 1
    return d


def _apportion(total: int, caps: list[int]) -> list[int]:
    """``total`` split over ``caps`` in proportion to them, none above its cap."""
    whole = sum(caps)
    if total >= whole:
        return list(caps)
    raw = [total * c / whole for c in caps]
    got = [int(x) for x in raw]
    for i in sorted(range(len(caps)), key=lambda i: got[i] - raw[i])[: total - sum(got)]:
        got[i] += 1
    return got


def busy_sizes(m: int, k: int, steps: int) -> list[int]:
    """Subtree sizes (head included; 1: a leaf) of the children of a node with ``m``
    hosts to launch, ``k`` launches in flight and ``steps`` launch steps: child j
    starts in step ``j // k + 1`` and has ``steps - 1 - j // k`` steps left.

    Agents cost a process each (an interpreter, its threads, relaying), leaves
    only their command: the first children are agents (they have the most time
    to launch in turn), as few as cover ``m`` in time.  If agents whose shares
    are all leaves suffice, those; otherwise every child that has a step left
    is an agent, their shares in proportion to what each can reach.  The last
    slots are leaves; slots not needed stay empty.
    """
    slots = [steps - 1 - j // k for j in range(k * steps)]
    for a in range(len(slots) + 1):  # agents whose shares are leaves only
        if a and slots[a - 1] < 1:
            break
        if sum(1 + k * slots[j] for j in range(a)) + len(slots) - a >= m:
            leaves = min(len(slots) - a, m - a)
            shares = _apportion(m - a - leaves, [k * slots[j] for j in range(a)])
            return [1 + s for s in shares] + [1] * leaves
    a = sum(1 for t in slots if t >= 1)
    leaves = min(len(slots) - a, m - a)
    shares = _apportion(m - a - leaves, [(k + 1) ** slots[j] - 1 for j in range(a)])
    return [1 + s for s in shares] + [1] * leaves


def busy_groups(share: list[str], k: int, steps: int | None = None) -> list[tuple[list[str], int]]:
    """The groups (head + its share) a node launches, ``k`` at a time, in launch order,
    each with the launch steps its head has left (:func:`busy_sizes`); ``steps``
    None or too few: :func:`busy_depth` of the share.

    >>> [(len(g), s) for g, s in busy_groups([f"n{i}" for i in range(12)], 3)]
    [(4, 1), (4, 1), (1, 1), (1, 0), (1, 0), (1, 0)]
    """
    if not share:
        return []
    if k < 1:
        raise ValueError(f"fanout must be >= 1, not {k}")
    need = busy_depth(len(share), k)
    steps = need if steps is None else max(steps, need)
    groups: list[tuple[list[str], int]] = []
    start = 0
    for j, size in enumerate(busy_sizes(len(share), k, steps)):
        groups.append((share[start : start + size], steps - 1 - j // k))
        start += size
    return groups


def busy_agents(hosts: list[str], k: int, steps: int | None = None) -> int:
    """Agents (hosts with a share) in the busy tree of ``hosts``."""
    count = 0
    stack = [(hosts, steps)]
    while stack:
        share, left = stack.pop()
        for group, sub in busy_groups(share, k, left):
            if len(group) > 1:
                count += 1
                stack.append((group[1:], sub))
    return count


def choose_mode(n: int, launch: float, agent_start: float, window: int = 64,
                k: int = 3) -> tuple[str, int]:  # fmt: skip
    """``--auto``: ("flat", window) or ("tree", k) for ``n`` hosts, whichever takes
    fewer seconds: ``launch`` seconds a launch (to a host up), ``agent_start`` more
    for a host that runs an agent.  Flat launches ``window`` at a time from the
    root, no agents; the busy tree needs :func:`busy_depth` steps, each an agent's.

    >>> choose_mode(64, 0.2, 0.05), choose_mode(1000, 0.2, 0.05)
    (('flat', 64), ('tree', 3))
    """
    flat = -(-n // window) * launch
    tree = busy_depth(n, k) * (launch + agent_start)
    return ("flat", window) if flat <= tree else ("tree", k)


def reach(depth: int, k: int) -> int:
    """How many hosts a k-ary launch tree reaches in ``depth`` launch steps."""
    return sum(k**i for i in range(1, depth + 1))


def tree_depth(n: int, k: int) -> int:
    """Launch steps (rsh/ssh hops in sequence) a k-ary tree needs for n hosts."""
    if n <= 0:
        return 0
    if k == 1:
        return n
    d = 1
    while reach(d, k) < n:
        d += 1
    return d


def depth(mode: str, n: int, k: int, busy: bool = False) -> int:
    """Launch steps in sequence for ``mode``: time is about depth x launch cost
    (``busy``: the tree of :func:`busy_groups`)."""
    if mode == "tree":
        return busy_depth(n, k) if busy else tree_depth(n, k)
    if mode == "flat":
        return -(-n // k)
    if mode in ("sequential", "ring"):
        return n
    raise ValueError(f"unknown mode {mode!r}")


class LaunchPlan(NamedTuple):
    """What the root does: launch ``groups`` (head + share), ``window`` at a time.

    ``child_fanout`` is the k every launched agent uses to split its share
    (0: agents get no share and launch nobody).
    """

    groups: list[list[str]]
    window: int
    child_fanout: int
    steps: list[int] | None = None  # busy tree: the launch steps each head has left


def root_plan(mode: str, hosts: list[str], k: int, busy: bool = False) -> LaunchPlan:
    """The root's schedule for each mode.

    * tree: k groups launched at once; every agent splits its share in k.
      ``busy``: every node keeps k launches in flight until its share is done
      (:func:`busy_groups`: more children per node, fewer agents, depth
      :func:`busy_depth`); agents are told the steps they have left.
    * flat: every host launched from the root, at most k launches in flight
      (pdsh's fanout window).
    * sequential: every host from the root, one launch after the other
      (lamboot).
    * ring: one chain; every agent launches the next host, results travel
      back along the chain to the root.
    """
    if k < 1:
        raise ValueError(f"fanout must be >= 1, not {k}")
    if mode == "tree" and busy:  # k launches in flight, every node busy to the end
        pairs = busy_groups(hosts, k)
        return LaunchPlan([g for g, _ in pairs], k, k, [s for _, s in pairs])
    if mode == "tree":
        groups = pack(hosts, k)
        return LaunchPlan(groups, max(1, len(groups)), k)
    if mode == "flat":
        return LaunchPlan([[h] for h in hosts], k, 0)
    if mode == "sequential":
        return LaunchPlan([[h] for h in hosts], 1, 0)
    if mode == "ring":
        return LaunchPlan([list(hosts)] if hosts else [], 1, 1)
    raise ValueError(f"unknown mode {mode!r}")


def child_groups(share: list[str], fanout: int) -> list[list[str]]:
    """The groups an agent launches for its ``share`` (``fanout`` 0: none)."""
    if not share or fanout < 1:
        return []
    return pack(share, fanout)


# ------------------------------------------------------------ wire messages
#
# Every message is one line of JSON with a type "t":
#   child -> parent: hello {token, h}    first message: authenticates the child
#                    st {h, s}           host h is "launched" or "running"
#                    res {h, rc, out, err, error}
#                    hb {}               heartbeat, every second
#                    done {}             the whole subtree has finished (seed's -1)
#   parent -> child: work {hosts, cfg[, steps]}  the child's share and the run config
#                                        (steps: busy tree, the launch steps it has left)
#                    go {}               --barrier: all hosts are up, run the command now
#                    stop {}             the run was stopped (SIGINT/SIGTERM at the root):
#                                        kill the command and the subtree, exit quietly
# The child's stdin carries one header line {v, token, parent, h} before that:
# the token is fresh per launch and never appears on a command line.


def header(token: str, parent: str, host: str, payload: bytes | None = None,
           netns: str | None = None) -> bytes:  # fmt: skip
    """A child's first stdin line; ``payload`` (--input) rides along, base64;
    ``netns``: the network namespace a forked agent enters first (``-R netns``)."""
    msg: dict[str, Any] = {"t": "header", "v": PROTOCOL, "token": token, "parent": parent,
                           "h": host}  # fmt: skip
    if netns:
        msg["netns"] = netns
    if payload is not None:
        import base64

        msg["in"] = base64.b64encode(payload).decode()
    return framing.encode(msg)


def header_payload(hdr: dict[str, Any]) -> bytes | None:
    """The --input bytes a parsed header carries, if any."""
    data = hdr.get("in")
    if data is None:
        return None
    import base64
    import binascii

    try:
        return base64.b64decode(str(data), validate=True)
    except (binascii.Error, ValueError):
        raise WireError("bad header: its input is not base64") from None


def parse_header(line: bytes) -> dict[str, Any]:
    """A child's header line, checked; :class:`WireError` if it is not one."""
    msg = framing.decode(line)
    if msg["t"] != "header" or msg.get("v") != PROTOCOL:
        raise WireError(f"bad header (protocol {msg.get('v')!r}, want {PROTOCOL})")
    for key in ("token", "parent", "h"):
        if not isinstance(msg.get(key), str):
            raise WireError(f"header lacks {key!r}")
    return msg


def hello(token: str, host: str) -> dict[str, Any]:
    return {"t": "hello", "token": token, "h": host}


def work(hosts: list[str], cfg: dict[str, Any], steps: int | None = None) -> dict[str, Any]:
    """A child's share and the run's config; ``steps``: the launch steps it has left
    (busy tree: it launches with :func:`busy_groups`; None: :func:`pack` in k)."""
    msg = {"t": "work", "hosts": hosts, "cfg": cfg}
    if steps is not None:
        msg["steps"] = steps
    return msg


def state(host: str, s: str) -> dict[str, Any]:
    return {"t": "st", "h": host, "s": s}


def result(host: str, rc: int | None, out: str = "", err: str = "",
           error: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A host's outcome: exit code (None if the command never ran to an end)."""
    return {"t": "res", "h": host, "rc": rc, "out": out, "err": err, "error": error}


HEARTBEAT = {"t": "hb"}
DONE = {"t": "done"}
GO = {"t": "go"}  # parent -> child, with --barrier: every host is up, start the command
STOP = {"t": "stop"}  # parent -> child: the run was stopped: kill everything, end quietly


def split_parent(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) into its parts; :class:`WireError` if bad."""
    try:
        return net.split_host_port(text)
    except ValueError:
        raise WireError(f"bad parent address {text!r}") from None


# ------------------------------------------------------ progress, gathering


def failed(res: dict[str, Any]) -> bool:
    return res.get("rc") != 0 or res.get("error") is not None


class Tally:
    """Progress counts at the root, fed with every message that comes up."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.launched: set[str] = set()
        self.running: set[str] = set()
        self.done: set[str] = set()
        self.failed: set[str] = set()

    def apply(self, msg: dict[str, Any]) -> None:
        host = msg.get("h")
        if not isinstance(host, str):
            return
        if msg["t"] == "st":
            (self.running if msg.get("s") == "running" else self.launched).add(host)
        elif msg["t"] == "res":
            self.running.discard(host)
            (self.failed if failed(msg) else self.done).add(host)

    @property
    def finished(self) -> int:
        return len(self.done) + len(self.failed)

    def counts(self) -> dict[str, int]:
        return {"total": self.total, "launched": len(self.launched | self.done | self.failed),
                "running": len(self.running), "done": len(self.done),
                "failed": len(self.failed)}  # fmt: skip


def fold(hosts: list[str]) -> str:
    """Hosts as the shortest NodeSet pattern (ClusterShell, imported lazily)."""
    from ClusterShell.NodeSet import NodeSet

    return str(NodeSet.fromlist(hosts)) if hosts else ""


def gather(outputs: dict[str, str]) -> list[tuple[str, int, str]]:
    """Fold identical outputs: ``[(nodeset, count, text)]``, like ``clush -b``.

    Blocks come in the order of their first host's name; hosts with empty
    output are left out.
    """
    by_text: dict[str, list[str]] = {}
    for host in sorted(outputs):
        text = outputs[host]
        if text:
            by_text.setdefault(text, []).append(host)
    blocks = [(fold(hosts), len(hosts), text) for text, hosts in by_text.items()]
    return sorted(blocks, key=lambda b: by_text[b[2]][0])


def launch_failed(returncode: int | None, why: str) -> str:
    """A launch process that ended before its host was up: "launch failed (exit 255):
    ssh: connect to host ..." (a signal in :func:`beokit.proc.describe_exit`'s words)."""
    if returncode is None:  # a forked worker's status is its fork server's to read
        return f"launch failed: {why}"
    how = describe_exit(returncode) if returncode < 0 else f"exit {returncode}"
    return f"launch failed ({how}): {why}"


def exit_reason(rc: Any) -> str:
    """Why a host whose command ended with ``rc`` failed: "exited with exit code 3",
    or :func:`beokit.proc.describe_exit`'s words for a signal."""
    if isinstance(rc, int) and rc < 0:
        return describe_exit(rc)
    return f"exited with exit code {rc}"


def gather_codes(results: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """Failed hosts folded by reason: ``[(nodeset, "exited with exit code 3")]``."""
    by_reason: dict[str, list[str]] = {}
    for host, res in sorted(results.items()):
        if res.get("error"):
            reason = str(res["error"])
        elif res.get("rc") != 0:
            reason = exit_reason(res.get("rc"))
        else:
            continue
        by_reason.setdefault(reason, []).append(host)
    return [(fold(hosts), reason) for reason, hosts in by_reason.items()]
