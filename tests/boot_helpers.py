"""Helpers for the ``beo boot`` tests: a real server process on loopback."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

SERVER = "127.0.2.1"
PORTS = {"dhcp": 10067, "tftp": 10069, "dns": 10053, "http": 10080, "pxe": 14011}


def write_config(tmp: Path, extra: str = "", **server: str) -> Path:
    root = tmp / "root"
    root.mkdir(exist_ok=True)
    srv = "\n".join(f'{k} = "{v}"' for k, v in server.items())
    cfg = tmp / "boot.toml"
    cfg.write_text(f"""
[server]
address = "{SERVER}"
root = "root"
lease_file = "leases.json"
control = "ctl.sock"
{srv}

[network]
subnet = "127.0.0.0/16"
temporary_lease_time = 30
pool = "127.0.16.0-127.0.31.255"

[nodes]
base = "127.0.8.0"
count = 1000

{extra}
""")
    return cfg


class Server:
    """``beo boot`` as a child process; stderr goes to ``log``."""

    def __init__(self, cfg: Path, *args: str, ports: dict[str, int] | None = None,
                 ns: str | None = None, bind: str = SERVER,
                 env: dict[str, str] | None = None, nofile: int | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.log = cfg.parent / "server.log"
        p = dict(PORTS, **(ports or {}))
        argv = [sys.executable, "-m", "beokit.cli", "boot", "-c", str(cfg), "--bind", bind,
                "--dhcp-port", str(p["dhcp"]), "--tftp-port", str(p["tftp"]),
                "--dns-port", str(p["dns"]), "--pxe-port", str(p["pxe"]), "-v", *args]  # fmt: skip
        if ns:
            argv = ["ip", "netns", "exec", ns, *argv]
        self.logf = open(self.log, "ab")  # noqa: SIM115
        self.start = self.log.stat().st_size
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, cwd=cfg.parent,
                                     env=None if env is None else {**os.environ, **env},
                                     preexec_fn=None if nofile is None else
                                     lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                (nofile, nofile)))  # fmt: skip
        self.wait_log("beo boot serving", 10)

    def text(self) -> str:
        return self.log.read_bytes()[self.start :].decode(errors="replace")

    def wait_log(self, needle: str, timeout: float = 10, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.text()
            if t.count(needle) >= count:
                return t
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{t}")
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} in the server log within {timeout} s:\n{self.text()}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        return self.proc.returncode

    @property
    def pid(self) -> int:
        """The server's own pid (the child of ``ip netns exec`` execs in place)."""
        return self.proc.pid

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        return 0

    def status(self) -> dict:
        """``beo boot status``: the server's state over its control socket."""
        r = subprocess.run([sys.executable, "-m", "beokit.cli", "boot", "-c", str(self.cfg),
                            "status"], capture_output=True, text=True, timeout=30,
                           check=True)  # fmt: skip
        return json.loads(r.stdout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
