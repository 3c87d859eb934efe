"""``beo vcluster``: a switched network of N hosts (network namespaces) on one box."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

from beokit.cliargs import options_before_dashes, plural
from beokit.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, BeokitError, OneLineParser
from beokit.proc import signal_name
from beokit.vcluster import plan

if TYPE_CHECKING:
    from beokit.vcluster import driver as driver_t

PROG = "beo vcluster"
T = TypeVar("T")



def _type(fn: Callable[[str], T], what: str) -> Callable[[str], T]:
    def convert(text: str) -> T:
        try:
            return fn(text)
        except plan.PlanError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}") from None

    convert.__name__ = what
    return convert


def _count(what: str, lo: int, hi: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise plan.PlanError(f"bad {what} {text!r}: a number {lo}-{hi}") from None
        if not lo <= v <= hi:
            raise plan.PlanError(f"bad {what} {text!r}: {lo}-{hi}")
        return v

    return _type(convert, what)


def _signal(text: str) -> int:
    t = text.upper().removeprefix("SIG")
    if t.isdigit():
        return int(t)
    try:
        return int(signal.Signals[f"SIG{t}"])
    except KeyError:
        raise plan.PlanError(f"bad signal {text!r} (e.g. KILL, TERM, 9)") from None


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``vcluster`` under the ``beo`` umbrella."""
    vc = sub.add_parser(
        "vcluster",
        help="a virtual cluster: N hosts as network namespaces behind shaped switches",
        description="Build N hosts as network namespaces, each linked by veth to a Linux "
        "bridge (the switch, in its own namespace), every port shaped with tc on both ends. "
        "Addresses from 198.18.0.0/15; nothing is routed outside. Needs root. "
        "See docs/vcluster.md.",
    )
    vc.__class__ = OneLineParser  # made by the umbrella's subparsers; same state, one-line errors
    name = OneLineParser(add_help=False)
    name.add_argument("--name", default=plan.DEFAULT_PREFIX, type=_type(plan.check_prefix, "name"),
                      metavar="PREFIX",
                      help="name prefix of every namespace and link (default bk)")  # fmt: skip
    cmds = vc.add_subparsers(dest="vc_command", metavar="ACTION", parser_class=OneLineParser)

    up = cmds.add_parser("up", parents=[name], help="build the cluster",
                         description="Build N hosts, K switches per network, M NICs per host.")  # fmt: skip
    up.add_argument("-n", "--hosts", type=_count("host count", 1, plan.MAX_HOSTS), required=True,
                    metavar="N", help="number of hosts")  # fmt: skip
    up.add_argument("--rate", type=_type(plan.parse_rate, "rate"), default=plan.parse_rate("1gbit"),
                    help="per-port rate, each direction (default 1gbit)")  # fmt: skip
    up.add_argument("--delay", type=_type(plan.parse_delay, "delay"), default=0,
                    help="one-way delay added on every port end, e.g. 0.2ms (default 0)")  # fmt: skip
    up.add_argument("--switches", type=_count("switch count", 1, plan.MAX_SWITCHES), default=1,
                    metavar="K", help="switches per network; hosts fill them in blocks, "
                    "switch k>0 has a trunk to switch 0 (default 1)")  # fmt: skip
    up.add_argument("--nics", type=_count("NIC count", 1, plan.MAX_NICS), default=1, metavar="M",
                    help="NICs per host; NIC j is on network j, 198.18.16j.0/20 (default 1)")  # fmt: skip
    up.add_argument("--trunk-rate", type=_type(plan.parse_rate, "rate"), default=0,
                    help="rate of the trunks between switches (default: --rate)")  # fmt: skip
    up.add_argument("--sshd", action="store_true",
                    help="start sshd in every host and write an ssh_config for `ssh -F`")  # fmt: skip
    up.add_argument("--net", type=_count("network number", 0, plan.MAX_NETS - 1), default=None,
                    help="NIC j gets /20 number NET+j of 198.18.0.0/15 (default: the first "
                    "free one, so several clusters can be up at once)")  # fmt: skip
    up.add_argument("--mtu", type=_count("MTU", plan.MIN_MTU, plan.MAX_MTU), default=plan.DEFAULT_MTU,
                    help="MTU of every link (default 1500; 9000 for jumbo frames, as "
                    "cluster data networks often use)")  # fmt: skip
    up.add_argument("--no-controller", action="store_true",
                    help="no link from this (root) namespace into switch 0: exec only")  # fmt: skip

    cmds.add_parser("down", parents=[name], help="kill everything in the cluster and delete it",
                         description="Kill every process in the cluster's namespaces and delete "
                         "the namespaces and links, found by name prefix (also after a crash).")  # fmt: skip

    st = cmds.add_parser("status", parents=[name], help="hosts, addresses, rates, link state",
                         description="Print the cluster's hosts with each NIC's address, "
                         "switch port, rate and link state, and the processes running in "
                         "each host (from the state file the cluster was built with).")  # fmt: skip
    st.add_argument("--json", action="store_true", help="machine-readable output")

    ex = cmds.add_parser("exec", parents=[name], help="run a command in a host: exec HOST -- CMD",
                         description="Run CMD inside HOST's network namespace (hostN, N, or a "
                         "switch swJ-K). Exit status is CMD's. Options go anywhere before "
                         "`--`; everything after it is CMD.")  # fmt: skip
    ex.add_argument("host", metavar="HOST")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    options_before_dashes(ex)

    ln = cmds.add_parser("link", parents=[name], help="pull or plug a host's cable: link down|up HOST",
                         description="Set HOST's links down (the cable pulled: the switch "
                         "port and the host's NIC both lose carrier) or up again.")  # fmt: skip
    ln.add_argument("state", choices=["up", "down"])
    ln.add_argument("host", metavar="HOST")
    ln.add_argument("--nic", type=_count("NIC", 0, plan.MAX_NICS - 1), help="only NIC J (default all)")

    kl = cmds.add_parser("kill", parents=[name], help="kill every process in a host",
                         description="Send a signal (default KILL) to every process in "
                         "HOST's network namespace: a node that crashes.")  # fmt: skip
    kl.add_argument("host", metavar="HOST")
    kl.add_argument("-s", "--signal", type=_type(_signal, "signal"), default=signal.SIGKILL,
                    help="signal (default KILL)")  # fmt: skip

    sl = cmds.add_parser("slow", parents=[name], help="re-shape a host's port: slow HOST RATE",
                         description="Shape HOST's port to RATE each way (both ends of the "
                         "link, as `up --rate` does): a slow or degraded node.")  # fmt: skip
    sl.add_argument("host", metavar="HOST")
    sl.add_argument("rate", type=_type(plan.parse_rate, "rate"), metavar="RATE")
    sl.add_argument("--nic", type=_count("NIC", 0, plan.MAX_NICS - 1), help="only NIC J (default all)")
    return vc


def run(args: argparse.Namespace) -> int:
    """Dispatch ``beo vcluster ACTION``; errors become one line on stderr."""
    action = getattr(args, "vc_command", None)
    if action is None:
        sys.stderr.write(f"{PROG}: name an action: up, down, status, exec, link, kill, slow\n")
        return EXIT_USAGE
    try:
        return ACTIONS[action](args)
    except plan.PlanError as e:
        sys.stderr.write(f"{PROG} {action}: {e}\n")
        return EXIT_USAGE
    except BeokitError as e:
        sys.stderr.write(f"{PROG} {action}: {e}\n")
        return e.exit_status
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _up(args: argparse.Namespace) -> int:
    from beokit.vcluster import driver

    spec = plan.Spec(n=args.hosts, rate_bps=args.rate, delay_us=args.delay, switches=args.switches,
                  nics=args.nics, prefix=args.name, trunk_rate_bps=args.trunk_rate,
                  controller=not args.no_controller, sshd=args.sshd,
                  net=0 if args.net is None else args.net, mtu=args.mtu).validate()  # fmt: skip
    t0 = time.monotonic()
    state = driver.up(spec, auto_net=args.net is None)
    dt = time.monotonic() - t0
    print(f"vcluster {spec.prefix}: {plural(spec.n, 'host')} host1..host{spec.n} "
          f"(namespaces {plan.host_ns(spec.prefix, 1)}..), "
          f"{plural(spec.switches * spec.nics, 'switch', 'switches')}, "
          f"{plan.format_rate(spec.rate_bps)} per port each way"
          + (f", {spec.delay_us}us delay per port end" if spec.delay_us else "")
          + f", up in {dt:.1f}s")  # fmt: skip
    pl = state.plan
    for j in range(spec.nics):
        print(f"  network {j}: {pl.network(j)}  host1 {pl.address(j, 1)} .. host{spec.n} "
              f"{pl.address(j, spec.n)}")  # fmt: skip
    if spec.controller:
        print(f"  controller: {pl.controller_address()} on {plan.controller_link(spec.prefix)}")
    if state.ssh_config:
        print(f"  ssh: ssh -F {state.ssh_config} host1")
    print(follow_up(spec.prefix))
    return EXIT_OK


def follow_up(prefix: str) -> str:
    """The line ``up`` ends with: how to run in the cluster and clean up (with --name)."""
    name = f" --name {prefix}" if prefix != plan.DEFAULT_PREFIX else ""
    return f"  run: beo vcluster exec{name} host1 -- CMD    clean up: beo vcluster down{name}"


def _down(args: argparse.Namespace) -> int:
    from beokit.vcluster import driver

    r = driver.down(args.name)
    if not r.namespaces and not r.links:
        print(f"vcluster {args.name}: nothing to clean up")
    else:
        print(f"vcluster {args.name}: deleted {plural(len(r.namespaces), 'namespace')}, "
              f"{plural(len(r.links), 'link')}, killed {plural(r.processes, 'process', 'processes')}")  # fmt: skip
    if r.remaining:
        sys.stderr.write(f"{PROG} down: still present: "
                         f"{' '.join(r.remaining.namespaces + r.remaining.links)}\n")  # fmt: skip
        return EXIT_FAILURE
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from beokit.vcluster import driver

    try:
        state = driver.State.load(args.name)
    except driver.VClusterError:
        if os.geteuid() == 0 and (left := driver.leftovers(args.name)):
            raise driver.VClusterError(
                f"no state file, but leftovers of {args.name!r} (a crash?): "
                f"{' '.join(left.namespaces + left.links)}; clean up with "
                f"`beo vcluster down --name {args.name}`") from None
        raise
    st = driver.status(state)
    if args.json:
        print(json.dumps(st, indent=1))
        return EXIT_OK
    print(f"vcluster {st['name']}: {plural(len(st['hosts']), 'host')}, switches {' '.join(st['switches'])}, "
          f"rate {st['rate']}, trunk {st['trunk_rate']}, delay {st['delay_us']}us")  # fmt: skip
    print(f"networks {' '.join(st['networks'])}; controller {st['controller'] or 'none'}")
    if st["ssh_config"]:
        print(f"ssh -F {st['ssh_config']} HOST")
    print(f"{'HOST':<9} {'NIC':<5} {'ADDRESS':<15} {'SWITCH':<7} {'PORT':<6} {'RATE':<9} "
          f"{'LINK':<19} PROCS")  # fmt: skip
    for h in st["hosts"]:
        for nic in h["nics"]:
            print(f"{h['host']:<9} {nic['nic']:<5} {nic['address']:<15} {nic['switch']:<7} "
                  f"{nic['port']:<6} {h['rate']:<9} {nic['link']:<19} {h['processes']}")  # fmt: skip
    return EXIT_OK


def _exec(args: argparse.Namespace) -> int:
    from beokit.vcluster import driver

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise plan.PlanError("exec needs a command: exec HOST -- CMD")
    state = driver.State.load(args.name)
    ns = plan.parse_target(args.host, state.plan.spec)
    driver.require()
    sys.stdout.flush()
    os.execvp("ip", ["ip", "netns", "exec", ns, *cmd])
    return EXIT_FAILURE  # pragma: no cover


def _host(args: argparse.Namespace) -> tuple[ModuleType, driver_t.State, int, int | None]:
    from beokit.vcluster import driver

    state = driver.State.load(args.name)
    i = plan.parse_host(args.host, state.plan.spec.n, state.prefix)
    nic = getattr(args, "nic", None)
    if nic is not None and nic >= state.plan.spec.nics:
        raise plan.PlanError(f"bad NIC {nic!r}: 0-{state.plan.spec.nics - 1}")
    return driver, state, i, nic


def _link(args: argparse.Namespace) -> int:
    driver, state, i, nic = _host(args)
    driver.link(state, i, args.state == "up", nic)
    print(f"{plan.host_name(i)}: link {args.state}")
    return EXIT_OK


def _kill(args: argparse.Namespace) -> int:
    driver, state, i, _ = _host(args)
    n = driver.kill(state, i, args.signal)
    print(f"{plan.host_name(i)}: sent {signal_name(args.signal)} to "
          f"{plural(n, 'process', 'processes')}")  # fmt: skip
    return EXIT_OK


def _slow(args: argparse.Namespace) -> int:
    driver, state, i, nic = _host(args)
    driver.slow(state, i, args.rate, nic)
    print(f"{plan.host_name(i)}: port shaped to {plan.format_rate(args.rate)} each way")
    return EXIT_OK


ACTIONS = {"up": _up, "down": _down, "status": _status, "exec": _exec, "link": _link,
           "kill": _kill, "slow": _slow}  # fmt: skip
