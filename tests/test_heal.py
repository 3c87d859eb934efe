"""nettee -heal (self-healing chain) and -digest (end-to-end digests), with real processes.

The root reads a pipe the test writes into, so a node can be killed at a
known point of the stream: part of the data is through the chain, the rest
is still to come.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import NETTEE, child_env, sha256, spawn, wait_all

from beokit.nettee.localchain import free_port

TOOLS = Path(__file__).parent / "tools"
MIB = 1 << 20


def _chain(tmp_path: Path, n: int, port: int, *extra: str, net: str = "127.0.0",
           devnull: bool = False) -> list:  # fmt: skip
    """Start n receivers on {net}.2..n+1 (the tip first); returns the Popens, n2 first.

    ``devnull``: every node writes /dev/null, so replay and digest go through
    the tap (the in-memory window) instead of the node's output file.
    """
    procs = []
    for i in range(n + 1, 1, -1):
        nxt = ["-next", f"{net}.{i + 1}"] if i <= n else []
        out = "/dev/null" if devnull else str(tmp_path / f"n{i}")
        procs.append(spawn("-bind", f"{net}.{i}", "-port", str(port), *nxt, "-out", out,
                           "-name", f"n{i}", "-v", "5", "-t", "30",
                           *extra, env=child_env(), stderr=subprocess.PIPE, text=True))  # fmt: skip
    return procs[::-1]  # n2 first


def _root(tmp_path: Path, port: int, *extra: str, net: str = "127.0.0") -> subprocess.Popen:
    return spawn("-root", "-port", str(port), "-next", f"{net}.2", "-in", "-", "-name", "root",
                 "-v", "5", "-report", str(tmp_path / "r.json"), *extra, env=child_env(),
                 stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=False)  # fmt: skip


def _wait_size(path: Path, size: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size >= size:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} did not reach {size} bytes")


def _feed(root: subprocess.Popen, data: bytes) -> None:
    assert root.stdin is not None
    root.stdin.write(data)
    root.stdin.flush()


def _diff(path: Path, data: bytes, procs: list) -> str:
    """Where an output first differs from what was sent, and the nodes' logs."""
    got = path.read_bytes()
    at = next((i for i, (a, b) in enumerate(zip(got, data, strict=False)) if a != b), None)
    logs = "\n".join(p.stderr.read() if p.stderr else "" for p in procs)
    return f"{path.name}: {len(got)} of {len(data)} bytes, first difference at {at}\n{logs}"


def _report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "r.json").read_text())


@pytest.mark.parametrize("outputs", ["files", "devnull"])
def test_heal_a_node_killed_mid_stream(tmp_path: Path, outputs: str) -> None:
    """root -> n2 -> n3 -> n4 -> n5; n3 is killed after 16 MiB: n4 and n5 still end complete.

    With files, n2 replays from its output file; with /dev/null, from its window.
    """
    port = free_port([f"127.0.0.{i}" for i in range(1, 7)])
    data = os.urandom(48 * MIB + 777)
    devnull = outputs == "devnull"
    nodes = _chain(tmp_path, 4, port, "-heal", "-digest", devnull=devnull)
    root = _root(tmp_path, port, "-heal", "-digest")
    _feed(root, data[: 16 * MIB])
    if devnull:
        time.sleep(1.0)  # nothing to watch: give the chain time to move some data
    else:
        _wait_size(tmp_path / "n5", 8 * MIB)
    nodes[1].kill()  # n3
    _feed(root, data[16 * MIB :])
    root.stdin.close()
    codes = wait_all([root, *nodes])
    err = root.stderr.read().decode()
    assert codes[0] == 0, err  # handled: reported, every other node complete
    assert codes[2] == -signal.SIGKILL
    want = hashlib.sha256(data).hexdigest()
    for i in (2, 4, 5) if not devnull else ():
        assert sha256(tmp_path / f"n{i}") == want, _diff(tmp_path / f"n{i}", data, nodes)
    assert "node n3: NWF" in err
    rep = _report(tmp_path)
    by = {n["name"]: n for n in rep["nodes"]}
    assert by["n3"]["codes"] == ["NWF"]
    assert all(by[f"n{i}"]["codes"] == [] for i in (2, 4, 5))
    import xxhash

    assert by["root"]["digest"] == "xxh3_128:" + xxhash.xxh3_128(data).hexdigest()
    assert all(by[f"n{i}"]["digest"] == by["root"]["digest"] for i in (2, 4, 5))
    assert all(by[f"n{i}"]["bytes_in"] == len(data) for i in (2, 4, 5))
    (heal,) = rep["heals"]
    assert heal["dead"] == "n3" and heal["by"] == "n2"
    assert [a["name"] for a in heal["adopted"]] == ["n4"]
    assert 0 <= heal["adopted"][0]["offset"] <= 16 * MIB
    assert heal["resumed"] - heal["detected"] < 5
    n4_log = nodes[2].stderr.read()
    assert "adopted by n2: resuming at byte" in n4_log


def test_heal_when_nothing_is_in_flight(tmp_path: Path) -> None:
    """The chain is idle when n3 dies: n4 holds all that was sent, nothing to replay."""
    port = free_port([f"127.0.0.{i}" for i in range(1, 6)])
    data = os.urandom(12 * MIB)
    nodes = _chain(tmp_path, 3, port, "-heal")
    root = _root(tmp_path, port, "-heal")
    _feed(root, data[: 4 * MIB])
    _wait_size(tmp_path / "n4", 4 * MIB)
    time.sleep(0.2)
    nodes[1].kill()  # n3
    time.sleep(0.5)  # healed while idle
    _feed(root, data[4 * MIB :])
    root.stdin.close()
    codes = wait_all([root, *nodes])
    assert codes[0] == 0 and codes[1] == 0 and codes[3] == 0
    want = hashlib.sha256(data).hexdigest()
    assert sha256(tmp_path / "n4") == want, _diff(tmp_path / "n4", data, nodes)
    (heal,) = _report(tmp_path)["heals"]
    assert heal["adopted"] == [{"name": "n4", "offset": 4 * MIB}]


def test_heal_two_non_adjacent_failures(tmp_path: Path) -> None:
    """root -> n2 .. n7; n3 and n5 die at once: n2 adopts n4, n4 adopts n6."""
    port = free_port([f"127.0.0.{i}" for i in range(1, 9)])
    data = os.urandom(40 * MIB + 12345)
    nodes = _chain(tmp_path, 6, port, "-heal")
    root = _root(tmp_path, port, "-heal", "-digest")
    _feed(root, data[: 12 * MIB])
    _wait_size(tmp_path / "n7", 4 * MIB)
    nodes[1].kill()  # n3
    nodes[3].kill()  # n5
    _feed(root, data[12 * MIB :])
    root.stdin.close()
    codes = wait_all([root, *nodes])
    err = root.stderr.read().decode()
    assert codes[0] == 0, err
    want = hashlib.sha256(data).hexdigest()
    for i in (2, 4, 6, 7):
        assert sha256(tmp_path / f"n{i}") == want, f"n{i}"
    rep = _report(tmp_path)
    by = {n["name"]: n for n in rep["nodes"]}
    assert by["n3"]["codes"] == ["NWF"] and by["n5"]["codes"] == ["NWF"]
    healed = {h["dead"]: [a["name"] for a in h["adopted"]] for h in rep["heals"]}
    assert healed == {"n3": ["n4"], "n5": ["n6"]}
    assert "Failures detected in chain: NWF" in err


def test_heal_a_stalled_node(tmp_path: Path) -> None:
    """A SIGSTOPped node is found by heartbeat silence (-stall 1) and routed around."""
    port = free_port([f"127.0.0.{i}" for i in range(1, 6)])
    data = os.urandom(24 * MIB)
    nodes = _chain(tmp_path, 3, port, "-heal", "-stall", "1")
    root = _root(tmp_path, port, "-heal", "-stall", "1")
    try:
        _feed(root, data[: 8 * MIB])
        _wait_size(tmp_path / "n4", 2 * MIB)
        os.kill(nodes[1].pid, signal.SIGSTOP)  # n3
        _feed(root, data[8 * MIB :])
        root.stdin.close()
        codes = wait_all([root, nodes[0], nodes[2]], timeout=30)
    finally:
        nodes[1].kill()
        nodes[1].wait()
    err = root.stderr.read().decode()
    assert codes == [0, 0, 0], err
    want = hashlib.sha256(data).hexdigest()
    assert sha256(tmp_path / "n2") == want and sha256(tmp_path / "n4") == want
    assert "silent for 1 s" in err or "node n3: NWF" in err
    assert [h["dead"] for h in _report(tmp_path)["heals"]] == ["n3"]


def test_heal_a_dead_tip_is_skipped(tmp_path: Path) -> None:
    """The tip dies: nothing to adopt, it is reported, the rest complete, exit 0."""
    port = free_port([f"127.0.0.{i}" for i in range(1, 5)])
    data = os.urandom(16 * MIB)
    nodes = _chain(tmp_path, 2, port, "-heal")
    root = _root(tmp_path, port, "-heal")
    _feed(root, data[: 4 * MIB])
    _wait_size(tmp_path / "n3", MIB)
    nodes[1].kill()
    _feed(root, data[4 * MIB :])
    root.stdin.close()
    codes = wait_all([root, nodes[0]])
    err = root.stderr.read().decode()
    assert codes == [0, 0], err
    assert sha256(tmp_path / "n2") == hashlib.sha256(data).hexdigest()
    assert "node n3: NWF" in err
    (heal,) = _report(tmp_path)["heals"]
    assert heal["dead"] == "n3" and heal["adopted"] == []


def test_heal_replays_from_the_root_file_beyond_a_small_window(tmp_path: Path) -> None:
    """The root's child dies; with a 1 MiB window the root re-reads its input file."""
    port = free_port([f"127.0.0.{i}" for i in range(1, 5)])
    src = tmp_path / "src"
    src.write_bytes(os.urandom(64 * MIB + 3))
    nodes = _chain(tmp_path, 2, port, "-heal")
    slow = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(src), "-name",
                 "root", "-heal", "-window", str(MIB), "-buf_size", str(MIB), "-v", "5",
                 "-report", str(tmp_path / "r.json"), env=child_env(), stderr=subprocess.PIPE,
                 text=True)  # fmt: skip
    _wait_size(tmp_path / "n3", 4 * MIB)
    nodes[0].kill()  # n2: the root adopts n3
    codes = wait_all([slow, nodes[1]])
    err = slow.stderr.read()
    assert codes == [0, 0], err
    assert sha256(tmp_path / "n3") == sha256(src)
    assert [a["name"] for a in _report(tmp_path)["heals"][0]["adopted"]] == ["n3"]


def test_orphan_without_adopter_fails_within_bounds(tmp_path: Path) -> None:
    """Only the orphan runs -heal: nobody adopts it, it gives up with NRF (no hang)."""
    port = free_port([f"127.0.0.{i}" for i in range(1, 5)])
    tip = spawn("-bind", "127.0.0.3", "-port", str(port), "-out", str(tmp_path / "t"), "-heal",
                "-name", "tip", env=child_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
    mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.3", "-out",
                str(tmp_path / "m"), "-name", "mid", env=child_env())  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", "-", "-name", "root",
                 env=child_env(), stdin=subprocess.PIPE)  # fmt: skip
    root.stdin.write(os.urandom(4 * MIB))
    root.stdin.flush()
    _wait_size(tmp_path / "t", MIB)
    mid.kill()
    t0 = time.monotonic()
    assert tip.wait(timeout=30) == 1
    assert time.monotonic() - t0 < 15  # HEAL_WAIT (10 s) and a margin
    err = tip.stderr.read()
    assert "no ancestor adopted this node" in err
    root.kill()
    root.wait()


def test_digest_catches_a_corrupted_byte(tmp_path: Path, source: Path) -> None:
    """root -> b -> [proxy flipping 16 bytes] -> c: counts agree, c's digest does not: BDG."""
    port = free_port(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    c = spawn("-bind", "127.0.0.3", "-port", str(port), "-out", str(tmp_path / "c"), "-name", "c",
              "-digest", env=child_env())  # fmt: skip
    proxy = subprocess.Popen([sys.executable, str(TOOLS / "dropper.py"), "127.0.0.4", str(port),
                              "127.0.0.3", str(port), str(3 << 20), "16", "flip"])  # fmt: skip
    try:
        time.sleep(0.5)
        b = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.4", "-out",
                  str(tmp_path / "b"), "-name", "b", "-digest", env=child_env())  # fmt: skip
        root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source),
                     "-name", "root", "-digest", "-report", str(tmp_path / "r.json"),
                     env=child_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
        codes = wait_all([root, b, c])
    finally:
        proxy.kill()
        proxy.wait()
    err = root.stderr.read()
    assert codes[0] == 1, err
    assert (tmp_path / "c").stat().st_size == source.stat().st_size  # the count is right
    assert sha256(tmp_path / "c") != sha256(source)
    assert "Failures detected in child 0 [b]: BDG" in err
    assert "Failures detected in chain: BDG" in err
    assert "node c: BDG" in err
    by = {n["name"]: n for n in _report(tmp_path)["nodes"]}
    assert by["c"]["codes"] == ["BDG"] and by["b"]["codes"] == []
    assert by["b"]["digest"] == by["root"]["digest"] != by["c"]["digest"]


def test_digests_agree_on_a_clean_chain(tmp_path: Path, source: Path) -> None:
    import xxhash

    port = free_port(["127.0.0.2", "127.0.0.3"])
    tip = spawn("-bind", "127.0.0.3", "-port", str(port), "-out", str(tmp_path / "c"), "-digest",
                "-name", "c", env=child_env())  # fmt: skip
    mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.3", "-digest",
                "-out", str(tmp_path / "b"), "-name", "b", env=child_env())  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source), "-digest",
                 "-report", str(tmp_path / "r.json"), env=child_env())  # fmt: skip
    assert wait_all([root, mid, tip]) == [0, 0, 0]
    want = "xxh3_128:" + xxhash.xxh3_128(source.read_bytes()).hexdigest()
    assert [n["digest"] for n in _report(tmp_path)["nodes"]] == [want, want, want]


@pytest.mark.parametrize("argv, bad", [
    (["-heal", "-process", "cat", "-next", "h", "-root"], "-heal with -process"),
    (["-heal", "-stm", "EOS", "-next", "h", "-root"], "-heal with -stm"),
    (["-digest", "-process", "cat"], "-digest with -process"),
    (["-window", "12"], "bad -window"),
])  # fmt: skip
def test_heal_digest_usage_errors(argv: list[str], bad: str) -> None:
    from conftest import run_nettee

    r = run_nettee(*argv)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert bad in err and err.count("\n") == 1, err


def test_ring_segments_wrap_and_bounds() -> None:
    from beokit.nettee.sinks import Ring

    ring = Ring(10)
    for chunk in (b"abcdef", b"ghijkl"):  # the second write wraps
        segs = ring.free(len(chunk))
        k = 0
        for seg in segs:
            seg[:] = chunk[k : k + len(seg)]
            k += len(seg)
        ring.end += len(chunk)
    assert ring.start == 2
    assert b"".join(bytes(s) for s in ring.segments(2, 12)) == b"cdefghijkl"
    assert b"".join(bytes(s) for s in ring.segments(5, 9)) == b"fghi"
    with pytest.raises(ValueError):
        ring.segments(1, 5)  # older than the window


def test_file_hasher_follows_a_growing_file(tmp_path: Path) -> None:
    """FileHasher hashes a file while it is written, across its read blocks."""
    import xxhash

    from beokit.nettee.filehash import FileHasher

    path = tmp_path / "f"
    data = os.urandom(5 * MIB + 4097)
    written = 0
    with open(path, "wb") as out:
        fd = os.open(path, os.O_RDONLY)
        try:
            fh = FileHasher(fd, lambda: written, xxhash.xxh3_128())
            for i in range(0, len(data), 777_777):
                out.write(data[i : i + 777_777])
                out.flush()
                written = min(len(data), i + 777_777)
                time.sleep(0.002)
            fh.finish(len(data))
        finally:
            os.close(fd)
    assert fh.error is None
    assert fh.hasher.hexdigest() == xxhash.xxh3_128(data).hexdigest()


def test_buffers_the_kernel_copies_into_are_page_aligned(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay window and the file hasher's buffer start on a page, and the hasher
    reads a growing file from page boundaries only: the kernel's copy into a buffer
    16 bytes into a page (a bytearray's) cost 4-5x more here (docs/nettee.md)."""
    import ctypes
    import mmap

    import xxhash

    from beokit.nettee import filehash
    from beokit.nettee.sinks import Ring

    def address(view: memoryview) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))

    assert address(Ring(4 * MIB).buf) % mmap.PAGESIZE == 0
    path = tmp_path / "f"
    data = os.urandom(3 * MIB + 123)
    path.write_bytes(data)
    offsets: list[int] = []
    real = os.preadv

    def preadv(fd: int, bufs: list, offset: int) -> int:
        offsets.append(offset)
        assert address(bufs[0]) % mmap.PAGESIZE == 0
        return real(fd, bufs, offset)

    monkeypatch.setattr(filehash.os, "preadv", preadv)
    fd = os.open(path, os.O_RDONLY)
    try:
        written = [0]
        fh = filehash.FileHasher(fd, lambda: written[0], xxhash.xxh3_128())
        for k in range(1, 40):  # the relay's progress in odd steps
            written[0] = min(len(data), k * 99_991)
            time.sleep(0.003)
        fh.finish(len(data))
    finally:
        os.close(fd)
    assert fh.error is None and fh.hasher.hexdigest() == xxhash.xxh3_128(data).hexdigest()
    assert all(off % mmap.PAGESIZE == 0 for off in offsets[:-1]), offsets


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace (apt-get install strace)")
def test_fsync_flushes_the_output_before_the_report(tmp_path: Path, source: Path) -> None:
    """-fsync: the tip calls fsync on its output (seen by strace) and still ends complete."""
    port = free_port(["127.0.0.2"])
    trace = tmp_path / "trace"
    tip = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=fsync", "-o", str(trace),
                            *NETTEE, "-bind", "127.0.0.2", "-port", str(port), "-out",
                            str(tmp_path / "o"), "-fsync"], env=child_env(),
                           stdin=subprocess.DEVNULL)  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source),
                 env=child_env())  # fmt: skip
    assert wait_all([root, tip]) == [0, 0]
    assert sha256(tmp_path / "o") == sha256(source)
    assert "fsync(" in trace.read_text()
