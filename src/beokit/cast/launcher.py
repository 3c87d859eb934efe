"""The receivers of a cast, started through the tree launcher (what ``beo run`` does).

:class:`ReceiverLaunch` runs a root :class:`~beokit.launch.agent.Agent` whose
command on every node is ``python3 -m beokit.cast.receiver``; the run's spec
rides to every receiver on its stdin (``--input``), inside the launch
channels.  The receivers then call the cast root back at
:func:`callback_address` (the :class:`~beokit.cast.hub.Hub`); a host whose
receiver never did is failed ``DOWN`` with the launcher's reason.
"""

from __future__ import annotations

import shlex
import socket
import sys
import threading
import time
from typing import Any

from beokit.cast.hub import Receiver
from beokit.cast.job import Job
from beokit.cast.root import site_free_path
from beokit.launch import plan as launch_plan
from beokit.launch.agent import Agent
from beokit.launch.backends import Backend
from beokit.proc import describe_exit


def remote_python_default(backend: Backend) -> str:
    """The python that runs the receiver on the nodes."""
    if backend.kind == "exec":
        return shlex.quote(sys.executable)
    return "python3"


def callback_address(job: Job, hosts: list[str]) -> str:
    """This machine's address as the nodes reach it: ``--listen``, else the source
    address of the route to the first node (127.0.0.1 on one machine)."""
    if job.listen:
        return job.listen
    if job.backend.kind == "exec":
        return "127.0.0.1"
    for h in hosts:
        try:
            info = socket.getaddrinfo(job.address(h), 9, type=socket.SOCK_DGRAM)
        except OSError:
            continue
        family, _, _, _, sa = info[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(sa)  # UDP: no packet; the kernel picks the route and source
                return str(probe.getsockname()[0])
            except OSError:
                continue
    return "0.0.0.0"


def await_answers(receivers: dict[str, Receiver], deadline: float, timeout: float) -> None:
    """Wait (until ``deadline``) for every receiver's up/fail; the silent ones are DOWN."""
    for r in receivers.values():
        if not r.answered.wait(max(0.0, deadline - time.monotonic())):
            r.fail("DOWN", f"no contact within {timeout:g} s")
            r.close()


class ReceiverLaunch:
    """The receivers, started through the tree launcher (a root :class:`Agent`)."""

    def __init__(self, job: Job, hosts: list[str], payload: bytes, addr: str,
                 receivers: dict[str, Receiver]) -> None:  # fmt: skip
        self.receivers = receivers
        command = f"{job.remote_python} -m beokit.cast.receiver"
        if job.backend.kind == "exec":  # this machine: no site set-up (see site_free_path)
            path = shlex.quote(site_free_path())
            command = f"PYTHONPATH={path} {job.remote_python} -S -m beokit.cast.receiver"
        the_plan = launch_plan.root_plan("tree", hosts, job.fanout)
        self.depth = launch_plan.depth("tree", len(hosts), job.fanout)
        cfg = {"command": command, "fanout": the_plan.child_fanout, "timeout": 0,
               "connect_timeout": job.connect_timeout, "backend": job.backend.spec(),
               # agents listen for their own children on their own host: all of its
               # addresses (advertising their name), or loopback on this machine
               "agent_bind": "127.0.0.1" if job.backend.kind == "exec" else "0.0.0.0",
               "leaf_agents": False, "barrier": False}  # fmt: skip
        advertise = addr
        if addr in ("0.0.0.0", "::"):
            advertise = "@ssh" if job.backend.kind == "ssh" else socket.gethostname()
        self.agent = Agent(None, the_plan.groups, the_plan.window, cfg, self._emit, addr,
                           advertise, payload)  # fmt: skip
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()

    def _emit(self, msg: dict[str, Any]) -> None:
        if msg.get("t") != "res":
            return
        r = self.receivers.get(str(msg.get("h")))
        if r is None:
            return
        if r.conn is not None:
            return  # it called back: its connection tells the rest (and its end)
        rc = msg.get("rc")
        if msg.get("error") or rc != 0:
            lines = [ln.strip() for ln in str(msg.get("err") or "").splitlines() if ln.strip()]
            ended = describe_exit(rc) if isinstance(rc, int) else "no exit status"
            why = msg.get("error") or (lines[-1] if lines else ended)
            r.fail("DOWN", f"receiver did not start: {why}")
        else:
            r.fail("DOWN", "the receiver ended without calling back")

    def close(self, grace: float = 5.0) -> None:
        """Every receiver has been told to end: wait for the tree, then stop what lingers."""
        self.thread.join(grace)
        if self.thread.is_alive():
            self.agent.close()
            self.thread.join(2.0)
