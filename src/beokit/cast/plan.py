"""Pure logic of ``beo cast``: topology and command lines.

No I/O here.  The driver (:mod:`beokit.cast.driver`) launches what this
module decides and feeds back what it observed; the tests read both.

* Topology: a linear chain by default, ``K`` balanced chains
  (:func:`plan_chains`), or one chain per line of a topology file
  (:func:`parse_topology`: one switch, rack or NIC rail per line).
  :func:`replan` drops the hosts that could not be started, keeping the
  shape.
* The nettee command lines of the root and of every receiver
  (:func:`root_args`, :func:`receiver_args`), with the resilience flags
  chosen in one place (:data:`RESILIENCE_FLAGS`, :func:`resilience_args`).
* What DEST is (:func:`dest_kind`) and the tar commands of a directory.
* Small helpers of the command: :func:`eta`, :func:`parse_hosts_file`.

Elsewhere, also pure: dolly's configuration file (:mod:`beokit.cast.dollytab`),
the verdict (:mod:`beokit.cast.verdict`) and the callback channel
(:mod:`beokit.cast.channel`).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass
from typing import Any

from beokit import net
from beokit.errors import UsageError
from beokit.net import host_port

# What beo cast asks of every nettee by default: self-healing chain and
# end-to-end digests.  The single place where they are named; the driver
# passes only those the installed nettee supports (see resilience_args).
RESILIENCE_FLAGS: tuple[str, ...] = ("-heal", "-digest")
HEAL_FLAG = "-heal"
DIGEST_FLAG = "-digest"
# Without -heal, a failed node must not take the others down with it:
# parents carry on without a dead branch, children below it end cleanly
# (NRF) instead of hanging, and a local write failure only fails that node.
FALLBACK_FLAGS: tuple[str, ...] = ("-conwf", "-conrf")
ALWAYS_FLAGS: tuple[str, ...] = ("-colwf",)


@dataclass
class Chain:
    """One chain of the distribution: the root feeds ``hosts[0]``, each the next.

    ``via`` turns a host name into the name its parent connects to for data
    (``{host}-ib`` for a second rail, say); ``{host}`` is the host itself.
    """

    label: str
    hosts: list[str]
    via: str = "{host}"

    def data_name(self, host: str) -> str:
        return self.via.replace("{host}", host)


# --- topology -------------------------------------------------------------


def plan_chains(hosts: list[str], k: int = 1) -> list[Chain]:
    """``K`` contiguous chains of balanced length (sizes differ by at most one)."""
    if k < 1:
        raise UsageError(f"bad --chains {k}: must be >= 1")
    k = min(k, len(hosts)) or 1
    q, r = divmod(len(hosts), k)
    chains, start = [], 0
    for i in range(k):
        size = q + (1 if i < r else 0)
        if size:
            chains.append(Chain(f"chain{i}", hosts[start : start + size]))
        start += size
    return chains


_LABEL_RE = re.compile(r"^([A-Za-z0-9_.-]+):\s*(.*)$")


def parse_topology(text: str, hosts: list[str], expand: Any) -> list[Chain]:
    """One chain per line: ``[LABEL:] NODESET [via=TEMPLATE]``; ``#`` comments.

    The chains keep the order of NODESET within a line.  Hosts of the file
    that are not in ``hosts`` are left out; a host of ``hosts`` in no line
    or in two lines is a usage error naming it.  ``expand`` is the NodeSet
    expander (``beokit.hostlist.expand``).
    """
    wanted = set(hosts)
    seen: dict[str, str] = {}
    chains: list[Chain] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        label = f"chain{len(chains)}"
        m = _LABEL_RE.match(line)
        if m and "[" not in m.group(1):
            label, line = m.group(1), m.group(2).strip()
        via = "{host}"
        words = line.split()
        rest = []
        for w in words:
            if w.startswith("via="):
                via = w[4:]
                if "{host}" not in via:
                    raise UsageError(f"topology line {lineno}: bad {w!r}: needs {{host}}")
            else:
                rest.append(w)
        if not rest:
            raise UsageError(f"topology line {lineno}: no hosts in {raw.strip()!r}")
        members: list[str] = []
        for pattern in rest:
            for h in expand(pattern):
                if h in seen:
                    raise UsageError(f"topology: host {h} is in chain {seen[h]!r} and {label!r}")
                seen[h] = label
                if h in wanted:
                    members.append(h)
        if members:
            chains.append(Chain(label, members, via))
    missing = [h for h in hosts if h not in seen]
    if missing:
        raise UsageError(f"topology: host {missing[0]} is in no chain of the file"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))  # fmt: skip
    if not chains:
        raise UsageError("topology: no chain names a host of the node set")
    return chains


def replan(chains: list[Chain], alive: set[str]) -> list[Chain]:
    """The same chains without the hosts that are not ``alive``; empty chains dropped."""
    out = []
    for c in chains:
        hosts = [h for h in c.hosts if h in alive]
        if hosts:
            out.append(Chain(c.label, hosts, c.via))
    return out


def links(chains: list[Chain]) -> dict[str, str | None]:
    """Host -> the host after it in its chain (None at a chain's tip)."""
    nxt: dict[str, str | None] = {}
    for c in chains:
        for a, b in zip(c.hosts, c.hosts[1:] + [None], strict=True):
            nxt[a] = b
    return nxt


def chain_of(chains: list[Chain]) -> dict[str, str]:
    return {h: c.label for c in chains for h in c.hosts}


# --- destinations and command lines ------------------------------------------


def dest_kind(dest: str, source_kind: str) -> str:
    """``cmd`` (``|command``), ``dir`` (a directory source unpacks there) or ``file``."""
    if dest.startswith("|"):
        if not dest[1:].strip():
            raise UsageError(f"bad --to {dest!r}: no command after '|'")
        return "cmd"
    if not dest:
        raise UsageError("bad --to '': empty destination")
    return "dir" if source_kind == "dir" else "file"


def tar_create(src: str, excludes: list[str]) -> list[str]:
    """tar on the root: the tree below SRC, sparse, numeric owners, exclusions."""
    argv = ["tar", "-C", src, "--create", "--file", "-", "--sparse", "--numeric-owner"]
    for pattern in excludes:
        argv.append(f"--exclude={pattern}")
    argv.append(".")
    return argv


def tar_extract(dest: str, as_root: bool) -> str:
    """tar on a node (a shell command): permissions, owners (as root), sparse files."""
    owner = " --same-owner" if as_root else " --no-same-owner"
    return (f"tar -C {shlex.quote(dest)} --extract --file - --preserve-permissions "
            f"--numeric-owner --sparse{owner}")  # fmt: skip


def resilience_args(heal: bool, supported: set[str]) -> list[str]:
    """The resilience flags every nettee of the run gets (root and receivers).

    ``-heal`` (unless ``heal`` is False) and ``-digest`` when the installed
    nettee knows them; without ``-heal`` the fallback keeps the healthy
    part of a chain going (:data:`FALLBACK_FLAGS`).
    """
    args = [f for f in RESILIENCE_FLAGS if f in supported and (heal or f != HEAL_FLAG)]
    if HEAL_FLAG not in args:
        args += FALLBACK_FLAGS
    return args + list(ALWAYS_FLAGS)


def next_arg(children: list[str], port: int) -> str:
    """nettee's -next: comma-separated children, each HOST:PORT (IPv6 bracketed)."""
    return ",".join(host_port(c, port) for c in children)


def receiver_args(*, host: str, port: int, dest: str, kind: str, child: str | None,
                  bind: str | None, extra: list[str], as_root: bool = True,
                  verbose: int = 5) -> list[str]:  # fmt: skip
    """nettee's arguments on a receiver (after the program name)."""
    args = ["-port", str(port), "-name", host, "-v", str(verbose)]
    if bind:
        args += ["-bind", bind]
    if child:
        args += ["-next", next_arg([child], port)]
    if kind == "file":
        args += ["-out", dest]
    elif kind == "dir":
        args += ["-out", "socket", "-cmd", tar_extract(dest, as_root)]
    else:
        args += ["-out", "socket", "-cmd", dest[1:].strip()]
    return args + extra


def root_args(*, children: list[str], port: int, report: str, extra: list[str],
              name: str = "root", verbose: int = 5, source: str = "-") -> list[str]:  # fmt: skip
    """nettee's arguments at the root: reads ``source`` (``-``: the driver feeds stdin)."""
    return ["-root", "-next", next_arg(children, port), "-port", str(port), "-in", source,
            "-name", name, "-report", report, "-v", str(verbose)] + extra  # fmt: skip


def eta(done: int, total: int | None, elapsed: float) -> float | None:
    """Seconds left at the mean rate so far (None when unknown)."""
    if not total or done <= 0 or elapsed <= 0:
        return None
    return max(0.0, (total - done) * elapsed / done)


def is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def parse_hosts_file(text: str) -> dict[str, str]:
    """``--resolve``: hosts(5) lines -> name -> address (:func:`beokit.net.parse_hosts_file`);
    UsageError naming the bad line."""
    try:
        return net.parse_hosts_file(text)
    except ValueError as exc:
        raise UsageError(f"--resolve {exc}") from None
