"""Failures provoked for real: lost bytes (BBC), wrong secrets, timeouts, a killed node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import child_env, is_root, run_nettee, sha256, spawn, wait_all

from beokit.nettee.localchain import free_port, start_chain

TOOLS = Path(__file__).parent / "tools"


def test_bbc_from_a_hop_that_loses_bytes(tmp_path: Path, source: Path) -> None:
    """root -> b -> [lossy proxy] -> c: c gets 1000 bytes short; b reports BBC for c."""
    port = free_port(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    c = spawn("-bind", "127.0.0.3", "-port", str(port), "-out", str(tmp_path / "c"), "-name", "c",
              env=child_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
    proxy = subprocess.Popen([sys.executable, str(TOOLS / "dropper.py"), "127.0.0.4", str(port),
                              "127.0.0.3", str(port), str(1 << 20), "1000"])  # fmt: skip
    try:
        time.sleep(0.5)
        b = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.4", "-out",
                  str(tmp_path / "b"), "-name", "b", "-v", "5", env=child_env(),
                  stderr=subprocess.PIPE, text=True)  # fmt: skip
        root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source),
                     "-name", "root", "-report", str(tmp_path / "r.json"), env=child_env(),
                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        codes = wait_all([root, b, c])
    finally:
        proxy.kill()
        proxy.wait()
    err = root.stderr.read()
    size = source.stat().st_size
    assert codes[0] == 1, err  # the root: a node's data cannot be trusted
    assert codes[2] == 1  # c knows it is short
    assert "Failures detected in chain: NRF BBC" in err
    assert "node c: NRF BBC" in err
    assert (tmp_path / "c").stat().st_size == size - 1000
    assert sha256(tmp_path / "b") == sha256(source)  # b itself is fine
    assert f"received {size - 1000} of {size} bytes" in c.stderr.read()


def test_shared_secret_chain(tmp_path: Path, source: Path) -> None:
    chain = start_chain(source, 3, tmp_path, secret="s3cret-for-tests", env=child_env())
    assert chain.wait() == [0, 0, 0, 0]
    assert all(sha256(o) == sha256(source) for o in chain.outputs)


def test_secret_from_file(tmp_path: Path, source: Path, port: int) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    tip = spawn("-bind", "127.0.0.2", "-port", str(port), "-out", str(tmp_path / "o"),
                env=child_env(NETTEE_SECRET="from-a-file"))  # fmt: skip
    root = run_nettee("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source),
                      "-secret_file", str(secret), env=child_env())  # fmt: skip
    assert root.returncode == 0 and wait_all([tip]) == [0]
    assert sha256(tmp_path / "o") == sha256(source)


@pytest.mark.parametrize(
    ("root_secret", "child_secret", "root_says", "child_says"),
    [
        ("one", "two", "failed the shared-secret challenge", "failed the shared-secret challenge"),
        (None, "two", "requires a shared secret and this node has none",
         "the parent has no shared secret and this node requires one"),
        ("one", None, "has no shared secret and this node requires one",
         "this node has no shared secret and the parent requires one"),
    ],
)  # fmt: skip
def test_wrong_or_missing_secret(tmp_path: Path, source: Path, port: int, root_secret: str | None,
                                 child_secret: str | None, root_says: str,
                                 child_says: str) -> None:  # fmt: skip
    cenv = child_env(**({"NETTEE_SECRET": child_secret} if child_secret else {}))
    renv = child_env(**({"NETTEE_SECRET": root_secret} if root_secret else {}))
    tip = spawn("-bind", "127.0.0.2", "-port", str(port), "-out", str(tmp_path / "o"), "-t", "3",
                env=cenv, stderr=subprocess.PIPE, text=True)  # fmt: skip
    root = run_nettee("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source),
                      env=renv)  # fmt: skip
    assert root.returncode == 1
    assert root_says in root.stderr.decode()
    assert wait_all([tip], timeout=20) == [1]
    child_err = tip.stderr.read()
    assert "authentication failed" in child_err and child_says in child_err
    assert (tmp_path / "o").stat().st_size == 0  # nothing was accepted


def test_timeout_without_parent(tmp_path: Path, port: int) -> None:
    t0 = time.monotonic()
    r = run_nettee("-bind", "127.0.0.2", "-port", str(port), "-t", "1", "-out", "none",
                   env=child_env())  # fmt: skip
    assert r.returncode == 1
    assert 0.9 < time.monotonic() - t0 < 10
    assert "no parent connected within 1 s" in r.stderr.decode()


def test_timeout_when_parent_goes_silent(tmp_path: Path, port: int) -> None:
    """-t also ends a node whose parent stops sending data (here: a stopped root)."""
    feeder = subprocess.Popen([sys.executable, "-c", "import sys,time; sys.stdout.buffer.write(b'x'*1000); sys.stdout.flush(); time.sleep(30)"],
                              stdout=subprocess.PIPE)  # fmt: skip
    tip = spawn("-bind", "127.0.0.2", "-port", str(port), "-t", "1", "-out", "none",
                env=child_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", "-",
                 stdin=feeder.stdout, env=child_env(), stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert wait_all([tip], timeout=15) == [1]
        assert "no data from parent for 1 s" in tip.stderr.read()
        assert wait_all([root], timeout=5) == [1]  # the root sees its child collapse
    finally:
        feeder.kill()
        feeder.wait()


def test_killed_middle_node_collapses_the_chain(tmp_path: Path) -> None:
    """SIGKILL of node 3 of 5 mid-stream: everyone exits non-zero within 2 s."""
    feeder = subprocess.Popen([sys.executable, "-c",
                               "import sys,time\n"
                               "for i in range(3000):\n"
                               "    sys.stdout.buffer.write(b'y'*65536); sys.stdout.flush(); time.sleep(0.01)"],
                              stdout=subprocess.PIPE)  # fmt: skip
    chain = start_chain("-", 4, tmp_path, env=child_env(), stdin=feeder.stdout, verbose=5)
    feeder.stdout.close()
    try:
        deadline = time.monotonic() + 20
        while chain.outputs[-1].stat().st_size < 1 << 20 if chain.outputs[-1].exists() else True:
            assert time.monotonic() < deadline, "stream did not start"
            time.sleep(0.05)
        victim = chain.receivers[1]  # 127.0.0.3, the middle of root-2-3-4-5
        victim.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        others = [chain.root, chain.receivers[0], chain.receivers[2], chain.receivers[3]]
        codes = wait_all(others, timeout=10)
        elapsed = time.monotonic() - t_kill
    finally:
        feeder.kill()
        feeder.wait()
        chain.kill()
    assert all(c != 0 for c in codes), codes
    assert elapsed < 2.5, f"collapse took {elapsed:.2f} s"
    log = chain.log_paths[0].read_text()
    assert "127.0.0.3" in log and "NWF" in log, log


def test_sigterm_stops_a_node_cleanly(tmp_path: Path, port: int) -> None:
    p = spawn("-bind", "127.0.0.2", "-port", str(port), "-out", "none", env=child_env(),
              stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    assert wait_all([p], timeout=5) == [1]
    assert "stopped by SIGTERM" in p.stderr.read()


def _wait_listening(port: int, p: subprocess.Popen, timeout: float = 30) -> None:
    """Until something listens on TCP ``port`` here (a bound wait, not a sleep that a loaded
    machine outruns)."""
    want = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        with open("/proc/net/tcp") as fh:
            if any(c[1].endswith(want) and c[3] == "0A" for c in (ln.split() for ln in fh)):
                return
        time.sleep(0.01)
    raise AssertionError(f"nothing listened on port {port} within {timeout:g} s")


def test_sighup_is_ignored_and_q_silences_it(tmp_path: Path, port: int) -> None:
    for quiet in (False, True):
        args = ["-bind", "127.0.0.2", "-port", str(port), "-out", "none", "-t", "2", "-v", "5"]
        p = spawn(*(args + (["-q"] if quiet else [])), env=child_env(), stderr=subprocess.PIPE,
                  text=True)  # fmt: skip
        _wait_listening(port, p)  # its handlers are in place before it listens
        p.send_signal(signal.SIGHUP)
        assert wait_all([p], timeout=10) == [1]  # lived on until -t ended it
        err = p.stderr.read()
        assert ("ignored signal SIGHUP" in err) is not quiet


@pytest.mark.skipif(not is_root, reason="needs root for a network namespace without routes")
def test_unreachable_child_is_fatal_without_w(tmp_path: Path, source: Path) -> None:
    ns = f"beokit-t{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        cmd = ["ip", "netns", "exec", ns, *spawn_cmd()]
        r = subprocess.run(cmd + ["-root", "-next", "198.18.0.9", "-in", str(source)],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
        assert r.returncode == 1
        assert "198.18.0.9 is not reachable" in r.stderr and "-w" in r.stderr
        # with -w it keeps trying (we stop it after 2 s)
        p = subprocess.Popen(cmd + ["-root", "-w", "-next", "198.18.0.9", "-in", str(source)],
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(2)
        assert p.poll() is None
        p.terminate()
        assert p.wait(timeout=5) == 1
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def spawn_cmd() -> list[str]:
    from conftest import NETTEE

    return list(NETTEE)


@pytest.mark.parametrize("colwf", [False, True])
def test_local_write_failure_on_the_tip(tmp_path: Path, source: Path, colwf: bool) -> None:
    """The tip writes to /dev/full: LWF collapses the chain, or with -colwf is reported."""
    port = free_port(["127.0.0.2", "127.0.0.3"])
    extra = ["-colwf"] if colwf else []
    tip = spawn("-bind", "127.0.0.3", "-port", str(port), "-out", "/dev/full", "-name", "tip",
                "-t", "20", *extra, env=child_env())  # fmt: skip
    mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.3", "-out",
                str(tmp_path / "mid"), "-name", "mid", "-t", "20", env=child_env())  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source), "-name",
                 "root", "-report", str(tmp_path / "r.json"), env=child_env(),
                 stderr=subprocess.PIPE, text=True)  # fmt: skip
    codes = wait_all([root, mid, tip], timeout=30)
    err = root.stderr.read()
    assert "Failures detected in chain: LWF" in err
    assert "Failures detected in child 0 [mid]: NONE" in err  # mid itself is fine
    if colwf:
        assert codes == [0, 0, 0]  # handled: EXIT_SUCCESS, as the man page says
        assert sha256(tmp_path / "mid") == sha256(source)
        report = json.loads((tmp_path / "r.json").read_text())
        tip_result = [n for n in report["nodes"] if n["name"] == "tip"][0]
        assert tip_result["codes"] == ["LWF"] and tip_result["bytes_in"] == source.stat().st_size
    else:
        assert codes == [1, 1, 1]
        assert "tip: local write failure (LWF)" in err
