"""beo run -R rsh against a real rshd (in.rshd from rsh-redone-server) on loopback.

Each "host" is a loopback address with ``in.rshd`` behind ``socat ... nofork``
(the inetd way: the daemon's stdin and stdout are the accepted socket).
rshd trusts the caller through ~/.rhosts (pam_rhosts); the fixture adds its
lines for the test and restores the file afterwards.  Root only: the rsh
client needs a privileged source port and rshd listens on 514.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BEO = [sys.executable, "-m", "beokit.cli"]
HOSTS = [f"127.0.6.{i}" for i in range(1, 6)]
RSHD = "/usr/sbin/in.rshd"
MISSING = [x for x in (RSHD, "rsh", "socat") if not shutil.which(x) and not os.path.exists(x)]

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="rsh needs root (a privileged source port)"),
    pytest.mark.skipif(bool(MISSING), reason=f"needs {MISSING} (apt-get install "
                       "rsh-redone-server rsh-redone-client socat)"),  # fmt: skip
]


@pytest.fixture(scope="module")
def rshd() -> Iterator[list[str]]:
    rhosts = Path.home() / ".rhosts"
    saved = rhosts.read_bytes() if rhosts.exists() else None
    lines = "".join(f"{h} root\n" for h in ["127.0.0.1", "localhost", *HOSTS])
    rhosts.write_text((saved or b"").decode() + lines)
    rhosts.chmod(0o600)
    procs = [subprocess.Popen(["socat", f"TCP-LISTEN:514,bind={h},reuseaddr,fork",
                               f"EXEC:{RSHD},nofork"], stderr=subprocess.DEVNULL)
             for h in HOSTS]  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        for h in HOSTS:
            while True:
                try:
                    socket.create_connection((h, 514), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        yield HOSTS
    finally:
        for p in procs:
            p.kill()
            p.wait()
        if saved is None:
            rhosts.unlink(missing_ok=True)
        else:
            rhosts.write_bytes(saved)


def beo_run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*BEO, "run", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip


def test_rsh_leaves_report_the_remote_exit_status(rshd: list[str]) -> None:
    """rsh itself returns 0 whatever the remote command did: beo run still sees 3."""
    cmd = "case $BEO_HOST in 127.0.6.2) echo bad; exit 3;; *) echo fine $BEO_HOST;; esac"
    cp = beo_run("-R", "rsh", "--flat", "--json", "127.0.6.[1-3]", "--", cmd)
    doc = json.loads(cp.stdout)
    assert cp.returncode == 1, cp.stderr
    res = doc["results"]
    assert res["127.0.6.2"]["rc"] == 3 and res["127.0.6.2"]["stdout"] == "bad\n"
    assert res["127.0.6.1"]["rc"] == 0 and res["127.0.6.1"]["stdout"] == "fine 127.0.6.1\n"
    assert res["127.0.6.3"]["rc"] == 0


def test_rsh_tree_with_agents(rshd: list[str]) -> None:
    """A binary tree over rsh: inner hosts run the agent (shipped over rsh's stdin)."""
    cp = beo_run("-R", "rsh", "-k", "2", "--json", "127.0.6.[1-5]", "--",
                 "echo up on $BEO_HOST")  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["failed"] == 0
    assert {h: r["stdout"] for h, r in doc["results"].items()} == {
        h: f"up on {h}\n" for h in rshd}


def test_rsh_host_without_rshd_is_named(rshd: list[str]) -> None:
    cp = beo_run("-R", "rsh", "--flat", "--connect-timeout", "3", "--json",
                 "127.0.6.[1,9]", "--", "true")  # fmt: skip
    assert cp.returncode == 1
    doc = json.loads(cp.stdout)
    assert doc["results"]["127.0.6.1"]["rc"] == 0
    bad = doc["results"]["127.0.6.9"]
    assert bad["rc"] is None and bad["error"]
