"""The receivers of a cast, started through the tree launcher (what ``beo run`` does).

:class:`ReceiverLaunch` runs a root :class:`~beokit.launch.agent.Agent`; every
node runs an agent (leaves too), which forks the receiver from itself
(:data:`beokit.cast.receiver.ENTRY`: one interpreter a node, no second one
for the receiver); with ``-R exec`` the agents are forked from one fork
server that imported the agent, the receiver and nettee once.  Where the
node's Python lacks beokit, the agent ships itself with the receiver and
nettee (:data:`beokit.cast.receiver.SHIPPED`).  The run's spec rides to every
receiver on its stdin (``--input``), inside the launch channels.  The
receivers then call the cast root back at :func:`callback_address` (the
:class:`~beokit.cast.hub.Hub`); a host whose receiver never did is failed
``DOWN`` with the launcher's reason.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any

from beokit import net
from beokit.cast import receiver as receiver_program
from beokit.cast.hub import Receiver
from beokit.cast.job import Job
from beokit.errors import UsageError
from beokit.launch import plan as launch_plan
from beokit.launch.agent import FORKED_AGENT, Agent
from beokit.proc import describe_exit, start_fork_server


def callback_address(job: Job, hosts: list[str]) -> str:
    """This machine's address as the nodes reach it: ``--listen``, else the source
    address of the route to the first node that has an address here (its
    ``--resolve`` entry, else ssh's ``HostName`` for it, else its name), 127.0.0.1
    with ``-R exec``.  :class:`UsageError` when no node has one: the receivers
    would have nowhere to call back (``0.0.0.0`` is this machine on every node)."""
    if job.listen and job.listen not in ("0.0.0.0", "::"):
        return job.listen
    if job.backend.kind == "exec":
        return "127.0.0.1"
    addr, tried = net.reachable_address(hosts, lambda h: job.resolve.get(h)
                                        or job.backend.hostname(h))  # fmt: skip
    if addr is None:
        shown = ", ".join(tried[:3]) + (f" and {len(tried) - 3} more" if len(tried) > 3 else "")
        whom = f"none of {shown} has" if len(tried) > 1 else f"{shown} has no"
        raise UsageError(f"cannot tell the receivers where to call back: {whom} an address "
                         "here (DNS, /etc/hosts, ssh_config); give --listen ADDR (this "
                         "machine's address on the nodes' network) and --resolve HOSTSFILE")  # fmt: skip
    return addr


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
        the_plan = launch_plan.root_plan("tree", hosts, job.fanout)
        self.depth = launch_plan.depth("tree", len(hosts), job.fanout)
        local = job.backend.kind == "exec"  # loopback addresses: every node is here
        cfg = {"command": "beo cast receiver", "entry": receiver_program.ENTRY,
               "entry_name": receiver_program.ENTRY_NAME, "ship": receiver_program.SHIPPED,
               "fanout": the_plan.child_fanout, "timeout": 0,
               "connect_timeout": job.connect_timeout, "backend": job.backend.spec(),
               # agents listen for their own children on their own host: loopback on
               # this machine, else every address of their parent link's family
               "agent_bind": "127.0.0.1" if local else "",
               # every node runs an agent: the receiver is forked from it
               "leaf_agents": True, "barrier": False}  # fmt: skip
        self.forks: tempfile.TemporaryDirectory[str] | None = None
        self.server: Any = None
        if job.backend.local and job.fork_server:
            self._start_fork_server(cfg)
        advertise = addr
        if addr in ("0.0.0.0", "::"):
            advertise = "@ssh" if job.backend.kind == "ssh" else "127.0.0.1"
        self.agent = Agent(None, the_plan.groups, the_plan.window, cfg, self._emit, addr,
                           advertise, payload)  # fmt: skip
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()

    def _start_fork_server(self, cfg: dict[str, Any]) -> None:
        """-R exec: every node's agent is forked from one process that imported the
        agent, the receiver and nettee once (as ``beo run -R exec`` does)."""
        self.forks = tempfile.TemporaryDirectory(prefix="beo-cast-")
        path = os.path.join(self.forks.name, "forks")
        try:
            self.server = start_fork_server(path, "beokit.launch.agent:main",
                                            launch_plan.MAX_HEADER, name=FORKED_AGENT,
                                            preload=preload_modules())  # fmt: skip
        except OSError:
            self.forks.cleanup()
            self.forks = None
            return  # agents start as interpreters of their own, slower but the same
        cfg["forkserver"] = path

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
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        if self.forks is not None:
            self.forks.cleanup()


# what the fork server of -R exec imports before it forks the first agent: the
# receiver, nettee, and what the receiver imports after its start (queue, in
# serve) or on every node (xxhash: has_xxhash, which nettee's -digest then uses),
# loaded once instead of once a node
PRELOAD = ("beokit.cast.receiver", "beokit.nettee.cli", "queue")
OPTIONAL_PRELOAD = ("xxhash",)


def preload_modules() -> tuple[str, ...]:
    """:data:`PRELOAD` and those of :data:`OPTIONAL_PRELOAD` this Python has (the
    fork server, which runs with this one's path, stops at an import that fails)."""
    import importlib.util

    return PRELOAD + tuple(m for m in OPTIONAL_PRELOAD if importlib.util.find_spec(m))
