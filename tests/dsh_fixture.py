"""Helpers for the dsh tests: dshd daemons on 127.0.1.x, and a private sshd there.

The sshd part follows tests/test_launch.py (a real OpenSSH server on loopback
addresses with temporary keys), copied here so that the two test files stay
independent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from beokit.dsh.client import query

BEO = [sys.executable, "-m", "beokit.cli"]


def addr(i: int) -> str:
    return f"127.0.1.{i}"


def free_ports(addresses: list[str], n: int, kinds: tuple[int, ...] = (socket.SOCK_STREAM,
               socket.SOCK_DGRAM)) -> list[int]:  # fmt: skip
    """``n`` port numbers free for TCP and UDP on every address."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        ok = True
        for a in addresses:
            for kind in kinds:
                with socket.socket(socket.AF_INET, kind) as t:
                    try:
                        t.bind((a, p))
                    except OSError:
                        ok = False
        if ok and p not in ports:
            ports.append(p)
    return ports


class Cluster:
    """``n`` dshd processes on 127.0.1.1..n, same ports, load from files."""

    def __init__(self, tmp: Path, n: int, *, period: float = 0.3, expire: int = 3,
                 extra: list[str] | None = None, secret: str | None = None,
                 cluster_text: str | None = None) -> None:  # fmt: skip
        self.tmp, self.n, self.period = tmp, n, period
        self.addrs = [addr(i) for i in range(1, n + 1)]
        self.gossip, self.status, self.best = free_ports(self.addrs, 3)
        self.cluster = tmp / "cluster"
        self.cluster.write_text(cluster_text or "".join(f"{a}\n" for a in self.addrs))
        self.env = dict(os.environ)
        self.env.pop("BEO_DSH_SECRET", None)
        self.env.pop("BEO_DSH_DAEMON", None)
        if secret is not None:
            self.env["BEO_DSH_SECRET"] = secret
        self.secret = secret.encode() if secret is not None else None
        self.extra = extra or []
        self.expire = expire
        self.procs: dict[int, subprocess.Popen] = {}
        for i in range(1, n + 1):  # all at once, then wait: python starts slowly
            self.set_load(i, 0.0)
            self.spawn(i)
        for i in range(1, n + 1):
            self.wait_listening(i)

    def load_file(self, i: int) -> Path:
        return self.tmp / f"load{i}"

    def log(self, i: int) -> Path:
        return self.tmp / f"dshd{i}.log"

    def set_load(self, i: int, load: float, **more: float) -> None:
        tmpf = self.tmp / f".load{i}"
        tmpf.write_text(json.dumps({"load1": load, "load5": load, "load15": load, "cpus": 1,
                                    **more}))  # fmt: skip
        tmpf.rename(self.load_file(i))

    def argv(self, i: int) -> list[str]:
        return [*BEO, "dshd", "-f", str(self.cluster), "--bind", addr(i),
                "-g", str(self.gossip), "-t", str(self.status), "-r", str(self.best),
                "--period", str(self.period), "--expire", str(self.expire),
                "--load-file", str(self.load_file(i)), "--log", str(self.log(i)),
                "--jobs-dir", str(self.tmp / "jobs"), *self.extra]  # fmt: skip

    def spawn(self, i: int) -> subprocess.Popen:
        p = subprocess.Popen(self.argv(i), env=self.env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        self.procs[i] = p
        return p

    def start(self, i: int) -> subprocess.Popen:
        self.spawn(i)
        return self.wait_listening(i)

    def wait_listening(self, i: int) -> subprocess.Popen:
        p = self.procs[i]
        wait_for(lambda: p.poll() is not None or port_open(addr(i), self.status), 20,
                 f"dshd {i} listening")  # fmt: skip
        if p.poll() is not None:
            raise AssertionError(f"dshd {i} exited: {p.stderr.read().decode()}")  # type: ignore[union-attr]
        return p

    def stop(self, i: int, sig: int = signal.SIGTERM) -> int:
        p = self.procs.pop(i)
        p.send_signal(sig)
        try:
            return p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait()

    def close(self) -> None:
        for i in list(self.procs):
            self.stop(i)

    def status_json(self, i: int = 1) -> dict:
        return json.loads(query(addr(i), self.status, "status", "json", self.secret, 5.0))

    def up(self, i: int = 1) -> set[str]:
        return {m["name"] for m in self.status_json(i)["members"] if m["up"]}

    def settle(self, loads: dict[int, float], i: int = 1) -> None:
        """Set loads, wait until daemon ``i`` shows them and holds no extra-load bump."""
        for j, load in loads.items():
            self.set_load(j, load)
        want = {addr(j): load for j, load in loads.items()}

        def settled() -> bool:
            ms = self.status_json(i)["members"]
            return all(m["extra"] == 0 and m.get("load1") == want.get(m["name"], m.get("load1"))
                       and m["up"] for m in ms)  # fmt: skip

        wait_for(settled, 10, f"loads {loads} on daemon {i}")

    def settle_some(self, loads: dict[int, float], i: int = 1) -> None:
        """Set loads, wait until daemon ``i`` shows them (the other members may be down)."""
        for j, load in loads.items():
            self.set_load(j, load)

        def settled() -> bool:
            ms = {m["name"]: m for m in self.status_json(i)["members"]}
            return all(ms[addr(j)].get("load1") == load and ms[addr(j)]["extra"] == 0
                       for j, load in loads.items())  # fmt: skip

        wait_for(settled, 10, f"loads {loads} on daemon {i}")

    def best_node(self, i: int = 1) -> str:
        return query(addr(i), self.best, "best", "", self.secret, 5.0).split()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tcp_query(host: str, port: int, request: bytes, timeout: float = 5.0) -> str:
    with socket.create_connection((host, port), timeout=timeout) as s:
        if request:
            s.sendall(request)
        chunks = []
        while True:
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
    return b"".join(chunks).decode()


def wait_for(cond, timeout: float, what: str, step: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll ``cond`` until truthy (returned) or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


@contextmanager
def cluster(tmp: Path, n: int, **kw) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    c = Cluster(tmp, n, **kw)
    try:
        yield c
    finally:
        c.close()


# ------------------------------------------------------------------ sshd


def start_sshd(d: Path, addresses: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """A private sshd listening on ``addresses``; returns it and the ssh client args."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd_bin) or not shutil.which("ssh-keygen") or not shutil.which("ssh"):
        pytest.skip("OpenSSH server/client not installed (apt-get install openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("the private sshd logs in as the current user only as root here")
    d.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(addresses, 1, (socket.SOCK_STREAM,))
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)  # fmt: skip
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    listen = "".join(f"ListenAddress {a}:{port}\n" for a in addresses)
    (d / "sshd_config").write_text(
        f"{listen}HostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n"
        f"PidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nMaxStartups 100\nMaxSessions 100\n"
        "LogLevel ERROR\n")  # fmt: skip
    (d / "ssh_config").write_text(
        f"Host *\n  Port {port}\n  User root\n  IdentityFile {d}/user_key\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n"
        "  LogLevel ERROR\n")  # fmt: skip
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    args = ["ssh", "-F", str(d / "ssh_config")]
    ok = None
    for _ in range(50):
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {proc.stderr.read().decode()[-300:]}")  # type: ignore[union-attr]
        ok = subprocess.run([*args, addresses[0], "true"], capture_output=True, timeout=10)
        if ok.returncode == 0:
            break
        time.sleep(0.1)
    else:
        stop(proc)
        pytest.skip(f"cannot ssh to the private sshd: {ok.stderr.decode()[-300:]}")  # type: ignore[union-attr]
    return proc, args


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
