"""``beo dshd``'s configuration: the options, the cluster file and the secret, checked.

:func:`load_config` reads everything a daemon needs before it binds a socket
(and again on SIGHUP); any bad value is a :class:`~beokit.errors.UsageError`
naming it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from beokit.dsh import gossip, state
from beokit.dsh.defaults import read_secret
from beokit.errors import UsageError


@dataclass
class DshdConfig:
    """The daemon's options (paths absolute: ``-b`` changes to /, SIGHUP re-reads)."""

    cluster_file: str
    bind: str
    name: str | None
    period: float
    expire: int
    extra_load: float
    score: str
    send_to: list[str]
    load_file: str | None
    jobs_dir: str
    secret_file: str | None
    gossip_port: int
    status_port: int
    best_port: int
    fanout: int = gossip.FANOUT
    metrics_port: int | None = None  # Prometheus text format on --bind:PORT/metrics


@dataclass
class Loaded:
    """What the cluster file and the options give, checked."""

    specs: list[state.MemberSpec]
    addresses: dict[str, str]
    self_name: str
    secret: bytes | None
    score: state.ScoreFn
    targets: list[str] = field(default_factory=list)


def resolve(name: str) -> str:
    """An IPv4 address for a member name (the name itself if it is one)."""
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as e:
        raise UsageError(f"cannot resolve member {name!r}: {e}") from None
    return str(infos[0][4][0])


MAKE_CLUSTER_FILE = ("make one: `beo config example dsh-cluster > {path}` and edit it "
                     "(one member a line), or give another with -f FILE")


def _read_cluster_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise UsageError(f"bad cluster file {path!r}: no such file; "
                         + MAKE_CLUSTER_FILE.format(path=path)) from None  # fmt: skip
    except OSError as e:
        raise UsageError(f"bad cluster file {path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"bad cluster file {path!r}: not UTF-8 text") from None


def _self_name(cfg: DshdConfig, addresses: dict[str, str]) -> str:
    """This node's member name: --name, else the member at --bind, else the host name."""
    if cfg.name is not None:
        if cfg.name not in addresses:
            raise UsageError(f"bad --name {cfg.name!r}: not in {cfg.cluster_file}")
        return cfg.name
    by_addr = [n for n, a in addresses.items() if a == cfg.bind]
    host = socket.gethostname()
    cands = by_addr or [n for n in addresses if n in (host, host.split(".")[0])]
    if not cands:
        raise UsageError(f"this node (bind {cfg.bind}, host name {host!r}) is not in "
                         f"{cfg.cluster_file}; give --name")  # fmt: skip
    return cands[0]


def load_config(cfg: DshdConfig) -> Loaded:
    """Read and check everything; raise :class:`UsageError` naming the bad value
    (a bad cluster file line or --score: :class:`~beokit.dsh.state.ClusterFileError`)."""
    text = _read_cluster_file(cfg.cluster_file)
    specs = state.parse_cluster(text, cfg.cluster_file)
    score = state.score_function(cfg.score)
    addresses = {s.name: resolve(s.name) for s in specs}
    self_name = _self_name(cfg, addresses)
    for a in cfg.send_to:
        try:
            ipaddress.IPv4Address(a)
        except ValueError:
            raise UsageError(f"bad --send-to address {a!r}") from None
    secret = read_secret(cfg.secret_file)
    return Loaded(specs, addresses, self_name, secret, score)
