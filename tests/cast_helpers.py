"""Helpers for the beo cast tests: run the real command, find a node's nettee."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BEO = [sys.executable, "-m", "beokit.cli"]


def cast(*args: str, stdin: bytes | None = None, timeout: float = 90, json_out: bool = True,
         env: dict[str, str] | None = None) -> tuple[int, dict | None, str, str]:  # fmt: skip
    """Run ``beo cast ARGS`` (with --json); (exit status, JSON document, stdout, stderr)."""
    argv = BEO + ["cast"] + (["--json"] if json_out else []) + list(args)
    full_env = dict(os.environ, **(env or {}))
    p = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env)  # fmt: skip
    try:
        bout, berr = p.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        # keep what it said: interrupt it (its own cleanup runs), then kill it
        p.send_signal(signal.SIGINT)
        try:
            bout, berr = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                bout, berr = p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                bout, berr = b"", b"(its output pipes stayed open)"
        raise AssertionError(f"beo cast {' '.join(args)} did not finish within {timeout:g} s; "
                             f"stderr:\n{berr.decode(errors='replace')[-4000:]}") from None
    out, err = bout.decode(errors="replace"), berr.decode(errors="replace")
    doc = None
    if json_out and out.strip():
        doc = json.loads(out)
    return p.returncode, doc, out, err


def by_host(doc: dict) -> dict[str, dict]:
    return {n["host"]: n for n in doc["nodes"]}


def nettee_pid(name: str, timeout: float = 20) -> int:
    """The pid of the nettee started with ``-name NAME`` (waits for it to appear).

    A beo cast receiver forks its nettee (named ``nettee`` in /proc/PID/comm,
    with the receiver's command line and environment, BEO_HOST=NAME).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
                if Path(entry.path, "comm").read_bytes() == b"nettee\n":
                    env = Path(entry.path, "environ").read_bytes().split(b"\0")
                    if b"BEO_HOST=" + name.encode() in env:
                        return int(entry.name)
            except OSError:
                continue
            is_nettee = any(a.endswith(b"nettee") or b"beokit.nettee.cli" in a for a in argv[:4])
            if is_nettee and b"-name" in argv:
                i = argv.index(b"-name")
                if argv[i + 1 : i + 2] == [name.encode()] and b"-root" not in argv:
                    return int(entry.name)
        time.sleep(0.05)
    raise TimeoutError(f"no nettee -name {name}")


def wait_size(path: Path, size: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path.stat().st_size >= size:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{path} never reached {size} bytes")
