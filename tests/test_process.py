"""-process and -flow pull: processing trees with standard tools."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

from conftest import child_env, run_nettee, spawn, wait_all

from beokit.nettee.localchain import free_port

PULL = ["-flow", "pull", "-process", "sort -m {}"]


def test_pull_merge_of_eight_presorted_files(tmp_path: Path) -> None:
    """8 nodes each hold a presorted file; the root gets exactly `sort -m` of all of them."""
    rng = random.Random(8)
    files = []
    for i in range(8):
        f = tmp_path / f"part{i}"
        f.write_text("".join(sorted(f"{rng.randrange(10**9):09d} node{i}\n" for _ in range(5000))))
        files.append(f)
    # root(0) -> [1, 2]; 1 -> [3, 4]; 2 -> [5, 6]; 3 -> 7
    kids = {1: [3, 4], 2: [5, 6], 3: [7], 4: [], 5: [], 6: [], 7: []}
    addr = {i: f"127.0.0.{i + 1}" for i in range(8)}
    port = free_port(list(addr.values()))
    procs = []
    for i in sorted(kids, reverse=True):
        args = ["-bind", addr[i], "-port", str(port), "-name", f"n{i}", *PULL, "-in", str(files[i])]
        if kids[i]:
            args += ["-next", ",".join(addr[k] for k in kids[i]), "-out", "none"]
        procs.append(spawn(*args, env=child_env()))
    merged = tmp_path / "merged"
    root = spawn("-root", "-port", str(port), "-name", "n0", *PULL, "-next",
                 f"{addr[1]},{addr[2]}", "-in", str(files[0]), "-out", str(merged), "-v", "5",
                 env=child_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
    codes = wait_all([root, *procs], timeout=60)
    err = root.stderr.read()
    assert codes == [0] * 8, err
    assert "Failures detected in chain: NONE" in err
    want = subprocess.run(["sort", "-m", *map(str, files)], capture_output=True,
                          env=dict(child_env(), LC_ALL="C"), check=True).stdout  # fmt: skip
    assert merged.read_bytes() == want
    assert len(want.splitlines()) == 8 * 5000


def test_push_process_transforms_on_every_node(tmp_path: Path) -> None:
    src = tmp_path / "text"
    src.write_text("hello, cluster\n" * 10000)
    port = free_port(["127.0.0.2", "127.0.0.3"])
    tip = spawn("-bind", "127.0.0.3", "-port", str(port), "-process", "tr a-z A-Z", "-out",
                str(tmp_path / "c"), env=child_env())  # fmt: skip
    mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-process", "rev", "-next", "127.0.0.3",
                "-out", str(tmp_path / "b"), env=child_env())  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-process", "cat {}", "-in",
                 str(src), env=child_env())  # fmt: skip
    assert wait_all([root, mid, tip], timeout=60) == [0, 0, 0]
    assert (tmp_path / "b").read_text() == "retsulc ,olleh\n" * 10000  # mid: rev
    assert (tmp_path / "c").read_text() == "RETSULC ,OLLEH\n" * 10000  # tip: rev, then upper


def test_local_input_merged_on_a_push_node(tmp_path: Path) -> None:
    """A non-root push node may add its own -in, merged by -process."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("1\n3\n5\n")
    b.write_text("2\n4\n6\n")
    port = free_port(["127.0.0.2"])
    tip = spawn("-bind", "127.0.0.2", "-port", str(port), "-process", "sort -m {}", "-in", str(b),
                "-out", str(tmp_path / "out"), env=child_env())  # fmt: skip
    r = run_nettee("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(a),
                   env=child_env())  # fmt: skip
    assert r.returncode == 0 and wait_all([tip]) == [0]
    assert (tmp_path / "out").read_text() == "1\n2\n3\n4\n5\n6\n"


def test_failing_process_is_lrf(tmp_path: Path) -> None:
    port = free_port(["127.0.0.2"])
    tip = spawn("-bind", "127.0.0.2", "-port", str(port), "-process", "head -c 10; exit 3",
                "-out", str(tmp_path / "o"), "-name", "tip", env=child_env())  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", "/etc/services",
                 env=child_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
    codes = wait_all([root, tip], timeout=30)
    err = root.stderr.read()
    assert codes == [1, 1]
    assert "tip: local read failure (LRF)" in err and "exited with status 3" in err


def test_hprocess_documents_the_interface() -> None:
    out = run_nettee("-hprocess").stdout.decode()
    for word in ("{}", "NETTEE_INPUTS", "stdout", "-flow pull", "sort -m"):
        assert word in out
