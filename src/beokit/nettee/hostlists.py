"""Parsing of nettee's ``-next HOSTLISTS`` value (pure logic, no I/O).

Grammar, as the nettee 0.2 man page spells it::

    HOSTLISTS := HOSTLIST ( (',' | ' ')+ HOSTLIST )*      -- 1 to 8 of them
    HOSTLIST  := HOST | '[' HOST ( (',' | ' ')+ HOST )* ']'
    HOST      := name-or-address [ ':' PORT ]                -- ':PORT' is ours

A bracketed hostlist is a failover list: its first host is tried, then the
next (with ``-connf``).  ``.``, ``,`` and ``_EOC_`` alone mean End of Chain
(no child); so does an absent ``-next``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from beokit.errors import UsageError

MAX_HOSTLISTS = 8
EOC_MARKERS = frozenset({".", ",", "_EOC_"})

_HOST_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,252})$")


@dataclass(frozen=True)
class Endpoint:
    """One candidate child: a host name or address, and its data port.

    ``port`` is None when the host inherits the node's ``-port``; the
    control channel is always ``port + 1``.
    """

    host: str
    port: int | None = None

    def with_default(self, port: int) -> tuple[str, int]:
        return self.host, self.port if self.port is not None else port

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


Hostlist = tuple[Endpoint, ...]


def parse_port(text: str, what: str = "port") -> int:
    """A nettee port: it and the next one must be valid TCP ports."""
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"bad {what} {text!r}: not a number")
    port = int(text)
    if not 1 <= port <= 65534:
        raise UsageError(f"bad {what} {text!r}: must be 1-65534 (PORT and PORT+1 are used)")
    return port


def parse_endpoint(text: str) -> Endpoint:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    if not host or not _HOST_RE.fullmatch(host) or host.endswith((".-", "-")):
        raise UsageError(f"bad host {text!r} in -next")
    return Endpoint(host, parse_port(port, f"port in -next entry {text!r}") if sep else None)


def _tokens(value: str) -> list[str | list[str]]:
    """Split HOSTLISTS at top-level commas/spaces; brackets make a group."""
    out: list[str | list[str]] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in ", \t":
            i += 1
            continue
        if c == "[":
            close = value.find("]", i + 1)
            if close < 0:
                raise UsageError(f"bad -next {value!r}: '[' without matching ']'")
            inner = value[i + 1 : close]
            if "[" in inner:
                raise UsageError(f"bad -next {value!r}: brackets cannot nest")
            names = [t for t in re.split(r"[,\s]+", inner) if t]
            if not names:
                raise UsageError(f"bad -next {value!r}: empty failover list '[]'")
            out.append(names)
            i = close + 1
            if i < n and value[i] not in ", \t":
                raise UsageError(f"bad -next {value!r}: expected ',' after ']'")
            continue
        if c == "]":
            raise UsageError(f"bad -next {value!r}: ']' without '['")
        j = i
        while j < n and value[j] not in ", \t[]":
            j += 1
        if j < n and value[j] == "[":
            raise UsageError(f"bad -next {value!r}: '[' inside a host name")
        out.append(value[i:j])
        i = j
    return out


def parse_next(value: str | None) -> tuple[Hostlist, ...]:
    """Parse a ``-next`` value into its hostlists (empty tuple: End of Chain)."""
    if value is None:
        return ()
    stripped = value.strip()
    if stripped in EOC_MARKERS:
        return ()
    if stripped == "":
        raise UsageError("bad -next '': empty (use '.' or _EOC_ for End of Chain)")
    tokens = _tokens(stripped)
    lists: list[Hostlist] = []
    for tok in tokens:
        names = tok if isinstance(tok, list) else [tok]
        for name in names:
            if name in EOC_MARKERS:
                raise UsageError(
                    f"bad -next {value!r}: End of Chain marker {name!r} beside other hostlists"
                )
        lists.append(tuple(parse_endpoint(name) for name in names))
    if not lists:
        raise UsageError(f"bad -next {value!r}: no host")
    if len(lists) > MAX_HOSTLISTS:
        raise UsageError(
            f"bad -next {value!r}: {len(lists)} hostlists, at most {MAX_HOSTLISTS} are allowed"
        )
    return tuple(lists)


def format_next(lists: tuple[Hostlist, ...]) -> str:
    """Inverse of :func:`parse_next` (used in messages and by launchers)."""
    if not lists:
        return "_EOC_"
    parts = []
    for hl in lists:
        if len(hl) == 1:
            parts.append(str(hl[0]))
        else:
            parts.append("[" + ",".join(str(e) for e in hl) + "]")
    return ",".join(parts)
