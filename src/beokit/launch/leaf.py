"""A leaf host: the command runs through the backend itself, no agent (as pdsh does).

A host with no share needs no agent: the backend process runs the command
(see :meth:`beokit.launch.backends.Backend.leaf_command`) and the agent that
launched it reads its output and exit status here.  The marker line ends the
connect timeout (down: the backend exits first; hanging: no marker in time);
with ``--barrier`` the leaf waits for a ``go`` line on its stdin.

Standard library only (shipped with the agent).
"""

from __future__ import annotations

import os
import selectors
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from beokit.launch import plan
from beokit.launch.backends import environ
from beokit.proc import kill_group, shell_argv

if TYPE_CHECKING:
    from beokit.launch.agent import Agent

EXIT_GRACE = 5.0  # a finished child's launch process must exit within this


def feed(proc: subprocess.Popen, data: bytes) -> None:
    """Write ``data`` to ``proc``'s stdin and close it, from a thread of its own:
    the command may read it late (or never) while we read its output."""

    def write() -> None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(data)
            proc.stdin.close()
        except (OSError, ValueError):
            pass  # it ended already (or does not read): its reader sees the end

    threading.Thread(target=write, daemon=True).start()


def run_leaf(agent: Agent, host: str, held: bool = False) -> dict[str, Any]:
    """Run the command on ``host`` through the backend; its result message.

    Holds one slot of the agent's launch window until the leaf is up
    (``held``: the caller took it already).
    """
    if not held:
        agent.window.acquire()
    leaf = _Leaf(agent, host)
    try:
        return leaf.run()
    finally:
        if leaf.held:
            agent.window.release()


class _Leaf:
    def __init__(self, agent: Agent, host: str) -> None:
        self.agent = agent
        self.host = host
        self.held = True  # the launch window slot
        self.go = threading.Event()  # --barrier: the go line was written to the leaf
        self.connect_timeout = float(agent.cfg.get("connect_timeout", 10))
        self.timeout = float(agent.cfg.get("timeout") or 0)
        self.up = False
        self.start = 0  # where the command's own stdout starts (after the marker)
        self.launched = 0.0
        self.deadline = 0.0
        self.proc: subprocess.Popen | None = None
        self.bufs: dict[int, bytearray] = {}

    def _argv(self) -> tuple[list[str], dict[str, str] | None, bool]:
        """(argv, environment, whether the command runs already once started)."""
        agent, command = self.agent, self.agent.cfg["command"]
        if agent.backend.kind == "exec":  # a local process: up once it exists
            argv = shell_argv(command)
            if agent.barrier:  # wait for the go line, then run the command
                rest = "" if agent.payload is not None else " </dev/null"
                argv = shell_argv(f'read _go || exit 125; exec /bin/sh -c "$0"{rest}') + [command]
            return argv, environ(self.host), True
        remote = agent.backend.leaf_command(self.host, command, agent.barrier,
                                            stdin=agent.payload is not None)  # fmt: skip
        return agent.backend.argv(self.host, remote), None, False

    def run(self) -> dict[str, Any]:
        agent = self.agent
        self.launched = time.monotonic()
        agent.window.begin()
        agent.emit(plan.state(self.host, "launched"))
        if agent.backend.delay:
            time.sleep(agent.backend.delay)  # the simulated rsh/ssh handshake
        if agent.closing:
            return plan.result(self.host, None, error="launch cancelled")
        argv, env, local = self._argv()
        piped = agent.barrier or agent.payload is not None
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
                                    env=env, start_new_session=True)  # fmt: skip
        except OSError as exc:
            return plan.result(self.host, None, error=f"cannot launch: {exc}")
        self.proc = proc
        agent.track(proc)
        if agent.closing:  # close() may have taken its list of leaves before this one
            kill_group(proc)
        if agent.payload is not None and not agent.barrier:
            feed(proc, agent.payload)
        try:
            return self._io(up=local)
        finally:
            if proc.poll() is None:
                kill_group(proc)
            proc.wait()
            agent.untrack(proc)

    # ------------------------------------------------------------- reading

    def _io(self, up: bool) -> dict[str, Any]:
        """Read the leaf's stdout/stderr to the end with bounded waits; its result."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        self.bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        self.deadline = time.monotonic() + self.connect_timeout
        if up:
            self._running()
        return self._result(self._pump())

    def _running(self) -> None:
        """The leaf is up: free the window slot; the command's deadline."""
        self.up = True
        self.agent.window.release()
        self.held = False
        self.agent.took(time.monotonic() - self.launched)
        self.agent.emit(plan.state(self.host, "running"))
        if self.agent.barrier:
            self.agent.on_release(self._go)
        self.deadline = time.monotonic() + self.timeout if self.timeout else float("inf")

    def _go(self) -> None:
        """--barrier: write the go line to a waiting leaf (its command starts)."""
        assert self.proc is not None
        feed(self.proc, b"go\n" + (self.agent.payload or b""))
        self.go.set()

    def _pump(self) -> str | None:
        """Read until both pipes end; None, or why the leaf was stopped."""
        # poll(2): no epoll descriptor to make and close per leaf.  No timer either:
        # it sleeps until output, the deadline, or the agent's close (its stop pipe)
        sel = selectors.PollSelector()
        for fd in self.bufs:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(self.agent.stop_fd, selectors.EVENT_READ)
        try:
            while len(sel.get_map()) > 1:
                if self.agent.closing:
                    return "cancelled" if self.up else "launch cancelled"
                if self.agent.barrier and self.up:
                    if not self.go.is_set():
                        self.deadline = float("inf")  # --timeout counts from the release
                    elif self.deadline == float("inf") and self.timeout:
                        self.deadline = self.agent.released_at + self.timeout
                wait = self.deadline - time.monotonic()
                if wait <= 0:
                    return (f"command timed out after {self.timeout:g} s" if self.up
                            else f"no contact within {self.connect_timeout:g} s")  # fmt: skip
                if self.agent.barrier and self.deadline == float("inf") and self.timeout:
                    wait = 1.0  # waiting for go: look again for the deadline it sets
                for key, _ in sel.select(None if wait == float("inf") else wait):
                    if key.fd != self.agent.stop_fd:
                        self._take(sel, key.fd)
            return None
        finally:
            sel.close()

    def _take(self, sel: selectors.BaseSelector, fd: int) -> None:
        data = os.read(fd, 1 << 16)
        if not data:
            sel.unregister(fd)
            return
        buf = self.bufs[fd]
        buf += data
        assert self.proc is not None and self.proc.stdout is not None
        if fd == self.proc.stdout.fileno() and not self.up:
            i = buf.find(plan.LEAF_MARKER + b"\n")
            if i >= 0 and (i == 0 or buf[i - 1 : i] == b"\n"):
                self.start = i + len(plan.LEAF_MARKER) + 1
                self._running()

    def _result(self, error: str | None) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        if error is not None:
            kill_group(proc)
            if not self.up:
                return plan.result(self.host, None, error=error)
        else:
            try:
                proc.wait(timeout=EXIT_GRACE)  # the pipes are closed: it is ending
            except subprocess.TimeoutExpired:
                kill_group(proc)
        proc.wait()
        out_buf = self.bufs[proc.stdout.fileno()]
        raw = bytes(out_buf[self.start :])
        status: int | None = proc.returncode
        if self.agent.backend.kind == "rsh" and self.up:  # the status is the last stdout line
            raw, status = plan.split_status(raw)
            if status is None and error is None:
                error = "rsh: the remote exit status did not arrive (connection lost?)"
        err = self.bufs[proc.stderr.fileno()].decode(errors="replace")
        if not self.up:
            text = bytes(out_buf).decode(errors="replace") + "\n" + err
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            why = " ".join(lines[-3:]) or "no message"
            return plan.result(self.host, None, error=plan.launch_failed(proc.returncode, why))
        rc = status if error is None else None
        return plan.result(self.host, rc, raw.decode(errors="replace"), err, error)
