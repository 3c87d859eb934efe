"""``beo boot provision``: the server side of a provisioning round.

Beside the running ``beo boot`` (same config), it pins the image (size, times
and sha256 at the start), answers the nodes' reports on the report port (UDP),
starts the chain's root once ``provision.start_after`` nodes are ready (every
node of the order when 0) or ``provision.start_wait`` seconds have passed, runs
the root nettee (``-heal -digest``, failover lists), shows every node's stage as
it changes, and names at the end the nodes that never booted, died mid-stream
or missed the round.  Nodes that reported after the round started get a
follow-up round of their own (``provision.follow_up``).  The status (every
node's stage, bytes, code) is written once a second to a JSON file that
``beo boot provision --status`` prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from beokit.boot.config import BootConfig
from beokit.errors import BeokitError, UsageError
from beokit.provision import plan, report

VERIFY_WAIT = 30.0  # seconds the round waits, after the root ended, for the nodes' verdicts
TICK = 0.2


@dataclass
class RoundOptions:
    image: Path
    status_file: Path
    bind: str = "0.0.0.0"
    nettee: tuple[str, ...] = (sys.executable, "-m", "beokit.nettee.cli")
    out: TextIO = sys.stdout
    max_rounds: int = 4


@dataclass(frozen=True)
class Pin:
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    sha256: str
    xxh3: str = ""


def stat_key(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def pin_image(path: Path) -> Pin:
    """Size, times and sha256 of the image, as the round starts; the sha256 is what
    each node compares its target with."""
    before = stat_key(path)
    h = hashlib.sha256()
    try:
        import xxhash

        x = xxhash.xxh3_128()
    except ImportError:
        x = None
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            if x is not None:
                x.update(chunk)
    if stat_key(path) != before:
        raise BeokitError(f"provision.image {str(path)!r} changed while it was hashed: refused")
    return Pin(*before, sha256=h.hexdigest(), xxh3=x.hexdigest() if x is not None else "")


def status_path(cfg: BootConfig, config_path: Path) -> Path:
    if cfg.control is not None:
        return Path(str(cfg.control) + ".provision.json")
    return config_path.resolve().parent / "provision.json"


class Reports(asyncio.DatagramProtocol):
    """The report port: each datagram is a node's report, answered at once."""

    def __init__(self, book: report.RoundBook, target: str, address: Callable[[str], str]) -> None:
        self.book, self.target, self.address = book, target, address
        self.xxh3 = ""
        self.on_events: Callable[[], None] | None = None  # print stage changes as they come
        self.transport: asyncio.DatagramTransport | None = None
        self.bad = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            r = report.decode_report(data)
        except report.BadReport:
            self.bad += 1
            return
        self.book.addresses.setdefault(r.node, addr[0])
        ans = self.book.on_report(r, time.monotonic())
        if ans.go and not ans.stop:
            lists = [[self.address(h) for h in hl] for hl in ans.next or []]
            ans = report.Answer(ans.round, ans.go, lists, ans.sha256, ans.size, target=self.target,
                                xxh3=self.xxh3)
        assert self.transport is not None
        self.transport.sendto(report.encode_answer(ans), addr)
        if self.on_events is not None and self.book.events:
            self.on_events()  # at once, not at the next tick: the times shown are the reports'


class Round:
    """One run of ``beo boot provision``: rounds until every node is done or nothing
    more can be done."""

    def __init__(self, cfg: BootConfig, opts: RoundOptions) -> None:
        if cfg.provision is None or not cfg.nettee.order:
            raise UsageError("the config has no [provision] and [nettee] sections")
        self.cfg, self.opts = cfg, opts
        self.pv = cfg.provision
        self.topo = cfg.nettee.topology
        self.root_name = self.topo.order[0]
        self.receivers = self.topo.order[1:]
        self.pin: Pin | None = None
        self.book = report.RoundBook(self.receivers)
        self.started = time.monotonic()
        self.heals: list[dict] = []

    def say(self, text: str) -> None:
        self.opts.out.write(f"[{time.monotonic() - self.started:7.2f}] {text}\n")
        self.opts.out.flush()

    def address(self, name: str) -> str:
        """Where a node is reached: nettee's -next gets addresses, not names (a node's
        initramfs has no resolver; nettee's announcement: "-next as the IP address
        ... passed by dhcp"): an address as it is, a node name by the numbering of
        [nodes], else the address its reports came from, else the name."""
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(name))
        n = self.cfg.node_of_name(name)
        if n is not None:
            return str(self.cfg.node_ip(n))
        return self.book.addresses.get(name, name)

    def static_plans(self) -> dict[str, list[list[str]]]:
        out: dict[str, list[list[str]]] = {}
        for name in self.topo.order:
            p = plan.node_plan(self.topo, name)
            assert p is not None
            out["" if p.is_root else name] = [list(hl) for hl in p.hostlists]
        return out

    def write_status(self, state: str) -> None:
        doc = {"state": state, "round": self.book.round, "image": str(self.opts.image),
               "sha256": self.book.sha256, "size": self.book.size,
               "elapsed": round(time.monotonic() - self.started, 2),
               "summary": self.book.summary(), "heals": self.heals,
               "nodes": self.book.table()}  # fmt: skip
        path = self.opts.status_file
        with contextlib.suppress(OSError):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".provision")
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, indent=1)
            os.replace(tmp, path)

    def drain_events(self) -> None:
        for line in self.book.events:
            self.say(line)
        self.book.events.clear()

    async def tick(self, state: str) -> None:
        await asyncio.sleep(TICK)
        self.drain_events()
        now = time.monotonic()
        if now - getattr(self, "_written", 0.0) >= 1.0:
            self._written = now
            self.write_status(state)

    async def wait_start(self, since: float) -> bool:
        """Until the round may start; False: nobody came within start_wait."""
        book, pv = self.book, self.pv
        while True:
            now = time.monotonic()
            want = pv.start_after if book.round == 1 else 0
            if book.should_start(want, since, pv.start_wait, now):
                return True
            if now - since >= pv.start_wait and not book.ready():
                return False
            await self.tick("waiting")

    def check_image(self) -> None:
        assert self.pin is not None
        if stat_key(self.opts.image) != (self.pin.size, self.pin.mtime_ns, self.pin.ctime_ns,
                                         self.pin.ino):  # fmt: skip
            raise BeokitError(f"provision.image {str(self.opts.image)!r} changed since the "
                              "round began (its sha256 was pinned at the start): refused; "
                              "start a new round for the new image")  # fmt: skip

    async def run_root(self, lists: list[list[str]], report_path: Path) -> dict:
        """The chain's root nettee: reads the image, feeds the first nodes."""
        root = plan.NodePlan(self.root_name, 0, "", (), ())
        args = plan.nettee_args(self.topo, root,
                                tuple(tuple(self.address(h) for h in hl) for hl in lists))
        args += ["-in", str(self.opts.image), "-report", str(report_path), "-v", "5"]
        self.say(f"round {self.book.round}: root: nettee {' '.join(args)}")
        proc = await asyncio.create_subprocess_exec(*self.opts.nettee, *args,
                                                    stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)  # fmt: skip
        log: list[str] = []

        async def read_log() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                log.append(line)
                if "joined at" in line or "adopted" in line or "tree formed" in line:
                    self.say(f"root: {line.removeprefix('nettee: ')}")

        reader = asyncio.create_task(read_log())
        waiter = asyncio.create_task(proc.wait())
        while not waiter.done():
            await self.tick("streaming")
        self.say(f"round {self.book.round}: root ended (exit {proc.returncode})")
        await reader
        try:
            doc = json.loads(report_path.read_text())
        except (OSError, ValueError):
            doc = {"status": "?", "nodes": [], "log": log[-5:]}
        doc["exit"] = proc.returncode
        doc["log_tail"] = log[-5:]
        return doc

    def take_results(self, doc: dict) -> list[str]:
        """The root's report into the book; the nodes for a follow-up round."""
        results: dict[str, tuple[str, int]] = {}
        for n in doc.get("nodes", [])[1:]:
            # NNF: a branch below it that never joined (handled), or itself not reached
            codes = [c for c in n.get("codes") or [] if c != "NNF"]
            got = int(n.get("bytes_in", 0))
            if not codes and not got and n.get("codes"):
                continue  # its branch never joined: not reached this round
            bad = codes and (n.get("fatal", True) or got < self.book.size)
            results[n["name"]] = (codes[0] if bad else "NONE", got)
            if codes:
                st = self.book.nodes.get(n["name"])
                if st is not None:
                    st.detail = str(n.get("detail", ""))[:400]
        for h in doc.get("heals", []):
            self.heals.append(h)
            self.say(f"healed: {json.dumps(h)}")
        return self.book.finish_round(results, time.monotonic())

    async def wait_verdicts(self) -> None:
        """Until every member the stream reached has verified or failed (bounded)."""
        deadline = time.monotonic() + VERIFY_WAIT
        while time.monotonic() < deadline:
            open_ = [n for n in self.book.members if self.book.nodes[n].stage not in
                     (*report.FINAL, "missed")]  # fmt: skip
            if not open_:
                return
            await self.tick("verifying")
        for n in sorted(self.book.members):
            st = self.book.nodes[n]
            if st.stage not in (*report.FINAL, "missed"):
                self.book.set_stage(n, "failed", time.monotonic(), code="NOREPORT",
                                    detail=f"no verdict within {VERIFY_WAIT:g} s of the end")  # fmt: skip

    async def one_round(self, plans: dict[str, list[list[str]]], since: float) -> list[str] | None:
        """Wait, stream, collect; the late nodes (None: nobody came)."""
        if not await self.wait_start(since):
            return None
        self.check_image()
        self.book.streaming = True
        ready = self.book.ready()
        self.say(f"round {self.book.round}: starting with {len(ready)} ready node(s)")
        with tempfile.TemporaryDirectory(prefix="beo-provision") as tmp:
            doc = await self.run_root(plans.get("", []), Path(tmp) / "report.json")
        if doc.get("status") not in ("NONE", None) and doc.get("exit"):
            self.say(f"round {self.book.round}: root ended {doc.get('status')} "
                     f"(exit {doc.get('exit')}): {' | '.join(doc.get('log_tail', [])[-2:])}")
        self.take_results(doc)
        await self.wait_verdicts()
        late = self.book.late()
        self.drain_events()
        if any("LRF" in (n.get("codes") or []) for n in doc.get("nodes", [])[:1]):
            raise BeokitError(f"provision.image {str(self.opts.image)!r} changed during round "
                              f"{self.book.round} (its sha256 was pinned at the start): refused")
        return late

    async def run(self) -> int:
        self.say(f"pinning {self.opts.image} ...")
        self.pin = await asyncio.get_running_loop().run_in_executor(None, pin_image,
                                                                     self.opts.image)
        self.book.sha256, self.book.size = self.pin.sha256, self.pin.size
        self.say(f"image {self.pin.size} bytes, sha256 {self.pin.sha256}")
        port = self.pv.report_port_of(self.topo.port)
        loop = asyncio.get_running_loop()
        transport, reports = await loop.create_datagram_endpoint(
            lambda: Reports(self.book, self.pv.target, self.address), local_addr=(self.opts.bind, port),
            family=socket.AF_INET)  # fmt: skip
        reports.xxh3 = self.pin.xxh3
        reports.on_events = self.drain_events
        try:
            self.say(f"reports on udp {self.opts.bind}:{port}; waiting for nodes "
                     f"({self.pv.start_after or len(self.receivers)} ready, or "
                     f"{self.pv.start_wait:g} s)")
            self.book.begin(self.static_plans())
            since = time.monotonic()
            for _ in range(self.opts.max_rounds):
                late = await self.one_round(self.book.plans, since)
                if not late or not self.pv.follow_up:
                    break
                self.say(f"follow-up round for {', '.join(late)}")
                self.book.next_round(plan.followup_hostlists(late))
                since = time.monotonic()
            return self.verdict()
        finally:
            self.write_status("done")
            transport.close()

    def verdict(self) -> int:
        s = self.book.summary()
        ok = s.get("verified", [])
        self.say(f"{len(ok)} of {len(self.receivers)} node(s) verified "
                 f"(sha256 {self.book.sha256[:16]}...)")
        for stage, what in (("absent", "never booted"), ("failed", "failed"),
                            ("missed", "missed every round")):
            for n in s.get(stage, []):
                st = self.book.nodes[n]
                extra = f" ({st.code}: {st.detail})" if st.code else ""
                self.say(f"{what}: {n}{extra}")
        others = [n for k, v in s.items() if k not in ("verified", "absent", "failed", "missed")
                  for n in v]  # fmt: skip
        for n in others:
            self.say(f"unfinished: {n} ({self.book.nodes[n].stage})")
        return 0 if len(ok) == len(self.receivers) else 1


def run_round(cfg: BootConfig, opts: RoundOptions) -> int:
    if not opts.image.is_file():
        raise UsageError(f"bad image {str(opts.image)!r}: no such file")
    rnd = Round(cfg, opts)
    return asyncio.run(rnd.run())
