"""``beo provision node``: argument parsing for the node command (the server side is
``beo boot provision``, the boot files ``beo boot initrd``)."""

from __future__ import annotations

import argparse
import sys

from beokit.errors import BeokitError, OneLineParser, UsageError, int_in

PROG = "beo provision"
_PORT = int_in("port", 0, 65535, " (0 = default)")


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 <= v <= 86400 * 7:
        raise argparse.ArgumentTypeError(f"bad seconds {text!r}")
    return v


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("provision", help="diskless provisioning: the node command",
                       description="What a booted node runs to take its place in the nettee "
                       "chain of `beo boot provision`. See docs/provision.md.")  # fmt: skip
    p.__class__ = OneLineParser
    sub2 = p.add_subparsers(dest="provision_command", metavar="SUBCOMMAND")
    n = sub2.add_parser("node", help="receive the image at this node's place in the chain",
                        description="Learn the node's name, the server and its topology file "
                        "from the DHCP lease (udhcpc's environment: --lease FILE, or the "
                        "environment itself), report to the server's round, run the nettee "
                        "receiver (-heal -digest -fsync) into the target, check it against "
                        "the pinned digest (read back from a disk or device). Exit 0: verified.")  # fmt: skip
    n.__class__ = OneLineParser
    n.add_argument("--lease", metavar="FILE", help="udhcpc's environment as KEY=VALUE lines "
                   "(default: this process's environment)")  # fmt: skip
    n.add_argument("--name", default="", help="this node's name (default: the lease's)")
    n.add_argument("--server", default="", help="the boot server (default: the lease's)")
    n.add_argument("--target", default="", help="a file, a block device or dir:PATH "
                   "(default: the server's provision.target)")  # fmt: skip
    n.add_argument("--tftp-port", type=_PORT, default=69, help="TFTP port (default 69)")
    n.add_argument("--http", metavar="URL", default="", help="fetch the topology over HTTP "
                   "from this base URL instead of TFTP")  # fmt: skip
    n.add_argument("--report-port", type=_PORT, default=0,
                   help="the round's report port (default: the topology file's)")
    n.add_argument("--wait", type=_seconds, default=0.0,
                   help="give up after this many seconds (default: parent_wait + 600)")
    n.add_argument("--bind", default="", help="nettee -bind (tests: one node per address)")
    n.add_argument("--read-back", action="store_true", help="read the target back after "
                   "the stream even on a memory filesystem (tmpfs), where nettee -digest has "
                   "hashed the file as written (default: only a disk or device is read back)")
    n.add_argument("-v", "--verbose", action="store_true", help="say each stage on stderr")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BeokitError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return e.exit_status


def _run(args: argparse.Namespace) -> int:
    import os

    from beokit.provision import lease, node

    if args.provision_command != "node":
        raise UsageError("give a subcommand: node")
    env = node.read_lease(args.lease) if args.lease else dict(os.environ)
    try:
        got = lease.from_env(env, args.name, args.server)
    except lease.LeaseError as e:
        raise UsageError(str(e)) from None
    opts = node.NodeOptions(got, target=args.target, tftp_port=args.tftp_port,
                            http_base=args.http, report_port=args.report_port, wait=args.wait,
                            bind=args.bind, verbose=args.verbose,
                            read_back=args.read_back)  # fmt: skip
    return node.run_node(opts)
