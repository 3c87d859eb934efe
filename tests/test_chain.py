"""Real chains and trees of nettee processes: byte-identical delivery."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import child_env, run_nettee, sha256, spawn, wait_all

from beokit.nettee.localchain import start_chain


@pytest.mark.parametrize("receivers", [1, 2, 3, 4, 5])
def test_chain_is_byte_identical(tmp_path: Path, source: Path, receivers: int) -> None:
    chain = start_chain(source, receivers, tmp_path, env=child_env())
    codes = chain.wait(timeout=60)
    assert codes == [0] * (receivers + 1)
    want = sha256(source)
    for out in chain.outputs:
        assert sha256(out) == want
    report = chain.report()
    assert report is not None and report["status"] == "ok"
    assert [n["bytes_in"] for n in report["nodes"]] == [source.stat().st_size] * (receivers + 1)
    assert all(n["codes"] == [] for n in report["nodes"])


def test_tree_with_eight_children(tmp_path: Path, source: Path, port: int) -> None:
    addrs = [f"127.0.0.{i}" for i in range(2, 10)]
    kids = [spawn("-bind", a, "-port", str(port), "-out", str(tmp_path / a), "-name", a,
                  env=child_env()) for a in addrs]  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", ",".join(addrs), "-in", str(source),
                 "-report", str(tmp_path / "r.json"), "-v", "5", env=child_env(),
                 stderr=subprocess.PIPE, text=True)  # fmt: skip
    codes = wait_all([root, *kids])
    assert codes == [0] * 9
    err = root.stderr.read()
    for i, a in enumerate(addrs):
        assert f"Failures detected in child {i} [{a}]: NONE" in err
    assert "Failures detected in chain: NONE" in err
    want = sha256(source)
    assert all(sha256(tmp_path / a) == want for a in addrs)


def test_branching_tree_two_levels(tmp_path: Path, source: Path, port: int) -> None:
    """root -> {a, b}; a -> {c, d}; b -> e: every node writes the stream."""
    tree = {"127.0.0.2": "127.0.0.4,127.0.0.5", "127.0.0.3": "127.0.0.6",
            "127.0.0.4": None, "127.0.0.5": None, "127.0.0.6": None}  # fmt: skip
    procs = []
    for a, nxt in tree.items():
        args = ["-bind", a, "-port", str(port), "-out", str(tmp_path / a), "-name", a]
        procs.append(spawn(*(args + (["-next", nxt] if nxt else [])), env=child_env()))
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2 127.0.0.3", "-in", str(source),
                 "-report", str(tmp_path / "r.json"), env=child_env())  # fmt: skip
    assert wait_all([root, *procs]) == [0] * 6
    want = sha256(source)
    assert all(sha256(tmp_path / a) == want for a in tree)
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(n["name"] for n in report["nodes"][1:]) == sorted(tree)
    depth = {n["name"]: n["depth"] for n in report["nodes"]}
    assert depth["127.0.0.2"] == 1 and depth["127.0.0.6"] == 2


def test_nodes_start_in_any_order(tmp_path: Path, source: Path, port: int) -> None:
    """The root first, then the tip, then the middle node: the chain still forms."""
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source),
                 env=child_env())  # fmt: skip
    time.sleep(0.5)
    tip = spawn("-bind", "127.0.0.3", "-port", str(port), "-out", str(tmp_path / "c"),
                env=child_env())  # fmt: skip
    time.sleep(0.5)
    mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.3", "-out",
                str(tmp_path / "b"), env=child_env())  # fmt: skip
    assert wait_all([root, mid, tip]) == [0, 0, 0]
    assert sha256(tmp_path / "b") == sha256(tmp_path / "c") == sha256(source)


def test_stdin_to_stdout(tmp_path: Path, port: int) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    tip = spawn("-bind", "127.0.0.3", "-port", str(port), stdout=subprocess.PIPE,
                env=child_env())  # fmt: skip
    mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.3", "-out", "none",
                env=child_env())  # fmt: skip
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(tip.stdout.read()))
    reader.start()
    root = run_nettee("-root", "-port", str(port), "-next", "127.0.0.2", stdin=data,
                      env=child_env())  # fmt: skip
    reader.join(timeout=30)
    assert root.returncode == 0 and wait_all([mid, tip]) == [0, 0]
    assert got == [data]


def test_host_port_suffix_and_bind(tmp_path: Path, source: Path, port: int) -> None:
    """Two nodes on the same address, told apart by :PORT in -next."""
    other = port + 2
    tip = spawn("-bind", "127.0.0.2", "-port", str(other), "-out", str(tmp_path / "t"),
                env=child_env())  # fmt: skip
    mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", f"127.0.0.2:{other}",
                "-out", str(tmp_path / "m"), env=child_env())  # fmt: skip
    root = spawn("-root", "-next", f"127.0.0.2:{port}", "-in", str(source), env=child_env())
    assert wait_all([root, mid, tip]) == [0, 0, 0]
    assert sha256(tmp_path / "t") == sha256(source)


def test_copy_loop_fallback(tmp_path: Path, source: Path) -> None:
    """The portable read/write path (no splice) gives the same bytes."""
    chain = start_chain(source, 3, tmp_path, env=child_env(BEOKIT_NO_SPLICE="1"), verbose=5)
    assert chain.wait() == [0, 0, 0, 0]
    assert "copy loop" in chain.log_paths[0].read_text()
    assert all(sha256(o) == sha256(source) for o in chain.outputs)


def test_small_and_odd_buffer_settings(tmp_path: Path, source: Path) -> None:
    args = ["-buf_size", "8192", "-buf_minread", "100", "-buf_minwrite", "3000",
            "-buf_maxread", "1000", "-buf_maxwrite", "777"]  # fmt: skip
    chain = start_chain(source, 2, tmp_path, root_args=args, node_args=args, env=child_env())
    assert chain.wait() == [0, 0, 0]
    assert all(sha256(o) == sha256(source) for o in chain.outputs)


def test_a_staging_pipe_smaller_than_a_chunk(tmp_path: Path, source: Path) -> None:
    """-buf_size 64 KiB with the relay's chunking left on (no -buf_minwrite): each
    chunk goes out when the pipe is full (this chain stalled for good before)."""
    args = ["-buf_size", "65536"]
    chain = start_chain(source, 2, tmp_path, root_args=args, node_args=args, env=child_env())
    assert chain.wait(timeout=60) == [0, 0, 0]
    assert all(sha256(o) == sha256(source) for o in chain.outputs)


def test_existing_output_is_replaced(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "node2.out"
    out.write_bytes(b"x" * (source.stat().st_size + 5000))  # longer than the stream
    chain = start_chain(source, 1, tmp_path, env=child_env())
    assert chain.wait() == [0, 0]
    assert sha256(out) == sha256(source)


def test_memory_is_bounded_by_buffers(tmp_path: Path) -> None:
    """A 1 GiB stream through a node: its peak RSS stays that of an idle interpreter."""
    size = 1 << 30
    feeder = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    chain = start_chain("-", 1, tmp_path / "b", env=child_env(), outputs=["/dev/null"],
                        stdin=feeder.stdout)  # fmt: skip
    feeder.stdout.close()
    peak = 0
    while chain.receivers[0].poll() is None:
        try:
            for line in Path(f"/proc/{chain.receivers[0].pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            break
        time.sleep(0.05)
    assert chain.wait() == [0, 0]
    feeder.wait()
    assert chain.report()["nodes"][1]["bytes_in"] == size
    assert 0 < peak < 120_000, f"receiver peak RSS {peak} kB"
