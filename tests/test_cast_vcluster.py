"""beo cast on the virtual cluster (root): a shaped switch, receivers in namespaces."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cast_helpers import by_host, cast
from vcluster_fixture import VCluster, make_cluster, needs_vcluster

from beokit.cast.root import nettee_flags
from beokit.vcluster import plan

pytestmark = [needs_vcluster, pytest.mark.root]
PREFIX = "bkc"
HEAL = "-heal" in nettee_flags()


@pytest.fixture(scope="module")
def vc() -> Iterator[VCluster]:
    cluster = make_cluster(4, "100mbit", PREFIX)
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def shm() -> Iterator[Path]:
    d = Path("/dev/shm") / f"bkc-vc-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _args(vc: VCluster) -> list[str]:
    return ["-R", f"ip netns exec {vc.prefix}-{{host}} sh -c {{cmd}}",
            "--remote-python", sys.executable,
            "--resolve", f"/etc/netns/{vc.ns(1)}/hosts"]  # fmt: skip


@pytest.mark.parametrize("fanout", ["8", "2"])
def test_file_to_every_host_at_port_rate(vc: VCluster, shm: Path, fanout: str) -> None:
    """--fanout 2: host1 and host3 run launcher agents in their namespaces, which
    start the receivers of host2 and host4 (the launch tree of beo run)."""
    src = shm / "img"
    src.write_bytes(os.urandom(8 << 20))
    rc, doc, _, err = cast(*_args(vc), "--fanout", fanout, str(src), "host[1-4]", "--to",
                           f"{shm}/{{host}}")  # fmt: skip
    assert rc == 0, err
    assert doc is not None
    assert doc["launch"]["depth"] == (1 if fanout == "8" else 2)
    for h, n in by_host(doc).items():
        assert (n["status"], n["digest"]) == ("OK", "ok"), n
        assert filecmp.cmp(src, shm / h, shallow=False)
        # every node's rate is the port's (100 Mbit/s = 12.5 MB/s), not loopback's
        assert n["mb_per_s"] < 13.5, n


def test_host_killed_mid_cast(vc: VCluster, shm: Path) -> None:
    src = shm / "img"
    src.write_bytes(os.urandom(40 << 20))  # 3.4 s at the port rate

    def kill_host3() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # host3 is writing (its temporary copy): pull the plug
            for part in shm.glob(".host3.beo-cast-*"):
                try:
                    if part.stat().st_size > 4 << 20:
                        vc.kill(3)
                        return
                except OSError:
                    pass
            time.sleep(0.05)

    t = threading.Thread(target=kill_host3, daemon=True)
    t.start()
    rc, doc, _, err = cast(*_args(vc), str(src), "host[1-4]", "--to", f"{shm}/{{host}}")
    t.join(timeout=5)
    assert rc == 1, err
    assert doc is not None
    nodes = by_host(doc)
    assert nodes["host3"]["status"] != "OK" and "LOST" in nodes["host3"]["codes"]
    assert not (shm / "host3").exists()  # its DEST was never replaced by a partial copy
    for h in ("host1", "host2"):
        assert nodes[h]["status"] == "OK", nodes[h]
        assert filecmp.cmp(src, shm / h, shallow=False)
    assert (nodes["host4"]["status"] == "OK") == HEAL, nodes["host4"]
    assert "host3: " in err
    # nothing of the run is left in any host
    left = subprocess.run(["ip", "netns", "pids", vc.ns(2)], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_directory_tree(vc: VCluster, shm: Path) -> None:
    tree = shm / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("welcome\n")
    (tree / "etc" / "cache.tmp").write_text("skip me")
    (tree / "motd").symlink_to("etc/motd")
    os.chmod(tree / "etc", 0o750)
    rc, doc, _, err = cast(*_args(vc), "--exclude", "*.tmp", str(tree), "host[1-4]", "--to",
                           f"{shm}/dst/{{host}}")  # fmt: skip
    assert rc == 0, err
    assert doc is not None and doc["failed"] == 0
    for h in ("host1", "host4"):
        d = shm / "dst" / h
        assert (d / "motd").read_text() == "welcome\n" and os.readlink(d / "motd") == "etc/motd"
        assert not (d / "etc" / "cache.tmp").exists()
        assert (os.stat(d / "etc").st_mode & 0o777) == 0o750


def test_stdin_wrong_permission_and_missing_host(vc: VCluster, shm: Path) -> None:
    data = os.urandom(2 << 20)
    for h in ("host1", "host2", "host4"):
        (shm / h).mkdir()
    (shm / "host3").symlink_to("/sys/kernel")  # root cannot create files there (EACCES)
    rc, doc, _, err = cast(*_args(vc), "-", "host[1-5]", "--to", f"{shm}/{{host}}/img",
                           "--connect-timeout", "5", stdin=data)  # fmt: skip
    assert rc == 1, err
    assert doc is not None
    nodes = by_host(doc)
    assert nodes["host3"]["codes"] == ["LWF"] and "Permission denied" in nodes["host3"]["detail"]
    assert nodes["host5"]["codes"] == ["DOWN"]  # the cluster has 4 hosts: no namespace
    for h in ("host1", "host2", "host4"):
        assert nodes[h]["status"] == "OK", nodes[h]
        assert (shm / h / "img").read_bytes() == data


@pytest.mark.slow
def test_over_ssh_with_a_host_that_does_not_exist(shm: Path) -> None:
    """-R ssh (the default) through real sshd in every host, from the controller."""
    cluster = make_cluster(3, "200mbit", "bkcs", sshd=True)
    try:
        src = shm / "img"
        src.write_bytes(os.urandom(4 << 20))
        rc, doc, _, err = cast("--ssh-args", f"-F {cluster.state.ssh_config}",
                               "--resolve", f"/etc/netns/{cluster.ns(1)}/hosts",
                               "--remote-python", sys.executable, str(src), "host[1-3],host9",
                               "--to", f"{shm}/{{host}}")  # fmt: skip
    finally:
        cluster.down()
    assert rc == 1, err
    assert doc is not None
    nodes = by_host(doc)
    assert nodes["host9"]["codes"] == ["DOWN"] and "host9" in nodes["host9"]["detail"]
    for h in ("host1", "host2", "host3"):
        assert (nodes[h]["status"], nodes[h]["digest"]) == ("OK", "ok"), nodes[h]
        assert filecmp.cmp(src, shm / h, shallow=False)


@pytest.mark.slow
def test_names_only_ssh_knows(shm: Path) -> None:
    """host1..host3 are names of the cluster's ssh_config only (Host/HostName): not in
    this machine's DNS or /etc/hosts.  The callback address comes from ``ssh -G``
    (before: 0.0.0.0, every node LOST after 126 s), the data addresses from what
    each receiver reports (its end of its launch link); no --resolve, no --listen."""
    cluster = make_cluster(3, "200mbit", "bkcs", sshd=True)
    try:
        src = shm / "img"
        src.write_bytes(os.urandom(4 << 20))
        rc, doc, _, err = cast("--ssh-args", f"-F {cluster.state.ssh_config}",
                               "--remote-python", sys.executable, "--connect-timeout", "5",
                               str(src), "host[1-3]", "--to", f"{shm}/{{host}}",
                               timeout=60)  # fmt: skip
        unknown = cast("--ssh-args", f"-F {cluster.state.ssh_config}", str(src), "ghost[1-2]",
                       "--to", f"{shm}/{{host}}", timeout=30)  # fmt: skip
    finally:
        cluster.down()
    assert rc == 0, err
    assert doc is not None
    for h, n in by_host(doc).items():
        assert (n["status"], n["digest"]) == ("OK", "ok"), n
        assert filecmp.cmp(src, shm / h, shallow=False)
    # names neither ssh nor this machine knows: at once, one line, the option that fixes it
    assert unknown[0] == 2 and unknown[1] is None, unknown
    assert unknown[3].count("\n") == 1 and "--listen" in unknown[3], unknown[3]


def test_template_across_hosts_with_listen_and_an_inherited_ssh_session(vc: VCluster,
                                                                        shm: Path) -> None:
    """-R 'ip netns exec ...' from the controller, --listen its address, launched as from
    an ssh login (SSH_CONNECTION set): before, every agent bound the ssh server's
    address inside its namespace (OSError Errno 99, in a traceback nobody saw)."""
    src = shm / "img"
    src.write_bytes(os.urandom(2 << 20))
    ctl = plan.controller_address(vc.plan.spec.net)  # this machine, on the cluster's switch
    rc, doc, _, err = cast("-R", f"ip netns exec {vc.prefix}-{{host}} sh -c {{cmd}}",
                           "--remote-python", sys.executable, "--listen", ctl, "--fanout", "2",
                           str(src), "host[1-4]", "--to", f"{shm}/{{host}}",
                           env={"SSH_CONNECTION": f"{ctl} 40000 {ctl} 22"})  # fmt: skip
    assert rc == 0, err
    assert doc is not None and doc["launch"]["depth"] == 2
    for h, n in by_host(doc).items():
        assert n["status"] == "OK", n
        assert filecmp.cmp(src, shm / h, shallow=False)


@pytest.mark.parametrize("fanout", ["8", "2"])
def test_netns_backend(vc: VCluster, shm: Path, fanout: str) -> None:
    """-R netns:PATTERN: every node's agent (and the receiver it forks) forked from one
    preloaded server into its host's namespace; the chain runs over the switch (each
    receiver binds its own host's address, which exists only in its namespace)."""
    src = shm / "img"
    src.write_bytes(os.urandom(4 << 20))
    rc, doc, _, err = cast("-R", f"netns:{vc.prefix}-{{host}}", "--resolve",
                           f"/etc/netns/{vc.ns(1)}/hosts", "--fanout", fanout, str(src),
                           "host[1-4]", "--to", f"{shm}/{{host}}")  # fmt: skip
    assert rc == 0, err
    assert doc is not None and not doc["failed"]
    for h, n in by_host(doc).items():
        assert (n["status"], n["digest"]) == ("OK", "ok"), n
        assert filecmp.cmp(src, shm / h, shallow=False)
        assert n["mb_per_s"] < 13.5, n  # the switch's 100 Mbit/s ports, not loopback
    # no --resolve: this machine's address on the route to host2, which the
    # namespace's own /etc/netns/NAME/hosts names
    rc, doc, _, err = cast("-R", f"netns:{vc.prefix}-{{host}}", str(src), "host[2-3]", "--to",
                           f"{shm}/again-{{host}}", "--bind-each")  # fmt: skip
    assert rc == 0, err
    assert filecmp.cmp(src, shm / "again-host3", shallow=False)
