"""``beo run``: start a command on many nodes through a launch tree."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from beokit import cliargs, net, proc
from beokit.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    check_bindable,
    check_host_count,
    ip_address,
    read_text,
    seconds,
)
from beokit.launch import plan
from beokit.launch.agent import FORKED_AGENT, Agent
from beokit.launch.backends import Backend, make_backend
from beokit.launch.leaf import EXIT_GRACE

DEFAULT_FANOUT = {"tree": 3, "flat": 32, "sequential": 1, "ring": 1}
HOSTFILE_NOTE = "say --hostfile FILE (clush and pdsh take -f for the fanout)"
AUTO_WINDOW = 32  # --auto's flat window (pdsh's: 64 ssh handshakes at once on 2 busy
                 # cores here took up to 10 s each, past --connect-timeout)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="run a command on many nodes through a launch tree (scaleboot), gather output",
        description="Start COMMAND on every node of NODESET in O(log N) rsh/ssh hops: the "
        "root launches k agents, each connects back, receives its share of the hosts and "
        "launches its own k, and so on. Exit codes and output come back to the root. "
        "With a `--` on the line, options go anywhere before it, every other word before "
        "it is a NODESET (several are joined, and joined to --hostfile's), and everything "
        "after it is COMMAND; without one, NODESET is the first word after the options and "
        "COMMAND the rest.",
        epilog="examples:  beo run --fanout 4 node[001-128] -- uname -r\n"
        "           beo run -R exec n[1-147] -b --launch-delay 0.1 -- echo hi\n"
        "           beo run --hostfile hosts.txt n200 -- uptime",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-k", "--fanout", type=int, metavar="K",  # beo cast's -k/--fanout too
                   help="children per node (tree, default 3) or launch window (flat, "
                   "default 32)")  # fmt: skip
    p.add_argument("-R", "--rcmd", default="ssh", metavar="ssh|rsh|exec|netns|TEMPLATE",
                   help="remote command: ssh (default), rsh, exec (local, for tests), netns "
                   "(every host a network namespace here, e.g. a beo vcluster: "
                   "netns:bk-{host}) or a template such as 'ssh -p 2222 {host} {cmd}'")  # fmt: skip
    p.add_argument("--launch-delay", type=seconds("delay", zero_ok=True, hi=3600), default=0.0,
                   metavar="S", help="sleep S seconds per launch (stands for an rsh/ssh "
                   "handshake; at most 3600)")  # fmt: skip
    mode = p.add_mutually_exclusive_group()
    for name, text in (("auto", "flat when the hosts fit in one window of 32 launches or a flat "
                                "launch is faster than the tree's depth, else tree (default "
                                "without -k)"),
                       ("tree", "launch tree: every node keeps K launches in flight until its "
                                "share is done; a late child's share is taken back (default "
                                "with -k)"),
                       ("flat", "all from the root, K launches at a time (like pdsh)"),
                       ("sequential", "all from the root, one after the other (lamboot)"),
                       ("ring", "a chain: each node launches the next")):  # fmt: skip
        mode.add_argument(f"--{name}", dest="mode", action="store_const", const=name, help=text)
    p.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    p.add_argument("-b", "--gather", action="store_true",
                   help="gather identical outputs under the node set that printed them")
    p.add_argument("--timeout", type=seconds("timeout", zero_ok=True), default=0.0, metavar="S",
                   help="kill the command on a node after S seconds (default: no limit)")
    p.add_argument("--connect-timeout", type=seconds("timeout"), default=10.0, metavar="S",
                   help="a launched node must connect back within S seconds (default 10)")
    p.add_argument("-f", "--hostfile", metavar="FILE", action=cliargs.DeprecatedAlias,
                   deprecated={"-f": HOSTFILE_NOTE},
                   help="hosts, one a line (or NodeSets); joined to any NODESET given before "
                   "`--` (-f FILE is deprecated: clush and pdsh take -f for the fanout)")  # fmt: skip
    p.add_argument("--ssh-args", default="", metavar="ARGS",
                   help="extra ssh client arguments, e.g. '-F ssh_config -p 2222'")
    p.add_argument("--ssh-persist", type=seconds("persist", zero_ok=True, hi=86400),
                   default=0.0, metavar="S",
                   help="-R ssh: keep each host's ssh connection open S seconds after its "
                   "last session (OpenSSH ControlMaster, socket in ~/.ssh): a later run to "
                   "the same hosts skips the key exchange and login. Default 0: off")  # fmt: skip
    p.add_argument("--remote-python", metavar="CMD",
                   help="python on the nodes (default python3). With -R exec, agents are "
                   "forked from a preloaded fork server unless CMD is given")  # fmt: skip
    p.add_argument("--listen", metavar="ADDR", type=ip_address("address"),
                   help="address the root listens on for its children (default "
                   "127.0.0.1 for exec, else all)")  # fmt: skip
    p.add_argument("--barrier", action="store_true",
                   help="start the command on every node at once, when all nodes are up "
                   "(released by the root through the tree)")
    p.add_argument("--input", metavar="FILE",
                   help="give every command FILE's bytes on its stdin ('-': this stdin; at "
                   f"most {plan.MAX_INPUT >> 10} KiB, read once). They travel inside the "
                   "ssh/rsh channels of the tree, never on a command line: fit for a "
                   "secret. Default: commands read /dev/null")  # fmt: skip
    p.add_argument("--leaf-agents", action="store_true",
                   help="start an agent on leaf hosts too (default: a host that launches "
                   "nobody runs the command directly through the backend, like pdsh)")
    p.add_argument("--dry-run", action="store_true",
                   help="launch nothing: print the plan (the root's groups, agents, leaves, "
                   "launch steps) and the time the simulator predicts for it "
                   "(beokit.sim, docs/scale.md)")  # fmt: skip
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="NODESET -- COMMAND")
    p.set_defaults(mode=None)
    return cliargs.options_before_dashes(p, keep_dashes=True)


def _hosts_and_command(args: argparse.Namespace) -> tuple[list[str], str]:
    from beokit.hostlist import expand, read_hostfile

    rest = list(args.rest)
    patterns: list[str] = []
    if "--" in rest:  # NODESET... -- COMMAND (options before -- were parsed as options)
        cut = rest.index("--")
        patterns += rest[:cut]
        rest = rest[cut + 1 :]
    else:  # NODESET COMMAND... (or, with --hostfile, COMMAND...)
        if rest and not args.hostfile:
            patterns.append(rest.pop(0))
        if rest and rest[0].startswith("-"):
            raise UsageError(f"bad command {rest[0]!r}: it looks like an option; options go "
                             "before `--`: beo run NODESET [OPTIONS] -- COMMAND")  # fmt: skip
    # a host file from the site defaults is the hosts when the line names none; one
    # given on the line is joined to the NODESETs (as clush's --hostfile and -w)
    if args.hostfile and (cliargs.given(args, "hostfile") or not patterns):
        read_text(args.hostfile, "host file")  # one clear line if it is not text
        patterns = read_hostfile(args.hostfile) + patterns
    if not patterns:
        raise UsageError("no hosts: give a NODESET or --hostfile FILE")
    if not rest:
        raise UsageError("no command: beo run NODESET -- COMMAND")
    hosts: list[str] = []
    seen = set(hosts)
    for pat in patterns:
        for h in expand(pat):
            if h not in seen:
                seen.add(h)
                hosts.append(h)
    check_host_count(hosts)
    command = rest[0] if len(rest) == 1 else shlex.join(rest)
    return hosts, command


class Collector:
    """The root's end of the tree: results, progress counts, live display."""

    def __init__(self, hosts: list[str], live: bool) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.tally = plan.Tally(len(hosts))
        self.on_all_up: Any = None  # --barrier: called once when every host is up
        self.progress = None
        self.task = None
        if live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total}"),
                                     TimeElapsedColumn(),
                                     console=Console(stderr=True), transient=True)  # fmt: skip
            self.task = self.progress.add_task("starting", total=len(hosts))
            self.progress.start()

    def __call__(self, msg: dict[str, Any]) -> None:
        self.tally.apply(msg)
        if self.on_all_up is not None:
            c = self.tally.counts()
            if c["running"] + c["done"] + c["failed"] >= c["total"]:
                # every host is up (or failed): release the barrier, off the relay thread
                threading.Thread(target=self.on_all_up, daemon=True).start()
                self.on_all_up = None
        if msg["t"] == "res":
            self.results[msg["h"]] = msg
        if self.progress is not None and self.task is not None:
            c = self.tally.counts()
            self.progress.update(self.task, completed=self.tally.finished,
                                 description=f"launched {c['launched']} running {c['running']} "
                                 f"done {c['done']} failed {c['failed']}")  # fmt: skip

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def read_input(path: str) -> bytes:
    """--input: the bytes every command gets on stdin; UsageError if unreadable/too big."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(plan.MAX_INPUT + 1)
        else:
            with open(path, "rb") as fh:
                data = fh.read(plan.MAX_INPUT + 1)
    except OSError as exc:
        raise UsageError(f"cannot read --input {path}: {exc.strerror}") from None
    if len(data) > plan.MAX_INPUT:
        raise UsageError(f"--input {path} is larger than {plan.MAX_INPUT >> 10} KiB")
    return data


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError as exc:
        print(f"beo run: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _auto(n: int, backend: Backend, fanout: int | None) -> tuple[str, int]:
    """--auto: flat or tree from N and what a launch costs: -R exec and netns, --launch-delay
    and an agent forked here; otherwise an ssh session and a python starting, as
    measured on the test box (beokit.sim.machine)."""
    from beokit.sim.machine import BOX_PARAMS

    if backend.local:
        launch, agent = backend.delay + BOX_PARAMS["spawn_cpu"], BOX_PARAMS["agent_cpu"]
    else:
        launch, agent = backend.delay + BOX_PARAMS["ssh_session"], BOX_PARAMS["python_start"]
    return plan.choose_mode(n, launch, agent, fanout or AUTO_WINDOW, DEFAULT_FANOUT["tree"])


def backend_of(args: argparse.Namespace) -> Backend:
    """The backend of ``-R`` and its options; UsageError if they are bad."""
    try:
        ssh_args = shlex.split(args.ssh_args)
    except ValueError as exc:
        raise UsageError(f"bad --ssh-args {args.ssh_args!r}: {exc}") from None
    try:
        return make_backend(args.rcmd, ssh_args=ssh_args, delay=args.launch_delay,
                            connect_timeout=args.connect_timeout,
                            python=args.remote_python, persist=args.ssh_persist)  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def addresses_of(args: argparse.Namespace, backend: Backend, hosts: list[str],
               agents: bool) -> tuple[str, str]:  # fmt: skip
    """(where the root listens for its children, the address it tells them).

    With ssh the agents take ours from ``SSH_CONNECTION`` (``@ssh``).  With a
    template (``ip netns exec``, ``docker exec``, a site's own wrapper) nothing
    tells them: the root's host name may mean nothing on the nodes, so they are
    told this machine's address on the route to the first host that has an
    address here; if none has, say so now (``--listen`` fixes it).
    """
    if args.listen:
        check_bindable("--listen", args.listen)
    listen = args.listen or ("127.0.0.1" if backend.kind == "exec" else "0.0.0.0")
    if listen not in ("0.0.0.0", "::"):
        return listen, listen
    if backend.kind == "ssh":
        return listen, "@ssh"  # the agent takes our address from SSH_CONNECTION
    if backend.kind == "exec" or not agents:  # this machine; or nobody calls back
        return listen, "127.0.0.1"
    addr, tried = net.reachable_address(hosts, backend.hostname)
    if addr is None:
        raise UsageError(f"cannot tell the hosts where to call back: no address here for "
                         f"{plan.fold(tried)} (DNS, /etc/hosts); give --listen ADDR (this "
                         "machine's address on the hosts' network)")  # fmt: skip
    return listen, addr


@contextlib.contextmanager
def fork_server(cfg: dict[str, Any], wanted: bool, netns: bool = False) -> Iterator[None]:
    """-R exec, -R netns: agents forked from a preloaded server (``cfg["forkserver"]``)."""
    if not wanted:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="beo-run-") as tmp:
        cfg["forkserver"] = os.path.join(tmp, "forks")
        server = proc.start_fork_server(cfg["forkserver"], "beokit.launch.agent:main",
                                        plan.MAX_HEADER, name=FORKED_AGENT,
                                        # netns: what enters a namespace (ctypes)
                                        preload=("beokit.linux",) if netns else ())  # fmt: skip
        try:
            yield
        finally:
            server.kill()
            server.wait()


def _run(args: argparse.Namespace) -> int:
    hosts, command = _hosts_and_command(args)
    if args.fanout is not None and args.fanout < 1:
        raise UsageError(f"bad fanout {args.fanout}: must be >= 1")
    backend = backend_of(args)
    cliargs.say_deprecated(args, "beo run")
    if args.mode is None:
        args.mode = "tree" if args.fanout is not None else "auto"
    if args.mode == "auto":
        args.mode, k = _auto(len(hosts), backend, args.fanout)
    else:
        k = args.fanout if args.fanout is not None else DEFAULT_FANOUT[args.mode]
    the_plan = plan.root_plan(args.mode, hosts, k, busy=True)
    if args.dry_run:
        print(dry_run(args.mode, hosts, k, the_plan, backend))
        return EXIT_OK
    agents = args.leaf_agents or any(len(g) > 1 for g in the_plan.groups)
    listen, advertise = addresses_of(args, backend, hosts, agents)
    payload = read_input(args.input) if args.input else None
    cfg = {"command": command, "fanout": the_plan.child_fanout, "timeout": args.timeout,
           "connect_timeout": args.connect_timeout, "backend": backend.spec(),
           # agents listen on their own host: loopback here (exec), else every
           # address of the family their parent link uses (never the root's --listen)
           "agent_bind": "127.0.0.1" if backend.kind == "exec" else "",
           "leaf_agents": args.leaf_agents, "barrier": args.barrier,
           "steal": args.mode == "tree"}  # fmt: skip
    try:
        with fork_server(cfg, backend.local and not args.remote_python,
                             backend.kind == "netns"):
            collector = Collector(hosts, live=sys.stderr.isatty() and not args.json)
            agent = Agent(None, the_plan.groups, the_plan.window, cfg, collector, listen,
                          advertise, payload, the_plan.steps)  # fmt: skip
            if args.barrier:
                collector.on_all_up = agent.release
            start = time.monotonic()
            stopped = _run_tree(agent, collector)
            elapsed = time.monotonic() - start
    except OSError as exc:  # the fork server did not start
        print(f"beo run: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return _report(args, hosts, k, dict(collector.results), elapsed, stopped)


EXEC_MODEL_MAX = 3000  # -R exec: hosts the shared-core model predicts within seconds


def dry_run(mode: str, hosts: list[str], k: int, the_plan: plan.LaunchPlan,
            backend: Backend) -> str:  # fmt: skip
    """``--dry-run``: the plan in a few lines and the simulator's predicted time
    (:func:`beokit.sim.predict.predict_run`): -R exec hosts share this machine's
    cores and each launch costs --launch-delay; ssh, rsh or a template: a
    cluster, each launch an ssh session as measured (docs/scale.md)."""
    from beokit.sim.predict import predict_run

    n = len(hosts)
    steps = plan.depth(mode, n, k, busy=True)
    lines = [f"beo run --dry-run: {cliargs.plural(n, 'host')}, {mode}, k={k}, "
             f"{cliargs.plural(steps, 'launch step')}, -R {backend.kind}"]  # fmt: skip
    if mode == "tree":
        agents = plan.busy_agents(hosts, k)
        sizes = ", ".join(str(len(g)) for g in the_plan.groups)
        lines.append(f"  root launches {cliargs.plural(len(the_plan.groups), 'group')}, {k} at a "
                     f"time, of {sizes} host{'' if sizes == '1' else 's'} (head + its share); {cliargs.plural(agents, 'agent')}, "
                     f"{cliargs.plural(n - agents, 'leaf', 'leaves')} (no agent)")  # fmt: skip
    else:
        lines.append(f"  root launches every host itself, {the_plan.window} at a time")
    if mode == "ring":
        lines.append("  predicted: no model of the ring (one launch after another: "
                     f"{cliargs.plural(n, 'launch step')})")  # fmt: skip
        return "\n".join(lines)
    if backend.local and n > EXEC_MODEL_MAX:
        lines.append(f"  predicted: not here: {n} processes sharing this machine's cores take "
                     f"the model ~N^2 time (up to {EXEC_MODEL_MAX} hosts; docs/scale.md)")  # fmt: skip
        return "\n".join(lines)
    if backend.local:  # exec, netns: every host's processes share this machine's cores
        pred = predict_run(n, k, backend.delay, mode=mode, steal=True,
                           shared_cores=float(os.cpu_count() or 1))  # fmt: skip
    else:
        pred = predict_run(n, k, None, mode=mode, steal=True)
    lines.append(f"  predicted: {pred.explain()}")
    return "\n".join(lines)


STOP_WAIT = EXIT_GRACE + 2.0  # after SIGINT/SIGTERM, the tree's commands are killed within this


def _run_tree(agent: Agent, collector: Collector) -> proc.Interrupted | None:
    """Run the tree to its end; or, on SIGINT or SIGTERM, stop it: every command
    is killed, every agent ends (bounded by STOP_WAIT).  The Interrupted, if one
    came, with ``outcome`` the hosts whose result had arrived by then."""
    worker = threading.Thread(target=agent.run, daemon=True)
    stopped = None
    with proc.SignalGuard():
        try:
            worker.start()
            while worker.is_alive():
                worker.join(0.2)
        except proc.Interrupted as exc:  # once: a second signal is ignored while we stop
            stopped = exc
            stopped.outcome = set(collector.results)
            collector.stop()
            agent.close()
            worker.join(STOP_WAIT)
    collector.stop()
    return stopped


def _report(args: argparse.Namespace, hosts: list[str], k: int, results: dict[str, Any],
            elapsed: float, stopped: proc.Interrupted | None) -> int:  # fmt: skip
    """Outputs, failures and the summary (or the JSON document); the exit status."""
    unfinished = []
    if stopped is not None:
        unfinished = [h for h in hosts if h not in stopped.outcome]
        for h in unfinished:
            results[h] = plan.result(h, None, error=f"not finished: beo run was stopped by "
                                                    f"{stopped.name}")  # fmt: skip
    for h in hosts:  # nothing is lost silently
        results.setdefault(h, plan.result(h, None, error="no result"))
    nfail = sum(plan.failed(r) for r in results.values())
    mode, steps = args.mode, plan.depth(args.mode, len(hosts), k, busy=True)
    if args.json:
        doc = {"mode": mode, "fanout": k, "hosts": len(hosts), "elapsed": round(elapsed, 4),
               "depth": steps, "failed": nfail,
               "interrupted": stopped.name if stopped is not None else "",
               "results": {h: {"rc": r["rc"], "stdout": r["out"], "stderr": r["err"],
                               "error": r["error"]} for h, r in results.items()},
               "gathered": [{"nodes": ns, "count": n, "stdout": text}
                            for ns, n, text in plan.gather({h: r["out"] for h, r in results.items()})]}  # fmt: skip
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _print_outputs(hosts, results, args.gather)
        for nodes, reason in plan.gather_codes(results):
            print(f"beo run: {nodes}: {reason}", file=sys.stderr)
        print(f"beo run: {cliargs.plural(len(hosts), 'host')}, {len(hosts) - nfail} ok, {nfail} "
              f"failed in {elapsed:.2f} s ({mode}, k={k}, {cliargs.plural(steps, 'launch step')})",
              file=sys.stderr)  # fmt: skip
    if stopped is not None:
        left = f"{plan.fold(unfinished)} had not finished (commands killed)" if unfinished \
            else "every host had finished"
        print(f"beo run: interrupted by {stopped.name}: {left}", file=sys.stderr)
        return stopped.exit_status
    return EXIT_FAILURE if nfail else EXIT_OK


def _print_outputs(hosts: list[str], results: dict[str, dict[str, Any]], gathered: bool) -> None:
    if gathered:
        for nodes, n, text in plan.gather({h: r["out"] for h, r in results.items()}):
            sys.stdout.write(f"{'-' * 15}\n{nodes} ({n})\n{'-' * 15}\n{text}")
            if not text.endswith("\n"):
                sys.stdout.write("\n")
    else:
        for h in hosts:
            for line in results[h]["out"].splitlines():
                sys.stdout.write(f"{h}: {line}\n")
    sys.stdout.flush()
    for h in hosts:
        for line in results[h]["err"].splitlines():
            sys.stderr.write(f"{h}: {line}\n")
