"""The I/O driver of ``beo cast``: one run, from the receivers' start to the verdict.

One run (:func:`run_once`):

1. start :mod:`beokit.cast.receiver` on every node through the tree
   launcher (:mod:`beokit.cast.launcher`: what ``beo run`` does, O(log N)
   ssh hops, backend ``-R ssh|rsh|exec|netns|TEMPLATE``); the run's spec, with a
   fresh per-run secret, rides to every receiver on its stdin inside the
   launch channels (``--input``), never on a command line.  Every receiver
   calls this root back over TCP (:class:`~beokit.cast.hub.Hub`), both sides
   prove the secret, and the rest of the run goes over that connection;
2. wait (bounded by ``connect_timeout``) for every node's answer; nodes that
   cannot be started or cannot write DEST are reported and left out, and
   the chains are planned over the others (:func:`plan.replan`);
3. tell every node its nettee arguments (its child in the chain), start the
   root nettee (:mod:`beokit.cast.root`), and feed it from the source
   (:mod:`beokit.cast.feed`: file, device, stdin, or ``tar`` of a
   directory), counting and hashing what goes in;
4. wait for the root's ``-report`` and every node's own result (after its
   fsync) and turn them into one row per node (:func:`verdict.rows`), then
   tell every node to commit its verified copy or discard it.

Any end (done, failed, interrupted by :class:`~beokit.proc.Interrupted`)
leaves nothing running: :meth:`_Cast.release`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from beokit import net
from beokit.cast import channel, plan, verdict
from beokit.cast.feed import FileProgress, SourceFeeder, direct_source, source_snapshot
from beokit.cast.hub import Hub, Receiver
from beokit.cast.job import CastOutcome, Job
from beokit.cast.launcher import ReceiverLaunch, await_answers, callback_address
from beokit.cast.plan import Chain
from beokit.cast.root import RootNettee, digest_algo, nettee_flags
from beokit.cast.verdict import Row
from beokit.errors import UsageError
from beokit.proc import Interrupted, describe_exit, stop

FORM_GRACE = 15.0  # after go, the root must have formed the tree within this (+connect timeout)
Progress = Callable[[int, dict[str, int]], None]

ROOT_EXIT_WAIT = 5.0  # a root that wrote no report: its exit status within this, to say how it ended
ABORT_WAIT = 10.0  # on interruption, every receiver's account of its DEST within this


def run_once(job: Job, hosts: list[str], chains: list[Chain], *, attempt: int = 1,
             on_progress: Progress | None = None,
             on_stage: Callable[[str], None] | None = None) -> CastOutcome:  # fmt: skip
    """Distribute the source to ``hosts`` along ``chains``; one row per host.

    On :class:`Interrupted` (raised by a :class:`SignalGuard`), every node is
    told to stop and asked what its DEST holds, and the exception leaves
    with ``outcome`` set to a row per node that says so.
    """
    cast = _Cast(job, hosts, chains, attempt, on_progress, on_stage)
    done: CastOutcome | None = None
    try:
        done = cast.run()
        return done
    except Interrupted as exc:
        exc.outcome = cast.abort(exc.name)
        raise
    finally:
        try:
            cast.release()
        except Interrupted as exc:  # the signal came during the clean-up: finish it
            cast.release()
            if done is not None:  # the run itself had ended: its rows are what happened
                done.interrupted = exc.name
                exc.outcome = done
            raise


class _Cast:
    """One run of :func:`run_once`: what it started, so that any end can clean up."""

    def __init__(self, job: Job, hosts: list[str], chains: list[Chain], attempt: int,
                 on_progress: Progress | None,
                 on_stage: Callable[[str], None] | None) -> None:  # fmt: skip
        self.job, self.hosts, self.chains, self.attempt = job, hosts, chains, attempt
        self.on_progress = on_progress
        self.stage = on_stage or (lambda _s: None)
        self.extra = plan.resilience_args(job.heal, nettee_flags())
        self.algo = None if plan.DIGEST_FLAG in self.extra else digest_algo()
        self.notes: list[str] = []  # what the command should tell the user (one line each)
        self.kind = plan.dest_kind(job.dest, job.source_kind)
        self.receivers = {h: Receiver(h) for h in hosts}
        self.root_nettee: RootNettee | None = None
        self.root_started = False
        self.hub: Hub | None = None
        self.launcher: ReceiverLaunch | None = None
        self.feeder: SourceFeeder | FileProgress | None = None
        self.work: tempfile.TemporaryDirectory[str] | None = None
        self.launch: dict[str, dict[str, Any]] = {}
        self.before: dict[str, int] | None = None  # SOURCE when the stream started
        self.after: dict[str, int] | None = None  # ... and when it ended

    # ------------------------------------------------------------ phases

    def run(self) -> CastOutcome:
        job = self.job
        secret = secrets.token_hex(32)
        binds = {h: job.address(h) for h in self.hosts} if job.bind_local else {}
        port = self._port(binds)
        t0 = time.monotonic()
        self.stage(f"starting receivers on {len(self.hosts)} node(s)")
        self.root_nettee = RootNettee(secret)
        failed = self._start_receivers(secret, binds)
        if failed is not None:
            return failed
        alive = {h for h, m in self.launch.items() if m.get("t") == "up"}
        live_chains = plan.replan(self.chains, alive)
        assert self.launcher is not None and self.hub is not None
        self._choose_flags(alive)
        out = CastOutcome(rows=[], algo=self.algo, flags=self.extra,
                      launch_seconds=time.monotonic() - t0, launch_depth=self.launcher.depth,
                      refused=self.hub.refused, notes=self.notes)  # fmt: skip
        if not live_chains:
            out.rows = self._rows(report=None, results={}, digest=None, stream=None)
            verdict.settle(out.rows, {})
            out.error = "no node could be started"
            return out
        self._go(live_chains, alive, port, binds)
        report, seconds, log = self._stream(live_chains, port, direct_source(job, self.algo))
        self._finish(out, alive, report, seconds, log)
        return out

    def _choose_flags(self, alive: set[str]) -> None:
        """nettee's -digest (and -heal, which keeps its replay window through the same
        module) needs xxhash on every node; a node with only the standard library
        (a shipped receiver) said so in its answer: the run goes without them and
        the nodes reread and hash their copies (BLAKE2b, in hashlib) instead."""
        lacking = sorted(h for h in alive if self.launch[h].get("xxhash") is False)
        if not lacking or not {plan.DIGEST_FLAG, plan.HEAL_FLAG} & set(self.extra):
            return
        from beokit.hostlist import fold

        supported = nettee_flags() - {plan.DIGEST_FLAG, plan.HEAL_FLAG}
        self.extra = plan.resilience_args(self.job.heal, supported)
        self.algo = "blake2b"
        self.notes.append(f"{fold(lacking)}: no xxhash module there, so nettee runs without "
                          "-digest and -heal; every node rereads its copy and hashes it "
                          "(BLAKE2b) instead")  # fmt: skip

    def _port(self, binds: dict[str, str]) -> int:
        if self.job.port:
            return self.job.port
        if self.job.bind_local:
            addrs = sorted({a for a in binds.values() if plan.is_loopback(a)})
            return net.free_port(addrs or ["127.0.0.1"])
        return secrets.SystemRandom().randrange(20000, 60000)

    def _start_receivers(self, secret: str, binds: dict[str, str]) -> CastOutcome | None:
        """Hub, spec, launch, answers; an CastOutcome if nothing can go on."""
        job = self.job
        addr = job.callback or callback_address(job, self.hosts)
        try:
            # --listen 0.0.0.0 (or ::): every address here; the receivers are told ours
            self.hub = Hub(secret, self.receivers, job.listen or addr)
        except OSError as exc:
            out = CastOutcome(rows=[], algo=self.algo, flags=self.extra)
            out.error = f"cannot listen on {addr} for the receivers: {exc.strerror}"
            self.launch = {h: {"t": "fail", "code": "DOWN", "why": out.error} for h in self.hosts}
            out.rows = self._rows(report=None, results={}, digest=None, stream=None)
            verdict.settle(out.rows, {})
            return out
        payload = self._spec_payload(secret, net.host_port(addr, self.hub.port), binds)
        self.launcher = ReceiverLaunch(job, self.hosts, payload, addr, self.receivers)
        # every launch step has its own connect timeout: the deepest host may need them all
        budget = job.connect_timeout * max(1, self.launcher.depth)
        await_answers(self.receivers, time.monotonic() + budget, budget)
        self.hub.stop_accepting()
        self.launch = {h: dict(r.hello or {}) for h, r in self.receivers.items()}
        return None

    def _spec_payload(self, secret: str, callback: str, binds: dict[str, str]) -> bytes:
        """The spec every receiver reads on stdin, the same for all and of a size
        that does not grow with the cluster; each node's own address (``--resolve``)
        goes to it alone, in its handshake's ``ok`` (:attr:`Receiver.node`)."""
        job = self.job
        spec = channel.receiver_spec(secret=secret, callback=callback, dest=job.dest,
                                  kind=self.kind, digest=self.algo, fsync=job.fsync,
                                  progress=job.progress_nodes, bind_local=job.bind_local,
                                  in_place=job.in_place,
                                  verdict_wait=job.finish_timeout + 60)  # fmt: skip
        for h, a in binds.items():
            if a != h:
                self.receivers[h].node["bind"] = a
        payload = json.dumps(spec, separators=(",", ":")).encode()
        if len(payload) > channel.MAX_SPEC:  # a DEST of ~256 KiB: say so, start nothing
            raise UsageError(f"the receivers' spec is {len(payload)} bytes, more than "
                             f"{channel.MAX_SPEC}: DEST is too long")  # fmt: skip
        return payload

    def _go(self, live_chains: list[Chain], alive: set[str], port: int,
            binds: dict[str, str]) -> None:  # fmt: skip
        """Tell every node its nettee arguments (its child in the chain)."""
        job = self.job
        nxt = plan.links(live_chains)
        via = {h: c for c in live_chains for h in c.hosts}
        for h in sorted(alive):
            child = nxt.get(h)
            child_addr = self._data_address(child, via[h]) if child else None
            dest = str(self.launch[h].get("out") or channel.expand_dest(job.dest, h))
            args = plan.receiver_args(host=h, port=port, dest=dest, kind=self.kind,
                                      child=child_addr, bind=binds.get(h), extra=self.extra,
                                      as_root=job.as_root)  # fmt: skip
            self.receivers[h].send({"t": "go", "args": args, "digest": self.algo})

    def _data_address(self, host: str, chain: Chain) -> str:
        """Where ``host``'s parent sends it the stream: its ``via=`` name (a second
        NIC), its ``--resolve`` entry, its own name where each receiver binds its
        name (-R exec), else the address its receiver reported (the node's end
        of its launch link: what ssh reached for an ssh_config alias), else its
        name."""
        job = self.job
        name = chain.data_name(host)
        if name != host or host in job.resolve or job.bind_local:
            return job.address(name)
        return str(self.launch[host].get("addr") or host)

    def _stream(self, live_chains: list[Chain], port: int,
                direct: bool) -> tuple[dict[str, Any] | None, float, list[str]]:  # fmt: skip
        """Start the root nettee and feed it; (its report, its life in seconds, its log)."""
        job = self.job
        assert self.root_nettee is not None
        self.work = tempfile.TemporaryDirectory(prefix="beo-cast-")
        report_path = os.path.join(self.work.name, "report.json")
        heads = [self._data_address(c.hosts[0], c) for c in live_chains]
        alive = sum(len(c.hosts) for c in live_chains)
        self.stage(f"streaming to {alive} node(s) in {len(live_chains)} chain(s)")
        self.before = source_snapshot(job)
        start = time.monotonic()
        self.root_nettee.start(plan.root_args(children=heads, port=port, report=report_path,
                                              extra=self.extra,
                                              source=os.path.abspath(job.source) if direct
                                              else "-"))  # fmt: skip
        self.root_started = True
        root = self.root_nettee.proc
        if direct:  # it reads SOURCE itself
            self.root_nettee.close_stdin()
            self.feeder = FileProgress(job, root)
        else:
            self.feeder = SourceFeeder(job, root.stdin, self.algo)
        self.feeder.start()
        self._watch_root(self.root_nettee, start)
        seconds = time.monotonic() - start
        self.feeder.join(timeout=10)
        self.after = source_snapshot(job)
        self._progress()
        report = self._report(report_path)
        if report is None or not self.root_nettee.ended.is_set():
            # no report (or no end event): its log to its end says why
            self.root_nettee.join(timeout=2)
            report = report or self._report(report_path)
        return report, seconds, list(self.root_nettee.log)

    @staticmethod
    def _report(path: str) -> dict[str, Any] | None:
        try:
            with open(path) as fh:
                return json.load(fh)  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def _watch_root(self, root_nettee: RootNettee, start: float) -> None:
        """Until the root nettee's ``end`` event (written once its report is, just
        before it exits: its own clean-up is not waited for) or its exit: progress,
        and the chain-forming deadline (its ``formed`` event)."""
        form_deadline = start + self.job.connect_timeout + FORM_GRACE
        root = root_nettee.proc
        while root.poll() is None and not root_nettee.ended.is_set():
            self._progress()
            if not root_nettee.formed.is_set() and time.monotonic() > form_deadline:
                root_nettee.log.append(f"beo cast: the chain did not form within "
                                       f"{form_deadline - start:.0f} s; stopping")  # fmt: skip
                stop(root)
                return
            root_nettee.ended.wait(0.1)  # set the moment it ends or exits

    def _progress(self) -> None:
        if self.on_progress is not None and self.feeder is not None:
            self.on_progress(self.feeder.bytes,
                             {h: r.progress for h, r in self.receivers.items()})  # fmt: skip

    def _finish(self, out: CastOutcome, alive: set[str], report: dict[str, Any] | None,
                seconds: float, log: list[str]) -> None:  # fmt: skip
        """Every node's result, the verdict, then commit the good copies, discard the rest."""
        feeder = self.feeder
        assert feeder is not None
        assert self.root_nettee is not None
        root_end = self.root_nettee.proc.poll()
        if root_end is None and report is None and not log:
            # its exit closed the event pipe a moment before the status can be reaped
            try:
                root_end = self.root_nettee.proc.wait(ROOT_EXIT_WAIT)
            except subprocess.TimeoutExpired:
                pass
        root_why = log[-1] if log else describe_exit(root_end)
        stopped: set[str] = set()
        if self.root_nettee.formed.is_set():
            self.stage("waiting for every node's fsync and result")
            end = time.monotonic() + self.job.finish_timeout
            for h in alive:
                self.receivers[h].finished.wait(max(0.0, end - time.monotonic()))
        else:
            stopped = self._stop_unformed(alive)
        results = {h: r.result for h, r in self.receivers.items() if r.result is not None}
        for h in stopped - set(results):  # nothing came: say why, not "no result"
            results[h] = {"rc": 1, "why": "no stream: the chain did not form"}
        stream = None
        if report is not None and report.get("status") == "ok":
            stream = int(report.get("bytes") or 0)
        elif report is not None and not feeder.error:
            stream = feeder.bytes
        if isinstance(feeder, FileProgress) and stream is not None:
            feeder.last = stream  # the root's own count, not the last offset polled
        out.rows = self._rows(report=report, results=results, digest=feeder.digest, stream=stream)
        out.bytes = feeder.bytes
        out.seconds = seconds
        out.stream_seconds = float((report or {}).get("seconds") or 0.0)
        root_node = ((report or {}).get("nodes") or [{}])[0]
        out.digest = feeder.digest or (root_node.get("digest") if isinstance(root_node, dict)
                                       else None)  # fmt: skip
        out.root_log = log
        out.collapsed = verdict.collapse_reason(report)
        if feeder.error:
            out.error = feeder.error
        elif report is None:
            out.error = "the root nettee wrote no report: " + root_why
        completed = report is not None and report.get("status") == "ok"
        sent = stream if completed else None  # the root's own count of a whole stream
        tar_saw = feeder.changed if isinstance(feeder, SourceFeeder) else ""
        out.changed = tar_saw or verdict.source_change(self.before, self.after, sent)
        verdict.fail_all(out.rows, out.error, out.changed)
        self._settle(out.rows, alive)

    def _stop_unformed(self, alive: set[str]) -> set[str]:
        """The root ended before its chain formed (it failed, or was killed): no byte
        went out, and the nodes it never reached wait for a parent that is gone.
        Each node that has not ended is told to stop and say what its DEST holds,
        at once, instead of waiting out --finish-timeout for results that cannot come."""
        self.stage("the chain did not form: stopping every node")
        asked = {h for h, r in self.receivers.items()
                 if h in alive and not r.finished.is_set() and r.send({"t": "abort"})}  # fmt: skip
        end = time.monotonic() + ABORT_WAIT
        for h in asked:
            self.receivers[h].settled.wait(max(0.0, end - time.monotonic()))
        return asked

    def _settle(self, rows: list[Row], alive: set[str]) -> None:
        """Commit (rename into place) every verified copy, discard the others: bounded."""
        self.stage("moving every verified copy into place")
        good = {r.host for r in rows if r.ok}
        asked = [h for h in alive if self.receivers[h].send(
            {"t": "commit" if h in good else "discard"})]
        end = time.monotonic() + self.job.finish_timeout
        for h in asked:
            self.receivers[h].settled.wait(max(0.0, end - time.monotonic()))
        verdict.settle(rows, {h: r.final for h, r in self.receivers.items() if r.final})

    def _rows(self, *, report: dict[str, Any] | None, results: dict[str, dict[str, Any]],
              digest: str | None, stream: int | None) -> list[Row]:  # fmt: skip
        return verdict.rows(self.hosts, self.chains, launch=self.launch, report=report,
                         results=results, source_digest=digest, stream_bytes=stream,
                         kind=self.kind, attempt=self.attempt)  # fmt: skip

    # ------------------------------------------------------------ endings

    def abort(self, signame: str) -> CastOutcome:
        """Interrupted: stop the stream, ask every node to stop and say what DEST holds."""
        self.stage(f"interrupted ({signame}): stopping every node")
        if self.hub is not None:
            self.hub.stop_accepting()  # no receiver joins a run that is ending
        if self.root_started and self.root_nettee is not None:
            stop(self.root_nettee.proc)
        if not self.launch:
            self.launch = {h: dict(r.hello or {}) for h, r in self.receivers.items()}
        asked = [r for r in self.receivers.values() if r.send({"t": "abort"})]
        end = time.monotonic() + ABORT_WAIT
        for r in asked:
            r.settled.wait(max(0.0, end - time.monotonic()))
        out = CastOutcome(rows=[], algo=self.algo, flags=self.extra, interrupted=signame)
        out.rows = verdict.interrupted_rows(
            self.hosts, self.chains, launch=self.launch,
            finals={h: r.final for h, r in self.receivers.items() if r.final},
            results={h: r.result for h, r in self.receivers.items() if r.result},
            signame=signame, attempt=self.attempt)  # fmt: skip
        out.error = f"interrupted by {signame}"
        return out

    def release(self) -> None:
        """Whatever ended the run: nothing of it is left running (each step bounded).

        The hub goes first: every receiver's connection closes, so each one
        still waiting removes its temporary copy and exits on its own before
        the launch tree is asked to end (and, after its grace, killed).
        """
        if self.hub is not None:
            self.hub.close()
        if self.root_nettee is not None:
            if self.root_started:  # after its end event it is exiting: give it the time
                grace = 5.0 if self.root_nettee.ended.is_set() else 0.0
                self.root_nettee.finish(grace)
            else:
                self.root_nettee.cancel()
        if self.launcher is not None:
            self.launcher.close()
        if self.feeder is not None:
            self.feeder.join(timeout=5)
        if self.work is not None:
            self.work.cleanup()
