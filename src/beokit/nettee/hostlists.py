"""Parsing of nettee's ``-next HOSTLISTS`` value (pure logic, no I/O).

Grammar, as the nettee 0.2 man page spells it::

    HOSTLISTS := HOSTLIST ( (',' | ' ')+ HOSTLIST )*      -- 1 to 8 of them
    HOSTLIST  := HOST | '[' HOST ( (',' | ' ')+ HOST )* ']'
    HOST      := name-or-address [ ':' PORT ]                -- ':PORT' is ours
               | IPV6 | '[' IPV6 ']' [ ':' PORT ]           -- IPv6, ours too

A bracketed hostlist is a failover list: its first host is tried, then the
next (with ``-connf``).  ``.``, ``,`` and ``_EOC_`` alone mean End of Chain
(no child); so does an absent ``-next``.
"""

from __future__ import annotations

import ipaddress
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
        if self.port is None:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


Hostlist = tuple[Endpoint, ...]


def parse_port(text: str, what: str = "port") -> int:
    """A nettee port: it and the next one must be valid TCP ports."""
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"bad {what} {text!r}: not a number")
    port = int(text)
    if not 1 <= port <= 65534:
        raise UsageError(f"bad {what} {text!r}: must be 1-65534 (PORT and PORT+1 are used)")
    return port


def is_ipv6(text: str) -> bool:
    """Is ``text`` an IPv6 address (``::1``, ``fe80::1%eth0``), without brackets?"""
    if ":" not in text:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_endpoint(text: str) -> Endpoint:
    """``host``, ``host:PORT``, an IPv6 address alone (``::1``) or ``[ADDR]:PORT``."""
    if text.startswith("["):
        addr, close, rest = text[1:].partition("]")
        if not close or not is_ipv6(addr) or (rest and not rest.startswith(":")):
            raise UsageError(f"bad host {text!r} in -next")
        port = rest[1:]
        return Endpoint(addr, parse_port(port, f"port in -next entry {text!r}") if rest else None)
    if text.count(":") > 1:  # no port can follow an IPv6 address unbracketed
        if not is_ipv6(text):
            raise UsageError(f"bad host {text!r} in -next")
        return Endpoint(text)
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    if not host or not _HOST_RE.fullmatch(host) or host.endswith((".-", "-")):
        raise UsageError(f"bad host {text!r} in -next")
    return Endpoint(host, parse_port(port, f"port in -next entry {text!r}") if sep else None)


_SEPARATORS = ", \t"


def _ipv6_literal(value: str, i: int) -> int:
    """If ``value[i:]`` is ``[IPV6]`` or ``[IPV6]:PORT``, where it ends; else -1."""
    close = value.find("]", i + 1)
    if close < 0 or not is_ipv6(value[i + 1 : close]):
        return -1
    j = close + 1
    if j < len(value) and value[j] == ":":
        while j + 1 < len(value) and value[j + 1] not in _SEPARATORS + "[]":
            j += 1
        j += 1
    return j


def _word(value: str, i: int) -> int:
    """Where the host name starting at ``i`` ends (a separator, a bracket, the end)."""
    j = i
    while j < len(value) and value[j] not in _SEPARATORS + "[]":
        j += 1
    return j


def _failover(value: str, i: int) -> tuple[list[str], int]:
    """The names of the failover list ``[...]`` opening at ``i``; and where it ends."""
    names: list[str] = []
    j, n = i + 1, len(value)
    while True:
        if j >= n:
            raise UsageError(f"bad -next {value!r}: '[' without matching ']'")
        c = value[j]
        if c in _SEPARATORS:
            j += 1
        elif c == "]":
            break
        elif c == "[":
            end = _ipv6_literal(value, j)
            if end < 0:
                if value.find("]", j + 1) < 0:
                    raise UsageError(f"bad -next {value!r}: '[' without matching ']'")
                raise UsageError(f"bad -next {value!r}: brackets cannot nest")
            names.append(value[j:end])
            j = end
        else:
            end = _word(value, j)
            names.append(value[j:end])
            j = end
    if not names:
        raise UsageError(f"bad -next {value!r}: empty failover list '[]'")
    return names, j + 1


def _tokens(value: str) -> list[str | list[str]]:
    """Split HOSTLISTS at top-level commas/spaces; brackets make a group, or hold an
    IPv6 address (``[::1]``, ``[::1]:PORT``: brackets around an IPv6 address are
    the address, as in URLs; a failover list of IPv6 addresses is ``[::1,::2]``
    or ``[[::1]:7000,[::2]:7000]``)."""
    out: list[str | list[str]] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in _SEPARATORS:
            i += 1
            continue
        if c == "[":
            end = _ipv6_literal(value, i)
            if end >= 0:
                out.append(value[i:end])
                i = end
            else:
                names, i = _failover(value, i)
                out.append(names)
            if i < n and value[i] not in _SEPARATORS:
                raise UsageError(f"bad -next {value!r}: expected ',' after ']'")
            continue
        if c == "]":
            raise UsageError(f"bad -next {value!r}: ']' without '['")
        j = _word(value, i)
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
