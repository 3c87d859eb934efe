"""beo boot --metrics-port (issue 25): Prometheus text format served from the
server's own loop, scraped with a real curl after real DHCP, TFTP and HTTP
exchanges; a scraper that never finishes its request stalls nothing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from boot_helpers import Server

from beokit.boot import loadgen

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
ADDR, RELAY = "127.0.25.1", "127.0.25.2"  # addresses no other boot test uses


def free_ports(n: int) -> list[int]:
    """``n`` ports free for TCP and UDP on ADDR and RELAY (the relay binds the DHCP port)."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind((ADDR, 0))
            p = s.getsockname()[1]
        try:
            for a in (ADDR, RELAY):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as t:
                        t.bind((a, p))
        except OSError:
            continue
        if p not in ports:
            ports.append(p)
    return ports


def config(tmp: Path, server: str = "") -> Path:
    (tmp / "root").mkdir(exist_ok=True)
    (tmp / "root" / "pxelinux.0").write_bytes(b"x" * 100_000)
    cfg = tmp / "boot.toml"
    cfg.write_text(f"""
[server]
address = "{ADDR}"
root = "root"
lease_file = "leases.json"
control = "ctl.sock"
{server}

[network]
subnet = "127.0.0.0/16"
pool = "127.0.40.0-127.0.40.255"

[nodes]
base = "127.0.48.0"
count = 100
""")
    return cfg


def start(cfg: Path, *args: str) -> tuple[Server, dict[str, int]]:
    dhcp, tftp, http = free_ports(3)
    ports = {"dhcp": dhcp, "tftp": tftp, "dns": 0, "pxe": 0, "http": http}
    return Server(cfg, "--http-port", str(http), *args, ports=ports, bind=ADDR), ports


def scrape(port: int) -> dict[str, float]:
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "5", "-D", "-",
                        f"http://{ADDR}:{port}/metrics"], capture_output=True, text=True,
                       timeout=10)  # fmt: skip
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.0 200") and "version=0.0.4" in head, head
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in body.splitlines() if line and line[0] != "#")}  # fmt: skip


def curl(url: str, out: Path) -> None:
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "20", "-o", str(out), url],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr


@needs_curl
def test_counters_move_after_dhcp_tftp_and_http(tmp_path: Path) -> None:
    (mport,) = free_ports(1)
    srv, ports = start(config(tmp_path), "--metrics-port", str(mport))
    with srv:
        before = scrape(mport)
        assert before["beokit_boot_leases"] == 0
        assert before['beokit_boot_dhcp_answers_total{type="offer"}'] == 0
        # a scraper that connects and never sends its request holds up nothing
        with socket.create_connection((ADDR, mport), timeout=5) as idle:
            idle.sendall(b"GET /metrics HTTP/1.0\r\n")
            res = loadgen.dora((ADDR, ports["dhcp"]), RELAY, 3, timeout=20)
            assert len(res.bound) == 3
            curl(f"tftp://{ADDR}:{ports['tftp']}/pxelinux.0", tmp_path / "t.out")
            curl(f"http://{ADDR}:{ports['http']}/pxelinux.0", tmp_path / "h.out")
            m = scrape(mport)
        assert m["beokit_boot_leases"] == 3
        assert m['beokit_boot_dhcp_answers_total{type="offer"}'] >= 3
        assert m['beokit_boot_dhcp_answers_total{type="ack"}'] >= 3
        assert m["beokit_boot_dhcp_requests_total"] >= 6
        assert m['beokit_boot_bytes_total{protocol="tftp"}'] >= 100_000  # with the headers
        assert m['beokit_boot_bytes_total{protocol="http"}'] == 100_000
        assert m['beokit_boot_transfers_total{protocol="tftp",result="done"}'] == 1
        assert m['beokit_boot_transfers_total{protocol="http",result="done"}'] == 1
        assert m['beokit_boot_transfers{protocol="tftp"}'] == 0
        assert m['beokit_boot_events_total{event="tftp-done"}'] == 1
        assert m['beokit_boot_dhcp_dropped_total{reason="shed-full"}'] == 0
        assert m["beokit_boot_uptime_seconds"] > 0


@needs_curl
def test_metrics_port_from_the_config(tmp_path: Path) -> None:
    (mport,) = free_ports(1)
    srv, _ = start(config(tmp_path, f"metrics_port = {mport}"))
    with srv:
        assert scrape(mport)["beokit_boot_leases"] == 0


def beo_boot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beokit.cli", "boot", *args],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def test_a_taken_metrics_port_is_one_line_and_status_2(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    dhcp, tftp = free_ports(2)
    base = ["-c", str(cfg), "--bind", ADDR, "--dhcp-port", str(dhcp), "--tftp-port", str(tftp),
            "--dns-port", "0"]  # fmt: skip
    with socket.socket() as taken:
        taken.bind((ADDR, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        r = beo_boot(*base, "--metrics-port", str(port))
        assert r.returncode == 2 and time.monotonic() - t0 < 20, r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"beo boot: bad --metrics-port {port}: cannot listen"), r.stderr
        cfg.write_text(cfg.read_text().replace('control = "ctl.sock"',
                                               f'control = "ctl.sock"\nmetrics_port = {port}'))
        r = beo_boot(*base)
        assert r.returncode == 2 and f"bad server.metrics_port {port}" in r.stderr, r.stderr
    r = beo_boot(*base, "--http-port", str(tftp), "--metrics-port", str(tftp))
    assert r.returncode == 2 and "the HTTP boot port" in r.stderr, r.stderr


@pytest.mark.parametrize(("value", "message"), [("70000", "bad port '70000'"),
                                                ("x", "bad port 'x'")])  # fmt: skip
def test_bad_metrics_port_value(tmp_path: Path, value: str, message: str) -> None:
    r = beo_boot("-c", str(config(tmp_path)), "--metrics-port", value)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_bad_metrics_port_key(tmp_path: Path) -> None:
    r = beo_boot("-c", str(config(tmp_path, 'metrics_port = "x"')), "--check")
    assert r.returncode == 2 and "bad server.metrics_port 'x'" in r.stderr, r.stderr


def test_help_names_the_example_config() -> None:
    r = beo_boot("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "example: beo config example boot" in text and "contrib/" not in text
    assert "--metrics-port PORT" in text
