"""``beo exec``: run every line that arrives through a ``-stm`` chain as a command.

The "poor man's parallel command executor" of the nettee announcement
(``pdist_shell``/``execinput``): each node runs a nettee receiver in ``-stm``
mode and executes each received line with ``/bin/sh -c`` (``$BEO_EXEC_NODE`` holds the
node's name or address), so one line typed
at the root runs on every node of the chain nearly at once.

Because this runs whatever enters the chain, it refuses to start unless the
chain is authenticated (``NETTEE_SECRET`` or ``--secret-file``), or the
user says ``--insecure-run-anything``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from beokit.errors import EXIT_USAGE
from beokit.nettee.localchain import nettee_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "exec",
        help="join a -stm nettee chain and run each received line as a command",
        description="Run a nettee receiver in -stm mode and execute each line it receives with "
        "/bin/sh -c (output goes to stderr or --output). Start one on every node, then type "
        "commands into `nettee -root -next NODE -stm EOS`; the line EOS ends the session. "
        "Refuses to run without the chain's shared secret (NETTEE_SECRET or --secret-file).",
    )
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on (default all)")
    p.add_argument("--port", default="9997", help="nettee port (default 9997)")
    p.add_argument("--next", dest="next_", metavar="HOSTLISTS", help="nettee -next: the children")
    p.add_argument("--eos", default="EOS", help="the end-of-stream line (default EOS)")
    p.add_argument("--name", help="node name in messages")
    p.add_argument("-t", "--timeout", help="give up if no parent connects in this many seconds")
    p.add_argument("--connf", help="nettee -connf WAIT for failover lists")
    p.add_argument("--secret-file", help="file holding the chain's shared secret")
    p.add_argument("--output", help="append the commands' output here (default: stderr)")
    p.add_argument("--timing", help="append 'arrival_ns<TAB>line' for every line (benchmarks)")
    p.add_argument("--dry-run", action="store_true", help="record lines, do not run them")
    p.add_argument("--insecure-run-anything", action="store_true",
                   help="run commands from an UNAUTHENTICATED chain: anyone who can reach this "
                        "port can then run commands as this user")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    has_secret = bool(os.environ.get("NETTEE_SECRET")) or args.secret_file is not None
    if not has_secret and not args.insecure_run_anything:
        print("beo exec: refusing to run commands from an unauthenticated chain: set "
              "NETTEE_SECRET or --secret-file on every node (or --insecure-run-anything)",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    if not has_secret:
        print("beo exec: WARNING: --insecure-run-anything: any host that reaches "
              f"{args.bind}:{args.port} can run commands here as uid {os.getuid()}",
              file=sys.stderr)  # fmt: skip
    cmd = nettee_command() + ["-bind", args.bind, "-port", str(args.port), "-stm", args.eos,
                              "-out", "-"]  # fmt: skip
    for opt, value in (("-next", args.next_), ("-name", args.name), ("-t", args.timeout),
                       ("-connf", args.connf), ("-secret_file", args.secret_file)):  # fmt: skip
        if value is not None:
            cmd += [opt, str(value)]
    out = open(args.output, "ab") if args.output else None
    timing = open(args.timing, "a") if args.timing else None
    node = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    env = dict(os.environ, BEO_EXEC_NODE=args.name or args.bind)
    env.pop("NETTEE_SECRET", None)  # the commands do not need the chain's secret
    assert node.stdout is not None
    failed = total = 0
    for raw in node.stdout:
        arrival = time.time_ns()
        line = raw.rstrip(b"\r\n").decode(errors="replace")
        if timing is not None:
            timing.write(f"{arrival}\t{line}\n")
            timing.flush()
        if not line.strip() or args.dry_run:
            continue
        total += 1
        # one after another, as a shell runs its input (end a line with & to background it)
        done = subprocess.run(["/bin/sh", "-c", line], stdin=subprocess.DEVNULL, env=env,
                              stdout=out or sys.stderr, stderr=out or sys.stderr)  # fmt: skip
        failed += done.returncode != 0
    status = node.wait()
    print(f"beo exec: {total} command(s) run, {failed} failed", file=sys.stderr)
    for f in (out, timing):
        if f is not None:
            f.close()
    return status or (1 if failed else 0)
