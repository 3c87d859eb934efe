"""What a node reports: its own result, its subtree's, and the root's summary.

Each node waits for every child's report, checks the byte counts (BBC),
names every node of a branch that sent none, and sends the merged list up
(``SubtreeReport``); the root compares digests (BDG), prints the man page's lines
and writes ``-report`` JSON.  A node cut off from the root (``-conrf``)
prints the summary of its part of the tree itself.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from beokit.nettee import protocol
from beokit.nettee.links import ChildLink
from beokit.nettee.messages import Ready, SubtreeReport, encode
from beokit.nettee.options import bind_address
from beokit.nettee.policy import Failure, Phase, Who, decide
from beokit.nettee.protocol import CMD_TEXT_MAX, CMDS_LISTED, CommandResult, Commands

if TYPE_CHECKING:
    from beokit.nettee.node import Node


@dataclass
class OwnResult:
    """This node's failures: codes, the last reason, and whether its data (or, at the
    root, the stream) cannot be trusted."""

    codes: list[str] = field(default_factory=list)
    detail: str = ""
    fatal: bool = False

    def add(self, code: str, why: str, fatal: bool = False) -> None:
        if code:
            self.codes.append(code)
        self.detail = why
        self.fatal = self.fatal or fatal


class CommandLog:
    """-stm_results FD: what the node's executor (beo exec) did with the lines this
    node wrote, one JSON object a line: ``{"at": BYTES}`` (it has read BYTES of
    the stream), with ``"seq": N, "cmd": TEXT`` when that line is command N, and
    ``{"seq": N, "status": S, "out": TAIL}`` when command N ended (S: its exit
    status, or minus the signal that killed it).  The end of FD: the executor is
    done, every command it received has ended (or it died: then fewer did).
    Anything else on FD is skipped; what is kept is bounded."""

    LINE_MAX = 1 << 16

    def __init__(self, node: Node, fd: int) -> None:
        self.node = node
        self.fd = fd
        self.acked = 0  # bytes of the stream the executor has read
        self.received = 0
        self.done = 0
        self.failed = 0
        self.listed: list[CommandResult] = []
        self.pending: dict[int, str] = {}  # received, not ended: seq -> text
        self.ended = False

    def start(self) -> None:
        threading.Thread(target=self._read, name="stm-results", daemon=True).start()

    def _read(self) -> None:
        try:
            with open(self.fd, "rb", closefd=True) as fh:
                while line := fh.readline(self.LINE_MAX):
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(obj, dict):
                        with self.node.lock:
                            self._apply(obj)
                            self.node.changed.notify_all()
        except OSError:
            pass
        with self.node.lock:
            self.ended = True
            self.node.changed.notify_all()

    def _apply(self, obj: dict) -> None:
        at, seq = obj.get("at"), obj.get("seq")
        if isinstance(at, int) and not isinstance(at, bool):
            self.acked = max(self.acked, at)
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            return
        cmd = obj.get("cmd")
        if isinstance(cmd, str) and seq not in self.pending:
            self.received += 1
            self.pending[seq] = protocol.printable(cmd, CMD_TEXT_MAX)
        status = obj.get("status")
        if isinstance(status, int) and not isinstance(status, bool) and seq in self.pending:
            out = obj.get("out")
            r = CommandResult(seq, self.pending.pop(seq), max(-128, min(status, 255)),
                              protocol.printable_lines(out, protocol.OUTPUT_MAX)
                              if isinstance(out, str) else "")  # fmt: skip
            self.done += 1
            self.failed += r.failed
            self._list(r)

    def _list(self, r: CommandResult) -> None:
        """Keep at most CMDS_LISTED: every failure first, then those with output."""
        if not (r.failed or r.out):
            return
        if len(self.listed) < CMDS_LISTED:
            self.listed.append(r)
            return
        if r.failed:
            for i in range(len(self.listed) - 1, -1, -1):
                if not self.listed[i].failed:
                    del self.listed[i]
                    self.listed.append(r)
                    return

    def caught_up(self, written: int) -> bool:
        """The executor has read all ``written`` bytes (or is done)."""
        return self.ended or self.acked >= written

    def snapshot(self, waited: bool, expired: bool) -> Commands:
        """What to report (under the node's lock).  A wait that ran out lists the
        commands that had not ended, after the failures."""
        listed = list(self.listed)
        if expired:
            room = CMDS_LISTED - len(listed)
            listed += [CommandResult(s, c) for s, c in sorted(self.pending.items())][:max(room, 0)]
        listed.sort(key=lambda c: c.seq)
        return Commands(self.received, self.done, self.failed, tuple(listed), self.ended,
                        waited, expired)  # fmt: skip


def command_detail(cmds: Commands) -> str:
    """The reason beside a node's CMDF (the commands themselves are listed after it)."""
    parts = []
    if cmds.failed:
        parts.append(f"{cmds.failed} of {cmds.received} command(s) failed")
    if cmds.running and (cmds.expired or cmds.ended):
        why = "when -stm_wait ran out" if cmds.expired else "when the executor ended"
        parts.append(f"{cmds.running} of {cmds.received} command(s) had not ended {why}")
    return "; ".join(parts)


def _names(nodes: list[protocol.NodeResult], most: int = 8) -> str:
    shown = ", ".join(n.name for n in nodes[:most])
    return shown + (f" and {len(nodes) - most} more" if len(nodes) > most else "")


def all_codes(nodes: list[protocol.NodeResult]) -> list[str]:
    return [c for n in nodes for c in n.codes]


def _at(n: protocol.NodeResult) -> str:
    """The node's address beside its name in the root's lines (when it adds anything)."""
    return f" at {n.addr}" if n.addr and n.addr != n.name else ""


class Reporter:
    def __init__(self, node: Node) -> None:
        self.node = node

    def subtree_names(self) -> list[str]:
        node = self.node
        names = [node.name]
        for link in node.links:
            names.extend(link.subtree if link.subtree else ([link.label] if link.peer else []))
        return names

    def ready(self) -> Ready:
        node = self.node
        return Ready(tuple(self.subtree_names()), node.healer.kids() if node.cfg.heal else None)

    def report(self, nodes: list[protocol.NodeResult]) -> SubtreeReport:
        # what was healed in this subtree travels up to the root's -report
        msg = SubtreeReport(tuple(nodes), tuple(self.node.healer.heals))
        if any(n.cmds is not None for n in nodes):  # commands' outputs: keep the frame's bound
            try:
                encode(msg)
            except protocol.ProtocolError:
                nodes = [replace(n, cmds=n.cmds.without_output()) if n.cmds else n
                         for n in nodes]  # fmt: skip
                self.node.log.error(f"report of {len(nodes)} node(s) too large: commands' "
                                    "outputs and successes left out")  # fmt: skip
                msg = SubtreeReport(tuple(nodes), tuple(self.node.healer.heals))
        return msg

    def collect(self) -> list[protocol.NodeResult]:
        """Wait for every child's report; merge them under this node's own result."""
        node = self.node
        for link in node.links:
            while not link.done.wait(0.2):
                pass
        nodes = [self._me()]
        for link in node.links:
            if link.feeder is not None:
                link.feeder.join()
            if link.results is not None:
                nodes.extend(self._branch(link, link.results))
            else:
                nodes.extend(self._lost_branch(link))
        return nodes

    def _me(self) -> protocol.NodeResult:
        node, streamer = self.node, self.node.streamer
        produced = node.relay.bytes_in if node.relay else 0
        return protocol.NodeResult(
            name=node.name, depth=0,
            bytes_in=produced if node.bytes_received is None else node.bytes_received,
            bytes_up=streamer.up_sink.sent if streamer.up_sink is not None else 0,
            bytes_out=streamer.local.sent if streamer.local is not None else 0,
            codes=protocol.sort_codes(node.own.codes), seconds=round(streamer.seconds, 3),
            detail=node.own.detail, local_out=node.out_fd is not None, fatal=node.own.fatal,
            digest=streamer.digest(), addr=bind_address(node.cfg), cmds=node.cmds)  # fmt: skip

    def _branch(self, link: ChildLink, sub: list[protocol.NodeResult]) -> list[protocol.NodeResult]:
        """A child's report: its count checked against ours (BBC), one level deeper."""
        head = sub[0]
        head.addr = link.addr or head.addr  # as this node reached it
        if self.node.pull:  # the child sent, we received
            moved = link.feeder.received if link.feeder else 0
            detail = f"sent {head.bytes_up} bytes, {moved} arrived"
        else:
            moved, detail = link.sent, f"received {head.bytes_in} bytes, {link.sent} were sent"
        if protocol.check_counts(moved, sub, self.node.pull):
            d = decide(Failure(Who.BAD_COUNT, Phase.REPORTED), self.node.options)
            head.codes = protocol.sort_codes(head.codes + [d.code])
            head.fatal = head.fatal or d.fatal
            head.detail = detail
            link.codes.append(d.code)
        for n in sub:
            n.depth += 1
        return sub

    @staticmethod
    def _lost_branch(link: ChildLink) -> list[protocol.NodeResult]:
        """Results for a branch that sent no report: name every node in it."""
        loss = link.failure
        node, code, why = (loss.node, loss.code, loss.why) if loss else (
            link.label, protocol.Code.BSTAT.value, "no report")  # fmt: skip
        # the loss was handled (we are running), unless the policy says the data is untrusted
        fatal = loss.fatal if loss else True
        names = link.subtree or [link.label]
        out = []
        for i, name in enumerate(names):
            depth = 1 if i == 0 else 2
            if name == node:
                out.append(protocol.NodeResult(name=name, depth=depth, codes=[code], detail=why,
                                               fatal=fatal))  # fmt: skip
            else:
                out.append(protocol.NodeResult(name=name, depth=depth, codes=[protocol.Code.BSTAT.value],
                                               fatal=fatal,
                                               detail=f"no report: branch lost at {node} ({code})"))  # fmt: skip
        if node not in names:
            out.insert(0, protocol.NodeResult(name=node, depth=2, codes=[code], detail=why,
                                              fatal=fatal))  # fmt: skip
        for n in out:
            if n.depth == 1:  # the child this node reached
                n.addr = link.addr
        return out

    # ------------------------------------------------------------ the root's summary

    def root_summary(self, nodes: list[protocol.NodeResult]) -> int:
        node = self.node
        for n in protocol.check_digests(nodes):
            d = decide(Failure(Who.BAD_DIGEST, Phase.REPORTED), node.options)
            n.codes = protocol.sort_codes(n.codes + [d.code])
            n.fatal = n.fatal or d.fatal
            n.detail = f"digest {n.digest} differs from the root's {nodes[0].digest}"
            for link in node.links:  # the child line of the branch that holds it
                if link.results and n in link.results:
                    link.codes.append(d.code)
        self.print_summary(nodes)
        joined = [n for n in nodes[1:] if protocol.Code.NNF.value not in n.codes]
        status = 1 if any(n.fatal for n in nodes) else 0
        if node.links and not joined:
            node.log.error("no child joined: nothing was delivered")
            status = 1
        self.write_report(nodes, "ok" if status == 0 else "failed", node.streamer.seconds)
        return status

    def print_summary(self, nodes: list[protocol.NodeResult]) -> None:
        node = self.node
        log = node.log
        total = nodes[0].bytes_in
        secs = max(node.streamer.seconds, 1e-9)
        failed = any(n.codes for n in nodes)
        say = log.error if failed else log.message
        for link in node.links:
            own = list(link.codes) + (link.results[0].codes if link.results else [])
            say(protocol.child_line(link.index, link.label, own))
        say(protocol.chain_line(all_codes(nodes[1:])))
        for n in nodes:
            if n.codes:
                log.error(f"node {n.name}: {protocol.format_codes(n.codes)} ({n.detail})"
                          f"{_at(n)}")  # fmt: skip
        self.print_commands(nodes)
        for n in nodes:
            log.message(f"node {n.name}: {n.bytes_in} bytes in, {n.bytes_out} out, "
                        f"{n.seconds:.2f} s, {protocol.format_codes(n.codes)}{_at(n)}")  # fmt: skip
        verb = f"received {total} bytes from" if node.pull else f"sent {total} bytes to"
        joined = sum(1 for n in nodes[1:] if protocol.Code.NNF.value not in n.codes)
        log.message(f"{verb} {joined} node(s) in {secs:.2f} s "
                    f"({total / secs / 1e6:.1f} MB/s)")  # fmt: skip

    def print_commands(self, nodes: list[protocol.NodeResult]) -> None:
        """-stm with beo exec: which command failed where, its output if it came,
        and whether every command has ended (never success for what did not)."""
        log = self.node.log
        ran = [n for n in nodes if n.cmds is not None]
        if not ran:
            return
        for n in ran:
            for c in n.cmds.listed:
                bad = c.failed or c.status is None
                say = log.error if bad else log.message
                if bad:
                    say(f"node {n.name}: command {c.seq} {c.cmd!r}: {c.how()}{_at(n)}")
                elif c.out:
                    say(f"node {n.name}: command {c.seq} {c.cmd!r}: {c.how()}")
                for line in c.out.splitlines():
                    say(f"node {n.name}: | {line}")
        failed = [n for n in ran if n.cmds.failed]
        open_ = [n for n in ran if not n.cmds.complete]
        lost = f", failed on {len(failed)} node(s): {_names(failed)}" if failed else ", none failed"
        if not open_:
            each = {n.cmds.done for n in ran}
            ended = (f"{each.pop()} ended on each of" if len(each) == 1
                     else f"all {sum(n.cmds.done for n in ran)} ended on")  # fmt: skip
            (log.error if failed else log.message)(
                f"commands: {ended} {len(ran)} node(s){lost}")
            return
        waited = any(n.cmds.waited for n in ran)
        why = ("-stm_wait ran out" if any(n.cmds.expired for n in ran) else
               "an executor ended early" if all(n.cmds.ended for n in open_) else
               "still running: the root did not wait for them (-stm_wait)" if not waited else
               "still running")  # fmt: skip
        left = ", ".join(f"{n.name} ({n.cmds.done} of {n.cmds.received} ended)"
                         for n in open_[:8]) + (f" and {len(open_) - 8} more" if len(open_) > 8 else "")  # fmt: skip
        log.error(f"commands: delivered to {len(ran)} node(s), not yet completed on "
                  f"{len(open_)}: {left}; {why}{lost if failed else ''}")  # fmt: skip

    def write_report(self, nodes: list[protocol.NodeResult], status: str, secs: float) -> None:
        node = self.node
        path = node.cfg.report
        if not path:
            return
        doc = {"status": status, "bytes": nodes[0].bytes_in if nodes else 0,
               "seconds": round(secs, 3), "session": node.session,
               "nodes": [n.to_dict() for n in nodes]}  # fmt: skip
        if node.healer.heals:
            doc["heals"] = [h.to_json() for h in node.healer.heals]
        ran = [n.cmds for n in nodes if n.cmds is not None]
        if ran:
            doc["commands"] = {"nodes": len(ran), "complete": all(c.complete for c in ran),
                               "failed": sum(c.failed for c in ran),
                               "failed_nodes": sum(1 for c in ran if c.failed)}  # fmt: skip
        try:
            if os.path.exists(path) and not os.path.isfile(path):  # /dev/stdout: in place
                with open(path, "w") as fh:
                    json.dump(doc, fh, indent=1)
                return
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                json.dump(doc, fh, indent=1)
            os.replace(tmp, path)
        except OSError as exc:
            node.log.error(f"cannot write report {path}: {exc.strerror}")
