"""``beo cast``: put a file, a directory or a disk image on every node, verified."""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
import time
from typing import Any

from beokit.errors import EXIT_FAILURE, EXIT_USAGE, UsageError

EPILOG = """\
examples:
  beo cast image.raw node[001-128] --to /dev/sda3            # ssh, one chain, verified
  beo cast -R exec image.bin '127.0.0.[2-9]' --to '/tmp/x/{host}'   # one machine
  beo cast --exclude '*.o' /opt/app node[1-64] --to /opt/app  # a tree, as a tar stream
  tar -C /srv -c . | beo cast - node[1-8] --to '|tar -C /srv -x'
  beo cast --chains 4 image.raw node[1-64] --to /scratch/image.raw
  beo cast -f dolly.conf                                       # dolly's config file
exit status: 0 every node verified, 1 a node failed (named in the table), 2 bad input"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "cast",
        help="distribute a file, directory or disk image to every node, verified",
        description="Start a receiver on every node of NODESET through the tree launcher "
        "(beo run's O(log N) ssh hops), chain them (nettee), stream SOURCE (a file, a block "
        "device, - for stdin, or a directory sent as a tar stream) to DEST on every node, and print a per-node "
        "table: bytes, digest check, time, MB/s, status. A fresh secret per run goes to the "
        "receivers inside the launcher's ssh channels, and each calls the root back over "
        "an authenticated TCP connection; every node fsyncs before it reports.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", nargs="?", metavar="SOURCE",
                   help="file, block device, directory, or - (stdin)")  # fmt: skip
    p.add_argument("nodeset", nargs="?", metavar="NODESET",
                   help="nodes, ClusterShell NodeSet syntax (node[01-16])")  # fmt: skip
    p.add_argument("--to", dest="dest", metavar="DEST",
                   help="path, device, directory (for a directory SOURCE) or '|command' on "
                   "every node; {host} becomes the node's name")  # fmt: skip
    p.add_argument(
        "-f",
        "--dolly",
        metavar="FILE",
        help="read SOURCE, DEST and the nodes from a dolly configuration file",
    )
    p.add_argument("--hostfile", metavar="FILE", help="nodes, one a line (or NodeSets)")
    p.add_argument("-R", "--rcmd", default="ssh", metavar="ssh|rsh|exec|TEMPLATE",
                   help="how receivers are started: ssh (default), rsh, exec (this machine; "
                   "each receiver listens on its host's address) or a template with {host} "
                   "and {cmd}")  # fmt: skip
    p.add_argument(
        "--ssh-args",
        default="",
        metavar="ARGS",
        help="extra ssh client arguments, e.g. '-F ssh_config'",
    )
    p.add_argument(
        "--remote-python",
        metavar="CMD",
        help="python on the nodes (default python3; this python with -R exec)",
    )
    topo = p.add_mutually_exclusive_group()
    topo.add_argument(
        "--chains",
        type=int,
        default=1,
        metavar="K",
        help="K chains of balanced length from the root (default 1)",
    )
    topo.add_argument("--topology", metavar="FILE",
                      help="one chain per line: [LABEL:] NODESET [via=TEMPLATE] (a switch, "
                      "a rack, a NIC rail)")  # fmt: skip
    p.add_argument(
        "--resolve", metavar="HOSTSFILE", help="hosts(5) file mapping node names to data addresses"
    )
    p.add_argument("--fanout", type=int, default=8, metavar="K",
                   help="receivers are started through a K-ary launch tree, as beo run "
                   "does (O(log N) ssh hops; default 8)")  # fmt: skip
    p.add_argument("--listen", metavar="ADDR",
                   help="address the receivers call back to (default: this machine's "
                   "address on the route to the first node; 127.0.0.1 with -R exec)")  # fmt: skip
    p.add_argument(
        "--bind-each",
        action="store_true",
        help="each receiver listens on its node's own address only (default with -R exec; "
        "for templates that run receivers on this machine)",
    )
    p.add_argument(
        "--port", type=int, metavar="P", help="nettee ports P and P+1 (default: random free pair)"
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="directory SOURCE: leave out files matching PATTERN (tar --exclude)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument(
        "--nodes-progress",
        action="store_true",
        help="live progress of every node, not just the root",
    )
    p.add_argument(
        "--retry",
        action="count",
        default=0,
        help="re-send to the failed nodes after the run (repeat for more rounds)",
    )
    p.add_argument(
        "--no-heal",
        dest="heal",
        action="store_false",
        help="do not ask nettee to heal the chain around a dead node",
    )
    p.add_argument(
        "--no-fsync",
        dest="fsync",
        action="store_false",
        help="do not fsync DEST before a node reports (dolly's -n)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="every receiver must answer within S seconds (default 10)",
    )
    p.add_argument(
        "--finish-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="after the stream, wait at most S s for each node's fsync (default 120)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError as exc:
        print(f"beo cast: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _hosts(args: argparse.Namespace, dolly_hosts: list[str] | None) -> list[str]:
    from beokit.hostlist import expand, read_hostfile

    patterns: list[str] = []
    if args.hostfile:
        patterns += read_hostfile(args.hostfile)
    if args.nodeset:
        patterns.append(args.nodeset)
    hosts: list[str] = list(dolly_hosts or [])
    for pat in patterns:
        hosts += [h for h in expand(pat) if h not in hosts]
    if not hosts:
        raise UsageError("no nodes: give NODESET, --hostfile or -f DOLLYCONF")
    return hosts


def _source_kind(source: str) -> str:
    if source == "-":
        return "stdin"
    try:
        st = os.stat(source)
    except OSError as exc:
        raise UsageError(f"cannot read SOURCE {source!r}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
        kind = "file"
    else:
        raise UsageError(f"bad SOURCE {source!r}: not a file, device or directory")
    if not os.access(source, os.R_OK | (os.X_OK if kind == "dir" else 0)):
        raise UsageError(f"cannot read SOURCE {source!r}: permission denied")
    return kind


def build_job(args: argparse.Namespace) -> Any:
    """Check every argument and build the driver's Job (UsageError on bad input)."""
    from beokit.cast import driver, plan
    from beokit.hostlist import expand
    from beokit.launch.backends import make_backend

    dolly = None
    if args.dolly:
        try:
            with open(args.dolly) as fh:
                dolly = plan.parse_dollytab(fh.read())
        except OSError as exc:
            raise UsageError(f"cannot read dolly config {args.dolly!r}: {exc.strerror}") from None
        if args.source and not args.nodeset:  # `beo cast -f conf NODESET`
            args.nodeset, args.source = args.source, None
        args.source = args.source or dolly.infile
        args.dest = args.dest or plan.dolly_dest(dolly)
        if args.chains == 1 and dolly.fanout > 1:
            args.chains = dolly.fanout
    if not args.source:
        raise UsageError("no SOURCE: beo cast SOURCE NODESET --to DEST")
    if args.dest is None:
        raise UsageError("no destination: give --to DEST")
    hosts = _hosts(args, dolly.hosts if dolly else None)
    kind = _source_kind(args.source)
    if kind == "stdin" and args.retry:
        raise UsageError("--retry cannot re-send stdin: give a file SOURCE")
    if args.exclude and kind != "dir":
        raise UsageError(f"--exclude {args.exclude[0]!r}: only for a directory SOURCE")
    plan.dest_kind(args.dest, kind)
    if args.connect_timeout <= 0 or args.finish_timeout <= 0:
        raise UsageError("timeouts must be positive")
    if args.fanout < 1:
        raise UsageError(f"bad --fanout {args.fanout}: must be >= 1")
    if args.listen:
        import ipaddress

        try:
            ipaddress.ip_address(args.listen)
        except ValueError:
            raise UsageError(f"bad --listen {args.listen!r}: not an IP address") from None
    if args.port is not None and not 1 <= args.port <= 65534:
        raise UsageError(f"bad --port {args.port}: 1-65534 (P and P+1 are used)")
    if args.topology:
        try:
            with open(args.topology) as fh:
                chains = plan.parse_topology(fh.read(), hosts, expand)
        except OSError as exc:
            raise UsageError(f"cannot read topology {args.topology!r}: {exc.strerror}") from None
    else:
        chains = plan.plan_chains(hosts, args.chains)
    resolve: dict[str, str] = {}
    if args.resolve:
        try:
            with open(args.resolve) as fh:
                resolve = plan.parse_hosts_file(fh.read())
        except OSError as exc:
            raise UsageError(f"cannot read --resolve {args.resolve!r}: {exc.strerror}") from None
    try:
        backend = make_backend(args.rcmd, ssh_args=shlex.split(args.ssh_args),
                               connect_timeout=args.connect_timeout,
                               python=args.remote_python)  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return driver.Job(
        source=args.source, source_kind=kind, hosts=hosts, chains=chains, dest=args.dest,
        backend=backend, remote_python=args.remote_python or driver.remote_python_default(backend),
        port=args.port, heal=args.heal, fsync=args.fsync, excludes=list(args.exclude),
        progress_nodes=args.nodes_progress, connect_timeout=args.connect_timeout,
        finish_timeout=args.finish_timeout, resolve=resolve, fanout=args.fanout,
        listen=args.listen or "",
        bind_local=backend.kind == "exec" or args.bind_each, as_root=os.geteuid() == 0,
    )  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    from beokit.cast import display, driver, plan
    from beokit.hostlist import fold

    job = build_job(args)
    live = display.LiveProgress(driver.source_size(job), job.hosts, job.progress_nodes,
                                enabled=sys.stderr.isatty() and not args.json)  # fmt: skip
    t0 = time.monotonic()
    outcomes = []
    try:
        out = driver.run_once(job, job.hosts, job.chains, on_progress=live.update,
                              on_stage=live.stage)  # fmt: skip
        outcomes.append(out)
        rows = out.rows
        for attempt in range(2, args.retry + 2):
            again = plan.retry_hosts(rows)
            if not again:
                break
            live.stage(f"retry {attempt - 1}: {fold(again)}")
            print(f"beo cast: retrying {fold(again)} ({len(again)} node(s))", file=sys.stderr)
            chains = plan.replan(job.chains, set(again))
            more = driver.run_once(job, again, chains, attempt=attempt, on_progress=live.update,
                                   on_stage=live.stage)  # fmt: skip
            outcomes.append(more)
            rows = plan.merge(rows, more.rows)
    except KeyboardInterrupt:
        live.stop()
        print("beo cast: interrupted", file=sys.stderr)
        return 130
    finally:
        live.stop()
    elapsed = time.monotonic() - t0
    first = outcomes[0]
    status = plan.exit_status(rows)
    nfail = sum(not r.ok for r in rows)
    if args.json:
        display.print_json({
            "source": job.source, "dest": job.dest, "bytes": first.bytes,
            "seconds": round(first.seconds, 3),
                "stream_seconds": round(first.stream_seconds, 3), "elapsed": round(elapsed, 3),
            "launch_seconds": round(first.launch_seconds, 3),
            "launch": {"fanout": job.fanout, "depth": first.launch_depth,
                       "refused": first.refused},
            "digest": first.digest,
            "digest_algorithm": first.algo or "nettee -digest", "nettee_flags": first.flags,
            "chains": [{"label": c.label, "hosts": c.hosts} for c in job.chains],
            "attempts": len(outcomes), "failed": nfail, "error": first.error,
            "nodes": [r.to_dict() for r in rows]}, sys.stdout)  # fmt: skip
    else:
        secs = first.stream_seconds or first.seconds
        rate = first.bytes / secs / 1e6 if secs else 0.0
        title = (
            f"beo cast {job.source} -> {job.dest}: {first.bytes:,} bytes to "
            f"{len(job.hosts)} node(s), stream {secs:.2f} s ({rate:.1f} MB/s)"
        )
        display.print_table(rows, title, sys.stdout)
    for out in outcomes:
        if out.error:
            print(f"beo cast: {out.error}", file=sys.stderr)
    for r in rows:
        if not r.ok:
            print(f"beo cast: {r.host}: {r.status} ({r.detail})", file=sys.stderr)
    if not args.json:
        print(f"beo cast: {len(rows)} node(s), {len(rows) - nfail} ok, {nfail} failed; "
              f"launch {first.launch_seconds:.2f} s, stream {first.seconds:.2f} s, "
              f"total {elapsed:.2f} s", file=sys.stderr)  # fmt: skip
    return status if status == 0 else EXIT_FAILURE
