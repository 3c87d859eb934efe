"""-stm text streaming and `beo exec`, the executor at the end of it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from conftest import child_env, python, spawn, wait_all

from beokit.nettee.localchain import free_port

BEO = [python, "-m", "beokit.cli"]


def test_lines_travel_at_once_and_eos_ends_the_chain(tmp_path: Path) -> None:
    port = free_port(["127.0.0.2", "127.0.0.3"])
    tip = spawn("-bind", "127.0.0.3", "-port", str(port), "-stm", "EOS", "-out", "-",
                stdout=subprocess.PIPE, env=child_env())  # fmt: skip
    mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-stm", "EOS", "-next", "127.0.0.3",
                "-out", str(tmp_path / "mid"), env=child_env())  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-stm", "EOS",
                 stdin=subprocess.PIPE, env=child_env())  # fmt: skip
    try:
        for i in range(5):  # each line arrives while the root's input is still open
            t0 = time.monotonic()
            root.stdin.write(f"line {i}\n".encode())
            root.stdin.flush()
            assert tip.stdout.readline() == f"line {i}\n".encode()
            assert time.monotonic() - t0 < 2.0
        root.stdin.write(b"EOS\nafter the end\n")
        root.stdin.flush()
        assert wait_all([root, mid, tip], timeout=15) == [0, 0, 0]  # EOS ended them, stdin open
        assert tip.stdout.read() == b""
        assert (tmp_path / "mid").read_text() == "".join(f"line {i}\n" for i in range(5))
    finally:
        root.stdin.close()


def test_stm_refuses_minwrite() -> None:
    from conftest import run_nettee

    r = run_nettee("-stm", "EOS", "-buf_minwrite", "10")
    assert r.returncode == 2 and "-buf_minwrite 10" in r.stderr.decode()


def _exec_node(addr: str, port: int, nxt: str | None, tmp: Path, env: dict,
               *extra: str) -> subprocess.Popen:  # fmt: skip
    args = BEO + ["exec", "--bind", addr, "--port", str(port), "--name", addr, "--timing",
                  str(tmp / f"timing-{addr}")] + list(extra)  # fmt: skip
    if nxt:
        args += ["--next", nxt]
    return subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)


def test_beo_exec_runs_each_line_on_every_node(tmp_path: Path) -> None:
    addrs = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port = free_port(addrs)
    env = child_env(NETTEE_SECRET="exec-secret")
    nodes = [_exec_node(a, port, addrs[i + 1] if i + 1 < len(addrs) else None, tmp_path, env)
             for i, a in enumerate(addrs)]  # fmt: skip
    script = (f"echo one > {tmp_path}/out-$BEO_EXEC_NODE\n"
              f"echo two >> {tmp_path}/out-$BEO_EXEC_NODE\n"
              "exit 3\nEOS\n").encode()  # fmt: skip
    # -stm_wait: the root reports once every node's commands ended, and names the failure
    root = subprocess.run(list(_nettee()) + ["-root", "-port", str(port), "-next", addrs[0],
                                             "-stm", "EOS", "-stm_wait", "0"], input=script,
                          env=env, capture_output=True, timeout=30)  # fmt: skip
    assert root.returncode == 1, root.stderr
    for a in addrs:
        assert f"node {a}: command 3 'exit 3': exit status 3".encode() in root.stderr
    codes = wait_all(nodes, timeout=30)
    assert codes == [1, 1, 1]  # 'exit 3' failed on every node: reported in the status
    for a, n in zip(addrs, nodes, strict=True):
        assert (tmp_path / f"out-{a}").read_text() == "one\ntwo\n"
        assert "3 command(s) run, 1 failed" in n.stderr.read()


def test_beo_exec_refuses_an_unauthenticated_chain(tmp_path: Path) -> None:
    r = subprocess.run(BEO + ["exec", "--bind", "127.0.0.2"], env=child_env(),
                       capture_output=True, text=True, timeout=20)  # fmt: skip
    assert r.returncode == 2
    assert "refusing to run commands from an unauthenticated chain" in r.stderr
    assert r.stderr.count("\n") == 1


def test_beo_exec_insecure_flag_warns_loudly(tmp_path: Path) -> None:
    port = free_port(["127.0.0.2"])
    node = _exec_node("127.0.0.2", port, None, tmp_path, child_env(), "--insecure-run-anything")
    time.sleep(1.0)
    root = subprocess.run(list(_nettee()) + ["-root", "-port", str(port), "-next", "127.0.0.2",
                                             "-stm", "EOS"], input=b"true\nEOS\n",
                          env=child_env(), capture_output=True, timeout=30)  # fmt: skip
    assert root.returncode == 0
    assert wait_all([node], timeout=20) == [0]
    assert "WARNING: --insecure-run-anything" in node.stderr.read()


def _nettee() -> list[str]:
    from conftest import NETTEE

    return NETTEE
