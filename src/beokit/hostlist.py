"""Host ranges in ClusterShell's NodeSet syntax (``node[001-128]``)."""

from __future__ import annotations

import re

from ClusterShell.NodeSet import NodeSet, NodeSetParseError

from beokit.errors import MAX_HOSTS, UsageError

_BRACKETS = re.compile(r"\[([^\]]*)\]")
EXPAND_LIMIT = 4 * MAX_HOSTS  # above this (by the ranges' arithmetic) refuse before expanding


def _words(pattern: str) -> list[str]:
    """The pattern's top-level comma-separated words (commas inside [] stay)."""
    words, depth, start = [], 0, 0
    for i, c in enumerate(pattern):
        depth += (c == "[") - (c == "]")
        if c == "," and depth == 0:
            words.append(pattern[start:i])
            start = i + 1
    words.append(pattern[start:])
    return words


def upper_bound(pattern: str) -> int | None:
    """How many hosts ``pattern`` names at most, from its ranges alone (without
    expanding it); None where it is not plain ranges (groups, bad syntax: let
    ClusterShell judge those)."""
    total = 0
    for word in _words(pattern):
        n = 1
        for group in _BRACKETS.findall(word):
            size = 0
            for part in group.split(","):
                rng, _, step = part.partition("/")
                lo_text, _, hi_text = rng.partition("-")
                try:
                    lo, hi = int(lo_text), int(hi_text or lo_text)
                    st = int(step or 1)
                except ValueError:
                    return None
                size += max(0, (hi - lo) // max(st, 1) + 1)
            n *= max(size, 1)
        total += n
    return total


def expand(pattern: str) -> list[str]:
    """Expand a NodeSet pattern into host names, in NodeSet order.

    >>> expand("127.0.0.[2-4]")
    ['127.0.0.2', '127.0.0.3', '127.0.0.4']
    """
    bound = upper_bound(pattern)
    if bound is not None and bound > EXPAND_LIMIT:
        raise UsageError(f"node set {pattern[:80]!r} names about {bound:,} hosts: "
                         f"at most {MAX_HOSTS:,}")  # fmt: skip
    try:
        hosts = list(NodeSet(pattern))
    except (NodeSetParseError, ValueError, AssertionError) as exc:  # "range too large"
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
    except UnicodeDecodeError:
        raise UsageError(f"cannot read host file {path!r}: not text") from None
