"""``beo cast``: put a file, a directory or a disk image on every node, verified."""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
import time
from typing import Any

from beokit import cliargs
from beokit.errors import (
    EXIT_FAILURE,
    EXIT_USAGE,
    UsageError,
    check_bindable,
    check_host_count,
    ip_address,
    read_text,
    seconds,
)

EPILOG = """\
examples:
  beo cast image.raw node[001-128] --to /dev/sda3            # ssh, one chain, verified
  beo cast -R exec image.bin '127.0.0.[2-9]' --to '/tmp/x/{host}'   # one machine
  beo cast --exclude '*.o' /opt/app node[1-64] --to /opt/app  # a tree, as a tar stream
  tar -C /srv -c . | beo cast - node[1-8] --to '|tar -C /srv -x'
  beo cast --chains 4 image.raw node[1-64] --to /scratch/image.raw
  beo cast --dolly dolly.conf                                  # dolly's config file
exit status: 0 every node verified, 1 a node failed (named in the table), 2 bad input,
130/143 stopped by SIGINT/SIGTERM (every node named with what its DEST holds)"""


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
    p.add_argument("-f", "--dolly", metavar="FILE", action=cliargs.DeprecatedAlias,
                   deprecated={"-f": "say --dolly FILE (-f is a host file in beo run, the "
                               "fanout in clush and pdsh)"},
                   help="read SOURCE, DEST and the nodes from a dolly configuration file (-f "
                   "FILE still works, deprecated: -f means other things elsewhere)")  # fmt: skip
    p.add_argument("--hostfile", metavar="FILE",
                   help="nodes, one a line (or NodeSets), joined to NODESET's")
    p.add_argument("-R", "--rcmd", default="ssh", metavar="ssh|rsh|exec|netns|TEMPLATE",
                   help="how receivers are started: ssh (default), rsh, exec (this machine; "
                   "each receiver listens on its host's address), netns (every host a network "
                   "namespace here, e.g. a beo vcluster: netns:bk-{host}; receivers forked "
                   "into them) or a template with {host} and {cmd}")  # fmt: skip
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
    p.add_argument("-k", "--fanout", type=int, default=8, metavar="K",
                   help="receivers are started through a K-ary launch tree, as beo run "
                   "does (O(log N) ssh hops; default 8)")  # fmt: skip
    p.add_argument("--listen", metavar="ADDR", type=ip_address("address"),
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
        "--in-place",
        action="store_true",
        help="write a file DEST where it is (default: under a temporary name beside it, "
        "renamed over DEST once verified). Needs no room for a second copy, but a failed "
        "or interrupted cast leaves DEST partly written",
    )
    p.add_argument(
        "--no-fsync",
        dest="fsync",
        action="store_false",
        help="do not fsync DEST before a node reports (dolly's -n)",
    )
    p.add_argument(
        "--connect-timeout",
        type=seconds("timeout"),
        default=10.0,
        metavar="S",
        help="every receiver must answer within S seconds (default 10)",
    )
    p.add_argument(
        "--finish-timeout",
        type=seconds("timeout"),
        default=120.0,
        metavar="S",
        help="after the stream, wait at most S s for each node's fsync (default 120)",
    )
    p.add_argument("--dry-run", action="store_true",
                   help="start nothing: print the plan (chains, launch tree, nettee flags) and "
                   "the time the simulator predicts for it (docs/scale.md)")  # fmt: skip
    p.add_argument("--rate", default="1gbit", metavar="RATE",
                   help="--dry-run: the line rate of every node's port (100mbit, 1gbit, 10g; "
                   "default 1gbit)")  # fmt: skip
    return p


def _rate(text: str) -> int:
    """--rate in bits/s (UsageError naming the value)."""
    from beokit.vcluster.plan import PlanError, parse_rate

    try:
        return parse_rate(text)
    except PlanError as exc:
        raise UsageError(f"--rate: {exc}") from None


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
        read_text(args.hostfile, "host file")  # one clear line if it is not text
        patterns += read_hostfile(args.hostfile)
    if args.nodeset:
        patterns.append(args.nodeset)
    hosts: list[str] = list(dolly_hosts or [])
    seen = set(hosts)
    for pat in patterns:
        for h in expand(pat):
            if h not in seen:
                seen.add(h)
                hosts.append(h)
    if not hosts:
        raise UsageError("no nodes: give NODESET, --hostfile FILE or --dolly FILE")
    check_host_count(hosts)
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
    from beokit.cast import dollytab, launcher, plan
    from beokit.cast.job import Job
    from beokit.hostlist import expand
    from beokit.launch.backends import make_backend

    dolly = None
    if args.dolly:
        dolly = dollytab.parse_dollytab(read_text(args.dolly, "dolly config"))
        if args.source and not args.nodeset:  # `beo cast -f conf NODESET`
            args.nodeset, args.source = args.source, None
        args.source = args.source or dolly.infile
        args.dest = args.dest or dollytab.dolly_dest(dolly)
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
    if args.fanout < 1:
        raise UsageError(f"bad --fanout {args.fanout}: must be >= 1")
    if args.listen:
        check_bindable("--listen", args.listen)
    if args.port is not None and not 1 <= args.port <= 65534:
        raise UsageError(f"bad --port {args.port}: 1-65534 (P and P+1 are used)")
    if args.topology:
        chains = plan.parse_topology(read_text(args.topology, "topology"), hosts, expand)
    else:
        chains = plan.plan_chains(hosts, args.chains)
    resolve: dict[str, str] = {}
    if args.resolve:
        resolve = plan.parse_hosts_file(read_text(args.resolve, "--resolve"))
    try:
        ssh_args = shlex.split(args.ssh_args)
    except ValueError as exc:
        raise UsageError(f"bad --ssh-args {args.ssh_args!r}: {exc}") from None
    try:
        backend = make_backend(args.rcmd, ssh_args=ssh_args,
                               connect_timeout=args.connect_timeout,
                               python=args.remote_python)  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    job = Job(
        source=args.source, source_kind=kind, hosts=hosts, chains=chains, dest=args.dest,
        backend=backend, fork_server=backend.local and not args.remote_python,
        port=args.port, heal=args.heal, fsync=args.fsync, excludes=list(args.exclude),
        progress_nodes=args.nodes_progress, connect_timeout=args.connect_timeout,
        finish_timeout=args.finish_timeout, resolve=resolve, fanout=args.fanout,
        listen=args.listen or "",
        bind_local=backend.kind == "exec" or args.bind_each, as_root=os.geteuid() == 0,
        in_place=args.in_place,
    )  # fmt: skip
    if not args.dry_run:
        job.callback = launcher.callback_address(job, hosts)  # before anything starts
    cliargs.say_deprecated(args, "beo cast")
    return job


def dry_run(job: Any, rate: int) -> str:
    """``--dry-run``: the plan in a few lines and the time the simulator predicts for
    it (:func:`beokit.sim.predict.predict_cast`: a switched cluster whose ports run at
    ``rate`` bits/s, the launch an ssh session a step as measured, docs/scale.md)."""
    from beokit.cast import plan
    from beokit.cast.feed import source_size
    from beokit.cast.root import nettee_flags
    from beokit.launch import plan as launch_plan
    from beokit.sim.predict import predict_cast
    from beokit.vcluster.plan import format_rate

    n, size = len(job.hosts), source_size(job)
    what = f"{size:,} bytes" if size is not None else "size unknown"
    lines = [f"beo cast --dry-run: {job.source} ({job.source_kind}, {what}) -> {job.dest} "
             f"on {n} node(s), -R {job.backend.kind}"]  # fmt: skip
    for c in job.chains[:8]:
        shown = c.hosts if len(c.hosts) <= 4 else [*c.hosts[:2], "...", c.hosts[-1]]
        lines.append(f"  {c.label}: {len(c.hosts)} node(s): root -> {' -> '.join(shown)}")
    if len(job.chains) > 8:
        lines.append(f"  ... and {len(job.chains) - 8} more chains")
    depth = launch_plan.depth("tree", n, job.fanout)
    lines.append(f"  launch: a tree of fanout {job.fanout}, {depth} step(s) deep; every "
                 "receiver forked from its node's agent")  # fmt: skip
    flags = plan.resilience_args(job.heal, nettee_flags())
    kind = plan.dest_kind(job.dest, job.source_kind)
    writes = {"dir": "DEST extracted by tar", "cmd": "DEST is a command fed the stream"}.get(
        kind, "DEST written in place" if job.in_place else
        "a file DEST renamed into place once verified (a device: written in place)")  # fmt: skip
    lines.append(f"  nettee: {' '.join(flags) or 'no resilience flags'}; {writes}"
                 f"{'; fsync before each node reports' if job.fsync else ''}")  # fmt: skip
    if size is None:
        lines.append("  predicted: not known (SOURCE is stdin: its size is not known)")
        return "\n".join(lines)
    sizes = {len(c.hosts) for c in job.chains}
    pred = predict_cast(n, size, float(rate), chains=len(job.chains), launch_k=job.fanout,
                        heal=job.heal)  # fmt: skip
    lines.append(f"  predicted: {pred.explain()}")
    if max(sizes) - min(sizes) > 1:
        lines.append("  (the model takes the chains as balanced: the longest one here has "
                     f"{max(sizes)} nodes)")  # fmt: skip
    if job.backend.local:
        lines.append(f"  (-R {job.backend.kind}: every node on this machine; the model is of a cluster "
                     f"with {format_rate(rate)} ports)")  # fmt: skip
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from beokit.cast import display
    from beokit.cast.feed import source_size
    from beokit.proc import Interrupted, SignalGuard

    with SignalGuard():
        outcomes: list[Any] = []
        rows: list[Any] = []
        stopped: Interrupted | None = None
        live = None
        try:
            job = build_job(args)
            if args.dry_run:
                print(dry_run(job, _rate(args.rate)))
                return 0
            if not args.json:
                display.preload_table()
            live = display.LiveProgress(source_size(job), job.hosts,
                                        job.progress_nodes,
                                        enabled=sys.stderr.isatty() and not args.json)  # fmt: skip
            t0 = time.monotonic()
            rows = _rounds(args, job, live, outcomes)
        except Interrupted as exc:
            stopped = exc
            if exc.outcome is not None:  # its rows include the rounds before it
                outcomes.append(exc.outcome)
                rows = exc.outcome.rows
            elif outcomes:  # between two rounds
                rows = _merged(outcomes)
        finally:
            if live is not None:
                live.stop()
        if stopped is not None and not outcomes:
            print(f"beo cast: interrupted by {stopped.name} before any receiver was started",
                  file=sys.stderr)  # fmt: skip
            return 128 + stopped.signum
        return _report(args, job, outcomes, rows, time.monotonic() - t0, stopped)


def _rounds(args: argparse.Namespace, job: Any, live: Any, outcomes: list[Any]) -> list[Any]:
    """The first run and every --retry round; the merged rows."""
    from beokit.cast import driver, plan, verdict
    from beokit.hostlist import fold
    from beokit.proc import Interrupted

    out = driver.run_once(job, job.hosts, job.chains, on_progress=live.update,
                          on_stage=live.stage)  # fmt: skip
    outcomes.append(out)
    rows = out.rows
    for attempt in range(2, args.retry + 2):
        again = verdict.retry_hosts(rows)
        if not again:
            break
        live.stage(f"retry {attempt - 1}: {fold(again)}")
        print(f"beo cast: retrying {fold(again)} ({len(again)} node(s))", file=sys.stderr)
        chains = plan.replan(job.chains, set(again))
        try:
            more = driver.run_once(job, again, chains, attempt=attempt, on_progress=live.update,
                                   on_stage=live.stage)  # fmt: skip
        except Interrupted as exc:
            if exc.outcome is not None:  # the rounds before keep their rows
                exc.outcome.rows = verdict.merge(rows, exc.outcome.rows)
            raise
        outcomes.append(more)
        rows = verdict.merge(rows, more.rows)
    return rows


def _merged(outcomes: list[Any]) -> list[Any]:
    from beokit.cast import verdict

    rows = outcomes[0].rows
    for out in outcomes[1:]:
        rows = verdict.merge(rows, out.rows)
    return rows


def _dest_summary(rows: list[Any]) -> str:
    """What DEST holds, node set by node set: 'new on a[1-3]; partial on a4'."""
    from beokit.hostlist import fold

    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r.dest or "unknown", []).append(r.host)
    words = {"new": "verified copy in place", "unchanged": "DEST unchanged",
             "partial": "DEST holds a partial copy", "unknown": "DEST not known (no answer)"}
    return "; ".join(f"{words.get(k, k)} on {fold(v)}" for k, v in groups.items())


def _title(job: Any, first: Any, stopped: Any) -> str:
    """The table's title: what was sent, to how many nodes, how fast; or why nothing was."""
    head = f"beo cast {job.source} -> {job.dest}"
    n = len(job.hosts)
    if stopped is not None:
        return f"{head}: stopped by {stopped.name}"
    if first.bytes == 0 and (first.error or first.changed):
        return f"{head}: nothing sent to {n} node(s): {first.error or first.changed}"
    if first.bytes == 0 and not first.stream_seconds and not first.seconds:
        return f"{head}: nothing sent to {n} node(s)"
    secs = first.stream_seconds or first.seconds
    if first.bytes == 0 and first.collapsed:
        return f"{head}: nothing sent to {n} node(s): {first.collapsed}"
    if first.bytes == 0:
        return f"{head}: SOURCE is empty: 0 bytes to {n} node(s), stream {secs:.2f} s"
    rate = first.bytes / secs / 1e6 if secs else 0.0
    return f"{head}: {first.bytes:,} bytes to {n} node(s), stream {secs:.2f} s ({rate:.1f} MB/s)"


def _report(args: argparse.Namespace, job: Any, outcomes: list[Any], rows: list[Any],
            elapsed: float, stopped: Any) -> int:  # fmt: skip
    """The table (or JSON) and the stderr lines; the exit status."""
    from beokit.cast import display, verdict

    first = outcomes[0]
    status = verdict.exit_status(rows)
    nfail = sum(not r.ok for r in rows)
    changed = next((o.changed for o in outcomes if o.changed), "")
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
            "source_changed": changed, "interrupted": stopped.name if stopped else "",
            "nodes": [r.to_dict() for r in rows]}, sys.stdout)  # fmt: skip
    else:
        display.print_table(rows, _title(job, first, stopped), sys.stdout)
    for note in dict.fromkeys(n for out in outcomes for n in out.notes):
        print(f"beo cast: {note}", file=sys.stderr)
    for out in outcomes:
        if out.error and not out.interrupted:
            print(f"beo cast: {out.error}", file=sys.stderr)
    if changed:
        print(f"beo cast: {changed}", file=sys.stderr)
    for r in rows:
        if not r.ok:
            print(f"beo cast: {r.host}: {r.status} ({r.detail})", file=sys.stderr)
    if stopped is not None:
        print(f"beo cast: interrupted by {stopped.name}: {_dest_summary(rows)}",
              file=sys.stderr)  # fmt: skip
        return 128 + stopped.signum
    if not args.json:
        print(f"beo cast: {len(rows)} node(s), {len(rows) - nfail} ok, {nfail} failed; "
              f"launch {first.launch_seconds:.2f} s, stream {first.seconds:.2f} s, "
              f"total {elapsed:.2f} s", file=sys.stderr)  # fmt: skip
    return status if status == 0 else EXIT_FAILURE
