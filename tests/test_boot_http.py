"""Issue 11: HTTP boot (Range, root rules, iPXE chain from TFTP to HTTP) on loopback."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import os
import signal
import subprocess
import time

import pytest
from boot_helpers import PORTS, SERVER, Server, write_config

from beokit.boot.http import parse_range

HTTP = PORTS["http"]


@pytest.fixture
def served(tmp_path):
    cfg = write_config(tmp_path, '[boot]\nipxe_script = "boot.ipxe"\nkernel = "vmlinuz"\n'
                       'initrd = "initrd.img"\ncmdline = "console=ttyS0 root=nfs"\n')  # fmt: skip
    root = tmp_path / "root"
    (root / "vmlinuz").write_bytes(os.urandom(1 << 20))
    (root / "initrd.img").write_bytes(os.urandom(5 * (1 << 20) + 3))
    (tmp_path / "secret").write_text("secret")
    os.symlink(tmp_path / "secret", root / "escape")
    with Server(cfg, "--http-port", str(HTTP)) as srv:
        yield srv, root


def get(path: str, headers: dict | None = None, method: str = "GET"):
    c = http.client.HTTPConnection(SERVER, HTTP, timeout=20)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r, body


def test_range_parsing():
    assert parse_range("bytes=0-99", 1000) == (0, 99)
    assert parse_range("bytes=900-", 1000) == (900, 999)
    assert parse_range("bytes=-100", 1000) == (900, 999)
    assert parse_range("bytes=990-5000", 1000) == (990, 999)
    for bad in ("bytes=1000-", "bytes=5-1", "items=0-1", "bytes=-", "bytes=-0"):
        with pytest.raises(ValueError):
            parse_range(bad, 1000)


def test_ipxe_chain_from_tftp_to_http(served, tmp_path):
    srv, root = served
    out = tmp_path / "boot.ipxe"
    cp = subprocess.run(["curl", "-sS", "--max-time", "20", "-o", str(out),
                         f"tftp://{SERVER}:{PORTS['tftp']}/boot.ipxe"], timeout=30)  # fmt: skip
    assert cp.returncode == 0
    script = out.read_text().splitlines()
    assert script[0] == "#!ipxe" and script[-1] == "boot"
    urls = [line.split()[1] for line in script if line.startswith(("kernel", "initrd"))]
    assert urls == [f"http://{SERVER}:{HTTP}/vmlinuz", f"http://{SERVER}:{HTTP}/initrd.img"]
    assert "console=ttyS0 root=nfs" in script[2]
    for url in urls:
        name = url.rsplit("/", 1)[1]
        cp = subprocess.run(["curl", "-sS", "--max-time", "20", "-o", str(tmp_path / name), url],
                            timeout=30)  # fmt: skip
        assert cp.returncode == 0
        assert (tmp_path / name).read_bytes() == (root / name).read_bytes()


def test_range_head_errors_and_root_rules(served):
    srv, root = served
    data = (root / "initrd.img").read_bytes()
    r, body = get("/initrd.img", {"Range": "bytes=1000-1999"})
    assert r.status == 206 and body == data[1000:2000]
    assert r.getheader("Content-Range") == f"bytes 1000-1999/{len(data)}"
    r, body = get("/initrd.img", {"Range": "bytes=-10"})
    assert r.status == 206 and body == data[-10:]
    r, _ = get("/initrd.img", {"Range": f"bytes={len(data)}-"})
    assert r.status == 416
    r, body = get("/initrd.img", method="HEAD")
    assert r.status == 200 and body == b"" and int(r.getheader("Content-Length")) == len(data)
    for bad in ("/escape", "/../secret", "/%2e%2e/secret"):
        assert get(bad)[0].status == 403
    assert get("/missing")[0].status == 404
    assert get("/vmlinuz", method="POST")[0].status == 405
    srv.wait_log("HTTP", count=3)
    assert "refused" in srv.text()


def test_many_concurrent_clients_and_per_client_accounting(served):
    srv, root = served
    want = hashlib.sha256((root / "initrd.img").read_bytes()).hexdigest()

    def fetch(_):
        c = http.client.HTTPConnection(SERVER, HTTP, timeout=30)
        c.request("GET", "/initrd.img")
        h = hashlib.sha256()
        r = c.getresponse()
        while chunk := r.read(1 << 16):
            h.update(chunk)
        c.close()
        return h.hexdigest()

    with concurrent.futures.ThreadPoolExecutor(24) as ex:
        futures = [ex.submit(fetch, i) for i in range(24)]
        srv.signal(signal.SIGUSR1)
        digests = [f.result(60) for f in futures]
    assert digests == [want] * 24
    text = srv.wait_log("SIGUSR1 state")
    assert "http-connections" in text


def test_http_shares_the_bandwidth_cap(tmp_path):
    cfg = write_config(tmp_path, '[tftp]\nbandwidth = "64mbit"\n')
    data = os.urandom(2 << 20)
    (tmp_path / "root" / "img").write_bytes(data)
    with Server(cfg, "--http-port", str(HTTP)):
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(4) as ex:

            def timed(_):
                body = get("/img")[1]
                return time.monotonic() - t0, body == data

            res = list(ex.map(timed, range(4)))
        wall = time.monotonic() - t0
    assert all(ok for _, ok in res)
    # 8 MiB at 64 Mbit/s (8 MB/s) takes about 1 s whatever the clients could take
    assert wall > 0.8
    times = [t for t, _ in res]
    assert min(times) / max(times) > 0.6, times
