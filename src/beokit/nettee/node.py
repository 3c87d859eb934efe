"""A nettee node: joins the tree, relays the stream, verifies, reports.

Life of a node (push flow), one :class:`~beokit.nettee.policy.Phase` at a time::

    FORMING    non-root: listen on PORT (data) and PORT+1 (control), accept one
               parent (formation.ParentGate); all: join each child hostlist
               (formation.Joiner), wait until every branch is formed ("ready"),
               tell the parent.
    STREAMING  relay input -> children + local output (stream.py, relay.py).
    ENDED      non-root: the parent's "end" (its byte count) arrived.
               all: end each child's stream, wait for each child's report,
               compare counts (BBC), send the merged report up (report.py).
    REPORTED   the report went up; the root printed the man page's lines.

and, when something fails (policy.py decides what, this module carries it out):

    COLLAPSED  an unhandled failure: "fail" up, "abort" down, exit 1 at once.
    CUT_OFF    the parent is gone and that was handled (-conrf, or after the
               end): the node finishes alone and prints its own summary.
    ORPHANED   -heal: the parent died mid-stream; waiting for an ancestor to
               adopt this node (heal.py), then STREAMING again.

Every wait is bounded: heartbeats every 0.5 s on each control connection,
and a peer silent for ``-stall`` seconds is dead (links.py).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable

from beokit.nettee import protocol
from beokit.nettee.command import SocketCommand
from beokit.nettee.events import Events
from beokit.nettee.formation import Joiner, ParentGate
from beokit.nettee.gate import LOG_LINES
from beokit.nettee.heal import Healer
from beokit.nettee.links import BranchLoss, ChildLink, Fatal, Heartbeat, Peer
from beokit.nettee.log import NetteeLog
from beokit.nettee.messages import Abort, Await, End, Fail, SubtreeReport
from beokit.nettee.options import MAX_NAME, NetteeConfig, Role, bind_address
from beokit.nettee.policy import Action, Decision, Failure, Options, Phase, Who, decide
from beokit.nettee.process import Feeder, start_process
from beokit.nettee.relay import Relay
from beokit.nettee.report import CommandLog, OwnResult, Reporter, all_codes, command_detail
from beokit.nettee.sinks import Sink
from beokit.nettee.stream import Streamer
from beokit.proc import describe_exit, signal_name

REASON_WAIT = 1.0  # a child that closed its data socket: how long its own reason may take
ACK_WAIT = 2.0  # -stm_results without -stm_wait: how long the executor may take to read the end


def node_name(cfg: NetteeConfig) -> str:
    """-name, else the -bind address (several nodes on one machine are told apart),
    else $MYHOSTNAME, $HOSTNAME, gethostname(); made printable."""
    name = cfg.name or bind_address(cfg) or os.environ.get("MYHOSTNAME") or (
        os.environ.get("HOSTNAME") or socket.gethostname())  # fmt: skip
    return protocol.printable(name, MAX_NAME)


class Node:
    def __init__(self, cfg: NetteeConfig, log: NetteeLog, secret: bytes | None, *,
                 in_fd: int | None, out_fd: int | None, out_is_file: bool,
                 local_fds: list[int] | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.log = log
        self.secret = secret
        self.options = Options.of(cfg)
        self.name = node_name(cfg)
        self.node_id = uuid.uuid4().hex
        self.session = uuid.uuid4().hex if cfg.role is Role.ROOT else ""
        self.path: list[str] = []
        self.pull = cfg.flow == "pull"
        self.in_fd = in_fd
        self.local_fds = local_fds or []  # every -in source, for -process
        self.out_fd = out_fd
        self.out_is_file = out_is_file
        # the state: one phase, changed under the lock; waiters use `changed`
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.phase = Phase.FORMING
        self.end: End | None = None  # the parent's end of stream, once it came
        self.own = OwnResult()
        self.links: list[ChildLink] = []
        self.parent: Peer | None = None
        self.parent_name = ""
        self.parent_bound = False  # the parent keeps an in-memory replay window
        self.data_in: socket.socket | None = None
        self.relay: Relay | None = None
        self.bytes_received: int | None = None  # set when the stream is not the relay's input
        self.proc: subprocess.Popen | None = None  # -process CMD
        self.in_cmd: SocketCommand | None = None
        self.out_cmd: SocketCommand | None = None
        # -stm with an executor (beo exec): its results, and the root's -stm_wait
        self.commands: CommandLog | None = None
        self.awaited: Await | None = None
        self.cmds: protocol.Commands | None = None
        # the parts, each along one seam
        self.parents = ParentGate(self)
        self.joiner = Joiner(self)
        self.healer = Healer(self)
        self.streamer = Streamer(self)
        self.reporter = Reporter(self)
        self.heartbeat = Heartbeat(self)
        self.events = Events()

    # ------------------------------------------------------------ state

    def move(self, to: Phase, allowed: set[Phase]) -> bool:
        """Go to phase ``to`` if the node is in one of ``allowed``."""
        with self.lock:
            if self.phase not in allowed:
                return False
            self.phase = to
            self.changed.notify_all()
        return True

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, until ``predicate()`` holds."""
        with self.lock:
            return self.changed.wait_for(predicate, timeout)

    def end_arrived(self, end: End) -> None:
        with self.lock:
            self.end = end
            if self.phase is Phase.STREAMING:
                self.phase = Phase.ENDED
            self.changed.notify_all()

    def await_arrived(self, msg: Await) -> None:
        """-stm_wait from the root: remember it, pass it down (the tree has formed)."""
        with self.lock:
            self.awaited = msg
            self.changed.notify_all()
        for link in self.links:
            if link.peer is not None and not link.dead:
                link.peer.send(msg)

    def adopted(self) -> None:
        """-heal: a new parent took over; its own end will come."""
        with self.lock:
            self.phase = Phase.STREAMING
            self.end = None
            self.changed.notify_all()

    # ------------------------------------------------------------ entry

    def run(self) -> int:
        """Run the node's role; the one way out (but a collapse, which exits at once)."""
        self._signals()
        if self.cfg.stm_results is not None:
            try:
                os.fstat(self.cfg.stm_results)
            except OSError as exc:
                self.log.error(f"bad -stm_results {self.cfg.stm_results}: {exc.strerror}")
                return 2
            self.commands = CommandLog(self, self.cfg.stm_results)
            self.commands.start()
        try:
            if self.cfg.process is not None:
                status = self._run_process()
            elif self.cfg.role is Role.ROOT:
                status = self._run_root()
            else:
                status = self._run_child()
        except Fatal as f:
            self.collapse(f.code, f.node, f.why)
            raise AssertionError("collapse returned") from None  # it exits the process
        return status

    def _signals(self) -> None:
        def ignored(signum: int, _frame: object) -> None:
            if not self.cfg.quiet:
                self.log.message(f"ignored signal {signal_name(signum)}")

        def stop(signum: int, _frame: object) -> None:
            d = decide(Failure(Who.SIGNAL, self.phase), self.options)
            if d.action is Action.COLLAPSE:
                self.collapse(d.code, self.name, f"stopped by {signal_name(signum)}")

        signal.signal(signal.SIGHUP, ignored)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

    def _form(self) -> None:
        """Join the children; once every branch is formed, say so (log and event)."""
        self.heartbeat.start()
        self.joiner.form_children()
        joined = [lk for lk in self.links if lk.peer is not None and not lk.dead]
        names = self.reporter.subtree_names()
        self.log.message(f"tree formed below {self.name}: {len(names) - 1} node(s) in "
                         f"{len(joined)} branch(es)")  # fmt: skip
        self.events.emit("formed", children=len(joined), nodes=len(names))
        if self.parent is not None:
            self.parent.send(self.reporter.ready())

    def _finish(self, nodes: list[protocol.NodeResult], status: int) -> int:
        """The end of every run that did not collapse: stop, say so, return the status."""
        self.move(Phase.REPORTED, set(Phase) - {Phase.COLLAPSED})
        self.heartbeat.stop.set()
        codes = protocol.sort_codes(all_codes(nodes))
        self.events.emit("end", status=codes[0] if codes else protocol.Code.NONE.value,
                         codes=codes, bytes=nodes[0].bytes_in if nodes else 0, exit=status,
                         digest=nodes[0].digest if nodes else "", **self._stream_times())  # fmt: skip
        self.log.flush()
        return status

    def _stream_times(self) -> dict[str, float]:
        """For the end event: when the stream came, ended and was relayed here."""
        ev, relay = self.events, self.relay
        times = {"start": round(ev.started, 4)}
        if relay is not None:
            for key, at in (("first", relay.first_at), ("eof", relay.eof_at),
                            ("relayed", relay.done_at)):  # fmt: skip
                if at:
                    times[key] = ev.since(at)
        return times

    # ------------------------------------------------------------ roles

    def _run_root(self) -> int:
        self.path = [self.node_id]
        self._form()
        if self.cfg.stm_wait is not None:  # every node waits for its commands, then reports
            self.await_arrived(Await(self.cfg.stm_wait))
        if self.cfg.inputs == ("socket",):
            self.in_cmd = SocketCommand(self.cfg.cmd or "", "in", self.cfg.buf_size)
            self.in_fd = self.in_cmd.fd
        assert self.in_fd is not None
        streamer = self.streamer
        if self.cfg.stm is not None:
            self.in_fd = streamer.stm_filter(self.in_fd, self.cfg.stm.encode())
        source = streamer.source_snapshot()
        result = streamer.run(self.in_fd, idle_timeout=0.0)
        if result.read_error is not None:
            self.local_read_failed(result.read_error)
        elif streamer.stm_error is not None:  # the -stm pump could not read the input
            self.local_read_failed(streamer.stm_error)
        elif source is not None:
            streamer.check_source(*source, result.bytes_in)
        if self.in_cmd is not None:
            failed = self.in_cmd.wait()
            if failed and protocol.Code.LRF.value not in self.own.codes:
                self.local_read_failed(OSError(0, failed))
        streamer.end_children()
        nodes = self.reporter.collect()
        return self._finish(nodes, self.reporter.root_summary(nodes))

    def _run_child(self) -> int:
        self.parents.listen()
        self.parents.accept()
        self._form()
        assert self.parent is not None and self.data_in is not None
        result = self.streamer.run(self.data_in.fileno(), idle_timeout=self.cfg.timeout)
        if result.timed_out:
            self.parent_failed(f"no data from parent for {self.cfg.timeout:g} s (-t)")
        elif result.read_error is not None:
            self.parent_failed(f"read from parent: {result.read_error.strerror}")
        else:
            self.streamer.check_end(result.bytes_in)
        self.streamer.end_children()
        self._commands_end()
        return self._report_up(self.reporter.collect())

    def _commands_end(self) -> None:
        """-stm_results: the stream has ended here; end the executor's input, wait for
        its commands (-stm_wait, from the root) or only for it to have read the last
        line, and record what they did (CMDF: a failure, or not ended in time)."""
        log = self.commands
        if log is None:
            return
        if self.out_fd is not None and not self.out_is_file:  # the executor reads to its end
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.out_fd)
            os.close(null)
        written = self.streamer.local.sent if self.streamer.local is not None else 0
        awaited = self.awaited
        if awaited is None:
            self.wait_for(lambda: log.caught_up(written), ACK_WAIT)
        else:
            limit = awaited.seconds
            deadline = time.monotonic() + limit
            self.log.message(f"waiting for the executor's commands"
                             f"{f' ({limit:g} s at most)' if limit else ''}")  # fmt: skip
            while not self.wait_for(lambda: log.ended or self.phase is Phase.CUT_OFF, 1.0):
                if limit and time.monotonic() >= deadline:
                    break
        with self.lock:
            expired = awaited is not None and not log.ended
            self.cmds = log.snapshot(waited=awaited is not None, expired=expired)
        cmds = self.cmds
        if cmds.failed or (cmds.running and (expired or log.ended)):
            self.record(Who.COMMAND, command_detail(cmds))

    def _report_up(self, nodes: list[protocol.NodeResult]) -> int:
        """Send the report to the parent; or, cut off from the root, print it here."""
        if self.parent is not None and self.move(Phase.REPORTED, {Phase.STREAMING, Phase.ENDED}):
            self.parent.send(self.reporter.report(nodes))
        else:  # cut off from the root (-conrf): this node sums up its part of the tree
            self.log.error(f"cut off from the root: the failure report of the tree below {self.name}")
            self.reporter.print_summary(nodes)
        gate = self.parents.gate
        if gate is not None and gate.rejected > LOG_LINES:
            self.log.error(f"{gate.rejected} connections from strangers rejected in all")
        self.log.message(
            f"done: {nodes[0].bytes_in} bytes received, {protocol.format_codes(all_codes(nodes))}"
        )
        return self._finish(nodes, 1 if any(n.fatal for n in nodes) else 0)

    def _run_process(self) -> int:
        """-process CMD (push or pull): CMD makes the stream from all inputs."""
        cfg = self.cfg
        if cfg.role is Role.ROOT:
            self.path = [self.node_id]
        else:
            self.parents.listen()
            self.parents.accept()
        self._form()
        feeders, parent_feed = self._start_process()
        assert self.proc is not None and self.proc.stdout is not None
        result = self.streamer.run(self.proc.stdout.fileno(), idle_timeout=0.0)
        status = self.proc.wait()
        if result.read_error is not None or status != 0:
            why = (describe_exit(status, f"-process {cfg.process!r}") if status
                   else f"reading -process output: {result.read_error}")  # fmt: skip
            self.local_read_failed(OSError(0, why))
        for f in feeders:
            r = f.join()
            if f is parent_feed and (r.timed_out or r.read_error is not None):
                self.parent_failed(f"no data from parent for {cfg.timeout:g} s (-t)"
                                   if r.timed_out else f"read from parent: {r.read_error}")  # fmt: skip
            elif r.read_error is not None and f.label.startswith("-in"):
                self.local_read_failed(r.read_error)
        if parent_feed is not None:
            self.bytes_received = parent_feed.received
            self.streamer.check_end(parent_feed.received)
        if self.streamer.up_sink is not None and self.data_in is not None:
            try:
                self.data_in.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if not self.pull:
            self.streamer.end_children()
        nodes = self.reporter.collect()
        if cfg.role is Role.ROOT:
            return self._finish(nodes, self.reporter.root_summary(nodes))
        if self.parent is not None and self.move(Phase.REPORTED, {Phase.STREAMING, Phase.ENDED}):
            self.parent.send(self.reporter.report(nodes))
        return self._finish(nodes, 1 if any(n.fatal for n in nodes) else 0)

    def _start_process(self) -> tuple[list[Feeder], Feeder | None]:
        """Feed every input of CMD (the tree's stream first, then -in) and start it."""
        cfg = self.cfg
        maxread, maxwrite = self.streamer.io_caps()
        sizes = {"buf_size": cfg.buf_size, "maxread": maxread, "maxwrite": maxwrite}
        feeders: list[Feeder] = []
        parent_feed: Feeder | None = None
        if self.pull:
            for link in self.links:
                if link.data is not None and not link.dead:
                    link.feeder = Feeder(f"child{link.index}", link.data.fileno(), **sizes)
                    feeders.append(link.feeder)
        elif self.data_in is not None:
            parent_feed = Feeder("parent", self.data_in.fileno(), idle_timeout=cfg.timeout,
                                 **sizes)  # fmt: skip
            feeders.append(parent_feed)
        for src, fd in zip(cfg.inputs, self.local_fds, strict=True):
            feeders.append(Feeder(f"-in {src}", fd, **sizes))
        for f in feeders:
            f.start()
        self.proc = start_process(cfg.process or "", feeders)
        if self.pull and self.data_in is not None:
            self.streamer.up_sink = Sink("parent", self.data_in.fileno(), "child",
                                         maxwrite=maxwrite,
                                         on_error=lambda _s, e: self.parent_failed(
                                             f"write to parent: {e.strerror}"))  # fmt: skip
        return feeders, parent_feed

    # ------------------------------------------------------------ failures (policy.py decides)

    def record(self, who: Who, why: str) -> Decision:
        """A failure that does not stop the stream (the policy says carry on): record it."""
        d = decide(Failure(who, self.phase), self.options)
        with self.lock:
            self.own.add(d.code, why, d.fatal)
        return d

    def parent_failed(self, why: str, *, aborted: bool = False, no_adopter: bool = False) -> None:
        """The parent is gone (crash, stall, abort, -t): see policy._parent."""
        who = Who.PARENT_ABORT if aborted else Who.PARENT
        with self.lock:
            phase = self.phase
            if phase is Phase.ORPHANED and no_adopter and self.end is not None:
                phase = Phase.ENDED  # its end had come before an adopter was let in
            d = decide(Failure(who, phase, no_adopter=no_adopter), self.options)
            if d.action is Action.CARRY_ON:
                self.phase = Phase.CUT_OFF
                self.own.add(d.code, why)
                self.changed.notify_all()
        if d.action is Action.ORPHAN:
            self.healer.orphan(why)
        elif d.action is Action.COLLAPSE:
            self.collapse(d.code, self.name, why, tell_parent=not aborted)
        elif d.action is Action.CARRY_ON and not d.code:
            self.log.message(f"parent left after the end of the stream ({why})")
        elif d.action is Action.CARRY_ON:
            self.log.error(f"{protocol.CODE_TEXT.get(d.code, d.code)} ({d.code}): {why}; "
                           f"{d.option}: finishing locally")  # fmt: skip
            if self.data_in is not None:
                try:
                    self.data_in.shutdown(socket.SHUT_RDWR)  # ends the relay at what arrived
                except OSError:
                    pass

    def child_write_failed(self, link: ChildLink, exc: OSError) -> None:
        """Writing to a child failed. If it closed its end (EPIPE, ECONNRESET) it is
        usually collapsing and its own reason (LWF below it, say) is on the control
        channel, a moment behind: the reader reports that, or NWF at the channel's end;
        this reports NWF only if neither came within :data:`REASON_WAIT`. Anything
        else, and a heal (which must hold the stream at once), is NWF now."""
        why = f"write: {exc.strerror}"
        code = protocol.Code.NWF.value
        healing = decide(Failure(Who.CHILD, self.phase, code), self.options).action is Action.HEAL
        if healing or link.peer is None or exc.errno not in (errno.EPIPE, errno.ECONNRESET):
            self.child_failed(link, code, link.name, why)
            return
        t = threading.Timer(REASON_WAIT, self.child_failed, (link, code, link.name, why))
        t.daemon = True
        t.start()

    def child_failed(self, link: ChildLink, code: str, node: str, why: str) -> None:
        """A branch failed (write error, crash, stall, or a failure below it)."""
        who = Who.CHILD if node == link.name else Who.BELOW
        with self.lock:
            if link.dead or link.done.is_set():
                return
            d = decide(Failure(who, self.phase, code), self.options)
            if d.action is Action.IGNORE:
                return
            link.dead = True
            if who is Who.CHILD:
                link.codes.append(code)
            link.failure = BranchLoss(node, code, why, d.fatal)
        if d.action is Action.HEAL:
            assert self.relay is not None
            self.relay.hold()  # read nothing more until the grandchildren are adopted
        elif d.action is Action.COLLAPSE:
            self.collapse(code, node, why, link=link)
            return
        self.log.error(f"{protocol.child_line(link.index, link.label, link.codes)} ({node}: {why});"
                       f" {d.option}: carrying on without it")  # fmt: skip
        if d.action is Action.HEAL and link.peer is not None:  # a stalled node learns it was replaced
            link.peer.send(Abort(f"declared dead by {self.name}: {why}"))
        link.cut()
        link.ready.set()
        if d.action is Action.HEAL:
            threading.Thread(target=self.healer.heal, args=(link, time.time()), name="heal",
                             daemon=True).start()  # fmt: skip
        link.done.set()

    def drop_branch(self, link: ChildLink, d: Decision, node: str, why: str) -> None:
        """A branch that never formed, dropped as the policy said (-connf)."""
        with self.lock:
            link.dead = True
            link.codes.append(d.code)
            link.failure = BranchLoss(node, d.code, why, d.fatal)
        link.done.set()

    def report_arrived(self, link: ChildLink, msg: SubtreeReport | None, why: str = "") -> None:
        """A child's report (None: one that is not a report, why)."""
        if msg is not None:
            link.results = list(msg.nodes)
            with self.lock:
                self.healer.heals.extend(msg.heals)
        else:
            d = decide(Failure(Who.BAD_REPORT, self.phase), self.options)
            link.codes.append(d.code)
            link.failure = BranchLoss(link.name, d.code, why, d.fatal)
        link.done.set()

    def local_write_failed(self, _sink: Sink, exc: OSError) -> None:
        dest = f"-cmd {self.cfg.cmd!r}" if self.out_cmd is not None else self.cfg.out
        why = exc.strerror if exc.errno == 0 else f"write to {dest}: {exc.strerror}"
        d = decide(Failure(Who.LOCAL_OUTPUT, self.phase), self.options)
        if d.action is Action.COLLAPSE:
            self.collapse(d.code, self.name, why)
            return
        with self.lock:
            self.own.add(d.code, why, d.fatal)
        self.log.error(f"local write failure (LWF): {why}; {d.option}: relaying on")

    def local_read_failed(self, exc: OSError) -> None:
        src = f"-cmd {self.cfg.cmd!r}" if self.in_cmd is not None else ",".join(self.cfg.inputs)
        why = exc.strerror if exc.errno == 0 else f"read from {src}: {exc.strerror}"
        d = decide(Failure(Who.LOCAL_INPUT, self.phase), self.options)
        if d.action is Action.COLLAPSE:
            self.collapse(d.code, self.name, why)
            return
        with self.lock:
            self.own.add(d.code, why, d.fatal)
        self.log.error(f"local read failure (LRF): {why}; {d.option}: ending the stream here")

    # ------------------------------------------------------------ collapse

    def collapse(self, code: str, node: str, why: str, link: ChildLink | None = None,
                 tell_parent: bool = True) -> None:  # fmt: skip
        """Unhandled failure: tell the parent and the children, exit 1 now."""
        with self.lock:
            if self.phase is Phase.COLLAPSED:
                return
            self.phase = Phase.COLLAPSED
        code = str(code)
        if link is not None:
            self.log.error(protocol.child_line(link.index, link.label, link.codes))
        self.log.error(f"{node}: {protocol.CODE_TEXT.get(code, code)} ({code}): {why}")
        self.log.error(protocol.chain_line([code]))
        self.log.error(f"collapsing the tree at {self.name}")
        if self.parent is not None and tell_parent:
            self.parent.send(Fail(code, node, why))
        for lk in self.links:
            if lk.peer is not None and lk is not link:
                lk.peer.send(Abort(f"{node}: {code}: {why}"))
        if self.cfg.role is Role.ROOT:
            self.reporter.write_report([protocol.NodeResult(name=node, depth=0, codes=[code],
                                                            detail=why, fatal=True)],
                                       "collapsed", 0.0)  # fmt: skip
        for cmd in (self.in_cmd, self.out_cmd):
            if cmd is not None:
                cmd.kill()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.events.emit("end", status=code, codes=[code], exit=1,
                         bytes=self.relay.bytes_in if self.relay else 0)  # fmt: skip
        self.log.flush()
        os._exit(1)

