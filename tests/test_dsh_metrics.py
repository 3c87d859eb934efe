"""beo dshd --metrics-port (Prometheus text format, scraped with curl), the shared
exporter (beokit.metrics), and the hint of a dshd without a cluster file."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from dsh_fixture import BEO, addr, cluster, free_ports, wait_for

from beokit import metrics


def scrape(url: str) -> dict[str, float]:
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "5", "-D", "-", url], capture_output=True,
                       text=True, timeout=10)  # fmt: skip
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition("\n\n")  # text mode: \r\n read as \n
    assert head.startswith("HTTP/1.0 200") and "version=0.0.4" in head, head
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_render_is_the_text_format() -> None:
    families = [metrics.gauge("m_up", "members up", 3),
                metrics.counter("p_total", 'packets "in"\nand out', 5, direction="in")
                .add(7.5, direction="out")]  # fmt: skip
    assert metrics.render(families).decode() == (
        "# HELP m_up members up\n# TYPE m_up gauge\nm_up 3\n"
        '# HELP p_total packets "in"\\nand out\n# TYPE p_total counter\n'
        'p_total{direction="in"} 5\np_total{direction="out"} 7.5\n')


def test_from_counts_is_one_labelled_family() -> None:
    family = metrics.from_counts("beokit_boot_events_total", "events", {"tftp-done": 3,
                                                                        "dhcp-offer": 2})
    assert metrics.render([family]).decode().splitlines()[2:] == [
        'beokit_boot_events_total{event="dhcp-offer"} 2',
        'beokit_boot_events_total{event="tftp-done"} 3']


@pytest.mark.parametrize(("line", "status"), [
    (b"GET /metrics HTTP/1.1", b"200"), (b"GET / HTTP/1.0", b"200"),
    (b"GET /other HTTP/1.1", b"404"), (b"POST /metrics HTTP/1.1", b"405"),
    (b"garbage", b"400"),
])  # fmt: skip
def test_answers(line: bytes, status: bytes) -> None:
    assert metrics.answer(line, list).split(b" ")[1] == status


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_dshd_metrics_scraped_with_curl(tmp_path: Path) -> None:
    mport = free_ports([addr(1), addr(2)], 1, (socket.SOCK_STREAM,))[0]
    with cluster(tmp_path, 2, extra=["--metrics-port", str(mport)]) as c:
        url = f"http://{addr(1)}:{mport}/metrics"
        wait_for(lambda: scrape(url).get("beokit_dshd_members_up") == 2, 20, "2 members up")
        # a datagram from an address that is no member: rejected
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.77", 0))
            s.sendto(b"\x00" * 40, (addr(1), c.gossip))
        c.status_json(1)  # a query

        def counted() -> dict[str, float] | None:
            m = scrape(url)
            bad = m["beokit_dshd_rejected_packets_total"] + m["beokit_dshd_bad_packets_total"]
            return m if bad >= 1 and m["beokit_dshd_queries_total"] >= 1 else None

        m = wait_for(counted, 20, "the foreign datagram and the query counted")
        assert m["beokit_dshd_members"] == 2
        assert m['beokit_dshd_gossip_packets_total{direction="in"}'] > 0
        assert m['beokit_dshd_gossip_packets_total{direction="out"}'] > 0


def test_dshd_metrics_port_taken_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cluster").write_text(f"{addr(1)}\n")
    gossip, status, best = free_ports([addr(1)], 3)
    with socket.socket() as busy:
        busy.bind((addr(1), 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = subprocess.run([*BEO, "dshd", "-f", str(tmp_path / "cluster"), "--bind", addr(1),
                            "--metrics-port", str(port), "-g", str(gossip), "-t", str(status),
                            "-r", str(best)], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and f"bad --metrics-port {port}" in r.stderr, r.stderr


def test_dshd_without_cluster_file_says_how_to_make_one(tmp_path: Path) -> None:
    missing = tmp_path / "dsh.cluster"
    r = subprocess.run([*BEO, "dshd", "-f", str(missing)], capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "beo config example dsh-cluster" in r.stderr, r.stderr
