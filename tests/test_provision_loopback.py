"""Provisioning end to end on loopback: beo boot serves the topology files (TFTP),
`beo boot provision` runs the round, `beo provision node` runs on 127.0.3.x.

A node that never boots: the chain forms without it after join_wait, the round
names it.  A node that boots after the round started: a follow-up round of its
own, the others undisturbed.  The image changed after it was pinned: refused."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from boot_helpers import Server

from beokit.net import free_port

SERVER = "127.0.2.23"
NODES = [f"127.0.3.{i}" for i in range(1, 6)]


def setup(tmp: Path, start_after: int, size: int = 8_000_000) -> tuple[Path, int]:
    port = free_port([SERVER, *NODES[:4]])
    (tmp / "root").mkdir()
    (tmp / "image.bin").write_bytes(os.urandom(size))
    cfg = tmp / "boot.toml"
    cfg.write_text(f"""
[server]
address = "{SERVER}"
root = "root"
control = "ctl.sock"
[network]
subnet = "127.0.0.0/16"
[nettee]
order = "head,127.0.3.[1-5]"
port = {port}
join_wait = 1
parent_wait = 60
[provision]
image = "image.bin"
target = "{tmp}/never-used"
start_after = {start_after}
start_wait = 60
""")
    return cfg, port


def beo(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "beokit.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip


def node(tmp: Path, i: int) -> subprocess.Popen:
    name = f"127.0.3.{i}"
    return beo("provision", "node", "--name", name, "--server", SERVER, "--tftp-port", "10069",
               "--bind", name, "--target", str(tmp / f"out{i}.bin"), "--wait", "90", "-v",
               log=tmp / f"node{i}.log")  # fmt: skip


def wait_text(path: Path, needle: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in {path}:\n{path.read_text() if path.exists() else ''}")


def finish(procs: list[subprocess.Popen], timeout: float = 90) -> list[int]:
    out = []
    for p in procs:
        try:
            out.append(p.wait(timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            out.append(p.wait())
    return out


def test_round_skips_a_dead_node_and_gives_a_late_one_a_follow_up(tmp_path):
    cfg, _ = setup(tmp_path, start_after=3)
    srv = Server(cfg, bind=SERVER, ports={"dhcp": 0, "dns": 0, "tftp": 10069})
    procs = []
    try:
        rnd = beo("boot", "-c", str(cfg), "provision", "--bind", SERVER, log=tmp_path / "round.log")
        procs = [node(tmp_path, i) for i in (1, 2, 4)]
        wait_text(tmp_path / "round.log", "round 1: starting")
        procs.append(node(tmp_path, 3))  # boots while round 1 streams
        codes = finish([rnd, *procs])
        text = (tmp_path / "round.log").read_text()
        assert codes[0] == 1, text  # 127.0.3.5 never booted
        assert "4 of 5 node(s) verified" in text and "never booted: 127.0.3.5" in text, text
        assert "follow-up round for 127.0.3.3" in text, text
        assert codes[1:] == [0, 0, 0, 0]
        want = hashlib.sha256((tmp_path / "image.bin").read_bytes()).hexdigest()
        for i in (1, 2, 3, 4):
            assert hashlib.sha256((tmp_path / f"out{i}.bin").read_bytes()).hexdigest() == want
        status = subprocess.run([sys.executable, "-m", "beokit.cli", "boot", "-c", str(cfg),
                                 "provision", "--status"], capture_output=True, text=True,
                                check=True).stdout  # fmt: skip
        assert '"absent": [\n   "127.0.3.5"' in status
    finally:
        finish(procs, 1)
        srv.stop()


def test_image_changed_after_the_pin_is_refused(tmp_path):
    cfg, _ = setup(tmp_path, start_after=2)
    procs = []
    try:
        rnd = beo("boot", "-c", str(cfg), "provision", "--bind", SERVER, log=tmp_path / "round.log")
        wait_text(tmp_path / "round.log", "reports on udp")
        with open(tmp_path / "image.bin", "ab") as fh:
            fh.write(b"changed")
        srv = Server(cfg, bind=SERVER, ports={"dhcp": 0, "dns": 0, "tftp": 10069})
        procs = [node(tmp_path, 1), node(tmp_path, 2)]
        assert finish([rnd])[0] == 1
        text = (tmp_path / "round.log").read_text()
        assert "changed since the round began" in text and "refused" in text, text
        assert not (tmp_path / "out1.bin").exists() or (tmp_path / "out1.bin").stat().st_size == 0
    finally:
        for p in procs:
            p.kill()
        finish(procs, 5)
        srv.stop()


def test_bad_provision_value_is_one_line_exit_2(tmp_path):
    cfg, _ = setup(tmp_path, start_after=2)
    cfg.write_text(cfg.read_text().replace("start_after = 2", "start_after = 99"))
    r = subprocess.run([sys.executable, "-m", "beokit.cli", "boot", "-c", str(cfg), "provision"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "provision.start_after" in r.stderr
    r = subprocess.run([sys.executable, "-m", "beokit.cli", "provision", "node"],
                       capture_output=True, text=True, env={**os.environ, "hostname": ""})  # fmt: skip
    assert r.returncode == 2 and "no siaddr" in r.stderr or "bad node name" in r.stderr, r.stderr
