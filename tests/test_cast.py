"""beo cast for real on loopback: receivers on 127.0.3.x started with -R exec.

Every test runs the real command (receivers, nettee chain, fsync, digests)
and checks the table / JSON and the exit status, then the bytes on "disk".
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cast_helpers import by_host, cast, nettee_pid, wait_size

from beokit.cast.root import nettee_flags
from beokit.cli import main

HOSTS = "127.0.3.[2-9]"
NAMES = [f"127.0.3.{i}" for i in range(2, 10)]
HEAL = "-heal" in nettee_flags()


@pytest.fixture
def shm(tmp_path: Path):
    """A scratch directory in /dev/shm (fsync is cheap there), removed afterwards."""
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") else tmp_path
    d = base / f"bkc-test-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _source(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


# "nettee": with whatever resilience flags the installed nettee has (-heal -digest);
# "fallback": as with a nettee that has neither (digest by rereading, -conwf -conrf)
MODES = {"nettee": None, "fallback": {"BEOKIT_CAST_FLAGS": ""}}


@pytest.mark.parametrize("mode", MODES)
def test_file_to_eight_nodes_verified(shm: Path, mode: str) -> None:
    src = _source(shm / "image.bin", 12 << 20)
    rc, doc, _, err = cast("-R", "exec", str(src), HOSTS, "--to", f"{shm}/out/{{host}}",
                           env=MODES[mode])  # fmt: skip
    assert rc == 0, err
    assert doc is not None and doc["failed"] == 0 and doc["bytes"] == 12 << 20
    assert doc["digest"]  # the stream's digest, from nettee -digest or the feeder
    if mode == "fallback":
        assert doc["nettee_flags"] == ["-conwf", "-conrf", "-colwf"]
        assert doc["digest_algorithm"] in ("xxh3_128", "blake2b")
    for h, n in by_host(doc).items():
        assert (n["status"], n["digest"], n["bytes"]) == ("OK", "ok", 12 << 20), n
        assert filecmp.cmp(src, shm / "out" / h, shallow=False)
    assert sorted(by_host(doc)) == NAMES


def test_table_output(shm: Path) -> None:
    src = _source(shm / "small.bin", 1 << 20)
    rc, _, out, err = cast("-R", "exec", str(src), "127.0.3.[2-3]", "--to",
                           f"{shm}/t/{{host}}", json_out=False)  # fmt: skip
    assert rc == 0, err
    for col in ("node", "bytes", "digest", "seconds", "MB/s", "status"):
        assert col in out
    assert out.count("OK") == 2 and "1,048,576" in out
    assert "2 node(s), 2 ok, 0 failed" in err


def test_directory_tree_as_tar_stream(shm: Path) -> None:
    tree = shm / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f.txt").write_text("hello\n")
    (tree / "a" / "x.o").write_text("object")
    (tree / "link").symlink_to("a/b/f.txt")
    os.chmod(tree / "a", 0o751)
    os.chmod(tree / "a" / "b" / "f.txt", 0o640)
    with open(tree / "sparse", "wb") as fh:
        fh.truncate(64 << 20)
        fh.seek(32 << 20)
        fh.write(b"middle")
    if os.geteuid() == 0:
        os.chown(tree / "a" / "b" / "f.txt", 1234, 4321)
    rc, doc, _, err = cast("-R", "exec", "--exclude", "*.o", str(tree), "127.0.3.[2-4]",
                           "--to", f"{shm}/dst/{{host}}")  # fmt: skip
    assert rc == 0, err
    assert doc is not None and all(n["status"] == "OK" for n in doc["nodes"])
    for h in NAMES[:3]:
        d = shm / "dst" / h
        assert (d / "a" / "b" / "f.txt").read_text() == "hello\n"
        assert not (d / "a" / "x.o").exists()  # excluded
        assert os.readlink(d / "link") == "a/b/f.txt"
        assert stat.S_IMODE(os.stat(d / "a").st_mode) == 0o751
        assert stat.S_IMODE(os.stat(d / "a" / "b" / "f.txt").st_mode) == 0o640
        st = os.stat(d / "sparse")
        assert st.st_size == 64 << 20 and st.st_blocks * 512 < 1 << 20  # still sparse
        if os.geteuid() == 0:
            f = os.stat(d / "a" / "b" / "f.txt")
            assert (f.st_uid, f.st_gid) == (1234, 4321)


def test_stdin_source(shm: Path) -> None:
    data = os.urandom(3 << 20)
    rc, doc, _, err = cast("-R", "exec", "-", "127.0.3.[2-5]", "--to", f"{shm}/in/{{host}}",
                           stdin=data)  # fmt: skip
    assert rc == 0, err
    assert doc is not None and doc["bytes"] == len(data)
    for h in NAMES[:4]:
        assert (shm / "in" / h).read_bytes() == data
        assert by_host(doc)[h]["digest"] == "ok"


@pytest.fixture
def loops(shm: Path):
    """Three loop devices on 4 MiB files (root): a source and two destinations."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("block devices: needs root and losetup")
    devs = []
    try:
        for i in range(3):
            img = shm / f"disk{i}.img"
            img.write_bytes(os.urandom(4 << 20) if i == 0 else bytes(4 << 20))
            cp = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True,
                                text=True)  # fmt: skip
            if cp.returncode != 0:
                pytest.skip(f"losetup: {cp.stderr.strip()}")
            devs.append(cp.stdout.strip())
        yield devs
    finally:
        for d in devs:
            subprocess.run(["losetup", "-d", d], capture_output=True)


@pytest.mark.root
def test_block_device_to_block_devices(shm: Path, loops: list[str]) -> None:
    """A disk image from a block device onto a block device on every node."""
    src, *dests = loops
    (shm / "dev").mkdir()
    for h, d in zip(NAMES[:2], dests, strict=True):
        (shm / "dev" / h).symlink_to(d)  # node h's "disk"
    rc, doc, _, err = cast("-R", "exec", src, "127.0.3.[2-3]", "--to", f"{shm}/dev/{{host}}")
    assert rc == 0, err
    assert doc is not None and doc["bytes"] == 4 << 20
    for d in dests:
        with open(src, "rb") as a, open(d, "rb") as b:
            assert a.read() == b.read()


def test_pipe_destination(shm: Path) -> None:
    src = _source(shm / "p.bin", 1 << 20)
    rc, doc, _, err = cast("-R", "exec", str(src), "127.0.3.[2-3]", "--to",
                           f"|gzip -1 > {shm}/{{host}}.gz")  # fmt: skip
    assert rc == 0, err
    assert (shm / "127.0.3.3.gz").stat().st_size > 0


def _throttled(shm: Path) -> str:
    """A DEST whose chain tip writes at 16 MB/s: the whole chain is paced by it."""
    return (f"|if [ {{host}} = 127.0.3.9 ]; then pv -q -L 16m; else cat; fi "
            f"> {shm}/slow/{{host}}")  # fmt: skip


def _kill_when(shm: Path, host: str, size: int) -> threading.Thread:
    def killer() -> None:
        pid = nettee_pid(host)
        wait_size(shm / "slow" / host, size)
        os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    return t


@pytest.mark.skipif(shutil.which("pv") is None, reason="needs pv (apt-get install pv)")
@pytest.mark.parametrize("mode", MODES)
def test_node_killed_mid_cast_is_named(shm: Path, mode: str) -> None:
    heal = HEAL and mode == "nettee"
    src = _source(shm / "k.bin", 40 << 20)
    (shm / "slow").mkdir()
    killer = _kill_when(shm, "127.0.3.5", 8 << 20)
    rc, doc, _, err = cast("-R", "exec", str(src), HOSTS, "--to", _throttled(shm),
                           env=MODES[mode])  # fmt: skip
    killer.join(timeout=5)
    assert rc == 1, err
    assert doc is not None
    nodes = by_host(doc)
    dead = nodes["127.0.3.5"]
    assert dead["status"] != "OK" and "LOST" in dead["codes"], dead
    assert "killed by signal 9" in dead["detail"]
    for h in NAMES[:3]:  # above the dead node: complete
        assert nodes[h]["status"] == "OK", nodes[h]
        assert filecmp.cmp(src, shm / "slow" / h, shallow=False)
    for h in NAMES[4:]:  # below it: complete with -heal, else named
        assert (nodes[h]["status"] == "OK") == heal, nodes[h]
        if heal:
            assert filecmp.cmp(src, shm / "slow" / h, shallow=False)
    assert "127.0.3.5: " in err


@pytest.mark.skipif(shutil.which("pv") is None, reason="needs pv (apt-get install pv)")
def test_secret_is_never_on_a_command_line(shm: Path) -> None:
    """While a cast runs, no process shows a 256-bit hex secret in its argv (ps)."""
    src = _source(shm / "s.bin", 24 << 20)
    (shm / "slow").mkdir()
    seen: list[str] = []
    done = threading.Event()

    def scan() -> None:
        hexkey = re.compile(rb"[0-9a-f]{64}")
        nettee_pid("127.0.3.9")  # every receiver's nettee runs
        while not done.is_set():
            for entry in os.scandir("/proc"):
                try:
                    argv = Path(entry.path, "cmdline").read_bytes()
                except OSError:
                    continue
                ours = b"127.0.3." in argv or b"beokit.cast" in argv
                if ours and hexkey.search(argv):
                    seen.append(argv.decode(errors="replace"))
            time.sleep(0.1)

    t = threading.Thread(target=scan, daemon=True)
    t.start()
    rc, doc, _, err = cast("-R", "exec", str(src), HOSTS, "--to", _throttled(shm))
    done.set()
    t.join(timeout=5)
    assert rc == 0, err
    assert not seen, seen


def _ancestors(pid: int) -> list[str]:
    """The names (/proc/PID/comm) of ``pid``'s ancestors, nearest first."""
    out = []
    while pid > 1:
        try:
            stat_fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            pid = int(stat_fields[1])
            out.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except (OSError, ValueError, IndexError):
            break
    return out


@pytest.mark.skipif(shutil.which("pv") is None, reason="needs pv (apt-get install pv)")
def test_receivers_are_started_through_the_launch_tree(shm: Path) -> None:
    """--fanout 2 and 8 nodes: a 3-step launch tree; a node launched by another node's
    agent runs its receiver forked from its own agent (as beo run starts agents: from
    the fork server, with -R exec), and the cast is complete."""
    src = _source(shm / "t.bin", 24 << 20)
    (shm / "slow").mkdir()
    chain: list[list[str]] = []

    from beokit.launch.plan import root_plan

    # a host the root does not launch itself: the second of a group, under its head's agent
    deep = next(g[1] for g in root_plan("tree", NAMES, 2).groups if len(g) > 1)

    def look() -> None:
        chain.append(_ancestors(nettee_pid(deep)))

    t = threading.Thread(target=look, daemon=True)
    t.start()
    rc, doc, _, err = cast("-R", "exec", "--fanout", "2", str(src), HOSTS, "--to",
                           _throttled(shm))  # fmt: skip
    t.join(timeout=5)
    assert rc == 0, err
    assert doc is not None and doc["launch"] == {"fanout": 2, "depth": 3, "refused": 0}
    assert all(n["status"] == "OK" for n in doc["nodes"])
    assert filecmp.cmp(src, shm / "slow" / "127.0.3.9", shallow=False)
    assert chain, "the receiver's nettee was not seen"
    # nettee <- its receiver <- the node's agent (no interpreter started for either)
    assert chain[0][:2] == ["beo-receiver", "beo-agent"], chain[0]


@pytest.mark.skipif(shutil.which("pv") is None, reason="needs pv (apt-get install pv)")
def test_retry_resends_to_the_failed_nodes(shm: Path) -> None:
    src = _source(shm / "r.bin", 32 << 20)
    (shm / "slow").mkdir()
    killer = _kill_when(shm, "127.0.3.6", 8 << 20)
    rc, doc, _, err = cast("-R", "exec", "--retry", str(src), HOSTS, "--to", _throttled(shm))
    killer.join(timeout=5)
    assert rc == 0, err
    assert doc is not None and doc["attempts"] == 2 and doc["failed"] == 0
    nodes = by_host(doc)
    assert nodes["127.0.3.6"]["attempt"] == 2 and nodes["127.0.3.2"]["attempt"] == 1
    for h in NAMES:
        assert filecmp.cmp(src, shm / "slow" / h, shallow=False), h
    assert "beo cast: retrying 127.0.3." in err


def test_wrong_dest_permission_on_one_node(shm: Path) -> None:
    src = _source(shm / "w.bin", 2 << 20)
    out = shm / "perm"
    out.mkdir()
    for h in ("127.0.3.2", "127.0.3.3", "127.0.3.5"):
        (out / h).mkdir()
    if os.geteuid() == 0:
        # root writes through any mode bits: point this node's DEST into sysfs,
        # where the kernel refuses new files to root too (EACCES)
        (out / "127.0.3.4").symlink_to("/sys/kernel")
    else:
        (out / "127.0.3.4").mkdir(mode=0o555)
    rc, doc, _, err = cast("-R", "exec", str(src), "127.0.3.[2-5]", "--to", f"{out}/{{host}}/img")
    assert rc == 1, err
    assert doc is not None
    nodes = by_host(doc)
    bad = nodes["127.0.3.4"]
    assert bad["codes"] == ["LWF"] and "Permission denied" in bad["detail"], bad
    for h in ("127.0.3.2", "127.0.3.3", "127.0.3.5"):
        assert nodes[h]["status"] == "OK", nodes[h]
        assert filecmp.cmp(src, out / h / "img", shallow=False)
    assert "127.0.3.4: LWF" in err


def test_host_that_does_not_exist(shm: Path) -> None:
    src = _source(shm / "n.bin", 1 << 20)
    rc, doc, _, err = cast("-R", "exec", str(src), "127.0.3.[2-4],nosuch.invalid", "--to",
                           f"{shm}/n/{{host}}")  # fmt: skip
    assert rc == 1, err
    assert doc is not None
    nodes = by_host(doc)
    assert nodes["nosuch.invalid"]["codes"] == ["DOWN"]
    assert "nosuch.invalid" in nodes["nosuch.invalid"]["detail"]
    assert all(nodes[h]["status"] == "OK" for h in NAMES[:3])


def test_dolly_config_file(shm: Path) -> None:
    src = _source(shm / "d.bin", 1 << 20)
    conf = shm / "dolly.conf"
    conf.write_text(f"infile {src}\noutfile {shm}/dolly/{{host}}\nserver localhost\n"
                    "firstclient 127.0.3.2\nlastclient 127.0.3.4\nclients 3\n"
                    "127.0.3.2\n127.0.3.3\n127.0.3.4\nendconfig\n")  # fmt: skip
    rc, doc, _, err = cast("-R", "exec", "-f", str(conf))
    assert rc == 0, err
    assert doc is not None and [n["host"] for n in doc["nodes"]] == NAMES[:3]
    assert filecmp.cmp(src, shm / "dolly" / "127.0.3.4", shallow=False)


@pytest.mark.parametrize("how", ["--chains", "--topology"])
def test_two_chains(shm: Path, how: str) -> None:
    src = _source(shm / "c.bin", 2 << 20)
    topo = shm / "topology"
    topo.write_text("# one chain per switch\nsw0: 127.0.3.[2-5]\nsw1: 127.0.3.[6-9]\n")
    arg = "2" if how == "--chains" else str(topo)
    rc, doc, _, err = cast("-R", "exec", how, arg, str(src), HOSTS, "--to", f"{shm}/c/{{host}}")
    assert rc == 0, err
    assert doc is not None and [len(c["hosts"]) for c in doc["chains"]] == [4, 4]
    want = {"chain0", "chain1"} if how == "--chains" else {"sw0", "sw1"}
    assert {n["chain"] for n in doc["nodes"]} == want
    for h in NAMES:
        assert filecmp.cmp(src, shm / "c" / h, shallow=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/file", "n1", "--to", "/x"], "'/nonexistent/file'"),
        (["/etc/hostname", "n[1-", "--to", "/x"], "bad node set 'n[1-'"),
        (["/etc/hostname", "n1"], "--to DEST"),
        (["/etc/hostname", "n1", "--to", "/x", "--exclude", "*.o"], "--exclude '*.o'"),
        (["-", "n1", "--to", "/x", "--retry"], "cannot re-send stdin"),
        (["/etc/hostname", "n1", "--to", "/x", "--chains", "0"], "--chains 0"),
        (["/etc/hostname", "n1", "--to", "/x", "-R", "bogus"], "bad -R 'bogus'"),
        (["/etc/hostname", "n1", "--to", "|"], "no command after '|'"),
        (["-f", "/nonexistent.conf"], "cannot read dolly config"),
        (["/etc/hostname", "n1", "--to", "/x", "--dry-run", "--rate", "fast"], "bad rate 'fast'"),
        ([], "no SOURCE"),
    ],
)
def test_bad_input_is_one_line_and_status_2(args: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["cast", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_root_nettee_learns_the_chain_formed_from_its_events(shm: Path) -> None:
    """beo cast's root nettee says "formed" (and "end") on NETTEE_EVENT_FD: the
    cast knows the chain formed with no word of it in the log (-v 0)."""
    from beokit.cast.root import RootNettee
    from beokit.net import free_port
    from beokit.nettee.localchain import nettee_command

    src = _source(shm / "e.bin", 1 << 20)
    secret = os.urandom(32).hex()
    port = free_port(["127.0.3.2"])
    node = subprocess.Popen(nettee_command() + ["-bind", "127.0.3.2", "-port", str(port),
                                                "-name", "127.0.3.2", "-out", str(shm / "e.out"),
                                                "-v", "0"],
                            env=dict(os.environ, NETTEE_SECRET=secret),
                            stdin=subprocess.DEVNULL)  # fmt: skip
    root = RootNettee(secret)
    try:
        root.start(["-root", "-next", f"127.0.3.2:{port}", "-port", str(port), "-in", str(src),
                    "-name", "root", "-v", "0"])  # fmt: skip
        root.close_stdin()
        assert root.proc.wait(timeout=60) == 0
        root.join(timeout=10)
        assert node.wait(timeout=60) == 0
    finally:
        for p in (root.proc, node):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert root.formed.is_set() and root.ended.is_set()
    assert [e["event"] for e in root.events] == ["formed", "end"], root.events
    assert root.events[0]["nodes"] == 2 and root.events[1]["bytes"] == 1 << 20
    assert not any("tree formed" in line for line in root.log), list(root.log)
    assert filecmp.cmp(src, shm / "e.out", shallow=False)


def test_title_says_plainly_when_nothing_was_sent(shm: Path) -> None:
    """Before: "0 bytes to 2 node(s), stream 0.00 s (0.0 MB/s)" for both."""
    empty = shm / "empty"
    empty.write_bytes(b"")
    rc, _, out, err = cast("-R", "exec", str(empty), "nosuch[1-2]", "--to", f"{shm}/{{host}}",
                           json_out=False)  # fmt: skip
    title = " ".join(out.split())  # the title wraps at the table's width
    assert rc == 1 and "nothing sent to 2 node(s): no node could be started" in title, out
    rc, _, out, err = cast("-R", "exec", str(empty), "127.0.3.[2-3]", "--to", f"{shm}/{{host}}",
                           json_out=False)  # fmt: skip
    assert rc == 0, err
    assert "SOURCE is empty: 0 bytes to 2 node(s)" in " ".join(out.split()), out
    assert (shm / "127.0.3.3").read_bytes() == b""


def test_nodes_with_no_address_here_fail_at_once_naming_listen(shm: Path) -> None:
    """ssh (the default) to names neither DNS nor ssh_config knows: the receivers would
    call back to 0.0.0.0 (themselves); one line, exit 2, nothing started."""
    src = _source(shm / "n.bin", 1 << 10)
    rc, doc, _, err = cast(str(src), "ghost[1-2].invalid", "--to", f"{shm}/{{host}}",
                           timeout=30)  # fmt: skip
    assert (rc, doc) == (2, None)
    assert err.count("\n") == 1 and "--listen ADDR" in err and "ghost1.invalid" in err, err


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1)")
@pytest.mark.parametrize("hosts", ["::1", "127.0.3.2,::1,127.0.3.3"])
def test_ipv6_node(shm: Path, hosts: str) -> None:
    """beo cast to ::1 alone, and in a chain between IPv4 nodes (before: the root's
    nettee refused '-next [::1]:PORT' and the cast waited for a chain that never formed;
    earlier still: 'no free port pair found')."""
    src = _source(shm / "v6.bin", 3 << 20)
    rc, doc, _, err = cast("-R", "exec", str(src), hosts, "--to", f"{shm}/out/{{host}}",
                           timeout=60)  # fmt: skip
    assert rc == 0, err
    assert doc is not None and all(n["status"] == "OK" for n in doc["nodes"]), doc["nodes"]
    for h in hosts.split(","):
        assert filecmp.cmp(src, shm / "out" / h, shallow=False), h
