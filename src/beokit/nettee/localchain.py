"""Run a nettee chain of real processes on loopback addresses (driver).

Node 1 is the root on 127.0.0.1; receiver i listens on 127.0.0.i (i >= 2),
all on the same port: every 127.0.0.0/8 address is local on Linux.  Used by
``beo demo``, the tests and the benchmarks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from beokit.net import free_port

# free_port lives in beokit.net; it stays importable from here for the tests
# and benchmarks that start local chains
__all__ = ["LocalChain", "free_port", "nettee_command", "start_chain"]


def nettee_command() -> list[str]:
    """The nettee of this interpreter's environment (venv-safe, PATH-independent)."""
    exe = Path(sys.executable).parent / "nettee"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "beokit.nettee.cli"]


@dataclass
class LocalChain:
    """A running local chain; ``wait()`` returns every node's exit status."""

    root: subprocess.Popen
    receivers: list[subprocess.Popen]
    outputs: list[Path]
    addrs: list[str]
    report_path: Path
    log_paths: list[Path] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def wait(self, timeout: float = 120.0) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        try:
            for p in [self.root, *self.receivers]:
                codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        finally:
            self.kill()
        return codes

    def kill(self) -> None:
        for p in [self.root, *self.receivers]:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()

    def report(self) -> dict | None:
        try:
            return json.loads(self.report_path.read_text())
        except (OSError, ValueError):
            return None


def start_chain(src: str | Path, receivers: int, workdir: str | Path, *, port: int | None = None,
                secret: str | None = None, root_args: list[str] | None = None,
                node_args: list[str] | None = None, outputs: list[str] | None = None,
                verbose: int = 1, env: dict[str, str] | None = None,
                stdin: int | IO[bytes] | None = None) -> LocalChain:  # fmt: skip
    """Start ``receivers`` receivers (tip first) and the root; returns at once."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    addrs = [f"127.0.0.{i}" for i in range(2, receivers + 2)]
    port = port or free_port(addrs)
    penv = dict(os.environ if env is None else env)
    if secret is not None:
        penv["NETTEE_SECRET"] = secret
    outs = [Path(o) for o in outputs] if outputs else [work / f"node{i}.out" for i in range(2, receivers + 2)]
    logs = [work / f"node{i}.log" for i in range(1, receivers + 2)]
    procs: list[subprocess.Popen] = []
    cmd = nettee_command()
    for k in range(receivers - 1, -1, -1):
        args = cmd + ["-bind", addrs[k], "-port", str(port), "-name", addrs[k],
                      "-out", str(outs[k]), "-v", str(verbose), "-log", str(logs[k + 1])]  # fmt: skip
        if k + 1 < receivers:
            args += ["-next", addrs[k + 1]]
        procs.insert(0, subprocess.Popen(args + (node_args or []), env=penv,
                                         stdin=subprocess.DEVNULL))  # fmt: skip
    report = work / "report.json"
    args = cmd + ["-root", "-next", addrs[0], "-port", str(port), "-in", str(src), "-name",
                  "127.0.0.1", "-report", str(report), "-v", str(verbose), "-log", str(logs[0])]  # fmt: skip
    root = subprocess.Popen(args + (root_args or []), env=penv,
                            stdin=subprocess.DEVNULL if stdin is None else stdin)  # fmt: skip
    return LocalChain(root, procs, outs, addrs, report, logs)
