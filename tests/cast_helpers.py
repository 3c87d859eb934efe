"""Helpers for the beo cast tests: run the real command, find a node's nettee."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
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


def _listening_inodes(addr: str) -> set[str]:
    """Inodes of the TCP sockets listening on IPv4 ``addr`` (any port), from /proc/net/tcp."""
    want = "".join(f"{int(b):02X}" for b in reversed(addr.split(".")))
    found = set()
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        f = line.split()
        if len(f) > 9 and f[3] == "0A" and f[1].split(":")[0] == want:
            found.add(f[9])
    return found


def nettee_pid(name: str, timeout: float = 20) -> int:
    """The pid of the nettee of the receiver of host ``name`` (an address in 127/8,
    which that nettee binds: -R exec), waiting for it to appear.

    A beo cast receiver is forked from its node's agent and forks its nettee
    (``nettee`` in /proc/PID/comm); neither is exec'd, so their command lines
    and environments are the fork server's: the nettee is known by the address
    it listens on.  A nettee started on its own (``-bind NAME``) is found the same way.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inodes = _listening_inodes(name)
        if inodes:
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    if Path(entry.path, "comm").read_bytes() != b"nettee\n":
                        continue
                    for fd in os.scandir(f"{entry.path}/fd"):
                        link = os.readlink(fd.path)
                        if link.startswith("socket:[") and link[8:-1] in inodes:
                            return int(entry.name)
                except OSError:
                    continue
        time.sleep(0.05)
    raise TimeoutError(f"no nettee listening on {name}")


def children(pid: int) -> list[int]:
    """The children of ``pid`` now (every thread's, from /proc/PID/task/*/children)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


ROOT_NETTEE_MARK = b"from beokit.nettee.cli import main"  # in the root nettee's -c program


def root_nettee_pid(cast_pid: int, timeout: float = 30) -> int:
    """The pid of the root nettee of the ``beo cast`` process ``cast_pid``, as soon as it
    exists (polled every 2 ms: it is started before the receivers are launched, and is
    given its arguments only once every receiver answered)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children(cast_pid):
            try:
                if ROOT_NETTEE_MARK in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                continue
        time.sleep(0.002)
    raise TimeoutError(f"no root nettee below beo cast (pid {cast_pid})")


def has_sockets(pid: int) -> bool:
    """Does ``pid`` hold a socket (a nettee that has begun to form its chain does)?"""
    try:
        return any(os.readlink(fd.path).startswith("socket:")
                   for fd in os.scandir(f"/proc/{pid}/fd"))  # fmt: skip
    except OSError:
        return False


class HeldChain:
    """The chain of a running ``beo cast -R exec`` held before it forms, whatever the
    machine's speed or load, its tip's nettee stopped (SIGSTOP): the root has opened
    SOURCE but reads nothing past its pipe until :meth:`resume`.

    Finding the tip's nettee by its listening address and stopping it races the
    chain's formation (a few ms after it listens; under load the cast could even end
    first).  So the root's nettee, which starts before the receivers are launched and
    gets its arguments only once every one answered, is stopped first: nothing can
    form while it is stopped, every receiver's nettee comes up and listens, the tip's
    is found and stopped at leisure, and the root is let go.
    """

    def __init__(self, cast: subprocess.Popen, tip: str) -> None:
        self.pid = 0  # the tip's nettee, once stopped
        self.error = ""
        self.thread = threading.Thread(target=self._hold, args=(cast.pid, tip), daemon=True)
        self.thread.start()

    def _hold(self, cast_pid: int, tip: str) -> None:
        try:
            root = root_nettee_pid(cast_pid)
        except TimeoutError as exc:
            self.error = str(exc)
            return
        os.kill(root, signal.SIGSTOP)
        try:
            if has_sockets(root):
                self.error = "the root nettee was stopped after it had begun to stream"
                return
            self.pid = nettee_pid(tip, timeout=60)
            os.kill(self.pid, signal.SIGSTOP)
        except (TimeoutError, OSError) as exc:
            self.error = str(exc)
        finally:
            os.kill(root, signal.SIGCONT)

    def resume(self) -> None:
        """Let the tip go (and fail the test if the chain could not be held)."""
        self.thread.join(90)
        if self.pid:
            os.kill(self.pid, signal.SIGCONT)
        assert self.pid, f"the chain was not held: {self.error or 'still trying'}"


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


def start_cast(*args: str, stdin: int | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
    """Start ``beo cast --json ARGS`` in the background (finish it with :func:`finish_cast`)."""
    return subprocess.Popen(BEO + ["cast", "--json", *args],
                            stdin=subprocess.DEVNULL if stdin is None else stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, **(env or {})))  # fmt: skip


def finish_cast(p: subprocess.Popen, timeout: float = 90) -> tuple[int, dict | None, str]:
    """Wait for a cast started by :func:`start_cast`: (exit status, JSON document, stderr)."""
    try:
        bout, berr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        bout, berr = p.communicate(timeout=10)
        raise AssertionError(f"beo cast did not finish within {timeout:g} s; stderr:\n"
                             f"{berr.decode(errors='replace')[-4000:]}") from None  # fmt: skip
    out = bout.decode(errors="replace")
    return p.returncode, (json.loads(out) if out.strip() else None), berr.decode(errors="replace")


def wait_open(path: Path, timeout: float = 30) -> int:
    """The pid of a process that has ``path`` open (waits for one to appear)."""
    want = os.path.realpath(path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                for fd in os.scandir(f"/proc/{entry.name}/fd"):
                    if os.readlink(fd.path) == want:
                        return int(entry.name)
            except OSError:
                continue
        time.sleep(0.02)
    raise TimeoutError(f"no process opened {path}")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...), now."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                parent[int(entry.name)] = int(fields[1])
            except (OSError, ValueError, IndexError):
                continue
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in found]
        found.update(kids)
        todo += kids
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` that still run (zombies count as gone)."""
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out.add(pid)
    return out


def wait_gone(pids: set[int], timeout: float = 20) -> set[int]:
    """Wait (bounded) until none of ``pids`` runs; those still running."""
    deadline = time.monotonic() + timeout
    while (left := alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left
