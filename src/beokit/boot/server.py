"""The ``beo boot`` server: one asyncio loop for DHCP, TFTP, DNS (and HTTP).

:class:`BootServer` is the coordinator: it builds the parts, starts and stops
them, re-reads the config on SIGHUP, dumps the state on SIGUSR1 and answers
the control socket.  The parts (docs/architecture.md has the map):

* ``listeners.Listeners``: the listening UDP ports, the DHCP and DNS glue;
* ``tftp_server.TftpServer``: TFTP requests, transfers, pacing and timers,
  on the one batched transfer socket (``tftp_socket``) over ``tftp_sessions``;
* ``files``: what is served (snapshots, mappings, netascii copies, virtual
  files); ``http.HttpServer`` serves it too, through an ``http.HttpContext``;
* ``lease_file.LeaseFile``: the lease journal on disk (appended by a writer
  thread, compacted in the background; format in ``lease_journal``);
* the pure decisions: ``dhcp``, ``leases``, ``tftp``, ``dns``, ``fair``, ``paths``.

Nothing blocks the loop: the sockets are non-blocking, the lease journal is
written by its own thread, ``status`` and SIGUSR1 go through the lease table
a piece at a time.  Signals: SIGHUP re-reads the config and re-opens
the listening sockets (transfers in flight keep the transfer socket and go
on); SIGUSR1 logs the leases and the transfers; SIGTERM/SIGINT stop cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import resource
import signal
import socket
import time

from beokit import metrics
from beokit.boot import config, files, tftp_server
from beokit.boot.config import BootConfig, BootConfigError, ServerOptions
from beokit.boot.counters import Counters
from beokit.boot.dhcp import DhcpLogic
from beokit.boot.fair import Load, TokenBucket
from beokit.boot.http import HttpContext, HttpServer
from beokit.boot.lease_file import LeaseFile
from beokit.boot.leases import LeaseDB
from beokit.boot.listeners import Listeners
from beokit.errors import BeokitError

__all__ = ["BootServer", "ServerOptions", "check_bind", "check_paths", "run_server"]

log = logging.getLogger("beokit.boot")
NOFILE_WANT = 65536  # the soft RLIMIT_NOFILE the server raises itself to (up to the hard one)
CHUNK = 500  # leases per piece of `status` and of the SIGUSR1 dump (the loop runs between)


class BootServer:
    """The server's parts, their start, their stop, and what they share."""

    def __init__(self, opts: ServerOptions, cfg: BootConfig) -> None:
        self.opts = opts
        cfg = self.effective(cfg)
        self.cfg = cfg
        self.stats = Counters()
        self.counters = self.stats.counts
        self.db = LeaseDB(cfg)
        self.leases = LeaseFile(cfg.lease_file, self.db)
        self.logic = DhcpLogic(cfg, self.db, proxy=opts.proxy, client_port=opts.dhcp_port + 1,
                               server_port=opts.dhcp_port)  # fmt: skip
        self.logic.notice = lambda text: self.stats.warn("dhcp-decline", "%s", text)
        self.files = files.FileTable()
        self.load = Load(cfg.bandwidth_bps / 8, cfg.defer_max)
        self.bucket = TokenBucket(cfg.bandwidth_bps / 8,
                                  max(cfg.bandwidth_bps / 8 * tftp_server.TICK, 65536))  # fmt: skip
        self.tftp = tftp_server.TftpServer(cfg, self.stats, self.files, self.open_served,
                                           self.bucket, self.load)  # fmt: skip
        self.listeners = Listeners(opts, cfg, self.stats, self.db, self.logic,
                                   on_tftp=self.tftp.on_request, dhcp_delay=self.dhcp_delay,
                                   leases_changed=self.leases.soon)  # fmt: skip
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.control_server: asyncio.AbstractServer | None = None
        self.http: HttpServer | None = None
        self.dumping: asyncio.Task | None = None
        self.started = time.monotonic()
        self.exporter: metrics.Exporter | None = None

    def effective(self, cfg: BootConfig) -> BootConfig:
        """The config with the HTTP base URL filled in when HTTP boot is on."""
        port = self.opts.http_port if self.opts.http_port is not None else cfg.http_port
        if port and not cfg.http_url:
            cfg = dataclasses.replace(cfg, http_url=f"http://{cfg.server}:{port}/")
        return cfg

    def open_served(self, name: str) -> files.OpenFile:
        """A requested name's file under the current config (TFTP and HTTP)."""
        return files.open_served(self.files, self.cfg, name)

    def dhcp_delay(self) -> float:
        """How long to defer an offer to a newcomer now (booting nodes go first)."""
        return self.load.dhcp_delay(self.tftp.stalled_now) if self.tftp.sessions else 0.0

    # -- control socket ------------------------------------------------------
    async def on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            try:
                req = json.loads(line)
                if isinstance(req, dict) and req.get("cmd") == "dump":
                    await self._send_state(writer)
                    return
                out = self.control(req)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                out = {"ok": False, "error": str(e)}
            writer.write(json.dumps(out).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), 5)
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    def control(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "admit":
            mac = config.normalize_mac(str(req["mac"]))
            n = req.get("node")
            got = self.db.admit(mac, None if n is None else int(n))
            self.leases.handoff()
            ip, name = self.cfg.node_ip(got), self.cfg.node_hostname(got)
            log.info("admitted %s as node %d (%s, %s)", mac, got, name, ip)
            return {"ok": True, "mac": mac, "node": got, "ip": str(ip), "name": name}
        raise ValueError(f"unknown command {cmd!r}")

    async def _send_state(self, writer: asyncio.StreamWriter) -> None:
        """``beo boot status``: one JSON line, the lease table sent :data:`CHUNK` leases
        at a time, the loop serving datagrams between chunks (no stall with 20,000 leases).
        The tables are copied first (references only), so the answer is one moment's."""
        leases = list(self.db.leases.values())
        admitted = list(self.db.admitted.items())
        head = json.dumps({"ok": True, **self.state()})
        writer.write(head[:-1].encode() + b', "leases": [')
        for i in range(0, len(leases), CHUNK):
            part = json.dumps([x._asdict() for x in leases[i : i + CHUNK]])[1:-1]
            writer.write((", " if i else "").encode() + part.encode())
            await asyncio.wait_for(writer.drain(), 10)
        writer.write(b'], "admitted": {')
        for i in range(0, len(admitted), CHUNK):
            part = json.dumps(dict(admitted[i : i + CHUNK]))[1:-1]
            writer.write((", " if i else "").encode() + part.encode())
            await asyncio.wait_for(writer.drain(), 10)
        writer.write(b"}}\n")
        await asyncio.wait_for(writer.drain(), 10)

    async def _start_control(self) -> None:
        if self.cfg.control is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.cfg.control.unlink()
        old = os.umask(0o077)
        try:
            self.control_server = await asyncio.start_unix_server(self.on_control,
                                                                  path=str(self.cfg.control))  # fmt: skip
        finally:
            os.umask(old)

    # -- state ---------------------------------------------------------------
    def state(self) -> dict:
        """Everything ``status`` shows but the lease and admission tables."""
        now = time.monotonic()
        t = self.tftp.state(now)
        return {
            "uptime": round(now - self.started, 1),
            "counters": dict(sorted({**self.counters, **self.logic.counts,
                                     **self.listeners.queue.counts}.items())),  # fmt: skip
            "dhcp_queue": len(self.listeners.queue),
            "lease_count": len(self.db.leases),
            "journal": self.leases.status(),
            "transfers": t["transfers"],
            "tick": t["tick"],
            "open_files": len(self.files.files),
            "snapshot_bytes": self.files.mem_bytes,
            "http_clients": dict(self.http.clients) if self.http is not None else {},
            "http_connections": len(self.http.conns) if self.http is not None else 0,
            "declined": len(self.db.declined),
            "unconfirmed": t["unconfirmed"],
            "deferred_offers": len(self.listeners.pending_replies),
        }

    # -- metrics -------------------------------------------------------------
    def metrics_port(self) -> int:
        """--metrics-port, else server.metrics_port of the config (0: off)."""
        if self.opts.metrics_port is not None:
            return self.opts.metrics_port
        return self.cfg.metrics_port

    def bind_metrics(self) -> None:
        """Bind the metrics port now, before serving: a taken port is a usage error."""
        port = self.metrics_port()
        http = self.opts.http_port if self.opts.http_port is not None else self.cfg.http_port
        if port and port == http:
            raise BootConfigError(f"bad metrics port {port}: the HTTP boot port")
        if port:
            self.exporter = metrics.Exporter(self.metrics)
            try:
                self.exporter.bind(self.opts.bind, port)
            except BeokitError as e:
                if self.opts.metrics_port is None:  # the config's: name its key
                    raise BootConfigError(str(e).replace("--metrics-port",
                                                         "server.metrics_port", 1)) from None
                raise

    def metrics(self) -> list[metrics.Metric]:
        """What --metrics-port serves (Prometheus text format): a few dict lookups and
        lengths, nothing that walks the lease table (the loop must not stall)."""
        counts = {**self.counters, **self.listeners.queue.counts}
        dhcp = self.logic.counts
        answers = metrics.Metric("beokit_boot_dhcp_answers_total", "counter",
                                 "DHCP replies sent, by message type")  # fmt: skip
        for mtype in ("OFFER", "ACK", "NAK"):
            answers.add(dhcp.get(mtype, 0), type=mtype.lower())
        dropped = metrics.Metric("beokit_boot_dhcp_dropped_total", "counter",
                                 "DHCP requests dropped unanswered under load, by reason")
        for reason in ("shed-full", "shed-stale", "shed-late", "deferred-dropped"):
            dropped.add(counts.get(f"dhcp-{reason}", 0), reason=reason)
        shed = metrics.Metric("beokit_boot_shed_total", "counter",
                              "transfers refused or pushed out to keep the server within its "
                              "limits")  # fmt: skip
        for proto, why, key in (("tftp", "busy", "tftp-busy"),
                                ("tftp", "pushed-out", "tftp-pushed-out"),
                                ("http", "full", "http-refused-full"),
                                ("http", "pushed-out", "http-pushed-out")):  # fmt: skip
            shed.add(counts.get(key, 0), protocol=proto, reason=why)
        http_bytes = counts.get("http-bytes", 0)
        transfers_done = metrics.Metric("beokit_boot_transfers_total", "counter",
                                        "file transfers ended, by protocol and result")
        for proto, result, key in (("tftp", "done", "tftp-done"), ("tftp", "failed", "tftp-failed"),
                                   ("http", "done", "http-done")):  # fmt: skip
            transfers_done.add(counts.get(key, 0), protocol=proto, result=result)
        return [
            metrics.gauge("beokit_boot_leases", "DHCP leases held (temporary, nodes and hosts)",
                          len(self.db.leases)),
            metrics.gauge("beokit_boot_admitted_nodes", "nodes admitted beyond the config's",
                          len(self.db.admitted)),
            metrics.gauge("beokit_boot_declined_addresses", "pool addresses set aside after "
                          "a DHCPDECLINE", len(self.db.declined)),
            metrics.counter("beokit_boot_dhcp_requests_total", "DHCP datagrams received",
                            counts.get("dhcp-in", 0)),
            answers,
            metrics.counter("beokit_boot_dhcp_deferred_total", "offers to newcomers deferred "
                            "while booting nodes are served", counts.get("dhcp-deferred", 0)),
            dropped,
            metrics.gauge("beokit_boot_dhcp_queue", "DHCP requests waiting",
                          len(self.listeners.queue)),
            metrics.gauge("beokit_boot_dhcp_deferred_offers", "deferred offers not yet sent",
                          len(self.listeners.pending_replies)),
            shed,
            metrics.counter("beokit_boot_bytes_total", "bytes sent, by protocol (TFTP: "
                            "datagrams with their headers and option acknowledgements; HTTP: "
                            "file bytes)",
                            self.load.total_bytes - http_bytes, protocol="tftp")
            .add(http_bytes, protocol="http"),
            metrics.gauge("beokit_boot_transfers", "file transfers in progress, by protocol",
                          len(self.tftp.sessions), protocol="tftp")
            .add(len(self.http.clients) if self.http is not None else 0, protocol="http"),
            transfers_done,
            metrics.gauge("beokit_boot_http_connections", "HTTP connections open",
                          len(self.http.conns) if self.http is not None else 0),
            metrics.gauge("beokit_boot_tftp_saturation", "share of recent ticks the bandwidth "
                          "cap was the limit (0-1)", self.load.saturation),
            metrics.gauge("beokit_boot_uptime_seconds", "seconds since the server started",
                          round(time.monotonic() - self.started, 1)),
            metrics.from_counts("beokit_boot_events_total", "every event the server counts "
                                "(as `beo boot status` shows them)",
                                {**counts, **dhcp}),
        ]

    def dump(self) -> None:
        """SIGUSR1: the state in the log; the leases by a task, :data:`CHUNK` lines at a
        time (one dump at once: a second signal while it runs is ignored)."""
        if self.dumping is not None and not self.dumping.done():
            return
        st = self.state()
        log.warning("SIGUSR1 state: %d leases, %d transfers, journal %s, counters %s",
                    st["lease_count"], len(st["transfers"]), st["journal"].get("state"),
                    st["counters"])  # fmt: skip
        for t in st["transfers"]:
            log.warning("  transfer %s %s %d/%d bytes", t["peer"], t["file"], t["bytes"], t["size"])
        for peer, c in st["http_clients"].items():
            log.warning("  http %s %s %d bytes", peer, c["file"], c["bytes"])
        self.dumping = asyncio.get_running_loop().create_task(self._dump_leases())

    async def _dump_leases(self) -> None:
        leases = list(self.db.leases.values())
        for i in range(0, len(leases), CHUNK):
            now = time.time()
            for x in leases[i : i + CHUNK]:
                log.warning("  lease %s %s %s %s expires in %.0f s", x.key, x.ip, x.name, x.kind,
                            x.expires - now)  # fmt: skip
            await asyncio.sleep(0)
        log.warning("SIGUSR1 state: end of the %d leases", len(leases))

    def reload(self) -> None:
        try:
            cfg = self.effective(config.load(self.opts.config_path))
        except BootConfigError as e:
            log.error("SIGHUP: keeping the old config: %s", e)
            return
        self.cfg = cfg
        self.db.reconfigure(cfg)
        self.logic.cfg = cfg
        self.listeners.cfg = cfg
        self.leases.move(cfg.lease_file)
        self.tftp.configure(cfg)
        self.load.cap_bytes_per_s = cfg.bandwidth_bps / 8
        self.load.defer_max = cfg.defer_max
        self.bucket.rate = cfg.bandwidth_bps / 8
        self.bucket.burst = max(cfg.bandwidth_bps / 8 * tftp_server.TICK, 65536)
        try:
            assert self.loop is not None
            self.listeners.open(self.loop)
        except OSError as e:
            log.error("SIGHUP: cannot re-open the sockets (%s); stopping", e)
            assert self.stopping is not None
            self.stopping.set()
        log.warning("SIGHUP: config re-read from %s, sockets re-opened, %d transfers kept",
                    self.opts.config_path, len(self.tftp.sessions))  # fmt: skip

    # -- main ----------------------------------------------------------------
    async def ticker(self) -> None:
        assert self.stopping is not None
        last_expire = 0.0
        while not self.stopping.is_set():
            await asyncio.sleep(tftp_server.TICK)
            now = time.monotonic()
            self.tftp.tick(now)
            if now - last_expire > 5:
                last_expire = now
                self.db.expire(time.time())
            self.leases.tick(now)

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        raise_nofile()
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.leases.load()
        self.listeners.open(self.loop)
        self.tftp.start(self.loop, self.opts.bind)
        await self._start_control()
        http_port = self.opts.http_port if self.opts.http_port is not None else self.cfg.http_port
        if http_port:
            self.http = HttpServer(HttpContext(self.opts.bind, self.open_served, self.files.close,
                                               self.bucket, self.load, self.stats), http_port)  # fmt: skip
            await self.http.start()
        if self.exporter is not None:
            await self.exporter.start()
        for sig, fn in (
            (signal.SIGHUP, self.reload),
            (signal.SIGUSR1, self.dump),
            (signal.SIGTERM, self.stopping.set),
            (signal.SIGINT, self.stopping.set),
        ):
            self.loop.add_signal_handler(sig, fn)  # fmt: skip
        log.warning("beo boot serving (%s%s%s)", "proxyDHCP, " if self.opts.proxy else "",
                    self.listeners.names(), f", http :{http_port}" if http_port else "")  # fmt: skip
        log.info("TFTP lock-step path: %s", "compiled" if tftp_server.FAST_ACKS is not None else
                 "Python (beokit.boot._lockstep not built or BEOKIT_PURE_PYTHON set)")  # fmt: skip
        ticker = asyncio.create_task(self.ticker())
        if ready is not None:
            ready.set()
        try:
            await self.stopping.wait()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await self.shutdown()

    async def shutdown(self) -> None:
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                self.loop.remove_signal_handler(sig)  # type: ignore[union-attr]
        if self.exporter is not None:
            self.exporter.stop()
        self.tftp.stop()
        self.listeners.stop()
        if self.http is not None:
            await self.http.stop()
        if self.control_server is not None:
            self.control_server.close()
            await self.control_server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.cfg.control.unlink()  # type: ignore[union-attr]
        await self.leases.close()
        self.files.close_all()
        log.warning("beo boot stopped")


def raise_nofile(want: int = NOFILE_WANT) -> int:
    """Raise the soft descriptor limit towards ``want`` (never past the hard one), as
    servers do: the HTTP connection cap is sized from it. Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < top:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
            soft = top
    return soft


def check_paths(cfg: BootConfig, opts: ServerOptions | None = None) -> None:
    """Fail early (usage error, naming the key and value) on what would otherwise end
    the server later: a lease file or control socket in a directory that does not exist
    or cannot be written, a control socket path too long for AF_UNIX, an unknown
    ``--interface``."""
    for key, p in (("server.lease_file", cfg.lease_file), ("server.control", cfg.control)):
        if p is None:
            continue
        if not p.parent.is_dir():
            raise BootConfigError(f"bad {key} {str(p)!r}: no directory {str(p.parent)!r}")
        if not os.access(p.parent, os.W_OK | os.X_OK):
            raise BootConfigError(f"bad {key} {str(p)!r}: cannot write in {str(p.parent)!r}")
        if p.is_dir():
            raise BootConfigError(f"bad {key} {str(p)!r}: a directory")
    if cfg.control is not None and len(os.fsencode(cfg.control)) > 107:
        raise BootConfigError(f"bad server.control {str(cfg.control)!r}: longer than the "
                              "107 bytes of a Unix socket path")  # fmt: skip
    if opts is not None and opts.interface:
        try:
            socket.if_nametoindex(opts.interface)
        except OSError:
            raise BootConfigError(f"bad --interface {opts.interface!r}: no such network "
                                  "interface") from None  # fmt: skip


def check_bind(opts: ServerOptions) -> None:
    """Fail early (usage error) on ports already taken or not allowed."""
    for port in (opts.dhcp_port, opts.tftp_port, opts.dns_port):
        if port and port < 1024 and os.geteuid() != 0:
            raise BootConfigError(f"port {port} needs root (use --dhcp-port/--tftp-port/"
                                  "--dns-port above 1023 to test unprivileged)")  # fmt: skip


def run_server(opts: ServerOptions, cfg: BootConfig) -> int:
    check_bind(opts)
    check_paths(cfg, opts)
    server = BootServer(opts, cfg)
    server.bind_metrics()
    try:
        asyncio.run(server.serve())
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise BootConfigError(f"cannot bind {opts.bind}: {e.strerror}") from None
        if e.errno == errno.ENODEV:
            raise BootConfigError(f"bad --interface {opts.interface!r}: {e.strerror}") from None
        raise BeokitError(f"cannot serve: {e.strerror or e}") from None
    return 0
