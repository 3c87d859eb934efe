"""What a freshly booted node knows from its DHCP lease (pure).

busybox ``udhcpc -O 224`` hands its script the lease as environment variables:
``ip``, ``hostname``, ``siaddr``, ``serverid``, and an option it has no name for
as ``opt224`` in hex.  A udhcpc script that writes ``env > /run/lease.env`` (the
initramfs does) leaves exactly what :func:`from_env` reads.  Option 224 names the
TFTP path of the node's topology file (``nettee/<name>.conf``, beo boot's
``dhcp.nettee_path``); the server is the lease's next-server (``siaddr``), else
its DHCP server identifier.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


class LeaseError(ValueError):
    """The lease lacks what the node command needs (names the variable)."""


@dataclass(frozen=True)
class NodeLease:
    name: str
    server: str
    topology: str  # TFTP path of the topology file
    ip: str = ""


def parse_env_text(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``env`` output, or ``set`` with quotes) -> dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def _option_text(value: str) -> str:
    """udhcpc gives an unknown option in hex; newer versions may give text."""
    v = value.strip()
    if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", v):
        try:
            return bytes.fromhex(v).decode("ascii").rstrip("\x00")
        except UnicodeDecodeError:
            raise LeaseError(f"bad opt224 {value!r}: not ASCII") from None
    return v


def _address(env: dict[str, str]) -> str:
    for key in ("siaddr", "serverid"):
        value = env.get(key, "").strip()
        if value and value != "0.0.0.0":
            try:
                return str(ipaddress.IPv4Address(value))
            except ValueError:
                raise LeaseError(f"bad {key} {value!r}: not an IPv4 address") from None
    raise LeaseError("no siaddr or serverid in the lease: which server?")


def from_env(env: dict[str, str], name: str = "", server: str = "") -> NodeLease:
    """The lease's name, server and topology path; ``name``/``server`` override."""
    topo = _option_text(env["opt224"]) if env.get("opt224") else ""
    if not name:
        name = env.get("hostname", "").split(".")[0]
    if not name and topo.startswith("nettee/") and topo.endswith(".conf"):
        name = topo[len("nettee/") : -len(".conf")]
    if not name or not _NAME_RE.match(name):
        raise LeaseError(f"bad node name {name!r}: the lease has no hostname (option 12) "
                         "and no option 224")  # fmt: skip
    if not topo:
        topo = f"nettee/{name}.conf"
    if ".." in topo.split("/"):
        raise LeaseError(f"bad opt224 {topo!r}: '..' in the path")
    return NodeLease(name, server or _address(env), topo, env.get("ip", ""))
