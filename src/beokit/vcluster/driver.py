"""Virtual cluster driver: runs the plan's commands, starts sshd, kills, cleans up.

Everything here needs root and ``ip netns``.  The decisions (names,
addresses, commands) are made in :mod:`beokit.vcluster.plan`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from beokit.errors import BeokitError
from beokit.proc import describe_exit
from beokit.vcluster import plan

log = logging.getLogger(__name__)

STATE_ROOT = Path(os.environ.get("BEOKIT_VCLUSTER_DIR", "/run/beokit/vcluster"))
ETC_NETNS = Path("/etc/netns")


class VClusterError(BeokitError):
    """A command failed or the machine cannot host a virtual cluster."""


def unavailable_reason() -> str | None:
    """Why this machine cannot run a virtual cluster, or ``None`` if it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs '{tool}' (apt-get install iproute2)"
    try:
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"'ip netns' unavailable: {e}"
    if r.returncode != 0:
        return f"'ip netns' unavailable: {r.stderr.strip()}"
    return None


def require() -> None:
    """Raise :class:`VClusterError` unless this machine can run a virtual cluster."""
    reason = unavailable_reason()
    if reason:
        raise VClusterError(f"virtual cluster {reason}")


def run(argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    log.debug("run %s", " ".join(argv))
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        why = r.stderr.strip() or describe_exit(r.returncode)
        raise VClusterError(f"`{' '.join(argv)}` failed: {why}")
    return r


def run_all(cmds: list[list[str]]) -> None:
    for argv in cmds:
        run(argv)


def state_dir(prefix: str) -> Path:
    return STATE_ROOT / plan.check_prefix(prefix)


# --- state -------------------------------------------------------------------


@dataclass
class State:
    """What ``up`` made, kept in ``STATE_ROOT/PREFIX/state.json``."""

    plan: plan.ClusterPlan
    rates: dict[int, int] = field(default_factory=dict)  # host -> bps after `slow`
    ssh_config: str | None = None
    created: float = 0.0

    @property
    def prefix(self) -> str:
        return self.plan.prefix

    def rate_of(self, i: int) -> int:
        return self.rates.get(i, self.plan.spec.rate_bps)

    def save(self) -> None:
        d = state_dir(self.prefix)
        d.mkdir(parents=True, exist_ok=True)
        data = {**self.plan.to_json(), "rates": {str(k): v for k, v in self.rates.items()},
                "ssh_config": self.ssh_config, "created": self.created}  # fmt: skip
        tmp = d / "state.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(d / "state.json")

    @classmethod
    def load(cls, prefix: str) -> State:
        path = state_dir(prefix) / "state.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            up = "beo vcluster up" + ("" if prefix == plan.DEFAULT_PREFIX else f" --name {prefix}")
            raise VClusterError(
                f"no virtual cluster {prefix!r} (no {path}); start one with `{up}`"
            ) from None
        return cls(plan.ClusterPlan.from_json(data), {int(k): v for k, v in data["rates"].items()},
                   data.get("ssh_config"), data.get("created", 0.0))  # fmt: skip


# --- processes ---------------------------------------------------------------


def pids_in(ns: str) -> list[int]:
    r = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()] if r.returncode == 0 else []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def kill_namespace(ns: str, sig: int = signal.SIGKILL, wait: float = 3.0) -> int:
    """Send ``sig`` to every process in ``ns``; with SIGKILL wait until they are gone."""
    pids = pids_in(ns)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    if sig == signal.SIGKILL:
        deadline = time.monotonic() + wait
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
    return len(pids)


# --- up / down ---------------------------------------------------------------


def leftovers(prefix: str) -> plan.Leftovers:
    netns = run(["ip", "netns", "list"]).stdout
    links = run(["ip", "-o", "link", "show"]).stdout
    return plan.find_leftovers(prefix, netns, links)


def up(spec: plan.Spec, auto_net: bool = True) -> State:
    """Build the cluster; on any failure tear down everything made so far.

    With ``auto_net`` the networks are the first /20s of 198.18.0.0/15 that
    no route of this (root) namespace and no other cluster uses yet.
    """
    plan.ClusterPlan.build(spec)  # validate before touching anything
    reason = unavailable_reason()
    if reason:
        raise VClusterError(f"cannot build a virtual cluster: {reason}")
    if leftovers(spec.prefix):
        raise VClusterError(
            f"virtual cluster {spec.prefix!r} is already up (or left over from a crash): "
            f"run `beo vcluster down --name {spec.prefix}` first"
        )
    sshd = _find_sshd() if spec.sshd else None
    used = plan.used_networks(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout)
    used |= networks_of_other_clusters()
    if auto_net:
        spec = dataclasses.replace(spec, net=plan.pick_net(spec.nics, used))
    elif spec.controller and spec.net in used:
        raise VClusterError(f"network {plan.network(0, spec.net)} is already routed here "
                            "(another virtual cluster?): choose another --net")  # fmt: skip
    cluster = plan.ClusterPlan.build(spec)
    state = State(cluster, created=time.time())
    try:
        state.save()
        run_all(cluster.create_commands())
        hosts = cluster.etc_hosts()
        for ns in cluster.host_namespaces():
            (ETC_NETNS / ns).mkdir(parents=True, exist_ok=True)
            (ETC_NETNS / ns / "hosts").write_text(hosts)
        if sshd:
            state.ssh_config = str(start_sshd(cluster, sshd))
        state.save()
    except BaseException as e:
        log.info("building %s failed (%s); rolling back", spec.prefix, e)
        down(spec.prefix)
        if isinstance(e, VClusterError) and " netem " in str(e) and "unknown" in str(e):
            raise VClusterError("--delay needs the netem qdisc (kernel module sch_netem), "
                                "which this kernel lacks; nothing was left behind") from None
        raise
    return state


def networks_of_other_clusters() -> set[int]:
    """The /20 numbers that the clusters with a state file hold (all their NICs)."""
    used: set[int] = set()
    for path in STATE_ROOT.glob("*/state.json"):
        try:
            spec = json.loads(path.read_text())["spec"]
            used.update(range(spec["net"], spec["net"] + spec["nics"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return used


@dataclass
class DownReport:
    namespaces: list[str]
    links: list[str]
    processes: int
    remaining: plan.Leftovers


def down(prefix: str) -> DownReport:
    """Kill every process in the cluster's namespaces and delete them, by prefix."""
    plan.check_prefix(prefix)
    require()
    left = leftovers(prefix)
    killed = sum(kill_namespace(ns) for ns in left.namespaces)
    for argv in plan.teardown_commands(left):
        r = run(argv, check=False)
        if r.returncode != 0:
            log.warning("%s: %s", " ".join(argv), r.stderr.strip())
    if ETC_NETNS.is_dir():
        for d in ETC_NETNS.glob(f"{prefix}-*"):
            shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(state_dir(prefix), ignore_errors=True)
    return DownReport(left.namespaces, left.links, killed, leftovers(prefix))


# --- sshd --------------------------------------------------------------------


def _find_sshd() -> str:
    for path in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if path and os.access(path, os.X_OK):
            if shutil.which("ssh-keygen") is None:
                break
            return path
    raise VClusterError("--sshd needs OpenSSH's sshd and ssh-keygen (apt-get install "
                        "openssh-server openssh-client)")  # fmt: skip


SSHD_CONFIG = """\
Port 22
ListenAddress 0.0.0.0
HostKey {d}/host_ed25519_key
AuthorizedKeysFile {d}/authorized_keys
PidFile {d}/sshd-{host}.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
LogLevel ERROR
"""

SSH_CONFIG_TAIL = """\
Host *
    User root
    IdentityFile {d}/id_ed25519
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    BatchMode yes
    LogLevel ERROR
"""


def start_sshd(cluster: plan.ClusterPlan, sshd: str) -> Path:
    """Generate keys, start an sshd on port 22 in every host, write an ssh_config."""
    d = state_dir(cluster.prefix) / "ssh"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    for key in ("host_ed25519_key", "id_ed25519"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"beokit-vcluster-{key}",
             "-f", str(d / key)])  # fmt: skip
    shutil.copyfile(d / "id_ed25519.pub", d / "authorized_keys")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    for i, ns in enumerate(cluster.host_namespaces(), start=1):
        conf = d / f"sshd-{plan.host_name(i)}.conf"
        conf.write_text(SSHD_CONFIG.format(d=d, host=plan.host_name(i)))
        run(["ip", "netns", "exec", ns, sshd, "-f", str(conf)])
    deadline = time.monotonic() + 10
    for ns in cluster.host_namespaces():  # sshd may listen only after it has daemonized
        while not run(["ip", "netns", "exec", ns, "ss", "-Hltn", "sport = :22"]).stdout.strip():
            if time.monotonic() > deadline:
                raise VClusterError(f"sshd in {ns} does not listen on port 22")
            time.sleep(0.05)
    entries = []
    for pt in cluster.ports:
        names = f"{plan.host_name(pt.host)}-{pt.dev}"
        if pt.nic == 0:
            names = f"{plan.host_name(pt.host)} {names}"
        entries.append(f"Host {names}\n    HostName {pt.address}\n")
    cfg = state_dir(cluster.prefix) / "ssh_config"
    cfg.write_text("".join(entries) + SSH_CONFIG_TAIL.format(d=d))
    return cfg


# --- faults ------------------------------------------------------------------


def link(state: State, i: int, up: bool, nic: int | None = None) -> None:
    require()
    run_all(state.plan.link_commands(i, up, nic))


def slow(state: State, i: int, rate_bps: int, nic: int | None = None) -> None:
    require()
    run_all(state.plan.slow_commands(i, rate_bps, nic))
    if nic is None:
        state.rates[i] = rate_bps
        state.save()


def kill(state: State, i: int, sig: int = signal.SIGKILL) -> int:
    require()
    return kill_namespace(plan.host_ns(state.prefix, i), sig)


# --- status ------------------------------------------------------------------


def _links(ns: str) -> dict[str, dict]:
    r = run(["ip", "-n", ns, "-j", "link", "show"], check=False)
    if r.returncode != 0 or not r.stdout.strip():
        return {}
    return {x["ifname"]: x for x in json.loads(r.stdout)}


def _link_state(host_side: dict | None, switch_side: dict | None) -> str:
    if not host_side or not switch_side:
        return "missing"
    if "UP" not in switch_side.get("flags", []):
        return "down (switch port)"
    if "UP" not in host_side.get("flags", []):
        return "down (host NIC)"
    return "up" if "LOWER_UP" in host_side.get("flags", []) else "no-carrier"


def status(state: State) -> dict:
    require()
    cluster, spec = state.plan, state.plan.spec
    sw_links = {ns: _links(ns) for ns in cluster.switch_namespaces()}
    hosts = []
    for i, ns in enumerate(cluster.host_namespaces(), start=1):
        h_links = _links(ns)
        nics = [{
            "nic": pt.dev, "address": pt.address,
            "switch": plan.switch_name(pt.nic, pt.switch), "port": pt.port,
            "link": _link_state(h_links.get(pt.dev), sw_links[pt.switch_ns].get(pt.port)),
        } for pt in cluster.ports_of(i)]  # fmt: skip
        hosts.append({
            "host": plan.host_name(i), "namespace": ns, "rate": plan.format_rate(state.rate_of(i)),
            "rate_bps": state.rate_of(i), "processes": len(pids_in(ns)), "nics": nics,
        })  # fmt: skip
    return {
        "name": spec.prefix,
        "hosts": hosts,
        "switches": [plan.switch_name(j, k) for j in range(spec.nics)
                     for k in range(spec.switches)],  # fmt: skip
        "rate": plan.format_rate(spec.rate_bps),
        "trunk_rate": plan.format_rate(spec.trunk_bps),
        "delay_us": spec.delay_us,
        "networks": [f"{cluster.network(j)}" for j in range(spec.nics)],
        "controller": (f"{cluster.controller_address()} ({plan.controller_link(spec.prefix)})"
                       if spec.controller else None),  # fmt: skip
        "ssh_config": state.ssh_config,
        "state_dir": str(state_dir(spec.prefix)),
    }
