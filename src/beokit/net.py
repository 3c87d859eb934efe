"""Small network helpers shared by the pillars: ``HOST:PORT`` text and free ports.

Standard library only (the launcher ships it to nodes).
"""

from __future__ import annotations

import secrets
import socket


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


def free_port(addrs: list[str], start: int = 20000, stop: int = 60000) -> int:
    """A port P such that P and P+1 can be bound on every address (nettee's pair)."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(start, stop - 1)
        try:
            for addr in addrs:
                for p in (port, port + 1):
                    with socket.socket() as s:
                        s.bind((addr, p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair found")
