"""beo run's launch listener under a connection flood (issue 19, item 11), for real.

The root agent listens for its children's hellos (backlog 128).  A stranger's
connection must cost a socket, never a thread: 1,000 connections that never
say hello (idle, garbage, a line cut short) while the children call back leave
the beo run process with a bounded number of threads, and every host runs its
command.  Before the fix each connection had its own thread (449 threads in the
same flood aimed at beo cast's launcher).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BEO = [sys.executable, "-m", "beokit.cli"]
FLOOD = 1000
THREADS_MAX = 40


def _listen_port(pid: int, backlog: str = "128", timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ss = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
        for line in ss.splitlines():
            f = line.split()
            if f"pid={pid}," in line and f[2] == backlog:
                return int(f[3].rsplit(":", 1)[1])
        time.sleep(0.05)
    raise TimeoutError("beo run never listened")


def _threads(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"^Threads:\s+(\d+)", status, re.M)
    return int(m.group(1)) if m else 0


def _flood(port: int, sockets: list[socket.socket]) -> None:
    for i in range(FLOOD):
        s = socket.socket()
        s.bind((f"127.0.9.{1 + i % 2}", 0))
        try:
            s.connect(("127.0.0.1", port))
            if i % 3 == 1:
                s.sendall(b'{"t": "hello", "token": "00"}\n')
            elif i % 3 == 2:
                s.sendall(b'{"t": "hello", ')  # and never the rest
        except OSError:
            s.close()  # shed already: its right
            continue
        sockets.append(s)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_connection_flood_on_the_launch_listener(tmp_path: Path) -> None:
    flag = tmp_path / "flood-in-place"
    # every launch waits for the flag, so the children call back only once the
    # flood is in place
    template = (f"sh -c 'while [ ! -e {flag} ]; do sleep 0.05; done; exec sh -c \"$0\"' "
                "{cmd} {host}")  # fmt: skip
    p = subprocess.Popen(BEO + ["run", "-R", template, "--leaf-agents", "--remote-python",
                                sys.executable, "--connect-timeout", "60", "--json",
                                "127.0.4.[1-6]", "--", "echo", "hi"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    sockets: list[socket.socket] = []
    peak = 0
    try:
        port = _listen_port(p.pid)
        flooder = threading.Thread(target=_flood, args=(port, sockets), daemon=True)
        flooder.start()
        while flooder.is_alive():
            peak = max(peak, _threads(p.pid))
            flooder.join(0.01)
        flag.touch()
        deadline = time.monotonic() + 90
        while p.poll() is None and time.monotonic() < deadline:
            peak = max(peak, _threads(p.pid))
            time.sleep(0.01)
        out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for s in sockets:
            s.close()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert 0 < peak <= THREADS_MAX, peak
    assert p.returncode == 0, err[-2000:]
    doc = json.loads(out)
    assert doc["failed"] == 0 and len(doc["results"]) == 6, out[-2000:]
    assert all(r["rc"] == 0 and r["stdout"] == "hi\n" for r in doc["results"].values())


def test_output_into_a_closed_pipe_is_quiet() -> None:
    """`beo run --json ... | head -1`: no BrokenPipeError traceback, status 141.

    The document (40 x 8.9 KB of output) is larger than a pipe holds, so beo run
    is still writing when head leaves (with a small one it could be done first)."""
    sh = (f"{' '.join(BEO)} run -R exec --json '127.0.4.[1-40]' -- seq 2000 | head -c 10 "
          ">/dev/null; echo rc=${PIPESTATUS[0]} >&2")  # fmt: skip
    cp = subprocess.run(["bash", "-c", sh], capture_output=True, text=True, timeout=60,
                        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert "Traceback" not in cp.stderr and "rc=141" in cp.stderr, cp.stderr[-2000:]
