"""Two network namespaces joined by one veth pair, for benchmarks (root only).

    with NetnsPair("bkdh", "10.77.0.0/16") as pair:
        subprocess.run([*pair.srv_exec, "ip", "addr"])   # 10.77.0.1 on bkdh-s0
        subprocess.run([*pair.cli_exec, "ip", "addr"])   # 10.77.0.2 on bkdh-c0

The namespaces are ``PREFIX-srv`` and ``PREFIX-cli``; the veth is created
inside them (``ip -n``), so the root namespace's links and addresses are
never touched. Leftovers of an earlier run with the same prefix (a killed
benchmark) are removed first; on exit, error or interrupt every process
still inside the two namespaces is killed and both are deleted.

Creating namespaces takes the shared lock ``/tmp/beokit-netns.lock`` (see
the helper rules): :func:`netns_lock` takes it for the whole run unless the
process already holds it (run under ``flock /tmp/beokit-netns.lock ...``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

LOCK = "/tmp/beokit-netns.lock"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def holds_lock(path: str = LOCK) -> bool:
    """True if one of this process's descriptors is the lock file (inherited from flock(1))."""
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                return True
    return False


@contextlib.contextmanager
def netns_lock(timeout: float = 900.0, path: str = LOCK) -> Iterator[None]:
    """Hold the shared namespace lock, waiting at most ``timeout`` seconds for it."""
    if holds_lock(path):
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} still held after {timeout:.0f} s") from None
                if not said:
                    print(f"waiting for {path} (another namespace user)", file=sys.stderr)
                    said = True
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)  # releases the lock


class NetnsPair:
    """``PREFIX-srv`` (address .1) and ``PREFIX-cli`` (.2) on one veth, one subnet."""

    def __init__(self, prefix: str, subnet: str) -> None:
        self.prefix = prefix
        self.net = ipaddress.IPv4Network(subnet)
        self.srv_ns, self.cli_ns = f"{prefix}-srv", f"{prefix}-cli"
        self.srv_if, self.cli_if = f"{prefix}-s0", f"{prefix}-c0"
        self.srv_ip = self.net.network_address + 1
        self.cli_ip = self.net.network_address + 2

    @property
    def srv_exec(self) -> list[str]:
        return ["ip", "netns", "exec", self.srv_ns]

    @property
    def cli_exec(self) -> list[str]:
        return ["ip", "netns", "exec", self.cli_ns]

    def up(self) -> None:
        self.down()
        plen = self.net.prefixlen
        _ip("netns", "add", self.srv_ns)
        _ip("netns", "add", self.cli_ns)
        _ip("-n", self.srv_ns, "link", "add", self.srv_if, "type", "veth",
            "peer", "name", self.cli_if, "netns", self.cli_ns)  # fmt: skip
        for ns, dev, addr in ((self.srv_ns, self.srv_if, self.srv_ip),
                              (self.cli_ns, self.cli_if, self.cli_ip)):  # fmt: skip
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/{plen}", "brd", "+", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")

    def down(self) -> None:
        """Kill what still runs in the two namespaces, then delete them (idempotent)."""
        listed = _ip("netns", "list", check=False).stdout.split()
        for ns in (self.srv_ns, self.cli_ns):
            if ns not in listed:
                continue
            for sig in (signal.SIGTERM, signal.SIGKILL):
                pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                if not pids:
                    break
                time.sleep(0.5)
            _ip("netns", "del", ns, check=False)

    def __enter__(self) -> NetnsPair:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()
