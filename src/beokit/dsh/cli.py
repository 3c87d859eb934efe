"""``beo dshd``, ``beo dsh``, ``beo top``: load daemons and least-loaded execution."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from beokit import settings
from beokit.cliargs import options_before_dashes
from beokit.dsh.defaults import DEFAULT_BEST_PORT, DEFAULT_GOSSIP_PORT, DEFAULT_STATUS_PORT
from beokit.errors import BeokitError, OneLineParser, int_in, seconds

_PORT = int_in("port", 1, 65535)
_PERIODS = int_in("period count", 1, 1000)
_FANOUT = int_in("fanout", 1, 64)


def _positive(what: str, lo: float = 0.0) -> Any:
    def convert(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}") from None
        if not v > lo or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}: must be > {lo:g}")
        return v

    convert.__name__ = what
    return convert


def _nonneg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad extra load {text!r}") from None
    if not 0 <= v < 1e6:
        raise argparse.ArgumentTypeError(f"bad extra load {text!r}: 0 or more")
    return v


SECRET_HELP = (
    "file holding the shared secret (default: $BEO_DSH_SECRET; none: no authentication). "
    "Never on the command line"
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``dshd``, ``dsh`` and ``top`` under the ``beo`` umbrella."""
    d = sub.add_parser(
        "dshd",
        help="cluster load daemon: gossip load over UDP, answer status and best node",
        description="Run on every node: read the cluster file, gossip this node's state (load "
        "averages, CPUs, memory, running dsh jobs) over UDP: 4 times a period to --fanout "
        "members, with the least-loaded reports it knows (each signed by its origin), so "
        "that the work per node does not grow with the cluster; keep the table of members "
        "with a fresh report, answer it on the status port (TCP) and the least-loaded node "
        "on the best port (TCP). SIGHUP re-reads the cluster file, SIGUSR1 logs the table. "
        "See docs/dsh.md.",
        epilog="examples:  beo dshd -f /etc/beokit/dsh.cluster -b -p\n"
        "           beo dshd -f cluster --bind 127.0.1.1 --load-file /tmp/load1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.__class__ = OneLineParser
    cluster_file = settings.config_path("dsh.cluster")
    d.add_argument("-f", "--cluster-file", default=cluster_file, metavar="FILE",
                   help="members, one a line: NAME [LOADWEIGHT [MEMWEIGHT]]; NAME may be a "
                   f"NodeSet (default {cluster_file}; an example: beo config example "
                   "dsh-cluster)")  # fmt: skip
    d.add_argument("-b", "--background", action="store_true", help="fork to the background")
    d.add_argument("-p", "--print-pid", action="store_true",
                   help="print the daemon's pid on startup (with -b)")  # fmt: skip
    d.add_argument(
        "-t",
        "--status-port",
        type=_PORT,
        default=DEFAULT_STATUS_PORT,
        help=f"TCP port for the full status (default {DEFAULT_STATUS_PORT}; -t is deprecated: "
        "it means a timeout in nettee, beo exec, pdsh and clush)",
    )
    d.add_argument(
        "-r",
        "--best-port",
        type=_PORT,
        default=DEFAULT_BEST_PORT,
        help=f"TCP port for the best-node report (default {DEFAULT_BEST_PORT}; -r is "
        "deprecated)",
    )
    d.add_argument(
        "-g",
        "--gossip-port",
        type=_PORT,
        default=DEFAULT_GOSSIP_PORT,
        help=f"UDP port of the state reports (default {DEFAULT_GOSSIP_PORT})",
    )
    d.add_argument("--metrics-port", type=_PORT, default=None, metavar="PORT",
                   help="serve Prometheus metrics (text format) on http://BIND:PORT/metrics: "
                   "members, members up, gossip packets in and out, rejected and bad "
                   "packets, queries (default: off)")  # fmt: skip
    d.add_argument("--bind", default="0.0.0.0", metavar="ADDR",
                   help="address of every socket (default all); several daemons can share "
                   "one box on different loopback addresses")  # fmt: skip
    d.add_argument("--name", metavar="NAME",
                   help="this node's name in the cluster file (default: the member whose "
                   "address is --bind, else the host name)")  # fmt: skip
    d.add_argument(
        "--period",
        type=_positive("period"),
        default=1.5,
        metavar="S",
        help="the report period: 4 gossip rounds, each with a new measurement (default 1.5)",
    )
    d.add_argument(
        "--expire",
        type=_PERIODS,
        default=3,
        metavar="N",
        help="a member whose newest report (direct or relayed) is N periods old is down "
        "(default 3)",
    )
    d.add_argument("--fanout", type=_FANOUT, default=4, metavar="K",
                   help="members each round's datagram goes to (4 rounds a period; default "
                   "4): a daemon sends 4*K datagrams a period and receives about as many, "
                   "whatever the cluster's size")  # fmt: skip
    d.add_argument("--extra-load", type=_nonneg, default=1.0, metavar="L",
                   help="load added locally to the node the best port names, until its next "
                   "report (default 1.0)")  # fmt: skip
    d.add_argument("--score", default="load", metavar="NAME|MODULE:FUNC",
                   help="scoring function: load (default), loadmem, jobs, or an importable "
                   "MODULE:FUNC(member, extra_load, now) -> float; lowest wins")  # fmt: skip
    d.add_argument("--send-to", action="append", default=[], metavar="ADDR",
                   help="send reports to this broadcast or multicast address instead of "
                   "to every member (repeatable); a multicast group is joined")  # fmt: skip
    d.add_argument("--load-file", metavar="FILE",
                   help="read the load from FILE each period instead of /proc (for tests "
                   "and demos): 'LOAD1 [LOAD5 LOAD15]' or a JSON object")  # fmt: skip
    d.add_argument("--jobs-dir", default="/tmp/beokit-dsh-jobs", metavar="DIR",
                   help="where dsh registers the jobs it runs on this node (default "
                   "/tmp/beokit-dsh-jobs)")  # fmt: skip
    d.add_argument("--secret-file", metavar="FILE", help=SECRET_HELP)
    d.add_argument("--user", metavar="USER",
                   help="drop root privileges to USER after binding (default: nobody when "
                   "started as root with -b)")  # fmt: skip
    d.add_argument("--log", metavar="FILE", help="log to FILE (default stderr)")
    d.add_argument("-v", "--verbose", action="count", default=0, help="more log (repeatable)")

    c = sub.add_parser(
        "dsh",
        help="run a command on the least-loaded node of the cluster",
        description="Ask the local dshd for the least-loaded node and run COMMAND there "
        "through ssh, in the same working directory, with stdin, stdout and stderr connected; "
        "the exit status comes back and SIGINT/SIGTERM/SIGHUP/SIGQUIT are forwarded to the "
        "remote process. Runs locally, with a warning, when no daemon answers. Works as a "
        "compiler wrapper: make -j8 CC='beo dsh gcc'. The command starts at the first word "
        "that is not an option; with a `--` on the line, options go anywhere before it and "
        "the command is what follows it.",
        epilog="examples:  beo dsh -v gcc -c foo.c\n"
        "           beo dsh gcc -v -- -c foo.c     (-v is beo dsh's)\n"
        "           make -j8 CC='beo dsh gcc'\n"
        "           BEO_DSH_DAEMON=127.0.1.1 beo dsh --status",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.__class__ = OneLineParser
    _client_options(c)
    c.add_argument("-v", "--verbose", action="store_true",
                   help="print the chosen host on stderr")  # fmt: skip
    c.add_argument("-n", "--no-stdin", action="store_true",
                   help="do not pass stdin (like ssh -n)")  # fmt: skip
    c.add_argument("-R", "--rcmd", default=None, metavar="ssh|rsh|exec|netns|TEMPLATE",
                   help="how the command reaches the node, as in beo run: ssh (default), rsh, "
                   "exec (here, for tests), netns[:PATTERN] (a network namespace here) or a template such as 'ssh -p 2222 {host} {cmd}'")  # fmt: skip
    c.add_argument("--ssh", default=None, metavar="CMD",
                   help="with -R ssh: the ssh client and its options, e.g. 'ssh -F cfg' "
                   "(default ssh; also $BEO_DSH_SSH)")  # fmt: skip
    c.add_argument("--ssh-args", default="", metavar="ARGS",
                   help="extra ssh client arguments, e.g. '-F ssh_config -p 2222'")  # fmt: skip
    c.add_argument("--connect-timeout", type=seconds("timeout"), default=10.0, metavar="S",
                   help="ssh's ConnectTimeout (default 10)")  # fmt: skip
    c.add_argument(
        "--status",
        action="store_true",
        help="print the cluster's state (as beo top --once) and exit",
    )
    c.add_argument("--json", action="store_true", help="with --status: JSON")
    c.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND")
    options_before_dashes(c)

    t = sub.add_parser(
        "top",
        help="live table of the cluster's nodes, load and memory, from any dshd",
        description="Show the table of a dshd's status port, refreshed every INTERVAL seconds "
        "(Ctrl-C quits); not on a terminal, one table per interval, like top -b.",
    )
    t.__class__ = OneLineParser
    _client_options(t)
    t.add_argument("-i", "--interval", type=_positive("interval"), default=1.5, metavar="S",
                   help="refresh every S seconds (default 1.5)")  # fmt: skip
    t.add_argument("-1", "--once", action="store_true", help="print the table once and exit")
    t.add_argument("--json", action="store_true", help="print the status JSON once and exit")
    return d


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--daemon", metavar="HOST[:PORT]",
                   help="the dshd to ask (default $BEO_DSH_DAEMON, else 127.0.0.1). HOST:PORT "
                   "is deprecated: PORT is its best port for dsh but its status port for top "
                   "and --status; say --best-port/--status-port")  # fmt: skip
    p.add_argument("-t", "--status-port", type=_PORT, default=None, metavar="PORT",
                   help=f"its status port (default {DEFAULT_STATUS_PORT}; -t is deprecated: "
                   "it means a timeout in nettee, beo exec, pdsh and clush)")  # fmt: skip
    p.add_argument("-r", "--best-port", type=_PORT, default=None, metavar="PORT",
                   help=f"its best port (default {DEFAULT_BEST_PORT}; -r is deprecated)")
    p.add_argument(
        "--timeout",
        type=_positive("timeout"),
        default=2.0,
        metavar="S",
        help="give up on the daemon after S seconds (default 2)",
    )
    p.add_argument("--secret-file", metavar="FILE", help=SECRET_HELP)


def run(args: argparse.Namespace) -> int:
    """Dispatch ``beo dshd``, ``beo dsh``, ``beo top``; errors become one line on stderr."""
    prog = f"beo {args.command}"
    try:
        if args.command == "dshd":
            from beokit.dsh import service

            return service.main(args)
        from beokit.dsh import client

        if args.command == "top" or args.status:
            return client.top_main(args, once=args.command == "dsh" or args.once)
        return client.dsh_main(args)
    except BeokitError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return e.exit_status
    except KeyboardInterrupt:  # Ctrl-C is how one leaves beo top
        return 0 if args.command == "top" else 130
