"""Provisioning at scale on one box: 32 vcluster namespaces each take a lease from
beo boot with busybox udhcpc (option 224), then run `beo provision node`; one
round sends one image down the chain.  Faults in the same run: one node never
boots (the chain forms without it after join_wait, the round names it), one is
killed mid-stream (healed around, named); every other copy is checked by sha256.

Run it under `flock /tmp/beokit-netns.lock` when other namespace tests may run."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from boot_helpers import Server
from vcluster_fixture import needs_vcluster, vcluster  # noqa: F401

from beokit.provision.node import MEMORY_FS, filesystem_type

pytestmark = [pytest.mark.root, pytest.mark.slow, needs_vcluster,
              pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox")]  # fmt: skip

NODES = 32
NEVER = 20  # node20 never powers on
KILLED = 10  # node10 is killed mid-stream
SIZE = 24 << 20
SCRIPT = """#!/bin/sh
case "$1" in bound|renew)
  ip addr add "$ip/$mask" dev "$interface" 2>/dev/null
  env > "{tmp}/lease$(cat /sys/class/net/eth0/address | tr -d :).env" ;;
esac
exit 0
"""


def write_config(tmp: Path, vc, macs: dict[str, int]) -> Path:
    net = vc.plan.network(0)
    (tmp / "root").mkdir()
    os.chmod(tmp, 0o755)
    (tmp / "image.bin").write_bytes(os.urandom(SIZE))
    m = "\n".join(f'"{k}" = {v}' for k, v in macs.items())
    cfg = tmp / "boot.toml"
    cfg.write_text(f"""
[server]
address = "{vc.addr(1)}"
root = "root"
control = "ctl.sock"
[network]
subnet = "{net}"
[nodes]
base = "{net.network_address + 256}"
count = 100
[nodes.macs]
{m}
[nettee]
order = "boot,node[1-{NODES}]"
join_wait = 1
parent_wait = 120
[provision]
image = "image.bin"
target = "/nonexistent"
start_after = {NODES - 1}
start_wait = 90
""")
    return cfg


def node_shell(tmp: Path, target: Path) -> str:
    lease = f"{tmp}/lease$(cat /sys/class/net/eth0/address | tr -d :).env"
    return (f"busybox udhcpc -i eth0 -q -f -t 10 -T 1 -O 224 -s {tmp}/udhcpc.sh >/dev/null 2>&1 "
            f"&& exec {sys.executable} -m beokit.cli provision node --lease {lease} "
            f"--target {target} --wait 150 -v")  # fmt: skip


def test_32_namespaces_dhcp_then_chain(vcluster, tmp_path):  # noqa: F811
    t0 = time.monotonic()
    vc = vcluster(n=NODES + 1, rate="200mbit", prefix="bkpv")
    macs = {vc.exec(h, "cat", "/sys/class/net/eth0/address").stdout.strip(): h - 1
            for h in range(2, NODES + 2)}  # fmt: skip
    cfg = write_config(tmp_path, vc, macs)
    (tmp_path / "udhcpc.sh").write_text(SCRIPT.format(tmp=tmp_path))
    (tmp_path / "udhcpc.sh").chmod(0o755)
    # odd nodes write into a tmpfs (the diskless root: nettee's digest of the file is
    # the check), even ones onto the disk (read back after the stream)
    shm = Path(tempfile.mkdtemp(prefix="bkpv", dir="/dev/shm"))
    out = {n: (shm if n % 2 else tmp_path) / f"out{n}.bin" for n in range(1, NODES + 1)}
    srv = Server(cfg, bind="0.0.0.0", ns=vc.ns(1),
                 ports={"dhcp": 67, "tftp": 69, "dns": 0, "pxe": 0})  # fmt: skip
    procs: list[subprocess.Popen] = []
    try:
        rlog = (tmp_path / "round.log").open("wb")
        rnd = vc.popen(1, sys.executable, "-m", "beokit.cli", "boot", "-c", str(cfg), "provision",
                       stdout=rlog, stderr=subprocess.STDOUT)  # fmt: skip
        for n in range(1, NODES + 1):
            if n != NEVER:
                procs.append(vc.popen(n + 1, "sh", "-c", node_shell(tmp_path, out[n]),
                                      stdout=subprocess.DEVNULL,
                                      stderr=(tmp_path / f"node{n}.log").open("wb")))  # fmt: skip
        victim = out[KILLED]
        deadline = time.monotonic() + 150
        while not (victim.exists() and victim.stat().st_size > SIZE // 4):
            assert time.monotonic() < deadline and rnd.poll() is None, (tmp_path / "round.log").read_text()
            time.sleep(0.02)
        vc.kill(KILLED + 1)  # every process of node10's namespace
        assert victim.stat().st_size < SIZE, "the stream ended before the kill"
        code = rnd.wait(180)
        text = (tmp_path / "round.log").read_text()
        print(text[-3000:])
        assert code == 1, text
        assert f"{NODES - 2} of {NODES} node(s) verified" in text, text
        assert f"never booted: node{NEVER}" in text, text
        assert f"failed: node{KILLED}" in text, text
        want = hashlib.sha256((tmp_path / "image.bin").read_bytes()).hexdigest()
        for n in range(1, NODES + 1):
            if n not in (NEVER, KILLED):
                got = hashlib.sha256(out[n].read_bytes()).hexdigest()
                assert got == want, f"node{n}"
        for p in procs:
            p.wait(30)
        logs = {n: (tmp_path / f"node{n}.log").read_text() for n in (1, 2)}
        if filesystem_type(str(tmp_path)) not in MEMORY_FS:  # /tmp is a tmpfs on some hosts
            assert "read back from" in logs[2], logs[2]
        if filesystem_type(str(shm)) == "tmpfs":
            assert "as nettee wrote it (tmpfs)" in logs[1], logs[1]
        print(f"32-namespace provisioning test: {time.monotonic() - t0:.1f} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        srv.stop()
        shutil.rmtree(shm, ignore_errors=True)
