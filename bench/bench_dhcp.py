#!/usr/bin/env python3
"""DHCP boot storms: beo boot against Kea and dnsmasq, measured with perfdhcp (issue 21).

Two network namespaces of its own, ``bkdh-srv`` and ``bkdh-cli``, joined by
one veth pair (``bkdh-s0`` 10.77.0.1/16, ``bkdh-c0`` 10.77.0.2/16; a /15 when
more than 60,000 clients are asked for), created under the shared lock
``/tmp/beokit-netns.lock`` (held for the whole run, taken by the script
itself unless it runs under ``flock`` on that file; it waits up to 15
minutes for it) and deleted at the end, on error and on interrupt
(SIGINT, SIGTERM, SIGHUP); the root namespace is not touched. Every server serves the same
subnet with the same pool, 10.77.1.0-10.77.255.254 (65,279 addresses: it
holds every client, so a run measures speed, not pool exhaustion), lease
time 3600 s, and starts from an empty lease store for each run:

* beo boot: ``sys.executable -m beokit.cli boot -c boot.toml --interface
  bkdh-s0`` with TFTP, DNS and HTTP off (``--tftp-port 0 --dns-port 0
  --http-port 0``), lease file in the run's temporary directory;
* Kea: ``kea-dhcp4`` 2.x, memfile with ``persist`` on (CSV journal in the
  temporary directory), ``"dhcp-socket-type": "raw"`` on the veth, 2 threads
  (``multi-threading``, queue 64), logging at WARN (INFO logs every lease),
  ``KEA_PIDFILE_DIR``/``KEA_LOCKFILE_DIR`` in the temporary directory; the
  config is checked with ``kea-dhcp4 -t`` first;
* dnsmasq: ``--keep-in-foreground``, ``no-ping``, ``port=0``,
  ``bind-interfaces``, ``interface=bkdh-s0``, ``dhcp-lease-max=200000``,
  ``quiet-dhcp``, lease file in the temporary directory.

A server counts as started when it answers a broadcast DISCOVER (a probe in
the client namespace sends one every 5 ms). Then, in the client namespace::

    perfdhcp -4 -l bkdh-c0 -B -r RATE -R CLIENTS -n CLIENTS -p SECONDS

``-R CLIENTS -n CLIENTS``: CLIENTS distinct MACs (perfdhcp's sequence from
its template 00:0c:01:02:03:04, the same in every run), each sending one DISCOVER, at RATE new exchanges per second; a REQUEST
follows each OFFER; nothing is retransmitted. The run ends by itself when
the last DISCOVER is sent (CLIENTS / RATE seconds if perfdhcp keeps the
rate), or after SECONDS (default 2 x CLIENTS / RATE + 1, rounded up:
perfdhcp takes whole seconds) if it cannot; the harness interrupts it 30 s
past that and kills it 5 s later.

Reported per run: perfdhcp's ``Rate: N 4-way exchanges/second`` (ACKs
received / its run time), the drop ratios of DISCOVER-OFFER and REQUEST-ACK
and their average delays, perfdhcp's exit status (0 all done, 3 some
exchanges incomplete), the server's CPU time (utime + stime of
/proc/PID/stat, all threads) from perfdhcp's start to 1 s after its end, and
beo boot's DORA/s over Kea's. A drop is an exchange without an answer within
perfdhcp's drop time (1 s) or before it exits: perfdhcp exits as soon as the
last DISCOVER is out, so answers a server still has queued then count as
drops. Two kernel counters tell these apart from losses: "late answers"
(the client namespace's Udp NoPorts: answers that came after perfdhcp had
closed its socket, within 1 s) and "server rcvbuf drops" (the server
namespace's Udp RcvbufErrors: requests lost because the server's socket
was full; not for Kea, which reads a packet socket). ``--exit-wait-ms W``
passes ``-W`` so that perfdhcp waits for those answers; its rate then
includes the wait, so the table gives ACKs / (perfdhcp's time - W, at least
CLIENTS / RATE) instead, and the notes give the exchanges completed out of
CLIENTS (the same measure for a fast and a slow server).

Then beo boot's restart with a full lease store: a fresh server is filled
with ``--restart-leases`` clients by a closed-loop client (``--fill-window``
exchanges outstanding, each re-sent after 2 s, at most ``--fill-timeout``
seconds: it fills a slow server without a backlog, where perfdhcp's open
loop would only add late answers), counted by ``beo boot status``, stopped
with SIGTERM, and started again on the same lease store: the time from
starting the process to the first OFFER to a new client is printed in the
notes, beside the same with an empty store, the time of ``beo boot status``
and the leases the restarted server holds (issue 21's goal: < 1 s with
20,000).

Usage (root; perfdhcp from Debian's kea-admin, kea-dhcp4-server, dnsmasq;
run from the repository with its venv's interpreter)::

    .venv/bin/python bench/bench_dhcp.py --quick               # smoke run, ~20 s
    .venv/bin/python bench/bench_dhcp.py                       # the grid, ~5 min + the fill
    .venv/bin/python bench/bench_dhcp.py --servers beo,kea --clients 20000 --rates 1000,4000
    .venv/bin/python bench/bench_dhcp.py --json /tmp/dhcp.json --png /tmp/dhcp.png
    .venv/bin/python bench/bench_dhcp.py --restart-leases 0    # no restart measurement

A server whose program is missing (kea-dhcp4, dnsmasq, beokit) is skipped
with a message; without root, ``ip`` or perfdhcp nothing can run and the
benchmark says so and exits 0. Bad options: one line, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _netns import NetnsPair, netns_lock

PREFIX = "bkdh"
PY = sys.executable
PYSPY = str(Path(sys.executable).parent / "py-spy")
NAMES = {"beo": "beo boot", "kea": "Kea", "dnsmasq": "dnsmasq"}
LEASE_TIME = 3600
SETTLE = 1.0  # seconds after perfdhcp's exit before the counters are read

# A broadcast DISCOVER every 5 ms from 0.0.0.0:68 until an OFFER for it comes
# back; prints the CLOCK_MONOTONIC time it came (system-wide, so the parent can
# subtract its own start time). Argv: interface, MAC (hex), timeout (s).
PROBE = r"""
import json, os, select, socket, struct, sys, time
iface, mac, timeout = sys.argv[1], bytes.fromhex(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
s.bind(("0.0.0.0", 68))
xid = int.from_bytes(os.urandom(4), "big")
pkt = struct.pack("!4BIHH16s16s64s128sI", 1, 1, 6, 0, xid, 0, 0x8000, bytes(16),
                  mac.ljust(16, b"\0"), bytes(64), bytes(128), 0x63825363)
pkt = (pkt + bytes([53, 1, 1, 55, 4, 1, 3, 6, 51, 255])).ljust(300, b"\0")
print("ready", flush=True)
sys.stdin.readline()
deadline, sent, nxt = time.monotonic() + timeout, 0, 0.0
while (now := time.monotonic()) < deadline:
    if now >= nxt:
        s.sendto(pkt, ("255.255.255.255", 67))
        sent, nxt = sent + 1, now + 0.005
    if not select.select([s], [], [], max(0.0, min(nxt, deadline) - time.monotonic()))[0]:
        continue
    d = s.recv(4096)
    t = time.monotonic()
    if len(d) < 240 or d[0] != 2 or int.from_bytes(d[4:8], "big") != xid:
        continue
    i = 240
    while i + 1 < len(d) and d[i] != 255:
        if d[i] == 0:
            i += 1
            continue
        if d[i] == 53 and d[i + 2] == 2:
            print(json.dumps({"t": t, "sent": sent, "yiaddr": socket.inet_ntoa(d[16:20])}))
            sys.exit(0)
        i += 2 + d[i + 1]
print(json.dumps({"t": None, "sent": sent}))
sys.exit(1)
"""


# Closed-loop DORA for N clients (MACs 02:bf:00:00:00:00 up, broadcast from
# 0.0.0.0:68): at most WINDOW exchanges outstanding, each re-sent after 2 s
# without an answer, so that a slow server is filled without a backlog
# (perfdhcp's open loop would only add late answers). Prints one JSON line.
# Argv: interface, N, window, timeout (s).
FILL = r"""
import json, socket, struct, sys, time
iface, n, window, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
s.bind(("0.0.0.0", 68))
s.settimeout(0.05)
XID = 0x5EED0000
def msg(i, mtype, req=b"", sid=b""):
    mac = bytes([2, 0xBF]) + i.to_bytes(4, "big")
    opts = bytes([53, 1, mtype]) + (bytes([50, 4]) + req if req else b"")
    opts += (bytes([54, 4]) + sid if sid else b"") + bytes([255])
    head = struct.pack("!4BIHH16s16s64s128sI", 1, 1, 6, 0, XID + i, 0, 0x8000, bytes(16),
                       mac.ljust(16, b"\0"), bytes(64), bytes(128), 0x63825363)
    return (head + opts).ljust(300, b"\0")
def options(d):
    out, i = {}, 240
    while i + 1 < len(d) and d[i] != 255:
        if d[i] == 0:
            i += 1
            continue
        out[d[i]] = d[i + 2 : i + 2 + d[i + 1]]
        i += 2 + d[i + 1]
    return out
t0 = time.monotonic()
nxt, bound, sent, naks, out = 0, 0, 0, 0, {}  # out: i -> [message, sent at]
def send(i, m):
    global sent
    s.sendto(m, ("255.255.255.255", 67))
    out[i], sent = [m, time.monotonic()], sent + 1
while bound < n and time.monotonic() - t0 < timeout:
    while len(out) < window and nxt < n:
        send(nxt, msg(nxt, 1))
        nxt += 1
    try:
        d = s.recv(4096)
    except TimeoutError:
        d = b""
    i = int.from_bytes(d[4:8], "big") - XID if len(d) >= 240 and d[0] == 2 else -1
    if i in out:
        o = options(d)
        t = (o.get(53) or b"\0")[0]
        if t == 2 and out[i][0][242] == 1:
            send(i, msg(i, 3, d[16:20], o.get(54, b"")))
        elif t == 5:
            del out[i]
            bound += 1
        elif t == 6:
            naks += 1
            send(i, msg(i, 1))
    now = time.monotonic()
    for i, (m, at) in list(out.items()):
        if now - at > 2.0:
            send(i, msg(i, 1))
print(json.dumps({"bound": bound, "elapsed": time.monotonic() - t0, "sent": sent, "naks": naks}))
"""


class BenchError(Exception):
    """A run could not be done (server did not start, config refused...)."""


# -- pure parts ---------------------------------------------------------------


def parse_perfdhcp(text: str) -> dict:
    """perfdhcp's final report: rate, and per exchange sent/received/drops/delays."""
    out: dict = {"rate": None, "expected": None, "DO": {}, "RA": {}}
    m = re.search(r"Rate: ([\d.]+) 4-way exchanges/second, expected rate: ([\d.]+)", text)
    if m:
        out["rate"], out["expected"] = float(m[1]), float(m[2])
    parts = re.split(r"\*\*\*Statistics for: ([A-Z-]+)\*\*\*", text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        key = {"DISCOVER-OFFER": "DO", "REQUEST-ACK": "RA"}.get(name)
        if key is None:
            continue
        st: dict = {}
        for label, field in (("sent packets", "sent"), ("received packets", "received"),
                             ("drops", "drops"), ("orphans", "orphans"),
                             ("rejected leases", "rejected")):  # fmt: skip
            m = re.search(rf"^{label}: (\d+)", body, re.M)
            if m:
                st[field] = int(m[1])
        for label, field in (("drops ratio", "drop_pct"), ("avg delay", "avg_ms"),
                             ("max delay", "max_ms")):  # fmt: skip
            m = re.search(rf"^{label}: ([\d.]+)", body, re.M)
            if m:
                st[field] = float(m[1])
        out[key] = st
    return out


# Where a sample of beo boot's stack is counted: the first of these file names from the
# innermost frame out (the standard library's frames count for the first of ours).
PROFILE_PARTS = (("lease journal (writer thread)", ("lease_file.py", "lease_journal.py")),
                 ("lease table", ("leases.py", "free_map.py")),
                 ("DHCP decode, decide, build", ("dhcp.py", "dhcp_fast.py")),
                 ("batched socket calls", ("udp.py",)),
                 ("DHCP queue and overload rule", ("dhcp_queue.py",)),
                 ("listeners (glue)", ("listeners.py", "counters.py")),
                 ("server ticks, timers", ("server.py", "tftp_server.py", "fair.py")),
                 ("event loop", ("asyncio", "selectors.py")))  # fmt: skip


def _fdatasync_frame() -> str:
    """The py-spy frame of the journal's fdatasync call (time waiting for the disk, which
    py-spy counts as busy: a thread in a disk wait is not idle to it)."""
    src = Path(__file__).resolve().parent.parent / "src/beokit/boot/lease_file.py"
    with contextlib.suppress(OSError):
        for i, line in enumerate(src.read_text().splitlines(), 1):
            if "os.fdatasync(self.fd)" in line:
                return f"(beokit/boot/lease_file.py:{i})"
    return "(no fdatasync line)"


def profile_shares(raw: str) -> dict:
    """py-spy's raw (collapsed) stacks -> the share of samples in each part of the server
    (:data:`PROFILE_PARTS`) and the functions with the most samples of their own (line
    numbers left out); samples waiting in the journal's fdatasync are a part of their
    own."""
    parts: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    sync = _fdatasync_frame()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = re.sub(r":\d+\)$", ")", frames[-1])
        own[leaf] = own.get(leaf, 0) + n
        part = "other"
        if frames[-1].endswith(sync):
            parts["journal fdatasync (waiting for the disk)"] = parts.get(
                "journal fdatasync (waiting for the disk)", 0) + n
            continue
        for frame in reversed(frames):
            hit = next((name for name, files in PROFILE_PARTS if any(f in frame for f in files)),
                       None)  # fmt: skip
            if hit is not None:
                part = hit
                break
        parts[part] = parts.get(part, 0) + n
    top = sorted(own.items(), key=lambda kv: -kv[1])[:12]
    return {"samples": total, "parts": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
            "top": top}


def perfdhcp_seconds(clients: int, rate: int, given: int) -> int:
    """The -p bound (whole seconds: perfdhcp refuses fractions): the given one, else
    twice the time the -n limit needs, plus 1 s, rounded up."""
    return given if given > 0 else math.ceil(2 * clients / rate + 1)


def udp_counters(snmp: str) -> dict[str, int]:
    """The Udp: counters of /proc/net/snmp (one network namespace's)."""
    rows = [ln.split()[1:] for ln in snmp.splitlines() if ln.startswith("Udp:")]
    return dict(zip(rows[0], map(int, rows[1]), strict=True)) if len(rows) >= 2 else {}


def pool_of(subnet: str) -> tuple[str, str]:
    net = ipaddress.IPv4Network(subnet)
    return str(net.network_address + 256), str(net.broadcast_address - 1)


def subnet_for(max_clients: int) -> str:
    return "10.77.0.0/16" if max_clients <= 60_000 else "10.76.0.0/15"


def beo_config(subnet: str, server: str) -> str:
    lo, hi = pool_of(subnet)
    return (f'[server]\naddress = "{server}"\nroot = "root"\nlease_file = "leases.json"\n'
            f'control = "boot.sock"\n[network]\nsubnet = "{subnet}"\nlease_time = {LEASE_TIME}\n'
            f'temporary_lease_time = {LEASE_TIME}\npool = "{lo}-{hi}"\n')  # fmt: skip


def kea_config(subnet: str, iface: str, state: Path, threads: int = 2) -> dict:
    lo, hi = pool_of(subnet)
    return {"Dhcp4": {
        "interfaces-config": {"interfaces": [iface], "dhcp-socket-type": "raw"},
        "lease-database": {"type": "memfile", "persist": True,
                           "name": str(state / "kea-leases4.csv")},
        "multi-threading": {"enable-multi-threading": True, "thread-pool-size": threads,
                            "packet-queue-size": 64},
        "valid-lifetime": LEASE_TIME,
        "subnet4": [{"id": 1, "subnet": subnet, "pools": [{"pool": f"{lo} - {hi}"}]}],
        "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                     "output_options": [{"output": str(state / "kea.log")}]}],
    }}  # fmt: skip


def dnsmasq_config(subnet: str, iface: str, state: Path) -> str:
    lo, hi = pool_of(subnet)
    mask = ipaddress.IPv4Network(subnet).netmask
    return (f"port=0\nno-ping\nbind-interfaces\ninterface={iface}\nexcept-interface=lo\n"
            f"user=root\npid-file=\nno-resolv\nno-hosts\nquiet-dhcp\n"
            f"dhcp-range={lo},{hi},{mask},{LEASE_TIME}\ndhcp-lease-max=200000\n"
            f"dhcp-leasefile={state / 'dnsmasq.leases'}\n"
            f"log-facility={state / 'dnsmasq.log'}\n")  # fmt: skip


# -- processes -----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) so far."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def sys_seconds(pid: int) -> float:
    """stime of a process (all its threads) so far: the kernel's share of cpu_seconds."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[12]) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """utime + stime of each thread of a process (by thread id)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def stop(p: subprocess.Popen, timeout: float = 15.0) -> tuple[int, float]:
    """SIGTERM, then SIGKILL after ``timeout``; (exit status, seconds it took)."""
    t0 = time.monotonic()
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    return p.returncode, time.monotonic() - t0


def log_problems(path: Path, limit: int = 12) -> list[str]:
    """Lines of a server log that look like failures (errors, tracebacks)."""
    if not path.exists():
        return []
    keep = re.compile(r"Traceback|Error|ERROR|CRITICAL|FATAL|exception|cannot|failed", re.I)
    lines = [ln.rstrip() for ln in path.read_text(errors="replace").splitlines() if keep.search(ln)]
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


class Harness:
    def __init__(self, pair: NetnsPair, tmp: Path, args: argparse.Namespace) -> None:
        self.pair, self.tmp, self.args = pair, tmp, args
        self.subnet = str(pair.net)
        self.live: list[subprocess.Popen] = []
        self.probe_n = 0

    # starting servers: each returns the process (its pid is the server's own,
    # `ip netns exec` execs) once its config is written and checked
    def spawn_beo(self, state: Path) -> subprocess.Popen:
        cfg = state / "boot.toml"
        if not cfg.exists():
            (state / "root").mkdir(exist_ok=True)
            cfg.write_text(beo_config(self.subnet, str(self.pair.srv_ip)))
        with open(state / "server.log", "ab") as log:
            return subprocess.Popen([*self.pair.srv_exec, PY, "-m", "beokit.cli", "boot", "-c",
                                     str(cfg), "--interface", self.pair.srv_if, "--tftp-port",
                                     "0", "--dns-port", "0", "--http-port", "0"], stdout=log,
                                    stderr=log, cwd=state)  # fmt: skip

    def spawn_kea(self, state: Path) -> subprocess.Popen:
        cfg = state / "kea.json"
        cfg.write_text(json.dumps(kea_config(self.subnet, self.pair.srv_if, state), indent=1))
        env = {**os.environ, "KEA_PIDFILE_DIR": str(state), "KEA_LOCKFILE_DIR": str(state)}
        t = subprocess.run([*self.pair.srv_exec, "kea-dhcp4", "-t", str(cfg)], env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        if t.returncode:
            err = (t.stderr.strip() or t.stdout.strip()).splitlines()[-1:]
            raise BenchError(f"kea-dhcp4 -t {cfg}: exit {t.returncode}: {' '.join(err)}")
        with open(state / "server.log", "ab") as log:
            return subprocess.Popen([*self.pair.srv_exec, "kea-dhcp4", "-c", str(cfg)],
                                    env=env, stdout=log, stderr=log)  # fmt: skip

    def spawn_dnsmasq(self, state: Path) -> subprocess.Popen:
        cfg = state / "dnsmasq.conf"
        cfg.write_text(dnsmasq_config(self.subnet, self.pair.srv_if, state))
        (state / "dnsmasq.leases").touch()
        with open(state / "server.log", "ab") as log:
            return subprocess.Popen([*self.pair.srv_exec, "dnsmasq", "--keep-in-foreground",
                                     f"--conf-file={cfg}"], stdout=log, stderr=log)  # fmt: skip

    def start(
        self, server: str, state: Path, timeout: float = 30.0
    ) -> tuple[subprocess.Popen, float]:
        """Start a server; (process, seconds from its start to its first OFFER)."""
        self.probe_n += 1
        mac = f"02bd{os.getpid() & 0xFFFF:04x}{self.probe_n & 0xFFFF:04x}"
        probe = subprocess.Popen([*self.pair.cli_exec, PY, "-c", PROBE, self.pair.cli_if, mac,
                                  str(timeout)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.live.append(probe)
        try:
            if (
                not select.select([probe.stdout], [], [], 15)[0]
                or probe.stdout.readline() != "ready\n"
            ):
                raise BenchError(f"DHCP probe did not start: {probe.stderr.read()[-300:]}")
            probe.stdin.write("go\n")
            probe.stdin.flush()
            t0 = time.monotonic()
            p = getattr(self, f"spawn_{server}")(state)
            self.live.append(p)
            while p.poll() is None and not select.select([probe.stdout], [], [], 0.1)[0]:
                pass  # the probe stamps the OFFER's arrival itself: no tight polling here
            out = json.loads(probe.stdout.read() or "{}") if p.poll() is None else {}
            if out.get("t"):
                return p, out["t"] - t0
            stop(p)
            self.live.remove(p)
            if p.returncode not in (-signal.SIGTERM, -signal.SIGKILL):
                raise BenchError(f"{NAMES[server]} exited with status {p.returncode} at start: "
                                 + "; ".join(log_problems(state / "server.log", 4)))  # fmt: skip
            raise BenchError(f"{NAMES[server]} did not answer a DISCOVER in {timeout:.0f} s")
        finally:
            stop(probe, 2)
            self.live.remove(probe)

    def perfdhcp(self, clients: int, rate: int, seconds: int) -> dict:
        """One perfdhcp run; with --exit-wait-ms (-W) the rate is taken over the sending time."""
        wait_ms = self.args.exit_wait_ms
        cmd = [*self.pair.cli_exec, "perfdhcp", "-4", "-l", self.pair.cli_if, "-B",
               "-r", str(rate), "-R", str(clients), "-n", str(clients), "-p", str(seconds)]  # fmt: skip
        if wait_ms:
            cmd += ["-W", str(int(wait_ms * 1000))]
        c0, t0 = children_cpu(), time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.live.append(p)
        try:
            out, _ = p.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGINT)  # perfdhcp prints its report when interrupted
            try:
                out, _ = p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
        finally:
            self.live.remove(p)
        res = parse_perfdhcp(out)
        res.update(rc=p.returncode, wall=time.monotonic() - t0, client_cpu=children_cpu() - c0,
                   cmd=" ".join(cmd[4:]))  # fmt: skip
        acks = res["RA"].get("received", 0)
        if wait_ms and res["rate"] and acks:  # perfdhcp's rate = ACKs / (sending time + W)
            res["perfdhcp_rate"] = res["rate"]  # (W is not always waited in full: the sending
            # time is at least the offered rate's)
            res["rate"] = acks / max(acks / res["rate"] - wait_ms / 1000, clients / rate)
        if res["rate"] is None:  # no report: keep its last words (perfdhcp's error)
            res["output"] = "; ".join([ln for ln in out.splitlines() if ln.strip()][-3:])
        return res

    def udp(self, ns: str) -> dict[str, int]:
        cp = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
                            capture_output=True, text=True, timeout=10)  # fmt: skip
        return udp_counters(cp.stdout)

    def run_one(self, server: str, clients: int, rate: int) -> dict:
        state = Path(tempfile.mkdtemp(prefix=f"{server}-{clients}-{rate}-", dir=self.tmp))
        r: dict = {"server": server, "clients": clients, "offered": rate}
        p, r["startup"] = self.start(server, state)
        try:
            pid, load0 = p.pid, os.getloadavg()[0]
            srv0, cli0 = self.udp(self.pair.srv_ns), self.udp(self.pair.cli_ns)
            cpu0, sys0, threads0 = cpu_seconds(pid), sys_seconds(pid), thread_cpu(pid)
            spy = self.spy(pid, f"{server}-{clients}-{rate}") if server == "beo" else None
            r.update(self.perfdhcp(clients, rate, perfdhcp_seconds(clients, rate,
                                                                   self.args.seconds)))  # fmt: skip
            time.sleep(SETTLE)  # answers still queued in the server come out now
            if spy is not None:
                r["profile"] = self.spy_end(*spy)
            r["alive"] = p.poll() is None
            if r["alive"]:
                r["server_cpu"] = cpu_seconds(pid) - cpu0
                r["server_sys"] = sys_seconds(pid) - sys0
                threads = thread_cpu(pid)  # the main thread's own, and the others' (beo boot:
                main = threads.get(pid, 0.0) - threads0.get(pid, 0.0)  # the journal writer)
                r["main_thread_cpu"] = main
                r["other_threads_cpu"] = sum(threads.values()) - sum(threads0.values()) - main
            srv1, cli1 = self.udp(self.pair.srv_ns), self.udp(self.pair.cli_ns)
            r["late"] = cli1.get("NoPorts", 0) - cli0.get("NoPorts", 0)
            if server != "kea":  # Kea reads a packet socket: no UDP counter sees its drops
                r["rcvbuf_errors"] = srv1.get("RcvbufErrors", 0) - srv0.get("RcvbufErrors", 0)
            r["load"] = [load0, os.getloadavg()[0]]
            if server == "beo" and r["alive"]:  # (after the CPU time: status costs some)
                r["counters"] = self.beo_counters(state)
        finally:
            r["exit"], _ = stop(p)
            self.live.remove(p)
        r["problems"] = log_problems(state / "server.log")
        if server == "kea":
            r["problems"] += log_problems(state / "kea.log")
        if not self.args.keep:
            shutil.rmtree(state, ignore_errors=True)
        return r

    def spy(self, pid: int, name: str) -> tuple[subprocess.Popen, Path] | None:
        """With --profile: py-spy samples the server (Python stacks, both threads) until
        :meth:`spy_end`; None without --profile or py-spy."""
        if not self.args.profile:
            return None
        out = Path(self.args.profile) / f"{name}.txt"
        p = subprocess.Popen([PYSPY, "record", "--pid", str(pid), "--rate", "250", "--format",
                              "raw", "--nonblocking", "--threads", "-o", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        self.live.append(p)
        time.sleep(0.5)  # (py-spy attaches)
        return p, out

    def spy_end(self, p: subprocess.Popen, out: Path) -> dict:
        p.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        self.live.remove(p)
        if not out.exists():
            return {"error": (p.stderr.read() or b"").decode(errors="replace")[-300:]}
        return {"file": str(out), **profile_shares(out.read_text())}

    def kill_all(self) -> None:
        for p in list(self.live):
            stop(p, 5)
        self.live.clear()

    # -- beo boot's restart with a full lease store ----------------------------
    def beo_counters(self, state: Path) -> dict[str, int]:
        """beo boot's counters after a run (`status`), {} if it does not answer."""
        cp = subprocess.run([PY, "-m", "beokit.cli", "boot", "-c", str(state / "boot.toml"),
                             "status"], capture_output=True, text=True, timeout=120)  # fmt: skip
        try:
            return json.loads(cp.stdout).get("counters", {}) if cp.returncode == 0 else {}
        except ValueError:
            return {}

    def beo_status(self, state: Path) -> tuple[float, int | None, str]:
        """Seconds `beo boot status` took (a new CLI process), leases it listed, error."""
        t0 = time.monotonic()
        cp = subprocess.run([PY, "-m", "beokit.cli", "boot", "-c", str(state / "boot.toml"),
                             "status"], capture_output=True, text=True, timeout=120)  # fmt: skip
        dt = time.monotonic() - t0
        if cp.returncode:
            return dt, None, f"status exit {cp.returncode}: {cp.stderr.strip()[-300:]}"
        try:
            return dt, len(json.loads(cp.stdout).get("leases", [])), ""
        except (ValueError, AttributeError):
            return dt, None, "status printed no JSON object"

    def fill(self, n: int) -> dict:
        """Bind ``n`` clients with the closed-loop FILL client (window, timeout from args)."""
        a = self.args
        p = subprocess.Popen([*self.pair.cli_exec, PY, "-c", FILL, self.pair.cli_if, str(n),
                              str(a.fill_window), str(a.fill_timeout)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.live.append(p)
        try:
            out, err = p.communicate(timeout=a.fill_timeout + 30)
        finally:
            stop(p, 2)
            self.live.remove(p)
        try:
            return json.loads(out)
        except ValueError:
            raise BenchError(f"fill client failed (exit {p.returncode}): {err[-300:]}") from None

    def restart(self, leases: int) -> dict:
        """Fill a fresh beo boot with ``leases`` clients, stop it, time its restart."""
        state = Path(tempfile.mkdtemp(prefix="beo-restart-", dir=self.tmp))
        out: dict = {"target": leases, "window": self.args.fill_window}
        p, out["start_empty_s"] = self.start("beo", state)
        try:
            out["fill"] = self.fill(leases)
            out["status_s"], out["leases_before"], out["error"] = self.beo_status(state)
        finally:
            out["stop_exit"], out["stop_s"] = stop(p, 60)
            self.live.remove(p)
        p, out["restart_s"] = self.start("beo", state)
        try:
            out["status_after_s"], out["leases_after"], err = self.beo_status(state)
            out["error"] = "; ".join(e for e in (out["error"], err) if e)
        finally:
            stop(p)
            self.live.remove(p)
        out["problems"] = log_problems(state / "server.log")
        return out


def grid(h: Harness, servers: list[str], clients: list[int], rates: list[int]) -> list[dict]:
    """Every (clients, rate), the servers in turn (order rotated per rate: the load drifts)."""
    runs = []
    for n in clients:
        for i, rate in enumerate(rates):
            k = i % len(servers)
            for s in servers[k:] + servers[:k]:
                try:
                    r = h.run_one(s, n, rate)
                except BenchError as e:
                    r = {"server": s, "clients": n, "offered": rate, "error": str(e)}
                runs.append(r)
                print(f"  {NAMES[s]:8s} {n:6d} clients @ {rate:5d}/s: " + (
                    f"failed: {r['error']}" if "error" in r else
                    f"{r['rate'] or 0:.0f} DORA/s, drops {r['DO'].get('drop_pct', '-')} % / "
                    f"{r['RA'].get('drop_pct', '-')} %, server CPU {r.get('server_cpu', 0):.2f} s, "
                    f"perfdhcp exit {r['rc']}"), file=sys.stderr)  # fmt: skip
    return runs


# -- report ----------------------------------------------------------------------


def _pct(st: dict) -> str:
    return f"{st['drop_pct']:.3g} %" if "drop_pct" in st else "-"


def run_row(r: dict, kea: dict | None) -> str:
    name = NAMES[r["server"]]
    if "error" in r:
        why = r["error"].replace("|", "/")  # a table cell
        return f"| {r['offered']} | {name} | failed: {why} |" + " |" * 9
    rate = r["rate"] or 0.0
    cpu = r.get("server_cpu")
    acks = r["RA"].get("received", 0)
    per = f"{cpu / acks * 1e6:.0f}" if cpu is not None and acks else "-"
    delay = f"{r['DO'].get('avg_ms', 0):.1f} / {r['RA'].get('avg_ms', 0):.1f}"
    vs = "-"
    if kea and r["server"] != "kea" and "error" not in kea and kea["rate"]:
        vs = f"{rate / kea['rate']:.2f}x"
    died = "" if r.get("alive", True) else " (server died)"
    return (f"| {r['offered']} | {name} | {rate:.0f}{died} | {_pct(r['DO'])} | {_pct(r['RA'])} | "
            f"{delay} | {'-' if cpu is None else f'{cpu:.2f}'} | {per} | "
            f"{r.get('rcvbuf_errors', '-')} | {r.get('late', '-')} | {r['rc']} | {vs} |")  # fmt: skip


def report(res: dict) -> str:
    out = []
    servers = res["servers"]
    for n in res["clients"]:
        runs = [r for r in res["runs"] if r["clients"] == n]
        if not runs:
            continue
        out += [f"\n## {n} clients (perfdhcp -R {n} -n {n}, broadcast)\n",
                "| offered/s | server | DORA/s | drops D-O | drops R-A | avg delay D-O / R-A ms "
                "| server CPU s | CPU µs per ACK | server rcvbuf drops | late answers "
                "| perfdhcp exit | vs Kea |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for rate in res["rates"]:
            at = {r["server"]: r for r in runs if r["offered"] == rate}
            out += [run_row(at[s], at.get("kea")) for s in servers if s in at]
    out += ["", "Notes:"] + [f"- {x}" for x in notes(res)]
    return "\n".join(out)


def notes(res: dict) -> list[str]:
    ok = [r for r in res["runs"] if "error" not in r]
    out = []
    for s in res["servers"]:
        st = [r["startup"] for r in ok if r["server"] == s]
        if st:
            out.append(f"{NAMES[s]}: start to first OFFER {min(st):.2f}-{max(st):.2f} s")
    for s, why in res["skipped"].items():
        out.append(f"{NAMES[s]} skipped: {why}")
    if ok:
        loads = [x for r in ok for x in r["load"]]
        out.append(f"1-minute load average during the runs: {min(loads):.1f}-{max(loads):.1f}")
        busy = max(ok, key=lambda r: r["client_cpu"] / max(r["wall"], 1e-9))
        out.append(f"perfdhcp's own CPU: at most {busy['client_cpu']:.2f} s in a run of "
                   f"{busy['wall']:.2f} s ({NAMES[busy['server']]}, {busy['clients']} @ "
                   f"{busy['offered']}/s)")  # fmt: skip
        short = sorted(
            {(r["clients"], r["offered"]) for r in ok if r["clients"] / r["offered"] < 2}
        )
        if short:
            out.append("runs shorter than 2 s (" + ", ".join(f"{n} @ {q}/s" for n, q in short)
                       + ") weigh start-up bursts and the in-flight tail heavily")  # fmt: skip
    if res.get("exit_wait_ms"):
        out.append(
            f"perfdhcp -W {res['exit_wait_ms']:g} ms: DORA/s is ACKs / (perfdhcp's "
            f"time - {res['exit_wait_ms']:g} ms, at least CLIENTS / offered rate); perfdhcp's "
            "own figure is in the JSON"
        )
    if res.get("versions"):
        out.append("versions: " + "; ".join(f"{k} {v}" for k, v in res["versions"].items()))
    rs = res.get("restart")
    if rs and "error" in rs and "restart_s" not in rs:
        out.append(f"beo boot restart: not measured: {rs['error']}")
    elif rs:
        f = rs["fill"]
        out.append(
            f"beo boot restart with {rs['leases_before']} leases in its store (goal < 1 s with "
            f"20,000): start to first OFFER to a new client {rs['restart_s']:.2f} s (empty "
            f"store: {rs['start_empty_s']:.2f} s); {rs['leases_after']} leases after the "
            f"restart; `beo boot status` {rs['status_s']:.2f} s before and "
            f"{rs['status_after_s']:.2f} s after (a new CLI process each); SIGTERM to exit "
            f"{rs['stop_s']:.2f} s (status {rs['stop_exit']}); filled by a closed-loop client "
            f"({rs['window']} exchanges outstanding): {f['bound']} of {rs['target']} bound in "
            f"{f['elapsed']:.1f} s ({f['bound'] / max(f['elapsed'], 1e-9):.0f} DORA/s, "
            f"{f['sent']} messages, {f['naks']} NAKs)"
            + (f"; {rs['error']}" if rs.get("error") else ""))  # fmt: skip
        out += [f"beo boot restart log: {ln}" for ln in rs.get("problems", [])]
    for r in res["runs"]:
        where = f"{NAMES[r['server']]} {r['clients']} @ {r['offered']}/s"
        if r["server"] == "beo" and "main_thread_cpu" in r:
            out.append(f"{where}: server CPU {r['main_thread_cpu']:.2f} s in the main thread, "
                       f"{r['other_threads_cpu']:.2f} s in the others (the journal writer); "
                       f"{r.get('server_sys', 0):.2f} s of the whole in the kernel")
        elif "server_sys" in r:
            out.append(f"{where}: server CPU {r['server_cpu']:.2f} s, {r['server_sys']:.2f} s "
                       "of it in the kernel")
        if res.get("exit_wait_ms") and "RA" in r:
            out.append(f"{where}: {r['RA'].get('received', 0)} of {r['clients']} exchanges "
                       "completed")
        shed = {k.removeprefix("dhcp-shed-"): v for k, v in r.get("counters", {}).items()
                if k.startswith("dhcp-shed-")}  # fmt: skip
        if shed:
            out.append(f"{where}: requests dropped by the overload rule: " + ", ".join(
                f"{v} {k}" for k, v in sorted(shed.items())))  # fmt: skip
        prof = r.get("profile")
        if prof and prof.get("samples"):
            n = prof["samples"]
            out.append(f"{where}, py-spy ({n} samples, {prof['file']}): " + ", ".join(
                f"{k} {v / n:.0%}" for k, v in prof["parts"].items()) + "; most own samples: "
                + ", ".join(f"{f} {c / n:.0%}" for f, c in prof["top"][:6]))  # fmt: skip
        elif prof:
            out.append(f"{where}: no profile: {prof.get('error', '')}")
        if "error" not in r and r["rate"] is None:
            out.append(f"{where}: no perfdhcp report (exit {r['rc']}): {r.get('output', '')}")
        if r.get("exit") not in (None, 0, -15):
            out.append(f"{where}: server exit status {r['exit']} when stopped")
        out += [f"{where} log: {ln}" for ln in r.get("problems", [])]
    return out


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cl = [n for n in res["clients"] if any(r["clients"] == n for r in res["runs"])]
    fig, axes = plt.subplots(1, len(cl), figsize=(max(6.0, 4.5 * len(cl)), 4), squeeze=False)
    for ax, n in zip(axes[0], cl, strict=True):
        top = max(res["rates"])
        ax.plot([0, top], [0, top], ":", color="grey", label="offered")
        for s in res["servers"]:
            pts = sorted((r["offered"], r["rate"] or 0) for r in res["runs"]
                         if r["clients"] == n and r["server"] == s and "error" not in r)  # fmt: skip
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", label=NAMES[s])
        ax.set_title(f"{n} clients")
        ax.set_xlabel("offered DORA/s (perfdhcp -r)")
        ax.set_ylabel("DORA/s completed")
        ax.legend(fontsize=8)
    fig.suptitle("perfdhcp: DORA/s completed against offered")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# -- main -----------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"bench_dhcp: {message}", file=sys.stderr)
        sys.exit(2)


def int_list(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad list {text!r}: e.g. 1000,5000") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"bad list {text!r}: positive integers, e.g. 1000,5000")
    return vals


def server_list(text: str) -> list[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in vals if x not in NAMES]
    if bad or not vals:
        raise argparse.ArgumentTypeError(f"bad server {(bad or [text])[0]!r}: beo, kea, dnsmasq")
    return list(dict.fromkeys(vals))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = OneLineParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int_list, help="distinct clients per run "
                    "(default 1000,5000,20000)")  # fmt: skip
    ap.add_argument("--rates", type=int_list, help="offered DORA/s (default 1000,2000,4000,8000)")
    ap.add_argument("--servers", type=server_list, default=["beo", "kea", "dnsmasq"],
                    help="any of beo,kea,dnsmasq (default all three)")  # fmt: skip
    ap.add_argument("--seconds", type=int, default=0,
                    help="perfdhcp -p bound per run (default 2 x clients / rate + 1)")  # fmt: skip
    ap.add_argument("--exit-wait-ms", type=float, default=0.0,
                    help="perfdhcp -W: wait this long for answers after the last DISCOVER "
                    "(default 0; perfdhcp's rate then includes the wait)")  # fmt: skip
    ap.add_argument("--restart-leases", type=int, help="leases for the beo boot restart "
                    "measurement (default 20000; 0 = skip)")  # fmt: skip
    ap.add_argument(
        "--fill-window",
        type=int,
        default=64,
        help="exchanges outstanding while the restart's store is filled (default 64)",
    )
    ap.add_argument(
        "--fill-timeout",
        type=float,
        default=600.0,
        help="stop filling after this many seconds (default 600)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 500 clients at 500 and "
                    "2000/s, restart with 2000 leases")  # fmt: skip
    ap.add_argument("--json", metavar="PATH", help="save the raw results")
    ap.add_argument("--profile", metavar="DIR", help="sample beo boot with py-spy during each "
                    "run (py-spy beside the interpreter); raw stacks saved in DIR, shares "
                    "printed")  # fmt: skip
    ap.add_argument("--png", metavar="PATH", help="plot DORA/s against offered rate (matplotlib)")
    ap.add_argument("--keep", action="store_true", help="keep each run's directory (configs, "
                    "logs, lease files) and print where")  # fmt: skip
    a = ap.parse_args(argv)
    a.clients = a.clients or ([500] if a.quick else [1000, 5000, 20000])
    a.rates = a.rates or ([500, 2000] if a.quick else [1000, 2000, 4000, 8000])
    if a.restart_leases is None:
        a.restart_leases = 2000 if a.quick else 20000
    if (
        min(a.restart_leases, a.seconds, a.exit_wait_ms) < 0
        or a.fill_window < 1
        or not (0 < a.fill_timeout <= 3600)
    ):
        ap.error("bad --restart-leases/--seconds/--exit-wait-ms (>= 0), --fill-window (>= 1) "
                 "or --fill-timeout (0-3600 s)")  # fmt: skip
    if max(a.clients + [a.restart_leases]) > 120_000:
        ap.error(f"bad --clients {max(a.clients)}: at most 120000 (the pool of a /15)")
    return a


def missing(servers: list[str]) -> tuple[str, dict[str, str]]:
    """What stops the whole benchmark (or ''), and why each server must be skipped."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)", {}
    for tool, pkg in (("ip", "iproute2"), ("perfdhcp", "kea-admin")):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian package {pkg})", {}
    skip = {}
    if "kea" in servers and shutil.which("kea-dhcp4") is None:
        skip["kea"] = "kea-dhcp4 not found (Debian package kea-dhcp4-server)"
    if "dnsmasq" in servers and shutil.which("dnsmasq") is None:
        skip["dnsmasq"] = "dnsmasq not found (Debian package dnsmasq-base)"
    if "beo" in servers and importlib.util.find_spec("beokit") is None:
        skip["beo"] = f"beokit is not importable by {PY} (run with the repository's .venv)"
    return "", skip


def versions(servers: list[str]) -> dict[str, str]:
    """One line per program, for the record."""
    cmds = {"perfdhcp": ("perfdhcp", ["perfdhcp", "-v"]), "kea": ("kea-dhcp4", ["kea-dhcp4", "-v"]),
            "dnsmasq": ("dnsmasq", ["dnsmasq", "--version"]),
            "beo": ("beokit git", ["git", "-C", str(Path(__file__).parent), "describe",
                                   "--always", "--dirty"])}  # fmt: skip
    out = {}
    for name, (label, cmd) in cmds.items():
        if name in ("perfdhcp", *servers):
            try:
                cp = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
                line = (cp.stdout.strip() or cp.stderr.strip()).splitlines()[0]
                out[label] = line.split("Copyright")[0].replace("VERSION:", "").strip()
            except (OSError, IndexError, subprocess.TimeoutExpired):
                out[label] = "?"
    return out


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fatal, skipped = missing(args.servers)
    if fatal:
        print(f"bench_dhcp: skipped: {fatal}", file=sys.stderr)
        return 0
    servers = [s for s in args.servers if s not in skipped]
    for s, why in skipped.items():
        print(f"bench_dhcp: {NAMES[s]} skipped: {why}", file=sys.stderr)
    if not servers:
        print("bench_dhcp: skipped: no server left to run", file=sys.stderr)
        return 0
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    res: dict = {"servers": servers, "clients": args.clients, "rates": args.rates,
                 "skipped": skipped, "argv": sys.argv, "started": time.time(),
                 "subnet": subnet_for(max(args.clients + [args.restart_leases])),
                 "versions": versions(servers), "exit_wait_ms": args.exit_wait_ms}  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    os.chmod(tmp, 0o755)  # dnsmasq and kea read their files from here
    try:
        with netns_lock(), NetnsPair(PREFIX, res["subnet"]) as pair:
            h = Harness(pair, tmp, args)
            try:
                res["runs"] = grid(h, servers, args.clients, args.rates)
                if "beo" in servers and args.restart_leases:
                    try:
                        res["restart"] = h.restart(args.restart_leases)
                    except BenchError as e:
                        res["restart"] = {"error": str(e)}
            finally:
                h.kill_all()
    except KeyboardInterrupt:
        print("bench_dhcp: interrupted; namespaces removed", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"bench_dhcp: run directories kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    if args.png:
        if importlib.util.find_spec("matplotlib") is None:
            print(f"bench_dhcp: --png {args.png} skipped: matplotlib is not importable by {PY}",
                  file=sys.stderr)  # fmt: skip
        else:
            plot(res, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
