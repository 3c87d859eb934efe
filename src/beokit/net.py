"""Small network helpers shared by the pillars: ``HOST:PORT`` text, free ports, routes.

Standard library only (the launcher ships it to nodes).
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


def host_port(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 address in brackets (``[::1]:80``)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def split_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) into its parts; ValueError if it is not one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {text!r}: not HOST:PORT")
    return host, int(port)


def family(addr: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 address literal (``::1``, ``[::1]``), else AF_INET."""
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def free_port(addrs: list[str], start: int = 20000, stop: int = 60000) -> int:
    """A port P such that P and P+1 can be bound on every address (nettee's pair).

    OSError naming the address when one of ``addrs`` cannot be bound at all
    (not an address of this machine), RuntimeError when 200 random pairs were
    all taken.
    """
    for addr in addrs:  # an address we cannot bind on makes every port "taken"
        with socket.socket(family(addr)) as s:
            try:
                s.bind((addr.strip("[]"), 0))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen on {addr}: {exc.strerror}") from None
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(start, stop - 1)
        try:
            for addr in addrs:
                for p in (port, port + 1):
                    with socket.socket(family(addr)) as s:
                        s.bind((addr.strip("[]"), p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair found")


def source_address(host: str) -> str | None:
    """This machine's address on its route to ``host`` (a name or an address), or
    None if ``host`` has no address here or no route.  No packet is sent (a UDP
    socket's connect only asks the kernel for the route)."""
    try:
        infos = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    for fam, _, _, _, sa in infos:
        with socket.socket(fam, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(sa)
            except OSError:
                continue
            return str(probe.getsockname()[0])
    return None


def reachable_address(hosts: list[str], name_of: Callable[[str], str],
                      tries: int = 8) -> tuple[str | None, list[str]]:  # fmt: skip
    """The address of this machine that ``hosts`` can reach it at: its source address
    on the route to the first of them (at most ``tries``) whose name (``name_of``:
    a data address, ssh's HostName) has an address here; ``(None, tried)`` if none has."""
    tried = []
    for h in hosts[:tries]:
        addr = source_address(name_of(h))
        if addr is not None:
            return addr, tried
        tried.append(h)
    return None, tried


def parse_hosts_file(text: str) -> dict[str, str]:
    """hosts(5) lines ``ADDRESS NAME [ALIAS...]`` -> name -> address (first wins);
    ValueError ("line N: bad address ...") on a line whose address is not one."""
    names: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        try:
            ipaddress.ip_address(words[0])
        except ValueError:
            raise ValueError(f"line {lineno}: bad address {words[0]!r}") from None
        for name in words[1:]:
            names.setdefault(name, words[0])
    return names
