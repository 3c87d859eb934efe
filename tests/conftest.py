"""Shared fixtures: real nettee processes on loopback addresses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beokit.net import free_port
from beokit.nettee.demo import sha256_file
from beokit.nettee.localchain import nettee_command

NETTEE = nettee_command()


sha256 = sha256_file  # one digest helper for the demo and the tests


def run_nettee(*args: str, timeout: float = 30, env: dict | None = None,
               stdin: bytes | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    return subprocess.run(NETTEE + list(args), input=stdin, capture_output=True,
                          timeout=timeout, env=env)  # fmt: skip


def spawn(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(NETTEE + list(args), env=env, **kw)


def wait_all(procs: list[subprocess.Popen], timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """An 8 MiB file of random bytes (plus an odd tail)."""
    p = tmp_path / "source.bin"
    p.write_bytes(os.urandom(8 * 1024 * 1024 + 4321))
    return p


@pytest.fixture
def port() -> int:
    return free_port([f"127.0.0.{i}" for i in range(1, 12)])


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop("NETTEE_SECRET", None)
    env.update(extra)
    return env


is_root = os.geteuid() == 0
python = sys.executable
