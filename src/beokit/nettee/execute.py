"""``beo exec``: run every line that arrives through a ``-stm`` chain as a command.

The "poor man's parallel command executor" of the nettee announcement
(``pdist_shell``/``execinput``): each node runs a nettee receiver in ``-stm``
mode and executes each received line with ``/bin/sh -c`` (``$BEO_EXEC_NODE`` holds the
node's name or address), so one line typed
at the root runs on every node of the chain nearly at once.

Each command's result goes back up the chain: the executor tells its nettee
(``-stm_results FD``, one JSON object a line, see
:class:`beokit.nettee.report.CommandLog`) which line it read, and how each
command ended (with ``--report-output``, the tail of its output too); nettee
puts that in the node's report, so the root names every failed command by
node, number and exit status (``CMDF``), and with ``-stm_wait`` every node
reports only once its commands have ended.

``beo exec --nodes NODESET -- COMMAND`` starts the whole chain: a ``beo exec``
on every node through the launch tree of ``beo run`` (:mod:`beokit.launch`),
the shared secret and the chain's layout on each one's stdin inside the
launch channels (never on a command line), then the root nettee with
``-stm_wait``, and reports.

Because this runs whatever enters the chain, it refuses to start unless the
chain is authenticated (``NETTEE_SECRET`` or ``--secret-file``), or the
user says ``--insecure-run-anything``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from beokit import cliargs, proc
from beokit.errors import EXIT_FAILURE, EXIT_USAGE, UsageError, seconds
from beokit.nettee.localchain import nettee_command
from beokit.nettee.protocol import OUTPUT_MAX

SPEC_MAX = 1 << 20  # --launched: the spec read from stdin
LAUNCH_WAIT = 10.0  # after the root nettee ended: the nodes' beo exec end within this


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "exec",
        help="run commands on every node of a -stm nettee chain; the root learns each result",
        description="On a node: run a nettee receiver in -stm mode and execute each line it "
        "receives with /bin/sh -c (output goes to stderr or --output); each command's exit "
        "status goes back up the chain, so the root nettee names the failed commands by "
        "node (CMDF). Start one on every node, then type commands into `nettee -root -next "
        "NODE -stm EOS [-stm_wait 0]`; the line EOS ends the session. Refuses to run "
        "without the chain's shared secret (NETTEE_SECRET or --secret-file).\n\n"
        "With --nodes NODESET: start that chain on every node through the launch tree "
        "(as beo run does; the secret rides inside the launch channels, a fresh one if "
        "none is given), run COMMAND (after --; else each line of stdin) on every node, "
        "wait until every node's commands have ended (--wait S: at most S seconds) and "
        "report; exit 1 if a command failed or did not end.",
        epilog="examples:  beo exec --nodes 'node[01-64]' -- uname -r\n"
        "           beo exec --nodes '127.0.0.[2-4]' -R exec --port 7300 --report-output 200 "
        "-- hostname\n"
        "           node2$ NETTEE_SECRET=... beo exec --name node2 --next node3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    p.add_argument("--report-output", type=int, default=0, metavar="BYTES",
                   help=f"send the last BYTES (at most {OUTPUT_MAX}) of each command's output "
                   "up the chain with its exit status (default 0: none)")  # fmt: skip
    p.add_argument("--timing", help="append 'arrival_ns<TAB>line' for every line (benchmarks)")
    p.add_argument("--dry-run", action="store_true", help="record lines, do not run them")
    p.add_argument("--insecure-run-anything", action="store_true",
                   help="run commands from an UNAUTHENTICATED chain: anyone who can reach this "
                        "port can then run commands as this user")  # fmt: skip
    g = p.add_argument_group("starting the chain on a node set (the root)")
    g.add_argument("--nodes", metavar="NODESET",
                   help="start beo exec on every node of NODESET (a chain in NodeSet order) "
                   "through the launch tree, run COMMAND on each and report")  # fmt: skip
    g.add_argument("-R", "--rcmd", default="ssh", metavar="ssh|rsh|exec|netns|TEMPLATE",
                   help="remote command of the launch tree, as beo run's (default ssh; exec: "
                   "local, each node binds its name, e.g. 127.0.0.[2-4])")  # fmt: skip
    g.add_argument("-k", "--fanout", type=int, default=3, metavar="K",
                   help="launch tree: children per node (default 3)")
    g.add_argument("--wait", type=seconds("wait", zero_ok=True), default=0.0, metavar="S",
                   help="wait at most S seconds after the end of the stream for every node's "
                   "commands; those still running are then reported and stopped with the "
                   "launch tree (default 0: until they end)")  # fmt: skip
    g.add_argument("--connect-timeout", type=seconds("timeout"), default=10.0, metavar="S",
                   help="a launched node must connect back within S seconds (default 10)")
    g.add_argument("--ssh-args", default="", metavar="ARGS",
                   help="extra ssh client arguments, e.g. '-F ssh_config -p 2222'")
    g.add_argument("--remote-python", metavar="CMD",
                   help="python on the nodes, which must import beokit (default python3; "
                   "-R exec: this one)")  # fmt: skip
    g.add_argument("--listen", metavar="ADDR",
                   help="address the launch tree's root listens on (default 127.0.0.1 for "
                   "exec, else all)")  # fmt: skip
    g.add_argument("--report", metavar="FILE",
                   help="write every node's result (commands included) as JSON")
    p.add_argument("--launched", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("cmd_words", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="with --nodes: the command to run on every node (default: each "
                   "line of stdin)")  # fmt: skip
    cliargs.options_before_dashes(p)


def run(args: argparse.Namespace) -> int:
    try:
        if not 0 <= args.report_output <= OUTPUT_MAX:
            raise UsageError(f"bad --report-output {args.report_output}: must be 0 to "
                             f"{OUTPUT_MAX}")  # fmt: skip
        if args.nodes is not None:
            return run_nodes(args)
        if args.cmd_words:
            raise UsageError(f"bad command {shlex.join(args.cmd_words)!r}: a command is given "
                             "with --nodes NODESET (a node runs what its chain sends)")  # fmt: skip
        if args.launched:
            return run_launched(args)
    except UsageError as exc:
        print(f"beo exec: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
    return execute(args, dict(os.environ))


# ---------------------------------------------------------------- a node


class Results:
    """The executor's side of ``-stm_results``: JSON lines to its nettee, from two
    threads; once nettee is gone (it reported without waiting), nothing more."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.open = True

    def send(self, **obj: Any) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        with self.lock:
            if not self.open:
                return
            try:
                os.write(self.fd, data)
            except OSError:  # EPIPE: nettee has reported and ended
                self.open = False

    def close(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            self.open = False


def execute(args: argparse.Namespace, nettee_env: dict[str, str]) -> int:
    """Run the node's nettee receiver and every command it receives; its status."""
    results_r, results_w = os.pipe()
    cmd = nettee_command() + ["-bind", args.bind, "-port", str(args.port), "-stm", args.eos,
                              "-out", "-", "-stm_results", str(results_r)]  # fmt: skip
    for opt, value in (("-next", args.next_), ("-name", args.name), ("-t", args.timeout),
                       ("-connf", args.connf), ("-secret_file", args.secret_file)):  # fmt: skip
        if value is not None:
            cmd += [opt, str(value)]
    out = open(args.output, "ab") if args.output else None
    timing = open(args.timing, "a") if args.timing else None
    try:
        node = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                pass_fds=(results_r,), env=nettee_env)  # fmt: skip
    finally:
        os.close(results_r)
    results = Results(results_w)
    env = dict(os.environ, BEO_EXEC_NODE=args.name or args.bind)
    env.pop("NETTEE_SECRET", None)  # the commands do not need the chain's secret
    lines: queue.Queue[tuple[int, str] | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(node, lines, results, timing, args.dry_run),
                              daemon=True)  # fmt: skip
    reader.start()
    failed = total = 0
    dest = out or sys.stderr.buffer
    # one after another, as a shell runs its input (end a line with & to background it)
    while (item := lines.get()) is not None:
        seq, line = item
        total += 1
        sys.stderr.flush()
        status, tail = _run_one(line, env, dest, args.report_output)
        failed += status != 0
        extra = {"out": tail} if args.report_output else {}
        results.send(seq=seq, status=status, **extra)
    results.close()  # every command has ended: nettee may report
    status = node.wait()
    reader.join(5.0)
    if status == 0 or total:  # else nettee said why it did not start
        print(f"beo exec: {total} command(s) run, {failed} failed", file=sys.stderr)
    for f in (out, timing):
        if f is not None:
            f.close()
    return status or (1 if failed else 0)


def _read_lines(node: subprocess.Popen, lines: queue.Queue, results: Results,
                timing: IO[str] | None, dry_run: bool) -> None:  # fmt: skip
    """Read what the chain delivers as it comes, say so at once (the node's report
    counts what was received even while a command runs), queue the commands."""
    assert node.stdout is not None
    at = seq = 0
    try:
        for raw in node.stdout:
            arrival = time.time_ns()
            at += len(raw)
            line = raw.rstrip(b"\r\n").decode(errors="replace")
            if timing is not None:
                timing.write(f"{arrival}\t{line}\n")
                timing.flush()
            if not line.strip() or dry_run:
                results.send(at=at)
                continue
            seq += 1
            results.send(at=at, seq=seq, cmd=line)
            lines.put((seq, line))
    finally:
        lines.put(None)


def _run_one(line: str, env: dict[str, str], dest: IO[bytes], keep: int) -> tuple[int, str]:
    """Run one command line; (its status, minus a signal; the last ``keep`` bytes of
    its output when asked).  The output goes to ``dest`` (after it ends, with ``keep``)."""
    if keep <= 0:
        dest.flush()
        done = subprocess.run(["/bin/sh", "-c", line], stdin=subprocess.DEVNULL, env=env,
                              stdout=dest, stderr=dest)  # fmt: skip
        return done.returncode, ""
    with tempfile.TemporaryFile() as tmp:
        done = subprocess.run(["/bin/sh", "-c", line], stdin=subprocess.DEVNULL, env=env,
                              stdout=tmp, stderr=tmp)  # fmt: skip
        size = tmp.seek(0, os.SEEK_END)
        tmp.seek(max(0, size - keep))
        tail = tmp.read().decode(errors="replace")
        tmp.seek(0)
        shutil.copyfileobj(tmp, dest)
        dest.flush()
    return done.returncode, tail


def run_launched(args: argparse.Namespace) -> int:
    """A node of ``beo exec --nodes``: the spec on stdin (the chain's node set, port,
    secret), this node's place in it from $BEO_HOST; then run as a node does."""
    from beokit.hostlist import expand

    raw = sys.stdin.buffer.read(SPEC_MAX + 1)
    try:
        spec = json.loads(raw)
        hosts = expand(spec["nodes"])
        me = os.environ["BEO_HOST"]
        i = hosts.index(me)
        secret = str(spec["secret"])
        if not secret:
            raise ValueError("no secret")
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--launched: bad spec on stdin or no BEO_HOST in it: {exc}") from None
    args.name = me
    args.port = str(spec["port"])
    args.eos = str(spec.get("eos", "EOS"))
    args.report_output = int(spec.get("output", 0))
    if spec.get("bind"):
        args.bind = me
    args.next_ = hosts[i + 1] if i + 1 < len(hosts) else None
    return execute(args, dict(os.environ, NETTEE_SECRET=secret))


# ---------------------------------------------------------------- the root of --nodes


def _secret(args: argparse.Namespace) -> tuple[str, str]:
    """(the chain's secret, where it came from): NETTEE_SECRET, --secret-file, or a
    fresh one for this run (it travels to the nodes inside the launch channels)."""
    if args.secret_file is not None:
        try:
            with open(args.secret_file, "rb") as fh:
                value = fh.read().strip().decode()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --secret-file {args.secret_file}: {exc}") from None
        if not value:
            raise UsageError(f"--secret-file {args.secret_file} is empty")
        return value, "--secret-file"
    if os.environ.get("NETTEE_SECRET"):
        return os.environ["NETTEE_SECRET"], "NETTEE_SECRET"
    return secrets.token_hex(32), "a fresh secret"


def _commands(args: argparse.Namespace) -> list[str] | None:
    """COMMAND (one line), or None: each line of stdin."""
    if not args.cmd_words:
        return None
    command = args.cmd_words[0] if len(args.cmd_words) == 1 else shlex.join(args.cmd_words)
    if "\n" in command or command.strip() in ("", args.eos):
        raise UsageError(f"bad command {command!r}: one line, not empty, not the EOS line")
    return [command]


@dataclass
class _Launch:
    """What ``beo exec --nodes`` starts: the hosts, the launch tree and what rides in it."""

    hosts: list[str]
    commands: list[str] | None
    secret: str
    port: int
    the_plan: Any
    cfg: dict[str, Any]
    listen: str
    advertise: str
    payload: bytes
    fork: bool  # -R exec: the agents forked from one preloaded process, as beo run does


def _launch_plan(args: argparse.Namespace) -> _Launch:
    """Check ``--nodes``' arguments and plan its launch tree; UsageError on bad input."""
    from beokit.errors import check_host_count
    from beokit.hostlist import expand, fold
    from beokit.launch import cli as launch_cli
    from beokit.launch import plan as launch_plan

    # the chain in NodeSet's order, which every node finds again from the folded set
    # (groups such as @all are expanded here, where their configuration is)
    nodes = fold(list(dict.fromkeys(expand(args.nodes))))
    hosts = expand(nodes)
    check_host_count(hosts)
    if args.fanout < 1:
        raise UsageError(f"bad --fanout {args.fanout}: must be >= 1")
    commands = _commands(args)
    secret, _origin = _secret(args)
    port = int(args.port) if str(args.port).isdigit() else -1
    if not 1 <= port <= 65534:
        raise UsageError(f"bad --port {args.port}: must be 1 to 65534 (PORT+1 is used too)")
    launch_args = argparse.Namespace(rcmd=args.rcmd, ssh_args=args.ssh_args, launch_delay=0.0,
                                     connect_timeout=args.connect_timeout,
                                     remote_python=args.remote_python, ssh_persist=0.0,
                                     listen=args.listen)  # fmt: skip
    backend = launch_cli.backend_of(launch_args)
    the_plan = launch_plan.root_plan("tree", hosts, args.fanout, busy=True)
    agents = any(len(g) > 1 for g in the_plan.groups)
    listen, advertise = launch_cli.addresses_of(launch_args, backend, hosts, agents)
    python = args.remote_python or (shlex.quote(sys.executable) if backend.local
                                     else "python3")  # fmt: skip
    cfg = {"command": f"{python} -m beokit.cli exec --launched", "fanout": the_plan.child_fanout,
           "timeout": 0, "connect_timeout": args.connect_timeout, "backend": backend.spec(),
           "agent_bind": "127.0.0.1" if backend.kind == "exec" else "",
           "leaf_agents": False, "barrier": False, "steal": True}  # fmt: skip
    spec = {"nodes": nodes, "port": port, "eos": args.eos, "secret": secret,
            "bind": backend.kind == "exec", "output": args.report_output}  # fmt: skip
    payload = json.dumps(spec).encode() + b"\n"
    if len(payload) > launch_plan.MAX_INPUT:
        raise UsageError(f"--nodes {args.nodes!r}: the node set folds to more than the launch "
                         f"channel's {launch_plan.MAX_INPUT >> 10} KiB")  # fmt: skip
    return _Launch(hosts, commands, secret, port, the_plan, cfg, listen, advertise, payload,
                   backend.local and not args.remote_python)


def run_nodes(args: argparse.Namespace) -> int:
    """``beo exec --nodes NODESET``: the chain started through the launch tree, the
    root nettee with -stm_wait fed COMMAND (or stdin), then the report."""
    from beokit.launch import cli as launch_cli
    from beokit.launch.agent import Agent

    lp = _launch_plan(args)
    hosts, secret, port, commands, cfg = lp.hosts, lp.secret, lp.port, lp.commands, lp.cfg
    started: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def collect(msg: dict[str, Any]) -> None:
        if msg.get("t") == "res":
            with lock:
                started[str(msg.get("h"))] = msg

    with launch_cli.fork_server(cfg, lp.fork):
        t0 = time.monotonic()
        agent = Agent(None, lp.the_plan.groups, lp.the_plan.window, cfg, collect, lp.listen,
                      lp.advertise, lp.payload, lp.the_plan.steps)  # fmt: skip
        tree = threading.Thread(target=agent.run, daemon=True)
        tree.start()
        with tempfile.TemporaryDirectory(prefix="beo-exec-") as tmp:
            report = args.report or os.path.join(tmp, "report.json")
            status, early = 1, {"(all)": "beo exec was interrupted"}
            doc: dict[str, Any] = {}
            stop: proc.Interrupted | None = None
            try:
                with proc.SignalGuard():
                    try:
                        status, early = _root(args, hosts[0], port, secret, commands, report,
                                              started, lock)  # fmt: skip
                        doc = _read_report(report)
                    except proc.Interrupted as exc:  # the root nettee was stopped: so is the tree
                        stop = exc
            finally:
                # the nodes end once their commands have; a chain that never formed, or
                # commands still running when --wait ran out: stopped with the tree now
                done = bool((doc.get("commands") or {}).get("complete"))
                tree.join(LAUNCH_WAIT if done and not early else 0)
                stopped = tree.is_alive()
                agent.close()
                tree.join(LAUNCH_WAIT)
            if stop is not None:
                print(f"beo exec: interrupted by {stop.name}: the chain and its commands were "
                      "stopped", file=sys.stderr)  # fmt: skip
                return stop.exit_status
            return _summary(hosts, doc, status, early, started, stopped, time.monotonic() - t0)


def _read_report(path: str) -> dict[str, Any]:
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _root(args: argparse.Namespace, first: str, port: int, secret: str,
          commands: list[str] | None, report: str, started: dict[str, dict[str, Any]],
          lock: threading.Lock) -> tuple[int, dict[str, str]]:  # fmt: skip
    """Run the root nettee until it ends; (its status, the nodes that ended before
    the chain formed, with why)."""
    events_r, events_w = os.pipe()
    cmd = nettee_command() + ["-root", "-port", str(port), "-next", first, "-stm", args.eos,
                              "-stm_wait", f"{args.wait:g}", "-report", report,
                              "-name", "root", "-t", f"{args.connect_timeout + 20:g}"]  # fmt: skip
    env = dict(os.environ, NETTEE_SECRET=secret, NETTEE_EVENT_FD=str(events_w))
    try:
        root = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env, pass_fds=(events_w,))
    finally:
        os.close(events_w)
    formed = threading.Event()

    def events() -> None:
        with open(events_r, "rb") as fh:
            for line in fh:
                if b'"formed"' in line:
                    formed.set()

    threading.Thread(target=events, daemon=True).start()
    threading.Thread(target=_feed, args=(root, commands, args.eos), daemon=True).start()
    early: dict[str, str] = {}
    try:
        while root.poll() is None:
            time.sleep(0.05)
            if formed.is_set() or early:
                continue
            with lock:  # a node that ended before the chain formed: it will never join
                for host, res in started.items():
                    early[host] = _why(res)
            if early:
                root.terminate()
    finally:
        if root.poll() is None:  # interrupted: the root collapses the chain (SIG)
            root.terminate()
            root.wait(LAUNCH_WAIT)
    return root.wait(), early


def _feed(root: subprocess.Popen, commands: list[str] | None, eos: str) -> None:
    assert root.stdin is not None
    try:
        if commands is not None:
            root.stdin.write("".join(c + "\n" for c in commands).encode())
        else:
            for line in sys.stdin.buffer:
                if line.rstrip(b"\r\n") == eos.encode():
                    break
                root.stdin.write(line)
                root.stdin.flush()
        root.stdin.write(f"{eos}\n".encode())
        root.stdin.close()
    except (OSError, ValueError):
        pass  # the root ended (a node did not start): its status says why


def _why(res: dict[str, Any]) -> str:
    if res.get("error"):
        return str(res["error"])
    err = [ln.strip() for ln in str(res.get("err") or "").splitlines() if ln.strip()]
    # nettee's first reason, not the lines of its collapse that follow it
    reasons = [ln for ln in err if not ln.startswith(("nettee: Failures detected",
                                                      "nettee: collapsing"))]  # fmt: skip
    rc = res.get("rc")
    return reasons[0] if reasons else proc.describe_exit(rc if isinstance(rc, int) else None, "beo exec")


def _summary(hosts: list[str], doc: dict[str, Any], status: int, early: dict[str, str],
             started: dict[str, dict[str, Any]], stopped: bool, elapsed: float) -> int:  # fmt: skip
    """Outputs that came up (stdout, 'node: line'), nodes that did not start, one line."""
    for n in doc.get("nodes", [])[1:]:
        for c in (n.get("cmds") or {}).get("listed", []):
            for line in str(c.get("out", "")).splitlines():
                sys.stdout.write(f"{n['name']}: {line}\n")
    sys.stdout.flush()
    for host, why in early.items():
        print(f"beo exec: {host}: did not start: {why}", file=sys.stderr)
    reported = {str(n.get("name")) for n in doc.get("nodes", [])}
    for host in hosts if not early else []:  # a node the chain has no word of
        res = started.get(host)
        if host not in reported and res is not None and (res.get("error") or res.get("rc")):
            print(f"beo exec: {host}: {_why(res)}", file=sys.stderr)
    cmds = doc.get("commands") or {}
    if early or not cmds:
        what = "the chain did not start" if early else "no result from the chain"
        print(f"beo exec: {len(hosts)} node(s): {what} ({elapsed:.2f} s)", file=sys.stderr)
        return EXIT_FAILURE
    state = ("every command ended" if cmds.get("complete") else
             "NOT every command ended" + (": those still running were stopped with the "
                                          "launch tree" if stopped else ""))  # fmt: skip
    failed = (f"{cmds['failed']} failed on {cmds.get('failed_nodes', 0)} node(s)"
              if cmds.get("failed") else "none failed")  # fmt: skip
    print(f"beo exec: {cmds.get('nodes', 0)} of {len(hosts)} node(s) reported, {state}, "
          f"{failed} ({elapsed:.2f} s)", file=sys.stderr)  # fmt: skip
    bad = status != 0 or not cmds.get("complete") or cmds.get("nodes", 0) < len(hosts)
    return EXIT_FAILURE if bad else 0
