"""Host ranges in ClusterShell's NodeSet syntax (``node[001-128]``)."""

from __future__ import annotations

from ClusterShell.NodeSet import NodeSet, NodeSetParseError

from beokit.errors import UsageError


def expand(pattern: str) -> list[str]:
    """Expand a NodeSet pattern into host names, in NodeSet order.

    >>> expand("127.0.0.[2-4]")
    ['127.0.0.2', '127.0.0.3', '127.0.0.4']
    """
    try:
        hosts = list(NodeSet(pattern))
    except (NodeSetParseError, ValueError) as exc:
        raise UsageError(f"bad node set {pattern!r}: {exc}") from None
    if not hosts:
        raise UsageError(f"node set {pattern!r} names no host")
    return hosts


def fold(hosts: list[str]) -> str:
    """Fold host names back into the shortest NodeSet pattern."""
    return str(NodeSet.fromlist(hosts)) if hosts else ""


def read_hostfile(path: str) -> list[str]:
    """Host patterns from a host file: whitespace-separated, ``#`` comments."""
    try:
        with open(path) as fh:
            return [w for line in fh for w in line.split("#")[0].split()]
    except OSError as exc:
        raise UsageError(f"cannot read host file {path!r}: {exc.strerror}") from None
