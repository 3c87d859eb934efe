"""A private OpenSSH server on loopback for the tests (root only): ``sshd`` fixture.

Four "hosts" n1-n4 on 127.0.0.2-5, known only to the generated ssh_config
(``Host n1 / HostName 127.0.0.2``: names only ssh knows), a host ``down1``
where nothing listens; the fixture yields the ``--ssh-args`` (``-F CONFIG``).
Use it with ``from sshd_fixture import SSH_HOSTS, sshd  # noqa: F401``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

SSH_HOSTS = {"n1": "127.0.0.2", "n2": "127.0.0.3", "n3": "127.0.0.4", "n4": "127.0.0.5"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A private sshd on 127.0.0.2-5; yields the ``--ssh-args`` for beo run."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd_bin) or not shutil.which("ssh-keygen") or not shutil.which("ssh"):
        pytest.skip("OpenSSH server/client not installed (apt-get install openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("the private sshd logs in as the current user only as root here")
    d = tmp_path_factory.mktemp("sshd")
    port = _free_port()
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)  # fmt: skip
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    listen = "".join(f"ListenAddress {a}:{port}\n" for a in SSH_HOSTS.values())
    (d / "sshd_config").write_text(
        f"{listen}HostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n"
        f"PidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nMaxStartups 100\nMaxSessions 100\n"
        "LogLevel ERROR\n")  # fmt: skip
    hosts = "".join(f"Host {n}\n  HostName {a}\n" for n, a in SSH_HOSTS.items())
    (d / "ssh_config").write_text(
        f"{hosts}Host down1\n  HostName 127.0.0.9\nHost *\n  Port {port}\n  User root\n"
        f"  IdentityFile {d}/user_key\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n")  # fmt: skip
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    args = ["-F", str(d / "ssh_config")]
    try:
        for _ in range(50):
            if proc.poll() is not None:
                pytest.skip(f"sshd did not start: {proc.stderr.read().decode()[-300:]}")
            ok = subprocess.run(["ssh", *args, "n1", "true"], capture_output=True, timeout=10)
            if ok.returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.skip(f"cannot ssh to the private sshd: {ok.stderr.decode()[-300:]}")
        yield args
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
